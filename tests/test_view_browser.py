"""The live view in a real browser: Debian's headless chromium, driven by its chromedriver.

The server is a real uvicorn in a thread on a free loopback port (test_view.running_view);
the pages are rendered by chromium, scripts and all, and read back from its DOM. Without
chromium and chromium-driver these tests skip, and fail under CI=true (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from contexta_async._cli import run_cli
from contexta_async.report import format_number

from .test_view import MARKUP_MESSAGE, MARKUP_NAME, capture_run, capture_runs, running_view

# selenium is in the test extra: under CI=true a missing one is a broken setup, not a skip.
webdriver = (
    __import__("selenium.webdriver").webdriver
    if os.environ.get("CI")
    else pytest.importorskip("selenium.webdriver")
)
from selenium.common.exceptions import (  # noqa: E402
    NoSuchElementException,
    StaleElementReferenceException,
    TimeoutException,
)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
WAIT = 30.0  # seconds a page may take to show what it must (a loaded CI machine)


def _new_browser(profile: str) -> Any:
    if not (os.path.exists(CHROMIUM) and os.path.exists(CHROMEDRIVER)):
        message = "chromium and chromium-driver are not installed (apt-get install both)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI installs them: missing means the setup is broken
        pytest.skip(message)
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1280,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # The driver is the system's: selenium must not look for (or download) one of its own.
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    profile = tempfile.mkdtemp(prefix="view-chromium-")
    driver = _new_browser(profile)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("view-browser") / ".contexta"
    capture_runs(root)
    return root


@pytest.fixture(scope="module")
def view(workspace: Path) -> Iterator[str]:
    with running_view(workspace) as base:
        yield base


def _wait_text(browser: Any, text: str, selector: str = "main") -> None:
    def shown(driver: Any) -> bool:
        try:
            return text in driver.find_element(By.CSS_SELECTOR, selector).text
        except (StaleElementReferenceException, NoSuchElementException):
            return False  # the live update swapped the element out: look again

    try:
        WebDriverWait(browser, WAIT, poll_frequency=0.1).until(shown)
    except TimeoutException:
        page = browser.find_element(By.CSS_SELECTOR, "body").text
        raise AssertionError(
            f"{text!r} not shown within {WAIT} s; the page says:\n{page}"
        ) from None


def _compare_json(workspace: Path, left: str, right: str) -> dict[str, Any]:
    out = io.StringIO()
    assert run_cli(["--workspace", str(workspace), "compare", left, right, "--json"], out=out) == 0
    result: dict[str, Any] = json.loads(out.getvalue())
    return result


def test_index_lists_the_runs_with_status_and_counts(browser: Any, view: str) -> None:
    browser.get(view + "/")
    _wait_text(browser, "candidate")
    rows = {
        row.get_attribute("data-ref"): [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]
        for row in browser.find_elements(By.CSS_SELECTOR, "#runs tr[data-ref]")
    }
    baseline = rows["run:view.baseline"]
    assert baseline[2] == "completed"
    assert baseline[5:9] == ["25", "12", "0", "0"]  # metrics, events, spans, artifacts
    assert rows["run:view.candidate"][5:9] == ["25", "12", "0", "0"]
    _wait_text(browser, "live", "#live")  # the event stream is connected


def test_compare_page_shows_the_numbers_compare_json_prints(
    browser: Any, view: str, workspace: Path
) -> None:
    expected = _compare_json(workspace, "baseline", "candidate")
    browser.get(view + "/compare/baseline/candidate")
    _wait_text(browser, "Paired per-sample results")
    text = browser.find_element(By.CSS_SELECTOR, "main").text
    assert expected["paired"], "the fixture has sample metrics to pair"
    for paired in expected["paired"]:
        for number in (
            format_number(paired["mean_diff"], signed=True),
            format_number(paired["ci_low"], signed=True),
            format_number(paired["ci_high"], signed=True),
        ):
            assert number in text, (paired["key"], number)
        row = f"{paired['key']} {paired['direction']}"
        assert row in text or f"{paired['key']} {paired['direction']} (inferred)" in text
        assert f"{paired['n_matched']} {format_number(paired['mean_diff'], signed=True)}" in text
    for metric in expected["metrics"]:
        assert format_number(metric["delta"], signed=True) in text
    correct = next(p for p in expected["paired"] if p["key"] == "correct")
    assert format_number(correct["mcnemar_p"]) in text
    # The charts of the HTML report: one SVG per paired metric.
    assert len(browser.find_elements(By.CSS_SELECTOR, "main svg rect")) > 0
    assert len(browser.find_elements(By.CSS_SELECTOR, "main svg")) == len(expected["paired"])


def test_a_fixed_sample_opens_its_values_in_both_runs(browser: Any, view: str) -> None:
    browser.get(view + "/compare/baseline/candidate")
    _wait_text(browser, "Fixed:")
    browser.find_element(By.LINK_TEXT, "case-3").click()  # 0 -> 1
    _wait_text(browser, "right - left")
    cells = {
        row.find_elements(By.TAG_NAME, "td")[0].text: [
            cell.text for cell in row.find_elements(By.TAG_NAME, "td")[1:]
        ]
        for row in browser.find_elements(By.CSS_SELECTOR, "#sample tr")
        if row.find_elements(By.TAG_NAME, "td")
    }
    assert cells["correct"] == ["0", "1", "+1"]
    assert cells["judge.score"] == ["3", "3.25", "+0.25"]
    browser.back()
    _wait_text(browser, "Regressed:")
    browser.find_element(By.LINK_TEXT, "case-7").click()  # 1 -> 0
    _wait_text(browser, "right - left")
    assert "correct 1 0 -1" in browser.find_element(By.ID, "sample").text


def test_run_page_shows_metrics_stages_and_samples(browser: Any, view: str) -> None:
    browser.get(view + "/runs/baseline")
    _wait_text(browser, "Samples (12)")
    metrics = browser.find_element(By.ID, "metrics").text
    assert "(run) run runs.total latest 12" in metrics
    assert "evaluate sample correct mean 0.666667 12" in metrics  # 8 of 12
    samples = browser.find_element(By.ID, "samples").text
    assert "evaluate - case-11 1 4" in samples
    assert "answered" in browser.find_element(By.ID, "events").text


def test_markup_in_run_names_and_messages_is_shown_as_text(browser: Any, view: str) -> None:
    browser.get(view + "/")
    _wait_text(browser, MARKUP_NAME)
    assert browser.find_elements(By.CSS_SELECTOR, "main img") == []
    browser.find_element(By.LINK_TEXT, MARKUP_NAME).click()
    _wait_text(browser, MARKUP_MESSAGE, "#events")
    assert browser.find_elements(By.CSS_SELECTOR, "main img, main script") == []
    assert browser.title == MARKUP_NAME  # not 'pwned': nothing injected ran


def test_a_run_captured_now_appears_without_a_reload(
    browser: Any, view: str, workspace: Path
) -> None:
    browser.get(view + "/")
    _wait_text(browser, "candidate")
    _wait_text(browser, "live", "#live")
    # A marker on the window: a reload (or a navigation) would drop it.
    browser.execute_script("window.__notReloaded = true;")
    capture_run(workspace, "arrived-later", [1.0, 1.0, 0.0])
    _wait_text(browser, "arrived-later")
    assert browser.execute_script("return window.__notReloaded === true;")
    row = "#runs tr[data-ref='run:view.arrived-later']"
    _wait_text(browser, "completed", row)
    cells: list[str] = []

    def counted(driver: Any) -> bool:
        # Read the row afresh each time: a live update may swap it out between two reads.
        try:
            found = driver.find_element(By.CSS_SELECTOR, row).find_elements(By.TAG_NAME, "td")
            cells[:] = [cell.text for cell in found]
        except (StaleElementReferenceException, NoSuchElementException):
            return False
        return cells[5:7] == ["7", "3"]

    with contextlib.suppress(TimeoutException):
        WebDriverWait(browser, WAIT, poll_frequency=0.1).until(counted)
    assert cells[5:7] == ["7", "3"]


def test_an_open_run_page_shows_new_values_without_a_reload(
    browser: Any, view: str, workspace: Path
) -> None:
    capture_run(workspace, "growing", [1.0])
    browser.get(view + "/runs/growing")
    _wait_text(browser, "Samples (1)")
    browser.execute_script("window.__notReloaded = true;")
    # The same run name again: a second run of the same ref appends to it.
    capture_run(workspace, "growing", [1.0, 0.0, 0.0])
    _wait_text(browser, "Samples (3)")
    assert browser.execute_script("return window.__notReloaded === true;")


def test_a_page_catches_up_after_the_server_restarts(browser: Any, workspace: Path) -> None:
    with running_view(workspace) as base:
        browser.get(base + "/")
        _wait_text(browser, "candidate")
        _wait_text(browser, "live", "#live")
        browser.execute_script("window.__notReloaded = true;")
    _wait_text(browser, "reconnecting", "#live")
    # Captured while no server runs; the new server's versions start again from 0.
    capture_run(workspace, "while-down", [1.0])
    port = int(base.rsplit(":", 1)[1])
    with running_view(workspace, port=port):
        _wait_text(browser, "while-down")
        assert browser.execute_script("return window.__notReloaded === true;")
