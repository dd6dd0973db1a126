"""Look-up-table form of the search score: tables + constant - coef * stored norm == search()."""

from __future__ import annotations

import numpy as np
import pytest

from mmcompress.codecs import make_codec


def table_scores(codec, codes: np.ndarray, queries: np.ndarray) -> np.ndarray:
    tables, const, coef = codec.search_tables(queries)
    off = np.arange(codec.code_size) * 256
    S = np.stack([tables[i][codes.astype(np.intp) + off].sum(axis=1) for i in range(len(queries))])
    return S + const[:, None] - coef * codec.scan_norms(codes)[None, :]


@pytest.mark.parametrize(("spec", "metric"), [
    (spec, "ip") for spec in ("PQ8x8", "RQ4x8", "LSQ4x8", "RQ4x8+PQ8x8", "PCA32,PQ8x8", "OPQ8_32,RQ4x8")
] + [(spec, "l2") for spec in ("PQ8x8", "PCA32,RQ4x8+PQ8x8")])
def test_tables_reproduce_the_search_scores(split, spec, metric):
    base, queries = split
    codec = make_codec(spec, metric=metric).fit(base)
    if metric == "ip":
        assert codec.norm_weight_ >= 0
    codes = codec.encode(base[:300])
    got = table_scores(codec, codes, queries[:20])
    want, ids = codec.search(codes, queries[:20], 300)
    np.testing.assert_allclose(np.take_along_axis(got, ids, axis=1), want, rtol=1e-4, atol=1e-4)


def test_ip_scores_with_a_norm_weight_keep_the_norm_term(split):
    base, queries = split
    codec = make_codec("RQ4x8", metric="ip")
    codec.norm_weight = 0.3
    codec.fit(base)
    tables, const, coef = codec.search_tables(queries[:5])
    assert coef == pytest.approx(0.3) and tables.shape == (5, 4 * 256)
    codes = codec.encode(base[:50])
    want, ids = codec.search(codes, queries[:5], 50)
    got = table_scores(codec, codes, queries[:5])
    np.testing.assert_allclose(np.take_along_axis(got, ids, axis=1), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("spec", ["SQ8", "NUQ8", "BIN64"])
def test_codecs_without_a_per_byte_score_have_no_tables(split, spec):
    base, queries = split
    codec = make_codec(spec).fit(base)
    assert codec.search_tables(queries[:3]) is None


def test_a_sign_codec_builds_its_scan_tables_only_when_it_scans(split, tmp_path):
    """A binary codec's own scan keeps a product quantizer of sign patterns (8 KiB a code
    bit); an index that scores the codes with its own kernels never asks for it, so fitting
    and loading do not build it; the scan that does ranks as the fitted codec's own scan."""
    from mmcompress.codecs.io import load_codec, save_codec

    base, queries = split
    codec = make_codec("BIN64").fit(base)
    assert codec._scan_index is None
    save_codec(codec, tmp_path / "c")
    loaded = load_codec(tmp_path / "c")
    assert loaded._scan_index is None
    codes = loaded.encode(base[:200])
    D, ids = loaded.search(codes, queries[:5], 10)
    assert loaded._scan_index is not None
    want_d, want_ids = codec.search(codes, queries[:5], 10)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_allclose(D, want_d, rtol=1e-5, atol=1e-5)
