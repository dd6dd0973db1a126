"""The run report shows the run's own numbers, complete and self-contained."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import shutil

import numpy as np
import pytest

from mmcompress.artifacts import arrays_path
from mmcompress.errors import ArtifactError
from mmcompress.report import render_report, write_report
from tests.report.conftest import DIGITS_CHALLENGER, assert_shows, cells, one_cell, parse_page

SCORES = ("recall_at_10", "one_recall_at_1", "ndcg_at_10", "rank_stability_at_50", "mse", "code_size",
          "compression_ratio", "search_qps", "hr_at_10", "stored_bytes_per_item", "entropy_saving")


@pytest.fixture(scope="module")
def report(digits_run) -> dict:
    html = render_report(digits_run["root"], champion_metrics=digits_run["champion_metrics"],
                         faiss_baselines=digits_run["faiss_baselines"])
    root = digits_run["root"]
    return {"html": html, "page": parse_page(html),
            "evaluate": json.loads((root / "reports" / "evaluate.json").read_text()),
            "compress": json.loads((root / "reports" / "compress.json").read_text()),
            "index": json.loads((root / "metrics" / "index.json").read_text()),
            "promote": json.loads((root / "reports" / "promote.json").read_text())}


def test_codec_table_shows_every_codec_with_the_runs_metrics(report):
    page, ev = report["page"], report["evaluate"]
    assert {c["data-codec"] for c in cells(page, metric="recall_at_10")
            if "data-codec" in c and "data-series" not in c and "data-group" not in c} == set(ev["codecs"]) | {"uncompressed"}
    checked = 0
    for name, m in ev["codecs"].items():
        for key in SCORES:
            if key in m:
                assert_shows(next(c for c in cells(page, metric=key, codec=name)
                                  if c["tag"] == "td" and "data-series" not in c), m[key])
                checked += 1
        rate = next(c for c in cells(page, metric="encode_items_per_s", codec=name))
        assert_shows(rate, m["n_base"] / m["encode_s"])
    assert checked >= len(ev["codecs"]) * 10


def test_stored_bytes_come_from_entropy_coding(report):
    for name, c in report["compress"].items():
        cell = next(x for x in cells(report["page"], metric="stored_bytes_per_item", codec=name) if x["tag"] == "td")
        assert_shows(cell, c["stored_bytes_per_item"])
        assert float(cell["data-value"]) < report["evaluate"]["codecs"][name]["code_size"]


def test_cascade_latency_is_shown_for_the_challenger_only(report):
    page, idx = report["page"], report["index"]
    for key in ("latency_p50_ms", "latency_p99_ms"):
        assert_shows(one_cell(page, metric=key, codec=DIGITS_CHALLENGER), idx[key])
        for name in report["evaluate"]["codecs"]:
            if name != DIGITS_CHALLENGER:
                cell = one_cell(page, metric=key, codec=name)
                assert cell["text"] == "—" and "data-value" not in cell


def test_pareto_points_cover_codecs_faiss_and_uncompressed(report, digits_run):
    page, ev = report["page"], report["evaluate"]
    points = {(c["data-series"], c["data-codec"]): c for c in cells(page, metric="recall_at_10") if "data-series" in c}
    expected = {("codec", n) for n in ev["codecs"]} | {("uncompressed", "uncompressed")} | {
        ("faiss", f["spec"]) for f in digits_run["faiss_baselines"] if "skipped" not in f}
    assert set(points) == expected
    for name, m in ev["codecs"].items():
        assert_shows(points[("codec", name)], m["recall_at_10"])
    for f in digits_run["faiss_baselines"]:
        assert_shows(points[("faiss", f["spec"])], f["recall_at_10"])
        assert_shows(one_cell(page, metric="bytes_per_item", series="faiss", codec=f["spec"]), f["bytes_per_item"])
    assert len(cells(page, plot="pareto")) == 1
    chosen = [c for c in page.cells if c.get("data-point") == DIGITS_CHALLENGER and c.get("data-series") == "codec"]
    assert len(chosen) == 1 and "chosen" in chosen[0]["class"]


def test_pareto_frontier_marks_exactly_the_undominated_points(report):
    rows = [c for c in report["page"].cells if "data-point" in c and c["data-series"] != "auto candidate"]
    pts = []
    for r in rows:
        b = one_cell(report["page"], metric="bytes_per_item", series=r["data-series"], codec=r["data-point"])
        rc = one_cell(report["page"], metric="recall_at_10", series=r["data-series"], codec=r["data-point"])
        pts.append((float(b["data-value"]), float(rc["data-value"]), r["text"].rstrip().endswith("yes")))
    for b, rc, on in pts:
        dominated = any(b2 <= b and r2 >= rc and (b2 < b or r2 > rc) for b2, r2, _ in pts)
        assert on == (not dominated), (b, rc)
    assert any(on for *_, on in pts) and not all(on for *_, on in pts)


def test_promotion_shows_decision_checks_and_champion_diff(report, digits_run):
    page, p = report["page"], report["promote"]
    verdict = [c for c in page.cells if "data-promoted" in c]
    assert verdict and all(c["data-promoted"] == str(p["promoted"]).lower() for c in verdict)
    shown = {c["data-check"]: c for c in page.cells if "data-check" in c}
    assert list(shown) == list(p["checks"])
    for (name, passed), reason in zip(p["checks"].items(), p["reasons"], strict=True):
        assert shown[name]["data-passed"] == str(passed).lower()
        assert reason in shown[name]["text"]
    assert p["champion_before"] in report["html"]
    champ, chall = digits_run["champion_metrics"], digits_run["challenger_metrics"]
    for key in ("recall_at_10", "hr_at_10", "bytes_per_item", "latency_p50_ms"):
        assert float(one_cell(page, metric=key, side="challenger")["data-value"]) == pytest.approx(chall[key])
        assert float(one_cell(page, metric=key, side="champion")["data-value"]) == pytest.approx(champ[key])
        assert float(one_cell(page, metric=key, side="delta")["data-value"]) == pytest.approx(chall[key] - champ[key])


def test_recall_by_coverage_groups_adds_up_to_the_runs_recall(report, digits_run):
    from mmcompress.data import ItemCatalog

    page, ev = report["page"], report["evaluate"]
    root = digits_run["root"]
    groups = [c for c in cells(page, metric="recall_at_10") if "data-group" in c and c["data-group"] != "all"]
    counts = {c["data-group"]: int(float(one_cell(page, metric="n_queries", group=c["data-group"])["data-value"]))
              for c in groups}
    catalog = ItemCatalog.load(root / "data" / "catalog")
    q = np.load(root / "artifacts" / "fused" / "query_rows.npy")
    expected: dict[str, int] = {}
    for row in q:
        key = "+".join(m for m in catalog.modality_names if catalog.masks[m][row])
        expected[key] = expected.get(key, 0) + 1
    assert counts == expected and len(expected) >= 3
    mean = sum(float(c["data-value"]) * counts[c["data-group"]] for c in groups) / len(q)
    run_recall = ev["codecs"][DIGITS_CHALLENGER]["recall_at_10"]
    assert mean == pytest.approx(run_recall, abs=1e-12)
    assert_shows(one_cell(page, metric="recall_at_10", group="all"), run_recall)


def test_examples_show_exact_and_compressed_top5(report, digits_run):
    from mmcompress.codecs import load_codec

    root = digits_run["root"]
    fused = root / "artifacts" / "fused"
    X, ids = np.load(fused / "vectors.npy"), np.load(fused / "item_ids.npy")
    base = np.load(fused / "base_rows.npy")
    codec = load_codec(root / "artifacts" / "codecs" / DIGITS_CHALLENGER / "codec.json")
    codes = np.load(root / "artifacts" / "codes" / f"{DIGITS_CHALLENGER}.npy")[base]
    row_of = {int(i): r for r, i in enumerate(ids)}
    titles = {int(i): f"#{i - 1000} " for i in ids}
    examples = [c for c in report["page"].cells if "data-example" in c and c["tag"] == "div"]
    assert len(examples) == 4
    for ex in examples:
        item = int(ex["data-example"])
        xq = X[row_of[item]][None]
        exact = ids[base[np.argsort(-(X[base] @ xq[0]), kind="stable")[:10]]]
        _, found = codec.search(codes, xq, 50)
        compressed = ids[base[found[0, :10]]]
        for side, want, other in (("exact", exact, compressed), ("compressed", compressed, exact)):
            lis = [c for c in report["page"].cells if c["tag"] == "li" and c["context"].get("data-example") == str(item)
                   and c["context"].get("data-side") == side]
            assert [int(c["data-item-id"]) for c in lis] == want[:5].tolist()
            for c in lis:
                assert titles[int(c["data-item-id"])] in c["text"]
                assert ("not in" in c["text"]) == (int(c["data-item-id"]) not in set(other.tolist()))
    recalls = [float(one_cell(report["page"], metric="recall_at_10", example=e["data-example"])["data-value"])
               for e in examples]
    assert recalls == sorted(recalls) and recalls[0] < recalls[-1]


def test_modality_contribution_matches_fusion_diagnostics(report, digits_run):
    from mmcompress.data import ItemCatalog
    from mmcompress.fusion.diagnostics import modality_contribution
    from mmcompress.report.neighbours import _contribution

    root = digits_run["root"]
    catalog = ItemCatalog.load(root / "data" / "catalog")
    X = np.load(root / "artifacts" / "fused" / "vectors.npy")
    expected = modality_contribution(catalog, X, 10)
    assert set(expected) == {"upper", "lower", "ink"}
    for m, v in expected.items():
        assert_shows(one_cell(report["page"], metric="contribution", modality=m), v)
    own = _contribution(catalog.modalities, catalog.masks, X, 10, 300, 0)
    ref = modality_contribution(catalog, X, 10, max_queries=300, seed=0)
    assert own == pytest.approx(ref, abs=0.01)


def test_contribution_fallback_scores_identity_one_and_noise_near_chance():
    from mmcompress.report.neighbours import _contribution

    rng = np.random.default_rng(0)
    F = rng.standard_normal((400, 16)).astype(np.float32)
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    mods = {"same": F.copy(), "noise": rng.standard_normal((400, 8)).astype(np.float32)}
    masks = {"same": np.ones(400, bool), "noise": np.ones(400, bool)}
    fused = F - F.mean(0)
    fused /= np.linalg.norm(fused, axis=1, keepdims=True)
    out = _contribution(mods, masks, fused, 10, None, 0)
    assert out["same"] == pytest.approx(1.0)
    assert out["noise"] < 0.1


def test_page_is_self_contained(report):
    page = report["page"]
    assert page.tags.get("script", 0) == 0 and page.tags.get("link", 0) == 0 and page.tags.get("iframe", 0) == 0
    imgs = [u for u in page.urls if not u.startswith("#")]
    assert imgs and all(u.startswith("data:image/png;base64,") for u in imgs)
    assert not re.search(r"url\(|@import|https?://", report["html"].split("<body>")[0])
    from PIL import Image

    plots = {c["data-plot"] for c in page.cells if "data-plot" in c}
    assert plots == {"pareto", "contribution", "coverage"}
    for u in imgs:
        with Image.open(io.BytesIO(base64.b64decode(u.split(",", 1)[1]))) as im:
            im.load()
            assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 100


def test_auto_candidates_with_recall_are_plotted(digits_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(digits_run["root"], root)
    train = json.loads((root / "reports" / "train.json").read_text())
    cands = [{"spec": "PQ4x8", "code_size": 4, "recall_at_10": 0.61, "status": "ok"},
             {"spec": "OPQ8,PQ8x8", "recall_at_10": 0.66, "status": "chosen"},  # size: the auto codec's
             {"spec": "RQ8x8", "recall_at_10": None, "status": "error"}]  # no recall: cannot be plotted
    train["codecs"][DIGITS_CHALLENGER]["auto_candidates"] = cands
    (root / "reports" / "train.json").write_text(json.dumps(train))
    page = parse_page(render_report(root, faiss_baselines=[]))
    auto = {c["data-codec"]: float(c["data-value"]) for c in cells(page, metric="recall_at_10", series="auto candidate")}
    assert auto == {"PQ4x8": 0.61, "OPQ8,PQ8x8": 0.66}
    sizes = {c["data-codec"]: float(c["data-value"]) for c in cells(page, metric="bytes_per_item", series="auto candidate")}
    assert sizes == {"PQ4x8": 4.0, "OPQ8,PQ8x8": float(train["codecs"][DIGITS_CHALLENGER]["code_size"])}
    assert any("data-unavailable" in c and c["data-unavailable"] == "faiss" for c in page.cells)


def test_optional_reports_missing_are_said_not_hidden(digits_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(digits_run["root"], root)
    for f in ("reports/promote.json", "metrics/index.json", "reports/drift/drift.json"):
        (root / f).unlink()
    html = render_report(root)
    page = parse_page(html)
    unavailable = {c["data-unavailable"] for c in page.cells if "data-unavailable" in c}
    assert {"promotion", "drift-history", "faiss"} <= unavailable
    assert all(c["text"] == "—" for c in cells(page, metric="latency_p50_ms"))
    assert "metrics/index.json absent" in html and "drift stage has not run" in html


def test_missing_or_corrupt_required_report_is_refused(digits_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(digits_run["root"], root)
    (root / "reports" / "evaluate.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="evaluate.json: not valid JSON"):
        render_report(root)
    (root / "reports" / "evaluate.json").unlink()
    with pytest.raises(ArtifactError, match="evaluate.json"):
        render_report(root)


def test_tampered_codec_is_reported_in_the_page(digits_run, tmp_path):
    root = tmp_path / "run"
    shutil.copytree(digits_run["root"], root)
    header = root / "artifacts" / "codecs" / DIGITS_CHALLENGER / "codec.json"
    npz = arrays_path(header, json.loads(header.read_text()))
    npz.write_bytes(npz.read_bytes()[:-100])
    page = parse_page(render_report(root))
    reasons = {c["data-unavailable"]: c["text"] for c in page.cells if "data-unavailable" in c}
    assert "checksum" in reasons["modalities"] and "checksum" in reasons["examples"]
    assert cells(page, metric="recall_at_10", codec=DIGITS_CHALLENGER)


def test_write_report_is_atomic_and_deterministic(digits_run, tmp_path):
    kwargs = {"champion_metrics": digits_run["champion_metrics"], "faiss_baselines": digits_run["faiss_baselines"]}
    out = write_report(digits_run["root"], tmp_path / "out" / "report.html", **kwargs)
    assert out == tmp_path / "out" / "report.html"
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]
    assert out.read_text(encoding="utf-8") == render_report(digits_run["root"], **kwargs)


@pytest.mark.slow
def test_drift_history_section_shows_every_past_run(digits_run, digits_history):
    html = render_report(digits_run["root"], drift_history=digits_history["history"])
    page = parse_page(html)
    runs = [c["data-run"] for c in page.cells if "data-run" in c and c["tag"] == "tr"]
    assert runs == [run_id for run_id, _, _ in digits_history["logged"]]
    for run_id, result, thresholds in digits_history["logged"]:
        fused = result["modalities"]["fused"]
        for stat, field in (("psi_max", "psi_threshold"), ("mmd_pvalue", "mmd_threshold"),
                            ("mean_shift", "mean_shift_threshold")):
            cell = one_cell(page, metric=f"fused.{stat}", run=run_id)
            assert float(cell["data-value"]) == pytest.approx(fused[stat], rel=1e-12)
            assert float(cell["data-threshold"]) == pytest.approx(thresholds[field])
    assert {c["data-plot"] for c in page.cells if "data-plot" in c} >= {"drift-history"}
    current = [c for c in page.cells if "data-retrain" in c]
    assert current[0]["data-retrain"] == str(digits_history["logged"][-1][1]["retrain"]).lower()
    assert not math.isnan(float(one_cell(page, metric="fused.psi_max", modality="fused")["data-value"]))
