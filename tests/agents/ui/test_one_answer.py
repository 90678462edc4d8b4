"""Python, the CLI and the web UI give the same answer for every action on every run status:
each asks the engine's one check (`agents._operations.check_action`), so each accepts what
the others accept, says what it will commit in the same words, and refuses with the same
reason. Dry runs only: nothing is written."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.models.test import TestModel
from starlette.testclient import TestClient

from agents import Agent, Budget, llm
from agents._operations import check_action, do_action
from agents.cli import main
from agents.ui import create_app
from statemachine import RunError
from storage import EmbeddedStore, Store

from .conftest import HERE, TOKEN, csrf_of, problem_of, run_sync
from .ui_agent import ui_agent


class Note(BaseModel):
    text: str = ""


budgeted = Agent(
    name="budgeted", memory=Note, model=TestModel(custom_output_text="hi"), initial="new",
    final=["done"], budget=Budget(requests=0),
    transitions=[llm("write", "new", "done", prompt="p", into="text")],
)  # fmt: skip
"""Parked by its budget before its first request (`agentfsm --agent` loads it from here)."""

AGENTS = {"ticket": "tests.agents.ui.ui_agent:ui_agent",
          "budgeted": "tests.agents.ui.test_one_answer:budgeted"}  # fmt: skip
STATUSES = ["running", "waiting", "halted", "failed", "done", "cancelled"]
ANSWER = '{"by": "ann", "approved": true}'
ACTIONS: dict[str, tuple[dict[str, Any], list[str], dict[str, str]]] = {
    # action: (Python arguments, CLI arguments, UI form values)
    "send": ({"event": "answer", "payload": {"by": "ann", "approved": True}},
             ["answer", "--data", ANSWER], {"event": "answer", "payload_json": ANSWER}),
    "retry": ({}, [], {}),
    "cancel": ({"reason": "why"}, ["--reason", "why"], {"reason": "why"}),
    "fork": ({"at": 0, "new_run_id": "forked"}, ["--at", "0", "--run-id", "forked"],
             {"at": "0", "new_run_id": "forked", "set": "{}"}),
}  # fmt: skip
ALLOWED = {
    "send": {"waiting"},
    "retry": {"failed", "halted"},
    "cancel": {"running", "waiting", "halted", "failed"},
    "fork": set(STATUSES),
}


def _runs(store: Store) -> None:
    async def make() -> None:
        await ui_agent.start(store, {"title": "r"}, run_id="running")
        for run_id, memory in [("waiting", {}), ("failed", {"fail": True}), ("done", {}),
                               ("cancelled", {})]:  # fmt: skip
            run = await ui_agent.start(store, {"title": "r", **memory}, run_id=run_id)
            await run.until_done()
        done = await ui_agent.resume(store, "done")
        await done.send("answer", {"by": "ann", "approved": True})
        await done.until_done()
        cancelled = await ui_agent.resume(store, "cancelled")
        await cancelled.cancel("no")
        await cancelled.release()
        halted = await budgeted.start(store, Note(), run_id="halted")
        await halted.until_done()

    run_sync(make())
    for status in STATUSES:
        record = run_sync(store.load(status))
        expected = "waiting" if status == "halted" else status
        assert record is not None and record.status == expected, status


@pytest.fixture
def world(tmp_path: Path) -> Any:
    store = EmbeddedStore(tmp_path / "one.db")
    _runs(store)
    app = create_app(store, agents=[ui_agent, budgeted], token=TOKEN, drive="here")
    with TestClient(app, base_url=HERE) as client:
        assert client.get(f"/?token={TOKEN}").status_code == 200
        yield store, client, f"sqlite:///{tmp_path / 'one.db'}"
    run_sync(store.close())


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def test_python_the_cli_and_the_ui_answer_alike(
    world: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store, client, url = world
    table: dict[tuple[str, str], tuple[bool, str]] = {}
    seqs = {status: run_sync(store.load(status)).seq for status in STATUSES}
    for status in STATUSES:
        machine = budgeted if status == "halted" else ui_agent
        agent = AGENTS["budgeted" if status == "halted" else "ticket"]
        for action, (py_args, cli_args, form) in ACTIONS.items():
            cell = f"{action} on {status}"
            # Python
            try:
                plan = run_sync(check_action(store, status, action, machine=machine, **py_args))
                python = (True, plan.commits)
            except (RunError, ValueError) as exc:
                python = (False, str(exc))
            # CLI
            code = main([action, status, *cli_args, "--agent", agent, "--store", url,
                         "--dry-run"])  # fmt: skip
            printed = capsys.readouterr()
            cli_text = _flat(printed.out if code == 0 else printed.err)
            assert (code == 0) == python[0], f"{cell}: CLI {code} {cli_text!r} vs {python}"
            assert _flat(python[1]) in cli_text, f"{cell}: CLI says {cli_text!r}"
            # UI (the form may refuse before the plan: the same refusal either way)
            seq = str(run_sync(store.load(status)).seq)
            query = {"event": form["event"]} if "event" in form else {}  # as the run page links
            page = client.get(f"/runs/{status}/act/{action}", params=query)
            if page.status_code == 200:
                data = {"csrf": csrf_of(page.text), "seq": seq, **form}
                answer = client.post(f"/runs/{status}/act/{action}/preview", data=data,
                                     headers={"origin": HERE})  # fmt: skip
                ui_ok = answer.status_code == 200
                ui_text = _flat(answer.text if ui_ok else problem_of(answer.text))
            else:
                ui_ok, ui_text = False, _flat(problem_of(page.text))
            assert ui_ok == python[0], f"{cell}: UI {ui_text!r} vs {python}"
            assert _flat(python[1]) in ui_text, f"{cell}: UI says {ui_text!r}"
            table[(action, status)] = python
    allowed = {action: {s for s in STATUSES if table[(action, s)][0]} for action in ACTIONS}
    assert allowed == ALLOWED
    assert run_sync(store.load("forked")) is None  # nothing was written by any of it
    for status in STATUSES:
        assert run_sync(store.load(status)).seq == seqs[status]


def test_a_fork_form_posted_twice_forks_once(world: Any) -> None:
    store, client, _ = world
    form = client.get("/runs/done/act/fork?at=1").text
    nonce = re.search(r'name="form" value="([0-9a-f]+)"', form)
    assert nonce is not None
    data = {"csrf": csrf_of(form), "seq": str(run_sync(store.load("done")).seq), "at": "1",
            "set": "{}", "form": nonce.group(1)}  # fmt: skip
    first = client.post("/runs/done/act/fork/do", data=data, headers={"origin": HERE},
                        follow_redirects=False)  # fmt: skip
    again = client.post("/runs/done/act/fork/do", data=data, headers={"origin": HERE},
                        follow_redirects=False)  # fmt: skip
    assert first.status_code == again.status_code == 303
    assert first.headers["location"] == again.headers["location"]
    forks = [r for r in run_sync(store.list_runs()) if r.run_id.startswith("done-fork-")]
    assert len(forks) == 1


def test_start_is_checked_alike_by_python_and_the_cli(
    world: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store, _, url = world
    agent = AGENTS["ticket"]
    for run_id, memory, ok in [
        ("fresh", {"title": "t"}, True),
        ("waiting", {"title": "t"}, True),  # exists: start returns it, committing nothing
        ("fresh", {"ticks": "many"}, False),  # fails the schema
    ]:
        try:
            plan = run_sync(check_action(store, run_id, "start", machine=ui_agent, memory=memory))
            python = (True, plan.commits)
        except (RunError, ValueError) as exc:
            python = (False, str(exc).splitlines()[0])
        assert python[0] == ok, python
        code = main(["run", agent, "--input", json.dumps(memory), "--run-id", run_id,
                     "--store", url, "--dry-run"])  # fmt: skip
        printed = capsys.readouterr()
        said = _flat(printed.out if code == 0 else printed.err)
        assert (code == 0) == ok and _flat(python[1]) in said, (said, python)
    assert run_sync(store.load("fresh")) is None  # nothing was created
    started = run_sync(do_action(store, "fresh", "start", machine=ui_agent, memory={"title": "t"}))
    assert (started.run_id, started.status) == ("fresh", "running")
    assert started.then == "left for `agentfsm resume fresh` (no worker serves 'ui_ticket')"
    record = run_sync(store.load("fresh"))
    assert record is not None and (record.seq, record.holder) == (0, "")  # handed on, not held
