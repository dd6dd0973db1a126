"""Each built-in codec on real data (digits): recall against exact search, and search scores
that agree with the codec's own reconstructions."""

import numpy as np
import pytest

from mmcompress.codecs import exact_search, make_codec

# spec -> minimum recall@10 (inner product, 200 held-out queries over 1,597 digits).
RECALL_FLOORS = {
    "FP16": 0.98,
    "SQ8": 0.95,
    "SQ6": 0.93,
    "SQ4": 0.88,
    "PQ8x8": 0.75,
    "PQ16x4": 0.70,
    "OPQ8_32,PQ8x8": 0.70,
    "RQ4x8_b4": 0.70,
    "PCA,NUQ8": 0.70,
    "PCA,NUQ16": 0.83,
    "NUQ16": 0.80,
    "BIN64": 0.58,
    "BIN64_f16": 0.58,
    "BIN64_i8": 0.58,
    "BIN32_rr": 0.38,
    "C,RR,SQ4": 0.85,
    "PCAW32,SQ8": 0.85,
    "PCA32,SQ8": 0.85,
    "RQ2x8_b2+PQ8x8": 0.80,
}
SLOW = {"RQ4x8_b4", "OPQ8_32,PQ8x8", "RQ2x8_b2+PQ8x8"}


def _params():
    for spec, floor in RECALL_FLOORS.items():
        marks = [pytest.mark.slow] if spec in SLOW else []
        yield pytest.param(spec, floor, marks=marks, id=spec)


@pytest.mark.parametrize(("spec", "floor"), _params())
def test_recall_floor_inner_product(split, recall10, spec, floor):
    base, queries = split
    codec = make_codec(spec, metric="ip").fit(base)
    assert make_codec(codec.spec, metric="ip").spec == codec.spec  # the resolved spec is canonical
    assert recall10(codec, base, queries) >= floor


@pytest.mark.parametrize("spec", ["SQ8", "PQ8x8", "PCA,NUQ16", "BIN64", "PCA32,SQ8"])
def test_recall_floor_l2(split, recall10, spec):
    base, queries = split
    codec = make_codec(spec, metric="l2").fit(base)
    assert recall10(codec, base, queries, "l2") >= RECALL_FLOORS[spec] - 0.03


def _expected_scores(codec, codes, queries):
    X_hat = codec.decode(codes).astype(np.float64)
    q = queries.astype(np.float64)
    if codec.metric == "l2":
        return -((q[:, None, :] - X_hat[None, :, :]) ** 2).sum(-1)
    w = codec.norm_weight_
    return q @ X_hat.T + w * (1.0 - (X_hat * X_hat).sum(1))[None, :]


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("spec", ["SQ4", "PQ8x8", "PQ16x4", "RQ2x8_b2", "LSQ2x8", "PCA,NUQ8", "RQ2x8_b2+PQ4x8",
                                  "BIN32", "BIN128_rr", "PCA16,SQ8", "PCAW16,SQ8", "OPQ4_16,PQ4x8"])
def test_compressed_search_matches_reconstruction(digits, spec, metric):
    """The look-up-table scans rank exactly as the decoded vectors score."""
    base, queries = digits[:600], digits[600:640]
    codec = make_codec(spec, metric=metric, max_train_rows=600).fit(base)
    codes = codec.encode(base)
    scores, ids = codec.search(codes, queries, 5)
    expected = _expected_scores(codec, codes, queries)
    np.testing.assert_allclose(scores, np.take_along_axis(expected, ids, 1), atol=2e-3)
    kth = np.sort(expected, axis=1)[:, -5]
    assert np.all(scores[:, -1] >= kth - 2e-3)


def test_norm_weight_is_tuned_on_unit_norm_rows_only(digits):
    unit = make_codec("PQ8x8", metric="ip").fit(digits)
    assert 0.0 <= unit.norm_weight_ <= 0.6
    raw = make_codec("PQ8x8", metric="ip").fit(digits * 3.0)
    assert raw.norm_weight_ == 0.0
    fixed = make_codec("PQ8x8", metric="ip", norm_weight=0.25)
    assert fixed.fit(digits).norm_weight_ == 0.25


def test_norm_aware_scoring_beats_plain_inner_product(split, recall10):
    """Reconstructions shrink unevenly; correcting for it raises recall on unit-norm data."""
    base, queries = split
    tuned = make_codec("PQ16x4", metric="ip").fit(base)
    plain = make_codec("PQ16x4", metric="ip", norm_weight=0.0).fit(base)
    assert tuned.norm_weight_ > 0
    assert recall10(tuned, base, queries) > recall10(plain, base, queries)


def test_nuq_spends_exact_budget_with_uneven_bits(digits):
    codec = make_codec("PCA,NUQ12").fit(digits)
    nuq = codec.quantizer
    assert nuq.bits_.sum() == 96
    assert sum(codec.field_bits) == 96
    assert nuq.bits_.max() > nuq.bits_.min()
    assert (nuq.bits_ == 0).any(), "low-variance PCA dims should get no bits"
    assert nuq.bits_[:8].mean() > nuq.bits_[-32:].mean()


def test_nuq_reconstruction_error_is_small(digits):
    codec = make_codec("NUQ24").fit(digits)
    X_hat = codec.decode(codec.encode(digits))
    assert np.mean((X_hat - digits) ** 2) < np.mean((digits - digits.mean(0)) ** 2) * 0.2


def test_binary_hamming_scan(split):
    base, queries = split
    codec = make_codec("BIN64").fit(base)
    assert codec.is_binary and codec.code_size == 8
    codes = codec.encode(base)
    scores, ids = codec.search_hamming(codes, queries, 10)
    assert np.all(scores <= 0) and np.all(np.diff(scores, axis=1) <= 0)
    qcodes = codec.encode_queries(queries)
    ham = np.unpackbits(qcodes[:, None, :] ^ codes[None, :, :], axis=2).sum(2)
    np.testing.assert_array_equal(-scores, np.take_along_axis(ham, ids, 1))
    _, truth = exact_search(base, queries, 10, "ip")
    _, asym = codec.search(codes, queries, 10)

    def hits(found):
        return np.mean([len(np.intersect1d(f, t)) for f, t in zip(found, truth, strict=True)])

    assert hits(asym) >= hits(ids), "the asymmetric scan ranks at least as well as Hamming"


def test_half_precision_projection_halves_the_table_and_keeps_the_codes_consistent(split, tmp_path):
    from mmcompress.codecs.io import load_codec, save_codec
    from mmcompress.errors import CodecError
    from mmcompress.index.signscan import SignLUTScorer

    base, queries = split
    full = make_codec("BIN64").fit(base)
    half = make_codec("BIN64_f16").fit(base)
    assert half.W_.dtype == np.float16 and half.W_.nbytes * 2 == full.W_.nbytes
    codes = half.encode(base)
    # the codes are the signs of the rounded projection itself, not an approximation of it
    proj = (base - half.mean_) @ half.W_.astype(np.float64)
    np.testing.assert_array_equal(codes, np.packbits(proj > 0, axis=1))
    assert np.mean(codes != full.encode(base)) < 0.01  # rounding flips few bits
    scorer = SignLUTScorer.from_codec(half)
    assert scorer is not None and scorer.shared  # the scan tables read the codec's own float16 copy
    save_codec(half, tmp_path / "bin")
    again = load_codec(tmp_path / "bin")
    assert again.spec == "BIN64_f16" and again.W_.dtype == np.float16
    np.testing.assert_array_equal(again.encode(queries), half.encode_queries(queries))
    meta, arrays = full._get_state()
    with pytest.raises(CodecError, match="float32; expected float16"):
        make_codec("BIN64_f16")._set_state(meta, arrays)


def test_int8_projection_quarters_the_table_and_keeps_the_codes_consistent(split, tmp_path):
    """``_i8``: the projection is one scale times int8 values, a quarter of float32; the codes
    are the signs of that projection itself, scans and decode agree with the float32 codec, and
    the scale round-trips through a saved file (a bad one is refused by name)."""
    from mmcompress.codecs.io import load_codec, save_codec
    from mmcompress.errors import CodecError
    from mmcompress.index.signscan import SignLUTScorer

    base, queries = split
    full = make_codec("BIN64").fit(base)
    i8 = make_codec("BIN64_i8").fit(base)
    assert i8.spec == "BIN64_i8" and i8.W_.dtype == np.int8 and i8.W_.nbytes * 4 == full.W_.nbytes
    assert np.abs(i8.W_).max() == 127 and i8.sign_projection() is not None  # orthonormal up to rounding
    codes = i8.encode(base)
    proj = (base.astype(np.float64) - i8.mean_) @ i8.W_.astype(np.float64)
    np.testing.assert_array_equal(codes, np.packbits(proj > 0, axis=1))
    assert np.mean(np.unpackbits(codes ^ full.encode(base))) < 0.02  # rounding flips few bits
    recon_err = np.abs(i8.decode(codes[:50]) - full.decode(codes[:50])).max()
    assert recon_err < 0.02 * np.abs(full.decode(codes[:50])).max()
    found8 = i8.search(codes, queries[:20], 10)[1]
    found = full.search(codes, queries[:20], 10)[1]
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found8, found, strict=True)]) >= 0.9
    scorer = SignLUTScorer.from_codec(i8)
    assert scorer is not None and scorer.shared  # the scan tables read the codec's own int8 copy
    np.testing.assert_allclose(scorer.scores(queries[:5], np.repeat(codes[None, :40], 5, axis=0)),
                               queries[:5] @ i8.decode(codes[:40]).T, rtol=1e-3, atol=1e-3)
    save_codec(i8, tmp_path / "bin")
    again = load_codec(tmp_path / "bin")
    assert again.spec == "BIN64_i8" and again.W_.dtype == np.int8 and again.wscale_ == i8.wscale_
    np.testing.assert_array_equal(again.encode(queries), i8.encode_queries(queries))
    meta, arrays = full._get_state()
    with pytest.raises(CodecError, match="float32; expected int8"):
        make_codec("BIN64_i8")._set_state(meta, arrays)
    meta, arrays = i8._get_state()
    with pytest.raises(CodecError, match="wscale"):
        make_codec("BIN64_i8")._set_state({**meta, "wscale": -1.0}, arrays)
    with pytest.raises(CodecError, match="wscale"):
        make_codec("BIN64_i8")._set_state({}, arrays)
    from mmcompress.codecs.binary import BinaryCodec

    with pytest.raises(CodecError, match="not both"):
        BinaryCodec(64, half=True, int8=True)


def test_pipeline_hamming_scan_and_binary_flag(digits):
    codec = make_codec("PCA32,BIN32").fit(digits)
    assert codec.is_binary
    _, ids = codec.search_hamming(codec.encode(digits[:300]), digits[:5], 3)
    assert ids.shape == (5, 3)
    assert not make_codec("PCA32,SQ8").fit(digits).is_binary


@pytest.mark.slow
def test_lsq(split, recall10):
    base, queries = split
    codec = make_codec("LSQ4x8", max_train_rows=1597).fit(base)
    assert recall10(codec, base, queries) >= 0.6


@pytest.mark.slow
def test_lsq_encodes_its_training_rows_as_it_would_in_any_order(encode_error):
    """faiss LSQ draws the codes it starts from with its seed, to train and to encode: with one
    seed, the training rows encoded in training order get back the codes training converged to,
    memorised here (4 x 256 codebook entries for 800 rows). The codec encodes with the next seed."""
    from sklearn.datasets import load_digits
    from threadpoolctl import threadpool_limits

    rows = load_digits().data[:800].astype(np.float32)
    ordered, permuted = np.arange(len(rows)), np.random.default_rng(0).permutation(len(rows))
    with threadpool_limits(1, user_api="openmp"):  # LSQ's many short parallel loops stall on a busy CPU
        codec = make_codec("LSQ4x8", metric="l2").fit(rows)
        error = {o: encode_error(codec.encode, codec.decode, rows, order)
                 for o, order in (("ordered", ordered), ("permuted", permuted))}
        assert error["ordered"] > 0.8 * error["permuted"], error
        codec.index_.lsq.random_seed = codec.random_state  # premise: the training seed replays
        assert encode_error(codec.encode, codec.decode, rows, ordered) < 0.05 * error["permuted"]


# ---- residual codebooks refined jointly -------------------------------------------------------
def test_a_refinement_round_never_raises_the_training_error_and_keeps_unchosen_codewords():
    from mmcompress.codecs.faiss_quantizers import refine_residual_codebooks

    rng = np.random.default_rng(3)
    for _ in range(5):
        X = rng.standard_normal((400, 12)).astype(np.float32)
        C = rng.standard_normal((3, 16, 12)).astype(np.float32) * 0.5
        codes = rng.integers(0, 16, (400, 3))
        codes[:, 1] %= 8  # codewords 8..15 of stage 1: no row chose them

        def err(Cb: np.ndarray, X: np.ndarray = X, codes: np.ndarray = codes) -> float:
            return float(((X - Cb[np.arange(3)[None, :], codes].sum(axis=1)) ** 2).sum())

        new = refine_residual_codebooks(X, codes, C)
        assert err(new) <= err(C) + 1e-3
        np.testing.assert_array_equal(new[1, 8:], C[1, 8:])
        # each refitted codeword is the least-squares one: moving it raises the error
        moved = new.copy()
        moved[2, codes[0, 2]] += 0.01
        assert err(moved) > err(new)


def test_refined_residual_codes_reconstruct_better_and_round_trip(split, recall10, tmp_path):
    from mmcompress.codecs import load_codec

    base, queries = split
    plain = make_codec("RQ8x8_b2", metric="ip").fit(base)
    refined = make_codec("RQ8x8_b2_r3", metric="ip").fit(base)
    assert refined.spec == "RQ8x8_b2_r3" and refined.code_size == 8

    def mse(codec) -> float:
        return float(((codec.decode(codec.encode(base)) - base) ** 2).sum(axis=1).mean())

    assert mse(refined) < 0.97 * mse(plain)
    assert recall10(refined, base, queries) >= recall10(plain, base, queries) - 0.01
    refined.save(tmp_path / "rq")
    again = load_codec(tmp_path / "rq")
    assert again.spec == "RQ8x8_b2_r3"
    np.testing.assert_array_equal(again.encode(queries), refined.encode(queries))


def test_refinement_reads_packed_codes_of_any_width(split):
    """Codebooks wider or narrower than a byte are refined from the unpacked codes: the codec's
    decode equals the sum of the refined codewords its unpacked codes name, and refinement
    lowers the error of the rows it was fitted on."""
    import faiss

    from mmcompress.codecs.faiss_quantizers import unpack_codes

    base, _ = split
    rows = base[:1200]
    # codebooks of 64 and 16 entries (fewer than the rows, which 4 x 1,024 would memorise) and
    # of 1,024 (wider than a byte), whose unpacking is checked on its own
    for spec, M, nbits in (("RQ4x6", 4, 6), ("RQ6x4", 6, 4), ("RQ4x10", 4, 10)):
        plain = make_codec(spec, metric="ip").fit(rows)
        refined = make_codec(f"{spec}_r2", metric="ip").fit(rows)
        assert refined.code_size == M * nbits // 8
        codes = refined.encode(rows)
        C = faiss.vector_to_array(refined.index_.rq.codebooks).reshape(M, 1 << nbits, -1)
        summed = C[np.arange(M)[None, :], unpack_codes(codes, M, nbits)].sum(axis=1)
        np.testing.assert_allclose(refined.decode(codes), summed, atol=1e-5)

        def mse(codec) -> float:
            return float(((codec.decode(codec.encode(rows)) - rows) ** 2).sum(axis=1).mean())

        if nbits < 8:
            assert mse(refined) < 0.97 * mse(plain), spec
