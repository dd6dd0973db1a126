"""A small copy of the project (real data slice, real params) to run real stages and DVC in."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SLICE_OVERRIDES = {
    "catalog": {"max_items": 400},
    "encoders": {"collaborative": {"dim": 16}},
    "fusion": {"epochs": 5},
    "compress": {"budget_bytes": 8, "codecs": ["SQ4", "PCA64,PQ8x8"], "n_shards": 3, "chunk_rows": 64},
    "evaluate": {"n_queries": 40},
    "drift": {"cutoff": "1996-10-01", "permutations": 50},
}


def _merge(base: dict, over: dict) -> dict:
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v)
        else:
            base[k] = v
    return base


def make_project(dst: Path, overrides: dict | None = None) -> Path:
    """Copy what ``dvc repro`` needs (code is imported from the installed package) into ``dst``."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("dvc.yaml", "pipelines", "validation", "src", "data/raw/movielens"):
        src = REPO / name
        target = dst / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, target)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    _merge(params, SLICE_OVERRIDES)
    _merge(params, overrides or {})
    params["encoders"]["text"]["cache_dir"] = str(REPO / "data" / "cache" / "text")
    (dst / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return dst


def project_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(DVC_NO_ANALYTICS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               GX_ANALYTICS_ENABLED="false", TOKENIZERS_PARALLELISM="false",
               PYTHONPATH=os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])))
    venv_bin = str(Path(os.sys.executable).parent)
    env["PATH"] = venv_bin + os.pathsep + env.get("PATH", "")
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    p = subprocess.run(cmd, cwd=cwd, env=project_env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    return p


@pytest.fixture(scope="session")
def dvc_project(tmp_path_factory) -> Path:
    """A git + DVC project on the 400-item slice after one full ``dvc repro``."""
    root = make_project(tmp_path_factory.mktemp("dvcproj"))
    run(["git", "init", "-q"], root)
    run(["git", "-c", "user.email=ci@mmcompress", "-c", "user.name=ci", "commit", "-q", "--allow-empty", "-m", "init"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "repro"], root)
    return root
