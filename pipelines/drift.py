"""Stage ``drift``: compare a new catalog batch with the reference the codec was trained on.

Without ``drift.batch_dir`` the embedded catalog arrives in time order: items first rated before
``drift.cutoff`` are the reference and the later ones are the new batch (real temporal drift).
With ``drift.batch_dir`` (a catalog directory of new items) that batch is compared with the
whole current catalog. Per modality and on the fused vectors (with the challenger codec's
reconstruction error, code-usage entropy and probe recall), thresholds from ``params.yaml``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mmcompress.artifacts import atomic_dir, write_json_atomic
from mmcompress.data import ItemCatalog
from mmcompress.errors import CatalogError
from pipelines.config import Layout
from pipelines.stage_runner import main


def drift(params: dict, root: Path) -> dict:
    """Write reports/drift/{drift.json,report.html} and metrics/drift.json; return the decision."""
    from mmcompress.codecs import load_codec
    from mmcompress.drift.report import (
        DriftThresholds,
        catalog_drift,
        drift_report,
        retrain_decision,
        temporal_split,
        write_drift_html,
    )
    from mmcompress.tracking.history import log_drift_run
    from mmcompress.tracking.store import check_tracking_store, resolve_tracking_uri

    root = Path(root)
    L = Layout(root)
    dp = params["drift"]
    tp = params["tracking"]
    uri = resolve_tracking_uri(tp["uri"], root)
    check_tracking_store(uri)
    catalog = ItemCatalog.load(L.catalog_dir)
    fused = np.load(L.fused_dir / "vectors.npy")
    challenger = json.loads((L.reports_dir / "train.json").read_text())["challenger"]
    codec = load_codec(L.codecs_dir / challenger / "codec.json")
    kwargs = {"n_components": int(dp["n_components"]), "permutations": int(dp["permutations"]),
              "seed": int(dp.get("seed", 0)), "thresholds": DriftThresholds.from_params(dp)}

    if dp.get("batch_dir"):
        from mmcompress.fusion import load_fusion

        batch = ItemCatalog.load(L.resolve(dp["batch_dir"]))
        both = _concat(catalog, batch)
        ref_rows = np.arange(len(catalog))
        new_rows = np.arange(len(catalog), len(both))
        fused_all = np.concatenate([fused, load_fusion(L.fusion_dir).transform(batch)])
        source = str(dp["batch_dir"])
    else:
        both, fused_all = catalog, fused
        ref_rows, new_rows = temporal_split(catalog.attributes, dp["cutoff"])
        source = f"items first rated at or after {dp['cutoff']}"
    if len(ref_rows) < 10 or len(new_rows) < 10:
        raise CatalogError(f"drift needs >= 10 reference and batch items; found {len(ref_rows)} and {len(new_rows)}")
    reports = catalog_drift(both, ref_rows, new_rows, **kwargs)
    reports["fused"] = drift_report(fused_all[ref_rows], fused_all[new_rows], codec=codec,
                                    modality="fused", **kwargs)
    retrain, reasons = retrain_decision(reports)
    result = {"retrain": retrain, "reasons": reasons, "batch": source,
              "n_reference": int(len(ref_rows)), "n_batch": int(len(new_rows)),
              "modalities": {k: r.to_dict() for k, r in reports.items()}}
    with atomic_dir(L.reports_dir / "drift") as tmp:
        (tmp / "drift.json").write_text(json.dumps(result, indent=2, default=str))
        write_drift_html(tmp / "report.html", reports, title=f"Drift: {source}")
    result["run_id"] = log_drift_run(
        uri, tp["experiment"], result, dp,
        artifact_location=L.resolve(tp["artifact_location"]).resolve().as_uri(),
        artifacts=[L.reports_dir / "drift" / "report.html"])
    f = reports["fused"]
    write_json_atomic(L.metrics_dir / "drift.json", {
        "retrain": int(retrain), "n_batch": int(len(new_rows)), "fused.psi_max": f.psi_max,
        "fused.mmd2": f.mmd2, "fused.mmd_pvalue": f.mmd_pvalue, "fused.mean_shift": f.mean_shift,
        "fused.recon_error_ratio": f.recon_error_ratio, "fused.recall_at_10_batch": f.recall_at_10_batch})
    return {"retrain": retrain, "reasons": reasons, "run_id": result["run_id"],
            "report": str(L.reports_dir / "drift" / "report.html")}


def _concat(a: ItemCatalog, b: ItemCatalog) -> ItemCatalog:
    import pandas as pd

    missing = set(a.modality_names) ^ set(b.modality_names)
    if missing:
        raise CatalogError(f"batch catalog modalities {b.modality_names} differ from the reference {a.modality_names}")
    return ItemCatalog(
        np.concatenate([a.item_ids, b.item_ids]),
        {m: np.concatenate([a.modalities[m], b.modalities[m]]) for m in a.modality_names},
        {m: np.concatenate([a.masks[m], b.masks[m]]) for m in a.modality_names},
        pd.concat([a.attributes, b.attributes], ignore_index=True), dict(a.schema))


if __name__ == "__main__":
    raise SystemExit(main(drift))
