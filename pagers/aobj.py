"""Anonymous memory objects (~ uvm_aobj.c: uao_create, uao_get, uao_put, uao_set_swslot,
uao_find_swslot, uao_dropswap, uao_detach).

An ``Aobj`` is a ``UvmObject`` whose pages are anonymous memory (PQ_AOBJ, swap backed): a
tmpfs file's data.  It implements the object's pager operations (``PagerOps``), so UBC
windows map it and fault its pages in exactly as they do a vnode's:

* ``get`` (uao_get): resident pages are returned busy; a missing page is read from its swap
  slot if it has one (then it is clean: the slot keeps the data), zero-filled otherwise (then
  it is dirty: no slot holds it), or with PGO_OVERWRITE left unfilled for the caller.  A page
  whose slot went bad (a failed swap-in) is lost: reading it fails with EIO until it is
  overwritten whole or truncated away.  Neighbours that follow the range in contiguous slots
  are read ahead in the same ``preadv``.
* ``put`` (uao_put): PGO_FREE frees the range's pages and slots (the data is discarded: an
  aobj has nothing to write back to); PGO_DEACTIVATE deactivates; cleaning is a no-op (the
  pagedaemon, not putpages, moves aobj pages to swap).  Busy pages are waited for, never
  PG_RELEASED (seed: an aobj cannot tell when a swap write into a slot has finished).

Per page the aobj keeps one entry of ``swslots`` (page index -> slot) for the pages that have
a slot, nothing for the others (kernel: the array or hash of 16-slot clusters).  Accounting
rule (``uvmexp.swpgonly``): a good slot whose page is not resident (or still PG_FAKE) counts
once; ``Swap.audit`` recounts it.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Final

import trio

from pagers.vnode import findpages, release_pages
from ubcfs.vm.diag import panic
from ubcfs.vm.hist import H_GETPAGES, H_PUTPAGES
from ubcfs.vm.object import UvmObject, obj_destroy
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    PG_RDONLY,
    VmPage,
    page_unbusy_many,
    pagealloc,
    pagebusy,
    pagedeactivate,
    pagefree,
    pagemarkdirty,
    pagewait,
)
from ubcfs.vm.pager import (
    PGO_ALLPAGES,
    PGO_DEACTIVATE,
    PGO_FREE,
    PGO_LOCKED,
    PGO_OVERWRITE,
    PGO_PASTEOF,
    uvm_wait,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import pmap_clear_modify, pmap_clear_reference, pmap_page_protect

if TYPE_CHECKING:
    from collections.abc import Callable

    from pagers.swap import Swap
    from ubcfs.vm.uvm import Uvm

_P_WRITE: Final = Prot.WRITE.value

# What an owner records for a slot whose I/O failed (kernel: SWSLOT_BAD).
SWSLOT_BAD: Final = -1

# Pages of swap-in read-ahead past the faulting range, while their slots are contiguous.
SWAP_READAHEAD: Final = 256

_ALL: Final = 1 << 62

# When nothing can make room (no swap slot to page out to, no pageout in flight), an
# allocation for an aobj fails with ENOSPC after this many memory waits or this many
# seconds, whichever comes first: a tmpfs write past memory + swap gets an error, never a
# hang.  One pagedaemon pass frees every clean page it can, so a few waits suffice.
NOMEM_TRIES: Final = 4
NOMEM_WAIT: Final = 2.0


class Aobj:
    """An anonymous memory object and its pager (kernel: struct uvm_aobj + aobj_pager).

    Args:
        uvm: the machine.
        name: for messages and audits.
        swap: the machine's swap pager, or None (then its pages can never leave memory).
    """

    __slots__ = ("alloc", "name", "size_of", "swap", "swslots", "uobj", "uvm")

    def __init__(self, uvm: Uvm, name: str, swap: Swap | None) -> None:
        self.uvm = uvm
        self.name = name
        self.swap = swap
        # The size of the file whose data this is (tmpfs), for the past-EOF check of
        # faults (kernel: tmpfs_getpages); None for an object with no end.
        self.size_of: Callable[[], int] | None = None
        # The file system's allocation of the pages a write will fill (kernel: GOP_ALLOC,
        # which genfs_getpages calls for a write into a hole): (offset, length) -> 0 or an
        # errno (tmpfs: ENOSPC when the pages not yet resident or in swap do not fit its
        # capacity).  None: anonymous memory with no limit but memory + swap.
        self.alloc: Callable[[int, int], int] | None = None
        self.uobj = UvmObject(uvm, name, is_aobj=True, pgops=self)
        self.swslots: dict[int, int] = {}
        if swap is not None:
            swap.aobjs.add(self)

    def __repr__(self) -> str:
        return f"<Aobj {self.name} npages={self.uobj.npages} swslots={len(self.swslots)}>"

    # --- slots (kernel: uao_find_swslot, uao_set_swslot, uao_dropswap) ----------------

    def find_swslot(self, idx: int) -> int:
        """The slot of page ``idx``: 0 none, SWSLOT_BAD lost, else a slot number."""
        return self.swslots.get(idx, 0)

    def set_swslot(self, idx: int, slot: int) -> int:
        """Record ``slot`` (0: none) for page ``idx``; return the old one.  Frees nothing."""
        old = self.swslots.pop(idx, 0)
        if slot:
            self.swslots[idx] = slot
        return old

    def drop_resident_swslot(self, idx: int) -> None:
        """Page ``idx`` is resident and no longer matches its slot: free the slot."""
        old = self.set_swslot(idx, 0)
        if old > 0 and self.swap is not None:
            self.swap.free(old)

    def dropswap(self, idx: int) -> None:
        """Page ``idx`` is not resident and its data is discarded: free its slot."""
        old = self.set_swslot(idx, 0)
        if old > 0:
            self.uvm.uvmexp.swpgonly -= 1
            if self.swap is not None:
                self.swap.free(old)

    # --- PagerOps: get ------------------------------------------------------------------

    async def get(
        self, uobj: UvmObject, offset: int, npages: int, access: int, flags: int
    ) -> tuple[int, list[VmPage | None]]:
        """pgo_get (kernel: uao_get).  Returns (0, pages busy and valid -- except the new
        ones with PGO_OVERWRITE, which are PG_FAKE and dirty), (EINVAL, []) at or past the
        end of the file whose data this is (``size_of``) without PGO_PASTEOF, (EBUSY, []) with
        PGO_LOCKED, (EIO, []) when a page's swap copy is lost or cannot be read, (ENOSPC, [])
        when a write's new pages do not fit the file system (``alloc``) or when memory stayed
        short for ``NOMEM_WAIT`` seconds with no swap slot to page out to, or the errno of a
        memory wait bounded by failing write-back.

        => may sleep (not with PGO_LOCKED): on busy pages, for memory, in swap reads.
        """
        uvm = self.uvm
        if uobj is not self.uobj:
            panic(f"uao_get: {uobj!r} is not {self!r}'s object")
        if offset & uvm.page_mask or npages <= 0:
            raise ValueError(f"uao_get: bad range offset={offset:#x} npages={npages}")
        if self.size_of is not None and not flags & PGO_PASTEOF:
            # A file's data (kernel: tmpfs_getpages): nothing at or past its end but for
            # a write that extends it.
            end = (self.size_of() + uvm.page_mask) & ~uvm.page_mask
            if offset >= end:
                return errno.EINVAL, []
            npages = min(npages, (end - offset) >> uvm.page_shift)
        if flags & PGO_LOCKED:
            pg = uobj.pages.get(offset)
            if pg is None or pg.flags & (PG_BUSY | PG_FAKE):
                return errno.EBUSY, []
            pagebusy(uvm, pg, "uao_get")
            return 0, [pg]
        npages = min(npages, uvm.max_cluster_pages())
        h = uvm.hist
        if h is not None:
            h.log(H_GETPAGES, self.name, offset, npages)
        if access & _P_WRITE and self.alloc is not None:
            # A write (a store through a mapping, a write fault of a window) may fill
            # holes: the file system allocates them now, so that a full tmpfs says ENOSPC
            # at the write fault, never later (reference section 11, scenario 11).
            err = self.alloc(offset, npages << uvm.page_shift)
            if err:
                return err, []
        waiting: float | None = None
        hopeless = 0
        while True:
            err, found = await findpages(uvm, uobj, offset, npages, 0, "uao_get")
            if err != errno.ENOMEM:
                break
            if npages > 1:
                # Memory is short: take fewer pages (the first at least; the caller's next
                # window use gets the rest) rather than wait for a long run.  A tmpfs near
                # full has only a few pages' worth of free slots to page out to: a wait
                # for a whole window's pages would never end.
                exp = uvm.uvmexp
                npages = max(1, min(npages // 2, exp.free - exp.reserve_kernel - 1))
                continue
            now = trio.current_time()
            if waiting is None:
                waiting = now
            if self._no_room():
                hopeless += 1
                if hopeless > NOMEM_TRIES or now - waiting >= NOMEM_WAIT:
                    uvm.uvmexp.aobj_nomem += 1
                    return errno.ENOSPC, []
            else:
                hopeless = 0
            err = await uvm_wait(uvm, "uao_get", npages, waiting)
            if err:
                return err, []
        pages = [pg for pg in found if pg is not None]
        err = await self._fill(pages, bool(flags & PGO_OVERWRITE))
        if err:
            release_pages(uvm, pages)  # frees the pages never filled, keeps the others
            return err, []
        if access & _P_WRITE:
            # The caller will store into them: their slots are stale from now on.  (A
            # store through an existing mapping only sets the modified bit; the pagedaemon
            # drops the slot of such a page when it meets it, reference section 6.3.)
            for pg in pages:
                if pg.flags & PG_CLEAN:
                    pagemarkdirty(pg)
        return 0, list(pages)

    def _no_room(self) -> bool:
        """Can nothing make room?  No pageout in flight (whose completion would free pages)
        and no swap slot to page out to: then only clean pages can be freed, which the
        pagedaemon's first pass does."""
        if self.uvm.uvmexp.paging:
            return False
        swap = self.swap
        return swap is None or swap.slots.nfree == 0 or swap.full()

    async def _fill(self, pages: list[VmPage], overwrite: bool) -> int:
        """Make the PG_FAKE pages of ``pages`` valid (or, with ``overwrite``, ready for
        the caller to fill); returns an errno.  => the pages are busy, the caller's."""
        uvm = self.uvm
        exp = uvm.uvmexp
        shift = uvm.page_shift
        runs: list[tuple[int, list[VmPage]]] = []  # (first slot, pages in slot order)
        for pg in pages:
            if not pg.flags & PG_FAKE:
                continue
            idx = pg.offset >> shift
            slot = self.find_swslot(idx)
            if slot == SWSLOT_BAD:
                if not overwrite:
                    return errno.EIO  # its only copy was lost
                self.set_swslot(idx, 0)  # overwritten whole: no longer lost
                slot = 0
            if slot > 0:
                # Overwritten or not, a page whose only copy is in swap is read: a copy that
                # faults part way must not lose the rest of the old data.
                last = runs[-1] if runs else None
                if (
                    last is not None
                    and last[0] + len(last[1]) == slot
                    and last[1][-1].offset + uvm.page_size == pg.offset
                ):
                    last[1].append(pg)
                else:
                    runs.append((slot, [pg]))
                continue
            pg.flags &= ~PG_RDONLY
            if overwrite:
                pagemarkdirty(pg)  # the caller fills every byte
                exp.fastpath_skipped_zero += 1
                continue
            uvm.physmem.zero(pg.phys_addr)
            exp.zero_fills += 1
            pmap_clear_modify(pg)
            pg.flags &= ~PG_FAKE
            pagemarkdirty(pg)  # no slot holds it: a clean swap-backed page needs one
        if not runs:
            return 0
        ahead = self._readahead_pages(runs[-1])
        if ahead:
            runs[-1][1].extend(ahead)
        first_err = 0
        for slot, run in runs:
            err = await self._swapin(slot, run, ahead)
            first_err = first_err or err
        # What is left of ``ahead`` was read (``_lost`` takes out the pages it freed).
        for pg in ahead:
            pagedeactivate(uvm, pg)  # read ahead, not yet wanted
        page_unbusy_many(uvm, ahead)
        exp.readahead_pages += len(ahead)
        return first_err

    def _readahead_pages(self, run: tuple[int, list[VmPage]]) -> list[VmPage]:
        """Busy new pages for the non-resident pages that follow the last run in
        contiguous slots, while memory is plentiful (kernel: none in 2001; later uao_get
        reads one page; this is the issue's read-ahead)."""
        uvm = self.uvm
        exp = uvm.uvmexp
        slot, pages = run
        ps = uvm.page_size
        off = pages[-1].offset + ps
        nslot = slot + len(pages)
        room = exp.free - exp.freetarg - exp.reserve_kernel
        out: list[VmPage] = []
        with self.uobj.vmobjlock:
            while len(out) < min(SWAP_READAHEAD, room):
                if self.find_swslot(off >> uvm.page_shift) != nslot or off in self.uobj.pages:
                    break
                pg = pagealloc(uvm, self.uobj, off)
                if pg is None:
                    break
                out.append(pg)
                off += ps
                nslot += 1
        return out

    async def _swapin(self, slot: int, run: list[VmPage], ahead: list[VmPage]) -> int:
        """Read a run of contiguous slots into its busy PG_FAKE pages.  On failure the
        pages are read one by one, so that only a slot that really fails is marked bad;
        read-ahead pages that fail are just freed.  Returns the first errno of a page the
        caller asked for."""
        swap = self.swap
        if swap is None:
            panic(f"{self!r}: a page has a slot but there is no swap")
        err = await swap.read_slots(slot, run)
        if not err:
            self._swapped_in(run)
            return 0
        if len(run) == 1:
            return self._lost(slot, run[0], ahead)
        first = 0
        for i, pg in enumerate(run):
            e = await swap.read_slots(slot + i, [pg])
            if e:
                e = self._lost(slot + i, pg, ahead)
            else:
                self._swapped_in([pg])
            first = first or e
        return first

    def _swapped_in(self, pages: list[VmPage]) -> None:
        exp = self.uvm.uvmexp
        for pg in pages:
            pg.flags &= ~(PG_FAKE | PG_RDONLY)
            pmap_clear_modify(pg)  # clean: its slot still holds the same data
        exp.swpgonly -= len(pages)

    def _lost(self, slot: int, pg: VmPage, ahead: list[VmPage]) -> int:
        """A swap-in of ``pg`` from ``slot`` failed (scenario 22): the slot is marked bad and
        recorded as such, and the page is freed.  Returns EIO, or 0 for a read-ahead page
        (its slot is left as it was: nobody asked for it yet)."""
        uvm = self.uvm
        if pg in ahead:
            ahead.remove(pg)
            pagefree(uvm, pg)  # busy, ours, never mapped
            return 0
        idx = pg.offset >> uvm.page_shift
        assert self.swap is not None
        self.swap.markbad(slot)
        self.set_swslot(idx, SWSLOT_BAD)
        uvm.uvmexp.swpgonly -= 1  # a bad slot holds nothing
        return errno.EIO

    # --- PagerOps: put ------------------------------------------------------------------

    async def put(self, uobj: UvmObject, start: int, end: int, flags: int) -> int:
        """pgo_put (kernel: uao_put): PGO_FREE frees the pages and slots of [start, end)
        (end 0 or PGO_ALLPAGES: to the end); PGO_DEACTIVATE deactivates the unbusy pages;
        PGO_CLEANIT has nothing to do.  Returns 0.

        => may sleep (PGO_FREE waits for busy pages, one at a time).
        """
        if uobj is not self.uobj:
            panic(f"uao_put: {uobj!r} is not {self!r}'s object")
        if flags & PGO_ALLPAGES or end == 0:
            end = _ALL
            if flags & PGO_ALLPAGES:
                start = 0
        h = self.uvm.hist
        if h is not None:
            h.log(H_PUTPAGES, self.name, start, end)
        if flags & PGO_FREE:
            await self.free_range(start, end)
        elif flags & PGO_DEACTIVATE:
            for pg in uobj.pages_in_range(start, end):
                if not pg.flags & PG_BUSY and not pg.wire_count:
                    pmap_clear_reference(pg)
                    pagedeactivate(self.uvm, pg)
        return 0

    async def free_range(self, start: int, end: int) -> None:
        """Discard [start, end): free every page (waiting for busy ones) and every slot.

        => may sleep.  => a page under swap-out is waited for, so its slot is freed only
           after its write completed (scenario 6).
        """
        uvm = self.uvm
        mask = uvm.page_mask
        start = (start + mask) & ~mask
        while True:
            busy: VmPage | None = None
            for pg in self.uobj.pages_in_range(start, end):
                if pg.flags & PG_BUSY:
                    busy = pg
                    break
                self._free_page(pg)
            if busy is None:
                break
            await pagewait(uvm, busy, "uao_put")
        shift = uvm.page_shift
        lo = start >> shift
        hi = end >> shift if end < _ALL else _ALL
        for idx in [i for i in self.swslots if lo <= i < hi]:
            self.dropswap(idx)

    def _free_page(self, pg: VmPage) -> None:
        """Free an unbusy resident page and its slot.  => the page is not busy."""
        uvm = self.uvm
        self.drop_resident_swslot(pg.offset >> uvm.page_shift)
        pmap_page_protect(uvm, pg, 0)  # wired mappings too (truncation of wired pages)
        pagefree(uvm, pg)

    def discard_now(self) -> bool:
        """Free everything and retire the object at once, when no page is busy (nothing to
        wait for: the common case of a removed tmpfs file, kernel: tmpfs_free_node ->
        uao_detach in the thread that removed it); False, with nothing done, otherwise.
        => never sleeps.  => the object is mapped in no UBC window."""
        if any(pg.flags & PG_BUSY for pg in self.uobj.pages_in_range(0, _ALL)):
            return False
        for pg in list(self.uobj.pages_in_range(0, _ALL)):
            self._free_page(pg)
        for idx in list(self.swslots):
            self.dropswap(idx)
        obj_destroy(self.uobj)
        if self.swap is not None:
            self.swap.aobjs.discard(self)
        return True

    async def destroy(self) -> None:
        """Free everything and retire the object (kernel: uao_detach of the last
        reference).  => may sleep."""
        await self.free_range(0, _ALL)
        obj_destroy(self.uobj)
        if self.swap is not None:
            self.swap.aobjs.discard(self)
