from __future__ import annotations

from collections.abc import Iterator

import pydantic_ai.models
import pytest


@pytest.fixture(autouse=True)
def no_real_model_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Nothing reaches a real provider by mistake; FunctionModel and TestModel still work."""
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "AGENTFSM_MODEL", "AGENTFSM_FAIL_AT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(pydantic_ai.models, "ALLOW_MODEL_REQUESTS", False)
    yield
