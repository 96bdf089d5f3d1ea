"""Amaps and anons: references, the lock assertions of the seed, wipeout, copy-on-write
(reference section 6.1 and invariant 15)."""

from __future__ import annotations

import pytest
import trio

from tests.vmtools import alloc_anon, settle
from ubcfs.vm import audit
from ubcfs.vm.amap import (
    VmAmap,
    amap_add,
    amap_alloc,
    amap_copy,
    amap_cow_now,
    amap_lookup,
    amap_ref,
    amap_unadd,
    amap_unref,
)
from ubcfs.vm.anon import VmAnon, anfree
from ubcfs.vm.diag import Panic
from ubcfs.vm.page import PG_BUSY, PG_CLEAN, page_unbusy, pagebusy
from ubcfs.vm.uvm import Uvm


def _filled(uvm: Uvm, amap: VmAmap, slots: list[int]) -> dict[int, VmAnon]:
    """Give each slot an anon whose page holds its slot number in every byte."""
    out = {}
    for slot in slots:
        anon, pg = alloc_anon(uvm)
        uvm.frame(pg)[:] = bytes([slot + 1]) * uvm.page_size
        settle(uvm, pg)
        with amap.lock:
            amap_add(amap, slot, anon)
        out[slot] = anon
    return out


def _shared(amap: VmAmap) -> bool:
    return amap.shared


def test_slot_operations_assert_the_amap_lock(uvm: Uvm) -> None:
    amap = amap_alloc(uvm, 4)
    anon = VmAnon()
    with pytest.raises(Panic, match="not held"):
        amap_add(amap, 0, anon)
    with pytest.raises(Panic, match="not held"):
        amap_lookup(amap, 0)
    with amap.lock:
        amap_add(amap, 0, anon)
        assert amap_lookup(amap, 0) is anon
        with pytest.raises(Panic, match="in use"):
            amap_add(amap, 0, VmAnon())
        with pytest.raises(Panic, match="outside"):
            amap_lookup(amap, 4)
        assert amap_unadd(amap, 0) is anon
        with pytest.raises(Panic, match="empty"):
            amap_unadd(amap, 0)
    uvm.amaps.discard(amap)


async def test_anfree_wants_no_reference_and_no_lock(uvm: Uvm) -> None:
    anon, pg = alloc_anon(uvm)
    settle(uvm, pg)
    with pytest.raises(Panic, match="reference"):
        await anfree(uvm, anon)
    anon.ref = 0
    with anon.lock, pytest.raises(Panic, match="locked"):
        await anfree(uvm, anon)
    free = uvm.uvmexp.free
    await anfree(uvm, anon)
    assert anon.page is None
    assert uvm.uvmexp.free == free + 1


async def test_anfree_sleeps_on_a_busy_page_instead_of_releasing_it(uvm: Uvm) -> None:
    anon, pg = alloc_anon(uvm)
    settle(uvm, pg)
    anon.ref = 0
    pagebusy(uvm, pg, "swap-out in flight")
    done = trio.Event()

    async def free_it() -> None:
        await anfree(uvm, anon)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(free_it)
        await trio.testing.wait_all_tasks_blocked()
        assert not done.is_set()
        assert anon.page is pg  # not freed under the I/O
        page_unbusy(uvm, pg)
    assert done.is_set()
    assert anon.page is None


async def test_last_unref_wipes_out_and_frees_only_unshared_anons(uvm: Uvm) -> None:
    amap = amap_alloc(uvm, 8)
    anons = _filled(uvm, amap, [0, 3, 7])
    copy = amap_copy(uvm, amap)
    assert all(a.ref == 2 for a in anons.values())
    assert audit.audit(uvm) == []
    amap_ref(amap, shared=True)
    assert _shared(amap)
    await amap_unref(uvm, amap)
    assert not _shared(amap)  # one user left
    free = uvm.uvmexp.free
    await amap_unref(uvm, amap)
    assert amap not in uvm.amaps
    assert uvm.uvmexp.free == free  # the copy still holds every anon
    assert all(a.ref == 1 for a in anons.values())
    await amap_unref(uvm, copy)
    assert uvm.uvmexp.free == free + 3
    assert all(a.page is None for a in anons.values())
    assert audit.audit(uvm) == []


async def test_cow_now_copies_the_shared_anons_and_keeps_the_private_ones(uvm: Uvm) -> None:
    amap = amap_alloc(uvm, 4)
    anons = _filled(uvm, amap, [0, 1])
    copy = amap_copy(uvm, amap)
    with copy.lock:
        private = amap_unadd(copy, 1)
    with private.lock:
        private.ref -= 1
    extra, pg = alloc_anon(uvm)
    settle(uvm, pg)
    with copy.lock:
        amap_add(copy, 2, extra)
    assert await amap_cow_now(uvm, copy) == 0
    with copy.lock:
        new0 = amap_lookup(copy, 0)
        assert amap_lookup(copy, 2) is extra  # never shared: kept
    assert new0 is not None
    assert new0 is not anons[0]
    assert anons[0].ref == 1
    assert new0.page is not None
    assert bytes(uvm.frame(new0.page)) == bytes([1]) * uvm.page_size
    assert not new0.page.flags & (PG_BUSY | PG_CLEAN)  # dirty: no slot holds the copy
    assert uvm.uvmexp.cow_copies == 1
    assert audit.audit(uvm) == []
    await amap_unref(uvm, copy)
    await amap_unref(uvm, amap)
    assert audit.audit(uvm) == []


async def test_cow_now_without_memory_frees_the_new_anon_and_waits(uvm: Uvm) -> None:
    amap = amap_alloc(uvm, 2)
    anons = _filled(uvm, amap, [0])
    copy = amap_copy(uvm, amap)
    hold = []
    while uvm.uvmexp.free > uvm.uvmexp.reserve_kernel:
        anon, pg = alloc_anon(uvm)
        settle(uvm, pg)
        hold.append(anon)
    waits: list[str] = []
    second_wait = trio.Event()

    def hook(why: str, since: float | None, err: int) -> None:
        waits.append(why)
        if len(waits) == 2:
            second_wait.set()

    uvm.wait_hook = hook

    async def release_later() -> None:
        # Memory comes back only after cow_now has failed, freed its new anon and waited
        # twice (each wait ends at uvm_wait's timeout: nobody frees pages meanwhile).
        await second_wait.wait()
        for a in hold[:4]:
            a.ref = 0
            await anfree(uvm, a)
        uvm.pages_freed()

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(release_later)
            assert await amap_cow_now(uvm, copy) == 0
    uvm.wait_hook = None
    assert waits[:2] == ["amap_cow_now", "amap_cow_now"]
    assert anons[0].ref == 1
    assert audit.audit(uvm) == []
    for a in hold[4:]:
        a.ref = 0
        await anfree(uvm, a)
    await amap_unref(uvm, copy)
    await amap_unref(uvm, amap)


def test_audit_rule_15_counts_amap_slots(uvm: Uvm) -> None:
    amap = amap_alloc(uvm, 2)
    _filled(uvm, amap, [0])
    with amap.lock:
        anon = amap_lookup(amap, 0)
    assert anon is not None
    anon.ref = 2
    assert any(v.startswith("[15] ") for v in audit.audit(uvm))
    anon.ref = 1
    assert audit.audit(uvm) == []
