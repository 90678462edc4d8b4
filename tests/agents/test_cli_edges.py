"""The CLI's rough edges, smoothed: `watch` follows a retried run to its end, streamed model
text reaches the terminal with its control characters escaped, an offset out of range is a
usage error (not a traceback), a missing run names the store looked in, and a run of an
agent that is not registered says how to name it."""

from __future__ import annotations

import argparse
import asyncio
import unicodedata
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic_ai.messages import ModelMessage
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, llm
from agents.cli import main
from agents.cli._command import terminal_text
from storage import open_store

NASTY = ["fine ", "\x9d\x90osc\x9c ", "\u202eesrever\u202c ", "\u2066iso\u2069", "\x1b[2J",
         "\nnext\tline"]  # fmt: skip
"""Streamed text with C1 controls (OSC, DCS, ST), a bidi override, an isolate, a C0 escape."""
RAW = ("\x9d", "\x90", "\x9c", "\u202e", "\u202c", "\u2066", "\u2069", "\x1b")


class Chat(BaseModel):
    question: str
    answer: str = ""


async def _stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[str]:
    for token in NASTY:
        yield token


chatty = Agent(
    name="chatty", memory=Chat, model=FunctionModel(stream_function=_stream),
    initial="new", final=["done"],
    transitions=[llm("answer", "new", "done", prompt=lambda m: m.question, into="answer")],
)  # fmt: skip


def chatted(url: str) -> str:
    """A finished run of `chatty` in the store at `url`; its id."""
    run_id = f"chat-{uuid.uuid4().hex[:8]}"

    async def go() -> None:
        store = open_store(url)
        try:
            run = await chatty.start(store, Chat(question="hello"), run_id=run_id)
            await run.until_done()
            assert run.status == "done"
        finally:
            await store.close()

    asyncio.run(go())
    return run_id


@given(st.text())
def test_terminal_text_keeps_lines_and_tabs_and_escapes_every_other_control(text: str) -> None:
    shown = terminal_text(text)
    for c in shown:
        category = unicodedata.category(c)
        assert c in "\n\t" or (category != "Cc" and not 0x202A <= ord(c) <= 0x202E
                                and not 0x2066 <= ord(c) <= 0x2069), repr(c)  # fmt: skip
    assert shown.count("\n") == text.count("\n") and shown.count("\t") == text.count("\t")


def test_watch_escapes_control_characters_of_streamed_text(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    run_id = chatted(url)
    capsys.readouterr()
    assert main(["watch", run_id, "--store", url]) == 0
    shown = capsys.readouterr().out
    assert not any(c in shown for c in RAW), repr(shown)
    for escaped in ("\\x9d\\x90osc\\x9c", "\\u202eesrever\\u202c", "\\u2066iso\\u2069", "\\x1b[2J"):
        assert escaped in shown
    assert "\nnext\tline" in shown  # newlines and tabs stay what they are


def test_watch_after_a_retried_failure_follows_the_run_to_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    store = ["--store", f"sqlite:///{tmp_path / 's.db'}"]
    monkeypatch.setenv("AGENTFSM_FAIL_AT", "detect")  # restored afterwards (demo sets it too)
    assert main(["demo", "--fail-at", "detect", "--run-id", "demo-1", *store]) == 1
    monkeypatch.delenv("AGENTFSM_FAIL_AT")
    assert main(["resume", "demo-1", *store]) == 0  # the README's recovery step
    capsys.readouterr()
    assert main(["watch", "demo-1", *store]) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [line.split()[:3] for line in lines if line.strip()[:1] in ("✓", "✗")]
    assert [s[2] for s in steps[-4:]] == ["detect", "retry", "detect", "report"], lines
    assert steps[-4][0] == "✗"  # the failure, then the retry and the steps after it
    assert "→ done" in [line for line in lines if " report " in line][-1]


@pytest.mark.parametrize("after", ["99999999999999999999", "9" * 5000, "1:" + "9" * 5000, "²"])
def test_watch_after_an_offset_that_is_none_is_a_usage_error(
    store_url: str, after: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run_id = chatted(store_url)
    capsys.readouterr()
    assert main(["watch", run_id, "--after", after, "--store", store_url]) == 2
    said = capsys.readouterr().err
    assert "--after" in said and "not a watch offset" in said and "Traceback" not in said
    assert main(["watch", run_id, "--after", "7", "--store", store_url]) == 2
    assert f"{run_id!r} is at seq 1" in capsys.readouterr().err
    assert main(["watch", run_id, "--after", "0", "--store", store_url]) == 0  # in range: shown


def test_a_missing_run_names_the_store_looked_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("AGENTFSM_STORE", raising=False)
    assert main(["show", "analysis-42"]) == 2
    said = " ".join(capsys.readouterr().err.split())  # (the console wraps long lines)
    assert "analysis-42" in said
    assert f"sqlite:///{tmp_path / '.agentfsm' / 'store.db'}" in said  # absolute
    assert "the default embedded store" in said and "--store" in said
    elsewhere = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setenv("AGENTFSM_STORE", elsewhere)
    assert main(["history", "analysis-42"]) == 2
    said = " ".join(capsys.readouterr().err.split())
    assert elsewhere in said and "$AGENTFSM_STORE" in said


def test_a_run_of_an_agent_not_registered_says_how_to_name_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = ["--store", f"sqlite:///{tmp_path / 's.db'}"]
    spec = "tests.agents.hostile_agent:hostile"
    assert main(["run", spec, "--run-id", "h1", "--input", "{}", *store]) == 1
    capsys.readouterr()
    assert main(["retry", "h1", *store]) == 2
    said = " ".join(capsys.readouterr().err.split())
    for way_out in ("--agent MODULE:AGENT", "PYTHONPATH", '"agentfsm.agents"', "data_analyst"):
        assert way_out in said, way_out
    assert main(["retry", "h1", "--agent", spec, *store]) == 1  # named: it runs (and fails)


def test_the_store_is_named_without_its_password_and_with_an_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.cli._store import store_named

    monkeypatch.chdir(tmp_path)
    named = store_named(argparse.Namespace(store="redis://:hunter2@127.0.0.1:6390/0"))
    assert "hunter2" not in named and "127.0.0.1:6390/0" in named and "from --store" in named
    named = store_named(argparse.Namespace(store="sqlite:///runs/s.db?timeout=5"))
    assert f"sqlite:///{tmp_path / 'runs' / 's.db'}?timeout=5" in named
