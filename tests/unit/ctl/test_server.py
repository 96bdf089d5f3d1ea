"""ubcfs.ctl.server and ubcfs.ctl.client in one process: a server under trio, clients in
worker threads (the client is blocking)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from ubcfs.ctl.client import ControlClient, CtlError, NotAMountError, find_socket
from ubcfs.ctl.protocol import MAX_LINE
from ubcfs.ctl.server import CommandError, ControlServer, prepare_dir, take_over_stale


@pytest.fixture
def sockdir() -> Iterator[Path]:
    """A short private dir (sun_path is 108 bytes; tmp_path can be longer)."""
    d = tempfile.mkdtemp(prefix="ubcfs-ctl-", dir="/tmp")
    try:
        yield Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def _echo(args: dict[str, Any]) -> Any:
    return args


async def _fail(args: dict[str, Any]) -> Any:
    raise CommandError("it failed, as asked")


async def _bug(args: dict[str, Any]) -> Any:
    raise RuntimeError("a bug")


async def _unserialisable(args: dict[str, Any]) -> Any:
    return {"x": object()}


@contextlib.asynccontextmanager
async def serving(path: Path, **kwargs: Any) -> AsyncIterator[ControlServer]:
    server = ControlServer.bind(str(path), **kwargs)
    for name, handler in (
        ("echo", _echo),
        ("fail", _fail),
        ("bug", _bug),
        ("unserialisable", _unserialisable),
    ):
        server.register(name, handler)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            yield server
            nursery.cancel_scope.cancel()
    finally:
        server.close()


def exchange(path: Path, payload: bytes, close: bool = True) -> list[dict[str, Any]]:
    data = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(10)
        s.connect(str(path))
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(payload)
            if close:
                s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                data += chunk
    return [json.loads(line) for line in data.splitlines()]


def client(path: Path) -> ControlClient:
    return ControlClient(str(path), "MNT", {os.getuid()})


async def test_requests_and_errors(sockdir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = sockdir / "s.sock"
    async with serving(path):
        assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
        c = client(path)
        assert await trio.to_thread.run_sync(c.request, "echo", {"a": [1, 2]}) == {"a": [1, 2]}
        with pytest.raises(CtlError, match="it failed, as asked"):
            await trio.to_thread.run_sync(c.request, "fail")
        with pytest.raises(CtlError, match="internal error: RuntimeError: a bug"):
            await trio.to_thread.run_sync(c.request, "bug")
        assert "a bug" in caplog.text  # logged with its traceback
        with pytest.raises(CtlError, match="internal error"):
            await trio.to_thread.run_sync(c.request, "unserialisable")
        with pytest.raises(CtlError, match="unknown command 'nope'"):
            await trio.to_thread.run_sync(c.request, "nope")
        replies = await trio.to_thread.run_sync(
            exchange, path, b'bad\n{"cmd": "echo", "args": {"k": 1}}\n[]\n'
        )
        assert [r["ok"] for r in replies] == [False, True, False]
        assert replies[1]["result"] == {"k": 1}
        # The server is still fine.
        assert await trio.to_thread.run_sync(c.request, "echo") == {}
    assert not path.exists()


async def test_huge_line(sockdir: Path) -> None:
    path = sockdir / "s.sock"
    async with serving(path):
        for payload in (b"x" * (4 * MAX_LINE) + b"\n", b"y" * (4 * MAX_LINE)):
            replies = await trio.to_thread.run_sync(exchange, path, payload)
            assert len(replies) == 1
            assert "too long" in replies[0]["error"]
        # Exactly MAX_LINE bytes is still a line (bad JSON, but read as one).
        line = b'"' + b"z" * (MAX_LINE - 2) + b'"\n'
        replies = await trio.to_thread.run_sync(exchange, path, line)
        assert "JSON object" in replies[0]["error"]
        assert await trio.to_thread.run_sync(client(path).request, "echo") == {}


async def test_slow_and_silent_clients(sockdir: Path) -> None:
    path = sockdir / "s.sock"
    async with serving(path, request_timeout=0.3):
        # Half a line, never finished: an error after the timeout, then closed.
        replies = await trio.to_thread.run_sync(exchange, path, b'{"cmd": "ec', False)
        assert len(replies) == 1
        assert "timed out" in replies[0]["error"]
        # Nothing at all: closed without a word.
        assert await trio.to_thread.run_sync(exchange, path, b"", False) == []
        # Half a line, then EOF: dropped.
        assert await trio.to_thread.run_sync(exchange, path, b'{"cmd": "ec') == []
        assert await trio.to_thread.run_sync(client(path).request, "echo") == {}


async def test_connection_limit(sockdir: Path) -> None:
    path = sockdir / "s.sock"
    async with serving(path, max_connections=2):
        held = [socket.socket(socket.AF_UNIX) for _ in range(2)]
        try:
            for s in held:
                s.connect(str(path))
            await trio.testing.wait_all_tasks_blocked()
            replies = await trio.to_thread.run_sync(exchange, path, b'{"cmd": "echo"}\n')
            assert "too many" in replies[0]["error"]
        finally:
            for s in held:
                s.close()
        with trio.fail_after(5):
            while True:
                try:
                    await trio.to_thread.run_sync(client(path).request, "echo")
                    break
                except CtlError:
                    await trio.sleep(0.01)


async def test_peer_not_allowed(sockdir: Path) -> None:
    path = sockdir / "s.sock"
    async with serving(path, allowed_uids={os.getuid() + 4242}):
        replies = await trio.to_thread.run_sync(exchange, path, b'{"cmd": "echo"}\n')
        assert replies == [{"ok": False, "result": None, "error": "permission denied"}]


async def test_client_refuses_an_untrusted_server(sockdir: Path) -> None:
    path = sockdir / "s.sock"
    async with serving(path):
        c = ControlClient(str(path), "MNT", {os.getuid() + 4242})
        with pytest.raises(CtlError, match="refusing"):
            await trio.to_thread.run_sync(c.request, "echo")


async def test_wait_idle(sockdir: Path) -> None:
    path = sockdir / "s.sock"
    gate = trio.Event()
    entered = trio.Event()

    async def slow(args: dict[str, Any]) -> Any:
        entered.set()
        await gate.wait()
        return "done"

    async with serving(path) as server:
        server.register("slow", slow)
        async with trio.open_nursery() as nursery:
            c = client(path)

            async def ask() -> None:
                assert await trio.to_thread.run_sync(c.request, "slow") == "done"

            nursery.start_soon(ask)
            with trio.fail_after(5):
                await entered.wait()
            assert server.busy
            with trio.move_on_after(0.1) as scope:
                await server.wait_idle()
            assert scope.cancelled_caught
            gate.set()
            with trio.fail_after(5):
                await server.wait_idle()


def test_socket_life_cycle(sockdir: Path) -> None:
    path = sockdir / "sub" / "s.sock"
    prepare_dir(str(path.parent))
    assert path.parent.stat().st_mode & 0o777 == 0o700
    # A stale socket is taken over; a live one is not.
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
    take_over_stale(str(path))
    assert not path.exists()
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        s.listen()
        with pytest.raises(OSError, match="already serves"):
            ControlServer.bind(str(path))
    os.unlink(path)
    path.write_text("not a socket")
    with pytest.raises(OSError, match="not a socket"):
        take_over_stale(str(path))
    os.unlink(path)
    # close() leaves a socket that is not ours alone.
    server = ControlServer.bind(str(path))
    os.unlink(path)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        server.close()
        assert path.exists()


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to make a dir of another user")
def test_prepare_dir_refuses_a_foreign_dir(sockdir: Path) -> None:
    d = sockdir / "foreign"
    d.mkdir(mode=0o700)
    os.chown(d, 4242, 4242)
    with pytest.raises(OSError, match="belongs to uid 4242"):
        prepare_dir(str(d))


def test_find_socket_errors(tmp_path: Path) -> None:
    with pytest.raises(NotAMountError, match="does not exist"):
        find_socket(str(tmp_path / "nope"))
    with pytest.raises(NotAMountError, match="no control socket"):
        find_socket(str(tmp_path))
    c = ControlClient(str(tmp_path / "gone.sock"), "MNT", {0})
    with pytest.raises(NotAMountError, match="daemon is gone"):
        c.request("ping")
