"""What the event history (``ubcfs.vm.hist``) costs: sequential throughput of the engine
with the history on (the default ring) and off, side by side in one run.

Run: ``.venv/bin/python benchmarks/hist_cost.py [--size 256M] [--memory 64M] [--rounds 7]
[--dir DIR]``

Each round runs, for "on" and for "off" in an order that alternates from round to round, on
a fresh engine each time (``Engine(..., populate=True)``, the default tunables):

* ``write``: ``--size`` written in 1 MiB requests into a new file with ``--memory`` of
  engine memory (the pagedaemon pages out throughout), then fsync + release;
* ``read``: the file read back in 1 MiB requests by a fresh engine (its cache cold; the
  host's page cache warm, as for every row).

The table gives the medians in MB/s (10^6 bytes), the spread (min-max), the ratio on/off of
the medians, the events logged per MiB, and the verdict against issue 12's bound (the
history may be on by default only if it costs under 3% of sequential throughput).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine import engine  # benchmarks/engine.py, beside this file

from ubcfs import native, options
from ubcfs.vm.hist import UvmHist

MiB = 1 << 20
REQ = MiB


async def one(tmp: Path, size: int, memory: int, on: bool) -> tuple[float, float, int]:
    """(write MB/s, read MB/s, events) of one run."""
    path = tmp / "f"
    chunk = os.urandom(REQ)
    events = 0
    async with engine(memory) as eng:
        eng.uvm.hist = UvmHist() if on else None
        t0 = time.perf_counter()
        vp = await eng.open(str(path))
        for off in range(0, size, REQ):
            err, _ = await eng.write(vp, off, chunk)
            if err:
                raise RuntimeError(f"write: errno {err}")
        if await eng.fsync(vp) or await eng.release(vp):
            raise RuntimeError("fsync/release failed")
        wt = time.perf_counter() - t0
        if eng.uvm.hist is not None:
            events += eng.uvm.hist.seq
    async with engine(memory) as eng:
        eng.uvm.hist = UvmHist() if on else None
        t0 = time.perf_counter()
        vp = await eng.open(str(path))
        for off in range(0, size, REQ):
            err, data = await eng.read(vp, off, REQ)
            if err or len(data) != REQ:
                raise RuntimeError(f"read: errno {err}")
        if await eng.release(vp):
            raise RuntimeError("release failed")
        rt = time.perf_counter() - t0
        if eng.uvm.hist is not None:
            events += eng.uvm.hist.seq
    path.unlink()
    return size / wt / 1e6, size / rt / 1e6, events


async def run(args: argparse.Namespace, size: int, memory: int) -> None:
    results: dict[bool, list[tuple[float, float, int]]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        tmp = Path(d)
        await one(tmp, min(size, 32 * MiB), memory, True)  # warm-up, not counted
        for r in range(args.rounds):
            for on in (True, False) if r % 2 == 0 else (False, True):
                results[on].append(await one(tmp, size, memory, on))
                print(".", end="", flush=True)
    print()
    print(f"{'job':<8} {'hist on MB/s':>18} {'hist off MB/s':>18} {'on/off':>7}")
    verdict = []
    for i, job in enumerate(("write", "read")):
        with_h = [float(x[i]) for x in results[True]]
        without = [float(x[i]) for x in results[False]]
        ratio = statistics.median(with_h) / statistics.median(without)
        verdict.append(ratio)
        print(
            f"{job:<8} {statistics.median(with_h):>7.0f} ({min(with_h):.0f}-{max(with_h):.0f})"
            f" {statistics.median(without):>8.0f} ({min(without):.0f}-{max(without):.0f})"
            f" {ratio:>7.3f}"
        )
    per_mib = statistics.median(x[2] for x in results[True]) / (2 * size / MiB)
    print(f"events logged: {per_mib:.1f} per MiB moved (write + read)")
    h = UvmHist()
    n = 200_000
    t0 = time.perf_counter()
    for i in range(n):
        h.log("getpages", "f", i, 1)  # from a Python loop: an upper bound
    per_event = (time.perf_counter() - t0) / n
    slowest = min(statistics.median(float(x[0]) for x in results[False]), 1e9)  # MB/s
    bound = per_mib * per_event * slowest * 1e6 / MiB
    print(
        f"one event: {per_event * 1e9:.0f} ns, so at {slowest:.0f} MB/s the history costs at"
        f" most {100 * bound:.3f}% (events x cost / time per MiB)"
    )
    worst = min(verdict)
    print(
        f"cost: {100 * (1 - worst):.1f}% of sequential throughput at worst"
        f" ({'PASS' if worst >= 0.97 else 'MISS'} against 3%)"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--size", default="256M", help="bytes per job (default 256M)")
    p.add_argument("--memory", default="64M", help="engine memory (default 64M)")
    p.add_argument("--rounds", type=int, default=7, help="rounds (default 7)")
    p.add_argument("--dir", default=None, help="directory for the file (default: $TMPDIR)")
    args = p.parse_args()
    try:
        size = options.parse_size(args.size, "--size")
        memory = options.parse_size(args.memory, "--memory")
    except options.UsageError as e:
        sys.exit(f"hist_cost.py: {e}")
    if size % REQ or size <= 0 or args.rounds < 1:
        sys.exit("hist_cost.py: --size must be a positive multiple of 1M, --rounds >= 1")
    core = native.status()
    print(
        f"{core['core']} core; {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f};"
        f" {args.size} per job, memory {args.memory}, {args.rounds} rounds"
    )
    trio.run(run, args, size, memory)


if __name__ == "__main__":
    main()
