"""Durability levels: what a store makes sure of before it acknowledges a commit.

    primary            the primary applied it (the default; Redis: as configured, AOF
                       `appendfsync everysec` loses up to a second on a crash)
    fsync              the primary wrote it to disk (Redis `WAITAOF 1 0`, Redis >= 7.2 with
                       `appendonly yes`; SQLite `synchronous=FULL`)
    replicas:N         N replicas received it (Redis `WAIT N`)
    replicas-fsync:N   N replicas wrote it to disk (Redis `WAITAOF 0 N`, Redis >= 7.2)

Chosen per store: `open_store(url, durability="replicas:1")` or `?durability=replicas:1`,
with `?durability_timeout=SECONDS` (default 2): a level not reached within it makes the
commit's outcome unknown (`storage.errors.OutcomeUnknown`), never a success. A store that
cannot give the level refuses at open (`storage.errors.DurabilityUnavailable`).

How a backend honours it is its own business (the Store contract's `durability`):
Redis waits after the commit script on the same connection, in the same round trip;
SQLite maps primary/fsync to `synchronous` NORMAL/FULL and has no replicas; a Postgres
store maps fsync to `synchronous_commit=on`, replicas:N to `remote_write` and
replicas-fsync:N to `on` with `synchronous_standby_names = 'ANY N (...)'`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal, TypeAlias

__all__ = ["DEFAULT_DURABILITY_TIMEOUT", "LEVELS", "PRIMARY", "Durability", "Level"]

Level: TypeAlias = Literal["primary", "fsync", "replicas", "replicas-fsync"]
LEVELS = "primary (the default), fsync, replicas:N, replicas-fsync:N"
DEFAULT_DURABILITY_TIMEOUT = 2.0
"""Seconds a commit waits for its level before its outcome is unknown."""

_FORM = re.compile(r"(primary|fsync)|(replicas|replicas-fsync):([1-9][0-9]{0,2})")


@dataclass(frozen=True, kw_only=True, slots=True)
class Durability:
    """A durability level (`level`, with `replicas` for the replica levels) and how long a
    commit waits for it (`timeout`, seconds)."""

    level: Level = "primary"
    replicas: int = 0
    timeout: float = DEFAULT_DURABILITY_TIMEOUT

    @classmethod
    def parse(cls, text: str, timeout: str | float | None = None) -> Durability:
        """The level written as `text` ("replicas:1"); `ValueError` naming the forms."""
        found = _FORM.fullmatch(text.strip().lower()) if isinstance(text, str) else None
        if found is None:
            raise ValueError(f"unknown durability level {text!r}: use {LEVELS}")
        seconds = DEFAULT_DURABILITY_TIMEOUT
        if timeout is not None:
            try:
                seconds = float(timeout)
            except ValueError:
                seconds = math.nan
            if not 0.001 <= seconds < math.inf:
                raise ValueError(
                    f"durability_timeout={timeout!r} must be a positive number of seconds"
                )
        if found.group(1):
            return cls(level=found.group(1), timeout=seconds)  # type: ignore[arg-type]
        return cls(level=found.group(2), replicas=int(found.group(3)), timeout=seconds)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{self.level}:{self.replicas}" if self.replicas else self.level

    @property
    def waits(self) -> bool:
        """Whether a commit waits for more than the primary's answer."""
        return self.level != "primary"

    @property
    def needs_aof(self) -> bool:
        """Whether the level is a disk write Redis confirms with `WAITAOF` (>= 7.2)."""
        return self.level in ("fsync", "replicas-fsync")


PRIMARY = Durability()
