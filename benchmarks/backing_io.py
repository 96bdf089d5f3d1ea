"""Micro-benchmark of the vnode pager's backing I/O edge (pagers/backing_io.py).

Run: ``.venv/bin/python benchmarks/backing_io.py [--dir DIR] [--seconds S]``

A 64 MiB file is written (so it sits in the host page cache) and read back at random
cluster-aligned offsets into 4 KiB frame views of an anonymous mmap, the way the pager reads
into ``PhysMem`` frames.  Each case runs in several timed batches; the table shows the median
batch's µs per call and MB/s, and in "ratio" each row's time divided by that of its
reference row of the same size: the inline syscall for thread and end-to-end rows, the plain
thread hop for cold rows.  Cases:

* inline ``os.preadv(..., RWF_NOWAIT)`` on the trio thread, 4 KiB / 64 KiB / 1 MiB;
* ``await trio.to_thread.run_sync(os.preadv, ...)``, same sizes;
* ``BackingIO.readv`` end to end (RWF_NOWAIT first, and with ``nowait=False``);
* ``BackingIO.readv`` of a file's partial last page (2 KiB of data in a 4 KiB cluster): the
  short RWF_NOWAIT count + fstat EOF check, against the thread;
* cold reads (the file dropped with ``posix_fadvise(DONTNEED)`` before each call, so these
  are virtio-disk reads), 4 KiB / 64 KiB: ``to_thread(preadv)`` against ``BackingIO.readv``
  (EAGAIN, then the same hop);
* ``os.pwritev`` inline (reference only: the pager never writes inline) and in a thread,
  64 KiB / 1 MiB;
* the thread hop itself (``--hops`` runs only these): the round trip of a no-op and of a
  cached 4 KiB ``os.preadv`` through ``trio.to_thread.run_sync`` against the long-lived
  ``IoThreads`` pool that ``BackingIO`` uses, as the median of many single round trips; and
  8 no-ops started at once and awaited together (the pool batches their completions), per
  no-op.

The machine is shared and noisy: compare rows of one run, not runs with each other.
"""

from __future__ import annotations

import argparse
import mmap
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from pagers.backing_io import RWF_NOWAIT, BackingIO
from pagers.iothreads import IoThreads

PAGE = 4096
FILE_SIZE = 64 << 20
SIZES = (4 << 10, 64 << 10, 1 << 20)
BATCHES = 5
N_OFFSETS = 4096

Op = Callable[[int], Awaitable[object]]  # one call at the given file offset


@dataclass
class Row:
    name: str
    size: int
    us: float  # median µs per call
    ref: str | None = None  # name of the row this one is compared with (same size)


def human(size: int) -> str:
    if size >= 1 << 20:
        return f"{size >> 20} MiB"
    return f"{size >> 10} KiB" if size >= 1 << 10 else f"{size} B"


async def measure(op: Op, offsets: list[int], seconds: float) -> float:
    """Median over BATCHES of the mean µs per call of ``op``, each batch ~``seconds`` long."""
    for off in offsets[:20]:  # warm-up: thread cache, code paths
        await op(off)
    per_call: list[float] = []
    i = 0
    for _ in range(BATCHES):
        calls = 0
        t0 = time.perf_counter()
        deadline = t0 + seconds
        now = t0
        while now < deadline:
            for _ in range(16):  # check the clock every 16 calls
                await op(offsets[i])
                i = (i + 1) % len(offsets)
            calls += 16
            now = time.perf_counter()
        per_call.append((now - t0) / calls * 1e6)
    return statistics.median(per_call)


async def median_each(op: Callable[[], Awaitable[object]], calls: int) -> float:
    """Median µs of ``calls`` single round trips of ``op`` (after a warm-up)."""
    for _ in range(50):
        await op()
    times: list[float] = []
    clock = time.perf_counter
    for _ in range(calls):
        t0 = clock()
        await op()
        times.append(clock() - t0)
    return statistics.median(times) * 1e6


def _noop() -> None:
    return None


async def hop_cases(fd: int, arena: memoryview, calls: int) -> list[Row]:
    """The hop alone, to_thread against the pool; ``fd`` is a host-cached file."""
    pool = IoThreads(8)
    view = [arena[:PAGE]]
    rng = random.Random(3)

    def offset() -> int:
        return rng.randrange(FILE_SIZE // PAGE) * PAGE

    async def thread_noop() -> object:
        return await trio.to_thread.run_sync(_noop)

    async def pool_noop() -> object:
        return await pool.run(_noop)

    async def thread_read() -> object:
        return await trio.to_thread.run_sync(os.preadv, fd, view, offset())

    async def pool_read() -> object:
        return await pool.run(os.preadv, fd, view, offset())

    async def thread_noop8() -> object:
        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(thread_noop)
        return None

    async def pool_noop8() -> object:
        reqs = [pool.start(_noop) for _ in range(8)]
        for req in reqs:
            await req.wait()
        return None

    try:
        t_noop = "hop: to_thread(no-op)"
        t_read = "hop: to_thread(preadv)"
        t_noop8 = "hop: to_thread(no-op) x8, per op"
        rows = [
            Row(t_noop, 0, await median_each(thread_noop, calls)),
            Row("hop: IoThreads.run(no-op)", 0, await median_each(pool_noop, calls), t_noop),
            Row(t_read, PAGE, await median_each(thread_read, calls)),
            Row("hop: IoThreads.run(preadv)", PAGE, await median_each(pool_read, calls), t_read),
            Row(t_noop8, 0, await median_each(thread_noop8, calls // 8) / 8),
        ]
        us = await median_each(pool_noop8, calls // 8) / 8
        rows.append(Row("hop: IoThreads no-op x8, per op", 0, us, t_noop8))
        return rows
    finally:
        await pool.aclose()


def frames(arena: memoryview, size: int) -> list[memoryview]:
    return [arena[a : a + PAGE] for a in range(0, size, PAGE)]


def make_file(path: Path) -> int:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    chunk = random.Random(1).randbytes(1 << 20)
    for off in range(0, FILE_SIZE, len(chunk)):
        os.pwrite(fd, chunk, off)
    while os.read(fd, 1 << 20):  # touch it all: every page is now in the host page cache
        pass
    return fd


def nowait_works(fd: int) -> bool:
    try:
        os.preadv(fd, [bytearray(PAGE)], 0, RWF_NOWAIT)
    except OSError:
        return False
    return RWF_NOWAIT != 0


async def run(directory: str | None, seconds: float, hops: int, hops_only: bool) -> list[Row]:
    rows: list[Row] = []
    rng = random.Random(2)
    amap = mmap.mmap(-1, 1 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    arena = memoryview(amap)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        fd = make_file(Path(tmp) / "backing")
        wfd = os.open(Path(tmp) / "written", os.O_RDWR | os.O_CREAT, 0o600)
        inline_ok = nowait_works(fd)
        if not inline_ok:
            print(f"note: {tmp} refuses RWF_NOWAIT: no inline rows", file=sys.stderr)
        try:
            rows += await hop_cases(fd, arena, hops)
            for size in () if hops_only else SIZES:
                offs = [rng.randrange(FILE_SIZE // size) * size for _ in range(N_OFFSETS)]
                views = frames(arena, size)
                rows += await read_cases(fd, views, size, offs, seconds, inline_ok)
                views.clear()
            if hops_only:
                return rows
            rows += await eof_case(Path(tmp), arena, seconds)
            os.fsync(fd)  # clean pages, so that fadvise(DONTNEED) can drop them
            for size in SIZES[:2]:
                offs = [rng.randrange(FILE_SIZE // size) * size for _ in range(N_OFFSETS)]
                views = frames(arena, size)
                rows += await cold_cases(fd, views, size, offs, seconds)
                views.clear()
            for size in SIZES[1:]:
                offs = [rng.randrange(FILE_SIZE // size) * size for _ in range(N_OFFSETS)]
                views = frames(arena, size)
                rows += await write_cases(wfd, views, size, offs, seconds)
                views.clear()
        finally:
            os.close(fd)
            os.close(wfd)
    arena.release()
    amap.close()
    return rows


async def read_cases(
    fd: int, views: list[memoryview], size: int, offs: list[int], seconds: float, inline_ok: bool
) -> list[Row]:
    async def inline(off: int) -> object:
        return os.preadv(fd, views, off, RWF_NOWAIT)

    async def thread(off: int) -> object:
        return await trio.to_thread.run_sync(os.preadv, fd, views, off)

    nw, blocking = BackingIO(), BackingIO(nowait=False)
    rows = []
    if inline_ok:
        rows.append(Row("preadv RWF_NOWAIT inline", size, await measure(inline, offs, seconds)))
    ref = "preadv RWF_NOWAIT inline" if inline_ok else None
    rows.append(Row("to_thread(preadv)", size, await measure(thread, offs, seconds), ref))
    us = await measure(lambda off: nw.readv(fd, views, off), offs, seconds)
    rows.append(Row("BackingIO.readv", size, us, ref))
    us = await measure(lambda off: blocking.readv(fd, views, off), offs, seconds)
    rows.append(Row("BackingIO.readv nowait=False", size, us, ref))
    assert nw.stats.reads_threaded == 0 or not inline_ok, "cached reads went to a thread"
    return rows


async def eof_case(tmp: Path, arena: memoryview, seconds: float) -> list[Row]:
    """A 4 KiB cluster over a file's last, partial page (2 KiB of data)."""
    fd = os.open(tmp / "small", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.pwrite(fd, b"x" * 2048, 0)
        views = frames(arena, PAGE)
        nw, blocking = BackingIO(), BackingIO(nowait=False)
        name = "BackingIO.readv last page (EOF)"
        us = await measure(lambda off: nw.readv(fd, views, off), [0], seconds)
        us_thread = await measure(lambda off: blocking.readv(fd, views, off), [0], seconds)
        views.clear()
        assert nw.stats.nowait_eof > 0 or not nowait_works(fd), "EOF read went to a thread"
        return [Row(name, 2048, us), Row(name + " nowait=False", 2048, us_thread, name)]
    finally:
        os.close(fd)


async def cold_cases(
    fd: int, views: list[memoryview], size: int, offs: list[int], seconds: float
) -> list[Row]:
    """Reads of data just dropped from the host page cache: RWF_NOWAIT answers EAGAIN and
    BackingIO pays one wasted syscall before its thread hop."""

    def drop(off: int) -> None:
        # The whole file: ext4 caches in large folios here, and a DONTNEED of a range
        # smaller than its folio drops nothing.
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)

    async def thread(off: int) -> object:
        drop(off)
        return await trio.to_thread.run_sync(os.preadv, fd, views, off)

    bio = BackingIO()

    async def backing(off: int) -> object:
        drop(off)
        return await bio.readv(fd, views, off)

    ref = "cold: to_thread(preadv)"
    rows = [
        Row(ref, size, await measure(thread, offs, seconds)),
        Row("cold: BackingIO.readv", size, await measure(backing, offs, seconds), ref),
    ]
    if bio.stats.reads_threaded < bio.stats.reads_inline:
        print(f"note: fadvise did not drop the cache ({bio.stats})", file=sys.stderr)
    return rows


async def write_cases(
    fd: int, views: list[memoryview], size: int, offs: list[int], seconds: float
) -> list[Row]:
    async def inline(off: int) -> object:
        return os.pwritev(fd, views, off)

    bio = BackingIO()
    ref = "pwritev inline (reference)"
    return [
        Row(ref, size, await measure(inline, offs, seconds)),
        Row(
            "BackingIO.writev (thread)",
            size,
            await measure(lambda off: bio.writev(fd, views, off), offs, seconds),
            ref,
        ),
    ]


def print_table(rows: list[Row]) -> None:
    by_key = {(r.name, r.size): r.us for r in rows}
    w = max(len(r.name) for r in rows)
    print(f"{'case':{w}} {'size':>7} {'µs/call':>9} {'MB/s':>8} {'ratio':>9}")
    for r in rows:
        ratio = ""
        if r.ref is not None and (r.ref, r.size) in by_key:
            ratio = f"{r.us / by_key[(r.ref, r.size)]:.1f}×"
        mbs = f"{r.size / r.us:8.0f}" if r.size else f"{'':8}"  # bytes per µs == MB/s
        print(f"{r.name:{w}} {human(r.size):>7} {r.us:9.1f} {mbs} {ratio:>9}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dir", help="directory for the 64 MiB test file (default: $TMPDIR)")
    parser.add_argument("--seconds", type=float, default=0.12, help="length of one batch")
    parser.add_argument("--hop-calls", type=int, default=4000, help="round trips per hop row")
    parser.add_argument("--hops", action="store_true", help="only the thread-hop rows")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = trio.run(run, args.dir, args.seconds, args.hop_calls, args.hops)
    load = os.getloadavg()
    print(
        f"python {sys.version.split()[0]}, trio {trio.__version__}, {os.cpu_count()} CPUs, "
        f"load {load[0]:.2f}; median of {BATCHES} batches; MB = 10^6 bytes"
    )
    print_table(rows)
    print(f"total {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
