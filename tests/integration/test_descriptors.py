"""Backing descriptors are a bounded cache, not one per known inode (issue 8).

The daemon runs under ``prlimit --nofile=1024:1024``, and a user creates, stats, reads and
removes 100,000 files on the mount, spread over a few directories, with ordinary system
calls.  The kernel keeps its dentries (nothing presses its memory), so the daemon knows all
those inodes at once; with one ``O_PATH`` descriptor per known inode it runs out at about a
thousand (EMFILE).  ``ubcfs stat --json`` reports the descriptor cache under ``"fds"``
(``limit open hits misses``) and the vnode cache under ``"vnodes"`` (``total active
inactive max``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Mounted, Mounter

pytestmark = pytest.mark.fuse

NOFILE = 1024
FDS_KEYS = ("limit", "open", "hits", "misses")
VNODES_KEYS = ("total", "active", "inactive", "max")


def daemon_nofile(pid: int) -> tuple[str, str]:
    """(soft, hard) RLIMIT_NOFILE of a process, from /proc/PID/limits."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError(f"no 'Max open files' in /proc/{pid}/limits")


def daemon_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def ints(section: dict[str, Any], keys: tuple[str, ...], what: str) -> dict[str, int]:
    """The ``keys`` of a stat section, each checked to be a non-negative int."""
    missing = [k for k in keys if k not in section]
    assert not missing, f"stat --json {what!r} lacks {missing}: {section}"
    for k in keys:
        v = section[k]
        assert isinstance(v, int), f"{what}.{k} = {v!r} is not an int"
        assert not isinstance(v, bool), f"{what}.{k} = {v!r} is a bool"
        assert v >= 0, f"{what}.{k} = {v} < 0"
    return {k: section[k] for k in keys}


def caches(m: Mounted) -> tuple[dict[str, int], dict[str, int]]:
    """The ``fds`` and ``vnodes`` sections of ``ubcfs stat --json``, checked -- once the
    drain task has brought the vnode cache back within its size (it runs behind the
    closes that fill it)."""
    deadline = time.monotonic() + 30
    st = m.stat()
    while st.get("vnodes", {}).get("total", 0) > st["vnodes"].get("max", 0):
        assert time.monotonic() < deadline, f"the vnode cache stays over its size: {st}"
        time.sleep(0.1)
        st = m.stat()
    assert "fds" in st, f"ubcfs stat --json has no 'fds' (keys: {sorted(st)})"
    assert "vnodes" in st, f"ubcfs stat --json has no 'vnodes' (keys: {sorted(st)})"
    fds = ints(st["fds"], FDS_KEYS, "fds")
    vn = ints(st["vnodes"], VNODES_KEYS, "vnodes")
    assert 0 < fds["limit"] < NOFILE, f"fds.limit {fds['limit']} not below RLIMIT_NOFILE {NOFILE}"
    assert fds["open"] <= fds["limit"], fds
    assert vn["max"] > 0, vn
    assert vn["active"] <= vn["total"], vn
    assert vn["inactive"] <= vn["total"], vn
    assert vn["total"] <= vn["max"], vn
    return fds, vn


def test_stat_reports_the_descriptor_and_vnode_caches(mounter: Mounter) -> None:
    m = mounter("m", nofile=NOFILE)
    assert daemon_nofile(m.pid) == (str(NOFILE), str(NOFILE))
    files = [m.mnt / f"f{i:03d}" for i in range(200)]
    for i, p in enumerate(files):
        p.write_bytes(b"%d\n" % i)
    fds0, _ = caches(m)
    for _ in range(2):
        for i, p in enumerate(files):
            assert p.read_bytes() == b"%d\n" % i
    fds1, vn1 = caches(m)
    assert fds1["hits"] + fds1["misses"] > fds0["hits"] + fds0["misses"], (fds0, fds1)
    assert fds1["hits"] >= fds0["hits"], (fds0, fds1)
    assert fds1["misses"] >= fds0["misses"], (fds0, fds1)
    assert vn1["total"] >= 1, vn1


DIRS = 10
PER_DIR = 10_000  # 100,000 files in all


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_100k_files_with_1024_descriptors(mounter: Mounter) -> None:
    """Create, stat, read, list and remove 100,000 files with the daemon at 1024 fds."""
    m = mounter("m", nofile=NOFILE, memory="4M")
    assert daemon_nofile(m.pid) == (str(NOFILE), str(NOFILE))
    n_all = DIRS * PER_DIR
    dirs = [m.mnt / f"d{d}" for d in range(DIRS)]
    names = [(d, dirs[d] / f"f{i:05d}") for d in range(DIRS) for i in range(PER_DIR)]
    times: dict[str, float] = {}
    peak_fds = 0

    def phase(what: str, fn: Any) -> None:
        nonlocal peak_fds
        t0 = time.monotonic()
        for k, (d, p) in enumerate(names):
            err = None
            try:
                fn(k, d, p)
            except OSError as e:
                err = e
            if err is not None:
                pytest.fail(
                    f"{what} of {p.relative_to(m.mnt)} (file {k + 1} of {n_all}): {err}"
                    f"; daemon has {daemon_fds(m.pid)} fds",
                    pytrace=False,
                )
            if k % 5000 == 0:
                peak_fds = max(peak_fds, daemon_fds(m.pid))
        times[what] = time.monotonic() - t0

    def create(k: int, d: int, p: Path) -> None:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.write(fd, b"%d\n" % k)
        finally:
            os.close(fd)

    def stat(k: int, d: int, p: Path) -> None:
        st = os.stat(p)
        assert st.st_size == len(b"%d\n" % k), (p, st.st_size)

    def read(k: int, d: int, p: Path) -> None:
        fd = os.open(p, os.O_RDONLY)
        try:
            assert os.read(fd, 100) == b"%d\n" % k, p
        finally:
            os.close(fd)

    for p in dirs:
        p.mkdir()
    phase("create", create)
    phase("stat", stat)
    phase("read", read)
    t0 = time.monotonic()
    for p in dirs:
        assert len(os.listdir(p)) == PER_DIR, p
    times["list"] = time.monotonic() - t0
    fds, _ = caches(m)
    assert fds["hits"] + fds["misses"] > 0, fds
    phase("unlink", lambda k, d, p: os.unlink(p))
    for p in dirs:
        p.rmdir()
    assert os.listdir(m.mnt) == []
    assert peak_fds < NOFILE, peak_fds
    m.assert_healthy()
    caches(m)
    r = m.ubcfs("sync", m.mnt)
    assert r.returncode == 0, r.stderr
    assert os.listdir(m.backing) == []
    print("100k files, seconds per phase:", {k: round(v, 1) for k, v in times.items()})
