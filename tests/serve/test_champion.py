"""Serving the MLflow ``champion``: resolved through the registry, every byte verified against
the digest recorded at promotion, hot-swapped when the alias moves; a damaged champion is never
served, the old index keeps answering, and the failure shows on /metrics."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

pytestmark = pytest.mark.slow


@pytest.fixture
def registry(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from mmcompress.index.store import manifest_digest
    from mmcompress.tracking.registry import CHAMPION, INDEX_DIGEST_TAG, log_codec_model

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve-test")
    name = "serve-test-codec"
    client = MlflowClient(tracking_uri=uri)

    def register(index, tag: str, *, digest: str | None = "measured") -> str:
        index_dir, codec_dir = tmp_path / tag / "index", tmp_path / tag / "codec"
        index.save(index_dir)
        codec_dir.mkdir(parents=True)
        index.fine_codec.save(codec_dir / "codec.json")
        with mlflow.start_run():
            log_codec_model(codec_dir, index_dir, name, pip_requirements=["numpy"])
        version = str(max(int(v.version) for v in client.search_model_versions(f"name='{name}'")))
        if digest is not None:  # what promote records after verifying the registered copy
            client.set_model_version_tag(name, version, INDEX_DIGEST_TAG,
                                         manifest_digest(index_dir) if digest == "measured" else digest)
        client.set_registered_model_alias(name, CHAMPION, version)
        return version

    return {"uri": uri, "name": name, "register": register, "client": client}


def _service(registry, tmp_path):
    from mmcompress.serve import ChampionSource, ServiceSettings, SimilarItemsService, create_app

    source = ChampionSource(registry["uri"], registry["name"], download_root=tmp_path / "downloads")
    service = SimilarItemsService(source, ServiceSettings(reload_interval_s=None, warm_items=0))
    return service, create_app(None, service=service)


def test_champion_source_loads_and_follows_the_alias(tmp_path, build, registry):
    name = registry["name"]
    registry["register"](build(), "v1")
    service, app = _service(registry, tmp_path)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["index_version"] == f"{name}:1"
        assert c.get("/items/4/similar").status_code == 200
        registry["register"](build(drop=3), "v2")  # a champion without the first three items
        assert service.reload()
        assert c.get("/healthz").json()["index_version"] == f"{name}:2"
        assert c.get("/items/4/similar").status_code == 404  # item 4 is row 1: dropped
        assert c.get("/items/10/similar").status_code == 200


def _damage_download(monkeypatch, how: str):
    """Damage each champion download the way ``how`` says, after MLflow wrote it."""
    import mlflow

    real = mlflow.artifacts.download_artifacts

    def damaged(*args, **kwargs):
        local = Path(real(*args, **kwargs))
        ix = local / "artifacts" / "index"
        target = ix / "exact.rows"
        if how == "flip a byte mid-file":
            data = bytearray(target.read_bytes())
            data[len(data) // 2 + 7] ^= 0x01
            target.write_bytes(bytes(data))
        elif how == "truncate":
            target.write_bytes(target.read_bytes()[:-4096])
        elif how == "remove a file":
            (ix / "ids.npy").unlink()
        elif how == "swap in another version's file":
            other = ix.parents[3] / "good" / "index" / "ids.npy"  # the served version's ids
            (ix / "ids.npy").write_bytes(other.read_bytes())
        elif how == "edit the manifest to match":
            import json

            from mmcompress.artifacts import sha256_file

            data = bytearray(target.read_bytes())
            data[len(data) // 3] ^= 0x10
            target.write_bytes(bytes(data))
            m = json.loads((ix / "manifest.json").read_text())
            m["files"]["exact.rows"]["sha256"] = sha256_file(target)
            (ix / "manifest.json").write_text(json.dumps(m))
        return str(local)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", damaged)


DAMAGE = ["flip a byte mid-file", "truncate", "remove a file", "swap in another version's file",
          "edit the manifest to match"]


def test_damaged_champions_are_never_served_while_the_old_index_answers(tmp_path, build, registry, monkeypatch):
    """20 damaged champions (5 kinds x 4 versions) under a concurrent request stream: none is
    served, every request answers from the old index, each failure is on /metrics."""
    registry["register"](build(), "good")
    service, app = _service(registry, tmp_path)
    statuses: list[int] = []
    stop = threading.Event()
    with TestClient(app) as c:
        good = c.get("/items/4/similar").json()["results"]

        def hammer() -> None:
            while not stop.is_set():
                r = c.get("/items/4/similar")
                statuses.append(r.status_code)
                if r.status_code == 200 and r.json()["results"] != good:
                    statuses.append(-1)

        threads = [threading.Thread(target=hammer) for _ in range(2)]
        for t in threads:
            t.start()
        try:
            n = 0
            for round_ in range(4):
                for how in DAMAGE:
                    with monkeypatch.context() as m:
                        _damage_download(m, how)
                        registry["register"](build(shortlist=120 + round_, drop=1 + round_),
                                             f"bad-{round_}-{DAMAGE.index(how)}")
                        assert not service.reload(), how
                    n += 1
                    assert c.get("/healthz").json()["index_version"] == f"{registry['name']}:1", how
        finally:
            stop.set()
            for t in threads:
                t.join()
        text = c.get("/metrics").text
        failed = float(next(x.split()[-1] for x in text.splitlines()
                            if x.startswith('mmcompress_index_reloads_total{result="failed"}')))
        assert n == 20 and failed == 20
        assert "mmcompress_index_failed_versions 20.0" in text
        h = c.get("/healthz").json()
        assert h["last_reload"] == "failed" and h["failed_versions"] == 20
        assert "exact.rows" not in c.get("/healthz").text and str(tmp_path) not in c.get("/healthz").text
    assert statuses and set(statuses) == {200}


def test_a_version_without_the_promotion_digest_is_not_served(tmp_path, build, registry):
    registry["register"](build(), "v1")
    service, app = _service(registry, tmp_path)
    with TestClient(app):
        registry["register"](build(shortlist=120), "unpromoted", digest=None)
        assert not service.reload()
        assert "index_manifest_sha256" in service.last_error
        registry["register"](build(shortlist=130), "wrong", digest="0" * 64)
        assert not service.reload()
        assert "differs from the promoted" in service.last_error


def test_a_failed_version_waits_out_its_back_off(tmp_path, build, registry, monkeypatch):
    registry["register"](build(), "v1")
    service, _ = _service(registry, tmp_path)
    service.reload()
    assert service.current is not None
    calls = {"n": 0}
    real_load = service.source.load

    def counting_load():
        calls["n"] += 1
        return real_load()

    monkeypatch.setattr(service.source, "load", counting_load)
    registry["register"](build(shortlist=120), "v2", digest="f" * 64)
    assert not service.reload() and calls["n"] == 1
    assert not service.reload() and not service.reload() and calls["n"] == 1  # remembered: not retried yet
    failures, retry_at = service._failed[f"{registry['name']}:2"]
    assert failures == 1 and retry_at > 0
    service._failed[f"{registry['name']}:2"] = (failures, 0.0)  # the back-off has passed
    assert not service.reload() and calls["n"] == 2
    f2, _ = service._failed[f"{registry['name']}:2"]
    assert f2 == 2
    assert service._backoff(type("S", (), {"attempt_number": 3})()) > service._backoff(
        type("S", (), {"attempt_number": 1})())
    registry["register"](build(shortlist=130), "v3")
    assert service.reload() and f"{registry['name']}:2" in service._failed
    np.testing.assert_equal(service.current.bundle.version, f"{registry['name']}:3")
