"""Reports people can read at a glance: JSON, Markdown, and the console table."""

from modelzip.report.write import markdown, summary_rows, write_reports

__all__ = ["markdown", "summary_rows", "write_reports"]
