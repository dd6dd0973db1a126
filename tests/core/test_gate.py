"""The promotion gate decides from what was measured: every threshold with its reason, NaN or
missing figures rejected, the champion compared within its tolerance, an override said."""

from __future__ import annotations

import math

import pytest

from mmcompress.promotion import GateThresholds, gate

BASE = {"recall_at_10": 1.0, "hr_at_10": 0.16}
GOOD = {"recall_at_10": 0.95, "hr_at_10": 0.155, "bytes_per_item": 16, "latency_p50_ms": 0.4}
T = GateThresholds(max_recall_drop=0.15, max_hr_drop=0.02, champion_tolerance=0.01,
                   max_bytes_per_item=64, latency_slo_ms=50)


def test_a_challenger_within_every_threshold_is_promoted_with_each_reason():
    d = gate(GOOD, BASE, None, T)
    assert d.promoted and set(d.checks) == {"recall_vs_baseline", "hr_vs_baseline", "bytes_budget", "latency_slo"}
    assert all(d.checks.values()) and len(d.reasons) == len(d.checks)
    assert "drop 0.0500 (limit 0.15)" in d.reasons[0]


@pytest.mark.parametrize("key, value", [("recall_at_10", math.nan), ("hr_at_10", math.nan),
                                        ("bytes_per_item", math.inf), ("latency_p50_ms", None),
                                        ("recall_at_10", None)])
def test_a_figure_that_is_nan_or_missing_is_rejected_by_name(key, value):
    challenger = {**GOOD, key: value}
    if value is None:
        del challenger[key]
        if key == "recall_at_10":
            with pytest.raises(KeyError):  # the gate's own figure: a caller bug, not a decision
                gate(challenger, BASE, None, T)
            return
    d = gate(challenger, BASE, None, T)
    assert not d.promoted and d.checks[f"measured_{key}"] is False
    assert any(key in r and "not measured or not a finite number" in r for r in d.reasons)


@pytest.mark.parametrize("over, check", [({"recall_at_10": 0.80}, "recall_vs_baseline"),
                                         ({"hr_at_10": 0.13}, "hr_vs_baseline"),
                                         ({"bytes_per_item": 65}, "bytes_budget"),
                                         ({"latency_p50_ms": 51}, "latency_slo")])
def test_each_threshold_rejects_on_its_own(over, check):
    d = gate({**GOOD, **over}, BASE, None, T)
    assert not d.promoted and [k for k, ok in d.checks.items() if not ok] == [check]


def test_the_champion_is_compared_within_its_tolerance():
    champion = {"recall_at_10": 0.955, "hr_at_10": 0.16}
    within = gate(GOOD, BASE, champion, T)  # 0.95 vs 0.955 and 0.155 vs 0.16: both within 0.01
    assert within.promoted and within.checks["recall_vs_champion"] and within.checks["hr_vs_champion"]
    worse = gate({**GOOD, "recall_at_10": 0.94}, BASE, champion, T)
    assert not worse.promoted and worse.checks["recall_vs_champion"] is False
    assert "recall@10 0.9400 vs champion 0.9550 (tolerance 0.01)" in worse.reasons
    unrecorded = gate(GOOD, BASE, {"recall_at_10": 0.9}, T)  # an older champion without HR
    assert unrecorded.promoted and "the champion has no recorded value" in " ".join(unrecorded.reasons)


def test_the_note_says_when_thresholds_were_overridden():
    d = gate(GOOD, BASE, None, T)
    note = d.to_markdown("m v2 (RQ16x8)", None, "re-baselining on the 2026 catalog")
    assert "Gate thresholds overridden for this run.** Reason given: re-baselining on the 2026 catalog" in note
    assert "overridden" not in d.to_markdown("m v2 (RQ16x8)", None)
