"""The per-page cost of each step of the data paths, in process (issue 9, point 4).

Run: ``.venv/bin/python benchmarks/page_costs.py [--quick] [--pages N] [--rounds R]
[--json FILE] [--dir DIR]``

One machine (``Uvm``, populated), one UBC window pool (``Ubc``) and one file
(``GenfsNode`` over a backing file in ``--dir``), built from the public VM API only.
Each round takes N pages of the file (default 4096 = 16 MiB; 256 with ``--quick``)
through every step once, in the order a page lives them, and times each step over all N
pages:

=================  ===========================================================================
alloc              ``pagealloc`` into the object, its lock held around the loop (as getpages)
validate           clear PG_FAKE, ``pageactivate``, ``page_unbusy_many`` (what getpages does
                   after a read)
map enter          ``pmap_enter`` of each page into a user pmap, one ``pmap_update``
unmap remove       ``pmap_remove`` + ``pmap_update`` of window-sized ranges of those mappings
map kenter         ``pmap_kenter_pages`` of window-sized runs (the UBC_FAULTBUSY path)
unmap kremove      ``pmap_kremove`` + ``pmap_update`` of those runs
ubc first touch    ``ubc_alloc`` (miss) + ``uiomove`` (read) + ``ubc_release`` per window, the
                   pages resident: each window faults (``ubc_fault``: getpages of resident
                   pages, ``pmap_enter``), then copies
ubc alloc+release  ``ubc_alloc`` + ``ubc_release`` of windows that hit, mappings in place
copy out           ``uiomove`` read (window -> buffer) through mapped windows
copy in            ``uiomove`` write (buffer -> window) through mapped windows
unmap window       ``Ubc.purge``: ``pmap_remove`` + ``pmap_update`` of each idle window
clean              ``pgo_put(PGO_CLEANIT | PGO_SYNCIO)`` of the dirty pages with an I/O layer
                   whose writes complete at once (the cleaning bookkeeping without I/O)
write-back         the same with the real ``BackingIO`` to the backing file (host page cache:
                   ``pwritev`` in a worker thread, no fsync)
free               ``pagefree`` of each page, the object lock held
=================  ===========================================================================

Before "clean" and "write-back" every page is marked dirty (``pagemarkdirty``, untimed).
After the rounds the machine must pass ``ubcfs.vm.audit`` (exit status 1 otherwise).
No engine runs: no pagedaemon, no aiodone daemon, so putpages writes each cluster inline
(on a mount the clusters of one call are in flight together).  The window rows use the
default geometry (64 KiB windows: 16 pages) unless ``--winsize`` says otherwise.

Columns: wall ns per page (median over the rounds, and the best round), pages per second
from the median, and the trio thread's CPU per page (``time.thread_time()``, median).  Wall
is above CPU where worker threads do the work (write-back: ``pwritev``) and wherever the
thread waited for a CPU: on a loaded host the CPU column is the steadier one.  ``--json``
writes the same, with the machine's load before and after.

Only public functions and documented attributes are used (``VmPage.flags``/``phys_addr``,
``UvmObject.vmobjlock``, ``GenfsNode.io``), never the containers behind them, so the tool
keeps working when their representation changes.  What the API lacks for this: a
per-page-run kenter/kremove that is not a loop of single pages is measured as whatever
``pmap_kenter_pages`` does; there is no public null I/O layer, so "clean" subclasses
``BackingIO`` (which must stay subclassable from interpreted code).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trio

from genfs.node import GenfsNode
from pagers.backing_io import BackingIO, IOKind
from ubcfs.vm import diag
from ubcfs.vm.audit import audit
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import (
    PG_FAKE,
    VmPage,
    page_unbusy_many,
    pageactivate,
    pagealloc,
    pagefree,
    pagemarkdirty,
)
from ubcfs.vm.pager import PGO_CLEANIT, PGO_SYNCIO
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    pmap_create,
    pmap_destroy,
    pmap_enter,
    pmap_kenter_pages,
    pmap_kremove,
    pmap_remove,
    pmap_update,
)
from ubcfs.vm.ubc import UBC_READ, UBC_WRITE, Ubc, UbcWindow, Uio
from ubcfs.vm.uvm import Uvm

PAGE = 4096
MiB = 1 << 20
USER_VA = 1 << 30  # where the user pmap maps the pages
KENTER_VA = 1 << 44  # kernel VA for the kenter runs, far above the UBC windows

# (key, label) in the order of the table
STEPS: tuple[tuple[str, str], ...] = (
    ("alloc", "alloc: pagealloc"),
    ("validate", "validate: clear PG_FAKE, activate, unbusy"),
    ("map_enter", "map: pmap_enter + pmap_update"),
    ("unmap_remove", "unmap: pmap_remove + pmap_update (window ranges)"),
    ("map_kenter", "map: pmap_kenter_pages (window runs)"),
    ("unmap_kremove", "unmap: pmap_kremove + pmap_update (window runs)"),
    ("ubc_first", "ubc first touch: alloc miss + fault + copy out"),
    ("ubc_hit", "ubc_alloc + ubc_release (hit)"),
    ("copy_out", "copy out: uiomove read, window mapped"),
    ("copy_in", "copy in: uiomove write, window mapped"),
    ("unmap_window", "unmap window: Ubc.purge (pmap_remove + update)"),
    ("clean", "clean: putpages CLEANIT+SYNCIO, instant I/O"),
    ("writeback", "write-back: putpages CLEANIT+SYNCIO to a file"),
    ("free", "free: pagefree"),
)


class InstantIO(BackingIO):
    """A backing I/O edge whose writes complete at once without doing any I/O."""

    async def writev(
        self, fd: int, views: list[memoryview], offset: int, kind: IOKind = IOKind.WRITE
    ) -> tuple[int, int]:
        return 0, sum(len(v) for v in views)


@dataclass
class Timing:
    wall_s: list[float] = field(default_factory=list)
    thread_s: list[float] = field(default_factory=list)


class Rig:
    """One machine, one window pool and one file of ``npages`` pages."""

    def __init__(self, npages: int, winsize: int, directory: str | None) -> None:
        self.npages = npages
        self.winsize = winsize
        self.per_win = winsize // PAGE
        if npages % self.per_win:
            raise ValueError(f"--pages must be a multiple of {self.per_win}")
        self.nwins = npages // self.per_win
        memory = max(4 * npages * PAGE, 8 * MiB)
        self.uvm = Uvm(memory, PAGE, populate=True)
        self.ubc = Ubc(self.uvm, nwins=self.nwins, winsize=winsize)
        fd, self.path = tempfile.mkstemp(prefix="page-costs-", dir=directory)
        os.ftruncate(fd, npages * PAGE)
        self.fd = fd
        self.real_io = BackingIO()
        self.instant_io = InstantIO()
        self.node = GenfsNode(self.uvm, "page-costs", fd, npages * PAGE, self.real_io)
        self.uobj: UvmObject = self.node.uobj
        self.buf = memoryview(bytearray(winsize))
        self.times: dict[str, Timing] = {k: Timing() for k, _ in STEPS}
        self.pages: list[VmPage] = []

    def close(self) -> None:
        """Close and delete the backing file.  The machine stays (its audit, and the test
        suite's, read it afterwards); its memory goes with the rig.  The I/O threads stop."""
        self.real_io.close()
        self.instant_io.close()
        os.close(self.fd)
        os.unlink(self.path)

    @contextmanager
    def timed(self, key: str) -> Iterator[None]:
        gc.collect()
        th0 = time.thread_time()
        t0 = time.perf_counter()
        yield
        t1 = time.perf_counter()
        th1 = time.thread_time()
        self.times[key].wall_s.append(t1 - t0)
        self.times[key].thread_s.append(th1 - th0)

    def mark_dirty(self) -> None:
        with self.uobj.vmobjlock:
            for pg in self.pages:
                pagemarkdirty(pg)

    async def windows(self, flags: int) -> list[tuple[UbcWindow, int, int]]:
        out = []
        for w in range(self.nwins):
            err, win, va, n = await self.ubc.ubc_alloc(
                self.uobj, w * self.winsize, self.winsize, flags
            )
            if err or n != self.winsize:
                raise RuntimeError(f"ubc_alloc at window {w}: errno {err}, {n} bytes")
            out.append((win, va, n))
        return out

    async def copy(self, wins: list[tuple[UbcWindow, int, int]], write: bool) -> None:
        uiomove = self.ubc.uiomove
        buf = self.buf
        for win, va, n in wins:
            err = await uiomove(win, va, n, Uio(buf), write)
            if err:
                raise RuntimeError(f"uiomove: errno {err}")

    async def one_round(self) -> None:
        uvm, uobj, ubc, n = self.uvm, self.uobj, self.ubc, self.npages
        ws, per_win = self.winsize, self.per_win
        rw = int(Prot.RW)

        with self.timed("alloc"), uobj.vmobjlock:
            pages = [pagealloc(uvm, uobj, i * PAGE) for i in range(n)]
        if any(pg is None for pg in pages):
            raise RuntimeError("pagealloc failed: the machine is too small")
        self.pages = [pg for pg in pages if pg is not None]
        not_fake = ~PG_FAKE

        with self.timed("validate"):
            for pg in self.pages:
                pg.flags &= not_fake
                pageactivate(uvm, pg)
            page_unbusy_many(uvm, self.pages)

        pm = pmap_create(uvm, "page-costs")
        with self.timed("map_enter"):
            for i, pg in enumerate(self.pages):
                pmap_enter(pm, USER_VA + i * PAGE, pg, rw, 0)
            pmap_update(pm)
        with self.timed("unmap_remove"):
            for w in range(self.nwins):
                va = USER_VA + w * ws
                pmap_remove(pm, va, va + ws)
                pmap_update(pm)
        pmap_destroy(pm)

        kpm = uvm.kernel_pmap
        runs = [
            [pg.phys_addr for pg in self.pages[w * per_win : (w + 1) * per_win]]
            for w in range(self.nwins)
        ]
        with self.timed("map_kenter"):
            for w, pas in enumerate(runs):
                pmap_kenter_pages(kpm, KENTER_VA + w * ws, pas, rw)
        with self.timed("unmap_kremove"):
            for w in range(self.nwins):
                pmap_kremove(kpm, KENTER_VA + w * ws, ws)
                pmap_update(kpm)

        with self.timed("ubc_first"):
            for w in range(self.nwins):
                err, win, va, got = await ubc.ubc_alloc(uobj, w * ws, ws, UBC_READ)
                if not err:
                    err = await ubc.uiomove(win, va, got, Uio(self.buf), False)
                ubc.ubc_release(win, err)
                if err:
                    raise RuntimeError(f"first touch of window {w}: errno {err}")

        # Window hits: alloc every window, then release them; the copies in between.
        gc.collect()
        th0, t0 = time.thread_time(), time.perf_counter()
        wins = await self.windows(UBC_READ | UBC_WRITE)
        t1, th1 = time.perf_counter(), time.thread_time()
        with self.timed("copy_out"):
            await self.copy(wins, write=False)
        with self.timed("copy_in"):
            await self.copy(wins, write=True)
        t2, th2 = time.perf_counter(), time.thread_time()
        for win, _, _ in wins:
            ubc.ubc_release(win, 0)
        t3, th3 = time.perf_counter(), time.thread_time()
        self.times["ubc_hit"].wall_s.append((t1 - t0) + (t3 - t2))
        self.times["ubc_hit"].thread_s.append((th1 - th0) + (th3 - th2))

        with self.timed("unmap_window"):
            ubc.purge(uobj)

        node = self.node
        self.mark_dirty()
        node.io = self.instant_io
        with self.timed("clean"):
            err = await node.put(uobj, 0, 0, PGO_CLEANIT | PGO_SYNCIO)
        if err:
            raise RuntimeError(f"clean: errno {err}")
        self.mark_dirty()
        node.io = self.real_io
        with self.timed("writeback"):
            err = await node.put(uobj, 0, 0, PGO_CLEANIT | PGO_SYNCIO)
        if err:
            raise RuntimeError(f"write-back: errno {err}")

        with self.timed("free"), uobj.vmobjlock:
            for pg in self.pages:
                pagefree(uvm, pg)
        self.pages = []
        if uobj.npages:
            raise RuntimeError(f"{uobj.npages} pages left in the object")


def summarize(rig: Rig) -> list[dict[str, Any]]:
    out = []
    n = rig.npages
    for key, label in STEPS:
        t = rig.times[key]
        med = statistics.median(t.wall_s)
        out.append(
            {
                "op": key,
                "label": label,
                "pages": n,
                "rounds": len(t.wall_s),
                "ns_per_page": med / n * 1e9,
                "ns_per_page_best": min(t.wall_s) / n * 1e9,
                "pages_per_s": n / med if med > 0 else float("inf"),
                "thread_ns_per_page": statistics.median(t.thread_s) / n * 1e9,
            }
        )
    return out


def print_table(rows: list[dict[str, Any]], header: str) -> None:
    print(header)
    print()
    print("| op | ns/page | best | pages/s | CPU ns/page |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['label']} | {r['ns_per_page']:,.0f} | {r['ns_per_page_best']:,.0f}"
            f" | {r['pages_per_s']:,.0f} | {r['thread_ns_per_page']:,.0f} |"
        )


def code_version() -> str:
    """The last commit that changed ubcfs/, genfs/ or pagers/ ("+dirty": local changes)."""
    top = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ["--", "ubcfs", "genfs", "pagers"]

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", top, *argv], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        last = git("log", "-1", "--format=%h", *code)
        dirty = git("status", "--porcelain", "--untracked-files=no", *code)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return last + ("+dirty" if dirty else "")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="256 pages, 1 round (a smoke test)")
    ap.add_argument("--pages", type=int, help="pages per round (default 4096)")
    ap.add_argument("--rounds", type=int, help="rounds (default 9; 1 with --quick)")
    ap.add_argument("--winsize", default=64 * 1024, type=int, help="UBC window bytes (64 KiB)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--dir", help="directory of the backing file (default: $TMPDIR)")
    args = ap.parse_args(argv)
    npages: int = args.pages if args.pages is not None else (256 if args.quick else 4096)
    rounds: int = args.rounds if args.rounds is not None else (1 if args.quick else 9)
    if npages < 1 or rounds < 1:
        ap.error("--pages and --rounds must be at least 1")
    if args.winsize < PAGE or args.winsize % PAGE:
        ap.error(f"--winsize must be a multiple of {PAGE}")
    try:
        rig = Rig(npages, args.winsize, args.dir)
    except ValueError as e:
        ap.error(str(e))

    async def run() -> None:
        for _ in range(rounds):
            await rig.one_round()

    load0 = os.getloadavg()[0]
    try:
        trio.run(run)
    finally:
        rig.close()
    load1 = os.getloadavg()[0]
    violations = audit(rig.uvm)
    if violations:
        print(f"page_costs: the machine fails its audit: {violations[:5]}", file=sys.stderr)
        return 1
    import ubcfs.vm.uvm as uvm_mod

    compiled = not (uvm_mod.__file__ or "").endswith(".py")
    version = code_version()
    rows = summarize(rig)
    header = (
        f"per-page costs, code {version} ({'compiled' if compiled else 'interpreted'}),"
        f" DIAGNOSTIC {'ON' if diag.DIAGNOSTIC else 'off'}; {npages} pages of {PAGE} B,"
        f" {args.winsize // PAGE}-page windows, {rounds} round(s), median and best round;"
        f" python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load {load0:.2f} -> {load1:.2f}"
    )
    print_table(rows, header)
    if args.json:
        doc = {
            "code": version,
            "compiled": compiled,
            "diagnostic": diag.DIAGNOSTIC,
            "pages": npages,
            "rounds": rounds,
            "winsize": args.winsize,
            "python": sys.version.split()[0],
            "machine": platform.machine(),
            "cpus": os.cpu_count(),
            "load_start": load0,
            "load_end": load1,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
