"""Throughput of anonymous memory through the swap pager, in process (no FUSE).

Run: ``.venv/bin/python benchmarks/swap_io.py [--memory SIZE] [--page-size SIZE] [--quick]
[--dir DIR]``

One machine (``--memory``, default 16M; ``--page-size``, default 4 KiB) with swap of 10x
memory in ``--dir`` (default ``$TMPDIR``), one UBC window pool, and an aobj.  For data of
1x and 8x memory, in one run: write it sequentially through the UBC in 1 MiB requests (the
pagedaemon swaps out what does not fit), push every page out, then read it all back
sequentially in 1 MiB requests (every page a swap-in, with the swap pager's read-ahead of
contiguous slots).
Next to each, in the same run, on the same file system: ``os.preadv`` of the same number
of bytes of the swap file in 1 MiB requests on the trio thread (the raw sequential read the
issue compares swap-in with).  Before each of the two reads the swap file is fsynced and
dropped from the host page cache (``POSIX_FADV_DONTNEED``), so both read the disk, as a
real swap-in does.  "write" includes the swap-out of what does not fit.  A write and read
of a file on a Linux tmpfs (``/dev/shm``) are given for scale.

Reports MB/s per step and the swap-in throughput as a ratio of the raw read (issue 10's
target: at least 0.5x); the machine must pass the DIAGNOSTIC audit at the end (exit status 1
otherwise).  Compare rows of one run only: the host is shared and noisy.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pagers.aobj import Aobj
from pagers.backing_io import BackingIO
from pagers.swap import Swap
from ubcfs import native
from ubcfs.options import UsageError, parse_size
from ubcfs.vm import audit
from ubcfs.vm.page import pagedeactivate
from ubcfs.vm.pager import Aio
from ubcfs.vm.pdaemon import Pagedaemon
from ubcfs.vm.pdpolicy_clock import ClockPolicy
from ubcfs.vm.pmap import pmap_clear_reference
from ubcfs.vm.ubc import UBC_FAULTBUSY, Ubc, Uio
from ubcfs.vm.uvm import Uvm

CHUNK = 1 << 20


def _mbs(nbytes: int, seconds: float) -> float:
    return nbytes / max(seconds, 1e-9) / 1e6


async def _evict_all(uvm: Uvm, ubc: Ubc, daemon: Pagedaemon, aio: Aio) -> None:
    for win in list(ubc.windows):
        if win.uobj is not None:
            ubc.purge(win.uobj)
    policy = uvm.pdpolicy
    assert isinstance(policy, ClockPolicy)  # the machine is built with the default
    for pg in list(policy.active):
        pmap_clear_reference(pg)
        pagedeactivate(uvm, pg)
    exp = uvm.uvmexp
    while exp.inactive:
        exp.freetarg = exp.npages
        try:
            done = await daemon.scan_queue()
        finally:
            uvm.tune()
        await aio.drain()
        if not done:
            break


async def run_size(memory: int, page_size: int, size: int, workdir: str) -> dict[str, float]:
    uvm = Uvm(memory, page_size, populate=True)
    io = BackingIO()
    swap = Swap(uvm, os.path.join(workdir, "swap"), max(10 * memory, size + memory), io)
    swap.attach()
    ubc = Ubc(uvm, nwins=64, winsize=64 * 1024)
    aio = Aio(uvm)
    daemon = Pagedaemon(uvm)
    data = os.urandom(CHUNK)
    out: dict[str, float] = {}
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(aio.run)
            uvm.aio = aio
            await nursery.start(daemon.run)
            a = Aobj(uvm, "bench", swap)
            t = time.perf_counter()
            for off in range(0, size, CHUNK):
                err = await ubc.ubc_write(a.uobj, off, Uio(memoryview(data)), CHUNK, UBC_FAULTBUSY)
                if err:
                    raise SystemExit(f"swap_io: write at {off} failed: {os.strerror(err)}")
            await aio.drain()
            out["write"] = _mbs(size, time.perf_counter() - t)
            await _evict_all(uvm, ubc, daemon, aio)
            _drop_host_cache(swap.fd)
            ins = uvm.uvmexp.swapins
            buf = bytearray(CHUNK)
            t = time.perf_counter()
            for off in range(0, size, CHUNK):
                err = await ubc.ubc_read(a.uobj, off, Uio(memoryview(buf)))
                if err:
                    raise SystemExit(f"swap_io: read at {off} failed: {os.strerror(err)}")
                if buf != data:
                    raise SystemExit(f"swap_io: data read back at {off} differs")
            out["swapin"] = _mbs(size, time.perf_counter() - t)
            out["swapin_pages"] = uvm.uvmexp.swapins - ins
            out["swapin_ios"] = uvm.uvmexp.swap_ins_io
            _drop_host_cache(swap.fd)
            t = time.perf_counter()
            view = memoryview(buf)
            for off in range(0, size, CHUNK):
                os.preadv(swap.fd, [view], off)
            out["raw_read"] = _mbs(size, time.perf_counter() - t)
            await a.destroy()
            await aio.drain()
            bad = audit.audit(uvm) + ubc.audit()
            if bad:
                print("\n".join(bad), file=sys.stderr)
                raise SystemExit(1)
            nursery.cancel_scope.cancel()
    finally:
        uvm.aio = None
        io.close()
        swap.close()
    return out


def _drop_host_cache(fd: int) -> None:
    """Make the next reads of the swap file come from the disk, as a real swap-in does."""
    os.fsync(fd)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def shm_baseline(size: int) -> dict[str, float]:
    """Sequential write and read of ``size`` bytes on a Linux tmpfs, 1 MiB at a time."""
    if not os.path.isdir("/dev/shm"):
        return {}
    data = os.urandom(CHUNK)
    fd, path = tempfile.mkstemp(dir="/dev/shm", prefix="ubcfs-bench-")
    try:
        t = time.perf_counter()
        for off in range(0, size, CHUNK):
            os.pwrite(fd, data, off)
        w = _mbs(size, time.perf_counter() - t)
        buf = bytearray(CHUNK)
        t = time.perf_counter()
        for off in range(0, size, CHUNK):
            os.preadv(fd, [buf], off)
        r = _mbs(size, time.perf_counter() - t)
    finally:
        os.close(fd)
        os.unlink(path)
    return {"write": w, "read": r}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--memory", default="16M", help="simulated memory (default 16M)")
    p.add_argument("--page-size", default="4K", help="simulated page size (default 4K)")
    p.add_argument("--quick", action="store_true", help="4M of memory, for the smoke test")
    p.add_argument("--dir", default=None, help="where the swap file goes (default $TMPDIR)")
    ns = p.parse_args(argv)
    try:
        memory = parse_size("4M" if ns.quick else ns.memory, "--memory")
        page_size = parse_size(ns.page_size, "--page-size")
    except UsageError as e:
        p.error(str(e))
    if page_size < 4096 or page_size > 1 << 16 or page_size & (page_size - 1):
        p.error("--page-size must be a power of two from 4K to 64K")
    if memory < 1 << 20 or memory % CHUNK:
        p.error("--memory must be a whole number of MiB, at least 1M")
    core = native.status()["core"]
    print(f"swap_io: memory {memory >> 20} MiB, {page_size >> 10} KiB pages, {core} core")
    print(
        f"{'data':>8} {'write':>9} {'swapin':>9} {'raw read':>9} {'ratio':>6}"
        f" {'shm wr':>8} {'shm rd':>8}  (MB/s)"
    )
    with tempfile.TemporaryDirectory(dir=ns.dir, prefix="ubcfs-swapio-") as workdir:
        for mult in (1, 8):
            size = mult * memory
            r = trio.run(run_size, memory, page_size, size, workdir)
            shm = shm_baseline(size)
            ratio = r["swapin"] / r["raw_read"]
            verdict = "PASS" if ratio >= 0.5 else "MISS"
            print(
                f"{mult:>7}x {r['write']:9.0f} {r['swapin']:9.0f}"
                f" {r['raw_read']:9.0f} {ratio:6.2f} {shm.get('write', 0):8.0f}"
                f" {shm.get('read', 0):8.0f}  swap-in {verdict} (>= 0.5x raw),"
                f" {r['swapin_pages'] / max(1, r['swapin_ios']):.1f} pages per read,"
                f" {page_size / r['swapin']:.2f} µs per page"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
