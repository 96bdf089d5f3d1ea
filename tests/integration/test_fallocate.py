"""fallocate(2) on a real mount (issue 8, point 6): the FUSE handler that the patched pyfuse3
of scripts/setup.sh wires, through ``vop_fallocate``, with 1M of memory so the pagedaemon
works all the time.  posix_fallocate, KEEP_SIZE, PUNCH_HOLE (zeroes on read, a hole in the
backing file after ``ubcfs sync``), ZERO_RANGE, the modes the kernel refuses, the backing
store's errors passed through, util-linux ``fallocate``, and punches racing a writer."""

from __future__ import annotations

import ctypes
import errno
import multiprocessing as mp
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Mounted, Mounter

pytestmark = pytest.mark.fuse

KIB = 1024
MIB = 1024 * KIB
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
FALLOC_FL_COLLAPSE_RANGE = 0x08
FALLOC_FL_ZERO_RANGE = 0x10
FALLOC_FL_INSERT_RANGE = 0x20
FALLOC_FL_UNSHARE_RANGE = 0x40
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE

_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = _libc.fallocate64
_fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
_fallocate.restype = ctypes.c_int


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) itself (os.posix_fallocate takes no mode)."""
    if _fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def falloc_errno(fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2)'s errno, 0 when it worked."""
    try:
        fallocate(fd, mode, offset, length)
    except OSError as e:
        return e.errno or -1
    return 0


def counters(m: Mounted) -> dict[str, int]:
    out: dict[str, int] = m.stat()["counters"]
    return out


def sync(m: Mounted) -> None:
    r = m.ubcfs("sync", m.mnt)
    assert r.returncode == 0, r.stderr


def seek_hole(path: Path, offset: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, offset, os.SEEK_HOLE)
    finally:
        os.close(fd)


def test_ping_says_fallocate_is_wired(mounted: Mounted) -> None:
    info = mounted.ping()
    assert info["fallocate"] is True, f"pyfuse3 {info['pyfuse3']}: run scripts/setup.sh"
    assert "+ubcfs.falloc" in info["pyfuse3"]


def test_posix_fallocate_extends_without_writes(mounted: Mounted) -> None:
    """posix_fallocate reaches the daemon as one FALLOCATE (glibc would otherwise write the
    range block by block): the file has its size at once, reads zeroes, and the backing
    file has the blocks before anything was written back."""
    path = mounted.mnt / "pf"
    before = counters(mounted)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.write(fd, b"head")
        os.posix_fallocate(fd, 0, 3 * MIB)
        assert os.fstat(fd).st_size == 3 * MIB
        assert os.stat(mounted.backing / "pf").st_blocks * 512 >= 3 * MIB
        assert os.pread(fd, 8, 0) == b"head" + bytes(4)
        assert os.pread(fd, MIB, 2 * MIB) == bytes(MIB)
    finally:
        os.close(fd)
    after = counters(mounted)
    assert after["fallocs"] == before["fallocs"] + 1
    sync(mounted)
    assert (mounted.backing / "pf").read_bytes() == b"head" + bytes(3 * MIB - 4)


def test_keep_size_punch_and_zero_range(mounted: Mounted) -> None:
    """KEEP_SIZE allocates past EOF and leaves the size; PUNCH_HOLE reads zeroes at once
    (also for pages the pagedaemon had written back and freed), and after ``ubcfs sync`` the
    backing file has a hole there; ZERO_RANGE zeroes, and without KEEP_SIZE extends."""
    path, backing = mounted.mnt / "f", mounted.backing / "f"
    data = bytearray(random.Random(1).randbytes(2 * MIB))  # twice the mount's memory
    path.write_bytes(data)
    sync(mounted)
    before = counters(mounted)
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 2 * MIB, 2 * MIB)
        assert os.fstat(fd).st_size == 2 * MIB
        assert os.stat(backing).st_blocks * 512 >= 4 * MIB
        # Dirty a page inside the range to be punched, then punch [64K + 100, 1M + 100).
        os.pwrite(fd, b"D" * 8192, 512 * KIB)
        fallocate(fd, PUNCH, 64 * KIB + 100, MIB)
        data[64 * KIB + 100 : MIB + 64 * KIB + 100] = bytes(MIB)
        assert os.pread(fd, 2 * MIB, 0) == data
        # Zero a range across EOF without KEEP_SIZE: the file grows.
        fallocate(fd, FALLOC_FL_ZERO_RANGE, 2 * MIB - 5000, 10000)
        data[2 * MIB - 5000 :] = bytes(5000)
        data += bytes(5000)
        assert os.fstat(fd).st_size == len(data)
        fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 100, 1000)
        data[100:1100] = bytes(1000)
        assert os.pread(fd, len(data) + 10, 0) == data
    finally:
        os.close(fd)
    after = counters(mounted)
    assert after["fallocs"] - before["fallocs"] == 4
    assert after["falloc_punches"] - before["falloc_punches"] == 1
    assert after["falloc_zero_ranges"] - before["falloc_zero_ranges"] == 2
    sync(mounted)
    assert backing.read_bytes() == data
    assert seek_hole(backing, 68 * KIB) == 68 * KIB  # the punched blocks are a hole
    assert path.read_bytes() == data


@pytest.mark.parametrize(
    "mode",
    [
        FALLOC_FL_PUNCH_HOLE,  # a punch must keep the size
        FALLOC_FL_COLLAPSE_RANGE,
        FALLOC_FL_INSERT_RANGE,
        FALLOC_FL_UNSHARE_RANGE,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
    ],
)
def test_unsupported_modes_are_eopnotsupp(mounted: Mounted, mode: int) -> None:
    path = mounted.mnt / "u"
    path.write_bytes(b"x" * 3 * 4096)
    fd = os.open(path, os.O_RDWR)
    try:
        with pytest.raises(OSError, match="Operation not supported") as info:
            fallocate(fd, mode, 0, 4096)
        assert info.value.errno == errno.EOPNOTSUPP
        fallocate(fd, 0, 0, 8192)  # the mount still does fallocate afterwards
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 3 * 4096


def test_bad_ranges(mounted: Mounted) -> None:
    fd = os.open(mounted.mnt / "b", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        assert falloc_errno(fd, 0, -1, 10) == errno.EINVAL
        assert falloc_errno(fd, 0, 0, 0) == errno.EINVAL
        # Past ubcfs's maximum size: EFBIG; below it, past ext4's: the backing fs's answer.
        assert falloc_errno(fd, 0, (1 << 62) - 10, 20) == errno.EFBIG
        assert falloc_errno(fd, 0, 1 << 50, 4096) in (errno.EFBIG, errno.ENOSPC)
    finally:
        os.close(fd)
    assert os.stat(mounted.mnt / "b").st_size == 0


def test_backing_errors_pass_through(mounted: Mounted) -> None:
    """An ENOSPC or EOPNOTSUPP of the backing file system reaches the caller, with the data
    unchanged; an EOPNOTSUPP does not make the kernel give up on fallocate (ENOSYS would)."""
    path = mounted.mnt / "e"
    path.write_bytes(b"y" * 100000)
    fd = os.open(path, os.O_RDWR)
    try:
        for name, code in (("ENOSPC", errno.ENOSPC), ("EOPNOTSUPP", errno.EOPNOTSUPP)):
            r = mounted.ctl("inject", "backing-fallocate", name, "1")
            assert r.returncode == 0, r.stderr
            assert falloc_errno(fd, PUNCH, 4096, 40000) == code
            assert os.pread(fd, 100000, 0) == b"y" * 100000
        fallocate(fd, PUNCH, 4096, 40000)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"y" * 4096 + bytes(40000) + b"y" * (100000 - 44096)
    assert counters(mounted)["falloc_failed"] == 2


@pytest.mark.skipif(shutil.which("fallocate") is None, reason="util-linux fallocate missing")
def test_util_linux_fallocate(mounted: Mounted) -> None:
    path = mounted.mnt / "ul"

    def run(*args: str) -> None:
        r = subprocess.run(["fallocate", *args, str(path)], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr

    run("-l", "1MiB")
    assert os.stat(path).st_size == MIB
    with open(path, "r+b") as f:
        f.write(b"z" * MIB)
    run("-n", "-o", "1MiB", "-l", "1MiB")  # --keep-size
    assert os.stat(path).st_size == MIB
    run("-p", "-o", "8KiB", "-l", "16KiB")
    run("-z", "-o", "100KiB", "-l", "4KiB")
    want = b"z" * 8192 + bytes(16384) + b"z" * (100 * KIB - 24576) + bytes(4096)
    want += b"z" * (MIB - len(want))
    assert path.read_bytes() == want
    sync(mounted)
    assert (mounted.backing / "ul").read_bytes() == want
    assert seek_hole(mounted.backing / "ul", 8192) == 8192


SLOT = 64 * KIB


def _slot_data(slot: int) -> bytes:
    return random.Random(slot).randbytes(SLOT)


def _punch_and_write(path: str, seed: int, n: int) -> None:
    """Even seeds punch and zero ranges of the first MiB of the file; odd ones write the
    64 KiB slots of the second MiB (seed 1 the even slots, seed 3 the odd ones), each slot
    always with the same bytes, so the result does not depend on the order."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_RDWR)
    try:
        for i in range(n):
            if seed % 2 == 0:
                off = rng.randrange(0, MIB // 4096) * 4096 + rng.randrange(2) * 100
                length = min(rng.randrange(1, 64) * 4096 - rng.randrange(2) * 7, MIB - off)
                mode = rng.choice([PUNCH, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE])
                fallocate(fd, mode, off, length)
            else:
                slot = 16 + (2 * i + seed // 2) % 16
                os.pwrite(fd, _slot_data(slot), slot * SLOT)
    finally:
        os.close(fd)


def test_punches_race_writers_under_memory_pressure(mounted: Mounted) -> None:
    """Two processes punch and zero in the first MiB of a 2 MiB file (on a 1M mount) while
    two others write the second: the second MiB holds exactly what was written, the first
    only zeroes where it was punched, and the backing file agrees after ``ubcfs sync``."""
    path = mounted.mnt / "race"
    original = random.Random(7).randbytes(2 * MIB)
    path.write_bytes(original)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_punch_and_write, args=(str(path), s, 64)) for s in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0
    data = path.read_bytes()
    assert len(data) == 2 * MIB
    assert data[MIB:] == b"".join(_slot_data(slot) for slot in range(16, 32))
    # Each byte of the first MiB is the original one or a punched zero.
    first = data[:MIB]
    assert all(b in (0, original[i]) for i, b in enumerate(first))
    assert first != original[:MIB]
    assert counters(mounted)["pageouts"] > 0
    sync(mounted)
    assert (mounted.backing / "race").read_bytes() == data


def test_no_ubc_mount_passes_fallocate_through(mounter: Mounter) -> None:
    m = mounter("nu", "--no-ubc")
    path = m.mnt / "f"
    path.write_bytes(b"q" * 20000)
    fd = os.open(path, os.O_RDWR)
    try:
        fallocate(fd, PUNCH, 4096, 8192)
        os.posix_fallocate(fd, 0, 50000)
    finally:
        os.close(fd)
    want = b"q" * 4096 + bytes(8192) + b"q" * (20000 - 12288) + bytes(30000)
    assert path.read_bytes() == want
    assert (m.backing / "f").read_bytes() == want
