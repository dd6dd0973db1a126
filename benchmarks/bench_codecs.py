"""Codec benchmark: every project codec and faiss's codecs, same data, same run.

    python -m benchmarks.bench_codecs [--vectors NAME=path.npy ...] [--l2-vectors NAME=path.npy ...]
                                      [--budgets 8 16 32 64] [--out benchmarks/results] [--quick]
                                      [--datasets NAME ...] [--resume [--redo DATASET[/B[/LABEL]] ...]]

For each dataset (1,000 held-out queries; inner-product datasets have their rows L2-normalised
and exact inner-product top-10 on the original vectors as truth, L2 datasets keep their rows as
they are and take exact L2 top-10) and each byte budget, it fits every codec on the database rows
(capped at ``--max-train``) and records recall@10, 1-recall@1, reconstruction MSE, encode and
search throughput (medians over ``--repeats``), and stored bytes after lossless entropy
coding (rANS per field and zstd; the smaller counts). faiss baselines run the usual way
(``index_factory`` with the dataset's metric; RaBitQ with 1 bit and extended RaBitQ with 2 and
4 bits per dimension, PCA-projected to fit the budget); on inner-product datasets product/scalar
ones are also scanned with L2 distances, which ranks unit-norm data better. The best of all
faiss rows at a budget is the reference each row's ``ratio`` is taken against, and the best
faiss row of ANY code size up to the budget (over the budgets in the run) the reference of
``ratio ≤B``: ``auto`` treats its budget as an upper bound, so that is the comparison it must
win. ScaNN's anisotropic quantization (brute-force AH scoring, 16 centres per block, no
reorder; ``benchmarks/peers/scann_codec.py`` in ``.venv-peers``) adds "ScaNN AH" rows when
that venv exists. Outputs ``codecs.json``, ``codecs.md`` and ``codecs.png`` under ``--out``,
plus a search-throughput figure for the 16-byte auto codec over 100k synthetic rows with the
catalog's first two moments (no copies of real rows planted).

Default inputs are ``artifacts/fused/vectors.npy`` and the catalog's text modality, the Debian
package catalog when ``make bench-data`` has cached it (``data/cache/bench/debian-minilm.npy``),
and scikit-learn digits as an L2 catalog (``digits-l2``, 1,797 x 64, rows as they ship); when
none of the inner-product ones exist, a 384-d stand-in built from digits is used.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import benchmarks.common as common  # first: sets the OpenMP wait policy before faiss loads
from mmcompress.artifacts import write_bytes_atomic, write_json_atomic
from mmcompress.codecs import Codec, auto_candidates, make_codec, pack
from mmcompress.codecs.faiss_quantizers import subsample_rows
from mmcompress.errors import ArtifactError, CodecError


# ---- codec lists ----------------------------------------------------------------------------
def family_of(spec: str) -> str:
    tokens = spec.split(",")
    last = tokens[-1]
    if tokens[0].startswith("OPQ"):
        return "OPQ+PQ"
    if "+" in last:
        return "RQ+PQ stack"
    if last.startswith("NUQ"):
        return "NUQ-entropy" if "_e" in last else "NUQ"
    if last in ("SQ8", "SQ4", "SQ6", "FP16"):
        return last
    refined = re.fullmatch(r"RQ\d+x\d+(?:_b(?P<beam>\d+))?_r\d+", last)
    if refined:  # one row per beam: rows of one label replace each other
        return "RQ+refine" + (f" (beam {refined['beam']})" if refined["beam"] else "")
    m = re.match(r"[A-Z]+", last)
    return m.group(0) if m else last


#: Ablations of the learned ingredients (at 16 bytes, on the learned scalar quantizer, whose
#: knobs are all independent): the full recipe and each ingredient switched off (or on).
ABLATIONS: dict[str, dict[str, Any]] = {
    "NSQ": {},
    "NSQ −QAT": {"nsq_qat": False},
    "NSQ −calibration": {"nsq_calibrate": False},
    "NSQ −distillation": {"nsq_distill": 0.0},
    "NSQ +anisotropic": {"nsq_eta": 4.0},
}


def project_specs(budget: int, d: int, quick: bool, metric: str = "ip") -> list[tuple[str, str]]:
    """(label, spec) of the project's codecs at a budget: auto, its candidates at the budget
    (QINCo included up to 8 bytes), NUQ-entropy, ITQ binary (BIN), the learned hash (HASH) and
    the learned scalar quantizer (NSQ), with the learned-ingredient ablations at 16 bytes."""
    specs = [("auto", "auto")]
    for spec in auto_candidates(budget, d, metric):
        specs.append((family_of(spec), spec))
    if d >= budget:
        specs.append(("NUQ-entropy", f"PCA,NUQ{budget}_e1.25"))
    bits = 8 * budget
    specs.append(("BIN", f"BIN{bits}" if bits <= d else f"BIN{bits}_rr"))
    if bits <= d:
        specs.append(("HASH", f"HASH{bits}"))
    if 2 * budget <= d:
        labels = list(ABLATIONS) if budget == 16 else ["NSQ"]
        specs += [(label, f"NSQ{2 * budget}x4") for label in labels]
    if quick:
        keep = {"auto", "PQ", "NUQ", "NUQ-entropy", "SQ4"}
        specs = [s for s in specs if s[0] in keep]
    return specs


def rabitq_factory(d: int, budget: int, bits: int) -> str | None:
    """The ``index_factory`` string of faiss RaBitQ with ``bits`` per dimension (1: RaBitQ,
    more: extended RaBitQ, faiss >= 1.13) whose code fits ``budget`` bytes with the most
    dimensions (PCA-projected below ``d``, multiples of 8), or None when none fits. Sizes are
    faiss's own ``sa_code_size`` (the per-vector factors included), probed without training."""
    import faiss

    token = "RaBitQ" if bits == 1 else f"RaBitQ{bits}"
    for rd in [d] + list(range(d - d % 8 if d % 8 else d - 8, 7, -8)):
        factory = token if rd == d else f"PCA{rd},{token}"
        try:
            size = faiss.index_factory(d, factory).sa_code_size()
        except RuntimeError:
            return None  # this faiss does not know the token
        if size <= budget:
            return factory
    return None


def faiss_specs(budget: int, d: int, quick: bool, n_train: int | None = None) -> list[tuple[str, str]]:
    """(label, index_factory string or a named construction) of the faiss baselines;
    ``n_train``: the training rows (faiss's joint refinement needs one per codebook entry)."""
    out = []
    dp = d - d % budget
    out.append(("faiss PQ", f"PQ{budget}" if dp == d else f"PCA{dp},PQ{budget}"))
    out.append(("faiss OPQ+PQ", f"OPQ{budget},PQ{budget}" if dp == d else f"OPQ{budget}_{dp},PQ{budget}"))
    if budget <= 32 and not quick:
        out.append(("faiss RQ", f"RQ{budget}x8"))
    if budget <= 16 and not quick and (n_train is None or n_train >= 256 * budget):
        # faiss's own joint refinement (train_type Train_refine_codebook), which refuses fewer
        # training rows than codebook entries
        out.append(("faiss RQ+refine", f"RQ{budget}x8,refine"))
    if budget <= 16 and not quick:
        out.append(("faiss LSQ", f"LSQ{budget}x8"))
    if budget <= d:
        out.append(("faiss SQ8", f"PCA{budget},SQ8"))
    if 2 * budget <= d:
        out.append(("faiss SQ4", f"PCA{2 * budget},SQ4"))
    if 8 * budget <= d and not quick:
        out.append(("faiss ITQ+LSH", f"ITQ{8 * budget},LSH"))
    if not quick:
        rd = 8 * (budget - 8)
        if 8 <= rd <= d:
            out.append(("faiss RaBitQ", f"PCA{rd},RaBitQ" if rd < d else "RaBitQ"))
        elif d // 8 + 8 <= budget:
            out.append(("faiss RaBitQ", "RaBitQ"))
        for bits in (2, 4):  # extended RaBitQ (multi-bit); 20 bytes of factors per vector
            factory = rabitq_factory(d, budget, bits)
            if factory is not None:
                out.append((f"faiss RaBitQ{bits}", factory))
    return out


# ---- faiss wrapper ------------------------------------------------------------------------
class FaissCodec:
    """A faiss index used as a codec: sa_encode / sa_decode / search over given codes."""

    def __init__(self, factory: str, d: int, metric: str = "ip") -> None:
        import faiss

        self.factory = factory
        self.metric = metric
        m = re.fullmatch(r"ITQ(\d+),LSH", factory)
        refine = re.fullmatch(r"(RQ\d+x\d+),refine", factory)
        self.refine = refine is not None
        if refine:  # a residual quantizer whose codebooks faiss refines jointly after training
            factory = refine.group(1)
        if m:
            bits = int(m.group(1))
            self.index = faiss.IndexPreTransform(faiss.ITQTransform(d, bits, True),
                                                 faiss.IndexLSH(bits, bits, False, False))
        else:
            self.index = faiss.index_factory(d, factory, faiss.METRIC_L2 if metric == "l2"
                                             else faiss.METRIC_INNER_PRODUCT)
        self.pre = self.index if isinstance(self.index, faiss.IndexPreTransform) else None
        base = faiss.downcast_index(self.pre.index if self.pre is not None else self.index)
        # Additive codes: inner product needs no norms (look-up tables, ST_LUT_nonorm); L2 does,
        # and keeps faiss's default ST_decompress, which adds no bytes to the code.
        if isinstance(base, faiss.IndexResidualQuantizer):  # faiss's default beam (5)
            base.rq.use_beam_LUT = 1
            if self.refine:  # (its refinement step encodes without the look-up tables)
                base.rq.train_type = faiss.ResidualQuantizer.Train_progressive_dim | \
                    faiss.ResidualQuantizer.Train_refine_codebook
                base.rq.use_beam_LUT = 0
            if metric == "ip":
                base.rq.search_type = faiss.AdditiveQuantizer.ST_LUT_nonorm
        if isinstance(base, faiss.IndexLocalSearchQuantizer) and metric == "ip":
            base.lsq.search_type = faiss.AdditiveQuantizer.ST_LUT_nonorm
        if isinstance(base, faiss.IndexPQ):
            base.pq.cp.min_points_per_centroid = 1
        self.base = base
        self.lsq = base.lsq if isinstance(base, faiss.IndexLocalSearchQuantizer) else None

    @property
    def code_size(self) -> int:
        return self.index.sa_code_size()

    def fit(self, X: np.ndarray) -> FaissCodec:
        self.index.train(X)
        if self.refine:  # encode with the look-up tables of the refined codebooks, as plain RQ does
            self.base.rq.use_beam_LUT = 1
            self.base.rq.compute_codebook_tables()
        if self.lsq is not None:
            # faiss LSQ draws the codes it starts encoding from with the seed its training drew
            # its first codes with: the training rows, encoded in training order (here, the
            # whole base), get back the codes training converged to, which no other order or
            # new row reaches. Encoding with the next seed measures the codec, not the replay
            # (digits-l2, LSQ8x8: recall@10 0.991 replayed, 0.648 permuted, 0.659 next seed).
            self.lsq.random_seed = self.lsq.random_seed + 1
        return self

    def encode(self, X: np.ndarray) -> np.ndarray:
        return self.index.sa_encode(X)

    def decode(self, codes: np.ndarray) -> np.ndarray:
        return self.index.sa_decode(codes)

    def supports_l2_scan(self) -> bool:
        """Whether an extra L2-distance scan row is worth measuring (inner-product data only:
        on an L2 dataset the plain scan is the L2 one)."""
        import faiss

        return self.metric == "ip" and isinstance(self.base, faiss.IndexPQ | faiss.IndexScalarQuantizer)

    def search(self, codes: np.ndarray, xq: np.ndarray, k: int, l2: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
        import faiss

        if l2 is None:
            l2 = self.metric == "l2"
        metric = faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT
        self.index.metric_type = metric
        self.base.metric_type = metric
        # IndexPreTransform.search = transform the queries, then search the inner index; the
        # inner index is the one that takes stored codes.
        xq_t = xq
        if self.pre is not None:
            for i in range(self.pre.chain.size()):
                xq_t = faiss.downcast_VectorTransform(self.pre.chain.at(i)).apply(np.ascontiguousarray(xq_t))
        self.base.reset()
        self.base.add_sa_codes(codes)
        try:
            return self.base.search(np.ascontiguousarray(xq_t), k)
        finally:
            self.base.reset()


# ---- measurement ----------------------------------------------------------------------------
def stored_bytes(codes: np.ndarray, field_bits: list[int] | None) -> dict[str, float]:
    n = len(codes)
    rans = len(pack(codes, "rans", field_bits=field_bits))
    zstd = len(pack(codes, "zstd", field_bits=field_bits))
    return {"stored_bytes_rans": rans / n, "stored_bytes_zstd": zstd / n,
            "stored_bytes_per_item": min(rans, zstd) / n}


def measure(ds: common.Dataset, fit: Callable[[], Any], encode: Callable[[np.ndarray], np.ndarray],
            decode: Callable[[np.ndarray], np.ndarray] | None,
            search: Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]],
            field_bits: Callable[[], list[int] | None], repeats: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    fit()
    fit_s = time.perf_counter() - t0
    sample = ds.xb[: min(len(ds.xb), 20000)]
    enc_s, _ = common.median_seconds(lambda: encode(sample), repeats)
    codes = encode(ds.xb)
    srch_s, (_, ids) = common.median_seconds(lambda: search(codes, ds.xq, 10), repeats)
    row: dict[str, Any] = {
        "code_bytes": int(codes.shape[1]),
        "recall_at_10": common.recall_at(ids, ds.gt, 10),
        "one_recall_at_1": common.one_recall_at_1(ids, ds.gt),
        "fit_seconds": round(fit_s, 2),
        "encode_per_s": round(len(sample) / enc_s, 1),
        "search_qps": round(len(ds.xq) / srch_s, 1),
        "mse": None,
    }
    if decode is not None:
        try:
            X_hat = decode(codes[: len(sample)])
            row["mse"] = float(((X_hat - sample) ** 2).sum(axis=1).mean())
        except (RuntimeError, CodecError):
            pass
    row.update(stored_bytes(codes, field_bits()))
    return row


def run_project(ds: common.Dataset, budget: int, label: str, spec: str, xt: np.ndarray,
                repeats: int, seed: int, keep: dict[str, Codec],
                auto_exclude: list[str] | None = None) -> dict[str, Any]:
    """Fit and measure one project codec; auto's candidates reuse the fits auto made."""
    fitted = keep.get(f"{ds.name}/{budget}/{spec}")
    if fitted is not None:
        report = {r["spec"]: r for r in keep[f"{ds.name}/{budget}"].auto_report_}
        row = measure(ds, lambda: None, fitted.encode, fitted.decode, fitted.search,
                      lambda: fitted.field_bits, repeats)
        row.update(fit_seconds=report[spec]["fit_seconds"], spec=fitted.spec,
                   norm_weight=float(fitted.norm_weight_), fitted_by="auto")
        return row
    codec = make_codec(spec, metric=ds.metric, budget_bytes=budget if spec == "auto" else None,
                       random_state=seed, max_train_rows=len(xt),
                       **({"keep_candidates": True, "exclude": auto_exclude or []} if spec == "auto"
                          else ABLATIONS.get(label, {})))
    row = measure(ds, lambda: codec.fit(xt), codec.encode, codec.decode, codec.search,
                  lambda: codec.field_bits, repeats)
    row.update(spec=codec.spec, norm_weight=float(getattr(codec, "norm_weight_", 0.0)))
    if spec == "auto":
        row["auto_report"] = codec.auto_report_
        keep[f"{ds.name}/{budget}"] = codec
        for cand_spec, cand in codec.candidates_.items():
            keep[f"{ds.name}/{budget}/{cand_spec}"] = cand
    return row


def run_faiss(ds: common.Dataset, factory: str, xt: np.ndarray, repeats: int) -> list[dict[str, Any]]:
    codec = FaissCodec(factory, ds.d, ds.metric)
    row = measure(ds, lambda: codec.fit(xt), codec.encode, codec.decode, codec.search,
                  lambda: None, repeats)
    row["spec"] = factory
    rows = [row]
    if codec.supports_l2_scan():
        codes = codec.encode(ds.xb)
        secs, (_, ids) = common.median_seconds(lambda: codec.search(codes, ds.xq, 10, l2=True), repeats)
        l2 = dict(row, recall_at_10=common.recall_at(ids, ds.gt, 10),
                  one_recall_at_1=common.one_recall_at_1(ids, ds.gt), search_qps=round(len(ds.xq) / secs, 1),
                  spec=factory + " (L2 scan)")
        rows.append(l2)
    return rows


# ---- ScaNN anisotropic quantization, in its own venv -----------------------------------------
ROOT = Path(__file__).resolve().parents[1]
PEERS_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
SCANN_SCRIPT = ROOT / "benchmarks" / "peers" / "scann_codec.py"


def run_scann(ds: common.Dataset, budgets: list[int], seed: int,
              python: Path = PEERS_PYTHON, timeout: float = 3600) -> tuple[list[dict[str, Any]], str]:
    """"ScaNN AH" rows (one per budget) from ``benchmarks/peers/scann_codec.py`` run by the
    peers' venv on the same base, queries and truth; ``([], reason)`` when it cannot run."""
    if not python.exists():
        return [], f"{python.relative_to(ROOT) if python.is_relative_to(ROOT) else python} missing (make venv-peers)"
    with tempfile.TemporaryDirectory(prefix="scann-codec-") as tmp:
        work = Path(tmp)
        np.save(work / "base.npy", ds.xb)
        np.save(work / "queries.npy", ds.xq)
        np.save(work / "gt.npy", ds.gt)
        cmd = [str(python), str(SCANN_SCRIPT), "--base", str(work / "base.npy"), "--queries",
               str(work / "queries.npy"), "--gt", str(work / "gt.npy"), "--metric", ds.metric,
               "--budgets", *map(str, budgets), "--seed", str(seed), "--out", str(work / "scann.json")]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return [], f"timed out after {timeout:.0f} s"
        if p.returncode != 0:
            tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or ["no output"]
            return [], f"exit {p.returncode}: {tail[0][:300]}"
        out = json.loads((work / "scann.json").read_text())
    rows = []
    for r in out["rows"]:
        rows.append({"budget": r["budget"], "spec": r["spec"], "code_bytes": r["code_bytes"],
                     "recall_at_10": r["recall_at_10"], "one_recall_at_1": r["one_recall_at_1"],
                     "fit_seconds": r["build_seconds"], "search_qps": r["search_qps"],
                     "encode_per_s": None, "mse": None, "stored_bytes_per_item": None,
                     "scann_version": out.get("scann_version")})
    return rows, "; ".join(out.get("skipped", []))


# ---- throughput at 100k ------------------------------------------------------------------
def throughput_100k(ds: common.Dataset, codec: Codec, n_items: int, repeats: int, seed: int) -> dict[str, Any]:
    """Search speed over ``n_items`` synthetic rows with the catalog's first two moments (a
    Gaussian mixture of at least n/10 components, :func:`benchmarks.datasets.synthetic_like`: no
    copies of real rows planted), queried with the real held-out queries. A speed figure only:
    recall on such rows says nothing about the catalog."""
    from benchmarks.datasets import synthetic_like

    items, meta = synthetic_like(ds.xb, n_items, seed=seed, source=f"the {ds.name} catalog")
    enc_s, codes = common.median_seconds(lambda: codec.encode(items), 1)
    srch_s, _ = common.median_seconds(lambda: codec.search(codes, ds.xq, 10), repeats)
    return {"dataset": ds.name, "data": meta["data"], "spec": codec.spec, "n_items": n_items,
            "n_queries": len(ds.xq), "encode_per_s": round(n_items / enc_s, 1),
            "search_qps": round(len(ds.xq) / srch_s, 1), "goal_qps": 200}


# ---- reporting ------------------------------------------------------------------------------
ENCODE_FLOOR = 5000.0  # vectors/s the project asks of any codec auto may pick


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Recall relative to the best faiss row at the same budget: all of them, and those that
    encode at least ``ENCODE_FLOOR`` vectors/s in this run; and relative to the best faiss row
    of any code size up to the budget (``ratio_vs_best_faiss_upto``: every faiss row of the
    dataset, whatever budget it was run at, whose codes take at most this budget's bytes)."""
    best: dict[tuple[str, int], float] = {}
    best_fast: dict[tuple[str, int], float] = {}
    faiss_rows = [r for r in rows if r.get("source") == "faiss" and r.get("recall_at_10") is not None]
    for r in faiss_rows:
        key = (r["dataset"], r["budget"])
        best[key] = max(best.get(key, 0.0), r["recall_at_10"])
        if r["encode_per_s"] >= ENCODE_FLOOR:
            best_fast[key] = max(best_fast.get(key, 0.0), r["recall_at_10"])
    for r in rows:
        if r.get("recall_at_10") is None:
            continue
        key = (r["dataset"], r["budget"])
        ref, ref_fast = best.get(key), best_fast.get(key)
        upto = [f for f in faiss_rows if f["dataset"] == r["dataset"] and f["code_bytes"] <= r["budget"]]
        ref_upto = max(upto, key=lambda f: f["recall_at_10"]) if upto else None
        r["best_faiss_recall_at_10"] = ref
        r["ratio_vs_best_faiss"] = round(r["recall_at_10"] / ref, 3) if ref else None
        r["ratio_vs_best_fast_faiss"] = round(r["recall_at_10"] / ref_fast, 3) if ref_fast else None
        r["best_faiss_upto_budget"] = (None if ref_upto is None else
                                       {"spec": ref_upto["spec"], "code_bytes": ref_upto["code_bytes"],
                                        "recall_at_10": ref_upto["recall_at_10"]})
        r["ratio_vs_best_faiss_upto"] = (round(r["recall_at_10"] / ref_upto["recall_at_10"], 3)
                                         if ref_upto and ref_upto["recall_at_10"] else None)


def dataset_order(results: dict[str, Any]) -> list[str]:
    """The datasets in the order their rows were first run (the JSON file sorts its keys)."""
    names = list(dict.fromkeys(r["dataset"] for r in results["rows"]))
    return [n for n in names if n in results["datasets"]] + [n for n in results["datasets"] if n not in names]


def row_labels(rows: list[dict[str, Any]]) -> list[str]:
    """Labels in first-run order, the project's codecs first, then faiss, then other peers."""
    rank = {"project": 0, "faiss": 1}
    first = {}
    for r in rows:
        first.setdefault(r["label"], (rank.get(r.get("source"), 2), len(first)))
    return sorted(first, key=first.__getitem__)


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def markdown(results: dict[str, Any]) -> str:
    rows = [r for r in results["rows"] if "error" not in r]
    out = ["# Codec benchmark", "",
           f"Machine: {results['machine']}. Queries held out per dataset; truth = exact top-10 on the "
           "original vectors under the dataset's metric (inner product over L2-normalised rows, or L2 "
           "distance over the rows as given; each dataset's heading names it). Throughputs are medians; "
           "`stored B` is bytes per item after lossless entropy coding (smaller of rANS-per-field and zstd); "
           "`code B` is the size of the codes actually made (`auto` may choose a code smaller than its "
           "budget). `ratio` = recall@10 / best faiss recall@10 at the same budget (faiss rows include their "
           "L2-scan variants); `ratio 5k` = the same against the best faiss row that encodes >= "
           f"{ENCODE_FLOOR:.0f} vectors/s in this run (the floor auto holds its own choice to); `ratio ≤B` = "
           "recall@10 / best faiss recall@10 over every faiss row of the dataset whose codes take at most the "
           "budget, whatever budget it ran at: the budget is an upper bound, so this is the reference `auto` "
           "has to match (`faiss ≤B` names that row). Every codec is fitted on the catalog rows it then "
           "encodes (as a catalog is compressed), so codebooks that memorise those rows score here; "
           "`unseen.md` (benchmarks/bench_unseen.py) measures `auto` and the residual codes on items they "
           "were not fitted on. `auto` scores its candidates on rows none of them was fitted on.", ""]
    for name in dataset_order(results):
        ds_rows = [r for r in rows if r["dataset"] == name]
        budgets = sorted({r["budget"] for r in ds_rows})
        info = results["datasets"][name]
        truth = "exact L2 top-10" if info.get("metric") == "l2" else "exact inner-product top-10, rows L2-normalised"
        out += [f"## {name} ({info['n_items']} items, d={info['d']}, {info['n_queries']} queries, "
                f"metric {info.get('metric', 'ip')}: {truth})", ""]
        if info.get("machine", results["machine"]) != results["machine"]:
            out += [f"Run again later (rows of earlier runs kept): {info['machine']}.", ""]
        if info.get("skipped"):
            out += [f"Not run here: {why}" for why in info["skipped"]] + [""]
        out += ["Recall@10 by bytes per item:", "",
                "| codec | " + " | ".join(f"{b} B" for b in budgets) + " |",
                "|---|" + "---|" * len(budgets)]
        for label in row_labels(ds_rows):
            cells = []
            for b in budgets:
                hit = [r for r in ds_rows if r["label"] == label and r["budget"] == b]
                cells.append(_fmt(hit[0]["recall_at_10"]) if hit else "")
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("")
        for b in budgets:
            upto = next((r.get("best_faiss_upto_budget") for r in ds_rows
                         if r["budget"] == b and r.get("best_faiss_upto_budget")), None)
            out += [f"### {name}, {b} bytes", ""]
            if upto:
                out += [f"faiss ≤B (best faiss row with codes of at most {b} bytes): `{upto['spec']}`, "
                        f"{upto['code_bytes']} B, recall@10 {_fmt(upto['recall_at_10'])}.", ""]
            out += ["| codec | spec | code B | stored B | recall@10 | ratio | ratio 5k | ratio ≤B | 1-R@1 | MSE | encode/s | queries/s | fit s |",
                    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
            for r in sorted((r for r in ds_rows if r["budget"] == b), key=lambda r: -(r["recall_at_10"] or 0)):
                out.append(f"| {r['label']} | `{r['spec']}` | {r['code_bytes']} | {_fmt(r.get('stored_bytes_per_item'), 2)} | "
                           f"{_fmt(r['recall_at_10'])} | {_fmt(r.get('ratio_vs_best_faiss'))} | "
                           f"{_fmt(r.get('ratio_vs_best_fast_faiss'))} | {_fmt(r.get('ratio_vs_best_faiss_upto'))} | "
                           f"{_fmt(r.get('one_recall_at_1'))} | {_fmt(r.get('mse'), 4)} | {_fmt(r.get('encode_per_s'), 0)} | "
                           f"{_fmt(r.get('search_qps'), 0)} | {_fmt(r.get('fit_seconds'), 2)} |")
            out.append("")
    errors = [r for r in results["rows"] if "error" in r]
    if errors:
        out += ["## Runs that failed", ""] + [f"- {r['dataset']} {r['budget']} B {r['label']} `{r['spec']}`: {r['error']}"
                                               for r in errors] + [""]
    if results.get("throughput"):
        t = results["throughput"]
        out += ["## Search throughput at scale", "",
                f"`{t['spec']}` (16-byte auto codec, {t['dataset']}) over {t['n_items']:,} items "
                f"({t.get('data', 'drawn around the real vectors')}), {t['n_queries']} real queries per batch: "
                f"**{t['search_qps']:.0f} queries/s** "
                f"(goal ≥ {t['goal_qps']}); encoding {t['encode_per_s']:.0f} vectors/s.", ""]
    return "\n".join(out)


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = dataset_order(results)
    fig, axes = plt.subplots(1, len(names), figsize=(7 * len(names), 5), squeeze=False)
    rows = [r for r in results["rows"] if "error" not in r]
    for ax, name in zip(axes[0], names, strict=True):
        for label in row_labels([r for r in rows if r["dataset"] == name]):
            pts = sorted((r["code_bytes"], r["recall_at_10"]) for r in rows
                         if r["dataset"] == name and r["label"] == label)
            style = dict(lw=3, color="black", marker="o") if label == "auto" else (
                dict(ls="--", marker="x") if label.startswith("faiss") else dict(marker="."))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=label, **style)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes per item")
        metric = results["datasets"][name].get("metric", "ip")
        ax.set_ylabel(f"recall@10 (exact {'L2' if metric == 'l2' else 'inner-product'} top-10)")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---- main ---------------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--vectors", nargs="*", default=[], metavar="NAME=PATH.npy",
                   help="inner-product datasets (rows L2-normalised)")
    p.add_argument("--l2-vectors", nargs="*", default=[], metavar="NAME=PATH.npy",
                   help="L2 datasets (rows as given, exact L2 truth)")
    p.add_argument("--no-scann", action="store_true", help="skip the ScaNN AH rows")
    p.add_argument("--auto-exclude", nargs="*", default=[], metavar="FAMILY",
                   help="families auto does not try (e.g. QINCO: minutes-long fits)")
    p.add_argument("--budgets", nargs="*", type=int, default=[8, 16, 32, 64])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--quick", action="store_true", help="small smoke run: few rows, budgets 8 and 16")
    p.add_argument("--resume", action="store_true", help="keep rows already in OUT/codecs.json")
    p.add_argument("--n-queries", type=int, default=1000)
    p.add_argument("--max-items", type=int, default=None, help="cap on database rows per dataset")
    p.add_argument("--max-train", type=int, default=20000, help="training rows per codec")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--throughput-items", type=int, default=100000)
    p.add_argument("--only", nargs="*", default=None, help="labels to run (e.g. auto 'faiss RQ')")
    p.add_argument("--redo", nargs="*", default=[], metavar="DATASET[/BUDGET[/LABEL]]",
                   help="with --resume, rows to measure again (e.g. fused/32/auto, or digits-l2 "
                        "for all of that dataset's rows; 'throughput' for the search-speed figure)")
    p.add_argument("--datasets", nargs="*", default=None, metavar="NAME",
                   help="run only these of the datasets found (e.g. digits-l2); with --resume the "
                        "others' rows are kept")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--render", action="store_true", help="only rewrite markdown and plot from OUT/codecs.json")
    args = p.parse_args(argv)
    if args.quick:
        args.budgets = [b for b in args.budgets if b <= 16] or [8]
        args.n_queries = min(args.n_queries, 200)
        args.max_items = min(args.max_items or 3000, 3000)
        args.max_train = min(args.max_train, 3000)
        args.repeats = 1
        args.throughput_items = min(args.throughput_items, 20000)
    return args


def debian_cached() -> np.ndarray | None:
    """The Debian package catalog's MiniLM vectors when ``make bench-data`` has cached them
    (:func:`benchmarks.datasets.cached_debian_vectors`), else None; a cache that fails its
    checks is left out with the reason."""
    from benchmarks.datasets import cached_debian_vectors

    try:
        return cached_debian_vectors()
    except ArtifactError as e:
        print(f"{e}; Debian catalog left out", file=sys.stderr)
        return None


def redone(redo: list[str], dataset: str, budget: int, label: str) -> bool:
    """Whether ``--redo`` names a row: by its dataset, ``dataset/budget`` or ``dataset/budget/label``."""
    return any(r in (dataset, f"{dataset}/{budget}", f"{dataset}/{budget}/{label}") for r in redo)


def load_inputs(args: argparse.Namespace) -> dict[str, tuple[np.ndarray, str]]:
    """``name -> (vectors, metric)``: the given datasets, or the defaults (module docstring),
    only those named by ``--datasets`` when it is given."""
    wanted = set(args.datasets) if args.datasets is not None else None
    inputs = _inputs(args, wanted)
    if wanted is not None:
        missing = sorted(wanted - set(inputs))
        if missing:
            raise SystemExit(f"--datasets: {missing} not found; found {sorted(inputs)}")
    return inputs


def _inputs(args: argparse.Namespace, wanted: set[str] | None) -> dict[str, tuple[np.ndarray, str]]:
    def want(name: str) -> bool:
        return wanted is None or name in wanted

    inputs: dict[str, tuple[np.ndarray, str]] = {}
    for flag, items, metric in (("--vectors", args.vectors, "ip"), ("--l2-vectors", args.l2_vectors, "l2")):
        for item in items:
            name, _, path = item.partition("=")
            if not path:
                raise SystemExit(f"{flag} expects NAME=PATH.npy; found {item!r}")
            if want(name):
                inputs[name] = (np.load(path, allow_pickle=False), metric)
    if args.vectors or args.l2_vectors:
        return inputs
    if wanted is None or wanted - {"digits-l2"}:  # not only digits: the pipeline's outputs are read
        inputs = {name: (X, "ip") for name, X in common.default_inputs().items() if want(name)}
        debian = debian_cached() if want("debian") else None
        if debian is not None:
            inputs["debian"] = (debian, "ip")
        if not inputs and want("digits384"):
            print("pipeline outputs not found; using the 384-d digits stand-in", file=sys.stderr)
            inputs = {"digits384": (common.digits_384(args.seed), "ip")}
    if want("digits-l2"):
        inputs["digits-l2"] = (common.digits_l2(), "l2")
    return inputs


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "codecs.json"
    if args.render:
        results = json.loads(json_path.read_text())
        add_ratios(results["rows"])
        write_json_atomic(json_path, results)
        write_bytes_atomic(args.out / "codecs.md", markdown(results).encode())
        plot(results, args.out / "codecs.png")
        return results
    this_run = common.machine_info()
    results: dict[str, Any] = {"machine": this_run, "args": {k: str(v) for k, v in vars(args).items()},
                               "datasets": {}, "rows": [], "throughput": None}
    if args.resume and json_path.exists():
        old = json.loads(json_path.read_text())
        results["rows"] = [r for r in old.get("rows", []) if "error" not in r]
        results["throughput"] = None if "throughput" in args.redo else old.get("throughput")
        results["datasets"] = old.get("datasets", {})  # the datasets not run again keep their heading
        results["machine"] = old.get("machine", this_run)  # and the machine line they were run under
    done = {(r["dataset"], r["budget"], r["label"]) for r in results["rows"]}
    keep: dict[str, Codec] = {}

    def save() -> None:
        add_ratios(results["rows"])
        write_json_atomic(json_path, results)
        write_bytes_atomic(args.out / "codecs.md", markdown(results).encode())

    for name, (X, metric) in load_inputs(args).items():
        ds = common.split_queries(name, X, args.n_queries, args.seed, args.max_items, metric=metric)
        xt = subsample_rows(ds.xb, args.max_train, args.seed)
        results["datasets"][name] = {"n_items": len(ds.xb), "d": ds.d, "n_queries": len(ds.xq),
                                     "n_train": len(xt), "metric": ds.metric, "skipped": [],
                                     "machine": this_run}
        for budget in args.budgets:
            jobs = [("project", label, spec) for label, spec in project_specs(budget, ds.d, args.quick, ds.metric)]
            jobs += [("faiss", label, spec) for label, spec in faiss_specs(budget, ds.d, args.quick, len(xt))]
            for source, label, spec in jobs:
                if args.only and label not in args.only:
                    continue
                if (name, budget, label) in done and not redone(args.redo, name, budget, label):
                    continue
                print(f"[{name} {budget}B] {label}: {spec}", file=sys.stderr, flush=True)
                base = {"dataset": name, "budget": budget, "source": source, "label": label}
                try:
                    if source == "project":
                        new = [run_project(ds, budget, label, spec, xt, args.repeats, args.seed, keep,
                                           args.auto_exclude)]
                    else:
                        new = run_faiss(ds, spec, xt, args.repeats)
                        for r in new[1:]:
                            r["label"] = label + " (L2 scan)"
                except (CodecError, RuntimeError, ValueError) as e:
                    new = [{"spec": spec, "error": f"{type(e).__name__}: {e}"[:500]}]
                results["rows"] = [r for r in results["rows"]
                                   if not (r["dataset"] == name and r["budget"] == budget and
                                           r["label"] in {label, label + " (L2 scan)"})]
                results["rows"] += [{**base, **r} for r in new]
                save()
        if not args.no_scann and (not args.only or "ScaNN AH" in args.only):
            todo = [b for b in args.budgets if (name, b, "ScaNN AH") not in done or redone(args.redo, name, b, "ScaNN AH")]
            if todo:
                print(f"[{name}] ScaNN AH at {todo} B", file=sys.stderr, flush=True)
                scann_rows, why = run_scann(ds, todo, args.seed)
                if why:
                    results["datasets"][name]["skipped"].append(f"ScaNN AH: {why}")
                results["rows"] = [r for r in results["rows"]
                                   if not (r["dataset"] == name and r["label"] == "ScaNN AH" and r["budget"] in todo)]
                results["rows"] += [{"dataset": name, "source": "peer", "label": "ScaNN AH", **r} for r in scann_rows]
                save()
        if results["throughput"] is None and args.throughput_items and 16 in args.budgets and ds.metric == "ip":
            auto16 = keep.get(f"{name}/16")
            if auto16 is None:
                auto16 = make_codec("auto", budget_bytes=16, metric=ds.metric, random_state=args.seed,
                                    max_train_rows=len(xt)).fit(xt)
            results["throughput"] = throughput_100k(ds, auto16, args.throughput_items, args.repeats, args.seed)
            save()
    plot(results, args.out / "codecs.png")
    save()
    print(markdown(results))
    return results


if __name__ == "__main__":
    main()
