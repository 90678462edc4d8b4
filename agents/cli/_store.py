"""Opening the store a command names, and finding out at once when it does not answer."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from ._command import UsageProblem

if TYPE_CHECKING:
    import argparse

    from storage import Store

__all__ = ["ANSWER_WITHIN", "opened", "store_url"]

ANSWER_WITHIN = 2.0
"""Seconds a Redis server has to answer a PING before the command gives up on it."""


def store_url(args: argparse.Namespace) -> str:
    """The URL the command uses (as given: may hold a password, see `storage.redis.redact`)."""
    from storage._open import DEFAULT_STORE

    return str(args.store or os.environ.get("AGENTFSM_STORE") or DEFAULT_STORE)


@asynccontextmanager
async def opened(args: argparse.Namespace) -> AsyncIterator[Store]:
    """The store of `--store`, else `$AGENTFSM_STORE`, else the embedded default; a Redis
    server must answer a PING within `ANSWER_WITHIN` seconds, else `UsageProblem` says how
    to fix it."""
    from storage import open_store

    store = open_store(args.store)
    try:
        await _check_answers(store, args)
        yield store
    finally:
        await store.close()


async def _check_answers(store: Store, args: argparse.Namespace) -> None:
    # The Redis backend is imported by open_store only for a Redis URL: when it is not loaded,
    # the store is not a RedisStore, and an embedded store does not need the import to be
    # ruled out.
    backend = sys.modules.get("storage.redis")
    if backend is None or not isinstance(store, backend.RedisStore):
        return
    url = backend.redact(store_url(args))
    try:
        await asyncio.wait_for(store.client.ping(), ANSWER_WITHIN)
    except TimeoutError:  # the client retried until now: was it refused, or is it silent?
        reason = await _why_no_answer(store_url(args))
    except Exception as exc:  # unknown host, TLS, auth: say which, then what to do
        reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc!r}"
    else:
        return
    via = "--store" if args.store else "$AGENTFSM_STORE"
    raise UsageProblem(
        f"the store {url} (from {via}) does not answer ({reason}): start it (for example"
        " `redis-server`), or point --store / AGENTFSM_STORE at a store that runs"
        " (unset, the embedded store .agentfsm/store.db is used)"
    )


async def _why_no_answer(url: str) -> str:
    """Why a Redis URL gave no answer: nothing listens there, or the server is silent."""
    parts = urlsplit(url)
    try:
        if parts.scheme == "unix":
            connecting = asyncio.open_unix_connection(parts.path)
        else:
            connecting = asyncio.open_connection(parts.hostname or "localhost", parts.port or 6379)
        _, writer = await asyncio.wait_for(connecting, 0.5)
    except TimeoutError:
        pass
    except ConnectionRefusedError:
        return "connection refused: nothing listens there"
    except OSError as exc:
        return f"cannot connect: {exc.strerror or exc}"
    else:
        writer.close()
    return f"no answer within {ANSWER_WITHIN:g} s"
