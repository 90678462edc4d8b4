"""`open_store(url)`: pick a backend by URL scheme, importing it only when used."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from .base import Store
from .url import DEFAULT_STORE, redact

__all__ = ["DEFAULT_STORE", "open_store", "redact"]

_REDIS = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


def open_store(url: str | None = None, *, prefix: str = "agentfsm") -> Store:
    """A store for `url`; with no URL, `$AGENTFSM_STORE`, else the embedded default.

    - `redis://host:port/db`, `rediss://` (TLS), `unix:///path.sock`: `RedisStore`;
      `redis+cluster://host:port` for a Redis Cluster; `?prefix=NAME` sets the key prefix.
    - `sqlite:///relative/path.db`, `sqlite:////absolute/path.db`: `EmbeddedStore`.
    - `postgresql://user@host:port/database`, `postgres://`: `PostgresStore`;
      `?schema=NAME` sets its schema (default: `prefix`).
    - `memory://`: an in-process `EmbeddedStore`, gone when the process ends (tests).

    `prefix` namespaces the keys of a Redis store and names a Postgres store's schema
    (ignored by the others).
    """
    url = url or os.environ.get("AGENTFSM_STORE") or DEFAULT_STORE
    scheme = urlsplit(url).scheme
    if scheme in _REDIS:
        from .redis import RedisStore

        return RedisStore.from_url(url, prefix=prefix)
    if scheme in ("postgresql", "postgres"):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            raise ImportError(
                f'a Postgres store needs asyncpg ({exc}): pip install "agentfsm[postgres]"'
            ) from None

        return PostgresStore.from_url(url, prefix=prefix)
    if scheme in ("sqlite", "memory"):
        from .embedded import EmbeddedStore

        return EmbeddedStore.from_url(url)
    raise ValueError(
        f"unknown store URL {redact(url)!r}: use redis://, rediss://, unix://,"
        " redis+cluster://, postgresql://, sqlite:///PATH or memory://"
    )
