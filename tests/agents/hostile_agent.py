"""An agent whose step fails with a message full of rich markup and terminal escape sequences,
as a hostile (or careless) tool may raise: the CLI must print it as text."""

from __future__ import annotations

from pydantic import BaseModel

from agents import Agent, tool

HOSTILE = "\x1b]0;pwned\x07\x1b[2J[/][bold red]boom\x9b31m\nsecond line"
"""Retitles the terminal, clears it, closes a markup tag, opens a style, a C1 CSI, a newline."""


class Note(BaseModel):
    note: str = ""


def explode(memory: Note) -> None:
    raise RuntimeError(HOSTILE)


hostile = Agent(
    name="hostile", memory=Note, initial="new", final=["done"],
    transitions=[tool("explode", "new", "done", explode)],
)  # fmt: skip
