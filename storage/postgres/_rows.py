"""Runs rows of the Postgres store, read back and checked: the columns every read selects
(the run, its memory fields and what its history holds, in one statement: one snapshot,
never a torn run) and their decoding into a `RunRecord`."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import JsonValue

from .._codec import load_json, run_from_fields
from ..base import RunRecord
from ..errors import CorruptData
from ..usage import FIELD

__all__ = ["RUN_COLUMNS", "decode", "select_runs"]

RUN_COLUMNS = ("agent", "version", "state", "seq", "status", "created_at", "updated_at",
               "holder", "crashes", "deadline", "nonce", "expires_at", "trace")  # fmt: skip


def select_runs(schema: str, *, checks: bool = False) -> str:
    """SELECT of runs rows with their memory (names and JSON, in name order), and with
    `checks` whether event 0 is there and the largest seq stored."""
    extra = (
        f", EXISTS (SELECT 1 FROM {schema}.events e WHERE e.run_id = r.run_id AND e.seq = 0)"
        f" AS first, (SELECT max(e.seq) FROM {schema}.events e WHERE e.run_id = r.run_id)"
        " AS last"
        if checks
        else ""
    )
    return (
        f"SELECT r.run_id, {', '.join('r.' + c for c in RUN_COLUMNS)}, r.usage::text AS usage,"
        f" ARRAY(SELECT m.name FROM {schema}.memory m WHERE m.run_id = r.run_id ORDER BY m.name)"
        f" AS names, ARRAY(SELECT m.json FROM {schema}.memory m WHERE m.run_id = r.run_id"
        f" ORDER BY m.name) AS jsons{extra} FROM {schema}.runs r"
    )


def decode(row: Mapping[str, Any], where: str) -> RunRecord:
    """The run of `row` (from `select_runs`), or `CorruptData` naming what is wrong."""
    run_id = str(row["run_id"])
    memory: dict[str, JsonValue] = {
        name: load_json(bytes(raw), f"{where} memory field {name!r} of run {run_id!r}")
        for name, raw in zip(row["names"], row["jsons"], strict=True)
    }
    fields = {c: "" if row[c] is None else _text(row[c]) for c in RUN_COLUMNS}
    try:
        usage = json.loads(row["usage"] or "{}")
        if not isinstance(usage, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise CorruptData(
            f"{where} usage of run {run_id!r}", f"not a usage object ({exc})"
        ) from None
    fields.update({f"{FIELD}{k}": str(v) for k, v in usage.items()})
    return run_from_fields(run_id, fields, memory, f"{where} runs row of run {run_id!r}")


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)
