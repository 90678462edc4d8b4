"""Why an SQLite store file cannot be used: who holds its write lock, what is read-only.

SQLite says "database is locked" and "unable to open database file"; a person needs to know
which process holds the lock (and whether it is stopped), or which file or folder is not
writable. Linux shows POSIX locks in /proc/locks; elsewhere the pid is left out.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["busy", "unwritable"]

_WAL_WRITE_LOCK = 120
"""The byte of the -shm file a WAL writer locks (SQLite's WALINDEX_LOCK_OFFSET + 0)."""


def busy(path: str, waited: float) -> str:
    """Why `path` stayed locked for `waited` seconds, naming the holder when it is known."""
    said = f"{path} stayed locked by another process's write transaction for {waited:g} s"
    holders = [pid for pid in _write_lock_holders(path) if pid != os.getpid()]
    if not holders:
        return said + " (a long transaction, or a process stopped inside one)"
    pid = holders[0]
    state = _state(pid)
    how = " and is stopped (SIGSTOP, a debugger): continue it or end it" if state == "T" else (
        ": wait for it, or end it"
    )  # fmt: skip
    return f"{said}: pid {pid} ({_command(pid)}) holds the write lock{how}"


def unwritable(path: str, problem: str) -> str | None:
    """A better explanation for SQLite's `problem` when it is about writing, else None."""
    folder = Path(path).resolve().parent
    if "readonly" in problem or "read-only" in problem:
        return (
            f"{path} is read-only (its permissions, an immutable flag or a read-only disk):"
            " the store writes to it and to its -wal and -shm files beside it"
        )
    if "unable to open" in problem:
        return (
            f"cannot open {path}: the store needs to create and write it and its -wal and"
            f" -shm files, so the folder {folder} must exist and be writable (and the disk"
            " not read-only)"
        )
    return None


def _write_lock_holders(path: str) -> list[int]:
    try:
        inode = os.stat(path + "-shm").st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return []
    pids = []
    for line in lines:
        parts = line.split()
        if "->" in parts or len(parts) < 8:  # a waiter, not a holder
            continue
        kind, pid, device_inode, start = parts[3], parts[4], parts[5], parts[6]
        if kind != "WRITE" or not pid.isdigit() or start != str(_WAL_WRITE_LOCK):
            continue
        if device_inode.rsplit(":", 1)[-1] == str(inode):
            pids.append(int(pid))
    return pids


def _state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[-1].split()[0]


def _command(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return "?"
    command = " ".join(part.decode(errors="replace") for part in raw.split(b"\0") if part)
    return command[:80] or "?"
