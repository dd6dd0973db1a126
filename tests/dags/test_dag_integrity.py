"""The DAG files parse cleanly, wire the stages in order, and expose a valid trigger form."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys

import pytest

from tests.dags.airflow_env import DAGS, REPO, VENV_BIN

EXPECTED_DAGS = {"mmcompress_pipeline", "mmcompress_drift", "mmcompress_rebuild_index"}
HEAVY_TASKS = {"prepare", "train", "compress_shard"}


def dag_module(name: str):
    spec = importlib.util.spec_from_file_location(f"dagfile_{name}", DAGS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_dag_file_loads_without_import_errors(dagbag):
    assert dagbag.import_errors == {}
    assert set(dagbag.dag_ids) == EXPECTED_DAGS
    for dag_id in EXPECTED_DAGS:
        assert dagbag.dags[dag_id].fileloc.startswith(str(DAGS))


def test_pipeline_runs_the_stages_in_order(dagbag):
    dag = dagbag.dags["mmcompress_pipeline"]
    up = {t.task_id: set(t.upstream_task_ids) for t in dag.tasks}
    assert up["choose_catalog_step"] == {"resolve_params"}
    assert up["prepare"] == {"resolve_params", "choose_catalog_step"}
    assert up["validate"] == {"resolve_params", "choose_catalog_step", "prepare"}
    assert "validate" in up["train"]
    assert {"train", "shard_numbers"} <= up["compress_shard"]
    assert "compress_shard" in up["merge_shards"]
    assert "merge_shards" in up["build_index"]
    assert "build_index" in up["evaluate"]
    assert "evaluate" in up["promote"]
    assert dag.get_task("compress_shard").is_mapped  # one task instance per shard
    assert dag.get_task("validate").retries == 0  # a data contract failure is not retried
    assert all(t.execution_timeout is not None for t in dag.tasks)
    assert dag.max_active_runs == 1
    assert dag.timetable.expression == "0 3 * * 0"  # weekly retraining


def test_drift_dag_triggers_the_pipeline_behind_a_short_circuit(dagbag):
    dag = dagbag.dags["mmcompress_drift"]
    gate = dag.get_task("retrain_needed")
    trigger = dag.get_task("trigger_retraining")
    assert gate.task_type == "_ShortCircuitDecoratedOperator"
    assert trigger.upstream_task_ids == {"retrain_needed"}
    assert trigger.trigger_dag_id == "mmcompress_pipeline" in dagbag.dags
    assert dag.timetable.expression == "0 4 * * *"


def test_rebuild_index_dag_only_rebuilds_the_index(dagbag):
    dag = dagbag.dags["mmcompress_rebuild_index"]
    assert {t.task_id for t in dag.tasks} == {"resolve_params", "build_index"}
    assert dag.schedule is None


def test_trigger_form_params_are_documented_and_validate(dagbag):
    from airflow.sdk.exceptions import ParamValidationError

    params = dagbag.dags["mmcompress_pipeline"].params
    assert {"project_root", "catalog_path", "max_items", "budget_bytes", "codec_spec",
            "n_shards", "refresh_catalog", "overrides"} <= set(params)
    for name in params:
        p = params.get_param(name)
        assert p.schema.get("title") and p.schema.get("type"), name
    params.validate()  # the defaults are a valid form
    bad = copy.deepcopy(params)
    with pytest.raises(ParamValidationError, match="n_shards|minimum"):
        bad["n_shards"] = 0
        bad.validate()


def test_trigger_form_maps_onto_existing_params_yaml_keys():
    """Every override the form produces names a real params.yaml key (load_params refuses others)."""
    from pipelines.config import load_params

    run_overrides = dag_module("mmcompress_pipeline").run_overrides
    form = {"catalog_path": "data/my_catalog.parquet", "max_items": 500, "budget_bytes": 32,
            "n_shards": 8, "codec_spec": "OPQ16,PQ16x8", "overrides": {"fusion.epochs": 3}}
    overrides = run_overrides(form)
    params = load_params(REPO / "params.yaml", overrides)
    assert params["catalog"]["source"] == "parquet"
    assert params["catalog"]["path"] == "data/my_catalog.parquet"
    assert params["catalog"]["max_items"] == 500
    assert params["compress"]["budget_bytes"] == 32
    assert params["compress"]["n_shards"] == 8
    assert params["compress"]["codecs"] == ["OPQ16,PQ16x8"]
    assert params["compress"]["auto"] is False
    assert params["fusion"]["epochs"] == 3
    assert run_overrides({"codec_spec": "auto", "budget_bytes": 16}) == {"compress.budget_bytes": 16}


def _parse_in_subprocess(env_extra: dict[str, str]) -> dict:
    """Parse the DAG folder in a fresh interpreter under ``env_extra``; return what it saw."""
    code = (
        "import json, sys\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        f"bag = DagBag(dag_folder={str(DAGS)!r})\n"
        "heavy = [m for m in ('torch', 'faiss', 'sklearn', 'mlflow', 'great_expectations', "
        "'pipelines', 'mmcompress') if m in sys.modules]\n"
        "executors = {d: {t.task_id: t.executor for t in bag.dags[d].tasks} for d in bag.dags}\n"
        "print(json.dumps({'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "                  'executors': executors, 'heavy_modules': heavy}))\n"
    )
    env = {**os.environ, **env_extra}
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def test_parsing_imports_no_stage_code_and_uses_the_default_executor():
    seen = _parse_in_subprocess({})
    assert seen["errors"] == {}
    assert seen["heavy_modules"] == []
    assert all(e is None for tasks in seen["executors"].values() for e in tasks.values())


def test_heavy_tasks_switch_to_kubernetes_executor_by_config():
    seen = _parse_in_subprocess({
        "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor,KubernetesExecutor",
        "AIRFLOW__MMCOMPRESS__HEAVY_EXECUTOR": "KubernetesExecutor",
    })
    assert seen["errors"] == {}
    pipeline = seen["executors"]["mmcompress_pipeline"]
    assert {t for t, e in pipeline.items() if e == "KubernetesExecutor"} == HEAVY_TASKS
    assert all(e is None for t, e in pipeline.items() if t not in HEAVY_TASKS)


@pytest.mark.slow
def test_heavy_executor_must_be_a_configured_executor():
    seen = _parse_in_subprocess({
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__MMCOMPRESS__HEAVY_EXECUTOR": "KubernetesExecutor",
    })
    [(path, error)] = seen["errors"].items()
    assert path.endswith("mmcompress_pipeline.py")
    assert "KubernetesExecutor" in error


def test_dags_pass_ruff_airflow3_rules():
    p = subprocess.run([str(VENV_BIN / "ruff"), "check", "--select", "AIR3", str(DAGS)],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr


@pytest.mark.parametrize(("dag_id", "now", "first_run"), [
    # minutes and hours after the slot: inside the tenth of the interval Airflow's default
    # would start at once (16.8 h weekly, 2.4 h daily)
    ("mmcompress_pipeline", "2026-12-06T03:05:00", "2026-12-13T03:00:00"),
    ("mmcompress_pipeline", "2026-12-06T19:00:00", "2026-12-13T03:00:00"),
    ("mmcompress_pipeline", "2026-12-09T12:00:00", "2026-12-13T03:00:00"),
    ("mmcompress_drift", "2026-12-06T04:30:00", "2026-12-07T04:00:00"),
])
def test_unpausing_waits_for_the_next_slot(dagbag, monkeypatch, dag_id, now, first_run):
    """A DAG with no runs yet, unpaused at any time of the week, first runs at its next slot."""
    import airflow.timetables.trigger as trigger
    import pendulum
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable
    from airflow.timetables.base import TimeRestriction

    # the scheduler's view of the timetable: the serialized (core) one
    timetable = decode_timetable(encode_timetable(dagbag.dags[dag_id].timetable))
    monkeypatch.setattr(trigger, "utcnow", lambda: pendulum.parse(now))
    info = timetable.next_dagrun_info(last_automated_data_interval=None,
                                      restriction=TimeRestriction(earliest=None, latest=None,
                                                                  catchup=False))
    assert info.run_after == pendulum.parse(first_run)


def test_gate_thresholds_change_from_the_form_only_with_a_reason():
    from mmcompress.errors import ConfigError
    from pipelines.config import load_params, require_gate_reason

    run_overrides = dag_module("mmcompress_pipeline").run_overrides
    loosen = {"codec_spec": "auto", "overrides": {"promote.max_recall_drop": 1}}
    with pytest.raises(ConfigError, match=r"\['promote.max_recall_drop'\] change the promotion gate"):
        require_gate_reason(run_overrides(loosen))
    with pytest.raises(ConfigError, match="override reason"):
        require_gate_reason(run_overrides({**loosen, "override_reason": "   "}))
    said = run_overrides({**loosen, "override_reason": " rebaselining after the 2026 catalog refresh "})
    require_gate_reason(said)
    params = load_params(REPO / "params.yaml", said)
    assert params["promote"]["override_reason"] == "rebaselining after the 2026 catalog refresh"
    assert params["promote"]["max_recall_drop"] == 1
    require_gate_reason(run_overrides({"codec_spec": "auto", "overrides": {"fusion.epochs": 3}}))  # no gate key
    with pytest.raises(ConfigError, match=r"promote\.max_recal_drop: unknown key in promote"):
        load_params(REPO / "params.yaml", {"promote.max_recal_drop": 1})


def test_airflow_tasks_fail_data_errors_at_once_and_retry_transient_ones(tmp_path):
    from airflow.sdk.exceptions import AirflowFailException

    from mmcompress.tracking.store import TrackingUnavailable
    from pipelines.config import apply_overrides, load_params
    from pipelines.stage_runner import call_stage

    params = load_params(REPO / "params.yaml", {"catalog.source": "parquet",
                                                "catalog.path": str(tmp_path / "missing.parquet")})
    with pytest.raises(AirflowFailException, match=r"CatalogError: catalog file not found .*missing\.parquet"):
        call_stage("prepare.prepare", params, tmp_path)
    with pytest.raises(AirflowFailException, match="catalog.path is empty"):
        call_stage("prepare.prepare", apply_overrides(params, {"catalog.path": None}), tmp_path)
    unreachable = apply_overrides(params, {"tracking.uri": "http://127.0.0.1:9"})
    with pytest.raises(TrackingUnavailable):  # not AirflowFailException: the task's retries apply
        call_stage("train.train", unreachable, tmp_path)


def test_a_form_field_that_changes_the_catalog_reruns_prepare(tmp_path):
    """The catalog step is skipped only for a catalog built from this run's exact inputs."""
    import shutil

    import pandas as pd

    from pipelines.config import load_params
    from pipelines.prepare import IDENTITY_FILE, catalog_identity

    choose = dag_module("mmcompress_pipeline").choose_catalog_step.function
    root = tmp_path / "proj"
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    pd.DataFrame({"item_id": [1, 2], "text": [[0.1, 0.2], [0.3, 0.4]]}).to_parquet(raw / "a.parquet")
    shutil.copy(raw / "a.parquet", raw / "b.parquet")
    base = {"catalog.source": "parquet", "catalog.path": "data/raw/a.parquet"}
    params = load_params(REPO / "params.yaml", base)
    cfg = {"root": str(root), "params": params}
    assert choose(cfg, {"refresh_catalog": False}) == "prepare"  # nothing prepared yet
    (root / "data" / "catalog").mkdir(parents=True)
    assert choose(cfg, {"refresh_catalog": False}) == "prepare"  # a catalog of unknown inputs
    (root / "data" / "catalog" / IDENTITY_FILE).write_text(json.dumps(catalog_identity(params, root)))
    assert choose(cfg, {"refresh_catalog": False}) == "validate"
    assert choose(cfg, {"refresh_catalog": True}) == "prepare"
    for change in ({"catalog.path": "data/raw/b.parquet"}, {"catalog.max_items": 1},
                   {"encoders.text.max_tags": 5}):
        other = load_params(REPO / "params.yaml", {**base, **change})
        assert choose({"root": str(root), "params": other}, {"refresh_catalog": False}) == "prepare", change
    (raw / "a.parquet").write_bytes((raw / "a.parquet").read_bytes() + b"\0")  # same path, new bytes
    assert choose(cfg, {"refresh_catalog": False}) == "prepare"


def test_trigger_paths_are_confined_to_the_allowed_roots(tmp_path):
    from mmcompress.errors import ConfigError
    from pipelines.config import confine_paths, load_params

    root = tmp_path / "projects" / "a"
    root.mkdir(parents=True)
    allowed = [str(tmp_path / "projects"), "s3://bucket/mmcompress"]
    params = load_params(REPO / "params.yaml", {"encoders.text.cache_dir": None})
    confine_paths(str(root), params, allowed)  # relative paths stay under the root
    with pytest.raises(ConfigError, match=r"project_root '/etc' is outside the allowed roots"):
        confine_paths("/etc", {}, allowed)
    with pytest.raises(ConfigError, match=r"catalog.path '\.\./\.\./\.\./etc/passwd' resolves to .*outside"):
        confine_paths(str(root), {**params, "catalog": {**params["catalog"], "path": "../../../etc/passwd"}}, allowed)
    with pytest.raises(ConfigError, match=r"drift.batch_dir '/var/lib/other'"):
        confine_paths(str(root), {**params, "drift": {**params["drift"], "batch_dir": "/var/lib/other"}}, allowed)
    (root / "link").symlink_to("/etc")
    with pytest.raises(ConfigError, match=r"catalog.path 'link/passwd'"):
        confine_paths(str(root), {**params, "catalog": {**params["catalog"], "path": "link/passwd"}}, allowed)
    confine_paths("s3://bucket/mmcompress/run1", {}, allowed)
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        confine_paths("s3://bucket/mmcompress-other", {}, allowed)
    resolve = dag_module("mmcompress_pipeline").resolve_params.function
    with pytest.raises(ConfigError, match="outside the allowed roots"):
        resolve({"project_root": "/etc", "codec_spec": "auto"})


def test_a_trigger_with_a_spec_over_its_budget_fails_at_resolve_params(tmp_path):
    """The form's codec_spec and budget_bytes meet in the first task: a spec whose code size
    is known from the spec alone is refused there, with both numbers, before any training."""
    import shutil

    from mmcompress.errors import ConfigError

    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")  # a root the test config allows
    resolve = dag_module("mmcompress_pipeline").resolve_params.function
    root = str(tmp_path)
    with pytest.raises(ConfigError, match=r"'PCA64,SQ4' codes take 32 bytes per item, over compress\.budget_bytes=16"):
        resolve({"project_root": root, "codec_spec": "PCA64,SQ4", "budget_bytes": 16})
    cfg = resolve({"project_root": root, "codec_spec": "PCA64,SQ4", "budget_bytes": 32})
    assert cfg["params"]["compress"]["challenger"] == "PCA64,SQ4"
