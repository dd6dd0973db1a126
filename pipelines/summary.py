"""Print the demo's summary table: one row per codec, the baseline, and the gate's decision."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipelines.config import Layout

COLUMNS = (("codec", "{}"), ("spec", "{}"), ("bytes/item", "{:g}"), ("ratio", "{:.1f}x"),
           ("recall@10", "{:.3f}"), ("nDCG@10", "{:.3f}"), ("HR@10", "{:.4f}"), ("stored B/item", "{:.2f}"))


def summary_rows(root: Path) -> list[tuple]:
    L = Layout(root)
    ev = json.loads((L.reports_dir / "evaluate.json").read_text())
    tr = json.loads((L.reports_dir / "train.json").read_text())
    b = ev["baseline"]
    rows = [("uncompressed", b["spec"], b["bytes_per_item"], 1.0, 1.0, 1.0, b.get("hr_at_10"), None)]
    for name, m in sorted(ev["codecs"].items(), key=lambda kv: kv[1]["bytes_per_item"]):
        rows.append((name, tr["codecs"][name]["resolved_spec"], m["bytes_per_item"], m["compression_ratio"],
                     m["recall_at_10"], m.get("ndcg_at_10"), m.get("hr_at_10"), m.get("stored_bytes_per_item")))
    return rows


def format_table(rows: list[tuple]) -> str:
    cells = [[h for h, _ in COLUMNS]] + [
        ["—" if v is None else fmt.format(v) for (_, fmt), v in zip(COLUMNS, r, strict=True)] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(COLUMNS))]
    line = lambda c: "| " + " | ".join(x.ljust(w) for x, w in zip(c, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
                      *map(line, cells[1:])])


def main(root: Path = Path(".")) -> int:
    L = Layout(root)
    if not (L.reports_dir / "evaluate.json").exists():
        print("no evaluation found: run `dvc repro` first", file=sys.stderr)
        return 1
    print(format_table(summary_rows(root)))
    promote = L.reports_dir / "promote.json"
    if promote.exists():
        p = json.loads(promote.read_text())
        verdict = "promoted to champion" if p["promoted"] else "rejected (champion unchanged)"
        print(f"\nchallenger {p['challenger']} ({p['spec']}) → version {p['version']}: {verdict}")
        for r in p["reasons"]:
            print(f"  - {r}")
    index = L.metrics_dir / "index.json"
    if index.exists():
        i = json.loads(index.read_text())
        print(f"\ncascade index: recall@10 {i.get('recall_at_10', float('nan')):.3f}, "
              f"{i.get('resident_bytes_per_item', float('nan')):.1f} resident bytes/item, "
              f"p50 {i.get('latency_p50_ms', float('nan')):.2f} ms")
    if (L.reports_dir / "report.html").exists():
        print(f"\nreport: {(L.reports_dir / 'report.html').resolve()}")
    print("MLflow:  .venv/bin/mlflow ui --backend-store-uri sqlite:///mlruns.db")
    print("serve:   .venv/bin/mmcompress serve --port 8000")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
