"""The swap pager and anonymous objects: the slot allocator against a model, swap-out and
swap-in of aobj pages under memory pressure, and the seed's swap scenarios (reference
section 11.2: 6, 7, 8, 9 and 22) -- each test fails when the rule it guards is removed."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
import trio.testing
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pagers.aobj import SWSLOT_BAD, Aobj
from pagers.backing_io import FaultInjector, IOKind
from pagers.swap import SlotMap, Swap
from tests.unit.engine.enginetools import GatedIO, pattern
from tests.unit.pagers.swaptools import PAGE, Rig, deactivate_all, evict, rig, scan_short
from tests.vmtools import alloc_anon, settle
from ubcfs.vm.amap import VmAmap, amap_add, amap_alloc, amap_unref
from ubcfs.vm.anon import VmAnon
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_PAGEOUT,
    PQ_ACTIVE,
    is_dirty,
    page_unbusy,
    pageactivate,
    pagemarkdirty,
)
from ubcfs.vm.pager import PGO_FREE, SWAP_FREED, SWAP_STARTED
from ubcfs.vm.pdaemon import NUMDIRTYREACTS
from ubcfs.vm.uvm import Uvm

# --- the slot map against a model ------------------------------------------------------


def _first_fit(used: set[int], nslots: int, n: int) -> int:
    run = 0
    for pos in range(nslots):
        run = 0 if pos in used else run + 1
        if run == n:
            return pos - n + 1
    return -1


class SlotMapMachine(RuleBasedStateMachine):
    """Random takes and gives of runs; ``find`` must be the first fit of a plain set."""

    def __init__(self) -> None:
        super().__init__()
        self.nslots = 0
        self.map = SlotMap(0)
        self.used: set[int] = set()

    @rule(nslots=st.integers(0, 300))
    def resize(self, nslots: int) -> None:
        self.nslots = nslots
        self.map = SlotMap(nslots)
        self.used = set()

    @rule(n=st.integers(1, 80))
    def take_first_fit(self, n: int) -> None:
        pos = self.map.find(n)
        assert pos == _first_fit(self.used, self.nslots, n)
        if pos >= 0:
            self.map.take(pos, n)
            self.used |= set(range(pos, pos + n))

    @rule(data=st.data())
    def give_a_run(self, data: st.DataObject) -> None:
        if not self.used:
            return
        start = data.draw(st.sampled_from(sorted(self.used)))
        n = 1
        while start + n in self.used and n < data.draw(st.integers(1, 70)):
            n += 1
        self.map.give(start, n)
        self.used -= set(range(start, start + n))

    @invariant()
    def counts_agree(self) -> None:
        assert self.map.nfree == self.nslots - len(self.used)
        assert self.map.used_positions() == sorted(self.used)
        longest = max(
            (n for n in range(1, self.nslots + 1) if _first_fit(self.used, self.nslots, n) >= 0),
            default=0,
        )
        assert self.map.longest() == longest


TestSlotMap = SlotMapMachine.TestCase
TestSlotMap.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


def test_slot_map_refuses_double_take_and_double_give() -> None:
    m = SlotMap(100)
    m.take(10, 5)
    with pytest.raises(AssertionError, match="allocating a used slot"):
        m.take(12, 1)
    m.give(10, 5)
    with pytest.raises(AssertionError, match="freeing a free slot"):
        m.give(10, 1)


def test_alloc_falls_back_to_one_slot_only_when_lessok(tmp_path: Path) -> None:
    uvm = Uvm(64 * PAGE, PAGE)
    io = GatedIO(FaultInjector())
    swap = Swap(uvm, str(tmp_path / "swap"), 8 * PAGE, io)
    try:
        assert swap.alloc(3, lessok=False) == (1, 3)
        assert swap.alloc(3, lessok=False) == (4, 3)
        assert swap.alloc(3, lessok=False) == (0, 0)  # 2 left, not contiguous 3
        assert swap.alloc(3, lessok=True) == (7, 1)
        swap.markbad(4)
        swap.free(1, 6)  # the bad slot 4 is not given back
        assert swap.inuse == 2
        assert swap.alloc(6, lessok=False) == (0, 0)
        assert swap.alloc(3, lessok=False) == (1, 3)
        assert os.stat(tmp_path / "swap").st_blocks == 0  # created sparse
    finally:
        swap.close()
        io.close()
    assert not (tmp_path / "swap").exists()


# --- round trips -------------------------------------------------------------------------


async def test_sixteen_times_memory_of_aobj_data_round_trips_through_swap(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, pages=64, swap_pages=2048) as r:
        a = r.aobj()
        size = 16 * 64 * PAGE
        data = pattern(1, size)
        for off in range(0, size, 32 * 1024):
            assert await r.write(a, off, data[off : off + 32 * 1024]) == 0
        exp = r.uvm.uvmexp
        assert exp.swapouts > 0
        assert a.uobj.npages <= 64
        for off in range(0, size, 20 * 1024):  # another stride: runs cross clusters
            n = min(20 * 1024, size - off)
            err, got = await r.read(a, off, n)
            assert err == 0
            assert got == data[off : off + n], f"mismatch at {off:#x}"
        assert exp.swapins > 0
        assert exp.readahead_pages > 0
        r.sound()
        await a.destroy()
        assert r.swap.inuse == 0
        assert exp.swpgonly == 0
        assert a.uobj.npages == 0
        r.sound()


async def test_holes_read_zero_and_clean_pages_are_freed_not_rewritten(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        a = r.aobj()
        err, got = await r.read(a, 5 * PAGE, 3 * PAGE)
        assert err == 0
        assert got == bytes(3 * PAGE)
        data = pattern(2, 4 * PAGE)
        assert await r.write(a, 0, data) == 0
        await evict(r)
        exp = r.uvm.uvmexp
        outs = exp.swapouts
        assert a.uobj.pages.get(0) is None
        assert a.find_swslot(0) > 0
        assert (await r.read(a, 0, 4 * PAGE)) == (0, data)
        pg = a.uobj.pages[0]
        assert pg.flags & PG_CLEAN
        assert a.find_swslot(0) > 0
        await evict(r)
        assert exp.swapouts == outs  # clean: freed, not written again
        assert (await r.read(a, 0, 4 * PAGE)) == (0, data)
        r.sound()
        await a.destroy()


# --- scenario 6: freeing a page under swap-out ---------------------------------------


async def test_freeing_a_page_under_swapout_waits_and_its_slot_is_not_reused(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        a = r.aobj()
        data = pattern(3, 4 * PAGE)
        assert await r.write(a, 0, data) == 0
        gate = r.io.gate_write()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(evict, r)
            await gate.wait_reached()
            pg = a.uobj.pages[0]
            assert pg.flags & PG_PAGEOUT
            assert pg.flags & PG_BUSY
            slot = a.find_swslot(0)
            done = trio.Event()

            async def free_it() -> None:
                await a.free_range(0, 4 * PAGE)
                done.set()

            nursery.start_soon(free_it)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set()  # the freer sleeps on the busy page
            assert r.swap.slots.is_used(slot - 1)
            assert r.swap.alloc(r.swap.nslots, lessok=True)[0] != slot  # not handed out
            gate.open()
        assert done.is_set()
        assert r.swap.inuse == 1  # only what the test allocated above
        r.swap.free(*_allocated_by_test(r, slot))
        assert r.swap.inuse == 0
        assert a.uobj.npages == 0
        r.sound()
        await a.destroy()


def _allocated_by_test(r: Rig, slot: int) -> tuple[int, int]:
    used = [p + 1 for p in r.swap.slots.used_positions()]
    assert len(used) == 1
    assert used[0] != slot
    return used[0], 1


# --- scenario 7: PG_CLEAN goes before the slot -----------------------------------------


async def test_dirtying_a_swapped_in_page_frees_its_slot_and_clears_pg_clean(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        a = r.aobj()
        exp = r.uvm.uvmexp
        assert await r.write(a, 0, pattern(4, 2 * PAGE)) == 0
        await evict(r)
        # A write that faults the page in for writing: dirty at once, its slot freed.
        slot = a.find_swslot(0)
        assert await r.write(a, 100, b"new") == 0
        pg = a.uobj.pages[0]
        assert not pg.flags & PG_CLEAN
        assert a.find_swslot(0) == 0
        assert not r.swap.slots.is_used(slot - 1)
        r.sound()
        # A store through a mapping made by a read: only the modified bit says so, and the
        # stale slot must not be trusted: the page is written out again, not freed as clean.
        assert (await r.read(a, PAGE, PAGE))[0] == 0
        pg1 = a.uobj.pages[PAGE]
        assert pg1.flags & PG_CLEAN
        assert a.find_swslot(1) > 0
        assert await r.write(a, PAGE + 7, b"store") == 0
        assert pg1.flags & PG_CLEAN  # no fault: the mapping was writable already
        assert is_dirty(pg1)
        outs = exp.swapouts
        await evict(r)
        assert exp.swapouts == outs + 2  # both pages written, neither freed as clean
        want = bytearray(pattern(4, 2 * PAGE))
        want[100:103] = b"new"
        want[PAGE + 7 : PAGE + 12] = b"store"
        assert (await r.read(a, 0, 2 * PAGE)) == (0, bytes(want))
        r.sound()
        await a.destroy()


async def test_shortage_recovery_clears_pg_clean_with_the_slot(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        a = r.aobj()
        assert await r.write(a, 0, pattern(12, PAGE)) == 0
        await evict(r)
        assert (await r.read(a, 0, PAGE))[0] == 0
        pg = a.uobj.pages[0]
        assert r.swap.drop_slot(pg)
        assert not pg.flags & PG_CLEAN
        assert a.find_swslot(0) == 0
        assert not r.swap.drop_slot(pg)  # nothing left to drop
        r.sound()
        await a.destroy()


# --- scenario 8: swap full --------------------------------------------------------------


async def test_swap_full_reactivates_a_bounded_number_of_dirty_pages_per_scan(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, pages=128, swap_pages=16) as r:
        a = r.aobj()
        assert await r.write(a, 0, pattern(5, 16 * PAGE)) == 0
        await evict(r)  # swap now holds 16 pages that exist only there
        exp = r.uvm.uvmexp
        assert exp.swpgonly == 16
        assert r.swap.full()
        b = r.aobj("b")
        assert await r.write(b, 0, pattern(6, 48 * PAGE)) == 0
        deactivate_all(r)
        before = exp.pdreanon
        await scan_short(r)
        assert exp.pdreanon - before == NUMDIRTYREACTS  # then the scan ends
        assert b.uobj.npages == 48  # nothing lost, nothing written
        assert (await r.read(b, 0, 48 * PAGE)) == (0, pattern(6, 48 * PAGE))
        assert (await r.read(a, 0, 16 * PAGE)) == (0, pattern(5, 16 * PAGE))
        r.sound()
        await a.destroy()
        await b.destroy()


# --- scenario 9: swap-shortage recovery --------------------------------------------------


async def test_active_scan_frees_slots_of_resident_pages_when_slots_run_short(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path, pages=128, swap_pages=16) as r:
        a = r.aobj()
        assert await r.write(a, 0, pattern(7, 16 * PAGE)) == 0
        await evict(r)
        assert (await r.read(a, 0, 16 * PAGE))[0] == 0  # resident and clean, slots kept
        exp = r.uvm.uvmexp
        assert r.swap.inuse == 16
        assert exp.swpgonly == 0
        assert r.swap.short()
        exp.freetarg = exp.free + 8  # memory looks short by 8 pages
        exp.inactarg = 0
        r.uvm.pdpolicy.balancequeue(r.daemon, r.daemon.swap_shortage())
        assert exp.swap_shortage_drops == 8
        assert r.swap.inuse == 8
        for pg in a.uobj.pages.values():
            has = a.find_swslot(pg.offset // PAGE) > 0
            assert has == bool(pg.flags & PG_CLEAN)  # PG_CLEAN went with the slot
        r.uvm.tune()
        r.sound()
        await a.destroy()


# --- scenario 22 and swap-write failures --------------------------------------------------


async def test_swapin_error_marks_the_slot_bad_and_fails_only_that_page(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        a = r.aobj()
        data = pattern(8, 2 * PAGE)
        assert await r.write(a, 0, data) == 0
        await evict(r)
        bad = a.find_swslot(0)
        # Two failures: the read of page 0 with its read-ahead neighbour, then page 0 alone
        # (a failed run is retried page by page, so that only the failing slot goes bad).
        r.io.injector.arm(IOKind.SWAP_READ, errno.EIO, 2)
        assert (await r.read(a, 0, PAGE))[0] == errno.EIO
        assert a.find_swslot(0) == SWSLOT_BAD
        assert bad in r.swap.bad
        assert (await r.read(a, PAGE, PAGE)) == (0, data[PAGE:])  # the other page is fine
        assert (await r.read(a, 0, PAGE))[0] == errno.EIO  # lost, and says so every time
        got = [r.swap.alloc(1, lessok=False)[0] for _ in range(r.swap.nslots)]
        assert bad not in got  # never handed out again
        for s in got:
            r.swap.free(s)
        assert await r.write(a, 0, pattern(9, PAGE)) == 0  # overwritten whole: usable again
        assert (await r.read(a, 0, PAGE)) == (0, pattern(9, PAGE))
        r.sound()
        await a.destroy()
        assert r.swap.inuse == 1
        assert r.swap.bad == {bad}
        r.sound()


@pytest.mark.parametrize("err", [errno.EIO, errno.ENOMEM])
async def test_swapout_error_keeps_the_pages_dirty_in_memory(tmp_path: Path, err: int) -> None:
    async with rig(tmp_path) as r:
        a = r.aobj()
        data = pattern(10, 4 * PAGE)
        assert await r.write(a, 0, data) == 0
        r.io.injector.arm(IOKind.SWAP_WRITE, err, 1)
        await evict(r)
        exp = r.uvm.uvmexp
        assert exp.swap_write_errors == 1
        assert exp.paging == 0
        assert a.uobj.npages == 4
        assert all(is_dirty(pg) for pg in a.uobj.pages.values())
        assert not a.swslots
        assert len(r.swap.bad) == (4 if err == errno.EIO else 0)
        assert (await r.read(a, 0, 4 * PAGE)) == (0, data)
        await evict(r)  # the next attempt works
        assert a.uobj.npages == 0
        assert (await r.read(a, 0, 4 * PAGE)) == (0, data)
        r.sound()
        await a.destroy()


async def test_pageout_outcomes_with_dirty_and_clean_pages(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        a = r.aobj()
        assert await r.write(a, 0, pattern(11, PAGE)) == 0
        r.ubc.purge(a.uobj)
        pg = a.uobj.pages[0]
        assert r.swap.pageout(pg) == SWAP_STARTED
        r.swap.flush()
        await r.aio.drain()
        assert (await r.read(a, 0, PAGE))[0] == 0
        r.ubc.purge(a.uobj)
        assert r.swap.pageout(a.uobj.pages[0]) == SWAP_FREED
        assert await a.put(a.uobj, 0, 0, PGO_FREE) == 0
        assert r.swap.inuse == 0
        r.sound()
        await a.destroy()


async def test_without_swap_the_daemon_reactivates_aobj_pages(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        r.swap.close()  # detaches it: the machine has no swap pager now
        assert r.uvm.swap is None
        a = Aobj(r.uvm, "noswap", None)
        data = pattern(14, 8 * PAGE)
        assert await r.write(a, 0, data) == 0
        deactivate_all(r)
        exp = r.uvm.uvmexp
        before = exp.pdreanon
        assert await scan_short(r) == 0  # nothing freed, nothing started
        assert exp.pdreanon - before == 8
        assert a.uobj.npages == 8
        assert all(pg.pqflags & PQ_ACTIVE for pg in a.uobj.pages.values())
        assert (await r.read(a, 0, 8 * PAGE)) == (0, data)
        r.sound()
        await a.destroy()


# --- an allocation that cannot be met fails, it does not hang ------------------------------


@pytest.mark.parametrize("swap_pages", [0, 8])
async def test_aobj_data_beyond_memory_and_swap_gets_enospc_not_a_hang(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, swap_pages: int
) -> None:
    async with rig(tmp_path, pages=64, swap_pages=swap_pages) as r:
        a = r.aobj()
        data = pattern(13, 128 * PAGE)
        written = 0
        err = 0
        with trio.fail_after(60):  # virtual seconds: the wait is bounded, not endless
            for off in range(0, len(data), 4 * PAGE):
                err = await r.write(a, off, data[off : off + 4 * PAGE])
                if err:
                    break
                written = off + 4 * PAGE
        assert err == errno.ENOSPC
        assert r.uvm.uvmexp.aobj_nomem >= 1
        assert 0 < written < len(data)
        # Memory and swap are full of the only copies of data: reading a swapped-out page
        # needs a frame too.  Once part of the data is discarded (a truncation), the rest
        # reads back intact, from memory or from swap.
        keep = written // 2 // PAGE * PAGE
        for win in list(r.ubc.windows):
            if win.uobj is not None:
                r.ubc.purge(win.uobj)
        await a.free_range(keep, 1 << 62)
        assert (await r.read(a, 0, keep)) == (0, data[:keep])
        r.sound()
        await a.destroy()
        assert r.uvm.uvmexp.swpgonly == 0
        r.sound()


# --- anons: the same pager for the pages of amaps ---------------------------------------


def _anons(r: Rig, n: int, seed: int) -> tuple[VmAmap, list[VmAnon], list[bytes]]:
    """``n`` anons in an amap, each page filled with its own pattern, dirty, inactive."""
    amap = amap_alloc(r.uvm, n)
    anons: list[VmAnon] = []
    datas: list[bytes] = []
    for i in range(n):
        anon, pg = alloc_anon(r.uvm)
        data = pattern(seed + i, PAGE)
        r.uvm.frame(pg)[:] = data
        pg.flags &= ~PG_CLEAN  # filled: no slot holds it
        settle(r.uvm, pg)
        with amap.lock:
            amap_add(amap, i, anon)
        anons.append(anon)
        datas.append(data)
    return amap, anons, datas


async def _swapin(r: Rig, anon: VmAnon) -> tuple[int, bytes]:
    err, pg = await r.swap.anon_swapin(anon)
    if err:
        return err, b""
    assert pg is not None
    data = bytes(r.uvm.frame(pg))
    pageactivate(r.uvm, pg)
    page_unbusy(r.uvm, pg)
    return 0, data


async def test_anon_pages_go_to_swap_and_come_back(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        amap, anons, datas = _anons(r, 12, 40)
        await evict(r)
        assert all(a.page is None and a.swslot > 0 for a in anons)
        exp = r.uvm.uvmexp
        assert exp.swpgonly == 12
        r.sound()
        for anon, data in zip(anons, datas, strict=True):
            assert await _swapin(r, anon) == (0, data)
            assert anon.page is not None
            assert anon.page.flags & PG_CLEAN  # its slot still holds it
        assert exp.swpgonly == 0
        r.sound()
        # Dirtied again, an anon page gives its slot up (PR 7578); a clean one is freed
        # at the next pageout without a write.
        pg0 = anons[0].page
        assert pg0 is not None
        pagemarkdirty(pg0)
        assert anons[0].swslot == 0
        assert r.swap.inuse == 11
        pg1 = anons[1].page
        assert pg1 is not None
        assert r.swap.pageout(pg1) == SWAP_FREED
        assert anons[1].page is None
        r.sound()
        await amap_unref(r.uvm, amap)  # frees every anon: pages and slots
        assert r.swap.inuse == 0
        assert exp.swpgonly == 0
        r.sound()


async def test_a_failed_anon_swapin_marks_the_slot_bad_and_loses_only_that_anon(
    tmp_path: Path,
) -> None:
    async with rig(tmp_path) as r:
        amap, anons, datas = _anons(r, 4, 50)
        await evict(r)
        bad_slot = anons[0].swslot
        r.io.injector.arm(IOKind.SWAP_READ, errno.EIO, 1)
        assert await _swapin(r, anons[0]) == (errno.EIO, b"")
        assert anons[0].swslot == SWSLOT_BAD
        assert anons[0].page is None
        assert bad_slot in r.swap.bad
        assert await _swapin(r, anons[1]) == (0, datas[1])
        r.sound()
        await amap_unref(r.uvm, amap)
        assert r.swap.inuse == 1  # the bad slot stays allocated, never reused
        slot, _ = r.swap.alloc(1, lessok=False)
        assert slot not in (0, bad_slot)
        r.swap.free(slot)
        r.sound()


async def test_a_failed_anon_swapout_keeps_the_pages_dirty_in_memory(tmp_path: Path) -> None:
    async with rig(tmp_path) as r:
        amap, anons, datas = _anons(r, 6, 60)
        r.io.injector.arm(IOKind.SWAP_WRITE, errno.EIO, 100)
        await evict(r)
        assert all(a.page is not None and a.swslot == 0 for a in anons)
        assert all(is_dirty(a.page) for a in anons if a.page is not None)
        assert [bytes(r.uvm.frame(a.page)) for a in anons if a.page is not None] == datas
        assert r.uvm.uvmexp.swap_write_errors >= 1
        r.sound()
        r.io.injector.arm(IOKind.SWAP_WRITE, errno.EIO, 0)  # disarmed
        await amap_unref(r.uvm, amap)
        r.sound()
