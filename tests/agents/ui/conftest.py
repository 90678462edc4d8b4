from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from agents.examples.approval import approval
from agents.ui import create_app
from storage import EmbeddedStore, Store

from .ui_agent import ui_agent

HERE = "http://127.0.0.1:8765"
TOKEN = "test-token-0123456789"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = EmbeddedStore(tmp_path / "ui.db")
    yield s
    asyncio.run(s.close())


def run_sync(coro: Any) -> Any:
    return asyncio.run(coro)


@pytest.fixture
def client(store: Store) -> Iterator[TestClient]:
    """A client that holds the token (as a browser does after opening the printed URL)."""
    app = create_app(store, agents=[ui_agent, approval], token=TOKEN, drive="here")
    with TestClient(app, base_url=HERE) as c:
        assert c.get(f"/?token={TOKEN}").status_code == 200  # sets the cookie, then redirects
        yield c


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF field in the form"
    return found.group(1)


def problem_of(html: str) -> str:
    found = re.search(r'id="problem">(.*?)</p>', html, re.S)
    return found.group(1) if found else ""
