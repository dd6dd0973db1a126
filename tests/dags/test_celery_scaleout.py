"""Scale-out: Airflow with CeleryExecutor on PostgreSQL + Redis, two Celery workers.

Starts api-server, scheduler, dag-processor and two ``airflow celery worker`` processes, triggers
``mmcompress_pipeline`` over the REST API on the 400-item slice, and checks that the compression
shards ran on both workers and that the codes equal those of the in-process ``dag.test()`` run.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest

from pipelines.config import Layout
from tests.dags.airflow_env import DAGS, REPO, VENV_BIN, slice_conf
from tests.dags.celery_local_settings import BARRIER_ENV
from tests.ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.services]
PG = {"host": "127.0.0.1", "port": 5432}
REDIS = {"host": "127.0.0.1", "port": 6379}
# two shards, one per worker: the barrier below makes each worker take one, which is all the
# test needs to show; more shards only add task start-ups (~10 s each on 2 cores)
N_SHARDS = 2
WORKERS = ("worker-a", "worker-b")



@pytest.fixture
def metadata_db():
    """A fresh PostgreSQL database for Airflow's metadata; dropped afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    conn = None
    for user in ("postgres", "root"):
        try:
            conn = psycopg2.connect(dbname="postgres", user=user, connect_timeout=3, **PG)
            break
        except psycopg2.OperationalError as e:
            reason = str(e).strip()
    if conn is None:
        pytest.skip(f"PostgreSQL not reachable on {PG['host']}:{PG['port']}: {reason}")
    conn.autocommit = True
    name = f"mmcompress_airflow_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{user}@{PG['host']}:{PG['port']}/{name}"
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@pytest.fixture
def broker():
    """A Redis database number nobody uses (claimed with an atomic key); flushed afterwards."""
    redis = pytest.importorskip("redis")
    try:
        redis.Redis(socket_timeout=3, **REDIS).ping()
    except redis.RedisError as e:
        pytest.skip(f"Redis not reachable on {REDIS['host']}:{REDIS['port']}: {e}")
    token = uuid.uuid4().hex
    for n in range(15, 0, -1):
        r = redis.Redis(db=n, socket_timeout=3, **REDIS)
        if r.dbsize() == 0 and r.set("mmcompress:claimed-by", token, nx=True, ex=1800):
            break
    else:
        pytest.skip("no free Redis database number (1-15) to claim")
    try:
        yield f"redis://{REDIS['host']}:{REDIS['port']}/{n}"
    finally:
        r.flushdb()


class Cluster:
    """Airflow components as subprocesses sharing one environment; logs under ``home/logs``."""

    def __init__(self, home: Path, db: str, broker_url: str, project_root: Path):
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
        self.env.update({
            "AIRFLOW_HOME": str(home),
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONPATH": str(REPO),
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.dags.worker_hostname.hostname",
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__BROKER_URL": broker_url,
            "AIRFLOW__CELERY__RESULT_BACKEND": f"db+postgresql+psycopg2://{db}",
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": "1",
            "AIRFLOW__CELERY__TASK_ACKS_LATE": "True",
            "AIRFLOW__CELERY__WORKER_PREFETCH_MULTIPLIER": "1",
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(self.port),
            "AIRFLOW__API__BASE_URL": self.url,
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
            "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__MMCOMPRESS__HEAVY_EXECUTOR": "",
            "AIRFLOW__MMCOMPRESS__TRACKING_URI": "",
            # the DAG's default root is this repository: nothing the cluster runs may write there
            "AIRFLOW__MMCOMPRESS__PROJECT_ROOT": str(project_root),
            "AIRFLOW__MMCOMPRESS__ALLOWED_ROOTS": f"{project_root},{REPO / 'data' / 'cache'}",
            "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
        })
        self.procs: dict[str, subprocess.Popen] = {}

    def airflow(self, *args: str, timeout: int = 300) -> None:
        p = subprocess.run(["airflow", *args], env=self.env, capture_output=True, text=True,
                           timeout=timeout)
        assert p.returncode == 0, f"airflow {' '.join(args)}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"

    def start(self, name: str, *args: str, **env: str) -> None:
        log = open(self.home / f"{name}.out", "w")  # noqa: SIM115 — closed with the process
        self.procs[name] = subprocess.Popen(["airflow", *args], env={**self.env, **env},
                                            stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)

    def output(self, name: str) -> str:
        return (self.home / f"{name}.out").read_text()[-3000:]

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            assert p.poll() is None, f"{name} exited with {p.returncode}:\n{self.output(name)}"


def wait_for(what: str, check, cluster: Cluster, timeout: float, every: float = 2.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cluster.check_alive()
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def fresh_project(trained_root: Path, dst: Path) -> Path:
    """params + raw data + the prepared catalog of the trained project; nothing trained."""
    for rel in ("params.yaml", "data/raw/movielens", "data/catalog"):
        src, target = trained_root / rel, dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, target)
    return dst


def test_mapped_compression_runs_on_two_celery_workers(trained_project, metadata_db, broker,
                                                       tmp_path):
    trained_root, in_process_run = trained_project
    assert str(in_process_run.state) == "success"
    root = fresh_project(trained_root, tmp_path / "project")
    home = tmp_path / "airflow"
    (home / "config").mkdir(parents=True)
    # the workers hold each shard until a second one runs: tiny shards would not overlap otherwise
    shutil.copy2(Path(__file__).with_name("celery_local_settings.py"),
                 home / "config" / "airflow_local_settings.py")
    barrier = tmp_path / "shard-barrier"
    cluster = Cluster(home, metadata_db, broker, root)
    cluster.env[BARRIER_ENV] = str(barrier)
    cluster.airflow("db", "migrate")
    try:
        cluster.start("api-server", "api-server")
        cluster.start("scheduler", "scheduler")
        cluster.start("dag-processor", "dag-processor")
        for name in WORKERS:
            cluster.start(name, "celery", "worker", "--celery-hostname", f"{name}@%h",
                          "--skip-serve-logs", MMCOMPRESS_WORKER_NAME=name)
        api = httpx.Client(base_url=f"{cluster.url}/api/v2", timeout=10)
        # both workers consuming before the run starts, else the first one up may take every shard
        wait_for("both Celery workers to consume", lambda: all(
            " ready." in (home / f"{name}.out").read_text(errors="replace") for name in WORKERS),
            cluster, timeout=120)

        def healthy():
            h = api.get("/monitor/health").json()
            return all(h[c]["status"] == "healthy" for c in ("metadatabase", "scheduler", "dag_processor"))

        wait_for("api-server, scheduler and dag-processor", healthy, cluster, timeout=120)
        wait_for("the pipeline DAG to be parsed",
                 lambda: api.get("/dags/mmcompress_pipeline").status_code == 200, cluster, timeout=90)
        assert api.get("/importErrors").json()["total_entries"] == 0
        api.patch("/dags/mmcompress_pipeline", json={"is_paused": False}).raise_for_status()
        r = api.post("/dags/mmcompress_pipeline/dagRuns",
                     json={"logical_date": None, "conf": slice_conf(root, n_shards=N_SHARDS)})
        r.raise_for_status()
        run_id = r.json()["dag_run_id"]

        def finished():
            state = api.get(f"/dags/mmcompress_pipeline/dagRuns/{run_id}").json()["state"]
            return state if state in ("success", "failed") else None

        state = wait_for("the pipeline run", finished, cluster, timeout=240, every=3)
        tis = api.get(f"/dags/mmcompress_pipeline/dagRuns/{run_id}/taskInstances",
                      params={"limit": 100}).json()["task_instances"]
        summary = {(t["task_id"], t["map_index"]): (t["state"], t["hostname"]) for t in tis}
        assert state == "success", summary
        # unpausing must not have started a default run of its own (the weekly slot): with
        # max_active_runs=1 it would queue the triggered run behind a full-catalog run
        runs = api.get("/dags/mmcompress_pipeline/dagRuns").json()["dag_runs"]
        assert [r["dag_run_id"] for r in runs] == [run_id], runs

        # a second training run and an index rebuild triggered together on the same root: the
        # stages' artifact lock serialises their writes, and promote registers only the index
        # its own run measured, so the champion stays a verified index whatever the interleaving
        api.patch("/dags/mmcompress_rebuild_index", json={"is_paused": False}).raise_for_status()
        again = api.post("/dags/mmcompress_pipeline/dagRuns",
                         json={"logical_date": None, "conf": slice_conf(root, n_shards=N_SHARDS)}).json()
        rebuild_conf = {k: v for k, v in slice_conf(root).items()
                        if k in ("project_root", "max_items", "overrides", "override_reason")}
        rebuild = api.post("/dags/mmcompress_rebuild_index/dagRuns",
                           json={"logical_date": None, "conf": rebuild_conf}).json()

        def both_finished():
            states = [api.get(f"/dags/{d}/dagRuns/{r['dag_run_id']}").json()["state"]
                      for d, r in (("mmcompress_pipeline", again), ("mmcompress_rebuild_index", rebuild))]
            return states if all(x in ("success", "failed") for x in states) else None

        concurrent = wait_for("the concurrent runs", both_finished, cluster, timeout=300, every=3)
        again_tis = api.get(f"/dags/mmcompress_pipeline/dagRuns/{again['dag_run_id']}/taskInstances",
                            params={"limit": 100}).json()["task_instances"]
    finally:
        cluster.stop()
    assert concurrent[1] == "success", concurrent
    if concurrent[0] == "failed":  # only a refusal at promote is acceptable: the index changed under it
        failed = {t["task_id"] for t in again_tis if t["state"] == "failed"}
        assert failed == {"promote"}, failed
    from mlflow import MlflowClient

    from mmcompress.tracking.registry import (
        INDEX_DIGEST_TAG,
        champion_version,
        open_verified_version,
    )

    uri = f"sqlite:///{root / 'mlruns.db'}"
    champion = champion_version(MlflowClient(tracking_uri=uri), "mmcompress-codec")
    assert champion.tags["verification"] == "passed"
    open_verified_version(uri, "mmcompress-codec", str(champion.version), champion.tags[INDEX_DIGEST_TAG],
                          tmp_path / "champion").close()
    print(f"concurrent pipeline + rebuild-index: {concurrent}; champion v{champion.version} verified")
    for t in sorted(tis, key=lambda t: t["start_date"] or ""):
        print(f"{t['task_id']}[{t['map_index']}] {t['state']} on {t['hostname']}: "
              f"{t['duration'] or 0:.1f} s")

    shards = {k: v for k, v in summary.items() if k[0] == "compress_shard"}
    assert sorted(i for _, i in shards) == list(range(N_SHARDS))
    assert sorted(int(p.name) for p in barrier.iterdir()) == list(range(N_SHARDS))
    assert {state for state, _ in shards.values()} == {"success"}
    assert {host for _, host in shards.values()} == set(WORKERS), shards
    assert {host for (task, _), (_, host) in summary.items() if host} <= set(WORKERS)

    ours, reference = Layout(root).codes_dir, Layout(trained_root).codes_dir
    names = sorted(p.name for p in reference.glob("*.npy"))
    assert names and sorted(p.name for p in ours.glob("*.npy")) == names
    for name in names:
        np.testing.assert_array_equal(np.load(ours / name), np.load(reference / name))
