"""The pagedaemon, the mechanism half of page replacement (~ uvm_pdaemon.c: uvm_pageout,
uvmpd_scan, uvmpd_scan_queue; the policy half is ``ubcfs.vm.pdpolicy``, as NetBSD split
them in uvm_pdpolicy.h).

Theory of operation
-------------------
A trio task sleeps until an allocation finds memory short (``Uvm.kick_pdaemon``: below
``freemin``, or below ``freetarg`` with the policy wanting a scan), then scans; once woken,
the reclaim scan goes on until ``free + paging`` reaches four times ``freetarg`` (as 1.39
computes it), so that one wake-up frees a batch instead of the daemon being woken by nearly
every allocation below the target.  A pass is:

* **the reclaim scan** (``scan_queue``): the policy names victims one at a time
  (``selectvictim``: the clock walks its inactive queue, reactivating referenced pages;
  CLOCK-Pro runs its cold and hot hands), and the daemon reclaims each.  Busy pages are
  skipped.  For a file page the daemon asks the pager to clean and free it:
  ``pgo_put(obj, off, off + PAGE_SIZE, CLEANIT | FREE | PDAEMON)``.  genfs_putpages checks
  "modified" (only when PG_CLEAN is set), frees a clean page at once, and writes a dirty one
  (clustered with dirty neighbours) asynchronously with PG_PAGEOUT set: the aiodone daemon
  frees it when the write completes, or withdraws PG_PAGEOUT and keeps it dirty if the write
  failed.  Pages are dispatched on PQ_SWAPBACKED, as NetBSD does: an anon's or an aobj's
  page goes to the swap pager (``Uvm.swap``), which frees it if clean (its slot holds the
  data) or adds it to a swap-out cluster; without swap, or without a free slot, it is
  reactivated, and after ``NUMDIRTYREACTS`` such pages the scan ends.  An objectless page is
  reactivated.
* **balancing** (the policy's ``balancequeue``): the clock refills its inactive queue up to
  ``inactarg`` from the active head; both policies free swap slots of resident pages when
  every slot is allocated but some hold copies of resident pages (``swap_shortage``).

* **failing write-back** (``ubcfs.vm.wbfail``): a dirty page whose file's writes keep
  failing and whose retry time has not come is reactivated, not written (``wb_deferred``),
  and the clock's balancing leaves such pages active, so the inactive queue fills with
  pages that can go.  A pass that freed nothing and had to leave such pages ends there, and
  the daemon sleeps until the earliest retry time (at most ``HOLD_MAX``), or until a failing
  file's write succeeds, ignoring kicks meanwhile (``pdholds``): the allocations that kick
  it would only make it meet the same pages again.  So a store that keeps failing costs one
  write per file per backoff period, not a busy loop.

The scan awaits only inside ``pgo_put``; the policy keeps its place across it and checks it
when asked for the next victim (the clock restarts from the head when its next page left
the queue meanwhile).  The daemon never sleeps on a busy page and never allocates, so it
cannot deadlock with the tasks it serves; sleepers in ``uvm_wait`` are woken after each
pass and after each I/O completion.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING, Final

import trio

from ubcfs.vm.page import PG_BUSY, PG_CLEAN, PQ_SWAPBACKED, pageactivate, pagefree
from ubcfs.vm.pager import PGO_CLEANIT, PGO_FREE, PGO_PDAEMON, SWAP_FREED, SWAP_KEEP
from ubcfs.vm.pmap import pmap_is_modified, pmap_page_protect

if TYPE_CHECKING:
    from ubcfs.vm.uvm import Uvm

log = logging.getLogger(__name__)

# The longest the daemon sleeps, ignoring kicks, when every page it could reclaim is dirty
# and waits for its file's write-back retry time: new clean pages (a reader's) may appear.
HOLD_MAX: Final = 1.0

# Dirty swap-backed pages reactivated in one inactive scan because swap is full, after which
# the scan ends (kernel: UVMPD_NUMDIRTYREACTS): without a bound a queue of such pages would
# be cycled through again and again.
NUMDIRTYREACTS: Final = 16


class Pagedaemon:
    """The pagedaemon task of one machine (kernel: uvm_pageout).

    Start it with ``await nursery.start(daemon.run)``; it registers itself as the machine's
    wake-up and runs until cancelled.
    """

    def __init__(self, uvm: Uvm) -> None:
        self.uvm = uvm
        self._wake = trio.Event()
        self._woken = False  # _wake is set (a plain flag: the test runs on every kick)
        self._scanning = False
        # The earliest retry time of the dirty pages the current pass had to leave because
        # their file's write-back is failing (inf: none), and whether the pass freed any.
        self.retry_at = math.inf
        self.freed_any = False

    def wakeup(self) -> None:
        """Wake the daemon (kernel: wakeup(&uvm.pagedaemon)); cheap when already awake."""
        if not self._woken:
            self._woken = True
            self._wake.set()

    def needs_scan(self) -> bool:
        """Is memory short? (kernel: the tests in uvm_pageout)."""
        uvm = self.uvm
        exp = uvm.uvmexp
        return uvm.free_short() or (
            exp.free + exp.paging < uvm.free_target() * 2 and uvm.pdpolicy.needsscan()
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        uvm = self.uvm
        uvm.set_pdaemon_wakeup(self.wakeup)
        uvm.pdaemon_running = True
        task_status.started()
        try:
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                self._woken = False
                uvm.uvmexp.pdwoke += 1
                progress = await self.pass_()
                if not self.freed_any and self.retry_at < math.inf:
                    await self._hold(self.retry_at)
                elif progress:
                    uvm.pages_freed()
                # Without progress the sleepers are woken by I/O completions (or their
                # timeout), not here: waking them only to fail again would spin.
        finally:
            uvm.pdaemon_running = False
            uvm.set_pdaemon_wakeup(None)

    async def pass_(self) -> bool:
        """Scan until memory is no longer short or a scan makes no progress; return whether
        any page was freed, put under pageout or deactivated.

        => sets ``freed_any`` and ``retry_at`` (the earliest retry time of dirty pages left
           for their file's write-back backoff; inf if none).
        """
        uvm = self.uvm
        exp = uvm.uvmexp
        progress = False
        self.retry_at = math.inf
        self.freed_any = False
        if self._scanning:
            return False
        self._scanning = True
        try:
            for _ in range(8):
                if not self.needs_scan():
                    break
                uvm.tune()
                exp.pdrevs += 1
                freed = await self.scan_queue()
                moved = uvm.pdpolicy.balancequeue(self, self.swap_shortage())
                if not freed and not moved:
                    break
                progress = True
                if freed:
                    self.freed_any = True
                    uvm.pages_freed()
                elif self.retry_at < math.inf:
                    # Nothing freed and pages left for their retry time: another round now
                    # would meet the same pages (the deactivated ones cycle back).
                    break
                await trio.lowlevel.checkpoint()
        finally:
            self._scanning = False
        return progress

    async def scan_queue(self) -> int:
        """Reclaim the policy's victims until free memory is plentiful or the policy has
        none left (kernel: uvmpd_scan_queue); return the number of pages freed or put under
        pageout.

        => awaits only inside ``pgo_put``; the policy keeps its place across it and looks
           again at what changed meanwhile.
        """
        uvm = self.uvm
        exp = uvm.uvmexp
        ps = uvm.page_size
        wbf = uvm.wbfail
        policy = uvm.pdpolicy
        progress = 0
        dirtyreacts = 0
        policy.scaninit()
        while not uvm.free_plenty():
            pg = policy.selectvictim()
            if pg is None:
                break
            if pg.flags & PG_BUSY:
                exp.pdbusy += 1
                continue
            uobj = pg.uobject
            if pg.pqflags & PQ_SWAPBACKED:
                # An anon's or an aobj's page (kernel: the PQ_SWAPBACKED branch of
                # uvmpd_scan_queue): the swap pager frees it if clean, else clusters it;
                # with no swap, or no slot for it, it stays (reactivated, a bounded number
                # per scan).
                outcome = SWAP_KEEP if uvm.swap is None else uvm.swap.pageout(pg)
                if outcome == SWAP_KEEP:
                    pageactivate(uvm, pg)
                    exp.pdreanon += 1
                    dirtyreacts += 1
                    if dirtyreacts >= NUMDIRTYREACTS:
                        break
                else:
                    progress += 1
                    if outcome == SWAP_FREED:
                        exp.pdfreed += 1
            elif uobj is not None and uobj.pgops is not None:
                # The daemon locks out of order, so it only tries (and skips on failure).
                if not uobj.vmobjlock.try_enter():
                    continue
                uobj.vmobjlock.exit()
                if pg.flags & PG_CLEAN:
                    # "modified" is consulted only when PG_CLEAN is set, and is final once
                    # the mappings are gone.  A clean page is freed right here; only a dirty
                    # one needs the pager (the kernel makes a pgo_put call for both).
                    pmap_page_protect(uvm, pg, 0)
                    if not pmap_is_modified(pg):
                        pagefree(uvm, pg)
                        exp.pdfreed += 1
                        progress += 1
                        continue
                if wbf.objects:
                    retry_at = wbf.backoff(uobj, trio.current_time())
                    if retry_at:
                        # Dirty, and its file's write-back fails and waits for its retry
                        # time: writing it now would only fail again.  Keep it (reactivated)
                        # and note when the file may be tried again.
                        pageactivate(uvm, pg)
                        exp.wb_deferred += 1
                        self.retry_at = min(self.retry_at, retry_at)
                        continue
                before = exp.free + exp.paging
                await uobj.pgops.put(
                    uobj, pg.offset, pg.offset + ps, PGO_CLEANIT | PGO_FREE | PGO_PDAEMON
                )
                progress += max(0, exp.free + exp.paging - before)
            else:
                # An objectless page: cannot be reclaimed.
                pageactivate(uvm, pg)
                exp.pdreanon += 1
        if uvm.swap is not None:
            uvm.swap.flush()
        return progress

    def swap_shortage(self) -> int:
        """How many swap slots of resident pages to free (kernel: swap_shortage in
        uvmpd_scan): every slot is allocated but some hold copies of resident pages, so
        dirty swap-backed pages cannot be paged out until those slots are freed (PG_CLEAN
        cleared first)."""
        uvm = self.uvm
        exp = uvm.uvmexp
        swap = uvm.swap
        if swap is not None and exp.free < exp.freetarg and swap.short():
            return exp.freetarg - exp.free
        return 0

    async def _hold(self, until: float) -> None:
        """Sleep until ``until`` (the earliest retry time of a failing file), at most
        ``HOLD_MAX`` seconds, or until a failing file's write succeeds -- whatever kicks come
        meanwhile: a pass before then would meet the same unwritable pages and free nothing.
        Kicks are not lost: ``_wake`` stays set for the next pass."""
        uvm = self.uvm
        uvm.uvmexp.pdholds += 1
        changed = uvm.wbfail.change_event()
        with trio.move_on_at(min(until, trio.current_time() + HOLD_MAX)):
            await changed.wait()
