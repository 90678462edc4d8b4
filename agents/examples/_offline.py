"""An offline, deterministic stand-in for a real model, built on pydantic-ai's `FunctionModel`.

Examples use it when no API key is set, so they run anywhere; its name says "offline" wherever
the model is shown.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pydantic_ai.messages import ModelMessage, ModelResponse, TextPart, UserPromptPart
from pydantic_ai.models import Model
from pydantic_ai.models.function import AgentInfo, FunctionModel

__all__ = ["choose_model", "offline_model"]


def offline_model(name: str, reply: Callable[[str], str]) -> FunctionModel:
    """A model that answers each prompt with `reply(prompt)`: no network, same answer each time."""

    def respond(messages: list[ModelMessage], info: AgentInfo) -> ModelResponse:
        prompt = ""
        for part in messages[-1].parts:
            if isinstance(part, UserPromptPart) and isinstance(part.content, str):
                prompt = part.content
        return ModelResponse(parts=[TextPart(reply(prompt))], model_name=f"offline:{name}")

    return FunctionModel(respond, model_name=f"offline:{name}")


def choose_model(offline: Callable[[], Model]) -> Model | str:
    """`$AGENTFSM_MODEL`, else a real model when its API key is set, else the offline one."""
    if named := os.environ.get("AGENTFSM_MODEL"):
        return named
    if os.environ.get("OPENAI_API_KEY"):
        return "openai:gpt-4o-mini"
    if os.environ.get("ANTHROPIC_API_KEY"):
        return "anthropic:claude-3-5-haiku-latest"
    return offline()
