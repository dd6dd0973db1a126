"""Drift checks logged as MLflow runs and read back as a history."""

from __future__ import annotations

import pytest

from mmcompress.tracking.history import (
    DRIFT_STATISTICS,
    drift_history,
    drift_metrics,
    log_drift_run,
)

pytestmark = pytest.mark.slow


def test_history_reads_back_every_logged_run_in_order(digits_history):
    history, logged = digits_history["history"], digits_history["logged"]
    assert [h["run_id"] for h in history] == [run_id for run_id, _, _ in logged]
    assert [h["start_time"] for h in history] == sorted(h["start_time"] for h in history)
    for h, (_, result, thresholds) in zip(history, logged, strict=True):
        assert h["metrics"] == pytest.approx(drift_metrics(result))
        assert h["retrain"] == result["retrain"] and h["reasons"] == result["reasons"]
        assert h["batch"] == result["batch"]
        for name in ("fused.psi_max", "fused.mmd_pvalue", "upper.mean_shift", "fused.recall_at_10_batch"):
            field, side = DRIFT_STATISTICS[name.split(".")[1]]
            assert h["thresholds"][name] == pytest.approx(thresholds[field])
            assert h["directions"][name] == side
        assert h["metrics"]["fused.psi_max"] == pytest.approx(result["modalities"]["fused"]["psi_max"])
    assert [h["thresholds"]["fused.psi_max"] for h in history] == pytest.approx([0.25, 0.30, 0.35])
    assert [h["retrain"] for h in history] == [False, True, True]


def test_runs_carry_the_drift_report_and_leave_global_mlflow_state_alone(digits_history, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=digits_history["tracking_uri"])
    for run_id, _, _ in digits_history["logged"]:
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED" and run.info.run_name == "drift"
        assert [a.path for a in client.list_artifacts(run_id, "drift")] == ["drift/drift.json"]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    mlflow.set_tracking_uri(other)
    try:
        with mlflow.start_run():
            _, result, thresholds = digits_history["logged"][0]
            run_id = log_drift_run(digits_history["tracking_uri"], "mmcompress", result, thresholds)
            assert mlflow.get_tracking_uri() == other
        assert client.get_run(run_id).data.metrics == pytest.approx(drift_metrics(result))
    finally:
        mlflow.set_tracking_uri(None)


def test_no_experiment_means_no_history(tmp_path):
    assert drift_history(f"sqlite:///{tmp_path / 'empty.db'}", "mmcompress") == []


def test_a_result_without_modalities_is_refused(tmp_path):
    with pytest.raises(ValueError, match="modalities"):
        drift_metrics({"retrain": True})
    with pytest.raises(ValueError, match="modalities"):
        log_drift_run(f"sqlite:///{tmp_path / 'x.db'}", "mmcompress", {"retrain": True}, {})
    assert not (tmp_path / "x.db").exists()
