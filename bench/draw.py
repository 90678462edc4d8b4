"""How long drawing a big machine takes: Mermaid text, DOT text, and SVG through Graphviz.

Builds an agent with `--states` states (default 200) and `--transitions` transitions (default
1000): a chain s0 -> s1 -> ... -> s199 (final) with no guard on the last row out of each state,
and the other rows guarded ("several transitions per state"), going forwards or back at
random (seeded). Then a run of it is drawn as well: a made-up history of up to 400 moves
along the table (picked at random) and one failed step, counted onto the edges.

Times `.mermaid()`, `.dot()` and, when Graphviz's `dot` program is installed, `.svg()` (the
best of `--repeat` rounds; the target is under a second each) and prints a table. Usage, from
the repository root:

    python3 bench/draw.py [--states 200] [--transitions 1000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python3 bench/draw.py`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import BaseModel

from agents import Agent, tool
from statemachine.engine import Graph, Transition
from storage import Event, RunRecord


class Memory(BaseModel):
    n: int = 0


def work(memory: Memory) -> int:
    return memory.n + 1


def _guard(i: int) -> Callable[[Memory], bool]:
    def guard(memory: Memory) -> bool:
        return memory.n % 7 == i % 7

    guard.__name__ = f"g{i}"
    return guard


def build(states: int, transitions: int, seed: int = 7) -> Agent[Memory]:
    """A chain of `states` states with `transitions` rows; extra rows are guarded."""
    rng = random.Random(seed)
    names = [f"s{i}" for i in range(states)]
    extra: dict[int, list[Transition]] = {i: [] for i in range(states - 1)}
    for k in range(transitions - (states - 1)):
        i = rng.randrange(states - 1)
        dest = names[rng.choice([max(i - rng.randrange(1, 5), 0), min(i + 2, states - 1)])]
        extra[i].append(tool(f"x{k}", names[i], dest, work, into="n", guard=_guard(k)))
    rows: list[Transition] = []
    for i in range(states - 1):
        # guarded rows first: out of one state the first whose guard passes fires
        rows += [*extra[i], tool(f"t{i}", names[i], names[i + 1], work, into="n")]
    return Agent(name="big", memory=Memory, initial="s0", final=[names[-1]], transitions=rows)


def history(agent: Agent[Memory], steps: int, seed: int = 7) -> tuple[RunRecord, list[Event]]:
    """A made-up run along the table: up to `steps` moves picked at random, then a failed step."""
    rng = random.Random(seed)
    events = [Event(seq=0, trigger="start", kind="start", source="", dest="s0",
                    status="running", key="bench")]  # fmt: skip
    state = "s0"
    while len(events) <= steps and state not in agent.table.final:
        t = rng.choice(agent.table.out[state])
        assert t.dest is not None
        events.append(Event(seq=len(events), trigger=t.trigger, kind="tool", source=state,
                            dest=t.dest, status="running", key=f"bench:{len(events)}"))  # fmt: skip
        state = t.dest
    trigger = agent.table.out[state][0].trigger if agent.table.out[state] else "none"
    events.append(Event(seq=len(events), trigger=trigger, kind="error", source=state,
                        dest=state, status="failed", key="bench:failed",
                        error={"step": "tool"}))  # fmt: skip
    record = RunRecord(run_id="bench", agent=agent.name, version=agent.version, state=state,
                       seq=len(events) - 1, status="failed", memory={"n": 0}, created_at=0,
                       updated_at=0)  # fmt: skip
    return record, events


def best(repeat: int, fn: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--states", type=int, default=200)
    p.add_argument("--transitions", type=int, default=1000)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()

    started = time.perf_counter()
    agent = build(args.states, args.transitions)
    declared = time.perf_counter() - started
    record, events = history(agent, 400)
    cases: list[tuple[str, Callable[[], Graph]]] = [
        ("table", agent.graph),
        ("table + run", lambda: agent.graph(run=record, events=events)),
    ]

    dot = shutil.which("dot")
    version = "not installed"
    if dot:
        out = subprocess.run([dot, "-V"], capture_output=True, text=True, check=False)
        version = (out.stderr.strip() or out.stdout.strip()).removeprefix("dot - ")
    print(f"python {platform.python_version()} on {platform.machine()}, {version}")
    print(f"machine: {len(agent.states)} states, {len(agent.transitions)} transitions"
          f" (declared in {declared * 1000:.0f} ms); run: {len(events)} events")  # fmt: skip
    print()
    print(
        f"| {'graph':<11} | {'call':<10} | {'best of ' + str(args.repeat):>10} | {'output':>13} |"
    )
    print(f"| {'-' * 11} | {'-' * 10} | {'-' * 9}: | {'-' * 12}: |")
    for name, make in cases:
        g = make()
        rows: list[tuple[str, Callable[[], Any], str]] = [
            ("graph()", make, f"{len(g.edges)} edges"),
            (".mermaid()", g.mermaid, f"{len(g.mermaid()) // 1000} kB"),
            (".dot()", g.dot, f"{len(g.dot()) // 1000} kB"),
        ]
        if dot:
            rows.append((".svg()", g.svg, f"{len(g.svg()) // 1000} kB"))
        for call, fn, size in rows:
            took = best(args.repeat, fn)
            print(f"| {name:<11} | {call:<10} | {took * 1000:>7.1f} ms | {size:>13} |")
    if not dot:
        print("\n.svg() not timed: Graphviz's `dot` is not installed (apt-get install graphviz)")


if __name__ == "__main__":
    main()
