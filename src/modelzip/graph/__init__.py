"""Dependency graph for structured pruning: which layers change together, and the surgery."""

from modelzip.graph.deps import Group, channel_groups
from modelzip.graph.fold import fold_batchnorm
from modelzip.graph.surgery import remove_channels

__all__ = ["Group", "channel_groups", "fold_batchnorm", "remove_channels"]
