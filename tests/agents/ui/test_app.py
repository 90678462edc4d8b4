"""The web UI's routes through Starlette's TestClient: what each page shows, the actions
(recorded as the CLI records them), bad input, and that nothing unescaped reaches a page."""

from __future__ import annotations

import dataclasses
import html
import re
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from storage import Store

from .conftest import HERE, csrf_of, problem_of, run_sync
from .ui_agent import ui_agent

ORIGIN = {"origin": HERE}


def waiting_run(store: Store, run_id: str = "t1", **memory: object) -> None:
    async def go() -> None:
        run = await ui_agent.start(store, {"title": "first", **memory}, run_id=run_id)
        await run.until_done()

    run_sync(go())


def status_of(store: Store, run_id: str) -> str:
    record = run_sync(store.load(run_id))
    assert record is not None
    return str(record.status)


def settled(store: Store, run_id: str, status: str) -> None:
    """Wait for a run the server drives on to reach `status` (the store says when)."""
    give_up = time.monotonic() + 30
    while status_of(store, run_id) != status:
        assert time.monotonic() < give_up, f"run {run_id} never became {status}"
        time.sleep(0.01)


def test_the_runs_page_lists_filters_and_pages(client: TestClient, store: Store) -> None:
    async def make() -> None:
        for i in range(7):
            run = await ui_agent.start(store, {"title": f"n{i}", "fail": i == 3}, run_id=f"p{i}")
            await run.until_done()

    run_sync(make())
    page = client.get("/?limit=3").text
    assert re.findall(r'href="/runs/(p\d)"', page) == ["p6", "p5", "p4"]
    seen = []
    url = "/?limit=3"
    while True:
        text = client.get(html.unescape(url)).text
        seen += re.findall(r'href="/runs/(p\d)"', text)
        more = re.search(r'id="next" href="([^"]+)"', text)
        if more is None:
            break
        url = more.group(1)
    assert seen == [f"p{i}" for i in range(6, -1, -1)]
    assert re.findall(r'href="/runs/(p\d)"', client.get("/?status=failed").text) == ["p3"]
    assert "p3" not in client.get("/?status=waiting").text
    assert re.findall(r'href="/runs/(p\d)"', client.get("/?q=5").text) == ["p5"]
    assert "p1" in client.get("/?agent=ui_ticket&state=ready").text
    assert "no runs match" in client.get("/?agent=nobody").text
    assert "no runs match" in client.get("/?until=2000-01-01T00:00").text
    assert "p6" in client.get("/?since=2000-01-01T00:00").text


def test_bad_filters_are_named_and_ignored(client: TestClient, store: Store) -> None:
    waiting_run(store)
    page = client.get("/?status=bogus&since=yesterday&limit=x&before=zzz")
    assert page.status_code == 200
    for said in ("unknown status", "since", "limit", "page cursor"):
        assert said in page.text
    assert "t1" in page.text


def test_an_unknown_run_is_a_404_page(client: TestClient) -> None:
    for path in ("/runs/nope", "/runs/nope/stream", "/runs/nope/act/send", "/nowhere"):
        answer = client.get(path)
        assert answer.status_code == 404, path
        assert "<html" in answer.text
    assert client.get("/runs/nope").text.count("nope") >= 1


def test_the_run_page_shows_graph_timeline_memory_why_and_actions(
    client: TestClient, store: Store
) -> None:
    waiting_run(store)
    page = client.get("/runs/t1").text
    assert "<svg" in page  # the report's drawing, with the run on it
    for section in ('id="timeline"', 'id="memory"', 'id="actions"', "Every field"):
        assert section in page
    assert "written by" in page and "tick" in page and "seq 1" in page
    assert "/runs/t1/act/send?event=answer" in page and "/runs/t1/act/fork" in page
    assert 'data-stream="/runs/t1/stream?after=2"' in page
    assert '<section class="output" id="output" hidden>' in page  # live.js fills it
    at_zero = client.get("/runs/t1?at=0").text
    assert "Memory after seq 0" in at_zero and "(initial memory)" in at_zero
    at_one = client.get("/runs/t1?at=1").text
    assert "What seq 1 (tick) changed" in at_one
    assert re.search(r"<b>ticks</b></td><td><pre>0</pre></td><td><pre>1</pre>", at_one)


def test_a_waiting_run_says_what_it_waits_for_with_the_form_that_sends_it(
    client: TestClient, store: Store
) -> None:
    waiting_run(store)
    page = client.get("/runs/t1").text
    banner = page[page.index('<section class="waiting" id="waiting">') :].split("</section>")[0]
    assert "Waiting for the event <b>answer</b>" in banner
    assert 'action="/runs/t1/act/send/preview"' in banner  # the send form, right there
    for field in ('name="f.by"', 'name="f.approved"', 'name="f.count"', 'name="csrf"'):
        assert field in banner
    fields = {"csrf": csrf_of(page), "seq": "2", "event": "answer", "f.by": "ana",
              "f.approved": "true", "f.count": "2"}  # fmt: skip
    plan = client.post("/runs/t1/act/send/preview", data=fields, headers=ORIGIN)
    assert plan.status_code == 200 and "commits event" in plan.text
    client.post("/runs/t1/act/send/do", data=fields, headers=ORIGIN)
    settled(store, "t1", "done")
    assert 'id="waiting"' not in client.get("/runs/t1").text  # done: nothing to wait for


def test_a_durable_runs_memory_reads_without_the_engines_internals(
    client: TestClient, store: Store, tmp_path: Path
) -> None:
    from ..test_cli_approve import park

    run_sync(park(f"sqlite:///{tmp_path / 'ui.db'}", "dur"))
    page = client.get("/runs/dur").text
    memory = page[page.index('id="memory"') :].split("</section>")[0]
    shown, _, raw = memory.partition('<details class="raw" id="raw">')
    assert "<b>prompt</b>" in shown and "go" in shown
    assert "delete_file" in shown and "del-a" in shown  # the call the run waits on
    record = run_sync(store.load("dur"))
    for internal in ("agent", "deferred", "message_history", "kind"):  # only behind the toggle
        assert f'id="why-{internal}"' in raw and f'id="why-{internal}"' not in shown
    assert str(record.memory["agent"]) not in shown and "part_kind" not in shown
    assert "Waiting for approval of the tool call <code>del-a</code>" in page


def test_the_conversation_and_errors_are_shown(client: TestClient, store: Store) -> None:
    async def make() -> None:
        from agents.examples.approval import approval

        run = await approval.start(store, {"request": "refund 42"}, run_id="chat")
        await run.until_done()

    run_sync(make())
    waiting_run(store, "broken", fail=True)
    chat = client.get("/runs/chat").text
    assert 'id="conversation"' in chat and "refund 42" in chat
    broken = client.get("/runs/broken").text
    assert 'id="errors"' in broken and "RuntimeError" in broken and "check failed" in broken


def test_what_a_run_stored_is_escaped_everywhere(client: TestClient, store: Store) -> None:
    evil = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    waiting_run(store, "evil", title=evil)
    for path in ("/", "/runs/evil", "/runs/evil?at=0", "/runs/evil/act/fork", "/agents"):
        text = client.get(path).text
        assert "<script>alert" not in text and "<img src=x" not in text, path
    assert "&lt;script&gt;alert(1)" in client.get("/runs/evil").text


def test_the_event_stream_says_each_commit(client: TestClient, store: Store) -> None:
    waiting_run(store)
    with client.stream("GET", "/runs/t1/stream?after=1") as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        lines = []
        for line in answer.iter_lines():
            lines.append(line)
            if line.startswith("data:") and lines[-2] == "event: commit":
                break
    assert lines[-3] == "id: 2"
    assert '"status": "waiting"' in lines[-1] and '"state": "ready"' in lines[-1]


def test_sending_an_event_through_the_form_commits_it_as_the_cli_does(
    client: TestClient, store: Store
) -> None:
    waiting_run(store)
    form = client.get("/runs/t1/act/send?event=answer").text
    assert 'name="f.by"' in form and 'type="checkbox" name="f.approved"' in form
    fields = {"csrf": csrf_of(form), "seq": "2", "event": "answer", "f.by": "ana",
              "f.approved": "on", "f.count": "2"}  # fmt: skip
    preview = client.post("/runs/t1/act/send/preview", data=fields, headers=ORIGIN)
    assert preview.status_code == 200
    assert "commits event &#x27;answer&#x27; as seq 3" in preview.text
    assert "agentfsm send t1 answer --data" in preview.text
    assert len(run_sync(store.history("t1"))) == 3  # the preview wrote nothing
    done = client.post("/runs/t1/act/send/do", data=fields, headers=ORIGIN, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/runs/t1?did=send"
    assert "send: done" in client.get("/runs/t1?did=send").text
    assert "call us" not in client.get("/runs/t1?did=call+us").text  # only our own words
    settled(store, "t1", "done")
    events = run_sync(store.history("t1"))
    sent = events[3]
    assert (sent.trigger, sent.kind, sent.source, sent.dest) == (
        "answer",
        "wait",
        "ready",
        "answered",
    )
    assert sent.patch == {"answer": {"by": "ana", "approved": True, "count": 2}}
    assert events[-1].patch == {"result": "approved by ana x2"}


def test_a_malformed_payload_shows_the_schema_error_and_writes_nothing(
    client: TestClient, store: Store
) -> None:
    waiting_run(store)
    csrf = csrf_of(client.get("/runs/t1/act/send?event=answer").text)
    for step in ("preview", "do"):
        for fields in (
            {"f.by": "", "f.count": "many"},  # by is required; count is not an integer
            {"payload_json": '{"by": 3}'},
            {"payload_json": "{not json"},
        ):
            data = {"csrf": csrf, "seq": "2", "event": "answer", **fields}
            answer = client.post(f"/runs/t1/act/send/{step}", data=data, headers=ORIGIN)
            assert answer.status_code == 422, (step, fields)
            said = html.unescape(problem_of(answer.text))
            assert "payload" in said and ("schema" in said or "not JSON" in said), said
    assert len(run_sync(store.history("t1"))) == 3
    assert status_of(store, "t1") == "waiting"


def test_an_action_refuses_a_run_that_moved_since_the_plan(
    client: TestClient, store: Store
) -> None:
    waiting_run(store)
    csrf = csrf_of(client.get("/runs/t1/act/cancel").text)
    data = {"csrf": csrf, "seq": "1", "reason": "stale"}
    answer = client.post("/runs/t1/act/cancel/do", data=data, headers=ORIGIN)
    assert answer.status_code == 422 and "moved on" in problem_of(answer.text)
    assert status_of(store, "t1") == "waiting"


def test_retry_cancel_and_fork(client: TestClient, store: Store) -> None:
    waiting_run(store, "f1", fail=True)
    assert status_of(store, "f1") == "failed"
    page = client.get("/runs/f1").text
    assert "/runs/f1/act/retry" in page
    csrf = csrf_of(client.get("/runs/f1/act/retry").text)
    seq = str(run_sync(store.load("f1")).seq)
    plan = client.post(
        "/runs/f1/act/retry/preview", data={"csrf": csrf, "seq": seq}, headers=ORIGIN
    )
    assert "commits a &#x27;retry&#x27; event" in plan.text
    retried = client.post("/runs/f1/act/retry/do", data={"csrf": csrf, "seq": seq},
                          headers=ORIGIN, follow_redirects=False)  # fmt: skip
    assert retried.status_code == 303
    settled(store, "f1", "failed")  # fails again: the memory still says fail
    kinds = [(e.trigger, e.kind) for e in run_sync(store.history("f1"))]
    assert ("retry", "control") in kinds and kinds.count(("check", "error")) == 2

    fork = client.get("/runs/f1/act/fork?at=1").text
    fields = {"csrf": csrf_of(fork), "seq": str(run_sync(store.load("f1")).seq), "at": "1",
              "new_run_id": "f1-fixed", "set": '{"fail": false}'}  # fmt: skip
    plan = client.post("/runs/f1/act/fork/preview", data=fields, headers=ORIGIN)
    assert "creates a new run f1-fixed" in html.unescape(plan.text)
    bad = client.post("/runs/f1/act/fork/preview", data={**fields, "set": '{"nope": 1}'},
                      headers=ORIGIN)  # fmt: skip
    assert bad.status_code == 422 and "names unknown fields ['nope']" in html.unescape(bad.text)
    forked = client.post("/runs/f1/act/fork/do", data=fields, headers=ORIGIN,
                         follow_redirects=False)  # fmt: skip
    assert forked.headers["location"].startswith("/runs/f1-fixed")
    record = run_sync(store.load("f1-fixed"))
    assert record.memory["fail"] is False and record.state == "ticked"
    start = run_sync(store.history("f1-fixed"))[0]
    assert start.output == {"forked_from": "f1", "at": 1, "memory_update": ["fail"]}

    csrf = csrf_of(client.get("/runs/f1-fixed/act/cancel").text)
    data = {"csrf": csrf, "seq": "0", "reason": "not needed <b>now</b>"}
    assert (
        "not needed &lt;b&gt;now"
        in client.post("/runs/f1-fixed/act/cancel/preview", data=data, headers=ORIGIN).text
    )
    client.post("/runs/f1-fixed/act/cancel/do", data=data, headers=ORIGIN)
    cancelled = run_sync(store.history("f1-fixed"))[-1]
    assert (cancelled.trigger, cancelled.kind, cancelled.output) == (
        "cancel", "control", "not needed <b>now</b>",
    )  # fmt: skip
    assert "/act/cancel" not in client.get("/runs/f1-fixed").text  # nothing left to cancel


def test_an_action_the_run_cannot_take_is_refused(client: TestClient, store: Store) -> None:
    waiting_run(store)
    assert client.get("/runs/t1/act/retry").status_code == 200  # the form: it says nothing yet
    csrf = csrf_of(client.get("/runs/t1/act/cancel").text)
    for action, data in [
        ("retry", {}),
        ("send", {"event": "nope"}),
        ("approve", {"call": "x"}),
        ("fork", {"at": "99"}),
    ]:
        answer = client.post(f"/runs/t1/act/{action}/preview",
                             data={"csrf": csrf, "seq": "2", **data}, headers=ORIGIN)  # fmt: skip
        assert answer.status_code in (409, 422), action
    assert client.get("/runs/t1/act/explode").status_code == 404
    assert len(run_sync(store.history("t1"))) == 3


def test_the_agents_page_draws_each_agent_and_counts_its_runs(
    client: TestClient, store: Store
) -> None:
    waiting_run(store, "a1")
    waiting_run(store, "a2")
    page = client.get("/agents").text
    assert "ui_ticket v1" in page and "approval v1" in page and page.count("<svg") >= 2
    assert re.search(r"state=ready\">ready</a></td><td class=\"num\">2</td>", page)


def test_usage_and_cost_read_alike_in_the_list_the_run_page_and_the_cli(
    client: TestClient, store: Store, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from agents.cli import main
    from agents.examples.approval import Reply, approval
    from agents.ui._runs_page import usage_cells

    async def drafted() -> None:  # one model request (offline): usage, no price
        run = await approval.start(store, Reply(request="refund"), run_id="u1")
        await run.until_done()

    run_sync(drafted())
    record = run_sync(store.load("u1"))
    words = "1 requests, "  # the CLI's wording ("53 in, 7 out"), not the ledger's keys
    assert record.usage["requests"] == 1
    listed = client.get("/").text
    assert "<th>usage</th><th>cost</th>" in listed and f"<td>{words}" in listed
    line = listed[listed.index(f"<td>{words}") + 4 :].split("</td>")[0]
    assert line in client.get("/runs/u1").text
    capsys.readouterr()
    assert main(["show", "u1", "--store", f"sqlite:///{tmp_path / 'ui.db'}"]) == 0
    assert f"usage    {line}" in capsys.readouterr().out
    priced = dataclasses.replace(record, usage={**record.usage, "cost_nusd": 4200})
    assert usage_cells(priced).endswith('<td class="num">$0.000004</td>')


@pytest.mark.parametrize("path", ["/", "/agents", "/runs/t1"])
def test_pages_read_without_javascript_and_load_no_outside_resource(
    client: TestClient, store: Store, path: str
) -> None:
    waiting_run(store)
    answer = client.get(path)
    assert "script-src 'self'" in answer.headers["content-security-policy"]
    assert not re.search(r'(src|href)="(https?:)?//', answer.text)
    assert "<script>" not in answer.text  # no inline script: one vendored file at most
    assert client.get("/static/live.js").status_code == 200


def test_the_text_filter_pages_over_the_runs_whose_id_holds_it(
    client: TestClient, store: Store
) -> None:
    async def make() -> None:
        for i in range(12):
            await ui_agent.start(store, {"title": "x"}, run_id=f"s{i:02d}{'-hit' if i % 4 else ''}")

    run_sync(make())
    hits: list[str] = []
    url = "/?q=hit&limit=4"
    for _ in range(10):
        text = client.get(html.unescape(url)).text
        hits += re.findall(r'href="/runs/([^"]+)"', text)
        more = re.search(r'id="next" href="([^"]+)"', text)
        if more is None:
            break
        url = more.group(1)
    assert hits == [f"s{i:02d}-hit" for i in range(11, -1, -1) if i % 4]
    assert client.get("/?q=not an id {}").status_code == 200
