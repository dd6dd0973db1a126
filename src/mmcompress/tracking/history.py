"""Drift checks as MLflow runs: log one per drift stage execution, read them back as a history.

Each drift run (run name ``drift``) records, per modality, the shift statistics as metrics
``<modality>.<statistic>`` (``fused.psi_max``, ``fused.mmd_pvalue`` ...), ``retrain`` as 0/1,
the thresholds in force as params ``threshold.<name>`` and the reasons as a tag, so a later
report can draw each statistic over time against the threshold that applied at that time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

RUN_NAME = "drift"
#: statistic → (threshold field of ``DriftThresholds``, side on which a run calls for retraining)
DRIFT_STATISTICS: dict[str, tuple[str, str]] = {
    "psi_max": ("psi_threshold", "above"),
    "mmd_pvalue": ("mmd_threshold", "below"),
    "mean_shift": ("mean_shift_threshold", "above"),
    "cov_shift": ("cov_shift_threshold", "above"),
    "recon_error_ratio": ("recon_ratio_threshold", "above"),
    "entropy_drop": ("entropy_drop_bits", "above"),
    "recall_at_10_batch": ("recall_floor", "below"),
}
EXTRA_STATISTICS = ("mmd2", "psi_mean", "recall_at_10_reference")


def drift_metrics(result: Mapping[str, Any]) -> dict[str, float]:
    """Numeric metrics of a drift result: ``<modality>.<statistic>``, ``retrain``, counts.

    ``result`` is what the drift stage writes to ``reports/drift/drift.json``
    (``retrain``, ``n_reference``, ``n_batch``, ``modalities: {name: DriftReport.to_dict()}``).
    """
    if "modalities" not in result or not isinstance(result["modalities"], Mapping):
        raise ValueError(f"drift result needs a 'modalities' mapping; found keys {sorted(result)}")
    out: dict[str, float] = {"retrain": float(bool(result.get("retrain", False)))}
    for key in ("n_reference", "n_batch"):
        if isinstance(result.get(key), int | float):
            out[key] = float(result[key])
    for modality, stats in result["modalities"].items():
        for stat in (*DRIFT_STATISTICS, *EXTRA_STATISTICS):
            v = stats.get(stat)
            if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
                out[f"{modality}.{stat}"] = float(v)
    return out


def log_drift_run(tracking_uri: str, experiment: str, result: Mapping[str, Any],
                  thresholds: Mapping[str, Any], *, artifact_location: str | None = None,
                  artifacts: Sequence[str | Path] = ()) -> str:
    """Log one drift check as a run named ``drift`` and return its run id.

    ``thresholds``: the ``drift`` params section or ``asdict(DriftThresholds)``; the fields of
    :data:`DRIFT_STATISTICS` that are set become params ``threshold.<field>``. ``artifacts``
    (e.g. the drift HTML report) are logged under ``drift/``. The experiment is created (with
    ``artifact_location``) when it does not exist yet. Only the client API is used, so an
    active run and the global tracking URI are left alone.
    """
    import time

    from mlflow import MlflowClient
    from mlflow.entities import Metric, Param

    metrics = drift_metrics(result)
    known = {field for field, _ in DRIFT_STATISTICS.values()}
    params = {f"threshold.{k}": str(float(v)) for k, v in thresholds.items()
              if k in known and isinstance(v, int | float) and not isinstance(v, bool)}
    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    tags = {"mmcompress.kind": "drift", "retrain": str(bool(result.get("retrain", False))).lower(),
            "batch": str(result.get("batch", ""))[:5000], "reasons": _reasons_tag(result.get("reasons", []))}
    run = client.create_run(exp_id, run_name=RUN_NAME, tags=tags)
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         params=[Param(k, v) for k, v in params.items()])
        for path in artifacts:
            client.log_artifact(run_id, str(path), artifact_path="drift")
    except Exception:
        client.set_terminated(run_id, status="FAILED")
        raise
    client.set_terminated(run_id, status="FINISHED")
    return run_id


def drift_history(tracking_uri: str, experiment: str = "mmcompress", *, max_runs: int = 100) -> list[dict]:
    """Past drift runs, oldest first (at most the latest ``max_runs``).

    Each entry: ``run_id``, ``start_time`` (ms since the epoch), ``retrain`` (bool), ``reasons``,
    ``batch``, ``metrics`` (name → value), ``thresholds`` (metric name → the threshold that
    applied to it in that run) and ``directions`` (metric name → ``"above"``/``"below"``).
    An experiment that does not exist yet has no history (``[]``).
    """
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        return []
    runs = client.search_runs([exp.experiment_id], filter_string=f"tags.mlflow.runName = '{RUN_NAME}'",
                              order_by=["attributes.start_time DESC"], max_results=max_runs)
    history = []
    for run in reversed(runs):
        metrics = dict(run.data.metrics)
        thresholds, directions = {}, {}
        for name in metrics:
            stat = name.rsplit(".", 1)[-1]
            if stat in DRIFT_STATISTICS:
                field, side = DRIFT_STATISTICS[stat]
                directions[name] = side
                raw = run.data.params.get(f"threshold.{field}")
                if raw is not None:
                    thresholds[name] = float(raw)
        tags = run.data.tags
        history.append({
            "run_id": run.info.run_id,
            "start_time": run.info.start_time,
            "retrain": tags.get("retrain") == "true" or metrics.get("retrain", 0.0) > 0,
            "reasons": _parse_reasons(tags.get("reasons")),
            "batch": tags.get("batch", ""),
            "metrics": metrics,
            "thresholds": thresholds,
            "directions": directions,
        })
    return history


def _reasons_tag(reasons: Sequence[str], limit: int = 5000) -> str:
    """The reasons as a JSON list that fits an MLflow tag (whole reasons dropped from the end)."""
    kept = [str(r)[:500] for r in reasons]
    while kept and len(json.dumps(kept)) > limit:
        kept.pop()
    return json.dumps(kept)


def _parse_reasons(raw: str | None) -> list[str]:
    try:
        value = json.loads(raw or "[]")
    except json.JSONDecodeError:
        return [raw or ""]
    return [str(r) for r in value] if isinstance(value, list) else [str(value)]
