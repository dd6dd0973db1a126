"""Daily drift check of the newest catalog batch; triggers retraining when the drift stage says so.

The decision is the drift stage's (``pipelines.drift``); this DAG only acts on it. A short-circuit
task reads the stage's ``retrain`` flag: when false, the trigger is skipped and the run ends
green; when true, a ``TriggerDagRunOperator`` starts ``mmcompress_pipeline`` with the same
project root and slice, and records the drift reasons in the triggered run's ``conf``.

A trigger (rather than an Asset the pipeline is scheduled on) keeps one place that says why a
retraining run happened — its ``conf`` carries the drift reasons and the report path — and leaves
the pipeline's weekly schedule a plain cron.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import CronTriggerTimetable, Param, conf, dag, task

DEFAULT_ROOT = conf.get("mmcompress", "project_root", fallback="").strip() or str(
    Path(__file__).resolve().parents[1]
)
ALLOWED_ROOTS = [r.strip() for r in conf.get("mmcompress", "allowed_roots", fallback="").split(",")
                 if r.strip()] or [DEFAULT_ROOT]  # as in mmcompress_pipeline.py
PIPELINE_DAG_ID = "mmcompress_pipeline"


@task(task_display_name="Resolve params", retries=0, execution_timeout=timedelta(minutes=2))
def resolve_params(params: dict | None = None) -> dict:
    from pipelines.config import confine_paths, load_params

    root = params["project_root"]
    overrides = dict(params.get("overrides") or {})
    if params.get("max_items") is not None:
        overrides["catalog.max_items"] = params["max_items"]
    confine_paths(root, {}, ALLOWED_ROOTS)
    params_file = f"{root.rstrip('/')}/params.yaml" if "://" in root else Path(root) / "params.yaml"
    resolved = load_params(params_file, overrides)
    confine_paths(root, resolved, ALLOWED_ROOTS)
    return {"root": root, "params": resolved, "overrides": overrides}


@task(task_display_name="Detect drift", execution_timeout=timedelta(hours=1))
def detect_drift(cfg: dict) -> dict:
    """Compare the newest catalog batch with the reference; returns ``retrain``, reasons, report."""
    from pipelines.stage_runner import call_stage  # data errors fail at once, others retry

    root = cfg["root"]
    return call_stage("drift.drift", cfg["params"], root if "://" in root else Path(root))


@task.short_circuit(task_display_name="Retrain needed?", retries=0)
def retrain_needed(report: dict) -> bool:
    return bool(report["retrain"])


@dag(
    dag_id="mmcompress_drift",
    dag_display_name="mmcompress: daily drift check",
    description="Detect distribution shift in the newest catalog batch; trigger retraining on drift.",
    # unpausing waits for the next 04:00 (see WEEKLY in mmcompress_pipeline.py for why not False)
    schedule=CronTriggerTimetable("0 4 * * *", timezone="UTC", run_immediately=timedelta(0)),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=timedelta(hours=2),
    default_args={"owner": "mmcompress", "retries": 1, "retry_delay": timedelta(minutes=2)},
    render_template_as_native_obj=True,
    params={
        "project_root": Param(DEFAULT_ROOT, type="string", minLength=1, title="Project root"),
        "max_items": Param(None, type=["null", "integer"], minimum=1, title="Max items"),
        "overrides": Param({}, type="object", title="params.yaml overrides (dotted keys)"),
        "override_reason": Param(None, type=["null", "string"], title="Gate override reason",
                                 description="Passed to the retraining run: required there when the "
                                             "overrides change promote.* thresholds."),
    },
    tags=["mmcompress", "monitoring"],
    doc_md=__doc__,
)
def mmcompress_drift():
    report = detect_drift(resolve_params())
    trigger = TriggerDagRunOperator(
        task_id="trigger_retraining",
        task_display_name="Trigger retraining",
        trigger_dag_id=PIPELINE_DAG_ID,
        trigger_run_id="drift__{{ run_id }}",
        conf={
            "project_root": "{{ params.project_root }}",
            "max_items": "{{ params.max_items }}",
            "overrides": "{{ params.overrides }}",
            "override_reason": "{{ params.override_reason }}",
            "refresh_catalog": False,
            "drift_reasons": "{{ ti.xcom_pull(task_ids='detect_drift')['reasons'] }}",
            "drift_report": "{{ ti.xcom_pull(task_ids='detect_drift')['report'] }}",
        },
        wait_for_completion=False,
        skip_when_already_exists=True,
        retries=0,
    )
    retrain_needed(report) >> trigger


mmcompress_drift()
