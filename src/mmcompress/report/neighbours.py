"""What compression does to neighbourhoods: recall by modality coverage, example items, and
how much each modality shapes the fused neighbourhoods.

Query items that lack a modality are reported in their own group rather than averaged away:
their fused vectors rest on fewer signals, and a codec can fail them first.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mmcompress.evaluation.metrics import exact_topk, match_positions


@dataclass
class CoverageGroup:
    """Query items sharing the same set of present modalities."""

    present: tuple[str, ...]
    missing: tuple[str, ...]
    n_queries: int
    recall_at_10: float

    @property
    def key(self) -> str:
        return "+".join(self.present) if self.present else "none"


@dataclass
class ExampleItem:
    """One query item with its top neighbours from exact fused search and from the codec."""

    item_id: int
    title: str
    genres: str
    missing: tuple[str, ...]
    recall_at_10: float
    exact: list[dict[str, Any]] = field(default_factory=list)
    compressed: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class NeighbourhoodAnalysis:
    k: int
    recall_at_k: float
    per_query_recall: np.ndarray
    groups: list[CoverageGroup]
    examples: list[ExampleItem]


def catalog_rows(catalog_ids: np.ndarray, item_ids: np.ndarray) -> np.ndarray:
    """Row of each of ``item_ids`` in a catalog whose ids are ``catalog_ids``."""
    from mmcompress.errors import ArtifactError

    index = {int(i): r for r, i in enumerate(np.asarray(catalog_ids))}
    rows = np.fromiter((index.get(int(i), -1) for i in item_ids), dtype=np.int64, count=len(item_ids))
    if (rows < 0).any():
        bad = int(np.asarray(item_ids)[np.flatnonzero(rows < 0)[0]])
        raise ArtifactError(f"fused item id {bad} is not in the catalog ({int((rows < 0).sum())} missing)")
    return rows


def analyse_neighbourhoods(vectors: np.ndarray, base_rows: np.ndarray, query_rows: np.ndarray,
                           codec: Any, codes: np.ndarray, *, masks: dict[str, np.ndarray],
                           titles: np.ndarray, genres: np.ndarray | None, item_ids: np.ndarray,
                           k: int = 10, k_search: int = 50, n_examples: int = 4,
                           n_shown: int = 5) -> NeighbourhoodAnalysis:
    """Per-query recall@k of ``codec`` (search over its codes of the base rows) against exact
    search of the fused vectors, grouped by the query items' modality coverage; plus examples.

    ``masks``, ``titles``, ``genres`` and ``item_ids`` are aligned with the rows of ``vectors``;
    ``codes`` holds the codes of every row (as the compress stage writes them). Searching
    ``k_search`` and keeping the first ``k`` matches the evaluate stage, so the mean over all
    groups is the run's recall@k.
    """
    assert vectors.ndim == 2 and len(codes) == len(vectors) == len(titles) == len(item_ids), (
        vectors.shape, codes.shape, len(titles), len(item_ids))
    assert all(len(m) == len(vectors) for m in masks.values())
    xb, xq = vectors[base_rows], vectors[query_rows]
    k_search = min(max(k, k_search), len(xb))
    _, I_true = exact_topk(xb, xq, k_search, getattr(codec, "metric", "ip"))
    _, I_pred = codec.search(codes[base_rows], xq, k_search)
    I_pred = np.asarray(I_pred, dtype=np.int64)
    hits = match_positions(I_true[:, :k], I_pred[:, :k]) >= 0
    per_query = hits.sum(1) / np.maximum((I_true[:, :k] >= 0).sum(1), 1)

    names = list(masks)
    present = np.stack([masks[m][query_rows] for m in names], axis=1) if names else np.ones((len(xq), 0), bool)
    groups = []
    for pattern in sorted({tuple(p) for p in present.tolist()}, key=lambda p: (-sum(p), p)):
        sel = (present == np.array(pattern, dtype=bool)).all(1)
        groups.append(CoverageGroup(
            present=tuple(m for m, on in zip(names, pattern, strict=True) if on),
            missing=tuple(m for m, on in zip(names, pattern, strict=True) if not on),
            n_queries=int(sel.sum()), recall_at_10=float(per_query[sel].mean())))

    examples = []
    for j in _example_queries(per_query, present, n_examples):
        row = int(query_rows[j])
        exact_ids = set(I_true[j, :k].tolist())
        pred_ids = set(I_pred[j, :k].tolist())

        def describe(b: int, other: set[int]) -> dict[str, Any]:
            r = int(base_rows[b])
            return {"item_id": int(item_ids[r]), "title": str(titles[r]), "in_other_top_k": b in other}

        examples.append(ExampleItem(
            item_id=int(item_ids[row]), title=str(titles[row]),
            genres="" if genres is None else str(genres[row]),
            missing=tuple(m for m in names if not masks[m][row]),
            recall_at_10=float(per_query[j]),
            exact=[describe(int(b), pred_ids) for b in I_true[j, :n_shown] if b >= 0],
            compressed=[describe(int(b), exact_ids) for b in I_pred[j, :n_shown] if b >= 0]))
    return NeighbourhoodAnalysis(k=k, recall_at_k=float(per_query.mean()),
                                 per_query_recall=per_query, groups=groups, examples=examples)


def _example_queries(per_query: np.ndarray, present: np.ndarray, n: int) -> list[int]:
    """Queries spread from the worst recall to the best, with one lacking a modality if any."""
    if n <= 0 or len(per_query) == 0:
        return []
    order = np.argsort(per_query, kind="stable")
    picks = [int(order[i]) for i in np.unique(np.linspace(0, len(order) - 1, n).round().astype(int))]
    incomplete = np.flatnonzero(~present.all(1)) if present.shape[1] else np.array([], int)
    if len(incomplete) and not any(p in set(incomplete.tolist()) for p in picks):
        worst_incomplete = int(incomplete[np.argsort(per_query[incomplete], kind="stable")[0]])
        picks[len(picks) // 2] = worst_incomplete
    return list(dict.fromkeys(picks))


def modality_contribution(catalog: Any, fused: np.ndarray, k: int = 10, *,
                          max_queries: int | None = 2000, seed: int = 0) -> tuple[dict[str, float], str]:
    """Overlap of each modality's top-``k`` with the fused top-``k``, and where it was computed.

    Uses :func:`mmcompress.fusion.diagnostics.modality_contribution` when the fusion package
    provides it; otherwise the same statistic computed here (cosine of centred modality
    vectors, among the items having the modality, the item itself excluded).
    """
    try:
        from mmcompress.fusion.diagnostics import modality_contribution as fusion_contribution
    except ImportError:
        return _contribution(catalog.modalities, catalog.masks, fused, k, max_queries, seed), "report"
    return fusion_contribution(catalog, fused, k, max_queries=max_queries, seed=seed), "fusion.diagnostics"


def _contribution(modalities: dict[str, np.ndarray], masks: dict[str, np.ndarray], fused: np.ndarray,
                  k: int, max_queries: int | None, seed: int) -> dict[str, float]:
    rng = np.random.default_rng(seed)
    out = {}
    for name, X in modalities.items():
        rows = np.flatnonzero(masks[name])
        if len(rows) <= k:
            continue
        Z = X[rows] - X[rows].mean(0)
        Z /= np.maximum(np.linalg.norm(Z, axis=1, keepdims=True), 1e-12)
        F = np.asarray(fused[rows], dtype=np.float32)
        q = np.arange(len(rows))
        if max_queries is not None and len(rows) > max_queries:
            q = np.sort(rng.choice(len(rows), max_queries, replace=False))
        a, b = _top_k_excluding_self(Z, q, k), _top_k_excluding_self(F, q, k)
        out[name] = float(np.mean([len(np.intersect1d(x, y)) / k for x, y in zip(a, b, strict=True)]))
    return out


def _top_k_excluding_self(X: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    S = X[q] @ X.T
    S[np.arange(len(q)), q] = -np.inf
    return np.argsort(-S, axis=1, kind="stable")[:, :k]
