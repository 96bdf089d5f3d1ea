"""Times are what the backing file system would say (issue 8; where the issue is silent:
what ext4 does), and ``.`` and ``..`` are listed.

The operations run on the mount and on a reference directory on the host's ext4, and what
is compared are relationships -- "ctime advanced", "mtime is the one given", "mtime equals
ctime" -- never "now" itself.  Every operation is preceded by a short sleep so that the
clock has moved (ext4 keeps nanoseconds; a tick of the coarse clock is a few ms).  A file's
visible mtime must not move by itself: not when its pages are written back, not when the
kernel forgets the inode and the daemon reclaims its vnode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.integration.conftest import Mounted, drop_caches, require_root
from tests.integration.posixtools import NOBODY, differences, fstype

pytestmark = pytest.mark.fuse

TICK = 0.05  # seconds slept before each operation
GIVEN_A = 1_000_000_123_456_789  # 2001-09-09, with nanoseconds
GIVEN_M = 1_100_000_987_654_321  # 2004-11-09

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
AT_FDCWD = -100


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def utimensat(path: Path, atime: int | str, mtime: int | str) -> None:
    """utimensat(2) with each time in ns, or ``"now"`` / ``"omit"``."""
    ts = (_Timespec * 2)()
    for i, t in enumerate((atime, mtime)):
        if t == "now":
            ts[i].tv_sec, ts[i].tv_nsec = 0, UTIME_NOW
        elif t == "omit":
            ts[i].tv_sec, ts[i].tv_nsec = 0, UTIME_OMIT
        else:
            assert isinstance(t, int)
            ts[i].tv_sec, ts[i].tv_nsec = divmod(t, 1_000_000_000)
    if _libc.utimensat(AT_FDCWD, os.fsencode(path), ts, 0) != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), str(path))


def reference_dir(tmp_path: Path) -> Path:
    ref = tmp_path / "ref"
    ref.mkdir()
    kind = fstype(ref)
    if kind != "ext4":
        pytest.skip(f"the reference directory is on {kind}, not ext4")
    return ref


def moved(before: int, after: int, given: int | None = None) -> str:
    if given is not None and after == given:
        return "given"
    if after == before:
        return "unchanged"
    return "advanced" if after > before else "went back"


def describe(
    st0: os.stat_result,
    st1: os.stat_result,
    given_a: int | None = None,
    given_m: int | None = None,
    atime: bool = True,
) -> str:
    """How the times moved from ``st0`` to ``st1``, in words."""
    m = moved(st0.st_mtime_ns, st1.st_mtime_ns, given_m)
    c = moved(st0.st_ctime_ns, st1.st_ctime_ns)
    same = "mtime=ctime" if st1.st_mtime_ns == st1.st_ctime_ns else "mtime!=ctime"
    if not atime:
        return f"mtime {m}, ctime {c}"
    a = moved(st0.st_atime_ns, st1.st_atime_ns, given_a)
    return f"atime {a}, mtime {m}, ctime {c}, {same}"


def observe(
    path: Path,
    op: Callable[[], object],
    given_a: int | None = None,
    given_m: int | None = None,
    after: Path | None = None,
    atime: bool = True,
) -> str:
    """Run ``op`` after a tick and say how the times of ``path`` (afterwards: of ``after``,
    for a rename) moved."""
    st0 = os.stat(path)
    time.sleep(TICK)
    op()
    st1 = os.stat(after if after is not None else path)
    return describe(st0, st1, given_a, given_m, atime)


def ctime_ops(top: Path) -> dict[str, str]:
    """Each change of a regular file, and how its ctime (and mtime) moved."""
    f, g, f2 = top / "f", top / "g", top / "f2"
    f.write_bytes(b"x" * 10000)

    def append() -> None:
        with open(f, "ab") as fh:
            fh.write(b"more")

    steps: list[tuple[str, Callable[[], object], Path, Path]] = [
        ("write", append, f, f),
        ("truncate", lambda: os.truncate(f, 5000), f, f),
        ("link", lambda: os.link(f, f2), f, f),
        ("unlink of one name", lambda: os.unlink(f2), f, f),
        ("rename", lambda: os.rename(f, g), f, g),
        ("rename back", lambda: os.rename(g, f), g, f),
        ("chmod", lambda: os.chmod(f, 0o600), f, f),
        ("chown", lambda: os.chown(f, NOBODY, NOBODY), f, f),
        ("chown back", lambda: os.chown(f, 0, 0), f, f),
        ("setxattr", lambda: os.setxattr(f, "user.k", b"v"), f, f),
        ("removexattr", lambda: os.removexattr(f, "user.k"), f, f),
    ]
    return {name: observe(p0, op, after=p1, atime=False) for name, op, p0, p1 in steps}


def test_ctime_changes_with_every_change(any_mounted: Mounted, tmp_path: Path) -> None:
    mounted = any_mounted  # on both modes
    require_root("chowns files")
    ref = reference_dir(tmp_path)
    top = mounted.mnt / "t"
    top.mkdir()
    want = ctime_ops(ref)
    assert all("ctime advanced" in v for v in want.values()), f"test bug: ext4 says {want}"
    got = ctime_ops(top)
    diff = differences(got, want)
    assert not diff, f"{len(diff)} of {len(want)} differ: " + "; ".join(diff)


def utime_ops(top: Path) -> dict[str, str]:
    """write, truncate, utime with explicit times, UTIME_NOW and UTIME_OMIT."""
    f = top / "f"
    f.write_bytes(b"y" * 7000)

    def append() -> None:
        with open(f, "ab") as fh:
            fh.write(b"z" * 3000)

    return {
        "write": observe(f, append),
        "truncate": observe(f, lambda: os.truncate(f, 2000)),
        "utime ns=(A, M)": observe(f, lambda: os.utime(f, ns=(GIVEN_A, GIVEN_M)), GIVEN_A, GIVEN_M),
        "utime now": observe(f, lambda: os.utime(f)),
        "utimensat (omit, M)": observe(f, lambda: utimensat(f, "omit", GIVEN_M), None, GIVEN_M),
        "utimensat (now, omit)": observe(f, lambda: utimensat(f, "now", "omit")),
        "utimensat (A, now)": observe(f, lambda: utimensat(f, GIVEN_A, "now"), GIVEN_A),
        "utimensat (omit, omit)": observe(f, lambda: utimensat(f, "omit", "omit")),
        "write after utime": observe(f, append),
        "utime ns=(A, M) again": observe(
            f, lambda: os.utime(f, ns=(GIVEN_A, GIVEN_M)), GIVEN_A, GIVEN_M
        ),
    }


def test_mtime_and_ctime_after_write_truncate_and_utime(
    any_mounted: Mounted, tmp_path: Path
) -> None:
    mounted = any_mounted  # on both modes
    ref = reference_dir(tmp_path)
    top = mounted.mnt / "t"
    top.mkdir()
    want = utime_ops(ref)
    assert want["utime ns=(A, M)"].startswith("atime given, mtime given, ctime advanced"), want
    got = utime_ops(top)
    diff = differences(got, want)
    assert not diff, f"{len(diff)} of {len(want)} differ: " + "; ".join(diff)


def test_explicit_mtime_survives_sync_and_eviction(mounted: Mounted) -> None:
    require_root("writes /proc/sys/vm/drop_caches")
    f = mounted.mnt / "f"
    f.write_bytes(os.urandom(300_000))  # dirty pages, written back later
    os.utime(f, ns=(GIVEN_A, GIVEN_M))
    assert f.stat().st_mtime_ns == GIVEN_M
    r = mounted.ubcfs("sync", mounted.mnt)
    assert r.returncode == 0, r.stderr
    drop_caches()
    time.sleep(1.5)  # past the attribute timeout
    assert f.stat().st_mtime_ns == GIVEN_M, "the mount's mtime moved after sync"
    assert (mounted.backing / "f").stat().st_mtime_ns == GIVEN_M, "backing mtime is not it"
    assert f.stat().st_atime_ns == GIVEN_A


def watch_times(m: Mounted, paths: list[Path], field: str, seconds: float = 3.0) -> None:
    """Stat ``paths`` for ``seconds``, with drop_caches every other round, then after
    ``ubcfs sync`` and one more drop: ``field`` must never change."""
    first = {p: getattr(os.stat(p), field) for p in paths}
    deadline = time.monotonic() + seconds
    rounds = 0

    def check(when: str) -> None:
        for p in paths:
            now = getattr(os.stat(p), field)
            assert now == first[p], (
                f"{field} of {p.name} moved by itself {when}: {first[p]} -> {now}"
                f" ({(now - first[p]) / 1e9:+.3f} s)"
            )

    while time.monotonic() < deadline or rounds < 6:
        if rounds % 2:
            drop_caches()
            check(f"after drop_caches (round {rounds})")
        else:
            time.sleep(0.25)
            check(f"after {rounds * 0.25:.2f} s (round {rounds})")
        rounds += 1
    r = m.ubcfs("sync", m.mnt)
    assert r.returncode == 0, r.stderr
    check("after ubcfs sync")
    drop_caches()
    time.sleep(1.5)  # past the attribute timeout
    check("after ubcfs sync and drop_caches")


def written_files(m: Mounted) -> list[Path]:
    """A small file and one larger than the mount's memory, written and closed."""
    small, big = m.mnt / "small", m.mnt / "big"
    small.write_bytes(os.urandom(5000))
    with open(big, "wb") as f:
        for _ in range(12):
            f.write(os.urandom(256 * 1024))
    return [small, big]


def test_mtime_does_not_move_by_itself(any_mounted: Mounted) -> None:
    mounted = any_mounted  # on both modes
    require_root("writes /proc/sys/vm/drop_caches")
    watch_times(mounted, written_files(mounted), "st_mtime_ns")


def test_ctime_does_not_move_by_itself(any_mounted: Mounted) -> None:
    mounted = any_mounted  # on both modes
    require_root("writes /proc/sys/vm/drop_caches")
    watch_times(mounted, written_files(mounted), "st_ctime_ns")


def test_backing_mtime_after_sync_is_the_mounts(mounted: Mounted) -> None:
    files = written_files(mounted)
    r = mounted.ubcfs("sync", mounted.mnt)
    assert r.returncode == 0, r.stderr
    for p in files:
        want, got = p.stat().st_mtime_ns, (mounted.backing / p.name).stat().st_mtime_ns
        assert got == want, (
            f"{p.name}: backing mtime {got}, the mount's {want} ({(got - want) / 1e9:+.3f} s)"
        )


def make_tree(top: Path) -> list[Path]:
    """Directories to list: the top, one with files, an empty one, a deep one."""
    (top / "full").mkdir(parents=True)
    for i in range(5):
        (top / "full" / f"f{i}").write_bytes(b"x")
    (top / "empty").mkdir()
    (top / "a" / "b" / "c").mkdir(parents=True)
    return [top, top / "full", top / "empty", top / "a" / "b" / "c"]


def ls(*args: str | Path) -> list[str]:
    r = subprocess.run(["ls", *map(str, args)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return r.stdout.split("\n")[:-1]


def test_dot_and_dotdot_are_listed(any_mounted: Mounted, tmp_path: Path) -> None:
    mounted = any_mounted  # on both modes
    ref = reference_dir(tmp_path)
    got: dict[str, str] = {}
    want: dict[str, str] = {}
    for top, out in ((mounted.mnt, got), (ref, want)):
        for d in make_tree(top / "t"):
            rel = str(d.relative_to(top))
            out[f"ls -a {rel}"] = " ".join(ls("-a", "-1", d))
            out[f"ls -af {rel}"] = " ".join(sorted(ls("-a", "-f", "-1", d)))
            assert "." not in os.listdir(d)  # Python hides them, whatever the fs
    for k, v in want.items():
        assert v.split()[:2] == [".", ".."] or k.startswith("ls -af"), (k, v)
    diff = differences(got, want)
    assert not diff, f"{len(diff)} of {len(want)} listings differ: " + "; ".join(diff)
    # The root of the mount too (the reference has no counterpart of lost+found etc.).
    root = ls("-a", "-f", "-1", mounted.mnt)
    assert "." in root, root
    assert ".." in root, root
