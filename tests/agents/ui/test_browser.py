"""A real browser on the web UI: headless Chromium driven by Selenium opens the runs page,
filters it, opens a run, watches it advance live while a worker process drives it, sends an
event through the form and sees the run finish.

Every wait is for something to show in the page (WebDriverWait on DOM text) or for a process
to say it is ready; the worker's steps end only when the test opens their gates.
Screenshots go to the test's directory; with `UI_SCREENSHOTS=DIR` (docs/ for the README) they
are saved there too.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver

from storage import open_store
from tests.programs import require_programs

from .server import ROOT, agentfsm_env, ui_server
from .ui_agent import ui_agent

AGENT = "tests.agents.ui.ui_agent:ui_agent"
WAIT = 60


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    chromium, driver_path = require_programs(
        ("chromium", "apt-get install chromium"),
        ("chromedriver", "apt-get install chromium-driver"),
        needed_by="the web UI's browser test",
    )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--window-size=1400,1100", f"--user-data-dir={tmp_path / 'profile'}",
                 "--no-first-run", "--disable-extensions"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def make_other_runs(url: str) -> None:
    async def go() -> None:
        store = open_store(url)
        try:
            for run_id, fail in (("other-ok", False), ("other-broken", True)):
                run = await ui_agent.start(store, {"title": run_id, "fail": fail}, run_id=run_id)
                await run.until_done()
        finally:
            await store.close()

    asyncio.run(go())


def created(url: str, run_id: str, worker: subprocess.Popen[str]) -> None:
    """Return once the store holds `run_id` (the worker's readiness), failing if it died."""

    async def look() -> bool:
        store = open_store(url)
        try:
            return await store.load(run_id) is not None
        finally:
            await store.close()

    give_up = time.monotonic() + WAIT
    while not asyncio.run(look()):
        assert worker.poll() is None, f"the worker ended: {worker.stdout and worker.stdout.read()}"
        assert time.monotonic() < give_up, f"the worker made no run {run_id} in {WAIT} s"
        time.sleep(0.05)


def open_gate(gates: Path, step: str) -> None:
    (gates / step).write_text("go")


def save(driver: WebDriver, tmp_path: Path, name: str) -> None:
    shot = tmp_path / name
    driver.save_screenshot(str(shot))
    target = os.environ.get("UI_SCREENSHOTS")
    if target:
        shutil.copy(shot, ROOT / target / name)


def test_a_browser_watches_a_run_advance_and_finishes_it(
    browser: WebDriver, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    wait = WebDriverWait(driver, WAIT)
    url = f"sqlite:///{tmp_path}/ui.db"
    gates = tmp_path / "gates"
    gates.mkdir()
    make_other_runs(url)
    with ui_server("--store", url, "--agents", AGENT) as (address, _):
        worker = subprocess.Popen(
            [sys.executable, "-m", "agents", "run", AGENT, "--input", '{"title": "live one"}',
             "--run-id", "live-1", "--store", url],
            cwd=ROOT, env=agentfsm_env(UI_GATES=str(gates)), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        try:
            get = driver.get
            find = driver.find_element
            created(url, "live-1", worker)  # the worker made its run; it waits at a gate
            get(address)  # stores the token, then shows the runs page
            wait.until(ec.text_to_be_present_in_element((By.ID, "runs"), "live-1"))
            assert "other-broken" in find(By.ID, "runs").text
            save(driver, tmp_path, "ui-runs.png")

            box = find(By.NAME, "q")
            box.send_keys("live")
            box.submit()
            wait.until(ec.text_to_be_present_in_element((By.ID, "runs"), "live-1"))
            wait.until_not(ec.text_to_be_present_in_element((By.ID, "runs"), "other-ok"))

            find(By.LINK_TEXT, "live-1").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "runstate"), "new · running"))
            wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "live"))
            # the live channel: the step under way shows in the live-output box
            wait.until(ec.text_to_be_present_in_element((By.ID, "output"), "tick started"))

            open_gate(gates, "tick")  # the worker commits `tick`: the page shows it by itself
            wait.until(ec.text_to_be_present_in_element((By.ID, "runstate"), "ticked"))
            wait.until(ec.text_to_be_present_in_element((By.ID, "output"), "check started"))
            open_gate(gates, "check")
            wait.until(ec.text_to_be_present_in_element((By.ID, "runstate"), "ready · waiting"))
            assert worker.wait(timeout=WAIT) == 3  # `agentfsm run` stops at a wait: exit 3
            # what it waits for, with its form; the graph drawn here (no Graphviz needed)
            wait.until(ec.text_to_be_present_in_element((By.ID, "waiting"), "Waiting for"))
            assert "answer" in find(By.ID, "waiting").text
            assert len(driver.find_elements(By.CSS_SELECTOR, "figure.graph svg g.node")) == 6
            output = find(By.ID, "output")  # sized to what it holds, not the window
            assert output.size["width"] < driver.get_window_size()["width"] * 0.8
            save(driver, tmp_path, "ui-waiting.png")

            find(By.PARTIAL_LINK_TEXT, "send answer").click()
            wait.until(ec.presence_of_element_located((By.NAME, "f.by"))).send_keys("selenium")
            find(By.NAME, "f.approved").click()
            count = find(By.NAME, "f.count")
            count.clear()
            count.send_keys("3")
            find(By.ID, "review").click()
            wait.until(ec.text_to_be_present_in_element((By.ID, "effects"), "commits event"))
            assert '"by": "selenium"' in find(By.ID, "effects").text
            find(By.ID, "confirm").click()

            wait.until(ec.text_to_be_present_in_element((By.ID, "runstate"), "done · done"))
            assert "approved by selenium x3" in find(By.ID, "memory").text
            wait.until(ec.text_to_be_present_in_element((By.ID, "live"), "the run is done"))
            driver.execute_script("window.scrollTo(0, 0)")
            save(driver, tmp_path, "ui-run.png")
        finally:
            if worker.poll() is None:
                worker.kill()
            worker.wait()
            if worker.stdout is not None:
                worker.stdout.close()
