"""The ``mmcompress`` command on a user's own catalog, as a user runs it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mmcompress.data import ItemCatalog


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mmcompress.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def _user_catalog(path: Path, n: int = 50, bad_row: int | None = None) -> Path:
    rng = np.random.default_rng(0)
    clip = rng.normal(size=(n, 8)).astype(np.float32)
    if bad_row is not None:
        clip[bad_row, 3] = np.nan
    audio = [None if i % 5 == 0 else rng.normal(size=4).astype(np.float32).tolist() for i in range(n)]
    table = pa.table({"item_id": np.arange(100, 100 + n),
                      "image": pa.array(clip.tolist(), type=pa.list_(pa.float32())),
                      "audio": pa.array(audio, type=pa.list_(pa.float32())),
                      "title": [f"item {i}" for i in range(n)]})
    pq.write_table(table, path)
    return path


def test_prepare_own_catalog(tmp_path):
    src = _user_catalog(tmp_path / "items.parquet")
    p = _run("prepare", "--catalog", str(src), "--out", str(tmp_path / "cat"), cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    cat = ItemCatalog.load(tmp_path / "cat")
    assert len(cat) == 50 and set(cat.modality_names) == {"image", "audio"}
    assert cat.schema["image"].dim == 8 and cat.schema["audio"].dim == 4
    assert cat.masks["audio"].sum() == 40 and cat.masks["image"].all()
    assert pd.Series(cat.attributes["title"]).iloc[3] == "item 3"


def test_prepare_bad_catalog_names_the_problem_and_writes_nothing(tmp_path):
    src = _user_catalog(tmp_path / "items.parquet", bad_row=7)
    p = _run("prepare", "--catalog", str(src), "--out", str(tmp_path / "cat"), cwd=tmp_path)
    assert p.returncode == 1
    assert "items.parquet" in p.stderr and "image" in p.stderr and "row=7" in p.stderr, p.stderr
    assert not (tmp_path / "cat").exists()


def test_serve_passes_the_exact_store_reader_to_the_service(monkeypatch):
    import mmcompress.serve as serve
    from mmcompress.cli import main

    seen = {}
    monkeypatch.setattr(serve, "run_server", lambda **kw: seen.update(kw))
    assert main(["serve", "--model", "idx", "--exact-reader", "direct", "--exact-pool-bytes", "65536"]) == 0
    s = seen["settings"]
    assert (s.exact_reader, s.exact_pool_bytes, s.exact_reads_in_flight) == ("direct", 65536, None)
    assert seen["model"] == "idx"
