"""Tracking, registry and the promotion gate against a PostgreSQL backend store.

The test creates its own database on the loopback PostgreSQL and drops it afterwards; it is
skipped, with the reason, where no PostgreSQL server answers.
"""

from __future__ import annotations

import json
import shutil
import uuid

import pytest
from mlflow import MlflowClient

from pipelines import promote
from pipelines.config import apply_overrides, load_params

pytestmark = [pytest.mark.slow, pytest.mark.services]
PG = "postgresql+psycopg2://postgres@127.0.0.1:5432"


@pytest.fixture
def pg_uri():
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3)
    except psycopg2.OperationalError as e:
        pytest.skip(f"no PostgreSQL at 127.0.0.1:5432: {e}")
    conn.autocommit = True
    name = f"mmc_test_{uuid.uuid4().hex[:10]}"
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield f"{PG}/{name}"
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    conn.close()


def test_gate_and_rollback_on_postgres(dvc_project, tmp_path, pg_uri):
    root = tmp_path / "proj"
    shutil.copytree(dvc_project, root, ignore=shutil.ignore_patterns(".dvc", ".git", "mlruns.db", "mlartifacts"))
    params = apply_overrides(load_params(root / "params.yaml"), {"tracking.uri": pg_uri})
    first = promote.promote(params, root)
    client = MlflowClient(tracking_uri=pg_uri)
    assert first["promoted"], first["reasons"]
    assert str(client.get_model_version_by_alias("mmcompress-codec", "champion").version) == first["version"]

    # a challenger far over the byte budget is rejected, registered with its reasons, champion kept
    strict = apply_overrides(params, {"promote.max_bytes_per_item": 1})
    second = promote.promote(strict, root)
    assert not second["promoted"]
    mv = client.get_model_version("mmcompress-codec", second["version"])
    assert mv.tags["gate_decision"] == "rejected"
    assert any("bytes/item" in r for r in json.loads(mv.tags["gate_reasons"]))
    assert "REJECTED" in mv.description
    assert str(client.get_model_version_by_alias("mmcompress-codec", "champion").version) == first["version"]

    third = promote.promote(params, root)
    assert third["promoted"]
    assert str(client.get_model_version_by_alias("mmcompress-codec", "previous").version) == first["version"]

    from mmcompress.tracking.registry import rollback

    new, old = rollback(pg_uri, "mmcompress-codec")
    assert (str(new), str(old)) == (first["version"], third["version"])
    assert str(client.get_model_version_by_alias("mmcompress-codec", "champion").version) == first["version"]
    assert rollback(pg_uri, "mmcompress-codec") == (new, old)  # idempotent: never swaps back
    assert str(client.get_model_version_by_alias("mmcompress-codec", "champion").version) == first["version"]
    assert client.get_model_version("mmcompress-codec", third["version"]).tags["rolled_back"] == "true"
