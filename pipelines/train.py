"""Stage ``train``: fit the fusion model, write the joint item vectors, fit every codec."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from mmcompress.artifacts import atomic_dir, write_json_atomic
from mmcompress.data import ItemCatalog
from mmcompress.errors import ConfigError
from pipelines.config import Layout, codec_slug
from pipelines.stage_runner import main


def codec_specs(compress_params: dict) -> list[str]:
    """Every codec spec the pipeline fits: the fixed list, plus ``auto`` when enabled."""
    specs = list(compress_params.get("codecs") or [])
    if compress_params.get("auto", True):
        specs.append("auto")
    return specs


def split_rows(n: int, n_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out query rows (never seen by codec training) and the base rows, both sorted."""
    n_queries = min(n_queries, max(1, n // 10))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_queries:]), np.sort(perm[:n_queries])


def drop_quarantined(catalog: ItemCatalog, validation_dir: Path) -> ItemCatalog:
    """The catalog without the items the validate stage quarantined (listed with reasons)."""
    import pandas as pd

    from pipelines.validate import QUARANTINE_FILE

    path = validation_dir / QUARANTINE_FILE
    if not path.exists():
        return catalog
    bad = pd.read_csv(path)["item_id"].to_numpy()
    return catalog.subset(~np.isin(catalog.item_ids, bad)) if len(bad) else catalog


def fit_fused_vectors(params: dict, root: Path) -> dict:
    from mmcompress.fusion import FusionConfig, fit_fusion

    L = Layout(root)
    catalog = drop_quarantined(ItemCatalog.load(L.catalog_dir),
                               L.resolve(params["validate"].get("out_dir", "reports/validation")))
    t0 = time.perf_counter()
    model = fit_fusion(catalog, FusionConfig(**params["fusion"]))
    fused = model.transform(catalog).astype(np.float32)
    fusion_s = time.perf_counter() - t0
    base_rows, query_rows = split_rows(len(catalog), params["evaluate"]["n_queries"],
                                       params["train"]["seed"])
    with atomic_dir(L.fusion_dir) as tmp:
        model.save(tmp)
    with atomic_dir(L.fused_dir) as tmp:
        np.save(tmp / "vectors.npy", fused)
        np.save(tmp / "item_ids.npy", catalog.item_ids)
        np.save(tmp / "base_rows.npy", base_rows)
        np.save(tmp / "query_rows.npy", query_rows)
    return {"fusion_seconds": round(fusion_s, 2), "dim": int(fused.shape[1]), "n_items": len(fused),
            "n_queries": int(len(query_rows))}


def fit_codecs(params: dict, root: Path, *, progress: bool = True) -> dict:
    from mmcompress.codecs import make_codec

    L = Layout(root)
    X = np.load(L.fused_dir / "vectors.npy")
    train_rows = np.load(L.fused_dir / "base_rows.npy")
    Xtr = X[train_rows]
    cp = params["compress"]
    report: dict[str, dict] = {}
    with atomic_dir(L.codecs_dir) as tmp:
        for spec in tqdm(codec_specs(cp), desc="fit codecs", disable=not progress):
            t0 = time.perf_counter()
            options = ({"budget_bytes": cp["budget_bytes"], **(cp.get("auto_options") or {})}
                       if spec == "auto" else {})
            codec = make_codec(spec, metric="ip", random_state=params["train"]["seed"],
                               **options).fit(Xtr)
            fit_s = time.perf_counter() - t0
            slug = codec_slug(spec)
            (tmp / slug).mkdir()
            codec.save(tmp / slug / "codec.json")
            entry = {"spec": spec, "resolved_spec": codec.spec, "code_size": int(codec.code_size),
                     "fit_seconds": round(fit_s, 2)}
            if hasattr(codec, "auto_report_"):
                entry["auto_candidates"] = codec.auto_report_
            report[slug] = entry
    return report


def choose_challenger(codecs: dict[str, dict], params: dict) -> str:
    """The codec the index is built on and the gate judges: ``auto`` when fitted, else
    ``compress.challenger``, else the largest code within the byte budget. The budget bounds
    every challenger: a named one over it is refused with both sizes."""
    budget = params["compress"]["budget_bytes"]
    if "auto" in codecs:
        return "auto"
    wanted = params["compress"].get("challenger")
    if wanted:
        slug = codec_slug(wanted)
        if slug not in codecs:
            raise ConfigError(f"compress.challenger {wanted!r} is not among the fitted codecs {sorted(codecs)}")
        if codecs[slug]["code_size"] > budget:
            raise ConfigError(f"compress.challenger {wanted!r} codes take {codecs[slug]['code_size']} bytes "
                              f"per item, over compress.budget_bytes={budget}")
        return slug
    fitting = {n: c for n, c in codecs.items() if c["code_size"] <= budget}
    if not fitting:
        raise ConfigError(f"no fitted codec fits compress.budget_bytes={budget}: "
                         f"{ {n: c['code_size'] for n, c in codecs.items()} }")
    return max(fitting, key=lambda n: fitting[n]["code_size"])


def train(params: dict, root: Path) -> dict:
    """Fit fusion and codecs; write artifacts/fusion, artifacts/fused, artifacts/codecs."""
    from mmcompress.tracking.store import check_tracking_store, resolve_tracking_uri

    root = Path(root)
    # the run ends in the tracking store: refuse to spend minutes training if it is unreachable
    check_tracking_store(resolve_tracking_uri(params["tracking"]["uri"], root))
    fused = fit_fused_vectors(params, root)
    codecs = fit_codecs(params, root)
    result = {"fusion": fused, "codecs": codecs, "challenger": choose_challenger(codecs, params)}
    write_json_atomic(Layout(root).metrics_dir / "train.json",
                      {"fusion_seconds": fused["fusion_seconds"], "dim": fused["dim"],
                       **{f"{k}.fit_seconds": v["fit_seconds"] for k, v in codecs.items()}})
    write_json_atomic(Layout(root).reports_dir / "train.json", result)
    return result


if __name__ == "__main__":
    raise SystemExit(main(train))
