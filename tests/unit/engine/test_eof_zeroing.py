"""Nothing of a frame's previous contents ever shows past EOF (reference §3.6, scenario 11.2
#10): the zeroing of a partly read EOF page, of whole pages past EOF, and of the partial last
page of an extending write, each tested on frames that were used, freed and filled with junk
(``recycle_frames``), so that skipping one of them fails here and not only in the random
workload; and a reader racing extending writes never sees a byte the file does not hold."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import trio

from tests.unit.engine.enginetools import (
    PAGE,
    FileModel,
    assert_backing_matches,
    assert_engine_matches,
    assert_sound,
    garbage_note,
    new_engine,
    pattern,
    recycle_frames,
)
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnode import Vnode
from ubcfs.vm.ubc import Uio

RECYCLED = 40  # frames made junk before each test: more than any test below allocates


async def read_exact(eng: Engine, vp: Vnode, offset: int, length: int) -> bytes:
    err, got = await eng.read(vp, offset, length)
    assert err == 0, f"read at {offset} failed: errno {err}"
    return bytes(got)


def assert_zero(got: bytes, what: str) -> None:
    assert got == bytes(len(got)), f"{what} is not zero: {garbage_note(got)}"


@pytest.mark.parametrize("extend", ["truncate", "write-beyond"])
async def test_partly_read_eof_page_is_zeroed_past_eof(tmp_path: Path, extend: str) -> None:
    """A file ending 100 bytes into page 1 is read into junk frames: the read of page 1
    fills 100 bytes and must zero the rest of the frame (genfs ``_read_fake_pages``).  The
    file then grows without touching that page's frame -- by truncate, or by a write further
    into the page -- and the bytes between the old EOF and the new data read zero."""
    path = tmp_path / "f"
    old = pattern(1, PAGE + 100)
    path.write_bytes(old)
    async with new_engine().running() as eng:
        assert await recycle_frames(eng, tmp_path / "junk", RECYCLED) >= RECYCLED
        vp = await eng.open(str(path))
        zero_fills = eng.uvm.uvmexp.zero_fills
        assert await read_exact(eng, vp, 0, len(old)) == old
        assert eng.uvm.uvmexp.zero_fills == zero_fills  # page 1 was read, not zero-filled
        model = FileModel(old)
        if extend == "truncate":
            assert await eng.truncate(vp, 3 * PAGE) == 0
            model.truncate(3 * PAGE)
        else:
            tail = b"T" * 10
            assert await eng.write(vp, PAGE + 3000, tail) == (0, len(tail))
            model.write(PAGE + 3000, tail)
        assert_zero(await read_exact(eng, vp, PAGE + 100, 2900), "page 1 past the old EOF")
        await assert_engine_matches(eng, vp, model)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0


async def test_page_wholly_past_eof_is_zero_filled_for_a_partial_write(tmp_path: Path) -> None:
    """A 10-byte write in the middle of page 2 of a file that ends in page 1 (slow path:
    the page is not wholly written): page 2 is allocated on a junk frame, nothing of it can
    be read from the backing file, so getpages zero-fills it whole; the bytes around the
    write read zero."""
    path = tmp_path / "f"
    old = pattern(2, PAGE + 100)
    path.write_bytes(old)
    async with new_engine().running() as eng:
        assert await recycle_frames(eng, tmp_path / "junk", RECYCLED) >= RECYCLED
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        zero_fills = exp.zero_fills
        data = b"W" * 10
        assert await eng.write(vp, 2 * PAGE + 50, data) == (0, len(data))
        assert exp.zero_fills > zero_fills
        assert_zero(await read_exact(eng, vp, 2 * PAGE, 50), "page 2 before the write")
        assert await eng.truncate(vp, 3 * PAGE) == 0  # the rest of page 2 becomes visible
        assert_zero(await read_exact(eng, vp, 2 * PAGE + 60, PAGE - 60), "page 2 after it")
        model = FileModel(old)
        model.write(2 * PAGE + 50, data)
        model.truncate(3 * PAGE)
        await assert_engine_matches(eng, vp, model)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


@pytest.mark.parametrize("oldsize", [0, 3 * PAGE, 3 * PAGE + 700])
async def test_extending_write_ending_mid_page_leaves_a_zero_tail(
    tmp_path: Path, oldsize: int
) -> None:
    """An extending write of whole pages plus 1000 bytes on junk frames: the whole pages
    take the fast path (neither read nor zeroed: the copy fills them), the partial last page
    takes the slow path and is zero-filled; once the file is extended past it, the rest of
    that page reads zero (in the engine and in the backing file)."""
    path = tmp_path / "f"
    old = pattern(3, oldsize)
    path.write_bytes(old)
    async with new_engine().running() as eng:
        assert await recycle_frames(eng, tmp_path / "junk", RECYCLED) >= RECYCLED
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        skipped = exp.fastpath_skipped_zero
        data = pattern(4, 4 * PAGE + 1000 + (-oldsize % PAGE))
        end = oldsize + len(data)
        assert end % PAGE == 1000
        assert await eng.write(vp, oldsize, data) == (0, len(data))
        assert exp.fastpath_skipped_zero - skipped == 4  # the whole pages went fast
        assert await eng.truncate(vp, end + 2 * PAGE) == 0
        assert_zero(await read_exact(eng, vp, end, PAGE - 1000), "the last page past the write")
        model = FileModel(old)
        model.write(oldsize, data)
        model.truncate(end + 2 * PAGE)
        await assert_engine_matches(eng, vp, model)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
        assert await eng.release(vp) == 0


# --- a reader racing extending writes (scenario 11.2 #10) ------------------------------------


def extending_writes(seed: int, start: int, count: int) -> list[tuple[int, bytes]]:
    """Appends of mixed sizes (whole pages, partial pages, both), some after a hole; each
    byte of the file is written at most once, so every byte below EOF keeps its value."""
    rng = random.Random(seed)
    out = []
    off = start
    for i in range(count):
        if rng.random() < 0.3:
            off += rng.randrange(1, 2 * PAGE)  # a hole, never written later
        n = rng.choice([PAGE, 3 * PAGE, 5 * PAGE, rng.randrange(1, PAGE)])
        n += rng.choice([0, 0, rng.randrange(1, PAGE)])
        out.append((off, pattern(seed * 1000 + i, n)))
        off += n
    return out


@pytest.mark.parametrize("seed", [1, 2])
async def test_reader_racing_extending_writes_sees_no_garbage(tmp_path: Path, seed: int) -> None:
    """One task appends (whole pages by the fast path, edges by the slow path, holes between)
    on a 64-frame machine whose frames are junk and keep being recycled by the pagedaemon;
    meanwhile readers stat the file and read near its EOF: through ``Engine.read``, and
    through the UBC windows without the vnode lock (as a process would read a mapping).
    Every size seen is one the file had, sizes never shrink, and every byte read below the
    size seen is the file's final byte there -- never junk, poison or a zero that is not in
    the file."""
    path = tmp_path / "f"
    old = pattern(5, 3 * PAGE + 100)
    path.write_bytes(old)
    writes = extending_writes(seed, len(old), 40)
    final = FileModel(old)
    for off, data in writes:
        final.write(off, data)
    sizes = {len(old)} | {off + len(data) for off, data in writes}
    want = bytes(final.data)
    async with new_engine().running() as eng:
        assert await recycle_frames(eng, tmp_path / "junk", RECYCLED) >= RECYCLED
        vp = await eng.open(str(path))
        finished = trio.Event()
        checked = [0, 0]  # bytes checked by the locked and the lock-free reader

        async def writer() -> None:
            for off, data in writes:
                assert await eng.write(vp, off, data) == (0, len(data))
                await trio.lowlevel.checkpoint()
            finished.set()

        def check(offset: int, got: bytes, how: str) -> None:
            expect = want[offset : offset + len(got)]
            if got != expect:
                first = next(i for i in range(len(got)) if got[i] != expect[i])
                raise AssertionError(
                    f"{how} at {offset}: byte {offset + first} is"
                    f" {got[first]:#x}, the file has {expect[first]:#x}; {garbage_note(got)}"
                )

        async def reader(locked: bool, rseed: int) -> None:
            rng = random.Random(rseed)
            last = 0
            while not finished.is_set():
                size = vp.size  # stat
                assert size in sizes, f"size {size} is none the file had"
                assert size >= last, f"size went back from {last} to {size}"
                last = size
                lo = max(0, size - rng.randrange(1, 3 * PAGE))
                n = rng.randrange(1, 4 * PAGE)
                if locked:
                    err, got = await eng.read(vp, lo, n)
                    assert err == 0
                    assert len(got) >= min(n, size - lo)  # the size may have grown since
                    check(lo, bytes(got), "read")
                    checked[0] += len(got)
                else:
                    n = min(n, size - lo)
                    buf = bytearray(n)
                    assert await eng.ubc.ubc_read(vp.uobj, lo, Uio(memoryview(buf))) == 0
                    check(lo, bytes(buf), "lock-free read")
                    checked[1] += n
                await trio.lowlevel.checkpoint()

        with trio.fail_after(60):  # a hang guard only
            async with trio.open_nursery() as nursery:
                nursery.start_soon(writer)
                nursery.start_soon(reader, True, seed)
                nursery.start_soon(reader, False, seed + 100)
        assert checked[0] > 0
        assert checked[1] > 0
        assert eng.uvm.uvmexp.fastpath_skipped_zero > 0
        assert eng.uvm.uvmexp.pdfreed > 0  # frames were recycled during the race
        await assert_engine_matches(eng, vp, final)
        assert_sound(eng)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, final)
