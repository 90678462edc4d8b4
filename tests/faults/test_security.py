"""Security: a Redis ACL user confined to one key prefix, passwords kept out of every message,
and no code-executing deserializers in the library.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis.asyncio import Redis

from storage import RedisStore, StorageError
from storage.errors import StoreUnavailable

from ..redis_server import RedisServer
from .fault_agent import Progress, make_agent

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "pw-Qx7vLm2"
"""Alice's password: distinctive, so that finding it in output cannot be a coincidence."""


@pytest.fixture
def acl_server(redis_factory: type[RedisServer], tmp_path: Path) -> Iterator[RedisServer]:
    """A server of its own with two users: `alice`, confined to keys `alice:*`, and `demo`,
    confined to the CLI's default prefix `agentfsm:*`; both without @dangerous commands."""
    server = redis_factory(tmp_path / "acl").start()
    admin = redis.Redis(port=server.port)
    for user, prefix in (("alice", "alice"), ("demo", "agentfsm")):
        admin.acl_setuser(
            user,
            enabled=True,
            reset=True,
            reset_channels=True,
            passwords=[f"+{PASSWORD}"],
            keys=[f"{prefix}:*"],
            commands=["+@all", "-@dangerous"],
        )
    admin.close()
    yield server


def url(server: RedisServer, user: str = "alice", password: str = PASSWORD) -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    env.pop("AGENTFSM_STORE", None)
    return subprocess.run(
        [sys.executable, "-m", "agents", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.redis
async def test_acl_user_runs_an_agent_under_its_prefix(acl_server: RedisServer) -> None:
    store = RedisStore.from_url(url(acl_server), prefix="alice")
    agent = make_agent(4, 2.0, lambda ctx: None)
    try:
        run = await agent.start(store, Progress(), run_id="a1")
        await run.until_done()
        assert (run.status, run.seq) == ("done", 4)
        assert [r.run_id for r in await store.list_runs()] == ["a1"]  # alice:runs is hers too
        assert len(await store.history("a1")) == 5
    finally:
        await store.close()
    admin = redis.Redis(port=acl_server.port, decode_responses=True)
    keys = admin.keys("*")
    admin.close()
    assert keys and all(str(k).startswith("alice:") for k in keys), keys


@pytest.mark.redis
async def test_acl_user_is_refused_another_prefix(acl_server: RedisServer) -> None:
    """Every kind of access under `bob` fails with a `StorageError` that says why, names the
    server without the password, and writes nothing."""
    store = RedisStore.from_url(url(acl_server), prefix="bob")
    agent = make_agent(2, 2.0, lambda ctx: None)
    messages = []
    try:
        for attempt in (
            lambda: agent.start(store, Progress(), run_id="b1"),  # create.lua (EVALSHA)
            lambda: store.load("b1"),  # HGETALL
            lambda: store.history("b1"),  # XRANGE
            lambda: store.list_runs(),  # ZRANGE on bob:runs
            lambda: store.acquire_lease("b1", "me", 1.0),  # lease.lua (EVALSHA)
        ):
            with pytest.raises(StorageError) as caught:
                await attempt()
            assert not isinstance(caught.value, StoreUnavailable)
            messages.append(str(caught.value))
    finally:
        await store.close()
    for message in messages:
        assert "no permissions" in message, message
        assert f"redis://alice:***@127.0.0.1:{acl_server.port}/0" in message, message
        assert PASSWORD not in message
    admin = redis.Redis(port=acl_server.port)
    assert admin.keys("*") == []
    admin.close()


@pytest.mark.redis
async def test_password_is_not_in_errors_or_reprs(acl_server: RedisServer) -> None:
    wrong = RedisStore.from_url(url(acl_server, password=PASSWORD[::-1]), prefix="alice", retries=0)
    try:
        with pytest.raises(StorageError) as caught:
            await wrong.load("a1")
    finally:
        await wrong.close()
    error = caught.value
    texts = [str(error), repr(error), repr(error.__cause__), repr(error.__context__)]
    assert "invalid username-password" in str(error)
    store = RedisStore.from_url(url(acl_server), prefix="alice")
    client = store.client
    assert isinstance(client, Redis)
    texts += [repr(store), str(store), repr(client), str(client.connection_pool)]
    await store.close()
    for text in texts:
        assert PASSWORD not in text and PASSWORD[::-1] not in text, text


@pytest.mark.redis
def test_cli_output_never_shows_the_password(acl_server: RedisServer) -> None:
    """`agentfsm show` with a wrong password, and with a prefix alice may not touch (the
    CLI's default `agentfsm`): exit code 2, a reason, and no password."""
    wrong_password = cli("show", "a1", "--store", url(acl_server, password=PASSWORD + "x"))
    wrong_prefix = cli("show", "a1", "--store", url(acl_server))
    for result in (wrong_password, wrong_prefix):
        output = result.stdout + result.stderr
        assert result.returncode == 2, output
        assert "agentfsm: error:" in output
        assert "alice:***@" in output
        assert PASSWORD not in output
    assert "invalid username-password" in wrong_password.stderr
    assert "no permissions" in wrong_prefix.stderr


@pytest.mark.redis
def test_demo_resume_hint_hides_the_password(acl_server: RedisServer) -> None:
    result = cli(
        "demo", "--fail-at", "detect", "--run-id", "d1", "--store", url(acl_server, "demo")
    )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output  # the demo's step fails, as asked
    assert "agentfsm resume d1" in output
    assert PASSWORD not in output


@pytest.mark.redis
async def test_wrong_password_fails_fast(acl_server: RedisServer) -> None:
    store = RedisStore.from_url(url(acl_server, password="nope"), prefix="alice")
    began = time.monotonic()
    try:
        with pytest.raises(StorageError) as caught:
            await store.load("a1")
    finally:
        await store.close()
    assert time.monotonic() - began < 1.0
    assert not isinstance(caught.value, StoreUnavailable)


LIBRARY = ("statemachine", "storage", "agents")
UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "marshal", "shelve", "dill", "cloudpickle"}
UNSAFE_BUILTINS = {"eval", "exec", "compile", "__import__"}
UNSAFE_YAML = {"load", "unsafe_load", "full_load"}


def unsafe_uses(path: Path) -> list[str]:
    """`module:line what` for each import of an unsafe module, call of eval-like builtins,
    and `yaml.load`/`yaml.unsafe_load`/`yaml.full_load` in one source file."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name.split(".")[0] for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module.split(".")[0]]
            if names == ["yaml"]:
                names += [f"yaml.{a.name}" for a in node.names]
        for name in names:
            if name in UNSAFE_MODULES or name in (
                "yaml.load",
                "yaml.unsafe_load",
                "yaml.full_load",
            ):
                found.append(f"{path}:{line} imports {name}")
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in UNSAFE_BUILTINS:
                found.append(f"{path}:{line} calls {func.id}()")
            if (
                isinstance(func, ast.Attribute)
                and isinstance(func.value, ast.Name)
                and (func.value.id, func.attr)
                in {("yaml", a) for a in UNSAFE_YAML}
                | {(m, a) for m in UNSAFE_MODULES for a in ("load", "loads")}
                | {("builtins", b) for b in UNSAFE_BUILTINS}
            ):
                found.append(f"{path}:{line} calls {func.value.id}.{func.attr}()")
    return found


def test_library_never_deserializes_code() -> None:
    sources = [p for package in LIBRARY for p in sorted((ROOT / package).rglob("*.py"))]
    assert len(sources) > 20
    assert [use for p in sources for use in unsafe_uses(p)] == []
    for script in sorted((ROOT / "storage").rglob("*.lua")):
        text = script.read_text(encoding="utf-8")
        assert "loadstring" not in text and "load(" not in text, script


def test_the_unsafe_use_finder_finds_them(tmp_path: Path) -> None:
    sample = tmp_path / "bad.py"
    sample.write_text(
        "import pickle\nfrom marshal import loads\nimport yaml\n"
        "yaml.load(s)\neval('1')\nexec('x=1')\nbuiltins.eval('2')\n"
    )
    assert [u.split(":", 1)[1] for u in unsafe_uses(sample)] == [
        "1 imports pickle",
        "2 imports marshal",
        "4 calls yaml.load()",
        "5 calls eval()",
        "6 calls exec()",
        "7 calls builtins.eval()",
    ]
