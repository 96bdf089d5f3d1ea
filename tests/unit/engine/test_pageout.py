"""Write-back: pages stay writable while being written (reference §4.4, scenario #12),
PG_PAGEOUT and failed pageouts (§4.5, scenarios #4 and #5), fsync error reporting, and the
pagedaemon's second chance (§5.2, scenario #14)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
import trio.testing

from genfs.io import putpages
from genfs.node import GenfsParams
from pagers.backing_io import IOKind
from tests.unit.engine.enginetools import (
    PAGE,
    FileModel,
    assert_backing_matches,
    assert_engine_matches,
    assert_sound,
    gated_io,
    new_engine,
    page_dirty,
    page_is_free,
    pattern,
)
from ubcfs.vfs.vnops import dirty_pages
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_PAGEOUT,
    PQ_ACTIVE,
    PQ_INACTIVE,
    PQ_QUEUES,
    pagedeactivate,
)
from ubcfs.vm.pager import PGO_CLEANIT, PGO_FREE, PGO_PDAEMON
from ubcfs.vm.pmap import MD_REFERENCED, pmap_clear_reference
from ubcfs.vm.wbfail import BACKOFF_MIN

PDAEMON_PUT = PGO_CLEANIT | PGO_FREE | PGO_PDAEMON  # what the daemon asks of the pager


def backing_page(path: Path, index: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(index * PAGE)
        return f.read(PAGE)


# --- a write racing the page's own write-out -------------------------------------------------


async def test_write_during_own_cleaning_leaves_page_dirty(tmp_path: Path) -> None:
    """Page 1 is being cleaned asynchronously (the device already has its old bytes) when a
    write changes it through the still-mapped, still-writable UBC window: the write does not
    wait and does not fault, the page is dirty after the I/O completes, the backing file has
    the old bytes until the final fsync writes the new ones."""
    path = tmp_path / "f"
    path.write_bytes(bytes(4 * PAGE))
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        exp = eng.uvm.uvmexp
        # Not the whole page: a whole-page overwrite goes through UBC_FAULTBUSY, whose
        # kenter mapping is gone after the write; this one faults a managed mapping in.
        old = b"A" * (PAGE - 1)
        assert await eng.write(vp, PAGE, old) == (0, len(old))
        pg = vp.uobj.pages[PAGE]
        gate = io.gate_write(PAGE, snapshot=True)
        assert await putpages(vp, PAGE, 2 * PAGE, PGO_CLEANIT) == 0
        await gate.wait_reached()
        assert pg.flags & PG_BUSY
        assert pg.flags & PG_CLEAN
        assert not page_dirty(pg)  # modified bit folded into PG_CLEAN and cleared
        assert pg.pvlist  # not write-protected, not unmapped
        faults = exp.faults
        with trio.fail_after(5):
            assert await eng.write(vp, PAGE + 100, b"B" * 50) == (0, 50)
        assert exp.faults == faults  # the store went through the existing mapping
        assert page_dirty(pg)
        gate.open()
        await eng.aio.drain()
        assert vp.uobj.pages[PAGE] is pg
        assert not pg.flags & PG_BUSY
        assert page_dirty(pg), "a page re-dirtied during its write must stay dirty"
        assert backing_page(path, 1) == old + b"\0"  # what the device had fetched
        model = FileModel(bytes(4 * PAGE))
        model.write(PAGE, old)
        model.write(PAGE + 100, b"B" * 50)
        assert await eng.fsync(vp) == 0
        assert not page_dirty(pg)
        assert_backing_matches(path, model)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0


async def test_write_to_page_under_pageout_waits_for_completion(tmp_path: Path) -> None:
    """The pagedaemon's pageout removes the page's mappings (PGO_FREE), so a writer faults
    on it and sleeps until the completion has freed it; then it reads the page back and
    its write lands on the current data."""
    path = tmp_path / "f"
    path.write_bytes(bytes(4 * PAGE))
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        assert await eng.write(vp, 2 * PAGE, b"A" * PAGE) == (0, PAGE)
        pg = vp.uobj.pages[2 * PAGE]
        gate = io.gate_write(2 * PAGE)
        assert await putpages(vp, 2 * PAGE, 3 * PAGE, PDAEMON_PUT) == 0
        await gate.wait_reached()
        assert pg.flags & PG_PAGEOUT
        assert not pg.pvlist
        exp = eng.uvm.uvmexp
        freed, pageins = exp.pdfreed, exp.pageins
        done = trio.Event()

        async def writer() -> None:
            assert await eng.write(vp, 2 * PAGE + 10, b"B" * 10) == (0, 10)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            assert pg.flags & PG_PAGEOUT
            gate.open()
        # The completion freed the page; the writer read it back in and wrote on that.
        assert exp.pdfreed == freed + 1
        assert exp.pageins == pageins + 1
        model = FileModel(bytes(4 * PAGE))
        model.write(2 * PAGE, b"A" * PAGE)
        model.write(2 * PAGE + 10, b"B" * 10)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


# --- failed pageouts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "err", [errno.EIO, errno.ENOSPC, errno.EAGAIN, errno.ENOMEM], ids=errno.errorcode.get
)
async def test_failed_pageout_keeps_data_and_retry_writes_it(
    tmp_path: Path, err: int, autojump_clock: trio.testing.MockClock
) -> None:
    """An injected failure of a pageout write (scenario 11.2 #5: ENOMEM as well as EIO):
    nothing is lost.  PG_PAGEOUT withdrawn, ``paging`` back to 0,
    ``pageout_failed`` up by the cluster's pages, the pages dirty, unbusy and active again;
    a pageout before the file's retry time leaves them so, the first one after it writes and
    frees them."""
    path = tmp_path / "f"
    path.write_bytes(bytes(4 * PAGE))
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        data = pattern(1, 2 * PAGE)
        assert await eng.write(vp, PAGE, data) == (0, len(data))
        pages = [vp.uobj.pages[PAGE], vp.uobj.pages[2 * PAGE]]
        for pg in pages:
            pmap_clear_reference(pg)
            pagedeactivate(eng.uvm, pg)
        failed, errors, pdpageouts = exp.pageout_failed, exp.write_errors, exp.pdpageouts
        eng.injector.arm(IOKind.WRITE, err, 1)
        assert await putpages(vp, PAGE, 3 * PAGE, PDAEMON_PUT) == 0  # async: "started"
        assert all(pg.flags & PG_PAGEOUT for pg in pages)
        assert all(not pg.pqflags & PQ_QUEUES for pg in pages)
        assert exp.paging == 2
        assert exp.pdpageouts == pdpageouts + 1
        await eng.aio.drain()
        assert exp.paging == 0
        assert exp.pageout_failed == failed + 2
        assert exp.write_errors == errors + 1
        for pg in pages:
            assert vp.uobj.pages[pg.offset] is pg
            assert not pg.flags & (PG_PAGEOUT | PG_BUSY)
            assert pg.pqflags & PQ_ACTIVE
            assert page_dirty(pg)
        assert backing_page(path, 1) == bytes(PAGE)
        assert_sound(eng)
        # Before the retry time (no time has passed on the mock clock) a pageout is put off.
        deferred = exp.wb_deferred
        for pg in pages:
            pagedeactivate(eng.uvm, pg)
        assert await putpages(vp, PAGE, 3 * PAGE, PDAEMON_PUT) == 0
        assert exp.wb_deferred == deferred + 2
        assert all(pg.pqflags & PQ_ACTIVE and page_dirty(pg) for pg in pages)
        assert exp.paging == 0
        # After it, the next pass (the injection is used up) writes them and frees them.
        await trio.sleep(BACKOFF_MIN)
        assert await putpages(vp, PAGE, 3 * PAGE, PDAEMON_PUT) == 0
        await eng.aio.drain()
        assert all(page_is_free(pg) for pg in pages)
        assert exp.paging == 0
        model = FileModel(bytes(4 * PAGE))
        model.write(PAGE, data)
        assert_backing_matches(path, model)
        await assert_engine_matches(eng, vp, model)
        # The failure is still reported, once, to the next fsync (as Linux reports a
        # write-back error to fsync even if the data was written since).
        assert await eng.fsync(vp) == err
        assert await eng.fsync(vp) == 0
        assert await eng.release(vp) == 0


# Normally done in well under a second; a livelock (pages never retried) must fail in
# seconds with a message, not at the 300 s pytest timeout.
RETRY_LIMIT = 20.0


@pytest.mark.timeout(90)  # the last guard, should a livelock stop checkpointing
@pytest.mark.parametrize("err", [errno.EIO, errno.ENOMEM], ids=errno.errorcode.get)
async def test_pagedaemon_retries_failed_pageouts_by_itself(tmp_path: Path, err: int) -> None:
    """Dirty pages whose pageouts fail (EIO or ENOMEM, several times) are written by the
    pagedaemon itself later, under memory pressure from another file -- before any fsync --
    each retry after a backoff."""
    path = tmp_path / "f"
    other = tmp_path / "other"
    other.write_bytes(pattern(9, 8 * 64 * PAGE))
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        data = pattern(2, 20 * PAGE)
        assert await eng.write(vp, 0, data) == (0, len(data))
        eng.injector.arm(IOKind.WRITE, err, 4)
        ov = await eng.open(str(other))
        rounds = 0
        with trio.move_on_after(RETRY_LIMIT) as pressure:
            while dirty_pages(vp) or eng.injector.armed():
                rounds += 1
                off = 0
                while off < 8 * 64 * PAGE:
                    rerr, got = await eng.read(ov, off, 16 * PAGE)
                    assert rerr == 0
                    assert len(got) == 16 * PAGE
                    off += len(got)
                await eng.aio.drain()
        assert not pressure.cancelled_caught, (
            f"the pagedaemon did not write the failed pages within {RETRY_LIMIT} s of memory"
            f" pressure ({rounds} rounds): {dirty_pages(vp)} pages still dirty, injections"
            f" left {eng.injector.armed()}, pageout_failed {exp.pageout_failed},"
            f" wb_retries {exp.wb_retries}, wb_deferred {exp.wb_deferred}, paging {exp.paging}"
        )
        assert exp.pageout_failed >= 4
        assert exp.wb_retries >= 4  # the attempts after the first failure were retries
        assert eng.uvm.wbfail.objects == {}
        assert_backing_matches(path, FileModel(data))
        with trio.fail_after(RETRY_LIMIT):
            assert await eng.fsync(vp) == err  # reported once...
            assert await eng.fsync(vp) == 0  # ...and then not again
            assert await eng.release(ov) == 0
            assert await eng.release(vp) == 0


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOSPC])
async def test_fsync_reports_write_error_and_keeps_pages_dirty(tmp_path: Path, err: int) -> None:
    """fsync returns the write's errno; the pages stay dirty and resident; once the
    injection is used up the next fsync succeeds and the backing file has the data."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        data = pattern(3, 6 * PAGE + 77)
        assert await eng.write(vp, 0, data) == (0, len(data))
        ndirty = dirty_pages(vp)
        assert ndirty == 7
        eng.injector.arm(IOKind.WRITE, err, 1)
        assert await eng.fsync(vp) == err
        assert dirty_pages(vp) == ndirty
        assert path.read_bytes() == b""
        assert eng.uvm.uvmexp.paging == 0
        assert_sound(eng)
        assert await eng.fsync(vp) == 0
        assert dirty_pages(vp) == 0
        assert_backing_matches(path, FileModel(data))
        assert await eng.release(vp) == 0


async def test_fsync_error_in_a_later_cluster(tmp_path: Path) -> None:
    """With small clusters the write of the second cluster of an fsync fails: the error is
    reported, the first cluster is clean, the failed one dirty, and a retry completes the
    file."""
    path = tmp_path / "f"
    async with new_engine(params=GenfsParams(maxphys=4 * PAGE)).running() as eng:
        vp = await eng.open(str(path))
        data = pattern(4, 12 * PAGE)
        assert await eng.write(vp, 0, data) == (0, len(data))
        io = gated_io(eng)
        writes = len(io.write_calls)

        original = io.writev

        async def second_fails(
            fd: int, views: list[memoryview], offset: int, kind: IOKind = IOKind.WRITE
        ) -> tuple[int, int]:
            if offset == 4 * PAGE:  # the second cluster; armed and consumed with no yield
                eng.injector.arm(IOKind.WRITE, errno.EIO, 1)
            return await original(fd, views, offset, kind)

        io.writev = second_fails  # type: ignore[method-assign]
        assert await eng.fsync(vp) == errno.EIO
        io.writev = original  # type: ignore[method-assign]
        assert len(io.write_calls) >= writes + 2
        # The second cluster (pages 4-7) is dirty, the first clean; whether the third was
        # attempted depends on whether clusters are written one by one or in parallel.
        assert all(page_dirty(vp.uobj.pages[i * PAGE]) for i in range(4, 8))
        assert not any(page_dirty(vp.uobj.pages[i * PAGE]) for i in range(4))
        assert 4 <= dirty_pages(vp) <= 8
        assert await eng.fsync(vp) == 0
        assert dirty_pages(vp) == 0
        assert_backing_matches(path, FileModel(data))
        assert await eng.release(vp) == 0


async def test_fsync_reports_backing_fsync_error(tmp_path: Path) -> None:
    """An injected backing-fsync failure is reported although every write succeeded; a
    backing-write injection does not touch fsync itself."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        data = pattern(5, 3 * PAGE)
        assert await eng.write(vp, 0, data) == (0, len(data))
        eng.injector.arm(IOKind.FSYNC, errno.EIO, 1)
        assert await eng.fsync(vp) == errno.EIO
        assert dirty_pages(vp) == 0
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, FileModel(data))
        assert await eng.release(vp) == 0


async def test_cleaning_visits_only_the_dirty_set(tmp_path: Path) -> None:
    """fsync looks at the pages that may be dirty, not at every resident page: none when
    the file is clean, the rewritten ones after a rewrite (and a page written through a
    writable window mapping is still found although only its modified bit says so)."""
    path = tmp_path / "f"
    async with new_engine(pages=256).running() as eng:
        exp = eng.uvm.uvmexp
        vp = await eng.open(str(path))
        data = bytearray(pattern(6, 32 * PAGE))
        assert await eng.write(vp, 0, bytes(data)) == (0, len(data))
        assert await eng.fsync(vp) == 0
        assert len(vp.uobj.pages) == 32
        before = exp.putpages_scanned
        assert await eng.fsync(vp) == 0
        assert exp.putpages_scanned == before  # clean: nothing to look at
        data[5 * PAGE + 7 : 5 * PAGE + 9] = b"xy"
        assert await eng.write(vp, 5 * PAGE + 7, b"xy") == (0, 2)
        assert 5 * PAGE in vp.uobj.dirtyoffs
        assert await eng.fsync(vp) == 0
        assert 0 < exp.putpages_scanned - before <= 4  # the written page and its window's
        assert_backing_matches(path, FileModel(bytes(data)))
        assert await eng.release(vp) == 0


async def test_release_during_failing_pageout_loses_nothing(tmp_path: Path) -> None:
    """The last release of a file whose page is under a pageout that then fails: either the
    release reports the error and keeps the vnode, or it writes the page itself -- the data
    must reach the backing file either way, and no page of the file may be left behind."""
    path = tmp_path / "f"
    path.write_bytes(bytes(4 * PAGE))
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        assert await eng.write(vp, 2 * PAGE, b"D" * PAGE) == (0, PAGE)
        gate = io.gate_write(2 * PAGE)
        eng.injector.arm(IOKind.WRITE, errno.EIO, 1)
        assert await putpages(vp, 2 * PAGE, 3 * PAGE, PDAEMON_PUT) == 0
        await gate.wait_reached()
        result: list[int] = []

        async def release() -> None:
            result.append(await eng.release(vp))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(release)
            await trio.testing.wait_all_tasks_blocked()
            gate.open()
        if result[0]:
            assert vp.key in eng.vnodes
            assert await eng.release(vp) == 0
        assert vp.key not in eng.vnodes
        assert vp.uobj.npages == 0
        assert eng.uvm.uvmexp.filepages == 0
        assert_sound(eng)
    assert backing_page(path, 2) == b"D" * PAGE


async def test_writer_sleeps_when_every_page_is_dirty_and_writes_stall(tmp_path: Path) -> None:
    """Memory full of dirty pages and every backing write stalled: a writer that needs a
    page sleeps (with the pagedaemon, every task is blocked -- nobody spins), and finishes
    once the writes go through."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        exp = eng.uvm.uvmexp
        model = FileModel()
        first = pattern(7, 40 * PAGE)
        assert await eng.write(vp, 0, first) == (0, len(first))
        model.write(0, first)
        go = io.stop_writes()
        more = pattern(8, 80 * PAGE)
        done = trio.Event()

        async def writer() -> None:
            assert await eng.write(vp, len(first), more) == (0, len(more))
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(writer)
            try:
                with trio.fail_after(10):
                    await trio.testing.wait_all_tasks_blocked(cushion=0.05)
                assert not done.is_set()
                assert io.writes_held > 0
                assert exp.paging > 0
                assert exp.free <= exp.freetarg
                assert_sound(eng)
            finally:
                go.set()
        model.write(len(first), more)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


# --- the pagedaemon's second chance -----------------------------------------------------------


async def test_pagedaemon_second_chance(tmp_path: Path) -> None:
    """Three inactive pages: A clean and unreferenced, B clean and referenced since it was
    deactivated, C dirty and unreferenced.  One inactive scan frees A, reactivates B and puts
    C under pageout (PG_PAGEOUT, off the queues, counted in ``paging``); C's completion
    frees it and its data is in the backing file without any fsync."""
    path = tmp_path / "f"
    path.write_bytes(pattern(6, 3 * PAGE))
    async with new_engine(256).running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        uvm = eng.uvm
        exp = uvm.uvmexp
        err, _ = await eng.read(vp, 0, 3 * PAGE)
        assert err == 0
        assert await eng.write(vp, 2 * PAGE, b"C" * PAGE) == (0, PAGE)
        a, b, c = (vp.uobj.pages[i * PAGE] for i in range(3))
        assert not page_dirty(a)
        assert not page_dirty(b)
        assert page_dirty(c)
        for pg in (a, b, c):
            pmap_clear_reference(pg)
            pagedeactivate(uvm, pg)
        # B is read through its (kept) window mapping: referenced again.
        err, _ = await eng.read(vp, PAGE + 5, 10)
        assert err == 0
        assert b.mdattrs & MD_REFERENCED
        assert not a.mdattrs & MD_REFERENCED
        assert all(pg.pqflags & PQ_INACTIVE for pg in (a, b, c))
        react, freed = exp.pdreact, exp.pdfreed
        gate = io.gate_write(2 * PAGE)
        uvm.free_wanted = exp.npages  # make the scan want every page it can get
        try:
            await eng.pdaemon.scan_queue()
        finally:
            uvm.free_wanted = 0
        assert page_is_free(a)
        assert b.pqflags & PQ_ACTIVE
        assert vp.uobj.pages[PAGE] is b
        assert exp.pdreact == react + 1
        assert c.flags & PG_PAGEOUT
        assert c.flags & PG_BUSY
        assert not c.pqflags & PQ_QUEUES
        assert exp.paging == 1
        assert exp.pdfreed == freed + 1
        assert_sound(eng)
        await gate.wait_reached()
        gate.open()
        await eng.aio.drain()
        assert page_is_free(c)
        assert exp.paging == 0
        assert exp.pdfreed == freed + 2
        assert backing_page(path, 2) == b"C" * PAGE
        assert await eng.release(vp) == 0


async def test_sync_of_every_vnode_skips_the_ones_already_synced(tmp_path: Path) -> None:
    """Engine.sync (unmount, ``ubcfs sync``) fsyncs only vnodes written or resized since
    their last fsync; one whose fsync failed stays due and is synced by the next sync."""
    async with new_engine().running() as eng:
        clean = await eng.open(str(tmp_path / "clean"))
        assert await eng.write(clean, 0, b"c" * PAGE) == (0, PAGE)
        assert await eng.fsync(clean) == 0
        written = await eng.open(str(tmp_path / "written"))
        assert await eng.write(written, 0, b"w" * 10) == (0, 10)
        resized = await eng.open(str(tmp_path / "resized"))
        assert await eng.truncate(resized, 3 * PAGE) == 0
        eng.injector.arm(IOKind.FSYNC, errno.EIO, 5)
        assert await eng.sync() == errno.EIO
        assert eng.injector.armed() == {IOKind.FSYNC.value: (errno.EIO, 3)}  # not the clean one
        eng.injector.arm(IOKind.FSYNC, errno.EIO, 0)
        assert await eng.sync() == 0  # the two failed ones are still due
        assert (tmp_path / "written").read_bytes() == b"w" * 10
        assert (tmp_path / "resized").stat().st_size == 3 * PAGE
        eng.injector.arm(IOKind.FSYNC, errno.EIO, 5)
        assert await eng.sync() == 0  # nothing is due now
        assert eng.injector.armed() == {IOKind.FSYNC.value: (errno.EIO, 5)}
        eng.injector.arm(IOKind.FSYNC, errno.EIO, 0)
        for vp in (clean, written, resized):
            assert await eng.release(vp) == 0


async def test_inactive_scan_frees_a_batch_up_to_four_times_the_target(tmp_path: Path) -> None:
    """uvm_pdaemon 1.39: once woken, the inactive scan goes on until free + paging reaches
    4 * freetarg (not just freetarg), so one wake-up frees a batch."""
    path = tmp_path / "f"
    path.write_bytes(pattern(7, 244 * PAGE))
    async with new_engine(256).running() as eng:
        uvm = eng.uvm
        exp = uvm.uvmexp
        vp = await eng.open(str(path))
        uvm.set_pdaemon_wakeup(lambda: None)  # we drive the daemon
        for off in range(0, 244 * PAGE, 4 * PAGE):
            err, _ = await eng.read(vp, off, 4 * PAGE)
            assert err == 0
        await eng.aio.drain()
        for pg in list(vp.uobj.pages.values()):
            pmap_clear_reference(pg)
            pagedeactivate(uvm, pg)
        uvm.tune()
        assert exp.free + exp.paging < exp.freetarg, "the file should fill memory"
        freed = exp.pdfreed
        await eng.pdaemon.scan_queue()
        assert exp.free + exp.paging == 4 * exp.freetarg
        assert exp.pdfreed - freed > 3 * exp.freetarg // 2
        assert_sound(eng)
        assert await eng.release(vp) == 0
