"""`agentfsm ui` as a command: it serves once it printed its URL, loopback by default, and
off loopback it makes a token when none is given (then reading needs it too)."""

from __future__ import annotations

from pathlib import Path

import httpx

from .server import ui_server


def test_the_command_serves_on_loopback_and_prints_its_url(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/s.db"
    with ui_server("--store", store, "--agents", "tests.agents.ui.ui_agent:ui_agent") as (url, _):
        assert url.startswith("http://127.0.0.1:") and "?token=" in url
        base = url.split("?")[0]
        assert httpx.get(base).status_code == 200  # loopback, no --token: reading is open
        with httpx.Client() as browser:
            assert browser.get(url, follow_redirects=True).status_code == 200
            assert "Read only" not in browser.get(base + "agents").text
            assert "ui_ticket v1" in browser.get(base + "agents").text


def test_off_loopback_a_token_is_made_and_needed_to_read(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/s.db"
    with ui_server("--store", store, "--host", "0.0.0.0") as (url, said):
        assert any("made one" in line for line in said)
        port = url.split(":")[2].split("/")[0]
        token = url.split("?token=")[1]
        here = f"http://127.0.0.1:{port}/"
        assert httpx.get(here).status_code == 401
        assert httpx.get(here, headers={"authorization": f"Bearer {token}"}).status_code == 200
