"""``ubcfs mount --tmpfs`` on real mounts (issue 10): file data in anonymous memory, paged
to a swap file, nothing lost, nothing left behind.

The workload tests of test_workloads.py run on a tmpfs too; these are the tmpfs's own: data
many times the simulated memory round-trips through swap byte for byte, removing or
truncating files frees their slots, statfs reports memory + swap, a tmpfs that is full
answers ENOSPC (never a hang), swap I/O errors keep the data (write) or fail just that
fault and mark the slot bad (read), and unmount discards everything, swap file included.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    Mounted,
    Mounter,
    drop_caches,
    is_mounted,
    run_ubcfs,
    wait_until,
)

pytestmark = pytest.mark.fuse

MIB = 1 << 20
PAGE = 4096


def write_chunks(path: Path, data: bytes, chunk: int = MIB) -> tuple[int, int]:
    """Write ``data`` in ``chunk``-sized writes until one fails: (bytes accepted, errno)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    done = 0
    try:
        while done < len(data):
            done += os.write(fd, data[done : done + chunk])
    except OSError as e:
        return done, e.errno or -1
    finally:
        os.close(fd)
    return done, 0


def swap_of(m: Mounted) -> dict[str, Any]:
    st = m.stat()
    return {**st["swap"], "anon": st["pages"]["anon"], **st["counters"]}


def test_data_sixteen_times_memory_round_trips_through_swap(mounter: Mounter) -> None:
    m = mounter("m", "--tmpfs", "--swap", "96M", memory="2M")
    rng = random.Random(1)
    files = {f"f{i}": rng.randbytes(8 * MIB + i * 4097) for i in range(4)}  # 16x memory
    for name, data in files.items():
        (m.mnt / name).write_bytes(data)
    s = swap_of(m)
    assert s["swapouts"] * PAGE >= 28 * MIB, s  # it cannot all be in 2 MiB
    assert s["used"] >= (sum(map(len, files.values())) - 2 * MIB) // PAGE
    drop_caches()  # the kernel forgets the inodes: the data stays with the tmpfs nodes
    for name, data in reversed(files.items()):
        assert (
            hashlib.sha256((m.mnt / name).read_bytes()).digest() == hashlib.sha256(data).digest()
        ), name
    s = swap_of(m)
    assert s["swapins"] > 0
    assert s["swap_read_errors"] == s["swap_write_errors"] == s["bad"] == 0
    r = m.ubcfs("check", m.mnt)
    assert r.returncode == 0, r.stdout


def test_rm_and_truncate_free_every_page_and_slot(mounter: Mounter) -> None:
    m = mounter("m", "--tmpfs", "--swap", "64M", memory="1M")
    data = random.Random(2).randbytes(12 * MIB)
    (m.mnt / "a").write_bytes(data)
    (m.mnt / "b").write_bytes(data[: 6 * MIB])
    os.link(m.mnt / "b", m.mnt / "b2")
    before = swap_of(m)
    assert before["used"] > 12 * MIB // PAGE, before
    os.truncate(m.mnt / "a", MIB + 100)  # into a page that is only in swap
    after = swap_of(m)
    assert after["used"] + after["anon"] <= before["used"] + before["anon"] - 10 * MIB // PAGE
    os.truncate(m.mnt / "a", 3 * MIB)  # re-extended: zeroes, never the old bytes
    got = (m.mnt / "a").read_bytes()
    assert got[: MIB + 100] == data[: MIB + 100]
    assert got[MIB + 100 :] == bytes(3 * MIB - MIB - 100)
    os.unlink(m.mnt / "b")  # one name left: nothing freed
    assert (m.mnt / "b2").read_bytes() == data[: 6 * MIB]
    fd = os.open(m.mnt / "a", os.O_RDONLY)
    try:
        os.unlink(m.mnt / "a")  # open: freed at the close, not before
        assert os.pread(fd, 10, 0) == data[:10]
    finally:
        os.close(fd)
    os.unlink(m.mnt / "b2")
    # The kernel's forget of the last lookup may come a little after the unlink.
    wait_until(lambda: swap_of(m)["used"] == 0, 10, "every slot to be freed")
    wait_until(lambda: swap_of(m)["anon"] == 0, 10, "every page to be freed")
    sv = os.statvfs(m.mnt)
    assert sv.f_bfree * sv.f_frsize == sv.f_blocks * sv.f_frsize  # all free again


def test_statfs_reports_memory_plus_swap(mounter: Mounter) -> None:
    m = mounter("m", "--tmpfs", "--swap", "8M", memory="2M")
    sv = os.statvfs(m.mnt)
    head = m.stat()["tmpfs"]
    assert sv.f_blocks == head["limit_pages"]  # memory + swap less the headroom
    assert 10 * MIB - 512 * 1024 < sv.f_blocks * sv.f_frsize < 10 * MIB
    (m.mnt / "f").write_bytes(bytes(3 * MIB))
    used = (sv.f_bfree - os.statvfs(m.mnt).f_bfree) * sv.f_frsize
    assert 3 * MIB <= used <= 3 * MIB + 64 * 1024
    st = os.stat(m.mnt / "f")
    assert st.st_blocks * 512 == 3 * MIB
    assert st.st_dev == os.stat(m.mnt).st_dev


@pytest.mark.parametrize("swap", ["0", "2M"])
def test_a_full_tmpfs_answers_enospc_not_a_hang(mounter: Mounter, swap: str) -> None:
    m = mounter("m", "--tmpfs", "--swap", swap, memory="1M")
    data = random.Random(3).randbytes(8 * MIB)
    t0 = time.monotonic()
    done, err = write_chunks(m.mnt / "big", data, chunk=256 * 1024)
    assert err == errno.ENOSPC, (done, errno.errorcode.get(err))
    assert time.monotonic() - t0 < 60
    assert 0 < done < (1 + (2 if swap == "2M" else 0)) * MIB
    # What was accepted is there; removing it makes room again.
    assert (m.mnt / "big").read_bytes() == data[:done]
    os.unlink(m.mnt / "big")
    wait_until(lambda: swap_of(m)["anon"] == 0, 10, "the pages to be freed")
    (m.mnt / "small").write_bytes(data[: 256 * 1024])
    assert (m.mnt / "small").read_bytes() == data[: 256 * 1024]
    m.assert_healthy()


def test_swap_write_errors_keep_the_data_in_memory(mounter: Mounter) -> None:
    m = mounter("m", "--tmpfs", "--swap", "64M", memory="2M")
    r = m.ctl("inject", "swap-write", "EIO", "20")
    assert r.returncode == 0, r.stderr
    data = random.Random(4).randbytes(16 * MIB)
    (m.mnt / "f").write_bytes(data)
    s = swap_of(m)
    assert s["swap_write_errors"] == 20, s
    assert (m.mnt / "f").read_bytes() == data
    m.assert_healthy()


def test_a_failed_swap_in_fails_that_read_and_marks_the_slot_bad(mounter: Mounter) -> None:
    m = mounter("m", "--tmpfs", "--swap", "64M", memory="1M")
    data = random.Random(5).randbytes(8 * MIB)
    (m.mnt / "f").write_bytes(data)
    (m.mnt / "g").write_bytes(data[::-1])  # pushes the start of f out to swap
    # The first read fails a whole swap-in run, which is then retried page by page: the
    # second failure is the first page's own (the others are read).
    assert m.ctl("inject", "swap-read", "EIO", "2").returncode == 0
    fd = os.open(m.mnt / "f", os.O_RDWR)
    try:
        with pytest.raises(OSError, match="Input/output error"):
            os.pread(fd, PAGE, 0)
        s = swap_of(m)
        assert s["bad"] >= 1, s
        assert s["swap_read_errors"] >= 1
        # Only the failed page's data is lost: it keeps failing, everything else reads.
        with pytest.raises(OSError, match="Input/output error"):
            os.pread(fd, PAGE, 0)
        assert os.pread(fd, MIB, 4 * MIB) == data[4 * MIB : 5 * MIB]
        # Overwritten whole, the page is good again; the bad slot is never reused.
        os.pwrite(fd, b"N" * PAGE, 0)
        assert os.pread(fd, PAGE, 0) == b"N" * PAGE
    finally:
        os.close(fd)
    assert (m.mnt / "g").read_bytes() == data[::-1]
    assert swap_of(m)["bad"] >= 1
    m.assert_healthy()


def test_umount_discards_everything_and_removes_the_swap_file(mounter: Mounter) -> None:
    m = mounter("m", "--tmpfs", memory="1M")
    swap_file = Path(m.ping()["swap_file"])
    assert swap_file.is_file()
    assert swap_file.stat().st_size == 256 * MIB  # TMPFS_SWAP, sparse
    (m.mnt / "d").mkdir()
    (m.mnt / "d" / "f").write_bytes(os.urandom(4 * MIB))
    assert m.ubcfs("umount", m.mnt).returncode == 0
    assert not is_mounted(m.mnt)
    assert not swap_file.exists()
    again = mounter("again", "--tmpfs", memory="1M")
    assert os.listdir(again.mnt) == []


def test_a_given_swap_file_is_kept(mounter: Mounter, tmp_path: Path) -> None:
    path = tmp_path / "my.swap"
    m = mounter("m", "--tmpfs", "--swap", "16M", "--swap-file", str(path), memory="1M")
    (m.mnt / "f").write_bytes(os.urandom(4 * MIB))
    assert swap_of(m)["used"] > 0
    assert m.ubcfs("umount", m.mnt).returncode == 0
    assert path.stat().st_size == 16 * MIB


def test_inode_numbers_and_times_are_stable_across_eviction(mounter: Mounter) -> None:
    m = mounter("m", "--tmpfs", memory="1M")
    names = [m.mnt / f"n{i}" for i in range(200)]
    for i, p in enumerate(names):
        p.write_bytes(bytes([i % 256]) * (i * 100))
    os.utime(names[7], ns=(1_000_000_000, 2_000_000_000))
    first = {p: os.stat(p) for p in names}
    assert len({st.st_ino for st in first.values()}) == len(names)
    time.sleep(1.2)  # past the attribute timeout
    drop_caches()
    for i, p in enumerate(names):
        st = os.stat(p)
        was = first[p]
        assert (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns) == (
            was.st_ino,
            was.st_size,
            was.st_mtime_ns,
            was.st_ctime_ns,
        ), p
        assert p.read_bytes() == bytes([i % 256]) * (i * 100)
    assert os.stat(names[7]).st_mtime_ns == 2_000_000_000


def test_mount_options_that_do_not_go_together(mounter: Mounter, tmp_path: Path) -> None:
    mnt = tmp_path / "x"
    mnt.mkdir()
    for args, why in (
        (["--tmpfs", "--no-ubc"], "a --tmpfs has none"),
        (["--tmpfs", "--backing", str(tmp_path)], "not allowed with"),
        (["--tmpfs", "--swap-file", str(mnt / "s")], "inside the mountpoint"),
        (["--tmpfs", "--swap", "5000"], "multiple of the page size"),
    ):
        r = run_ubcfs("mount", mnt, *args, env=mounter.env)
        assert r.returncode == 2, (args, r.stderr)
        assert why in r.stderr, (args, r.stderr)
        assert r.stderr.count("\n") == 1, r.stderr
        assert not is_mounted(mnt)


def test_tmpfs_benchmark_quick(tmp_path: Path) -> None:
    """benchmarks/tmpfs_mount.py runs, reports every target and leaves no mount behind."""
    if os.geteuid() != 0:
        pytest.skip("the benchmark mounts a Linux tmpfs: root only")
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "tmpfs_mount.py"
    out = tmp_path / "out.json"
    r = subprocess.run(
        [sys.executable, str(script), "--quick", "--memory", "4M", "--dir", str(tmp_path),
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "swap-in (ubcfs-tmpfs read 8x) / raw read" in r.stdout
    got = json.loads(out.read_text())
    assert set(got["median"]) == {"ubcfs-tmpfs", "linux-tmpfs", "ubcfs-backing", "null"}
    assert all(v > 0 for t in got["median"].values() for v in t.values())
    assert got["counters"]["swapins"] > 0
    mounts = Path("/proc/mounts").read_text().splitlines()
    assert not [line for line in mounts if str(tmp_path) in line]
