"""Change-detection metrics (pixel and object level) and whole-scene evaluation."""

from maskcd.evaluation.metrics import ChangeMetrics, metrics_from_counts, object_counts

__all__ = ["ChangeMetrics", "metrics_from_counts", "object_counts"]
