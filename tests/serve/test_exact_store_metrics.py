"""Serving from disk: the exact-store reader is chosen by the saved index or the service's
settings, and /metrics exports its page reads, buffer-pool hits and hit rate, monotonic across
hot reloads."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from mmcompress.codecs import make_codec
from mmcompress.errors import CodecError
from mmcompress.index import CascadeConfig, CascadeIndex, manifest_digest
from mmcompress.serve import DirectorySource, ServiceSettings, SimilarItemsService, create_app

POOL = 1 << 18  # 64 pages; the digits' 1,797 rows of 256 B fill 113, so the pool both hits and misses
ON_DISK_MODES = ("o_direct", "pread_dontneed")


def scrape(client: TestClient) -> dict[str, float]:
    """The /metrics samples as {"name{labels}": value}."""
    text = client.get("/metrics").text
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^([a-z_]+(?:\{[^}]*\})?) (\S+)$", text, re.MULTILINE)}


def exact_figures(samples: dict[str, float]) -> dict[str, float]:
    return {key: samples[f"mmcompress_exact_store_{key}_total"]
            for key in ("calls", "rows", "pages_read", "pool_hits", "pool_misses", "bytes_read", "reads")}


def query(client: TestClient, catalog: dict, rows: range) -> None:
    """Uncached work for the exact stage: similar items by id and searches by vector."""
    for r in rows:
        assert client.get(f"/items/{int(catalog['ids'][r])}/similar", params={"k": 5}).status_code == 200
        assert client.post("/search", json={"vector": catalog["X"][r + 1].tolist(), "k": 5}).status_code == 200


@pytest.fixture()
def direct_dir(build, tmp_path):
    """A saved index whose config reads its exact store with ``direct`` and a small pool."""
    index = build()
    index.reopen_exact("direct", pool_bytes=POOL, reads_in_flight=2)  # in memory: only the config changes
    path = tmp_path / "index"
    index.save(path)
    return path


def test_metrics_show_the_direct_readers_pages_and_pool(direct_dir, catalog):
    app = create_app(direct_dir, settings=ServiceSettings(reload_interval_s=None, warm_items=0))
    index = app.state.service.current.index
    with TestClient(app) as c:
        assert index.config.exact.reader == "direct"  # the saved choice serves by default
        query(c, catalog, range(0, 40, 2))
        query(c, catalog, range(0, 40, 2))  # vector searches again: their pages are in the pool now
        samples = scrape(c)
        stats = index.exact_store_stats()
    figures = exact_figures(samples)
    assert figures == {k: stats[k] for k in figures}
    assert figures["pages_read"] > 0 and figures["pool_hits"] > 0 and figures["bytes_read"] > 0
    rate = samples["mmcompress_exact_store_pool_hit_rate"]
    assert 0 <= rate <= 1 and rate == pytest.approx(stats["pool_hit_rate"])
    assert samples["mmcompress_exact_store_pool_capacity_bytes"] == POOL
    assert 0 < samples["mmcompress_exact_store_pool_held_bytes"] <= POOL
    assert stats["mode"] in ON_DISK_MODES
    assert samples[f'mmcompress_exact_store_reader_info{{mode="{stats["mode"]}",reader="direct"}}'] == 1


def test_settings_choose_the_reader_of_every_loaded_index(index_dir, direct_dir, catalog):
    direct = ServiceSettings(reload_interval_s=None, warm_items=20, exact_reader="direct", exact_pool_bytes=POOL)
    app = create_app(index_dir, settings=direct)  # saved with mmap, served from disk
    with TestClient(app) as c:
        stats = app.state.service.current.index.exact_store_stats()
        assert stats["mode"] in ON_DISK_MODES and stats["pool_bytes"] == POOL
        assert stats["pool_pages_held"] > 0  # warming the popular items went through the pool
        assert scrape(c)["mmcompress_exact_store_pages_read_total"] == stats["pages_read"] > 0
    mmap = ServiceSettings(reload_interval_s=None, warm_items=0, exact_reader="mmap")
    app = create_app(direct_dir, settings=mmap)  # saved with direct, memory-mapped here
    with TestClient(app) as c:
        query(c, catalog, range(3))
        samples = scrape(c)
    assert samples['mmcompress_exact_store_reader_info{mode="mmap",reader="mmap"}'] == 1
    assert samples["mmcompress_exact_store_pages_read_total"] > 0
    assert samples["mmcompress_exact_store_pool_hits_total"] == samples["mmcompress_exact_store_pool_capacity_bytes"] == 0


@pytest.mark.parametrize("bad, key", [({"exact_reader": "nfs"}, "exact_reader"),
                                      ({"exact_pool_bytes": -1}, "exact_pool_bytes"),
                                      ({"exact_reads_in_flight": 0}, "exact_reads_in_flight"),
                                      ({"exact_pool_bytes": "64MB"}, "exact_pool_bytes")])
def test_bad_reader_settings_are_refused_naming_the_setting(bad, key):
    with pytest.raises(CodecError, match=key):
        ServiceSettings(**bad)


def test_counters_never_decrease_across_reloads(tmp_path, build, catalog):
    path = tmp_path / "index"
    versions = [build(), build(shortlist=120)]  # different manifests
    settings = ServiceSettings(reload_interval_s=None, warm_items=0, exact_reader="direct", exact_pool_bytes=POOL)
    versions[0].save(path)
    service = SimilarItemsService(DirectorySource(path), settings)
    app = create_app(None, service=service)
    totals: list[dict[str, float]] = []
    with TestClient(app) as c:
        for swap in range(3):
            query(c, catalog, range(swap, swap + 6))
            old = service.current.index
            before = dict(old.exact_store_stats())
            totals.append(exact_figures(scrape(c)))
            query(c, catalog, range(20 + swap, 23 + swap))  # read after the scrape, before the reload
            grew = {k: old.exact_store_stats()[k] - before[k] for k in totals[-1]}
            assert grew["rows"] > 0
            versions[(swap + 1) % 2].save(path)
            assert service.reload() and service.current.bundle.version == manifest_digest(path)
            assert service.current.index is not old and service.current.index.exact_store_stats()["pages_read"] == 0
            after = exact_figures(scrape(c))
            # the retired index's last reads are kept, the new index adds from zero
            assert after == {k: totals[-1][k] + grew[k] for k in after}, swap
            totals.append(after)
            service.current.index.reset_exact_store_stats()  # a reset is not a decrease either
            query(c, catalog, range(2))
            totals.append(exact_figures(scrape(c)))
    for a, b in zip(totals, totals[1:], strict=False):
        assert all(b[k] >= a[k] for k in a), (a, b)
    assert totals[-1]["pages_read"] > totals[0]["pages_read"] > 0


def test_an_index_without_an_exact_store_exports_zeros(catalog):
    config = CascadeConfig.from_params({"coarse": {"codec": "BIN32", "shortlist": 100}, "exact_rerank": False})
    X = catalog["X"]
    index = CascadeIndex.build(make_codec("BIN32").fit(X), make_codec("PQ8x8").fit(X), X, catalog["ids"],
                               config=config)
    assert index.exact_store_stats() == {}
    app = create_app(lambda: index, settings=ServiceSettings(reload_interval_s=None, warm_items=0))
    with TestClient(app) as c:
        assert c.post("/search", json={"vector": X[0].tolist(), "k": 3}).status_code == 200
        samples = scrape(c)
    assert samples["mmcompress_exact_store_pages_read_total"] == 0
    assert samples["mmcompress_exact_store_pool_hit_rate"] == 0
    assert samples['mmcompress_exact_store_reader_info{mode="none",reader="mmap"}'] == 1


def test_a_scrape_of_the_replaced_index_after_its_reload_counts_nothing(build, catalog):
    """A /metrics request that took the service's index just before a reload and exports it
    after the reload retired it must not count that index's reads a second time."""
    from mmcompress.serve.metrics import ServiceMetrics

    metrics, old, new = ServiceMetrics(), build(), build()
    old.search(catalog["X"][:5], 5)
    metrics.refresh_exact_store(old)
    old.search(catalog["X"][5:8], 5)
    metrics.retire_exact_store(old)  # the reload: the last 3 queries are counted here
    total = old.exact_store_stats()["calls"]
    metrics.refresh_exact_store(old)  # the late scrape
    new.search(catalog["X"][:2], 5)
    metrics.refresh_exact_store(new)
    assert metrics.registry.get_sample_value("mmcompress_exact_store_calls_total") == total + new.exact_store_stats()["calls"]


def test_settings_read_every_loaded_index_in_two_waves(index_dir, catalog):
    rows_read = {}
    for waves in (None, 10):
        settings = ServiceSettings(reload_interval_s=None, warm_items=0, exact_first_wave=waves,
                                   exact_confidence=None if waves is None else 0.95)
        app = create_app(index_dir, settings=settings)
        index = app.state.service.current.index
        with TestClient(app) as c:
            query(c, catalog, range(0, 60, 3))
        rows_read[waves] = index.exact_store_stats()["rows"]
        if waves is not None:
            assert (index.config.exact.first_wave, index.config.exact.confidence) == (10, 0.95)
        else:
            assert index.config.exact.first_wave == 0  # as saved
    assert rows_read[10] < 0.8 * rows_read[None]


def test_two_waves_are_refused_on_an_index_without_a_rerank_bound(tmp_path, build, catalog):
    config = CascadeConfig.from_params({"coarse": {"codec": "BIN32", "shortlist": 100}, "fine": {"shortlist": 40},
                                        "exact_rerank": False})
    unbounded = CascadeIndex.build(make_codec("BIN32").fit(catalog["X"]), make_codec("PQ8x8").fit(catalog["X"]),
                                   catalog["X"], catalog["ids"], config=config)
    assert unbounded.rerank_bound_ is None
    with pytest.raises(CodecError, match=r"first_wave > 0 needs the rerank bound .*\(first_wave=10\)"):
        unbounded.set_exact_waves(10, 0.95)
    assert (unbounded.config.exact.first_wave, unbounded.config.exact.confidence) == (0, 0.99)
    # a hot reload to such an index fails and the service keeps the one it had
    path = tmp_path / "index"
    build().save(path)
    service = SimilarItemsService(DirectorySource(path), ServiceSettings(reload_interval_s=None, warm_items=0,
                                                                         exact_first_wave=10))
    assert service.reload() and service.current.index.config.exact.first_wave == 10
    served = service.current.index
    unbounded.save(path)
    assert not service.reload()
    assert service.current.index is served and "rerank bound" in service.last_error


@pytest.mark.parametrize("bad, key", [({"exact_first_wave": -1}, "exact_first_wave"),
                                      ({"exact_first_wave": 2.5}, "exact_first_wave"),
                                      ({"exact_confidence": 0.3}, "exact_confidence"),
                                      ({"exact_first_wave": 10, "exact_confidence": "high"}, "exact_confidence")])
def test_bad_wave_settings_are_refused_naming_the_setting(bad, key):
    with pytest.raises(CodecError, match=key):
        ServiceSettings(**bad)
