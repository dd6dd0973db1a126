"""The params schema: the shipped params.yaml passes unchanged; an unknown key, a wrong type or
an out-of-range value anywhere is refused before any work, naming the key and what is allowed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mmcompress.errors import ConfigError
from pipelines.config import apply_overrides, load_params
from pipelines.schema import validate_params

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_shipped_params_pass_unchanged(raw):
    assert load_params(REPO / "params.yaml") == raw  # no key added, none dropped, no value changed


@pytest.mark.parametrize("override, message", [
    ({"compress.budjet_bytes": 16}, r"compress\.budjet_bytes: unknown key in compress \(allowed: auto, .*budget_bytes"),
    ({"fusion.epoks": 3}, r"fusion\.epoks: unknown key in fusion \(allowed: .*epochs"),
    ({"encoders.text.batch_sise": 8}, r"encoders\.text\.batch_sise: unknown key in encoders\.text"),
    ({"compress.auto_options.max_candidate": 2}, r"compress\.auto_options\.max_candidate: unknown key"),
    ({"evaluate.downstream.kk": 2}, r"evaluate\.downstream\.kk: unknown key"),
    ({"compres.budget_bytes": 16}, r"'compres' is not a section of params \(sections: catalog, compress"),
    ({"index.exact.pool": 4096}, r"index\.exact: unknown keys \['pool'\]"),
])
def test_unknown_keys_are_refused_naming_them(raw, override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(raw, override)


@pytest.mark.parametrize("override, message", [
    ({"compress.budget_bytes": 2.5}, r"compress\.budget_bytes: .*integer.*found 2\.5"),
    ({"compress.budget_bytes": "sixteen"}, r"compress\.budget_bytes: .*integer.*found 'sixteen'"),
    ({"compress.budget_bytes": 0}, r"compress\.budget_bytes: .*greater than or equal to 1"),
    ({"compress.n_shards": 0}, r"compress\.n_shards"),
    ({"compress.entropy_coder": "gzip"}, r"compress\.entropy_coder: Input should be 'rans' or 'zstd'"),
    ({"promote.max_recall_drop": 1.5}, r"promote\.max_recall_drop: .*less than or equal to 1"),
    ({"promote.max_bytes_per_item": -1}, r"promote\.max_bytes_per_item: .*greater than 0"),
    ({"catalog.source": "csv"}, r"catalog\.source: Input should be 'movielens' or 'parquet'; found 'csv'"),
    ({"catalog.max_items": -5}, r"catalog\.max_items"),
    ({"train.train_fraction": 1.0}, r"train\.train_fraction: .*less than 1"),
    ({"evaluate.ks": [1, 5]}, r"evaluate\.ks: .*must include 10"),
    ({"validate.on_row_error": "skip"}, r"validate\.on_row_error: Input should be 'fail' or 'quarantine'"),
    ({"index.exact.reader": "nfs"}, r"index\.exact\.reader must be one of \['mmap', 'direct', 'pread'\]; found 'nfs'"),
    ({"fusion.epochs": "many"}, r"fusion\.epochs"),
])
def test_wrong_types_and_ranges_are_refused_naming_the_key(raw, override, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(raw, override)


def test_every_problem_is_listed_and_values_are_coerced(raw):
    with pytest.raises(ConfigError) as e:
        apply_overrides(raw, {"compress.budget_bytes": 2.5, "promote.max_hr_drop": -1, "drift.psi": 1})
    text = str(e.value)
    assert all(k in text for k in ("compress.budget_bytes", "promote.max_hr_drop", "drift.psi"))
    assert apply_overrides(raw, {"compress.budget_bytes": "32"})["compress"]["budget_bytes"] == 32
    missing = {k: v for k, v in raw.items() if k != "compress"}
    with pytest.raises(ConfigError, match="compress: required key missing"):
        validate_params(missing)
    with pytest.raises(ConfigError, match=r"params: invalid params\n  extra: unknown key \(allowed: catalog"):
        validate_params({**raw, "extra": {}})


def test_a_stage_refuses_bad_params_before_any_work(tmp_path):
    out = subprocess.run([sys.executable, "-m", "pipelines.train", "--root", str(tmp_path),
                          "--params", str(REPO / "params.yaml"), "--set", "compress.budjet_bytes=8"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "[train] refused" in out.stderr and "compress.budjet_bytes: unknown key in compress" in out.stderr
    assert list(tmp_path.iterdir()) == []  # nothing read or written



def test_the_byte_budget_bounds_a_named_challenger():
    from pipelines.train import choose_challenger

    codecs = {"PCA64_SQ4": {"code_size": 32}, "PCA64_PQ8x8": {"code_size": 8}}
    with pytest.raises(ConfigError, match=r"'PCA64,SQ4' codes take 32 bytes per item, over compress.budget_bytes=16"):
        choose_challenger(codecs, {"compress": {"budget_bytes": 16, "challenger": "PCA64,SQ4"}})
    assert choose_challenger(codecs, {"compress": {"budget_bytes": 16, "challenger": None}}) == "PCA64_PQ8x8"
    assert choose_challenger(codecs, {"compress": {"budget_bytes": 32, "challenger": "PCA64,SQ4"}}) == "PCA64_SQ4"
    with pytest.raises(ConfigError, match="no fitted codec fits compress.budget_bytes=4"):
        choose_challenger(codecs, {"compress": {"budget_bytes": 4, "challenger": None}})


def test_stages_on_one_root_never_write_at_once(tmp_path):
    import threading

    from mmcompress.errors import TransientError
    from pipelines.stage_runner import artifact_lock

    order: list[str] = []
    with artifact_lock(tmp_path, "train"):
        assert "train (pid" in (tmp_path / ".mmcompress.lock.holder").read_text()
        with pytest.raises(TransientError, match=r"artifacts locked by train \(pid .*stage build_index not started"):
            with artifact_lock(tmp_path, "build_index", wait_s=0.2):
                pass
        with artifact_lock(tmp_path, "compress_shard", wait_s=0.2):  # shards write their own files
            order.append("shard")

        def rebuild():
            with artifact_lock(tmp_path, "build_index", wait_s=30):
                order.append("build_index")

        t = threading.Thread(target=rebuild)
        t.start()
        t.join(0.3)
        order.append("train done")
    t.join(30)
    assert order == ["shard", "train done", "build_index"]  # the rebuild waited for train


def test_a_challenger_over_budget_is_refused_when_params_are_read(raw):
    """A spec that fixes its code size is measured against the budget before any training."""
    named = {"compress.auto": False, "compress.codecs": ["PCA64,SQ4"], "compress.challenger": "PCA64,SQ4"}
    with pytest.raises(ConfigError, match=r"compress\.challenger: 'PCA64,SQ4' codes take 32 bytes per item, "
                                          r"over compress\.budget_bytes=16"):
        apply_overrides(raw, {**named, "compress.budget_bytes": 16})
    assert apply_overrides(raw, {**named, "compress.budget_bytes": 32})["compress"]["challenger"] == "PCA64,SQ4"
    # a size only the data fixes (SQ8 on the raw vectors) waits for the train stage's check
    raw_sq8 = {"compress.auto": False, "compress.codecs": ["SQ8"], "compress.challenger": "SQ8"}
    assert apply_overrides(raw, {**raw_sq8, "compress.budget_bytes": 16})["compress"]["challenger"] == "SQ8"
    with pytest.raises(ConfigError, match=r"compress\.codecs: codec spec 'PQ16,XYZ'"):
        apply_overrides(raw, {"compress.codecs": ["PQ16,XYZ"]})
