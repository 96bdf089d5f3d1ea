"""The extending-write fast path (reference §3.6, scenario 11.2 #10): whole pages at or past
EOF are neither read nor zeroed; partial edge pages are; holes read zero; a copy that fails
part way never leaves unwritten bytes visible."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from genfs.node import GenfsParams
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
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnops import vop_write
from ubcfs.vm.page import PG_CLEAN, VmPage
from ubcfs.vm.ubc import UbcWindow


async def test_whole_pages_past_eof_skip_zeroing(tmp_path: Path) -> None:
    """An 8-page write at EOF: every page counted in ``fastpath_skipped_zero``, none
    zero-filled, none read; the data is in the frames, the pages are dirty."""
    async with new_engine(256).running() as eng:
        vp = await eng.open(str(tmp_path / "f"))
        exp = eng.uvm.uvmexp
        data = pattern(1, 8 * PAGE)
        skipped, zeroed, ins = exp.fastpath_skipped_zero, exp.zero_fills, exp.pageins
        reads = len(gated_io(eng).read_calls)
        assert await eng.write(vp, 0, data) == (0, len(data))
        assert exp.fastpath_skipped_zero - skipped == 8
        assert exp.zero_fills == zeroed
        assert exp.pageins == ins
        assert len(gated_io(eng).read_calls) == reads
        for i in range(8):
            pg = vp.uobj.pages[i * PAGE]
            assert frame_bytes(eng, pg) == data[i * PAGE : (i + 1) * PAGE]
            assert not pg.flags & PG_CLEAN
        err, got = await eng.read(vp, 0, len(data))
        assert (err, bytes(got)) == (0, data)
        # Appending more whole pages takes the fast path again.
        more = pattern(2, 3 * PAGE)
        assert await eng.write(vp, 8 * PAGE, more) == (0, len(more))
        assert exp.fastpath_skipped_zero - skipped == 11
        assert exp.zero_fills == zeroed
        assert await eng.fsync(vp) == 0
        assert_backing_matches(tmp_path / "f", FileModel(data + more))
        assert await eng.release(vp) == 0


async def test_fast_path_off_zero_fills_the_same_pages(tmp_path: Path) -> None:
    """With ``GenfsParams(fastpath=False)`` the same write zero-fills every new page and
    skips none; the data is the same."""
    async with new_engine(256, params=GenfsParams(fastpath=False)).running() as eng:
        vp = await eng.open(str(tmp_path / "f"))
        exp = eng.uvm.uvmexp
        data = pattern(1, 8 * PAGE)
        assert await eng.write(vp, 0, data) == (0, len(data))
        assert exp.fastpath_skipped_zero == 0
        assert exp.zero_fills == 8
        err, got = await eng.read(vp, 0, len(data))
        assert (err, bytes(got)) == (0, data)
        assert await eng.release(vp) == 0
    assert (tmp_path / "f").read_bytes() == data


@pytest.mark.parametrize("fastpath", [True, False])
async def test_extending_write_with_holes_and_partial_edges(tmp_path: Path, fastpath: bool) -> None:
    """Old EOF in the middle of a page, a write that starts in a later page and ends in the
    middle of one: the edge pages take the slow path (zero-filled), the whole pages between
    take the fast path; the gap before the write and the tail after it read zero, in memory
    and in the backing file."""
    path = tmp_path / "f"
    old = pattern(7, 100)
    path.write_bytes(old)
    async with new_engine(256, params=GenfsParams(fastpath=fastpath)).running() as eng:
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        off = 5000  # page 1
        data = pattern(8, 3 * PAGE)  # ends at 17288, in page 4
        assert await eng.write(vp, off, data) == (0, len(data))
        model = FileModel(old)
        model.write(off, data)
        if fastpath:
            assert exp.fastpath_skipped_zero == 2  # pages 2 and 3
            assert exp.zero_fills == 2  # pages 1 and 4, both past the old EOF
        else:
            assert exp.fastpath_skipped_zero == 0
            assert exp.zero_fills == 4
        await assert_engine_matches(eng, vp, model)
        err, hole = await eng.read(vp, 100, off - 100)
        assert (err, bytes(hole)) == (0, bytes(off - 100))
        # No garbage past EOF in the last page's frame either.
        last = vp.uobj.pages[4 * PAGE]
        assert frame_bytes(eng, last)[(off + len(data)) % PAGE :] == bytes(
            PAGE - (off + len(data)) % PAGE
        )
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        # A hole far past EOF, written with whole pages only.
        far = 40 * PAGE
        tail = pattern(9, 2 * PAGE)
        assert await eng.write(vp, far, tail) == (0, len(tail))
        model.write(far, tail)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_small_appends_build_the_same_file(tmp_path: Path) -> None:
    """Appends of odd sizes (each one partial edge pages, some whole pages): byte-identical
    to the model, in the engine and the backing file."""
    path = tmp_path / "f"
    model = FileModel()
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        for i in range(60):
            data = pattern(i, 1 + (i * 2749) % (3 * PAGE))
            assert await eng.write(vp, model.size, data) == (0, len(data))
            model.write(model.size, data)
        assert eng.uvm.uvmexp.fastpath_skipped_zero > 0
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


# --- a copy that fails part way ----------------------------------------------------------------


class ReleaseSpy:
    """Looks at a failed UBC_FAULTBUSY window right after it was released (through
    ``Ubc.release_hook``): which pages it held and whether their frames were zeroed."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.failed_pages: list[VmPage] = []
        self.failed_offsets: list[int] = []
        self.frames_zero: list[bool] = []
        eng.ubc.release_hook = self

    def __call__(self, win: UbcWindow, error: int, fake: list[VmPage]) -> None:
        if not error:
            return
        for pg in fake:
            self.failed_pages.append(pg)
            self.failed_offsets.append(pg.offset)
            self.frames_zero.append(self.eng.uvm.physmem.is_zero(pg.phys_addr))


async def test_copy_fault_in_fast_path_exposes_nothing(tmp_path: Path) -> None:
    """EFAULT in the middle of the second fast-path window of an extending write: the
    window's never-valid pages are zeroed before they are unbusied, the file is cut back to
    its old size (the new pages freed, the old last page's tail zeroed), and extending the
    file afterwards reads zeroes."""
    path = tmp_path / "f"
    oldsize = 3 * PAGE + 100
    old = pattern(1, oldsize)
    path.write_bytes(old)
    async with new_engine(256).running() as eng:
        vp = await eng.open(str(path))
        spy = ReleaseSpy(eng)
        data = b"B" * (8 * PAGE)  # [oldsize, 11 pages + 100)
        fault_at = 9 * PAGE + 123 - oldsize  # inside page 9: window [8, 12) pages
        err, n = await vop_write(eng.ubc, vp, oldsize, data, efault_at=fault_at)
        assert (err, n) == (errno.EFAULT, 0)
        # The failed window held pages 8, 9, 10 busy and unread; all zeroed on release.
        assert sorted(spy.failed_offsets) == [8 * PAGE, 9 * PAGE, 10 * PAGE]
        assert all(spy.frames_zero)
        assert vp.size == oldsize
        assert vp.writesize == oldsize
        assert all(off < 4 * PAGE for off in vp.uobj.pages)
        assert all(page_is_free(pg) for pg in spy.failed_pages)
        assert backing_size(path) == oldsize
        await assert_engine_matches(eng, vp, FileModel(old))
        err, past = await eng.read(vp, oldsize, PAGE)
        assert (err, bytes(past)) == (0, b"")
        # Extend: everything past the old size reads zero, in memory and on disk.
        assert await eng.truncate(vp, 12 * PAGE) == 0
        model = FileModel(old)
        model.truncate(12 * PAGE)
        await assert_engine_matches(eng, vp, model)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0


async def test_copy_fault_in_edge_page_leaves_old_size(tmp_path: Path) -> None:
    """EFAULT inside the partial first page of an extending write (slow path): the bytes
    already copied past the old EOF disappear with the cut-back; the old data is intact."""
    path = tmp_path / "f"
    oldsize = PAGE + 10
    old = pattern(2, oldsize)
    path.write_bytes(old)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        err, n = await vop_write(eng.ubc, vp, oldsize, b"C" * (4 * PAGE), efault_at=1000)
        assert (err, n) == (errno.EFAULT, 0)
        assert vp.size == oldsize
        assert await eng.truncate(vp, 3 * PAGE) == 0
        model = FileModel(old)
        model.truncate(3 * PAGE)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_copy_fault_after_earlier_windows_were_paged_out(tmp_path: Path) -> None:
    """A 120-page extending write on a 64-frame machine faults at page 110: earlier windows
    have been written to the backing file by the pagedaemon meanwhile.  Afterwards the file,
    in the engine and in the backing store, is exactly its old self."""
    path = tmp_path / "f"
    old = pattern(3, 2 * PAGE + 5)
    path.write_bytes(old)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        data = pattern(4, 120 * PAGE)
        err, n = await vop_write(eng.ubc, vp, len(old), data, efault_at=110 * PAGE)
        assert (err, n) == (errno.EFAULT, 0)
        # The pagedaemon did write some of the new pages past the old EOF meanwhile...
        assert any(off + n > 3 * PAGE for off, n in io.write_calls)
        # ...but nothing of them survives.
        assert backing_size(path) == len(old)
        assert vp.size == len(old)
        assert all(off < 3 * PAGE for off in vp.uobj.pages)
        assert_sound(eng)
        assert await eng.truncate(vp, 125 * PAGE) == 0
        model = FileModel(old)
        model.truncate(125 * PAGE)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


# --- whole pages overwritten inside the file (ffs_write's second UBC_FAULTBUSY case) ----------


async def test_whole_page_overwrite_inside_the_file_reads_nothing(tmp_path: Path) -> None:
    """A write covering pages 2-5 of an 8-page file, from mid-page 1 to mid-page 6: the four
    whole pages are neither read nor zeroed (``overwrite_skipped_read``), the two partial
    edge pages are read; a resident page among them keeps its identity."""
    path = tmp_path / "f"
    old = pattern(5, 8 * PAGE)
    path.write_bytes(old)
    async with new_engine(256).running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        exp = eng.uvm.uvmexp
        err, _ = await eng.read(vp, 3 * PAGE, 10)  # page 3 resident (and read-ahead)
        assert err == 0
        resident = dict(vp.uobj.pages)
        reads, skipped = len(io.read_calls), exp.overwrite_skipped_read
        data = pattern(6, 5 * PAGE)
        assert await eng.write(vp, PAGE + 2048, data) == (0, len(data))
        new_reads = io.read_calls[reads:]
        whole = range(2 * PAGE, 6 * PAGE)
        assert not any(off < whole.stop and off + n > whole.start for off, n in new_reads)
        assert exp.overwrite_skipped_read - skipped == sum(
            1 for off in range(2 * PAGE, 6 * PAGE, PAGE) if off not in resident
        )
        assert vp.uobj.pages[3 * PAGE] is resident[3 * PAGE]
        model = FileModel(old)
        model.write(PAGE + 2048, data)
        await assert_engine_matches(eng, vp, model)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0


@pytest.mark.parametrize("fastpath", [True, False])
async def test_copy_fault_in_an_overwrite_keeps_the_old_data(
    tmp_path: Path, fastpath: bool
) -> None:
    """EFAULT part way through a whole-page overwrite inside the file: the pages of the
    window that faulted, never valid before, are freed, not written (their old bytes are
    still on the backing file, and the next read gets them back), never zeroes; the pages
    filled in earlier windows hold the new bytes.  With or without the extending fast path:
    this case is not the extending one."""
    path = tmp_path / "f"
    old = pattern(7, 16 * PAGE)
    path.write_bytes(old)
    async with new_engine(256, params=GenfsParams(fastpath=fastpath)).running() as eng:
        vp = await eng.open(str(path))
        spy = ReleaseSpy(eng)
        data = b"N" * (12 * PAGE)
        fault_at = 9 * PAGE + 300  # inside page 11 of the file: window [8, 12) pages
        err, n = await vop_write(eng.ubc, vp, 2 * PAGE, data, efault_at=fault_at)
        assert (err, n) == (errno.EFAULT, 0)
        assert vp.size == len(old)
        assert spy.failed_offsets, "the failed window held unread pages"
        assert all(page_is_free(pg) for pg in spy.failed_pages)
        assert all(off not in vp.uobj.pages for off in spy.failed_offsets)
        assert sorted(spy.failed_offsets) == [8 * PAGE, 9 * PAGE, 10 * PAGE, 11 * PAGE]
        # Windows of 4 pages: pages 2-7 were filled in the windows before the one that
        # faulted; 8-11 (that window, none of them valid before) and 12-13 (never reached)
        # keep their old bytes, as does everything outside the write.
        model = FileModel(old)
        model.write(2 * PAGE, b"N" * (6 * PAGE))
        await assert_engine_matches(eng, vp, model)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0
