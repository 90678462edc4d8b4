"""A ReAct-style researcher: think, call tools the model picks, observe, think again, answer.

    agentfsm run agents.examples.researcher:researcher --input '{"question": "Why use WAL?"}'

The model's tool calls come back as data: each call is a committed transition of its own
(keyed by its tool_call_id), so a crash between two calls re-runs neither the model request
nor the calls already made. `max_visits` bounds the loop: a model that never stops calling
tools sends the run to "failed" with the reason.
"""

from __future__ import annotations

import json
import re

from pydantic import BaseModel
from pydantic_ai.messages import (
    ModelMessage,
    ModelRequest,
    ModelResponse,
    TextPart,
    ToolCallPart,
    ToolReturnPart,
    UserPromptPart,
)
from pydantic_ai.models.function import AgentInfo, FunctionModel

from agents import Agent, llm, tool_calls
from agents.examples._offline import choose_model

__all__ = ["LIBRARY", "Research", "read", "researcher", "search"]

LIBRARY = {
    "sqlite-wal": "SQLite's write-ahead log lets readers run beside one writer; a commit"
    " appends to the log, which is checkpointed into the database later.",
    "redis-aof": "Redis's append-only file logs every write command; with appendfsync always"
    " each write is on disk before the reply, with everysec up to a second may be lost.",
    "idempotency": "An idempotency key lets a receiver drop a repeated request, so a retry"
    " after an unknown outcome applies the effect at most once.",
    "leases": "A lease with a fencing token lets one holder act at a time; a holder whose"
    " lease expired has its late writes refused by the token check.",
}


class Research(BaseModel):
    """The agent's memory."""

    question: str
    answer: str = ""


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z0-9]+", text.lower()) if len(w) > 2}


def search(query: str) -> list[str]:
    """Search the library. Returns the titles of the documents that match any query word."""
    words = _words(query) - {"the", "and", "why", "how", "what", "use"}
    return [title for title, text in LIBRARY.items() if words & _words(f"{title} {text}")]


def read(title: str) -> str:
    """Read one document of the library by its title."""
    if title not in LIBRARY:
        raise ValueError(f"no document {title!r}")
    return LIBRARY[title]


TOOLS = [search, read]


def _offline_brain(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
    """A scripted researcher: search, then read what it found (in parallel), then answer."""
    returns = [
        p for m in messages if isinstance(m, ModelRequest) for p in m.parts
        if isinstance(p, ToolReturnPart)
    ]  # fmt: skip
    name = "offline:researcher"
    if not returns:
        question = next(
            (p.content for m in messages if isinstance(m, ModelRequest) for p in m.parts
             if isinstance(p, UserPromptPart) and isinstance(p.content, str)),
            "",
        )  # fmt: skip
        call = ToolCallPart("search", {"query": question}, tool_call_id="call-search")
        return ModelResponse(parts=[call], model_name=name)
    last = returns[-1]
    if last.tool_name == "search":
        titles = last.content if isinstance(last.content, list) else []
        if not titles:
            return ModelResponse(
                parts=[TextPart("The library has nothing on this.")], model_name=name
            )
        calls = [
            ToolCallPart("read", {"title": t}, tool_call_id=f"call-read-{i}")
            for i, t in enumerate(titles[:2])
        ]
        return ModelResponse(parts=calls, model_name=name)
    notes = [str(p.content) for p in returns if p.tool_name == "read"]
    answer = "From the library: " + " ".join(notes)
    return ModelResponse(parts=[TextPart(json.dumps(answer)[1:-1])], model_name=name)


def offline_researcher() -> FunctionModel:
    return FunctionModel(_offline_brain, model_name="offline:researcher")


researcher = Agent(
    name="researcher",
    memory=Research,
    model=choose_model(offline_researcher),
    initial="question",
    final=["answered"],
    on_error="failed",
    transitions=[
        llm(
            "think",
            ["question", "observed"],
            "answered",
            prompt=lambda m: m.question,
            instructions="Answer from the library only: search it, read what fits, then"
            " answer in two sentences.",
            tools=TOOLS,
            on_tool_calls="acting",
            into="answer",
            max_visits=6,
        ),
        tool_calls("act", "acting", "observed", tools=TOOLS, retries=2, max_visits=20),
    ],
)
