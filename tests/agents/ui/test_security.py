"""The token and CSRF rules of the web UI: who may read, who may act, and that a refused
request writes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from agents.ui import create_app
from storage import Store

from .conftest import HERE, TOKEN, csrf_of, run_sync
from .test_app import waiting_run
from .ui_agent import ui_agent


@pytest.fixture
def open_reads(store: Store) -> Iterator[TestClient]:
    """A loopback server started without --token: reading is open, acting is not."""
    app = create_app(store, agents=[ui_agent], loopback=True)
    with TestClient(app, base_url=HERE) as c:
        c.app_token = app.state.guard.token  # type: ignore[attr-defined]
        yield c


def commits(store: Store, run_id: str = "t1") -> int:
    return len(run_sync(store.history(run_id)))


def cancel_form(c: TestClient) -> dict[str, str]:
    return {"csrf": csrf_of(c.get("/runs/t1/act/cancel").text), "seq": "2", "reason": "x"}


def test_a_loopback_server_without_token_reads_openly_but_acts_only_with_it(
    open_reads: TestClient, store: Store
) -> None:
    waiting_run(store)
    assert open_reads.get("/runs/t1").status_code == 200
    assert "Read only" in open_reads.get("/runs/t1").text
    data = cancel_form(open_reads)
    refused = open_reads.post("/runs/t1/act/cancel/do", data=data, headers={"origin": HERE})
    assert refused.status_code == 401 and "token" in refused.text
    assert commits(store) == 3
    token = open_reads.app_token  # type: ignore[attr-defined]
    assert open_reads.get(f"/?token={token}").status_code == 200
    assert "Read only" not in open_reads.get("/runs/t1").text
    done = open_reads.post("/runs/t1/act/cancel/do", data=data, headers={"origin": HERE},
                           follow_redirects=False)  # fmt: skip
    assert done.status_code == 303 and commits(store) == 4


def test_a_loopback_server_without_token_answers_loopback_names_only(
    open_reads: TestClient, store: Store
) -> None:
    waiting_run(store)
    rebound = open_reads.get("/", headers={"host": "evil.example:8765"})
    assert rebound.status_code == 403  # a DNS-rebinding page cannot read the runs
    assert open_reads.get("/", headers={"host": "localhost:8765"}).status_code == 200


def test_with_a_token_every_page_needs_it(store: Store) -> None:
    waiting_run(store)
    app = create_app(store, agents=[ui_agent], token=TOKEN, loopback=False)
    with TestClient(app, base_url="http://192.0.2.1:8765") as c:
        for path in ("/", "/agents", "/runs/t1", "/runs/t1/stream", "/runs/t1/act/send"):
            assert c.get(path).status_code == 401, path
        assert c.get("/?token=wrong").status_code == 401
        taken = c.get("/runs/t1?token=" + TOKEN + "&at=1", follow_redirects=False)
        assert taken.status_code == 303 and taken.headers["location"] == "/runs/t1?at=1"
        assert "HttpOnly" in taken.headers["set-cookie"]
        assert "samesite=strict" in taken.headers["set-cookie"].lower()
        assert c.get("/runs/t1").status_code == 200
    with TestClient(app, base_url="http://192.0.2.1:8765") as bearer:
        auth = {"authorization": f"Bearer {TOKEN}"}
        assert bearer.get("/runs/t1", headers=auth).status_code == 200


def test_actions_need_the_csrf_token_and_this_servers_origin(
    client: TestClient, store: Store
) -> None:
    waiting_run(store)
    good = cancel_form(client)
    cases = [
        ({**good, "csrf": ""}, {"origin": HERE}),
        ({**good, "csrf": "forged-forged-forged-forged"}, {"origin": HERE}),
        (good, {"origin": "http://evil.example"}),
        (good, {"referer": "http://evil.example/x"}),
        (good, {}),  # neither Origin nor Referer
    ]
    for data, headers in cases:
        for step in ("preview", "do"):
            answer = client.post(f"/runs/t1/act/cancel/{step}", data=data, headers=headers)
            assert answer.status_code == 403, (data, headers, step)
    assert commits(store) == 3
    assert client.post("/runs/t1/act/cancel/preview", data=good,
                       headers={"referer": f"{HERE}/runs/t1"}).status_code == 200  # fmt: skip


def test_get_never_writes_and_actions_are_post_only(client: TestClient, store: Store) -> None:
    waiting_run(store)
    for path in ("/runs/t1/act/cancel/do?reason=x", "/runs/t1/act/cancel/preview"):
        assert client.get(path).status_code in (404, 405)
    assert client.post("/runs/t1", headers={"origin": HERE}).status_code == 405
    assert commits(store) == 3


def test_a_missing_extra_is_named_with_its_install_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    from agents.cli import main

    real = importlib.util.find_spec
    monkeypatch.setattr(
        "agents.cli.serving.find_spec", lambda name: None if name == "uvicorn" else real(name)
    )
    assert main(["ui", "--store", "memory://"]) == 2
    assert 'needs uvicorn: pip install "agentfsm[ui]"' in capsys.readouterr().err
