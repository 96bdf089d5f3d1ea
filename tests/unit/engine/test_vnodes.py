"""Vnodes: one per backing inode (hard links and repeated opens share it, and so share one
page cache), use counts, and what the last release does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.unit.engine.enginetools import (
    PAGE,
    FileModel,
    assert_backing_matches,
    assert_engine_matches,
    new_engine,
    pattern,
)
from ubcfs.vfs.engine import IO_SWITCH_INTERVAL, Engine


async def test_hard_links_and_repeated_opens_share_one_vnode(tmp_path: Path) -> None:
    """Two names of one inode and a second open of the same name all give the same vnode;
    a write through one is read through the others with no backing read; the cache lives
    until the last release, which writes it back and closes the backing fd."""
    a = tmp_path / "a"
    b = tmp_path / "b"
    a.write_bytes(pattern(1, 3 * PAGE))
    os.link(a, b)
    async with new_engine().running() as eng:
        va = await eng.open(str(a))
        vb = await eng.open(str(b))
        va2 = await eng.open(str(a).encode())
        assert va is vb is va2
        assert va.usecount == 3
        assert len(eng.vnodes) == 1
        model = FileModel(pattern(1, 3 * PAGE))
        assert await eng.write(va, PAGE + 7, b"via a") == (0, 5)
        model.write(PAGE + 7, b"via a")
        err, got = await eng.read(vb, PAGE, 100)
        assert (err, bytes(got)) == (0, model.read(PAGE, 100))
        assert await eng.release(va) == 0
        assert await eng.release(va2) == 0
        assert vb.key in eng.vnodes
        assert vb.usecount == 1
        assert vb.uobj.npages > 0  # still cached
        fd = vb.fd
        assert await eng.release(vb) == 0
        assert eng.vnodes == {}
        assert vb.uobj.npages == 0
        assert eng.uvm.uvmexp.filepages == 0
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.fstat(fd)
        assert_backing_matches(b, model)
        # A later open makes a new vnode that reads the written data from the backing file.
        vc = await eng.open(str(b))
        assert vc is not vb
        await assert_engine_matches(eng, vc, model)
        assert await eng.release(vc) == 0
        with pytest.raises(ValueError, match="unused"):
            await eng.release(vc)


async def test_distinct_inodes_get_distinct_vnodes(tmp_path: Path, eng: Engine) -> None:
    """Different files (even with the same contents) never share a cache."""
    for name in ("x", "y"):
        (tmp_path / name).write_bytes(b"same" * 100)
    x = await eng.open(str(tmp_path / "x"))
    y = await eng.open(str(tmp_path / "y"))
    assert x is not y
    assert x.uobj is not y.uobj
    assert await eng.write(x, 0, b"XX") == (0, 2)
    err, got = await eng.read(y, 0, 4)
    assert (err, bytes(got)) == (0, b"same")
    for vp in (x, y):
        assert await eng.release(vp) == 0
    assert (tmp_path / "x").read_bytes()[:4] == b"XXme"
    assert (tmp_path / "y").read_bytes()[:4] == b"same"


async def test_open_missing_file_without_create_fails(tmp_path: Path, eng: Engine) -> None:
    with pytest.raises(FileNotFoundError):
        await eng.open(str(tmp_path / "missing"), create=False)
    assert eng.vnodes == {}


async def test_leaving_the_engine_writes_everything_back(tmp_path: Path) -> None:
    """Files never released or fsynced are written back when ``running()`` exits."""
    paths = [tmp_path / f"f{i}" for i in range(3)]
    models = [FileModel() for _ in paths]
    async with new_engine().running() as eng:
        for i, p in enumerate(paths):
            vp = await eng.open(str(p))
            data = pattern(10 + i, (i + 1) * 20 * PAGE + 3)
            assert await eng.write(vp, 0, data) == (0, len(data))
            models[i].write(0, data)
    for p, m in zip(paths, models, strict=True):
        assert_backing_matches(p, m)


async def test_running_engine_lowers_the_switch_interval_and_restores_it() -> None:
    """Backing-I/O threads get the GIL promptly while an engine runs (IO_SWITCH_INTERVAL);
    the old value comes back afterwards, and a lower one chosen by the program is kept."""
    old = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        async with new_engine().running():
            assert sys.getswitchinterval() == pytest.approx(IO_SWITCH_INTERVAL, rel=0.05)
        assert sys.getswitchinterval() == pytest.approx(0.005, rel=0.05)
        sys.setswitchinterval(0.0001)
        async with new_engine().running():
            assert sys.getswitchinterval() == pytest.approx(0.0001, rel=0.05)
    finally:
        sys.setswitchinterval(old)


def test_tune_gc_freezes_and_raises_the_young_threshold_and_untune_undoes_it() -> None:
    import gc

    from ubcfs.vfs.engine import SERVING_GC_THRESHOLD, tune_gc, untune_gc

    before = gc.get_threshold()
    tune_gc()
    try:
        assert gc.get_threshold()[0] == SERVING_GC_THRESHOLD
        assert gc.get_freeze_count() > 0
    finally:
        untune_gc()
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
