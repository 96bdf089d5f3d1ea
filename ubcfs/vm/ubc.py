"""UBC windows: file data moves only through temporary kernel mappings of the file's own
pages (~ uvm_bio.c: ubc_alloc, ubc_release, ubc_fault, ubc_uiomove).

Theory of operation
-------------------
A fixed pool of windows, each a ``winsize`` slice of kernel virtual address space.  A window
is named by (object, window-aligned offset).  ``ubc_alloc`` finds the window for a range in
a hash (a hit), or takes the least recently used idle window (a miss), removes its old
mappings (``pmap_remove`` + ``pmap_update``) and renames it; nothing is mapped yet.  The copy
(``uiomove``) goes through the kernel pmap like a CPU would, so the first touch of each page
takes a page fault; ``ubc_fault`` calls the object's pager ``get`` for the rest of the
window and enters *managed* mappings (``pmap_enter`` with PMAP_CANFAIL), so the
referenced/modified bits of every page are real.  ``ubc_release`` puts a window whose last
user left on the idle LRU **with its mappings in place**: a later access to the same range
costs no fault.  The pagedaemon may still take those pages: it removes their mappings with
``pmap_page_protect`` first.

UBC_FAULTBUSY (ffs_write uses it for the whole pages of a write: the extending-write fast
path past the old EOF, and pages inside the file that the write overwrites entirely):
``ubc_alloc`` gets the pages busy and unread (PGO_OVERWRITE) and enters them with
``pmap_kenter_pa``; ``ubc_release`` clears PG_FAKE and PG_CLEAN (kenter writes are invisible
to the pmap), activates and unbusies them.  It covers whole pages only (``_faultbusy``
panics otherwise), so a copy that succeeds has filled every page: there is no tail to
zero.  The partial edge pages of a write take the slow path, whose fault reads them (or
zero-fills them past EOF).  If the copy failed part way, every page of the window that was
not valid before is zeroed and freed at the unbusy (PG_RELEASED), so garbage is never
exposed and, inside the file, the old bytes are read back from the backing file -- where
NetBSD zeroes them and writes the zeroes.

The idle windows are on an LRU queue linked through the windows themselves (kernel: the
``ubc_object.inactive`` TAILQ): taking one off or putting one on allocates nothing.

What is per page and what per run: a window is named, hashed and kept on the LRU as a
whole; its fast-path pages are kentered and kremoved as one run (one ``KRun``, one stale
entry); every page is translated through the pmap once per copy, but the bytes move with
one memcpy per run of physically contiguous frames.  Per page there remain the pmap slot,
the page's flags and queue links, and its dirty tag bit.
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Final

import trio

from ubcfs.vm.diag import panic
from ubcfs.vm.hist import H_UBC_FAULT
from ubcfs.vm.page import (
    PG_FAKE,
    PG_RDONLY,
    PG_RELEASED,
    page_unbusy_many,
    pageactivate,
    pagemarkdirty,
)
from ubcfs.vm.pager import PGO_NOBLOCKALLOC, PGO_OVERWRITE, PGO_PASTEOF, PGO_SYNCIO, uvm_wait
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    PMAP_CANFAIL,
    PageFault,
    pmap_enter,
    pmap_kenter_pages,
    pmap_kremove,
    pmap_remove,
    pmap_translate,
    pmap_update,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ubcfs.vm.object import UvmObject
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.uvm import Uvm

_P_READ: Final = Prot.READ.value
_P_WRITE: Final = Prot.WRITE.value
_P_RW: Final = Prot.RW.value

UBC_BASE_VA: Final = 1 << 40  # where the windows live in the kernel's address space


class UBC(enum.Flag):
    """ubc_alloc flags (kernel: UBC_*)."""

    NONE = 0
    READ = 0x01
    WRITE = 0x02
    FAULTBUSY = 0x04  # extending-write fast path: pages busy, unread, kenter-mapped


UBC_READ: Final = UBC.READ.value
UBC_WRITE: Final = UBC.WRITE.value
UBC_FAULTBUSY: Final = UBC.FAULTBUSY.value


class Uio:
    """The user side of a copy (kernel: struct uio): a buffer and how far it has been moved.

    Attributes:
        buf: the user buffer (a writable one for reads).
        done: bytes moved so far.
        efault_at: simulate a user buffer that becomes invalid at this byte (copyin/copyout
            returning EFAULT there), as a bad address from a simulated process would; None for
            a normal buffer.
    """

    __slots__ = ("buf", "done", "efault_at")

    def __init__(self, buf: memoryview, efault_at: int | None = None) -> None:
        self.buf = buf
        self.done = 0
        self.efault_at = efault_at

    @property
    def resid(self) -> int:
        return len(self.buf) - self.done


def _copy(view: memoryview, pa: int, buf: memoryview, u: int, n: int, write: bool) -> None:
    """Copy ``n`` bytes between physical address ``pa`` and ``buf[u:]``."""
    if write:
        view[pa : pa + n] = buf[u : u + n]
    else:
        buf[u : u + n] = view[pa : pa + n]


class UbcWindow:
    """One UBC window (kernel: struct ubc_map).

    Attributes:
        index, va: its slot and kernel virtual address.
        uobj, offset: what it maps now (offset is window aligned), or None.
        refcount: users right now; 0 = on the idle LRU.
        writeend: the end offset of what the window's users will copy: faults never map (or,
            for writes, create) pages past it.
        busypages: UBC_FAULTBUSY pages held busy and kenter-mapped; fakepages: those that were
            not valid before the copy.
        lruprev, lrunext: links in the idle LRU while ``refcount`` is 0 and it has a name.
    """

    __slots__ = (
        "busypages",
        "fakepages",
        "index",
        "lrunext",
        "lruprev",
        "offset",
        "refcount",
        "uobj",
        "va",
        "writeend",
    )

    def __init__(self, index: int, va: int) -> None:
        self.index = index
        self.va = va
        self.uobj: UvmObject | None = None
        self.offset = 0
        self.refcount = 0
        self.writeend = 0
        self.busypages: list[VmPage] = []
        self.fakepages: list[VmPage] = []
        self.lruprev: UbcWindow | None = None
        self.lrunext: UbcWindow | None = None


class IdleWindows:
    """The idle windows, least recently used first (kernel: ubc_object.inactive), linked
    through ``UbcWindow.lruprev/lrunext``."""

    __slots__ = ("count", "head", "tail")

    def __init__(self) -> None:
        self.head: UbcWindow | None = None
        self.tail: UbcWindow | None = None
        self.count = 0

    def insert_tail(self, win: UbcWindow) -> None:
        tail = self.tail
        win.lruprev = tail
        win.lrunext = None
        if tail is None:
            self.head = win
        else:
            tail.lrunext = win
        self.tail = win
        self.count += 1

    def remove(self, win: UbcWindow) -> None:
        prev, nxt = win.lruprev, win.lrunext
        if prev is None:
            self.head = nxt
        else:
            prev.lrunext = nxt
        if nxt is None:
            self.tail = prev
        else:
            nxt.lruprev = prev
        win.lruprev = win.lrunext = None
        self.count -= 1

    def __contains__(self, win: object) -> bool:
        return any(w is win for w in self)

    def __iter__(self) -> Iterator[UbcWindow]:
        win = self.head
        while win is not None:
            nxt = win.lrunext
            yield win
            win = nxt

    def __len__(self) -> int:
        return self.count


class Ubc:
    """The UBC window pool of one machine (kernel: struct ubc_object).

    Args:
        uvm: the machine.
        nwins: number of windows (kernel: UBC_NWINS, 1024).
        winsize: bytes per window, a multiple of the page size (kernel: 1 << UBC_WINSHIFT).

    Attributes:
        release_hook: for tests, None or a callable that ``ubc_release`` of a UBC_FAULTBUSY
            window calls just before it unbusies the pages, with the window, the error and
            the pages that were never valid (zeroed and PG_RELEASED when the copy failed).
    """

    def __init__(self, uvm: Uvm, nwins: int = 256, winsize: int = 64 * 1024) -> None:
        if nwins < 1:
            raise ValueError(f"nwins {nwins} must be at least 1")
        if winsize < uvm.page_size or winsize % uvm.page_size:
            raise ValueError(f"winsize {winsize} is not a multiple of the page size")
        self.uvm = uvm
        self.pmap = uvm.kernel_pmap
        self.nwins = nwins
        self.winsize = winsize
        self.windows = [UbcWindow(i, UBC_BASE_VA + i * winsize) for i in range(nwins)]
        self.unused = self.windows[::-1]
        self.hash: dict[tuple[UvmObject, int], UbcWindow] = {}
        self.by_obj: dict[UvmObject, set[int]] = {}  # object -> offsets of its windows
        self.idle = IdleWindows()
        self._window_idle = trio.Event()
        self._window_waiters = 0
        self.release_hook: Callable[[UbcWindow, int, list[VmPage]], None] | None = None

    # --- alloc / release ----------------------------------------------------------------

    async def ubc_alloc(
        self, uobj: UvmObject, offset: int, length: int, flags: int
    ) -> tuple[int, UbcWindow, int, int]:
        """Get the window of ``uobj`` that holds ``offset`` (kernel: ubc_alloc).

        Returns:
            (errno, window, va of ``offset``, length clipped to the window's end).  With
            UBC_FAULTBUSY the pages under [offset, offset + length) come back busy and
            kenter-mapped; the errno is that of their getpages.

        => may sleep (for a window, or in getpages).
        """
        exp = self.uvm.uvmexp
        woff = offset - offset % self.winsize
        key = (uobj, woff)
        while True:
            win = self.hash.get(key)
            if win is not None:
                exp.ubc_hits += 1
                if win.refcount == 0:
                    self.idle.remove(win)
                break
            exp.ubc_misses += 1
            win = self._get_free_window()
            if win is None:
                self._window_waiters += 1
                try:
                    await self._window_idle.wait()
                finally:
                    self._window_waiters -= 1
                continue  # someone may have made our window meanwhile
            win.uobj = uobj
            win.offset = woff
            self.hash[key] = win
            self.by_obj.setdefault(uobj, set()).add(woff)
            break
        win.refcount += 1
        slot = offset - woff
        length = min(length, self.winsize - slot)
        if flags & UBC_FAULTBUSY:
            length = min(length, self.uvm.max_cluster_pages() * self.uvm.page_size)
        va = win.va + slot
        # Faults map pages only up to the end of what this use will copy, for reads too:
        # NetBSD maps the rest of its 8 KiB window; with larger windows a random 4 KiB read
        # would map, and later unmap, pages it never touches.
        end = offset + length
        win.writeend = max(win.writeend, end) if win.refcount > 1 else end
        if flags & UBC_FAULTBUSY:
            err = await self._faultbusy(win, offset, length)
            if err:
                self.ubc_release(win, 0)
                return err, win, va, 0
            # getpages may have given fewer pages than asked (memory short): this use
            # covers those, the caller's next one the rest.
            length = min(length, len(win.busypages) * self.uvm.page_size)
        return 0, win, va, length

    def _get_free_window(self) -> UbcWindow | None:
        if self.unused:
            return self.unused.pop()
        win = self.idle.head
        if win is None:
            return None
        self.idle.remove(win)
        self.unmap_window(win)
        return win

    def unmap_window(self, win: UbcWindow) -> None:
        """Remove a window's managed mappings and forget its name."""
        pmap_remove(self.pmap, win.va, win.va + self.winsize)
        pmap_update(self.pmap)
        if win.uobj is not None:
            self.hash.pop((win.uobj, win.offset), None)
            offs = self.by_obj.get(win.uobj)
            if offs is not None:
                offs.discard(win.offset)
                if not offs:
                    del self.by_obj[win.uobj]
        win.uobj = None

    async def _faultbusy(self, win: UbcWindow, offset: int, length: int) -> int:
        uvm = self.uvm
        ps = uvm.page_size
        assert win.uobj is not None
        pgops = win.uobj.pgops
        assert pgops is not None
        if offset % ps or length % ps:
            panic("ubc_alloc: UBC_FAULTBUSY range is not whole pages")
        npages = length // ps
        err, pages = await pgops.get(
            win.uobj,
            offset,
            npages,
            _P_RW,
            PGO_SYNCIO | PGO_OVERWRITE | PGO_PASTEOF | PGO_NOBLOCKALLOC,
        )
        if err:
            return err
        va = win.va + (offset - win.offset)
        # Earlier managed mappings of this range go first; kenter mappings replace them.
        pmap_remove(self.pmap, va, va + length)
        pmap_update(self.pmap)
        busy = win.busypages = [pg for pg in pages if pg is not None]
        win.fakepages = [pg for pg in busy if pg.flags & PG_FAKE]
        if busy[-1].offset - busy[0].offset != (len(busy) - 1) * ps:
            panic("ubc_alloc: UBC_FAULTBUSY pages are not contiguous")
        pmap_kenter_pages(
            self.pmap, win.va + (busy[0].offset - win.offset), [pg.phys_addr for pg in busy], _P_RW
        )
        return 0

    def ubc_release(self, win: UbcWindow, error: int) -> None:
        """Drop a use of a window (kernel: ubc_release).

        For a UBC_FAULTBUSY window: if the copy failed (``error``), zero the pages that were
        never valid and free them at the unbusy (a successful copy filled every page, they
        are whole); kremove the pages, mark the others dirty, activate and unbusy them.  The
        last user leaves the window on the idle LRU with its managed mappings in place.
        """
        uvm = self.uvm
        if win.busypages:
            physmem = uvm.physmem
            ps = uvm.page_size
            if error:
                # Never filled: zeroed (no garbage in any frame), then freed at the unbusy
                # below.  Inside the file the backing store still has the old data, which
                # the next access reads again; past the old EOF the writer cuts the file
                # back anyway.
                for pg in win.fakepages:
                    physmem.zero(pg.phys_addr)
                    pg.flags |= PG_RELEASED
            first = win.va + (win.busypages[0].offset - win.offset)
            pmap_kremove(self.pmap, first, len(win.busypages) * ps)
            pmap_update(self.pmap)
            for pg in win.busypages:
                if pg.flags & PG_RELEASED:
                    continue
                pg.flags &= ~PG_FAKE
                pagemarkdirty(pg)
                pageactivate(uvm, pg)
            if self.release_hook is not None:
                self.release_hook(win, error, win.fakepages)
            page_unbusy_many(uvm, win.busypages)
            win.busypages = []
            win.fakepages = []
        if win.refcount <= 0:
            panic(f"ubc_release: window {win.index} not in use")
        win.refcount -= 1
        if win.refcount == 0:
            assert win.uobj is not None
            self.idle.insert_tail(win)
            if self._window_waiters:
                ev, self._window_idle = self._window_idle, trio.Event()
                ev.set()

    # --- faults and copies --------------------------------------------------------------

    async def ubc_fault(
        self, win: UbcWindow, va: int, access: int, since: float | None = None
    ) -> int:
        """Resolve a fault in a window (kernel: ubc_fault): getpages for the rest of the
        window (up to the write's end for a write), then enter managed mappings.

        Args:
            since: when the caller's first ERESTART for this access came, if it had one:
                the wait for pv entries is then bounded as ``uvm_wait`` bounds it.

        Returns:
            0; ERESTART when a pmap_enter found no pv entry (after waiting for memory: the
            caller retries the access); or the getpages errno (EINVAL past EOF; EIO, ENOSPC
            ... when memory stayed short while write-back failed); or the write-back errno
            when the wait for pv entries outlasted ``--writeback-timeout`` meanwhile.
        """
        uvm = self.uvm
        exp = uvm.uvmexp
        ps = uvm.page_size
        uobj = win.uobj
        assert uobj is not None
        assert uobj.pgops is not None
        exp.faults += 1
        pgva = va & ~uvm.page_mask
        h = uvm.hist
        if h is not None:
            h.log(H_UBC_FAULT, uobj.name, win.offset + (pgva - win.va), access)
        offset = win.offset + (pgva - win.va)
        end = win.offset + self.winsize
        flags = PGO_SYNCIO | PGO_NOBLOCKALLOC  # the file system allocates at write-back
        end = min(end, win.writeend)
        if access & _P_WRITE:
            flags |= PGO_PASTEOF
        npages = max(1, (end - offset + ps - 1) // ps)
        err, pages = await uobj.pgops.get(uobj, offset, npages, access, flags)
        if err:
            return err
        # The window may have been renamed while getpages slept; then the caller refaults
        # (its access finds no mapping, or another one).
        renamed = win.uobj is not uobj or win.offset != offset - (pgva - win.va)
        shortage = False
        for pg in pages:
            if pg is None:
                continue
            if not renamed and not shortage:
                pva = win.va + (pg.offset - win.offset)
                prot = _P_READ if pg.flags & PG_RDONLY else _P_RW
                acc = access & prot if pva == pgva else 0
                if pmap_enter(self.pmap, pva, pg, prot, acc | PMAP_CANFAIL):
                    shortage = True
            pageactivate(uvm, pg)
        page_unbusy_many(uvm, [pg for pg in pages if pg is not None])
        pmap_update(self.pmap)
        if shortage:
            exp.canfail_retries += 1
            err = await uvm_wait(uvm, "ubc_fault", 1, since)
            return err or errno.ERESTART
        return 0

    async def uiomove(self, win: UbcWindow, va: int, length: int, uio: Uio, write: bool) -> int:
        """Copy ``length`` bytes between the window at ``va`` and ``uio`` (kernel: uiomove
        through a UBC window).  Returns 0 or an errno (EFAULT for a bad user buffer or an
        access past EOF).

        Every page is translated through the kernel pmap, as a CPU copy loop would (that
        sets its referenced/modified bits, or faults); the bytes move with one copy per
        run of physically contiguous frames.  A pending run is copied before any await,
        so no frame is touched after the task has slept.
        """
        uvm = self.uvm
        pmap = self.pmap
        mask = uvm.page_mask
        ps = uvm.page_size
        view = uvm.physmem.view
        buf = uio.buf
        efault_at = uio.efault_at
        done = 0
        run_pa = run_n = 0  # the run translated and not yet copied: frames, bytes
        restarted: float | None = None  # when the current access first got ERESTART
        while done < length:
            cur = va + done
            try:
                pa = pmap_translate(pmap, cur, write)
            except PageFault:
                if run_n:
                    _copy(view, run_pa, buf, uio.done, run_n, write)
                    uio.done += run_n
                    run_n = 0
                err = await self.ubc_fault(win, cur, _P_WRITE if write else _P_READ, restarted)
                if err == errno.ERESTART:
                    if restarted is None:
                        restarted = trio.current_time()
                    continue
                if err:
                    return errno.EFAULT if err == errno.EINVAL else err
                continue
            n = min(length - done, ps - (pa & mask))
            if efault_at is not None and uio.done + run_n + n > efault_at:
                if run_n:
                    _copy(view, run_pa, buf, uio.done, run_n, write)
                    uio.done += run_n
                n = efault_at - uio.done
                if n > 0:
                    _copy(view, pa, buf, uio.done, n, write)
                    uio.done += n
                return errno.EFAULT
            if run_n and pa == run_pa + run_n:
                run_n += n
            else:
                if run_n:
                    _copy(view, run_pa, buf, uio.done, run_n, write)
                    uio.done += run_n
                run_pa, run_n = pa, n
            done += n
            restarted = None
        if run_n:
            _copy(view, run_pa, buf, uio.done, run_n, write)
            uio.done += run_n
        return 0

    # --- the helpers everything uses ------------------------------------------------------

    async def ubc_read(self, uobj: UvmObject, offset: int, uio: Uio) -> int:
        """Copy ``uio.resid`` bytes of ``uobj`` from ``offset`` into ``uio`` (the caller
        clips to EOF).  Returns 0 or an errno."""
        while uio.resid:
            err, win, va, n = await self.ubc_alloc(uobj, offset, uio.resid, UBC_READ)
            if not err:
                err = await self.uiomove(win, va, n, uio, False)
            self.ubc_release(win, err)
            if err:
                return err
            offset += n
        return 0

    async def ubc_write(
        self, uobj: UvmObject, offset: int, uio: Uio, length: int, flags: int
    ) -> int:
        """Copy ``length`` bytes from ``uio`` into ``uobj`` at ``offset``; UBC_FAULTBUSY for
        whole pages beyond EOF (the caller decides).  Returns 0 or an errno."""
        end = offset + length
        while offset < end:
            err, win, va, n = await self.ubc_alloc(uobj, offset, end - offset, UBC_WRITE | flags)
            if err:
                return err
            err = await self.uiomove(win, va, n, uio, True)
            self.ubc_release(win, err)
            if err:
                return err
            offset += n
        return 0

    def audit(self) -> list[str]:
        """The window pool's bookkeeping (part of ``ubcfs check``): the idle LRU holds
        exactly the named windows that nobody uses, the hash and ``by_obj`` name every
        named window once, and unused windows have no name."""
        out: list[str] = []
        idle = list(self.idle)
        if len(idle) != self.idle.count:
            out.append(f"[ubc] idle LRU counts {self.idle.count} windows, links {len(idle)}")
        on_lru = {win.index for win in idle}
        named = 0
        for win in self.windows:
            if win.uobj is None:
                if win.index in on_lru:
                    out.append(f"[ubc] unnamed window {win.index} on the idle LRU")
                continue
            named += 1
            if self.hash.get((win.uobj, win.offset)) is not win:
                out.append(f"[ubc] window {win.index} is not under its name in the hash")
            if win.offset not in self.by_obj.get(win.uobj, ()):
                out.append(f"[ubc] window {win.index} is missing from by_obj")
            if (win.refcount == 0) != (win.index in on_lru):
                out.append(
                    f"[ubc] window {win.index} has {win.refcount} users but is"
                    f"{'' if win.index in on_lru else ' not'} on the idle LRU"
                )
        if len(self.hash) != named:
            out.append(f"[ubc] hash names {len(self.hash)} windows, {named} are named")
        return out

    def purge(self, uobj: UvmObject) -> None:
        """Unmap and forget every idle window of ``uobj`` (when its vnode goes away)."""
        # Only this object's windows: the pool may hold thousands.
        keys = [(uobj, off) for off in self.by_obj.get(uobj, ())]
        for key in keys:
            win = self.hash[key]
            if win.refcount:
                continue  # in use: its user releases it
            self.idle.remove(win)
            self.unmap_window(win)
            self.unused.append(win)
