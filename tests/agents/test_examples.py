"""The example agents do what their docstrings say, on the offline model."""

from __future__ import annotations

import pytest

from agents.examples.approval import Reply, approval
from statemachine.errors import InvalidPayload
from storage import Store


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AGENTFSM_MODEL"):
        monkeypatch.delenv(name, raising=False)


async def test_the_approval_agent_waits_for_a_person_and_revises_on_request(store: Store) -> None:
    run = await approval.start(store, Reply(request="refund for order 42"), run_id="ap1")
    await run.until_done()
    assert (run.state, run.status) == ("review", "waiting")
    first_draft = run.memory.draft

    person = await approval.resume(store, "ap1")
    with pytest.raises(InvalidPayload, match="verdict"):
        await person.send("review", {"verdict": "later", "by": "ana"})
    await person.send("review", {"verdict": "revise", "note": "be warmer", "by": "ana"})
    await person.until_done()
    assert (person.state, person.status) == ("review", "waiting")
    assert person.memory.draft != first_draft

    await person.send("review", {"verdict": "approve", "by": "ana"})
    await person.until_done()
    assert (person.status, person.memory.sent) == ("done", person.memory.draft)
    triggers = [e.trigger for e in await person.history()]
    assert triggers == ["start", "draft", "review", "revise", "draft", "review", "send"]
