"""CLOCK-Pro (~ uvm_pdpolicy_clockpro.c, Yamamoto's NetBSD policy after Jiang, Chen and
Zhang, "CLOCK-Pro: an effective improvement of the CLOCK replacement", USENIX 2005).

Theory of operation
-------------------
The plain clock keeps what was used *recently*; a loop over a file a little larger than
memory then misses on every page (each is evicted just before it is used again), and one
big scan pushes out everything.  CLOCK-Pro keeps what is used *often*, judged by reuse
distance: a page is **hot** (PQ_ACTIVE here) or **cold** (PQ_INACTIVE); a cold page is on
**test** (PQ_TEST) for a while after it is brought in or used; a cold page used again while
on test becomes hot.  Only cold pages are reclaimed, and a cold page evicted while on test
is remembered in the **non-resident table** (an approximate set of (object, page) cookies),
so that when it is read in again soon it starts hot.  The cold share of the queued pages is
held at ``coldtarget`` (CLOCKPRO_COLDPCT, 10%, as NetBSD without ADAPTIVE).

The three hands of the paper are queues, as in NetBSD with LISTQ:

* **newq**: every page enters here, at the tail.  A page that arrives because it was used
  carries PQ_INITIALREF; when it leaves newq (more than ``newqlenmax`` pages) its reference
  bit is cleared, so that the fault, the read-ahead hit and the first access that brought it
  count as one use.  It then goes to the cold queue's tail.
* **hand-cold** (``_handcold_advance``, the reclaim scan) walks the cold queue from its
  head: a hot page there moves to the hot queue; a referenced cold page on test becomes hot,
  a referenced one not on test starts its test; both go round again (to newq).  An
  unreferenced cold page is the victim (one on test is first recorded as non-resident).
* **hand-hot** (``_handhot_advance``) runs while fewer than ``coldtarget`` pages are cold:
  from the hot queue's head, an unreferenced hot page turns cold (``pddeact``), a referenced
  one goes round again.  Each step also advances the non-resident table's clock, which ends
  the test periods of evicted pages (the paper's hand-test): a full turn of the hot hand
  clears every bucket once.  When the hot queue is empty, cold pages are moved, hot ones to
  the hot queue and cold ones (their test ended) to **listq**, whose pages hand-cold takes
  first.
* read-ahead pages (``pageenqueue``) are PQ_SPECULATIVE: cold and not on test; used before
  hand-cold meets them, they are queued again as if just used.

The non-resident table (NetBSD's approximation from linux-mm's ClockProApproximation):
``2 * npages / 14`` buckets of 14 cookies, each bucket a little ring with its own cycle
number; recording overwrites the oldest slot; a bucket is rotated forward to the global
cycle (``_cycle_target``, advanced by hand-hot) before any use, which drops the cookies
whose test period is over.  Objects are identified by ``id()`` (NetBSD: the object's
address, with the same caveat that a recycled object may inherit a cookie); an anon's
cookie is dropped when the anon is freed (``anfree``).

Deviation, measured on our small simulated memories: newq's floor is 1 MiB of pages as in
NetBSD but at most a sixteenth of memory (a 2 MiB machine would otherwise queue every page
in newq and CLOCK-Pro would degenerate to FIFO).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from ubcfs.vm.page import (
    PQ_ACTIVE,
    PQ_INACTIVE,
    PQ_PRIVATE1,
    PQ_PRIVATE2,
    PQ_PRIVATE3,
    PQ_PRIVATE4,
    PQ_PRIVATE5,
    PQ_PRIVATE6,
    PQ_PRIVATE7,
    PQ_PRIVATE8,
    PQ_SWAPBACKED,
    PageQueue,
)
from ubcfs.vm.pdpolicy import PdPolicy
from ubcfs.vm.pmap import pmap_clear_reference, pmap_is_referenced

if TYPE_CHECKING:
    from ubcfs.vm.anon import VmAnon
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.pdaemon import Pagedaemon
    from ubcfs.vm.uvm import Uvm

# The policy's page bits.
PQ_REFERENCED: Final = PQ_PRIVATE1  # a reference moved off the pmap, not yet acted on
PQ_TEST: Final = PQ_PRIVATE2  # cold, in its test period
PQ_INITIALREF: Final = PQ_PRIVATE3  # queued because it was used: that use is not counted
PQ_SPECULATIVE: Final = PQ_PRIVATE4  # queued without a use (read-ahead)
PQ_NEWQ: Final = PQ_PRIVATE5
PQ_COLDQ: Final = PQ_PRIVATE6
PQ_HOTQ: Final = PQ_PRIVATE7
PQ_LISTQ: Final = PQ_PRIVATE8
_PQ_ONQUEUE: Final = PQ_NEWQ | PQ_COLDQ | PQ_HOTQ | PQ_LISTQ
_PQ_CLASS: Final = PQ_ACTIVE | PQ_INACTIVE
_PQ_DROPPED: Final = _PQ_CLASS | PQ_TEST | PQ_INITIALREF | PQ_SPECULATIVE

COLDPCT: Final = 10  # the cold target, percent of the queued pages (CLOCKPRO_COLDPCT)
HASHFACTOR: Final = 2  # non-resident cookies per page of memory (CLOCKPRO_HASHFACTOR)
BUCKETSIZE: Final = 14  # cookies per bucket
_NOCOOKIE: Final = 0

_COUNTERS: Final = (
    "nres_recorded",  # cold pages evicted on test, remembered
    "nres_found",  # pages brought back in while remembered: they start hot
    "nres_expired",  # remembered pages whose test period ended before they came back
    "nres_overwritten",  # cookies lost to a full bucket
    "hot_to_cold",  # unreferenced hot pages turned cold by hand-hot
    "cold_to_hot",  # cold pages used again on test
    "test_started",  # referenced cold pages put on test
    "test_ended",  # cold pages whose test ended in the hot queue's wake
    "speculative_hits",  # read-ahead pages used before hand-cold met them
    "speculative_misses",  # read-ahead pages hand-cold met unused
    "hot_takeovers",  # hand-hot found the hot queue empty
    "cold_takeovers",  # hand-cold found nothing cold
)


class _Nonresident:
    """The approximate set of recently evicted pages (kernel: the ``buckets`` table)."""

    __slots__ = ("cookies", "cur", "cycle", "nbuckets")

    def __init__(self, npages: int) -> None:
        self.nbuckets = max(1, -(-npages // BUCKETSIZE) * HASHFACTOR)
        self.cookies = [_NOCOOKIE] * (self.nbuckets * BUCKETSIZE)
        self.cycle = [0] * self.nbuckets
        self.cur = [0] * self.nbuckets

    def bucket(self, obj: int, idx: int) -> int:
        return ((obj * 0x9E3779B1) ^ (idx * 0x85EBCA77)) % self.nbuckets

    @staticmethod
    def cookie(obj: int, idx: int) -> int:
        c = ((obj ^ (obj >> 29)) * 0xC2B2AE3D + idx * 0x27D4EB2F) & 0xFFFFFFFF
        return c if c != _NOCOOKIE else 1

    def rotate(self, b: int, target: int) -> int:
        """Bring bucket ``b`` to cycle ``target``: clear one slot per cycle it is behind
        (at most two turns' worth); return the number of cookies cleared."""
        todo = target - self.cycle[b]
        if todo >= 2 * BUCKETSIZE:
            todo = todo % BUCKETSIZE + BUCKETSIZE
        cookies = self.cookies
        base = b * BUCKETSIZE
        cur = self.cur[b]
        expired = 0
        while todo > 0:
            if cookies[base + cur] != _NOCOOKIE:
                expired += 1
                cookies[base + cur] = _NOCOOKIE
            cur += 1
            if cur == BUCKETSIZE:
                cur = 0
            todo -= 1
        self.cycle[b] = target
        self.cur[b] = cur
        return expired

    def count(self) -> int:
        return sum(1 for c in self.cookies if c != _NOCOOKIE)


class ClockProPolicy(PdPolicy):
    """CLOCK-Pro (kernel: uvm_pdpolicy_clockpro)."""

    name = "clockpro"

    def __init__(self, uvm: Uvm) -> None:
        super().__init__(uvm)
        self.newq = PageQueue("newq", PQ_NEWQ)
        self.coldq = PageQueue("coldq", PQ_COLDQ)
        self.hotq = PageQueue("hotq", PQ_HOTQ)
        self.listq = PageQueue("listq", PQ_LISTQ)
        self.npages = 0  # queued pages (kernel: s_npages)
        self.ncold = 0  # queued cold pages (kernel: s_ncold)
        self.coldtarget = 1
        self.newqlenmax = 1
        self.nscanned = 0
        self.nres = _Nonresident(uvm.uvmexp.npages)
        self._cycle_target = 0
        self._cycle_frac = 0
        self.counts: dict[str, int] = dict.fromkeys(_COUNTERS, 0)
        newq_floor = (1 << 20) >> uvm.page_shift
        self._newq_min = max(1, min(newq_floor, uvm.uvmexp.npages // 16))

    # --- classes: hot (PQ_ACTIVE) and cold (PQ_INACTIVE), kept in uvmexp -------------

    def _make_hot(self, pg: VmPage) -> None:
        pg.pqflags = (pg.pqflags & ~PQ_INACTIVE) | PQ_ACTIVE
        self.ncold -= 1
        exp = self.uvm.uvmexp
        exp.inactive -= 1
        exp.active += 1

    def _make_cold(self, pg: VmPage) -> None:
        pg.pqflags = (pg.pqflags & ~PQ_ACTIVE) | PQ_INACTIVE
        self.ncold += 1
        exp = self.uvm.uvmexp
        exp.active -= 1
        exp.inactive += 1

    # --- reference bits ---------------------------------------------------------------

    @staticmethod
    def _movereferencebit(pg: VmPage) -> None:
        if pmap_clear_reference(pg):
            pg.pqflags |= PQ_REFERENCED

    @staticmethod
    def _clearreferencebit(pg: VmPage) -> None:
        pmap_clear_reference(pg)
        pg.pqflags &= ~PQ_REFERENCED

    # --- the non-resident table ---------------------------------------------------------

    def _identity(self, pg: VmPage) -> tuple[int, int]:
        uobj = pg.uobject
        if uobj is not None:
            return id(uobj), pg.offset >> self.uvm.page_shift
        return id(pg.uanon), 0

    def _nres_lookupremove(self, obj: int, idx: int) -> bool:
        nres = self.nres
        b = nres.bucket(obj, idx)
        self.counts["nres_expired"] += nres.rotate(b, self._cycle_target)
        cookie = nres.cookie(obj, idx)
        base = b * BUCKETSIZE
        cookies = nres.cookies
        for i in range(base, base + BUCKETSIZE):
            if cookies[i] == cookie:
                cookies[i] = _NOCOOKIE
                return True
        return False

    def _nres_record(self, pg: VmPage) -> None:
        obj, idx = self._identity(pg)
        nres = self.nres
        b = nres.bucket(obj, idx)
        self.counts["nres_expired"] += nres.rotate(b, self._cycle_target)
        slot = b * BUCKETSIZE + nres.cur[b]
        if nres.cookies[slot] != _NOCOOKIE:
            self.counts["nres_overwritten"] += 1
        nres.cookies[slot] = nres.cookie(obj, idx)
        nres.cur[b] = (nres.cur[b] + 1) % BUCKETSIZE
        self.counts["nres_recorded"] += 1

    # --- queue moves ----------------------------------------------------------------------

    def _queue_of(self, pg: VmPage) -> PageQueue:
        f = pg.pqflags
        if f & PQ_NEWQ:
            return self.newq
        if f & PQ_COLDQ:
            return self.coldq
        if f & PQ_HOTQ:
            return self.hotq
        return self.listq

    def _newqrotate(self, keep: int) -> None:
        """Move newq's oldest pages to the cold queue's tail until ``keep`` are left; the
        use that queued a page is forgotten as it leaves (PQ_INITIALREF)."""
        newq = self.newq
        while newq.count > keep:
            pg = newq.head
            assert pg is not None
            newq.remove(pg)
            if pg.pqflags & PQ_INITIALREF:
                self._clearreferencebit(pg)
                pg.pqflags &= ~PQ_INITIALREF
            self.coldq.insert_tail(pg)

    def _newqflushone(self) -> None:
        self._newqrotate(max(self.newq.count - 1, 0))

    def _enqueuetail(self, pg: VmPage) -> None:
        self.newq.insert_tail(pg)
        self._newqrotate(self.newqlenmax)

    def _requeue(self, pg: VmPage) -> None:
        """Round again: from the hot or cold queue to newq's tail."""
        self._queue_of(pg).remove(pg)
        self._enqueuetail(pg)

    def _enqueue(self, pg: VmPage) -> None:
        """Queue an unqueued page: hot if it was evicted on test not long ago, else cold
        (on test unless read-ahead) (kernel: clockpro_pageenqueue)."""
        exp = self.uvm.uvmexp
        self.npages += 1
        pg.pqflags &= ~PQ_TEST
        if pg.pqflags & PQ_SPECULATIVE:
            hot = False
        else:
            obj, idx = self._identity(pg)
            hot = self._nres_lookupremove(obj, idx)
            if hot:
                self.counts["nres_found"] += 1
            else:
                pg.pqflags |= PQ_TEST
        if hot:
            pg.pqflags |= PQ_ACTIVE
            exp.active += 1
        else:
            pg.pqflags |= PQ_INACTIVE
            self.ncold += 1
            exp.inactive += 1
        self._enqueuetail(pg)

    # --- the page hooks -------------------------------------------------------------------

    def pageactivate(self, pg: VmPage) -> None:
        f = pg.pqflags
        if not f & _PQ_ONQUEUE:
            pg.pqflags |= PQ_INITIALREF
            self._enqueue(pg)
        elif f & PQ_SPECULATIVE:
            self.counts["speculative_hits"] += 1
            self.pagedequeue(pg)
            pg.pqflags |= PQ_INITIALREF
            self._enqueue(pg)
        pg.pqflags |= PQ_REFERENCED

    def pagedeactivate(self, pg: VmPage) -> None:
        self._clearreferencebit(pg)
        if not pg.pqflags & _PQ_ONQUEUE:
            # Back from a write (ours take pages off the queues for their I/O; NetBSD's
            # leave them queued): queued again with the use it just lost.
            self._enqueue(pg)

    def pagedequeue(self, pg: VmPage) -> None:
        f = pg.pqflags
        if not f & _PQ_ONQUEUE:
            return
        self._queue_of(pg).remove(pg)
        exp = self.uvm.uvmexp
        if f & PQ_ACTIVE:
            exp.active -= 1
        else:
            self.ncold -= 1
            exp.inactive -= 1
        self.npages -= 1
        pg.pqflags &= ~_PQ_DROPPED

    def pageenqueue(self, pg: VmPage) -> None:
        if pg.pqflags & _PQ_ONQUEUE:
            return
        self._clearreferencebit(pg)
        pg.pqflags |= PQ_SPECULATIVE
        self._enqueue(pg)

    def pagereclaimable(self, pg: VmPage) -> bool:
        """Cold, unused and off test: a page on test is evicted by hand-cold only, which
        remembers it as non-resident."""
        f = pg.pqflags
        return (
            bool(f & PQ_INACTIVE)
            and not f & (PQ_REFERENCED | PQ_TEST | PQ_INITIALREF)
            and not pmap_is_referenced(pg)
        )

    def anfree(self, anon: VmAnon) -> None:
        self._nres_lookupremove(id(anon), 0)

    # --- the pagedaemon's questions -----------------------------------------------------

    def tune(self) -> None:
        self.coldtarget = max(1, self.npages * COLDPCT // 100)
        self.newqlenmax = max(self.coldtarget // 4, self._newq_min)
        self.uvm.uvmexp.inactarg = self.coldtarget

    def needsscan(self) -> bool:
        return self.ncold < self.coldtarget

    def scaninit(self) -> None:
        self.nscanned = 0

    def selectvictim(self) -> VmPage | None:
        if self.nscanned > self.npages:
            return None
        pg = self._handcold_advance()
        self.nscanned += 1
        return pg

    def balancequeue(self, daemon: Pagedaemon, swap_shortage: int) -> int:
        """Free swap slots of hot swap-backed pages, newest first (kernel:
        clockpro_dropswap); hand-hot does the deactivating, so none here."""
        swap = self.uvm.swap
        if swap_shortage <= 0 or swap is None:
            return 0
        exp = self.uvm.uvmexp
        for q in (self.newq, self.coldq, self.hotq):
            pg = q.tail
            while pg is not None and swap_shortage > 0:
                prv = pg.pqprev
                if pg.pqflags & PQ_ACTIVE and pg.pqflags & PQ_SWAPBACKED and swap.drop_slot(pg):
                    exp.swap_shortage_drops += 1
                    swap_shortage -= 1
                pg = prv
        return 0

    # --- the hands ------------------------------------------------------------------------

    def _handhot_advance(self) -> None:
        """Turn unreferenced hot pages cold until ``coldtarget`` pages are cold (kernel:
        handhot_advance)."""
        self.tune()
        if self.ncold >= self.coldtarget:
            return
        hotq = self.hotq
        exp = self.uvm.uvmexp
        while True:
            pg = hotq.head
            if pg is None:
                # Nothing hot at the hot queue: sort the cold queue's head (hot pages to the
                # hot queue, cold ones to listq, their test over) until a hot page turns up.
                self.counts["hot_takeovers"] += 1
                coldq = self.coldq
                while True:
                    pg = coldq.head
                    if pg is None:
                        self._newqflushone()
                        pg = coldq.head
                        if pg is None:
                            return
                    coldq.remove(pg)
                    if pg.pqflags & PQ_ACTIVE:
                        hotq.insert_head(pg)
                        break
                    self._endtest(pg)
                    self.listq.insert_tail(pg)
            # Each step of the hot hand moves the non-resident clock on by
            # BUCKETSIZE / len(hotq) cycles: a full turn ends every test period once.
            self._cycle_frac += BUCKETSIZE
            hotqlen = hotq.count
            while self._cycle_frac >= hotqlen:
                self._cycle_target += 1
                self._cycle_frac -= hotqlen
            if self.ncold >= self.coldtarget:
                return
            self._movereferencebit(pg)
            if not pg.pqflags & PQ_REFERENCED:
                self._make_cold(pg)
                self.counts["hot_to_cold"] += 1
                exp.pddeact += 1
            pg.pqflags &= ~PQ_REFERENCED
            self._requeue(pg)

    def _endtest(self, pg: VmPage) -> None:
        if pg.pqflags & PQ_TEST:
            pg.pqflags &= ~PQ_TEST
            self.counts["test_ended"] += 1

    def _handcold_advance(self) -> VmPage | None:
        """The next cold, unreferenced page, or None (kernel: handcold_advance).  The page
        stays queued (at newq's tail); the daemon frees it or pages it out."""
        exp = self.uvm.uvmexp
        coldq = self.coldq
        # Each step ends a page's round or moves it a class up, so a victim turns up within
        # a few turns; the bound only guards the daemon against a broken queue.
        steps = 4 * self.npages + 16
        while steps > 0:
            steps -= 1
            self._newqrotate(self.newqlenmax)
            self._handhot_advance()
            pg = self.listq.head
            if pg is not None:
                self.listq.remove(pg)
                coldq.insert_head(pg)
            else:
                pg = coldq.head
                if pg is None:
                    self._newqflushone()
                    pg = coldq.head
                if pg is None:
                    self.counts["cold_takeovers"] += 1
                    return None
                if pg.pqflags & PQ_ACTIVE:
                    coldq.remove(pg)
                    self.hotq.insert_tail(pg)
                    exp.pdscans += 1
                    continue
            exp.pdscans += 1
            self._movereferencebit(pg)
            f = pg.pqflags
            if f & PQ_SPECULATIVE:
                if f & PQ_REFERENCED:
                    self.counts["speculative_hits"] += 1
                    pg.pqflags &= ~(PQ_SPECULATIVE | PQ_REFERENCED)
                    self.pagedequeue(pg)
                    self._enqueue(pg)
                    continue
                self.counts["speculative_misses"] += 1
            if not f & PQ_REFERENCED:
                if f & PQ_TEST:
                    self._nres_record(pg)
                self._requeue(pg)
                self._handhot_advance()
                return pg
            if f & PQ_TEST:
                self._make_hot(pg)
                pg.pqflags &= ~PQ_TEST
                self.counts["cold_to_hot"] += 1
            else:
                pg.pqflags |= PQ_TEST
                self.counts["test_started"] += 1
            pg.pqflags &= ~PQ_REFERENCED
            exp.pdreact += 1
            self._requeue(pg)
        return None

    # --- reports and the audit --------------------------------------------------------

    def queues(self) -> list[PageQueue]:
        return [self.newq, self.coldq, self.hotq, self.listq]

    def report(self) -> dict[str, int]:
        return super().report() | {
            "hot": self.npages - self.ncold,
            "cold": self.ncold,
            "cold_target": self.coldtarget,
            "nonresident": self.nres.count(),
            **self.counts,
        }

    def check(self, out: list[str]) -> None:
        super().check(out)
        queued = sum(q.count for q in self.queues())
        if queued != self.npages:
            out.append(f"[1] clockpro: {queued} pages queued but npages is {self.npages}")
        cold = 0
        for q in self.queues():
            for pg in q:
                f = pg.pqflags
                if bin(f & _PQ_ONQUEUE).count("1") != 1:
                    out.append(f"[1] clockpro: {pg!r} carries more than one queue flag")
                if f & PQ_INACTIVE:
                    cold += 1
                if f & PQ_HOTQ and not f & PQ_ACTIVE:
                    out.append(f"[1] clockpro: cold {pg!r} on the hot queue")
                if f & PQ_LISTQ and f & (PQ_ACTIVE | PQ_TEST):
                    out.append(f"[1] clockpro: {pg!r} on listq is hot or on test")
                if f & PQ_ACTIVE and f & (PQ_TEST | PQ_SPECULATIVE):
                    out.append(f"[1] clockpro: hot {pg!r} is on test or speculative")
                if f & PQ_SPECULATIVE and f & (PQ_TEST | PQ_INITIALREF):
                    out.append(f"[1] clockpro: speculative {pg!r} is on test or initialref")
                if f & PQ_INITIALREF and not f & PQ_NEWQ:
                    out.append(f"[1] clockpro: {pg!r} left newq with PQ_INITIALREF")
        if cold != self.ncold:
            out.append(f"[1] clockpro: {cold} cold pages but ncold is {self.ncold}")
        for pg in self.uvm.pages:
            f = pg.pqflags
            if not f & _PQ_ONQUEUE and f & _PQ_DROPPED:
                out.append(f"[1] clockpro: unqueued {pg!r} keeps class or test flags")
