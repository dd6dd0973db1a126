"""The run report: one self-contained HTML page a reviewer of a promotion reads.

No scripts, no external CSS, fonts or images (plots are base64 PNG), so it opens offline, from
a file and inside the MLflow UI's artifact viewer. Every number shown sits in an element with
``data-metric`` (and ``data-codec`` / ``data-group`` / ... where it belongs to one) and its
full-precision value in ``data-value``, so a test or a reviewer's tool can read the page back
and compare it with the run's JSON reports.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmcompress.artifacts import write_bytes_atomic
from mmcompress.report import figures
from mmcompress.report.run import (
    CATALOG_DIR,
    COMPRESS_REPORT,
    DRIFT_REPORT,
    EVALUATE_REPORT,
    INDEX_METRICS,
    PROMOTE_REPORT,
    TRAIN_REPORT,
    RunRecord,
    load_run,
)
from mmcompress.tracking.history import DRIFT_STATISTICS

GATE_METRICS = (("recall_at_10", "recall@10", "higher"), ("hr_at_10", "downstream HR@10", "higher"),
                ("bytes_per_item", "bytes per item", "lower"), ("latency_p50_ms", "latency p50 (ms)", "lower"))
DRIFT_PLOT_STATISTICS = ("psi_max", "mmd_pvalue", "mean_shift", "cov_shift", "recon_error_ratio",
                         "recall_at_10_batch", "entropy_drop")


# ---- formatting ----------------------------------------------------------------------------

def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def fmt_value(v: Any, kind: str) -> str:
    """How a number of ``kind`` is written in the page (``—`` when absent or not finite)."""
    x = _num(v)
    if x is None or math.isnan(x):
        return "—"
    if math.isinf(x):
        return "∞"
    return {
        "score": lambda: f"{x:.3f}",
        "score4": lambda: f"{x:.4f}",
        "bytes": lambda: f"{x:.2f}".rstrip("0").rstrip("."),
        "ratio": lambda: f"{x:.1f}×",
        "percent": lambda: f"{100 * x:.1f}%",
        "rate": lambda: f"{x:,.0f}",
        "ms": lambda: f"{x:.2f}",
        "seconds": lambda: f"{x:.2f}",
        "sci": lambda: f"{x:.4g}",
        "int": lambda: f"{x:,.0f}",
        "signed": lambda: f"{x:+.4f}",
    }[kind]()


def _attrs(**attrs: Any) -> str:
    return "".join(f' {k.replace("_", "-")}="{html.escape(str(v), quote=True)}"'
                   for k, v in attrs.items() if v is not None)


def num_cell(v: Any, kind: str, *, tag: str = "td", cls: str | None = None, **data: Any) -> str:
    """A table cell (or span) holding a number, its full value in ``data-value``."""
    x = _num(v)
    value = None if x is None else json.dumps(x)
    attrs = _attrs(**{f"data_{k}": d for k, d in data.items()}, data_value=value)
    klass = f' class="{cls}"' if cls else ""
    return f"<{tag}{klass}{attrs}>{html.escape(fmt_value(v, kind))}</{tag}>"


def _e(s: Any) -> str:
    return html.escape(str(s), quote=True)


# ---- sections ------------------------------------------------------------------------------

@dataclass
class ReportInputs:
    run: RunRecord
    promotion: dict | None
    champion_metrics: dict | None
    drift_history: list[dict] | None
    faiss_baselines: list[dict] | None


def challenger_gate_metrics(run: RunRecord, promotion: dict | None) -> tuple[dict[str, Any], str]:
    """The challenger's numbers the gate judged: from the promotion record when it carries them,
    else as the promote stage derives them (cascade index figures where the index stage ran)."""
    if promotion and isinstance(promotion.get("challenger_metrics"), dict):
        return dict(promotion["challenger_metrics"]), "promotion record"
    ch = run.evaluate["codecs"][run.challenger]
    idx = run.index or {}
    baseline_hr = run.evaluate["baseline"].get("hr_at_10")
    return ({"recall_at_10": idx.get("recall_at_10", ch.get("recall_at_10")),
             "hr_at_10": ch.get("hr_at_10", baseline_hr),
             "bytes_per_item": idx.get("resident_bytes_per_item", ch.get("bytes_per_item")),
             "latency_p50_ms": idx.get("latency_p50_ms")},
            "cascade index + evaluation" if run.index else "evaluation")


def _section(sid: str, title: str, body: str, intro: str = "") -> str:
    intro_html = f"<p class='intro'>{intro}</p>" if intro else ""
    return f"<section id='{sid}' data-section='{sid}'><h2>{_e(title)}</h2>{intro_html}{body}</section>"


def _unavailable(what: str, why: str) -> str:
    return f"<p class='unavailable' data-unavailable='{_e(what)}'>Not available: {_e(why)}</p>"


def _header(r: ReportInputs) -> str:
    run = r.run
    fusion = run.train.get("fusion", {})
    ch = run.challenger
    items = [
        ("catalog items", num_cell(fusion.get("n_items"), "int", tag="span", metric="n_items")),
        ("fused dimension", num_cell(fusion.get("dim"), "int", tag="span", metric="dim")),
        ("query items", num_cell(fusion.get("n_queries"), "int", tag="span", metric="n_queries")),
        ("codecs compared", num_cell(len(run.evaluate["codecs"]), "int", tag="span", metric="n_codecs")),
        ("challenger", f"<span data-challenger='{_e(ch)}'><b>{_e(ch)}</b> <code>{_e(run.resolved_spec(ch))}</code></span>"),
    ]
    verdict = ""
    if r.promotion:
        ok = bool(r.promotion.get("promoted"))
        verdict = (f"<div class='verdict {'pass' if ok else 'fail'}'>"
                   f"{'PROMOTED to champion' if ok else 'REJECTED — champion unchanged'}</div>")
    facts = "".join(f"<div class='fact'><div class='k'>{_e(k)}</div><div class='v'>{v}</div></div>" for k, v in items)
    return (f"<header><h1>Compression run report</h1>{verdict}<div class='facts'>{facts}</div>"
            "<nav>" + " · ".join(f"<a href='#{s}'>{t}</a>" for s, t in (
                ("promotion", "Promotion"), ("pareto", "Recall vs bytes"), ("codecs", "Codecs"),
                ("modalities", "Modalities"), ("examples", "Examples"), ("drift", "Drift"))) + "</nav></header>")


def _promotion(r: ReportInputs) -> str:
    p = r.promotion
    if not p:
        return _section("promotion", "Promotion decision",
                        _unavailable("promotion", f"no promotion decision recorded ({PROMOTE_REPORT} absent)"))
    ok = bool(p.get("promoted"))
    checks = p.get("checks") or {}
    reasons = list(p.get("reasons") or [])
    rows = []
    for i, reason in enumerate(reasons):
        name, passed = (list(checks.items())[i] if i < len(checks) else (f"check_{i}", None))
        mark = "—" if passed is None else ("✓" if passed else "✗")
        cls = "" if passed is None else ("pass" if passed else "fail")
        rows.append(f"<li class='{cls}' data-check='{_e(name)}' data-passed='{str(passed).lower()}'>"
                    f"<span class='mark'>{mark}</span> {_e(reason)}</li>")
    meta = [("model version", p.get("version")), ("challenger", f"{p.get('challenger', '')} ({p.get('spec', '')})"),
            ("compared with champion", p.get("champion_before") or "none — first model"),
            ("MLflow run", p.get("run_id"))]
    meta_html = "".join(f"<tr><th>{_e(k)}</th><td data-field='{_e(k)}'>{_e(v if v is not None else '—')}</td></tr>"
                        for k, v in meta)
    ch_metrics, source = challenger_gate_metrics(r.run, p)
    champ = r.champion_metrics if r.champion_metrics is not None else p.get("champion_metrics")
    if champ:
        diff_rows = []
        for key, label, better in GATE_METRICS:
            a, b = _num(ch_metrics.get(key)), _num(champ.get(key))
            delta = None if a is None or b is None else a - b
            verdict = ""
            if delta is not None and delta != 0:
                good = (delta > 0) == (better == "higher")
                verdict = f"<td class='{'pass' if good else 'fail'}'>{'better' if good else 'worse'}</td>"
            else:
                verdict = "<td>—</td>" if delta is None else "<td>equal</td>"
            kind = "score4" if key != "bytes_per_item" and key != "latency_p50_ms" else ("bytes" if key == "bytes_per_item" else "ms")
            diff_rows.append(f"<tr data-gate-metric='{key}'><th>{_e(label)}</th>"
                             + num_cell(a, kind, metric=key, side="challenger")
                             + num_cell(b, kind, metric=key, side="champion")
                             + num_cell(delta, "signed", metric=key, side="delta") + verdict + "</tr>")
        diff = ("<table class='diff'><thead><tr><th>gate metric</th><th>challenger</th><th>champion</th>"
                "<th>Δ challenger − champion</th><th></th></tr></thead><tbody>" + "".join(diff_rows)
                + f"</tbody></table><p class='note'>Challenger figures: {_e(source)}; champion figures: "
                "recorded on the champion model version when it was promoted.</p>")
    else:
        diff = "<p data-champion='none'>No champion to compare with: this challenger is judged against the uncompressed baseline only.</p>"
    body = (f"<div class='verdict {'pass' if ok else 'fail'}' data-promoted='{str(ok).lower()}'>"
            f"{'PROMOTED — the challenger becomes the champion' if ok else 'REJECTED — the champion stays'}</div>"
            f"<table class='meta'>{meta_html}</table><h3>Gate checks</h3><ul class='checks'>{''.join(rows)}</ul>"
            f"<h3>Challenger versus champion</h3>{diff}")
    return _section("promotion", "Promotion decision", body)


def _pareto_points(r: ReportInputs) -> list[dict]:
    run = r.run
    pts: list[dict] = []
    b = run.evaluate["baseline"]
    pts.append({"label": "uncompressed", "series": "uncompressed", "spec": b.get("spec", "float32"),
                "bytes_per_item": _num(b.get("bytes_per_item")), "recall_at_10": _num(b.get("recall_at_10", 1.0))})
    for name in run.codec_names:
        m = run.evaluate["codecs"][name]
        pts.append({"label": name, "series": "codec", "spec": run.resolved_spec(name),
                    "bytes_per_item": _num(m.get("bytes_per_item")), "recall_at_10": _num(m.get("recall_at_10"))})
    for name, entry in run.train.get("codecs", {}).items():
        for cand in _auto_candidates(entry.get("auto_candidates"), entry.get("code_size")):
            pts.append({"label": cand["spec"], "series": "auto candidate", "spec": cand["spec"],
                        "bytes_per_item": cand["bytes_per_item"], "recall_at_10": cand["recall_at_10"],
                        "note": f"{name} candidate{': ' + cand['status'] if cand['status'] else ''}",
                        "plot_note": f"{name}: {cand['status']}" if cand["status"] in ("refused", "error", "skipped") else ""})
    for fb in r.faiss_baselines or []:
        if "skipped" in fb:
            continue
        pts.append({"label": fb["spec"], "series": "faiss", "spec": fb["spec"],
                    "bytes_per_item": _num(fb.get("bytes_per_item")), "recall_at_10": _num(fb.get("recall_at_10"))})
    return [p for p in pts if p["bytes_per_item"] is not None and p["recall_at_10"] is not None]


def _auto_candidates(raw: Any, code_size: Any = None) -> list[dict]:
    """Candidates of an ``auto`` codec that carry a recall figure (others cannot be plotted).

    Each candidate carries its own ``code_size`` (the budget is an upper bound); a report
    written before it did takes the auto codec's ``code_size``, as those searches only kept
    candidates of exactly the budget.
    """
    if isinstance(raw, dict):
        raw = raw.get("candidates", [{"spec": k, **v} for k, v in raw.items() if isinstance(v, dict)])
    out = []
    for c in raw or []:
        if not isinstance(c, dict) or "spec" not in c:
            continue
        recall = next((_num(c[k]) for k in ("recall_at_10", "val_recall_at_10", "recall") if _num(c.get(k)) is not None), None)
        size = next((_num(c[k]) for k in ("bytes_per_item", "code_size") if _num(c.get(k)) is not None), _num(code_size))
        if recall is not None and size is not None:
            out.append({"spec": str(c["spec"]), "recall_at_10": recall, "bytes_per_item": size,
                        "status": str(c.get("status", ""))})
    return out


def _pareto(r: ReportInputs) -> str:
    pts = _pareto_points(r)
    img = figures.pareto_figure([figures.ParetoPoint(p["label"], p["series"], p["bytes_per_item"], p["recall_at_10"],
                                                     p.get("plot_note", "")) for p in pts], r.run.challenger)
    frontier = {(p.label, p.series) for p in figures.pareto_frontier(
        [figures.ParetoPoint(p["label"], p["series"], p["bytes_per_item"], p["recall_at_10"])
         for p in pts if p["series"] != "auto candidate"])}
    rows = []
    for p in sorted(pts, key=lambda p: (p["bytes_per_item"], -p["recall_at_10"])):
        chosen = p["series"] == "codec" and p["label"] == r.run.challenger
        rows.append(f"<tr class='{'chosen' if chosen else ''}' data-point='{_e(p['label'])}' data-series='{_e(p['series'])}'>"
                    f"<td>{_e(p['series'])}</td><td><code>{_e(p['spec'])}</code>{' ★ chosen' if chosen else ''}"
                    f"{' <span class=note>' + _e(p['note']) + '</span>' if p.get('note') else ''}</td>"
                    + num_cell(p["bytes_per_item"], "bytes", metric="bytes_per_item", codec=p["label"], series=p["series"])
                    + num_cell(p["recall_at_10"], "score", metric="recall_at_10", codec=p["label"], series=p["series"])
                    + f"<td>{'yes' if (p['label'], p['series']) in frontier else ''}</td></tr>")
    note = "" if r.faiss_baselines else "<p class='note' data-unavailable='faiss'>No faiss baselines were given for this run.</p>"
    body = (f"<img class='plot' data-plot='pareto' alt='recall@10 versus bytes per item' src='{img}'>{note}"
            "<details><summary>Points on the plot</summary><table><thead><tr><th>series</th><th>spec</th>"
            "<th>bytes/item</th><th>recall@10</th><th>on frontier</th></tr></thead><tbody>"
            + "".join(rows) + "</tbody></table></details>")
    return _section("pareto", "Recall@10 versus bytes per item", body,
                    "Every codec tried in this run, faiss's own quantizers on the same vectors and queries, "
                    "and the uncompressed float32 vectors. Recall@10 is measured against exact search of the "
                    "fused vectors on held-out query items (auto candidates: on the auto search's own "
                    "validation queries, drawn from the training rows, so they are left out of the frontier; "
                    "candidates auto refused are labelled). The star marks the codec chosen as challenger.")


@dataclass(frozen=True)
class Column:
    key: str
    header: str
    kind: str
    value: Callable[[dict, dict], Any]
    title: str = ""


def _codec_columns(run: RunRecord) -> list[Column]:
    rank_key = next((k for m in run.evaluate["codecs"].values() for k in m if k.startswith("rank_stability_at_")),
                    "rank_stability_at_50")
    idx = run.index or {}

    def index_value(key: str) -> Callable[[dict, dict], Any]:
        return lambda m, ctx: idx.get(key) if ctx["name"] == run.challenger else None

    def encode_rate(m: dict, ctx: dict) -> Any:
        n, s = _num(m.get("n_base")), _num(m.get("encode_s"))
        return n / s if n and s else None

    return [
        Column("code_size", "code B", "bytes", lambda m, c: m.get("code_size"),
               "bytes per item of the fixed-length code"),
        Column("stored_bytes_per_item", "stored B", "bytes",
               lambda m, c: m.get("stored_bytes_per_item", c["compress"].get("stored_bytes_per_item")),
               "bytes per item stored after lossless entropy coding of the codes"),
        Column("entropy_saving", "saved", "percent",
               lambda m, c: m.get("entropy_saving", c["compress"].get("entropy_saving")),
               "share of the code bytes saved by entropy coding"),
        Column("compression_ratio", "ratio", "ratio", lambda m, c: m.get("compression_ratio"),
               "float32 vector size / code size"),
        Column("recall_at_10", "recall@10", "score", lambda m, c: m.get("recall_at_10"),
               "share of the exact top-10 found in the compressed top-10"),
        Column("one_recall_at_1", "1-R@1", "score", lambda m, c: m.get("one_recall_at_1"),
               "share of queries whose exact nearest neighbour is ranked first"),
        Column("ndcg_at_10", "nDCG@10", "score", lambda m, c: m.get("ndcg_at_10"),
               "nDCG@10 of the compressed ranking against the exact top-10"),
        Column(rank_key, f"τ@{rank_key.rsplit('_', 1)[-1]}", "score", lambda m, c: m.get(rank_key),
               f"rank stability: Kendall tau of the shared items of the exact and compressed top-{rank_key.rsplit('_', 1)[-1]}"),
        Column("mse", "MSE", "sci", lambda m, c: m.get("mse"), "mean squared reconstruction error per vector"),
        Column("hr_at_10", "HR@10", "score4", lambda m, c: m.get("hr_at_10"),
               "downstream hit rate@10 of held-out ratings recommended by item similarity"),
        Column("encode_items_per_s", "enc/s", "rate", encode_rate, "encode throughput (items per second, median)"),
        Column("search_qps", "q/s", "rate", lambda m, c: m.get("search_qps"),
               "compressed search throughput (queries per second, median)"),
        Column("latency_p50_ms", "p50 ms", "ms", index_value("latency_p50_ms"),
               "cascade index single-query latency, median (challenger only)"),
        Column("latency_p99_ms", "p99 ms", "ms", index_value("latency_p99_ms"),
               "cascade index single-query latency, 99th percentile (challenger only)"),
    ]


def _codecs(r: ReportInputs) -> str:
    run = r.run
    cols = _codec_columns(run)
    head = "<tr><th>codec</th><th>spec</th>" + "".join(
        f"<th title='{_e(c.title)}'>{_e(c.header)}</th>" for c in cols) + "</tr>"
    legend = "".join(f"<dt>{_e(c.header)}</dt><dd>{_e(c.title)}</dd>" for c in cols)
    b = run.evaluate["baseline"]
    base_values = {"code_size": b.get("bytes_per_item"), "compression_ratio": b.get("compression_ratio", 1.0),
                   "recall_at_10": b.get("recall_at_10"), "one_recall_at_1": b.get("one_recall_at_1"),
                   "ndcg_at_10": b.get("ndcg_at_10"), "hr_at_10": b.get("hr_at_10")}
    rows = ["<tr class='baseline' data-codec='uncompressed'><td>uncompressed</td>"
            f"<td><code>{_e(b.get('spec', 'float32'))}</code></td>"
            + "".join(num_cell(base_values.get(c.key), c.kind, metric=c.key, codec="uncompressed") for c in cols)
            + "</tr>"]
    for name in run.codec_names:
        m = run.evaluate["codecs"][name]
        ctx = {"name": name, "compress": run.compress.get(name, {})}
        chosen = name == run.challenger
        rows.append(f"<tr class='{'chosen' if chosen else ''}' data-codec='{_e(name)}'>"
                    f"<td>{_e(name)}{' ★' if chosen else ''}</td><td><code>{_e(run.resolved_spec(name))}</code></td>"
                    + "".join(num_cell(c.value(m, ctx), c.kind, metric=c.key, codec=name) for c in cols) + "</tr>")
    idx_note = ("Cascade latencies are the challenger's, measured by the index stage on single queries."
                if run.index else f"No cascade index metrics ({INDEX_METRICS} absent).")
    body = (f"<div class='scroll'><table class='codecs'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>"
            f"<dl class='legend'>{legend}</dl>"
            f"<p class='note'>Throughput: medians measured in this run on this machine. {_e(idx_note)}</p>")
    return _section("codecs", "Codecs", body)


def _modalities(r: ReportInputs, analysis: Any, contribution: dict | None, contribution_source: str,
                problem: str | None) -> str:
    if problem:
        return _section("modalities", "Modalities", _unavailable("modalities", problem))
    parts = []
    if contribution:
        names = list(contribution)
        img = figures.bar_figure(names, [contribution[n] for n in names],
                                 xlabel="overlap of the modality's top-10 with the fused top-10")
        rows = "".join(f"<tr data-modality='{_e(n)}'><td>{_e(n)}</td>"
                       + num_cell(contribution[n], "score", metric="contribution", modality=n) + "</tr>"
                       for n in names)
        parts.append("<h3>Contribution to the fused neighbourhoods</h3>"
                     f"<img class='plot' data-plot='contribution' alt='modality contribution' src='{img}'>"
                     f"<table><thead><tr><th>modality</th><th>top-10 overlap with fused</th></tr></thead><tbody>{rows}</tbody></table>"
                     f"<p class='note'>Per modality, over items having it: |top-10 in that modality ∩ top-10 in the fused "
                     f"space| / 10 (computed by {_e(contribution_source)}). One modality near 1 with the others near "
                     "chance means the fusion collapsed onto it.</p>")
    groups = analysis.groups
    labels = [g.key + (f" (no {', '.join(g.missing)})" if g.missing else "") for g in groups]
    img = figures.bar_figure(labels, [g.recall_at_10 for g in groups], xlabel=f"recall@10 of {r.run.challenger}",
                             reference=analysis.recall_at_k, reference_label="all query items",
                             annotations=[f"n={g.n_queries}" for g in groups])
    rows = "".join(
        f"<tr data-group='{_e(g.key)}'><td>{_e(', '.join(g.present) or 'none')}</td><td>{_e(', '.join(g.missing) or '—')}</td>"
        + num_cell(g.n_queries, "int", metric="n_queries", group=g.key)
        + num_cell(g.recall_at_10, "score", metric="recall_at_10", group=g.key, codec=r.run.challenger) + "</tr>"
        for g in groups)
    total = sum(g.n_queries for g in groups)
    rows += ("<tr class='total' data-group='all'><td>all query items</td><td></td>"
             + num_cell(total, "int", metric="n_queries", group="all")
             + num_cell(analysis.recall_at_k, "score", metric="recall_at_10", group="all", codec=r.run.challenger) + "</tr>")
    parts.append("<h3>Recall by modality coverage</h3>"
                 f"<img class='plot' data-plot='coverage' alt='recall by modality coverage' src='{img}'>"
                 "<table><thead><tr><th>modalities present</th><th>missing</th><th>query items</th>"
                 f"<th>recall@10 ({_e(r.run.challenger)})</th></tr></thead><tbody>{rows}</tbody></table>"
                 "<p class='note'>Query items grouped by which modalities they have; items missing a modality "
                 "are shown in their own group, not averaged away.</p>")
    return _section("modalities", "Modalities", "".join(parts))


def _examples(r: ReportInputs, analysis: Any, problem: str | None) -> str:
    if problem:
        return _section("examples", "Example items", _unavailable("examples", problem))
    cards = []
    for ex in analysis.examples:
        def items(lst: list[dict], side: str, other: str) -> str:
            lis = []
            for rank, n in enumerate(lst, 1):
                cls = "" if n["in_other_top_k"] else ("new" if side == "compressed" else "lost")
                flag = "" if n["in_other_top_k"] else f" <span class='flag'>not in {other} top-{analysis.k}</span>"
                lis.append(f"<li class='{cls}' data-rank='{rank}' data-item-id='{n['item_id']}'>{_e(n['title'])}{flag}</li>")
            return f"<ol data-side='{side}'>{''.join(lis)}</ol>"

        missing = f"<span class='missing'>missing: {_e(', '.join(ex.missing))}</span>" if ex.missing else ""
        cards.append(
            f"<div class='example' data-example='{ex.item_id}'><h4>{_e(ex.title)}</h4>"
            f"<div class='sub'>{_e(ex.genres.replace('|', ', '))} {missing} · recall@{analysis.k} "
            + num_cell(ex.recall_at_10, "score", tag="span", metric="recall_at_10", example=ex.item_id)
            + "</div><div class='cols'><div><h5>exact (fused vectors)</h5>"
            + items(ex.exact, "exact", "compressed") + f"</div><div><h5>compressed ({_e(r.run.challenger)})</h5>"
            + items(ex.compressed, "compressed", "exact") + "</div></div></div>")
    return _section("examples", "Example items: top-5 neighbours before and after compression",
                    f"<div class='examples'>{''.join(cards)}</div>",
                    "Query items from the held-out set, from the worst recall to the best. Neighbours flagged "
                    f"appear in one list's top-5 but not in the other's top-{analysis.k}.")


def _drift(r: ReportInputs) -> str:
    parts = []
    hist = r.drift_history or []
    if hist:
        names = []
        for stat in DRIFT_PLOT_STATISTICS:
            name = f"fused.{stat}"
            if any(name in h.get("metrics", {}) for h in hist):
                names.append(name)
        direction = {}
        for h in hist:
            direction.update(h.get("directions", {}))
        stats = [(n, n, direction.get(n)) for n in names]
        stats.append(("retrain", "retrain decision", None))
        img = figures.drift_history_figure(hist, stats)
        head = "<tr><th>run</th><th>retrain</th>" + "".join(f"<th>{_e(n)}</th>" for n, _, _ in stats[:-1]) + "</tr>"
        rows = []
        for h in hist:
            cells = "".join(
                num_cell(h["metrics"].get(n), "sci", metric=n, run=h.get("run_id"),
                         threshold=h.get("thresholds", {}).get(n)) for n, _, _ in stats[:-1])
            rows.append(f"<tr data-run='{_e(h.get('run_id'))}'><td>{_e(figures.run_label(h))} "
                        f"<code>{_e(str(h.get('run_id', ''))[:8])}</code></td>"
                        f"<td class='{'fail' if h.get('retrain') else 'pass'}'>{'yes' if h.get('retrain') else 'no'}</td>"
                        f"{cells}</tr>")
        parts.append(f"<h3>History over past drift runs</h3><img class='plot' data-plot='drift-history' "
                     f"alt='drift statistics over past runs' src='{img}'><div class='scroll'><table><thead>{head}</thead>"
                     f"<tbody>{''.join(rows)}</tbody></table></div>")
    else:
        parts.append(_unavailable("drift-history", "no past drift runs in the tracking store"))
    cur = r.run.drift
    if cur:
        retrain = bool(cur.get("retrain"))
        reasons = "".join(f"<li>{_e(x)}</li>" for x in cur.get("reasons", []))
        rows = []
        for modality, stats in cur.get("modalities", {}).items():
            t = stats.get("thresholds", {}) or {}
            cells = "".join(num_cell(stats.get(s), "sci", metric=f"{modality}.{s}", modality=modality,
                                     threshold=t.get(DRIFT_STATISTICS[s][0])) for s in DRIFT_STATISTICS)
            rows.append(f"<tr data-modality='{_e(modality)}'><td>{_e(modality)}</td>{cells}</tr>")
        head = "<tr><th>modality</th>" + "".join(
            f"<th>{_e(s)}<br><small>retrain {side} threshold</small></th>" for s, (_, side) in DRIFT_STATISTICS.items()) + "</tr>"
        parts.append(f"<h3>This run's drift check</h3><p class='{'fail' if retrain else 'pass'}' data-retrain='{str(retrain).lower()}'>"
                     f"<b>{'Retrain recommended' if retrain else 'No retrain needed'}</b> — batch: {_e(cur.get('batch', ''))}, "
                     f"{_e(cur.get('n_batch', '?'))} new vs {_e(cur.get('n_reference', '?'))} reference items</p>"
                     + (f"<ul>{reasons}</ul>" if reasons else "")
                     + f"<div class='scroll'><table><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table></div>")
    else:
        parts.append(f"<p class='note'>The drift stage has not run for this project ({_e(DRIFT_REPORT)} absent).</p>")
    return _section("drift", "Drift", "".join(parts))


CSS = """
:root{--fg:#1d232a;--muted:#5b6672;--line:#dfe3e8;--pass:#1b7f3b;--fail:#b3261e;--accent:#1f5fa8}
*{box-sizing:border-box}
body{font:14px/1.45 -apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--fg);margin:0;background:#f6f7f9}
main{max-width:1240px;margin:0 auto;padding:20px 28px 48px}
header{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin-bottom:18px}
h1{font-size:22px;margin:0 0 8px}h2{font-size:18px;margin:0 0 10px}h3{font-size:15px;margin:18px 0 8px}
h4{font-size:14px;margin:0 0 2px}h5{font-size:12px;margin:6px 0 4px;color:var(--muted);text-transform:uppercase;letter-spacing:.03em}
section{background:#fff;border:1px solid var(--line);border-radius:8px;padding:16px 20px;margin-bottom:18px}
.facts{display:flex;flex-wrap:wrap;gap:8px 28px;margin:10px 0}.fact .k{color:var(--muted);font-size:12px}.fact .v{font-size:15px}
nav a{color:var(--accent);text-decoration:none}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border-bottom:1px solid var(--line);padding:4px 9px;text-align:left;vertical-align:top}
td[data-value]{text-align:right;font-variant-numeric:tabular-nums}
thead th{background:#f0f2f5;font-weight:600}
tr.chosen td{background:#fff4e5;font-weight:600}tr.baseline td{color:var(--muted)}tr.total td{font-weight:600}
.scroll{overflow-x:auto}
img.plot{max-width:100%;display:block;margin:6px 0}
.verdict{display:inline-block;font-weight:700;padding:6px 12px;border-radius:6px;margin:4px 0 8px}
.verdict.pass{background:#e6f4ea;color:var(--pass)}.verdict.fail{background:#fce8e6;color:var(--fail)}
.pass{color:var(--pass)}.fail{color:var(--fail)}
ul.checks{list-style:none;padding-left:0}ul.checks li{margin:3px 0}.mark{display:inline-block;width:1.3em;font-weight:700}
.note,.intro{color:var(--muted);font-size:12.5px}.unavailable{color:var(--fail)}
code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;background:#f0f2f5;padding:1px 4px;border-radius:3px}
.examples{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}
.example{border:1px solid var(--line);border-radius:6px;padding:10px 12px}
.example .sub{color:var(--muted);font-size:12px}.example .cols{display:grid;grid-template-columns:1fr 1fr;gap:10px}
.example ol{margin:0;padding-left:20px;font-size:12.5px}li.new{color:#8a4b00}li.lost{color:var(--fail)}
.flag{font-size:11px;background:#f0f2f5;border-radius:3px;padding:0 4px;color:var(--muted)}
.missing{color:var(--fail)}
details summary{cursor:pointer;color:var(--accent);margin:4px 0}
dl.legend{display:grid;grid-template-columns:max-content 1fr max-content 1fr;gap:1px 10px;font-size:12px;color:var(--muted);margin:8px 0}
dl.legend dt{font-weight:600;color:var(--fg)}dl.legend dd{margin:0}
table.codecs{font-size:12.5px}table.codecs th,table.codecs td{padding:4px 7px;white-space:nowrap}
"""


def render_report(root: str | Path, *, promotion: dict | None = None, champion_metrics: dict | None = None,
                  drift_history: list[dict] | None = None, faiss_baselines: list[dict] | None = None,
                  n_examples: int = 4) -> str:
    """The HTML report of the run under ``root``.

    ``promotion``: the promote stage's result (default: ``reports/promote.json`` when present);
    ``champion_metrics``: the gate metrics of the champion it was compared with (``None``: no
    champion, or taken from ``promotion["champion_metrics"]``); ``drift_history``: from
    :func:`mmcompress.tracking.history.drift_history`; ``faiss_baselines``: from
    :func:`mmcompress.evaluation.faiss_baselines.evaluate_faiss_baselines` (default: the
    ``faiss_baselines`` entry of ``reports/evaluate.json`` when present).
    """
    run = load_run(root)
    inputs = ReportInputs(
        run=run, promotion=promotion if promotion is not None else run.promote,
        champion_metrics=champion_metrics, drift_history=drift_history,
        faiss_baselines=faiss_baselines if faiss_baselines is not None else run.evaluate.get("faiss_baselines"))
    analysis, contribution, source, problem = _neighbourhoods(run, n_examples)
    title = f"mmcompress report — {run.challenger} ({run.resolved_spec(run.challenger)})"
    sources = [TRAIN_REPORT, COMPRESS_REPORT, EVALUATE_REPORT, INDEX_METRICS, PROMOTE_REPORT, DRIFT_REPORT, CATALOG_DIR]
    footer = ("<footer class='note'>Read from " + ", ".join(f"<code>{_e(s)}</code>" for s in sources
                                                            if (run.root / s).exists()) + ".</footer>")
    body = "".join([_header(inputs), _promotion(inputs), _pareto(inputs), _codecs(inputs),
                    _modalities(inputs, analysis, contribution, source, problem),
                    _examples(inputs, analysis, problem), _drift(inputs), footer])
    return (f"<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>{_e(title)}</title>"
            f"<style>{CSS}</style></head><body><main>{body}</main></body></html>\n")


def _neighbourhoods(run: RunRecord, n_examples: int) -> tuple[Any, dict | None, str, str | None]:
    """Recall by coverage, examples and modality contribution; a reason instead when the run's
    catalog, vectors, codec or codes cannot be read (the rest of the report still renders)."""
    from mmcompress.errors import MMCompressError
    from mmcompress.report.neighbours import (
        analyse_neighbourhoods,
        catalog_rows,
        modality_contribution,
    )

    try:
        from mmcompress.codecs import load_codec
        from mmcompress.data import ItemCatalog

        fused = run.fused_arrays()
        catalog = ItemCatalog.load(run.root / CATALOG_DIR)
        catalog = catalog.subset(catalog_rows(catalog.item_ids, fused["item_ids"]))
        codec = load_codec(run.codec_path(run.challenger))
        codes = run.codes(run.challenger)
    except (MMCompressError, OSError, ImportError) as e:
        return None, None, "", f"{type(e).__name__}: {e}"
    if len(codes) != len(fused["vectors"]):
        return None, None, "", (f"codes of {run.challenger} have {len(codes)} rows, "
                                f"the fused vectors {len(fused['vectors'])}")
    attrs = catalog.attributes
    titles = attrs["title"].astype(str).to_numpy() if "title" in attrs else fused["item_ids"].astype(str)
    genres = attrs["genres"].astype(str).to_numpy() if "genres" in attrs else None
    analysis = analyse_neighbourhoods(fused["vectors"], fused["base_rows"], fused["query_rows"], codec, codes,
                                      masks=catalog.masks, titles=titles, genres=genres,
                                      item_ids=fused["item_ids"], n_examples=n_examples)
    contribution, source = modality_contribution(catalog, fused["vectors"])
    return analysis, contribution, source, None


def write_report(root: str | Path, out_path: str | Path, **kwargs: Any) -> Path:
    """Render the report of the run under ``root`` and write it to ``out_path`` atomically."""
    write_bytes_atomic(out_path, render_report(root, **kwargs).encode("utf-8"))
    return Path(out_path)


__all__: Sequence[str] = ("render_report", "write_report", "fmt_value", "challenger_gate_metrics")
