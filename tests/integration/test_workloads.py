"""Real programs on a real mount with little memory (the pagedaemon works constantly).

Each test drives ordinary tools -- cp, diff, tar, git, make/cc, sqlite, several processes --
on the mount and checks the results on the mount and, after ``ubcfs sync``, in the backing
directory.  Every test runs twice: over a backing directory and on a tmpfs (``mounted`` is
conftest's ``any_mounted`` here), whose 1 MiB of memory keeps the data in swap.  The
fixture runs ``ubcfs check`` (the DIAGNOSTIC audit inside the daemon) and ``ubcfs umount``
after each test and fails the test if either fails.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import random
import shutil
import sqlite3
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Mounted, Mounter

pytestmark = pytest.mark.fuse


@pytest.fixture
def mounted(any_mounted: Mounted) -> Mounted:
    """Every test here on both modes."""
    return any_mounted


REPO = Path(__file__).resolve().parents[2]


def make_tree(root: Path, seed: int = 1) -> Path:
    """A source tree: the project's own code, a few hundred small files, a sparse file and
    one file larger than the mount's memory."""
    rng = random.Random(seed)
    src = root / "src"
    shutil.copytree(REPO / "ubcfs", src / "ubcfs", ignore=shutil.ignore_patterns("__pycache__"))
    small = src / "small"
    small.mkdir()
    for i in range(300):
        (small / f"f{i:03d}.txt").write_bytes(rng.randbytes(rng.randrange(0, 9000)))
    (src / "big.bin").write_bytes(rng.randbytes(3 * 1024 * 1024 + 123))
    with open(src / "sparse.bin", "wb") as f:
        f.seek(5 * 1024 * 1024)
        f.write(b"end")
    os.symlink("big.bin", src / "link-to-big")
    return src


def run(*args: str | Path, cwd: Path | None = None) -> str:
    out = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True)
    assert out.returncode == 0, f"{args}: rc={out.returncode}\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_cp_a_tree_and_diff_against_backing(mounted: Mounted, tmp_path: Path) -> None:
    src = make_tree(tmp_path)
    run("cp", "-a", src, mounted.mnt / "tree")
    run("diff", "-r", "--no-dereference", src, mounted.mnt / "tree")
    stored = mounted.store(mounted.mnt / "tree")
    if stored is not None:
        run("diff", "-r", "--no-dereference", src, stored)
    st = os.lstat(mounted.mnt / "tree" / "link-to-big")
    assert os.readlink(mounted.mnt / "tree" / "link-to-big") == "big.bin"
    assert st.st_mode & 0o170000 == 0o120000
    stat = mounted.stat()
    outs = stat["counters"]["swapouts" if mounted.tmpfs else "pageouts"]
    assert outs > 0, "3 MiB through 1 MiB of memory must page out"
    assert stat["counters"]["pdfreed"] > 0


def test_tar_create_and_extract(mounted: Mounted, tmp_path: Path) -> None:
    src = make_tree(tmp_path, seed=2)
    run("cp", "-a", src, mounted.mnt / "tree")
    run("tar", "-C", mounted.mnt, "-cf", mounted.mnt / "tree.tar", "tree")
    (mounted.mnt / "x").mkdir()
    run("tar", "-C", mounted.mnt / "x", "-xf", mounted.mnt / "tree.tar")
    run("diff", "-r", "--no-dereference", src, mounted.mnt / "x" / "tree")
    # tar -d compares contents, sizes, modes and mtimes with the archive.
    run("tar", "-C", mounted.mnt / "x", "-df", mounted.mnt / "tree.tar")
    stored = mounted.store(mounted.mnt / "x")
    if stored is not None:
        run("tar", "-C", stored, "-df", mounted.backing / "tree.tar")


def test_git_init_add_commit_log(mounted: Mounted) -> None:
    repo = mounted.mnt / "repo"
    repo.mkdir()
    for d in range(20):
        sub = repo / f"d{d:02d}"
        sub.mkdir()
        for i in range(100):
            (sub / f"file{i:03d}.txt").write_text(f"{d} {i}\n" * (i % 7 + 1))
    env = ["-c", "user.email=t@example.org", "-c", "user.name=t"]
    run("git", "init", "-q", cwd=repo)
    run("git", *env, "add", ".", cwd=repo)
    run("git", *env, "commit", "-qm", "first", cwd=repo)
    (repo / "d00" / "file000.txt").write_text("changed\n")
    run("git", *env, "commit", "-qam", "second", cwd=repo)
    log = run("git", "log", "--oneline", cwd=repo).splitlines()
    assert len(log) == 2
    assert run("git", "ls-files", cwd=repo).count("\n") == 2000
    run("git", "fsck", "--strict", cwd=repo)
    assert run("git", "status", "--porcelain", cwd=repo) == ""


C_MAIN = r"""
#include <stdio.h>
#include "util.h"
int main(void) { printf("%d %s\n", add(40, 2), greet()); return 0; }
"""
C_UTIL_H = "int add(int a, int b);\nconst char *greet(void);\n"
C_UTIL = '#include "util.h"\nint add(int a, int b) { return a + b; }\n'
C_GREET = 'const char *greet(void) { return "hello from ubcfs"; }\n'
MAKEFILE = """\
prog: main.o util.o greet.o
\tcc -o prog main.o util.o greet.o
%.o: %.c util.h
\tcc -O1 -c $< -o $@
clean:
\trm -f prog *.o
"""


@pytest.mark.skipif(shutil.which("cc") is None or shutil.which("make") is None, reason="no cc")
def test_c_build_with_make(mounted: Mounted) -> None:
    proj = mounted.mnt / "proj"
    proj.mkdir()
    for name, text in (
        ("main.c", C_MAIN),
        ("util.h", C_UTIL_H),
        ("util.c", C_UTIL),
        ("greet.c", C_GREET),
        ("Makefile", MAKEFILE),
    ):
        (proj / name).write_text(text)
    run("make", "-s", cwd=proj)
    assert run(proj / "prog") == "42 hello from ubcfs\n"  # execve of a binary on the mount
    # Nothing changed: make must find everything up to date (mtimes are consistent).
    assert "up to date" in run("make", "prog", cwd=proj)
    (proj / "greet.c").write_text(C_GREET.replace("hello", "bye"))
    run("make", "-s", cwd=proj)
    assert run(proj / "prog") == "42 bye from ubcfs\n"


def test_sqlite_rollback_journal(mounted: Mounted) -> None:
    path = mounted.mnt / "db.sqlite"
    con = sqlite3.connect(path)
    con.execute("PRAGMA journal_mode=DELETE")
    con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    rng = random.Random(3)
    rows = {i: rng.randbytes(rng.randrange(10, 400)).hex() for i in range(3000)}
    for i in range(0, 3000, 500):
        with con:
            con.executemany(
                "INSERT INTO t VALUES (?, ?)", [(k, rows[k]) for k in range(i, i + 500)]
            )
    with con:
        con.execute("DELETE FROM t WHERE k % 3 = 0")
        con.execute("UPDATE t SET v = 'x' || v WHERE k % 5 = 0")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
    con = sqlite3.connect(path)
    got = dict(con.execute("SELECT k, v FROM t"))
    con.close()
    want = {k: ("x" + v if k % 5 == 0 else v) for k, v in rows.items() if k % 3}
    assert got == want
    stored = mounted.store(path)
    if stored is None:
        return
    con = sqlite3.connect(stored)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (len(want),)
    con.close()


def _writer(path: str, seed: int, n: int) -> str:
    rng = random.Random(seed)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(n):
            block = rng.randbytes(rng.randrange(1, 70000))
            f.write(block)
            h.update(block)
    return h.hexdigest()


def _reader(path: str, rounds: int) -> str:
    digest = ""
    for _ in range(rounds):
        with open(path, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
    return digest


def test_concurrent_processes(mounted: Mounted) -> None:
    shared = mounted.mnt / "shared.bin"
    data = random.Random(9).randbytes(2 * 1024 * 1024)
    shared.write_bytes(data)
    want = hashlib.sha256(data).hexdigest()
    ctx = mp.get_context("spawn")
    with ctx.Pool(6) as pool:
        writers = [
            pool.apply_async(_writer, (str(mounted.mnt / f"w{i}.bin"), i, 60)) for i in range(3)
        ]
        readers = [pool.apply_async(_reader, (str(shared), 3)) for _ in range(3)]
        digests = [w.get(timeout=300) for w in writers]
        assert all(r.get(timeout=300) == want for r in readers)
    for i, d in enumerate(digests):
        assert hashlib.sha256((mounted.mnt / f"w{i}.bin").read_bytes()).hexdigest() == d


def _truncator(path: str, seed: int, n: int) -> None:
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    try:
        for _ in range(n):
            if rng.random() < 0.5:
                os.ftruncate(fd, rng.randrange(0, 400000))
            else:
                os.pwrite(fd, rng.randbytes(rng.randrange(1, 50000)), rng.randrange(0, 400000))
    finally:
        os.close(fd)


def test_truncate_races(mounted: Mounted) -> None:
    path = mounted.mnt / "race.bin"
    path.write_bytes(bytes(300000))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_truncator, args=(str(path), s, 300)) for s in range(3)]
    for p in procs:
        p.start()
    for _ in range(200):
        with open(path, "rb") as f:
            data = f.read()
        assert len(data) <= 450000
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    # Settled: one last truncation and write, then the mount, the backing file and a
    # re-read all agree.
    with open(path, "r+b") as f:
        f.truncate(12345)
        f.seek(10000)
        f.write(b"tail")
    data = path.read_bytes()
    assert len(data) == 12345
    assert data[10000:10004] == b"tail"
    stored = mounted.store(path)
    if stored is not None:
        assert stored.read_bytes() == data


def test_hard_links_share_one_cache_and_unlinked_open_file_works(mounted: Mounted) -> None:
    a = mounted.mnt / "a"
    a.write_bytes(b"one")
    os.link(a, mounted.mnt / "b")
    with open(mounted.mnt / "b", "r+b") as f:
        f.write(b"TWO")
    assert a.read_bytes() == b"TWO"
    assert os.stat(a).st_nlink == 2
    fd = os.open(a, os.O_RDWR)
    try:
        os.unlink(a)
        os.unlink(mounted.mnt / "b")
        os.pwrite(fd, b"still here", 0)
        assert os.pread(fd, 100, 0) == b"still here"
        assert os.fstat(fd).st_size == 10
    finally:
        os.close(fd)
    if not mounted.tmpfs:
        assert not (mounted.backing / "a").exists()


def test_symlink_swap_in_backing_cannot_escape(mounter: Mounter, tmp_path: Path) -> None:
    mounted = mounter("m")  # backing only: the attack is on the backing directory
    outside = tmp_path / "outside"
    (outside / "b").mkdir(parents=True)
    (outside / "b" / "file").write_text("SECRET")
    (mounted.mnt / "a" / "b").mkdir(parents=True)
    (mounted.mnt / "a" / "b" / "file").write_text("inside")
    script = (
        "import os, sys, time\n"
        "os.chdir(sys.argv[1])\n"
        "print(open('file').read(), flush=True)\n"
        "sys.stdin.readline()\n"
        "print(open('file').read(), flush=True)\n"
        "open('new', 'w').write('created')\n"
    )
    with subprocess.Popen(
        ["python3", "-c", script, str(mounted.mnt / "a" / "b")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdin is not None
        assert proc.stdout.readline().strip() == "inside"
        # Behind the daemon's back: move the directory away and plant a symlink to outside.
        os.rename(mounted.backing / "a", mounted.backing / "a2")
        os.symlink(outside, mounted.backing / "a")
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "inside"
        assert proc.wait(30) == 0
    assert not (outside / "b" / "new").exists(), "the daemon wrote outside the backing dir"
    mounted.ubcfs("sync", mounted.mnt)
    assert (mounted.backing / "a2" / "b" / "new").read_text() == "created"
    assert (outside / "b" / "file").read_text() == "SECRET"


def test_xattrs_rename_flags_and_special_files(mounted: Mounted) -> None:
    f = mounted.mnt / "x"
    f.write_text("x")
    os.setxattr(f, b"user.color", b"blue")
    assert os.getxattr(f, b"user.color") == b"blue"
    assert b"user.color" in [os.fsencode(n) for n in os.listxattr(f)]
    os.removexattr(f, b"user.color")
    with pytest.raises(OSError, match="No data available"):
        os.getxattr(f, b"user.color")
    os.mkfifo(mounted.mnt / "fifo")
    assert os.stat(mounted.mnt / "fifo").st_mode & 0o170000 == 0o010000
    (mounted.mnt / "y").write_text("y")
    os.rename(mounted.mnt / "y", mounted.mnt / "z")
    assert (mounted.mnt / "z").read_text() == "y"
    os.chmod(mounted.mnt / "z", 0o600)
    assert os.stat(mounted.mnt / "z").st_mode & 0o777 == 0o600
    if not mounted.tmpfs:
        assert os.stat(mounted.backing / "z").st_mode & 0o777 == 0o600
    os.utime(mounted.mnt / "z", ns=(1_000_000_000, 2_000_000_000))
    assert os.stat(mounted.mnt / "z").st_mtime_ns == 2_000_000_000
    d = mounted.mnt / "dir"
    d.mkdir()
    names = {f"n{i}" for i in range(50)}
    for n in names:
        (d / n).write_text(n)
    assert set(os.listdir(d)) == names
    for n in list(names)[:25]:
        (d / n).unlink()
    assert set(os.listdir(d)) == set(list(names)[25:])
    st = os.statvfs(mounted.mnt)
    assert st.f_bsize > 0


def test_truncate_open_and_o_trunc(mounted: Mounted) -> None:
    p = mounted.mnt / "t"
    p.write_bytes(b"a" * 10000)
    with open(p, "wb") as f:  # O_TRUNC arrives in open()
        f.write(b"b" * 10)
    assert p.read_bytes() == b"b" * 10
    os.truncate(p, 5000)
    data = p.read_bytes()
    assert data == b"b" * 10 + bytes(4990)
    os.truncate(p, 3)
    os.truncate(p, 8192)
    assert p.read_bytes() == b"bbb" + bytes(8189)
    stored = mounted.store(p)
    if stored is not None:
        assert stored.read_bytes() == b"bbb" + bytes(8189)
