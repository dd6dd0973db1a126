"""Cascade index on real vectors (digits): recall, stages, mutation, persistence, bad input."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmcompress.errors import ArtifactError, CatalogError, CodecError
from mmcompress.evaluation.metrics import recall_at_k
from mmcompress.index import CascadeConfig, CascadeIndex
from mmcompress.index import store as index_store

CFG = {"coarse": {"codec": "BIN32", "shortlist": 150}, "fine": {"shortlist": 40}}


def build(digits, fitted, *, coarse_codec="BIN32", fine_codec="PQ8x8", masks=None, exact_path=None, **cfg):
    params = json.loads(json.dumps(CFG))
    params["coarse"].update(cfg.pop("coarse", {}))
    params["fine"].update(cfg.pop("fine", {}))
    config = CascadeConfig.from_params({**params, **cfg})
    fine = fitted[fine_codec] if fine_codec else None
    return CascadeIndex.build(fitted[coarse_codec], fine, digits["xb"], digits["ids"],
                              exact_path, config=config, masks=masks,
                              titles={int(i): f"item {i}" for i in digits["ids"]})


@pytest.fixture(scope="module")
def index(digits, fitted):
    modality = {"text": digits["ids"] % 3 != 0, "image": np.ones(len(digits["ids"]), bool)}
    return build(digits, fitted, masks=modality)


@pytest.mark.parametrize("routing", [{}, {"coarse": {"nlist": 16, "nprobe": 6}}], ids=["exhaustive", "ivf"])
def test_recall_at_10_with_exact_rerank(digits, fitted, routing):
    idx = build(digits, fitted, **routing)
    _, found, stats = idx.search(digits["xq"], 10, return_stats=True)
    assert recall_at_k(digits["truth"], found, 10) >= 0.95
    # each stage touched what it was configured to touch, and the exact store only the last
    assert stats.coarse_shortlist == 150 and stats.fine_shortlist == 40 and stats.exact_reranked == 40
    assert stats.disk_bytes == pytest.approx(40 * 64 * 4)
    if routing:
        assert stats.coarse_scanned < 0.6 * len(digits["xb"])
    else:
        assert stats.coarse_scanned == len(digits["xb"])


def test_each_stage_improves_ranking(index, digits):
    _, coarse_only = index.search(digits["xq"], 10, exact_rerank=False, coarse_shortlist=10,
                                  fine_shortlist=10)
    _, with_exact = index.search(digits["xq"], 10)
    assert recall_at_k(digits["truth"], with_exact, 10) > recall_at_k(digits["truth"], coarse_only, 10)
    scores, _ = index.search(digits["xq"], 10)
    assert np.all(np.diff(scores, axis=1) <= 1e-6)  # best first


def test_scores_are_exact_inner_products(index, digits):
    scores, found = index.search(digits["xq"][:5], 3)
    row = {int(i): r for r, i in enumerate(digits["ids"])}
    for q, (s_row, f_row) in enumerate(zip(scores, found, strict=True)):
        for s, f in zip(s_row, f_row, strict=True):
            assert s == pytest.approx(float(digits["xq"][q] @ digits["xb"][row[int(f)]]), abs=1e-5)


def test_search_by_id_excludes_itself(index, digits):
    item = int(digits["ids"][17])
    scores, found = index.search_by_id(item, 10)
    assert len(found) == 10 and item not in found
    _, direct = index.search(digits["xb"][17:18], 11)
    assert list(found) == [i for i in direct[0] if i != item][:10]
    with pytest.raises(KeyError):
        index.search_by_id(-5, 10)


def test_modality_filter_returns_only_items_with_it(index, digits):
    _, found = index.search(digits["xq"], 10, modality="text")
    assert (found >= 0).all() and not np.isin(found, digits["ids"][digits["ids"] % 3 == 0]).any()
    with pytest.raises(CatalogError, match="unknown modality"):
        index.search(digits["xq"][:1], 10, modality="audio")


def test_non_binary_coarse_codec(digits, fitted):
    idx = build(digits, fitted, coarse_codec="PQ8x8", fine_codec="SQ8", coarse={"nlist": 16, "nprobe": 6})
    _, found = idx.search(digits["xq"], 10)
    assert recall_at_k(digits["truth"], found, 10) >= 0.95


def test_two_stage_without_fine_codec(digits, fitted):
    idx = build(digits, fitted, fine_codec=None, coarse={"shortlist": 200})
    _, found, stats = idx.search(digits["xq"], 10, return_stats=True)
    assert stats.exact_reranked == 200 and recall_at_k(digits["truth"], found, 10) >= 0.95


@pytest.mark.parametrize("spec", ["PQ8x8", "RQ4x8"])
def test_table_fine_stage_ranks_as_the_codecs_own_search(digits, fitted, spec):
    """The fine stage scores additive codes from per-query tables and stored norms (a norm
    term included), with the same result as the codec's search over each shortlist."""
    from mmcompress.codecs import make_codec

    codec = fitted[spec] if spec in fitted else make_codec(spec).fit(digits["xb"])
    codec.norm_weight_ = 0.25  # a non-zero norm term, whatever the fit chose
    idx = build(digits, {**fitted, spec: codec}, fine_codec=spec, coarse={"nlist": 16, "nprobe": 8})
    idx.add(digits["xq"][:50], 10**6 + np.arange(50))  # rows in a delta segment too
    assert idx._fine_norm_coef == pytest.approx(0.25)
    assert idx.memory_report()["resident_bytes"]["fine_norms"] == 4 * (len(digits["xb"]) + 50)
    kw = {"exact_rerank": False, "fine_shortlist": 10}
    by_tables = idx.search(digits["xq"], 10, **kw)
    idx._fine_coef = None  # the per-shortlist codec search
    by_search = idx.search(digits["xq"], 10, **kw)
    assert np.mean(by_tables[1] == by_search[1]) >= 0.99
    np.testing.assert_allclose(by_tables[0], by_search[0], rtol=1e-4, atol=1e-4)


def test_add_remove_compact_without_retraining(digits, fitted):
    idx = build(digits, fitted, coarse={"nlist": 16, "nprobe": 16})
    xb, ids = digits["xb"], digits["ids"]
    codec_state = fitted["PQ8x8"]._get_state()[1]["index"].copy()
    gone = ids[:300]
    assert idx.remove(gone) == 300 and len(idx) == len(ids) - 300
    _, found = idx.search(xb[:300], 10)
    assert not np.isin(found, gone).any()
    new_ids = ids[:300] + 10**6
    idx.add(xb[:300], new_ids)
    _, top = idx.search(xb[:300], 1)
    assert np.mean(top[:, 0] == new_ids) >= 0.95  # a re-added vector finds itself
    with pytest.raises(CatalogError, match="already in the index"):
        idx.add(xb[:1], new_ids[:1])
    with pytest.raises(CatalogError, match="not in the index"):
        idx.remove([ids[0]])
    assert idx.remove([ids[0]], missing_ok=True) == 0
    before = idx.search(digits["xq"], 10)
    idx.compact()
    after = idx.search(digits["xq"], 10)
    assert len(idx) == len(ids) and idx._state.delta is None and idx._state.dead is None
    assert set(idx.item_ids()) == set(ids[300:]) | set(new_ids)
    # compaction reorders rows, which only changes how Hamming ties at the shortlist edge break
    assert recall_at_k(before[1], after[1], 10) >= 0.97
    np.testing.assert_array_equal(fitted["PQ8x8"]._get_state()[1]["index"], codec_state)


def test_save_load_round_trip_is_memory_mapped(index, digits, tmp_path):
    index.save(tmp_path / "ix")
    t = time.perf_counter()
    loaded = CascadeIndex.load(tmp_path / "ix", mmap=True)
    assert time.perf_counter() - t < 5.0
    st = loaded._state.main
    assert isinstance(st.coarse, np.memmap) and loaded.memory_report()["exact_reader"] == "mmap"
    assert isinstance(st.fine, np.memmap) and isinstance(st.ids.data, np.memmap)
    for a, b in zip(index.search(digits["xq"], 10), loaded.search(digits["xq"], 10), strict=True):
        np.testing.assert_array_equal(a, b)
    assert loaded.bytes_per_item() == pytest.approx(index.bytes_per_item())
    assert loaded.titles == index.titles and loaded.modalities == index.modalities
    assert loaded.memory_report()["exact_on_disk"]
    np.testing.assert_array_equal(loaded.search_by_id(int(digits["ids"][3]), 5)[1],
                                  index.search_by_id(int(digits["ids"][3]), 5)[1])


def test_saved_index_with_pending_changes_is_compacted(digits, fitted, tmp_path):
    idx = build(digits, fitted)
    idx.remove(digits["ids"][:10])
    idx.add(digits["xb"][:5] * 0.5, np.arange(5) + 10**7, masks={})
    idx.save(tmp_path / "ix")
    loaded = CascadeIndex.load(tmp_path / "ix")
    assert len(loaded) == len(idx) and loaded._state.delta is None
    assert set(loaded.item_ids()) == set(idx.item_ids())
    assert recall_at_k(idx.search(digits["xq"], 10)[1], loaded.search(digits["xq"], 10)[1], 10) >= 0.97


@pytest.mark.parametrize("target", ["coarse_codec.json*.npz", "titles.json", "offsets.npy", "manifest.json"])
def test_tampered_file_is_refused(index, tmp_path, target):
    index.save(tmp_path / "ix")
    [path] = (tmp_path / "ix").glob(target)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError):
        CascadeIndex.load(tmp_path / "ix")


def test_truncated_large_array_is_refused_without_hashing_it(index, tmp_path, monkeypatch):
    index.save(tmp_path / "ix")
    monkeypatch.setattr(index_store, "SMALL_FILE_BYTES", 0)  # every array takes the large-file path
    path = tmp_path / "ix" / "exact.rows"
    path.write_bytes(path.read_bytes()[:-64])
    with pytest.raises(ArtifactError, match="size"):
        CascadeIndex.load(tmp_path / "ix")
    with pytest.raises(ArtifactError):
        CascadeIndex.load(tmp_path / "missing")


def test_large_array_tamper_caught_by_sampled_and_full_checks(index, tmp_path, monkeypatch):
    index.save(tmp_path / "ix")
    monkeypatch.setattr(index_store, "SMALL_FILE_BYTES", 0)
    path = tmp_path / "ix" / "coarse.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="digest"):
        CascadeIndex.load(tmp_path / "ix", verify="quick")
    with pytest.raises(ArtifactError, match="SHA-256"):
        CascadeIndex.load(tmp_path / "ix", verify="full")


def test_exact_vectors_on_disk_and_memory_report(digits, fitted, tmp_path):
    idx = build(digits, fitted, exact_path=tmp_path / "exact.rows")
    report = idx.memory_report()
    assert report["exact_reader"] == "mmap" and report["exact_on_disk"]
    n = len(digits["ids"])
    codes = fitted["BIN32"].code_size + fitted["PQ8x8"].code_size
    assert report["resident_bytes"]["coarse_codes"] + report["resident_bytes"]["fine_codes"] == n * codes
    assert report["resident_bytes"]["ids"] == 2 * n  # ids span < 65536 values: 2 bytes each
    assert report["resident_bytes"]["exact_buffer_pool"] == 0
    # 16 rows of 256 bytes per 4 KiB page after a one-page header
    assert report["on_disk_bytes"]["exact_vectors"] == 4096 * (1 + -(-n // 16))
    assert idx.bytes_per_item() == pytest.approx(report["resident_total"] / n)
    assert idx.bytes_per_item() > codes
    idx.save(tmp_path / "ix")  # the exact store already on disk is copied into the saved index
    loaded = CascadeIndex.load(tmp_path / "ix")
    assert (tmp_path / "ix" / "exact.rows").read_bytes() == (tmp_path / "exact.rows").read_bytes()
    rows = np.arange(n)
    np.testing.assert_array_equal(loaded._state.main.exact.read(rows), idx._state.main.exact.read(rows))


@pytest.mark.parametrize("bad, error", [
    (np.zeros((2, 63), np.float32), "dimension"),
    (np.full((1, 64), np.nan, np.float32), "non-finite"),
    (np.zeros(64, np.float32), "2-D"),
])
def test_bad_queries_are_refused(index, bad, error):
    with pytest.raises(CodecError, match=error):
        index.search(bad, 10)


def test_bad_k_and_bad_build_input(index, digits, fitted):
    with pytest.raises(CodecError, match="k must be"):
        index.search(digits["xq"][:1], 0)
    with pytest.raises(CatalogError, match="duplicate"):
        CascadeIndex.build(fitted["BIN32"], None, digits["xb"][:3], [1, 2, 2])
    with pytest.raises(CatalogError, match="one id per vector"):
        CascadeIndex.build(fitted["BIN32"], None, digits["xb"][:3], [1, 2])
    with pytest.raises(CodecError, match="unknown keys"):
        CascadeConfig.from_params({"coarse": {"codec": "BIN32", "shortlist": 10, "width": 3}})


def test_k_larger_than_catalog_pads(digits, fitted):
    idx = CascadeIndex.build(fitted["BIN32"], fitted["SQ8"], digits["xb"][:20], digits["ids"][:20])
    scores, found = idx.search(digits["xq"][:2], 30)
    assert found.shape == (2, 30) and (found[:, :20] >= 0).all() and (found[:, 20:] == -1).all()
    assert np.isneginf(scores[:, 20:]).all()


def test_threaded_batch_search_matches_serial(index, digits):
    a = index.search(np.tile(digits["xq"], (3, 1)), 10)
    b = index.search(np.tile(digits["xq"], (3, 1)), 10, threads=2)
    np.testing.assert_array_equal(a[1], b[1])


def test_params_yaml_index_section_builds_a_shared_code_cascade(digits):
    section = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())["index"]
    config = CascadeConfig.from_params(section)
    assert config.fine.codec is None and config.exact_rerank  # the pipeline reranks with its challenger
    config.fine.codec = "coarse"
    config.coarse.codec, config.coarse.shortlist, config.fine.shortlist = "BIN32", 300, 80
    idx = CascadeIndex.from_config(config, digits["xb"], digits["ids"])
    assert idx.fine_shares_coarse and idx._state.main.fine is None and idx.sign_scorer is not None
    _, found, stats = idx.search(digits["xq"], 10, return_stats=True)
    assert recall_at_k(digits["truth"], found, 10) >= 0.95 and stats.exact_reranked == 80
    report = idx.memory_report()["resident_bytes"]
    assert report["fine_codes"] == 0 and report["fine_codec"] == 0
    assert 0 < report["fine_scan_tables"] < 0.05 * report["coarse_codec"]  # the codec's own projection


def test_l2_metric_cascade(digits):
    from mmcompress.codecs import make_codec

    xb, xq, ids = digits["xb"] * 3.0, digits["xq"] * 3.0, digits["ids"]  # non-unit norms
    d2 = ((xq[:, None, :] - xb[None, :, :]) ** 2).sum(axis=2)
    truth = ids[np.argsort(d2, axis=1, kind="stable")[:, :10]]
    config = CascadeConfig.from_params({"metric": "l2", "coarse": {"codec": "BIN32", "shortlist": 300},
                                        "fine": {"codec": "coarse", "shortlist": 80}})
    codec = make_codec("BIN32", metric="l2").fit(xb)
    idx = CascadeIndex.build(codec, codec, xb, ids, config=config)
    scores, found = idx.search(xq, 10)
    assert recall_at_k(truth, found, 10) >= 0.95
    np.testing.assert_allclose(-scores[:, 0], np.sort(d2, axis=1)[:, 0], rtol=1e-4)


def test_measure_index_reports_what_the_pipeline_records(index, digits):
    from mmcompress.index import exact_top_ids, measure_index

    truth = exact_top_ids(digits["xb"], digits["ids"], digits["xq"])
    np.testing.assert_array_equal(truth, digits["truth"])
    report = measure_index(index, digits["xq"], truth, n_latency=20)
    assert report["recall_at_10"] >= 0.95 and report["latency_p50_ms"] > 0 and report["queries_per_s"] > 0
    assert report["resident_bytes_per_item"] == pytest.approx(index.bytes_per_item())
    assert report["stages"]["exact_reranked"] == 40 and report["n_items"] == len(digits["ids"])


def test_code_space_routing_keeps_recall_with_a_fraction_of_the_centroid_bytes(digits, tmp_path):
    section = {"coarse": {"codec": "BIN32", "shortlist": 300, "nlist": 16, "nprobe": 6},
               "fine": {"codec": "coarse", "shortlist": 80}}
    code = CascadeIndex.from_config(CascadeConfig.from_params(section), digits["xb"], digits["ids"])
    full = CascadeIndex.from_config(CascadeConfig.from_params(
        {**section, "coarse": {**section["coarse"], "routing": "full"}}), digits["xb"], digits["ids"])
    assert code.memory_report()["resident_bytes"]["centroids"] == 16 * 32 * 4  # BIN32's subspace
    assert full.memory_report()["resident_bytes"]["centroids"] == 16 * 64 * 4
    r_code = recall_at_k(digits["truth"], code.search(digits["xq"], 10)[1], 10)
    r_full = recall_at_k(digits["truth"], full.search(digits["xq"], 10)[1], 10)
    assert r_code >= 0.95 and r_code >= r_full - 0.01
    code.save(tmp_path / "ix")
    assert json.loads((tmp_path / "ix" / "manifest.json").read_text())["partition"]["space"] == "code"
    loaded = CascadeIndex.load(tmp_path / "ix")
    assert loaded.partition.projection_ is loaded.coarse_codec.W_  # shared, not copied
    np.testing.assert_array_equal(loaded.search(digits["xq"], 10)[1], code.search(digits["xq"], 10)[1])


def test_half_precision_centroids_halve_their_bytes(digits, tmp_path):
    section = {"coarse": {"codec": "BIN32", "shortlist": 300, "nlist": 16, "nprobe": 8, "routing": "full"},
               "fine": {"codec": "coarse", "shortlist": 80}}
    full = CascadeIndex.from_config(CascadeConfig.from_params(section), digits["xb"], digits["ids"])
    half = CascadeIndex.from_config(CascadeConfig.from_params({**section, "half_precision_tables": True}),
                                    digits["xb"], digits["ids"])
    rf, rh = full.memory_report()["resident_bytes"], half.memory_report()["resident_bytes"]
    assert rh["centroids"] * 2 == rf["centroids"]
    assert rh["fine_scan_tables"] == rf["fine_scan_tables"]  # shared with the codec: nothing to halve
    assert recall_at_k(digits["truth"], half.search(digits["xq"], 10)[1], 10) >= 0.95
    half.save(tmp_path / "ix")
    loaded = CascadeIndex.load(tmp_path / "ix")
    assert loaded.partition.centroids_.dtype == np.float16
    np.testing.assert_array_equal(loaded.search(digits["xq"], 10)[1], half.search(digits["xq"], 10)[1])


def test_code_space_centroids_take_the_precision_of_a_float16_projection(digits, tmp_path):
    section = {"coarse": {"codec": "BIN32_f16", "shortlist": 300, "nlist": 16, "nprobe": 6},
               "fine": {"codec": "coarse", "shortlist": 80}}
    half = CascadeIndex.from_config(CascadeConfig.from_params(section), digits["xb"], digits["ids"])
    full = CascadeIndex.from_config(CascadeConfig.from_params(
        {**section, "coarse": {**section["coarse"], "codec": "BIN32"}}), digits["xb"], digits["ids"])
    assert half.partition.centroids_.dtype == np.float16
    assert half.memory_report()["resident_bytes"]["centroids"] == 16 * 32 * 2
    assert full.memory_report()["resident_bytes"]["centroids"] == 16 * 32 * 4
    r_half = recall_at_k(digits["truth"], half.search(digits["xq"], 10)[1], 10)
    r_full = recall_at_k(digits["truth"], full.search(digits["xq"], 10)[1], 10)
    assert r_half >= 0.95 and r_half >= r_full - 0.01
    half.save(tmp_path / "ix")
    loaded = CascadeIndex.load(tmp_path / "ix")
    assert loaded.partition.centroids_.dtype == np.float16
    np.testing.assert_array_equal(loaded.search(digits["xq"], 10)[1], half.search(digits["xq"], 10)[1])


def test_code_space_partition_refuses_to_load_without_its_projection(digits):
    from mmcompress.index.partition import CoarsePartition

    W = np.linalg.qr(np.random.default_rng(0).standard_normal((64, 16)))[0].astype(np.float32)
    part = CoarsePartition(8).fit(digits["xb"], W)
    meta, arrays = part.get_state()
    assert meta["space"] == "code" and arrays["centroids"].shape == (8, 16)
    with pytest.raises(CodecError, match="code space"):
        CoarsePartition.from_state(meta, arrays)
    again = CoarsePartition.from_state(meta, arrays, projection=W)
    np.testing.assert_array_equal(again.probe(digits["xq"], 3), part.probe(digits["xq"], 3))
