"""The sign look-up-table scan scores codes exactly as their reconstructions would."""

from __future__ import annotations

import numpy as np
import pytest

from mmcompress.codecs import make_codec
from mmcompress.index.signscan import SignLUTScorer


@pytest.mark.parametrize("spec, metric", [("BIN32", "ip"), ("BIN64_rr", "ip"), ("BIN32", "l2"),
                                          ("PCA48,BIN32", "ip")])
def test_lut_scores_equal_scores_against_the_reconstruction(digits, spec, metric):
    codec = make_codec(spec, metric=metric).fit(digits["xb"])
    scorer = SignLUTScorer.from_codec(codec)
    assert scorer is not None
    # a BIN codec lends its own projection; behind a transform the map is read off decode
    assert scorer.shared == spec.startswith("BIN")
    codes = codec.encode(digits["xb"][:300]).reshape(3, 100, -1)
    q = digits["xq"][:3]
    got = scorer.scores(q, codes)
    X = codec.decode(codes.reshape(300, -1)).reshape(3, 100, -1)
    want = np.einsum("qsd,qd->qs", X, q) if metric == "ip" else -((X - q[:, None, :]) ** 2).sum(axis=2)
    np.testing.assert_allclose(got, want, atol=2e-3 * np.abs(want).max())


def test_non_binary_codec_has_no_sign_scan(digits, fitted):
    assert SignLUTScorer.from_codec(fitted["PQ8x8"]) is None


def test_a_map_read_off_decode_can_be_kept_in_float16(digits):
    codec = make_codec("PCA48,BIN32").fit(digits["xb"])
    full, half = SignLUTScorer.from_codec(codec), SignLUTScorer.from_codec(codec, dtype=np.float16)
    assert half.W.dtype == np.float16 and half.nbytes < 0.6 * full.nbytes
    codes = codec.encode(digits["xb"][:200]).reshape(2, 100, -1)
    q = digits["xq"][:2]
    want = full.scores(q, codes)
    np.testing.assert_allclose(half.scores(q, codes), want, atol=2e-3 * np.abs(want).max())
