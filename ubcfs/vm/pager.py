"""Pager protocols, flags, I/O buffers and the asynchronous-completion machinery
(~ uvm_pager.h, uvm_pager.c: uvm_aio_biodone, uvm_aio_aiodone; uvm_pdaemon.c:
uvm_aiodone_daemon, uvm_wait).

The core names two pager protocols and implements neither: ``PagerOps`` (an object's
pgo_get/pgo_put, implemented by genfs for vnodes and by ``pagers.aobj`` for anonymous
objects) and ``SwapPager`` (what the pagedaemon and the reports ask of the swap pager,
implemented by ``pagers.swap``).

The async contract (seed, March 2001): a pager returns 0 to mean "the asynchronous I/O has
been started", and the caller never does post-I/O work for it.  Here an asynchronous I/O is a
trio task started in the machine's I/O nursery; when the I/O finishes, the task only queues
its ``Buf`` on the aiodone channel (``biodone``: no page work in "interrupt context"), and
the aiodone daemon task runs the buffer's ``iodone`` callback, which unbusies, frees or
re-dirties the pages.  Synchronous requests run the same callback inline and return its
error.

``uvm_wait`` is how an allocation that found no free page sleeps: it kicks the pagedaemon
and waits for the next "pages were freed" event; it never busy-waits.  While write-back keeps
failing (``ubcfs.vm.wbfail``) the wait is bounded: after ``--writeback-timeout`` seconds the
allocation fails with the backing store's errno.
"""

from __future__ import annotations

import enum
import errno
import math
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final, Protocol

import trio

from ubcfs.vm.diag import panic

if TYPE_CHECKING:
    from ubcfs.vm.anon import VmAnon
    from ubcfs.vm.object import UvmObject
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.uvm import Uvm


class PagerOps(Protocol):
    """The pager operations vector (kernel: struct uvm_pagerops after the 2001 rewrite:
    pgo_get and pgo_put; reference/detach are the object's own refcount here).

    Both return an errno: 0, EIO, EAGAIN, EBUSY or ERESTART.  An asynchronous request returns
    0 once started, and its completion (aiodone) does all post-I/O work.
    """

    async def get(
        self, uobj: UvmObject, offset: int, npages: int, access: int, flags: int
    ) -> tuple[int, list[VmPage | None]]: ...

    async def put(self, uobj: UvmObject, start: int, end: int, flags: int) -> int: ...


# What ``SwapPager.pageout`` did with a page.
SWAP_KEEP: Final = 0  # could not go to swap (no slot, swap full): the daemon reactivates it
SWAP_FREED: Final = 1  # clean (its slot holds its data): freed at once
SWAP_STARTED: Final = 2  # joined a swap-out cluster (PG_PAGEOUT, freed when written)


class SwapPager(Protocol):
    """What the core asks of the swap pager (kernel: uvm_swap.c as the pagedaemon and the
    statistics use it).  Slots are page-sized and numbered from 1; 0 means "no slot"."""

    @property
    def nslots(self) -> int:
        """Slots of the device (kernel: uvmexp.swpages)."""
        ...

    @property
    def inuse(self) -> int:
        """Slots allocated, bad ones included (kernel: uvmexp.swpginuse)."""
        ...

    @property
    def nbad(self) -> int:
        """Slots marked bad after an I/O error (kernel: swd_npgbad)."""
        ...

    def pageout(self, pg: VmPage) -> int:
        """Reclaim an unbusy, unreferenced inactive swap-backed page: free it if clean, or
        add it to the open swap-out cluster (starting the write when the cluster is full).
        Returns SWAP_KEEP, SWAP_FREED or SWAP_STARTED.  => never sleeps."""
        ...

    def flush(self) -> None:
        """Start the write of a partly filled cluster (end of an inactive scan)."""
        ...

    def full(self) -> bool:
        """Does (nearly) every good slot hold the only copy of some page (kernel:
        uvm_swapisfull)?  Then dirty swap-backed pages cannot be paged out."""
        ...

    def short(self) -> bool:
        """Are all slots allocated while some belong to resident pages (the condition of
        the active scan's swap-shortage recovery)?"""
        ...

    def drop_slot(self, pg: VmPage) -> bool:
        """Release the slot of a resident, unbusy swap-backed page, clearing PG_CLEAN first
        (PR 7578); False if it had none.  => never sleeps."""
        ...

    def free(self, slot: int, n: int = 1) -> None:
        """Give back ``n`` slots from ``slot`` (bad ones stay allocated for ever)."""
        ...

    def dirtied(self, pg: VmPage) -> None:
        """``pg`` (swap-backed) lost PG_CLEAN: its slot, if any, is stale and is freed."""
        ...

    async def anon_swapin(self, anon: VmAnon) -> tuple[int, VmPage | None]:
        """Read in an anon whose only copy is in swap: (0, its page, busy and clean), (EIO,
        None) when the slot cannot be read (marked bad), (ENOMEM, None) with no free page.
        => may sleep."""
        ...

    def audit(self) -> list[str]:
        """The slot accounting against every owner (invariants 12-14); the problems."""
        ...


class PGO(enum.Flag):
    """Pager operation flags (kernel: PGO_*)."""

    NONE = 0
    CLEANIT = 0x0001  # putpages: write dirty pages
    SYNCIO = 0x0002  # wait for the I/O
    DEACTIVATE = 0x0004  # putpages: move the pages to the inactive queue
    FREE = 0x0008  # putpages: free the pages (after cleaning with CLEANIT)
    ALLPAGES = 0x0010  # the whole object, whatever the range
    LOCKED = 0x0040  # getpages: never sleep; EBUSY when the first page is not obtained
    OVERWRITE = 0x0200  # getpages: caller overwrites the pages entirely; do not read them
    PASTEOF = 0x0800  # getpages: may create pages beyond EOF (writers)
    # getpages: allocate no backing blocks for holes (UBC: the writer's file system does, at
    # write-back); without it a write allocates them first (GOP_ALLOC) and a read marks the
    # pages of holes PG_RDONLY -- a process's fault.
    NOBLOCKALLOC = 0x4000
    # The kernel recognises the pagedaemon by curproc; here it says so.
    PDAEMON = 0x10000


PGO_CLEANIT: Final = PGO.CLEANIT.value
PGO_SYNCIO: Final = PGO.SYNCIO.value
PGO_DEACTIVATE: Final = PGO.DEACTIVATE.value
PGO_FREE: Final = PGO.FREE.value
PGO_ALLPAGES: Final = PGO.ALLPAGES.value
PGO_LOCKED: Final = PGO.LOCKED.value
PGO_OVERWRITE: Final = PGO.OVERWRITE.value
PGO_PASTEOF: Final = PGO.PASTEOF.value
PGO_NOBLOCKALLOC: Final = PGO.NOBLOCKALLOC.value
PGO_PDAEMON: Final = PGO.PDAEMON.value


class Buf:
    """One pager I/O (kernel: struct buf, as used by genfs and the aiodone path).

    Attributes:
        pages: the busy pages of the transfer, in offset order.
        offset: byte offset of the first page in its object.
        write: a write (pageout/cleaning) rather than a read.
        error: errno of the transfer, 0 when it worked.
        iodone: the completion, run by the aiodone daemon (async) or inline (sync).
        owner: whatever the completion needs (a genfs node).
        deactivate: for a cleaning write, the pages that are still clean afterwards go to
            the inactive queue rather than the active one (background cleaning and
            PGO_DEACTIVATE: their data was written and is not known to be wanted again).
    """

    __slots__ = ("deactivate", "error", "iodone", "offset", "owner", "pages", "write")

    def __init__(
        self,
        pages: list[VmPage],
        offset: int,
        write: bool,
        iodone: Callable[[Buf], None],
        owner: object = None,
    ) -> None:
        self.pages = pages
        self.offset = offset
        self.write = write
        self.error = 0
        self.iodone = iodone
        self.owner = owner
        self.deactivate = False


class Aio:
    """The machine's asynchronous I/O system: an I/O nursery and the aiodone daemon.

    ``start_async(io, buf)`` runs ``await io(buf)`` (which sets ``buf.error``) in the I/O
    nursery and then hands the buffer to the aiodone daemon.  Started by the engine, stopped by
    cancelling its nursery after ``drain()``.
    """

    def __init__(self, uvm: Uvm) -> None:
        self.uvm = uvm
        self._send, self._recv = trio.open_memory_channel[Buf](math.inf)
        self._nursery: trio.Nursery | None = None
        self.pending = 0  # async I/Os started and not yet completed
        self._idle = trio.Event()
        self._idle.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the I/O nursery and the aiodone daemon until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._aiodone_daemon)
            task_status.started()
            await trio.sleep_forever()

    def start_async(self, io: Callable[[Buf], Awaitable[None]], buf: Buf) -> None:
        """Start an asynchronous I/O; its completion runs in the aiodone daemon.

        => never sleeps; the caller must not touch ``buf``'s pages again (they belong to the
           I/O until its completion unbusies them).
        """
        if self._nursery is None:
            panic("async I/O started with no aiodone daemon running")
        self.pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()
        self._nursery.start_soon(self._do_io, io, buf)

    async def _do_io(self, io: Callable[[Buf], Awaitable[None]], buf: Buf) -> None:
        await io(buf)
        # biodone: just queue the buffer (kernel: uvm_aio_biodone).
        self._send.send_nowait(buf)

    async def _aiodone_daemon(self) -> None:
        """Run each finished buffer's completion (kernel: uvm_aiodone_daemon)."""
        async for buf in self._recv:
            try:
                buf.iodone(buf)
            finally:
                self.pending -= 1
                if self.pending == 0:
                    self._idle.set()
                self.uvm.pages_freed()

    async def drain(self) -> None:
        """Wait until every async I/O started so far has completed."""
        while self.pending:
            await self._idle.wait()

    @property
    def running(self) -> bool:
        return self._nursery is not None


async def uvm_wait(uvm: Uvm, why: str, npages: int = 1, since: float | None = None) -> int:
    """Sleep until the pagedaemon (or an I/O completion) frees pages (kernel: uvm_wait).

    Args:
        uvm: the machine.
        why: for debugging.
        npages: how many pages the caller needs at once; the pagedaemon frees at least that
            many above the kernel reserve.
        since: when the caller began waiting for this allocation (``trio.current_time()``
            at its first shortage).  With it the wait is bounded while write-back fails.

    Returns:
        0: look again.  Or, when some file's write-back keeps failing and the caller has
        been waiting ``uvm.wbfail.timeout`` seconds since ``since``, the errno that the
        backing store gave (EIO, ENOSPC, ...): the memory it waits for is held by pages that
        cannot be written, and the caller fails with that error instead of waiting forever.

    => never busy-waits: kicks the pagedaemon and sleeps on the current "pages freed" event,
       at most ``UVM_WAIT_TIMEOUT`` seconds (the kernel, too, sleeps with a timeout when the
       pagedaemon itself would wait), and not past the write-back deadline.
    => the caller must hold no busy page: the pages it waits for may be those.
    """
    wbf = uvm.wbfail
    now = trio.current_time()
    wake_at = now + UVM_WAIT_TIMEOUT
    if since is not None and wbf.objects and wbf.failing():
        deadline = since + wbf.timeout
        if now >= deadline:
            uvm.uvmexp.wb_timeouts += 1
            err = wbf.last_error or errno.EIO
            if uvm.wait_hook is not None:
                uvm.wait_hook(why, since, err)
            return err
        wake_at = min(wake_at, deadline)
    uvm.free_wanted = max(uvm.free_wanted, npages)
    ev = uvm.free_event
    uvm.kick_pdaemon()
    uvm.free_sleepers += 1
    try:
        with trio.move_on_at(wake_at) as scope:
            await ev.wait()
    finally:
        uvm.free_sleepers -= 1
    if scope.cancelled_caught:
        uvm.uvmexp.uvm_wait_timeouts += 1
    if uvm.wait_hook is not None:
        uvm.wait_hook(why, since, 0)
    return 0


UVM_WAIT_TIMEOUT: Final = 0.25
