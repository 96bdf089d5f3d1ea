"""The control channel's client side: blocking stdlib sockets, for the CLI and tests.

``connect(mountpoint)`` finds the mount's socket (ours, or -- for root -- the one of the user
who mounted), and ``ControlClient.request`` sends one request and returns its result.  Every
failure is a ``CtlError`` with a one-line message meant for the user: no daemon, a daemon that
does not answer, permission denied, or the daemon's own error reply.
"""

from __future__ import annotations

import os
import socket
import struct
from typing import Any, Final

from ubcfs.ctl.protocol import (
    MAX_REPLY,
    ProtocolError,
    decode_reply,
    encode_request,
    mount_entry,
    mount_key,
    runtime_dir_candidates,
)

CONNECT_TIMEOUT: Final = 5.0
DEFAULT_TIMEOUT: Final = 30.0
_PEERCRED: Final = struct.Struct("3i")  # struct ucred: pid, uid, gid


class CtlError(Exception):
    """A control request failed; ``str()`` is a one-line message for the user."""


class NotAMountError(CtlError):
    """No ubcfs daemon serves that path."""


def find_socket(mountpoint: str) -> tuple[str, set[int]]:
    """The control socket of the ubcfs mount on ``mountpoint`` and the uids that may own it.

    Raises:
        CtlError: the path does not exist, or its socket cannot be reached.
        NotAMountError: no control socket for that path.
    """
    real = os.path.realpath(mountpoint)
    entry = mount_entry(real)
    if entry is None and not os.path.lexists(real):
        raise NotAMountError(f"{mountpoint} does not exist")
    me = os.getuid()
    owner = entry.owner_uid if entry is not None else None
    uids = list(dict.fromkeys(u for u in (owner, me) if u is not None))
    name = f"{mount_key(real)}.sock"
    denied = False
    for uid in uids:
        for d in runtime_dir_candidates(uid):
            path = os.path.join(d, name)
            try:
                os.lstat(path)
            except PermissionError:
                denied = True
                continue
            except OSError:
                continue
            return path, {0, me, *uids}
    if denied:
        raise CtlError(
            f"{mountpoint}: permission denied (only root and the user who mounted it,"
            f" uid {owner}, may control it)"
        )
    raise NotAMountError(f"{mountpoint} is not a ubcfs mount (no control socket)")


def connect(mountpoint: str) -> ControlClient:
    """A client for the ubcfs mount on ``mountpoint`` (see ``find_socket``)."""
    path, trusted = find_socket(mountpoint)
    return ControlClient(path, mountpoint, trusted)


class ControlClient:
    """Sends requests to one daemon, one connection per request.

    Args:
        path: the control socket.
        mountpoint: for messages.
        trusted_uids: the daemon must run as one of these (checked with SO_PEERCRED, so a
            stale socket path taken over by another user's process is not believed).
    """

    def __init__(self, path: str, mountpoint: str, trusted_uids: set[int]) -> None:
        self.path = path
        self.mountpoint = mountpoint
        self.trusted_uids = trusted_uids

    def request(
        self, cmd: str, args: dict[str, Any] | None = None, timeout: float | None = DEFAULT_TIMEOUT
    ) -> Any:
        """Send ``cmd`` and return its result; ``timeout`` bounds each wait for the daemon
        (None: wait as long as it takes, e.g. for a write-back).

        Raises:
            CtlError: the message says why.
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
            self._connect(sock)
            sock.settimeout(timeout)
            try:
                sock.sendall(encode_request(cmd, args))
                line = _read_line(sock)
            except TimeoutError:
                raise CtlError(
                    f"{self.mountpoint}: the ubcfs daemon did not answer {cmd!r} within"
                    f" {timeout:g} s"
                ) from None
            except OSError as e:
                raise CtlError(
                    f"{self.mountpoint}: lost the connection to the ubcfs daemon ({e.strerror})"
                ) from None
        if line is None:
            raise CtlError(
                f"{self.mountpoint}: the ubcfs daemon closed the connection without answering"
                f" {cmd!r}"
            )
        try:
            reply = decode_reply(line)
        except ProtocolError as e:
            raise CtlError(f"{self.mountpoint}: {e}") from None
        if not reply.ok:
            raise CtlError(reply.error)
        return reply.result

    def _connect(self, sock: socket.socket) -> None:
        sock.settimeout(CONNECT_TIMEOUT)
        try:
            sock.connect(self.path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotAMountError(
                f"{self.mountpoint} is not a ubcfs mount (its control socket does not answer:"
                " the daemon is gone)"
            ) from None
        except PermissionError:
            raise CtlError(
                f"{self.mountpoint}: permission denied (only root and the user who mounted it"
                " may control it)"
            ) from None
        except TimeoutError:
            raise CtlError(f"{self.mountpoint}: the ubcfs daemon does not answer") from None
        except OSError as e:
            raise CtlError(f"{self.mountpoint}: cannot reach the ubcfs daemon: {e}") from None
        _pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid not in self.trusted_uids:
            raise CtlError(
                f"{self.mountpoint}: the control socket {self.path} belongs to uid {uid},"
                " not to the mount's owner; refusing to talk to it"
            )


def _read_line(sock: socket.socket) -> bytes | None:
    """One reply line without its newline, or None at EOF before a full line."""
    buf = bytearray()
    while True:
        nl = buf.find(b"\n")
        if nl >= 0:
            return bytes(buf[:nl])
        if len(buf) > MAX_REPLY:
            raise CtlError("the ubcfs daemon sent an oversized reply")
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
