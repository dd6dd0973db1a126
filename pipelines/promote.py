"""Stage ``promote``: record the run in MLflow and let the gate decide the new champion.

One parent run per pipeline execution with a nested run per codec; the challenger is logged as
a pyfunc model with the index the index stage measured, and registered. The decision and its
reasons are written on the model version either way. A promoted version gets the ``champion``
alias last: after its registered copy has been downloaded back, opened with every byte hashed
and found to answer the probe queries as measured, and after the report is logged. An index
that is missing, or that changed since it was measured, is refused before anything is logged.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from mmcompress.artifacts import sha256_file, write_json_atomic
from mmcompress.errors import ArtifactError
from mmcompress.promotion import GateThresholds, gate
from pipelines.config import Layout
from pipelines.stage_runner import main

PIP_REQUIREMENTS = ["numpy", "pandas", "faiss-cpu", "torch==2.13.0", "mmcompress"]


def _git_revision(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def dataset_version(root: Path, params: dict) -> dict:
    """DVC lock hashes of the stage outputs when present, the catalog checksum, the git revision."""
    L = Layout(root)
    version = {"git_revision": _git_revision(root)}
    schema = L.catalog_dir / "schema.json"
    if schema.exists():
        version["catalog_sha256"] = json.loads(schema.read_text()).get("parquet_sha256", "")
    inputs = L.catalog_dir / "inputs.json"  # what the catalog was built from (prepare records it)
    if inputs.exists():
        ident = json.loads(inputs.read_text())
        version["catalog_inputs_sha256"] = ident.get("sha256", "")
        version["catalog_source"] = str(ident.get("catalog", {}).get("path") or ident.get("catalog", {}).get("source"))
        version["catalog_max_items"] = str(ident.get("catalog", {}).get("max_items"))
    vec = L.fused_dir / "vectors.npy"
    if vec.exists():
        version["fused_vectors_sha256"] = sha256_file(vec)
    lock = root / "dvc.lock"
    if lock.exists():
        version["dvc_lock_sha256"] = sha256_file(lock)
    return version


def _flat_params(d: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat_params(v, key + "."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else str(v)
    return out


def _numeric(m: dict) -> dict[str, float]:
    from mmcompress.evaluation.metrics import flatten_metrics

    return {k.replace("/", "."): v for k, v in flatten_metrics(m).items()}


MODEL_DESCRIPTION = (
    "Compact codes of the item catalog's fused multimodal embeddings, served by the cascade "
    "index (resident codes, exact rerank from disk). Each version: the codec and the index the "
    "pipeline measured, with the gate's decision, the figures behind it and the data lineage in "
    "its description and tags. Alias `champion`: the version the service answers with (verified "
    "byte for byte against `index_manifest_sha256`); `previous`: the champion it replaced "
    "(`mmcompress rollback`).")


def _fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.4f}" if isinstance(v, float) and abs(v) < 10 else (f"{v:,.1f}" if isinstance(v, float) else str(v))


def review_markdown(codec: dict, index: dict, champion: dict | None, lineage: dict, run_id: str) -> str:
    """The figures a reviewer decides from, side by side: the codec alone, the served index,
    and the champion's recorded gate figures; then the data lineage and the report's place."""
    champ = champion or {}
    rows = [("recall@10", codec.get("recall_at_10"), index.get("recall_at_10"), champ.get("recall_at_10")),
            ("nDCG@10", codec.get("ndcg_at_10"), None, None),
            ("downstream HR@10", codec.get("hr_at_10"), index.get("hr_at_10"), champ.get("hr_at_10")),
            ("stored bytes/item (codes)", codec.get("stored_bytes_per_item") or codec.get("bytes_per_item"), None,
             champ.get("bytes_per_item")),
            ("resident bytes/item", None, index.get("resident_bytes_per_item"),
             champ.get("index_resident_bytes_per_item")),
            ("exact store on disk (bytes)", None, index.get("exact_bytes_on_disk"), None),
            ("latency p50 / p99 ms", None, f"{_fmt(index.get('latency_p50_ms'))} / {_fmt(index.get('latency_p99_ms'))}"
             if index.get("latency_p50_ms") is not None else None, champ.get("latency_p50_ms"))]
    lines = ["", "#### Figures", "", "| figure | codec alone | index (served) | champion |", "|---|---|---|---|"]
    lines += [f"| {name} | {_fmt(a)} | {_fmt(b)} | {_fmt(c)} |" for name, a, b, c in rows]
    lines += ["", "#### Lineage", ""] + [f"- {k}: `{v}`" for k, v in sorted(lineage.items())]
    lines += ["", f"Report: `runs:/{run_id}/reports/report.html` (MLflow run `{run_id}`, artifacts → reports)", ""]
    return "\n".join(lines)


def measured_index(L: Layout) -> dict:
    """The index stage's probe of the index it measured, checked against ``artifacts/index``:
    promote registers that index or nothing."""
    from mmcompress.index.store import manifest_digest

    probe_file = L.reports_dir / "index_probe.json"
    if not (L.index_dir / "manifest.json").is_file():
        raise ArtifactError(f"{L.index_dir}: no saved index to promote (run the index stage first)")
    if not probe_file.is_file():
        raise ArtifactError(f"{probe_file}: missing; the index stage writes it when it measures the index")
    probe = json.loads(probe_file.read_text())
    digest = manifest_digest(L.index_dir)
    if digest != probe.get("manifest_sha256"):
        raise ArtifactError(f"{L.index_dir}: manifest {digest[:12]} is not the index the index stage "
                            f"measured ({str(probe.get('manifest_sha256'))[:12]}): it was rebuilt or "
                            "changed since; rerun the index stage")
    return probe


def _verify_or_refuse(client, uri: str, model_name: str, version: str, probe: dict, L: Layout) -> dict:
    """Verify the registered copy (see :func:`verify_registered_index`); on failure tag the
    version, leave ``champion`` where it is and fail the stage."""
    import tempfile

    import numpy as np

    from mmcompress.tracking.registry import verify_registered_index

    queries = np.load(L.fused_dir / "vectors.npy", mmap_mode="r")[np.asarray(probe["query_rows"])]
    try:
        with tempfile.TemporaryDirectory(prefix="mmc-verify-") as tmp:
            checked = verify_registered_index(uri, model_name, version, probe, queries, Path(tmp))
    except ArtifactError as e:
        client.set_model_version_tag(model_name, version, "verification", f"failed: {e}"[:5000])
        raise ArtifactError(f"not promoted: {e}") from e
    client.set_model_version_tag(model_name, version, "verification", "passed")
    return checked


def promote(params: dict, root: Path) -> dict:
    """Log everything to MLflow, register the challenger, apply the gate, move aliases."""
    import mlflow
    from mlflow import MlflowClient

    from mmcompress.report import write_report
    from mmcompress.tracking.history import drift_history
    from mmcompress.tracking.registry import (
        INDEX_DIGEST_TAG,
        champion_metrics,
        log_codec_model,
        move_champion,
        record_decision,
    )
    from mmcompress.tracking.store import check_tracking_store, resolve_tracking_uri

    root = Path(root)
    L = Layout(root)
    tp, pp = params["tracking"], params["promote"]
    probe = measured_index(L)
    uri = resolve_tracking_uri(tp["uri"], root)
    check_tracking_store(uri)
    report = json.loads((L.reports_dir / "evaluate.json").read_text())
    index_metrics = json.loads((L.metrics_dir / "index.json").read_text()) if (L.metrics_dir / "index.json").exists() else {}
    train_report = json.loads((L.reports_dir / "train.json").read_text())
    challenger_name = report["challenger"]
    ch = report["codecs"][challenger_name]
    challenger = {"recall_at_10": index_metrics.get("recall_at_10", ch["recall_at_10"]),
                  "hr_at_10": (report.get("index") or {}).get("hr_at_10", ch.get("hr_at_10", 0.0)),
                  "codec_hr_at_10": ch.get("hr_at_10"),
                  "bytes_per_item": ch["bytes_per_item"],
                  "index_resident_bytes_per_item": index_metrics.get("resident_bytes_per_item"),
                  "latency_p50_ms": index_metrics.get("latency_p50_ms")}
    baseline = {"recall_at_10": 1.0, "hr_at_10": report["baseline"].get("hr_at_10", challenger["hr_at_10"])}

    mlflow.set_tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(tp["experiment"])
    # a local store keeps artifacts beside it; a tracking server uses its own artifact store
    local = uri.startswith("sqlite:") or uri.startswith("postgresql")
    exp_id = exp.experiment_id if exp else client.create_experiment(
        tp["experiment"],
        artifact_location=L.resolve(tp["artifact_location"]).resolve().as_uri() if local else None)
    spec = train_report["codecs"][challenger_name]["resolved_spec"]
    champ_metrics, champ_label = champion_metrics(client, pp["model_name"])
    decision = gate(challenger, baseline, champ_metrics, GateThresholds(
        max_recall_drop=pp["max_recall_drop"], max_hr_drop=pp["max_hr_drop"],
        champion_tolerance=pp["champion_tolerance"], max_bytes_per_item=pp["max_bytes_per_item"],
        latency_slo_ms=pp["latency_slo_ms"]))

    with mlflow.start_run(experiment_id=exp_id, run_name="pipeline") as run:
        mlflow.log_params({k: v[:6000] for k, v in _flat_params(params).items()})
        lineage = dataset_version(root, params)
        mlflow.set_tags({f"data.{k}": v for k, v in lineage.items()})
        mlflow.set_tag("index_recall_at_10", str(index_metrics.get("recall_at_10")))
        mlflow.set_tag("challenger", challenger_name)
        mlflow.set_tag("challenger_spec", spec)
        mlflow.log_metrics({f"baseline.{k}": v for k, v in _numeric(report["baseline"]).items()})
        mlflow.log_metrics({f"index.{k}": v for k, v in index_metrics.items() if isinstance(v, int | float)})
        for name, m in report["codecs"].items():
            with mlflow.start_run(experiment_id=exp_id, run_name=name, nested=True):
                tr = train_report["codecs"][name]
                mlflow.log_params({"spec": tr["spec"], "resolved_spec": tr["resolved_spec"],
                                   "code_size": tr["code_size"]})
                mlflow.log_metrics(_numeric({k: v for k, v in m.items() if k != "spec"}))
                mlflow.log_metric("fit_seconds", tr["fit_seconds"])
                mlflow.log_artifacts(str(L.codecs_dir / name), artifact_path="codec")
        for f in (L.reports_dir / "evaluate.json", L.reports_dir / "train.json",
                  L.reports_dir / "compress.json", L.plots_dir / "recall_vs_bytes.csv"):
            if f.exists():
                mlflow.log_artifact(str(f), artifact_path="reports")
        reason = pp.get("override_reason")
        if reason:
            mlflow.set_tag("gate_override_reason", reason)
        mlflow.set_tag("index_manifest_sha256", probe["manifest_sha256"])
        info = log_codec_model(L.codecs_dir / challenger_name, L.index_dir, pp["model_name"], PIP_REQUIREMENTS)
        version = str(info.registered_model_version)
        note = decision.to_markdown(f"{pp['model_name']} v{version} ({spec})", champ_label, reason)
        note += review_markdown(ch, {**index_metrics, "hr_at_10": (report.get("index") or {}).get("hr_at_10")},
                                champ_metrics, lineage, run.info.run_id)
        client.update_registered_model(pp["model_name"], description=MODEL_DESCRIPTION)
        mlflow.log_text(note, "promotion.md")
        mlflow.set_tag("gate_decision", "promoted" if decision.promoted else "rejected")
        record_decision(client, pp["model_name"], version, decision, challenger, spec, note, reason)
        client.set_model_version_tag(pp["model_name"], version, INDEX_DIGEST_TAG, probe["manifest_sha256"])
        verified = None
        if decision.promoted:
            verified = _verify_or_refuse(client, uri, pp["model_name"], version, probe, L)
        result = {"promoted": decision.promoted, "reasons": decision.reasons, "checks": decision.checks,
                  "version": version, "run_id": run.info.run_id, "challenger": challenger_name,
                  "spec": spec, "champion_before": champ_label, "tracking_uri": uri,
                  "challenger_metrics": challenger, "champion_metrics": champ_metrics,
                  "override_reason": reason, "verified": verified}
        report_html = write_report(root, L.reports_dir / "report.html", promotion=result,
                                   champion_metrics=champ_metrics,
                                   drift_history=drift_history(uri, tp["experiment"]))
        mlflow.log_artifact(str(report_html), artifact_path="reports")
        if decision.promoted:  # last: the version is verified and its report is on the run
            move_champion(client, pp["model_name"], version)
    write_json_atomic(L.metrics_dir / "promote.json",
                      {"promoted": int(decision.promoted), "version": int(version)})
    write_json_atomic(L.reports_dir / "promote.json", result)
    return result


if __name__ == "__main__":
    raise SystemExit(main(promote))
