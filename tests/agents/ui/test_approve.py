"""Approving (or denying) a DurableAgent run's deferred tool call from its page: recorded as
`agentfsm approve` records it, and the run goes on in the application."""

from __future__ import annotations

import html
from pathlib import Path

from starlette.testclient import TestClient

from storage import Store

from ..test_cli_approve import go_on, park
from .conftest import HERE, csrf_of, problem_of, run_sync


def test_a_deferred_call_is_approved_with_edited_arguments_from_the_page(
    client: TestClient, store: Store, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/ui.db"
    ran = run_sync(park(url, "dur"))
    page = client.get("/runs/dur").text
    assert "/runs/dur/act/approve?call=del-a" in page
    form = client.get("/runs/dur/act/approve?call=del-a").text
    assert "delete_file" in form and "a.txt" in html.unescape(form)
    seq = str(run_sync(store.load("dur")).seq)
    data = {"csrf": csrf_of(form), "seq": seq, "call": "del-a", "verdict": "approve",
            "args": '{"path": "c.txt"}'}  # fmt: skip
    bad = client.post("/runs/dur/act/approve/preview", data={**data, "args": "[1]"},
                      headers={"origin": HERE})  # fmt: skip
    assert bad.status_code == 422 and "JSON object" in problem_of(bad.text)
    plan = client.post("/runs/dur/act/approve/preview", data=data, headers={"origin": HERE})
    assert "agentfsm approve dur del-a --args" in html.unescape(plan.text)
    done = client.post("/runs/dur/act/approve/do", data=data, headers={"origin": HERE},
                       follow_redirects=False)  # fmt: skip
    assert done.status_code == 303
    assert "deleted c.txt" in run_sync(go_on(url, "dur", ran))
    assert ran.counts["delete_file c.txt"] == 1 and "delete_file a.txt" not in ran.counts


def test_a_deferred_call_is_denied_from_the_page(
    client: TestClient, store: Store, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/ui.db"
    ran = run_sync(park(url, "dur-no"))
    form = client.get("/runs/dur-no/act/approve?call=del-a").text
    seq = str(run_sync(store.load("dur-no")).seq)
    data = {"csrf": csrf_of(form), "seq": seq, "call": "del-a", "verdict": "deny",
            "message": "keep it"}  # fmt: skip
    client.post("/runs/dur-no/act/approve/do", data=data, headers={"origin": HERE})
    output = run_sync(go_on(url, "dur-no", ran))
    assert "keep it" in output and not any(k.startswith("delete_file") for k in ran.counts)
