"""The real ``dvc repro`` on a 400-item MovieLens slice: every stage, MLflow, the gate, reruns."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from mlflow import MlflowClient

from tests.pipelines.conftest import run

pytestmark = pytest.mark.slow


def _stages_run(stdout: str) -> set[str]:
    return {line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage '")}


def test_repro_builds_every_artifact(dvc_project):
    root = dvc_project
    for path in ("data/catalog/catalog.parquet", "artifacts/fused/vectors.npy", "artifacts/codecs/auto/codec.json",
                 "artifacts/codes/auto.npy", "artifacts/codes/auto.packed", "artifacts/index",
                 "reports/evaluate.json", "reports/promote.json", "reports/report.html",
                 "metrics/evaluate.json", "plots/recall_vs_bytes.csv"):
        assert (root / path).exists(), path
    ev = json.loads((root / "reports/evaluate.json").read_text())
    assert set(ev["codecs"]) == {"SQ4", "PCA64_PQ8x8", "auto"}
    auto = ev["codecs"]["auto"]
    assert auto["bytes_per_item"] <= 8
    assert auto["recall_at_10"] > 0.2                      # far above chance (10/360)
    assert ev["codecs"]["SQ4"]["recall_at_10"] > auto["recall_at_10"]   # more bytes, more recall
    assert 0 < ev["baseline"]["hr_at_10"] < 1
    assert abs(auto["hr_at_10"] - ev["baseline"]["hr_at_10"]) < 0.2


def test_first_run_promotes_a_champion_in_mlflow(dvc_project):
    root = dvc_project
    promote = json.loads((root / "reports/promote.json").read_text())
    client = MlflowClient(tracking_uri=promote["tracking_uri"])
    run_ = client.get_run(promote["run_id"])
    assert run_.data.tags["challenger"] == "auto"
    assert "data.git_revision" in run_.data.tags and "data.fused_vectors_sha256" in run_.data.tags
    assert run_.data.params["compress.budget_bytes"] == "8"
    children = client.search_runs([run_.info.experiment_id],
                                  filter_string=f"tags.mlflow.parentRunId = '{run_.info.run_id}'")
    assert {c.info.run_name for c in children} == {"SQ4", "PCA64_PQ8x8", "auto"}
    assert all("recall_at_10" in c.data.metrics for c in children)
    # the first run has no champion to beat and the slice's index is within every threshold
    assert promote["promoted"], promote["reasons"]
    mv = client.get_model_version_by_alias("mmcompress-codec", "champion")
    assert str(mv.version) == promote["version"]
    assert mv.tags["gate_decision"] == "promoted" and mv.tags["verification"] == "passed"
    assert json.loads(mv.tags["gate_reasons"]) == promote["reasons"]


def test_second_repro_does_nothing(dvc_project):
    p = run(["dvc", "repro"], dvc_project)
    assert _stages_run(p.stdout) == set(), p.stdout


def test_metrics_and_plots_commands(dvc_project):
    shown = run(["dvc", "metrics", "show", "--json"], dvc_project).stdout
    assert "recall_at_10" in shown
    plots = run(["dvc", "plots", "show", "--json"], dvc_project).stdout
    assert "recall_vs_bytes" in plots


def test_changing_a_compress_param_reruns_only_what_depends_on_it(dvc_project):
    root = dvc_project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["compress"]["entropy_coder"] = "zstd"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    codes_before = np.load(root / "artifacts/codes/auto.npy")
    p = run(["dvc", "repro"], root)
    ran = _stages_run(p.stdout)
    assert "compress" in ran and not ran & {"prepare", "validate", "train"}, p.stdout
    np.testing.assert_array_equal(np.load(root / "artifacts/codes/auto.npy"), codes_before)
