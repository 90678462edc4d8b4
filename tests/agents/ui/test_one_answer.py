"""Python, the CLI and the web UI give the same answer for every action on every run status:
each asks the engine's one check (`agents._operations.check_action`; raising a budget:
`Agent.raise_budget`), so each accepts what the others accept, says what it will commit in
the same words, and refuses with the same reason. The table is dry runs (nothing is written);
a representative subset is then done for real, once through each front end on three copies
of the same runs, and must leave the same commits and say the same of who drives the run on.

The UI offers send, approve/deny, retry, cancel and fork; start, resume and raising a budget
are Python's and the CLI's (the UI has no form for them: asserted too)."""

from __future__ import annotations

import html
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel
from pydantic_ai.models.test import TestModel
from starlette.testclient import TestClient

from agents import Agent, Budget, DurableAgent, llm
from agents._operations import check_action, do_action
from agents.cli import main
from agents.ui import create_app
from statemachine import RunError
from storage import EmbeddedStore, Store, open_store
from storage.base import WorkerBeat

from ..test_cli_approve import park
from ..test_durable_parity import Ran, gated
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
scoped = Agent(
    name="scoped", memory=Note, model=TestModel(custom_output_text="hi"), initial="new",
    final=["done"], scope_budget=Budget(requests=0), budget_scope=lambda memory: "acme",
    transitions=[llm("write", "new", "done", prompt="p", into="text")],
)  # fmt: skip
"""Parked by its scope's budget (scope "acme") before its first request."""
durable = DurableAgent(gated(Ran()), store=open_store("memory://"), name="gated")
"""The DurableAgent whose run waits for a tool call to be approved (`park`)."""

AGENTS = {"ui_ticket": "tests.agents.ui.ui_agent:ui_agent",
          "budgeted": "tests.agents.ui.test_one_answer:budgeted",
          "scoped": "tests.agents.ui.test_one_answer:scoped",
          "gated": "tests.agents.ui.test_one_answer:durable"}  # fmt: skip
MACHINES: dict[str, Agent[Any]] = {"ui_ticket": ui_agent, "budgeted": budgeted,
                                   "scoped": scoped, "gated": durable.machine}  # fmt: skip
STATUSES = ["running", "waiting", "halted", "halted-scope", "approval", "failed", "done",
            "cancelled"]  # fmt: skip
"""The runs, each named by what it is: `halted` parked by its run budget, `halted-scope` by
its scope's, `approval` a DurableAgent run waiting for a call to be approved."""
ROWS = [*STATUSES, "missing"]
"""...and a run id no run has."""
ANSWER = '{"by": "ann", "approved": true}'
START = '{"title": "r"}'
UI_ACTIONS = {"send", "approve", "deny", "retry", "cancel", "fork"}
ACTIONS: dict[str, tuple[dict[str, Any], list[str], dict[str, str]]] = {
    # action: (Python arguments, CLI arguments, UI form values)
    "start": ({"memory": {"title": "r"}}, ["--input", START], {}),
    "resume": ({}, [], {}),
    "send": ({"event": "answer", "payload": {"by": "ann", "approved": True}},
             ["answer", "--data", ANSWER], {"event": "answer", "payload_json": ANSWER}),
    "approve": ({"call": "del-a"}, ["del-a"], {"call": "del-a", "verdict": "approve"}),
    "deny": ({"call": "del-a", "message": "no"}, ["del-a", "--deny", "no"],
             {"call": "del-a", "verdict": "deny", "message": "no"}),
    "retry": ({}, [], {}),
    "cancel": ({"reason": "why"}, ["--reason", "why"], {"reason": "why"}),
    "fork": ({"at": 0, "new_run_id": "forked"}, ["--at", "0", "--run-id", "forked"],
             {"at": "0", "new_run_id": "forked", "set": "{}"}),
    "budget": ({"limits": Budget(requests=5)}, ["--requests", "5"], {}),
    "budget-scope": ({"scope": "acme", "limits": Budget(requests=5)},
                     ["--scope", "acme", "--requests", "5"], {}),
}  # fmt: skip
ALLOWED = {
    "start": set(ROWS),  # it exists: start returns it, committing nothing; or creates it
    "resume": {"running", "waiting", "halted", "halted-scope", "approval", "failed"},
    "send": {"waiting"},
    "approve": {"approval"},
    "deny": {"approval"},
    "retry": {"failed", "halted", "halted-scope"},
    "cancel": {"running", "waiting", "halted", "halted-scope", "approval", "failed"},
    "fork": set(STATUSES),
    "budget": set(STATUSES),  # limits set; the run is sent on only if its budget parked it
    "budget-scope": set(ROWS),  # not about the run: with the row's agent
}
SENT_ON = {("budget", "halted"), ("budget", "halted-scope"), ("budget-scope", "halted-scope")}
"""Where raising a budget also retries a parked run."""


def _runs(store: Store, url: str) -> None:
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
        for machine, run_id in [(budgeted, "halted"), (scoped, "halted-scope")]:
            halted = await machine.start(store, Note(), run_id=run_id)
            await halted.until_done()

    run_sync(make())
    run_sync(park(url, "approval"))
    for status in STATUSES:
        record = run_sync(store.load(status))
        expected = status if status in ("running", "failed", "done", "cancelled") else "waiting"
        assert record is not None and record.status == expected, status


def _app(store: Store) -> Any:
    return create_app(store, agents=list(MACHINES.values()), token=TOKEN, drive="here")


@pytest.fixture
def world(tmp_path: Path) -> Any:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    store = EmbeddedStore(tmp_path / "one.db")
    _runs(store, url)
    with TestClient(_app(store), base_url=HERE) as client:
        assert client.get(f"/?token={TOKEN}").status_code == 200
        yield store, client, url
    run_sync(store.close())


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", html.unescape(text)).strip()


def _python(
    store: Store, run_id: str, action: str, agent: str, args: dict[str, Any], drive: bool
) -> Any:
    """(accepted, the words it says) of a dry run in Python; `drive`: as a front end that
    drives here a run no worker serves (the CLI, the UI with `drive="here"`)."""
    machine = MACHINES[agent]
    try:
        if action.startswith("budget"):
            where = {"scope": args["scope"]} if "scope" in args else {"run_id": run_id}
            moved = run_sync(machine.raise_budget(store, limits=args["limits"], dry_run=True,
                                                  **where))  # fmt: skip
            words = [f"{d.run_id}: {d.plan.commits}; then: {d.then}" for d in moved]
            return True, words or ["send on: none"]
        plan = run_sync(check_action(store, run_id, action, machine=machine, drive=drive,
                                     **args))  # fmt: skip
        return True, [plan.commits, f"then: {plan.then}"]
    except (RunError, ValueError) as exc:  # its headline (the CLI prints it on one line)
        return False, [str(exc).splitlines()[0]]


def _cli(action: str, run_id: str, agent: str, args: list[str]) -> list[str]:
    """The CLI command line of a dry run."""
    spec = ["--agent", AGENTS[agent]]
    if action == "start":
        return ["run", AGENTS[agent], *args, "--run-id", run_id]
    if action in ("approve", "deny"):
        return ["approve", run_id, *args]  # needs no agent: the store has what it needs
    if action == "budget":
        return ["budget", run_id, *args, *spec]
    if action == "budget-scope":
        return ["budget", *args, *spec]
    return [action, run_id, *args, *spec]


def _form(
    client: TestClient, store: Store, run_id: str, action: str, form: dict[str, str]
) -> tuple[str, Any]:
    """The UI's form of `action` (as the run page links it): its action and what it posts,
    or the page that refused it."""
    page_action = "approve" if action == "deny" else action
    query: dict[str, str] = {k: form[k] for k in ("event", "call") if k in form}
    page = client.get(f"/runs/{run_id}/act/{page_action}", params=query)
    if page.status_code != 200:
        return page_action, page
    seq = str(run_sync(store.load(run_id)).seq)
    return page_action, {"csrf": csrf_of(page.text), "seq": seq, **form}


def _ui(client: TestClient, store: Store, run_id: str, action: str, form: dict[str, str]) -> Any:
    """(accepted, the words it shows) of the UI's form and its preview (the dry run)."""
    page_action, data = _form(client, store, run_id, action, form)
    if not isinstance(data, dict):  # the form may refuse before the plan: the same refusal
        return False, _flat(problem_of(data.text))
    answer = client.post(f"/runs/{run_id}/act/{page_action}/preview", data=data,
                         headers={"origin": HERE})  # fmt: skip
    ok = answer.status_code == 200
    return ok, _flat(answer.text if ok else problem_of(answer.text))


def _do(client: TestClient, run_id: str, action: str, data: dict[str, str]) -> Any:
    """Post the UI's form of `action` to do it."""
    return client.post(f"/runs/{run_id}/act/{action}/do", data=data, headers={"origin": HERE},
                       follow_redirects=False)  # fmt: skip


def _serve(store: Store) -> None:
    """Live workers for every agent here: a heartbeat as `agentfsm worker` writes it, dated
    ahead so that it stays live however slow the machine is."""
    now = time.time()
    beat = WorkerBeat(name="w", host="h", pid=1, agents=tuple(MACHINES), concurrency=1,
                      started_at=now, beat_at=now + 3600, holding=())  # fmt: skip
    run_sync(store.queue.beat(beat))


@pytest.mark.parametrize("workers", [False, True], ids=["no-workers", "workers"])
def test_python_the_cli_and_the_ui_answer_alike(
    world: Any, workers: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    store, client, url = world
    if workers:
        _serve(store)
    table: dict[tuple[str, str], tuple[bool, list[str]]] = {}
    differ: list[str] = []  # every cell where a front end answers otherwise than Python
    thens: set[str] = set()  # who drives the run on, as they all said it
    seqs = {status: run_sync(store.load(status)).seq for status in STATUSES}
    for status in ROWS:
        record = run_sync(store.load(status))
        agent = record.agent if record is not None else "ui_ticket"
        for action, (py_args, cli_args, form) in ACTIONS.items():
            cell = f"{action} on {status}"
            python = _python(store, status, action, agent, py_args, drive=True)
            code = main([*_cli(action, status, agent, cli_args), "--store", url, "--dry-run"])
            printed = capsys.readouterr()
            cli_text = _flat(printed.out if code == 0 else printed.err)
            if (code == 0) != python[0] or any(_flat(w) not in cli_text for w in python[1]):
                differ.append(f"{cell}: CLI ({code}) says {cli_text!r}; Python {python}")
            if action in UI_ACTIONS and record is None:  # no run: no page, no form
                if client.get(f"/runs/{status}/act/{action}").status_code != 404 or python[0]:
                    differ.append(f"{cell}: the UI has a form; Python {python}")
            elif action in UI_ACTIONS:
                ui_ok, ui_text = _ui(client, store, status, action, form)
                if ui_ok != python[0] or any(_flat(w) not in ui_text for w in python[1]):
                    differ.append(f"{cell}: UI ({ui_ok}) says {ui_text!r}; Python {python}")
            elif client.get(f"/runs/{status}/act/{action}").status_code != 404:
                differ.append(f"{cell}: the UI has a form for it")
            table[(action, status)] = python
            if python[0] and not action.startswith("budget"):  # Python, driving nothing itself
                then = python[1][1]
                alone = _python(store, status, action, agent, py_args, drive=False)
                left = f"then: left for `agentfsm resume {status}` (no worker serves {agent!r})"
                drives = then == "then: driven here" and action != "resume"  # resume: always
                expected = left if drives else then
                if alone[1][1] != expected:
                    differ.append(f"{cell}: Python says {alone}")
                thens.add(then)
    assert not differ, "\n".join(differ)
    runnable = "then: queued for the workers" if workers else "then: driven here"
    nothing = {f"then: nothing to drive: the run is {s}" for s in ("waiting", "failed", "done",
                                                                   "cancelled")}  # fmt: skip
    durable = "then: the run goes on when it is run again: DurableAgent.run(run_id='approval')"
    # a fork is never driven here: with no worker, it is left for `agentfsm resume`
    forks = {f"then: left for `agentfsm resume forked` (no worker serves {a!r})" for a in MACHINES}
    # a DurableAgent run goes on in the application, unless workers serve its agent
    assert thens == {runnable, *nothing, *(() if workers else [durable, *forks])}
    allowed = {action: {s for s in ROWS if table[(action, s)][0]} for action in ACTIONS}
    for status in STATUSES:  # the run page offers what the engine accepts, nothing else
        page = client.get(f"/runs/{status}").text
        linked = set(re.findall(rf"/runs/{status}/act/(\w+)", page))
        offered = {a for a in ACTIONS if a in UI_ACTIONS and status in allowed[a]}
        offered = {"approve" if a == "deny" else a for a in offered} - {"send"}
        assert linked - {"send"} == offered, (status, linked)
        # send: offered for each event the run waits for (its payload is checked when sent)
        assert ("send" in linked) == (status in ("waiting", "approval")), (status, linked)
    assert allowed == ALLOWED
    sent_on = {(a, s) for (a, s), (ok, words) in table.items()
               if ok and a.startswith("budget") and words != ["send on: none"]}  # fmt: skip
    assert sent_on == SENT_ON
    for name in ("forked", "missing"):
        assert run_sync(store.load(name)) is None  # nothing was written by any of it
    for status in STATUSES:
        assert run_sync(store.load(status)).seq == seqs[status]
    for subject in [f"run/{s}" for s in ROWS] + ["scope/acme"]:
        assert not run_sync(store.ledger.limits(subject)), subject  # no limit was set


DEEDS = [("start", "fresh"), ("send", "waiting"), ("approve", "approval"), ("retry", "failed"),
         ("cancel", "running"), ("fork", "done"), ("budget", "halted"),
         ("resume", "halted-scope")]  # fmt: skip
"""A representative subset, done for real: (action, run)."""


def _outcome(store: Store, run_id: str) -> Any:
    """What a deed left: the run's status, state, seq and holder, its last commit."""
    record = run_sync(store.load(run_id))
    assert record is not None, run_id
    last = run_sync(store.history(run_id, record.seq, record.seq))[0]
    return record.status, record.state, record.seq, record.holder, last.trigger, last.output


def _queued(store: Store) -> set[str]:
    """The runs queued for the workers (taken off the queue: look once)."""
    jobs = run_sync(store.queue.claim("look", list(MACHINES), 100, 0.01))
    return {job.run_id for job in jobs}


def test_each_action_done_through_each_front_end_commits_alike(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With workers serving every agent, each front end commits the same and hands the run
    to the workers, saying so; none drives it itself."""
    worlds = {}
    for front in ("python", "cli", "ui"):
        url = f"sqlite:///{tmp_path / front}.db"
        worlds[front] = store = EmbeddedStore(tmp_path / f"{front}.db")
        _runs(store, url)
        _serve(store)
    said: dict[tuple[str, str], list[str]] = {}
    py = worlds["python"]
    for action, run_id in DEEDS:
        py_args, cli_args, _ = ACTIONS[action]
        agent = "ui_ticket" if action == "start" else run_sync(py.load(run_id)).agent
        if action == "budget":
            moved = run_sync(MACHINES[agent].raise_budget(py, run_id=run_id, **py_args))
            said[("python", action)] = [d.then for d in moved]
        else:
            done = run_sync(do_action(py, run_id, action, machine=MACHINES[agent], **py_args))
            said[("python", action)] = [done.then]
        url = f"sqlite:///{tmp_path / 'cli'}.db"
        code = main([*_cli(action, run_id, agent, cli_args), "--store", url])
        printed = capsys.readouterr()
        assert code == 0, (action, printed)
        said[("cli", action)] = [_flat(printed.out)]
    ui = worlds["ui"]
    with TestClient(_app(ui), base_url=HERE) as client:
        assert client.get(f"/?token={TOKEN}").status_code == 200
        for action, run_id in DEEDS:
            if action in UI_ACTIONS:
                page_action, data = _form(client, ui, run_id, action, ACTIONS[action][2])
                done_ = _do(client, run_id, page_action, data)
                assert done_.status_code == 303, (action, problem_of(done_.text))
            else:  # not the UI's: done as Python does it, so the rest compares alike
                agent = "ui_ticket" if action == "start" else run_sync(ui.load(run_id)).agent
                if action == "budget":
                    run_sync(MACHINES[agent].raise_budget(ui, run_id=run_id, **ACTIONS[action][0]))
                else:
                    run_sync(do_action(ui, run_id, action, machine=MACHINES[agent],
                                       **ACTIONS[action][0]))  # fmt: skip
    subjects = [run_id for _, run_id in DEEDS] + ["forked"]
    outcomes = {f: {r: _outcome(s, r) for r in subjects} for f, s in worlds.items()}
    for run_id in subjects:
        assert outcomes["python"][run_id] == outcomes["cli"][run_id] == outcomes["ui"][run_id], (
            run_id, {f: o[run_id] for f, o in outcomes.items()})  # fmt: skip
    runnable = {"fresh", "waiting", "failed", "forked", "halted", "halted-scope", "approval"}
    assert {r for r in subjects if outcomes["python"][r][0] == "running"} == runnable
    assert all(outcomes["python"][r][3] == "" for r in subjects)  # nobody holds any
    for front, store in worlds.items():
        assert _queued(store) == runnable, front  # each handed to the workers
        run_sync(store.close())
    for action, _ in DEEDS:  # and each said so, in the engine's words
        then = said[("python", action)]
        expected = "nothing to drive: the run is cancelled" if action == "cancel" else "queued"
        assert then == [expected.replace("queued", "queued for the workers")], (action, then)
        assert all(_flat(words) in said[("cli", action)][0] for words in then), said[
            ("cli", action)
        ]


def test_each_form_posted_twice_commits_once(world: Any) -> None:
    """Every action the UI offers, its form posted twice (a double click, a reload): one
    commit, and the second post answers as the first. A form made before the run moved
    otherwise is refused, naming that."""
    store, client, url = world
    run_sync(park(url, "denial"))
    _serve(store)  # the runs go to the (absent) workers: nothing moves them in between
    stale = _form(client, store, "halted", "cancel", ACTIONS["cancel"][2])[1]
    for action, run_id in [("send", "waiting"), ("retry", "failed"), ("retry", "halted"),
                           ("cancel", "running"), ("approve", "approval"),
                           ("deny", "denial")]:  # fmt: skip
        seq = run_sync(store.load(run_id)).seq
        page_action, data = _form(client, store, run_id, action, ACTIONS[action][2])
        first, again = (
            _do(client, run_id, page_action, data),
            _do(client, run_id, page_action, data),
        )
        assert first.status_code == again.status_code == 303, (action, problem_of(again.text))
        assert first.headers["location"] == again.headers["location"]
        assert run_sync(store.load(run_id)).seq == seq + 1, action  # one commit
    answers = [run_sync(store.history(r))[-1].output for r in ("approval", "denial")]
    assert [(a["tool_call_id"], a["approved"]) for a in answers] == [("del-a", True),
                                                                   ("del-a", False)]  # fmt: skip
    refused = _do(client, "halted", "cancel", stale)  # the run was retried since
    assert refused.status_code == 422 and "moved on" in problem_of(refused.text)
    assert run_sync(store.load("halted")).status == "running"


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
    agent = AGENTS["ui_ticket"]
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
