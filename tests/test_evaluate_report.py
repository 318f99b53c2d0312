"""report.html in a real headless Chromium: no console errors, every image loads, the tables show summary.json."""

import json
import shutil
from pathlib import Path

import pytest

from evaluation_data import suite_data, tiny_clip, write_suite
from mvtune.evaluate.report import fmt
from mvtune.evaluate.run import evaluate_suite
from mvtune.evaluate.suite import load_suite

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def report(tmp_path_factory, tiny_base, ducks):
    root = tmp_path_factory.mktemp("report")
    suite = load_suite(write_suite(root / "suite.yaml", suite_data(tiny_base, ducks, tiny_clip(root / "clip"))))
    run_dir = root / "run"
    (run_dir / "logs" / "csv").mkdir(parents=True)
    (run_dir / "logs" / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss,val/loss\n0,0,1.0,\n0,10,0.8,\n0,10,,0.9\n0,20,0.6,\n0,20,,0.7\n"
    )
    summary = evaluate_suite(suite, root / "out", run_dir=run_dir)
    # the folder must work after being copied elsewhere (relative links only)
    copy = root / "copied"
    shutil.copytree(root / "out", copy)
    return {"summary": summary, "out": copy, "original": root / "out"}


def test_report_files_and_summary(report):
    summary = report["summary"]
    assert set(summary["plots"]) == {"differences", "view_pairs", "training"}
    assert summary["grids"] and all((report["out"] / g["file"]).is_file() for g in summary["grids"])
    on_disk = json.loads((report["original"] / "summary.json").read_text())
    assert on_disk["comparisons"] == summary["comparisons"] and on_disk["grids"] == summary["grids"]
    html = (report["out"] / "report.html").read_text()
    assert "http://" not in html and "https://" not in html and str(report["original"]) not in html


def _resolve(data, path: str):
    for part in path.split("/"):
        data = data[int(part)] if isinstance(data, list) else data[part]
    return data


def _browser():
    if not CHROMIUM.is_file():
        pytest.skip("Debian chromium not installed (apt-get install -y --no-install-recommends chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install playwright)")
    return sync_api.sync_playwright()


def test_report_in_headless_chromium(report, tmp_path):
    summary = json.loads((report["original"] / "summary.json").read_text())
    with _browser() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM),
                                    args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            problems = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("requestfailed", lambda r: problems.append(f"failed: {r.url}"))
            page.goto((report["out"] / "report.html").as_uri())
            page.wait_for_load_state("load")
            images = page.eval_on_selector_all("img", "els => els.map(e => [e.getAttribute('src'), e.naturalWidth])")
            cells = page.eval_on_selector_all("[data-path]", "els => els.map(e => [e.dataset.path, e.textContent])")
            page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        finally:
            browser.close()
    assert problems == []
    assert len(images) >= 4 and all(width > 0 for _, width in images), images
    shown = {src for src, _ in images}
    assert set(summary["plots"].values()) <= shown and {g["file"] for g in summary["grids"]} <= shown
    assert len(cells) > 20
    for path, text in cells:
        assert text.strip() == fmt(_resolve(summary, path)), path
    compared = {path.split("/")[1] for path, _ in cells if path.startswith("comparisons/")}
    assert compared == {str(i) for i in range(len(summary["comparisons"]))}  # every comparison is shown
    assert (tmp_path / "report.png").stat().st_size > 10_000
