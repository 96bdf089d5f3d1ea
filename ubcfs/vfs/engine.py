"""The UBC engine: one simulated machine serving files of a backing directory
(~ uvm_init.c + the vnode cache of vfs_vnode.c).

``Engine`` builds the machine (``Uvm``), the UBC window pool, the backing I/O edge with its
fault injector, the pagedaemon, the aiodone daemon and the vnode cache (``Vcache``, one
``Vnode`` per backing inode, with its drain task).  In-process users (tests, benchmarks) do::

    async with Engine(memory=8 << 20).running() as eng:
        vp = await eng.open("/path/to/file")
        await eng.write(vp, 0, b"hello")
        err, data = await eng.read(vp, 0, 5)
        await eng.fsync(vp)
        await eng.release(vp)      # the last release reclaims the vnode now

The FUSE layer instead takes and drops uses with ``vget``/``vrele``: an unreferenced vnode
stays cached with its pages until the vnode cache needs the room.  Leaving ``running()``
writes every dirty page back and waits for all I/O; after it the backing files hold exactly
what was written.
"""

from __future__ import annotations

import errno
import gc
import logging
import math
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING

import trio

from genfs.node import GenfsParams
from pagers.aobj import Aobj
from pagers.backing_io import BackingIO, FaultInjector
from pagers.swap import Swap
from ubcfs.vfs import vnops
from ubcfs.vfs.backing import vnode_fd_budget
from ubcfs.vfs.vcache import VS, Key, Vcache, default_maxvnodes
from ubcfs.vfs.vnode import Vnode
from ubcfs.vm.pager import Aio
from ubcfs.vm.pdaemon import Pagedaemon
from ubcfs.vm.pdpolicy_clock import ClockPolicy
from ubcfs.vm.ubc import Ubc
from ubcfs.vm.uvm import Uvm
from ubcfs.vm.wbfail import DEFAULT_TIMEOUT

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

log = logging.getLogger(__name__)

SHUTDOWN_AFTER_FAILURE = 30.0  # seconds of write-back attempts after the body failed
# While an engine runs, a thread that wants the GIL gets it within this many seconds
# (sys.setswitchinterval; CPython's default is 5 ms).  The backing-I/O threads need it right
# after their syscall returns, to hand the result back: with 5 ms, the trio thread's Python
# work delayed every write-back completion by up to 5 ms, the writes in flight piled up
# (their pages busy), and the pagedaemon kept scanning past them.
IO_SWITCH_INTERVAL = 0.0005


# The young generation's threshold while an engine serves (CPython's default is 700).
SERVING_GC_THRESHOLD = 20_000
_DEFAULT_GC_THRESHOLD = gc.get_threshold()


def tune_gc() -> None:
    """Set the process's garbage collector up for serving (the daemon calls it once its
    engine is built; ``benchmarks/engine.py`` does the same around each engine).

    The machine's own records -- a ``VmPage`` per frame, the windows, the queues -- live as
    long as the engine and are never garbage: ``gc.freeze()`` takes them out of the
    collector's sight, so that a full collection no longer walks every frame's record.  The
    hot paths make a pv entry (and its list) per page they map: with a young threshold of
    ``SERVING_GC_THRESHOLD`` rather than 700 the young collections run thirty times less
    often.  Measured on cold 1 MiB reads: about a quarter less trio-thread CPU per page.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(SERVING_GC_THRESHOLD, 10, 10)


def untune_gc() -> None:
    """Undo ``tune_gc`` (so that a process that made an engine for a while, such as a
    benchmark, collects the engine's records once it is gone)."""
    gc.unfreeze()
    gc.set_threshold(*_DEFAULT_GC_THRESHOLD)


class Engine:
    """A running UBC machine over backing files.

    Args:
        memory: simulated physical memory in bytes.
        page_size: bytes per page.
        nwins, winsize: UBC window pool (default: 1 MiB windows, MAXPHYS, so that a large
            request costs one window use, not sixteen; one window per 64 KiB of twice the
            memory, so that many small files keep their windows).
        params: genfs tunables (cluster size, read-ahead, fast path).
        nowait: try backing reads inline with RWF_NOWAIT before using a thread.
        test_reference: the clock policy's switch (see ``ClockPolicy``).
        pdpolicy: the page-replacement policy, ``clock`` or ``clockpro``
            (``ubcfs.vm.pdpolicy``).
        max_io_threads: backing-I/O worker threads (the most I/Os in progress at once).
        populate: back all simulated memory with host memory at start (see ``PhysMem``).
        maxvnodes: vnode cache size (default: from memory and the descriptor limit).
        writeback_timeout: seconds an allocation may wait for memory while write-back keeps
            failing, before it fails with the backing store's errno (``ubcfs.vm.wbfail``).
        swap_size: bytes of swap for anonymous memory (0: none; a multiple of the page
            size).
        swap_file: the swap file (created sparse, cut to ``swap_size``); required with
            swap.  It is removed when the engine stops unless ``keep_swap_file``.

    Raises:
        ValueError: a bad size.  OSError: the swap file cannot be created.
    """

    def __init__(
        self,
        memory: int,
        page_size: int = 4096,
        nwins: int | None = None,
        winsize: int = 1024 * 1024,
        params: GenfsParams | None = None,
        nowait: bool = True,
        test_reference: bool = False,
        max_io_threads: int = 8,
        populate: bool = False,
        maxvnodes: int | None = None,
        writeback_timeout: float = DEFAULT_TIMEOUT,
        swap_size: int = 0,
        swap_file: str | None = None,
        keep_swap_file: bool = False,
        pdpolicy: str = "clock",
    ) -> None:
        if not 0 < writeback_timeout < math.inf:
            raise ValueError(f"writeback_timeout {writeback_timeout!r} is not a positive time")
        self.uvm = Uvm(memory, page_size, populate=populate, pdpolicy=pdpolicy)
        if isinstance(self.uvm.pdpolicy, ClockPolicy):
            self.uvm.pdpolicy.test_reference = test_reference
        self.uvm.wbfail.timeout = writeback_timeout
        self.params = params if params is not None else GenfsParams()
        if self.params.maxphys < page_size:
            raise ValueError(f"maxphys {self.params.maxphys} is smaller than a page")
        winsize = max(winsize, page_size)
        if nwins is None:
            # Enough kernel VA to keep every resident page mapped in some idle window (twice
            # memory) even when each window holds only a small file's pages, so that warm
            # data is copied without faults; windows cost no memory.
            nwins = max(64, min(16384, 2 * memory // (64 * 1024)))
        self.ubc = Ubc(self.uvm, nwins=nwins, winsize=winsize)
        self.injector = FaultInjector()
        self.io = BackingIO(self.injector, max_io_threads, nowait=nowait)
        self.swap: Swap | None = None
        if swap_size:
            if swap_file is None:
                raise ValueError("swap needs a swap file")
            self.swap = Swap(self.uvm, swap_file, swap_size, self.io, remove=not keep_swap_file)
            self.swap.attach()
        self.pdaemon = Pagedaemon(self.uvm)
        self.aio = Aio(self.uvm)
        if maxvnodes is None:
            maxvnodes = default_maxvnodes(memory, vnode_fd_budget())
        self.vcache = Vcache(self.uvm, self.ubc, maxvnodes)

    @property
    def vnodes(self) -> dict[Key, Vnode]:
        """Every cached vnode, by backing identity."""
        return self.vcache.table

    # --- life cycle ---------------------------------------------------------------------

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Engine]:
        """Run the daemons; on exit write everything back and stop them."""
        with _prompt_io_threads(), _closing_io(self.io):
            async with trio.open_nursery() as nursery:
                await nursery.start(self.aio.run)
                self.uvm.aio = self.aio
                await nursery.start(self.pdaemon.run)
                await nursery.start(self.vcache.run)
                failed = True
                try:
                    yield self
                    failed = False
                finally:
                    # After a failure (maybe a panic with pages left busy) write back what can be
                    # written, but do not wait forever.
                    with trio.CancelScope(shield=True) as scope:
                        if failed:
                            scope.deadline = trio.current_time() + SHUTDOWN_AFTER_FAILURE
                        err = await self.shutdown()
                    if scope.cancelled_caught:
                        log.error("shutdown after a failure timed out; dirty pages may remain")
                    elif err:
                        log.error("shutdown: write-back failed: %s", errname(err))
                    nursery.cancel_scope.cancel()
        self.uvm.aio = None
        if self.swap is not None:
            self.swap.close()  # nothing anonymous outlives the engine

    async def shutdown(self) -> int:
        """Write back every dirty page of every vnode and wait for all I/O; return the first
        error (the pages concerned stay dirty)."""
        err = await self.sync()
        await self.aio.drain()
        return err

    async def sync(self) -> int:
        """fsync every vnode written or resized since its last fsync (kernel: the syncer
        walking its worklist); return the first error.

        Each vnode is fsynced under a use, so the drain cannot reclaim it meanwhile; one
        that a reclaim is writing back already is waited for (a reclaim that fails leaves it
        LOADED and dirty, and it is then fsynced here, which reports the error).
        """
        first = 0
        for key in list(self.vcache.table):
            vp = self.vcache.table.get(key)
            while vp is not None and vp.vstate is not VS.LOADED:
                await vp.state_changed().wait()
                vp = self.vcache.table.get(key)
            if vp is None:
                continue  # reclaimed meanwhile: everything of it was written
            if not vp.unsynced and not vp.numoutput and not vnops.dirty_pages(vp):
                continue  # nothing of it is unwritten or unflushed
            self.vcache.vref(vp)
            try:
                err = await vnops.vop_fsync(vp)
            finally:
                self.vcache.vrele(vp)
            if err and not first:
                first = err
        return first

    # --- files --------------------------------------------------------------------------

    async def open(self, path: str | bytes, create: bool = True) -> Vnode:
        """Open a backing file through the engine; one vnode per backing inode.

        Raises:
            OSError: the backing open failed (the caller's input is wrong).
        """
        flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_CREAT if create else 0)
        fd = await trio.to_thread.run_sync(lambda: os.open(path, flags, 0o644))
        return await self.adopt(fd, os.fsdecode(path))

    async def adopt(self, fd: int, name: str) -> Vnode:
        """The vnode of an open backing fd, with one more use; the engine owns ``fd`` from
        now on (it is closed when an existing vnode serves).  => may sleep (``vget``)."""
        try:
            st = os.fstat(fd)
            vp = await self.vget((st.st_dev, st.st_ino), lambda: self.new_vnode(fd, name, st))
        except BaseException:
            os.close(fd)
            raise
        if vp.fd != fd:
            os.close(fd)
        return vp

    def new_vnode(self, fd: int, name: str, st: os.stat_result) -> Vnode:
        """A vnode for a backing data descriptor (which it owns) and its fstat: the loader
        that ``vget`` calls."""
        return Vnode(
            self.uvm,
            name,
            fd,
            st.st_size,
            self.io,
            self.params,
            (st.st_dev, st.st_ino),
            st.st_mtime_ns,
            self.vcache.visible_ctime((st.st_dev, st.st_ino), st.st_ctime_ns),
            vnops.GENFS_VOPS,
        )

    def new_anon_vnode(self, name: str, key: Key, mtime_ns: int, ctime_ns: int) -> Vnode:
        """An empty vnode whose data is a new aobj (a tmpfs file's), paged to the engine's
        swap if it has one.  Not in the vnode cache: its owner keeps it.  => never sleeps."""
        aobj = Aobj(self.uvm, name, self.swap)
        vp = Vnode(
            self.uvm,
            name,
            -1,
            0,
            self.io,
            self.params,
            key,
            mtime_ns,
            ctime_ns,
            vnops.AOBJ_VOPS,
            aobj.uobj,
        )
        aobj.size_of = vp.current_size
        vp.set_state(VS.LOADED)
        return vp

    async def vget(self, key: Key, load: Callable[[], Vnode]) -> Vnode:
        """The vnode of ``key`` with one more use (see ``Vcache.vget``)."""
        return await self.vcache.vget(key, load)

    def vrele(self, vp: Vnode) -> None:
        """Drop a use; the vnode stays cached (see ``Vcache.vrele``)."""
        self.vcache.vrele(vp)

    async def release(self, vp: Vnode, discard: bool = False) -> int:
        """Drop a use of ``vp``; the last one reclaims the vnode now: writes its pages back
        (or, with ``discard``, for a file that no longer exists, throws them away), frees
        them and closes the backing fd.  Returns a write-back error; the caller then keeps
        its use (and the vnode its dirty pages) for a later retry."""
        if vp.usecount <= 0:
            raise ValueError(f"release of unused vnode {vp.name}")
        if vp.usecount > 1:
            self.vcache.vrele(vp)
            return 0
        self.vcache.vrele(vp)
        err = await self.vcache.vrecycle(vp, discard)
        if err:
            self.vcache.vref(vp)
        return err

    # --- data ---------------------------------------------------------------------------

    async def read(self, vp: Vnode, offset: int, length: int) -> tuple[int, bytearray]:
        return await vnops.vop_read(self.ubc, vp, offset, length)

    async def write(
        self, vp: Vnode, offset: int, data: bytes | bytearray | memoryview
    ) -> tuple[int, int]:
        return await vnops.vop_write(self.ubc, vp, offset, data)

    async def truncate(self, vp: Vnode, size: int) -> int:
        return await vnops.vop_setsize(self.ubc, vp, size)

    async def fsync(self, vp: Vnode) -> int:
        return await vnops.vop_fsync(vp)

    async def fallocate(self, vp: Vnode, mode: int, offset: int, length: int) -> int:
        return await vnops.vop_fallocate(self.ubc, vp, mode, offset, length)


@contextmanager
def _closing_io(io: BackingIO) -> Iterator[None]:
    """Stop the backing-I/O threads when the block ends, however it ends.  By then the
    daemons' nursery is gone, so every task that waited for an I/O has had it back (a claimed
    I/O is never abandoned) and none is in flight: the threads are idle and exit at once."""
    try:
        yield
    finally:
        if io.threads.inflight:  # a bug elsewhere: do not hide it, and do not hang on it
            log.error("engine stopped with %d backing I/Os in flight", io.threads.inflight)
        else:
            io.close()


@contextmanager
def _prompt_io_threads() -> Iterator[None]:
    """Lower the interpreter's switch interval to IO_SWITCH_INTERVAL for the block (only
    lower it: an embedding program may have chosen less).  Process-wide: with engines whose
    lifetimes overlap without nesting, the first to finish restores the old value early,
    which costs speed, not correctness."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(min(old, IO_SWITCH_INTERVAL))
    try:
        yield
    finally:
        sys.setswitchinterval(old)


def errname(err: int) -> str:
    """``EIO`` for 5, for messages."""
    return errno.errorcode.get(err, str(err))
