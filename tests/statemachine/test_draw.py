"""Drawing: every state and edge of a machine in Mermaid and DOT, a run drawn on it, SVG/PNG."""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from agents import Agent, llm, tool
from agents.examples import data_analyst
from agents.examples._offline import offline_model
from agents.examples.approval import approval
from statemachine import transition
from statemachine._draw import Edge, Node
from statemachine._layout_svg import placed
from statemachine.engine import Graph
from statemachine.errors import RendererMissing
from storage import Store

from ..programs import require_program

ROOT = Path(__file__).resolve().parents[2]
DATASET = [12.1, 11.8, 12.4, 12.0, 11.9, 12.3, 48.7, 12.2, 11.7, 12.1]
RED, BLUE = "#c62828", "#1565c0"
X = "\u00d7"  # the multiplication sign of "taken 3 times" in labels
ANALYST_EDGES = [  # source, trigger · kind, dest
    ("new", "plan · LLM", "planned"),
    ("planned", "calculate · tool", "computed"),
    ("computed", "interpret · LLM", "interpreted"),
    ("interpreted", "detect · tool", "checked"),
    ("checked", "report · LLM", "done"),
]


def require_dot() -> str:
    return require_program(
        "dot", "apt-get install graphviz, or brew install graphviz", "the drawing tests"
    )


def analyst() -> Agent[data_analyst.Analysis]:
    """The example agent on its offline model, whatever API keys the environment holds."""
    return data_analyst.analyst.with_model(offline_model("analyst", data_analyst._offline_reply))


def mermaid_edges(text: str) -> list[tuple[str, str, str, str]]:
    """(source, arrow, label, dest) of each Mermaid edge line."""
    return re.findall(r'^  (\S+) (-->|==>|-\.->)\|"([^"]*)"\| (\S+)$', text, re.M)


def link_styles(text: str) -> dict[int, str]:
    """Edge index -> the linkStyle it is given."""
    styles: dict[int, str] = {}
    for indexes, style in re.findall(r"^  linkStyle (\S+) (\S+)$", text, re.M):
        styles |= {int(i): style for i in indexes.split(",")}
    return styles


def dot_edges(text: str) -> dict[tuple[str, str, str], str]:
    """(source, dest, label) -> the edge's other attributes, for each DOT edge line."""
    found = re.findall(r'^  "(\S+)" -> "(\S+)" \[(.*)label=<(.*)>\]$', text, re.M)
    return {(s, d, re.sub(r"</?B>", "", label)): attrs for s, d, attrs, label in found}


# --- the table -----------------------------------------------------------------------------


def test_the_mermaid_graph_has_every_state_with_its_kind_and_every_edge_with_its_label() -> None:
    text = analyst().graph().mermaid()
    assert text.startswith('---\ntitle: "data_analyst v1"\n---\nflowchart LR\n')
    assert '  new(["new<br/><i>initial</i>"])\n' in text
    assert '  done((("done<br/><i>final</i>")))\n' in text
    for state in ("planned", "computed", "interpreted", "checked"):
        assert f'  {state}("{state}")\n' in text
    assert mermaid_edges(text) == [(s, "-->", label, d) for s, label, d in ANALYST_EDGES]
    assert "linkStyle" not in text and "style " not in text  # no run: nothing highlighted


def test_the_dot_graph_has_every_state_with_its_kind_and_every_edge_with_its_label() -> None:
    text = analyst().graph().dot()
    assert text.startswith("digraph agentfsm {") and text.endswith("}\n")
    assert '"new" [label=<new<BR/><FONT POINT-SIZE="9" COLOR="#2e7d32">initial</FONT>>' in text
    assert re.search(r'"done" \[label=<done<BR/>.*>final</FONT>>.*peripheries="2"', text)
    for state in ("planned", "computed", "interpreted", "checked"):
        assert f'  "{state}" [label=<{state}>]\n' in text
    assert dot_edges(text) == {(s, d, label): "" for s, label, d in ANALYST_EDGES}


def test_waiting_failure_guard_and_stepless_transitions_are_drawn() -> None:
    g = approval.graph()
    kinds = {n.name: n.kinds for n in g.nodes}
    assert kinds == {"new": ("initial",), "sent": ("final",), "failed": ("failure",),
                     "review": ("waiting",), "reviewed": ()}  # fmt: skip
    text = g.mermaid()
    assert '  review[/"review<br/><i>waiting</i>"/]\n' in text
    assert '  failed{{"failed<br/><i>failure</i>"}}\n' in text
    assert mermaid_edges(text) == [
        ("new", "-->", "draft · LLM", "review"),
        ("new", "-.->", "draft · LLM<br/>on error", "failed"),  # the machine's failure state
        ("review", "-->", "review · wait", "reviewed"),  # a wait cannot fail: no error edge
        ("reviewed", "-->", "send · tool<br/>[approved]", "sent"),
        ("reviewed", "-.->", "send · tool<br/>[approved]<br/>on error", "failed"),
        ("reviewed", "-->", "revise · move", "new"),  # no step, no visit limit: cannot fail
    ]
    dot = g.dot()
    assert 'style="rounded,filled,dashed"' in dot  # the waiting state
    assert ("reviewed", "sent", "send · tool<BR/>[approved]") in dot_edges(dot)


class Ticket(BaseModel):
    text: str
    kind: str = ""


def triage_agent(route_name: str = "bug") -> Agent[Ticket]:
    def classify(m: Ticket) -> str:
        return route_name if "crash" in m.text else "question"

    def urgent(m: Ticket) -> bool:
        return "now" in m.text

    return Agent(
        name="triage", memory=Ticket, initial="new", final=["filed", "answered"],
        on_error="failed",
        transitions=[
            tool("classify", "new", None, classify, into="kind",
                 routes={route_name: "filed", "question": "answering", "other": "answering"}),
            llm("answer", "answering", "answered", prompt="Answer", guard=urgent,
                model="test", on_error="escalated"),
            transition("wait_a_bit", "answering", "answered"),
            transition("escalate", "escalated", "answered"),
        ],
    )  # fmt: skip


def test_routes_are_one_edge_each_and_a_transitions_failure_state_a_dashed_edge() -> None:
    g = triage_agent().graph()
    routes = [e.route for e in g.edges if e.trigger == "classify" and not e.on_error]
    assert routes == ["bug", "question", "other"]
    text = g.mermaid()
    assert mermaid_edges(text) == [
        ("new", "-->", "classify · tool<br/>route: bug", "filed"),
        ("new", "-->", "classify · tool<br/>route: question", "answering"),
        ("new", "-->", "classify · tool<br/>route: other", "answering"),
        ("new", "-.->", "classify · tool<br/>on error", "failed"),
        ("answering", "-->", "answer · LLM<br/>[urgent]", "answered"),
        ("answering", "-.->", "answer · LLM<br/>[urgent]<br/>on error", "escalated"),
        ("answering", "-->", "wait_a_bit · move", "answered"),
        ("escalated", "-->", "escalate · move", "answered"),
    ]
    edges = dot_edges(g.dot())
    assert edges[("answering", "escalated", "answer · LLM<BR/>[urgent]<BR/>on error")] == (
        'style="dashed", '
    )


def test_user_text_in_labels_is_escaped_for_mermaid_and_dot() -> None:
    nasty = 'say "hi" <b>&#1'
    g = triage_agent(nasty).graph()
    text = g.mermaid()
    assert "classify · tool<br/>route: say #quot;hi#quot; #lt;b#gt;#amp;#35;1" in text
    assert "<b>" not in text and '"hi"' not in text
    dot = g.dot()
    assert "route: say &quot;hi&quot; &lt;b&gt;&amp;#1" in dot and "<b>" not in dot


def test_state_names_mermaid_would_misread_get_ids_of_their_own() -> None:
    class M(BaseModel):
        pass

    agent = Agent(name="ids", memory=M, initial="start-here", final=["end"],
                  transitions=[transition("go", "start-here", "end.v2"),
                               transition("stop", "end.v2", "end")])  # fmt: skip
    text = agent.graph().mermaid()
    assert '  n0(["start-here<br/><i>initial</i>"])\n' in text
    assert '  n1((("end<br/><i>final</i>")))\n' in text
    assert '  n2("end.v2")\n' in text
    assert [(s, d) for s, _, _, d in mermaid_edges(text)] == [("n0", "n2"), ("n2", "n1")]


def test_the_committed_mermaid_of_the_example_is_current() -> None:
    """docs/data_analyst.mmd is what `analyst.graph().mermaid()` gives (README shows it)."""
    path = ROOT / "docs" / "data_analyst.mmd"
    text = analyst().graph().mermaid()
    if os.environ.get("AGENTFSM_WRITE_DOCS"):
        path.write_text(text)
    assert path.read_text() == text, "regenerate: AGENTFSM_WRITE_DOCS=1 pytest " + __file__
    [shown] = re.findall(r"```mermaid\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert shown == text, "paste docs/data_analyst.mmd into README.md's mermaid block"


# --- a run drawn on it ---------------------------------------------------------------------


async def test_a_finished_run_is_drawn_bold_with_counts_and_its_state_highlighted(
    store: Store,
) -> None:
    agent = analyst()
    run = await agent.start(store, {"dataset": DATASET}, run_id="drawn")
    await run.until_done()
    g = await Graph.of_run(run)
    assert g.current == "done"
    assert g.title == "data_analyst v1 · run drawn (done) at done"
    assert all(e.taken == 1 and e.failed == 0 for e in g.edges)

    text = g.mermaid()
    edges = [(s, label, d) for s, label, d in ANALYST_EDGES]
    assert mermaid_edges(text) == [(s, "==>", f"{label}<br/>{X}1", d) for s, label, d in edges]
    assert link_styles(text) == dict.fromkeys(
        range(5), f"stroke:{BLUE},stroke-width:3px,color:{BLUE}"
    )
    assert f"  style done stroke:{BLUE},stroke-width:4px\n" in text
    assert '  done((("done<br/><i>final · current</i>")))\n' in text

    dot = g.dot()
    bold = f'color="{BLUE}", fontcolor="{BLUE}", penwidth="2.5", '
    assert dot_edges(dot) == {(s, d, f"{label}<BR/>{X}1"): bold for s, label, d in edges}
    assert re.search(rf'"done" \[label=<.*current</FONT>>.*color="{BLUE}".*penwidth="3"', dot)


async def test_a_failed_step_is_drawn_red_from_its_source_state(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = analyst()
    monkeypatch.setenv("AGENTFSM_FAIL_AT", "detect")
    run = await agent.start(store, {"dataset": DATASET}, run_id="failing")
    await run.until_done()
    assert (run.status, run.state) == ("failed", "interpreted")
    events = await run.history()
    g = agent.graph(run=run.record, events=events)
    assert g.current == "interpreted"

    text = g.mermaid()
    lines = mermaid_edges(text)
    failed = ("interpreted", "==>", f"detect · tool<br/>✗ failed {X}1", "interpreted")
    assert lines[-1] == failed  # drawn from where it failed (no failure state here)
    assert ("interpreted", "-->", "detect · tool", "checked") in lines  # not taken
    assert link_styles(text)[len(lines) - 1] == f"stroke:{RED},stroke-width:3px,color:{RED}"
    assert f"  style interpreted stroke:{BLUE},stroke-width:4px\n" in text
    red = dot_edges(g.dot())[("interpreted", "interpreted", f"detect · tool<BR/>✗ failed {X}1")]
    assert red == f'style="dashed", color="{RED}", fontcolor="{RED}", penwidth="2.5", '

    # Retried and finished: the failure stays on the picture, next to the path taken.
    monkeypatch.delenv("AGENTFSM_FAIL_AT")
    again = await agent.resume(store, "failing")
    await again.retry()
    await again.until_done()
    g = await Graph.of_run(again)
    counts = {(e.source, e.trigger, e.dest): (e.taken, e.failed) for e in g.edges}
    assert counts[("interpreted", "detect", "checked")] == (1, 0)
    assert counts[("interpreted", "detect", "interpreted")] == (0, 1)
    assert g.current == "done"


async def test_a_failure_state_gets_a_red_edge_and_loops_count_each_pass(store: Store) -> None:
    class Loop(BaseModel):
        n: int = 0

    def bump(m: Loop) -> int:
        return m.n + 1

    def boom(m: Loop) -> int:
        raise RuntimeError("boom")

    def again(m: Loop) -> bool:
        return m.n < 3

    agent = Agent(
        name="loop", memory=Loop, initial="a", final=["z"], on_error="broken",
        transitions=[tool("spin", "a", "a", bump, into="n", guard=again),
                     tool("leave", "a", "b", bump, into="n"),
                     tool("finish", "b", "z", boom)],
    )  # fmt: skip
    run = await agent.start(store, Loop(), run_id="loop")
    await run.until_done()
    assert (run.status, run.state) == ("failed", "broken")
    g = await Graph.of_run(run)
    counts = {(e.source, e.trigger, e.dest, e.in_table): (e.taken, e.failed) for e in g.edges}
    assert counts == {
        ("a", "spin", "a", True): (3, 0),
        ("a", "spin", "broken", True): (0, 0),
        ("a", "leave", "b", True): (1, 0),
        ("a", "leave", "broken", True): (0, 0),
        ("b", "finish", "z", True): (0, 0),
        ("b", "finish", "broken", True): (0, 1),  # the machine's failure edge, drawn red
    }
    assert f'  b ==>|"finish · tool<br/>on error<br/>✗ failed {X}1"| broken\n' in g.mermaid()
    assert f'  a ==>|"spin · tool<br/>[again]<br/>{X}3"| a\n' in g.mermaid()
    assert [n.name for n in g.nodes if n.current] == ["broken"]


async def test_a_run_needs_its_events_and_must_belong_to_the_machine(store: Store) -> None:
    run = await analyst().start(store, {"dataset": DATASET}, run_id="r1")
    with pytest.raises(TypeError, match=r"await Graph.of_run\(run\)"):
        analyst().graph(run=run)
    with pytest.raises(ValueError, match="belongs to 'data_analyst', not to 'approval'"):
        approval.graph(run=run.record, events=await run.history())
    assert analyst().graph(run=run.record, events=[]).current == "new"


# --- pictures ------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["dot", "python"])
def test_the_svg_is_valid_xml_with_one_node_per_state_and_one_group_per_edge(layout: str) -> None:
    if layout == "dot":
        require_dot()
    for agent in (analyst(), approval, triage_agent('say "hi" <b>')):
        root = ET.fromstring(agent.graph().svg(layout=layout))  # type: ignore[arg-type]
        ns = {"svg": "http://www.w3.org/2000/svg"}
        nodes = root.findall(".//svg:g[@class='node']", ns)
        titles = [n.find("svg:title", ns) for n in nodes]
        assert sorted(t.text or "" for t in titles if t is not None) == sorted(agent.states)
        assert len(root.findall(".//svg:g[@class='edge']", ns)) == len(agent.graph().edges)


def test_the_png_is_a_png() -> None:
    require_dot()
    assert analyst().graph().png().startswith(b"\x89PNG\r\n\x1a\n")


def test_without_dot_svg_is_drawn_in_python_and_png_names_the_program(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty directory: no `dot` anywhere
    g = analyst().graph()
    assert g.svg() == g.svg(layout="python")
    for draw in (g.png, lambda: g.svg(layout="dot")):
        with pytest.raises(RendererMissing) as info:
            draw()
        message = str(info.value)
        assert "`dot` program" in message
        assert "apt-get install graphviz" in message and "brew install graphviz" in message
    assert g.mermaid() and g.dot()  # text needs nothing installed


_NAMES = st.text(alphabet='abcdefghijklmnopqrstuvwxyz_<>&"é ·', min_size=1, max_size=14)


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """Any graph: states of any kind, edges of every sort between any two (loops included)."""
    names: list[str] = draw(st.lists(_NAMES, min_size=1, max_size=9, unique=True))
    kinds = ("initial", "final", "failure", "waiting")
    nodes = tuple(
        Node(name=n, kinds=tuple(draw(st.lists(st.sampled_from(kinds), max_size=2, unique=True))),
             current=draw(st.booleans()), visited=draw(st.booleans()))
        for n in names
    )  # fmt: skip
    edges = draw(st.lists(st.builds(
        Edge, source=st.sampled_from(names), dest=st.sampled_from(names), trigger=_NAMES,
        step=st.sampled_from(["llm", "tool", "wait", "move"]), guard=st.sampled_from(["", "ok"]),
        route=st.none() | _NAMES, on_error=st.booleans(), taken=st.integers(0, 3),
        failed=st.integers(0, 2), in_table=st.booleans(),
    ), max_size=16))  # fmt: skip
    return Graph(title=draw(_NAMES), nodes=nodes, edges=tuple(edges))


def _overlap(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> bool:
    e = 0.01  # touching is fine; float sums may differ in the last digit
    return a[0] < b[2] - e and b[0] < a[2] - e and a[1] < b[3] - e and b[1] < a[3] - e


@settings(max_examples=100, deadline=None)
@given(graphs())
def test_the_python_layout_draws_every_state_and_edge_and_overlaps_no_label(g: Graph) -> None:
    root = ET.fromstring(g.svg(layout="python"))
    ns = {"svg": "http://www.w3.org/2000/svg"}
    titles = [t.text or "" for t in root.findall(".//svg:g[@class='node']/svg:title", ns)]
    assert sorted(titles) == sorted(n.name for n in g.nodes)
    assert len(root.findall(".//svg:g[@class='edge']", ns)) == len(g.edges)
    boxes = placed(g)
    assert sorted(name for kind, name, _ in boxes if kind == "state") == sorted(titles)
    assert len([b for b in boxes if b[0] == "label"]) == len(g.edges)
    for i, (kind, name, rect) in enumerate(boxes):
        assert rect[0] >= 0 and rect[1] >= 0, (kind, name, rect)
        for other in boxes[i + 1 :]:
            assert not _overlap(rect, other[2]), ((kind, name, rect), other)
