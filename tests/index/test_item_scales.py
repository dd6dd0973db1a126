"""Item scales: one byte per item rescales its sign-code estimate, chosen by validation."""

from __future__ import annotations

import numpy as np
import pytest

from mmcompress.codecs import make_codec
from mmcompress.index import CascadeConfig, CascadeIndex
from mmcompress.index.signscan import SignLUTScorer

SECTION = {"coarse": {"codec": "BIN32", "shortlist": 300, "nlist": 16, "nprobe": 8},
           "fine": {"codec": "coarse", "shortlist": 60, "item_scales": True}}


@pytest.fixture(scope="module")
def bin32(digits):
    return make_codec("BIN32").fit(digits["xb"])


def scaled_index(digits, bin32, monkeypatch, **cfg):
    """An index whose validation picked a weight (digits alone do not pay for the byte)."""
    monkeypatch.setattr("mmcompress.index.cascade.choose_scale_weight", lambda *a, **k: 0.5)
    config = CascadeConfig.from_params({**SECTION, **cfg})
    return CascadeIndex.build(bin32, bin32, digits["xb"], digits["ids"], config=config)


def test_a_vector_equal_to_its_reconstruction_has_factor_one(digits, bin32):
    scorer = SignLUTScorer.from_codec(bin32)
    codes = bin32.encode(digits["xb"][:100])
    X = bin32.decode(codes)
    for gamma in (0.0, 1.0):
        np.testing.assert_allclose(scorer.item_factors(X, codes, gamma), 1.0, rtol=1e-4)
    far = scorer.item_factors(digits["xb"][:100], codes, 1.0)
    assert np.all(far > 0) and far.std() > 0.01


def test_validation_keeps_the_byte_only_where_it_helps(digits, bin32):
    idx = CascadeIndex.build(bin32, bin32, digits["xb"], digits["ids"], config=CascadeConfig.from_params(SECTION))
    assert idx.scale_gamma_ is None and idx._state.main.scales is None  # digits: the plain estimate wins
    assert idx.memory_report()["resident_bytes"]["item_scales"] == 0


def test_scales_survive_save_load_add_and_compaction(digits, bin32, monkeypatch, tmp_path):
    idx = scaled_index(digits, bin32, monkeypatch)
    n = len(digits["ids"])
    assert idx.scale_gamma_ == 0.5 and idx._state.main.scales.dtype == np.uint8
    assert idx.memory_report()["resident_bytes"]["item_scales"] == n
    before = idx.search(digits["xq"], 10)
    idx.save(tmp_path / "ix")
    loaded = CascadeIndex.load(tmp_path / "ix")
    assert loaded.scale_gamma_ == 0.5 and loaded.scale_range_ == pytest.approx(idx.scale_range_)
    np.testing.assert_array_equal(loaded.search(digits["xq"], 10)[1], before[1])
    new_ids = 10**6 + np.arange(100)
    loaded.add(digits["xq"][:100], new_ids)
    assert loaded._state.delta.scales.shape == (100,)
    assert np.mean(loaded.search(digits["xq"][:100], 1)[1][:, 0] == new_ids) >= 0.95  # a vector finds itself
    loaded.compact()
    assert loaded._state.main.scales.shape == (n + 100,)
    assert np.mean(loaded.search(digits["xq"][:100], 1)[1][:, 0] == new_ids) >= 0.95


def test_compiled_and_numpy_paths_apply_the_same_scales(digits, bin32, monkeypatch):
    idx = scaled_index(digits, bin32, monkeypatch)
    kw = {"exact_rerank": False, "fine_shortlist": 10}
    sf, ff = idx.search(digits["xq"], 10, compiled=True, **kw)
    ss, fs = idx.search(digits["xq"], 10, compiled=False, **kw)
    assert np.mean(ff == fs) >= 0.99
    assert np.mean(np.isclose(sf, ss, rtol=1e-4, atol=1e-5)) >= 0.99
    plain = CascadeIndex.build(bin32, bin32, digits["xb"], digits["ids"],
                               config=CascadeConfig.from_params({**SECTION, "fine": {**SECTION["fine"], "item_scales": False}}))
    assert plain._state.main.scales is None
    assert np.mean(plain.search(digits["xq"], 10, **kw)[1] == ff) < 0.99  # the scales change the ranking


def test_a_version_1_index_without_scales_still_loads(digits, bin32, tmp_path):
    import json

    config = CascadeConfig.from_params({**SECTION, "fine": {**SECTION["fine"], "item_scales": False}})
    idx = CascadeIndex.build(bin32, bin32, digits["xb"], digits["ids"], config=config)
    idx.save(tmp_path / "ix")
    path = tmp_path / "ix" / "manifest.json"
    manifest = json.loads(path.read_text())
    assert manifest["format_version"] == 4
    manifest["format_version"] = 1
    del manifest["config"]["fine"]["item_scales"], manifest["item_scales"]
    path.write_text(json.dumps(manifest))
    old = CascadeIndex.load(tmp_path / "ix")
    assert old.scale_gamma_ is None and old._state.main.scales is None
    np.testing.assert_array_equal(old.search(digits["xq"], 10)[1], idx.search(digits["xq"], 10)[1])
