"""``--kernel-cache``: the kernel's page cache in front of the UBC, so that shared mappings
work (issue 8, point 7), and the default that refuses them.

The mounts have 1M of simulated memory and the files are larger, so the UBC pages out all
the time under the kernel's cache.  Every test ends with the fixtures' ``ubcfs check`` and
``ubcfs umount``; the data is also checked in the backing directory after ``ubcfs sync``.
"""

from __future__ import annotations

import errno
import mmap
import multiprocessing as mp
import os
import random
import sqlite3
import subprocess
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from pathlib import Path

    from tests.integration.conftest import Mounted, Mounter

pytestmark = pytest.mark.fuse

PEER_TIMEOUT = 120.0
PAGE = mmap.PAGESIZE


# --- a second process that maps the file ----------------------------------------------------


def _peer(conn: Connection, path: str, flags: int) -> None:
    """Run the commands sent on ``conn`` against one descriptor of ``path`` (opened with
    ``flags``) and, after ``map``, a shared read-write mapping of it; reply ``("ok",
    result)`` or ``("err", errno)``."""
    fd = os.open(path, flags)
    m: mmap.mmap | None = None
    try:
        while True:
            op, *args = conn.recv()
            if op == "quit":
                break
            try:
                if op == "map":
                    m = mmap.mmap(fd, args[0], mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                    result: Any = None
                elif op == "store":
                    assert m is not None
                    m[args[0] : args[0] + len(args[1])] = args[1]
                    result = None
                elif op == "load":
                    assert m is not None
                    result = m[args[0] : args[0] + args[1]]
                elif op == "msync":
                    assert m is not None
                    m.flush()
                    result = None
                elif op == "unmap":
                    assert m is not None
                    m.close()
                    m = None
                    result = None
                elif op == "pread":
                    result = os.pread(fd, args[1], args[0])
                elif op == "pwrite":
                    result = os.pwrite(fd, args[1], args[0])
                elif op == "write":
                    result = os.write(fd, args[0])
                elif op == "ftruncate":
                    os.ftruncate(fd, args[0])
                    result = None
                elif op == "size":
                    result = os.fstat(fd).st_size
                else:
                    raise ValueError(op)
            except OSError as e:
                conn.send(("err", e.errno))
            else:
                conn.send(("ok", result))
    finally:
        if m is not None:
            m.close()
        os.close(fd)


class Peer:
    """A process of its own with one descriptor (and mapping) of a file, driven by calls."""

    def __init__(self, path: Path, flags: int = os.O_RDWR) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_peer, args=(child, str(path), flags), daemon=True)
        self.proc.start()
        child.close()

    def __call__(self, op: str, *args: Any) -> Any:
        self.conn.send((op, *args))
        if not self.conn.poll(PEER_TIMEOUT):
            raise AssertionError(f"peer {self.proc.pid}: no answer to {op} in {PEER_TIMEOUT} s")
        try:
            status, value = self.conn.recv()
        except EOFError:  # e.g. SIGBUS: a mapped page past EOF
            self.proc.join(10)
            raise AssertionError(f"peer died in {op}: exit {self.proc.exitcode}") from None
        if status == "err":
            raise OSError(value, os.strerror(value))
        return value

    def close(self) -> None:
        if self.proc.is_alive():
            self.conn.send(("quit",))
            self.proc.join(PEER_TIMEOUT)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(10)
        self.conn.close()
        assert self.proc.exitcode == 0, f"peer exit {self.proc.exitcode}"


def counters(m: Mounted) -> dict[str, int]:
    out: dict[str, int] = m.stat()["counters"]
    return out


def ubc_lookups(m: Mounted) -> int:
    """UBC window lookups: every read or write that reaches the UBC moves them."""
    c = counters(m)
    return c["ubc_hits"] + c["ubc_misses"]


# --- (a) mixed mapped and plain I/O from two processes ---------------------------------------


def test_shared_mapping_read_write_truncate_stay_coherent(mounter: Mounter) -> None:
    m = mounter("kc", "--kernel-cache")
    assert m.ping()["options"]["kernel_cache"] is True
    path = m.mnt / "shared.bin"
    rng = random.Random(7)
    size = 3 * 1024 * 1024 + 1234  # three times the mount's memory: the UBC pages out
    model = bytearray(rng.randbytes(size))
    path.write_bytes(model)
    a = Peer(path)  # stores and loads through a shared mapping
    b = Peer(path)  # read() and write()
    try:
        a("map", size)
        assert a("load", 0, 4096) == model[:4096]

        # A stores through its mapping and msyncs; B's read() sees it, and so does the UBC.
        for off in (0, PAGE - 3, 1 << 20, size - 100):
            data = rng.randbytes(77)
            a("store", off, data)
            model[off : off + 77] = data
        a("msync")
        assert b("pread", 0, size + 4096) == model
        assert m.ubcfs("sync", m.mnt).returncode == 0
        assert (m.backing / "shared.bin").read_bytes() == model, "msync must reach the UBC"

        # B writes with write(); A sees it through its mapping at once.
        for off in (5, 2 * PAGE - 1, 2 * 1024 * 1024 + 17, size - 9):
            data = rng.randbytes(9)
            assert b("pwrite", off, data) == 9
            model[off : off + 9] = data
            assert a("load", off - 5, 19) == model[off - 5 : off + 14]
        assert a("load", 0, size) == model

        # Truncate down (mid-page) while A has unwritten stores on both sides of the cut and
        # far past it, then back up: zeros past the cut for both, never the old data.
        cut = 1024 * 1024 + 777
        a("store", cut - 10, b"K" * 20)  # the 10 bytes before the cut survive
        a("store", 2 * 1024 * 1024, b"D" * 50)  # discarded by the truncate
        model[cut - 10 : cut] = b"K" * 10
        b("ftruncate", cut)
        assert b("size") == cut
        assert b("pread", cut, 100) == b""
        assert a("load", 0, cut) == model[:cut]
        b("ftruncate", size)
        model[cut:] = bytes(size - cut)
        assert a("load", cut - 10, 30) == b"K" * 10 + bytes(20)
        assert a("load", 0, size) == model, "old data past the cut came back through the map"
        assert b("pread", 0, size) == model, "old data past the cut came back through read()"

        # The re-grown range takes stores and writes like any other.
        a("store", cut + 5000, b"mapped")
        model[cut + 5000 : cut + 5006] = b"mapped"
        a("msync")
        b("pwrite", cut + 9000, b"written")
        model[cut + 9000 : cut + 9007] = b"written"
        assert b("pread", cut, 10000) == model[cut : cut + 10000]
        assert a("load", cut, 10000) == model[cut : cut + 10000]
        a("unmap")
    finally:
        a.close()
        b.close()
    assert path.read_bytes() == model
    assert m.ubcfs("sync", m.mnt).returncode == 0
    assert (m.backing / "shared.bin").read_bytes() == model
    assert counters(m)["pageouts"] > 0, "3 MiB through 1 MiB of memory must page out"


def test_mapping_written_back_through_an_o_append_descriptor(mounter: Mounter) -> None:
    """The kernel writes a shared mapping's dirty pages back through any descriptor that
    mapped the file, O_APPEND ones included: the data belongs at the page's offset, not at
    EOF (and an O_APPEND write() goes where the kernel put it in its cache: at EOF)."""
    m = mounter("kc", "--kernel-cache")
    path = m.mnt / "log"
    path.write_bytes(b"a" * 10000)
    p = Peer(path, os.O_RDWR | os.O_APPEND)
    try:
        assert p("write", b"tail") == 4
        p("map", 10004)
        p("store", 100, b"MAPPED")
        p("msync")
        assert p("size") == 10004
        p("unmap")
    finally:
        p.close()
    want = b"a" * 100 + b"MAPPED" + b"a" * 9894 + b"tail"
    assert path.read_bytes() == want
    assert m.ubcfs("sync", m.mnt).returncode == 0
    assert (m.backing / "log").read_bytes() == want


def test_reads_served_by_the_kernel_cache_skip_the_ubc(mounter: Mounter) -> None:
    """The trade-off, measured: with --kernel-cache a re-read on the same descriptor is
    served by the kernel (the UBC counters do not move); the default sends every read to
    the UBC."""
    for name, opts in (("kc", ("--kernel-cache",)), ("default", ())):
        m = mounter(name, *opts)
        path = m.mnt / "f"
        data = random.Random(1).randbytes(256 * 1024)
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
        try:
            # The kernel cache's misses: the whole file, so that no read-ahead is left
            # in flight below.
            assert os.pread(fd, len(data) + 1, 0) == data
            before = ubc_lookups(m)
            for _ in range(5):
                assert os.pread(fd, 65536, 0) == data[:65536]
            grown = ubc_lookups(m) - before
        finally:
            os.close(fd)
        if opts:
            assert grown == 0, f"{grown} UBC lookups for reads the kernel cache holds"
        else:
            assert grown >= 5, f"direct_io: each read must reach the UBC ({grown} lookups)"


def test_tar_of_files_not_opened_before(mounter: Mounter, tmp_path: Path) -> None:
    """tar fails ("file changed as we read it") when a file's ctime moves while it reads
    it.  With the kernel cache, each read makes the kernel fetch the attributes again (for
    atime), so the ctime reported once the file is open must be the one reported before."""
    m = mounter("kc", "--kernel-cache")
    tree = m.backing / "tree"  # made behind the mount: no vnode yet
    tree.mkdir()
    for i in range(20):
        (tree / f"f{i:02d}").write_bytes(random.Random(i).randbytes(5000 + i))
    path = m.mnt / "tree" / "f00"
    before = os.stat(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert len(os.read(fd, 1 << 20)) == 5000
        after = os.fstat(fd)
    finally:
        os.close(fd)
    assert (after.st_mtime_ns, after.st_ctime_ns) == (before.st_mtime_ns, before.st_ctime_ns)
    r = subprocess.run(
        ["tar", "-C", str(m.mnt), "-cf", str(tmp_path / "tree.tar"), "tree"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    listed = subprocess.run(
        ["tar", "-tf", str(tmp_path / "tree.tar")], capture_output=True, text=True, check=True
    )
    assert len(listed.stdout.split()) == 21


# --- (b) SQLite in WAL mode ---------------------------------------------------------------


ROWS = 2500  # per connection; 2 x 2500 rows of ~250 bytes outgrow the 1M of memory


def _row(k: int) -> tuple[int, str]:
    return k, random.Random(k).randbytes(120).hex()


def _insert(path: str, first: int, n: int) -> None:
    """One connection inserting rows first..first+n-1, 50 per transaction."""
    con = sqlite3.connect(path, timeout=60)
    try:
        assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        for lo in range(first, first + n, 50):
            with con:
                con.executemany(
                    "INSERT INTO t VALUES (?, ?)", [_row(k) for k in range(lo, lo + 50)]
                )
    finally:
        con.close()


def test_sqlite_wal_two_connections(mounter: Mounter) -> None:
    m = mounter("kc", "--kernel-cache")
    path = m.mnt / "db.sqlite"
    con = sqlite3.connect(path, timeout=60)
    assert con.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
    con.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT)")
    con.commit()
    # The second connection is in another process: the WAL index (db.sqlite-shm) is a
    # shared mapping in both, kept coherent by the kernel's page cache of the mount.
    ctx = mp.get_context("spawn")
    other = ctx.Process(target=_insert, args=(str(path), ROWS, ROWS))
    other.start()
    try:
        for lo in range(0, ROWS, 50):
            with con:
                con.executemany(
                    "INSERT INTO t VALUES (?, ?)", [_row(k) for k in range(lo, lo + 50)]
                )
            n = con.execute("SELECT count(*) FROM t").fetchone()[0]
            assert lo + 50 <= n <= lo + 50 + ROWS
    finally:
        other.join(PEER_TIMEOUT)
        if other.is_alive():
            other.kill()
            other.join(10)
    assert other.exitcode == 0
    assert (m.mnt / "db.sqlite-shm").exists()
    busy, _, _ = con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    assert os.path.getsize(m.mnt / "db.sqlite-wal") == 0
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (2 * ROWS,)
    con.close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (2 * ROWS,)
    assert dict(con.execute("SELECT k, v FROM t WHERE k % 97 = 0")) == {
        k: _row(k)[1] for k in range(0, 2 * ROWS, 97)
    }
    con.close()
    assert m.ubcfs("sync", m.mnt).returncode == 0
    con = sqlite3.connect(m.backing / "db.sqlite")
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM t").fetchone() == (2 * ROWS,)
    con.close()
    assert counters(m)["pageouts"] > 0


# --- (c) the default: direct_io, no shared mappings ---------------------------------------


def test_default_mount_refuses_shared_mappings(mounted: Mounted) -> None:
    assert mounted.ping()["options"]["kernel_cache"] is False
    path = mounted.mnt / "f"
    path.write_bytes(b"x" * 10000)
    fd = os.open(path, os.O_RDWR)
    try:
        for prot in (mmap.PROT_READ, mmap.PROT_READ | mmap.PROT_WRITE):
            with pytest.raises(OSError, match="No such device") as e:
                mmap.mmap(fd, 10000, mmap.MAP_SHARED, prot)
            assert e.value.errno == errno.ENODEV
        # A private mapping works: the kernel fills a private copy with reads.
        with mmap.mmap(fd, 10000, mmap.MAP_PRIVATE, mmap.PROT_READ | mmap.PROT_WRITE) as priv:
            assert priv[:4] == b"xxxx"
            priv[:4] = b"mine"
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 10000  # private stores never reach the file
    # SQLite in WAL mode needs a shared mapping of its -shm file.
    con = sqlite3.connect(mounted.mnt / "db.sqlite")
    try:
        assert con.execute("PRAGMA journal_mode=WAL").fetchone() == ("wal",)
        with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
            con.execute("CREATE TABLE t (k)")  # the first use of the WAL index
    finally:
        con.close()


def test_kernel_cache_over_no_ubc(mounter: Mounter) -> None:
    m = mounter("kc", "--kernel-cache", "--no-ubc")
    opts = m.ping()["options"]
    assert (opts["kernel_cache"], opts["ubc"]) == (True, False)
    # --no-ubc under the kernel cache is plain cached passthrough; mappings work there too.
    path = m.mnt / "f"
    path.write_bytes(bytes(8192))
    fd = os.open(path, os.O_RDWR)
    try:
        with mmap.mmap(fd, 8192) as mapping:
            mapping[4000:4010] = b"0123456789"
            mapping.flush()
        assert os.pread(fd, 10, 4000) == b"0123456789"
    finally:
        os.close(fd)
    assert (m.backing / "f").read_bytes()[4000:4010] == b"0123456789"
