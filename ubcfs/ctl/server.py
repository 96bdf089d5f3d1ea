"""The control channel's server side: a trio unix-socket server inside the daemon.

The daemon registers one async handler per command (``register``); a handler gets the
request's ``args`` dict, validates it with the ``protocol`` helpers, and returns a
JSON-serialisable result or raises ``CommandError`` (an expected failure, e.g. a write-back
error) or ``ProtocolError`` (bad arguments).  Either becomes an error reply.

Hostile or broken clients never hurt the daemon:
* only uid 0 and the daemon's own uid may talk (SO_PEERCRED; the socket dir is 0700 too);
* a line longer than ``MAX_LINE`` gets an error reply, then the connection is drained
  briefly and closed;
* bad JSON, unknown commands and wrong types get an error reply and the connection stays
  usable;
* each request line must arrive within ``request_timeout`` seconds, and each reply must be
  taken within ``send_timeout`` seconds, or the connection is closed;
* at most ``max_connections`` connections are served at once; more are told so and closed;
* an unexpected exception in a handler is logged with its traceback and answered with an
  "internal error" reply: the server keeps serving.

Socket life cycle: ``ControlServer.bind`` (synchronous, before the mount, so that a problem is
reported as a mount failure) makes the runtime dir (0700, checked to be ours), takes over a
stale socket but refuses one that answers, binds and chmods 0600.  ``close`` unlinks it if it
is still ours.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import struct
from collections.abc import Awaitable, Callable
from typing import Any, Final

import trio

from ubcfs.ctl.protocol import (
    MAX_LINE,
    ProtocolError,
    decode_request,
    encode,
    error_reply,
    ok_reply,
)

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[Any]]

REQUEST_TIMEOUT: Final = 30.0
SEND_TIMEOUT: Final = 10.0
DRAIN_TIMEOUT: Final = 2.0
DRAIN_LIMIT: Final = 16 << 20
MAX_CONNECTIONS: Final = 32
_PEERCRED: Final = struct.Struct("3i")


class CommandError(Exception):
    """An expected failure of a command; ``str()`` is the one-line error reply."""


class ControlServer:
    """Serves the control socket of one daemon.

    Args:
        sock: a bound, listening AF_UNIX stdlib socket (see ``bind``).
        path: its path, unlinked by ``close``.
        allowed_uids: peers that may send requests (default: root and our uid).
        request_timeout, send_timeout, max_connections: see the module docstring.
    """

    def __init__(
        self,
        sock: socket.socket,
        path: str,
        *,
        allowed_uids: set[int] | None = None,
        request_timeout: float = REQUEST_TIMEOUT,
        send_timeout: float = SEND_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._sock = sock
        self.path = path
        self.allowed_uids = allowed_uids if allowed_uids is not None else {0, os.getuid()}
        self.request_timeout = request_timeout
        self.send_timeout = send_timeout
        self.max_connections = max_connections
        self.handlers: dict[str, Handler] = {}
        self.connections = 0
        self.busy = 0  # requests being handled or answered
        self._idle = trio.Event()
        self._idle.set()
        st = os.lstat(path)
        self._ident = (st.st_dev, st.st_ino)

    @classmethod
    def bind(cls, path: str, **kwargs: Any) -> ControlServer:
        """Make the socket dir, bind ``path`` and listen.

        Raises:
            OSError: with a message naming the path (the dir is not ours, a live daemon
                already answers there, bind failed).
        """
        prepare_dir(os.path.dirname(path))
        take_over_stale(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
            sock.listen(16)
            return cls(sock, path, **kwargs)
        except BaseException:
            sock.close()
            raise

    def register(self, cmd: str, handler: Handler) -> None:
        """Serve ``cmd`` with ``handler``."""
        self.handlers[cmd] = handler

    def close(self) -> None:
        """Close the socket and unlink its path if it still is ours."""
        self._sock.close()
        with contextlib.suppress(OSError):
            st = os.lstat(self.path)
            if (st.st_dev, st.st_ino) == self._ident:
                os.unlink(self.path)

    async def wait_idle(self) -> None:
        """Return when no request is being handled or answered."""
        while self.busy:
            await self._idle.wait()

    def _enter(self) -> None:
        if not self.busy:
            self._idle = trio.Event()
        self.busy += 1

    def _leave(self) -> None:
        self.busy -= 1
        if not self.busy:
            self._idle.set()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept connections until cancelled."""
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._sock))
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:  # EMFILE and the like: back off, keep serving
                    log.warning("control socket: accept failed: %s", e)
                    await trio.sleep(0.1)
                    continue
                nursery.start_soon(self._connection, stream)

    # --- one connection ---------------------------------------------------------------

    async def _connection(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        try:
            async with stream:
                await self._converse(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as e:
            log.debug("control connection ended: %s", e)
        finally:
            self.connections -= 1

    async def _converse(self, stream: trio.SocketStream) -> None:
        if self.connections > self.max_connections:
            await self._send(stream, error_reply("too many control connections; try again"))
            return
        uid = peer_uid(stream.socket)
        if uid not in self.allowed_uids:
            log.warning("control socket: refused a client with uid %s", uid)
            await self._send(stream, error_reply("permission denied"))
            return
        buf = bytearray()
        while True:
            line: bytes | None = None
            timed_out = True
            with trio.move_on_after(self.request_timeout):
                line = await _read_line(stream, buf)
                timed_out = False
            if timed_out:
                if buf:
                    await self._send(
                        stream, error_reply("timed out waiting for the end of the line")
                    )
                return
            if line is None:
                return  # EOF; a half line, if any, is dropped
            if len(line) > MAX_LINE:
                await self._send(
                    stream, error_reply(f"request line too long (limit {MAX_LINE} bytes)")
                )
                await _drain(stream)
                return
            # Handlers run without the request timeout: a sync may take long.
            self._enter()
            try:
                reply = await self._dispatch(line)
            finally:
                self._leave()
            if not await self._send(stream, reply):
                return

    async def _dispatch(self, line: bytes) -> dict[str, Any]:
        try:
            req = decode_request(line)
            handler = self.handlers.get(req.cmd)
            if handler is None:
                known = ", ".join(sorted(self.handlers))
                raise ProtocolError(f"unknown command {req.cmd!r} (known: {known})")
            result = await handler(req.args)
            encode(result)  # a handler bug must not surface as a half-sent reply
            return ok_reply(result)
        except (ProtocolError, CommandError) as e:
            return error_reply(str(e))
        except Exception as e:
            log.exception("control request %r failed", bytes(line[:200]))
            return error_reply(f"internal error: {type(e).__name__}: {e}")

    async def _send(self, stream: trio.SocketStream, reply: dict[str, Any]) -> bool:
        """Send one reply; False if the client did not take it in time."""
        self._enter()
        try:
            with trio.move_on_after(self.send_timeout):
                await stream.send_all(encode(reply))
                return True
            log.debug("control socket: a client did not read its reply; closing")
            return False
        finally:
            self._leave()


async def _read_line(stream: trio.SocketStream, buf: bytearray) -> bytes | None:
    """The next line (without newline) from ``stream``; consumed bytes leave ``buf``.

    Returns None at EOF; a line longer than MAX_LINE is returned as soon as that is known
    (possibly truncated) so that the caller can refuse it without buffering the rest.
    """
    while True:
        nl = buf.find(b"\n")
        if nl >= 0:
            line = bytes(buf[:nl])
            del buf[: nl + 1]
            return line
        if len(buf) > MAX_LINE:
            line = bytes(buf)
            buf.clear()
            return line
        data = await stream.receive_some(MAX_LINE + 1)
        if not data:
            return None
        buf += data


async def _drain(stream: trio.SocketStream) -> None:
    """Read and discard what the client still sends (briefly, bounded), so that it sees our
    error reply rather than a connection reset."""
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await stream.send_eof()
        got = 0
        with trio.move_on_after(DRAIN_TIMEOUT):
            while got < DRAIN_LIMIT:
                data = await stream.receive_some(65536)
                if not data:
                    return
                got += len(data)


def peer_uid(sock: trio.socket.SocketType) -> int:
    """The uid of the process at the other end of a unix socket (SO_PEERCRED)."""
    _pid, uid, _gid = _PEERCRED.unpack(
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    )
    return int(uid)


def prepare_dir(path: str) -> None:
    """Make the runtime dir (mode 0700) and make sure that it is ours and private.

    Raises:
        OSError: it cannot be made, or is a symlink, not a dir, or another user's.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(errno.ENOTDIR, f"control socket dir {path} is not a directory")
    if st.st_uid != os.getuid():
        raise OSError(
            errno.EPERM, f"control socket dir {path} belongs to uid {st.st_uid}, not to us"
        )
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


def take_over_stale(path: str) -> None:
    """Remove a socket left by a dead daemon; refuse if a live one answers there.

    Raises:
        OSError: a daemon answers on ``path``, or it is not a socket.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise OSError(errno.EEXIST, f"{path} exists and is not a socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            os.unlink(path)  # nobody listens: stale
            return
    raise OSError(errno.EADDRINUSE, f"another ubcfs daemon already serves {path}")
