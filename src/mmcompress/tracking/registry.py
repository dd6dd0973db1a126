"""Registry operations: log a codec as a pyfunc model, apply the promotion gate, move aliases.

Aliases: ``champion`` is what the service loads; ``previous`` is the champion it replaced, so
``rollback`` is one call. Every version carries its gate decision as tags and a markdown note.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from mmcompress.errors import ArtifactError
from mmcompress.promotion import GateDecision

CHAMPION = "champion"
PREVIOUS = "previous"
PYFUNC_CODE = Path(__file__).with_name("pyfunc_codec.py")
GATE_METRICS = ("recall_at_10", "hr_at_10", "bytes_per_item", "latency_p50_ms", "index_resident_bytes_per_item")
ALIASES_TAG = "aliases"  # a version's aliases, mirrored where MLflow's version search omits them
INDEX_DIGEST_TAG = "index_manifest_sha256"  # set at promotion; what the service verifies against


def champion_version(client: MlflowClient, model_name: str):
    """The model version holding the ``champion`` alias, or None."""
    try:
        return client.get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def champion_metrics(client: MlflowClient, model_name: str) -> tuple[dict | None, str | None]:
    """The gate metrics recorded on the champion version (as tags), and its label."""
    mv = champion_version(client, model_name)
    if mv is None:
        return None, None
    raw = mv.tags.get("gate_metrics")
    metrics = json.loads(raw) if raw else None
    return metrics, f"{model_name} v{mv.version} ({mv.tags.get('codec_spec', '?')})"


def log_codec_model(codec_dir: Path, index_dir: Path | None, model_name: str,
                    pip_requirements: list[str]) -> Any:
    """Log the codec (and index) as a pyfunc model in the active run and register a version."""
    artifacts = {"codec": str(codec_dir / "codec.json")}
    for extra in codec_dir.iterdir():
        if extra.name != "codec.json":
            artifacts[f"codec_file_{extra.name}"] = str(extra)
    if index_dir is not None:
        artifacts["index"] = str(index_dir)
    return mlflow.pyfunc.log_model(
        name="codec",
        python_model=str(PYFUNC_CODE),
        artifacts=artifacts,
        pip_requirements=pip_requirements,
        registered_model_name=model_name,
    )


def record_decision(client: MlflowClient, model_name: str, version: str, decision: GateDecision,
                    challenger_metrics: dict, spec: str, note: str,
                    override_reason: str | None = None) -> None:
    """Write the decision on the version (tags and description). The alias moves apart, in
    :func:`move_champion`, once the registered copy is verified and the report logged."""
    client.set_model_version_tag(model_name, version, "gate_decision",
                                 "promoted" if decision.promoted else "rejected")
    client.set_model_version_tag(model_name, version, "gate_reasons", json.dumps(decision.reasons))
    client.set_model_version_tag(model_name, version, "gate_metrics",
                                 json.dumps({k: challenger_metrics.get(k) for k in GATE_METRICS}))
    client.set_model_version_tag(model_name, version, "codec_spec", spec)
    if override_reason:
        client.set_model_version_tag(model_name, version, "gate_override_reason", override_reason)
    client.update_model_version(model_name, version, description=note)


def move_champion(client: MlflowClient, model_name: str, version: str) -> None:
    """Give ``version`` the ``champion`` alias, the replaced champion ``previous``; then mirror
    the aliases onto the versions' tags (:func:`mirror_alias_tags`)."""
    old = champion_version(client, model_name)
    if old is not None and old.version != version:
        client.set_registered_model_alias(model_name, PREVIOUS, old.version)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    mirror_alias_tags(client, model_name)


def mirror_alias_tags(client: MlflowClient, model_name: str) -> None:
    """Copy the model's aliases onto its versions as an ``aliases`` tag (sorted, comma-separated;
    absent on a version without one). MLflow shows aliases on the model page and resolves them,
    but ``model-versions/search`` (the list a reviewer or a script pages through) leaves them
    out. The aliases stay what the service reads; the tags are their mirror, rewritten after
    every move (a crash between the two leaves the mirror one move behind until the next)."""
    by_version: dict[str, list[str]] = {}
    for alias, version in (client.get_registered_model(model_name).aliases or {}).items():
        by_version.setdefault(str(version), []).append(alias)
    for mv in client.search_model_versions(f"name='{model_name}'"):
        want = ",".join(sorted(by_version.get(str(mv.version), [])))
        if want == mv.tags.get(ALIASES_TAG, ""):
            continue
        if want:
            client.set_model_version_tag(model_name, mv.version, ALIASES_TAG, want)
        else:
            client.delete_model_version_tag(model_name, mv.version, ALIASES_TAG)


def verify_registered_index(tracking_uri: str, model_name: str, version: str, probe: dict,
                            queries: Any, dst: Path) -> dict:
    """Download ``version`` back from the registry, open its index with every byte hashed, and
    check it is the index that was measured (manifest digest) and answers the probe queries
    with the ids recorded when it was measured. Returns what was checked; raises
    :class:`ArtifactError` naming the first difference."""
    import numpy as np

    label = f"{model_name} v{version}"
    index = open_verified_version(tracking_uri, model_name, version, probe["manifest_sha256"], dst)
    try:
        _, found = index.search(np.asarray(queries, dtype=np.float32), int(probe["k"]))
    finally:
        index.close()
    expected = np.asarray(probe["ids"])
    differ = np.flatnonzero((np.asarray(found) != expected).any(axis=1))
    if len(differ):
        raise ArtifactError(f"{label}: the registered index answers {len(differ)} of {len(expected)} "
                            f"probe queries differently from the measured one (first: query row "
                            f"{probe['query_rows'][differ[0]]})")
    return {"manifest_sha256": probe["manifest_sha256"], "probe_queries": len(expected), "verified": "full"}


def rollback(tracking_uri: str, model_name: str) -> tuple[str, str]:
    """Make the ``previous`` version champion again; return (champion now, demoted version).

    The target is checked first: downloaded and opened with every byte verified against its
    promotion digest (a target that fails stays unserved and nothing moves). The move is one
    alias assignment; then ``previous`` is removed and both versions are tagged. Idempotent: a
    second call (or one after a crash between the steps) finds the target already champion and
    only finishes the bookkeeping, so it never swaps back."""
    import tempfile

    client = MlflowClient(tracking_uri=tracking_uri)
    cur = champion_version(client, model_name)
    try:
        prev = client.get_model_version_by_alias(model_name, PREVIOUS)
    except MlflowException:
        prev = None
    if prev is None:
        if cur is not None and cur.tags.get("restored_by_rollback") == "true":
            return str(cur.version), cur.tags.get("rolled_back_from", "")  # already done
        raise LookupError(f"no '{PREVIOUS}' version of {model_name} to roll back to")
    target = str(prev.version)
    if cur is None or str(cur.version) != target:
        with tempfile.TemporaryDirectory(prefix="mmc-rollback-") as tmp:
            index = open_verified_version(tracking_uri, model_name, target, prev.tags.get(INDEX_DIGEST_TAG), Path(tmp))
            index.close()
        client.set_model_version_tag(model_name, target, "rolled_back_from", str(cur.version) if cur else "")
        client.set_registered_model_alias(model_name, CHAMPION, target)  # the one move
    demoted = client.get_model_version(model_name, target).tags.get("rolled_back_from", "")
    client.set_model_version_tag(model_name, target, "restored_by_rollback", "true")
    if demoted:
        client.set_model_version_tag(model_name, demoted, "rolled_back", "true")
    client.delete_registered_model_alias(model_name, PREVIOUS)
    mirror_alias_tags(client, model_name)
    return target, demoted


def download_version_index(tracking_uri: str, model_name: str, version: str, dst: Path | None = None) -> Path:
    """Download a registered version's artifacts; return its saved index directory."""
    mlflow.set_tracking_uri(tracking_uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{model_name}/{version}",
                                                     dst_path=str(dst) if dst else None))
    index_dir = local / "artifacts" / "index"
    if not index_dir.is_dir():
        raise ArtifactError(f"{model_name} v{version}: the registered artifact has no index")
    return index_dir


def open_verified_version(tracking_uri: str, model_name: str, version: str, expected_digest: str | None,
                          dst: Path) -> Any:
    """Download ``version``, check its index manifest against ``expected_digest`` (the digest
    recorded outside the artifact, at promotion) and open it with every file hashed against
    that manifest: every byte served is the byte that was judged. Raises
    :class:`ArtifactError` naming the first difference."""
    from mmcompress.index import CascadeIndex
    from mmcompress.index.store import manifest_digest

    label = f"{model_name} v{version}"
    if not expected_digest:
        raise ArtifactError(f"{label}: no {INDEX_DIGEST_TAG} tag (it is set when promote verifies a "
                            "version); re-run promote to serve it")
    index_dir = download_version_index(tracking_uri, model_name, version, dst)
    digest = manifest_digest(index_dir)
    if digest != expected_digest:
        raise ArtifactError(f"{label}: index manifest {digest[:12]} differs from the promoted "
                            f"{expected_digest[:12]}")
    return CascadeIndex.load(index_dir, mmap=True, verify="full")


def champion_marker(tracking_uri: str, model_name: str) -> str | None:
    """A cheap token that changes whenever the champion alias moves (used for hot reload)."""
    mv = champion_version(MlflowClient(tracking_uri=tracking_uri), model_name)
    return None if mv is None else f"{model_name}:{mv.version}"
