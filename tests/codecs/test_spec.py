"""Spec strings: parsing, composition, and the registry that other codec families use."""

import re

import numpy as np
import pytest

from mmcompress.codecs import (
    Codec,
    auto_candidates,
    load_codec,
    make_codec,
    register_quantizer,
    registered_tokens,
    unregister,
)
from mmcompress.codecs.pipeline import TransformedCodec
from mmcompress.errors import CodecError


@pytest.mark.parametrize(("spec", "code_size"), [
    ("PQ16x8", 16), ("PQ8", 8), ("PQ16x4", 8), ("RQ8x8", 8), ("RQ4x8_b8", 4), ("LSQ4x8", 4),
    ("NUQ24", 24), ("NUQ24_e2", 24), ("BIN256", 32), ("BIN64_rr", 8),
    ("PCA128,OPQ16,PQ16x8", 16), ("RQ4x8+PQ8x8", 12), ("PCA32,RQ2x8_b2+PQ4x8", 6), ("C,RR,PQ8x8", 8), ("PCAW32,NUQ8", 8), ("W,PQ4", 4), ("OPQ8_64,PQ8", 8),
])
def test_spec_round_trips_and_code_size(spec, code_size):
    codec = make_codec(spec)
    assert codec.code_size == code_size
    assert make_codec(codec.spec).spec == codec.spec
    assert isinstance(codec, TransformedCodec) == ("," in spec)


def test_resolved_spec_is_canonical():
    assert make_codec("PQ8").spec == "PQ8x8"
    assert make_codec("RQ8x8_b4").spec == "RQ8x8"  # default beam is not spelled out
    assert make_codec("RQ8x8_b16").spec == "RQ8x8_b16"
    assert make_codec("PCA,NUQ8").spec == "PCA,NUQ8"


@pytest.mark.parametrize(("spec", "message"), [
    ("XYZ12", "unknown"),
    ("PCA32", "must end with a quantizer"),
    ("PQ8,PQ8", "quantizer, which must come last"),
    ("", "non-empty"),
    ("PCA32,,PQ8", "empty token"),
])
def test_bad_specs_are_refused(spec, message):
    with pytest.raises(CodecError, match=message):
        make_codec(spec)


def test_auto_needs_budget_and_valid_metric():
    with pytest.raises(CodecError, match="budget_bytes"):
        make_codec("auto")
    with pytest.raises(CodecError, match="metric"):
        make_codec("PQ8", metric="cosine")


def test_budget_mismatch_for_explicit_spec():
    with pytest.raises(CodecError, match="budget_bytes=8"):
        make_codec("PQ16x8", budget_bytes=8)


class _MeanCodec(Codec):
    """A deliberately simple plug-in codec: one byte = the index of the nearest of 256 rows."""

    kind = "test_mean"
    supports_norm_weight = True

    def __init__(self, metric="ip"):
        super().__init__(metric)

    @property
    def spec(self):
        return "TESTNN1"

    @property
    def code_size(self):
        return 1

    def _fit(self, X):
        self.table_ = X[np.linspace(0, len(X) - 1, 256).astype(int)]

    def _encode(self, X):
        return np.argmax(X @ self.table_.T - 0.5 * (self.table_ ** 2).sum(1), axis=1).astype(np.uint8)[:, None]

    def _decode(self, codes):
        return self.table_[codes[:, 0]]

    def _get_state(self):
        return {}, {"table": self.table_}

    def _set_state(self, meta, arrays):
        self.table_ = arrays["table"]


@pytest.fixture
def plugin():
    pattern = r"TESTNN(?P<b>\d+)"
    register_quantizer(pattern, lambda m, ctx: _MeanCodec(ctx.metric),
                       auto_candidates=lambda budget, d, metric: ["TESTNN1"] if budget == 1 else [])
    yield pattern
    assert unregister(pattern)


def test_registered_family_composes_saves_and_joins_auto(plugin, digits, tmp_path):
    assert plugin in registered_tokens()["quantizers"]
    codec = make_codec("PCA16,TESTNN1").fit(digits)
    codes = codec.encode(digits)
    assert codes.shape == (len(digits), 1)
    codec.save(tmp_path / "c.json")
    again = load_codec(tmp_path / "c.json")
    np.testing.assert_array_equal(again.encode(digits), codes)
    assert "TESTNN1" in auto_candidates(1, 64, "ip")
    auto = make_codec("auto", budget_bytes=1, candidates=["TESTNN1"]).fit(digits)
    assert auto.spec == "TESTNN1"


def test_unregistered_token_is_unknown_again(plugin):
    make_codec("TESTNN1")
    unregister(plugin)
    with pytest.raises(CodecError, match="unknown"):
        make_codec("TESTNN1")
    register_quantizer(plugin, lambda m, ctx: _MeanCodec(ctx.metric))


def test_tokens_are_full_matches():
    assert re.fullmatch(r"PQ(?P<M>\d+)(?:x(?P<nbits>\d+))?", "PQ8x8")
    with pytest.raises(CodecError):
        make_codec("PQ8x8junk")
