"""The swap pager: a swap file cut into page-sized slots, the slot allocator, and swap-out
and swap-in of swap-backed pages (~ uvm_swap.c: uvm_swap_alloc, uvm_swap_free,
uvm_swap_markbad, uvm_swap_put, uvm_swap_get; the PQ_SWAPBACKED part of uvm_pdaemon.c;
uvm_aio_aiodone for swap writes).

Theory of operation
-------------------
One swap device per machine: a sparse file of ``--swap`` bytes (``pagers.swap.Swap``),
``nslots`` page-sized slots numbered from 1 (0 means "no slot"; ``SWSLOT_BAD`` is what an
owner records for a slot whose I/O failed).  ``SlotMap`` hands out runs of contiguous slots
in O(log n) (a segment tree over 64-slot words that keeps, per node, the free run at each
end and the longest one inside: kernel, the blist of later NetBSD).

A swap-backed page (an aobj's page, or an anon's: its owner records the slot, per page
index in the aobj's ``swslots``, in the anon's ``swslot``) is in one of these states, which
``ubcfs check`` proves (invariants 12-14):

==========================  ==============================================================
resident, dirty             PG_CLEAN clear; its owner records no slot
resident, clean             PG_CLEAN set; its owner's slot holds the same data
under swap-out              busy, PG_PAGEOUT, PG_CLEAN; its owner records the slot written
only in swap                not resident; its owner's good slot holds the data (swpgonly)
lost                        not resident; its owner records SWSLOT_BAD (a swap-in failed)
==========================  ==============================================================

Swap-out (``pageout``, called by the pagedaemon's inactive scan): a clean page is freed
at once (its slot keeps the data).  A dirty one joins the open cluster: a run of up to
``cluster`` slots allocated when the cluster is opened (fewer if no such run is free, down
to one slot), each page taking the next slot.  A full cluster, or the open one at the end
of a scan (``flush``), is written with one ``pwritev`` in an I/O thread, asynchronously
(the aiodone daemon runs ``_swapout_done``): on success every page is freed (it now lives
only in swap); on failure it stays resident, dirty and active, and its slot is freed
(ENOMEM: transient) or marked bad (any other errno: never reused).

Swap-in (``read_slots``, called by the aobj pager's getpages; ``anon_swapin`` for an anon,
as uvmfault_anonget does it): one ``preadv`` per run of contiguous slots, with the
RWF_NOWAIT-first rule of ``BackingIO``; the slot is kept, so the page comes in clean.  A
failed read marks the slot bad, and the fault fails with EIO.

Swap-backed pages never use PG_RELEASED (seed): an aobj has no count of writes in flight,
so whoever frees a page under swap-out sleeps until it is unbusied, and only then frees its
slot: a slot is never reused before its write completed (scenario 6).

What is per page and what per run: the slot map costs two bits of state per slot (a
used bit and, for bad slots, a set entry); each owner records one slot per page; a
cluster is one list of pages and one run of slots.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from typing import TYPE_CHECKING, Final

from pagers.aobj import SWSLOT_BAD, Aobj
from pagers.backing_io import IOKind
from ubcfs.vm.diag import panic
from ubcfs.vm.hist import H_SWAPIN, H_SWAPOUT
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    PG_PAGEOUT,
    PG_RDONLY,
    PQ_AOBJ,
    VmPage,
    page_unbusy,
    pageactivate,
    pagealloc,
    pagebusy,
    pagedequeue,
    pagefree,
    pagemarkdirty,
)
from ubcfs.vm.pager import SWAP_FREED, SWAP_KEEP, SWAP_STARTED, Buf
from ubcfs.vm.pmap import pmap_clear_modify, pmap_is_modified, pmap_page_protect

if TYPE_CHECKING:
    from pagers.backing_io import BackingIO
    from ubcfs.vm.anon import VmAnon
    from ubcfs.vm.uvm import Uvm

log = logging.getLogger(__name__)

# Pages per swap-out cluster (kernel: MAXBSIZE / PAGE_SIZE in 2001, 16; here larger, so
# that swap-in read-ahead finds long runs of contiguous slots).
SWAP_CLUSTER: Final = 64

_WORD: Final = 64
_FULL: Final = (1 << _WORD) - 1


def _runs(used: int) -> tuple[int, int, int]:
    """(free run at bit 0 upwards, free run ending at bit 63, longest free run) of a word
    whose set bits are used slots."""
    if used == 0:
        return _WORD, _WORD, _WORD
    free = ~used & _FULL
    if free == 0:
        return 0, 0, 0
    pre = (used & -used).bit_length() - 1
    suf = _WORD - used.bit_length()
    best = 0
    x = free
    while x:
        low = x & -x
        y = x + low  # clears the lowest run of ones and sets the bit above it
        run = (y & -y).bit_length() - low.bit_length()
        best = max(best, run)
        x &= y
    return pre, suf, best


def _first_run(used: int, n: int) -> int:
    """The lowest bit at which ``n`` free bits start in the word, or -1."""
    x = ~used & _FULL
    while x:
        low = x & -x
        y = x + low
        if (y & -y).bit_length() - low.bit_length() >= n:
            return low.bit_length() - 1
        x &= y
    return -1


class SlotMap:
    """Which swap slots are in use, with contiguous-run allocation (kernel: the blist).

    Positions are 0-based here (slot = position + 1).  Every operation costs O(log n) plus
    the number of 64-slot words it touches.
    """

    __slots__ = ("best", "nfree", "nslots", "pre", "size", "suf", "words")

    def __init__(self, nslots: int) -> None:
        if nslots < 0:
            raise ValueError(f"SlotMap: negative size {nslots}")
        self.nslots = nslots
        nwords = max(1, (nslots + _WORD - 1) // _WORD)
        size = 1
        while size < nwords:
            size *= 2
        self.size = size
        self.words = [_FULL] * size
        for w in range(nwords):
            lo = w * _WORD
            n = min(_WORD, nslots - lo)
            self.words[w] = _FULL & ~((1 << n) - 1) if n > 0 else _FULL
        self.pre = [0] * (2 * size)
        self.suf = [0] * (2 * size)
        self.best = [0] * (2 * size)
        for w in range(size):
            self._set_leaf(w)
        span = _WORD
        level_start = size // 2
        while level_start >= 1:
            span *= 2
            for node in range(level_start, 2 * level_start):
                self._pull(node, span)
            level_start //= 2
        self.nfree = nslots

    def _set_leaf(self, w: int) -> None:
        node = self.size + w
        self.pre[node], self.suf[node], self.best[node] = _runs(self.words[w])

    def _pull(self, node: int, span: int) -> None:
        half = span // 2
        lft = 2 * node
        rgt = lft + 1
        pre = self.pre
        suf = self.suf
        best = self.best
        pre[node] = pre[lft] if pre[lft] < half else half + pre[rgt]
        suf[node] = suf[rgt] if suf[rgt] < half else half + suf[lft]
        best[node] = max(best[lft], best[rgt], suf[lft] + pre[rgt])

    def _update_word(self, w: int) -> None:
        self._set_leaf(w)
        node = (self.size + w) // 2
        span = 2 * _WORD
        while node >= 1:
            self._pull(node, span)
            node //= 2
            span *= 2

    def longest(self) -> int:
        """The longest run of free slots."""
        return self.best[1]

    def find(self, n: int) -> int:
        """The lowest position where ``n`` free slots start, or -1 (nothing is changed)."""
        if n <= 0 or self.best[1] < n:
            return -1
        node = 1
        span = self.size * _WORD
        base = 0
        while node < self.size:
            half = span // 2
            lft = 2 * node
            if self.best[lft] >= n:
                node = lft
            elif self.suf[lft] + self.pre[lft + 1] >= n:
                return base + half - self.suf[lft]
            else:
                node = lft + 1
                base += half
            span = half
        at = _first_run(self.words[node - self.size], n)
        if at < 0:
            panic(f"SlotMap.find: leaf {node - self.size} has no run of {n}")
        return base + at

    def _mark(self, pos: int, n: int, used: bool) -> None:
        if pos < 0 or n <= 0 or pos + n > self.nslots:
            panic(f"SlotMap: range {pos}+{n} outside 0..{self.nslots}")
        end = pos + n
        w = pos // _WORD
        while w * _WORD < end:
            lo = max(pos, w * _WORD) - w * _WORD
            hi = min(end, (w + 1) * _WORD) - w * _WORD
            bits = ((1 << (hi - lo)) - 1) << lo
            word = self.words[w]
            if used:
                if word & bits:
                    panic(f"SlotMap: allocating a used slot in {pos + 1}..{end}")
                self.words[w] = word | bits
            else:
                if word & bits != bits:
                    panic(f"SlotMap: freeing a free slot in {pos + 1}..{end}")
                self.words[w] = word & ~bits
            self._update_word(w)
            w += 1
        self.nfree += -n if used else n

    def take(self, pos: int, n: int) -> None:
        """Mark [pos, pos + n) used.  => every one of them is free."""
        self._mark(pos, n, True)

    def give(self, pos: int, n: int) -> None:
        """Mark [pos, pos + n) free.  => every one of them is used."""
        self._mark(pos, n, False)

    def is_used(self, pos: int) -> bool:
        return bool(self.words[pos // _WORD] >> (pos % _WORD) & 1)

    def used_positions(self) -> list[int]:
        """Every used position, ascending (audits; not a hot path)."""
        out: list[int] = []
        for w in range(min(self.size, (self.nslots + _WORD - 1) // _WORD)):
            word = self.words[w]
            if word == 0:
                continue
            base = w * _WORD
            for b in range(_WORD):
                if word >> b & 1 and base + b < self.nslots:
                    out.append(base + b)
        return out


class Swap:
    """The swap device and pager of one machine (kernel: uvm_swap.c's swapdev and the
    pagedaemon's swap clustering).  Implements ``ubcfs.vm.pager.SwapPager``.

    Args:
        uvm: the machine; ``attach`` makes this its ``uvm.swap``.
        path: the swap file; created (sparse) if missing, cut to ``size``.
        size: bytes of swap, a multiple of the page size (0: a device with no slots).
        io: the I/O edge (threads, RWF_NOWAIT reads, fault injection by ``IOKind.SWAP_*``).
        remove: unlink the file at ``close``.
        cluster: pages per swap-out cluster.

    Raises:
        ValueError: a bad size or cluster.  OSError: the file cannot be created or sized.
    """

    def __init__(
        self,
        uvm: Uvm,
        path: str,
        size: int,
        io: BackingIO,
        remove: bool = True,
        cluster: int = SWAP_CLUSTER,
    ) -> None:
        ps = uvm.page_size
        if size < 0 or size % ps:
            raise ValueError(f"swap size {size} is not a multiple of the page size {ps}")
        if cluster < 1:
            raise ValueError(f"swap cluster {cluster} must be at least one page")
        self.uvm = uvm
        self.path = path
        self.io = io
        self.remove = remove
        self.cluster = cluster
        self.slots = SlotMap(size // ps)
        self.bad: set[int] = set()  # slots marked bad (allocated for ever)
        self.aobjs: set[Aobj] = set()  # every live aobj (owners of slots), for audits
        # The open swap-out cluster: its run of slots and the pages given slots so far.
        self.cl_start = 0
        self.cl_n = 0
        self.cl_pages: list[VmPage] = []
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(self.fd, size)
        except OSError:
            os.close(self.fd)
            raise

    def attach(self) -> None:
        """Make this the machine's swap pager."""
        self.uvm.swap = self

    def close(self) -> None:
        """Close (and, unless it was given, remove) the swap file.  => no swap I/O in
        flight; the machine no longer uses this pager."""
        if self.uvm.swap is self:
            self.uvm.swap = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
            if self.remove:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)

    # --- SwapPager: sizes -------------------------------------------------------------

    @property
    def nslots(self) -> int:
        return self.slots.nslots

    @property
    def inuse(self) -> int:
        return self.slots.nslots - self.slots.nfree

    @property
    def nbad(self) -> int:
        return len(self.bad)

    def full(self) -> bool:
        """Nearly every good slot holds the only copy of a page (kernel: uvm_swapisfull,
        99%)."""
        good = self.nslots - len(self.bad)
        return self.uvm.uvmexp.swpgonly >= good * 99 // 100

    def short(self) -> bool:
        return self.slots.nfree == 0 and not self.full()

    # --- slots (kernel: uvm_swap_alloc / uvm_swap_free / uvm_swap_markbad) ------------

    def alloc(self, n: int, lessok: bool) -> tuple[int, int]:
        """Allocate ``n`` contiguous slots, or (``lessok``) a single one if no such run is
        free; returns (first slot, count), (0, 0) when nothing could be had."""
        pos = self.slots.find(n)
        if pos < 0 and lessok and n > 1:
            n = 1
            pos = self.slots.find(1)
        if pos < 0:
            return 0, 0
        self.slots.take(pos, n)
        return pos + 1, n

    def free(self, slot: int, n: int = 1) -> None:
        """Give back ``n`` slots from ``slot``; bad slots (and SWSLOT_BAD, 0) are ignored."""
        if slot <= 0:
            return
        for s in range(slot, slot + n):
            if s not in self.bad:
                self.slots.give(s - 1, 1)

    def markbad(self, slot: int, n: int = 1) -> None:
        """After an I/O error: the slots stay allocated and are never handed out again."""
        for s in range(slot, slot + n):
            if not self.slots.is_used(s - 1):
                panic(f"swap markbad: slot {s} is not allocated")
            self.bad.add(s)

    # --- swap-out (the pagedaemon's side) ---------------------------------------------

    def _owner(self, pg: VmPage) -> tuple[Aobj, int]:
        uobj = pg.uobject
        if uobj is None or not pg.pqflags & PQ_AOBJ or not isinstance(uobj.pgops, Aobj):
            panic(f"swap: {pg!r} is not an aobj page")
        return uobj.pgops, pg.offset >> self.uvm.page_shift

    def _slot_of(self, pg: VmPage) -> int:
        """The slot the owner of a swap-backed page records for it (0: none)."""
        anon = pg.uanon
        if anon is not None:
            return anon.swslot
        aobj, idx = self._owner(pg)
        return aobj.find_swslot(idx)

    def _set_slot(self, pg: VmPage, slot: int) -> None:
        """Record ``slot`` (0: none) for a swap-backed page; frees nothing."""
        anon = pg.uanon
        if anon is not None:
            anon.swslot = slot
            anon.swap = self if slot else None
            return
        aobj, idx = self._owner(pg)
        aobj.set_swslot(idx, slot)

    def pageout(self, pg: VmPage) -> int:
        uvm = self.uvm
        exp = uvm.uvmexp
        pmap_page_protect(uvm, pg, 0)
        if pmap_is_modified(pg):
            pagemarkdirty(pg)  # written through a mapping: its slot is stale (dropped)
        elif pg.flags & PG_CLEAN:
            if self._slot_of(pg) <= 0:
                panic(f"swap pageout: clean swap-backed {pg!r} has no slot (PR 7578)")
            pagefree(uvm, pg)
            exp.swpgonly += 1  # only its slot holds it now
            return SWAP_FREED
        if self.cl_n == 0:
            if self.full():
                return SWAP_KEEP
            start, n = self.alloc(self.cluster, lessok=True)
            if n == 0:
                exp.swap_alloc_fail += 1
                return SWAP_KEEP
            self.cl_start, self.cl_n = start, n
        slot = self.cl_start + len(self.cl_pages)
        self._set_slot(pg, slot)
        pagebusy(uvm, pg, "swapout")
        pmap_clear_modify(pg)
        pg.flags |= PG_PAGEOUT | PG_CLEAN
        uvm.uvmexp.paging += 1
        pagedequeue(uvm, pg)
        self.cl_pages.append(pg)
        if len(self.cl_pages) == self.cl_n:
            self._start_write()
        return SWAP_STARTED

    def flush(self) -> None:
        if self.cl_n:
            self._start_write()

    def _start_write(self) -> None:
        """Write the open cluster (kernel: uvm_swap_put, async); its unused slots are freed
        first."""
        pages = self.cl_pages
        start = self.cl_start
        unused = self.cl_n - len(pages)
        self.cl_start = self.cl_n = 0
        self.cl_pages = []
        if unused:
            self.free(start + len(pages), unused)
        if not pages:
            return
        uvm = self.uvm
        uvm.uvmexp.swap_outs_io += 1
        uvm.uvmexp.pdpageouts += 1
        h = uvm.hist
        if h is not None:
            h.log(H_SWAPOUT, "swap", start, len(pages))
        buf = Buf(pages, start, True, self._swapout_done, self)
        aio = uvm.aio
        if aio is None or not aio.running:
            panic("swap-out with no aiodone daemon running")
        aio.start_async(self._swapout, buf)

    async def _swapout(self, buf: Buf) -> None:
        """=> the cluster's pages are busy, PG_PAGEOUT, unmapped, across the await."""
        ps = self.uvm.page_size
        views = self.uvm.physmem.iovecs([pg.phys_addr for pg in buf.pages], len(buf.pages) * ps)
        err, n = await self.io.writev(self.fd, views, (buf.offset - 1) * ps, IOKind.SWAP_WRITE)
        if not err and n != len(buf.pages) * ps:
            err = errno.EIO
        buf.error = err

    def _swapout_done(self, buf: Buf) -> None:
        """Completion of a swap-out cluster (kernel: uvm_aio_aiodone for swap writes)."""
        uvm = self.uvm
        exp = uvm.uvmexp
        err = buf.error
        if err:
            exp.swap_write_errors += 1
            exp.pageout_failed += len(buf.pages)
            log.warning(
                "swap-out of %d pages at slot %d failed: %s (kept in memory%s)",
                len(buf.pages),
                buf.offset,
                errno.errorcode.get(err, str(err)),
                "" if err == errno.ENOMEM else "; slots marked bad",
            )
        for i, pg in enumerate(buf.pages):
            slot = buf.offset + i
            pg.flags &= ~PG_PAGEOUT
            exp.paging -= 1
            if not err:
                # Busy and unmapped since it joined the cluster: nobody changed it.
                pagefree(uvm, pg)
                exp.swpgonly += 1
                exp.swapouts += 1
                exp.pdfreed += 1
                continue
            if self._slot_of(pg) == slot:
                self._set_slot(pg, 0)
            if err == errno.ENOMEM:
                self.free(slot)
            else:
                self.markbad(slot)
            pagemarkdirty(pg)
            pageactivate(uvm, pg)
            page_unbusy(uvm, pg)

    # --- dirtying and shortage --------------------------------------------------------

    def dirtied(self, pg: VmPage) -> None:
        anon = pg.uanon
        if anon is not None:
            if anon.swslot > 0:
                self.free(anon.swslot)
                anon.swslot = 0
                anon.swap = None
            return
        if not pg.pqflags & PQ_AOBJ:
            return
        aobj, idx = self._owner(pg)
        aobj.drop_resident_swslot(idx)

    def drop_slot(self, pg: VmPage) -> bool:
        if pg.uanon is None and not pg.pqflags & PQ_AOBJ:
            return False
        if self._slot_of(pg) <= 0:
            return False
        pagemarkdirty(pg)  # PG_CLEAN first, then the slot (PR 7578): dirtied frees it
        return True

    # --- swap-in ----------------------------------------------------------------------

    async def read_slots(self, slot: int, pages: list[VmPage]) -> int:
        """Read the contiguous slots from ``slot`` into ``pages`` (kernel: uvm_swap_get);
        returns an errno.  => the pages are busy, owned by the caller, across the await."""
        ps = self.uvm.page_size
        want = len(pages) * ps
        views = self.uvm.physmem.iovecs([pg.phys_addr for pg in pages], want)
        exp = self.uvm.uvmexp
        exp.swap_ins_io += 1
        h = self.uvm.hist
        if h is not None:
            h.log(H_SWAPIN, "swap", slot, len(pages))
        err, n = await self.io.readv(self.fd, views, (slot - 1) * ps, IOKind.SWAP_READ)
        if not err and n != want:
            err = errno.EIO
        if err:
            exp.swap_read_errors += 1
            log.warning(
                "swap-in of %d pages at slot %d failed: %s (slots marked bad)",
                len(pages),
                slot,
                errno.errorcode.get(err, str(err)),
            )
        else:
            exp.swapins += len(pages)
        return err

    async def anon_swapin(self, anon: VmAnon) -> tuple[int, VmPage | None]:
        """Bring in an anon whose only copy is in swap (kernel: the swap-in half of
        uvmfault_anonget).

        Returns:
            (0, page): the page, busy and owned by the caller, clean (its slot keeps the
            data), on no paging queue; (EIO, None): the read failed, the slot is marked
            bad and the anon records SWSLOT_BAD (its data is lost, scenario 22); (ENOMEM,
            None): no page now (the caller waits for memory and tries again).

        => the anon has no page and a good slot; the caller holds no anon lock (it is taken
           around the allocation, dropped across the read, as NetBSD unlocks for I/O).
        => may sleep (the read).
        """
        slot = anon.swslot
        if anon.page is not None or slot <= 0:
            panic(f"anon_swapin: {anon!r} is resident or has no good slot")
        uvm = self.uvm
        with anon.lock:
            pg = pagealloc(uvm, None, 0, anon)
        if pg is None:
            return errno.ENOMEM, None
        err = await self.read_slots(slot, [pg])
        exp = uvm.uvmexp
        exp.swpgonly -= 1  # in memory now, or lost
        if err:
            self.markbad(slot)
            anon.swslot = SWSLOT_BAD
            pagefree(uvm, pg)  # busy, ours, never mapped
            return errno.EIO, None
        pg.flags &= ~(PG_FAKE | PG_RDONLY)
        pmap_clear_modify(pg)
        return 0, pg

    # --- audit (invariants 12-14) -----------------------------------------------------

    def audit(self) -> list[str]:
        """Check the slot accounting against every owner; a list of problems."""
        out: list[str] = []
        uvm = self.uvm
        owned: dict[int, str] = {}
        onlyswap = 0
        for aobj in self.aobjs:
            pages = aobj.uobj.pages
            for idx, slot in aobj.swslots.items():
                pg = pages.get(idx << uvm.page_shift)
                if slot == SWSLOT_BAD:
                    if pg is not None:
                        out.append(f"[14] {aobj.name}[{idx}]: resident with a bad slot")
                    continue
                if slot <= 0 or slot > self.nslots:
                    out.append(f"[14] {aobj.name}[{idx}]: slot {slot} out of range")
                    continue
                if slot in owned:
                    out.append(f"[14] slot {slot} owned by {owned[slot]} and {aobj.name}[{idx}]")
                owned[slot] = f"{aobj.name}[{idx}]"
                if slot in self.bad:
                    out.append(f"[14] {aobj.name}[{idx}] records bad slot {slot}")
                elif not self.slots.is_used(slot - 1):
                    out.append(f"[14] {aobj.name}[{idx}]: slot {slot} is free in the map")
                if pg is None or pg.flags & PG_FAKE:
                    onlyswap += 1  # not resident, or being read in
                elif not pg.flags & PG_CLEAN:
                    out.append(f"[13] dirty {pg!r} holds slot {slot}")
            for pg in pages.values():
                idx = pg.offset >> uvm.page_shift
                if pg.flags & PG_CLEAN and not pg.flags & PG_BUSY and aobj.find_swslot(idx) <= 0:
                    out.append(f"[12] clean swap-backed {pg!r} without a valid slot")
        onlyswap += self._audit_anons(owned, out)
        cluster = set(range(self.cl_start, self.cl_start + self.cl_n)) if self.cl_n else set()
        for pos in self.slots.used_positions():
            s = pos + 1
            if s not in owned and s not in self.bad and s not in cluster:
                out.append(f"[14] slot {s} allocated but owned by nobody")
        unowned = len(cluster - owned.keys())  # the open cluster's slots not yet given out
        if self.inuse != len(owned) + len(self.bad) + unowned:
            out.append(
                f"[14] swpginuse {self.inuse} != owned {len(owned)} + bad {len(self.bad)}"
                f" + open cluster {unowned}"
            )
        if uvm.uvmexp.swpgonly != onlyswap:
            out.append(f"[14] swpgonly {uvm.uvmexp.swpgonly} != {onlyswap} slots only in swap")
        return out

    def _audit_anons(self, owned: dict[int, str], out: list[str]) -> int:
        """The slots of the anons of every amap (each anon once): as for aobj pages.
        Returns how many of them hold the only copy of their page."""
        seen: set[int] = set()
        onlyswap = 0
        for amap in self.uvm.amaps:
            for anon in amap.anons.values():
                if id(anon) in seen:
                    continue
                seen.add(id(anon))
                slot, pg = anon.swslot, anon.page
                if slot == SWSLOT_BAD:
                    if pg is not None:
                        out.append(f"[14] {anon!r}: resident with a bad slot")
                    continue
                clean = pg is not None and pg.flags & PG_CLEAN and not pg.flags & PG_BUSY
                if clean and slot <= 0:
                    out.append(f"[12] clean swap-backed {pg!r} without a valid slot")
                if slot == 0:
                    continue
                if slot < 0 or slot > self.nslots:
                    out.append(f"[14] {anon!r}: slot {slot} out of range")
                    continue
                if slot in owned:
                    out.append(f"[14] slot {slot} owned by {owned[slot]} and {anon!r}")
                owned[slot] = repr(anon)
                if slot in self.bad:
                    out.append(f"[14] {anon!r} records bad slot {slot}")
                elif not self.slots.is_used(slot - 1):
                    out.append(f"[14] {anon!r}: slot {slot} is free in the map")
                if pg is None or pg.flags & PG_FAKE:
                    onlyswap += 1
                elif not pg.flags & PG_CLEAN:
                    out.append(f"[13] dirty {pg!r} holds slot {slot}")
        return onlyswap
