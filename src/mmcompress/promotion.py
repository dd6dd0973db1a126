"""The promotion gate: a pure decision from a challenger's metrics, the baseline and the champion.

Kept free of MLflow so it can be tested and reasoned about on its own; the tracking module
records the decision and moves registry aliases.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass(frozen=True)
class GateThresholds:
    """Limits from ``params.yaml`` ``promote:`` section."""

    max_recall_drop: float = 0.15
    max_hr_drop: float = 0.02
    champion_tolerance: float = 0.01
    max_bytes_per_item: float = 64
    latency_slo_ms: float = 50.0


@dataclass
class GateDecision:
    promoted: bool
    reasons: list[str] = field(default_factory=list)
    checks: dict[str, bool] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self, challenger: str, champion: str | None, override_reason: str | None = None) -> str:
        verdict = "PROMOTED to champion" if self.promoted else "REJECTED"
        lines = [f"### Promotion gate: {verdict}", "",
                 f"- challenger: `{challenger}`",
                 f"- compared with champion: `{champion or 'none (first model)'}`", ""]
        if override_reason:
            lines += [f"**Gate thresholds overridden for this run.** Reason given: {override_reason}", ""]
        lines += [f"- {'✅' if ok else '❌'} {reason}" for ok, reason in zip(self.checks.values(), self.reasons, strict=True)]
        return "\n".join(lines) + "\n"


def gate(challenger: dict, baseline: dict, champion: dict | None, t: GateThresholds) -> GateDecision:
    """Decide whether ``challenger`` replaces ``champion``.

    Each dict carries ``recall_at_10``, ``hr_at_10`` (downstream), ``bytes_per_item`` and
    ``latency_p50_ms``; ``baseline`` is the uncompressed run (recall 1.0 by definition).
    """
    checks: dict[str, bool] = {}
    reasons: list[str] = []

    def check(name: str, ok: bool, text: str) -> None:
        checks[name] = bool(ok)
        reasons.append(text)

    for key in ("recall_at_10", "hr_at_10", "bytes_per_item", "latency_p50_ms"):
        v = challenger.get(key)
        if v is None or not isinstance(v, int | float) or not math.isfinite(v):
            check(f"measured_{key}", False, f"{key} of the challenger is {v!r}: not measured or not a "
                                            "finite number (the gate passes only what it can compare)")
    r, rb = challenger["recall_at_10"], baseline.get("recall_at_10", 1.0)
    check("recall_vs_baseline", rb - r <= t.max_recall_drop,
          f"recall@10 {r:.4f} vs uncompressed {rb:.4f}: drop {rb - r:.4f} (limit {t.max_recall_drop})")
    h, hb = challenger["hr_at_10"], baseline["hr_at_10"]
    check("hr_vs_baseline", hb - h <= t.max_hr_drop,
          f"downstream HR@10 {h:.4f} vs uncompressed {hb:.4f}: drop {hb - h:.4f} (limit {t.max_hr_drop})")
    b = challenger["bytes_per_item"]
    check("bytes_budget", b <= t.max_bytes_per_item,
          f"bytes/item {b:g} (budget {t.max_bytes_per_item:g})")
    lat = challenger.get("latency_p50_ms")
    if lat is not None:
        check("latency_slo", lat <= t.latency_slo_ms,
              f"search latency p50 {lat:.2f} ms (SLO {t.latency_slo_ms:g} ms)")
    if champion is not None:
        for key, label, mine in (("recall_at_10", "recall@10", r), ("hr_at_10", "downstream HR@10", h)):
            theirs = champion.get(key)
            if theirs is None or not math.isfinite(float(theirs)):
                check(f"{key.split('_')[0]}_vs_champion", True,
                      f"{label}: the champion has no recorded value; not compared")
                continue
            check(f"{key.split('_')[0]}_vs_champion", mine >= theirs - t.champion_tolerance,
                  f"{label} {mine:.4f} vs champion {theirs:.4f} (tolerance {t.champion_tolerance})")
    return GateDecision(promoted=all(checks.values()), reasons=reasons, checks=checks)
