"""Physical pages: ``VmPage``, its flags, the paging queues, allocation and freeing, and
busy/wanted sleeping (~ uvm_page.h, uvm_page.c, uvm_page_i.h).

Theory of operation
-------------------
Every frame of simulated physical memory has one ``VmPage`` record, made when the machine
is built and never destroyed.  A page is in exactly one of these states:

=========  ==========================================================================
free       on one of the two free lists (known-zero or not); PQ_FREE; no owner
active     owned (object or anon), on a queue of the replacement policy, counted active
           (PQ_ACTIVE: the clock's active queue; CLOCK-Pro's hot pages)
inactive   owned, on a queue of the policy, counted inactive (PQ_INACTIVE: the clock's
           inactive queue; CLOCK-Pro's cold pages); it keeps its mappings
wired      ``wire_count > 0``; on no paging queue
off-queue  busy in flight: freshly allocated (PG_BUSY), under pageout (PG_PAGEOUT) or
           under any other cleaning write; or an objectless kernel page (kenter-mapped)
=========  ==========================================================================

Locking, in the ubcfs sense (see ``ubcfs.vm.diag``): plain functions here never sleep, so
they run atomically.  ``pagealloc`` asserts (under DIAGNOSTIC) that the owner object or anon
is locked, as Thorpe's assertion in uvm_pagealloc_strat does.  ``PG_BUSY`` is the only
ownership that survives an ``await``: whoever busies a page owns its identity and contents
until ``page_unbusy``; others set ``PG_WANTED`` and sleep in ``pagewait``.

What is per page and what per run: a ``VmPage`` is the named per-frame record the rest of
the code reads; the paging queues are intrusive lists through it (no allocation per entry),
owned by the replacement policy (``ubcfs.vm.pdpolicy``): the queue functions here check
the page's state and call the policy's hooks.
The object's page table and dirty tag are per run of 32 pages (``ubcfs.vm.object``), and
the free list of pages of unknown contents is a FIFO, so that frames freed in order come
back as contiguous runs.

Flags are stored as plain ints.  ``PG``/``PQ``/``PGA`` are the readable ``enum.Flag`` views
(``pg.pgflags`` shows ``PG.BUSY|PG.CLEAN``); the ``PG_*`` int constants, spelled as in the
kernel, are what the hot paths use, because ``enum.Flag`` arithmetic costs about a
microsecond per operation (design.md section 2).
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Final

import trio

from ubcfs.vm import diag
from ubcfs.vm.diag import panic
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import MD_MODIFIED, Pte, pmap_page_protect, pmap_stale_reaches

if TYPE_CHECKING:
    from collections.abc import Iterator

    from ubcfs.vm.anon import VmAnon
    from ubcfs.vm.object import UvmObject
    from ubcfs.vm.uvm import Uvm


class PG(enum.Flag):
    """Page flags (kernel: PG_*), protected by the owner lock."""

    NONE = 0
    BUSY = 0x0001  # owned for a long operation; survives an await
    WANTED = 0x0002  # someone sleeps until BUSY clears
    TABLED = 0x0004  # in its object's page table
    CLEAN = 0x0008  # equals the backing copy, as far as UVM knows (see pmap modified bit)
    PAGEOUT = 0x0010  # busy for a pagedaemon pageout: free at I/O completion; revocable
    RELEASED = 0x0020  # busy page to be freed when unbusied; irrevocable
    FAKE = 0x0040  # contents not valid yet
    RDONLY = 0x0080  # map read-only even in writable mappings
    ZERO = 0x0100  # known to be all zeroes (free or unqueued pages only)
    PAGER1 = 0x1000  # private to the pager


class PQ(enum.Flag):
    """Page-queue flags (kernel: PQ_*), protected by the page-queue lock."""

    NONE = 0
    FREE = 0x0001
    INACTIVE = 0x0002
    ACTIVE = 0x0004
    ANON = 0x0010  # owned by ``uanon``
    AOBJ = 0x0020  # owned by an anonymous object
    SWAPBACKED = 0x0030  # ANON | AOBJ (a literal: mypyc miscompiles a member made of members)
    # The replacement policy's own bits (``ubcfs.vm.pdpolicy``; kernel: PQ_PRIVATE1..8).
    PRIVATE1 = 0x0100
    PRIVATE2 = 0x0200
    PRIVATE3 = 0x0400
    PRIVATE4 = 0x0800
    PRIVATE5 = 0x1000
    PRIVATE6 = 0x2000
    PRIVATE7 = 0x4000
    PRIVATE8 = 0x8000


class PGA(enum.Flag):
    """Allocation flags (kernel: UVM_PGA_*)."""

    NONE = 0
    USERESERVE = 0x0001  # may dip into the kernel reserve (pmap, pagedaemon)
    ZERO = 0x0002  # return a zeroed page (and so not clean)
    # The kernel tests ``curproc == uvm.pagedaemon_proc``; here the caller says so.
    PDAEMON = 0x0100


# Int views of the flags, for hot paths.
PG_BUSY: Final = PG.BUSY.value
PG_WANTED: Final = PG.WANTED.value
PG_TABLED: Final = PG.TABLED.value
PG_CLEAN: Final = PG.CLEAN.value
PG_PAGEOUT: Final = PG.PAGEOUT.value
PG_RELEASED: Final = PG.RELEASED.value
PG_FAKE: Final = PG.FAKE.value
PG_RDONLY: Final = PG.RDONLY.value
PG_ZERO: Final = PG.ZERO.value
PG_PAGER1: Final = PG.PAGER1.value

PQ_FREE: Final = PQ.FREE.value
PQ_INACTIVE: Final = PQ.INACTIVE.value
PQ_ACTIVE: Final = PQ.ACTIVE.value
PQ_ANON: Final = PQ.ANON.value
PQ_AOBJ: Final = PQ.AOBJ.value
PQ_SWAPBACKED: Final = PQ.SWAPBACKED.value
PQ_PRIVATE1: Final = PQ.PRIVATE1.value
PQ_PRIVATE2: Final = PQ.PRIVATE2.value
PQ_PRIVATE3: Final = PQ.PRIVATE3.value
PQ_PRIVATE4: Final = PQ.PRIVATE4.value
PQ_PRIVATE5: Final = PQ.PRIVATE5.value
PQ_PRIVATE6: Final = PQ.PRIVATE6.value
PQ_PRIVATE7: Final = PQ.PRIVATE7.value
PQ_PRIVATE8: Final = PQ.PRIVATE8.value
# On one of the policy's queues: every policy marks its queued pages active or inactive.
PQ_QUEUES: Final = PQ_ACTIVE | PQ_INACTIVE

PGA_USERESERVE: Final = PGA.USERESERVE.value
PGA_ZERO: Final = PGA.ZERO.value
PGA_PDAEMON: Final = PGA.PDAEMON.value

# Flags a freshly allocated page carries; precomputed (see module docstring).
_PG_NEW: Final = PG_BUSY | PG_CLEAN | PG_FAKE
_PG_NEW_ZEROED: Final = PG_BUSY | PG_FAKE

POISON_BYTE: Final = 0xDE


class VmPage:
    """One page frame's record (kernel: struct vm_page).

    Attributes:
        flags: PG_* bits (int).
        pqflags: PQ_* bits (int).
        uobject: owning object, or None.
        uanon: owning anon, or None.
        offset: byte offset in ``uobject`` (-1 when free).
        phys_addr: the frame: byte offset into the physmem arena (constant).
        wire_count: number of wirings; > 0 keeps the page off the paging queues.
        loan_count: number of active loans (kept for the model; loaning is not simulated).
        pqprev, pqnext: links in the active or inactive queue (kernel: pageq).
        pvlist: the pmap's managed mappings of this page (pv entries), or None.
        mdattrs: the pmap's referenced/modified attributes (MD_*).

    Two per-page facts live in side tables of the machine rather than in slots, because few
    pages have them at any time and every slot costs 8 bytes on each of a million frames:
    ``Uvm.page_waiters`` (the trio Event of a wanted page's busy period) and, under
    DIAGNOSTIC, ``Uvm.owner_tags`` (who busied the page and why; kernel: owner_tag).
    """

    __slots__ = (
        "flags",
        "loan_count",
        "mdattrs",
        "offset",
        "phys_addr",
        "pqflags",
        "pqnext",
        "pqprev",
        "pvlist",
        "uanon",
        "uobject",
        "wire_count",
    )

    flags: int
    pqflags: int
    uobject: UvmObject | None
    uanon: VmAnon | None
    offset: int
    phys_addr: int
    wire_count: int
    loan_count: int
    pqprev: VmPage | None
    pqnext: VmPage | None
    pvlist: list[Pte] | None
    mdattrs: int

    def __init__(self, phys_addr: int) -> None:
        self.flags = PG_ZERO  # a fresh anonymous mmap reads as zeroes
        self.pqflags = PQ_FREE
        self.uobject = None
        self.uanon = None
        self.offset = -1
        self.phys_addr = phys_addr
        self.wire_count = 0
        self.loan_count = 0
        self.pqprev = None
        self.pqnext = None
        self.pvlist = None
        self.mdattrs = 0

    @property
    def pgflags(self) -> PG:
        """The flags as a readable ``PG`` value."""
        return PG(self.flags)

    @property
    def pqstate(self) -> PQ:
        """The queue flags as a readable ``PQ`` value."""
        return PQ(self.pqflags)

    def __repr__(self) -> str:
        owner = (
            f"obj={self.uobject.name}@{self.offset:#x}"
            if self.uobject is not None
            else "anon"
            if self.uanon is not None
            else "none"
        )
        return (
            f"<VmPage pa={self.phys_addr:#x} {owner} {self.pgflags!s} {self.pqstate!s}"
            f" wire={self.wire_count}>"
        )


class PageQueue:
    """A paging queue: FIFO by insertion, O(1) insert, remove and pop (kernel: pglist).

    Intrusive doubly-linked list through ``VmPage.pqprev/pqnext``: no per-entry allocation.
    """

    __slots__ = ("count", "head", "name", "pqflag", "tail")

    def __init__(self, name: str, pqflag: int) -> None:
        self.name = name
        self.pqflag = pqflag
        self.head: VmPage | None = None
        self.tail: VmPage | None = None
        self.count = 0

    def insert_tail(self, pg: VmPage) -> None:
        tail = self.tail
        pg.pqprev = tail
        pg.pqnext = None
        if tail is None:
            self.head = pg
        else:
            tail.pqnext = pg
        self.tail = pg
        pg.pqflags |= self.pqflag
        self.count += 1

    def insert_head(self, pg: VmPage) -> None:
        head = self.head
        pg.pqnext = head
        pg.pqprev = None
        if head is None:
            self.tail = pg
        else:
            head.pqprev = pg
        self.head = pg
        pg.pqflags |= self.pqflag
        self.count += 1

    def remove(self, pg: VmPage) -> None:
        prev, nxt = pg.pqprev, pg.pqnext
        if prev is None:
            self.head = nxt
        else:
            prev.pqnext = nxt
        if nxt is None:
            self.tail = prev
        else:
            nxt.pqprev = prev
        pg.pqprev = pg.pqnext = None
        pg.pqflags &= ~self.pqflag
        self.count -= 1

    def __iter__(self) -> Iterator[VmPage]:
        pg = self.head
        while pg is not None:
            nxt = pg.pqnext
            yield pg
            pg = nxt

    def __len__(self) -> int:
        return self.count


# --- allocation -------------------------------------------------------------------------


def pagealloc(
    uvm: Uvm,
    uobj: UvmObject | None,
    offset: int,
    anon: VmAnon | None = None,
    flags: int = 0,
) -> VmPage | None:
    """Allocate a page for ``uobj`` at ``offset``, or for ``anon`` (kernel: uvm_pagealloc_strat).

    Args:
        uvm: the machine.
        uobj: owning object, or None for an anon page or an objectless kernel page.
        offset: byte offset in ``uobj`` (page aligned); ignored without an object.
        anon: owning anon (``uobj`` must then be None).
        flags: PGA_* bits.

    Returns:
        The page, or None when memory is short: the caller waits for the pagedaemon.

    => ``uobj`` or ``anon`` locked (asserted under DIAGNOSTIC).
    => the page comes back PG_BUSY|PG_CLEAN|PG_FAKE (PG_CLEAN cleared with PGA_ZERO), owned
       by the caller, on no paging queue, entered in its object or attached to its anon.
    => never sleeps.
    """
    if diag.DIAGNOSTIC:
        _alloc_checks(uvm, uobj, offset, anon)
    exp = uvm.uvmexp
    nfree = exp.free
    use_reserve = flags & PGA_USERESERVE
    if (
        nfree <= 0
        or (nfree <= exp.reserve_kernel and not use_reserve)
        or (nfree <= exp.reserve_pagedaemon and not (use_reserve and flags & PGA_PDAEMON))
    ):
        exp.pga_fail += 1
        uvm.kick_pdaemon()
        return None
    zeroit = flags & PGA_ZERO
    # Zeroed requests prefer the known-zero list, the others the unknown list.
    if zeroit:
        pg = uvm.free_zero.pop() if uvm.free_zero else uvm.free_unknown.popleft()
    else:
        pg = uvm.free_unknown.popleft() if uvm.free_unknown else uvm.free_zero.pop()
    exp.free = nfree - 1
    if pg.flags & PG_ZERO:
        exp.zeropages -= 1
        if zeroit:
            exp.pga_zerohit += 1
            pg.flags = _PG_NEW_ZEROED
        else:
            pg.flags = _PG_NEW
    elif zeroit:
        exp.pga_zeromiss += 1
        uvm.physmem.zero(pg.phys_addr)
        pg.flags = _PG_NEW_ZEROED
    else:
        pg.flags = _PG_NEW
    if anon is not None:
        pg.pqflags = PQ_ANON
        pg.uanon = anon
        anon.page = pg
        exp.anonpages += 1
    elif uobj is not None:
        pg.pqflags = PQ_AOBJ if uobj.is_aobj else 0
        pg.uobject = uobj
        pg.offset = offset
        uobj.pages.insert(offset, pg)
        pg.flags |= PG_TABLED
        if zeroit:
            uobj.pages.set_dirty(offset)  # a zeroed page is not PG_CLEAN
        if uobj.is_aobj:
            exp.anonpages += 1
        else:
            exp.filepages += 1
    else:
        pg.pqflags = 0
        exp.kernelpages += 1
    pg.mdattrs = 0
    # UVM_KICK_PDAEMON: below freemin, or below freetarg with the policy wanting a scan.
    avail = nfree - 1 + exp.paging
    if avail < exp.freemin or (avail < exp.freetarg and uvm.pdpolicy.needsscan()):
        uvm.kick_pdaemon()
    return pg


def _alloc_checks(uvm: Uvm, uobj: UvmObject | None, offset: int, anon: VmAnon | None) -> None:
    if uobj is not None:
        if anon is not None:
            panic("pagealloc: both an object and an anon")
        uobj.vmobjlock.assert_locked()
        if offset & uvm.page_mask or offset < 0:
            panic(f"pagealloc: offset {offset:#x} not page aligned")
        if uobj.pages.get(offset) is not None:
            panic(f"pagealloc: {uobj.name}@{offset:#x} already has a page")
    elif anon is not None:
        anon.lock.assert_locked()
        if anon.page is not None:
            panic("pagealloc: anon already has a page")


def pagemarkdirty(pg: VmPage) -> None:
    """Clear PG_CLEAN and put the page in its object's dirty set (kernel, NetBSD 9 on:
    uvm_pagemarkdirty(pg, UVM_PAGE_STATUS_DIRTY)).  The page is owned by the caller.

    A swap-backed page's slot no longer holds its data: the swap pager frees it (a clean
    swap-backed page without a slot is illegal, and a dirty one with a slot would pin a
    stale copy, invariants 12 and 13)."""
    pg.flags &= ~PG_CLEAN
    uobj = pg.uobject
    if uobj is not None:
        uobj.pages.set_dirty(pg.offset)
        if pg.pqflags & PQ_SWAPBACKED:
            swap = uobj.uvm.swap
            if swap is not None:
                swap.dirtied(pg)
        return
    anon = pg.uanon
    if anon is not None and anon.swslot > 0 and anon.swap is not None:
        anon.swap.dirtied(pg)


def pagefree(uvm: Uvm, pg: VmPage) -> None:
    """Free a page (kernel: uvm_pagefree).

    => the caller owns the page: holds PG_BUSY on it, or the owner lock of an unbusy page.
    => every managed mapping was removed (pmap_page_protect(pg, NONE)), every kenter mapping
       kremoved and its pmap_update done; PG_PAGEOUT is not set.
    => the page leaves its object or anon, its queue and its wiring, and goes on a free list.
    """
    pqflags = pg.pqflags
    if pqflags & PQ_FREE:
        panic(f"pagefree: double free of {pg!r}")
    if pg.flags & PG_PAGEOUT:
        panic(f"pagefree: freeing a page under pageout {pg!r}")
    if pg.pvlist:
        panic(f"pagefree: {pg!r} still has {len(pg.pvlist)} managed mapping(s)")
    pa = pg.phys_addr
    if uvm.kentered[pa >> uvm.page_shift]:
        panic(f"pagefree: {pg!r} still has a pmap_kenter_pa mapping")
    if uvm.nstale and pmap_stale_reaches(uvm, pa):
        panic(f"pagefree: {pg!r} still reachable through a stale translation (no pmap_update)")
    exp = uvm.uvmexp
    pagedequeue(uvm, pg)
    if pg.wire_count:
        pg.wire_count = 0
        exp.wired -= 1
        holds = uvm.page_holds.pop(pg, None)
        if holds is not None:
            for hold in holds:
                hold.pg = None  # truncation took the page: its unlock skips it
    uobj = pg.uobject
    if uobj is not None:
        uobj.pages.remove(pg.offset)  # and its dirty tag
        uobj.generation += 1
        if uobj.is_aobj:
            exp.anonpages -= 1
        else:
            exp.filepages -= 1
        pg.uobject = None
    elif pg.uanon is not None:
        pg.uanon.page = None
        pg.uanon = None
        exp.anonpages -= 1
    else:
        exp.kernelpages -= 1
    if pg.flags & PG_WANTED:
        # Sleepers on a freed page wake up and must look it up again.
        _wakeup(uvm, pg)
    if uvm.owner_tags:
        uvm.owner_tags.pop(pg, None)
    pg.offset = -1
    pg.flags = 0
    pg.pqflags = PQ_FREE
    pg.mdattrs = 0
    if diag.DIAGNOSTIC:
        uvm.physmem.poison(pa)
    uvm.free_unknown.append(pg)
    exp.free += 1


# --- queues and wiring ------------------------------------------------------------------


def pageactivate(uvm: Uvm, pg: VmPage) -> None:
    """``pg`` was used: tell the replacement policy (kernel: uvm_pageactivate), which
    queues it if it is not (the clock: to the active tail).

    A wired page stays off the queues.  => page-queue "lock" (atomic section).
    """
    if pg.pqflags & PQ_FREE:
        panic(f"pageactivate: free page {pg!r}")
    if pg.wire_count == 0:
        uvm.pdpolicy.pageactivate(pg)


def pagedeactivate(uvm: Uvm, pg: VmPage) -> None:
    """``pg`` may be reclaimed soon: tell the policy (kernel: uvm_pagedeactivate), which
    queues it if it is not (the clock: to the inactive tail).

    Since Thorpe's change the page keeps its mappings; the caller must already have cleared
    its referenced bit (``pmap_clear_reference``).  Wired pages stay off the queues.
    """
    if pg.pqflags & PQ_FREE:
        panic(f"pagedeactivate: free page {pg!r}")
    if pg.wire_count == 0:
        uvm.pdpolicy.pagedeactivate(pg)


def pagedequeue(uvm: Uvm, pg: VmPage) -> None:
    """Take a page off the policy's queues, if on one (kernel: uvm_pagedequeue)."""
    if pg.pqflags & PQ_QUEUES:
        uvm.pdpolicy.pagedequeue(pg)


def pageenqueue(uvm: Uvm, pg: VmPage) -> None:
    """Queue an unqueued, unwired page nobody has used yet (kernel: uvm_pageenqueue):
    read-ahead.  The clock treats it as used; CLOCK-Pro as speculative."""
    if pg.pqflags & PQ_FREE:
        panic(f"pageenqueue: free page {pg!r}")
    if not pg.pqflags & PQ_QUEUES and pg.wire_count == 0:
        uvm.pdpolicy.pageenqueue(pg)


def pagewire(uvm: Uvm, pg: VmPage) -> None:
    """Wire a page: count up; the first wiring takes it off the queues (kernel: uvm_pagewire)."""
    if pg.pqflags & PQ_FREE:
        panic(f"pagewire: free page {pg!r}")
    if pg.wire_count == 0:
        pagedequeue(uvm, pg)
        uvm.uvmexp.wired += 1
    pg.wire_count += 1


class PageHold:
    """One wiring of a page by ``uvm_vslock`` (a user buffer locked for raw I/O), kept in
    ``Uvm.page_holds`` and in the locking map's ``vslocks`` until ``uvm_vsunlock`` drops
    it.  In the kernel physio holds its pages for one system call; here a hold outlives
    the command that made it, so the page may meanwhile be truncated away and freed:
    ``pagefree`` then sets ``pg`` to None, and the unlock just skips it.  The audit
    (rule 16) counts the live holds of a page among its wirings."""

    __slots__ = ("pg", "va")

    def __init__(self, pg: VmPage, va: int) -> None:
        self.pg: VmPage | None = pg
        self.va = va


def pageunwire(uvm: Uvm, pg: VmPage) -> None:
    """Drop one wiring; the last puts the page on the active queue (kernel: uvm_pageunwire)."""
    if pg.pqflags & PQ_FREE:
        panic(f"pageunwire: free page {pg!r}")
    if pg.wire_count <= 0:
        panic(f"pageunwire: unwiring a page that is not wired {pg!r}")
    pg.wire_count -= 1
    if pg.wire_count == 0:
        uvm.uvmexp.wired -= 1
        uvm.pdpolicy.pageactivate(pg)


def pagelookup(uobj: UvmObject, offset: int) -> VmPage | None:
    """The resident page of ``uobj`` at ``offset``, or None (kernel: uvm_pagelookup). O(1)."""
    return uobj.pages.get(offset)


# --- busy and wanted --------------------------------------------------------------------


def _wakeup(uvm: Uvm, pg: VmPage) -> None:
    waitev = uvm.page_waiters.pop(pg, None)
    if waitev is not None:
        waitev.set()


def pagebusy(uvm: Uvm, pg: VmPage, why: str) -> None:
    """Mark an unbusy page busy for the caller (kernel: PG_BUSY + UVM_PAGE_OWN)."""
    if pg.flags & PG_BUSY:
        panic(f"pagebusy({why}): {pg!r} already busy ({uvm.owner_tags.get(pg)})")
    if pg.pqflags & PQ_FREE:
        panic(f"pagebusy({why}): free page {pg!r}")
    pg.flags |= PG_BUSY
    if diag.DIAGNOSTIC:
        uvm.owner_tags[pg] = why


def page_unbusy(uvm: Uvm, pg: VmPage) -> None:
    """Unbusy a page the caller owns (kernel: uvm_page_unbusy for one page).

    Wakes the waiters of this busy period.  A PG_RELEASED page loses every mapping and is
    freed.  => the caller holds PG_BUSY.  => never sleeps.
    """
    flags = pg.flags
    if not flags & PG_BUSY:
        panic(f"page_unbusy: {pg!r} is not busy")
    if flags & PG_WANTED:
        _wakeup(uvm, pg)
    if flags & PG_RELEASED:
        if flags & PG_PAGEOUT:
            panic(f"page_unbusy: {pg!r} both RELEASED and PAGEOUT")
        pmap_page_protect(uvm, pg, Prot.NONE)
        pagefree(uvm, pg)
        return
    pg.flags = flags & ~(PG_BUSY | PG_WANTED)
    if uvm.owner_tags:
        uvm.owner_tags.pop(pg, None)


def page_unbusy_many(uvm: Uvm, pages: list[VmPage]) -> None:
    """``page_unbusy`` of each page (kernel: uvm_page_unbusy(pgs, npgs)), with the common
    case -- nobody waiting, not released -- inline."""
    slow = PG_WANTED | PG_RELEASED
    tags = uvm.owner_tags
    for pg in pages:
        flags = pg.flags
        if flags & slow or not flags & PG_BUSY:
            page_unbusy(uvm, pg)
            continue
        pg.flags = flags & ~PG_BUSY
        if tags:
            tags.pop(pg, None)


async def pagewait(uvm: Uvm, pg: VmPage, why: str) -> None:
    """Sleep until ``pg`` is unbusied (kernel: uvm_pagewait / UVM_UNLOCK_AND_WAIT).

    => ``pg`` is PG_BUSY, owned by someone else.  => may sleep.
    => on return the page may have been freed or renamed: look it up again.
    """
    if not pg.flags & PG_BUSY:
        panic(f"pagewait({why}): {pg!r} is not busy")
    pg.flags |= PG_WANTED
    waitev = uvm.page_waiters.get(pg)
    if waitev is None:
        waitev = uvm.page_waiters[pg] = trio.Event()
    await waitev.wait()


def is_dirty(pg: VmPage) -> bool:
    """PG_CLEAN clear, or written through a managed mapping since it was cleaned."""
    return not pg.flags & PG_CLEAN or bool(pg.mdattrs & MD_MODIFIED)
