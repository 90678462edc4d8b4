"""Every extra is complete: its features work with only what that extra installs.

The dev extra installs far more than a user has (python-multipart arrived through `mcp`, so no
test saw `[ui]` lacking it), so these tests hide every other distribution from the process
under test (`tests/only_extras.py`)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import httpx

from storage import open_store
from tests.agents.ui.server import ROOT, agentfsm_env, ui_server
from tests.agents.ui.ui_agent import ui_agent
from tests.only_extras import allowed_distributions, hidden_modules


def test_what_the_ui_extra_allows_is_core_and_ui_only() -> None:
    allowed = allowed_distributions(["ui"])
    assert {"starlette", "uvicorn", "python-multipart", "pydantic-ai-slim"} <= allowed
    hidden = hidden_modules(["ui"])
    assert "pytest" in hidden and "selenium" in hidden  # dev-only packages are hidden
    assert "starlette" not in hidden and "redis" not in hidden


def test_a_hidden_module_cannot_be_imported() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.only_extras", "ui", "pytest", "--version"],
        cwd=ROOT, env=agentfsm_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode != 0
    assert "hidden: it comes from" in done.stderr and "agentfsm[ui]" in done.stderr


def test_the_ui_serves_and_its_forms_work_with_only_the_ui_extra(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"

    async def waiting_run() -> None:
        store = open_store(url)
        try:
            run = await ui_agent.start(store, {"title": "first"}, run_id="t1")
            await run.until_done()  # parks at 'ready', waiting for an answer
        finally:
            await store.close()

    asyncio.run(waiting_run())
    agents = "tests.agents.ui.ui_agent:ui_agent"
    launch = ("-m", "tests.only_extras", "ui", "agents")
    with ui_server("--store", url, "--agents", agents, launch=launch) as (printed, _):
        base = printed.split("?")[0]
        with httpx.Client(base_url=base, headers={"origin": base.rstrip("/")}) as browser:
            assert browser.get(printed, follow_redirects=True).status_code == 200
            form = browser.get("/runs/t1/act/send?event=answer")
            assert form.status_code == 200, form.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
            assert csrf, form.text
            fields = {"csrf": csrf.group(1), "seq": "2", "event": "answer", "f.by": "ana",
                      "f.approved": "on"}  # fmt: skip
            preview = browser.post("/runs/t1/act/send/preview", data=fields)
            assert preview.status_code == 200, preview.text
            assert "agentfsm send t1 answer" in preview.text
            done = browser.post("/runs/t1/act/send/do", data=fields)
            assert done.status_code == 303, done.text
