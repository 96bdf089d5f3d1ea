"""The tmpfs data layer in process (``ubcfs.vfs.tmpfs_vnops`` and ``vnops.AOBJ_VOPS``): a
small engine with a swap file, tmpfs vnodes written and read through the same vnops as
backing files, truncation and punching of pages that are only in swap, the freeing of a
removed file's data (at once, or by the reaper once its busy pages are let go), and the
capacity limit."""

from __future__ import annotations

import errno
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from pagers.aobj import Aobj
from tests.unit.pagers.swaptools import deactivate_all
from ubcfs.vfs import vnops
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.tmpfs import TmpfsNamespace, TmpfsNode
from ubcfs.vfs.tmpfs_vnops import TmpfsFiles
from ubcfs.vfs.vcache import VS
from ubcfs.vfs.vnode import Vnode
from ubcfs.vfs.vnops import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from ubcfs.vm import audit
from ubcfs.vm.page import page_unbusy_many, pagebusy

PAGE = 4096


@dataclass
class Tmpfs:
    eng: Engine
    files: TmpfsFiles
    ns: TmpfsNamespace

    def new(self, name: bytes) -> tuple[TmpfsNode, Vnode]:
        node, _, _ = self.ns.create(self.ns.root_inode, name, 0o644, 0, 0, 0)
        return node, self.files.vget(node)

    def aobj(self, vp: Vnode) -> Aobj:
        return vnops.vnode_aobj(vp)

    def sound(self) -> None:
        bad = audit.audit(self.eng.uvm) + self.eng.ubc.audit() + self.ns.audit()
        bad += self.files.audit(self.ns.nodes, {})
        assert bad == [], "\n".join(bad)

    async def evict(self) -> None:
        """Push every idle page out to swap and wait for the writes."""
        eng = self.eng
        deactivate_all(eng)  # type: ignore[arg-type]  # has ubc and uvm, all it uses
        exp = eng.uvm.uvmexp
        exp.freetarg = exp.npages
        try:
            await eng.pdaemon.scan_queue()
        finally:
            eng.uvm.tune()
        await eng.aio.drain()


@asynccontextmanager
async def tmpfs(tmp_path: Path, pages: int = 64, swap_pages: int = 1024) -> AsyncIterator[Tmpfs]:
    eng = Engine(
        memory=pages * PAGE,
        nwins=8,
        winsize=16 * 1024,
        swap_size=swap_pages * PAGE,
        swap_file=str(tmp_path / "swap"),
    )
    files = TmpfsFiles(eng)
    ns = TmpfsNamespace(files.capacity, on_destroy=files.destroyed)
    async with eng.running(), trio.open_nursery() as nursery:
        await nursery.start(files.run)
        yield Tmpfs(eng, files, ns)
        nursery.cancel_scope.cancel()
    assert not (tmp_path / "swap").exists()  # removed when the engine stops


async def test_data_larger_than_memory_round_trips_through_swap(tmp_path: Path) -> None:
    async with tmpfs(tmp_path) as t:
        _, vp = t.new(b"f")
        data = random.Random(1).randbytes(200 * PAGE + 123)
        assert await t.eng.write(vp, 0, data) == (0, len(data))
        assert t.eng.uvm.uvmexp.swapouts > 0
        assert await t.eng.read(vp, 0, len(data) + 10) == (0, bytearray(data))
        assert t.eng.uvm.uvmexp.swapins > 0
        assert await t.eng.fsync(vp) == 0  # tmpfs_fsync: nothing to write
        t.sound()


async def test_truncating_into_a_page_only_in_swap_zeroes_its_tail(tmp_path: Path) -> None:
    async with tmpfs(tmp_path) as t:
        _, vp = t.new(b"f")
        data = random.Random(2).randbytes(8 * PAGE)
        await t.eng.write(vp, 0, data)
        await t.evict()
        aobj = t.aobj(vp)
        assert not vp.uobj.pages
        assert len(aobj.swslots) == 8
        assert await t.eng.truncate(vp, 2 * PAGE + 100) == 0
        assert len(aobj.swslots) <= 3  # the slots past the new EOF are freed
        assert await t.eng.truncate(vp, 8 * PAGE) == 0
        err, got = await t.eng.read(vp, 0, 8 * PAGE)
        assert err == 0
        assert got[: 2 * PAGE + 100] == data[: 2 * PAGE + 100]
        assert got[2 * PAGE + 100 :] == bytes(6 * PAGE - 100)  # never the old bytes
        t.sound()


@pytest.mark.parametrize("mode", [FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE])
async def test_punch_frees_whole_pages_and_slots_and_zeroes_the_edges(
    tmp_path: Path, mode: int
) -> None:
    async with tmpfs(tmp_path) as t:
        _, vp = t.new(b"f")
        data = random.Random(3).randbytes(10 * PAGE)
        await t.eng.write(vp, 0, data)
        await t.evict()
        aobj = t.aobj(vp)
        assert await t.eng.fallocate(vp, mode, PAGE + 10, 5 * PAGE) == 0
        for idx in (2, 3, 4, 5):
            assert aobj.find_swslot(idx) == 0
            assert idx * PAGE not in vp.uobj.pages
        err, got = await t.eng.read(vp, 0, 10 * PAGE)
        assert err == 0
        want = data[: PAGE + 10] + bytes(5 * PAGE) + data[6 * PAGE + 10 :]
        assert got == want
        assert vp.size == 10 * PAGE
        t.sound()


async def test_removed_file_is_freed_at_once_or_by_the_reaper(tmp_path: Path) -> None:
    async with tmpfs(tmp_path) as t:
        root = t.ns.root_inode
        node, vp = t.new(b"a")
        await t.eng.write(vp, 0, bytes(20 * PAGE))
        await t.evict()
        t.files.vrele(vp)
        t.ns.forget(node, 1)
        t.ns.unlink(root, b"a")  # no name, no lookup, no use: destroyed now
        assert vp.vstate is VS.RECLAIMED
        assert t.eng.uvm.swap_used() == 0
        assert t.files.destroyed_inline == 1
        # One with a busy page (a swap-out in flight, say): the reaper frees it after.
        node, vp = t.new(b"b")
        await t.eng.write(vp, 0, bytes(4 * PAGE))
        pg = vp.uobj.pages[0]
        pagebusy(t.eng.uvm, pg, "test")
        t.files.vrele(vp)
        t.ns.forget(node, 1)
        t.ns.unlink(root, b"b")
        assert t.files.doomed == [vp]
        await trio.sleep(0.01)
        assert vp.uobj.pages  # the reaper waits for the page
        page_unbusy_many(t.eng.uvm, [pg])
        with trio.fail_after(5):
            await t.files.drain()
        assert vp.vstate is VS.RECLAIMED
        assert t.files.destroyed_later == 1
        assert t.eng.uvm.uvmexp.anonpages == 0
        t.sound()


async def test_writes_past_the_limit_are_refused(tmp_path: Path) -> None:
    async with tmpfs(tmp_path, pages=64, swap_pages=64) as t:
        _, vp = t.new(b"f")
        limit = t.files.limit()
        assert 0 < limit < 128
        total, free = t.ns.statvfs().f_blocks, t.ns.statvfs().f_bfree
        assert (total, free) == (limit, limit)
        assert t.files.reserve(vp, 0, limit * PAGE) == 0
        assert t.files.reserve(vp, 0, (limit + 1) * PAGE) == errno.ENOSPC
        await t.eng.write(vp, 0, bytes(10 * PAGE))
        # Rewriting what exists needs no new page; beyond it only the room is left.
        assert t.files.reserve(vp, 0, 10 * PAGE) == 0
        assert t.files.reserve(vp, 10 * PAGE, (limit - 10) * PAGE) == 0
        assert t.files.reserve(vp, 10 * PAGE, (limit - 9) * PAGE) == errno.ENOSPC
        assert t.files.refused == 2
        t.sound()
