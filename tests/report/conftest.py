"""Runs to report on.

``digits_run``: a small run laid out exactly as the pipeline stages write it, built from real
components on scikit-learn's digits: the catalog has three modalities cut from the images
(upper half, lower half, ink profile) with some items missing one, fused by the fusion
package, codecs fitted / encoded / evaluated by the library, codes entropy-coded with zstd, a
gate decision from the real gate, and drift checks logged to a real MLflow store. The digits
have no ratings, so the downstream slot ``hr_at_10`` holds label precision@10 (share of an
item's 10 neighbours with its digit), the closest thing this data has to a recommendation task.

``pipeline_run``: the real stages on a 300-item MovieLens slice; skipped, with the reason,
while a stage cannot run.

faiss and BLAS run single-threaded (busy shared machine; see tests/evaluation/conftest.py).
"""

from __future__ import annotations

import importlib
import os
import shutil
import time
from html.parser import HTMLParser
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pytest
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[2]
DIGITS_CODECS = ("SQ8", "PCA32,SQ4", "PQ8x8", "PQ4x8")
DIGITS_CHALLENGER = "PQ8x8"
DIGITS_CHAMPION = "PCA32_SQ4"
FAISS_SPECS = ("PQ8x8", "OPQ8,PQ8x8", "RQ4x8", "PQ16x8")


@pytest.fixture(autouse=True, scope="session")
def single_threaded_math():
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    with threadpool_limits(limits=1):
        yield
    faiss.omp_set_num_threads(previous)


def slug(spec: str) -> str:
    import re

    return re.sub(r"[^A-Za-z0-9x]+", "_", spec).strip("_")


def write_json(path: Path, obj) -> None:
    from mmcompress.artifacts import write_json_atomic

    write_json_atomic(path, obj)


def digits_catalog():
    """Digits as a three-modality catalog; every 6th item lacks ``lower``, every 9th ``ink``."""
    from sklearn.datasets import load_digits

    from mmcompress.data import ItemCatalog

    d = load_digits()
    X = d.data.astype(np.float32)
    n = len(X)
    img = X.reshape(n, 8, 8)
    ink = np.concatenate([img.sum(1), img.sum(2)], axis=1).astype(np.float32)
    rows = np.arange(n)
    masks = {"upper": np.ones(n, bool), "lower": rows % 6 != 5, "ink": rows % 9 != 4}
    mods = {"upper": X[:, :32].copy(), "lower": X[:, 32:].copy(), "ink": ink}
    for m, mask in masks.items():
        mods[m][~mask] = 0.0
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    attrs = pd.DataFrame({
        "title": [f"{names[y].capitalize()} #{i} & co" for i, y in enumerate(d.target)],
        "genres": ["|".join([names[y], "even" if y % 2 == 0 else "odd"]) for y in d.target],
        "label": d.target.astype(np.int64),
    })
    return ItemCatalog(np.arange(1000, 1000 + n), mods, masks, attrs), d.target


def label_precision(labels_q: np.ndarray, labels_b: np.ndarray, found: np.ndarray, k: int = 10) -> float:
    return float(np.mean(labels_b[found[:, :k]] == labels_q[:, None]))


def build_digits_run(root: Path) -> dict:
    """Write a complete run under ``root`` (the last drift check as this run's drift report);
    return facts the tests compare against."""
    import zstandard

    from mmcompress.codecs import load_codec, make_codec
    from mmcompress.evaluation.faiss_baselines import evaluate_faiss_baselines
    from mmcompress.evaluation.metrics import evaluate_codec, exact_topk
    from mmcompress.fusion import FusionConfig, fit_fusion
    from mmcompress.promotion import GateThresholds, gate

    catalog, labels = digits_catalog()
    catalog.save(root / "data" / "catalog")
    model = fit_fusion(catalog, FusionConfig(method="weighted_concat",
                                             weights={"upper": 1.0, "lower": 1.0, "ink": 0.5}))
    X = model.transform(catalog).astype(np.float32)
    n = len(X)
    perm = np.random.default_rng(0).permutation(n)
    query_rows, base_rows = np.sort(perm[:150]), np.sort(perm[150:])
    fused = root / "artifacts" / "fused"
    fused.mkdir(parents=True)
    for name, arr in (("vectors", X), ("item_ids", catalog.item_ids), ("base_rows", base_rows),
                      ("query_rows", query_rows)):
        np.save(fused / f"{name}.npy", arr)

    Xb, Xq = X[base_rows], X[query_rows]
    gt = exact_topk(Xb, Xq, 50, "ip")
    lb, lq = labels[base_rows], labels[query_rows]
    baseline_hr = label_precision(lq, lb, gt[1])
    train, compress, results = {}, {}, {}
    for spec in DIGITS_CODECS:
        name = slug(spec)
        t0 = time.perf_counter()
        codec = make_codec(spec, metric="ip", random_state=0).fit(Xb)
        fit_s = time.perf_counter() - t0
        (root / "artifacts" / "codecs" / name).mkdir(parents=True)
        codec.save(root / "artifacts" / "codecs" / name / "codec.json")
        codes = codec.encode(X)
        (root / "artifacts" / "codes").mkdir(parents=True, exist_ok=True)
        np.save(root / "artifacts" / "codes" / f"{name}.npy", codes)
        blob = zstandard.ZstdCompressor(level=19).compress(codes.tobytes())
        (root / "artifacts" / "codes" / f"{name}.packed").write_bytes(blob)
        train[name] = {"spec": spec, "resolved_spec": codec.spec, "code_size": int(codec.code_size),
                       "fit_seconds": round(fit_s, 3)}
        compress[name] = {"code_bytes": int(codes.nbytes), "stored_bytes": len(blob),
                          "stored_bytes_per_item": len(blob) / n,
                          "entropy_saving": 1 - len(blob) / codes.nbytes, "pack_seconds": 0.0}
        m = evaluate_codec(codec, Xb, Xq, codes=codes[base_rows], ground_truth=gt, timing=True, repeats=1)
        m["stored_bytes_per_item"] = len(blob) / n
        m["entropy_saving"] = compress[name]["entropy_saving"]
        _, I_codec = codec.search(codes[base_rows], Xq, 10)
        m["hr_at_10"] = label_precision(lq, lb, np.asarray(I_codec))
        m["hr_drop_vs_baseline"] = baseline_hr - m["hr_at_10"]
        results[name] = m

    faiss_baselines = evaluate_faiss_baselines(Xb, Xq, gt[1], FAISS_SPECS, max_train_rows=800)
    baseline = {"spec": "Flat (float32)", "recall_at_10": 1.0, "one_recall_at_1": 1.0, "ndcg_at_10": 1.0,
                "bytes_per_item": 4 * X.shape[1], "compression_ratio": 1.0, "hr_at_10": baseline_hr}
    fusion = {"fusion_seconds": 0.0, "dim": int(X.shape[1]), "n_items": n, "n_queries": len(query_rows)}
    write_json(root / "reports" / "train.json", {"fusion": fusion, "codecs": train, "challenger": DIGITS_CHALLENGER})
    write_json(root / "reports" / "compress.json", compress)
    write_json(root / "reports" / "evaluate.json",
               {"baseline": baseline, "codecs": results, "challenger": DIGITS_CHALLENGER})

    ch = results[DIGITS_CHALLENGER]
    lat = []
    codec = load_codec(root / "artifacts" / "codecs" / DIGITS_CHALLENGER / "codec.json")
    codes_b = np.load(root / "artifacts" / "codes" / f"{DIGITS_CHALLENGER}.npy")[base_rows]
    for q in Xq[:60]:
        t0 = time.perf_counter()
        codec.search(codes_b, q[None], 10)
        lat.append(1e3 * (time.perf_counter() - t0))
    index = {"recall_at_10": ch["recall_at_10"], "latency_p50_ms": float(np.median(lat)),
             "latency_p99_ms": float(np.percentile(lat, 99)), "resident_bytes_per_item": ch["bytes_per_item"] + 8}
    write_json(root / "metrics" / "index.json", index)

    champ = results[DIGITS_CHAMPION]
    champion_metrics = {"recall_at_10": champ["recall_at_10"], "hr_at_10": champ["hr_at_10"],
                        "bytes_per_item": champ["bytes_per_item"], "latency_p50_ms": index["latency_p50_ms"] * 1.5}
    challenger_metrics = {"recall_at_10": index["recall_at_10"], "hr_at_10": ch["hr_at_10"],
                          "bytes_per_item": index["resident_bytes_per_item"], "latency_p50_ms": index["latency_p50_ms"]}
    decision = gate(challenger_metrics, {"recall_at_10": 1.0, "hr_at_10": baseline_hr}, champion_metrics,
                    GateThresholds(max_recall_drop=0.3, max_hr_drop=0.05, max_bytes_per_item=64))
    promotion = {"promoted": decision.promoted, "reasons": decision.reasons, "checks": decision.checks,
                 "version": "3", "run_id": "0" * 32, "challenger": DIGITS_CHALLENGER, "spec": DIGITS_CHALLENGER,
                 "champion_before": f"mmcompress-codec v2 ({DIGITS_CHAMPION})", "tracking_uri": "sqlite:///mlruns.db"}
    write_json(root / "reports" / "promote.json", promotion)
    drift_results = digits_drift_results(catalog, X, codec)
    write_json(root / "reports" / "drift" / "drift.json", drift_results[-1][0])
    return {"drift_results": drift_results, "labels": labels, "faiss_baselines": faiss_baselines, "champion_metrics": champion_metrics,
            "challenger_metrics": challenger_metrics, "promotion": promotion}


def digits_drift_results(catalog, fused: np.ndarray, codec) -> list[tuple[dict, dict]]:
    """Three real drift checks on the digits: no shift, a mild and a strong one (by label)."""
    from dataclasses import asdict

    from mmcompress.drift.report import (
        DriftThresholds,
        catalog_drift,
        drift_report,
        retrain_decision,
    )

    labels = catalog.attributes["label"].to_numpy()
    rng = np.random.default_rng(1)
    perm = rng.permutation(len(labels))
    splits = [
        ("random half", perm[: len(perm) // 2], perm[len(perm) // 2:]),
        ("digits 5-9 over-represented", np.flatnonzero(labels < 7), np.flatnonzero(labels >= 3)),
        ("digits 5-9 only", np.flatnonzero(labels < 5), np.flatnonzero(labels >= 5)),
    ]
    out = []
    for i, (name, ref, new) in enumerate(splits):
        t = DriftThresholds(psi_threshold=0.25 + 0.05 * i, mmd_threshold=0.05)
        kw = {"n_components": 8, "permutations": 30, "seed": 0, "thresholds": t}
        reports = catalog_drift(catalog, ref, new, **kw)
        reports["fused"] = drift_report(fused[ref], fused[new], codec=codec, modality="fused", **kw)
        retrain, reasons = retrain_decision(reports)
        result = {"retrain": retrain, "reasons": reasons, "batch": name, "n_reference": int(len(ref)),
                  "n_batch": int(len(new)), "modalities": {k: r.to_dict() for k, r in reports.items()}}
        out.append((result, asdict(t)))
    return out


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> dict:
    """The digits run's root and the facts used to build it."""
    root = tmp_path_factory.mktemp("digits_run")
    return {"root": root, **build_digits_run(root)}


@pytest.fixture(scope="session")
def digits_history(digits_run) -> dict:
    """The digits run's three drift checks logged to a real MLflow store and read back."""
    from mmcompress.tracking.history import drift_history, log_drift_run

    root = digits_run["root"]
    uri = f"sqlite:///{root / 'mlruns.db'}"
    logged = []
    for result, thresholds in digits_run["drift_results"]:
        run_id = log_drift_run(uri, "mmcompress", result, thresholds,
                               artifact_location=(root / "mlartifacts").as_uri(),
                               artifacts=[root / "reports" / "drift" / "drift.json"])
        logged.append((run_id, result, thresholds))
    return {"tracking_uri": uri, "logged": logged, "history": drift_history(uri, "mmcompress")}


PIPELINE_OVERRIDES = {
    "catalog.max_items": 300, "encoders.collaborative.dim": 16, "fusion.epochs": 5,
    "evaluate.n_queries": 30, "compress.codecs": ["SQ8", "PCA64,PQ8x8"], "compress.budget_bytes": 8,
    "compress.auto": False, "compress.n_shards": 2, "drift.cutoff": "1996-10-01", "drift.permutations": 50,
    # the slice has fewer rows than dimensions: no PCA/OPQ baselines, the scalar ones fit any d
    "evaluate.faiss_baselines": ["SQ8", "SQ4"],
}


@pytest.fixture(scope="session")
def pipeline_run(tmp_path_factory) -> dict:
    """The pipeline stages on a 300-item MovieLens slice; drift runs before promote so the
    promote stage's report has a drift history and this run's drift check."""
    from pipelines.config import load_params

    root = tmp_path_factory.mktemp("pipeline_run")
    overrides = {**PIPELINE_OVERRIDES, "catalog.raw_dir": str(REPO / "data" / "raw" / "movielens"),
                 "encoders.text.cache_dir": str(REPO / "data" / "cache" / "text")}
    params = load_params(REPO / "params.yaml", overrides)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    stages = []
    for module, fn in (("prepare", "prepare"), ("validate", "validate"), ("train", "train"),
                       ("compress", "compress"), ("index", "build_index"), ("evaluate", "evaluate"),
                       ("drift", "drift"), ("promote", "promote")):
        try:
            stage = getattr(importlib.import_module(f"pipelines.{module}"), fn)
            stages.append((module, stage(params, root)))
        except (ImportError, AttributeError) as e:
            shutil.rmtree(root, ignore_errors=True)
            pytest.skip(f"pipeline stage {module!r} cannot run yet: {type(e).__name__}: {e}")
    return {"root": root, "params": params, "results": dict(stages)}


class DataCells(HTMLParser):
    """Every element carrying a ``data-*`` attribute: its attributes, its text, and the
    ``data-*`` attributes of the elements around it (``context``)."""

    def __init__(self) -> None:
        super().__init__()
        self.cells: list[dict] = []
        self._open: list[dict | None] = []
        self.tags: dict[str, int] = {}
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: (v or "") for k, v in attrs}
        self.tags[tag] = self.tags.get(tag, 0) + 1
        self.urls += [a[k] for k in ("src", "href") if k in a]
        cell = None
        if any(k.startswith("data-") for k in a):
            context = {}
            for outer in self._open:
                if outer is not None:
                    context.update({k: v for k, v in outer.items() if k.startswith("data-")})
            cell = {"tag": tag, **a, "text": "", "context": context}
            self.cells.append(cell)
        if tag not in ("img", "br", "meta", "input", "link", "hr"):
            self._open.append(cell)

    def handle_endtag(self, tag):
        if self._open:
            self._open.pop()

    def handle_data(self, data):
        for cell in self._open:
            if cell is not None:
                cell["text"] += data


def parse_page(html: str) -> DataCells:
    p = DataCells()
    p.feed(html)
    return p


def cells(page: DataCells, **attrs) -> list[dict]:
    """Cells whose ``data-<key>`` equal the given values (underscores in keys become dashes)."""
    want = {f"data-{k.replace('_', '-')}": str(v) for k, v in attrs.items()}
    return [c for c in page.cells if all(c.get(k) == v for k, v in want.items())]


def one_cell(page: DataCells, **attrs) -> dict:
    found = cells(page, **attrs)
    assert len(found) == 1, (attrs, len(found))
    return found[0]


def displayed(text: str) -> tuple[float, float]:
    """The number a cell shows and half a unit of its last shown digit (the rounding allowed)."""
    t = text.strip().replace(",", "").replace("×", "")
    scale = 0.01 if t.endswith("%") else 1.0
    t = t.rstrip("%")
    if "e" in t:
        mantissa, _ = t.split("e")
        decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
        v = float(t)
        return v * scale, abs(v) * 0.5 * 10.0 ** -decimals * 10 * scale
    decimals = len(t.split(".")[1]) if "." in t else 0
    if "." not in t and abs(float(t)) >= 1000:  # %.4g style may drop digits; rates are whole numbers
        decimals = 0
    return float(t) * scale, 0.5 * 10.0 ** -decimals * scale + 1e-12


def assert_shows(cell: dict, value: float) -> None:
    """The cell carries exactly ``value`` and displays it rounded."""
    assert float(cell["data-value"]) == pytest.approx(value, rel=1e-12, abs=1e-15), cell
    shown, tol = displayed(cell["text"])
    if abs(value) < 1e-3 and "e" not in cell["text"]:
        tol = max(tol, 5e-4)
    assert abs(shown - value) <= tol * 1.0001 + 1e-12, (cell, value)
