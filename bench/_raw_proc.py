"""One baseline process of `bench/throughput.py`: bare redis-py asyncio sending commit EVALSHAs.

    python -m bench._raw_proc URL OUT.json --runs N --steps K [--concurrency C] [--tag T]

No runner, no worker, no queue: the client `RedisStore.from_url(URL)` builds (redis-py
asyncio, hiredis, `decode_responses=True`, its connection pool), and the commit script
registered on it. It creates N runs of its own and takes a lease on each (not timed), prints
`ready`, waits for a line on stdin, then C coroutines each take a run and commit K times to it
with one EVALSHA each, with the keys and args `RedisStore.commit` sends for a no-op tool step
(the event JSON encoded once per run), until every run has K commits. Each EVALSHA is timed
alone (`time.perf_counter_ns`, from the call to its reply, event-loop waits included); the
wall clock of the first call and the last reply goes to OUT.json with the timings.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from importlib.resources import files
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pydantic import TypeAdapter

from storage import Event, Lease, RedisStore, RunRecord

LEASE_TTL = 60.0


async def measure(url: str, out: Path, runs: int, steps: int, concurrency: int, tag: str) -> None:
    store = RedisStore.from_url(url)
    script = store.client.register_script(
        files("storage.redis").joinpath("scripts", "commit.lua").read_text(encoding="utf-8")
    )
    owner = f"bench:{os.getpid()}"
    ids = [f"raw-{tag}-{i}" for i in range(runs)]
    tokens: dict[str, int] = {}
    limit = asyncio.Semaphore(concurrency)

    async def setup(run_id: str) -> None:
        async with limit:
            at = time.time()
            await store.create(
                RunRecord(
                    run_id=run_id, agent="bench_raw", version=1, state="s0", seq=0,
                    status="running", memory={"note": ""}, created_at=at, updated_at=at,
                )
            )  # fmt: skip
            lease = await store.acquire_lease(run_id, owner, LEASE_TTL)
            if not isinstance(lease, Lease):
                raise RuntimeError(f"{run_id!r} is held by {lease.owner!r}")
            tokens[run_id] = lease.token

    await asyncio.gather(*(setup(i) for i in ids))
    encode = TypeAdapter(Event).dump_json
    samples: list[int] = []
    todo = iter(ids)

    async def drive() -> None:
        clock = time.perf_counter_ns
        for run_id in todo:
            keys = store.commit_keys(run_id)
            token = tokens[run_id]
            at = time.time()
            event_json = encode(
                Event(
                    seq=1, trigger="t0", kind="tool", source="s0", dest="s1", status="running",
                    key=f"{run_id}:0:t0", started_at=at, ended_at=at, worker=owner,
                )
            ).decode()  # fmt: skip
            for seq in range(steps):
                status = "done" if seq + 1 == steps else "running"
                t0 = clock()
                reply = await script(
                    keys=keys,
                    args=[seq, token, f"{run_id}:{seq}:t{seq}", f"s{seq + 1}", status,
                          repr(time.time()), "", "", "", event_json, "", ""],
                )  # fmt: skip
                samples.append(clock() - t0)
                if reply[0] != "ok":
                    raise RuntimeError(f"raw commit to {run_id!r} at seq {seq + 1}: {reply!r}")

    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    started, cpu_started = time.time(), time.process_time()
    await asyncio.gather(*(drive() for _ in range(min(concurrency, runs))))
    ended, cpu_ended = time.time(), time.process_time()
    await store.close()
    result: dict[str, Any] = {
        "commits": len(samples),
        "first_at": started,
        "last_at": ended,
        "cpu": cpu_ended - cpu_started,
        "steps_ns": samples,
    }
    await asyncio.to_thread(out.write_text, json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--runs", type=int, required=True)
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--tag", default="0")
    args = parser.parse_args()
    asyncio.run(measure(args.url, args.out, args.runs, args.steps, args.concurrency, args.tag))


if __name__ == "__main__":
    main()
