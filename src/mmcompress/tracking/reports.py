"""Finding a pipeline run's HTML report in the tracking store."""

from __future__ import annotations

from pathlib import Path

import mlflow
from mlflow import MlflowClient

REPORT_ARTIFACT = "reports/report.html"


def find_report(tracking_uri: str, run_id: str | None = None, experiment: str = "mmcompress") -> Path:
    """Download (or locate) ``reports/report.html`` of ``run_id`` or the latest pipeline run."""
    client = MlflowClient(tracking_uri=tracking_uri)
    if run_id is None:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise LookupError(f"no experiment {experiment!r} at {tracking_uri}")
        runs = client.search_runs([exp.experiment_id], filter_string="tags.mlflow.runName = 'pipeline'",
                                  order_by=["attributes.start_time DESC"], max_results=1)
        if not runs:
            raise LookupError(f"no pipeline runs in experiment {experiment!r}")
        run_id = runs[0].info.run_id
    mlflow.set_tracking_uri(tracking_uri)
    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=REPORT_ARTIFACT))
    except Exception as e:
        raise LookupError(f"run {run_id} has no {REPORT_ARTIFACT}: {e}") from e
