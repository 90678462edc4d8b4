"""Backups: everything a tenant has in a store — runs and their whole histories, budget
scope ledgers, the limits people set — to JSON Lines and back, between any two stores.

The file starts with a header line, then for each run a `{"run": ...}` line followed by its
events, one `{"event": ...}` line each, oldest first; then (version 2) one `{"ledger": ...}`
line per scope and period, and one `{"limits": ...}` line per subject:

    {"format": "agentfsm-export", "version": 2, "exported_at": 1763990000.0}
    {"run": {"run_id": "analysis-42", "agent": "data_analyst", "state": "done", ...}}
    {"event": {"seq": 0, "trigger": "start", ...}}
    {"event": {"seq": 1, "trigger": "plan", ...}}
    {"ledger": {"scope": "acme", "period": "all", "usage": {"requests": 6}, "charged": [...]}}
    {"limits": {"subject": "scope/acme", "limits": {"requests": 6}}}

An export of the whole store carries every ledger and every set limit; one of some runs (or
one agent's) carries the limits set for those runs (scopes are shared by runs, and are not
known by run). Version 1 files (runs only) import as before.

Everything is written as stored (memory, messages, usage, deadlines, the run's nonce, its
retention's expiry), so an export imported into another store (Redis to embedded, or back)
holds the same runs and events; a run keeps its expiry there. Never a lease: a run that a
process held when it was exported is imported free (no holder, no crash counted for it). An import
writes each run with `Store.restore`: all or nothing per run, and a run whose id exists in
the target is skipped, not overwritten.

A scope ledger is imported whole when the target has none for its scope and period, or one
whose charged keys are all in the import (the import is newer: the same ledger, charged
further); it is left as it is when the import's keys are all in the target's. When each has
keys the other lacks (both stores charged the scope since they parted), the target keeps the
union of the keys and, figure by figure, the larger total (never a charge counted twice);
such scopes are listed as `diverged`. Limits are set as the import has them. A scope's
reservations of requests in flight (`Ledger.reserve`) are not carried: they are transient,
and lapse or are charged within minutes, as leases are not carried either.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ._capabilities import ScopeLedger
from ._codec import dump_event
from ._json import json_bytes
from .base import Event, RunRecord, Store

__all__ = ["FORMAT", "ImportResult", "export_runs", "import_runs"]

FORMAT = "agentfsm-export"
VERSION = 2
_READS = (1, 2)
_RUN = TypeAdapter(RunRecord)
_EVENT = TypeAdapter(Event)
_LEDGER = TypeAdapter(ScopeLedger)


@dataclass(kw_only=True, slots=True)
class ImportResult:
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Runs whose id the target store already had: left as they were."""
    events: int = 0
    ledgers: int = 0
    """Scope ledgers (one scope, one period) written."""
    limits: int = 0
    """Subjects whose set limits were written."""
    diverged: list[str] = field(default_factory=list)
    """"scope@period" of ledgers both stores charged since they parted (merged: see above)."""


async def export_runs(
    store: Store, run_ids: Sequence[str] = (), *, agent: str | None = None
) -> AsyncIterator[str]:
    """The lines (without newlines) of an export of `run_ids`, or of every run of `agent`,
    or of every run in the store. Raises `KeyError` for a run id the store does not have."""
    yield json.dumps({"format": FORMAT, "version": VERSION, "exported_at": time.time()})
    ids = list(run_ids)
    if not ids:
        ids = [r.run_id for r in await store.list_runs(agent=agent, limit=sys.maxsize)]
    for run_id in ids:
        record = await store.load(run_id)
        if record is None:
            raise KeyError(f"no run {run_id!r} to export")
        # The run may move on while it is read: its history is cut at the seq just loaded.
        events = (await store.history(run_id))[: record.seq + 1]
        # Never a holder: the import is not held by anyone, and must not count a crash.
        run = _RUN.dump_python(replace(record, holder=""))
        yield '{"run": ' + json_bytes(run, f"run {run_id!r}", envelope=True).decode() + "}"
        for event in events:
            yield '{"event": ' + dump_event(event) + "}"
    whole = not run_ids and agent is None
    if whole:
        for ledger in await store.ledger.scope_ledgers():
            data = _LEDGER.dump_python(ledger, mode="json")
            data["charged"] = sorted(data["charged"])
            yield json.dumps({"ledger": data})
    subjects = await store.ledger.all_limits()
    for subject, limits in sorted(subjects.items()):
        if whole or (subject.removeprefix("run/") in ids and subject.startswith("run/")):
            yield json.dumps({"limits": {"subject": subject, "limits": limits}})


async def import_runs(store: Store, lines: Iterable[str]) -> ImportResult:
    """Write the runs of an export into `store`. Raises `ValueError` naming the line of the
    first thing that is not a valid export; runs before it are imported already."""
    result = ImportResult()
    run: RunRecord | None = None
    events: list[Event] = []

    async def flush() -> None:
        if run is None:
            return
        if await store.restore(run, events):
            result.imported.append(run.run_id)
            result.events += len(events)
        else:
            result.skipped.append(run.run_id)

    number_of_lines = 0
    for number, line in enumerate(lines, 1):
        number_of_lines = number
        if not line.strip():
            continue
        try:
            item: Any = json.loads(line)
            if number == 1:
                if not isinstance(item, dict) or item.get("format") != FORMAT:
                    raise ValueError(f"not an {FORMAT} file (its first line has no format)")
                if item.get("version") not in _READS:
                    raise ValueError(
                        f"export version {item.get('version')!r}; this reads"
                        f" {', '.join(map(str, _READS))}"
                    )
                continue
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError('expected {"run": ...}, {"event": ...}, {"ledger": ...} or'
                                 ' {"limits": ...}')  # fmt: skip
            if "run" in item:
                await flush()
                run, events = replace(_RUN.validate_python(item["run"]), holder=""), []
            elif "event" in item:
                if run is None:
                    raise ValueError("an event before any run")
                events.append(_EVENT.validate_python(item["event"]))
            elif "ledger" in item:
                await flush()
                run = None
                await _import_ledger(store, _LEDGER.validate_python(item["ledger"]), result)
            elif "limits" in item:
                await flush()
                run = None
                entry = item["limits"]
                if not isinstance(entry, dict) or not isinstance(entry.get("limits"), dict):
                    raise ValueError('expected {"limits": {"subject": ..., "limits": {...}}}')
                limits = {str(k): int(v) for k, v in entry["limits"].items()}
                await store.ledger.set_limits(str(entry["subject"]), limits)
                result.limits += 1
            else:
                raise ValueError(f"unknown entry {next(iter(item))!r}")
        except (ValueError, ValidationError) as exc:
            first = str(exc).splitlines()[0]
            raise ValueError(f"line {number}: {first}") from None
    if number_of_lines == 0:
        raise ValueError(f"the file is empty: not an {FORMAT} file")
    try:
        await flush()
    except ValueError as exc:
        raise ValueError(f"run {run.run_id if run else '?'}: {exc}") from None
    return result


async def _import_ledger(store: Store, ledger: ScopeLedger, result: ImportResult) -> None:
    """Write `ledger` into `store` by the rule in the module docstring."""
    held = {(x.scope, x.period): x for x in await store.ledger.scope_ledgers()}
    mine = held.get((ledger.scope, ledger.period))
    if mine is not None and ledger.charged <= mine.charged:
        return  # the target has it all already
    if mine is not None and not mine.charged <= ledger.charged:
        names = {*mine.usage, *ledger.usage}
        ledger = ScopeLedger(
            scope=ledger.scope, period=ledger.period, charged=mine.charged | ledger.charged,
            usage={n: max(mine.usage.get(n, 0), ledger.usage.get(n, 0)) for n in names},
            expires_at=max(mine.expires_at, ledger.expires_at),
        )  # fmt: skip
        result.diverged.append(f"{ledger.scope}@{ledger.period}")
    await store.ledger.put_scope_ledger(ledger)
    result.ledgers += 1
