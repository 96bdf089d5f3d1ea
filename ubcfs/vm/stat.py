"""VM counters and page counts (~ uvmexp in uvm_extern.h, uvm_meter.c).

``Uvmexp`` holds two kinds of numbers: page counts (``free``, ``active``, ...), which the
page layer keeps exact and the DIAGNOSTIC audit recounts, and event counters, which only
ever grow while a machine lives.  ``snapshot()`` builds the report that ``ubcfs stat --json``
prints (design.md section 4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ubcfs.vm.uvm import Uvm

# The event counters that design.md section 4 names, in its order: the stat contract.
CONTRACT_COUNTERS = [
    "faults",
    "pageins",
    "pageouts",
    "swapins",
    "swapouts",
    "pdwoke",
    "pdscans",
    "pdreact",
    "pdfreed",
    "pdpageouts",
    "pageout_failed",
    "zero_fills",
    "fastpath_skipped_zero",
    "overwrite_skipped_read",
    "readahead_pages",
    "ubc_hits",
    "ubc_misses",
    "unwire_skips",
    "pmap_enter",
    "pmap_remove",
    "pmap_update",
    "canfail_retries",
]


@dataclass(slots=True)
class Uvmexp:
    """Page counts, paging targets and event counters (kernel: struct uvmexp)."""

    # --- sizes (kept exact; audited) ---
    npages: int = 0
    free: int = 0
    active: int = 0
    inactive: int = 0
    paging: int = 0  # pages with PG_PAGEOUT (pageout I/O in flight)
    wired: int = 0
    zeropages: int = 0  # free pages known to be zero
    anonpages: int = 0  # pages owned by anons and anonymous objects
    filepages: int = 0  # pages owned by vnode objects
    kernelpages: int = 0  # objectless, anonless kernel pages
    # --- targets ---
    reserve_pagedaemon: int = 1
    reserve_kernel: int = 5
    freemin: int = 0
    freetarg: int = 0
    inactarg: int = 0
    wiredmax: int = 0
    # --- event counters (design.md section 4) ---
    faults: int = 0
    pageins: int = 0  # pages read from backing store
    pageouts: int = 0  # pages written to backing store (any putpages)
    swapins: int = 0  # pages read from swap
    swapouts: int = 0  # pages written to swap
    pdwoke: int = 0
    pdscans: int = 0
    pdreact: int = 0
    pdfreed: int = 0  # pages freed on behalf of the pagedaemon
    pdpageouts: int = 0  # pageout I/Os (clusters) the pagedaemon started
    pageout_failed: int = 0  # pages whose write failed (they stay dirty)
    zero_fills: int = 0  # whole pages zero-filled in memory instead of read
    fastpath_skipped_zero: int = 0  # extending-write pages neither read nor zeroed
    overwrite_skipped_read: int = 0  # pages inside the file overwritten whole, not read first
    readahead_pages: int = 0
    ubc_hits: int = 0
    ubc_misses: int = 0
    unwire_skips: int = 0
    pmap_enter: int = 0
    pmap_remove: int = 0
    pmap_update: int = 0
    canfail_retries: int = 0
    # --- more event counters ---
    pga_zerohit: int = 0
    pga_zeromiss: int = 0
    pga_fail: int = 0  # allocations refused for lack of memory
    pdkicks: int = 0  # UVM_KICK_PDAEMON wake-ups requested
    pmap_enter_fail: int = 0  # PMAP_CANFAIL entries refused for lack of pv entries
    pmap_kenter: int = 0
    pmap_kremove: int = 0
    pmap_page_protect: int = 0
    pmap_invalidations: int = 0  # stale translations flushed by pmap_update
    pmap_stale_hits: int = 0  # accesses served by a not-yet-flushed translation
    pmap_wired_removed: int = 0  # wired mappings removed by pmap_page_protect
    uvm_wait_timeouts: int = 0  # uvm_wait with nobody able to free memory
    pdbusy: int = 0  # busy pages the pagedaemon skipped
    pddeact: int = 0  # pages the active scan deactivated
    pdreanon: int = 0  # swap-backed pages reactivated for want of swap
    pdpending: int = 0  # pageout I/Os in flight
    pdrevs: int = 0  # pagedaemon passes
    pgpgin_io: int = 0  # read I/O operations (clusters)
    pgpgout_io: int = 0  # write I/O operations (clusters)
    putpages_scanned: int = 0  # pages putpages looked at (cleaning visits the dirty set only)
    write_errors: int = 0  # failed backing writes (pages stay dirty)
    read_errors: int = 0  # failed backing reads
    # --- fallocate (ubcfs.vfs.vnops.vop_fallocate) ---
    fallocs: int = 0  # fallocate requests done, any mode
    falloc_punches: int = 0  # ... of which FALLOC_FL_PUNCH_HOLE
    falloc_zero_ranges: int = 0  # ... of which FALLOC_FL_ZERO_RANGE
    falloc_failed: int = 0  # fallocate requests the backing file system refused
    punched_pages: int = 0  # resident pages freed, unwritten, by a punch or zero range
    punch_edge_pages: int = 0  # partial pages at a punched or zeroed range's ends, zeroed
    wb_retries: int = 0  # background writes of files whose write-back was failing
    wb_deferred: int = 0  # dirty pages not written yet: their file waits for its retry time
    wb_timeouts: int = 0  # allocations failed with the write-back error (--writeback-timeout)
    wb_log_suppressed: int = 0  # write-failure log lines left out (one per file per 10 s)
    pdholds: int = 0  # pagedaemon sleeps until a retry time (nothing else to reclaim)
    # --- swap (pagers.swap; kernel: uvmexp.swpages .. swpgonly and the swap counters) ---
    swpgonly: int = 0  # good slots holding the only copy of a page (no resident page)
    swap_ins_io: int = 0  # swap read I/Os (a fault's page and its read-ahead)
    swap_outs_io: int = 0  # swap-out cluster writes started
    swap_write_errors: int = 0  # failed swap-out clusters (their pages stay dirty, resident)
    swap_read_errors: int = 0  # failed swap-ins (the slot is marked bad, the fault fails)
    swap_alloc_fail: int = 0  # pageouts that found no free slot
    swap_shortage_drops: int = 0  # slots of resident pages freed by the active scan
    cow_copies: int = 0  # pages copied to a new anon (amap_cow_now, a fault's COW or promotion)
    fault_intrsafe: int = 0  # faults refused on an interrupt-safe map
    fault_nomem: int = 0  # faults that gave up waiting for memory (ENOMEM)
    shared_wired_kept: int = 0  # wired MAP_SHARED mappings kept through a shared-amap copy
    gop_allocs: int = 0  # hole pages given backing blocks at a process's write fault
    holes_rdonly: int = 0  # hole pages marked PG_RDONLY at a process's read fault
    aobj_nomem: int = 0  # aobj allocations failed with ENOSPC: no memory and no swap room

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def snapshot(uvm: Uvm) -> dict[str, Any]:
    """The report of ``ubcfs stat --json``: page states, counters, swap use, the
    write-back failure state and the replacement policy's queues and counters (``pdpolicy``,
    its ``name`` and ``PdPolicy.report``).

    ``dirty`` counts owned pages whose PG_CLEAN is clear or whose pmap modified bit is set:
    a walk of the owned pages, fine for a report, never done on a hot path.  In
    ``writeback``, ``waiting_pages`` counts the dirty pages of the files whose write-back
    failed (they all wait for a successful write), ``failed_pages`` those whose own last
    write failed.
    """
    exp = uvm.uvmexp
    dirty = 0
    waiting = 0
    stuck = uvm.wbfail.objects
    for pg in uvm.pages:
        if (pg.uobject is not None or pg.uanon is not None) and (
            not pg.flags & 0x0008 or pg.mdattrs & 0x2  # PG_CLEAN, MD_MODIFIED
        ):
            dirty += 1
            if pg.uobject in stuck:
                waiting += 1
    data = exp.as_dict()
    return {
        "page_size": uvm.page_size,
        "pages": {
            "total": exp.npages,
            "free": exp.free,
            "active": exp.active,
            "inactive": exp.inactive,
            "wired": exp.wired,
            "dirty": dirty,
            "file": exp.filepages,
            "anon": exp.anonpages,
            "paging": exp.paging,
            "kernel": exp.kernelpages,
            "zero": exp.zeropages,
        },
        "counters": {name: data[name] for name in CONTRACT_COUNTERS}
        | {
            name: data[name]
            for name in data
            if name not in CONTRACT_COUNTERS and name not in _SIZES_AND_TARGETS
        },
        "targets": {name: data[name] for name in _TARGETS},
        "swap": {"total": uvm.swap_total(), "used": uvm.swap_used(), "bad": uvm.swap_bad()},
        "writeback": {"waiting_pages": waiting} | uvm.wbfail.report(),
        "pdpolicy": {"name": uvm.pdpolicy.name} | uvm.pdpolicy.report(),
    }


_TARGETS = ("reserve_pagedaemon", "reserve_kernel", "freemin", "freetarg", "inactarg", "wiredmax")
_SIZES = [
    "npages",
    "free",
    "active",
    "inactive",
    "paging",
    "wired",
    "zeropages",
    "anonpages",
    "filepages",
    "kernelpages",
]
_SIZES_AND_TARGETS = frozenset((*_SIZES, *_TARGETS))
