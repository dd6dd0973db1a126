"""params.yaml's ``index:`` section is what the index stage builds from: every key is accepted,
a wrong one is refused naming it, and DVC tracks the whole section for the index stage."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mmcompress.errors import CodecError, ConfigError
from mmcompress.index import CascadeConfig
from pipelines.config import apply_overrides, load_params

REPO = Path(__file__).resolve().parents[2]


def test_index_section_builds_the_cascade_config_with_its_exact_reader():
    params = load_params(REPO / "params.yaml")
    cfg = CascadeConfig.from_params(params["index"])
    keys = ("reader", "pool_bytes", "reads_in_flight", "first_wave", "confidence")
    assert set(params["index"]["exact"]) == set(keys)
    assert tuple(getattr(cfg.exact, k) for k in keys) == tuple(params["index"]["exact"][k] for k in keys)
    disk = apply_overrides(params, {"index.exact.reader": "direct", "index.exact.pool_bytes": 1 << 26})
    assert CascadeConfig.from_params(disk["index"]).exact.pool_bytes == 1 << 26


@pytest.mark.parametrize("override, key", [
    ({"index.exact.reader": "nfs"}, "index.exact.reader"),
    ({"index.exact.pool_bytes": -1}, "index.exact.pool_bytes"),
    ({"index.exact.pool_bytes": "64MB"}, "index.exact.pool_bytes"),
    ({"index.exact.reads_in_flight": 0}, "index.exact.reads_in_flight"),
    ({"index.exact.reads_in_flight": 2.5}, "index.exact.reads_in_flight"),
    ({"index.exact.first_wave": -1}, "index.exact.first_wave"),
    ({"index.exact.confidence": 1.5}, "index.exact.confidence"),
    ({"index.exact.pool": 4096}, "index.exact: unknown keys \\['pool'\\]"),
])
def test_bad_exact_settings_are_refused_naming_the_key(override, key):
    params = load_params(REPO / "params.yaml")
    with pytest.raises(ConfigError, match=key):
        apply_overrides(params, override)  # the params schema runs the index's own checks
    params["index"]["exact"].update({k.rsplit(".", 1)[1]: v for k, v in override.items()})
    with pytest.raises(CodecError, match=key):
        CascadeConfig.from_params(params["index"])


def test_dvc_tracks_the_whole_index_section_for_the_index_stage():
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["index"]
    assert "index" in stage["params"]  # the section, so index.exact.* reruns the stage when changed
