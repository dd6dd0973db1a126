"""The exact store's row file and readers: layout, exact rows back, page and pool accounting,
O_DIRECT (or its fallback), concurrency, and the cascade reading through them."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mmcompress.artifacts import sha256_file
from mmcompress.errors import CodecError
from mmcompress.evaluation.metrics import recall_at_k
from mmcompress.index import CascadeConfig, CascadeIndex, exact_rerank
from mmcompress.index import store as index_store
from mmcompress.index.rowstore import (
    PAGE_BYTES,
    DirectRowReader,
    MemoryRowReader,
    PagePool,
    RowLayout,
    open_row_store,
    read_layout,
    write_rows,
)

READERS = [("mmap", {}), ("memory", {}), ("direct", {"pool_bytes": 0}), ("direct", {"pool_bytes": 12 * PAGE_BYTES}),
           ("pread", {"pool_bytes": 0}), ("pread", {"pool_bytes": 1 << 20})]


def _open(path, kind, **kw):
    if kind == "memory":
        return open_row_store(path, reader="mmap", in_memory=True)
    return open_row_store(path, reader=kind, reads_in_flight=4, **kw)


@pytest.fixture(scope="module")
def matrix():
    return np.random.default_rng(0).standard_normal((1000, 96)).astype(np.float32)  # 384-byte rows, 10 per page


@pytest.fixture(scope="module")
def row_file(matrix, tmp_path_factory):
    path = tmp_path_factory.mktemp("rows") / "exact.rows"
    write_rows(path, matrix)
    return path


# ---- layout ---------------------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(d=st.integers(1, 3000), n=st.integers(1, 5000))
def test_no_row_straddles_a_page(d, n):
    layout = RowLayout.paged(n, d)
    rows = np.arange(n)
    start = layout.offsets(rows)
    end = start + layout.row_bytes  # exclusive
    assert layout.data_offset % PAGE_BYTES == 0 and layout.file_bytes % PAGE_BYTES == 0
    assert np.all(start[1:] >= end[:-1]) and end[-1] <= layout.file_bytes  # rows do not overlap
    if layout.row_bytes <= PAGE_BYTES:
        assert layout.rows_per_group == PAGE_BYTES // layout.row_bytes
        assert np.all(start // PAGE_BYTES == (end - 1) // PAGE_BYTES)  # one page each
    else:  # each row starts a page and takes only the pages it needs
        assert np.all(start % PAGE_BYTES == 0)
        assert np.all((end - 1) // PAGE_BYTES - start // PAGE_BYTES + 1 == -(-layout.row_bytes // PAGE_BYTES))
    pages = layout.pages(rows[: min(n, 50)])
    assert len(pages) == len(np.unique(pages)) and np.all(np.diff(pages) > 0)


def test_row_file_round_trip_and_header(matrix, row_file, tmp_path):
    layout = read_layout(row_file)
    assert layout == RowLayout.paged(*matrix.shape) and layout.rows_per_group == 10
    assert os.path.getsize(row_file) == layout.file_bytes == PAGE_BYTES * (1 + 100)
    head = row_file.read_bytes()[:PAGE_BYTES]
    assert head.startswith(b"MMROWS1\n") and json.loads(head[8:].split(b"\n")[0])["n"] == 1000
    order = np.random.default_rng(1).permutation(len(matrix))
    write_rows(tmp_path / "perm.rows", matrix, order, step=37)  # blocks that do not align with pages
    got = open_row_store(tmp_path / "perm.rows", in_memory=True).read(np.arange(len(matrix)))
    np.testing.assert_array_equal(got, matrix[order])
    assert [p.name for p in tmp_path.iterdir()] == ["perm.rows"]  # no temporary file left behind


# ---- readers --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, kw", READERS, ids=[f"{k}-{kw.get('pool_bytes', '')}" for k, kw in READERS])
def test_reader_returns_exactly_the_rows(matrix, row_file, kind, kw):
    reader = _open(row_file, kind, **kw)
    rng = np.random.default_rng(2)
    for size in (1, 7, 300, 2500):  # unsorted, with repeats (2500 > n)
        rows = rng.integers(0, len(matrix), size)
        got = reader.read(rows)
        assert got.dtype == np.float32 and got.shape == (size, matrix.shape[1])
        np.testing.assert_array_equal(got, matrix[rows])
    assert reader.read(np.zeros(0, np.int64)).shape == (0, matrix.shape[1])
    with pytest.raises(IndexError):
        reader.read(np.array([len(matrix)]))
    s = reader.stats()
    assert s["calls"] == 5 and s["rows"] == 1 + 7 + 300 + 2500
    assert s["mode"] == {"mmap": "mmap", "memory": "memory"}.get(kind, s["mode"])
    reader.close()


@pytest.mark.parametrize("d", [3, 1024, 1500])  # many rows per page, one, two pages per row
def test_readers_agree_across_row_sizes(d, tmp_path):
    X = np.random.default_rng(d).standard_normal((57, d)).astype(np.float32)
    write_rows(tmp_path / "x.rows", X)
    rows = np.array([56, 0, 3, 3, 40, 1, 55])
    for kind in ("mmap", "memory", "direct", "pread"):
        np.testing.assert_array_equal(_open(tmp_path / "x.rows", kind).read(rows), X[rows])
    direct = DirectRowReader(tmp_path / "x.rows", io="pread")
    direct.read(rows)
    per_row = -(-4 * d // PAGE_BYTES)
    want = len(np.unique(rows // max(1, PAGE_BYTES // (4 * d)))) * per_row
    assert direct.stats()["pages_read"] == want
    pooled = DirectRowReader(tmp_path / "x.rows", pool_bytes=4 * PAGE_BYTES, io="pread")
    for part in (rows[:3], rows, rows[::-1]):  # some pages held, some not, some evicted
        np.testing.assert_array_equal(pooled.read(part), X[part])
    assert pooled.stats()["pool_hits"] > 0 and len(pooled.pool) <= 4


def test_legacy_npy_store_reads_and_counts_straddling_rows(matrix, tmp_path):
    np.save(tmp_path / "exact.npy", matrix)
    layout = read_layout(tmp_path / "exact.npy")
    assert layout.format == "npy" and layout.data_offset == 128
    rows = np.array([9, 10, 11, 999])
    for kind in ("mmap", "direct"):
        reader = _open(tmp_path / "exact.npy", kind)
        np.testing.assert_array_equal(reader.read(rows), matrix[rows])
        # 384-byte rows from byte 128: row 10 spans bytes 3968-4351, two pages; 999 ends the file
        assert reader.stats()["pages_read"] == len(layout.pages(rows)) == 3


def test_pages_are_deduplicated_within_a_call(row_file):
    reader = DirectRowReader(row_file, io="pread")
    reader.read(np.array([0, 9, 5, 0, 9, 10]))  # rows 0-9 share a page, row 10 starts the next
    s = reader.stats()
    assert s["pages_read"] == 2 and s["reads"] == 1 and s["bytes_read"] == 2 * PAGE_BYTES  # adjacent: one read


def test_pool_hits_and_misses_are_counted(row_file, matrix):
    rows = np.arange(0, 200, 10)  # 20 rows on 20 pages
    cold = DirectRowReader(row_file, pool_bytes=0, io="pread")
    cold.read(rows), cold.read(rows)
    assert cold.stats()["pages_read"] == 40 and cold.stats()["pool_hits"] == 0
    pooled = DirectRowReader(row_file, pool_bytes=64 * PAGE_BYTES, io="pread")
    np.testing.assert_array_equal(pooled.read(rows), matrix[rows])
    assert pooled.stats()["pages_read"] == 20 and pooled.stats()["pool_hits"] == 0
    np.testing.assert_array_equal(pooled.read(rows[::-1]), matrix[rows[::-1]])  # all from the pool
    s = pooled.stats()
    assert s["pages_read"] == 20 and s["pool_hits"] == 20 and s["pool_hit_rate"] == 0.5
    assert s["pool_pages_held"] == 20
    pooled.reset_stats()
    assert pooled.stats()["pool_hits"] == 0 and pooled.stats()["pool_pages_held"] == 20


def test_pool_never_holds_more_than_its_bytes(row_file, matrix):
    budget = 5 * PAGE_BYTES + 100  # not a whole number of pages: 5 frames
    reader = DirectRowReader(row_file, pool_bytes=budget, io="pread")
    rng = np.random.default_rng(3)
    for _ in range(60):
        rows = rng.integers(0, len(matrix), rng.integers(1, 40))
        np.testing.assert_array_equal(reader.read(rows), matrix[rows])
        assert len(reader.pool) * PAGE_BYTES <= budget and reader.stats()["pool_pages_held"] <= 5
    assert reader.pool.slots == 5 and reader.stats()["pool_bytes"] == budget
    frames = reader.pool.resident_bytes() - 100 * len(reader.pool) - 5 * 9
    assert frames == 5 * PAGE_BYTES <= budget


def test_a_large_read_does_not_flush_the_pool(tmp_path):
    X = np.random.default_rng(6).standard_normal((4000, 1024)).astype(np.float32)  # a page per row
    write_rows(tmp_path / "big.rows", X)
    reader = DirectRowReader(tmp_path / "big.rows", pool_bytes=100 * PAGE_BYTES, io="pread")
    hot = np.arange(0, 3000, 100)  # 30 pages
    reader.read(hot), reader.read(hot)  # held and referenced
    reader.read(np.arange(4000))  # every page, in two parts: about 64 admitted in all (a random share)
    assert reader.pool.admit_limit == 64 and 30 + 48 <= len(reader.pool) <= 100
    reader.reset_stats()
    np.testing.assert_array_equal(reader.read(hot), X[hot])
    assert reader.stats()["pool_hits"] == 30


def test_clock_keeps_pages_touched_twice():
    pool = PagePool(3 * PAGE_BYTES)
    frames = np.arange(5, dtype=np.uint8)[:, None].repeat(PAGE_BYTES, axis=1)
    pool.insert(np.array([0, 1, 2]), frames[:3])
    out = np.zeros((1, PAGE_BYTES), np.uint8)
    assert pool.lookup(np.array([1]), out).all() and out[0, 0] == 1  # page 1 referenced
    pool.insert(np.array([3, 4]), frames[3:])  # evicts 0 and 2, keeps 1
    got = np.zeros((5, PAGE_BYTES), np.uint8)
    hit = pool.lookup(np.arange(5), got)
    assert hit.tolist() == [False, True, False, True, True] and got[hit, 0].tolist() == [1, 3, 4]


def test_o_direct_reads_a_real_file(row_file, matrix):
    try:
        reader = DirectRowReader(row_file, io="direct")
    except OSError as e:
        pytest.skip(f"filesystem of {row_file.parent} refuses O_DIRECT ({e}); the pread fallback is tested apart")
    assert reader.stats()["mode"] == "o_direct"
    rows = np.random.default_rng(4).integers(0, len(matrix), 500)
    np.testing.assert_array_equal(reader.read(rows), matrix[rows])
    assert reader.stats()["pages_read"] == len(np.unique(rows // 10))
    reader.close()
    with pytest.raises(ValueError, match="closed"):
        reader.read(rows)


@pytest.fixture
def aio_reader_kw(row_file):
    from mmcompress.index import kernelaio

    if not kernelaio.available():
        pytest.skip("this kernel refuses AIO system calls; the thread engine is tested apart")
    try:
        DirectRowReader(row_file, io="direct").close()
    except OSError as e:
        pytest.skip(f"filesystem of {row_file.parent} refuses O_DIRECT ({e})")
    return {"io": "direct", "engine": "kernel_aio"}


@pytest.mark.parametrize("reads_in_flight", [1, 3, 64])
def test_kernel_aio_reads_the_same_rows_as_threads(row_file, matrix, aio_reader_kw, reads_in_flight):
    aio = DirectRowReader(row_file, reads_in_flight=reads_in_flight, **aio_reader_kw)
    threads = DirectRowReader(row_file, reads_in_flight=4, io="direct", engine="threads")
    assert (aio.stats()["engine"], threads.stats()["engine"]) == ("kernel_aio", "threads")
    rng = np.random.default_rng(11)
    for size in (1, 7, 300, 1000):  # more runs than slots: the window refills as reads finish
        rows = rng.integers(0, len(matrix), size)
        np.testing.assert_array_equal(aio.read(rows), matrix[rows])
        np.testing.assert_array_equal(threads.read(rows), matrix[rows])
    assert aio.stats()["pages_read"] == threads.stats()["pages_read"]
    aio.close()
    with pytest.raises(ValueError, match="closed"):
        aio.read(np.array([0]))


def test_kernel_aio_batches_in_flight_together_each_get_their_own_reads(row_file, matrix, aio_reader_kw):
    """Two submitted batches and a blocking read share one context: every completion lands in
    its own batch, whichever is waited for first."""
    reader = DirectRowReader(row_file, reads_in_flight=8, **aio_reader_kw)
    rng = np.random.default_rng(12)
    pending = []
    for size in (8, 5):  # two calls' reads in flight (the context has room for two)
        rows = np.unique(rng.integers(0, len(matrix), size * 3))[:size]
        pending.append((rows, reader.read_ahead(rows)))
    ctx = reader._aio_context()
    assert ctx.free_slots < ctx.depth
    rows = rng.integers(0, len(matrix), 200)  # a blocking read between them, refilling its window
    np.testing.assert_array_equal(reader.read(rows), matrix[rows])
    for rows, finish in reversed(pending):
        np.testing.assert_array_equal(finish(), matrix[rows])
    assert ctx.free_slots == ctx.depth and not ctx.closed
    reader.close()


def test_kernel_aio_contexts_per_thread_under_concurrency(row_file, matrix, aio_reader_kw):
    reader = DirectRowReader(row_file, pool_bytes=16 * PAGE_BYTES, reads_in_flight=8, **aio_reader_kw)

    def work(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        return all(np.array_equal(reader.read(r), matrix[r]) for r in (rng.integers(0, len(matrix), 64)
                                                                         for _ in range(30)))

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(work, range(6)))
    contexts = list(reader._aio_contexts)
    assert 1 <= len(contexts) <= 6 and not any(c.closed for c in contexts)
    reader.close()
    assert all(c.closed for c in contexts)  # closing the reader destroys every thread's context


def test_kernel_aio_reports_a_failed_read_and_keeps_serving(row_file, matrix, aio_reader_kw, tmp_path):
    from mmcompress.index import kernelaio

    ctx = kernelaio.AioContext(4)
    buf = np.zeros(2 * PAGE_BYTES, np.uint8)
    misaligned = np.array([buf.ctypes.data + 1], np.uint64)  # O_DIRECT needs aligned memory: EINVAL
    aligned = np.array([(buf.ctypes.data + PAGE_BYTES - 1) // PAGE_BYTES * PAGE_BYTES], np.uint64)
    fd = os.open(row_file, os.O_RDONLY | os.O_DIRECT)
    try:
        with pytest.raises(OSError, match="Invalid argument"):
            ctx.read(fd, misaligned, np.array([0]), np.array([PAGE_BYTES]))
        assert ctx.read(fd, aligned, np.array([PAGE_BYTES]), np.array([PAGE_BYTES])).tolist() == [PAGE_BYTES]
    finally:
        os.close(fd)
    at = int(aligned[0] - buf.ctypes.data)
    np.testing.assert_array_equal(buf[at:at + PAGE_BYTES].view(np.float32)[:96], matrix[0])  # page 1 = rows 0..9
    ctx.close()
    assert ctx.closed
    with pytest.raises(OSError, match="closed"):
        ctx.read(0, aligned, np.array([0]), np.array([PAGE_BYTES]))
    trunc = tmp_path / "cut.rows"
    trunc.write_bytes(row_file.read_bytes())
    reader = DirectRowReader(trunc, **aio_reader_kw)
    os.truncate(trunc, 3 * PAGE_BYTES)  # shrunk under an open reader: rows past it read short
    with pytest.raises(OSError, match="short read"):
        reader.read(np.array([len(matrix) - 1]))
    np.testing.assert_array_equal(reader.read(np.array([0, 5])), matrix[[0, 5]])  # a new context serves on


def test_an_engine_that_cannot_run_is_refused(row_file):
    with pytest.raises(ValueError, match="engine must be one of"):
        DirectRowReader(row_file, engine="uring")
    with pytest.raises(OSError, match="need O_DIRECT"):
        DirectRowReader(row_file, io="pread", engine="kernel_aio")
    assert DirectRowReader(row_file, io="pread").stats()["engine"] == "threads"


def test_fallback_reader_drops_the_page_cache_and_says_so(row_file, matrix):
    reader = DirectRowReader(row_file, io="pread")
    assert reader.stats()["mode"] == "pread_dontneed"
    np.testing.assert_array_equal(reader.read(np.array([999, 0])), matrix[[999, 0]])
    auto = open_row_store(row_file, reader="direct")  # O_DIRECT where the filesystem takes it
    assert auto.stats()["mode"] in ("o_direct", "pread_dontneed")


def test_concurrent_reads_share_one_pool(row_file, matrix):
    reader = DirectRowReader(row_file, pool_bytes=16 * PAGE_BYTES, reads_in_flight=4, io="pread")

    def work(seed: int) -> bool:
        rng = np.random.default_rng(seed)
        rows = [rng.integers(0, len(matrix), 64) for _ in range(30)]
        return all(np.array_equal(reader.read(r), matrix[r]) for r in rows)

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(work, range(6)))
    assert len(reader.pool) <= 16
    s = reader.stats()
    assert s["calls"] == 180 and s["pool_hits"] + s["pool_misses"] >= 180


def test_exact_rerank_is_the_same_through_every_reader(row_file, matrix):
    rng = np.random.default_rng(5)
    Q = rng.standard_normal((20, matrix.shape[1])).astype(np.float32)
    rows = rng.integers(0, len(matrix), (20, 30))
    rows[:, -5:] = -1
    rows[3] = -1  # a query without candidates
    results = {kind: exact_rerank(_open(row_file, kind), Q, rows, 10, "ip") for kind in ("mmap", "direct", "pread")}
    for kind in ("direct", "pread"):
        np.testing.assert_array_equal(results[kind][0], results["mmap"][0])
        np.testing.assert_array_equal(results[kind][1], results["mmap"][1])
    found, scores = results["mmap"]
    assert (found[3] == -1).all() and np.isneginf(scores[3]).all()
    i = 0
    exact = matrix[rows[i][rows[i] >= 0]] @ Q[i]
    np.testing.assert_allclose(scores[i], np.sort(exact)[::-1][:10], rtol=1e-5)


# ---- the cascade through the readers ----------------------------------------------------------
SECTION = {"coarse": {"codec": "BIN32", "shortlist": 150}, "fine": {"codec": "coarse", "shortlist": 40}}


@pytest.fixture(scope="module")
def saved(digits, tmp_path_factory):
    idx = CascadeIndex.from_config(CascadeConfig.from_params(SECTION), digits["xb"], digits["ids"])
    path = tmp_path_factory.mktemp("ix") / "ix"
    idx.save(path)
    return idx, path


def test_cascade_ranks_the_same_through_disk_and_memory(saved, digits):
    idx, path = saved
    want = idx.search(digits["xq"], 10, return_stats=True)
    assert want[2].exact_pages > 0 and want[2].exact_pool_hits == 0
    # pages the queries touch when nothing is shared between them (each one alone)
    alone = np.mean([idx.search(q[None], 10, return_stats=True)[2].exact_pages for q in digits["xq"]])
    for kw in ({"exact_reader": "mmap"}, {"exact_reader": "direct"},
               {"exact_reader": "direct", "exact_pool_bytes": 1 << 20}, {"exact_reader": "pread"}):
        loaded = CascadeIndex.load(path, **kw)
        got = loaded.search(digits["xq"], 10, threads=2, return_stats=True)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
        touched = got[2].exact_pages + got[2].exact_pool_hits
        if kw["exact_reader"] == "mmap":  # the whole call's distinct pages, as the in-RAM store
            assert touched == pytest.approx(want[2].exact_pages)
        else:  # a disk reader reads the batch a few queries at a time (bounded buffers): a page
            # two reads share counts twice, but never more often than the queries alone read it
            assert want[2].exact_pages <= touched <= alone + 1e-9
        np.testing.assert_array_equal(loaded.search_by_id(int(digits["ids"][5]), 5)[1],
                                      idx.search_by_id(int(digits["ids"][5]), 5)[1])
        loaded.close()


def test_pool_serves_repeated_queries_and_is_reported(saved, digits):
    _, path = saved
    loaded = CascadeIndex.load(path, exact_reader="direct", exact_pool_bytes=1 << 20)
    assert loaded.config.exact.reader == "direct" and loaded.config.exact.pool_bytes == 1 << 20
    first = loaded.search(digits["xq"][:20], 10, return_stats=True)[2]
    again = loaded.search(digits["xq"][:20], 10, return_stats=True)[2]
    # the batch is read a few queries at a time: later reads of the first call already hit
    touched = first.exact_pages + first.exact_pool_hits
    assert first.exact_pages > 0 and again.exact_pages == 0 and again.exact_pool_hits == pytest.approx(touched)
    s = loaded.exact_store_stats()
    hits = first.exact_pool_hits + again.exact_pool_hits
    assert s["pool_hit_rate"] == pytest.approx(hits / (2 * touched)) and s["mode"] in ("o_direct", "pread_dontneed")
    report = loaded.memory_report()
    assert report["exact_reader"] == s["mode"] and report["exact_on_disk"]
    assert report["resident_bytes"]["exact_buffer_pool"] >= (1 << 20)
    assert again.to_dict()["exact_pool_hits_per_query"] == again.exact_pool_hits
    loaded.reopen_exact("mmap", pool_bytes=0)
    assert loaded.exact_store_stats()["mode"] == "mmap" and loaded.config.exact.reader == "mmap"
    assert loaded.memory_report()["resident_bytes"]["exact_buffer_pool"] == 0
    loaded.reset_exact_store_stats()
    assert loaded.exact_store_stats()["pages_read"] == 0


def test_pending_changes_read_main_from_disk_and_delta_from_memory(saved, digits, tmp_path):
    idx, path = saved
    new_ids = np.arange(5) + 10**7
    both = [CascadeIndex.load(path), CascadeIndex.load(path, exact_reader="direct", exact_pool_bytes=1 << 16)]
    for ix in both:
        ix.add(digits["xq"][:5], new_ids)
        ix.remove(digits["ids"][:10])
    a, b = (ix.search(digits["xq"], 10) for ix in both)
    np.testing.assert_array_equal(a[1], b[1])
    assert (a[1][:5] == new_ids[:, None]).any(axis=1).sum() >= 4  # the added copies of the queries are found
    both[1].compact(tmp_path / "compacted.rows")  # written, then read as configured
    assert both[1].exact_store_stats()["mode"] != "mmap"
    # compaction reorders rows, which only changes how ties at the shortlist edges break
    assert recall_at_k(a[1], both[1].search(digits["xq"], 10)[1], 10) >= 0.97
    both[1].save(tmp_path / "again")
    again = CascadeIndex.load(tmp_path / "again").search(digits["xq"], 10)[1]
    assert (again[:5] == new_ids[:, None]).any(axis=1).sum() >= 4


def _to_format_2(path) -> None:
    """Rewrite a saved index as format 2 wrote it: exact.npy, no exact_store, no config.exact."""
    manifest = json.loads((path / "manifest.json").read_text())
    n, d = manifest["n_items"], manifest["d"]
    X = open_row_store(path / "exact.rows", in_memory=True).read(np.arange(n))
    np.save(path / "exact.npy", X)
    os.unlink(path / "exact.rows")
    del manifest["files"]["exact.rows"], manifest["exact_store"], manifest["config"]["exact"]
    size = (path / "exact.npy").stat().st_size
    manifest["files"]["exact.npy"] = {"bytes": size, "sha256": sha256_file(path / "exact.npy"),
                                      "sample_sha256": index_store.sampled_sha256(path / "exact.npy", size)}
    manifest["format_version"] = 2
    assert manifest["arrays"]["exact"] == {"shape": [n, d], "dtype": "float32"}
    (path / "manifest.json").write_text(json.dumps(manifest))


def test_a_format_2_index_with_exact_npy_still_loads_and_saves_as_rows(saved, digits, tmp_path):
    import shutil

    idx, path = saved
    old = tmp_path / "old"
    shutil.copytree(path, old)
    _to_format_2(old)
    want = idx.search(digits["xq"], 10)
    for kw in ({}, {"mmap": False}, {"exact_reader": "direct"}):
        loaded = CascadeIndex.load(old, verify="full", **kw)
        got = loaded.search(digits["xq"], 10)
        np.testing.assert_array_equal(got[1], want[1])
        np.testing.assert_array_equal(got[0], want[0])
    assert CascadeIndex.load(old).config.exact.reader == "mmap"  # the default for configs without it
    loaded.save(tmp_path / "new")  # converted on save
    manifest = json.loads((tmp_path / "new" / "manifest.json").read_text())
    assert manifest["format_version"] == 4 and manifest["exact_store"]["layout"]["format"] == "paged_rows"
    assert not (tmp_path / "new" / "exact.npy").exists()
    np.testing.assert_array_equal(CascadeIndex.load(tmp_path / "new").search(digits["xq"], 10)[1], want[1])


def test_a_row_file_that_disagrees_with_the_manifest_is_refused(saved, tmp_path):
    import shutil

    from mmcompress.errors import ArtifactError

    _, path = saved
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["exact_store"]["layout"]["rows_per_group"] += 1
    (bad / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="layout"):
        CascadeIndex.load(bad, verify="quick")


def test_memory_reader_accounts_pages_like_the_file(matrix):
    reader = MemoryRowReader.from_array(matrix)
    assert reader.stats()["mode"] == "memory" and reader.resident_bytes() == matrix.nbytes
    np.testing.assert_array_equal(reader.read(np.array([3, 2, 11])), matrix[[3, 2, 11]])
    assert reader.stats()["pages_read"] == 2  # rows 2-3 on one page of the row file, 11 on the next


@settings(max_examples=100, deadline=None)
@given(n=st.integers(1, 3000), d=st.sampled_from([8, 100, 384, 1500]), dtype=st.sampled_from(["float32", "float16"]),
       picks=st.lists(st.integers(0, 10**6), max_size=400))
def test_page_count_is_the_number_of_distinct_pages_for_few_rows_and_for_a_batch(n, d, dtype, picks):
    """A handful of rows counts by sorting, a batch's by marking their groups: both are the
    number of distinct pages the rows lie on (repeats counted once, multi-page rows in full)."""
    layout = RowLayout.paged(n, d, dtype)
    rows = np.array([p % n for p in picks], dtype=np.int64)
    assert layout.page_count(rows) == len(layout.pages(rows))


def test_exact_reader_config_is_checked():
    with pytest.raises(CodecError, match="exact.reader"):
        CascadeConfig.from_params({"exact": {"reader": "nfs"}})
    with pytest.raises(CodecError, match="unknown keys"):
        CascadeConfig.from_params({"exact": {"pool": 1}})
    assert CascadeConfig.from_params({"exact": {"reader": "direct", "pool_bytes": 4096}}).exact.pool_bytes == 4096


def test_full_verification_catches_a_flipped_byte_mid_way_through_a_large_store(tmp_path):
    """Files over 16 MiB are checked by size and sampled digest on a quick open; the served
    champion is opened with verify="full", which hashes every byte."""
    from mmcompress.errors import ArtifactError
    from mmcompress.index.store import SMALL_FILE_BYTES

    X = np.random.default_rng(3).standard_normal((12_000, 384)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    idx = CascadeIndex.from_config(CascadeConfig.from_params({"coarse": {"codec": "BIN64_rr", "shortlist": 100},
                                                              "fine": {"codec": "coarse", "shortlist": 20}}),
                                   X, np.arange(len(X)))
    idx.save(tmp_path / "ix")
    rows = tmp_path / "ix" / "exact.rows"
    assert rows.stat().st_size > SMALL_FILE_BYTES
    data = bytearray(rows.read_bytes())
    data[len(data) // 2] ^= 0x01
    rows.write_bytes(bytes(data))
    CascadeIndex.load(tmp_path / "ix", verify="quick").close()  # the sampled check cannot see it
    with pytest.raises(ArtifactError, match="exact.rows: SHA-256 mismatch"):
        CascadeIndex.load(tmp_path / "ix", verify="full")


def test_two_wave_reads_keep_one_scratch_buffer_per_concurrent_read(tmp_path):
    """Calls of growing sizes from one thread leave one spare read buffer, sized to the largest
    call up to 64 pages: not one buffer per size asked for (a two-wave search asks for two sizes
    a query), and not the size of a rare long call (it would stay resident for good)."""
    X = np.random.default_rng(0).normal(size=(4000, 384)).astype(np.float32)
    write_rows(tmp_path / "x.rows", X)
    reader = open_row_store(tmp_path / "x.rows", reader="pread")
    for n in (10, 24, 40, 60, 24):
        rows = np.sort(np.random.default_rng(n).choice(4000, n, replace=False))
        np.testing.assert_array_equal(reader.read(rows), X[rows])
    assert len(reader._spare) == 1 and reader.resident_bytes() == 64 * PAGE_BYTES  # ~59 pages, rounded up
    for n in (100, 300, 30):  # longer calls map buffers of their own and leave the spare as it was
        rows = np.sort(np.random.default_rng(n).choice(4000, n, replace=False))
        np.testing.assert_array_equal(reader.read(rows), X[rows])
    assert len(reader._spare) == 1 and reader.resident_bytes() == 64 * PAGE_BYTES
    reader.close()


def test_a_batch_reranked_from_disk_reads_a_few_queries_at_a_time(tmp_path):
    """A batch's exact stage asks the disk reader for at most ``rows_per_read`` rows a call (so
    what it holds does not grow with the batch: 200 queries at once would gather 8,000 rows and
    map 16 MiB of frames), and ranks exactly as one call over the memory-mapped store."""
    from mmcompress.index.rerank import query_groups

    rng = np.random.default_rng(1)
    X = rng.normal(size=(20_000, 384)).astype(np.float32)
    write_rows(tmp_path / "x.rows", X)
    Q = rng.normal(size=(200, 384)).astype(np.float32)
    rows = rng.integers(0, len(X), (200, 40))
    rows[::7, 25:] = -1
    reader = open_row_store(tmp_path / "x.rows", reader="pread")
    asked: list[int] = []
    read = reader.read
    reader.read = lambda r, **kw: asked.append(len(r)) or read(r, **kw)
    got = exact_rerank(reader, Q, rows, 10, "ip")
    want = exact_rerank(_open(tmp_path / "x.rows", "mmap"), Q, rows, 10, "ip")
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])
    assert len(asked) > 100 and max(asked) <= reader.rows_per_read == 64
    assert reader.resident_bytes() <= 64 * PAGE_BYTES  # one spare buffer, no longer call's
    reader.close()
    # ranges: consecutive, covering every query, within the limit unless one query is over it
    n_rows = np.array([30, 30, 10, 70, 5, 5, 64, 0])
    assert query_groups(n_rows, 64) == [(0, 2), (2, 3), (3, 4), (4, 6), (6, 8)]
    assert query_groups(n_rows, None) == [(0, 8)] and query_groups(n_rows, 10**6) == [(0, 8)]


def test_a_batch_from_disk_runs_in_short_chunks_and_from_memory_in_long_ones(saved, digits, monkeypatch):
    """Read from disk, a chunk waits milliseconds on its reads, so its working arrays (about
    12 KB a query) are kept to a few queries' worth; in RAM long chunks spread their fixed cost."""
    _, path = saved
    for reader, longest in (("direct", 16), ("mmap", 256)):
        loaded = CascadeIndex.load(path, exact_reader=reader)
        sizes: list[int] = []
        run = loaded._search_chunk
        monkeypatch.setattr(loaded, "_search_chunk", lambda st, Q, p, run=run, sizes=sizes: sizes.append(len(Q)) or run(st, Q, p))
        Q = np.concatenate([digits["xq"]] * 2)  # 400 queries: more than one long chunk
        loaded.search(Q, 10, threads=2)
        assert max(sizes) == longest and sum(sizes) == len(Q), (reader, sizes)
        loaded.close()



def test_runs_of_adjacent_pages_are_cut_at_the_longest_read():
    from mmcompress.index.rowstore import _MAX_RUN_PAGES, _runs

    rng = np.random.default_rng(3)
    for _ in range(200):
        pages = np.unique(np.concatenate([rng.integers(0, 400, rng.integers(0, 60)),
                                          np.arange(rng.integers(0, 300), rng.integers(300, 450))]))
        first, count = _runs(pages)
        # the reads cover every page once, in order, each a run of adjacent pages
        covered = np.concatenate([pages[f:f + c] for f, c in zip(first, count, strict=True)]) if len(first) else []
        np.testing.assert_array_equal(covered, pages)
        assert all(1 <= c <= _MAX_RUN_PAGES for c in count)
        assert all(np.all(np.diff(pages[f:f + c]) == 1) for f, c in zip(first, count, strict=True))
        # and as few as that allows: a read ends only at a gap or at the longest read
        ends = first + count
        for e, f in zip(ends[:-1], first[1:], strict=True):
            assert e == f and (pages[f] != pages[f - 1] + 1 or (f - first[first <= f - 1][-1]) % _MAX_RUN_PAGES == 0)


# ---- float16 stores ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def half_file(matrix, tmp_path_factory):
    path = tmp_path_factory.mktemp("half") / "exact.rows"
    write_rows(path, matrix, dtype="float16")
    return path


@pytest.mark.parametrize("kind, kw", READERS, ids=[f"{k}-{kw.get('pool_bytes', '')}" for k, kw in READERS])
def test_a_float16_store_holds_twice_the_rows_a_page_and_reads_back_as_float32(matrix, half_file, kind, kw):
    layout = read_layout(half_file)
    assert layout == RowLayout.paged(*matrix.shape, "float16") and layout.rows_per_group == 21  # 192-byte rows
    assert os.path.getsize(half_file) == PAGE_BYTES * (1 + -(-len(matrix) // 21))
    want = matrix.astype(np.float16).astype(np.float32)
    reader = _open(half_file, kind, **kw)
    rng = np.random.default_rng(4)
    for size in (1, 7, 300, 2500):
        rows = rng.integers(0, len(matrix), size)
        got = reader.read(rows)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, want[rows])
    # the same rows touch fewer pages than in the float32 file
    rows = np.sort(rng.choice(len(matrix), 200, replace=False))
    assert RowLayout.paged(*matrix.shape, "float16").page_count(rows) < RowLayout.paged(*matrix.shape).page_count(rows)


def test_kernel_aio_reads_float16_rows_with_read_ahead(matrix, half_file, aio_reader_kw):
    want = matrix.astype(np.float16).astype(np.float32)
    reader = DirectRowReader(half_file, reads_in_flight=8, pool_bytes=8 * PAGE_BYTES, **aio_reader_kw)
    rng = np.random.default_rng(6)
    for _ in range(5):  # later calls hit the pool for some pages and read the others
        rows = np.sort(rng.choice(len(matrix), 40, replace=False))
        np.testing.assert_array_equal(reader.read_ahead(rows)(), want[rows])
    assert reader.stats()["pool_hits"] > 0


def test_rows_float16_cannot_hold_are_refused_by_row_and_column(matrix, tmp_path):
    bad = matrix.copy()
    bad[123, 7] = 1e5
    with pytest.raises(ValueError, match=r"row 123 .*column 7.*float16"):
        write_rows(tmp_path / "bad.rows", bad, dtype="float16")
    bad[123, 7] = np.nan
    with pytest.raises(ValueError, match=r"row 123 "):
        write_rows(tmp_path / "bad.rows", bad, dtype="float16", step=64)
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary left
    with pytest.raises(ValueError, match="dtype"):
        write_rows(tmp_path / "x.rows", matrix, dtype="int8")
    with pytest.raises(CodecError, match="index.exact.dtype"):
        CascadeConfig.from_params({"exact": {"dtype": "bfloat16"}})


def test_a_cascade_with_a_float16_store_saves_loads_and_reranks_by_it(digits, tmp_path):
    section = {**SECTION, "exact": {"dtype": "float16"}}
    idx = CascadeIndex.from_config(CascadeConfig.from_params(section), digits["xb"], digits["ids"])
    idx.save(tmp_path / "half")
    full = CascadeIndex.from_config(CascadeConfig.from_params(SECTION), digits["xb"], digits["ids"])
    full.save(tmp_path / "full")
    half_bytes = os.path.getsize(tmp_path / "half" / "exact.rows")
    assert half_bytes <= 0.55 * os.path.getsize(tmp_path / "full" / "exact.rows")
    manifest = json.loads((tmp_path / "half" / "manifest.json").read_text())
    assert manifest["exact_store"]["layout"]["dtype"] == "float16" == manifest["arrays"]["exact"]["dtype"]
    want = full.search(digits["xq"], 10)[1]
    results = {}
    for reader in ("mmap", "direct"):
        loaded = CascadeIndex.load(tmp_path / "half", exact_reader=reader)
        scores, found, stats = results[reader] = loaded.search(digits["xq"], 10, return_stats=True)
        assert recall_at_k(want, found, 10) >= 0.99  # float16 values reorder only near-ties
        # the scores are those of the float16 rows
        i, j = 0, 0
        row = loaded.vector_of(int(found[i, j]))
        np.testing.assert_array_equal(row, digits["xb"][list(digits["ids"]).index(found[i, j])].astype(np.float16)
                                      .astype(np.float32))
        assert stats.disk_bytes == pytest.approx(stats.exact_reranked * 2 * digits["xb"].shape[1])
        loaded.close()
    # scored in place from the mapped float16 rows or cut out of pages read from disk: one ranking
    np.testing.assert_array_equal(results["mmap"][1], results["direct"][1])
    np.testing.assert_allclose(results["mmap"][0], results["direct"][0], rtol=1e-6)  # summation order
    # a float16 store saved again (as loaded) is copied as it is
    again = CascadeIndex.load(tmp_path / "half")
    again.save(tmp_path / "again")
    assert os.path.getsize(tmp_path / "again" / "exact.rows") == half_bytes


# ---- the lean path of a query's read --------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(d=st.integers(1, 1024), n=st.integers(1, 3000), dtype=st.sampled_from(["float32", "float16"]),
       seed=st.integers(0, 2**16))
def test_page_plan_places_rows_as_the_layout_does(d, n, dtype, seed):
    from mmcompress.index import kernels
    from mmcompress.index.rowstore import _MAX_RUN_PAGES, _runs

    layout = RowLayout.paged(n, d, dtype)
    if layout.max_pages_per_row != 1 or not kernels.AVAILABLE:
        return
    rng = np.random.default_rng(seed)
    rows = np.unique(rng.integers(0, n, rng.integers(1, 200)))
    args = (n, layout.data_offset, layout.rows_per_group, layout.group_bytes, layout.row_bytes, layout.itemsize,
            PAGE_BYTES, _MAX_RUN_PAGES)
    pidx, at, pages, first, count = kernels.page_plan(rows, *args)
    start = layout.offsets(rows)
    np.testing.assert_array_equal(pages, layout.pages(rows))
    np.testing.assert_array_equal(pages[pidx], start // PAGE_BYTES)
    np.testing.assert_array_equal(at, start % PAGE_BYTES // layout.itemsize)
    want_first, want_count = _runs(pages)
    np.testing.assert_array_equal(first, want_first)
    np.testing.assert_array_equal(count, want_count)
    # rows it cannot plan go to the general path, which checks and orders them
    if len(rows) > 1:
        assert kernels.page_plan(rows[::-1].copy(), *args) is None
        assert kernels.page_plan(np.repeat(rows, 2), *args) is None
    assert kernels.page_plan(np.append(rows, n), *args) is None
    assert kernels.page_plan(np.array([-1], np.int64), *args) is None


@pytest.mark.parametrize("pool_pages", [0, 12])
def test_a_querys_sorted_rows_take_the_lean_path_and_read_the_same(matrix, row_file, half_file, aio_reader_kw,
                                                                   pool_pages, monkeypatch):
    """A query's read (sorted, distinct, at most rows_per_read rows) is planned by one compiled
    call; it returns the same rows and counts the same pages and hits as the general path."""
    from mmcompress.index import kernels

    planned = []
    real = kernels.page_plan
    monkeypatch.setattr(kernels, "page_plan", lambda *a: planned.append(1) or real(*a))
    rng = np.random.default_rng(21)
    for path, tol in ((row_file, 0), (half_file, 2e-3)):
        lean = DirectRowReader(path, pool_bytes=pool_pages * PAGE_BYTES, **aio_reader_kw)
        general = DirectRowReader(path, pool_bytes=pool_pages * PAGE_BYTES, reads_in_flight=4, io="direct",
                                  engine="threads")
        for _ in range(30):
            rows = np.unique(rng.integers(0, len(matrix), rng.integers(1, lean.rows_per_read + 1)))
            got = lean.read(rows)
            np.testing.assert_allclose(got, matrix[rows], rtol=tol, atol=tol)
            np.testing.assert_array_equal(got, general.read(rows))
            np.testing.assert_array_equal(lean.read_ahead(rows)(), general.read(rows))
        a, b = lean.stats(), general.stats()
        assert (a["pages_read"], a["pool_hits"], a["rows"]) == (b["pages_read"], b["pool_hits"], b["rows"])
        assert (a["pool_hits"] > 0) == (pool_pages > 0)
        lean.close()
        general.close()
    assert len(planned) >= 120  # every call above went through the plan


@pytest.mark.parametrize("pool_pages", [0, 12])
def test_the_exact_stage_scores_rows_in_the_frames_the_disk_filled(matrix, row_file, half_file, aio_reader_kw,
                                                                  pool_pages, monkeypatch):
    """Through a kernel-AIO reader the exact stage scores each query's rows where they lie in
    the page frames its reads filled (no float32 copy of the rows): the same rows and scores
    as the memory-mapped store, the same pages and hits counted as the row-copying path, and
    the frames handed back (the reader's spares stay bounded)."""
    from mmcompress.index import rowstore

    copied = []
    real_start = DirectRowReader._start
    monkeypatch.setattr(DirectRowReader, "_start", lambda self, *a: copied.append(1) or real_start(self, *a))
    lent = []
    real_lines = DirectRowReader._start_lines
    monkeypatch.setattr(DirectRowReader, "_start_lines", lambda self, *a: lent.append(1) or real_lines(self, *a))
    rng = np.random.default_rng(31)
    Q = rng.standard_normal((40, matrix.shape[1])).astype(np.float32)
    for path in (row_file, half_file):
        disk = DirectRowReader(path, pool_bytes=pool_pages * PAGE_BYTES, **aio_reader_kw)
        mapped = open_row_store(path, reader="mmap")
        for nq, s in ((1, 50), (1, 200), (40, 30)):  # one query; one longer than a read; a batch
            rows = rng.integers(0, len(matrix), (nq, s))
            rows[:, -3:] = -1
            for i in range(nq):
                got = exact_rerank(disk, Q[i:i + 1], rows[i:i + 1], 10, "ip")
                want = exact_rerank(mapped, Q[i:i + 1], rows[i:i + 1], 10, "ip")
                np.testing.assert_array_equal(got[0], want[0])
                np.testing.assert_allclose(got[1], want[1], rtol=1e-6)  # sums in another order
        assert not copied and len(lent) >= 42  # every read lent its frames; none copied rows out
        a = disk.stats()
        assert a["pages_read"] > 0 and (a["pool_hits"] > 0) == (pool_pages > 0)
        assert len(disk._spare) <= rowstore._SPARE_SCRATCH
        disk.close()
        mapped.close()
