"""The HTML run report: what it shows, that it needs no network, and how a browser draws it."""

from __future__ import annotations

import html
import os
import shutil
import struct
import subprocess
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents import Agent, render_report
from agents._report import report_html
from agents.cli import main
from agents.examples import data_analyst
from agents.examples._offline import offline_model
from agents.examples.approval import Reply, approval
from storage import Store, open_store
from tests.programs import require_programs
from tests.statemachine.test_draw import require_dot

ROOT = Path(__file__).resolve().parents[2]
DATASET = [12.1, 11.8, 12.4, 12.0, 11.9, 12.3, 48.7, 12.2, 11.7, 12.1]
TRIGGERS = ["start", "plan", "calculate", "interpret", "detect", "retry", "detect", "report"]


def analyst() -> Agent[data_analyst.Analysis]:
    return data_analyst.analyst.with_model(offline_model("analyst", data_analyst._offline_reply))


async def failed_then_finished(store: Store, monkeypatch: pytest.MonkeyPatch) -> str:
    """The demo's story: 'detect' fails (three tries), the run is retried and finishes."""
    agent = analyst()
    monkeypatch.setenv("AGENTFSM_FAIL_AT", "detect")
    run = await agent.start(store, {"dataset": DATASET}, run_id="analysis-42")
    await run.until_done()
    monkeypatch.delenv("AGENTFSM_FAIL_AT")
    run = await agent.resume(store, "analysis-42")
    await run.retry()
    await run.until_done()
    assert run.status == "done"
    return run.run_id


@pytest.fixture
async def report(monkeypatch: pytest.MonkeyPatch) -> str:
    store = open_store("memory://")
    try:
        run_id = await failed_then_finished(store, monkeypatch)
        return await render_report(analyst(), store, run_id)
    finally:
        await store.close()


def between(page: str, start: str, end: str) -> str:
    return page[page.index(start) : page.index(end, page.index(start))]


# --- what it shows -------------------------------------------------------------------------


def test_the_report_shows_the_run_on_its_graph_and_every_transition(report: str) -> None:
    assert report.startswith("<!DOCTYPE html>") and report.rstrip().endswith("</html>")
    svg = between(report, "<svg", "</svg>")
    for state in analyst().states:
        assert f"<title>{state}</title>" in svg
    assert "detect · tool" in svg and "✗ failed" in svg  # the failed step, drawn in red
    timeline = between(report, "<h2>Timeline</h2>", "</table>")
    for seq, trigger in enumerate(TRIGGERS):
        assert f'<a href="#seq-{seq}">{seq}</a></td><td><b>{trigger}</b>' in timeline
        assert f'<article id="seq-{seq}"' in report
    assert "interpreted → interpreted" in timeline and "InjectedFailure" in timeline
    assert "offline:analyst" in timeline  # the model, from the response message
    assert timeline.count("ms</td>") == len(TRIGGERS)  # a duration on every row


def test_each_step_shows_its_output_and_the_memory_after_it(report: str) -> None:
    quote = html.escape('"')
    after_plan = between(report, 'id="seq-1"', 'id="seq-2"')
    after_calculate = between(report, 'id="seq-2"', 'id="seq-3"')
    assert f"{quote}stats{quote}: {{}}" in after_plan  # not computed yet
    assert f"{quote}mean{quote}: 15.72" in after_calculate
    assert "memory after seq 2" in after_calculate
    failed = between(report, 'id="seq-4"', 'id="seq-5"')
    assert "InjectedFailure" in failed and "(attempt 3)" in failed
    assert "memory unchanged" in failed
    last = report[report.index('id="seq-7"') :]
    assert "Report: 10 values analysed." in last


def test_the_conversation_is_shown_part_by_part(report: str) -> None:
    plan = between(report, 'id="seq-1"', 'id="seq-2"')
    conversation = plan[plan.index("<h4>conversation</h4>") :]
    assert "You are a careful data analyst." in conversation  # the instructions
    assert '<div class="msg user"><div class="who">user</div>' in conversation
    assert "Plan an analysis of this dataset." in conversation
    assert '<div class="msg model"><div class="who">offline:analyst</div>' in conversation
    assert "1. Compute summary statistics of the 10 values." in conversation


def test_the_report_needs_no_network_and_runs_no_script(report: str) -> None:
    lowered = report.lower()
    for needle in ("http://", "https://", "<script", "<link", "@import", "url(", " src="):
        assert needle not in lowered, needle


async def test_everything_from_the_run_is_escaped() -> None:
    store = open_store("memory://")
    nasty = '<script>alert("x")</script><img src=x onerror=alert(1)> & refund'
    run = await approval.start(store, Reply(request=nasty), run_id="nasty")
    await run.until_done()
    page = report_html(approval, run.record, await run.history())
    await store.close()
    assert "<script" not in page and "<img" not in page
    assert "&lt;script&gt;alert(" in page  # in the memory and in the prompt
    assert page.count("&lt;img src=x onerror=alert(1)&gt; &amp; refund") >= 2


async def test_with_or_without_dot_the_graph_is_drawn_alike(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    store = open_store("memory://")
    run_id = await failed_then_finished(store, monkeypatch)
    anywhere = await render_report(analyst(), store, run_id)
    monkeypatch.setenv("PATH", str(tmp_path))  # no `dot`
    page = await render_report(analyst(), store, run_id)
    await store.close()
    assert page == anywhere  # the same picture on every machine
    svg = between(page, "<svg", "</svg>")
    for state in analyst().states:
        assert f"<title>{state}</title>" in svg
    assert "detect · tool" in svg and "✗ failed" in svg and 'stroke="#c62828"' in svg
    assert "graphviz" not in page.lower() and "flowchart" not in page


# --- in a browser --------------------------------------------------------------------------


def png_info(data: bytes) -> tuple[int, int, Iterator[bytes]]:
    """Width, height and the decoded rows (RGB or RGBA bytes) of an 8-bit PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, bytearray()
    width = height = color = 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert (depth, interlace) == (8, 0), "only 8-bit, non-interlaced PNGs"
        elif kind == b"IDAT":
            idat += body
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    raw = zlib.decompress(bytes(idat))
    stride = width * bpp

    def rows() -> Iterator[bytes]:
        prev = bytearray(stride)
        for y in range(height):
            kind = raw[y * (stride + 1)]
            line = bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
            if kind == 1:  # Sub
                for i in range(bpp, stride):
                    line[i] = (line[i] + line[i - bpp]) & 0xFF
            elif kind == 2:  # Up
                line = bytearray((a + b) & 0xFF for a, b in zip(line, prev, strict=True))
            elif kind == 3:  # Average
                for i in range(stride):
                    left = line[i - bpp] if i >= bpp else 0
                    line[i] = (line[i] + ((left + prev[i]) >> 1)) & 0xFF
            elif kind == 4:  # Paeth
                for i in range(stride):
                    a = line[i - bpp] if i >= bpp else 0
                    b, c = prev[i], prev[i - bpp] if i >= bpp else 0
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                    line[i] = (line[i] + pred) & 0xFF
            prev = line
            yield bytes(line)

    return width, height, rows()


def screenshot(page: Path, png: Path, width: int, height: int) -> bytes:
    """Headless Chromium's picture of `page`, with nothing reaching the network."""
    [chromium] = require_programs(
        ("chromium", "apt-get install chromium"), needed_by="the report screenshot test"
    )
    profile = png.parent / "chromium-profile"
    done = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", f"--screenshot={png}",
         f"--window-size={width},{height}", page.resolve().as_uri()],
        capture_output=True, timeout=120, check=False,
    )  # fmt: skip
    assert png.exists(), done.stderr.decode(errors="replace")[-2000:]
    return png.read_bytes()


def test_headless_chromium_draws_the_report(report: str, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(report, encoding="utf-8")
    shot = screenshot(page, tmp_path / "shot.png", 1280, 2000)
    width, height, rows = png_info(shot)
    assert (width, height) == (1280, 2000)
    colours: set[bytes] = set()
    bluish = reddish = False
    for y, row in enumerate(rows):
        bpp = len(row) // width
        pixels = {row[i : i + 3] for i in range(0, len(row), bpp)}
        colours |= pixels
        bluish = bluish or any(b > r + 80 and b > g + 40 for r, g, b in pixels)
        reddish = reddish or any(r > g + 90 and r > b + 90 for r, g, b in pixels)
        if len(colours) > 64 and bluish and reddish:
            break  # drawn: text, the run's path in blue, the failed step in red
        assert y < 1200, f"only {len(colours)} colours (blue {bluish}, red {reddish})"
    if os.environ.get("AGENTFSM_WRITE_DOCS"):
        shutil.copyfile(tmp_path / "shot.png", ROOT / "docs" / "report.png")


# --- the command ---------------------------------------------------------------------------


def test_the_cli_draws_graphs_and_writes_reports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTFSM_FAIL_AT", "detect")  # restored afterwards (demo sets it too)
    store = ["--store", f"sqlite:///{tmp_path / 'store.db'}"]
    spec = "agents.examples.data_analyst:analyst"
    assert main(["demo", "--fail-at", "detect", "--run-id", "cli-1", *store]) == 1
    capsys.readouterr()

    assert main(["graph", spec]) == 0
    assert capsys.readouterr().out == analyst().graph().mermaid()
    assert not (tmp_path / ".agentfsm").exists()  # drawing a table opens no store

    assert main(["graph", spec, "--run", "cli-1", "--format", "dot", *store]) == 0
    dot = capsys.readouterr().out
    assert dot.startswith("digraph") and 'color="#c62828"' in dot

    assert main(["graph", spec, "--format", "png", *store]) == 2
    assert "give -o FILE.png" in capsys.readouterr().err

    assert main(["report", "cli-1", "-o", "run.html", *store]) == 0
    page = (tmp_path / "run.html").read_text()
    assert "cli-1" in page and "InjectedFailure" in page

    assert main(["runs", *store]) == 0
    assert "cli-1" in capsys.readouterr().out


def test_the_cli_draws_pictures_by_file_extension(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = "agents.examples.data_analyst:analyst"
    assert main(["graph", spec, "-o", str(tmp_path / "g.svg")]) == 0  # with or without dot
    assert "<svg" in (tmp_path / "g.svg").read_text()
    require_dot()
    assert main(["graph", spec, "-o", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes().startswith(b"\x89PNG")
    assert "wrote" in capsys.readouterr().out
