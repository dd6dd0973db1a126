"""The serving benchmark's smoke run (``--quick``) measures what its tables claim to."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_serve

pytestmark = pytest.mark.slow


def test_quick_run_tunes_serves_cold_and_warm_and_measures_memory(tmp_path):
    assert bench_serve.main(["--quick", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "serve.quick.json").read_text())
    (cat,) = result["catalogs"]
    assert cat["name"] == "movielens" and "held out" in cat["data"]
    n = cat["n_items"]
    contenders = cat["contenders"]
    assert {c["kind"] for c in contenders.values()} == {"cascade", "faiss+rerank", "faiss"}
    for c in contenders.values():
        assert c["tuning"]["rows"], c["name"]  # every setting of the grid tried on tuning queries
        for row in c["tuning"]["rows"]:
            assert 0.0 <= row["recall"] <= 1.0
        if c["warm"]:  # chosen on tuning, run on test: the figures come from the test run
            assert c["warm"]["setting"] == c["picks"]["warm"]
            assert c["warm"]["qps_median"] > 0 and len(c["warm"]["qps"]) == result["rounds"]
    for c in contenders.values():  # the exact stage read in two waves: each first stage alike
        if c["kind"] == "faiss":
            continue
        waves = [r for r in c["tuning"]["rows"] if r["setting"].get("fw")]
        assert waves, c["name"]
        for r in waves:  # the second wave skips rows: fewer pages than the shortlist's rows
            if "pages" in r:
                assert r["pages"] < r["setting"].get("s2", r["setting"].get("R")), (c["name"], r)
        # the pick rule: the target at least a standard error below the tuning mean
        within = [r for r in c["tuning"]["rows"] if r["recall_lower"] >= bench_serve.TARGET_RECALL
                  and r.get("pages", 1e9) <= bench_serve.PAGES_BUDGET]
        for mode in ("warm", "cold"):
            if c["picks"].get(mode):
                pick = next(r for r in c["tuning"]["rows"] if r["setting"] == c["picks"][mode])
                assert pick["recall"] > pick["recall_lower"] >= bench_serve.TARGET_RECALL
        if within:  # the cold pick keeps to the page budget where a setting does
            pick = next(r for r in c["tuning"]["rows"] if r["setting"] == c["picks"]["cold"])
            assert pick["pages"] <= bench_serve.PAGES_BUDGET
    disk = [c for c in contenders.values() if c["cold"]]
    probed = cat["disk"]  # the store device's random-read rate, beside the cold figures
    if any(c["cold"]["pools"]["0.0"]["engine"] == "kernel_aio" for c in disk):  # where the stores read so
        assert probed["reads_per_s_1"] > 0 and probed["reads_per_s_2"] > 0, probed
    assert disk, "no contender with an exact store on disk reached the recall target"
    for c in disk:
        pool0 = c["cold"]["pools"]["0.0"]
        assert pool0["pages_per_query"] > 1 and pool0["hit_rate_median"] == 0.0
        # the same single queries on one thread beside the threaded figure, every round
        assert len(pool0["qps_1"]) == result["cold_rounds"] and pool0["qps_1_median"] > 0
        assert pool0["mode"] in ("o_direct", "pread_dontneed")
        cold = c["memory"]["cold"]
        # measured from the process, and close to the index's own accounting: the page cache holds
        # at most the resident tier's memory-mapped codes, never the exact store read with O_DIRECT
        assert cold["page_cache_bytes"] <= cold["own_accounting_bytes"] + (64 << 10)
        assert 0.5 * cold["own_accounting_bytes"] <= cold["all_in_bytes"] <= 3 * cold["own_accounting_bytes"] + 64 * n
    md = (tmp_path / "serve.quick.md").read_text()
    assert "## movielens" in md and "pages/query" in md and "q/s pool 0, 1 thread" in md
    assert "Disk (where the exact stores lie" in md
    assert result["store_dtype"] == "float16" and "hold float16 rows" in md  # the stores the run wrote
