"""Neural residual quantizer (QINCO<M>x<b>) on digits: sizes, save/load, search, and that the
neural steps beat plain residual quantization at the same bytes."""

import numpy as np
import pytest

from mmcompress.codecs import exact_search, load_codec, make_codec
from mmcompress.codecs.learned import NeuralResidualQuantizer

SMALL = {"qinco_hidden": 32, "train": {"epochs": 6, "batch_size": 256}}


@pytest.fixture(scope="module")
def fitted(split):
    base, _ = split
    return make_codec("QINCO4x8", **SMALL).fit(base)


def _recall(ids, truth):
    return float(np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, truth, strict=True)]))


def test_shapes_and_code_size(fitted, split):
    base, queries = split
    codes = fitted.encode(queries)
    assert codes.dtype == np.uint8 and codes.shape == (len(queries), 4)
    assert fitted.code_size == 4 and fitted.field_bits == [8] * 4
    X_hat = fitted.decode(codes)
    assert X_hat.shape == queries.shape and X_hat.dtype == np.float32
    assert fitted.renormalize_  # unit-norm rows, inner product: outputs are renormalised
    np.testing.assert_allclose(np.linalg.norm(X_hat, axis=1), 1.0, atol=1e-5)


def test_packed_fields_for_sub_byte_codes(split):
    base, _ = split
    codec = make_codec("QINCO3x6", qinco_hidden=16, train={"epochs": 1}).fit(base[:600])
    assert codec.code_size == 3 and codec.field_bits == [6, 6, 6, 6]
    codes = codec.encode(base[:50])
    again = codec.encode(codec.decode(codes))
    assert codes.shape == (50, 3)
    assert np.mean(np.all(again == codes, axis=1)) > 0.5  # a decoded vector mostly re-encodes to itself


def test_deterministic_for_a_seed(split):
    base, _ = split
    kw = {"qinco_hidden": 16, "train": {"epochs": 2}}
    a = make_codec("QINCO2x6", random_state=1, **kw).fit(base[:500])
    b = make_codec("QINCO2x6", random_state=1, **kw).fit(base[:500])
    np.testing.assert_array_equal(a.encode(base), b.encode(base))
    np.testing.assert_array_equal(a.decode(a.encode(base[:20])), b.decode(b.encode(base[:20])))


def test_save_load_identical(fitted, split, tmp_path):
    base, queries = split
    fitted.save(tmp_path / "q.json")
    again = load_codec(tmp_path / "q.json")
    assert isinstance(again, NeuralResidualQuantizer) and again.spec == "QINCO4x8_h32"
    codes = fitted.encode(base)
    np.testing.assert_array_equal(again.encode(base), codes)
    np.testing.assert_array_equal(again.decode(codes), fitted.decode(codes))
    s1, i1 = fitted.search(codes, queries, 10)
    s2, i2 = again.search(codes, queries, 10)
    np.testing.assert_array_equal(i1, i2)


def test_shortlist_search_matches_exhaustive(fitted, split):
    base, queries = split
    codes = fitted.encode(base)
    _, truth = exact_search(base, queries, 10, "ip")
    _, exhaustive = fitted.search_exhaustive(codes, queries, 10)
    scores, fast = fitted.search(codes, queries, 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert _recall(fast, truth) >= _recall(exhaustive, truth) - 0.02


def test_training_lowers_reconstruction_error(fitted, split):
    base, _ = split
    first, last = fitted.train_result_.history[0], fitted.train_result_.history[-1]
    assert fitted.train_result_.best_val <= first["val_loss"]
    assert last["train_loss"] < first["train_loss"]


@pytest.mark.slow
def test_beats_residual_quantizer_at_same_bytes(split, recall10):
    base, queries = split
    rq = make_codec("RQ4x8").fit(base)
    qinco = make_codec("QINCO4x8", train={"epochs": 12, "batch_size": 256}).fit(base)
    r_rq, r_qinco = recall10(rq, base, queries), recall10(qinco, base, queries)
    assert r_qinco >= r_rq + 0.02, (r_qinco, r_rq)
    X_rq, X_q = rq.decode(rq.encode(base)), qinco.decode(qinco.encode(base))
    assert ((base - X_q) ** 2).sum(1).mean() < ((base - X_rq) ** 2).sum(1).mean()
