"""Serving the MLflow ``champion``: resolved through the registry, hot-swapped when it moves."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient


@pytest.mark.slow
def test_champion_source_loads_and_follows_the_alias(tmp_path, build):
    mlflow = pytest.importorskip("mlflow")
    from mlflow import MlflowClient

    from mmcompress.serve import ChampionSource, ServiceSettings, SimilarItemsService, create_app
    from mmcompress.tracking.registry import CHAMPION, log_codec_model

    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("serve-test")
    name = "serve-test-codec"

    def register(index, tag: str) -> str:
        index_dir, codec_dir = tmp_path / tag / "index", tmp_path / tag / "codec"
        index.save(index_dir)
        codec_dir.mkdir(parents=True)
        index.fine_codec.save(codec_dir / "codec.json")
        with mlflow.start_run():
            log_codec_model(codec_dir, index_dir, name, pip_requirements=["numpy"])
        client = MlflowClient(tracking_uri=uri)
        version = max(int(v.version) for v in client.search_model_versions(f"name='{name}'"))
        client.set_registered_model_alias(name, CHAMPION, str(version))
        return str(version)

    first = build()
    register(first, "v1")
    source = ChampionSource(uri, name, download_root=tmp_path / "downloads")
    service = SimilarItemsService(source, ServiceSettings(reload_interval_s=None, warm_items=0))
    app = create_app(None, service=service)
    with TestClient(app) as c:
        assert c.get("/healthz").json()["index_version"] == f"{name}:1"
        assert c.get("/items/4/similar").status_code == 200
        register(build(drop=3), "v2")  # a champion without the first three items
        assert service.reload()
        assert c.get("/healthz").json()["index_version"] == f"{name}:2"
        assert c.get("/items/4/similar").status_code == 404  # item 4 is row 1: dropped
        assert c.get("/items/10/similar").status_code == 200
