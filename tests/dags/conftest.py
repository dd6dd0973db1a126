"""Fixtures of the DAG tests: one migrated metadata DB, one DagBag and one trained project per session."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.dags.airflow_env import AIRFLOW_HOME, DAGS, VENV_BIN, make_project, slice_conf


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """``airflow db migrate`` on the session's SQLite metadata DB."""
    p = subprocess.run([str(VENV_BIN / "airflow"), "db", "migrate"], capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return AIRFLOW_HOME / "airflow.db"


@pytest.fixture(scope="session")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory, airflow_db, dagbag):
    """A project after one ``mmcompress_pipeline`` run through ``dag.test()`` on the slice."""
    root = make_project(tmp_path_factory.mktemp("pipeline-project"))
    dr = dagbag.dags["mmcompress_pipeline"].test(run_conf=slice_conf(root))
    return root, dr
