"""Drift report per modality and the retrain decision.

The reference is what the current codec was trained on; the batch is new items. Distribution
statistics run on the reference's principal components; codec statistics (when a fitted codec is
given) check whether the codes still fit the new items: reconstruction error, code usage and
search recall.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mmcompress.artifacts import write_bytes_atomic
from mmcompress.drift.statistics import (
    code_entropy,
    covariance_shift,
    mean_shift,
    mmd_permutation_test,
    pca_basis,
    psi,
    unpack_fields,
)
from mmcompress.errors import CatalogError, CodecError

TS_COLUMN = "first_rating_ts"


@dataclass(frozen=True)
class DriftThresholds:
    """When a statistic calls for retraining.

    ``mmd_threshold`` is the significance level of the MMD permutation test. ``psi_threshold``
    applies to the largest per-component PSI. Codec thresholds: ``recall_floor`` (recall@10 of
    probes from the batch), ``recall_drop`` (batch probes vs reference probes),
    ``recon_ratio_threshold`` (batch / reference reconstruction MSE), ``entropy_drop_bits``
    (mean code-usage entropy loss per sub-quantizer). ``None`` disables a check.
    """

    psi_threshold: float | None = 0.25
    mmd_threshold: float | None = 0.05
    mean_shift_threshold: float | None = 0.5
    cov_shift_threshold: float | None = 1.0
    recall_floor: float | None = 0.5
    recall_drop: float | None = 0.1
    recon_ratio_threshold: float | None = 1.5
    entropy_drop_bits: float | None = 1.0

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> DriftThresholds:
        """Pick the fields this class knows from a params section (others are ignored)."""
        names = cls.__dataclass_fields__
        return cls(**{k: (None if v is None else float(v)) for k, v in params.items() if k in names})


@dataclass
class DriftReport:
    """Shift statistics of one modality, the retrain decision and the reasons for it."""

    modality: str
    n_reference: int
    n_batch: int
    retrain: bool
    reasons: list[str]
    mean_shift: float
    cov_shift: float
    mmd2: float
    mmd_pvalue: float
    mmd_bandwidth: float
    psi: list[float]
    psi_max: float
    psi_mean: float
    explained_variance: list[float]
    recon_error_ratio: float | None = None
    entropy_reference: list[float] | None = None
    entropy_batch: list[float] | None = None
    entropy_drop: float | None = None
    recall_at_10_batch: float | None = None
    recall_at_10_reference: float | None = None
    codec_spec: str | None = None
    thresholds: DriftThresholds = field(default_factory=DriftThresholds)
    projection_reference: np.ndarray | None = field(default=None, repr=False, compare=False)
    projection_batch: np.ndarray | None = field(default=None, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """All statistics and the decision as plain JSON types (projections left out)."""
        d = asdict(self)
        d.pop("projection_reference")
        d.pop("projection_batch")
        return _jsonable(d)

    def to_html(self) -> str:
        return drift_html({self.modality or "vectors": self})


def drift_report(reference: np.ndarray, batch: np.ndarray, *, n_components: int = 16,
                 permutations: int = 100, seed: int = 0,
                 thresholds: DriftThresholds | None = None, codec: Any = None,
                 modality: str = "", max_samples: int = 1000, n_probes: int = 200) -> DriftReport:
    """Compare ``batch`` with ``reference`` (rows = items) and decide whether to retrain.

    Distribution statistics: mean shift (units of the reference RMS spread), covariance shift
    (relative Frobenius distance) and PSI per component on the reference's top ``n_components``
    principal components, and an RBF-MMD permutation test there on at most ``max_samples`` rows
    per side. With a fitted ``codec`` (``encode``/``decode``/``search``/``code_size``/``spec``):
    reconstruction-MSE ratio, code-usage entropy per code field (sub-quantizer, split by the
    codec's ``field_bits`` when it has them; reference subsampled to the batch size since the
    plug-in estimate grows with the sample) and recall@10 of ``n_probes`` probe queries from each
    side against exact search over both sides' codes. The reference error is measured on rows
    the codec was usually trained on, so it is optimistic: leave the ratio threshold room.
    """
    thresholds = thresholds or DriftThresholds()
    R = _check_matrix(reference, "reference")
    B = _check_matrix(batch, "batch", d=R.shape[1])
    if len(R) < 2 or len(B) < 2:
        raise ValueError(f"drift needs at least 2 rows per side; found reference={len(R)}, batch={len(B)}")
    rng = np.random.default_rng(seed)
    mean, axes, ratio = pca_basis(R, n_components)
    PR = (R - mean) @ axes.T
    PB = (B - mean) @ axes.T
    psis = psi(PR, PB, n_bins=int(np.clip(min(len(R), len(B)) // 50, 2, 10)))
    Rs, Bs = _sample(PR, max_samples, rng), _sample(PB, max_samples, rng)
    mmd2, pval, bw = mmd_permutation_test(Rs, Bs, permutations=permutations, seed=seed)
    rep = DriftReport(
        modality=modality, n_reference=len(R), n_batch=len(B), retrain=False, reasons=[],
        mean_shift=mean_shift(R, B), cov_shift=covariance_shift(PR, PB), mmd2=mmd2,
        mmd_pvalue=pval, mmd_bandwidth=bw, psi=psis.tolist(), psi_max=float(psis.max()),
        psi_mean=float(psis.mean()), explained_variance=ratio.tolist(), thresholds=thresholds,
        projection_reference=_sample(PR[:, :2], 500, rng), projection_batch=_sample(PB[:, :2], 500, rng),
    )
    if codec is not None:
        _codec_statistics(rep, codec, R, B, rng, max_samples, n_probes)
    rep.reasons = _reasons(rep, thresholds)
    rep.retrain = bool(rep.reasons)
    return rep


def _codec_statistics(rep: DriftReport, codec: Any, R: np.ndarray, B: np.ndarray,
                      rng: np.random.Generator, max_samples: int, n_probes: int) -> None:
    from mmcompress.evaluation.metrics import exact_topk, recall_at_k, reconstruction_mse

    rep.codec_spec = str(codec.spec)
    Rs = _sample(R, max_samples, rng)
    Bs = _sample(B, max_samples, rng)
    cr, cb = codec.encode(Rs), codec.encode(Bs)
    try:
        err_r = reconstruction_mse(Rs, codec.decode(cr))
        err_b = reconstruction_mse(Bs, codec.decode(cb))
        rep.recon_error_ratio = err_b / err_r if err_r > 0 else (1.0 if err_b == 0 else math.inf)
    except (CodecError, NotImplementedError):
        rep.recon_error_ratio = None
    fields = getattr(codec, "field_bits", None)
    h_b = code_entropy(unpack_fields(cb, fields))
    h_r = code_entropy(unpack_fields(_sample(cr, len(cb), rng), fields))
    rep.entropy_reference, rep.entropy_batch = h_r.tolist(), h_b.tolist()
    rep.entropy_drop = float((h_r - h_b).mean())
    base = np.concatenate([Rs, Bs])
    codes = np.concatenate([cr, cb])
    metric = getattr(codec, "metric", "ip")
    k = min(10, len(base))
    for side, X in (("batch", Bs), ("reference", Rs)):
        q = _sample(X, n_probes, rng)
        _, I_true = exact_topk(base, q, k, metric)
        _, I_pred = codec.search(codes, q, k)
        setattr(rep, f"recall_at_10_{side}", recall_at_k(I_true, np.asarray(I_pred), k))


def _reasons(rep: DriftReport, t: DriftThresholds) -> list[str]:
    out = []
    if t.mean_shift_threshold is not None and rep.mean_shift > t.mean_shift_threshold:
        out.append(f"mean shift {rep.mean_shift:.3f} > {t.mean_shift_threshold} (reference spread units)")
    if t.cov_shift_threshold is not None and rep.cov_shift > t.cov_shift_threshold:
        out.append(f"covariance shift {rep.cov_shift:.3f} > {t.cov_shift_threshold} (relative Frobenius)")
    if t.mmd_threshold is not None and rep.mmd_pvalue < t.mmd_threshold:
        out.append(f"MMD permutation test p={rep.mmd_pvalue:.4f} < {t.mmd_threshold} (MMD²={rep.mmd2:.4g})")
    if t.psi_threshold is not None and rep.psi_max > t.psi_threshold:
        j = int(np.argmax(rep.psi))
        out.append(f"PSI {rep.psi_max:.3f} on principal component {j} > {t.psi_threshold}")
    if t.recon_ratio_threshold is not None and rep.recon_error_ratio is not None \
            and rep.recon_error_ratio > t.recon_ratio_threshold:
        out.append(f"reconstruction error ratio batch/reference {rep.recon_error_ratio:.3f} > "
                   f"{t.recon_ratio_threshold}")
    if t.entropy_drop_bits is not None and rep.entropy_drop is not None \
            and rep.entropy_drop > t.entropy_drop_bits:
        out.append(f"code-usage entropy dropped by {rep.entropy_drop:.3f} bits per sub-quantizer > "
                   f"{t.entropy_drop_bits}")
    if rep.recall_at_10_batch is not None:
        if t.recall_floor is not None and rep.recall_at_10_batch < t.recall_floor:
            out.append(f"recall@10 on new items {rep.recall_at_10_batch:.3f} < floor {t.recall_floor}")
        drop = (rep.recall_at_10_reference or 0.0) - rep.recall_at_10_batch
        if t.recall_drop is not None and drop > t.recall_drop:
            out.append(f"recall@10 on new items {rep.recall_at_10_batch:.3f} is {drop:.3f} below the "
                       f"reference's {rep.recall_at_10_reference:.3f} (> {t.recall_drop})")
    return out


def catalog_drift(catalog: Any, ref_rows: np.ndarray, new_rows: np.ndarray, *,
                  codecs: Mapping[str, Any] | None = None, modalities: list[str] | None = None,
                  min_rows: int = 10, **kwargs: Any) -> dict[str, DriftReport]:
    """:func:`drift_report` for each modality of an ``ItemCatalog``, on rows where it is present.

    Modalities with fewer than ``min_rows`` present rows on either side are skipped.
    ``codecs`` maps a modality to its fitted codec; other keyword arguments go to drift_report.
    """
    out = {}
    for name in modalities or catalog.modality_names:
        X, mask = catalog.modalities[name], catalog.masks[name]
        r = np.asarray(ref_rows)[mask[ref_rows]]
        b = np.asarray(new_rows)[mask[new_rows]]
        if len(r) < min_rows or len(b) < min_rows:
            continue
        out[name] = drift_report(X[r], X[b], codec=(codecs or {}).get(name), modality=name, **kwargs)
    return out


def retrain_decision(reports: Mapping[str, DriftReport]) -> tuple[bool, list[str]]:
    """Retrain when any modality says so; reasons are prefixed with the modality."""
    reasons = [f"{name}: {r}" for name, rep in reports.items() for r in rep.reasons]
    return bool(reasons), reasons


def temporal_split(attributes_df: pd.DataFrame, cutoff: Any, *,
                   column: str = TS_COLUMN) -> tuple[np.ndarray, np.ndarray]:
    """Rows first rated before ``cutoff`` (reference) and at or after it (new).

    ``cutoff``: unix seconds, a date/datetime, or an ISO date string (UTC). Items never rated
    (missing ``first_rating_ts``) belong to neither side.
    """
    if column not in attributes_df.columns:
        raise CatalogError("attributes lack the first-rating timestamp column", column=column,
                           expected=column, found=list(attributes_df.columns))
    ts = pd.to_numeric(attributes_df[column], errors="coerce").to_numpy(dtype=np.float64)
    c = _unix_seconds(cutoff)
    known = np.isfinite(ts)
    return np.flatnonzero(known & (ts < c)), np.flatnonzero(known & (ts >= c))


def false_positive_rate(X: np.ndarray, n_repeats: int = 10, *, batch_fraction: float = 0.5,
                        seed: int = 0, **kwargs: Any) -> float:
    """Fraction of random splits of ``X`` (no shift by construction) that call for retraining."""
    assert X.ndim == 2 and 0 < batch_fraction < 1 and n_repeats >= 1
    rng = np.random.default_rng(seed)
    flagged = 0
    n_batch = max(2, int(round(batch_fraction * len(X))))
    for i in range(n_repeats):
        perm = rng.permutation(len(X))
        rep = drift_report(X[perm[n_batch:]], X[perm[:n_batch]], seed=seed + 1 + i, **kwargs)
        flagged += rep.retrain
    return flagged / n_repeats


# ---- HTML --------------------------------------------------------------------------------

def drift_html(reports: Mapping[str, DriftReport], title: str = "Drift report") -> str:
    """A self-contained HTML page: decision, statistics table and plots (base64 PNG) per modality."""
    retrain, reasons = retrain_decision(reports)
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1100px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
        ".bad{color:#b00020}.ok{color:#1b5e20}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='{'bad' if retrain else 'ok'}'><b>Decision: {'RETRAIN' if retrain else 'no retrain'}</b></p>",
    ]
    if reasons:
        parts.append("<ul>" + "".join(f"<li>{html.escape(r)}</li>" for r in reasons) + "</ul>")
    for name, rep in reports.items():
        parts.append(f"<h2>{html.escape(name)}</h2>")
        rows = {k: v for k, v in rep.to_dict().items()
                if not isinstance(v, (list, dict)) and k not in ("modality",)}
        parts.append("<table>" + "".join(
            f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows.items())
            + "</table>")
        for img in _figures(rep):
            parts.append(f"<p><img alt='plot' src='data:image/png;base64,{img}'></p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_drift_html(path: str | Path, reports: Mapping[str, DriftReport], title: str = "Drift report") -> Path:
    """Write :func:`drift_html` atomically."""
    write_bytes_atomic(path, drift_html(reports, title).encode())
    return Path(path)


def _figures(rep: DriftReport) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    n_axes = 3 if rep.entropy_batch is not None else 2
    fig, axes = plt.subplots(1, n_axes, figsize=(5 * n_axes, 3.8))
    ax = axes[0]
    ax.bar(range(len(rep.psi)), rep.psi, color="#4c72b0")
    if rep.thresholds.psi_threshold is not None:
        ax.axhline(rep.thresholds.psi_threshold, color="#b00020", ls="--", label="threshold")
        ax.legend()
    ax.set(title="PSI per principal component", xlabel="component", ylabel="PSI")
    ax = axes[1]
    for P, label, color in ((rep.projection_reference, "reference", "#4c72b0"),
                            (rep.projection_batch, "batch", "#dd8452")):
        if P is not None and P.shape[1] >= 2:
            ax.scatter(P[:, 0], P[:, 1], s=6, alpha=0.5, label=label, color=color)
    ax.set(title="PCA projection", xlabel="PC1", ylabel="PC2")
    ax.legend()
    if n_axes == 3:
        ax = axes[2]
        ax.plot(rep.entropy_reference, marker=".", label="reference")
        ax.plot(rep.entropy_batch, marker=".", label="batch")
        ax.set(title="code-usage entropy per code field", xlabel="field", ylabel="bits")
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    plt.close(fig)
    return [base64.b64encode(buf.getvalue()).decode("ascii")]


# ---- helpers -----------------------------------------------------------------------------

def _check_matrix(X: np.ndarray, name: str, d: int | None = None) -> np.ndarray:
    X = np.asarray(X)
    if X.ndim != 2 or not np.issubdtype(X.dtype, np.number):
        raise ValueError(f"{name} must be a numeric (n, d) matrix; found {X.dtype} {X.shape}")
    if d is not None and X.shape[1] != d:
        raise ValueError(f"{name} has dimension {X.shape[1]}; the reference has {d}")
    X = X.astype(np.float32, copy=False)
    bad = ~np.isfinite(X).all(1)
    if bad.any():
        raise ValueError(f"{name} has non-finite values in {int(bad.sum())} rows, first at row "
                         f"{int(np.flatnonzero(bad)[0])}")
    return X


def _sample(X: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    if len(X) <= n:
        return X
    return X[np.sort(rng.choice(len(X), n, replace=False))]


def _unix_seconds(cutoff: Any) -> float:
    if isinstance(cutoff, (int, float, np.integer, np.floating)) and not isinstance(cutoff, bool):
        return float(cutoff)
    ts = pd.Timestamp(cutoff)
    if ts.tzinfo is None:
        ts = ts.tz_localize(dt.UTC)
    return ts.timestamp()


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _jsonable(o: Any) -> Any:
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, (np.bool_, bool)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        f = float(o)
        return f if math.isfinite(f) else None
    return o
