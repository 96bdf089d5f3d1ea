"""fallocate through the page cache (issue 8, point 6): modes 0 and KEEP_SIZE allocate on
the backing file (mode 0 extending the engine's size as ext4 would); PUNCH_HOLE and
ZERO_RANGE free the resident pages wholly inside the range and zero the covered part of the
partial pages at its ends, with every resident page of the range held busy across the
backing file's own punch, so that neither a dirty page nor one under pageout can put old
data over the hole; bad input and backing-store refusals change nothing."""

from __future__ import annotations

import errno
import os
import random
import tempfile
from pathlib import Path

import pytest
import trio
import trio.lowlevel
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
    page_dirty,
    page_is_free,
    pattern,
    read_all,
)
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnode import Vnode
from ubcfs.vfs.vnops import (
    FALLOC_FL_COLLAPSE_RANGE,
    FALLOC_FL_INSERT_RANGE,
    FALLOC_FL_KEEP_SIZE,
    FALLOC_FL_NO_HIDE_STALE,
    FALLOC_FL_PUNCH_HOLE,
    FALLOC_FL_UNSHARE_RANGE,
    FALLOC_FL_ZERO_RANGE,
    MAX_FILE_SIZE,
)
from ubcfs.vm.page import PG_BUSY, PG_PAGEOUT, POISON_BYTE, pagewire
from ubcfs.vm.pager import PGO_CLEANIT, PGO_FREE, PGO_PDAEMON
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import PMAP_WIRED, pmap_create, pmap_enter, pmap_extract

KEEP = FALLOC_FL_KEEP_SIZE
PUNCH = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
ZERO = FALLOC_FL_ZERO_RANGE
ZERO_KEEP = FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE
PDAEMON_PUT = PGO_CLEANIT | PGO_FREE | PGO_PDAEMON  # what the daemon asks of the pager
STATES = ("dirty", "clean", "out")  # a page resident and dirty, resident and clean, not resident


def blocks(path: Path) -> int:
    """Bytes allocated to the backing file."""
    return os.stat(path).st_blocks * 512


def first_hole(path: Path, offset: int) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, offset, os.SEEK_HOLE)
    finally:
        os.close(fd)


async def mixed_file(eng: Engine, path: Path, size: int, seed: int = 1) -> tuple[Vnode, FileModel]:
    """A file of ``size`` bytes whose pages are, in turn, resident and dirty (rewritten since
    the last fsync), resident and clean, and not resident (written back and freed)."""
    vp = await eng.open(str(path))
    model = FileModel(pattern(seed, size))
    assert await eng.write(vp, 0, model.data) == (0, size)
    assert await eng.fsync(vp) == 0
    npages = -(-size // PAGE)
    for i in range(npages):
        state = STATES[i % 3]
        if state == "out":
            assert await putpages(vp, i * PAGE, (i + 1) * PAGE, PGO_FREE) == 0
        elif state == "dirty":
            n = min(PAGE, size - i * PAGE)
            data = pattern(seed + 100 + i, n)
            assert await eng.write(vp, i * PAGE, data) == (0, n)
            model.write(i * PAGE, data)
    for i in range(npages):
        assert (i * PAGE in vp.uobj.pages) == (STATES[i % 3] != "out")
    return vp, model


# --- allocation ------------------------------------------------------------------------------


async def test_mode_0_allocates_and_extends_like_ext4(tmp_path: Path) -> None:
    """Mode 0 allocates the range on the backing file; past EOF it extends the file (the new
    bytes read zeroes) and the backing file with it; inside the file nothing changes --
    dirty pages stay dirty and are not written."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp, model = await mixed_file(eng, path, 5 * PAGE + 100)
        dirty_before = {off for off, pg in vp.uobj.pages.items() if page_dirty(pg)}
        writes = len(gated_io(eng).write_calls)
        assert await eng.fallocate(vp, 0, PAGE, 2 * PAGE) == 0
        assert vp.size == model.size
        assert {off for off, pg in vp.uobj.pages.items() if page_dirty(pg)} == dirty_before
        assert len(gated_io(eng).write_calls) == writes
        mtime = vp.mtime_ns
        assert await eng.fallocate(vp, 0, 4 * PAGE, 60 * PAGE) == 0
        model.fallocate(0, 4 * PAGE, 60 * PAGE)
        assert vp.size == vp.writesize == 64 * PAGE
        assert vp.mtime_ns > mtime  # the size changed
        assert backing_size(path) == 64 * PAGE
        assert blocks(path) >= 60 * PAGE
        await assert_engine_matches(eng, vp, model)
        exp = eng.uvm.uvmexp
        assert (exp.fallocs, exp.falloc_punches, exp.punched_pages) == (2, 0, 0)
        assert_sound(eng)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        assert await eng.release(vp) == 0


async def test_keep_size_allocates_past_eof_without_growing(tmp_path: Path) -> None:
    """KEEP_SIZE allocates blocks past EOF on the backing file; the size the engine reports
    stays, and only ctime changes (as ext4); later writes there just use the blocks."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp, model = await mixed_file(eng, path, 3 * PAGE + 7)
        mtime, ctime = vp.mtime_ns, vp.ctime_ns
        assert await eng.fallocate(vp, KEEP, 2 * PAGE, 100 * PAGE) == 0
        assert vp.size == model.size
        assert vp.mtime_ns == mtime
        assert vp.ctime_ns > ctime
        assert blocks(path) >= 100 * PAGE
        assert backing_size(path) == model.size
        await assert_engine_matches(eng, vp, model)
        assert await eng.write(vp, 50 * PAGE, b"tail") == (0, 4)
        model.write(50 * PAGE, b"tail")
        await assert_engine_matches(eng, vp, model)
        assert eng.uvm.uvmexp.fallocs == 1
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        assert await eng.release(vp) == 0


# --- punch and zero range ------------------------------------------------------------------

SIZE = 8 * PAGE - 100  # the last page is partial
RANGES = [
    pytest.param(2 * PAGE, 3 * PAGE, id="aligned"),
    pytest.param(2 * PAGE + 100, 3 * PAGE, id="both-edges-partial"),
    pytest.param(3 * PAGE + 100, 200, id="inside-one-page"),
    pytest.param(PAGE - 1, 2, id="straddling-two-pages"),
    pytest.param(5 * PAGE + 7, 10 * PAGE, id="past-eof"),
    pytest.param(0, SIZE, id="whole-file"),
    pytest.param(SIZE - 50, 10, id="inside-eof-page"),
    pytest.param(SIZE - 50, 100, id="across-eof"),
    pytest.param(9 * PAGE, PAGE, id="beyond-eof"),
]


@pytest.mark.parametrize(("offset", "length"), RANGES)
async def test_punch_hole(tmp_path: Path, offset: int, length: int) -> None:
    """The range (up to EOF) reads zeroes at once, from the cache; the size stays; resident
    pages wholly inside are freed unwritten, the partial ones at the ends zeroed where
    covered, keeping their dirty state; the backing file has the hole after fsync."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp, model = await mixed_file(eng, path, SIZE)
        io = gated_io(eng)
        end = min(offset + length, SIZE)
        whole = [
            off
            for off in vp.uobj.pages
            if offset <= off and (off + PAGE <= end or (end == SIZE and off < end))
        ]
        edges = [
            off
            for off in vp.uobj.pages
            if off not in whole and off < end and offset < off + PAGE and offset < end
        ]
        edge_dirty = {off: page_dirty(vp.uobj.pages[off]) for off in edges}
        writes = len(io.write_calls)
        assert await eng.fallocate(vp, PUNCH, offset, length) == 0
        model.fallocate(PUNCH, offset, length)
        assert io.fallocate_calls == [(PUNCH, offset, length)]
        assert len(io.write_calls) == writes  # nothing was written to make the hole
        assert vp.size == SIZE
        assert not any(off in vp.uobj.pages for off in whole)
        assert {off: page_dirty(vp.uobj.pages[off]) for off in edges} == edge_dirty
        exp = eng.uvm.uvmexp
        assert (exp.fallocs, exp.falloc_punches) == (1, 1)
        assert (exp.punched_pages, exp.punch_edge_pages) == (len(whole), len(edges))
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        hole_lo = -(-offset // PAGE) * PAGE
        if hole_lo + PAGE <= end:
            assert first_hole(path, hole_lo) == hole_lo  # deallocated, not written zeroes
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


@pytest.mark.parametrize("mode", [ZERO, ZERO_KEEP], ids=["zero-range", "zero-range-keep-size"])
@pytest.mark.parametrize(("offset", "length"), RANGES)
async def test_zero_range(tmp_path: Path, mode: int, offset: int, length: int) -> None:
    """ZERO_RANGE: the range reads zeroes and is allocated; without KEEP_SIZE a range past
    EOF extends the file (ext4), with it the size stays."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp, model = await mixed_file(eng, path, SIZE)
        assert await eng.fallocate(vp, mode, offset, length) == 0
        model.fallocate(mode, offset, length)
        assert vp.size == vp.writesize == model.size
        assert model.size == (SIZE if mode & KEEP else max(SIZE, offset + length))
        exp = eng.uvm.uvmexp
        assert (exp.fallocs, exp.falloc_zero_ranges, exp.falloc_punches) == (1, 1, 0)
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        assert blocks(path) >= -(-(offset + length) // PAGE) * PAGE - PAGE
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_punch_then_write_and_extend(tmp_path: Path) -> None:
    """After a punch the hole is an ordinary part of the file: writes into it, truncation
    and extension behave as on any file."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp, model = await mixed_file(eng, path, 6 * PAGE)
        assert await eng.fallocate(vp, PUNCH, PAGE + 10, 4 * PAGE) == 0
        model.fallocate(PUNCH, PAGE + 10, 4 * PAGE)
        assert await eng.write(vp, 3 * PAGE - 5, b"0123456789") == (0, 10)
        model.write(3 * PAGE - 5, b"0123456789")
        assert await eng.truncate(vp, 3 * PAGE) == 0
        model.truncate(3 * PAGE)
        assert await eng.fallocate(vp, 0, 0, 5 * PAGE) == 0
        model.fallocate(0, 0, 5 * PAGE)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


# --- what is refused ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "offset", "length", "err"),
    [
        pytest.param(0, -1, PAGE, errno.EINVAL, id="negative-offset"),
        pytest.param(0, 0, 0, errno.EINVAL, id="zero-length"),
        pytest.param(PUNCH, 0, -5, errno.EINVAL, id="negative-length"),
        pytest.param(FALLOC_FL_COLLAPSE_RANGE | KEEP, -1, 0, errno.EINVAL, id="einval-first"),
        pytest.param(FALLOC_FL_PUNCH_HOLE, 0, PAGE, errno.EOPNOTSUPP, id="punch-no-keep"),
        pytest.param(FALLOC_FL_COLLAPSE_RANGE, 0, PAGE, errno.EOPNOTSUPP, id="collapse"),
        pytest.param(FALLOC_FL_INSERT_RANGE, 0, PAGE, errno.EOPNOTSUPP, id="insert"),
        pytest.param(FALLOC_FL_UNSHARE_RANGE, 0, PAGE, errno.EOPNOTSUPP, id="unshare"),
        pytest.param(FALLOC_FL_NO_HIDE_STALE | PUNCH, 0, PAGE, errno.EOPNOTSUPP, id="no-hide"),
        pytest.param(PUNCH | FALLOC_FL_ZERO_RANGE, 0, PAGE, errno.EOPNOTSUPP, id="two-modes"),
        pytest.param(0x8000, 0, PAGE, errno.EOPNOTSUPP, id="unknown-bit"),
        pytest.param(0, MAX_FILE_SIZE, 1, errno.EFBIG, id="past-max-size"),
        pytest.param(PUNCH, MAX_FILE_SIZE - PAGE, 2 * PAGE, errno.EFBIG, id="punch-past-max"),
        pytest.param(0x40000, MAX_FILE_SIZE, 1, errno.EOPNOTSUPP, id="eopnotsupp-before-efbig"),
    ],
)
async def test_bad_requests_change_nothing(
    tmp_path: Path, mode: int, offset: int, length: int, err: int
) -> None:
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp, model = await mixed_file(eng, path, 4 * PAGE)
        resident = dict(vp.uobj.pages.items())
        assert await eng.fallocate(vp, mode, offset, length) == err
        assert dict(vp.uobj.pages.items()) == resident
        assert gated_io(eng).fallocate_calls == []  # refused before the backing file
        assert (eng.uvm.uvmexp.fallocs, eng.uvm.uvmexp.falloc_failed) == (0, 0)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


@pytest.mark.parametrize("mode", [0, KEEP, PUNCH, ZERO, ZERO_KEEP])
@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EOPNOTSUPP, errno.EIO])
async def test_backing_refusal_passes_through_and_changes_nothing(
    tmp_path: Path, mode: int, err: int
) -> None:
    """The backing file system's error is the caller's; the pages of the range -- dirty
    ones too -- are let go untouched, the size does not change, nothing is lost."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp, model = await mixed_file(eng, path, 6 * PAGE - 9)
        resident = dict(vp.uobj.pages.items())
        dirty = {off for off, pg in resident.items() if page_dirty(pg)}
        eng.injector.arm(IOKind.FALLOCATE, err, 1)
        assert await eng.fallocate(vp, mode, PAGE + 5, 20 * PAGE) == err
        assert dict(vp.uobj.pages.items()) == resident
        assert {off for off, pg in vp.uobj.pages.items() if page_dirty(pg)} == dirty
        assert not any(pg.flags & PG_BUSY for pg in resident.values())
        assert vp.size == vp.writesize == model.size
        exp = eng.uvm.uvmexp
        assert (exp.fallocs, exp.falloc_failed, exp.punched_pages) == (0, 1, 0)
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


def _tmpfs_dir() -> Path | None:
    """A directory on tmpfs, whose fallocate does PUNCH_HOLE but not ZERO_RANGE."""
    shm = Path("/dev/shm")
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split() for line in f]
    except OSError:
        return None
    if not any(m[1] == str(shm) and m[2] == "tmpfs" for m in mounts if len(m) > 2):
        return None
    return Path(tempfile.mkdtemp(prefix="ubcfs-falloc-", dir=shm))


async def test_backing_file_system_without_zero_range() -> None:
    """A real refusal: tmpfs answers ZERO_RANGE with EOPNOTSUPP, which is passed through
    with the cache untouched; its PUNCH_HOLE works."""
    top = _tmpfs_dir()
    if top is None:
        pytest.skip("no tmpfs at /dev/shm")
    try:
        path = top / "f"
        async with new_engine().running() as eng:
            vp, model = await mixed_file(eng, path, 5 * PAGE)
            resident = dict(vp.uobj.pages.items())
            assert await eng.fallocate(vp, ZERO, PAGE, PAGE) == errno.EOPNOTSUPP
            assert dict(vp.uobj.pages.items()) == resident
            await assert_engine_matches(eng, vp, model)
            assert await eng.fallocate(vp, PUNCH, PAGE, 2 * PAGE) == 0
            model.fallocate(PUNCH, PAGE, 2 * PAGE)
            await assert_engine_matches(eng, vp, model)
            assert await eng.release(vp) == 0
        assert_backing_matches(path, model)
    finally:
        for p in top.iterdir():
            p.unlink()
        top.rmdir()


# --- the order: nothing old is written over the hole -------------------------------------------


@pytest.mark.parametrize("fails", [False, True], ids=["pageout-ok", "pageout-fails"])
async def test_punch_waits_for_pageout_in_flight(tmp_path: Path, fails: bool) -> None:
    """The pagedaemon is writing page 2's new contents (PG_PAGEOUT) when the range is
    punched: the punch of the backing file waits until that write has landed, so it cannot
    land on the hole afterwards; if the write fails, the page comes back dirty and the punch
    frees it unwritten.  Either way the backing file ends with the hole."""
    path = tmp_path / "f"
    path.write_bytes(pattern(1, 4 * PAGE))
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        assert await eng.write(vp, 2 * PAGE, b"D" * PAGE) == (0, PAGE)
        pg = vp.uobj.pages[2 * PAGE]
        gate = io.gate_write(2 * PAGE, snapshot=True)
        if fails:
            eng.injector.arm(IOKind.WRITE, errno.EIO, 1)
        assert await putpages(vp, 2 * PAGE, 3 * PAGE, PDAEMON_PUT) == 0
        await gate.wait_reached()
        assert pg.flags & PG_PAGEOUT
        done = trio.Event()

        async def punch() -> None:
            assert await eng.fallocate(vp, PUNCH, 2 * PAGE, PAGE) == 0
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(punch)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            assert io.fallocate_calls == []  # the backing file is not punched yet
            gate.open()
        assert page_is_free(pg)
        assert eng.uvm.uvmexp.paging == 0
        assert io.fallocate_calls == [(PUNCH, 2 * PAGE, PAGE)]
        model = FileModel(pattern(1, 4 * PAGE))
        model.fallocate(PUNCH, 2 * PAGE, PAGE)
        await eng.aio.drain()
        assert_backing_matches(path, model)  # already, before any fsync
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        # The failed pageout is reported to the next fsync, once (as after a truncation).
        assert await eng.fsync(vp) == (errno.EIO if fails else 0)
        assert await eng.fsync(vp) == 0
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_punch_waits_for_async_clean_of_edge_and_inner_pages(tmp_path: Path) -> None:
    """A write-behind clean (no PG_PAGEOUT: the pages keep their mappings) is writing pages
    1-3 when [1.5 pages, 3.5 pages) is punched: the punch sleeps on the busy pages, then
    punches; page 2 is freed, pages 1 and 3 keep their uncovered halves."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        data = pattern(2, 5 * PAGE)
        assert await eng.write(vp, 0, data) == (0, len(data))
        gate = io.gate_write(PAGE, snapshot=True)
        assert await putpages(vp, PAGE, 4 * PAGE, PGO_CLEANIT) == 0
        await gate.wait_reached()
        pages = [vp.uobj.pages[i * PAGE] for i in range(1, 4)]
        assert all(pg.flags & PG_BUSY for pg in pages)
        done = trio.Event()

        async def punch() -> None:
            assert await eng.fallocate(vp, PUNCH, PAGE + PAGE // 2, 2 * PAGE) == 0
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(punch)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()
            assert io.fallocate_calls == []
            gate.open()
        model = FileModel(data)
        model.fallocate(PUNCH, PAGE + PAGE // 2, 2 * PAGE)
        assert page_is_free(pages[1])
        assert not page_is_free(pages[0])
        assert not page_is_free(pages[2])
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_pages_of_the_range_stay_busy_while_the_backing_file_is_punched(
    tmp_path: Path,
) -> None:
    """While the backing file's punch is in progress, the pagedaemon finds the dirty pages
    of the range busy and skips them (no write of their old data can start), a reader and a
    writer of the file wait, and a writer of another file that needs memory is served from
    elsewhere; once the punch is done everyone proceeds and the range reads zeroes."""
    path, other = tmp_path / "f", tmp_path / "g"
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        data = pattern(3, 12 * PAGE)
        assert await eng.write(vp, 0, data) == (0, len(data))  # dirty, all resident
        gate = io.gate_fallocate()
        results: dict[str, tuple[int, int] | int] = {}
        read: list[bytes] = []

        async def punch() -> None:
            results["punch"] = await eng.fallocate(vp, PUNCH, 2 * PAGE + 1, 8 * PAGE)

        async def reader() -> None:
            err, got = await eng.read(vp, 0, 12 * PAGE)
            results["read"] = err
            read.append(bytes(got))

        async def writer() -> None:
            results["write"] = await eng.write(vp, 5 * PAGE, b"W" * 10)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(punch)
            await gate.wait_reached()
            held = [vp.uobj.pages[i * PAGE] for i in range(2, 11)]
            assert all(pg.flags & PG_BUSY for pg in held)
            writes = len(io.write_calls)
            busy_skips = eng.uvm.uvmexp.pdbusy
            assert await putpages(vp, 0, 12 * PAGE, PDAEMON_PUT) == 0
            assert eng.uvm.uvmexp.pdbusy >= busy_skips + len(held)
            await eng.aio.drain()
            written = {off for off, n in io.write_calls[writes:] for off in range(off, off + n)}
            assert not any(pg.offset in written for pg in held)
            nursery.start_soon(reader)
            nursery.start_soon(writer)
            # Memory for another file while the range is held: 3/4 of the machine.
            gvp = await eng.open(str(other))
            assert await eng.write(gvp, 0, pattern(4, 48 * PAGE)) == (0, 48 * PAGE)
            assert "read" not in results
            assert "write" not in results
            gate.open()
        model = FileModel(data)
        model.fallocate(PUNCH, 2 * PAGE + 1, 8 * PAGE)
        assert results["punch"] == 0
        assert results["read"] == 0
        # The reader came after the punch (it waited for the vnode lock); the writer may
        # have gone before or after it.
        assert read[0] in (bytes(model.data), _with(model, 5 * PAGE, b"W" * 10))
        assert results["write"] == (0, 10)
        model.write(5 * PAGE, b"W" * 10)
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0
        assert await eng.release(gvp) == 0
    assert_backing_matches(path, model)


def _with(model: FileModel, offset: int, data: bytes) -> bytes:
    m = FileModel(bytes(model.data))
    m.write(offset, data)
    return bytes(m.data)


# --- mappings, poison, wired pages -------------------------------------------------------------


async def test_freed_pages_are_poisoned_and_unmapped_from_windows(tmp_path: Path) -> None:
    """Pages freed by a punch lose their UBC window mappings (a stale one would read the
    0xDE poison of the freed frame); a partial page zeroed in place is seen zeroed through
    the window that still maps it; a wired user mapping of a punched page goes, as with
    truncation."""
    path = tmp_path / "f"
    data = pattern(5, 4 * PAGE)
    path.write_bytes(data)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        assert await read_all(eng, vp) == data  # the windows now map all four pages
        freed = [vp.uobj.pages[PAGE], vp.uobj.pages[2 * PAGE]]
        proc = pmap_create(eng.uvm, "proc")
        va = 0x10000
        assert pmap_enter(proc, va, freed[0], Prot.RW.value, Prot.READ.value | PMAP_WIRED) == 0
        pagewire(eng.uvm, freed[0])
        assert await eng.fallocate(vp, PUNCH, PAGE, 2 * PAGE + 100) == 0
        assert all(page_is_free(pg) for pg in freed)
        assert all(frame_bytes(eng, pg) == bytes([POISON_BYTE]) * PAGE for pg in freed)
        assert pmap_extract(proc, va) is None
        assert (proc.wired_count, eng.uvm.uvmexp.wired) == (0, 0)
        edge = vp.uobj.pages[3 * PAGE]
        assert frame_bytes(eng, edge)[:100] == bytes(100)
        model = FileModel(data)
        model.fallocate(PUNCH, PAGE, 2 * PAGE + 100)
        assert await read_all(eng, vp) == bytes(model.data)
        assert_sound(eng)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_punch_of_a_100gib_sparse_file_touches_only_resident_pages(tmp_path: Path) -> None:
    """Punching almost all of a 100 GiB file with five resident pages costs a handful of
    page-table lookups, not one per page of the range."""
    path = tmp_path / "sparse"
    big = 100 << 30
    path.write_bytes(b"")
    os.truncate(path, big)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        offsets = [0, 2 * PAGE, 50 << 30, big - 2 * PAGE, big - PAGE]
        for i, off in enumerate(offsets):
            assert await eng.write(vp, off, pattern(i, PAGE)) == (0, PAGE)
        vp.uobj.pages.probes = 0
        with trio.fail_after(30):
            assert await eng.fallocate(vp, PUNCH, 2 * PAGE, big) == 0
        assert vp.uobj.pages.probes < 1000, vp.uobj.pages.probes
        assert sorted(vp.uobj.pages) == [0]
        assert eng.uvm.uvmexp.punched_pages == 4
        assert vp.size == big
        assert await eng.fsync(vp) == 0
        assert blocks(path) <= 16 * PAGE
        err, tail = await eng.read(vp, big - PAGE, PAGE)
        assert (err, bytes(tail)) == (0, bytes(PAGE))
        assert await eng.release(vp) == 0


# --- under memory pressure, racing readers and writers ---------------------------------------

MODES = [0, KEEP, PUNCH, ZERO, ZERO_KEEP]


@pytest.mark.parametrize("seed", range(4))
async def test_random_operations_race_under_memory_pressure(tmp_path: Path, seed: int) -> None:
    """Four tasks write, read, truncate and fallocate (every mode) one file four times the
    size of memory, while the pagedaemon pages out all the time.  Every operation holds the
    vnode lock for its whole length and returns without yielding after releasing it, so
    the order in which the tasks finish is the order of the operations: each one is applied
    to the model as it returns, and each read must match the model at that point.  Ends
    with the backing file equal to the model and a sound machine."""
    rng = random.Random(seed)
    path = tmp_path / "f"
    span = 256 * PAGE
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        model = FileModel()
        first = pattern(seed, span // 2)
        assert await eng.write(vp, 0, first) == (0, len(first))
        model.write(0, first)

        def some_range() -> tuple[int, int]:
            offset = rng.choice([rng.randrange(span), rng.randrange(span // PAGE) * PAGE])
            length = rng.choice([rng.randrange(1, 300), rng.randrange(1, 40) * PAGE + 17])
            return offset, length

        async def worker(wid: int) -> None:
            for step in range(40):
                op = rng.choice(["write", "read", "falloc", "falloc", "truncate"])
                offset, length = some_range()
                if rng.random() < 0.3:
                    await trio.lowlevel.checkpoint()
                if op == "write":
                    data = pattern(1000 * wid + step, length)
                    assert await eng.write(vp, offset, data) == (0, length)
                    model.write(offset, data)
                elif op == "read":
                    err, got = await eng.read(vp, offset, length)
                    assert err == 0
                    assert bytes(got) == model.read(offset, length), (wid, step, offset)
                elif op == "truncate":
                    assert await eng.truncate(vp, offset) == 0
                    model.truncate(offset)
                else:
                    mode = rng.choice(MODES)
                    assert await eng.fallocate(vp, mode, offset, length) == 0
                    model.fallocate(mode, offset, length)

        async with trio.open_nursery() as nursery:
            for wid in range(4):
                nursery.start_soon(worker, wid)
        exp = eng.uvm.uvmexp
        assert exp.pageouts > 0, "memory pressure expected"
        assert exp.pdfreed > 0, "memory pressure expected"
        assert exp.fallocs > 0
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


async def test_fsync_that_reports_an_old_error_still_gives_the_backing_file_its_size(
    tmp_path: Path,
) -> None:
    """Found by the engine machine: a failed pageout leaves an error for the next fsync;
    the file's tail was punched (its pages freed unwritten, the backing file never grew
    there).  That fsync reports the error once -- and must still make the backing file as
    long as the engine's file, or the punched tail is missing from it for good."""
    path = tmp_path / "f"
    path.touch()
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        assert await eng.write(vp, 0, pattern(2, 4 * PAGE)) == (0, 4 * PAGE)
        eng.injector.arm(IOKind.WRITE, errno.EIO, 1)
        assert await putpages(vp, 0, PAGE, PDAEMON_PUT) == 0
        await eng.aio.drain()
        assert vp.write_error == errno.EIO
        assert await eng.fallocate(vp, PUNCH, 2 * PAGE, 2 * PAGE) == 0
        assert await eng.fsync(vp) == errno.EIO  # the old error, reported once
        model = FileModel(pattern(2, 4 * PAGE))
        model.fallocate(PUNCH, 2 * PAGE, 2 * PAGE)
        assert_backing_matches(path, model)
        assert await eng.fsync(vp) == 0
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)
