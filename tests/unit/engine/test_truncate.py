"""setsize/truncate (reference §4.3, scenarios 11.2 #1 and #19): pages wholly past the new
EOF freed, the last page's tail zeroed, later extensions read zeroes, a cost proportional to
the resident pages, wired pages not spared, and truncation meeting a page under I/O."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from genfs.io import putpages
from pagers.backing_io import IOKind
from tests.unit.engine.enginetools import (
    PAGE,
    FileModel,
    assert_backing_matches,
    assert_engine_matches,
    assert_sound,
    backing_size,
    frame_bytes,
    gated_io,
    new_engine,
    page_is_free,
    pattern,
)
from ubcfs.vm.object import LEAF_PAGES, PageTree
from ubcfs.vm.page import PG_BUSY, PG_PAGEOUT, PG_RELEASED, pagewire
from ubcfs.vm.pager import PGO_CLEANIT, PGO_FREE, PGO_PDAEMON
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import PMAP_WIRED, pmap_create, pmap_enter, pmap_extract
from ubcfs.vm.uvm import Uvm


@pytest.mark.parametrize("resident", [True, False], ids=["resident", "paged-out"])
async def test_truncate_mid_page_then_extend_reads_zeroes(tmp_path: Path, resident: bool) -> None:
    """Cut a 3-page file at 1.5 pages, extend it to 4 pages: bytes past 1.5 pages read zero,
    whether the cut page was resident (its tail zeroed in memory) or not (the backing file's
    ftruncate zeroes it); the backing file agrees after fsync."""
    path = tmp_path / "f"
    data = pattern(1, 3 * PAGE)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        assert await eng.write(vp, 0, data) == (0, len(data))
        if not resident:
            assert await eng.fsync(vp) == 0
            assert await putpages(vp, 0, 0, PGO_FREE) == 0
            assert vp.uobj.npages == 0
        cut = PAGE + PAGE // 2
        assert await eng.truncate(vp, cut) == 0
        assert vp.size == cut
        assert all(off < 2 * PAGE for off in vp.uobj.pages)
        if resident:
            assert frame_bytes(eng, vp.uobj.pages[PAGE])[PAGE // 2 :] == bytes(PAGE // 2)
        assert backing_size(path) == cut
        assert await eng.truncate(vp, 4 * PAGE) == 0
        model = FileModel(data)
        model.truncate(cut)
        model.truncate(4 * PAGE)
        await assert_engine_matches(eng, vp, model)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        # Writing past the zeroed tail and reading across it.
        assert await eng.write(vp, 3 * PAGE + 7, b"xyz") == (0, 3)
        model.write(3 * PAGE + 7, b"xyz")
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_truncate_to_zero_and_regrow(tmp_path: Path) -> None:
    """Truncate to 0 frees every page; a regrown file reads zeroes where it was not
    rewritten."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        assert await eng.write(vp, 0, pattern(2, 30 * PAGE)) == (0, 30 * PAGE)
        assert await eng.truncate(vp, 0) == 0
        assert vp.uobj.npages == 0
        assert eng.uvm.uvmexp.filepages == 0
        assert await eng.write(vp, 10 * PAGE, b"q") == (0, 1)
        model = FileModel()
        model.write(10 * PAGE, b"q")
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_truncate_100gib_sparse_file_touches_only_resident_pages(tmp_path: Path) -> None:
    """A 100 GiB sparse file with five resident pages, three of them past the new EOF:
    truncating it to 3 pages + 100 bytes does work proportional to those pages (a handful of
    page-table lookups and frees), not to the 26 million page offsets in the range."""
    path = tmp_path / "sparse"
    big = 100 << 30
    path.write_bytes(b"")
    os.truncate(path, big)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        assert vp.size == big
        offsets = [0, 2 * PAGE, 50 << 30, big - 2 * PAGE, big - PAGE]
        for i, off in enumerate(offsets):
            assert await eng.write(vp, off, pattern(i, PAGE)) == (0, PAGE)
        # Make one of the far pages clean (written back) and leave the others dirty.
        assert await putpages(vp, big - PAGE, big, PGO_CLEANIT) == 0
        await eng.aio.drain()
        assert sorted(vp.uobj.pages) == offsets
        far = [vp.uobj.pages[o] for o in offsets[2:]]
        vp.uobj.pages.probes = 0
        freed_before = eng.uvm.uvmexp.free
        newsize = 3 * PAGE + 100
        with trio.fail_after(30):
            assert await eng.truncate(vp, newsize) == 0
        frees = eng.uvm.uvmexp.free - freed_before
        assert vp.uobj.pages.probes < 1000, vp.uobj.pages.probes
        assert frees == 3
        assert all(page_is_free(pg) for pg in far)
        assert sorted(vp.uobj.pages) == [0, 2 * PAGE]
        assert backing_size(path) == newsize
        model = FileModel()
        model.write(0, pattern(0, PAGE))
        model.write(2 * PAGE, pattern(1, PAGE))
        model.truncate(newsize)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_truncate_frees_wired_page_and_removes_wired_mapping(tmp_path: Path) -> None:
    """As in NetBSD, truncation does not spare a wired page: its wired user mapping is
    removed with pmap_page_protect and the page freed."""
    path = tmp_path / "f"
    path.write_bytes(pattern(3, 4 * PAGE))
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        err, _ = await eng.read(vp, 3 * PAGE, PAGE)
        assert err == 0
        pg = vp.uobj.pages[3 * PAGE]
        proc = pmap_create(eng.uvm, "proc")
        va = 0x10000
        assert pmap_enter(proc, va, pg, Prot.RW.value, Prot.READ.value | PMAP_WIRED) == 0
        pagewire(eng.uvm, pg)
        wired_removed = eng.uvm.uvmexp.pmap_wired_removed
        assert await eng.truncate(vp, PAGE) == 0
        assert page_is_free(pg)
        assert pmap_extract(proc, va) is None
        assert proc.wired_count == 0
        assert eng.uvm.uvmexp.wired == 0
        assert eng.uvm.uvmexp.pmap_wired_removed == wired_removed + 1
        assert_sound(eng)
        assert await eng.release(vp) == 0
    assert backing_size(path) == PAGE


# --- truncation meets a page under I/O ---------------------------------------------------------


@pytest.mark.parametrize("fails", [False, True], ids=["write-ok", "write-fails"])
async def test_truncate_during_pageout_frees_page_at_completion(
    tmp_path: Path, fails: bool
) -> None:
    """The pagedaemon is writing page 2 (PG_PAGEOUT) when the file is cut to one page:
    truncation leaves the page to the I/O and waits for it; the completion frees it -- also
    when the write fails, since there is nothing left to keep -- and a later extension reads
    zeroes there."""
    path = tmp_path / "f"
    path.write_bytes(bytes(4 * PAGE))
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        data = pattern(5, 4 * PAGE)
        assert await eng.write(vp, 0, data) == (0, len(data))
        assert await eng.fsync(vp) == 0
        assert await eng.write(vp, 2 * PAGE, b"D" * PAGE) == (0, PAGE)
        pg = vp.uobj.pages[2 * PAGE]
        gate = io.gate_write(2 * PAGE)
        if fails:
            eng.injector.arm(IOKind.WRITE, errno.EIO, 1)
        # What the pagedaemon does for an unreferenced dirty inactive page.
        assert await putpages(vp, 2 * PAGE, 3 * PAGE, PGO_CLEANIT | PGO_FREE | PGO_PDAEMON) == 0
        await gate.wait_reached()
        assert pg.flags & PG_PAGEOUT
        assert pg.flags & PG_BUSY
        assert eng.uvm.uvmexp.paging == 1
        done = trio.Event()

        async def cut() -> None:
            assert await eng.truncate(vp, PAGE) == 0
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # waiting for the write in flight
            assert vp.size == PAGE
            assert pg.flags & PG_PAGEOUT  # truncation did not touch it
            gate.open()
        await eng.aio.drain()
        assert page_is_free(pg)
        assert eng.uvm.uvmexp.paging == 0
        assert all(off < PAGE for off in vp.uobj.pages)
        assert backing_size(path) == PAGE
        assert_sound(eng)
        assert await eng.truncate(vp, 4 * PAGE) == 0
        model = FileModel(data[:PAGE])
        model.truncate(4 * PAGE)
        await assert_engine_matches(eng, vp, model)
        # A failed write-back is reported to the next fsync, once, even when its page has
        # been truncated away since (as Linux does).
        assert await eng.fsync(vp) == (errno.EIO if fails else 0)
        assert await eng.fsync(vp) == 0
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_truncate_waits_for_async_clean_then_frees(tmp_path: Path) -> None:
    """An asynchronous clean (write-behind style, no PG_PAGEOUT) is writing pages 1-3 when
    the file is cut to one page: truncation sleeps on the busy pages, then frees them."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        data = pattern(6, 4 * PAGE)
        assert await eng.write(vp, 0, data) == (0, len(data))
        pages = [vp.uobj.pages[i * PAGE] for i in range(4)]
        gate = io.gate_write()
        assert await putpages(vp, 0, 4 * PAGE, PGO_CLEANIT) == 0
        await gate.wait_reached()
        assert all(pg.flags & PG_BUSY for pg in pages)
        done = trio.Event()

        async def cut() -> None:
            assert await eng.truncate(vp, PAGE) == 0
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            gate.open()
        assert all(page_is_free(pg) for pg in pages[1:])
        assert not pages[0].flags & (PG_BUSY | PG_RELEASED)
        assert backing_size(path) == PAGE
        assert await eng.truncate(vp, 4 * PAGE) == 0
        model = FileModel(data[:PAGE])
        model.truncate(4 * PAGE)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


def test_page_tree_probes_count() -> None:
    """The probe counter used above does count (so its bound means something)."""
    uvm = Uvm(64 * 512, page_size=512)
    pages = PageTree(uvm.page_shift)
    assert pages.get(1 << 40) is None
    assert (2 << 40) not in pages
    assert pages.probes == 2
    uvm.pages[0].offset = 0
    pages.insert(0, uvm.pages[0])
    assert pages.in_range(0, 64 * 512) == [uvm.pages[0]]
    assert 2 < pages.probes <= 2 + 2 + LEAF_PAGES  # two leaves looked for, one walked
    pages.remove(0)
    uvm.pages[0].offset = -1
