"""The service under a real uvicorn server on a free loopback port."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
import uvicorn

from mmcompress.serve import ServiceSettings, create_app
from tests.ports import free_port


@pytest.mark.slow
def test_real_uvicorn_server_answers_and_shuts_down(index_dir, catalog):
    app = create_app(index_dir, settings=ServiceSettings(reload_interval_s=0.5))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.time() + 20
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        assert server.started
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=10) as http:
            assert http.get("/healthz").json()["status"] == "ok"
            ids = catalog["ids"][:50].tolist()
            codes = [http.get(f"/items/{i}/similar", params={"k": 10}).status_code for i in ids]
            assert codes == [200] * len(ids)
            assert http.get("/items/999999/similar").status_code == 404
            r = http.post("/search", content=b"x" * (2 << 20), headers={"content-type": "application/json"})
            assert r.status_code == 413
            assert http.post("/search", json={"vector": catalog["X"][0].tolist(), "k": 5}).status_code == 200
            assert "mmcompress_request_seconds_count" in http.get("/metrics").text
    finally:
        server.should_exit = True
        thread.join(timeout=20)
    assert not thread.is_alive()
