"""Backups: runs and their whole histories to JSON Lines and back, between any two stores.

The file starts with a header line, then for each run a `{"run": ...}` line followed by its
events, one `{"event": ...}` line each, oldest first:

    {"format": "agentfsm-export", "version": 1, "exported_at": 1763990000.0}
    {"run": {"run_id": "analysis-42", "agent": "data_analyst", "state": "done", ...}}
    {"event": {"seq": 0, "trigger": "start", ...}}
    {"event": {"seq": 1, "trigger": "plan", ...}}

Everything is written as stored (memory, messages, usage, deadlines, the run's nonce, its
retention's expiry), so an export imported into another store (Redis to embedded, or back)
holds the same runs and events; a run keeps its expiry there. Never a lease: a run that a
process held when it was exported is imported free (no holder, no crash counted for it). An import
writes each run with `Store.restore`: all or nothing per run, and a run whose id exists in
the target is skipped, not overwritten.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from pydantic import TypeAdapter, ValidationError

from ._codec import dump_event
from ._json import json_bytes
from .base import Event, RunRecord, Store

__all__ = ["FORMAT", "ImportResult", "export_runs", "import_runs"]

FORMAT = "agentfsm-export"
VERSION = 1
_RUN = TypeAdapter(RunRecord)
_EVENT = TypeAdapter(Event)


@dataclass(kw_only=True, slots=True)
class ImportResult:
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    """Runs whose id the target store already had: left as they were."""
    events: int = 0


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
                if item.get("version") != VERSION:
                    raise ValueError(
                        f"export version {item.get('version')!r}; this reads {VERSION}"
                    )
                continue
            if not isinstance(item, dict) or len(item) != 1:
                raise ValueError('expected {"run": ...} or {"event": ...}')
            if "run" in item:
                await flush()
                run, events = replace(_RUN.validate_python(item["run"]), holder=""), []
            elif "event" in item:
                if run is None:
                    raise ValueError("an event before any run")
                events.append(_EVENT.validate_python(item["event"]))
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
