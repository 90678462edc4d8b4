"""Opening the store a command names, and finding out at once when it does not answer."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from ._command import UsageProblem

if TYPE_CHECKING:
    import argparse

    from storage import Store

__all__ = ["ANSWER_WITHIN", "opened", "store_named", "store_url"]

ANSWER_WITHIN = 2.0
"""Seconds a store has to answer (`Store.ping`) before the command gives up on it."""


def store_url(args: argparse.Namespace) -> str:
    """The URL the command uses (as given: may hold a password, see `storage.url.redact`)."""
    from storage.url import DEFAULT_STORE

    return str(args.store or os.environ.get("AGENTFSM_STORE") or DEFAULT_STORE)


def store_named(args: argparse.Namespace) -> str:
    """The store the command used, for a message: the URL without its password; an embedded
    store's file as an absolute path (a relative one depends on the working directory); and
    where the URL came from."""
    from storage.url import redact

    url = store_url(args)
    via = "--store" if args.store else "$AGENTFSM_STORE" if os.environ.get("AGENTFSM_STORE") else ""
    scheme, sep, path = url.partition(":///")
    if scheme == "sqlite" and sep and path and not path.startswith("/"):
        path, _, query = path.partition("?")
        url = f"sqlite:///{os.path.abspath(path)}" + (f"?{query}" if query else "")
    shown = f"store {redact(url)}"
    return f"{shown}, from {via}" if via else f"{shown}, the default embedded store"


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
    from storage.errors import StoreUnavailable
    from storage.url import redact

    try:
        await store.ping(ANSWER_WITHIN)
    except StoreUnavailable as exc:
        via = "--store" if args.store else "$AGENTFSM_STORE"
        raise UsageProblem(
            f"the store {redact(store_url(args))} (from {via}) does not answer ({exc}): start it"
            " (for example `redis-server`), or point --store / AGENTFSM_STORE at a store that"
            " runs (unset, the embedded store .agentfsm/store.db is used)"
        ) from None
