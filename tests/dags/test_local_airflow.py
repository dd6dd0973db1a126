"""`make airflow` on a laptop: every listener on loopback, unpausing starts no run, one Ctrl-C
stops every component.

Starts ``dags/run_local_airflow.sh`` for real (its own AIRFLOW_HOME and port), waits for the
API server and the scheduler, checks the listening sockets of every process it started,
records their memory, then sends SIGINT to its process group, as a terminal's Ctrl-C does.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import psutil
import pytest

from tests.dags.airflow_env import REPO, VENV_BIN
from tests.ports import free_port

LOOPBACK = {"127.0.0.1", "::1"}


def _session(sid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                out.append(p)
        except (ProcessLookupError, psutil.Error):
            continue
    return out


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v2/monitor/health", timeout=5) as r:
            return json.load(r)
    except OSError:
        return None


def _api(port: int, method: str, path: str, token: str | None = None, body: dict | None = None) -> dict:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json",
                                          **({"Authorization": f"Bearer {token}"} if token else {})})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def _unpausing_starts_no_run(port: int, home) -> None:
    """Unpause mmcompress_pipeline through the REST API as an operator would, give the scheduler
    time for several loops, and check that no run was created and the next one is in the future."""
    from datetime import UTC, datetime

    password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
    token = _api(port, "POST", "/auth/token", body={"username": "admin", "password": password})["access_token"]
    deadline = time.monotonic() + 240
    while True:  # the dag-processor parses the DAG files after start
        try:
            _api(port, "GET", "/api/v2/dags/mmcompress_pipeline", token)
            break
        except OSError:
            assert time.monotonic() < deadline, "mmcompress_pipeline was never parsed"
            time.sleep(3)
    dag = _api(port, "PATCH", "/api/v2/dags/mmcompress_pipeline", token, {"is_paused": False})
    assert dag["is_paused"] is False
    time.sleep(20)  # the scheduler loops every second or so
    runs = _api(port, "GET", "/api/v2/dags/mmcompress_pipeline/dagRuns", token)
    assert runs["total_entries"] == 0, runs["dag_runs"]
    dag = _api(port, "GET", "/api/v2/dags/mmcompress_pipeline", token)
    nxt = dag.get("next_dagrun_run_after")
    assert nxt and datetime.fromisoformat(nxt) > datetime.now(UTC), dag


@pytest.mark.timeout(600)
def test_local_airflow_listens_on_loopback_and_stops_on_one_ctrl_c(tmp_path):
    port = free_port()
    # a project root of its own: a run this Airflow started by mistake must not touch the checkout
    (tmp_path / "project").mkdir()
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path / "airflow_home"), "AIRFLOW_PORT": str(port),
           "VENV": str(VENV_BIN.parent), "AIRFLOW__MMCOMPRESS__PROJECT_ROOT": str(tmp_path / "project")}
    log = open(tmp_path / "airflow.log", "wb")
    proc = subprocess.Popen(["bash", str(REPO / "dags" / "run_local_airflow.sh")], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        health = None
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "airflow.log").read_text()[-3000:]
            health = _health(port)
            if health and health.get("scheduler", {}).get("status") == "healthy" and \
                    health.get("triggerer", {}).get("status") == "healthy":
                break
            time.sleep(2)
        assert health and health["scheduler"]["status"] == "healthy", (health, (tmp_path / "airflow.log").read_text()[-3000:])
        assert (tmp_path / "airflow_home" / "simple_auth_manager_passwords.json.generated").exists()
        procs = _session(proc.pid)
        listening = set()
        for p in procs:
            try:
                listening |= {(c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                              if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                continue
        assert ("127.0.0.1", port) in listening
        assert all(ip in LOOPBACK for ip, _ in listening), f"listeners off loopback: {sorted(listening)}"
        pss = 0
        for p in procs:
            try:
                pss += p.memory_full_info().pss
            except psutil.Error:
                continue
        print(f"local Airflow: {len(procs)} processes, {pss / 2**20:.0f} MiB PSS, listening on {sorted(listening)}")
        assert pss < 1.5 * 2**30  # laptop-sized (Airflow's default 32 LocalExecutor workers took ~1.8 GB)
        _unpausing_starts_no_run(port, tmp_path / "airflow_home")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C: the whole foreground process group
        try:
            proc.wait(timeout=60)
        finally:
            left = [p for p in _session(proc.pid) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
            for p in left:
                p.kill()
            log.close()
    assert not left, f"still running after Ctrl-C: {[p.cmdline()[:3] for p in left]}"
    assert "Airflow stopped" in (tmp_path / "airflow.log").read_text()
