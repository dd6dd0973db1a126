"""Artifact writes are atomic and durable: fsync before and after each rename, a directory
replaced with no moment where neither copy exists, an interrupted replace repaired on the next
write or open, and one commit point per saved codec."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mmcompress import artifacts
from mmcompress.artifacts import (
    arrays_path,
    atomic_dir,
    load_arrays,
    recover_replaced_dir,
    replace_dir,
    save_arrays,
    write_json_atomic,
)
from mmcompress.codecs import load_codec, make_codec
from mmcompress.errors import ArtifactError


@pytest.fixture
def fsyncs(monkeypatch):
    """Every path fsynced, in order (the real fsync still runs)."""
    seen: list[str] = []
    real = artifacts.fsync_path

    def spy(path):
        seen.append(os.path.basename(os.fspath(path)))
        real(path)

    monkeypatch.setattr(artifacts, "fsync_path", spy)
    return seen


def test_a_file_write_is_fsynced_then_its_directory(tmp_path, fsyncs):
    write_json_atomic(tmp_path / "m.json", {"a": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 1}
    assert len(fsyncs) == 2 and fsyncs[0].startswith(".m.json.") and fsyncs[1] == tmp_path.name


def test_a_directory_replace_fsyncs_every_file_and_never_leaves_the_path_empty(tmp_path, fsyncs, monkeypatch):
    target = tmp_path / "index"
    with atomic_dir(target) as tmp:
        (tmp / "a.npy").write_bytes(b"old")
    seen_during_swap = []
    real_replace = os.replace

    def watching_replace(src, dst):
        seen_during_swap.append(target.exists())
        return real_replace(src, dst)

    monkeypatch.setattr(artifacts.os, "replace", watching_replace)
    fsyncs.clear()
    with atomic_dir(target) as tmp:
        (tmp / "a.npy").write_bytes(b"new")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b.json").write_text("{}")
    assert (target / "a.npy").read_bytes() == b"new" and (target / "sub" / "b.json").exists()
    assert {"a.npy", "b.json", "sub"} <= set(fsyncs) and fsyncs[-1] == tmp_path.name
    assert all(seen_during_swap)  # an exchange, or renames with the path present at each one
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temporary or old copy left


def test_an_interrupted_two_rename_replace_is_repaired(tmp_path, monkeypatch):
    target = tmp_path / "codecs"
    with atomic_dir(target) as tmp:
        (tmp / "codec.json").write_text("good")
    monkeypatch.setattr(artifacts, "_exchange", lambda a, b: False)  # a filesystem without it
    calls = {"n": 0}
    real_replace = os.replace

    def crash_after_first_rename(src, dst):
        calls["n"] += 1
        real_replace(src, dst)
        if calls["n"] == 1:
            raise KeyboardInterrupt("power lost between the two renames")

    monkeypatch.setattr(artifacts.os, "replace", crash_after_first_rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(target) as tmp:
            (tmp / "codec.json").write_text("half")
    monkeypatch.setattr(artifacts.os, "replace", real_replace)
    assert not target.exists() and (tmp_path / ".codecs.old" / "codec.json").read_text() == "good"
    assert recover_replaced_dir(target)  # what the next write or open does first
    assert (target / "codec.json").read_text() == "good" and not (tmp_path / ".codecs.old").exists()
    new = tmp_path / "new"
    new.mkdir()
    (new / "codec.json").write_text("next")
    replace_dir(new, target)
    assert (target / "codec.json").read_text() == "next"


def test_a_codec_save_has_one_commit_point(tmp_path, monkeypatch):
    X = np.random.default_rng(0).standard_normal((600, 32)).astype(np.float32)
    path = tmp_path / "codec.json"
    first = make_codec("PQ4x8").fit(X)
    first.save(path)
    second = make_codec("PQ8x8").fit(X)
    real = artifacts.write_json_atomic

    def crash_before_header(p, obj):
        raise KeyboardInterrupt("crash after the arrays, before the header")

    monkeypatch.setattr(artifacts, "write_json_atomic", crash_before_header)
    with pytest.raises(KeyboardInterrupt):
        second.save(path)
    monkeypatch.setattr(artifacts, "write_json_atomic", real)
    back = load_codec(path)  # the previous save, whole: its header still names its own arrays
    np.testing.assert_array_equal(back.encode(X), first.encode(X))
    second.save(path)
    np.testing.assert_array_equal(load_codec(path).encode(X), second.encode(X))
    npz = sorted(p.name for p in tmp_path.glob("codec.json*.npz"))
    assert npz == [arrays_path(path, json.loads(path.read_text())).name]  # earlier arrays removed


def test_an_arrays_file_outside_the_header_directory_is_refused(tmp_path):
    save_arrays(tmp_path / "a.json", {}, {"x": np.arange(3)}, kind="t", format_version=1)
    header = json.loads((tmp_path / "a.json").read_text())
    for bad in ("../a.json.npz", "/etc/passwd", "a.json"):
        (tmp_path / "a.json").write_text(json.dumps({**header, "arrays_file": bad}))
        with pytest.raises(ArtifactError, match="arrays_file"):
            load_arrays(tmp_path / "a.json", kind="t", supported_versions=(1,))
