"""Two-sample shift statistics between a reference matrix and a new batch (rows = items)."""

from __future__ import annotations

import numpy as np


def pca_basis(reference: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, principal axes (n_components, d) and explained-variance ratios of ``reference``."""
    assert reference.ndim == 2 and len(reference) >= 2, reference.shape
    R = np.asarray(reference, dtype=np.float64)
    mean = R.mean(0)
    C = np.atleast_2d(np.cov(R, rowvar=False))
    var, vecs = np.linalg.eigh(C)
    order = np.argsort(var)[::-1]
    var, vecs = np.maximum(var[order], 0.0), vecs[:, order]
    n = max(1, min(n_components, len(R) - 1, len(var)))
    total = var.sum()
    ratio = var[:n] / total if total > 0 else np.zeros(n)
    return mean, vecs[:, :n].T, ratio


def mean_shift(reference: np.ndarray, batch: np.ndarray) -> float:
    """``||mean(batch) - mean(reference)||`` in units of the reference RMS spread ``sqrt(tr Σ_ref)``."""
    assert reference.ndim == 2 and batch.ndim == 2 and reference.shape[1] == batch.shape[1]
    R = np.asarray(reference, dtype=np.float64)
    B = np.asarray(batch, dtype=np.float64)
    spread = np.sqrt(R.var(0).sum())
    diff = np.linalg.norm(B.mean(0) - R.mean(0))
    return float(diff / spread) if spread > 0 else (0.0 if diff == 0 else float("inf"))


def covariance_shift(reference: np.ndarray, batch: np.ndarray) -> float:
    """Relative Frobenius distance ``||Σ_batch - Σ_ref||_F / ||Σ_ref||_F``."""
    assert reference.ndim == 2 and batch.ndim == 2 and reference.shape[1] == batch.shape[1]
    assert len(reference) >= 2 and len(batch) >= 2, (reference.shape, batch.shape)
    Cr = np.atleast_2d(np.cov(np.asarray(reference, dtype=np.float64), rowvar=False))
    Cb = np.atleast_2d(np.cov(np.asarray(batch, dtype=np.float64), rowvar=False))
    ref = np.linalg.norm(Cr)
    diff = np.linalg.norm(Cb - Cr)
    return float(diff / ref) if ref > 0 else (0.0 if diff == 0 else float("inf"))


def psi(reference: np.ndarray, batch: np.ndarray, n_bins: int = 10, eps: float = 1e-4) -> np.ndarray:
    """Population stability index per column, on bins at the reference's quantiles.

    ``sum_b (p_batch - p_ref) * ln(p_batch / p_ref)``; proportions are floored at ``eps``.
    """
    assert reference.ndim == 2 and batch.ndim == 2 and reference.shape[1] == batch.shape[1]
    assert n_bins >= 2
    out = np.empty(reference.shape[1])
    qs = np.linspace(0, 1, n_bins + 1)[1:-1]
    for j in range(reference.shape[1]):
        edges = np.unique(np.quantile(reference[:, j], qs))
        nb = len(edges) + 1
        pr = np.bincount(np.searchsorted(edges, reference[:, j], side="right"), minlength=nb) / len(reference)
        pb = np.bincount(np.searchsorted(edges, batch[:, j], side="right"), minlength=nb) / len(batch)
        pr, pb = np.maximum(pr, eps), np.maximum(pb, eps)
        out[j] = float(((pb - pr) * np.log(pb / pr)).sum())
    return out


def mmd_permutation_test(X: np.ndarray, Y: np.ndarray, *, permutations: int = 100,
                         seed: int = 0) -> tuple[float, float, float]:
    """RBF-kernel MMD² between samples ``X`` and ``Y`` with a permutation p-value.

    The bandwidth is the median pairwise distance of the pooled sample (median heuristic).
    Returns (mmd², p-value, bandwidth); p = (1 + #{permuted ≥ observed}) / (1 + permutations).
    """
    assert X.ndim == 2 and Y.ndim == 2 and X.shape[1] == Y.shape[1] and len(X) >= 2 and len(Y) >= 2
    Z = np.concatenate([X, Y]).astype(np.float64)
    n, m = len(X), len(Y)
    sq = (Z**2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * Z @ Z.T, 0.0)
    rng = np.random.default_rng(seed)
    probe = rng.choice(len(Z), min(len(Z), 500), replace=False)
    off = d2[np.ix_(probe, probe)][np.triu_indices(len(probe), 1)]
    med = float(np.median(off[off > 0])) if (off > 0).any() else 1.0
    K = np.exp(-d2 / (2 * med)).astype(np.float32)
    labels = np.zeros((len(Z), permutations + 1), dtype=np.float32)
    labels[:n, 0] = 1.0
    for p in range(1, permutations + 1):
        labels[rng.permutation(len(Z))[:n], p] = 1.0
    KL = K @ labels
    s_xx = (labels * KL).sum(0, dtype=np.float64)
    total = K.sum(dtype=np.float64)
    col = K.sum(0, dtype=np.float64) @ labels
    s_xy = col - s_xx
    s_yy = total - 2 * s_xy - s_xx
    stats = s_xx / n**2 + s_yy / m**2 - 2 * s_xy / (n * m)
    observed = float(stats[0])
    p_value = float((1 + (stats[1:] >= observed - 1e-12).sum()) / (1 + permutations))
    return observed, p_value, float(np.sqrt(med))


def unpack_fields(codes: np.ndarray, field_bits: list[int] | None) -> np.ndarray:
    """Split packed uint8 codes into their fields (MSB-first bit widths ``field_bits``).

    ``None`` (or all widths 8) means one field per byte. Returns (n, n_fields) int64.
    """
    codes = np.asarray(codes)
    assert codes.ndim == 2 and codes.dtype == np.uint8, (codes.dtype, codes.shape)
    if field_bits is None or all(b == 8 for b in field_bits):
        return codes.astype(np.int64)
    field_bits = [int(b) for b in field_bits]
    assert sum(field_bits) == 8 * codes.shape[1] and max(field_bits) <= 62, (field_bits, codes.shape)
    bits = np.unpackbits(codes, axis=1).astype(np.int64)
    out = np.empty((len(codes), len(field_bits)), dtype=np.int64)
    start = 0
    for j, w in enumerate(field_bits):
        out[:, j] = bits[:, start:start + w] @ (1 << np.arange(w - 1, -1, -1, dtype=np.int64))
        start += w
    return out


def code_entropy(codes: np.ndarray) -> np.ndarray:
    """Plug-in entropy (bits) of the values in each column of a code (or unpacked field) array."""
    assert codes.ndim == 2, codes.shape
    codes = np.asarray(codes)
    out = np.empty(codes.shape[1])
    for j in range(codes.shape[1]):
        _, counts = np.unique(codes[:, j], return_counts=True)
        p = counts / len(codes)
        p = p[p > 0]
        out[j] = float(-(p * np.log2(p)).sum()) + 0.0
    return out
