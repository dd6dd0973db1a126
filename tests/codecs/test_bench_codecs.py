"""The codec benchmark runs end to end on a small real dataset and writes its three outputs."""

import json

import numpy as np
import pytest

from benchmarks import bench_codecs


@pytest.mark.slow
def test_quick_benchmark_writes_json_markdown_and_plot(digits, tmp_path):
    path = tmp_path / "digits.npy"
    np.save(path, digits)
    out = tmp_path / "results"
    bench_codecs.main(["--quick", "--vectors", f"digits={path}", "--budgets", "8", "--out", str(out),
                       "--n-queries", "100", "--only", "NUQ", "PQ", "faiss PQ", "--throughput-items", "0"])
    results = json.loads((out / "codecs.json").read_text())
    labels = {r["label"] for r in results["rows"]}
    assert {"NUQ", "PQ", "faiss PQ", "faiss PQ (L2 scan)"} <= labels
    for row in results["rows"]:
        assert 0.0 <= row["recall_at_10"] <= 1.0
        assert row["code_bytes"] == 8 and row["encode_per_s"] > 0 and row["search_qps"] > 0
        assert row["ratio_vs_best_faiss"] is not None
    assert "| NUQ |" in (out / "codecs.md").read_text()
    assert (out / "codecs.png").read_bytes()[:4] == b"\x89PNG"


def test_one_dataset_is_run_again_and_the_others_are_kept(digits, tmp_path):
    paths = {}
    for name, rows in (("a", digits[:600]), ("b", digits[600:1200])):
        paths[name] = tmp_path / f"{name}.npy"
        np.save(paths[name], rows)
    out = tmp_path / "results"
    args = ["--quick", "--budgets", "8", "--out", str(out), "--n-queries", "100", "--only", "faiss SQ8",
              "--throughput-items", "0", "--no-scann", "--vectors", f"a={paths['a']}", f"b={paths['b']}"]
    bench_codecs.main(args)
    before = json.loads((out / "codecs.json").read_text())
    again = bench_codecs.main(args + ["--resume", "--datasets", "b", "--redo", "b"])
    assert list(again["datasets"]) == ["a", "b"]  # a's heading stays, though a was not loaded
    kept = [r for r in again["rows"] if r["dataset"] == "a"]
    assert kept == [r for r in before["rows"] if r["dataset"] == "a"]
    assert sorted(r["label"] for r in again["rows"] if r["dataset"] == "b") == ["faiss SQ8", "faiss SQ8 (L2 scan)"]
    assert "## a (" in (out / "codecs.md").read_text()
    with pytest.raises(SystemExit, match="not found"):
        bench_codecs.main(args + ["--datasets", "c"])


def test_redo_names_a_dataset_a_budget_or_a_row():
    for redo in (["digits-l2"], ["digits-l2/8"], ["digits-l2/8/auto"]):
        assert bench_codecs.redone(redo, "digits-l2", 8, "auto")
    assert not bench_codecs.redone(["digits-l2/16", "fused/8/auto", "digits"], "digits-l2", 8, "auto")


def test_ratio_up_to_the_budget_takes_the_best_faiss_row_of_any_smaller_size():
    rows = [{"dataset": "d", "budget": 8, "source": "faiss", "label": "faiss RQ", "spec": "RQ8x8",
             "code_bytes": 8, "recall_at_10": 0.9, "encode_per_s": 1e5},
            {"dataset": "d", "budget": 16, "source": "faiss", "label": "faiss PQ", "spec": "PQ16",
             "code_bytes": 16, "recall_at_10": 0.8, "encode_per_s": 1e5},
            {"dataset": "d", "budget": 16, "source": "project", "label": "auto", "spec": "RQ8x8",
             "code_bytes": 8, "recall_at_10": 0.88, "encode_per_s": 1e5},
            {"dataset": "other", "budget": 8, "source": "faiss", "label": "faiss RQ", "spec": "RQ8x8",
             "code_bytes": 8, "recall_at_10": 0.99, "encode_per_s": 1e5}]
    bench_codecs.add_ratios(rows)
    auto = rows[2]
    assert auto["ratio_vs_best_faiss"] == round(0.88 / 0.8, 3)  # same budget: PQ16
    assert auto["ratio_vs_best_faiss_upto"] == round(0.88 / 0.9, 3)  # any size <= 16 B: RQ8x8
    assert auto["best_faiss_upto_budget"] == {"spec": "RQ8x8", "code_bytes": 8, "recall_at_10": 0.9}
    assert rows[0]["ratio_vs_best_faiss_upto"] == 1.0  # a 16-byte row never counts at 8 bytes


@pytest.mark.slow
def test_faiss_lsq_is_measured_on_its_codes_not_on_a_replay_of_its_training(encode_error):
    """The base is the training set: faiss LSQ encoding it with its training seed would replay
    the codes training converged to (see LocalSearchQuantizer); the benchmark's does not."""
    from threadpoolctl import threadpool_limits

    from benchmarks import common

    rows = common.digits_l2()[:800]
    ordered, permuted = np.arange(len(rows)), np.random.default_rng(0).permutation(len(rows))
    with threadpool_limits(1, user_api="openmp"):
        codec = bench_codecs.FaissCodec("LSQ4x8", rows.shape[1], "l2").fit(rows)
        assert encode_error(codec.encode, codec.decode, rows, ordered) > \
            0.8 * encode_error(codec.encode, codec.decode, rows, permuted)


def test_extended_rabitq_factories_fit_the_budget():
    import faiss

    for d, budget in ((64, 32), (384, 64), (474, 32)):
        for bits in (2, 4):
            factory = bench_codecs.rabitq_factory(d, budget, bits)
            assert factory is not None and f"RaBitQ{bits}" in factory
            size = faiss.index_factory(d, factory).sa_code_size()
            assert size <= budget
            assert bench_codecs.rabitq_factory(d, size - 1, bits) != factory  # the most that fits
    assert bench_codecs.rabitq_factory(384, 16, 2) is None  # 20 bytes of factors alone


def test_scann_block_size_fits_the_budget():
    from benchmarks.peers.scann_codec import ah_code_bytes, dims_per_block_for

    assert dims_per_block_for(384, 16) == 12 and ah_code_bytes(384, 12) == 16
    assert dims_per_block_for(64, 8) == 4 and dims_per_block_for(64, 64) == 1
    for d in (64, 100, 384, 474):
        for budget in (8, 16, 32, 64):
            dpb = dims_per_block_for(d, budget)
            assert ah_code_bytes(d, dpb) <= budget and (dpb == 1 or ah_code_bytes(d, dpb - 1) > budget)


def test_l2_datasets_keep_their_rows_and_take_l2_truth():
    from benchmarks import common
    from mmcompress.codecs import exact_search

    X = common.digits_l2()
    ds = common.split_queries("digits-l2", X, 200, metric="l2")
    assert ds.metric == "l2" and np.abs(np.linalg.norm(ds.xb, axis=1) - 1).max() > 1  # not normalised
    _, gt = exact_search(ds.xb, ds.xq, 10, "l2")
    np.testing.assert_array_equal(ds.gt, gt)
    ip = common.split_queries("digits", X, 200)
    assert ip.metric == "ip" and np.allclose(np.linalg.norm(ip.xb, axis=1), 1, atol=1e-5)


def test_scann_rows_are_skipped_with_a_reason_without_the_peers_venv(tmp_path):
    from benchmarks import common

    ds = common.split_queries("digits-l2", common.digits_l2()[:300], 50, metric="l2")
    rows, why = bench_codecs.run_scann(ds, [8], 0, python=tmp_path / "no-venv" / "bin" / "python")
    assert rows == [] and "missing (make venv-peers)" in why


@pytest.mark.slow
@pytest.mark.skipif(not bench_codecs.PEERS_PYTHON.exists(), reason="no .venv-peers (make venv-peers)")
def test_scann_ah_rows_from_the_peers_venv():
    from benchmarks import common

    ds = common.split_queries("digits-l2", common.digits_l2(), 200, metric="l2")
    rows, why = bench_codecs.run_scann(ds, [8, 16], 0)
    assert why == "" and [r["budget"] for r in rows] == [8, 16]
    for r in rows:
        assert r["code_bytes"] <= r["budget"] and 0.5 < r["recall_at_10"] <= 1.0
    assert rows[1]["recall_at_10"] > rows[0]["recall_at_10"]


def test_the_throughput_figure_searches_synthetic_rows_that_copy_no_real_row(digits):
    """The search-speed figure runs over synthetic rows with the catalog's moments, not over
    noisy copies of real rows, and says so."""
    from benchmarks import common
    from mmcompress.codecs import make_codec

    ds = common.split_queries("digits", digits, 100, 0)
    codec = make_codec("PCA8,SQ8").fit(ds.xb)
    t = bench_codecs.throughput_100k(ds, codec, 3000, 1, 0)
    assert t["n_items"] == 3000 and t["search_qps"] > 0 and t["encode_per_s"] > 0
    assert "synthetic Gaussian mixture" in t["data"] and "digits catalog" in t["data"]
    from benchmarks.datasets import synthetic_like

    rows = synthetic_like(ds.xb, 3000, seed=0)[0]
    nearest = (rows @ ds.xb.T).max(axis=1)  # unit rows: cosine to the closest real row
    # no near-copies: the noisy copies this figure used to search sat at a median 0.96 from
    # their real rows here, the mixture's rows at 0.90
    assert np.median(nearest) < 0.93
    assert "synthetic Gaussian mixture" in bench_codecs.markdown({"rows": [], "datasets": {}, "machine": {},
                                                                  "throughput": t})
