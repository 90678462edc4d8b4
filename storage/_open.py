"""`open_store(url)`: pick a backend by URL scheme, importing it only when used."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from .base import Store
from .url import DEFAULT_STORE, redact

__all__ = ["DEFAULT_STORE", "open_store", "redact"]

_REDIS = (
    "redis", "rediss", "unix", "redis+cluster", "rediss+cluster", "redis+sentinel",
    "rediss+sentinel",
)  # fmt: skip


def open_store(
    url: str | None = None, *, prefix: str = "agentfsm", durability: str | None = None
) -> Store:
    """A store for `url`; with no URL, `$AGENTFSM_STORE`, else the embedded default.

    - `redis://host:port/db`, `rediss://` (TLS), `unix:///path.sock`: `RedisStore`;
      `redis+cluster://host:port` for a Redis Cluster; `redis+sentinel://host:port[,...]/
      SERVICE` for the primary a set of Sentinels names; `?prefix=NAME` sets the key prefix.
    - `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`: `EmbeddedStore`.
    - `postgresql://user@host:port/database`, `postgres://`: `PostgresStore`;
      `?schema=NAME` sets its schema (default: `prefix`).
    - `memory://`: an in-process `EmbeddedStore`, gone when the process ends (tests).

    `prefix` namespaces the keys of a Redis store and names a Postgres store's schema
    (ignored by the others). `durability` (or `?durability=` in the URL) is what every
    commit waits for before it is acknowledged: "primary" (the default), "fsync",
    "replicas:N", "replicas-fsync:N" (`storage._durability`; `?durability_timeout=SECONDS`,
    default 2). A level the store cannot give is refused
    (`storage.errors.DurabilityUnavailable`; `ValueError` for one the URL alone rules out);
    one not reached in time makes the commit's outcome unknown
    (`storage.errors.OutcomeUnknown`).
    """
    url = url or os.environ.get("AGENTFSM_STORE") or DEFAULT_STORE
    scheme = urlsplit(url).scheme
    if scheme in _REDIS:
        from .redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix, durability=durability)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ImportError(
                f'a Postgres store needs asyncpg ({exc}): pip install "agentfsm[postgres]"'
            ) from None

        return PostgresStore.from_url(url, prefix=prefix, durability=durability)
    if scheme in ("sqlite", "memory"):
        from .embedded import EmbeddedStore

        return EmbeddedStore.from_url(url, durability=durability)
    raise ValueError(
        f"unknown store URL {redact(url)!r}: use redis://, rediss://, unix://,"
        " redis+cluster://, redis+sentinel://, postgresql://, sqlite:///PATH or memory://"
    )
