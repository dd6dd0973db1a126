"""Matryoshka projection (MRL<d>): usable prefixes, composition with quantizers, block pruning."""

import numpy as np
import pytest

from mmcompress.codecs import exact_search, load_codec, make_codec
from mmcompress.codecs.learned import MatryoshkaProjection

TRAIN = {"epochs": 6, "batch_size": 256}


def _recall(ids: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(a, b)) / 10 for a, b in zip(ids, truth, strict=True)]))


@pytest.fixture(scope="module")
def mrl(split):
    base, _ = split
    return MatryoshkaProjection(32, prefixes=[4, 8, 16, 32], train=TRAIN).fit(base)


def test_prefix_recall_grows_with_prefix_length(mrl, split):
    base, queries = split
    _, truth = exact_search(base, queries, 10, "ip")
    Y = mrl.apply(base)
    recalls = []
    for p in (4, 8, 16, 32):
        _, ids = exact_search(mrl.prefix_reconstruct(Y, p), queries, 10, "ip")
        recalls.append(_recall(ids, truth))
    assert all(b > a for a, b in zip(recalls, recalls[1:], strict=False)), recalls
    assert recalls[0] > 0.1 and recalls[-1] > 0.65, recalls  # PCA on digits: 0.12 at 4 dims, 0.63 at 32


def test_short_prefix_beats_pca_prefix(mrl, split):
    """The prefix losses make the 8-dim prefix better for neighbours than PCA's 8 dims."""
    base, queries = split
    _, truth = exact_search(base, queries, 10, "ip")
    pca = make_codec("PCA8,FP16").fit(base)
    _, ids_pca = exact_search(pca.decode(pca.encode(base)), queries, 10, "ip")
    _, ids_mrl = exact_search(mrl.prefix_reconstruct(mrl.apply(base), 8), queries, 10, "ip")
    assert _recall(ids_mrl, truth) > _recall(ids_pca, truth), (_recall(ids_mrl, truth), _recall(ids_pca, truth))


def test_prefix_router_then_rerank(mrl, split):
    base, queries = split
    _, truth = exact_search(base, queries, 10, "ip")
    Y = mrl.apply(base)
    _, coarse = exact_search(mrl.prefix_reconstruct(Y, 8), queries, 10, "ip")
    scores, ids = mrl.prefix_search(Y, queries, 10, prefix=8, shortlist=100)
    assert ids.shape == scores.shape == (len(queries), 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    assert _recall(ids, truth) > _recall(coarse, truth) + 0.1


def test_as_transform_before_a_quantizer(split, tmp_path, recall10):
    base, queries = split
    codec = make_codec("MRL16,SQ8", train=TRAIN).fit(base)
    assert codec.code_size == 16
    assert recall10(codec, base, queries) > 0.6
    codec.save(tmp_path / "c.json")
    again = load_codec(tmp_path / "c.json")
    np.testing.assert_array_equal(again.encode(base), codec.encode(base))


def test_block_pruning_keeps_recall_and_drops_inputs(split):
    base, queries = split
    _, truth = exact_search(base, queries, 10, "ip")
    dense = MatryoshkaProjection(16, train=TRAIN, block=8).fit(base)
    pruned = MatryoshkaProjection(16, train=TRAIN, block=8, prune=0.25).fit(base)
    assert pruned.spec == "MRL16_s25"
    assert len(pruned.kept_inputs_) == 48 and len(dense.kept_inputs_) == 64
    dropped = np.setdiff1d(np.arange(64), pruned.kept_inputs_)
    assert np.all(pruned.A_[dropped] == 0)
    # digits' border pixels are nearly always blank: pruning them costs little
    r_dense = _recall(exact_search(dense.reverse(dense.apply(base)), queries, 10, "ip")[1], truth)
    r_pruned = _recall(exact_search(pruned.reverse(pruned.apply(base)), queries, 10, "ip")[1], truth)
    assert r_pruned > r_dense - 0.05, (r_pruned, r_dense)
    np.testing.assert_allclose(pruned.apply(base), (base - pruned.mean_) @ pruned.A_, atol=1e-5)
