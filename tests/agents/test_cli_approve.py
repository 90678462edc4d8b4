"""`agentfsm approve`: answer a DurableAgent run's deferred call from another process, with
the model's arguments, edited ones, or a denial; the run goes on in the application."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from pydantic_ai import DeferredToolRequests

from agents import DurableAgent
from storage import open_store

from .test_durable_parity import Ran, gated

ROOT = Path(__file__).resolve().parents[2]


def agentfsm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agents", *args], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip


async def park(url: str, run_id: str) -> Ran:
    ran = Ran()
    store = open_store(url)
    try:
        result = await DurableAgent(gated(ran), store=store, name="gated").run("go", run_id=run_id)
    finally:
        await store.close()
    assert isinstance(result.output, DeferredToolRequests)
    assert [c.tool_call_id for c in result.output.approvals] == ["del-a"]
    return ran


async def go_on(url: str, run_id: str, ran: Ran) -> str:
    store = open_store(url)
    try:
        result = await DurableAgent(gated(ran), store=store, name="gated").run(run_id=run_id)
    finally:
        await store.close()
    return str(result.output)


async def test_approve_with_edited_arguments_from_the_cli(store_url: str) -> None:
    ran = await park(store_url, "cli-approve")
    answered = await asyncio.to_thread(
        agentfsm, "approve", "cli-approve", "del-a", "--args", '{"path": "c.txt"}',
        "--store", store_url,
    )  # fmt: skip
    assert answered.returncode == 0, answered.stderr
    assert "approved call del-a of run cli-approve" in answered.stdout
    assert "deleted c.txt" in await go_on(store_url, "cli-approve", ran)
    assert ran.counts["delete_file c.txt"] == 1 and "delete_file a.txt" not in ran.counts


async def test_deny_from_the_cli_never_runs_the_call(store_url: str) -> None:
    ran = await park(store_url, "cli-deny")
    answered = await asyncio.to_thread(
        agentfsm, "approve", "cli-deny", "del-a", "--deny", "keep it", "--store", store_url
    )
    assert answered.returncode == 0, answered.stderr
    output = await go_on(store_url, "cli-deny", ran)
    assert "keep it" in output and not any(k.startswith("delete_file") for k in ran.counts)


async def test_a_wrong_call_id_is_a_usage_error_naming_the_calls_that_wait(
    store_url: str,
) -> None:
    await park(store_url, "cli-wrong")
    answered = await asyncio.to_thread(
        agentfsm, "approve", "cli-wrong", "nope", "--store", store_url
    )
    assert answered.returncode == 2
    assert "del-a (delete_file)" in answered.stderr
    both = await asyncio.to_thread(
        agentfsm, "approve", "cli-wrong", "del-a", "--deny", "x", "--args", "{}",
        "--store", store_url,
    )  # fmt: skip
    assert both.returncode == 2 and "--deny or --args, not both" in both.stderr
