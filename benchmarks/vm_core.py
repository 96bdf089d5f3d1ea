"""Micro-benchmarks of the VM core (issue 2, "Performance"): a benchmark, not a test.

Run: ``.venv/bin/python benchmarks/vm_core.py [--json] [--quick]``

Prints, with DIAGNOSTIC off and on side by side:

* page alloc+free pairs per second: ``pagealloc`` into an object whose lock is held (taken
  once around the loop, as getpages holds it across a cluster), then ``pagefree`` of the
  still-busy page by its owner.  Target: at least 500,000 pairs/s with DIAGNOSTIC off.
* a whole page life cycle per second: alloc, clear PG_FAKE, ``page_unbusy``,
  ``pageactivate``, ``pagefree``.
* ``pmap_enter`` + ``pmap_remove`` + ``pmap_update`` of one managed mapping, per second.
* ``store`` and ``load`` of a whole 4 KiB page through a user mapping, per second.

and the Python metadata cost per simulated page of a 1 GiB machine (262,144 pages):
``tracemalloc`` (started after every import) and the growth of VmRSS in /proc/self/status
while the machine is built.  The simulated memory itself is an untouched anonymous mmap and
counts in neither.  Target: at most 200 bytes per page.

Rates are the best of several repeats (the machine is shared and noisy: the best run is the
one least disturbed).  PASS/MISS compares the DIAGNOSTIC-off figure with its target.
``--quick`` runs fewer iterations on a 256 MiB machine, for a smoke test.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ubcfs import native
from ubcfs.vm import diag
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import (
    PG_FAKE,
    page_unbusy,
    pageactivate,
    pagealloc,
    pagefree,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    load,
    pmap_create,
    pmap_enter,
    pmap_remove,
    pmap_update,
    store,
)
from ubcfs.vm.uvm import Uvm

PAGE = 4096
GIB = 1 << 30
TARGET_PAIRS_PER_S = 500_000
TARGET_BYTES_PER_PAGE = 200


@dataclass
class Rate:
    """One timed operation: its name, its target (operations/s; 0 = none)."""

    key: str
    label: str
    run: Callable[[int], None]
    iterations: int
    target: float = 0.0


def best_rate(run: Callable[[int], None], iterations: int, repeats: int) -> float:
    """Operations per second of the fastest of ``repeats`` runs of ``iterations``."""
    run(max(iterations // 10, 1))  # warm up
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        run(iterations)
        best = min(best, time.perf_counter() - t0)
    return iterations / best


# --- the timed loops --------------------------------------------------------------------


def alloc_free_pairs(n: int) -> None:
    uvm = Uvm(1024 * PAGE, page_size=PAGE)
    obj = UvmObject(uvm, "bench")
    alloc, free = pagealloc, pagefree
    with obj.vmobjlock:
        for _ in range(n):
            pg = alloc(uvm, obj, 0)
            assert pg is not None
            free(uvm, pg)


def page_life_cycles(n: int) -> None:
    uvm = Uvm(1024 * PAGE, page_size=PAGE)
    obj = UvmObject(uvm, "bench")
    alloc, free, unbusy, activate = pagealloc, pagefree, page_unbusy, pageactivate
    not_fake = ~PG_FAKE
    for _ in range(n):
        with obj.vmobjlock:
            pg = alloc(uvm, obj, 0)
        assert pg is not None
        pg.flags &= not_fake
        unbusy(uvm, pg)
        activate(uvm, pg)
        free(uvm, pg)


def _mapped_machine() -> tuple[Uvm, int]:
    """A machine with one resident page mapped read-write at va 0x10000 of a user pmap."""
    uvm = Uvm(1024 * PAGE, page_size=PAGE)
    obj = UvmObject(uvm, "bench")
    with obj.vmobjlock:
        pg = pagealloc(uvm, obj, 0)
    assert pg is not None
    pg.flags &= ~PG_FAKE
    page_unbusy(uvm, pg)
    pageactivate(uvm, pg)
    return uvm, 0x10000


def enter_remove_pairs(n: int) -> None:
    uvm, va = _mapped_machine()
    pm = pmap_create(uvm, "bench")
    pg = uvm.pages[0]
    rw = int(Prot.RW)
    enter, remove, update = pmap_enter, pmap_remove, pmap_update
    end = va + PAGE
    for _ in range(n):
        enter(pm, va, pg, rw, 0)
        remove(pm, va, end)
        update(pm)


def page_stores(n: int) -> None:
    uvm, va = _mapped_machine()
    pm = pmap_create(uvm, "bench")
    pmap_enter(pm, va, uvm.pages[0], int(Prot.RW), 0)
    data = bytes(range(256)) * (PAGE // 256)
    st = store
    for _ in range(n):
        st(pm, va, data)


def page_loads(n: int) -> None:
    uvm, va = _mapped_machine()
    pm = pmap_create(uvm, "bench")
    pmap_enter(pm, va, uvm.pages[0], int(Prot.RW), 0)
    ld = load
    for _ in range(n):
        ld(pm, va, PAGE)


# --- memory -----------------------------------------------------------------------------


def rss_bytes() -> int:
    """VmRSS of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def memory_per_page(memory: int) -> dict[str, float]:
    """Bytes of Python metadata per simulated page of a ``memory``-byte machine.

    RSS first (tracemalloc's own bookkeeping would inflate it), then tracemalloc on a second
    build; the first machine is kept alive meanwhile, so the second cannot reuse its memory.
    """
    npages = memory // PAGE
    gc.collect()
    before = rss_bytes()
    first = Uvm(memory, page_size=PAGE)
    rss = (rss_bytes() - before) / npages
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    second = Uvm(memory, page_size=PAGE)
    traced = (tracemalloc.get_traced_memory()[0] - base) / npages
    tracemalloc.stop()
    assert first.uvmexp.npages == second.uvmexp.npages == npages
    del first, second
    gc.collect()
    return {"pages": npages, "tracemalloc_bytes_per_page": traced, "rss_bytes_per_page": rss}


# --- report -----------------------------------------------------------------------------


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead")
    ap.add_argument("--quick", action="store_true", help="fewer iterations, smaller machine")
    args = ap.parse_args(argv)
    scale = 10 if args.quick else 1
    repeats = 3 if args.quick else 5
    memory = GIB // 4 if args.quick else GIB

    # Memory first, in a process that has built nothing yet.
    diag.set_diagnostic(False)
    mem = memory_per_page(memory)

    rates = [
        Rate(
            "alloc_free",
            "page alloc+free pairs/s",
            alloc_free_pairs,
            300_000 // scale,
            TARGET_PAIRS_PER_S,
        ),
        Rate("page_cycle", "alloc+unbusy+activate+free /s", page_life_cycles, 200_000 // scale),
        Rate(
            "enter_remove",
            "pmap_enter+pmap_remove+pmap_update /s",
            enter_remove_pairs,
            100_000 // scale,
        ),
        Rate("store_page", "store 4 KiB through a mapping /s", page_stores, 100_000 // scale),
        Rate("load_page", "load 4 KiB through a mapping /s", page_loads, 100_000 // scale),
    ]
    results: dict[str, dict[str, float]] = {}
    was = diag.DIAGNOSTIC
    try:
        for r in rates:
            results[r.key] = {}
            for name, diagnostic in (("off", False), ("on", True)):
                diag.set_diagnostic(diagnostic)
                results[r.key][name] = best_rate(r.run, r.iterations, repeats)
    finally:
        diag.set_diagnostic(was)

    pairs_ok = results["alloc_free"]["off"] >= TARGET_PAIRS_PER_S
    mem_ok = mem["tracemalloc_bytes_per_page"] <= TARGET_BYTES_PER_PAGE
    loadavg = os.getloadavg()
    info: dict[str, object] = {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "core": native.status()["core"],
        "core_why": native.status()["why"],
        "page_size": PAGE,
        "repeats": repeats,
        "quick": args.quick,
        "loadavg": list(loadavg),
    }
    if args.json:
        out = {
            **info,
            "rates_per_second": results,
            "memory": mem,
            "targets": {
                "alloc_free_pairs_per_second": {
                    "target": TARGET_PAIRS_PER_S,
                    "value": results["alloc_free"]["off"],
                    "pass": pairs_ok,
                },
                "bytes_per_page": {
                    "target": TARGET_BYTES_PER_PAGE,
                    "value": mem["tracemalloc_bytes_per_page"],
                    "pass": mem_ok,
                },
            },
        }
        print(json.dumps(out, indent=2))
        return 0

    print(
        f"ubcfs VM core: {info['core']} ({info['core_why']}),"
        f" {info['implementation']} {info['python']}, page {PAGE} B,"
        f" best of {repeats}, load {loadavg[0]:.2f}{'  (--quick)' if args.quick else ''}"
    )
    print(f"{'':40} {'DIAGNOSTIC off':>15} {'DIAGNOSTIC on':>15}   target")
    for r in rates:
        off, on = results[r.key]["off"], results[r.key]["on"]
        target = ""
        if r.target:
            target = f">= {r.target:,.0f}  {verdict(off >= r.target)}"
        print(f"{r.label:40} {off:>15,.0f} {on:>15,.0f}   {target}".rstrip())
    npages = int(mem["pages"])
    print(f"metadata per page, {npages:,}-page machine ({memory // (1 << 20)} MiB):")
    print(
        f"{'  tracemalloc (after imports)':40} {mem['tracemalloc_bytes_per_page']:>13.1f} B"
        f" {'':>15}   <= {TARGET_BYTES_PER_PAGE} B  {verdict(mem_ok)}"
    )
    print(f"{'  RSS delta (/proc/self/status)':40} {mem['rss_bytes_per_page']:>13.1f} B")
    return 0


if __name__ == "__main__":
    sys.exit(main())
