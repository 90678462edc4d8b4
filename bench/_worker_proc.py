"""One worker process of `bench/throughput.py`: a `statemachine.Worker` that times its runs.

    python -m bench._worker_proc URL OUT.json [--concurrency 1000] [--name NAME]

Serves `bench._noop_agent:noop` from the store at URL (its `?prefix=` included) until SIGTERM
or SIGINT, exactly as `agentfsm worker --agents bench._noop_agent:noop` does (same `Worker`,
same defaults: heartbeat 2 s, reclaim after 6 s), except that its `on_event` hook, instead
of printing each finished run, times each transition and writes what it saw to OUT.json.

What is timed (`time.perf_counter_ns`, in this process): `on_event` runs right after each
commit, in the task driving the run, so the gap between two consecutive events of one run is
one `await run.step()` as the worker's loop makes it (next transition, the no-op step, encoding,
the EVALSHA and its reply) plus the time spent waiting for the event loop, which is shared with
every other run in flight. A run's first transition also takes the lease and loads the run
(`Machine.resume`, then `step()`: load, lease script, reload, commit); it is timed from the
start of the job's task and kept apart.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a file
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._noop_agent import noop
from statemachine import Worker
from statemachine._runner import Run
from storage import Event, RedisStore
from storage.base import Job


class TimedWorker(Worker):
    """A `Worker` that records, per run, the time of each commit (see the module's doc)."""

    def __init__(self, store: RedisStore, *, concurrency: int, name: str | None) -> None:
        super().__init__(store, [noop], concurrency=concurrency, name=name, on_event=self._seen)
        self.steps_ns: list[int] = []
        """Each transition after a run's first: commit to commit, within one run."""
        self.first_ns: list[int] = []
        """Each run's first transition: task start (resume, lease, reload) to its commit."""
        self.commits = 0
        self.first_at = 0.0
        self.last_at = 0.0
        """Wall clock (`time.time`) of the first and the last commit seen by this process."""
        self.cpu_first = 0.0
        """CPU time of this process (`time.process_time`, a system call: read once) at the
        first commit; `serve` reads it again when the worker stops (it idles after its last)."""
        self.peak = 0
        """The most runs this process drove at once (its jobs in flight, at each commit)."""
        self._last: dict[str, int] = {}
        self._fresh: set[str] = set()

    async def _drive(self, job: Job) -> None:
        self._last[job.run_id] = time.perf_counter_ns()
        self._fresh.add(job.run_id)
        try:
            await super()._drive(job)
        finally:
            self._last.pop(job.run_id, None)
            self._fresh.discard(job.run_id)

    def _seen(self, run: Run[Any], event: Event) -> None:
        t = time.perf_counter_ns()
        run_id = run.run_id
        gap = t - self._last[run_id]
        self._last[run_id] = t
        if run_id in self._fresh:
            self._fresh.discard(run_id)
            self.first_ns.append(gap)
        else:
            self.steps_ns.append(gap)
        wall = time.time()
        if not self.commits:
            self.first_at, self.cpu_first = wall, time.process_time()
        self.last_at = wall
        self.commits += 1
        held = len(self._jobs)
        if held > self.peak:
            self.peak = held


async def serve(url: str, out: Path, concurrency: int, name: str | None) -> None:
    store = RedisStore.from_url(url)
    worker = TimedWorker(store, concurrency=concurrency, name=name)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, worker.stop)
    try:
        # Open the pool's connections first, as a long-running worker has them: redis-py
        # spends ~0.8 ms of CPU creating each one (see bench/README.md). Held all at once, so
        # that `concurrency` connections are made (PINGs in parallel reuse a few).
        client: Any = store.client  # standalone: it has a pool
        pool = client.connection_pool
        held = [await pool.get_connection() for _ in range(concurrency)]
        for connection in held:
            await pool.release(connection)
        await worker.run()
        cpu_end = time.process_time()
    finally:
        await store.close()
    result: dict[str, Any] = {
        "name": worker.name,
        "commits": worker.commits,
        "driven": worker.driven,
        "first_at": worker.first_at,
        "last_at": worker.last_at,
        "cpu": cpu_end - worker.cpu_first,
        "peak": worker.peak,
        "steps_ns": worker.steps_ns,
        "first_ns": worker.first_ns,
    }
    await asyncio.to_thread(out.write_text, json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("url")
    parser.add_argument("out", type=Path)
    parser.add_argument("--concurrency", type=int, default=1000)
    parser.add_argument("--name")
    args = parser.parse_args()
    asyncio.run(serve(args.url, args.out, args.concurrency, args.name))


if __name__ == "__main__":
    main()
