"""Helpers for the POSIX-exactness tests (issue 8): run a step in a child process with a
given umask and identity, and compare what happened on the mount with what happened in a
plain directory of the host's own file system (ext4 here), the reference.

A reference comparison is the strongest form of these tests: the same operations, done on
the mount and on the reference, must give the same modes, owners and time relationships.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from ubcfs.ctl.protocol import parse_mountinfo_line

T = TypeVar("T")

NOBODY = 65534  # uid and gid of the second user
USERS_GID = 100  # a group the second user is not in


def in_child(
    fn: Callable[..., T],
    *args: Any,
    umask: int = 0o022,
    uid: int | None = None,
    gid: int | None = None,
) -> T:
    """``fn(*args)`` in a forked child with ``umask`` and, if given, the identity ``uid`` /
    ``gid`` (no supplementary groups); its result (or exception, re-raised here as
    AssertionError) comes back pickled through a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            os.close(r)
            os.umask(umask)
            if gid is not None:
                os.setgroups([])
                os.setgid(gid)
            if uid is not None:
                os.setuid(uid)
            out: tuple[str, Any] = ("ok", fn(*args))
        except BaseException as e:  # noqa: BLE001 - everything goes back to the parent
            out = ("error", f"{type(e).__name__}: {e}")
        try:
            data = pickle.dumps(out)
            while data:
                data = data[os.write(w, data) :]
        except BaseException:  # noqa: BLE001 - the child must reach os._exit
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    chunks = []
    with os.fdopen(r, "rb") as f:
        while b := f.read(65536):
            chunks.append(b)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, f"child for {fn.__name__} failed: {status}"
    kind, value = pickle.loads(b"".join(chunks))
    if kind == "error":
        raise AssertionError(f"{fn.__name__}{args} (umask {umask:03o}, uid {uid}): {value}")
    result: T = value
    return result


def fstype(path: Path) -> str:
    """The type of the file system ``path`` is on (from the mount table)."""
    real = os.path.realpath(path)
    best, kind = "", "?"
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            e = parse_mountinfo_line(line)
            if e is None:
                continue
            mp = e.mountpoint.rstrip("/") + "/"
            if (real + "/").startswith(mp) and len(mp) >= len(best):
                best, kind = mp, e.fstype
    return kind


def differences(mount: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """``key: mount X, reference Y`` for every key where they differ."""
    out = []
    for k in sorted(set(mount) | set(ref)):
        a, b = mount.get(k, "missing"), ref.get(k, "missing")
        if a != b:
            out.append(f"{k}: mount {a}, reference {b}")
    return out
