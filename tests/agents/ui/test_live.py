"""The run page's event stream is fed by the run's live channel (`statemachine.watch`):
streamed model text arrives as `token` events before the step's `commit`, every event id is
its watch offset, and a browser reconnecting with Last-Event-ID gets only what came after."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, JsonValue
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel
from starlette.testclient import TestClient

from agents import Agent, llm
from agents.ui._live import changes
from statemachine.engine import offset_key
from storage import Store

from .conftest import run_sync
from .test_app import waiting_run

TOKENS = ["one ", "two ", "three"]


class Chat(BaseModel):
    question: str
    answer: str = ""


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for token in TOKENS:
        yield token


streamer = Agent(
    name="streamer", memory=Chat, model=FunctionModel(stream_function=_stream),
    initial="new", final=["done"],
    transitions=[llm("answer", "new", "done", prompt=lambda m: m.question, into="answer")],
)  # fmt: skip


def streamed_run(store: Store, run_id: str = "s1") -> None:
    async def go() -> None:
        run = await streamer.start(store, Chat(question="count"), run_id=run_id)
        await run.until_done()

    run_sync(go())


def events_of(client: TestClient, url: str, headers: dict[str, str] | None = None,
              until: str = "end") -> list[tuple[str, str, dict[str, object]]]:  # fmt: skip
    """(id, event, data) of each event of the stream, up to the first `until` event."""
    got: list[tuple[str, str, dict[str, object]]] = []
    fields: dict[str, str] = {}
    with client.stream("GET", url, headers=headers or {}) as answer:
        assert answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines():
            if line.startswith(("id:", "event:", "data:")):
                name, _, value = line.partition(": ")
                fields[name.rstrip(":")] = value
            elif not line and "event" in fields:
                got.append((fields.get("id", ""), fields["event"], json.loads(fields["data"])))
                if fields["event"] == until:
                    break
                fields = {}
    return got


def test_streamed_tokens_come_before_their_commit_with_offsets_as_ids(
    client: TestClient, store: Store
) -> None:
    streamed_run(store)
    got = events_of(client, "/runs/s1/stream?after=0")
    kinds = [event for _, event, _ in got]
    assert kinds[-2:] == ["commit", "end"] and "token" in kinds
    assert kinds.index("token") < kinds.index("commit")
    tokens = [data for _, event, data in got if event == "token"]
    assert "".join(str(t["text"]) for t in tokens) == "".join(TOKENS)
    assert all(t["seq"] == 1 and t["attempt"] == 1 for t in tokens)
    steps = [data for _, event, data in got if event == "step"]
    assert any(s["kind"] == "started" and "answer started" in str(s["text"]) for s in steps)
    commit_id, _, commit = got[-2]
    assert commit_id == "1" and commit == {"seq": 1, "state": "done", "status": "done"}
    ids = [offset for offset, event, _ in got if event != "end"]
    assert all(re.fullmatch(r"0:[\d-]+", offset) for offset in ids[:-1])
    assert len(set(ids)) == len(ids)


def test_reconnecting_with_last_event_id_gets_only_what_came_after(
    client: TestClient, store: Store
) -> None:
    streamed_run(store)
    whole = [(offset, event) for offset, event, _ in events_of(client, "/runs/s1/stream?after=0")]
    assert len(whole) >= 3
    for n, (offset, _) in enumerate(whole[:-1]):
        again = events_of(client, "/runs/s1/stream?after=0", {"last-event-id": offset})
        later = [(o, e) for o, e, _ in again]
        assert all(offset_key(o) > offset_key(offset) for o, e in later if e != "end"), offset
        assert set(whole[n + 1 :]) <= set(later), offset  # (after the end: its "stopped" too)
    # the query's `after` resumes the same way; a seq is an offset too
    assert [e for _, e, _ in events_of(client, "/runs/s1/stream?after=1")] == ["step", "end"]
    # past the run (a run deleted and made again): from the run's seq
    assert [e for _, e, _ in events_of(client, "/runs/s1/stream?after=99")] == ["step", "end"]


ODD = ["junk", "1:x", "²", "\u0661", "-1", " 1", "1.0", "0x1", "1:2:3", "9" * 5000,
       "1:" + "9" * 5000, "1:1-" + "9" * 40, "9" * 16, "\u202e1"]  # fmt: skip


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(odd=st.sampled_from(ODD) | st.text(max_size=12))
def test_odd_offsets_and_seqs_answer_400_with_a_message(
    client: TestClient, store: Store, odd: str
) -> None:
    if run_sync(store.load("s1")) is None:
        streamed_run(store)
    try:
        offset_key(odd or None)  # (nothing asked: from the run's seq)
    except ValueError:
        for asked in ({"params": {"after": odd}}, {"headers": {"last-event-id": odd}}):
            if "headers" in asked and not (
                odd.isprintable() and odd.isascii() and odd.strip() == odd
            ):
                continue  # (not a header value a client can send as is)
            answer = client.get("/runs/s1/stream", **asked)  # type: ignore[arg-type]
            assert answer.status_code == 400, (asked, answer.text[:200])
            assert "not a watch offset" in answer.text
    else:  # an offset: from it, or past the run from the run's seq
        assert events_of(client, f"/runs/s1/stream?after={odd}")[-1][1] == "end"
    page = client.get("/runs/s1", params={"at": odd})
    a_seq = odd == "" or (odd.isascii() and odd.isdigit() and len(odd) < 16 and int(odd) <= 1)
    assert page.status_code == (200 if a_seq else 400), page.text[:300]
    if not a_seq:
        assert "?at= takes a seq of this run, 0 to 1" in page.text
    assert client.get("/", params={"before": odd, "limit": odd, "since": odd}).status_code == 200


def test_items_published_while_the_page_watches_arrive_live(
    client: TestClient, store: Store
) -> None:
    waiting_run(store)  # seq 2, waiting: the stream follows it on
    with client.stream("GET", "/runs/t1/stream?after=2") as answer:
        item: dict[str, JsonValue] = {"kind": "text", "text": "<b>hi</b>", "seq": 3, "attempt": 2}
        run_sync(store.publish("t1", [(2, item)]))
        lines = []
        for line in answer.iter_lines():
            lines.append(line)
            if line.startswith("data:") and lines[-2] == "event: token":
                break
    assert "event: step" in lines  # the run parked: "stopped" (its place is before the token)
    assert re.fullmatch(r"id: 2:[\d-]+", lines[-3])
    assert json.loads(lines[-1][len("data: ") :]) == {"text": "<b>hi</b>", "seq": 3, "attempt": 2}


async def test_a_quiet_stream_gets_heartbeats_and_closes_cleanly(store: Store) -> None:
    run = await streamer.start(store, Chat(question="count"), run_id="q1")  # not driven
    items = changes(store, run.run_id, "0", heartbeat=0.05)
    assert await anext(items) is None  # nothing happens: a heartbeat
    assert await anext(items) is None
    await items.aclose()  # the browser went away: the watch task is ended with it
