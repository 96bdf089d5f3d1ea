"""Vnode operations on the UBC engine: read, write, setsize (truncate) and fsync
(~ ufs_readwrite.c: ffs_read/ffs_write; uvm_vnode.c: uvm_vnp_setsize, uvm_vnp_zerorange;
genfs_vnops.c/ffs_vnops.c: fsync).

Every byte of file data moves through ``Ubc.ubc_read``/``Ubc.ubc_write``.  Each operation
returns an errno (0 = success), never raises for expected failures.

Writes follow ffs_write: the whole pages of a write that lie entirely beyond the old EOF go
through the extending-write fast path (UBC_FAULTBUSY: neither read nor zeroed; the copy
fills them); the partial pages at either edge and any overwrite of existing data take the
slow path (the window fault reads or zero-fills them).  The new size is published only after
the copy, so readers never see pages being filled.  If the copy fails, the file is truncated
back to its old size, which frees the new pages.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from genfs.io import putpages
from pagers.vnode import is_dirty
from ubcfs.vfs.backing import futimens_empty
from ubcfs.vm.pager import PGO_ALLPAGES, PGO_CLEANIT, PGO_FREE, PGO_SYNCIO
from ubcfs.vm.ubc import UBC_FAULTBUSY, Uio

if TYPE_CHECKING:
    from ubcfs.vfs.vnode import Vnode
    from ubcfs.vm.ubc import Ubc

log = logging.getLogger(__name__)

MAX_FILE_SIZE = 1 << 62
FSYNC_PASSES = 16  # rounds of "write what is dirty" before fsync gives up on a busy writer


CHECKPOINT_EVERY = 8


async def _fair_checkpoint(vp: Vnode) -> None:
    """Yield to the scheduler on every ``CHECKPOINT_EVERY``-th read or write of ``vp``.

    A cache hit never sleeps, so a task reading in a loop would otherwise starve every other
    task; a yield costs a scheduler round (an epoll call), so it is not paid on every FUSE
    request, each of which is its own task anyway.
    """
    vp.opcount += 1
    if vp.opcount % CHECKPOINT_EVERY == 0:
        await trio.lowlevel.checkpoint()


async def vop_read(ubc: Ubc, vp: Vnode, offset: int, length: int) -> tuple[int, bytearray]:
    """Read up to ``length`` bytes at ``offset`` (kernel: ffs_read).

    Returns:
        (0, data) -- short at EOF, empty at or past it; or (errno, empty) on an I/O error.
    """
    if offset < 0 or length < 0:
        return errno.EINVAL, bytearray()
    await _fair_checkpoint(vp)
    async with vp.lock.shared:
        size = vp.size
        if offset >= size or length == 0:
            return 0, bytearray()
        n = min(size - offset, length)
        out = bytearray(n)
        err = await ubc.ubc_read(vp.uobj, offset, Uio(memoryview(out)))
    if err:
        return err, bytearray()
    return 0, out


async def vop_write(
    ubc: Ubc,
    vp: Vnode,
    offset: int,
    data: bytes | bytearray | memoryview,
    efault_at: int | None = None,
) -> tuple[int, int]:
    """Write ``data`` at ``offset`` (kernel: ffs_write).

    Args:
        ubc: the window pool.
        vp: the file.
        offset: where.
        data: the bytes.
        efault_at: simulate a user buffer that faults at this byte (see ``Uio``).

    Returns:
        (0, len(data)) or (errno, 0).  An extending write that fails leaves the file at its
        old size (the new pages are freed); overwritten old data may be partly updated.
    """
    buf = memoryview(data).cast("B")
    n = len(buf)
    if offset < 0 or offset + n > MAX_FILE_SIZE:
        return errno.EFBIG if offset >= 0 else errno.EINVAL, 0
    if n == 0:
        return 0, 0
    uvm = vp.uvm
    ps = uvm.page_size
    await _fair_checkpoint(vp)
    async with vp.lock.exclusive:
        oldsize = vp.size
        end = offset + n
        vp.writesize = max(vp.writesize, end)
        vp.unsynced = True
        uio = Uio(buf, efault_at)
        ranges: list[tuple[int, int, int]] = [(offset, end, 0)]
        if vp.params.fastpath:
            # Whole pages entirely beyond the old EOF (and inside this write).
            fast_lo = max(-(-oldsize // ps) * ps, -(-offset // ps) * ps)
            fast_hi = end // ps * ps
            if fast_lo < fast_hi:
                ranges = [
                    (offset, fast_lo, 0),
                    (fast_lo, fast_hi, UBC_FAULTBUSY),
                    (fast_hi, end, 0),
                ]
        err = 0
        for lo, hi, flags in ranges:
            if hi > lo:
                err = await ubc.ubc_write(vp.uobj, lo, uio, hi - lo, flags)
                if err:
                    break
        if err:
            if end > oldsize:
                # As ffs_write: cut the file back, freeing whatever the write created.
                await _setsize_locked(ubc, vp, oldsize)
            else:
                vp.writesize = vp.size
            vp.touch()
            return err, 0
        if end > vp.size:
            vp.size = end  # uvm_vnp_setsize: publish the new size only now
        vp.touch()
        wb = vp.params.writebehind
        if wb and end // wb != offset // wb:
            # Write-behind: start cleaning the chunk just finished (async).
            lo = (end // wb - 1) * wb
            await putpages(vp, lo, lo + wb, PGO_CLEANIT)
    return 0, n


async def vop_setsize(ubc: Ubc, vp: Vnode, newsize: int) -> int:
    """Truncate or extend a file (kernel: VOP_TRUNCATE -> uvm_vnp_setsize).

    Pages wholly past the new EOF are freed -- every mapping of them removed, wired ones
    included -- at a cost proportional to the resident pages, not the file size; the tail
    of the new last page is zeroed; the backing file follows.
    """
    if newsize < 0 or newsize > MAX_FILE_SIZE:
        return errno.EINVAL if newsize < 0 else errno.EFBIG
    async with vp.lock.exclusive:
        return await _setsize_locked(ubc, vp, newsize)


async def _setsize_locked(ubc: Ubc, vp: Vnode, newsize: int) -> int:
    uvm = vp.uvm
    ps = uvm.page_size
    oldsize = vp.size
    vp.touch()
    vp.unsynced = True
    if newsize >= oldsize and newsize >= vp.writesize:
        err = await _ftruncate(vp.fd, newsize)
        if err:
            return err
        vp.size = vp.writesize = newsize
        return 0
    vp.size = vp.writesize = newsize
    vp.uobj.generation += 1
    cut = -(-newsize // ps) * ps
    await putpages(vp, cut, 0, PGO_FREE)
    tail = newsize % ps
    if tail and (newsize - tail) in vp.uobj.pages:
        # uvm_vnp_zerorange: zero the rest of the last page through UBC.
        zeroes = bytes(ps - tail)
        err = await ubc.ubc_write(vp.uobj, newsize, Uio(memoryview(zeroes)), len(zeroes), 0)
        if err:
            log.warning("%s: zeroing the tail past %d failed: errno %d", vp.name, newsize, err)
    # A write in flight could land after the ftruncate and grow the file again.
    await vp.wait_output()
    uvm.pages_freed()
    return await _ftruncate(vp.fd, newsize)


async def _ftruncate(fd: int, size: int) -> int:
    return await _errno_in_thread(lambda: os.ftruncate(fd, size))


async def _errno_in_thread(work: Callable[[], object]) -> int:
    """Run a backing-file call that may wait for the disk in a worker thread; its
    ``OSError`` becomes the errno (0 = success)."""

    def run() -> int:
        try:
            work()
        except OSError as e:
            return e.errno or errno.EIO
        return 0

    return await trio.to_thread.run_sync(run)


def dirty_pages(vp: Vnode) -> int:
    """Resident pages of ``vp`` that need writing (only its dirty set can hold them)."""
    pages = vp.uobj.pages
    return sum(1 for off in vp.uobj.dirtyoffs if is_dirty(pages[off]))


async def vop_fsync(vp: Vnode) -> int:
    """Write every dirty page of ``vp`` and flush the backing file (kernel: ffs_fsync).

    Loops until nothing is dirty, because a page re-dirtied during its own write is written
    again.  Returns the first error; the pages it concerns stay dirty for a retry.
    """
    async with vp.lock.exclusive:
        unsynced, vp.unsynced = vp.unsynced, False
        err = await _write_back_locked(vp)
        if not err:
            err = await vp.io.fsync(vp.fd)
        if err:
            vp.unsynced = unsynced or vp.unsynced
        return err


async def vop_clean(vp: Vnode) -> int:
    """Write every dirty page of ``vp`` back, without flushing the backing file (the first
    half of a reclaim: kernel: vinvalbuf(V_SAVE)).  Returns the first error."""
    async with vp.lock.exclusive:
        if not vp.unsynced and not vp.numoutput and not dirty_pages(vp):
            # Fsynced since its last change (or never changed): the backing file has its
            # size already; skip the thread hop (unmount reclaims thousands of these).
            _restore_mtime(vp)
            return 0
        return await _write_back_locked(vp)


async def _write_back_locked(vp: Vnode) -> int:
    """Write until nothing is dirty, then make the backing file's size and mtime what the
    engine reports.  => the vnode lock is held exclusively."""
    for _ in range(FSYNC_PASSES):
        err = await putpages(vp, 0, 0, PGO_ALLPAGES | PGO_CLEANIT | PGO_SYNCIO)
        if err:
            return err
        if not dirty_pages(vp):
            break
    else:
        return errno.EAGAIN
    err = await _fix_backing_size(vp)
    if not err:
        _restore_mtime(vp)
    return err


def _restore_mtime(vp: Vnode) -> None:
    """Give the backing file back the mtime programs saw (the engine's), which write-back
    replaced with the time of the write: a file's mtime must never move by itself, not
    even when its vnode is reclaimed and loaded again from the backing file."""
    if not vp.times_dirty:
        return  # the engine never changed it: the backing file's own is the right one
    try:
        if os.fstat(vp.fd).st_mtime_ns != vp.mtime_ns:
            futimens_empty(vp.fd, None, vp.mtime_ns)
    except OSError as e:
        log.warning("%s: restoring mtime failed: %s", vp.name, e)


async def _fix_backing_size(vp: Vnode) -> int:
    """Make the backing file exactly ``vp.size`` long: a file extended by writes whose last
    pages were never dirty (all zeroes) would otherwise be short."""
    size = vp.size

    def work() -> None:
        if os.fstat(vp.fd).st_size != size:
            os.ftruncate(vp.fd, size)

    return await _errno_in_thread(work)


async def vop_discard(ubc: Ubc, vp: Vnode) -> None:
    """Free every page of ``vp`` without writing it, and forget its windows: the backing
    file is gone (unlinked and no longer in use), so nobody can read the data again."""
    async with vp.lock.exclusive:
        vp.size = vp.writesize = 0
        vp.uobj.generation += 1
        await putpages(vp, 0, 0, PGO_ALLPAGES | PGO_FREE)
        await vp.wait_output()
        ubc.purge(vp.uobj)
        vp.uvm.pages_freed()


async def vop_reclaim(ubc: Ubc, vp: Vnode) -> int:
    """Write back and free every page of ``vp`` and forget its windows (kernel: VOP_RECLAIM
    after vinvalbuf).  Returns the write error, with the pages kept, if writing failed."""
    async with vp.lock.exclusive:
        # putpages skips pages under a pagedaemon pageout (PG_PAGEOUT) and only waits for
        # them; if that write fails the page comes back dirty, so go round again until the
        # object is empty -- a page left behind would outlive its vnode and its fd.
        for _ in range(FSYNC_PASSES):
            err = await putpages(vp, 0, 0, PGO_ALLPAGES | PGO_CLEANIT | PGO_FREE | PGO_SYNCIO)
            if not vp.uobj.pages:
                break  # everything written and freed: an older, retried failure is moot
            if err:
                return err
        else:
            return errno.EAGAIN
        await vp.wait_output()
        ubc.purge(vp.uobj)
        vp.uvm.pages_freed()
        _restore_mtime(vp)
        return 0
