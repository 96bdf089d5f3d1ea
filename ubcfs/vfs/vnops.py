"""Vnode operations on the UBC engine: read, write, setsize (truncate), fallocate and fsync
(~ ufs_readwrite.c: ffs_read/ffs_write; uvm_vnode.c: uvm_vnp_setsize, uvm_vnp_zerorange;
genfs_vnops.c/ffs_vnops.c: fsync; Linux fallocate(2) as ext4 does it).

Every byte of file data moves through ``Ubc.ubc_read``/``Ubc.ubc_write``.  Each operation
returns an errno (0 = success), never raises for expected failures.

Writes follow ffs_write: the whole pages of a write that lie entirely beyond the old EOF go
through the extending-write fast path (UBC_FAULTBUSY: neither read nor zeroed; the copy
fills them); the partial pages at either edge and any overwrite of existing data take the
slow path (the window fault reads or zero-fills them).  The new size is published only after
the copy, so readers never see pages being filled.  If the copy fails, the file is truncated
back to its old size, which frees the new pages.

The file-system half of each operation is the vnode's operations vector (``vp.vops``,
``ubcfs.vfs.vnode.VnodeOps``): ``GENFS_VOPS`` for a file of the backing directory (genfs
putpages, the backing file's ftruncate, fallocate and fsync), ``AOBJ_VOPS`` for a tmpfs file
whose data is an aobj (uao_put; no store to truncate or flush: tmpfs_fsync does nothing).

fallocate allocates on the backing file (the size following the engine's, as ext4's
would), or punches or zeroes a range: the resident pages of the range are held busy across
the backing file's punch, so that no write-back -- the pagedaemon's included -- can put their
old contents back over the hole; once the backing file system has done it, the pages wholly
inside the range are freed unwritten and the partial pages at its ends zeroed where the range
covers them.  A refusal of the backing file system (EOPNOTSUPP, ENOSPC) changes nothing.
"""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from genfs.io import putpages
from pagers.aobj import Aobj
from ubcfs.vfs.backing import futimens_empty
from ubcfs.vm.hist import H_SETSIZE
from ubcfs.vm.page import (
    PG_BUSY,
    PG_RELEASED,
    is_dirty,
    page_unbusy_many,
    pagebusy,
    pagewait,
)
from ubcfs.vm.pager import PGO_ALLPAGES, PGO_CLEANIT, PGO_FREE, PGO_SYNCIO
from ubcfs.vm.ubc import UBC_FAULTBUSY, Uio

if TYPE_CHECKING:
    from ubcfs.vfs.vnode import Vnode
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.ubc import Ubc

log = logging.getLogger(__name__)

MAX_FILE_SIZE = 1 << 62

# fallocate(2) modes (linux/falloc.h).
FALLOC_FL_KEEP_SIZE: Final = 0x01
FALLOC_FL_PUNCH_HOLE: Final = 0x02
FALLOC_FL_NO_HIDE_STALE: Final = 0x04
FALLOC_FL_COLLAPSE_RANGE: Final = 0x08
FALLOC_FL_ZERO_RANGE: Final = 0x10
FALLOC_FL_INSERT_RANGE: Final = 0x20
FALLOC_FL_UNSHARE_RANGE: Final = 0x40
# The modes vop_fallocate does; any other is EOPNOTSUPP, as from a file system without it
# (Linux itself refuses a punch without KEEP_SIZE so).
FALLOC_MODES: Final = frozenset(
    {
        0,
        FALLOC_FL_KEEP_SIZE,
        FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
        FALLOC_FL_ZERO_RANGE,
        FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
    }
)
_FALLOC_CLEARS: Final = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE
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
        # UBC_FAULTBUSY for the whole pages this write covers (ffs_write's two cases): past
        # the old EOF, the extending-write fast path (neither read nor zeroed); inside the
        # file, a page overwritten entirely is not read first.  Without the fast path only
        # the pages inside the file (up to the old EOF's page) are taken so.
        fast_lo = -(-offset // ps) * ps
        fast_hi = end // ps * ps
        if not vp.params.fastpath:
            fast_hi = min(fast_hi, -(-oldsize // ps) * ps)
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
            await vp.vops.putpages(vp, lo, lo + wb, PGO_CLEANIT)
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
    h = uvm.hist
    if h is not None:
        h.log(H_SETSIZE, vp.uobj.name, oldsize, newsize)
    vp.touch()
    vp.unsynced = True
    vops = vp.vops
    if newsize >= oldsize and newsize >= vp.writesize:
        err = await vops.truncate(vp, newsize)
        if err:
            return err
        vp.size = vp.writesize = newsize
        return 0
    vp.size = vp.writesize = newsize
    vp.uobj.generation += 1
    cut = -(-newsize // ps) * ps
    await vops.putpages(vp, cut, 0, PGO_FREE)
    tail = newsize % ps
    if tail and ((newsize - tail) in vp.uobj.pages or vops.stored(vp, newsize - tail)):
        # uvm_vnp_zerorange: zero the rest of the last page through UBC.
        zeroes = bytes(ps - tail)
        err = await ubc.ubc_write(vp.uobj, newsize, Uio(memoryview(zeroes)), len(zeroes), 0)
        if err:
            log.warning("%s: zeroing the tail past %d failed: errno %d", vp.name, newsize, err)
    # A write in flight could land after the ftruncate and grow the file again.
    await vp.wait_output()
    uvm.pages_freed()
    return await vops.truncate(vp, newsize)


async def vop_fallocate(ubc: Ubc, vp: Vnode, mode: int, offset: int, length: int) -> int:
    """Allocate, punch or zero ``length`` bytes of a file at ``offset`` (kernel: Linux
    fallocate(2), with ext4's semantics).

    Args:
        ubc: the window pool (a tmpfs file's partial pages are zeroed through it).
        vp: the file.
        mode: 0 or FALLOC_FL_KEEP_SIZE: allocate the range on the backing file, data
            unchanged; FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE: deallocate it, it reads
            zeroes; FALLOC_FL_ZERO_RANGE, with or without FALLOC_FL_KEEP_SIZE: it reads
            zeroes, allocated.  Without KEEP_SIZE a range past EOF extends the file to its
            end; with it the size stays and the blocks past EOF are allocated all the same.
        offset, length: the range.

    Returns:
        0; EINVAL for a negative offset or a length <= 0, then EOPNOTSUPP for any other mode,
        then EFBIG for a range ending past MAX_FILE_SIZE (the order Linux checks them in); or
        the backing file system's errno (EOPNOTSUPP, ENOSPC, EFBIG...), in which case neither
        the file's pages nor its size have changed.

    => takes the vnode lock exclusive.  => may sleep.
    """
    if offset < 0 or length <= 0:
        return errno.EINVAL
    if mode not in FALLOC_MODES:
        return errno.EOPNOTSUPP
    end = offset + length
    if end > MAX_FILE_SIZE:
        return errno.EFBIG
    exp = vp.uvm.uvmexp
    async with vp.lock.exclusive:
        if mode & _FALLOC_CLEARS:
            err = await vp.vops.clear(ubc, vp, mode, offset, length)
        else:
            err = await vp.vops.allocate(vp, mode, offset, length)
        if err:
            exp.falloc_failed += 1
            return err
        vp.unsynced = True
        if not mode & FALLOC_FL_KEEP_SIZE and end > vp.size:
            vp.size = vp.writesize = end  # as ext4: mode 0 and ZERO_RANGE extend the file
            vp.touch()
        elif mode & _FALLOC_CLEARS:
            vp.touch()
        else:
            vp.changed()  # blocks allocated, data unchanged: ctime only, as ext4
        exp.fallocs += 1
        if mode & FALLOC_FL_PUNCH_HOLE:
            exp.falloc_punches += 1
        elif mode & FALLOC_FL_ZERO_RANGE:
            exp.falloc_zero_ranges += 1
    return 0


async def _clear_range(vp: Vnode, mode: int, offset: int, length: int) -> int:
    """The page-cache side of a punch or zero range around the backing file's own.

    The resident pages of the range are taken busy first, each once its I/O in flight is
    done: while they are busy nobody can write them back (the pagedaemon and putpages skip
    or wait for busy pages), so neither a dirty page nor one that was being paged out can put
    its old contents over the hole after the backing file system made it.  Then the backing
    file does the operation; if it refuses, the pages are let go untouched.  Otherwise the
    pages wholly inside the range are freed, unwritten, and the partial pages at its ends
    have the covered part zeroed in their frames while still busy (going through the UBC
    would need them unbusy, and a pageout could then write their old bytes over the hole).
    Their clean/dirty state is kept: the backing file now holds zeroes there too.

    => the vnode lock is held exclusive.  => may sleep.
    """
    uvm = vp.uvm
    ps = uvm.page_size
    end = offset + length
    # The part of the range the cache can hold: up to EOF.  The bytes of the last page past
    # EOF are zeroes already, so a range that reaches EOF covers that page to its end.
    hi = end if end < vp.size else -(-vp.size // ps) * ps
    held = await _busy_resident(vp, offset - offset % ps, hi) if offset < hi else []
    try:
        err = await vp.io.fallocate(vp.fd, mode, offset, length)
    except BaseException:
        page_unbusy_many(uvm, held)
        raise
    if err:
        page_unbusy_many(uvm, held)
        return err
    exp = uvm.uvmexp
    wbf = uvm.wbfail
    freed = 0
    for pg in held:
        lo = max(offset, pg.offset) - pg.offset
        top = min(hi, pg.offset + ps) - pg.offset
        if lo == 0 and top == ps:
            pg.flags |= PG_RELEASED  # unbusying frees it, every mapping removed
            if wbf.objects:
                wbf.page_gone(vp.uobj, pg.offset)  # punched away: no longer waiting
            freed += 1
        else:
            uvm.physmem.zero_range(pg.phys_addr, lo, top)
            exp.punch_edge_pages += 1
    page_unbusy_many(uvm, held)
    exp.punched_pages += freed
    if freed:
        uvm.pages_freed()
    return 0


async def _busy_resident(vp: Vnode, start: int, end: int) -> list[VmPage]:
    """Busy the resident pages of [start, end) for the caller, sleeping on busy ones until
    their holders are done (kernel: uvn_findpages with UFP_NOALLOC, over the resident pages
    rather than every offset, so a huge range costs what is resident in it).

    Returns them in ascending offset order.  Holding some while sleeping on another cannot
    deadlock: with the vnode lock exclusive, the only other holders of this file's busy pages
    are I/Os in flight, which finish without waiting for pages.  For the same reason no page
    can appear in the range meanwhile (only readers and writers allocate); a second look
    confirms it, and would take any that did.

    => the vnode lock is held exclusive.  => may sleep.
    """
    uvm = vp.uvm
    uobj = vp.uobj
    held: list[VmPage] = []
    mine: set[int] = set()
    try:
        while True:
            todo = [pg.offset for pg in uobj.pages_in_range(start, end) if pg.offset not in mine]
            if not todo:
                break
            for off in todo:
                while (pg := uobj.pages.get(off)) is not None:
                    if not pg.flags & PG_BUSY:
                        pagebusy(uvm, pg, "fallocate")
                        held.append(pg)
                        mine.add(off)
                        break
                    # Its I/O ends, then look it up again: it may be freed, or back dirty.
                    await pagewait(uvm, pg, "fallocate")
    except BaseException:
        page_unbusy_many(uvm, held)
        raise
    held.sort(key=lambda pg: pg.offset)
    return held


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
    return sum(1 for off in pages.dirty_in_range(0, 1 << 62) if is_dirty(pages[off]))


async def vop_fsync(vp: Vnode) -> int:
    """Make ``vp`` durable (kernel: VOP_FSYNC): its file system's ``fsync``."""
    return await vp.vops.fsync(vp)


async def _genfs_fsync(vp: Vnode) -> int:
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
        return await _write_back_locked(vp, stale_ok=True)


async def _write_back_locked(vp: Vnode, stale_ok: bool = False) -> int:
    """Write until nothing is dirty, then make the backing file's size and mtime what the
    engine reports -- also when an error of an earlier write, retried with success since,
    is reported now (once): everything is written, so the backing file must be the engine's
    file.  When this pass's own writes fail, the backing file is left as it is (not grown
    with zeroes where the data could not go).  With ``stale_ok`` such an earlier error does
    not count at all (a reclaim: the file has no user left to tell).
    => the vnode lock is held exclusively."""
    err = 0
    for _ in range(FSYNC_PASSES):
        e = await vp.vops.putpages(vp, 0, 0, PGO_ALLPAGES | PGO_CLEANIT | PGO_SYNCIO)
        dirty = dirty_pages(vp)
        if e and not (stale_ok and not dirty and not vp.numoutput):
            err = err or e
            if dirty:
                break  # this pass's writes failed: no point going round again
        if not dirty:
            break
    else:
        err = errno.EAGAIN
    if dirty_pages(vp):
        return err or errno.EAGAIN
    size_err = await _fix_backing_size(vp)
    if not size_err:
        _restore_mtime(vp)
    return err or size_err


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
    """Free every page of ``vp`` (and, for a tmpfs file, every swap slot) without writing
    it, and forget its windows: the file is gone (unlinked and no longer in use), so
    nobody can read the data again."""
    async with vp.lock.exclusive:
        vp.size = vp.writesize = 0
        vp.uobj.generation += 1
        await vp.vops.putpages(vp, 0, 0, PGO_ALLPAGES | PGO_FREE)
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
            err = await vp.vops.putpages(
                vp, 0, 0, PGO_ALLPAGES | PGO_CLEANIT | PGO_FREE | PGO_SYNCIO
            )
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


# --- the operations vectors ------------------------------------------------------------


class GenfsVops:
    """The vnode operations of a file of the backing directory (kernel: ffs's vector over
    genfs): pages go to and from the backing file through its data descriptor."""

    async def putpages(self, vp: Vnode, start: int, end: int, flags: int) -> int:
        return await putpages(vp, start, end, flags)

    def stored(self, vp: Vnode, offset: int) -> bool:
        """The backing file's ftruncate cuts a non-resident last page itself."""
        return False

    async def truncate(self, vp: Vnode, size: int) -> int:
        return await _ftruncate(vp.fd, size)

    async def allocate(self, vp: Vnode, mode: int, offset: int, length: int) -> int:
        return await vp.io.fallocate(vp.fd, mode, offset, length)

    async def clear(self, ubc: Ubc, vp: Vnode, mode: int, offset: int, length: int) -> int:
        return await _clear_range(vp, mode, offset, length)

    async def fsync(self, vp: Vnode) -> int:
        return await _genfs_fsync(vp)


class AobjVops:
    """The vnode operations of a tmpfs file, whose data is an aobj (kernel: tmpfs_vnops.c:
    tmpfs_putpages forwards to uao_put; tmpfs_fsync does nothing).  There is no store
    besides the object: a size change is the freeing of pages and slots past EOF, which
    ``putpages`` does, and nothing is ever written back except by the pagedaemon to swap.
    """

    async def putpages(self, vp: Vnode, start: int, end: int, flags: int) -> int:
        return await vnode_aobj(vp).put(vp.uobj, start, end, flags)

    def stored(self, vp: Vnode, offset: int) -> bool:
        """A last page that is only in swap still holds the bytes past the new EOF: the
        truncation zeroes them (swapping the page in), or an extension would show them."""
        return vnode_aobj(vp).find_swslot(offset >> vp.uvm.page_shift) != 0

    async def truncate(self, vp: Vnode, size: int) -> int:
        return 0

    async def allocate(self, vp: Vnode, mode: int, offset: int, length: int) -> int:
        # Memory is not reserved ahead (NetBSD's tmpfs has no fallocate at all): the pages
        # come at the first write, and a write that finds no memory and no swap gets ENOSPC.
        return 0

    async def clear(self, ubc: Ubc, vp: Vnode, mode: int, offset: int, length: int) -> int:
        """Punch or zero [offset, offset + length): free the whole pages (and slots) inside
        the file, zero the covered parts of the partial pages at the ends through the UBC
        (which faults a swapped-out one in and drops its slot: it is dirty now)."""
        ps = vp.uvm.page_size
        end = min(offset + length, vp.size)
        if offset >= end:
            return 0  # past EOF: reads zeroes already
        lo = -(-offset // ps) * ps
        # The last page's bytes past EOF are zeroes: a range reaching EOF frees that page.
        hi = end // ps * ps if end < vp.size else -(-end // ps) * ps
        exp = vp.uvm.uvmexp
        edges = [(offset, end)]
        if lo < hi:
            before = vp.uobj.npages
            await self.putpages(vp, lo, hi, PGO_FREE)
            exp.punched_pages += max(0, before - vp.uobj.npages)
            vp.uvm.pages_freed()
            edges = [(offset, lo), (hi, end)]
        for a, b in edges:
            if a < b:
                zeroes = bytes(b - a)
                err = await ubc.ubc_write(vp.uobj, a, Uio(memoryview(zeroes)), b - a, 0)
                if err:
                    return err
                exp.punch_edge_pages += 1
        return 0

    async def fsync(self, vp: Vnode) -> int:
        return 0


def vnode_aobj(vp: Vnode) -> Aobj:
    """The aobj whose object a tmpfs vnode's data is.  Raises: TypeError for another."""
    ops = vp.uobj.pgops
    if not isinstance(ops, Aobj):
        raise TypeError(f"{vp.name}: a tmpfs vnode whose object is not an aobj")
    return ops


GENFS_VOPS: Final = GenfsVops()
AOBJ_VOPS: Final = AobjVops()
