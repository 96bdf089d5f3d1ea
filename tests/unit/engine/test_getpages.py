"""genfs_getpages through the engine (reference §3, scenarios #17, #18, #21): read errors,
pages already busy waited for and not read twice, read-ahead, EOF clamping, the locked fast
path."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
import trio
import trio.testing

from genfs.io import getpages, putpages, readahead
from genfs.node import GenfsParams
from pagers.backing_io import IOKind
from tests.unit.engine.enginetools import (
    PAGE,
    FileModel,
    assert_engine_matches,
    assert_sound,
    frame_bytes,
    gated_io,
    new_engine,
    page_is_free,
    page_settled,
    pattern,
)
from ubcfs.vm.page import PG_BUSY, PG_FAKE, page_unbusy, page_unbusy_many, pageactivate
from ubcfs.vm.pager import PGO_FREE, PGO_LOCKED, PGO_SYNCIO
from ubcfs.vm.param import Prot

_READ = Prot.READ.value


async def test_read_error_frees_fake_pages_keeps_valid_ones(tmp_path: Path) -> None:
    """Pages 0-1 are resident; a read of pages 0-3 needs pages 2-3 from the backing file and
    that read fails (injected EIO): the read returns EIO, the pages allocated for 2-3 are
    freed, pages 0-1 keep their identity and bytes; a retry reads everything."""
    path = tmp_path / "f"
    data = pattern(1, 8 * PAGE)
    path.write_bytes(data)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        err, got = await eng.read(vp, 0, 2 * PAGE)
        assert (err, bytes(got)) == (0, data[: 2 * PAGE])
        valid = {off: vp.uobj.pages[off] for off in (0, PAGE)}
        # Faults are clipped to the copy: pages 2-3 are not resident yet.  (Should an
        # engine change map the whole window, forget them so they must be read again.)
        for off in (2 * PAGE, 3 * PAGE):
            pg = vp.uobj.pages.get(off)
            if pg is not None:
                assert await putpages(vp, off, off + PAGE, PGO_FREE) == 0
                assert page_is_free(pg)
        assert set(vp.uobj.pages) == {0, PAGE}
        before = {off: frame_bytes(eng, pg) for off, pg in valid.items()}
        read_errors, free = exp.read_errors, exp.free
        eng.injector.arm(IOKind.READ, errno.EIO, 1)
        err, got = await eng.read(vp, 0, 4 * PAGE)
        assert (err, bytes(got)) == (errno.EIO, b"")
        assert exp.read_errors == read_errors + 1
        assert set(vp.uobj.pages) == {0, PAGE}
        assert exp.free == free  # the two pages allocated for the read are free again
        for off, pg in valid.items():
            assert vp.uobj.pages[off] is pg
            assert page_settled(pg)
            assert frame_bytes(eng, pg) == before[off]
        assert_sound(eng)
        err, got = await eng.read(vp, 0, 4 * PAGE)
        assert (err, bytes(got)) == (0, data[: 4 * PAGE])
        assert await eng.release(vp) == 0


async def test_read_error_on_cold_file_then_recovery(tmp_path: Path) -> None:
    """A cold read that fails leaves no page of the file behind, and the machine sound."""
    path = tmp_path / "f"
    data = pattern(2, 20 * PAGE)
    path.write_bytes(data)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        eng.injector.arm(IOKind.READ, errno.EIO, 1)
        err, got = await eng.read(vp, 5 * PAGE, 3 * PAGE)
        assert (err, got) == (errno.EIO, bytearray())
        assert vp.uobj.npages == 0
        assert eng.uvm.uvmexp.filepages == 0
        assert_sound(eng)
        await assert_engine_matches(eng, vp, FileModel(data))
        assert await eng.release(vp) == 0


async def test_busy_page_is_waited_for_not_read_twice(tmp_path: Path) -> None:
    """Two readers of the same cold page: the second finds it busy (being read), sleeps,
    and gets it without a second backing read."""
    path = tmp_path / "f"
    data = pattern(3, 4 * PAGE)
    path.write_bytes(data)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        gate = io.gate_read(PAGE)
        results: list[bytes] = []

        async def reader(off: int) -> None:
            err, got = await eng.read(vp, off, 100)
            assert err == 0
            results.append(bytes(got))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, PAGE)
            await gate.wait_reached()
            pg = vp.uobj.pages[PAGE]
            assert pg.flags & PG_BUSY
            assert pg.flags & PG_FAKE
            nursery.start_soon(reader, PAGE + 1000)
            await trio.testing.wait_all_tasks_blocked()
            assert results == []
            gate.open()
        assert sorted(results) == sorted([data[PAGE : PAGE + 100], data[PAGE + 1000 : PAGE + 1100]])
        assert len([c for c in io.read_calls if c[0] <= PAGE < c[0] + c[1]]) == 1
        assert await eng.release(vp) == 0


async def test_readahead_on_sequential_reads(tmp_path: Path) -> None:
    """With memory to spare, a sequential reader gets read-ahead (``readahead_pages``
    moves, and most of its later reads need no backing read of their own); a random reader
    of the same file gets none; and with ``readahead=0`` there is none either."""
    path = tmp_path / "f"
    data = pattern(4, 256 * PAGE)
    path.write_bytes(data)
    params = GenfsParams(readahead=64 * 1024, maxphys=64 * 1024)
    async with new_engine(1024, nwins=16, params=params).running() as eng:
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        io = gated_io(eng)
        chunk = 4 * PAGE
        for off in range(0, 128 * PAGE, chunk):
            err, got = await eng.read(vp, off, chunk)
            assert (err, bytes(got)) == (0, data[off : off + chunk])
        await eng.aio.drain()
        assert exp.readahead_pages >= 64
        # Read-ahead reads are clusters: far fewer backing reads than windows.
        # Read-ahead reads are clusters: fewer backing reads than windows read.
        assert len(io.read_calls) < 128 // 4
        assert await eng.release(vp) == 0
    async with new_engine(1024, nwins=16, params=params).running() as eng:
        vp = await eng.open(str(path))
        # Pages three apart in random order: no read starts where the previous one ended.
        for page in random.Random(5).sample(range(0, 256, 3), 40):
            off = page * PAGE
            err, got = await eng.read(vp, off, PAGE)
            assert (err, bytes(got)) == (0, data[off : off + PAGE])
        assert eng.uvm.uvmexp.readahead_pages == 0
        assert await eng.release(vp) == 0
    noreadahead = GenfsParams(readahead=0, maxphys=64 * 1024)
    async with new_engine(1024, nwins=16, params=noreadahead).running() as eng:
        vp = await eng.open(str(path))
        await assert_engine_matches(eng, vp, FileModel(data))
        assert eng.uvm.uvmexp.readahead_pages == 0
        assert await eng.release(vp) == 0


async def test_readahead_window_grows_with_a_sequential_reader(tmp_path: Path) -> None:
    """The window doubles with each sequential access from ``readahead_min`` to
    ``readahead``, so a reader of requests larger than the first window soon finds each
    request read ahead of it; a jump drops the window back."""
    path = tmp_path / "f"
    data = pattern(9, 512 * PAGE)
    path.write_bytes(data)
    params = GenfsParams(readahead=256 * 1024, readahead_min=32 * 1024, maxphys=64 * 1024)
    async with new_engine(1024, nwins=16, winsize=64 * 1024, params=params).running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        chunk = 16 * PAGE  # 64 KiB requests, twice the first window
        wins = []
        for off in range(0, 128 * PAGE, chunk):
            err, got = await eng.read(vp, off, chunk)
            assert (err, bytes(got)) == (0, data[off : off + chunk])
            wins.append(vp.ra_win)
            await eng.aio.drain()
        # The first request is not known to be sequential yet.
        assert wins[:5] == [0, 32 * 1024, 64 * 1024, 128 * 1024, 256 * 1024]
        assert wins[5:] == [256 * 1024] * 3
        # Once the window outgrew the requests, they found their pages read ahead: the
        # reader's own reads (one page at the centre of a fault) stopped.
        late = [c for c in io.read_calls if c[0] >= 64 * PAGE]
        assert all(n >= 8 * PAGE for _, n in late), late
        assert vp.ra_end > 128 * PAGE
        err, _ = await eng.read(vp, 400 * PAGE, PAGE)  # a jump: not sequential
        assert err == 0
        assert vp.ra_win == 0
        assert await eng.release(vp) == 0


async def test_readahead_served_inline_completes_at_once(tmp_path: Path) -> None:
    """A read-ahead whose RWF_NOWAIT attempt gets all its bytes (the host has the file
    cached) is complete when ``readahead`` returns: its pages valid and unbusy, no async
    I/O pending, nothing for the aiodone daemon; one that goes to a worker is async."""
    path = tmp_path / "f"
    data = pattern(11, 64 * PAGE)
    path.write_bytes(data)
    params = GenfsParams(readahead=64 * 1024, maxphys=64 * 1024)
    async with new_engine(1024, nwins=16, params=params).running() as eng:
        vp = await eng.open(str(path))
        readahead(vp, 0, 16 * PAGE)
        assert eng.aio.pending == 0
        pages = [vp.uobj.pages[off] for off in range(0, 16 * PAGE, PAGE)]
        assert not any(pg.flags & (PG_BUSY | PG_FAKE) for pg in pages)
        assert all(frame_bytes(eng, pg) == data[pg.offset : pg.offset + PAGE] for pg in pages)
        assert vp.numoutput == 0
        assert await eng.release(vp) == 0
    async with new_engine(1024, nwins=16, params=params, nowait=False).running() as eng:
        vp = await eng.open(str(path))
        readahead(vp, 0, 16 * PAGE)  # no inline attempt: a worker thread reads it
        assert eng.aio.pending == 1
        assert all(vp.uobj.pages[off].flags & PG_BUSY for off in range(0, 16 * PAGE, PAGE))
        await eng.aio.drain()
        await assert_engine_matches(eng, vp, FileModel(data))
        assert await eng.release(vp) == 0


async def test_readahead_read_error_is_harmless(tmp_path: Path) -> None:
    """A failing read-ahead read (started directly, as ``_note_access`` does) frees its
    pages -- they were never valid -- and counts a read error; the reader later reads them
    itself and gets the right bytes."""
    path = tmp_path / "f"
    data = pattern(5, 64 * PAGE)
    path.write_bytes(data)
    params = GenfsParams(readahead=64 * 1024, maxphys=64 * 1024)
    async with new_engine(1024, nwins=16, params=params).running() as eng:
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        io = gated_io(eng)
        gate = io.gate_read(8 * PAGE)
        readahead(vp, 8 * PAGE, 24 * PAGE)
        assert exp.readahead_pages == 16
        ra_pages = [vp.uobj.pages[off] for off in range(8 * PAGE, 24 * PAGE, PAGE)]
        assert all(pg.flags & PG_BUSY and pg.flags & PG_FAKE for pg in ra_pages)
        await gate.wait_reached()
        assert (gate.offset, gate.nbytes) == (8 * PAGE, 16 * PAGE)  # one clustered read
        eng.injector.arm(IOKind.READ, errno.EIO, 1)
        read_errors = exp.read_errors
        gate.open()
        await eng.aio.drain()
        assert exp.read_errors == read_errors + 1
        assert all(page_is_free(pg) for pg in ra_pages)
        assert vp.uobj.npages == 0
        assert_sound(eng)
        await assert_engine_matches(eng, vp, FileModel(data))
        assert await eng.release(vp) == 0


async def test_readahead_success_leaves_valid_unbusy_pages(tmp_path: Path) -> None:
    """A read-ahead that works leaves its pages valid, unbusy and active, and the reader's
    next reads of them need no backing read."""
    path = tmp_path / "f"
    data = pattern(7, 32 * PAGE)
    path.write_bytes(data)
    params = GenfsParams(readahead=64 * 1024, maxphys=64 * 1024)
    async with new_engine(1024, nwins=16, params=params).running() as eng:
        vp = await eng.open(str(path))
        io = gated_io(eng)
        readahead(vp, 0, 16 * PAGE)
        await eng.aio.drain()
        assert sorted(vp.uobj.pages) == list(range(0, 16 * PAGE, PAGE))
        assert all(page_settled(pg) for pg in vp.uobj.pages.values())
        reads = len(io.read_calls)
        err, got = await eng.read(vp, 0, 16 * PAGE)
        assert (err, bytes(got)) == (0, data[: 16 * PAGE])
        assert all(off >= 16 * PAGE for off, _ in io.read_calls[reads:])
        assert await eng.release(vp) == 0


async def test_getpages_clamps_at_eof_and_locked_path_never_sleeps(tmp_path: Path) -> None:
    """Direct getpages: the first page at or past EOF is EINVAL (a read through a mapping
    past EOF); a range crossing EOF is clamped; PGO_LOCKED returns EBUSY for a page that is
    not resident (never reads) and the page busy when it is."""
    path = tmp_path / "f"
    data = pattern(6, 2 * PAGE + 10)
    path.write_bytes(data)
    async with new_engine().running() as eng:
        vp = await eng.open(str(path))
        uvm = eng.uvm
        assert await getpages(vp, 3 * PAGE, 1, _READ, PGO_SYNCIO) == (errno.EINVAL, [])
        reads = len(gated_io(eng).read_calls)
        assert await getpages(vp, 0, 1, _READ, PGO_LOCKED) == (errno.EBUSY, [])
        assert len(gated_io(eng).read_calls) == reads
        err, pages = await getpages(vp, PAGE, 8, _READ, PGO_SYNCIO)
        assert err == 0
        assert [pg.offset for pg in pages] == [PAGE, 2 * PAGE]
        assert frame_bytes(eng, pages[1]) == data[2 * PAGE :] + bytes(PAGE - 10)
        for pg in pages:
            assert pg.flags & PG_BUSY
            assert not pg.flags & PG_FAKE
            pageactivate(uvm, pg)
            page_unbusy(uvm, pg)
        err, pages = await getpages(vp, PAGE, 1, _READ, PGO_LOCKED)
        assert err == 0
        assert len(pages) == 1
        assert pages[0].flags & PG_BUSY
        page_unbusy(uvm, pages[0])
        assert_sound(eng)
        assert await eng.release(vp) == 0


# --- overlapping getpages (scenario 11.2 #17) ---------------------------------------------


@pytest.mark.parametrize("first", ["low", "high"])
@pytest.mark.parametrize("release", [(2, 3), (3, 2)], ids=["2-then-3", "3-then-2"])
async def test_overlapping_getpages_in_opposite_orders_do_not_deadlock(
    tmp_path: Path, first: str, release: tuple[int, int]
) -> None:
    """Two getpages of overlapping ranges from different starting points -- [0, 4) and
    [2, 6) pages -- started in either order while pages 2 and 3 are held busy by a third
    party, who lets them go one at a time in either order: both sleep part way through
    their ranges, and both finish (pages busied in ascending order: no cycle), each with
    its whole range, valid.  Repeated, because which of two woken sleepers runs first is
    the scheduler's choice; a deadlock fails the round in 10 s."""
    path = tmp_path / "f"
    data = pattern(17, 8 * PAGE)
    path.write_bytes(data)
    async with new_engine(params=GenfsParams(readahead=0)).running() as eng:
        vp = await eng.open(str(path))
        uvm = eng.uvm
        for _ in range(8):
            held = {}
            for i in (2, 3):
                err, pages = await getpages(vp, i * PAGE, 1, _READ, PGO_SYNCIO)
                assert err == 0
                held[i] = pages[0]
            got: dict[int, list[int]] = {}

            async def get(start: int, got: dict[int, list[int]]) -> None:
                err, pages = await getpages(vp, start * PAGE, 4, _READ, PGO_SYNCIO)
                assert err == 0
                got[start] = [pg.offset for pg in pages]
                for pg in pages:
                    assert frame_bytes(eng, pg) == data[pg.offset : pg.offset + PAGE]
                    pageactivate(uvm, pg)
                page_unbusy_many(uvm, pages)

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    for start in (0, 2) if first == "low" else (2, 0):
                        nursery.start_soon(get, start, got)
                        await trio.testing.wait_all_tasks_blocked()
                    for i in release:
                        pageactivate(uvm, held[i])
                        page_unbusy(uvm, held[i])
                        await trio.testing.wait_all_tasks_blocked()
            assert got == {0: [i * PAGE for i in range(4)], 2: [i * PAGE for i in range(2, 6)]}
            assert all(page_settled(vp.uobj.pages[i * PAGE]) for i in range(6))
            assert_sound(eng)
            # Forget the pages, so that the next round reads (and sleeps) again.
            assert await putpages(vp, 0, 8 * PAGE, PGO_FREE) == 0
        assert await eng.release(vp) == 0
