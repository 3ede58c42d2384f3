"""Reports people can read at a glance: JSON, Markdown, HTML, and the console tables."""

from modelzip.report.record import build_record
from modelzip.report.summary import summary_rows
from modelzip.report.write import markdown, write_record, write_reports

__all__ = ["build_record", "markdown", "summary_rows", "write_record", "write_reports"]
