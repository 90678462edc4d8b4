"""Store URLs: the default one, and how one is shown in messages (never with its password)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

__all__ = ["DEFAULT_STORE", "redact"]

DEFAULT_STORE = "sqlite:///.agentfsm/store.db"
"""The embedded default: a file under `.agentfsm/` in the working directory."""


def redact(url: str) -> str:
    """`url` with any password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))
