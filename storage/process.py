"""Owner ids that carry a proof of life, and the one liveness rule for all a process holds.

The rule (docs/architecture.md, "Liveness"): whatever a process holds in a store — a run's
lease, a rate-limit slot — is freed at once when its holder is provably dead on this host
(`provably_dead`), else when its TTL runs out. Each backend asks this module, and nothing
else, for the proof. (The embedded store's write lock is an OS file lock: the kernel frees it
when its process dies; a stopped process is alive, and is named by `busy`.)

An owner id reads `host:pid:random@boot.pidns.start` (a worker's is `NAME/host:pid:random@...`).
The part after `@` names the machine's boot (`/proc/sys/kernel/random/boot_id`), the pid
namespace and the process's start time (clock ticks after boot, from `/proc/PID/stat`). A
holder on the same host, boot and pid namespace is provably dead when its pid is gone, is a
zombie, or now belongs to a process that started at another time (the pid was reused). A
holder id may go on after the proof with `:` and anything (a rate-limit slot's holder is the
owner id and the request's key). Nothing
else is proof: a holder on another machine, in another container, or on a system without
`/proc` may be alive, so its lease is waited for until it expires.
"""

from __future__ import annotations

import functools
import os
import re
import secrets
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

T = TypeVar("T")

__all__ = ["boot_id", "free_dead", "owner_id", "provably_dead"]

_PROOF = re.compile(r"([0-9a-f]{8,32})\.(\d+)\.(\d+)")
_PROOF_IN = re.compile(r"@([0-9a-f]{8,32})\.(\d+)\.(\d+)(?=:|$)")


@functools.cache
def boot_id() -> str:
    """This boot of this machine ("" where the system does not say): processes of an earlier
    boot are all gone."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip().replace("-", "")
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        link = os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return ""
    return "".join(c for c in link if c.isdigit())


def _start_time(pid: int) -> tuple[str, str] | None:
    """The state letter and start time of process `pid`, None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    # "pid (comm) state ppid ...": comm may hold spaces and parentheses; starttime is field 22.
    fields = stat.rpartition(")")[2].split()
    return fields[0], fields[19]


@functools.cache
def _proof() -> str:
    """This process's proof of life, "" where the system gives none."""
    boot, namespace = boot_id(), _pid_namespace()
    own = _start_time(os.getpid()) if boot and namespace else None
    return f"@{boot[:16]}.{namespace}.{own[1]}" if own else ""


def owner_id(name: str = "") -> str:
    """A new lease owner id for this process (unique: a random part per call), `name/` first
    when given."""
    me = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}{_proof()}"
    return f"{name}/{me}" if name else me


def provably_dead(owner: str) -> bool:
    """Whether the process behind lease owner id `owner` is provably gone (see the module doc).

    False for this process, for owners of other hosts, boots or pid namespaces, and for ids
    without a proof (older ones, other systems).
    """
    match = _PROOF_IN.search(owner)
    who = owner[: match.start()] if match else ""
    mine = _PROOF.fullmatch(_proof()[1:])
    if match is None or mine is None or match.groups()[:2] != mine.groups()[:2]:
        return False
    parts = who.rpartition("/")[2].split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid = int(parts[1])
    if pid == os.getpid():
        return False
    seen = _start_time(pid)
    if seen is None:
        return True
    state, started = seen
    return started != match.group(3) or state in ("Z", "X")


async def free_dead(attempt: Callable[[list[str]], Awaitable[tuple[T, Sequence[str]]]]) -> T:
    """The rule, for a store that asks its server: `attempt(dead)` tries to take something,
    freeing what the holders in `dead` hold, and answers its result and the holders that
    stopped it; while some of those are provably dead (and were not freed already: they
    changed hands meanwhile), try again freeing them."""
    dead: list[str] = []
    while True:
        result, holders = await attempt(dead)
        gone = [h for h in holders if h not in dead and provably_dead(h)]
        if not gone:
            return result
        dead = gone
