"""genfs_getpages and genfs_putpages over a file's object (~ genfs_vnops.c/genfs_io.c).

Theory of operation
-------------------
``getpages`` returns the busy pages of a range.  Its fast path runs without a single
``await``: when every page is resident, unbusy and valid it busies them and returns (the
cache hit).  Otherwise ``findpages`` busies or allocates every page in ascending order
(sleeping on busy ones), runs of not-yet-valid (PG_FAKE) pages are read with one
``preadv`` each straight into their frames, the part past EOF is zero-filled in memory, and
a sequential reader gets an asynchronous read-ahead.  With PGO_OVERWRITE (the
extending-write fast path) missing pages are returned busy and still PG_FAKE, neither read
nor zeroed: the caller fills them completely.

``putpages`` cleans and/or frees the pages of a range.  Cleaning folds the pmap modified bit
into PG_CLEAN and clears it *without write-protecting the page* (seed: "writing a page to
disk no longer requires making it read-only"): a store during the write sets the bit again,
so the page is simply dirty afterwards.  Dirty pages are gathered into clusters of
contiguous dirty pages (backwards, then forwards) of at most ``maxphys`` bytes, each written
with one ``pwritev``.  The pages of a write leave the paging queues until it completes (the
scans could only step over them); afterwards a page still clean goes to the inactive queue
if the cleaning was in the background (write-behind, the pagedaemon) or PGO_DEACTIVATE, else
to the active one.  Pages to be freed that are under I/O are marked PG_PAGEOUT when the
pagedaemon asks (revocable: a failed pageout clears it and the page stays dirty) or
PG_RELEASED otherwise; the write's completion frees them.

Errors are errno values.  A read error frees the pages that were being filled and leaves
valid pages alone.  A write error leaves every page of the cluster dirty (and on a queue) for
a later retry -- ubcfs's deliberate deviation from the kernel, which treats a permanent write
error as data loss: here nothing is ever dropped, and ``fsync`` reports the error.  The
completion reports each outcome to the machine's ``wbfail`` registry: background cleaning
(the pagedaemon, write-behind: no PGO_SYNCIO) of a file whose writes fail waits for the
file's retry time, with a backoff that doubles per retry; explicit cleaning (PGO_SYNCIO)
always writes.  ``getpages`` waits for memory at most ``--writeback-timeout`` seconds while
write-back fails, then returns the store's errno.

What is per page and what per run: pages are busied, flagged and queued one by one (each
is a ``VmPage``), but a run of them is read or written with one ``preadv``/``pwritev``
whose I/O vector holds one view per physically contiguous run of frames; cleaning finds
the dirty pages through the object's per-leaf dirty tag, and ``putpages`` remembers the
clusters it started as offset ranges, not per page.

Awaits and atomicity: between two ``await``s a task owns all VM state.  Every ``await`` in
this module is made while the pages it concerns are PG_BUSY, and everything looked up before
it is looked up again after it.
"""

from __future__ import annotations

import errno
import functools
import logging
from typing import TYPE_CHECKING, Final

import trio

from pagers.vnode import findpages, release_pages
from ubcfs.vm.hist import H_GETPAGES, H_PAGEOUT, H_PAGEOUT_DONE, H_PAGEOUT_FAIL, H_PUTPAGES
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    PG_PAGEOUT,
    PG_RDONLY,
    PG_RELEASED,
    PQ_QUEUES,
    VmPage,
    is_dirty,
    page_unbusy,
    page_unbusy_many,
    pageactivate,
    pagealloc,
    pagebusy,
    pagedeactivate,
    pagedequeue,
    pageenqueue,
    pagefree,
    pagemarkdirty,
    pagewait,
)
from ubcfs.vm.pager import (
    PGO_ALLPAGES,
    PGO_CLEANIT,
    PGO_DEACTIVATE,
    PGO_FREE,
    PGO_LOCKED,
    PGO_NOBLOCKALLOC,
    PGO_OVERWRITE,
    PGO_PASTEOF,
    PGO_PDAEMON,
    PGO_SYNCIO,
    Buf,
    uvm_wait,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    pmap_clear_modify,
    pmap_clear_reference,
    pmap_is_referenced,
    pmap_page_protect,
    pmap_page_writable,
)

if TYPE_CHECKING:
    from genfs.node import GenfsNode
    from pagers.backing_io import PendingRead

log = logging.getLogger(__name__)

_P_WRITE = Prot.WRITE.value
_FALLOC_FL_KEEP_SIZE: Final = 0x01  # fallocate(2): allocate blocks, keep the size
_PROT_NONE = 0


# --- getpages ---------------------------------------------------------------------------


async def getpages(
    node: GenfsNode, offset: int, npages: int, access: int, flags: int
) -> tuple[int, list[VmPage]]:
    """``_getpages``, then the holes (kernel: the end of genfs_getpages).  Without
    PGO_NOBLOCKALLOC -- a process's fault -- the pages below EOF are looked up in the
    backing file: a write gives those in holes their blocks first (GOP_ALLOC: fallocate,
    so that a full disk says ENOSPC at the fault, not at write-back) and a read marks them
    PG_RDONLY, so that they are mapped read-only until a write fault allocates.  With it
    (the UBC, whose writer's file system allocates at write-back), a write just clears
    PG_RDONLY.  => may sleep (not with PGO_LOCKED)."""
    err, pages = await _getpages(node, offset, npages, access, flags)
    if err:
        return err, pages
    if not flags & PGO_NOBLOCKALLOC and not flags & PGO_LOCKED:
        err = await _gop_alloc(node, pages, access)
        if err:
            for pg in pages:
                pageactivate(node.uvm, pg)  # valid pages, kept (on a queue) and let go
            release_pages(node.uvm, pages)
            return err, []
    elif access & _P_WRITE:
        for pg in pages:
            pg.flags &= ~PG_RDONLY
    return 0, pages


async def _gop_alloc(node: GenfsNode, pages: list[VmPage], access: int) -> int:
    """The holes of a process's fault (``getpages``); an errno of the allocation.
    => the pages are busy, the caller's, across the sleeps."""
    uvm = node.uvm
    ps = uvm.page_size
    exp = uvm.uvmexp
    for pg in pages:
        if pg.offset >= node.size:
            continue  # past EOF: a writer extending the file, allocated at write-back
        if not await node.io.is_hole(node.fd, pg.offset, ps):
            pg.flags &= ~PG_RDONLY
            continue
        if access & _P_WRITE:
            err = await node.io.fallocate(node.fd, _FALLOC_FL_KEEP_SIZE, pg.offset, ps)
            if err and err != errno.EOPNOTSUPP:  # a file system that cannot: at write-back
                return err
            pg.flags &= ~PG_RDONLY
            exp.gop_allocs += 1
        elif not pg.flags & PG_RDONLY and not is_dirty(pg) and not pmap_page_writable(pg):
            # Clean data of a hole (zeroes), mapped writable nowhere: read-only until a
            # write fault allocates.  (A dirty one gets its block at its write-back.)
            pg.flags |= PG_RDONLY
            exp.holes_rdonly += 1
    return 0


async def _getpages(
    node: GenfsNode, offset: int, npages: int, access: int, flags: int
) -> tuple[int, list[VmPage]]:
    """Return the pages of [offset, offset + npages pages) busy (kernel: genfs_getpages).

    Args:
        node: the file.
        offset: page-aligned byte offset of the first page (the "centre" page: it must be
            obtained, the rest may be clamped at EOF).
        npages: pages wanted.
        access: Prot bits of the access (a write access wants pages it may dirty).
        flags: PGO_LOCKED, PGO_SYNCIO, PGO_OVERWRITE, PGO_PASTEOF.

    Returns:
        (0, pages) -- pages busy, owned by the caller, valid unless PGO_OVERWRITE: the first
        page and as many of the rest as EOF, the cluster limit and (PGO_OVERWRITE) free
        memory allow; or
        (EINVAL, []) when the first page lies at or beyond EOF (without PGO_PASTEOF);
        (EBUSY, []) with PGO_LOCKED when the first page is not resident and unbusy;
        (errno, []) on a read error, or when memory stayed short for ``--writeback-timeout``
        seconds while write-back kept failing (the backing store's errno, see ``uvm_wait``).

    => may sleep (not with PGO_LOCKED).  => pages come back in ascending offset order.
    """
    uvm = node.uvm
    ps = uvm.page_size
    mask = uvm.page_mask
    if offset & mask or npages <= 0:
        raise ValueError(f"getpages: bad range offset={offset:#x} npages={npages}")
    memeof = max(node.writesize, offset + npages * ps) if flags & PGO_PASTEOF else node.size
    endr = (memeof + mask) & ~mask
    if offset >= endr:
        return errno.EINVAL, []
    npages = min(npages, (endr - offset) // ps, uvm.max_cluster_pages())
    h = uvm.hist
    if h is not None:
        h.log(H_GETPAGES, node.uobj.name, offset, npages)

    # Fast path: everything resident, unbusy and valid -- no await at all.
    pages = _lookup_valid(node, offset, npages, bool(access & _P_WRITE))
    if pages is not None:
        for pg in pages:
            pagebusy(uvm, pg, "getpages")
        _note_access(node, offset, npages)
        return 0, pages
    if flags & PGO_LOCKED:
        centre = node.uobj.pages.get(offset)
        if centre is None or centre.flags & (PG_BUSY | PG_FAKE):
            return errno.EBUSY, []
        pagebusy(uvm, centre, "getpages")
        return 0, [centre]

    # Slow path: busy or allocate every page, lowest offset first.  For the extending-write
    # fast path while memory is short, ask for no more pages than are free beyond the
    # reserve (the first page at least): allocating a long run, failing part way, freeing
    # it all and starting over after the wait costs more than taking a shorter run now and
    # the rest in the caller's next window use.  (Reads keep their runs: shorter ones cost
    # them more read calls and faults than the wait does, measured.)
    if flags & PGO_OVERWRITE:
        exp = uvm.uvmexp
        room = exp.free - exp.reserve_kernel - 1
        if room < npages:
            npages = max(1, room)
    waiting: float | None = None
    while True:
        err, found = await findpages(uvm, node.uobj, offset, npages, 0, "getpages")
        if err != errno.ENOMEM:
            break
        # findpages released what it had taken: we hold no page while we sleep.  The wait
        # is bounded while write-back fails: then it returns the backing store's errno.
        if waiting is None:
            waiting = trio.current_time()
        err = await uvm_wait(uvm, "getpages", npages, waiting)
        if err:
            return err, []
    pages = [pg for pg in found if pg is not None]
    if not any(pg.flags & PG_FAKE for pg in pages):
        _note_access(node, offset, npages)
        return 0, pages
    if flags & PGO_OVERWRITE:
        # The caller will overwrite every page entirely: no read, no zero-fill.  The pages
        # are dirty from now on, and stay PG_FAKE until the caller has filled them.
        exp = uvm.uvmexp
        size = node.size
        for pg in pages:
            if pg.flags & PG_FAKE:
                pg.flags &= ~PG_RDONLY
                pagemarkdirty(pg)
                if pg.offset < size:
                    exp.overwrite_skipped_read += 1
                else:
                    exp.fastpath_skipped_zero += 1
        return 0, pages
    err = await _read_fake_pages(node, pages)
    if err:
        release_pages(uvm, pages)  # frees the pages being filled, keeps the valid ones
        return err, []
    for pg in pages:
        if pg.flags & PG_FAKE:
            pg.flags &= ~PG_FAKE
            pmap_clear_modify(pg)  # a stale bit from the frame's previous identity
    _note_access(node, offset, npages)
    return 0, pages


def _lookup_valid(node: GenfsNode, offset: int, npages: int, write: bool) -> list[VmPage] | None:
    pages = node.uobj.pages
    ps = node.uvm.page_size
    bad = PG_BUSY | PG_FAKE | (PG_RDONLY if write else 0)
    out = []
    for i in range(npages):
        pg = pages.get(offset + i * ps)
        if pg is None or pg.flags & bad:
            return None
        out.append(pg)
    return out


async def _read_fake_pages(node: GenfsNode, pages: list[VmPage]) -> int:
    """Fill the PG_FAKE pages of ``pages``: one preadv per run of contiguous FAKE pages, and
    zeroes past EOF.  => the pages are busy and owned by the caller."""
    ps = node.uvm.page_size
    exp = node.uvm.uvmexp
    i = 0
    n = len(pages)
    while i < n:
        if not pages[i].flags & PG_FAKE:
            i += 1
            continue
        j = i + 1
        while j < n and pages[j].flags & PG_FAKE and pages[j].offset == pages[j - 1].offset + ps:
            j += 1
        run = pages[i:j]
        views, nbytes = _run_views(node, run)
        err = nread = 0
        if nbytes:
            exp.pgpgin_io += 1
            err, nread = await node.io.readv(node.fd, views, run[0].offset)
        err = _run_read_done(node, run, nbytes, err, nread)
        if err:
            return err
        i = j
    return 0


def _run_views(node: GenfsNode, run: list[VmPage]) -> tuple[list[memoryview], int]:
    """The frame views of the part of a run of contiguous pages that lies below EOF, and its
    size in bytes (only that part comes from the backing file; the rest is zero-filled)."""
    ps = node.uvm.page_size
    nbytes = max(0, min(len(run) * ps, node.size - run[0].offset))
    if not nbytes:
        return [], 0
    nio = (nbytes + ps - 1) // ps
    return node.uvm.physmem.iovecs([pg.phys_addr for pg in run[:nio]], nbytes), nbytes


def _run_read_done(node: GenfsNode, run: list[VmPage], nbytes: int, err: int, nread: int) -> int:
    """Account for the read of a run's ``nbytes`` below EOF and zero what it did not fill;
    returns ``err``.  => the run's pages are busy and owned by the caller."""
    uvm = node.uvm
    ps = uvm.page_size
    exp = uvm.uvmexp
    physmem = uvm.physmem
    if err:
        exp.read_errors += 1
        log.warning(
            "%s: read of %d bytes at %d failed: errno %d", node.name, nbytes, run[0].offset, err
        )
        return err
    exp.pageins += (nbytes + ps - 1) // ps
    if nread < len(run) * ps:
        # Past EOF (or a short read): zero what the read did not fill.
        for k, pg in enumerate(run):
            lo = max(0, nread - k * ps)
            if lo == 0:
                physmem.zero(pg.phys_addr)
                exp.zero_fills += 1
            elif lo < ps:
                physmem.zero_range(pg.phys_addr, lo, ps)
    return 0


def _note_access(node: GenfsNode, offset: int, npages: int) -> None:
    """Track sequential access and start read-ahead for a sequential reader (kernel:
    uvm_ra_request): the window doubles with each sequential access, from
    ``readahead_min`` up to ``readahead``, so that a reader whose requests are larger than
    the first window soon has the next ones read while it copies; a read is started only
    once half a window is missing, so the reads come in large runs."""
    ps = node.uvm.page_size
    end = offset + npages * ps
    sequential = offset == node.ra_next
    node.ra_next = end
    params = node.params
    if not sequential or params.readahead <= 0 or node.uvm.aio is None:
        node.ra_win = 0
        return
    win = node.ra_win = min(params.readahead, max(params.readahead_min, 2 * node.ra_win))
    lo = max(end, node.ra_end)
    hi = min(end + win, (node.size + ps - 1) // ps * ps)
    if hi - lo < win // 2:
        return
    readahead(node, lo, hi)


def readahead(node: GenfsNode, start: int, end: int) -> None:
    """Start an asynchronous read of the missing pages of [start, end) (kernel: the 2005
    genfs read-ahead / uvm_readahead).  Never sleeps: allocates only while memory is
    plentiful, skips resident and busy pages, and stops at the first one it cannot get.
    """
    uvm = node.uvm
    aio = uvm.aio
    assert aio is not None
    ps = uvm.page_size
    exp = uvm.uvmexp
    uobj = node.uobj
    node.ra_end = end
    off = start
    maxpages = max(1, node.params.maxphys // ps)
    pages = uobj.pages
    while off < end:
        run: list[VmPage] = []
        with uobj.vmobjlock:
            while off < end and len(run) < maxpages:
                if off in pages:
                    off += ps
                    if run:
                        break
                    continue
                if exp.free <= exp.freemin + len(run):
                    node.ra_end = off
                    break
                pg = pagealloc(uvm, uobj, off)
                if pg is None:
                    node.ra_end = off
                    break
                run.append(pg)
                off += ps
        if not run:
            return  # at the end, or memory is short
        exp.readahead_pages += len(run)
        node.output_start()
        # The preadv is queued to an I/O thread now, so that it runs while this task goes on
        # to copy the pages its reader asked for; the aio task only collects the result.
        views, nbytes = _run_views(node, run)
        pending = node.io.start_readv(node.fd, views, run[0].offset) if nbytes else None
        if pending is not None:
            exp.pgpgin_io += 1
        buf = Buf(run, run[0].offset, False, _read_iodone, node)
        if pending is None or pending.done():
            # Served inline (the host had the data cached), failed at once, or wholly past
            # EOF: complete it here (kernel: a buf whose biodone runs before the strategy
            # call returns), instead of a trio task and an aiodone wake-up for nothing.
            err, nread = pending.result() if pending is not None else (0, 0)
            buf.error = _run_read_done(node, run, nbytes, err, nread)
            _read_iodone(buf)
            uvm.pages_freed()
        else:
            aio.start_async(functools.partial(_async_read, pending, nbytes), buf)
        if exp.free <= exp.freemin:
            return


async def _async_read(pending: PendingRead | None, nbytes: int, buf: Buf) -> None:
    """Collect a read-ahead started by ``readahead``.  => the pages are busy and PG_FAKE,
    owned by ``buf``, across the await (the I/O thread fills their frames)."""
    node: GenfsNode = buf.owner  # type: ignore[assignment]
    err = nread = 0
    if pending is not None:
        err, nread = await pending.finish()
    buf.error = _run_read_done(node, buf.pages, nbytes, err, nread)


def _read_iodone(buf: Buf) -> None:
    """Completion of an async read (kernel: uvm_aio_aiodone for reads)."""
    node: GenfsNode = buf.owner  # type: ignore[assignment]
    uvm = node.uvm
    node.output_done()
    if buf.error:
        node.ra_end = min(node.ra_end, buf.offset)
        release_pages(uvm, buf.pages)
        return
    for pg in buf.pages:
        pg.flags &= ~PG_FAKE
        pmap_clear_modify(pg)
        pageenqueue(uvm, pg)  # read ahead, not yet used (kernel: uvm_aio_aiodone_pages)
    page_unbusy_many(uvm, buf.pages)


# --- putpages ---------------------------------------------------------------------------


async def putpages(node: GenfsNode, start: int, end: int, flags: int) -> int:
    """Clean, deactivate and/or free the pages of [start, end) (kernel: genfs_putpages).

    Args:
        node: the file.
        start, end: byte range; ``end == 0`` or PGO_ALLPAGES means to the end of the object.
        flags: at least one of PGO_CLEANIT, PGO_FREE, PGO_DEACTIVATE; PGO_SYNCIO waits for the
            writes (and for writes others started); PGO_PDAEMON marks the pagedaemon, which
            never sleeps on busy pages and gets PG_PAGEOUT instead of PG_RELEASED.

    Returns:
        0, or the errno of the first failed synchronous write.  Asynchronous writes return 0
        once started; their completion handles errors.

    => may sleep (never for the pagedaemon).
    """
    if not flags & (PGO_CLEANIT | PGO_FREE | PGO_DEACTIVATE):
        raise ValueError("putpages: needs PGO_CLEANIT, PGO_FREE or PGO_DEACTIVATE")
    uvm = node.uvm
    uobj = node.uobj
    if end == 0 or flags & PGO_ALLPAGES:
        end = 1 << 62
    if flags & PGO_ALLPAGES:
        start = 0
    h = uvm.hist
    if h is not None:
        h.log(H_PUTPAGES, uobj.name, start, end)
    pdaemon = bool(flags & PGO_PDAEMON)
    cleanonly = not flags & (PGO_FREE | PGO_DEACTIVATE)
    result = 0
    # The clusters this call already started, as [first, end) offset ranges in the order
    # started: each is contiguous, and the main loop goes up, so it need only compare with
    # the last one.
    handled: list[tuple[int, int]] = []
    if cleanonly:
        offsets = uobj.dirty_in_range(start, end)  # cleaning only: the dirty pages
    else:
        offsets = [pg.offset for pg in uobj.pages_in_range(start, end)]
    uvm.uvmexp.putpages_scanned += len(offsets)
    # A synchronous cleaning pass (fsync) that finds a page busy -- most often under a
    # write this file already has in flight (write-behind) -- comes back to it once those
    # writes are done, instead of sleeping on each such page in turn: by then the write's
    # completion has usually taken it out of the dirty set.
    defer_busy = cleanonly and not pdaemon and bool(flags & PGO_SYNCIO)
    later: list[int] = []
    for off in offsets:
        if handled and handled[-1][0] <= off < handled[-1][1]:
            continue
        if defer_busy:
            pg = uobj.pages.get(off)
            if pg is not None and pg.flags & PG_BUSY:
                later.append(off)
                continue
        result = await _put_at(node, off, start, end, flags, handled)
        if result:
            break
    if later and not result:
        await node.wait_output()
        for off in later:
            if uobj.pages.is_tagged(off) and not any(lo <= off < hi for lo, hi in handled):
                result = await _put_at(node, off, start, end, flags, handled)
                if result:
                    break
    if flags & PGO_SYNCIO:
        await node.wait_output()
        if not result:
            result = node.take_write_error()
    return result


async def _put_at(
    node: GenfsNode, off: int, start: int, end: int, flags: int, handled: list[tuple[int, int]]
) -> int:
    """Putpages for the page at ``off``, if resident: sleep while it is busy (not the
    pagedaemon), then clean / deactivate / free it; a cluster write it needs is started
    and its range added to ``handled``.  Returns the errno of a write done synchronously."""
    uvm = node.uvm
    uobj = node.uobj
    while True:
        pg = uobj.pages.get(off)
        if pg is None or pg.flags & (PG_RELEASED | PG_PAGEOUT):
            return 0  # gone, or someone is freeing it already
        if pg.flags & PG_BUSY:
            if flags & PGO_PDAEMON:
                uvm.uvmexp.pdbusy += 1
                return 0
            await pagewait(uvm, pg, "putpages")
            continue  # look it up again: it may be gone or renamed
        buf = _put_one(node, pg, start, end, flags)
        if buf is None:
            return 0
        handled.append((buf.offset, buf.pages[-1].offset + uvm.page_size))
        aio = uvm.aio
        if aio is None or not aio.running:
            # No aiodone daemon (in-process use without an engine): write it now.
            await _async_write(buf)
            err = buf.error
            _write_iodone(buf)
            return err
        # Even for PGO_SYNCIO the clusters are started asynchronously, so that several
        # writes are in flight at once; the caller's wait collects them.
        aio.start_async(_async_write, buf)
        return 0


def _put_one(node: GenfsNode, pg: VmPage, start: int, end: int, flags: int) -> Buf | None:
    """Handle one unbusy page for putpages.  Returns the cluster write to issue, if the page
    needs cleaning (its pages are then busy and belong to that write).  => never sleeps."""
    uvm = node.uvm
    exp = uvm.uvmexp
    pdaemon = bool(flags & PGO_PDAEMON)
    wbf = uvm.wbfail
    if (
        wbf.objects
        and flags & PGO_CLEANIT
        and not flags & PGO_SYNCIO
        and is_dirty(pg)
        and wbf.backoff(node.uobj, trio.current_time())
    ):
        # This file's write-back is failing and waits for its retry time: a background
        # write now would fail again.  The page stays dirty and resident; reactivated, it is
        # not the pagedaemon's next victim again at once.
        exp.wb_deferred += 1
        if pdaemon:
            pageactivate(uvm, pg)
        return None
    if flags & PGO_FREE:
        # Every mapping goes, wired ones included (truncation of a wired page).
        pmap_page_protect(uvm, pg, _PROT_NONE)
    needs_clean = False
    if flags & PGO_CLEANIT:
        wasclean = not pmap_clear_modify(pg) and bool(pg.flags & PG_CLEAN)
        pg.flags |= PG_CLEAN
        needs_clean = not wasclean
    if not needs_clean:
        if flags & PGO_CLEANIT and not pmap_page_writable(pg):
            node.uobj.pages.clear_dirty(pg.offset)  # clean, and no store can dirty it
        if flags & PGO_FREE:
            if wbf.objects:
                wbf.page_gone(node.uobj, pg.offset)  # truncated away: no longer waiting
            pagefree(uvm, pg)
            if pdaemon:
                exp.pdfreed += 1
        elif flags & PGO_DEACTIVATE:
            pmap_clear_reference(pg)
            pagedeactivate(uvm, pg)
        return None
    pagebusy(uvm, pg, "putpages")
    cluster = _gather_cluster(node, pg)
    for cp in cluster:
        if not start <= cp.offset < end:
            if pdaemon and flags & PGO_FREE and _reclaimable_neighbour(node, cp):
                # An inactive, unreferenced neighbour would be the daemon's next victim:
                # free it with this write rather than scan it again and write it alone.
                _set_pageout(node, cp)
            continue  # other neighbours outside the range are written, not freed
        if flags & PGO_DEACTIVATE and not cp.wire_count:
            pmap_clear_reference(cp)
            pagedeactivate(uvm, cp)
        elif pdaemon and flags & PGO_FREE:
            _set_pageout(node, cp)
        elif flags & PGO_FREE:
            pmap_page_protect(uvm, cp, _PROT_NONE)
            cp.flags |= PG_RELEASED
    # Every page of the write leaves the paging queues until its completion, as pages under
    # pageout do: busy, the scans could only step over it, and write-behind keeps megabytes
    # busy at once (each pagedaemon pass walked them all again).
    for cp in cluster:
        if cp.pqflags & PQ_QUEUES:
            pagedequeue(uvm, cp)
    if pdaemon:
        exp.pdpageouts += 1
    if wbf.objects and not flags & PGO_SYNCIO and wbf.retry_started(node.uobj, trio.current_time()):
        exp.wb_retries += 1  # a background retry of a failing file: the next waits longer
    node.output_start()
    buf = Buf(cluster, cluster[0].offset, True, _write_iodone, node)
    buf.deactivate = bool(flags & PGO_DEACTIVATE) or not flags & PGO_SYNCIO
    return buf


def _set_pageout(node: GenfsNode, pg: VmPage) -> None:
    """Hand a busy page of a pageout cluster to the write's completion, which frees it
    (kernel: PG_PAGEOUT, counted in uvmexp.paging, off the paging queues)."""
    uvm = node.uvm
    pmap_page_protect(uvm, pg, _PROT_NONE)
    pg.flags |= PG_PAGEOUT
    uvm.uvmexp.paging += 1
    pagedequeue(uvm, pg)


def _reclaimable_neighbour(node: GenfsNode, pg: VmPage) -> bool:
    return not pg.wire_count and node.uvm.pdpolicy.pagereclaimable(pg)


def _gather_cluster(node: GenfsNode, pg: VmPage) -> list[VmPage]:
    """Busy the contiguous dirty, resident, unbusy neighbours of the busy page ``pg``: up to
    half a cluster backwards, then forwards to fill it (kernel: the UFP_DIRTYONLY |
    UFP_NOWAIT | UFP_NOALLOC (| UFP_BACKWARD) findpages calls of genfs_putpages).  Each page
    gathered has its modified bit folded into "dirty" and cleared, and PG_CLEAN set."""
    uvm = node.uvm
    ps = uvm.page_size
    pages = node.uobj.pages
    maxpages = max(1, node.params.maxphys // ps)
    limit = (node.writesize + ps - 1) // ps * ps
    back: list[VmPage] = []
    off = pg.offset - ps
    while len(back) < maxpages // 2 and off >= 0:
        cp = pages.get(off)
        if cp is None or cp.flags & PG_BUSY or not is_dirty(cp):
            break
        back.append(cp)
        off -= ps
    back.reverse()
    fwd: list[VmPage] = []
    off = pg.offset + ps
    while len(back) + 1 + len(fwd) < maxpages and off < limit:
        cp = pages.get(off)
        if cp is None or cp.flags & PG_BUSY or not is_dirty(cp):
            break
        fwd.append(cp)
        off += ps
    for cp in back + fwd:
        pagebusy(uvm, cp, "putpages-cluster")
        pmap_clear_modify(cp)
        cp.flags |= PG_CLEAN
    return [*back, pg, *fwd]


async def _async_write(buf: Buf) -> None:
    """Write a cluster to the backing file (kernel: genfs_gop_write / genfs_do_io)."""
    node: GenfsNode = buf.owner  # type: ignore[assignment]
    uvm = node.uvm
    ps = uvm.page_size
    start = buf.offset
    # Never write past the end of the data (writesize), so the backing file never grows
    # beyond what programs wrote; a truncation waits for writes in flight.
    nbytes = min(len(buf.pages) * ps, node.writesize - start)
    if nbytes <= 0:
        buf.error = 0
        return
    nio = (nbytes + ps - 1) // ps
    views = uvm.physmem.iovecs([pg.phys_addr for pg in buf.pages[:nio]], nbytes)
    uvm.uvmexp.pgpgout_io += 1
    h = uvm.hist
    if h is not None:
        h.log(H_PAGEOUT, node.uobj.name, start, nio)
    err, _ = await node.io.writev(node.fd, views, start)
    buf.error = err


def _write_iodone(buf: Buf) -> None:
    """Completion of a cluster write (kernel: uvm_aio_aiodone for writes).

    Success: PG_PAGEOUT pages that are still clean become free-on-unbusy; pages re-dirtied
    during the write simply stay dirty.  Failure: every page is dirty again; PG_PAGEOUT is
    withdrawn (the page is reactivated), and PG_RELEASED too -- nothing is lost -- unless
    the page lies past EOF (truncated during the write): such a page is freed.  Either way
    the machine's write-back failure registry learns the outcome (backoff, stuck pages), and
    a failure is logged at most once per file per ``LOG_INTERVAL`` seconds.
    """
    node: GenfsNode = buf.owner  # type: ignore[assignment]
    uvm = node.uvm
    exp = uvm.uvmexp
    err = buf.error
    ps = uvm.page_size
    eof = (node.writesize + ps - 1) // ps * ps
    if err:
        node.write_error = err
        exp.write_errors += 1
    else:
        exp.pageouts += len(buf.pages)
    h = uvm.hist
    if h is not None:
        if err:
            h.log(H_PAGEOUT_FAIL, node.uobj.name, buf.offset, err)
        else:
            h.log(H_PAGEOUT_DONE, node.uobj.name, buf.offset, len(buf.pages))
    # Offsets are taken before page_unbusy, which frees (and poisons) PG_RELEASED pages.
    offsets = [pg.offset for pg in buf.pages]
    kept: list[int] = []  # offsets of the pages of a failed write that stay (dirty)
    gone: list[int] = []  # offsets of pages freed here
    for pg in buf.pages:
        if err:
            pagemarkdirty(pg)
            exp.pageout_failed += 1
            if pg.flags & PG_PAGEOUT:
                pg.flags &= ~PG_PAGEOUT
                exp.paging -= 1
                if pg.offset >= eof:
                    # Truncated away during the write (setsize skips PG_PAGEOUT pages and
                    # leaves them to us): nothing is left to keep, so free it.
                    pg.flags |= PG_RELEASED
                else:
                    pageactivate(uvm, pg)
            elif pg.flags & PG_RELEASED and pg.offset < eof:
                pg.flags &= ~PG_RELEASED
        elif pg.flags & PG_PAGEOUT:
            pg.flags &= ~PG_PAGEOUT
            exp.paging -= 1
            if is_dirty(pg) or pg.pvlist:
                pageactivate(uvm, pg)  # touched during the write: keep it
            else:
                pg.flags |= PG_RELEASED
                exp.pdfreed += 1
        released = bool(pg.flags & PG_RELEASED)
        if err:
            (gone if released else kept).append(pg.offset)
        elif not released and not is_dirty(pg) and not pmap_page_writable(pg):
            node.uobj.pages.clear_dirty(pg.offset)  # written, and nothing dirtied it since
        page_unbusy(uvm, pg)
        if not released and not pg.pqflags & PQ_QUEUES and not pg.wire_count:
            # Back on a queue: clean and unreferenced after a background cleaning, to the
            # inactive tail (the pagedaemon frees it when it gets there, unless used again);
            # otherwise to the active tail.
            if buf.deactivate and not err and not is_dirty(pg) and not pmap_is_referenced(pg):
                pagedeactivate(uvm, pg)
            else:
                pageactivate(uvm, pg)
    _note_write_result(node, buf, err, offsets, kept, gone)
    node.output_done()


# At most one log line per file per LOG_INTERVAL seconds about its write-back failures.
LOG_INTERVAL: Final = 10.0


def _note_write_result(
    node: GenfsNode, buf: Buf, err: int, offsets: list[int], kept: list[int], gone: list[int]
) -> None:
    """Tell the write-back failure registry how a cluster write ended, and log it, rate
    limited: the first failure of a file is logged, later ones only if ``LOG_INTERVAL``
    seconds have passed since its last line (which then counts those left out); the write
    that ends a logged episode of failures says so."""
    uvm = node.uvm
    wbf = uvm.wbfail
    uobj = node.uobj
    if not err:
        if not wbf.objects:
            return  # nothing is failing: the common case costs one test
        episode = wbf.write_done(uobj, offsets)
        if episode is not None and node.wb_logged:
            failures, since = episode
            node.wb_logged = False
            node.wb_logged_at = trio.current_time()  # a line like any other for the limit
            log.info(
                "%s: write-back works again after %d failed writes in %.1f s%s",
                node.name,
                failures,
                trio.current_time() - since,
                _unlogged(node),
            )
        return
    now = trio.current_time()
    for off in gone:
        wbf.page_gone(uobj, off)
    ent = wbf.write_failed(uobj, kept, err, now)
    if now - node.wb_logged_at < LOG_INTERVAL:
        node.wb_unlogged += 1
        uvm.uvmexp.wb_log_suppressed += 1
        return
    node.wb_logged_at = now
    node.wb_logged = True
    retry = f"; background write-back waits {ent.retry_at - now:.2f} s" if ent is not None else ""
    log.warning(
        "%s: write of %d pages at %d failed: %s (pages stay dirty%s)%s",
        node.name,
        len(offsets),
        buf.offset,
        errno.errorcode.get(err, str(err)),
        retry,
        _unlogged(node),
    )


def _unlogged(node: GenfsNode) -> str:
    """The "N more failed writes not logged" suffix (forgetting them), or nothing."""
    n, node.wb_unlogged = node.wb_unlogged, 0
    return f"; {n} more failed writes of it not logged" if n else ""
