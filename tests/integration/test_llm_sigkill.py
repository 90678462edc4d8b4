"""SIGKILL during an LLM request: after resume the conversation has no duplicated messages
and the request already paid for is not made again."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from pathlib import Path

from storage import RedisStore, Store, open_store

ROOT = Path(__file__).resolve().parents[2]


def child(url: str, run_id: str, workdir: Path, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.integration.llm_sigkill_agent", url, run_id, str(workdir),
         mode],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def kill_inside_second_request(url: str, run_id: str, workdir: Path) -> list[str]:
    blocked = child(url, run_id, workdir, "block")
    deadline = time.monotonic() + 60
    while not (workdir / "blocked").exists():
        assert time.monotonic() < deadline and blocked.poll() is None, "never reached request 2"
        time.sleep(0.02)
    blocked.send_signal(signal.SIGKILL)
    blocked.communicate()
    before = (workdir / "requests.log").read_text().split()
    resumed = child(url, run_id, workdir, "normal")
    out, err = resumed.communicate(timeout=60)
    assert resumed.returncode == 0 and out.decode().strip() == "done", err.decode()[-2000:]
    after = (workdir / "requests.log").read_text().split()
    return after[len(before) :]


async def test_conversation_after_a_kill_mid_request_has_no_duplicates(
    store_url: str, tmp_path: Path
) -> None:
    url = store_url
    run_id = f"llm-{tmp_path.name}"
    second_process = await asyncio.to_thread(kill_inside_second_request, url, run_id, tmp_path)
    assert second_process == ["1"]  # only the interrupted request is made again

    store: Store = (
        RedisStore.from_url(url, prefix="llmcrash") if url.startswith("redis") else open_store(url)
    )
    history = await store.history(run_id)
    await store.close()
    assert [e.trigger for e in history] == ["start", "outline", "count", "answer"]
    conversation = [m for e in history for m in e.messages]
    assert [m["kind"] for m in conversation] == ["request", "response"] * 2  # type: ignore[index,call-overload]
    identities = [(m["kind"], str(m["parts"])) for m in conversation]  # type: ignore[index,call-overload]
    assert len(set(identities)) == len(identities)
    # the answer step saw the outline step's exchange once, then its own prompt
    assert history[3].messages[1]["parts"][0]["content"] == "reply to request 3"  # type: ignore[index,call-overload]
