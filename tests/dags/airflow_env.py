"""The Airflow environment of the DAG tests: a temporary AIRFLOW_HOME (SQLite metadata DB).

Airflow reads its configuration when it is first imported, so this module sets the environment
when ``tests/dags/conftest.py`` imports it — before any test module here imports airflow.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
VENV_BIN = Path(sys.executable).parent

if "airflow.configuration" in sys.modules:
    raise RuntimeError("airflow was imported before tests/dags could point it at a temporary "
                       "AIRFLOW_HOME; run the DAG tests in their own pytest process")

AIRFLOW_HOME = Path(tempfile.mkdtemp(prefix="mmcompress-airflow-"))
AIRFLOW_ENV = {
    "AIRFLOW_HOME": str(AIRFLOW_HOME),
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
    "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{AIRFLOW_HOME}/airflow.db",
    "AIRFLOW__MMCOMPRESS__HEAVY_EXECUTOR": "",
    "AIRFLOW__MMCOMPRESS__PROJECT_ROOT": "",
    "AIRFLOW__MMCOMPRESS__TRACKING_URI": "",
    # test projects live in the temp dir; the text-embedding cache is the repository's
    "AIRFLOW__MMCOMPRESS__ALLOWED_ROOTS": f"{tempfile.gettempdir()},{REPO / 'data' / 'cache'}",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
}
os.environ.update(AIRFLOW_ENV)
# tasks run in this process (dag.test) or in worker subprocesses on a shared 2-core machine:
# one BLAS/OpenMP thread each, or oversubscribed spinning threads slow stages down ~40x
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ["PATH"] = f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}"
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([os.environ["PYTHONPATH"]]
                                                          if os.environ.get("PYTHONPATH") else []))
atexit.register(shutil.rmtree, AIRFLOW_HOME, ignore_errors=True)

# The 400-item slice of the embedded MovieLens catalog, as a UI trigger would pass it.
SLICE_CONF = {
    "max_items": 400,
    "n_shards": 2,
    "budget_bytes": 64,
    "codec_spec": "PCA64,SQ8",
    "overrides": {
        "encoders.collaborative.dim": 16,
        "encoders.text.cache_dir": str(REPO / "data" / "cache" / "text"),
        "fusion.epochs": 5,
        "evaluate.n_queries": 40,
        "compress.chunk_rows": 64,
        "drift.permutations": 50,
        # resident bytes amortise fixed codec tables (PCA, coarse rotation) over the items: on
        # 400 items they add ~1 KB per item, on a real catalog nothing; the gate's per-item
        # budget is sized for the slice
        "promote.max_bytes_per_item": 4096,
    },
    "override_reason": "400-item test slice: fixed codec tables dominate the per-item bytes",
}


def slice_conf(root: Path, **extra) -> dict:
    return {**SLICE_CONF, "project_root": str(root), **extra}


def make_project(dst: Path) -> Path:
    """A project root holding what the stages read: params.yaml and the raw MovieLens files."""
    (dst / "data" / "raw").mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "params.yaml", dst / "params.yaml")
    shutil.copytree(REPO / "data" / "raw" / "movielens", dst / "data" / "raw" / "movielens")
    return dst


def task_states(dr) -> dict[tuple[str, int], str]:
    return {(ti.task_id, ti.map_index): str(ti.state) for ti in dr.get_task_instances()}


def xcom(dr, task_id: str):
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session

    with create_session() as session:
        row = session.scalars(XComModel.get_many(run_id=dr.run_id, dag_ids=dr.dag_id,
                                                 task_ids=task_id, key="return_value")).first()
        return None if row is None else XComModel.deserialize_value(row)
