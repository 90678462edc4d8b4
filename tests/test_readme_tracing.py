"""README.md's OTLP tracing example runs as written and sends the run's trace: a local
OTLP/HTTP receiver (on 127.0.0.1) gets the root span and one span per transition, all in
the trace the run stored, and pydantic-ai's chat spans inside the llm steps' spans."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
KEYS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "OPENAI_BASE_URL", "AGENTFSM_STORE")


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP traces endpoint on loopback: (its URL, the request bodies it got)."""
    bodies: list[bytes] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/v1/traces", bodies
    server.shutdown()
    server.server_close()


def test_the_otlp_example_sends_one_trace_for_the_run(
    tmp_path: Path, receiver: tuple[str, list[bytes]]
) -> None:
    url, bodies = receiver
    [code] = [b for b in re.findall(r"```py\n(.*?)```", README, re.S) if "OTLPSpanExporter" in b]
    script = tmp_path / "traced.py"
    script.write_text(code)
    env = {k: v for k, v in os.environ.items() if k not in KEYS}
    env.update(PYTHONPATH=str(ROOT), OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=url, NO_PROXY="*")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    run_id, status, traceparent = done.stdout.split()
    assert (run_id, status) == ("traced-1", "done")
    _, trace_id, root_id, _ = traceparent.split("-")

    spans = []
    for body in bodies:
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        spans += [s for rs in request.resource_spans for ss in rs.scope_spans for s in ss.spans]
    names = {s.span_id.hex(): s.name for s in spans}
    assert {s.trace_id.hex() for s in spans} == {trace_id}
    assert names[root_id] == "run data_analyst"
    ours = [s.name for s in spans if s.parent_span_id.hex() == root_id]
    assert ours == ["llm plan", "tool calculate", "llm interpret", "tool detect", "llm report"]
    chats = [s for s in spans if s.name.startswith("chat ")]
    assert len(chats) == 3
    for chat in chats:
        agent_run = next(s for s in spans if s.span_id == chat.parent_span_id)
        assert names[agent_run.parent_span_id.hex()].startswith("llm ")
