"""Vnodes: a file of the engine, with its vnode lock (~ vfs_vnode.c, struct vnode).

A ``Vnode`` is a ``GenfsNode`` (the genfs node must be the first part of a filesystem's
per-vnode data in NetBSD; here it is the base class) plus what the vfs layer needs: the
vnode lock, a use count, its state in the vnode cache (``ubcfs.vfs.vcache``, which owns the
life cycle) and the times the engine reports.

Each vnode carries its file system's operations vector (``vops``, a ``VnodeOps``: kernel:
v_op), the half of each operation that depends on where the data lives: a backing file
(``vnops.GENFS_VOPS``, ffs over genfs) or an anonymous object (``vnops.AOBJ_VOPS``, tmpfs:
the vnode's ``uobj`` is the aobj's, whose pager serves the windows' faults).  The generic
half -- locking, the UBC copy, the fast path, freeing pages past a new EOF -- is
``ubcfs.vfs.vnops``, the same for both.  VOP_GETPAGES is the object's own pager
(``uobj.pgops.get``), as in NetBSD where genfs_getpages and tmpfs_getpages both end there.

The vnode lock is a readers-writer lock, as NetBSD's vnode lock is used by ffs_read
(shared) and ffs_write/truncate/fsync (exclusive).  It serialises the engine's own
operations on one file; pages are still protected by PG_BUSY, which is what the pagedaemon
and the I/O completions respect (they never take the vnode lock).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

import trio

from genfs.node import GenfsNode
from ubcfs.vfs.vcache import VS

if TYPE_CHECKING:
    from genfs.node import GenfsParams
    from pagers.backing_io import BackingIO
    from ubcfs.vm.object import UvmObject
    from ubcfs.vm.ubc import Ubc
    from ubcfs.vm.uvm import Uvm


class VnodeOps(Protocol):
    """A file system's vnode operations (kernel: the vnodeops vector), for the parts that
    depend on where a file's data lives.  Each returns an errno (0: done).

    * ``putpages`` (VOP_PUTPAGES): clean and/or free pages of [start, end) (end 0: to the
      end of the object), with the PGO_* flags of ``ubcfs.vm.pager``.
    * ``stored``: see below.
    * ``truncate``: the store follows a size change, after the pages past the new EOF are
      gone (ffs: the backing file's ftruncate; tmpfs: nothing, the object is the store).
    * ``allocate``: fallocate's store half for modes that keep the data (0, KEEP_SIZE).
    * ``clear``: fallocate's punch and zero-range, pages and store together.
    * ``fsync`` (VOP_FSYNC): make the file durable (tmpfs: nothing to do).

    => ``truncate``, ``allocate``, ``clear`` and ``fsync`` are called with the vnode lock
       held exclusive; all may sleep.
    """

    async def putpages(self, vp: Vnode, start: int, end: int, flags: int) -> int: ...

    def stored(self, vp: Vnode, offset: int) -> bool:
        """Does the store keep data of the non-resident page at ``offset`` that a
        truncation into that page must zero (a tmpfs page that is only in swap)?"""
        ...

    async def truncate(self, vp: Vnode, size: int) -> int: ...

    async def allocate(self, vp: Vnode, mode: int, offset: int, length: int) -> int: ...

    async def clear(self, ubc: Ubc, vp: Vnode, mode: int, offset: int, length: int) -> int: ...

    async def fsync(self, vp: Vnode) -> int: ...


class VnodeLock:
    """A readers-writer lock for trio tasks (kernel: the vnode lock, LK_SHARED/LK_EXCLUSIVE).

    ``async with lock.shared:`` / ``async with lock.exclusive:``.  Uncontended acquisition
    is a couple of integer updates and no scheduling at all (it is taken on every read and
    write, so it is a plain class, not a generator-based context manager).  Waiters park on a
    ``ParkingLot``; writers are preferred once waiting, so readers cannot starve a writer.
    """

    def __init__(self) -> None:
        self.readers = 0
        self.writer = False
        self.writers_waiting = 0
        self.lot = trio.lowlevel.ParkingLot()
        self.shared = _Shared(self)
        self.exclusive = _Exclusive(self)

    def wake(self) -> None:
        if self.lot:
            self.lot.unpark_all()


class _Shared:
    __slots__ = ("lk",)

    def __init__(self, lk: VnodeLock) -> None:
        self.lk = lk

    async def __aenter__(self) -> None:
        lk = self.lk
        while lk.writer or lk.writers_waiting:
            await lk.lot.park()
        lk.readers += 1

    async def __aexit__(self, *exc: object) -> None:
        lk = self.lk
        lk.readers -= 1
        if lk.readers == 0:
            lk.wake()


class _Exclusive:
    __slots__ = ("lk",)

    def __init__(self, lk: VnodeLock) -> None:
        self.lk = lk

    async def __aenter__(self) -> None:
        lk = self.lk
        if lk.writer or lk.readers:
            lk.writers_waiting += 1
            try:
                while lk.writer or lk.readers:
                    await lk.lot.park()
            finally:
                lk.writers_waiting -= 1
        lk.writer = True

    async def __aexit__(self, *exc: object) -> None:
        lk = self.lk
        lk.writer = False
        lk.wake()


class Vnode(GenfsNode):
    """A file known to the engine (kernel: struct vnode).

    Attributes:
        key: the file's identity: a backing file's (st_dev, st_ino) (one vnode, one cache,
            per backing inode), a tmpfs node's (TMPFS_DEV, ino).
        vops: the file system's operations vector.
        lock: the vnode lock.
        usecount: open handles and operations in flight (kernel: v_usecount).
        vstate: its state in the vnode cache (kernel: v_state); ``state_changed()`` is set
            at every change.
        mtime_ns, ctime_ns: modification and change times as the engine reports them (the
            backing file's own change with every write-back, which programs must not see:
            tar would think the file changed while it read it).
        times_dirty: ``mtime_ns`` differs from the backing file's (written, resized or
            utimes'd since it was last put back): write-back puts it back.
        unsynced: written or resized since its last successful fsync (kernel: on the
            syncer's worklist); a sync of every vnode skips the others.
        retry_at, retry_delay: when the drain may try to reclaim it again after a failed
            write-back, and the current back-off.
    """

    def __init__(
        self,
        uvm: Uvm,
        name: str,
        fd: int,
        size: int,
        io: BackingIO,
        params: GenfsParams,
        key: tuple[int, int],
        mtime_ns: int,
        ctime_ns: int,
        vops: VnodeOps,
        uobj: UvmObject | None = None,
    ) -> None:
        super().__init__(uvm, name, fd, size, io, params, uobj)
        self.key = key
        self.vops = vops
        self.lock = VnodeLock()
        self.usecount = 0
        self.vstate = VS.LOADING
        self._state_changed = trio.Event()
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns  # the backing file's: making a vnode changes nothing
        self.times_dirty = False
        self.opcount = 0  # reads and writes, for fair scheduling (vnops._fair_checkpoint)
        self.unsynced = False
        self.retry_at = 0.0
        self.retry_delay = 0.0

    def set_state(self, state: VS) -> None:
        """Move to ``state`` and wake whoever waits for a change (kernel: vstate_change)."""
        self.vstate = state
        self._state_changed.set()
        self._state_changed = trio.Event()

    def state_changed(self) -> trio.Event:
        """An event set at the next state change."""
        return self._state_changed

    def touch(self) -> None:
        """Record a modification of the data now (mtime and ctime)."""
        self.mtime_ns = self.ctime_ns = time.time_ns()
        self.times_dirty = True

    def changed(self, ctime_ns: int | None = None) -> None:
        """Record an attribute change (ctime): now, or the backing file's new ctime after a
        namespace operation changed it (never backwards)."""
        self.ctime_ns = max(self.ctime_ns, ctime_ns if ctime_ns is not None else time.time_ns())

    def __repr__(self) -> str:
        return f"<Vnode {self.name} {self.vstate.value} use={self.usecount} size={self.size}>"
