"""The report as a reviewer sees it: opened from disk in headless Chromium.

Checks that the page loads with no script errors, console or network errors, makes no request
beyond its own file and embedded data, that every plot decodes and is laid out, and that the
numbers the browser shows are the run's. Skipped, with the reason, where no Chromium is
installed (CI installs the Debian ``chromium`` package).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.report.browser import HeadlessChromium, find_chromium
from tests.report.conftest import DIGITS_CHALLENGER, assert_shows

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(find_chromium() is None,
                       reason="no Chromium on PATH (apt-get install chromium): browser checks of the report skipped"),
]
pytest.importorskip("websockets", reason="the DevTools protocol client needs the websockets package")

PAGE_STATE = """(() => ({
  images: [...document.images].map(i => ({plot: i.dataset.plot || null, complete: i.complete,
           width: i.naturalWidth, height: i.naturalHeight, shown: i.getBoundingClientRect().width})),
  cells: [...document.querySelectorAll('[data-metric]')].map(e => ({
           ...Object.fromEntries([...e.attributes].filter(a => a.name.startsWith('data-')).map(a => [a.name, a.value])),
           text: e.textContent.trim(), visible: e.getClientRects().length > 0})),
  scripts: document.scripts.length,
  sections: [...document.querySelectorAll('section')].map(s => s.id),
  title: document.title,
  overflowX: document.documentElement.scrollWidth > window.innerWidth + 1,
}))()"""
TABLE_METRICS = ("recall_at_10", "one_recall_at_1", "ndcg_at_10", "rank_stability_at_50", "mse", "code_size",
                 "compression_ratio", "stored_bytes_per_item", "search_qps")


def open_report(path: Path, screenshot: Path | None = None) -> tuple[dict, object]:
    with HeadlessChromium(width=1280, height=900) as browser:
        load = browser.load(path.resolve().as_uri())
        state = browser.evaluate(PAGE_STATE)
        if screenshot is not None:
            browser.screenshot(screenshot)
    return state, load


def assert_clean_load(load, url: str) -> None:
    assert load.exceptions == [] and load.console_errors == [] and load.log_errors == []
    assert load.failed_requests == []
    assert load.requests and all(u == url or u.startswith("data:image/png;base64,") for u in load.requests), load.requests


def assert_plots_decode(state: dict, expected: set[str]) -> None:
    plots = [i for i in state["images"] if i["plot"]]
    assert {i["plot"] for i in plots} == expected
    for img in state["images"]:
        assert img["complete"] and img["width"] > 0 and img["height"] > 0, img
        assert img["shown"] > 100, img


def assert_codec_table(state: dict, evaluate: dict) -> None:
    table = {(c["data-metric"], c["data-codec"]): c for c in state["cells"]
             if "data-codec" in c and not {"data-series", "data-group", "data-example"} & set(c)}
    checked = 0
    for name, m in evaluate["codecs"].items():
        for key in TABLE_METRICS:
            if key in m:
                cell = table[(key, name)]
                assert cell["visible"], cell
                assert_shows(cell, m[key])
                checked += 1
    assert checked >= 6 * len(evaluate["codecs"])


def test_the_checker_catches_a_broken_page(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text("<!doctype html><html><body><img data-plot='x' src='missing.png'>"
                    "<img src='data:image/png;base64,AAAA'><script>console.error('bad'); throw new Error('boom')"
                    "</script></body></html>")
    state, load = open_report(page)
    assert any("boom" in e for e in load.exceptions) and load.console_errors == ["bad"]
    assert load.failed_requests and any("missing.png" in e for e in load.log_errors)
    assert [i["width"] for i in state["images"]] == [0, 0]


def test_digits_report_in_chromium(digits_run, digits_history, tmp_path):
    from mmcompress.report import write_report

    root = digits_run["root"]
    out = write_report(root, tmp_path / "report.html", champion_metrics=digits_run["champion_metrics"],
                       drift_history=digits_history["history"], faiss_baselines=digits_run["faiss_baselines"])
    shot = tmp_path / "report.png"
    state, load = open_report(out, shot)
    assert_clean_load(load, out.resolve().as_uri())
    assert state["scripts"] == 0 and not state["overflowX"]
    assert state["sections"] == ["promotion", "pareto", "codecs", "modalities", "examples", "drift"]
    assert_plots_decode(state, {"pareto", "contribution", "coverage", "drift-history"})
    evaluate = json.loads((root / "reports" / "evaluate.json").read_text())
    assert_codec_table(state, evaluate)
    overall = [c for c in state["cells"] if c.get("data-group") == "all" and c["data-metric"] == "recall_at_10"]
    assert len(overall) == 1 and overall[0]["visible"]
    assert_shows(overall[0], evaluate["codecs"][DIGITS_CHALLENGER]["recall_at_10"])
    from PIL import Image

    with Image.open(shot) as im:
        assert im.size[0] == 1280 and im.size[1] > 2000


def test_pipeline_report_in_chromium(pipeline_run, tmp_path):
    """The report the promote stage writes for a real pipeline run (MovieLens slice)."""
    root = pipeline_run["root"]
    report = root / "reports" / "report.html"
    state, load = open_report(report, tmp_path / "report.png")
    assert_clean_load(load, report.resolve().as_uri())
    assert state["scripts"] == 0 and not state["overflowX"]
    assert_plots_decode(state, {"pareto", "contribution", "coverage", "drift-history"})
    evaluate = json.loads((root / "reports" / "evaluate.json").read_text())
    assert_codec_table(state, evaluate)
    faiss_points = {c["data-codec"]: c for c in state["cells"]
                    if c.get("data-series") == "faiss" and c["data-metric"] == "recall_at_10"}
    measured = [f for f in evaluate["faiss_baselines"] if "skipped" not in f]
    assert measured and set(faiss_points) == {f["spec"] for f in measured}
    for f in measured:
        assert_shows(faiss_points[f["spec"]], f["recall_at_10"])
    promote = json.loads((root / "reports" / "promote.json").read_text())
    drift_run = pipeline_run["results"]["drift"]["run_id"]
    assert any(c.get("data-run") == drift_run for c in state["cells"])
    assert promote["run_id"] in (root / "reports" / "report.html").read_text()
    examples = [c for c in state["cells"] if c.get("data-example")]
    assert len(examples) == 4 and all(c["visible"] for c in examples)
