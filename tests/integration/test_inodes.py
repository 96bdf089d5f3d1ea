"""Inode numbers on the mount are the backing files' own and stable while mounted (issue 8).

``st_ino`` seen on the mount must not change for the life of a file while mounted -- not
when the kernel forgets the inode (``drop_caches``) and looks it up again, not over time,
not by a rename -- and it equals the backing file's own ``st_ino`` (the backing directory is
one file system).  Hard links share it, ``find -samefile`` works, and two files that exist
at the same time never share one.  git relies on all of this: its index records st_ino
(and the times), and a number that changed makes every file look modified to
``git diff-files``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Mounted, drop_caches, require_root

pytestmark = pytest.mark.fuse


def run(*args: str | Path, cwd: Path | None = None) -> str:
    r = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    assert r.returncode == 0, f"{args}: exit {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r.stdout


def make_objects(top: Path) -> list[Path]:
    """A file, a directory, a file in it, a symlink, a fifo, a socket and a hard link."""
    top.mkdir()
    (top / "file").write_bytes(b"data\n")
    (top / "dir").mkdir()
    (top / "dir" / "inner").write_bytes(b"inner\n")
    os.symlink("file", top / "symlink")
    os.mkfifo(top / "fifo")
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(top / "socket"))
    os.link(top / "file", top / "dir" / "hardlink")
    return [top / n for n in ("file", "dir", "dir/inner", "symlink", "fifo", "socket")] + [
        top / "dir" / "hardlink"
    ]


def inos(paths: list[Path]) -> dict[str, int]:
    return {str(p): os.lstat(p).st_ino for p in paths}


def test_st_ino_is_the_backing_files_own(mounted: Mounted) -> None:
    objs = make_objects(mounted.mnt / "t")
    bad = []
    for p in objs:
        b = mounted.backing / p.relative_to(mounted.mnt)
        got, want = os.lstat(p).st_ino, os.lstat(b).st_ino
        if got != want:
            bad.append(f"{p.relative_to(mounted.mnt)}: {got} on the mount, {want} backing")
    assert not bad, "st_ino is not the backing file's: " + "; ".join(bad)


def test_st_ino_is_stable_across_drop_caches_and_time(any_mounted: Mounted) -> None:
    mounted = any_mounted  # on both modes
    require_root("writes /proc/sys/vm/drop_caches")
    objs = make_objects(mounted.mnt / "t")
    for i in range(50):
        p = mounted.mnt / "t" / f"f{i:02d}"
        p.write_bytes(os.urandom(5000))
        objs.append(p)
    first = inos(objs)
    deadline = time.monotonic() + 3.0
    rounds = 0
    while time.monotonic() < deadline or rounds < 6:
        if rounds % 2 == 0:
            drop_caches()
        else:
            time.sleep(0.2)
        now = inos(objs)
        changed = {p: (first[p], now[p]) for p in first if now[p] != first[p]}
        assert not changed, (
            f"round {rounds} ({'after drop_caches' if rounds % 2 == 0 else 'after 0.2 s'}):"
            f" {len(changed)} of {len(first)} st_ino changed, e.g. {next(iter(changed.items()))}"
        )
        rounds += 1
    mounted.ubcfs("sync", mounted.mnt)
    drop_caches()
    assert inos(objs) == first, "st_ino changed after ubcfs sync and drop_caches"


def test_hard_links_rename_and_find_samefile(mounted: Mounted) -> None:
    require_root("writes /proc/sys/vm/drop_caches")
    top = mounted.mnt / "t"
    (top / "a").mkdir(parents=True)
    (top / "b").mkdir()
    orig = top / "a" / "orig"
    orig.write_bytes(b"x" * 10000)
    ino = orig.stat().st_ino
    os.link(orig, top / "a" / "second")
    os.link(orig, top / "b" / "third")
    names = [orig, top / "a" / "second", top / "b" / "third"]
    assert [p.stat().st_ino for p in names] == [ino] * 3, "hard links do not share st_ino"
    drop_caches()
    got = [p.stat().st_ino for p in names]
    assert got == [ino] * 3, f"st_ino of the hard links changed with drop_caches: {ino} -> {got}"
    assert orig.stat().st_nlink == 3
    found = run("find", top, "-samefile", top / "b" / "third").split()
    assert sorted(found) == sorted(map(str, names)), found

    # Renames, within a directory and across, with the kernel forgetting in between.
    os.rename(orig, top / "a" / "renamed")
    assert (top / "a" / "renamed").stat().st_ino == ino, "rename changed st_ino"
    drop_caches()
    assert (top / "a" / "renamed").stat().st_ino == ino, "rename + drop_caches changed st_ino"
    os.rename(top / "a" / "renamed", top / "b" / "moved")
    drop_caches()
    assert (top / "b" / "moved").stat().st_ino == ino, "a move to another dir changed st_ino"
    os.rename(top / "a", top / "c")  # its directory renamed
    drop_caches()
    assert (top / "c" / "second").stat().st_ino == ino, "renaming the dir changed st_ino"
    # Unlinking one name leaves the others' number alone.
    os.unlink(top / "b" / "third")
    drop_caches()
    assert (top / "b" / "moved").stat().st_ino == ino
    assert (top / "b" / "moved").stat().st_nlink == 2
    found = run("find", top, "-samefile", top / "c" / "second").split()
    assert sorted(found) == sorted([str(top / "b" / "moved"), str(top / "c" / "second")])
    assert (mounted.backing / "t" / "b" / "moved").stat().st_ino == ino


def test_different_files_never_share_a_number(any_mounted: Mounted) -> None:
    mounted = any_mounted  # on both modes
    require_root("writes /proc/sys/vm/drop_caches")
    top = mounted.mnt / "t"
    dirs = [top / f"d{i}" for i in range(4)]
    for d in dirs:
        d.mkdir(parents=True)
    files = [d / f"f{i:03d}" for d in dirs for i in range(250)]
    for p in files:
        p.write_bytes(b"%d" % len(str(p)))
    drop_caches()
    # Churn: remove every other file and make new ones (the backing fs may reuse the freed
    # numbers, which is fine: the old files are gone), with the kernel forgetting meanwhile.
    for p in files[::2]:
        p.unlink()
    drop_caches()
    new = [d / f"n{i:03d}" for d in dirs for i in range(125)]
    for p in new:
        p.write_bytes(b"new")
    live = [*dirs, *files[1::2], *new]
    seen: dict[int, Path] = {}
    for p in live:
        st = os.lstat(p)
        other = seen.setdefault(st.st_ino, p)
        assert other == p, f"{p} and {other} share st_ino {st.st_ino}"


def test_git_status_is_clean_after_reset_hard(any_mounted: Mounted) -> None:
    mounted = any_mounted  # on both modes
    require_root("writes /proc/sys/vm/drop_caches")
    repo = mounted.mnt / "repo"
    repo.mkdir()
    for d in range(5):
        sub = repo / f"d{d}"
        sub.mkdir()
        for i in range(40):
            (sub / f"f{i:02d}.txt").write_text(f"{d} {i}\n" * (i + 1))
        os.symlink("f00.txt", sub / "link")
        os.symlink(f"../d{(d + 1) % 5}", sub / "next")
    git = ["git", "-c", "user.email=t@example.org", "-c", "user.name=t"]
    run(*git, "init", "-q", cwd=repo)
    run(*git, "add", ".", cwd=repo)
    run(*git, "commit", "-qm", "first", cwd=repo)
    (repo / "d0" / "f00.txt").write_text("changed\n")
    (repo / "d1" / "link").unlink()
    run(*git, "reset", "-q", "--hard", cwd=repo)
    assert run(*git, "status", "--porcelain", cwd=repo) == ""  # refreshes the index
    drop_caches()
    time.sleep(1.5)  # past the attribute timeout as well
    # diff-files does not refresh: it lists every file whose lstat no longer matches what
    # the index recorded (st_ino, mtime, ctime, size, ...).
    stale = run(*git, "diff-files", "--name-only", cwd=repo).split()
    if stale:
        debug = run(*git, "ls-files", "--debug", "--", stale[0], cwd=repo)
        st = os.lstat(repo / stale[0])
        pytest.fail(
            f"{len(stale)} of 210 entries stat-dirty after drop_caches, e.g. {stale[0]}:"
            f" index {' '.join(debug.split())}; now ino {st.st_ino}"
            f" mtime {st.st_mtime_ns} ctime {st.st_ctime_ns}",
            pytrace=False,
        )
    assert run(*git, "status", "--porcelain", cwd=repo) == ""
