"""A run's live channel on Redis: a stream beside its events, under the run's hash tag.

`{prefix}:{run_id}:live` is in the same Cluster slot as the run. Each publish is one
pipeline: an XADD per item (trimmed with `MAXLEN ~`) and a PEXPIRE, so the channel of a run
nobody publishes to any more goes away on its own. A commit appends its items the same way,
inside `commit.lua` (`commit_args`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import JsonValue

from .._codec import dump_json, load_json
from ..base import LiveEntry
from ..errors import CorruptData

__all__ = ["commit_args", "publish", "read"]

_MAX_BLOCK = 1.0
"""Seconds one blocking read waits at most (well under the client's socket timeout)."""


async def publish(
    client: Any, key: str, entries: Sequence[tuple[int, JsonValue]], maxlen: int, ttl: float
) -> None:
    if not entries:
        return
    pipe = client.pipeline(transaction=False)
    for base, item in entries:
        pipe.xadd(key, {"b": base, "i": dump_json(item)}, maxlen=maxlen, approximate=True)
    pipe.pexpire(key, max(int(ttl * 1000), 1))
    await pipe.execute()


def commit_args(rows: Sequence[tuple[int, str]], maxlen: int, ttl: float) -> list[Any]:
    """`commit.lua`'s ARGV[14..] (`create.lua`'s ARGV[9..]): how many items, the channel's
    MAXLEN and ttl (ms), then each item's base and JSON (`storage._codec.live_rows`)."""
    args: list[Any] = [len(rows), maxlen, max(int(ttl * 1000), 1)]
    for base, item in rows:
        args += [base, item]
    return args


async def read(
    client: Any, key: str, after: str | None, wait: float, limit: int
) -> list[LiveEntry]:
    if wait > 0:
        block = max(int(min(wait, _MAX_BLOCK) * 1000), 1)
        reply = await client.xread({key: after or "0-0"}, count=limit, block=block)
        rows = reply[0][1] if reply else []
    else:
        start = "-" if after is None else f"({after}"
        rows = await client.xrange(key, start, "+", count=limit)
    return [_entry(key, entry_id, fields) for entry_id, fields in rows]


def _entry(key: str, entry_id: str, fields: dict[str, str]) -> LiveEntry:
    where = f"{key} entry {entry_id}"
    try:
        base = int(fields["b"])
        item = load_json(fields["i"], where)
    except (KeyError, ValueError):
        raise CorruptData(where, "not a live item") from None
    if not isinstance(item, dict):
        raise CorruptData(where, "a live item that is not a JSON object")
    return LiveEntry(id=entry_id, base=base, item=item)
