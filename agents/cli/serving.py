"""`agentfsm ui`: serve the web UI of a store's runs."""

from __future__ import annotations

import sys
from importlib.util import find_spec
from typing import TYPE_CHECKING

from ._command import EXIT_DONE, Commands, UsageProblem, arg, at_least
from ._store import opened

if TYPE_CHECKING:
    import argparse

__all__ = ["commands"]

commands = Commands()


@commands.command(
    "ui",
    "serve a live web UI of the store's runs (on loopback unless --host says otherwise)",
    arg("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)"),
    arg("--port", type=at_least(0), default=8765, help="port (default: 8765; 0: any free one)"),
    arg(
        "--agents",
        default="",
        metavar="MODULE:AGENT,...",
        help="agents to draw and act on, besides the registered ones",
    ),
    arg("--token", help="the token to act (and, off loopback, to read); default: a new one"),
    arg(
        "--drive",
        choices=["here", "queue"],
        default="here",
        help="after send and retry: drive the run on in this server (default, as the CLI does)"
        " or queue it for `agentfsm worker`",
    ),
)
async def ui(args: argparse.Namespace) -> int:
    missing = [name for name in ("starlette", "uvicorn") if find_spec(name) is None]
    if missing:
        raise UsageProblem(
            f'the web UI needs {" and ".join(missing)}: pip install "agentfsm[ui]" (in a clone'
            ' of agentfsm: pip install -e ".[ui]")'
        )
    from ..ui import create_app, serve
    from ..ui._registry import Registry
    from ..ui._serve import is_loopback

    loopback = is_loopback(args.host)
    async with opened(args) as store:
        registry = Registry.from_specs(store, args.agents.split(","))
        app = create_app(
            store, agents=registry, token=args.token, loopback=loopback, drive=args.drive
        )
        token = app.state.guard.token

        def ready(url: str) -> None:
            if not loopback and not args.token:
                print("no --token given off loopback: made one (reading needs it too)")
            print(f"agentfsm ui: serving {url}", flush=True)
            sys.stdout.flush()

        await serve(app, args.host, int(args.port), ready=ready, token=token)
    return EXIT_DONE
