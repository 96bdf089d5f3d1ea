"""Simulated processes on a real mount, through ``ubcfs ctl`` (issue 11): mappings that see
and are seen by read()/write(), that outlive close and the kernel's forget, truncation of
wired pages through the mount, ptrace-write, fork, and the errors of bad requests.  Both
modes (backing and --tmpfs)."""

from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import Mounted, Mounter, drop_caches

pytestmark = pytest.mark.fuse

PAGE = 4096


def ok(m: Mounted, *args: str) -> str:
    """Run ``ubcfs ctl MNT args``; its last output line (the value, if any)."""
    r = m.ctl(*args)
    assert r.returncode == 0, f"ctl {' '.join(args)}: {r.stderr}\n{m.log_tail()}"
    lines = r.stdout.strip().splitlines()
    return lines[-1] if lines else ""


def fails(m: Mounted, code: int, *args: str) -> str:
    """``ubcfs ctl MNT args`` fails with exit ``code`` and a one-line error."""
    r = m.ctl(*args)
    assert r.returncode == code, f"ctl {' '.join(args)}: exit {r.returncode}: {r.stdout}{r.stderr}"
    err = r.stderr.strip()
    assert err.startswith("ubcfs: error:"), err
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in r.stderr
    return err


def counters(m: Mounted) -> dict[str, Any]:
    out: dict[str, Any] = m.stat()["counters"]
    return out


def test_shared_mapping_and_the_file_see_each_other(any_mounted: Mounted) -> None:
    m = any_mounted
    f = m.mnt / "data"
    f.write_bytes(b"a" * (4 * PAGE))
    pid = ok(m, "proc-new")
    addr = ok(m, "mmap", pid, "data", "0", "16K")
    assert addr.startswith("0x")
    ok(m, "store", pid, hex(int(addr, 16) + PAGE), b"mapped".hex())
    with open(f, "rb") as fh:
        assert os.pread(fh.fileno(), 6, PAGE) == b"mapped"
    with open(f, "r+b") as fh:
        os.pwrite(fh.fileno(), b"written", 2 * PAGE)
    assert bytes.fromhex(ok(m, "load", pid, hex(int(addr, 16) + 2 * PAGE), "7")) == b"written"
    procs = json.loads(m.ctl("procs").stdout)
    assert [p["pid"] for p in procs] == [int(pid)]
    assert procs[0]["maps"][0]["start"] == int(addr, 16)
    st = m.stat()["procs"]
    assert st["processes"] == 1
    assert st["map_entries"] == 1
    assert st["mapped_files"] == 1
    assert st["resident"] >= 2  # the two pages it touched
    text = m.ubcfs("stat", m.mnt)
    assert text.returncode == 0, text.stderr
    assert "           1 simulated processes" in text.stdout.splitlines()
    ok(m, "exit", pid)
    assert json.loads(m.ctl("procs").stdout) == []
    m.assert_healthy()


def test_a_mapping_outlives_close_and_the_kernels_forget(any_mounted: Mounted) -> None:
    """The mapping holds the file's vnode: after the last close and the kernel's forget
    (drop_caches) it still loads the file's data, and its stores reach the file."""
    m = any_mounted
    f = m.mnt / "kept"
    data = os.urandom(2 * PAGE)
    f.write_bytes(data)
    pid = ok(m, "proc-new")
    addr = int(ok(m, "mmap", pid, "/kept", "0", "8K"), 16)
    for _ in range(3):
        drop_caches()
    assert bytes.fromhex(ok(m, "load", pid, hex(addr), "8K")) == data
    ok(m, "store", pid, hex(addr + 100), b"late".hex())
    drop_caches()
    assert f.read_bytes()[100:104] == b"late"
    ok(m, "exit", pid)
    m.assert_healthy()


def test_truncating_wired_pages_through_the_mount(any_mounted: Mounted) -> None:
    """Scenario 1 on a mount: mmap MAP_SHARED, mlock, truncate the file below the locked
    range with truncate(2); the process then faults there as past EOF; munlock skips the
    vanished pages; re-extended, the file reads zeros there; ``ubcfs check`` is clean."""
    m = any_mounted
    f = m.mnt / "wired"
    f.write_bytes(os.urandom(4 * PAGE))
    pid = ok(m, "proc-new")
    addr = int(ok(m, "mmap", pid, "wired", "0", "16K"), 16)
    ok(m, "mlock", pid, hex(addr), "16K")
    before = counters(m)["unwire_skips"]
    os.truncate(f, PAGE)
    err = fails(m, 1, "load", pid, hex(addr + 2 * PAGE), "1")
    assert "EINVAL" in err
    assert "SIGBUS" in err
    ok(m, "munlock", pid, hex(addr), "16K")
    assert counters(m)["unwire_skips"] == before + 3
    os.truncate(f, 4 * PAGE)
    assert bytes.fromhex(ok(m, "load", pid, hex(addr + 3 * PAGE), "16")) == bytes(16)
    assert f.read_bytes()[PAGE:] == bytes(3 * PAGE)
    assert m.stat()["pages"]["wired"] == 0
    ok(m, "exit", pid)
    m.assert_healthy()


def _write_until_full(path: Path, limit: int = 1 << 30) -> int:
    """Append pages to ``path`` until a write fails; its errno (0: ``limit`` reached)."""
    with open(path, "wb", buffering=0) as fh:
        for _ in range(limit // PAGE):
            try:
                fh.write(bytes(PAGE))
            except OSError as e:
                return e.errno or 0
    return 0


def test_a_store_into_a_hole_of_a_full_tmpfs_fails_at_the_fault(mounter: Mounter) -> None:
    """Scenario 11 on a tmpfs: a file extended by truncate(2) is a hole; loads there read
    zeros; once other data fills the tmpfs, a store through a MAP_SHARED mapping into the
    hole fails with ENOSPC at the write fault (the process's SIGBUS) and takes no page;
    a store into a page that is already there still works, and after room is made the
    same store succeeds and reaches the file."""
    m = mounter("m", "--tmpfs", "--swap", "0", memory="1M")
    sparse = m.mnt / "sparse"
    with open(sparse, "wb") as fh:
        fh.write(b"head")
        fh.truncate(64 * PAGE)
    pid = ok(m, "proc-new")
    addr = int(ok(m, "mmap", pid, "sparse", "0", "256K"), 16)
    assert bytes.fromhex(ok(m, "load", pid, hex(addr + 8 * PAGE), "4")) == bytes(4)
    filler = m.mnt / "filler"
    assert _write_until_full(filler) == errno.ENOSPC
    before = m.stat()["tmpfs"]["used_pages"]
    err = fails(m, 1, "store", pid, hex(addr + 40 * PAGE), b"hole".hex())
    assert "ENOSPC" in err, err
    assert "SIGBUS" in err, err
    assert m.stat()["tmpfs"]["used_pages"] == before  # no page taken for it
    ok(m, "store", pid, hex(addr + 1), b"ok".hex())  # page 0 is there: no new space
    ok(m, "store", pid, hex(addr + 8 * PAGE), b"read".hex())  # read before: there too
    filler.unlink()
    ok(m, "store", pid, hex(addr + 40 * PAGE), b"hole".hex())
    data = sparse.read_bytes()
    assert data[:4] == b"hokd"
    assert data[8 * PAGE : 8 * PAGE + 4] == b"read"
    assert data[40 * PAGE : 40 * PAGE + 4] == b"hole"
    ok(m, "exit", pid)
    m.assert_healthy()


def test_a_store_into_a_hole_of_a_backing_file_allocates_at_the_fault(mounted: Mounted) -> None:
    """Scenario 11 on a backing mount: the store into a hole (read first: PG_RDONLY) gives
    it its block at the fault, so a full disk -- here an injected ENOSPC of the
    allocation -- fails that store (SIGBUS), not the later write-back; the next store
    succeeds and its data reaches the backing file."""
    m = mounted
    f = m.mnt / "sparse"
    f.write_bytes(b"x" * PAGE)
    os.truncate(f, 8 * PAGE)
    pid = ok(m, "proc-new")
    addr = int(ok(m, "mmap", pid, "sparse", "0", "32K"), 16)
    assert bytes.fromhex(ok(m, "load", pid, hex(addr + 5 * PAGE), "4")) == bytes(4)
    ok(m, "inject", "backing-fallocate", "ENOSPC", "1")
    err = fails(m, 1, "store", pid, hex(addr + 5 * PAGE), b"full".hex())
    assert "ENOSPC" in err, err
    assert bytes.fromhex(ok(m, "load", pid, hex(addr + 5 * PAGE), "4")) == bytes(4)
    ok(m, "store", pid, hex(addr + 5 * PAGE), b"room".hex())
    assert counters(m)["gop_allocs"] >= 1
    assert f.read_bytes()[5 * PAGE : 5 * PAGE + 4] == b"room"
    ok(m, "exit", pid)
    r = m.ubcfs("sync", m.mnt)
    assert r.returncode == 0, r.stderr
    assert (m.backing / "sparse").read_bytes()[5 * PAGE : 5 * PAGE + 4] == b"room"
    m.assert_healthy()


def test_ptrace_write_and_fork(any_mounted: Mounted) -> None:
    m = any_mounted
    f = m.mnt / "lib.so"
    lib = os.urandom(2 * PAGE)
    f.write_bytes(lib)
    a = ok(m, "proc-new")
    va = int(ok(m, "mmap", a, "lib.so", "0", "8K", "--private", "--prot", "r"), 16)
    ok(m, "mlock", a, hex(va), "8K")
    b = ok(m, "fork", a)
    ok(m, "ptrace-write", b, hex(va + 16), "cccc")
    assert bytes.fromhex(ok(m, "load", b, hex(va + 16), "2")) == b"\xcc\xcc"
    assert bytes.fromhex(ok(m, "load", a, hex(va + 16), "2")) == lib[16:18]
    assert f.read_bytes() == lib
    fails(m, 1, "store", a, hex(va), "00")  # read-only: EACCES
    ok(m, "exit", b)
    ok(m, "munlock", a, hex(va), "8K")
    ok(m, "exit", a)
    assert m.stat()["pages"]["wired"] == 0
    m.assert_healthy()


def test_bad_process_requests_get_one_line_errors(any_mounted: Mounted) -> None:
    m = any_mounted
    (m.mnt / "d").mkdir()
    (m.mnt / "f").write_bytes(b"x" * PAGE)
    pid = ok(m, "proc-new")
    fails(m, 1, "load", "999", "0x10000", "1")  # no such process
    fails(m, 1, "mmap", pid, "missing", "0", "4K")  # ENOENT
    fails(m, 1, "mmap", pid, "d", "0", "4K")  # not a regular file
    fails(m, 1, "mmap", pid, "f/x", "0", "4K")  # ENOTDIR
    fails(m, 1, "mmap", pid, "f", "1", "4K")  # unaligned offset
    fails(m, 1, "mmap", pid, "f", "0", "64G")  # too large
    fails(m, 1, "load", pid, "0x10000", "1")  # no mapping: SIGSEGV
    addr = ok(m, "mmap", pid, "f", "0", "4K")
    fails(m, 1, "munmap", pid, hex(int(addr, 16) + 1), "4K")  # unaligned
    fails(m, 1, "load", pid, addr, "2M")  # beyond the load limit
    fails(m, 1, "mlock", pid, hex(int(addr, 16) + 64 * PAGE), "4K")  # not mapped
    fails(m, 2, "load", pid, "nonsense", "1")
    fails(m, 2, "load", "x", addr, "1")
    fails(m, 2, "store", pid, addr, "abc")
    fails(m, 2, "mmap", pid, "f", "0", "0")
    fails(m, 2, "mmap", pid, "f", "0", "4K", "--prot", "w")
    ok(m, "exit", pid)
    fails(m, 1, "exit", pid)
    m.assert_healthy()


def test_processes_die_with_the_mount(mounter: Mounter) -> None:
    """A mount unmounted with live processes and wired mappings: they exit first, every
    page is written back, nothing hangs."""
    m = mounter()
    f = m.mnt / "f"
    f.write_bytes(bytes(2 * PAGE))
    pid = ok(m, "proc-new")
    addr = ok(m, "mmap", pid, "f", "0", "8K")
    ok(m, "mlock", pid, addr, "8K")
    ok(m, "store", pid, addr, b"bye".hex())
    backing = m.backing / "f"
    r = m.ubcfs("umount", m.mnt)
    assert r.returncode == 0, r.stderr
    assert Path(backing).read_bytes()[:3] == b"bye"


@pytest.mark.parametrize("mode", ["backing", "tmpfs"])
def test_stress_truncate_runs_clean_and_is_reproducible(mounter: Mounter, mode: str) -> None:
    """``ubcfs stress truncate`` while another file four times the (small) memory is
    written and read in a loop, so that the pagedaemon (and, on a tmpfs, the swap pager)
    runs all the time: no mismatch, no violation; the same seed gives the same operations."""
    opts = ("--tmpfs",) if mode == "tmpfs" else ()
    m = mounter("m", *opts)
    stop = threading.Event()
    big = m.mnt / "pressure"

    def pressure() -> None:
        block = os.urandom(1 << 20)
        while not stop.is_set():
            with open(big, "wb") as f:
                for _ in range(4):
                    f.write(block)
            with open(big, "rb") as f:
                while f.read(1 << 20):
                    pass

    before = m.stat()["counters"]
    t = threading.Thread(target=pressure, daemon=True)
    t.start()
    runs = []
    try:
        for _ in range(2):
            r = m.ubcfs(
                "stress", "truncate", m.mnt, "--ops", "1500", "--seed", "11",
                "--processes", "3", "--json", timeout=600,
            )  # fmt: skip
            assert r.returncode == 0, f"{r.stdout}\n{r.stderr}\n{m.log_tail()}"
            runs.append(json.loads(r.stdout.strip().splitlines()[-1]))
    finally:
        stop.set()
        t.join(timeout=120)
    for s in runs:
        assert s["mismatches"] == 0, s["first_mismatches"]
        assert s["violations"] == 0, s["first_violations"]
        assert sum(s["ops"].values()) == 1500
        assert s["ops"].get("mlock", 0) > 0
        assert s["ops"].get("truncate", 0) > 0
    assert runs[0]["ops"] == runs[1]["ops"]
    assert runs[0]["failed_as_expected"] == runs[1]["failed_as_expected"]
    st = m.stat()
    c = st["counters"]
    assert c["unwire_skips"] > before["unwire_skips"], "no wired page was truncated away"
    assert c["pdscans"] > before["pdscans"], "the pagedaemon never ran"
    if mode == "tmpfs":
        assert c["swapouts"] > before["swapouts"], "nothing went to swap"
    assert st["pages"]["wired"] == 0
    big.unlink()
    assert not list(m.mnt.iterdir())  # the run cleaned up after itself
    m.assert_healthy()


def test_stress_bad_arguments(mounted: Mounted) -> None:
    m = mounted
    for args in (
        ("--seconds", "0"),
        ("--seconds", "x"),
        ("--seed", "-1"),
        ("--processes", "0"),
        ("--files", "100"),
        ("--ops", "0"),
    ):
        r = m.ubcfs("stress", "truncate", m.mnt, *args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("ubcfs: error:"), r.stderr
        assert "Traceback" not in r.stderr
    r = m.ubcfs("stress", "truncate", m.mnt / "nope")
    assert r.returncode == 2, r.stderr
