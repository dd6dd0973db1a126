"""Promote registers the index that was measured, proves the registered copy before the
``champion`` alias moves, and moves it last; a missing, changed or damaged index is refused
with the champion left where it was."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient

from mmcompress.errors import ArtifactError
from mmcompress.tracking.registry import CHAMPION, champion_version
from pipelines import compress, evaluate, index, prepare, promote, train, validate
from pipelines.config import apply_overrides, load_params
from tests.pipelines.conftest import make_project

pytestmark = pytest.mark.slow
SLICE = {"catalog": {"max_items": 300},
         "compress": {"codecs": ["PCA32,SQ8"], "auto": False, "n_shards": 2, "budget_bytes": 32},
         "evaluate": {"n_queries": 30, "faiss_baselines": ["SQ8"]}}


@pytest.fixture(scope="module")
def measured(tmp_path_factory) -> tuple[Path, dict]:
    """A project whose index was built and measured, with its own SQLite tracking store."""
    root = make_project(tmp_path_factory.mktemp("proof"), SLICE)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    params = apply_overrides(load_params(root / "params.yaml"),
                             {"tracking.uri": f"sqlite:///{root / 'mlruns.db'}"})
    for stage in (prepare.prepare, validate.validate, train.train, compress.compress, index.build_index,
                  evaluate.evaluate):
        stage(params, root)
    return root, params


def _client(params) -> MlflowClient:
    return MlflowClient(tracking_uri=params["tracking"]["uri"])


def _versions(params) -> list:
    return _client(params).search_model_versions(f"name='{params['promote']['model_name']}'")


def test_missing_or_changed_index_is_refused_before_anything_is_logged(measured, tmp_path):
    root, params = measured
    before = len(_versions(params)) if _client(params).search_registered_models() else 0
    manifest = root / "artifacts" / "index" / "manifest.json"
    saved = manifest.read_bytes()
    try:
        manifest.write_bytes(saved + b" ")  # the index changed after the index stage measured it
        with pytest.raises(ArtifactError, match="is not the index the index stage measured"):
            promote.promote(params, root)
        shutil.move(root / "artifacts" / "index", tmp_path / "index")
        with pytest.raises(ArtifactError, match="no saved index to promote"):
            promote.promote(params, root)
    finally:
        if (tmp_path / "index").exists():
            shutil.move(tmp_path / "index", root / "artifacts" / "index")
        manifest.write_bytes(saved)
    after = len(_versions(params)) if _client(params).search_registered_models() else 0
    assert after == before  # nothing registered


def test_a_verified_version_becomes_champion_after_its_report(measured):
    root, params = measured
    result = promote.promote(params, root)
    assert result["promoted"], result["reasons"]
    client = _client(params)
    mv = champion_version(client, params["promote"]["model_name"])
    assert mv is not None and str(mv.version) == result["version"]
    probe = json.loads((root / "reports" / "index_probe.json").read_text())
    assert mv.tags["verification"] == "passed"
    assert mv.tags["index_manifest_sha256"] == probe["manifest_sha256"]
    assert result["verified"] == {"manifest_sha256": probe["manifest_sha256"],
                                  "probe_queries": len(probe["ids"]), "verified": "full"}
    artifacts = [a.path for a in client.list_artifacts(result["run_id"], "reports")]
    assert "reports/report.html" in artifacts  # logged before the alias moved
    # a reviewer's page: the codec's and the index's figures side by side, lineage, the report
    note = mv.description
    index_metrics = json.loads((root / "metrics" / "index.json").read_text())
    assert "| figure | codec alone | index (served) | champion |" in note
    row = next(line for line in note.splitlines() if line.startswith("| recall@10 |"))
    assert f"{index_metrics['recall_at_10']:.4f}" in row
    assert "catalog_inputs_sha256" in note and f"runs:/{result['run_id']}/reports/report.html" in note
    assert "champion" in client.get_registered_model(params["promote"]["model_name"]).description


@pytest.mark.parametrize("damage", ["flip a byte in the middle of the exact store",
                                    "probe answers that the index does not give"])
def test_a_damaged_registered_copy_never_becomes_champion(measured, monkeypatch, damage):
    root, params = measured
    name = params["promote"]["model_name"]
    champion_before = champion_version(_client(params), name)
    probe_file = root / "reports" / "index_probe.json"
    saved_probe = probe_file.read_text()
    if damage.startswith("flip"):
        real = mlflow.artifacts.download_artifacts

        def download_and_damage(*args, **kwargs):
            local = Path(real(*args, **kwargs))
            rows = local / "artifacts" / "index" / "exact.rows"
            data = bytearray(rows.read_bytes())
            data[len(data) // 2] ^= 0x40
            rows.write_bytes(bytes(data))
            return str(local)

        monkeypatch.setattr(mlflow.artifacts, "download_artifacts", download_and_damage)
        expected = "SHA-256 mismatch"
    else:
        probe = json.loads(saved_probe)
        probe["ids"][0] = list(reversed(probe["ids"][0]))
        probe_file.write_text(json.dumps(probe))
        expected = r"answers 1 of \d+ probe queries differently"
    try:
        with pytest.raises(ArtifactError, match=expected):
            promote.promote(params, root)
    finally:
        probe_file.write_text(saved_probe)
    client = _client(params)
    newest = max(_versions(params), key=lambda v: int(v.version))
    assert newest.tags["verification"].startswith("failed:")
    champion_after = champion_version(client, name)
    assert (champion_after.version if champion_after else None) == (
        champion_before.version if champion_before else None)
    assert np.isfinite(float(json.loads(newest.tags["gate_metrics"])["recall_at_10"]))


def test_the_gate_override_reason_is_recorded(measured):
    root, params = measured
    said = apply_overrides(params, {"promote.max_recall_drop": 1.0,
                                    "promote.override_reason": "re-baselining on the new catalog"})
    result = promote.promote(said, root)
    client = _client(params)
    mv = client.get_model_version(params["promote"]["model_name"], result["version"])
    assert mv.tags["gate_override_reason"] == "re-baselining on the new catalog"
    assert "re-baselining on the new catalog" in mv.description
    assert client.get_run(result["run_id"]).data.tags["gate_override_reason"] == "re-baselining on the new catalog"
    assert result["override_reason"] == "re-baselining on the new catalog"
    assert CHAMPION in (client.get_registered_model(params["promote"]["model_name"]).aliases or {})


def test_rollback_checks_its_target_first_and_is_idempotent(measured, monkeypatch):
    from mmcompress.tracking.registry import PREVIOUS, rollback

    root, params = measured
    name, uri = params["promote"]["model_name"], params["tracking"]["uri"]
    client = _client(params)
    before = str(champion_version(client, name).version)
    target = str(client.get_model_version_by_alias(name, PREVIOUS).version)
    real = mlflow.artifacts.download_artifacts

    def damaged(*args, **kwargs):
        local = Path(real(*args, **kwargs))
        (local / "artifacts" / "index" / "ids.npy").unlink()
        return str(local)

    with monkeypatch.context() as m:
        m.setattr(mlflow.artifacts, "download_artifacts", damaged)
        with pytest.raises(ArtifactError, match="ids.npy: listed in the manifest but missing"):
            rollback(uri, name)
    assert str(champion_version(client, name).version) == before  # nothing moved
    assert rollback(uri, name) == (target, before)
    assert str(champion_version(client, name).version) == target
    assert rollback(uri, name) == (target, before)  # a second call does not swap back
    assert str(champion_version(client, name).version) == target
    assert client.get_model_version(name, before).tags["rolled_back"] == "true"


@pytest.fixture(scope="module")
def registry_server(measured, tmp_path_factory):
    """A real MLflow server (REST API and UI) on the promoted project's tracking store."""
    import subprocess
    import sys

    from tests.ports import free_port, wait_until_serving

    root, params = measured
    if not champion_version(_client(params), params["promote"]["model_name"]):
        assert promote.promote(params, root)["promoted"]
    log = tmp_path_factory.mktemp("mlflow-server") / "mlflow.log"
    port = free_port()
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--backend-store-uri", params["tracking"]["uri"],
                               "--workers", "1"], cwd=root, stdout=open(log, "wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    wait_until_serving(f"{url}/health", server, timeout=120, output=lambda: log.read_text()[-2000:], every=1)
    yield url
    server.terminate()
    server.wait(timeout=30)


def _rest(url: str, path: str, **query: str) -> dict:
    import urllib.parse
    import urllib.request

    with urllib.request.urlopen(f"{url}/api/2.0/mlflow/{path}?{urllib.parse.urlencode(query)}", timeout=10) as r:
        return json.load(r)


def test_the_registry_rest_api_lists_versions_with_aliases_figures_and_lineage(measured, registry_server):
    """What a reviewer's script sees through the REST API: every version in
    ``model-versions/search`` carries its aliases (mirrored as a tag), the gate's figures and
    the reviewer's note; the model resolves ``champion`` to the same version."""
    _, params = measured
    name = params["promote"]["model_name"]
    model = _rest(registry_server, "registered-models/get", name=name)["registered_model"]
    versions = _rest(registry_server, "model-versions/search", filter=f"name='{name}'")["model_versions"]
    aliases = {a["alias"]: a["version"] for a in model.get("aliases", [])}
    assert model.get("description")
    tags = {v["version"]: {t["key"]: t["value"] for t in v.get("tags", [])} for v in versions}
    champion = aliases[CHAMPION]
    assert tags[champion]["aliases"].split(",") == [CHAMPION]
    if "previous" in aliases:
        assert tags[aliases["previous"]]["aliases"] == "previous"
    assert all("aliases" not in t for v, t in tags.items() if v not in aliases.values())
    listed = next(v for v in versions if v["version"] == champion)
    gate = json.loads(tags[champion]["gate_metrics"])
    assert {"recall_at_10", "bytes_per_item", "index_resident_bytes_per_item"} <= set(gate)
    assert "| figure | codec alone | index (served) | champion |" in listed["description"]
    assert "catalog_inputs_sha256" in listed["description"]


def test_the_version_page_shows_the_reviewer_note_in_chromium(measured, registry_server, tmp_path):
    """The MLflow UI's version page, rendered by headless Chromium, shows the note's side-by-side
    figures, the lineage and the champion alias. ``MMCOMPRESS_DOCS_SHOTS=1`` also writes the
    screenshot to ``docs/registry_version.png``."""
    from tests.report.browser import HeadlessChromium, find_chromium

    if find_chromium() is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium): the registry page check is skipped")
    _, params = measured
    name = params["promote"]["model_name"]
    version = str(champion_version(_client(params), name).version)
    with HeadlessChromium(width=1400, height=1000) as browser:
        page = browser.load(f"{registry_server}/#/models/{name}/versions/{version}", settle_s=1.0)
        text = ""
        for _ in range(60):  # the single-page app fetches the version after loading
            text = browser.evaluate("document.body.innerText")
            if "codec alone" in text and "catalog_inputs_sha256" in text:
                break
            time.sleep(1)
        shot = tmp_path / "registry_version.png"
        browser.screenshot(shot)
    assert not page.exceptions, page.exceptions
    for expected in ("codec alone", "index (served)", "recall@10", "catalog_inputs_sha256", CHAMPION):
        assert expected in text, f"{expected!r} not on the version page"
    if os.environ.get("MMCOMPRESS_DOCS_SHOTS") == "1":
        shutil.copy(shot, Path(__file__).resolve().parents[2] / "docs" / "registry_version.png")


KILL_DRIVER = """
import os, signal, sys
from pathlib import Path
import mmcompress.tracking.registry as R
from pipelines import promote
from pipelines.config import apply_overrides, load_params

root, uri, step = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
def after(fn):
    def call(*a, **k):
        out = fn(*a, **k)
        die()
        return out
    return call
if step == "before register":
    R.log_codec_model = die
elif step == "after register":
    R.log_codec_model = after(R.log_codec_model)
elif step == "before the alias moves":
    R.move_champion = die
elif step == "after the alias moved":
    R.move_champion = after(R.move_champion)
promote.promote(apply_overrides(load_params(root / "params.yaml"), {"tracking.uri": uri}), root)
"""


@pytest.mark.parametrize("step", ["before register", "after register", "before the alias moves",
                                  "after the alias moved"])
def test_sigkill_at_each_step_of_promote_leaves_a_verified_champion(measured, tmp_path, step):
    import signal
    import subprocess
    import sys

    from mmcompress.tracking.registry import INDEX_DIGEST_TAG, open_verified_version
    from tests.pipelines.conftest import project_env

    root, params = measured
    name, uri = params["promote"]["model_name"], params["tracking"]["uri"]
    client = _client(params)
    before = str(champion_version(client, name).version)
    n_before = len(_versions(params))
    p = subprocess.run([sys.executable, "-c", KILL_DRIVER, str(root), uri, step], cwd=root,
                       env=project_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    versions = _versions(params)
    assert len(versions) == n_before + (0 if step == "before register" else 1)
    mv = champion_version(client, name)
    expected = str(max(int(v.version) for v in versions)) if step == "after the alias moved" else before
    assert str(mv.version) == expected
    assert mv.tags["verification"] == "passed"  # the champion is always a verified version
    open_verified_version(uri, name, str(mv.version), mv.tags[INDEX_DIGEST_TAG], tmp_path / "dl").close()
    again = promote.promote(params, root)  # and the next run carries on from there
    assert again["promoted"] and str(champion_version(client, name).version) == again["version"]


def test_cli_rollback_and_report_on_a_real_registry(measured, capsys):
    from mmcompress.cli import main

    root, params = measured
    name, uri = params["promote"]["model_name"], params["tracking"]["uri"]
    client = _client(params)
    first = promote.promote(params, root)
    second = promote.promote(params, root)
    assert first["promoted"] and second["promoted"]
    assert main(["rollback", "--tracking-uri", uri, "--model-name", name]) == 0
    assert f"champion is now {name} v{first['version']} (verified); v{second['version']} was demoted" in \
        capsys.readouterr().out
    assert main(["rollback", "--tracking-uri", uri, "--model-name", name]) == 0  # idempotent
    assert str(champion_version(client, name).version) == first["version"]
    assert main(["report", "--tracking-uri", uri]) == 0
    report = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert report.name == "report.html" and "<html" in report.read_text()[:2000].lower()
    assert main(["rollback", "--tracking-uri", uri, "--model-name", "no-such-model"]) == 1
    assert "mmcompress rollback:" in capsys.readouterr().err
