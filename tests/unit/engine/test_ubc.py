"""UBC windows (reference scenario #20): windows cycle between files, their old mappings are
removed (and flushed) before reuse, a read after reuse never returns another file's bytes,
idle windows keep their mappings (a hit costs no fault), released files leave no window."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from tests.unit.engine.enginetools import (
    PAGE,
    FileModel,
    assert_engine_matches,
    assert_sound,
    new_engine,
)
from ubcfs.vfs.engine import Engine
from ubcfs.vm.pmap import pmap_extract

WIN = 4 * PAGE


def window_mapping_errors(eng: Engine) -> list[str]:
    """Every translation inside a window's VA range maps the page that the window's name
    says belongs there; unnamed windows map nothing; no invalidation is pending."""
    ubc = eng.ubc
    pmap = ubc.pmap
    shift = eng.uvm.page_shift
    out: list[str] = []
    ptes = pmap.ptes  # a snapshot: build it once
    for win in ubc.windows:
        for va in range(win.va, win.va + ubc.winsize, PAGE):
            pte = ptes.get(va >> shift)
            if pte is None:
                continue
            if win.uobj is None:
                out.append(f"unnamed window {win.index} maps {pte!r}")
                continue
            pg = pte.pg
            if pg is None:
                if win.refcount == 0:
                    out.append(f"idle window {win.index} holds kenter mapping {pte!r}")
                continue
            want = win.offset + (va - win.va)
            if pg.uobject is not win.uobj or pg.offset != want:
                out.append(
                    f"window {win.index} ({win.uobj.name}@{win.offset:#x}) maps {pg!r}"
                    f" at {va:#x}, expected offset {want:#x}"
                )
    if pmap.stale:
        out.append(f"kernel pmap has {len(pmap.stale)} unflushed invalidations")
    return out


async def test_one_window_renamed_between_files(tmp_path: Path) -> None:
    """A single window: reading file A then file B at the same offset renames it; B's read
    returns B's bytes and the window then maps B's pages, not A's."""
    paths = [tmp_path / "a", tmp_path / "b"]
    for i, p in enumerate(paths):
        p.write_bytes(bytes([0x41 + i]) * (2 * WIN))
    async with new_engine(nwins=1).running() as eng:
        a, b = [await eng.open(str(p)) for p in paths]
        exp = eng.uvm.uvmexp
        err, got = await eng.read(a, 0, WIN)
        assert (err, bytes(got)) == (0, b"A" * WIN)
        win = eng.ubc.windows[0]
        assert win.uobj is a.uobj
        pa_a = pmap_extract(eng.ubc.pmap, win.va)
        assert pa_a == a.uobj.pages[0].phys_addr
        misses = exp.ubc_misses
        err, got = await eng.read(b, 0, WIN)
        assert (err, bytes(got)) == (0, b"B" * WIN)
        assert exp.ubc_misses == misses + 1
        assert win.uobj is b.uobj
        assert pmap_extract(eng.ubc.pmap, win.va) == b.uobj.pages[0].phys_addr
        assert window_mapping_errors(eng) == []
        # And back again, also across a write.
        assert await eng.write(a, 100, b"x" * 10) == (0, 10)
        err, got = await eng.read(b, 0, 200)
        assert (err, bytes(got)) == (0, b"B" * 200)
        err, got = await eng.read(a, 0, 200)
        assert (err, bytes(got)) == (0, b"A" * 100 + b"x" * 10 + b"A" * 90)
        assert window_mapping_errors(eng) == []
        for vp in (a, b):
            assert await eng.release(vp) == 0


async def test_idle_window_hit_costs_no_fault(tmp_path: Path) -> None:
    """Reading the same range again finds its window on the idle LRU with its mappings in
    place: a hit, and no page fault."""
    path = tmp_path / "f"
    path.write_bytes(bytes(range(256)) * (WIN // 256))
    async with new_engine(256).running() as eng:
        vp = await eng.open(str(path))
        exp = eng.uvm.uvmexp
        err, first = await eng.read(vp, 0, WIN)
        assert err == 0
        hits, faults = exp.ubc_hits, exp.faults
        err, again = await eng.read(vp, 0, WIN)
        assert (err, again) == (0, first)
        assert exp.ubc_hits == hits + 1
        assert exp.faults == faults
        assert await eng.release(vp) == 0


@pytest.mark.parametrize("nwins", [1, 2, 3])
async def test_windows_cycle_between_files_never_mix_bytes(tmp_path: Path, nwins: int) -> None:
    """Six files of distinct bytes, random reads and writes across them through one to
    three windows, on a 64-frame machine (the pagedaemon also takes pages out from under
    idle windows): every read returns its own file's bytes, and every window maps only
    pages of the file and offset it is named for."""
    rnd = random.Random(nwins)
    nfiles = 6
    size = 24 * PAGE
    paths = [tmp_path / f"f{i}" for i in range(nfiles)]
    models = [FileModel(bytes([0x30 + i]) * size) for i in range(nfiles)]
    for p, m in zip(paths, models, strict=True):
        p.write_bytes(bytes(m.data))
    async with new_engine(nwins=nwins).running() as eng:
        vps = [await eng.open(str(p)) for p in paths]
        for _ in range(250):
            k = rnd.randrange(nfiles)
            off = rnd.randrange(0, size)
            n = rnd.randint(1, 2 * WIN)
            if rnd.random() < 0.25:
                data = bytes([0x30 + k]) * n  # a file only ever holds its own byte...
                if rnd.random() < 0.5:
                    data = bytes([0x60 + k]) * n  # ...or its second one
                assert await eng.write(vps[k], off, data) == (0, n)
                models[k].write(off, data)
            else:
                err, got = await eng.read(vps[k], off, n)
                assert err == 0
                assert bytes(got) == models[k].read(off, n), f"file {k} at {off}"
            assert window_mapping_errors(eng) == []
        assert eng.uvm.uvmexp.ubc_misses > 50
        for vp, m in zip(vps, models, strict=True):
            await assert_engine_matches(eng, vp, m)
        assert_sound(eng)
        for vp in vps:
            assert await eng.release(vp) == 0
            assert all(w.uobj is not vp.uobj for w in eng.ubc.windows)
        assert window_mapping_errors(eng) == []


async def test_window_mapping_check_catches_a_foreign_mapping(tmp_path: Path) -> None:
    """The checker used above is not vacuous: windows whose names are swapped without
    unmapping them (a reuse that forgot pmap_remove) are reported."""
    for name in ("a", "b"):
        (tmp_path / name).write_bytes(name.encode() * PAGE)
    async with new_engine(nwins=2).running() as eng:
        a = await eng.open(str(tmp_path / "a"))
        b = await eng.open(str(tmp_path / "b"))
        for vp in (a, b):
            err, _ = await eng.read(vp, 0, PAGE)
            assert err == 0
        wa = next(w for w in eng.ubc.windows if w.uobj is a.uobj)
        wb = next(w for w in eng.ubc.windows if w.uobj is b.uobj)
        assert pmap_extract(eng.ubc.pmap, wa.va) is not None
        assert window_mapping_errors(eng) == []
        wa.uobj, wb.uobj = b.uobj, a.uobj
        bad = window_mapping_errors(eng)
        wa.uobj, wb.uobj = a.uobj, b.uobj
        assert len(bad) == 2
        for vp in (a, b):
            assert await eng.release(vp) == 0
