"""The Postgres store under faults: the server SIGKILLed during a stream of commits loses no
acknowledged commit, and a pooled connection killed inside a commit's transaction (or while
idle in the pool) leaves the commit done once or not at all, and the store working; and the
store behind PgBouncer in transaction mode."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg

from storage import Committed, Duplicate, Lease
from storage.postgres import PostgresStore

from ..postgres_server import PgBouncer, PostgresServer, execute, require_postgres, schema_url
from ..storage.conformance.test_runs import event, new_run


async def _leased(store: PostgresStore) -> Lease:
    await store.create(new_run())
    lease = await store.acquire_lease("run-1", "w1", 600)
    assert isinstance(lease, Lease)
    return lease


async def test_a_sigkilled_server_loses_no_acknowledged_commit(tmp_path: Path) -> None:
    server = PostgresServer(tmp_path)
    await asyncio.to_thread(server.start)
    # Calls are tried again for up to 120 s: longer than a restart on a busy machine.
    store = PostgresStore(f"{server.url}?schema=kills&retry_for=120&connect_timeout=5")
    try:
        lease = await _leased(store)
        acknowledged: list[int] = []
        twenty = asyncio.Event()

        async def stream(upto: int) -> None:
            for seq in range(1, upto + 1):
                ev = event(seq, key=f"k{seq}", n=seq)
                out = await store.commit("run-1", expected_seq=seq - 1, token=lease.token, event=ev)
                # Duplicate: the resend of a commit that landed before the kill
                assert out in (Committed(seq=seq), Duplicate(seq=seq)), out
                acknowledged.append(seq)
                if seq == 20:
                    twenty.set()

        commits = asyncio.create_task(stream(60))
        await asyncio.wait_for(twenty.wait(), 120)
        server.kill()  # the postmaster and every backend, mid-stream
        killed_after = len(acknowledged)
        await asyncio.to_thread(server.start)  # crash recovery replays the WAL
        await asyncio.wait_for(commits, 180)
        assert 20 <= killed_after < 60  # the kill came during the stream
        run = await store.load("run-1")
        history = await store.history("run-1")
        assert run is not None and (run.seq, run.memory["n"]) == (60, 60)
        assert [e.seq for e in history] == list(range(61))
        assert [e.key for e in history[1:]] == [f"k{seq}" for seq in range(1, 61)]
    finally:
        await store.close()
        server.stop()


async def test_a_connection_killed_inside_a_commit_leaves_it_done_once(tmp_path: Path) -> None:
    url = schema_url()
    store = PostgresStore(f"{url}&pool=1")
    side = await asyncpg.connect(url.split("?")[0])
    watch = await asyncpg.connect(url.split("?")[0])  # outside a transaction: fresh statistics
    try:
        lease = await _leased(store)
        s = store.schema
        # Hold the run's row: the commit's transaction waits inside, at its UPDATE.
        hold = side.transaction()
        await hold.start()
        await side.execute(f"SELECT 1 FROM {s}.runs WHERE run_id = 'run-1' FOR UPDATE")
        commit = asyncio.create_task(
            store.commit("run-1", expected_seq=0, token=lease.token, event=event(1, key="k1"))
        )
        give_up = time.monotonic() + 60
        pid = None
        while pid is None:
            assert time.monotonic() < give_up, "the commit never waited for the row"
            assert not commit.done()
            pid = await watch.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE $1",
                f"%{s}.commit(%",
            )
            await asyncio.sleep(0.01)
        assert await side.fetchval("SELECT pg_terminate_backend($1)", pid)
        await hold.rollback()
        assert await asyncio.wait_for(commit, 60) == Committed(seq=1)  # tried again, once
        # A pooled connection killed while idle: the next call takes another.
        pid = await execute(store, "SELECT pg_backend_pid()")
        assert await side.fetchval("SELECT pg_terminate_backend($1)", pid)
        two = await store.commit("run-1", expected_seq=1, token=lease.token, event=event(2))
        assert two == Committed(seq=2)
        history = await store.history("run-1")
        assert [(e.seq, e.key) for e in history] == [
            (0, "run-1:start"),
            (1, "k1"),
            (2, "run-1:1:go"),
        ]
    finally:
        await side.close()
        await watch.close()
        await store.close()


async def test_behind_pgbouncer_in_transaction_mode_every_call_works() -> None:
    """10 runs committing at once from 4 stores through 2 server connections: each call's
    statement (prepared unnamed, then bound) stays on one server connection, no session
    state is relied on; waiting readers (a claim) are answered by polling."""
    bouncer = PgBouncer(require_postgres(), pool=2).start()
    schema = schema_url().rsplit("=", 1)[1]
    url = f"{bouncer.url}?schema={schema}&retry_for=60&connect_timeout=20"
    stores = [PostgresStore(url) for _ in range(4)]
    try:
        for store in stores:
            await store.list_runs(limit=1)  # the schema made (once), through the pooler

        async def drive(i: int) -> int:
            store = stores[i % len(stores)]
            run_id = f"r{i}"
            await store.create(new_run(run_id))
            lease = await store.acquire_lease(run_id, f"w{i}", 600)
            assert isinstance(lease, Lease)
            for seq in range(1, 6):
                ev = event(seq, key=f"{run_id}:{seq}", n=seq)
                out = await store.commit(run_id, expected_seq=seq - 1, token=lease.token, event=ev)
                assert out == Committed(seq=seq)
                run = await store.load(run_id)
                assert run is not None and run.memory["n"] == seq
            return len(await store.history(run_id))

        claim = asyncio.create_task(stores[0].queue.claim("w", ["a"], 1, 60))
        assert await asyncio.gather(*(drive(i) for i in range(10))) == [6] * 10
        await stores[1].queue.enqueue("a", "r0")
        assert [j.run_id for j in await asyncio.wait_for(claim, 60)] == ["r0"]
    finally:
        for store in stores:
            await store.close()
        bouncer.stop()
