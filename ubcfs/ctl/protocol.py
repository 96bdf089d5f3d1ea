"""The control channel's wire format and addressing (stdlib only).

Wire format: JSON lines over a unix stream socket.  A client sends one request per line,
``{"cmd": "stat", "args": {...}}`` (``args`` may be omitted), and gets one reply line for each,
``{"ok": true, "result": ..., "error": ""}`` or ``{"ok": false, "result": null, "error": "..."}``.
A line is at most ``MAX_LINE`` bytes (replies may be longer, up to ``MAX_REPLY``).  Nothing
a client sends can make the daemon raise: every way a request can be wrong becomes a
``ProtocolError`` whose message goes back in the error reply.

Addressing: a mount's socket is ``<runtime dir>/<key>.sock``, the key being a hash of the
mountpoint's resolved path.  The runtime dir belongs to the user who mounted: ``/run/ubcfs``
for root, else ``$XDG_RUNTIME_DIR/ubcfs`` (or ``/run/user/UID/ubcfs``, or ``/tmp/ubcfs-UID``),
mode 0700.  So that root can reach a mount made by another user, the mounting uid can be read
from the mount table (FUSE mounts carry ``user_id=N`` in their super options).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Iterable
from typing import Any, Final

MAX_LINE: Final = 64 * 1024  # bytes in one request line, newline excluded
MAX_REPLY: Final = 16 << 20  # bytes in one reply line
MAX_CMD: Final = 64  # characters in a command name
MAX_STR: Final = 4096  # characters in a string argument
ROOT_RUNTIME_DIR: Final = "/run/ubcfs"


class ProtocolError(ValueError):
    """A request or reply that breaks the protocol; the message is one line for the peer."""


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    cmd: str
    args: dict[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    ok: bool
    result: Any
    error: str


# --- encoding ---------------------------------------------------------------------------


def one_line(text: str, limit: int = 1000) -> str:
    """``text`` squeezed onto one line of at most ``limit`` characters (for error messages
    that may quote what a client sent)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def encode(obj: Any) -> bytes:
    """One JSON line (ASCII, no NaN/Infinity)."""
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode("ascii") + b"\n"


def encode_request(cmd: str, args: dict[str, Any] | None = None) -> bytes:
    return encode({"cmd": cmd, "args": args or {}})


def ok_reply(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result, "error": ""}


def error_reply(message: str) -> dict[str, Any]:
    return {"ok": False, "result": None, "error": one_line(message) or "error"}


def _reject_constant(name: str) -> Any:
    raise ProtocolError(f"{name} is not valid JSON here")


def loads(line: bytes) -> Any:
    """Parse one JSON line.

    Raises:
        ProtocolError: not UTF-8, not JSON, NaN/Infinity, or nested too deeply.
    """
    try:
        return json.loads(line, parse_constant=_reject_constant)
    except RecursionError:
        raise ProtocolError("bad JSON: nested too deeply") from None
    except ProtocolError:
        raise
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProtocolError(f"bad JSON: {one_line(str(e), 200)}") from None


def decode_request(line: bytes) -> Request:
    """Validate one request line (without its newline).

    Raises:
        ProtocolError: naming what is wrong.
    """
    if len(line) > MAX_LINE:
        raise ProtocolError(f"request line too long (limit {MAX_LINE} bytes)")
    obj = loads(line)
    if not isinstance(obj, dict):
        raise ProtocolError(f"a request must be a JSON object, not {_typename(obj)}")
    unknown = set(obj) - {"cmd", "args"}
    if unknown:
        raise ProtocolError(f"unexpected request key(s): {_names(unknown)}")
    cmd = obj.get("cmd")
    if not isinstance(cmd, str) or not cmd:
        raise ProtocolError(f"'cmd' must be a non-empty string, not {_typename(cmd)}")
    if len(cmd) > MAX_CMD or not cmd.isprintable():
        raise ProtocolError("'cmd' is not a command name")
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise ProtocolError(f"'args' must be a JSON object, not {_typename(args)}")
    return Request(cmd, args)


def decode_reply(line: bytes) -> Reply:
    """Validate one reply line.

    Raises:
        ProtocolError: naming what is wrong.
    """
    obj = loads(line)
    if not isinstance(obj, dict) or not isinstance(obj.get("ok"), bool):
        raise ProtocolError("malformed reply from the daemon")
    error = obj.get("error", "")
    if not isinstance(error, str):
        raise ProtocolError("malformed reply from the daemon")
    return Reply(obj["ok"], obj.get("result"), error)


# --- validating arguments ---------------------------------------------------------------


def check_keys(args: dict[str, Any], required: Iterable[str], optional: Iterable[str] = ()) -> None:
    """``args`` has every required key and nothing else but optional ones.

    Raises:
        ProtocolError: a missing or unexpected key.
    """
    required = set(required)
    missing = required - set(args)
    if missing:
        raise ProtocolError(f"missing argument(s): {_names(missing)}")
    unknown = set(args) - required - set(optional)
    if unknown:
        raise ProtocolError(f"unexpected argument(s): {_names(unknown)}")


def arg_str(args: dict[str, Any], name: str, max_len: int = MAX_STR) -> str:
    """A string argument.

    Raises:
        ProtocolError: absent, not a string, or too long.
    """
    value = args.get(name)
    if not isinstance(value, str):
        raise ProtocolError(f"argument {name!r} must be a string, not {_typename(value)}")
    if len(value) > max_len:
        raise ProtocolError(f"argument {name!r} is too long (limit {max_len} characters)")
    return value


def arg_int(args: dict[str, Any], name: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integer argument (``true`` is not an integer here) within ``[lo, hi]``.

    Raises:
        ProtocolError: absent, not an integer, or out of range.
    """
    value = args.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise ProtocolError(f"argument {name!r} must be an integer, not {_typename(value)}")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        lo_s = "-inf" if lo is None else str(lo)
        hi_s = "inf" if hi is None else str(hi)
        raise ProtocolError(f"argument {name!r} = {value} is out of range [{lo_s}, {hi_s}]")
    return value


def _typename(value: object) -> str:
    return {
        dict: "an object",
        list: "an array",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _names(keys: Iterable[object]) -> str:
    return one_line(", ".join(sorted(repr(k) for k in keys)), 200)


# --- addressing ---------------------------------------------------------------------------


def mount_key(mountpoint: str) -> str:
    """A short stable name for a mountpoint: a hash of its resolved path."""
    real = os.fsencode(os.path.realpath(mountpoint))
    return hashlib.sha256(real).hexdigest()[:24]


def runtime_dir(uid: int | None = None) -> str:
    """Where the daemons of ``uid`` (default: ours) put their sockets."""
    if uid is None:
        uid = os.getuid()
    if uid == 0:
        return ROOT_RUNTIME_DIR
    if uid == os.getuid():
        xdg = os.environ.get("XDG_RUNTIME_DIR", "")
        if xdg and os.path.isabs(xdg) and os.path.isdir(xdg):
            return os.path.join(xdg, "ubcfs")
    return _fallback_runtime_dir(uid)


def _fallback_runtime_dir(uid: int) -> str:
    user_dir = f"/run/user/{uid}"
    try:
        if os.stat(user_dir).st_uid == uid:
            return os.path.join(user_dir, "ubcfs")
    except OSError:
        pass
    return f"/tmp/ubcfs-{uid}"


def runtime_dir_candidates(uid: int) -> list[str]:
    """Every dir a daemon of ``uid`` may have chosen (ours first), without duplicates."""
    out = [runtime_dir(uid)]
    if uid != 0:
        out += [f"/run/user/{uid}/ubcfs", f"/tmp/ubcfs-{uid}"]
    return list(dict.fromkeys(out))


def socket_path(mountpoint: str, uid: int | None = None) -> str:
    """The control socket of a mount made by ``uid`` (default: us)."""
    return os.path.join(runtime_dir(uid), f"{mount_key(mountpoint)}.sock")


@dataclasses.dataclass(frozen=True, slots=True)
class MountEntry:
    """One line of /proc/self/mountinfo."""

    mountpoint: str
    fstype: str
    source: str
    super_options: dict[str, str]

    @property
    def owner_uid(self) -> int | None:
        """The uid that mounted a FUSE filesystem (its ``user_id`` option)."""
        value = self.super_options.get("user_id", "")
        return int(value) if value.isdigit() else None


def mount_entry(path: str) -> MountEntry | None:
    """The topmost mount on ``path`` (resolved), or None.  Reads the mount table only, so a
    dead or hung FUSE mount is found without touching it."""
    real = os.path.realpath(path)
    found = None
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
            for line in f:
                entry = parse_mountinfo_line(line)
                if entry is not None and entry.mountpoint == real:
                    found = entry
    except OSError:
        return None
    return found


def parse_mountinfo_line(line: str) -> MountEntry | None:
    """Parse one mountinfo line (``id parent dev root mountpoint opts [tags] - type src
    superopts``); None if malformed."""
    fields = line.rstrip("\n").split(" ")
    try:
        sep = fields.index("-", 6)
        fstype, source, superopts = fields[sep + 1], fields[sep + 2], fields[sep + 3]
    except (ValueError, IndexError):
        return None
    options: dict[str, str] = {}
    for opt in superopts.split(","):
        key, _, value = opt.partition("=")
        options[key] = value
    return MountEntry(_unescape(fields[4]), fstype, _unescape(source), options)


def _unescape(field: str) -> str:
    r"""Undo the octal escapes of the mount table (``\040`` for a space, ...)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
