"""The DAGs run for real through ``dag.test()`` on a 400-item slice of the embedded catalog."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
from mlflow import MlflowClient

from mmcompress.data import ItemCatalog
from pipelines.config import Layout
from tests.dags.airflow_env import slice_conf, task_states, xcom

pytestmark = pytest.mark.slow
MODEL = "mmcompress-codec"


def pipeline_run_for(dag_id: str, run_id: str):
    from airflow.models.dagrun import DagRun

    return DagRun.find(dag_id=dag_id, run_id=run_id)


def test_pipeline_trains_compresses_indexes_and_promotes(trained_project):
    root, dr = trained_project
    states = task_states(dr)
    assert str(dr.state) == "success", states
    assert states[("prepare", -1)] == "success"  # no catalog yet: prepare ran first
    assert states[("compress_shard", 0)] == states[("compress_shard", 1)] == "success"
    assert all(s == "success" for s in states.values()), states

    L = Layout(root)
    assert (L.catalog_dir / "catalog.parquet").exists()
    assert sorted(p.name for p in L.codes_dir.glob("*.npy")) == ["PCA64_SQ8.npy"]
    assert len(np.load(L.codes_dir / "PCA64_SQ8.npy")) == 400

    promoted = xcom(dr, "promote")
    assert promoted["promoted"], promoted["reasons"]
    client = MlflowClient(tracking_uri=promoted["tracking_uri"])
    run = client.get_run(promoted["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["catalog.max_items"] == "400"
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert str(champion.version) == promoted["version"]
    assert champion.run_id == promoted["run_id"]


def test_drift_on_a_real_shift_triggers_retraining(trained_project, dagbag):
    """Items first rated after 2000 against the older ones: real temporal drift."""
    root, _ = trained_project
    dag = dagbag.dags["mmcompress_drift"]
    conf = slice_conf(root)
    dr = dag.test(run_conf={"project_root": conf["project_root"], "max_items": conf["max_items"],
                            "overrides": {**conf["overrides"], "drift.cutoff": "2000-01-01"},
                            "override_reason": conf["override_reason"]})
    states = task_states(dr)
    assert str(dr.state) == "success", states
    report = xcom(dr, "detect_drift")
    assert report["retrain"] is True and report["reasons"]
    assert states[("trigger_retraining", -1)] == "success"

    [triggered] = pipeline_run_for("mmcompress_pipeline", f"drift__{dr.run_id}")
    assert triggered.conf["project_root"] == str(root)
    assert triggered.conf["max_items"] == 400
    assert triggered.conf["drift_reasons"] == report["reasons"]


def test_drift_without_shift_does_not_trigger(trained_project, dagbag):
    """New items drawn from the catalog's own distribution: no retraining.

    The batch is a random half of the catalog re-issued under new item ids, as a batch of new
    listings that look like the existing ones would arrive.
    """
    root, _ = trained_project
    catalog = ItemCatalog.load(Layout(root).catalog_dir)
    rows = np.sort(np.random.default_rng(7).permutation(len(catalog))[: len(catalog) // 2])
    sample = catalog.subset(rows)
    ItemCatalog(item_ids=sample.item_ids + 10_000_000, modalities=sample.modalities,
                masks=sample.masks, attributes=sample.attributes.drop(columns=["item_id"]),
                schema=dict(sample.schema)).save(root / "batches" / "same-distribution")

    conf = slice_conf(root)
    dr = dagbag.dags["mmcompress_drift"].test(run_conf={
        "project_root": conf["project_root"], "max_items": conf["max_items"],
        "overrides": {**conf["overrides"], "drift.batch_dir": "batches/same-distribution"},
        "override_reason": conf["override_reason"]})
    states = task_states(dr)
    assert str(dr.state) == "success", states
    report = xcom(dr, "detect_drift")
    assert report["retrain"] is False, report["reasons"]
    assert states[("trigger_retraining", -1)] == "skipped"
    assert pipeline_run_for("mmcompress_pipeline", f"drift__{dr.run_id}") == []


def test_corrupted_catalog_fails_validation_and_keeps_the_champion(trained_project, dagbag,
                                                                    tmp_path, capfd):
    trained_root, _ = trained_project
    root = tmp_path / "project"
    shutil.copytree(trained_root, root)
    L = Layout(root)
    tracking = xcom(trained_project[1], "promote")["tracking_uri"].replace(
        str(trained_root), str(root))
    client = MlflowClient(tracking_uri=tracking)
    champion_before = client.get_model_version_by_alias(MODEL, "champion").version
    versions_before = len(client.search_model_versions(f"name='{MODEL}'"))

    # five items whose text embeddings blew up (norm x1000) — a broken encoder upstream: the
    # prepared catalog still records the inputs it was built from, so prepare is skipped
    catalog = ItemCatalog.load(L.catalog_dir)
    identity = (L.catalog_dir / "inputs.json").read_bytes()
    text = catalog.modalities["text"].copy()
    text[:5] *= 1000.0
    catalog.modalities["text"] = text
    catalog.save(L.catalog_dir)
    (L.catalog_dir / "inputs.json").write_bytes(identity)
    capfd.readouterr()

    dr = dagbag.dags["mmcompress_pipeline"].test(run_conf=slice_conf(root))
    log = capfd.readouterr()
    states = task_states(dr)
    assert str(dr.state) == "failed"
    assert states[("choose_catalog_step", -1)] == "success"
    assert states[("prepare", -1)] == "skipped"  # a catalog exists: validated as it is
    assert states[("validate", -1)] == "failed"
    assert states[("train", -1)] == states[("promote", -1)] == "upstream_failed"
    text = log.out + log.err
    assert "validation suite 'item_catalog': FAILED" in text
    assert re.search(r"column '\w*text\w*'.*: 5 of 400 rows unexpected", text), text[-5000:]
    assert client.get_model_version_by_alias(MODEL, "champion").version == champion_before
    assert len(client.search_model_versions(f"name='{MODEL}'")) == versions_before


def test_rebuild_index_only_rewrites_the_index(trained_project, dagbag, tmp_path):
    trained_root, _ = trained_project
    root = tmp_path / "project"
    shutil.copytree(trained_root, root)
    L = Layout(root)
    codes_before = {p.name: p.read_bytes() for p in L.codes_dir.iterdir()}
    shutil.rmtree(L.index_dir)

    conf = slice_conf(root)
    dr = dagbag.dags["mmcompress_rebuild_index"].test(run_conf={
        "project_root": conf["project_root"], "max_items": conf["max_items"],
        "overrides": {**conf["overrides"], "index.fine.shortlist": 60},
        "override_reason": conf["override_reason"]})
    assert str(dr.state) == "success", task_states(dr)
    built = xcom(dr, "build_index")
    assert built["index_dir"] == str(L.index_dir) and L.index_dir.is_dir()
    assert built["n_items"] == 400
    assert {p.name: p.read_bytes() for p in L.codes_dir.iterdir()} == codes_before


def _copy_project(trained_project, tmp_path):
    """A copy of the trained project with its own tracking store, and that store's champion."""
    trained_root, dr = trained_project
    root = tmp_path / "project"
    shutil.copytree(trained_root, root)
    tracking = xcom(dr, "promote")["tracking_uri"].replace(str(trained_root), str(root))
    client = MlflowClient(tracking_uri=tracking)
    return root, client


def _records(client: MlflowClient) -> tuple[str, int, int]:
    """The champion version, the number of versions and of pipeline runs in the store."""
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    return (str(client.get_model_version_by_alias(MODEL, "champion").version),
            len(client.search_model_versions(f"name='{MODEL}'")), len(runs))


def test_a_trigger_over_its_budget_fails_at_its_first_task_and_records_nothing(trained_project, dagbag,
                                                                                tmp_path, capfd):
    root, client = _copy_project(trained_project, tmp_path)
    before = _records(client)
    capfd.readouterr()
    dr = dagbag.dags["mmcompress_pipeline"].test(run_conf=slice_conf(root, codec_spec="PCA64,SQ8",
                                                                     budget_bytes=16))
    log = capfd.readouterr()
    states = task_states(dr)
    assert str(dr.state) == "failed"
    assert states[("resolve_params", -1)] == "failed"
    assert states[("train", -1)] == states[("promote", -1)] == "upstream_failed"
    assert "'PCA64,SQ8' codes take 64 bytes per item, over compress.budget_bytes=16" in log.out + log.err
    assert _records(client) == before  # no run, no version, the champion where it was


def test_a_missing_catalog_file_fails_prepare_on_its_one_try(trained_project, tmp_path, capfd):
    """A catalog path different from the prepared catalog re-runs prepare, which cannot heal a
    missing file: one try, the file named in the log, the champion and records unchanged."""
    from airflow.dag_processing.dagbag import DagBag

    from tests.dags.airflow_env import DAGS

    root, client = _copy_project(trained_project, tmp_path)
    before = _records(client)
    missing = root / "incoming" / "items.parquet"
    capfd.readouterr()
    # a DAG of its own: dag.test keeps a run's conf in the DAG's params, and later tests must
    # not inherit this catalog path
    dag = DagBag(dag_folder=str(DAGS)).dags["mmcompress_pipeline"]
    dr = dag.test(run_conf=slice_conf(root, catalog_path=str(missing)))
    log = capfd.readouterr()
    states = task_states(dr)
    assert str(dr.state) == "failed"
    assert states[("choose_catalog_step", -1)] == "success"
    assert states[("prepare", -1)] == "failed"  # the prepared catalog was built from other inputs
    [prepare] = [ti for ti in dr.get_task_instances() if ti.task_id == "prepare"]
    assert prepare.try_number == 1 and prepare.max_tries >= 1  # retries configured, not used
    assert str(missing) in log.out + log.err
    assert _records(client) == before


def test_a_smaller_slice_reruns_prepare_and_the_records_say_what_ran(trained_project, dagbag, tmp_path):
    """max_items 300 on a project prepared with 400: prepare runs again, every stage sees 300
    items, and the MLflow run's lineage is the catalog that was built, not the form."""
    root, client = _copy_project(trained_project, tmp_path)
    dr = dagbag.dags["mmcompress_pipeline"].test(run_conf=slice_conf(root, max_items=300))
    states = task_states(dr)
    assert str(dr.state) == "success", [k for k, v in states.items() if v == "failed"]
    assert states[("prepare", -1)] == "success"
    assert len(ItemCatalog.load(Layout(root).catalog_dir)) == 300
    assert xcom(dr, "build_index")["n_items"] == 300
    promoted = xcom(dr, "promote")
    run = client.get_run(promoted["run_id"])
    assert run.data.tags["data.catalog_max_items"] == "300"
    ident = (Layout(root).catalog_dir / "inputs.json").read_text()
    assert run.data.tags["data.catalog_inputs_sha256"] in ident
    champion = client.get_model_version_by_alias(MODEL, "champion")
    if promoted["promoted"]:
        assert str(champion.version) == promoted["version"]
    else:  # the gate kept the old champion: its reasons are on the registered version
        assert str(champion.version) != promoted["version"] and promoted["reasons"]
