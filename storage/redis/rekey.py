"""Move the runs stored under one key prefix to another: `python -m storage.rekey URL OLD NEW`
(this module is `storage.redis.rekey`; `storage.rekey` runs it).

For stores written by an older agentfsm under a prefix it no longer accepts (one with `:`,
say): each run's keys `OLD:{run_id}:run|events|keys|lease` are renamed to `NEW:{...}:...`
(the hash tag stays, so on a Cluster each key stays in its slot), queue streams move to
the names `RunQueue` uses, and the indexes of NEW are rebuilt from the runs (`reindex`).
A run whose id NEW already has is left where it is, and listed. The old indexes are left
behind (nothing reads them); worker heartbeats are not moved (workers write new ones).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..errors import StorageError
from ._connect import check_prefix
from ._indexes import glob
from .store import RedisStore

__all__ = ["Rekeyed", "main", "rekey"]

_PARTS = ("run", "events", "keys", "lease")


@dataclass(kw_only=True, slots=True)
class Rekeyed:
    runs: int = 0
    streams: int = 0
    indexed: int = 0
    clashes: list[str] = field(default_factory=list)
    """Run ids NEW already had: their OLD keys are left as they were."""


async def rekey(url: str, old: str, new: str) -> Rekeyed:
    """Move every run (and queue stream) of prefix `old` on the Redis at `url` to `new`."""
    if not old:
        raise ValueError("the old prefix is empty")
    target = RedisStore.from_url(url, prefix=check_prefix(new))
    client = target.client
    done = Rekeyed()
    run_key = re.compile(re.escape(old) + r":\{([^{}]+)\}:(" + "|".join(_PARTS) + ")")
    stream_key = re.compile(re.escape(old) + r":\{queue\}:([^{}]+)")
    try:
        moves: dict[str, list[tuple[str, str]]] = {}
        streams: list[tuple[str, str]] = []
        async for key in client.scan_iter(match=f"{glob(old)}:{{*", count=1000):
            found = run_key.fullmatch(key)  # first: run "queue" has `OLD:{queue}:events`
            if found is not None:
                run_id, part = found.groups()
                moves.setdefault(run_id, []).append((key, target.key(run_id, part)))
                continue
            found = stream_key.fullmatch(key)
            if found is not None and await client.type(key) == "stream":
                streams.append((key, _stream(new, found.group(1))))
        for run_id, pairs in sorted(moves.items()):
            if await client.exists(target.key(run_id, "run")):
                done.clashes.append(run_id)
                continue
            for source, dest in pairs:
                await client.renamenx(source, dest)
            done.runs += 1
        for source, dest in streams:
            if await client.renamenx(source, dest):
                done.streams += 1
        done.indexed = await target.reindex()
    finally:
        await target.close()
    return done


def _stream(prefix: str, agent: str) -> str:
    """The stream `RedisQueue` reads for `agent` (or its dead letters)."""
    return f"{prefix}:{{queue}}:dead" if agent == "dead" else f"{prefix}:{{queue}}:q:{agent}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m storage.rekey", description=(__doc__ or "").splitlines()[0]
    )
    parser.add_argument("url", metavar="REDIS_URL")
    parser.add_argument("old", metavar="OLD", help="the prefix the runs are stored under")
    parser.add_argument("new", metavar="NEW", help="a valid prefix to move them to")
    args = parser.parse_args(argv)
    try:
        done = asyncio.run(rekey(args.url, args.old, args.new))
    except (ValueError, StorageError) as exc:
        print(f"rekey: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"moved {done.runs} run(s) and {done.streams} queue stream(s) from {args.old!r} to"
        f" {args.new!r}; indexed {done.indexed} run(s)"
    )
    for run_id in done.clashes:
        print(f"left {run_id!r} under {args.old!r}: {args.new!r} has a run with that id")
    return 0


if __name__ == "__main__":
    sys.exit(main())
