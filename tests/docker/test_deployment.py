"""The deployment files: compose has the production services, Airflow loads the config they set,
and every command the image runs exists in the project's environment."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
VENV_BIN = Path(sys.executable).parent
STAGES = ("prepare", "validate", "train", "compress", "index", "evaluate", "promote", "drift")
AIRFLOW_SERVICES = {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker-1", "airflow-worker-2"}
SECRETS = {"POSTGRES_PASSWORD": "pg-secret", "MINIO_ROOT_PASSWORD": "minio-secret",
           "AIRFLOW_JWT_SECRET": "jwt-secret", "AIRFLOW_API_SECRET_KEY": "api-secret"}

_VAR = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's variable substitution: ${V}, ${V:-default}, ${V-default}, ${V:?error}, $$."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1), m.group(2), m.group(3)
        present = name in env
        if op == ":-":
            return env[name] if env.get(name) else arg
        if op == "-":
            return env[name] if present else arg
        if op in (":?", "?"):
            if (op == ":?" and not env.get(name)) or not present:
                raise KeyError(f"{name}: {arg}")
            return env[name]
        return env.get(name, "")

    return _VAR.sub(sub, value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "compose.yaml").read_text())


def airflow_env(compose: dict, env: dict[str, str]) -> dict[str, str]:
    block = compose["services"]["airflow-scheduler"]["environment"]
    return {k: str(v) for k, v in interpolate(block, env).items()}


def run_python(code: str, env: dict[str, str], timeout: int = 120) -> dict:
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                       timeout=timeout)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-4000:]
    return json.loads(p.stdout.strip().splitlines()[-1])


def deployment_env(compose: dict, tmp_path: Path, **variables: str) -> dict[str, str]:
    """The environment an Airflow container gets, on this machine (temp AIRFLOW_HOME, repo DAGs)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(airflow_env(compose, {**SECRETS, **variables}))
    env["AIRFLOW_CONFIG"] = str(DOCKER / "airflow.cfg")  # the image's path, from this checkout
    env["AIRFLOW_HOME"] = str(tmp_path)
    env["AIRFLOW__CORE__DAGS_FOLDER"] = str(REPO / "dags")
    env["PYTHONPATH"] = str(REPO)
    return env


def test_compose_defines_the_production_services(compose):
    services = compose["services"]
    assert {"postgres", "redis", "minio", "minio-init", "mlflow"} | AIRFLOW_SERVICES <= set(services)
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES - {"airflow-init"}}
    assert commands["airflow-apiserver"] == ["airflow", "api-server"]
    assert commands["airflow-scheduler"] == ["airflow", "scheduler"]
    assert commands["airflow-dag-processor"] == ["airflow", "dag-processor"]
    assert commands["airflow-triggerer"] == ["airflow", "triggerer"]
    workers = [services[f"airflow-worker-{i}"] for i in (1, 2)]
    assert all(w["command"][:3] == ["airflow", "celery", "worker"] for w in workers)
    assert len({w["command"][w["command"].index("--celery-hostname") + 1] for w in workers}) == 2
    for name in AIRFLOW_SERVICES:
        assert services[name]["image"] == "mmcompress:latest"
        assert services[name]["environment"] is services["airflow-scheduler"]["environment"]

    env = airflow_env(compose, SECRETS)
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://redis:6379/")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor,KubernetesExecutor"
    assert env["AIRFLOW__MMCOMPRESS__HEAVY_EXECUTOR"] == "KubernetesExecutor"

    mlflow = services["mlflow"]["command"]
    assert mlflow[:2] == ["mlflow", "server"]
    opts = dict(a.split("=", 1) for a in mlflow[2:] if "=" in a)
    assert opts["--backend-store-uri"].startswith("postgresql+psycopg2://")
    assert opts["--artifacts-destination"].startswith("s3://")
    assert services["mlflow"]["environment"]["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    # the tracking server has no authentication: never published beyond the host's loopback
    assert all(str(p).startswith("127.0.0.1:") for p in services["mlflow"].get("ports", [])), \
        services["mlflow"]["ports"]


def test_docker_compose_itself_accepts_the_file(tmp_path):
    """Compose's own interpolation and schema, where the docker CLI exists (not re-implemented)."""
    import shutil

    docker = shutil.which("docker")
    if docker is None or subprocess.run([docker, "compose", "version"], capture_output=True).returncode:
        pytest.skip("no docker CLI with the compose plugin on this machine")
    env = {**os.environ, **SECRETS}
    out = subprocess.run([docker, "compose", "-f", str(DOCKER / "compose.yaml"), "config", "--format", "json"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    mlflow = json.loads(out.stdout)["services"]["mlflow"]
    assert all(p.get("host_ip") == "127.0.0.1" for p in mlflow.get("ports", []))


def test_compose_refuses_to_start_without_secrets(compose):
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        airflow_env(compose, {k: v for k, v in SECRETS.items() if k != "POSTGRES_PASSWORD"})


def test_airflow_loads_the_deployment_config(compose, tmp_path):
    code = (
        "import json\n"
        "from airflow.configuration import conf\n"
        "from airflow.executors.executor_loader import ExecutorLoader\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=conf.get('core', 'dags_folder'))\n"
        "heavy = {t.task_id for t in bag.dags['mmcompress_pipeline'].tasks if t.executor}\n"
        "print(json.dumps({\n"
        "  'executors': [n.alias for n in ExecutorLoader.get_executor_names()],\n"
        "  'sql': conf.get('database', 'sql_alchemy_conn'),\n"
        "  'broker': conf.get('celery', 'broker_url'),\n"
        "  'worker_concurrency': conf.getint('celery', 'worker_concurrency'),\n"
        "  'pod_template': conf.get('kubernetes_executor', 'pod_template_file'),\n"
        "  'execution_api': conf.get('core', 'execution_api_server_url'),\n"
        "  'heavy_executor': conf.get('mmcompress', 'heavy_executor'),\n"
        "  'project_root': conf.get('mmcompress', 'project_root'),\n"
        "  'tracking_uri': conf.get('mmcompress', 'tracking_uri'),\n"
        "  'load_examples': conf.getboolean('core', 'load_examples'),\n"
        "  'import_errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "  'heavy_tasks': sorted(heavy)}))\n"
    )
    seen = run_python(code, deployment_env(compose, tmp_path))
    assert seen["executors"] == ["CeleryExecutor", "KubernetesExecutor"]
    assert seen["sql"] == "postgresql+psycopg2://airflow:pg-secret@postgres:5432/airflow"
    assert seen["broker"] == "redis://redis:6379/0"
    assert seen["worker_concurrency"] == 2
    assert seen["execution_api"] == "http://airflow-apiserver:8080/execution/"
    assert seen["heavy_executor"] == "KubernetesExecutor"
    assert seen["project_root"] == "/srv/mmcompress"
    assert seen["tracking_uri"] == "http://mlflow:5000"
    assert seen["load_examples"] is False
    assert seen["import_errors"] == {}
    assert seen["heavy_tasks"] == ["compress_shard", "prepare", "train"]
    pod = yaml.safe_load((DOCKER / Path(seen["pod_template"]).name).read_text())
    assert [c["name"] for c in pod["spec"]["containers"]] == ["base"]


def test_without_a_cluster_celery_runs_everything(compose, tmp_path):
    code = (
        "import json\n"
        "from airflow.configuration import conf\n"
        "from airflow.dag_processing.dagbag import DagBag\n"
        "bag = DagBag(dag_folder=conf.get('core', 'dags_folder'))\n"
        "print(json.dumps({'executor': conf.get('core', 'executor'),\n"
        "  'errors': {k: str(v) for k, v in bag.import_errors.items()},\n"
        "  'assigned': sorted({str(t.executor) for d in bag.dags.values() for t in d.tasks})}))\n"
    )
    env = deployment_env(compose, tmp_path, AIRFLOW_EXECUTORS="CeleryExecutor",
                         MMCOMPRESS_HEAVY_EXECUTOR="")
    seen = run_python(code, env)
    assert seen == {"executor": "CeleryExecutor", "errors": {}, "assigned": ["None"]}


def image_commands(compose: dict) -> list[list[str]]:
    """The Dockerfile's CMD and every command compose runs in the project image."""
    cmds = [json.loads(m) for m in re.findall(r"^CMD (\[.*\])$",
                                              (DOCKER / "Dockerfile").read_text(), re.M)]
    for svc in compose["services"].values():
        if svc.get("image") != "mmcompress:latest":
            continue
        cmd = interpolate(svc["command"], SECRETS)
        if cmd[:2] == ["bash", "-c"]:  # the init script: its airflow calls
            cmds += [shlex.split(m) for m in re.findall(r"\b(airflow [a-z -]+?)\s*(?:&&|$)", cmd[2])]
        else:
            cmds.append(cmd)
    return cmds


def test_dockerfile_copies_files_that_exist():
    text = (DOCKER / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    for line in re.findall(r"^COPY (.+)$", text, re.M):
        for src in line.split()[:-1]:
            assert (REPO / src).exists(), src
    assert (DOCKER / "Dockerfile.dockerignore").exists()


@pytest.mark.slow
def test_image_commands_exist_in_the_project_environment(compose, tmp_path):
    commands = image_commands(compose)
    assert ["airflow", "db", "migrate"] in commands
    assert {c[0] for c in commands} == {"mmcompress", "airflow", "mlflow"}
    for prog in {c[0] for c in commands} | {"python"}:
        assert (VENV_BIN / prog).exists(), prog

    airflow_cmds = [c[1:] for c in commands if c[0] == "airflow"]
    mmcompress_cmds = [c[1:] for c in commands if c[0] == "mmcompress"]
    mlflow_cmds = [c[1:] for c in commands if c[0] == "mlflow"]
    code = (
        "import json, runpy, sys\n"
        "from airflow.cli.cli_parser import get_parser\n"
        "from mlflow.cli import cli as mlflow_cli\n"
        "from mmcompress.cli import build_parser\n"
        f"for argv in {airflow_cmds!r}:\n"
        "    get_parser().parse_args(argv)\n"
        f"for argv in {mmcompress_cmds!r}:\n"
        "    if argv != ['--help']:\n"
        "        build_parser().parse_args(argv)\n"
        f"for argv in {mlflow_cmds!r}:\n"
        "    mlflow_cli.make_context('mlflow', list(argv), resilient_parsing=False)\n"
        "codes = {}\n"
        f"for stage in {list(STAGES)!r}:\n"
        "    sys.argv = [f'pipelines.{stage}', '--help']\n"
        "    try:\n"
        "        runpy.run_module(f'pipelines.{stage}', run_name='__main__')\n"
        "    except SystemExit as e:\n"
        "        codes[stage] = e.code\n"
        "print(json.dumps({'stage_help': codes}))\n"
    )
    env = deployment_env(compose, tmp_path, AIRFLOW_EXECUTORS="CeleryExecutor")
    seen = run_python(code, env, timeout=300)
    assert seen["stage_help"] == {s: 0 for s in STAGES}
