"""The two-queue clock (~ uvm_pdaemon.c 1.39, and uvm_pdpolicy_clock.c of later NetBSD).

Pages are on the active queue (PQ_ACTIVE) or the inactive queue (PQ_INACTIVE), each FIFO
by insertion.  A page that is used goes to the active tail.  The reclaim scan walks the
inactive queue from its head: a page referenced since it was deactivated is reactivated
(``pdreact``), any other is the victim.  ``balancequeue`` refills the inactive queue up to
``inactarg`` (a third of the queued pages) from the head of the active queue, clearing the
referenced bit of each page it moves (Thorpe's change: deactivated pages keep their
mappings).  ``ClockPolicy(test_reference=True)`` instead gives active pages referenced
since the last visit another round (the early-2001 behaviour the seed describes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import trio

from ubcfs.vm.page import PG_BUSY, PQ_ACTIVE, PQ_INACTIVE, PQ_SWAPBACKED, PageQueue, is_dirty
from ubcfs.vm.pdpolicy import PdPolicy
from ubcfs.vm.pmap import pmap_clear_reference, pmap_is_referenced

if TYPE_CHECKING:
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.pdaemon import Pagedaemon
    from ubcfs.vm.uvm import Uvm


class ClockPolicy(PdPolicy):
    """Two-queue clock (kernel: uvm_pdpolicy_clock).

    Args:
        test_reference: in ``balancequeue``, skip (and clear) pages referenced since the
            last visit instead of deactivating them.
    """

    name = "clock"

    def __init__(self, uvm: Uvm, test_reference: bool = False) -> None:
        super().__init__(uvm)
        self.test_reference = test_reference
        self.active = PageQueue("active", PQ_ACTIVE)
        self.inactive = PageQueue("inactive", PQ_INACTIVE)
        # The scan's next page and how many more it may look at (kernel: ss_nextpg).
        self._next: VmPage | None = None
        self._budget = 0

    def pageactivate(self, pg: VmPage) -> None:
        self.pagedequeue(pg)
        self.active.insert_tail(pg)
        self.uvm.uvmexp.active += 1

    def pagedeactivate(self, pg: VmPage) -> None:
        pqflags = pg.pqflags
        if pqflags & PQ_INACTIVE:
            return
        exp = self.uvm.uvmexp
        if pqflags & PQ_ACTIVE:
            self.active.remove(pg)
            exp.active -= 1
        self.inactive.insert_tail(pg)
        exp.inactive += 1

    def pagedequeue(self, pg: VmPage) -> None:
        pqflags = pg.pqflags
        if pqflags & PQ_ACTIVE:
            self.active.remove(pg)
            self.uvm.uvmexp.active -= 1
        elif pqflags & PQ_INACTIVE:
            self.inactive.remove(pg)
            self.uvm.uvmexp.inactive -= 1

    def pageenqueue(self, pg: VmPage) -> None:
        self.pageactivate(pg)

    def pagereclaimable(self, pg: VmPage) -> bool:
        return bool(pg.pqflags & PQ_INACTIVE) and not pmap_is_referenced(pg)

    def tune(self) -> None:
        exp = self.uvm.uvmexp
        exp.inactarg = max(exp.freetarg + 1, (exp.active + exp.inactive) // 3)

    def needsscan(self) -> bool:
        exp = self.uvm.uvmexp
        return exp.inactive < exp.inactarg

    def scaninit(self) -> None:
        self._next = self.inactive.head
        # Bound one scan, even if the queue is refilled meanwhile.
        self._budget = 2 * self.inactive.count + 16

    def selectvictim(self) -> VmPage | None:
        exp = self.uvm.uvmexp
        pg = self._next
        if pg is not None and not pg.pqflags & PQ_INACTIVE:
            # The page the scan meant to look at next left the queue meanwhile (freed with
            # a pageout cluster, used, wired): start again from the head.
            pg = self.inactive.head
        while pg is not None and self._budget > 0:
            self._budget -= 1
            nxt = pg.pqnext
            exp.pdscans += 1
            if pmap_clear_reference(pg):
                self.pageactivate(pg)  # used since it was deactivated: keep it
                exp.pdreact += 1
                pg = nxt
                continue
            self._next = nxt
            return pg
        self._next = None
        return None

    def balancequeue(self, daemon: Pagedaemon, swap_shortage: int) -> int:
        """Refill the inactive queue up to ``inactarg`` from the active head; free swap
        slots of swap-backed pages on the way while ``swap_shortage`` lasts (kernel: the
        active part of uvmpd_scan)."""
        uvm = self.uvm
        exp = uvm.uvmexp
        wbf = uvm.wbfail
        stuck = wbf.objects
        now = trio.current_time() if stuck else 0.0
        shortage = exp.inactarg - exp.inactive
        swap = uvm.swap
        moved = 0
        budget = self.active.count
        pg = self.active.head
        while pg is not None and (shortage > 0 or swap_shortage > 0) and budget > 0:
            budget -= 1
            nxt = pg.pqnext
            if pg.flags & PG_BUSY:
                pg = nxt
                continue
            if (
                swap_shortage > 0
                and swap is not None
                and pg.pqflags & PQ_SWAPBACKED
                and swap.drop_slot(pg)
            ):
                exp.swap_shortage_drops += 1
                swap_shortage -= 1
            if shortage <= 0:
                pg = nxt
                continue
            if stuck and pg.uobject in stuck and is_dirty(pg):
                retry_at = wbf.backoff(pg.uobject, now)
                if retry_at:
                    # Its file's write-back fails and waits for its retry time: leave it
                    # active, so that the inactive queue fills with pages that can go.
                    daemon.retry_at = min(daemon.retry_at, retry_at)
                    exp.wb_deferred += 1
                    pg = nxt
                    continue
            if pmap_clear_reference(pg) and self.test_reference:
                self.pageactivate(pg)  # referenced since the last visit: another round
            else:
                self.pagedeactivate(pg)
                exp.pddeact += 1
                shortage -= 1
                moved += 1
            pg = nxt
        return moved

    def queues(self) -> list[PageQueue]:
        return [self.active, self.inactive]

    def report(self) -> dict[str, int]:
        return super().report() | {"inactive_target": self.uvm.uvmexp.inactarg}
