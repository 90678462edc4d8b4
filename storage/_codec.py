"""JSON in and out of stores: the one place bytes become records, and are checked."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import get_args

import pydantic_core
from pydantic import JsonValue, TypeAdapter, ValidationError

from ._json import json_bytes
from .base import Event, RunRecord, RunStatus
from .errors import CorruptData, Unstorable

_log = logging.getLogger("storage.live")

_EVENT = TypeAdapter(Event)
_STATUSES = frozenset(get_args(RunStatus))


def dump_json(value: JsonValue, where: str = "a value") -> str:
    """`value` as JSON, or `Unstorable` when it would not read back equal (see `_json`)."""
    return json_bytes(value, where).decode()


def live_rows(entries: Sequence[tuple[int, JsonValue]], run_id: str) -> list[tuple[int, str]]:
    """A commit's live items (`Store.commit(live=...)`) as (base, JSON): an item no store
    would read back equal is dropped (logged at debug level), so that the live channel, best
    effort, can never make a commit fail."""
    rows = []
    for base, item in entries:
        try:
            rows.append((base, dump_json(item, f"a live item of run {run_id!r}")))
        except Unstorable as exc:
            _log.debug("%s: dropped", exc)
    return rows


def load_json(raw: str | bytes, key: str) -> JsonValue:
    try:
        value: JsonValue = pydantic_core.from_json(raw)
    except ValueError as exc:
        raise CorruptData(key, f"not JSON ({exc})") from None
    return value


def dump_event(event: Event) -> str:
    """The event as JSON, leaving out fields at their defaults (they read back the same);
    `Unstorable` when a value in it would not read back equal."""
    data = _EVENT.dump_python(event, exclude_defaults=True)
    return json_bytes(data, f"the event of seq {event.seq}", envelope=True).decode()


def load_event(raw: str | bytes, key: str) -> Event:
    try:
        return _EVENT.validate_json(raw)
    except ValidationError as exc:
        raise CorruptData(key, f"not an event ({_first_error(exc)})") from None


def run_from_fields(
    run_id: str, fields: Mapping[str, str], memory: dict[str, JsonValue], key: str
) -> RunRecord:
    """Build a `RunRecord` from stored text fields, raising `CorruptData` naming `key`."""
    try:
        status = fields["status"]
        if status not in _STATUSES:
            raise ValueError(f"unknown status {status!r}")
        return RunRecord(
            run_id=run_id,
            agent=fields["agent"],
            version=int(fields["version"]),
            state=fields["state"],
            seq=int(fields["seq"]),
            status=status,  # type: ignore[arg-type]  # checked against RunStatus above
            memory=memory,
            created_at=float(fields["created_at"]),
            updated_at=float(fields["updated_at"]),
            holder=fields.get("holder", ""),
            crashes=int(fields.get("crashes", "0")),
            deadline=float(fields["deadline"]) if fields.get("deadline") else None,
            nonce=fields.get("nonce", ""),
            expires_at=float(fields["expires_at"]) if fields.get("expires_at") else None,
            trace=fields.get("trace", ""),
            usage={k[2:]: int(v) for k, v in fields.items() if k.startswith("u:")},
        )
    except KeyError as exc:
        raise CorruptData(key, f"missing field {exc.args[0]!r}") from None
    except ValueError as exc:
        raise CorruptData(key, str(exc)) from None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "value"
    return f"{where}: {err['msg']}"
