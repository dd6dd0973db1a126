"""Failures lose nothing: atomic stage outputs, a resumable compress, fail-fast tracking."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from mmcompress.errors import MMCompressError
from pipelines import compress, prepare, train, validate
from pipelines.config import apply_overrides, load_params
from tests.pipelines.conftest import REPO, make_project, project_env

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, dict]:
    root = make_project(tmp_path_factory.mktemp("faults"), {"compress": {"n_shards": 6, "chunk_rows": 32}})
    params = load_params(root / "params.yaml")
    prepare.prepare(params, root)
    validate.validate(params, root)
    train.train(params, root)
    return root, params


def _tree_digest(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def test_failed_train_keeps_last_good_codecs(trained):
    root, params = trained
    before = _tree_digest(root / "artifacts/codecs")
    with pytest.raises(MMCompressError, match="NOTACODEC7"):  # a spec that does not parse: refused up front
        apply_overrides(params, {"compress.codecs": ["SQ8", "NOTACODEC7"]})
    bad = apply_overrides(params, {"compress.codecs": ["SQ8", "PCA9999,SQ8"]})  # parses; fails on the data
    with pytest.raises(MMCompressError, match="PCA9999"):
        train.fit_codecs(bad, root, progress=False)
    assert _tree_digest(root / "artifacts/codecs") == before
    assert not [p for p in (root / "artifacts").iterdir() if p.name.endswith(".tmp")]


def test_unreachable_tracking_store_fails_before_any_work(trained):
    root, params = trained
    before = _tree_digest(root / "artifacts/fused")
    bad = apply_overrides(params, {"tracking.uri": "http://127.0.0.1:9"})
    t0 = time.perf_counter()
    with pytest.raises(MMCompressError, match="unreachable"):
        train.train(bad, root)
    assert time.perf_counter() - t0 < 30
    assert _tree_digest(root / "artifacts/fused") == before


def test_sigkill_in_compress_then_rerun_equals_uninterrupted_run(trained):
    root, params = trained
    work = root / "artifacts" / ".compress_work"
    shutil.rmtree(root / "artifacts" / "codes", ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    proc = subprocess.Popen([str(Path(REPO / ".venv/bin/python")) if (REPO / ".venv/bin/python").exists()
                             else "python", "-m", "pipelines.compress"], cwd=root, env=project_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list(work.rglob("shard-*.npy")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before_kill = len(list(work.rglob("shard-*.npy")))
    assert done_before_kill >= 1
    assert proc.returncode == -signal.SIGKILL  # killed mid-run, not finished before the signal
    assert not (root / "artifacts" / "codes").exists()  # and it published no partial codes
    compress.compress(params, root)
    resumed = {p.name: np.load(p) for p in (root / "artifacts" / "codes").glob("*.npy")}
    shutil.rmtree(root / "artifacts" / "codes")
    compress.compress(params, root)
    fresh = {p.name: np.load(p) for p in (root / "artifacts" / "codes").glob("*.npy")}
    assert resumed.keys() == fresh.keys() and len(fresh) >= 3
    for name in fresh:
        np.testing.assert_array_equal(resumed[name], fresh[name])
    report = json.loads((root / "reports" / "compress.json").read_text())
    assert all(r["stored_bytes"] > 0 for r in report.values())
