"""The report's plots, drawn with matplotlib's Agg backend and embedded as base64 PNG data URIs."""

from __future__ import annotations

import base64
import datetime as dt
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

SERIES_STYLE = {
    "codec": {"marker": "o", "color": "#1f77b4", "s": 46, "label": "pipeline codecs"},
    "auto candidate": {"marker": "x", "color": "#7f7f7f", "s": 30, "label": "auto candidates"},
    "faiss": {"marker": "^", "color": "#ff7f0e", "s": 46, "label": "faiss baselines"},
    "uncompressed": {"marker": "s", "color": "#000000", "s": 46, "label": "uncompressed (float32)"},
}


@dataclass(frozen=True)
class ParetoPoint:
    """One codec on the recall-versus-size plane."""

    label: str
    series: str
    bytes_per_item: float
    recall_at_10: float
    note: str = ""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def figure_data_uri(fig) -> str:
    """PNG bytes of ``fig`` as a ``data:`` URI; the figure is closed."""
    plt = _pyplot()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    finally:
        plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def pareto_frontier(points: Sequence[ParetoPoint]) -> list[ParetoPoint]:
    """Points that no other point dominates (no larger and at least as good, better in one),
    smallest first; ties stay."""
    def dominated(p: ParetoPoint) -> bool:
        return any(q.bytes_per_item <= p.bytes_per_item and q.recall_at_10 >= p.recall_at_10
                   and (q.bytes_per_item < p.bytes_per_item or q.recall_at_10 > p.recall_at_10)
                   for q in points)

    return sorted((p for p in points if not dominated(p)), key=lambda p: (p.bytes_per_item, -p.recall_at_10))


def pareto_figure(points: Sequence[ParetoPoint], chosen: str | None) -> str:
    """recall@10 against bytes per item (log scale) for every series, the frontier and the chosen codec."""
    plt = _pyplot()
    from matplotlib.ticker import FixedLocator, NullLocator

    fig, ax = plt.subplots(figsize=(8.6, 5.0))
    for series, style in SERIES_STYLE.items():
        pts = [p for p in points if p.series == series]
        if pts:
            ax.scatter([p.bytes_per_item for p in pts], [p.recall_at_10 for p in pts], marker=style["marker"],
                       c=style["color"], s=style["s"], label=style["label"], zorder=3)
    frontier = pareto_frontier([p for p in points if p.series != "auto candidate"])
    if len(frontier) > 1:
        ax.step([p.bytes_per_item for p in frontier], [p.recall_at_10 for p in frontier], where="post",
                color="#9e9e9e", linestyle="--", linewidth=1, label="Pareto frontier", zorder=2)
    for p, (x, y) in zip(points, _label_positions(points), strict=True):
        if p.series in ("codec", "faiss", "uncompressed") or p.note:
            text = f"{p.label} ({p.note})" if p.note else p.label
            ax.annotate(text, (p.bytes_per_item, p.recall_at_10), xytext=(x, y), textcoords="data",
                        fontsize=7.5, color=SERIES_STYLE[p.series]["color"], va="center",
                        arrowprops={"arrowstyle": "-", "color": "#c0c0c0", "linewidth": 0.6}
                        if abs(y - p.recall_at_10) > 1e-9 else None)
    chosen_pts = [p for p in points if p.series == "codec" and p.label == chosen]
    if chosen_pts:
        c = chosen_pts[0]
        ax.scatter([c.bytes_per_item], [c.recall_at_10], marker="*", s=320, facecolors="none",
                   edgecolors="#d62728", linewidths=1.8, label=f"chosen: {chosen}", zorder=4)
    sizes = [p.bytes_per_item for p in points if p.bytes_per_item > 0]
    ax.set_xscale("log", base=2)
    if sizes:
        lo, hi = math.floor(math.log2(min(sizes))), math.ceil(math.log2(max(sizes)))
        ticks = [2.0 ** e for e in range(lo, hi + 1)]
        ax.xaxis.set_major_locator(FixedLocator(ticks))
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_xlim(2.0 ** (lo - 0.3), 2.0 ** (hi + 0.5))
    low = min([1.0] + [p.recall_at_10 for p in points])
    ax.set_ylim(max(0.0, low - 0.1) if low > 0.3 else -0.02, 1.04)
    ax.set_xlabel("bytes per item (code size, log scale)")
    ax.set_ylabel("recall@10 vs exact search")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8, framealpha=0.9)
    return figure_data_uri(fig)


def _label_positions(points: Sequence[ParetoPoint], min_gap: float = 0.03) -> list[tuple[float, float]]:
    """Label anchors right of each point, spread vertically where points share a size."""
    pos = [(p.bytes_per_item * 1.07, p.recall_at_10) for p in points]
    by_size: dict[float, list[int]] = {}
    for i, p in enumerate(points):
        if p.series != "auto candidate" or p.note:
            by_size.setdefault(p.bytes_per_item, []).append(i)
    for idx in by_size.values():
        idx.sort(key=lambda i: points[i].recall_at_10)
        placed: list[float] = []
        for i in idx:
            y = points[i].recall_at_10
            if placed and y - placed[-1] < min_gap:
                y = placed[-1] + min_gap
            placed.append(y)
            pos[i] = (pos[i][0], y)
    return pos


def bar_figure(labels: Sequence[str], values: Sequence[float], *, xlabel: str,
               reference: float | None = None, reference_label: str = "", xlim: tuple[float, float] = (0, 1),
               annotations: Sequence[str] | None = None) -> str:
    """Horizontal bars (one per label), optionally with a vertical reference line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.2, 0.45 * len(labels) + 1.1))
    y = list(range(len(labels)))[::-1]
    ax.barh(y, values, color="#1f77b4", height=0.6)
    ax.set_yticks(y)
    ax.set_yticklabels(labels, fontsize=8.5)
    for yi, v, note in zip(y, values, annotations or [""] * len(values), strict=True):
        ax.text(v + 0.01 * (xlim[1] - xlim[0]), yi, f"{v:.3f}{'  ' + note if note else ''}", va="center", fontsize=8)
    if reference is not None:
        ax.axvline(reference, color="#d62728", linestyle="--", linewidth=1, label=reference_label)
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), fontsize=8, frameon=False)
    ax.set_xlim(*xlim)
    ax.set_xlabel(xlabel)
    ax.grid(True, axis="x", alpha=0.3)
    return figure_data_uri(fig)


def drift_history_figure(history: Sequence[dict], statistics: Sequence[tuple[str, str, str | None]]) -> str:
    """One panel per statistic over past drift runs, with its threshold as a dashed line.

    ``statistics``: (metric name, title, direction) with direction ``"above"`` / ``"below"``
    saying on which side of the threshold a run calls for retraining.
    """
    plt = _pyplot()
    n = len(statistics)
    ncols = min(3, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.7 * nrows), squeeze=False)
    x = list(range(len(history)))
    labels = [f"#{i + 1} {run_label(h)}" for i, h in enumerate(history)]
    for ax, (name, title, direction) in zip(axes.ravel(), statistics, strict=False):
        values = [h.get("metrics", {}).get(name, float("nan")) for h in history]
        thresholds = [h.get("thresholds", {}).get(name) for h in history]
        ax.plot(x, values, marker="o", color="#1f77b4", linewidth=1.2)
        if any(t is not None for t in thresholds):
            ax.plot(x, [float("nan") if t is None else t for t in thresholds], color="#d62728",
                    linestyle="--", linewidth=1, drawstyle="steps-mid")
            bad = [i for i, (v, t) in enumerate(zip(values, thresholds, strict=True))
                   if t is not None and not math.isnan(v) and (v > t if direction == "above" else v < t)]
            if bad:
                ax.scatter([x[i] for i in bad], [values[i] for i in bad], color="#d62728", zorder=3, s=30)
        if name == "retrain":
            ax.set_ylim(-0.15, 1.15)
            ax.set_yticks([0, 1])
            ax.set_yticklabels(["no", "yes"])
        side = {"above": "retrain above", "below": "retrain below"}.get(direction or "", "")
        ax.set_title(f"{title}" + (f"  ({side} dashed)" if side else ""), fontsize=8.5)
        ax.set_xticks(x)
        ax.set_xticklabels(labels, rotation=35, ha="right", fontsize=7)
        ax.grid(True, alpha=0.3)
        ax.tick_params(axis="y", labelsize=7.5)
    for ax in axes.ravel()[n:]:
        ax.set_visible(False)
    fig.tight_layout()
    return figure_data_uri(fig)


def run_label(h: dict) -> str:
    t = h.get("start_time")
    if isinstance(t, int | float):
        return dt.datetime.fromtimestamp(t / 1000, tz=dt.UTC).strftime("%m-%d %H:%M")
    return str(h.get("run_id", "?"))[:8]
