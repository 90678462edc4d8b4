"""How the usage ledger reads to people: one line of a run's totals."""

from __future__ import annotations

from collections.abc import Mapping

from storage.usage import COST_UNIT

__all__ = ["cost_usd", "usage_line"]

_NAMES = (
    ("requests", "requests"), ("input_tokens", "in"), ("output_tokens", "out"),
    ("cache_read_tokens", "cache read"), ("cache_write_tokens", "cache write"),
    ("tool_calls", "tool calls"),
)  # fmt: skip


def cost_usd(usage: Mapping[str, int]) -> float | None:
    """The cost in US dollars, None when no priced request was made."""
    nano = usage.get("cost_nusd")
    return None if nano is None else nano * COST_UNIT


def usage_line(usage: Mapping[str, int]) -> str:
    """ "3 requests, 120 in, 40 out, $0.000042" (or "-" for none)."""
    parts = [f"{usage[k]} {label}" for k, label in _NAMES if usage.get(k)]
    cost = cost_usd(usage)
    if cost is not None:
        parts.append(f"${cost:.6f}")
    return ", ".join(parts) or "-"
