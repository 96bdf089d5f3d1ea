"""Vnodes: a file of the engine, with its vnode lock (~ vfs_vnode.c, struct vnode).

A ``Vnode`` is a ``GenfsNode`` (the genfs node must be the first part of a filesystem's
per-vnode data in NetBSD; here it is the base class) plus what the vfs layer needs: the
vnode lock, a use count and the modification time the engine reports.

The vnode lock is a readers-writer lock, as NetBSD's vnode lock is used by ffs_read
(shared) and ffs_write/truncate/fsync (exclusive).  It serialises the engine's own
operations on one file; pages are still protected by PG_BUSY, which is what the pagedaemon
and the I/O completions respect (they never take the vnode lock).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import trio

from genfs.node import GenfsNode

if TYPE_CHECKING:
    from genfs.node import GenfsParams
    from pagers.backing_io import BackingIO
    from ubcfs.vm.uvm import Uvm


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
        key: the backing file's (st_dev, st_ino): one vnode, one cache, per backing inode.
        lock: the vnode lock.
        usecount: opens and other users (kernel: v_usecount).
        mtime_ns, ctime_ns: modification and change times as the engine reports them (the
            backing file's own change with every write-back, which programs must not see:
            tar would think the file changed while it read it).
        mtime_explicit: ``mtime_ns`` was set by utimes after the last write, so the backing
            file must get it back after write-back changed it.
        unsynced: written or resized since its last successful fsync (kernel: on the
            syncer's worklist); a sync of every vnode skips the others.
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
    ) -> None:
        super().__init__(uvm, name, fd, size, io, params)
        self.key = key
        self.lock = VnodeLock()
        self.usecount = 0
        self.mtime_ns = mtime_ns
        self.ctime_ns = ctime_ns  # the backing file's: making a vnode changes nothing
        self.mtime_explicit = False  # set by utimes: re-applied after write-back
        self.opcount = 0  # reads and writes, for fair scheduling (vnops._fair_checkpoint)
        self.unsynced = False

    def touch(self) -> None:
        """Record a modification of the data now (mtime and ctime)."""
        self.mtime_ns = self.ctime_ns = time.time_ns()
        self.mtime_explicit = False

    def changed(self) -> None:
        """Record an attribute change now (ctime)."""
        self.ctime_ns = time.time_ns()
