"""The report of a real default-grid run, opened in a real headless Chromium (Debian's
`chromium` and `chromium-driver` packages, driven by selenium): the page loads without console
errors, every figure loads, the table has one row per case and sorts, and a screenshot is saved
in the test's tmp dir.

Without Chromium or its driver these tests are skipped, with the reason, before the run
they need; DLLM_BENCH_REQUIRE_BROWSER=1 (set by `.ci/run`, which installs both:
`apt-get install -y chromium chromium-driver`) makes that a failure. DLLM_BENCH_SKIP_BROWSER=1
skips them even where Chromium is installed (not with DLLM_BENCH_REQUIRE_BROWSER).
DLLM_BENCH_CHROMIUM and DLLM_BENCH_CHROMEDRIVER name other binaries.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from dllm_bench.cases import expand_cases
from dllm_bench.config import load_config
from dllm_bench.options import DEFAULT_CONFIG
from dllm_bench.sinks.csvfiles import FINAL_CSV, read_results, write_rows_atomic
from dllm_bench.sinks.report import REPORT_HTML
from dllm_bench.sinks.report.cli import main as report_main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SKIP_ENV = "DLLM_BENCH_SKIP_BROWSER"
REQUIRE_ENV = "DLLM_BENCH_REQUIRE_BROWSER"
CHROMIUM = os.environ.get("DLLM_BENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("DLLM_BENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
INSTALL = "apt-get install -y chromium chromium-driver"
DEFAULT_GRID_CASES = len(expand_cases(load_config(REPO / DEFAULT_CONFIG)))
RUN_TIMEOUT_S = 1800
WIDTH = 1400

IMAGES_SCRIPT = "return Array.from(document.images).map(i => [i.complete, i.naturalWidth, i.naturalHeight]);"
COLUMN_SCRIPT = """
const table = document.querySelector("table.rows");
const column = Array.from(table.tHead.rows[0].cells).findIndex(c => c.textContent.trim() === arguments[0]);
return Array.from(table.tBodies[0].rows).map(r => r.cells[column].getAttribute("data-sort"));
"""


@pytest.fixture(scope="module")
def default_grid_run(tmp_path_factory: pytest.TempPathFactory, model_cache_dir: Path) -> Path:
    """A real run of the embedded default grid (`pytest benchmarks`), in its own process."""
    out = tmp_path_factory.mktemp("default-grid") / "run"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "DLLM_BENCH_CACHE": str(model_cache_dir),
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks",
            "-p",
            "no:cacheprovider",
            "-q",
            "--progress=off",
            "--output-dir",
            str(out),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium; requested before `default_grid_run`, so a skip costs no run."""
    required = bool(os.environ.get(REQUIRE_ENV))
    if os.environ.get(SKIP_ENV) and not required:
        pytest.skip(f"{SKIP_ENV} is set: the report is not opened in Chromium")
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not Path(path).is_file()]
    if missing:
        what = f"no {' and no '.join(missing)}: the report is not opened in Chromium; install it ({INSTALL})"
        if required:
            pytest.fail(f"{what}. {REQUIRE_ENV} is set: the browser test is required")
        pytest.skip(f"{what}, or set {REQUIRE_ENV}=1 to make this a failure")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", f"--window-size={WIDTH},1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(browser: WebDriver, page: Path) -> list[dict[str, object]]:
    """Load the page from its file; returns the console's messages of level WARNING and above."""
    browser.get(page.as_uri())
    assert browser.execute_script("return document.readyState") == "complete"
    entries: list[dict[str, object]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry for entry in entries if entry.get("level") in ("WARNING", "SEVERE")]


def check_figures(browser: WebDriver, expected: int) -> None:
    images = browser.execute_script(IMAGES_SCRIPT)
    assert len(images) == expected
    assert all(complete and width > 0 and height > 0 for complete, width, height in images), images


def screenshot(browser: WebDriver, path: Path) -> None:
    height = int(browser.execute_script("return document.documentElement.scrollHeight"))
    browser.set_window_size(WIDTH, height + 100)
    assert browser.save_screenshot(str(path))
    assert path.read_bytes().startswith(b"\x89PNG")


def test_the_report_of_a_default_grid_run_renders_in_chromium(
    browser: WebDriver, default_grid_run: Path, tmp_path: Path
) -> None:
    rows = read_results(default_grid_run / FINAL_CSV)
    assert len(rows) == DEFAULT_GRID_CASES
    assert report_main([str(default_grid_run), "-o", str(tmp_path)]) == 0
    assert open_page(browser, tmp_path / REPORT_HTML) == []
    check_figures(browser, expected=3)
    table = browser.find_elements(By.CSS_SELECTOR, "table.rows tbody tr")
    assert sorted(line.find_element(By.TAG_NAME, "td").text for line in table) == sorted(r.case_id for r in rows)
    header = browser.find_element(By.XPATH, "//table[contains(@class, 'rows')]//th[normalize-space()='tokens_per_s']")
    header.find_element(By.TAG_NAME, "button").click()
    ascending = [float(value) for value in browser.execute_script(COLUMN_SCRIPT, "tokens_per_s")]
    assert ascending == sorted(ascending) and len(ascending) == DEFAULT_GRID_CASES
    header.find_element(By.TAG_NAME, "button").click()
    descending = [float(value) for value in browser.execute_script(COLUMN_SCRIPT, "tokens_per_s")]
    assert descending == sorted(ascending, reverse=True)
    screenshot(browser, tmp_path / "report-screenshot.png")


def test_a_comparison_with_a_reference_run_renders_in_chromium(
    browser: WebDriver, default_grid_run: Path, tmp_path: Path
) -> None:
    rows = read_results(default_grid_run / FINAL_CSV)
    reference = tmp_path / "reference"
    reference.mkdir()
    # The reference was faster on the LLaDA cases: every one of them regressed by 20%.
    faster = [
        dataclasses.replace(row, tokens_per_s=row.tokens_per_s * 1.25)
        if row.kind == "llada" and row.tokens_per_s
        else row
        for row in rows
    ]
    write_rows_atomic(reference / FINAL_CSV, faster)
    out = tmp_path / "report"
    args = [str(default_grid_run), "--reference", str(reference), "--gate", "tokens_per_s:-10%", "-o", str(out)]
    # The gate fails (exit 1) on the regressions, and the page that shows them is written.
    assert report_main(args) == 1
    assert open_page(browser, out / REPORT_HTML) == []
    check_figures(browser, expected=4)
    regressions = browser.find_element(By.ID, "regressions")
    assert regressions.is_displayed()
    assert len(regressions.find_elements(By.TAG_NAME, "li")) == sum(1 for row in rows if row.kind == "llada")
    screenshot(browser, tmp_path / "comparison-screenshot.png")
