"""Distribution shift between a reference set of item vectors and a new batch, and the retrain
decision."""

from mmcompress.drift.report import (
    DriftReport,
    DriftThresholds,
    catalog_drift,
    drift_html,
    drift_report,
    false_positive_rate,
    retrain_decision,
    temporal_split,
    write_drift_html,
)

__all__ = [
    "DriftReport", "DriftThresholds", "catalog_drift", "drift_html", "drift_report",
    "false_positive_rate", "retrain_decision", "temporal_split", "write_drift_html",
]
