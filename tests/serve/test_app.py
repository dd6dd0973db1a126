"""The HTTP service with a real saved index: endpoints, bad input, metrics, hot reload."""

from __future__ import annotations

import math
import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mmcompress.index import CascadeIndex, manifest_digest
from mmcompress.serve import (
    CallableSource,
    DirectorySource,
    ServiceSettings,
    SimilarItemsService,
    create_app,
    make_source,
)


@pytest.fixture(scope="module")
def client(index_dir):
    app = create_app(index_dir, settings=ServiceSettings(reload_interval_s=None, warm_items=50))
    with TestClient(app) as c:
        yield c


def test_similar_items_by_catalog_id(client, catalog):
    item = int(catalog["ids"][10])
    r = client.get(f"/items/{item}/similar", params={"k": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == {"item_id": item, "title": f"digit #{item}"} and body["k"] == 5
    ids = [x["item_id"] for x in body["results"]]
    assert len(ids) == 5 and item not in ids and len(set(ids)) == 5
    assert all(x["title"] == f"digit #{x['item_id']}" for x in body["results"])
    scores = [x["score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True)
    # the true neighbours by exact inner product
    row = int(np.flatnonzero(catalog["ids"] == item)[0])
    sims = catalog["X"] @ catalog["X"][row]
    sims[row] = -np.inf
    truth = set(catalog["ids"][np.argsort(-sims)[:5]].tolist())
    assert len(truth & set(ids)) >= 4
    again = client.get(f"/items/{item}/similar", params={"k": 5}).json()
    assert again["cached"] and again["results"] == body["results"]


def test_popular_items_are_warm(client, catalog):
    popular = int(catalog["ids"][int(np.argmax(catalog["popularity"]))])
    assert client.get(f"/items/{popular}/similar").json()["cached"]


def test_search_by_vector_and_by_id_with_modality(client, catalog):
    r = client.post("/search", json={"vector": catalog["X"][3].tolist(), "k": 3})
    assert r.status_code == 200 and r.json()["results"][0]["item_id"] == int(catalog["ids"][3])
    assert math.isclose(r.json()["results"][0]["score"], 1.0, rel_tol=1e-5)
    item = int(catalog["ids"][1])  # id 4: even, so it lacks "text"
    r = client.post("/search", json={"item_id": item, "k": 10, "modality": "text"})
    assert r.status_code == 200
    assert all(x["item_id"] % 2 == 1 for x in r.json()["results"]) and len(r.json()["results"]) == 10
    image_ids = set(catalog["ids"][:1000].tolist())
    r = client.get(f"/items/{item}/similar", params={"k": 10, "modality": "image"})
    assert {x["item_id"] for x in r.json()["results"]} <= image_ids


@pytest.mark.parametrize("method, url, kwargs, status, message", [
    ("get", "/items/999999/similar", {}, 404, "unknown item id"),
    ("get", "/items/abc/similar", {}, 422, ""),
    ("get", "/items/4/similar?k=0", {}, 422, "k must be"),
    ("get", "/items/4/similar?k=100000", {}, 422, "k must be"),
    ("get", "/items/4/similar?modality=audio", {}, 422, "unknown modality"),
    ("post", "/search", {"json": {"vector": [0.1] * 10}}, 422, "expects 64"),
    ("post", "/search", {"content": b'{"vector": [' + b"NaN, " * 63 + b"1.0]}"}, 422, "non-finite"),
    ("post", "/search", {"content": b'{"vector": [' + b"Infinity, " * 63 + b"1.0]}"}, 422, "non-finite"),
    ("post", "/search", {"content": b'{"vector": [' + b"-Infinity, " * 64 + b"1.0]}"}, 422, "expects 64"),
    ("get", "/items/99999999999999999999/similar", {}, 422, ""),
    ("post", "/search", {"json": {"item_id": 2 ** 70}}, 422, ""),
    ("post", "/search", {"json": {"vector": ["a"] * 64}}, 422, "invalid search request"),
    ("post", "/search", {"json": {"item_id": 4, "vector": [0.0] * 64}}, 422, "exactly one"),
    ("post", "/search", {"json": {"k": 3}}, 422, "exactly one"),
    ("post", "/search", {"json": {"item_id": 4, "k": -1}}, 422, "k must be"),
    ("post", "/search", {"json": {"item_id": 999999}}, 404, "unknown item id"),
    ("post", "/search", {"json": {"item_id": 4, "extra": 1}}, 422, "extra"),
    ("post", "/search", {"content": b"{not json"}, 400, "not valid JSON"),
    ("post", "/search", {"json": [1, 2]}, 422, "invalid search request"),
    ("post", "/search", {"content": b"0" * (2 << 20)}, 413, "over"),
])
def test_bad_input_gets_a_4xx_with_a_message(client, method, url, kwargs, status, message):
    r = getattr(client, method)(url, **kwargs)
    assert r.status_code == status, r.text
    assert message.lower() in str(r.json()["detail"]).lower()
    assert client.get("/healthz").status_code == 200  # and the service still answers


def test_chunked_oversized_body_is_refused(client):
    def chunks():
        for _ in range(40):
            yield b"[" + b"1," * 50_000
    r = client.post("/search", content=chunks())
    assert r.status_code == 413


def test_healthz_and_metrics(client, index_dir):
    h = client.get("/healthz").json()
    assert h["status"] == "ok" and h["index_version"] == manifest_digest(index_dir)
    assert h["n_items"] == 1797 and h["index"]["coarse_codec"] == "BIN32"
    client.get("/items/4/similar")
    client.get("/items/4/similar")
    text = client.get("/metrics").text
    for name in ("mmcompress_request_seconds_bucket", "mmcompress_cache_hit_rate",
                 'mmcompress_stage_items_bucket{le="400.0",stage="coarse_shortlist"}',
                 "mmcompress_exact_bytes_read", "mmcompress_index_resident_bytes_per_item",
                 'mmcompress_requests_total{endpoint="/items/{item_id}/similar",status="404"}'):
        assert name in text, name
    rate = float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("mmcompress_cache_hit_rate")))
    assert 0 < rate < 1


def test_metrics_registry_is_per_app(index_dir):
    a = create_app(index_dir, settings=ServiceSettings(reload_interval_s=None, warm_items=0))
    b = create_app(index_dir, settings=ServiceSettings(reload_interval_s=None, warm_items=0))
    with TestClient(a) as ca, TestClient(b) as cb:
        ca.get("/items/4/similar")
        line = 'mmcompress_requests_total{endpoint="/items/{item_id}/similar",status="200"}'
        assert line in ca.get("/metrics").text and line not in cb.get("/metrics").text


def test_no_index_yet_is_503_then_served_after_reload(build):
    state = {"index": None}

    def loader():
        if state["index"] is None:
            raise FileNotFoundError("no champion yet")
        return state["index"]

    source = CallableSource(loader, version=lambda: "v1" if state["index"] is not None else None)
    source.version = lambda: "v0"  # the first probe sees a version, but loading fails
    app = create_app(source, settings=ServiceSettings(reload_interval_s=None))
    with TestClient(app) as c:
        assert c.get("/healthz").status_code == 503
        r = c.get("/items/4/similar")
        assert r.status_code == 503 and r.json()["detail"] == "no index loaded yet"
        assert "no champion yet" not in c.get("/healthz").text  # causes go to the log, not to clients
        assert c.get("/healthz").json() == {"status": "unavailable", "last_reload": "failed", "failed_versions": 1}
        state["index"] = build()
        assert not app.state.service.reload()  # v0 failed: it waits out its back-off
        assert app.state.service.reload(force=True)
        assert c.get("/items/4/similar").status_code == 200


def test_callable_loader_with_titles(build, catalog):
    index = build()
    app = create_app(lambda: (index, {4: "four"}), settings=ServiceSettings(reload_interval_s=None))
    with TestClient(app) as c:
        assert c.get("/items/4/similar").json()["query"]["title"] == "four"


def test_make_source_routes():
    assert isinstance(make_source("some/dir"), DirectorySource)
    assert type(make_source("champion")).__name__ == "ChampionSource"


def test_hot_reload_under_concurrent_requests_has_no_failures(tmp_path, build, catalog):
    path = tmp_path / "index"
    versions = [build(), build(shortlist=120, drop=3)]  # different manifests, shared ids[3:]
    versions[0].save(path)
    service = SimilarItemsService(DirectorySource(path), ServiceSettings(reload_interval_s=0.05, warm_items=0))
    app = create_app(None, service=service)
    statuses: list[int] = []
    stop = threading.Event()
    ids = catalog["ids"][3:200].tolist()

    def hammer(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            item = int(rng.choice(ids))
            if rng.random() < 0.5:
                r = c.get(f"/items/{item}/similar", params={"k": int(rng.integers(1, 20))})
            else:
                r = c.post("/search", json={"vector": catalog["X"][int(rng.integers(3, 200))].tolist(), "k": 10})
            statuses.append(r.status_code)

    seen = set()
    with TestClient(app) as c:
        threads = [threading.Thread(target=hammer, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        try:
            for swap in range(4):
                versions[(swap + 1) % 2].save(path)
                want = manifest_digest(path)
                deadline = time.time() + 20
                while service.current.bundle.version != want and time.time() < deadline:
                    time.sleep(0.02)
                assert service.current.bundle.version == want
                seen.add(want)
                time.sleep(0.2)
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert len(seen) == 4 and len(statuses) > 50
    assert set(statuses) == {200}, {s: statuses.count(s) for s in set(statuses)}


def test_service_reload_builds_before_swapping(index_dir, build):
    service = SimilarItemsService(DirectorySource(index_dir), ServiceSettings(reload_interval_s=None, warm_items=0))
    assert service.reload() and not service.reload()  # unchanged version: no reload
    old = service.current
    assert service.reload(force=True) and service.current is not old
    assert isinstance(service.current.index, CascadeIndex)
