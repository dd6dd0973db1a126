"""mmcompress training pipeline and the index-only rebuild, as Airflow DAGs.

The tasks only call the stage functions in ``pipelines/``; every decision about data, codecs
and promotion lives there. Stage modules are imported inside the tasks so the DAG processor
parses this file without loading numpy, torch or faiss.

``mmcompress_pipeline`` runs weekly (Sunday 03:00 UTC) with the defaults below, on demand from
the UI's trigger form, and when ``mmcompress_drift`` finds that the catalog has drifted.

Configuration read at parse time (``airflow.cfg`` section ``[mmcompress]`` or the matching
``AIRFLOW__MMCOMPRESS__*`` environment variables):

- ``heavy_executor``: the executor for catalog encoding, training and shard compression,
  e.g. ``KubernetesExecutor`` where a cluster is available; empty means the default executor.
  It must be one of ``[core] executor``, or the file fails to import with a clear error.
- ``project_root``: default project root holding ``params.yaml`` and the artifacts; defaults
  to this repository.
- ``tracking_uri``: MLflow tracking server for runs started by Airflow (overrides
  ``tracking.uri`` of ``params.yaml``); empty keeps the params file's value.
- ``allowed_roots``: comma-separated directories (or object-storage URL prefixes) that a
  trigger's project root and every path in its params must lie under; defaults to the
  default project root.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.sdk import CronTriggerTimetable, Param, conf, dag, get_current_context, task

HEAVY_EXECUTOR = conf.get("mmcompress", "heavy_executor", fallback="").strip() or None
DEFAULT_ROOT = conf.get("mmcompress", "project_root", fallback="").strip() or str(
    Path(__file__).resolve().parents[1]
)
TRACKING_URI = conf.get("mmcompress", "tracking_uri", fallback="").strip()
# where a trigger's project root and every path in its params may point (comma-separated)
ALLOWED_ROOTS = [r.strip() for r in conf.get("mmcompress", "allowed_roots", fallback="").split(",")
                 if r.strip()] or [DEFAULT_ROOT]
# run_immediately=timedelta(0): unpausing waits for the next Sunday 03:00. Airflow reads the
# default (False) like None and starts the slot that passed within the last tenth of the
# interval (16.8 h for a weekly cron), so an unpause on a Sunday launched a full default run
# nobody asked for, and max_active_runs=1 queued the run the user then triggered behind it.
WEEKLY = CronTriggerTimetable("0 3 * * 0", timezone="UTC", run_immediately=timedelta(0))

DEFAULT_ARGS = {
    "owner": "mmcompress",
    "retries": 1,
    "retry_delay": timedelta(minutes=2),
    "execution_timeout": timedelta(hours=2),
}

PIPELINE_PARAMS = {
    "project_root": Param(
        DEFAULT_ROOT,
        type="string",
        minLength=1,
        title="Project root",
        description="Directory holding params.yaml; the artifacts are written under it.",
    ),
    "catalog_path": Param(
        None,
        type=["null", "string"],
        title="Catalog file",
        description="A user catalog (.parquet). Empty: the embedded MovieLens catalog.",
    ),
    "max_items": Param(
        None,
        type=["null", "integer"],
        minimum=1,
        title="Max items",
        description="Use only the first N items (quick runs). Empty: the whole catalog.",
    ),
    "budget_bytes": Param(
        16,
        type="integer",
        minimum=1,
        maximum=1024,
        title="Byte budget per item",
        description="Largest code size the codec search may choose.",
    ),
    "codec_spec": Param(
        "auto",
        type="string",
        minLength=1,
        title="Codec spec",
        description=(
            '"auto": fit the params.yaml codecs plus the budgeted auto search (the challenger). '
            'A spec such as "OPQ16,PQ16x8": fit and judge only that codec.'
        ),
    ),
    "n_shards": Param(
        4,
        type="integer",
        minimum=1,
        maximum=4096,
        title="Compression shards",
        description="The catalog is encoded in this many parallel tasks.",
    ),
    "refresh_catalog": Param(
        False,
        type="boolean",
        title="Rebuild the catalog",
        description="Run the prepare stage even when a prepared catalog exists.",
    ),
    "overrides": Param(
        {},
        type="object",
        title="Other params.yaml overrides",
        description=('Dotted params.yaml keys, e.g. {"fusion.method": "contrastive", '
                     '"index.fine.shortlist": 100}. An unknown key or a bad value fails the run at '
                     '"Resolve params". Gate thresholds (promote.*) need an override reason.'),
    ),
    "override_reason": Param(
        None,
        type=["null", "string"],
        title="Gate override reason",
        description=("Why this run changes promote.* thresholds. Required for such overrides; "
                     "recorded on the MLflow run, the registry version and the report."),
    ),
}

INDEX_PARAMS = {
    key: PIPELINE_PARAMS[key] for key in ("project_root", "catalog_path", "max_items", "overrides",
                                          "override_reason")
}


def run_stage(target: str, *args, **kwargs):
    """Call stage ``pipelines.<target>`` (imported here, not at parse time): data, config and
    validation errors fail the task at once, others keep its retries (``call_stage``)."""
    from pipelines.stage_runner import call_stage

    return call_stage(target, *args, **kwargs)


def stage_root(root: str) -> str | Path:
    """Hand stages a ``Path`` for local roots and the URL string unchanged for object storage."""
    return root if "://" in root else Path(root)


def run_overrides(params: dict) -> dict:
    """Translate the trigger form into dotted ``params.yaml`` overrides."""
    overrides = dict(params.get("overrides") or {})
    if TRACKING_URI:
        overrides.setdefault("tracking.uri", TRACKING_URI)
    if params.get("catalog_path"):
        overrides["catalog.source"] = "parquet"
        overrides["catalog.path"] = params["catalog_path"]
    if params.get("max_items") is not None:
        overrides["catalog.max_items"] = params["max_items"]
    if "budget_bytes" in params:
        overrides["compress.budget_bytes"] = params["budget_bytes"]
    if "n_shards" in params:
        overrides["compress.n_shards"] = params["n_shards"]
    spec = params.get("codec_spec", "auto")
    if spec and spec != "auto":
        overrides["compress.auto"] = False
        overrides["compress.codecs"] = [spec]
        overrides["compress.challenger"] = spec
    if (params.get("override_reason") or "").strip():
        overrides["promote.override_reason"] = params["override_reason"].strip()
    return overrides


@task(task_display_name="Resolve params", retries=0, execution_timeout=timedelta(minutes=2))
def resolve_params(params: dict | None = None) -> dict:
    """Freeze this run's configuration: params.yaml plus the trigger form's overrides."""
    from pipelines.config import confine_paths, load_params, require_gate_reason

    root = params["project_root"]
    overrides = run_overrides(params)
    require_gate_reason(overrides)
    confine_paths(root, {}, ALLOWED_ROOTS)  # before reading anything under it
    params_file = f"{root.rstrip('/')}/params.yaml" if "://" in root else Path(root) / "params.yaml"
    resolved = load_params(params_file, overrides)
    confine_paths(root, resolved, ALLOWED_ROOTS)
    return {"root": root, "params": resolved, "overrides": overrides,
            "n_shards": int(params.get("n_shards", 1))}


@task.branch(task_display_name="Catalog ready?", retries=0)
def choose_catalog_step(cfg: dict, params: dict | None = None) -> str:
    """Skip ``prepare`` only when the prepared catalog was built from exactly this run's
    inputs (catalog and encoder settings, input file digests) and no refresh was asked for:
    a form field that changes the catalog (file, slice) always takes effect."""
    from pipelines.prepare import catalog_identity, prepared_identity

    root = cfg["root"]
    if params.get("refresh_catalog") or "://" in root:
        return "prepare"
    wanted = catalog_identity(cfg["params"], Path(root))["sha256"]
    return "validate" if prepared_identity(cfg["params"], Path(root)) == wanted else "prepare"


@task(task_display_name="Prepare catalog", executor=HEAVY_EXECUTOR,
      execution_timeout=timedelta(hours=4))
def prepare(cfg: dict) -> dict:
    return run_stage("prepare.prepare", cfg["params"], stage_root(cfg["root"]))


@task(
    task_display_name="Validate catalog",
    retries=0,
    trigger_rule="none_failed_min_one_success",
    execution_timeout=timedelta(hours=1),
)
def validate(cfg: dict) -> dict:
    """Data contract check; a failure is deterministic, so it is not retried."""
    return run_stage("validate.validate", cfg["params"], stage_root(cfg["root"]))


@task(task_display_name="Train fusion + codec", executor=HEAVY_EXECUTOR,
      execution_timeout=timedelta(hours=6))
def train(cfg: dict) -> dict:
    return run_stage("train.train", cfg["params"], stage_root(cfg["root"]))


@task(task_display_name="Plan shards", retries=0)
def shard_numbers(cfg: dict) -> list[int]:
    return list(range(cfg["n_shards"]))


@task(
    task_display_name="Compress shard",
    executor=HEAVY_EXECUTOR,
    map_index_template="shard {{ shard_label }}",
    execution_timeout=timedelta(hours=2),
)
def compress_shard(cfg: dict, shard: int) -> str:
    """Encode one shard of the catalog with the trained codec; returns the shard's codes path."""
    get_current_context()["shard_label"] = f"{shard + 1}/{cfg['n_shards']}"
    return str(run_stage("compress.compress_shard", cfg["params"], stage_root(cfg["root"]), shard=shard,
                         n_shards=cfg["n_shards"]))


@task(task_display_name="Merge shards", execution_timeout=timedelta(hours=1))
def merge_shards(cfg: dict, shard_paths: list[str]) -> dict:
    result = run_stage("compress.merge_shards", cfg["params"], stage_root(cfg["root"]), n_shards=cfg["n_shards"])
    return {**result, "shards": list(shard_paths)}


@task(task_display_name="Build index", execution_timeout=timedelta(hours=2))
def build_index(cfg: dict) -> dict:
    return run_stage("index.build_index", cfg["params"], stage_root(cfg["root"]))


@task(task_display_name="Evaluate", execution_timeout=timedelta(hours=2))
def evaluate(cfg: dict) -> dict:
    return run_stage("evaluate.evaluate", cfg["params"], stage_root(cfg["root"]))


@task(task_display_name="Promotion gate", retries=0, execution_timeout=timedelta(minutes=30))
def promote(cfg: dict) -> dict:
    """Registers the candidate and moves the ``champion`` alias only when the gate passes."""
    return run_stage("promote.promote", cfg["params"], stage_root(cfg["root"]))


@dag(
    dag_id="mmcompress_pipeline",
    dag_display_name="mmcompress: train → compress → index → promote",
    description="Validate the catalog, train the codec, compress in shards, index, evaluate, promote.",
    schedule=WEEKLY,
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=12),
    default_args=DEFAULT_ARGS,
    params=PIPELINE_PARAMS,
    tags=["mmcompress", "training"],
    doc_md=__doc__,
)
def mmcompress_pipeline():
    cfg = resolve_params()
    branch = choose_catalog_step(cfg)
    prepared = prepare(cfg)
    checked = validate(cfg)
    branch >> [prepared, checked]
    prepared >> checked
    trained = train(cfg)
    checked >> trained
    shards = shard_numbers(cfg)
    codes = compress_shard.partial(cfg=cfg).expand(shard=shards)
    trained >> codes
    merged = merge_shards(cfg, codes)
    indexed = build_index(cfg)
    merged >> indexed
    evaluated = evaluate(cfg)
    indexed >> evaluated
    evaluated >> promote(cfg)


@dag(
    dag_id="mmcompress_rebuild_index",
    dag_display_name="mmcompress: rebuild index only",
    description="Rebuild the search index from the current codes; no retraining, no promotion.",
    schedule=None,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    params=INDEX_PARAMS,
    tags=["mmcompress", "index"],
)
def mmcompress_rebuild_index():
    build_index(resolve_params())


mmcompress_pipeline()
mmcompress_rebuild_index()
