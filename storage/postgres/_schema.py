"""The Postgres store's schema: migrations kept in `sql/NNN_*.sql`, applied in order inside one
transaction under an advisory lock, and recorded in the schema's `schema_version` table.

Every statement names the store's schema explicitly (`{s}` in the files): nothing depends on
the connection's `search_path`, which a pooler in transaction mode does not keep."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

from ..errors import StorageError

__all__ = ["SCHEMA_ALPHABET", "SCHEMA_VERSION", "check_schema", "migrate"]

MIGRATIONS = {1: "001_schema.sql"}
"""Schema version -> the file that takes a schema of version N - 1 to N."""
SCHEMA_VERSION = max(MIGRATIONS)
SCHEMA_ALPHABET = "lower-case letters, digits and _ (1-40 of them, starting with a letter or _)"
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,39}")


def check_schema(name: str) -> str:
    """`name` if usable as the store's schema, else `ValueError` saying why."""
    if not isinstance(name, str) or not _SCHEMA.fullmatch(name):
        raise ValueError(f"invalid Postgres schema name {name!r}: use {SCHEMA_ALPHABET}")
    return name


def _statements(version: int, schema: str) -> str:
    text = resources.files(__package__).joinpath("sql", MIGRATIONS[version]).read_text()
    return text.replace("{s}", schema)


async def migrate(conn: Any, schema: str, where: str) -> None:
    """Bring `schema` to `SCHEMA_VERSION` (creating it when it is not there), or refuse a
    schema of a newer agentfsm or of something else. Concurrent openers wait for each other
    (a transaction-scoped advisory lock on the schema's name)."""
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"agentfsm:{schema}"
        )
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        tables = await conn.fetchval(
            "SELECT array_agg(table_name::text) FROM information_schema.tables"
            " WHERE table_schema = $1",
            schema,
        )
        tables = set(tables or ())
        version = 0
        if "schema_version" in tables:
            version = int(
                await conn.fetchval(
                    f"SELECT coalesce(max(version), 0) FROM {schema}.schema_version"
                )
            )
        elif tables:
            raise StorageError(
                f"{where}: the schema {schema!r} holds tables of something else (it has no"
                " agentfsm schema_version table): give the store a schema of its own"
                " (?schema=NAME)"
            )
        if version > SCHEMA_VERSION:
            raise StorageError(
                f"{where} has store schema version {version}; this agentfsm reads up to version"
                f" {SCHEMA_VERSION} (upgrade agentfsm, or use another schema: ?schema=NAME)"
            )
        if version == SCHEMA_VERSION:
            return
        if version == 0:
            await conn.execute(
                f"CREATE TABLE {schema}.schema_version (version integer PRIMARY KEY,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
        for step in range(version + 1, SCHEMA_VERSION + 1):
            await conn.execute(_statements(step, schema))
            await conn.execute(f"INSERT INTO {schema}.schema_version (version) VALUES ($1)", step)
