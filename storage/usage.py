"""The usage ledger: a run's running totals of what its steps paid for, kept by the commit.

Every committed event may carry `usage` (model requests, input/output/cache tokens, tool
calls, cost in nano-USD: integers only, so the totals are exact sums). The commit that
records the event adds its usage to the run's totals in the same atomic write (Redis: one
`HINCRBY` per figure on the run hash fields `u:<name>` in `commit.lua`; embedded: the
`run_usage` table, in the commit's transaction), so after any crash

    run.usage == sum of event.usage over the run's committed events

An error event carries what its failed tries paid, so those are counted too; a try cut short
by a crash recorded nothing and is not counted (nothing knows what it cost).

Each backend keeps the totals in its own folder (`storage/redis/`, `storage/embedded/usage.py`).
"""

from __future__ import annotations

from collections.abc import Mapping

from .base import Event

__all__ = ["COST_UNIT", "FIELD", "added", "increments", "with_total"]

FIELD = "u:"
"""The prefix of usage fields in a run's Redis hash (and of usage keys in decoded fields)."""
COST_UNIT = 1e-9
"""`cost_nusd` counts nano-US dollars: 1_000_000_000 is one dollar."""


def increments(event: Event) -> dict[str, int]:
    """What `event` adds to its run's totals: its non-zero usage figures."""
    return {name: int(v) for name, v in (event.usage or {}).items() if v}


def added(totals: Mapping[str, int], usage: Mapping[str, int] | None) -> dict[str, int]:
    """`totals` with `usage` added, figure by figure (a new dict)."""
    out = dict(totals)
    for name, value in (usage or {}).items():
        if value:
            out[name] = out.get(name, 0) + int(value)
    return out


def with_total(usage: Mapping[str, int]) -> dict[str, int]:
    """`usage` with `total_tokens` (input plus output tokens) added: the figures budget limits
    name (`scripts/reserve.lua` on Redis adds it the same way)."""
    out = dict(usage)
    out["total_tokens"] = usage.get("input_tokens", 0) + usage.get("output_tokens", 0)
    return out
