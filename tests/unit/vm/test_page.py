"""vm_page: allocation, reserves, freeing, wiring, the paging queues, lookup and busy/wanted
sleeping (reference sections 2.3-2.6; issue 2, "Allocation", "Busy/wanted", "Bad input")."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import trio
import trio.testing

from tests.vmtools import alloc, alloc_anon, clock_queues, resident, settle
from ubcfs.vm import diag
from ubcfs.vm.anon import VmAnon
from ubcfs.vm.diag import LockInstrument, Panic
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import (
    PG,
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    PG_PAGEOUT,
    PG_RELEASED,
    PG_TABLED,
    PG_WANTED,
    PG_ZERO,
    PGA,
    PGA_PDAEMON,
    PGA_USERESERVE,
    PGA_ZERO,
    POISON_BYTE,
    PQ,
    PQ_ACTIVE,
    PQ_ANON,
    PQ_AOBJ,
    PQ_FREE,
    PQ_INACTIVE,
    PQ_QUEUES,
    VmPage,
    page_unbusy,
    page_unbusy_many,
    pageactivate,
    pagealloc,
    pagebusy,
    pagedeactivate,
    pagedequeue,
    pageenqueue,
    pagefree,
    pagelookup,
    pageunwire,
    pagewait,
    pagewire,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    PMAP_WIRED,
    Pmap,
    pmap_enter,
    pmap_extract,
    pmap_kenter_pa,
    pmap_kremove,
    pmap_page_protect,
    pmap_remove,
    pmap_update,
)
from ubcfs.vm.uvm import Uvm

NewPage = Callable[..., VmPage]


def kernel_page(uvm: Uvm, flags: int = 0) -> VmPage | None:
    """An objectless, anonless page (kernel memory), or None when refused."""
    return pagealloc(uvm, None, 0, flags=flags)


def frame_bytes(uvm: Uvm, pg: VmPage) -> bytes:
    return bytes(uvm.frame(pg))


# --- the flag enums ---------------------------------------------------------------------


def test_flag_values_are_netbsds() -> None:
    assert [PG.BUSY.value, PG.WANTED.value, PG.TABLED.value, PG.CLEAN.value] == [1, 2, 4, 8]
    assert [PG.PAGEOUT.value, PG.RELEASED.value, PG.FAKE.value, PG.RDONLY.value] == [
        0x10,
        0x20,
        0x40,
        0x80,
    ]
    assert (PG.ZERO.value, PG.PAGER1.value) == (0x100, 0x1000)
    assert PQ.SWAPBACKED == PQ.ANON | PQ.AOBJ
    assert PG.BUSY.value == PG_BUSY
    assert PGA.ZERO.value == PGA_ZERO


def test_fresh_machine_has_every_frame_free_and_zero(uvm: Uvm) -> None:
    exp = uvm.uvmexp
    assert exp.free == exp.zeropages == exp.npages == 64
    assert exp.active == exp.inactive == exp.wired == 0
    assert all(pg.pqflags == PQ_FREE and pg.flags == PG_ZERO for pg in uvm.pages)
    assert [pg.phys_addr for pg in uvm.pages] == [i * 4096 for i in range(64)]
    assert all(uvm.physmem.is_zero(pg.phys_addr) for pg in uvm.pages)


# --- pagealloc --------------------------------------------------------------------------


def test_pagealloc_returns_a_busy_clean_fake_page_entered_in_its_object(
    uvm: Uvm, obj: UvmObject
) -> None:
    pg = alloc(uvm, obj, 3 * 4096)
    assert pg.pgflags == PG.BUSY | PG.CLEAN | PG.FAKE | PG.TABLED
    assert pg.uobject is obj
    assert pg.offset == 3 * 4096
    assert pg.uanon is None
    assert not pg.pqflags & (PQ_QUEUES | PQ_FREE)
    assert pg.wire_count == 0
    assert pagelookup(obj, 3 * 4096) is pg
    assert obj.npages == 1
    exp = uvm.uvmexp
    assert (exp.free, exp.filepages, exp.anonpages, exp.active) == (63, 1, 0, 0)
    settle(uvm, pg)
    assert pg.pgflags == PG.CLEAN | PG.TABLED
    assert pg.pqflags == PQ_ACTIVE
    assert exp.active == 1


def test_pagealloc_for_an_anonymous_object_marks_it_pq_aobj(uvm: Uvm, aobj: UvmObject) -> None:
    pg = resident(uvm, aobj, 0)
    assert pg.pqflags == PQ_AOBJ | PQ_ACTIVE
    assert (uvm.uvmexp.anonpages, uvm.uvmexp.filepages) == (1, 0)


def test_pagealloc_for_an_anon_attaches_it(uvm: Uvm) -> None:
    anon, pg = alloc_anon(uvm)
    assert anon.page is pg
    assert pg.uanon is anon
    assert pg.uobject is None
    assert pg.pqflags == PQ_ANON
    assert not pg.flags & PG_TABLED
    assert uvm.uvmexp.anonpages == 1
    settle(uvm, pg)
    assert pg.pqflags == PQ_ANON | PQ_ACTIVE


def test_pagealloc_without_owner_makes_a_kernel_page(uvm: Uvm) -> None:
    pg = kernel_page(uvm)
    assert pg is not None
    assert pg.uobject is None
    assert pg.uanon is None
    assert pg.pqflags == 0
    assert uvm.uvmexp.kernelpages == 1
    pg.flags &= ~PG_FAKE
    page_unbusy(uvm, pg)  # objectless and unqueued: legal, found again through kenter


def test_pagealloc_zero_from_the_zero_list_is_a_zerohit(uvm: Uvm, obj: UvmObject) -> None:
    pg = alloc(uvm, obj, 0, PGA_ZERO)
    assert pg.pgflags == PG.BUSY | PG.FAKE | PG.TABLED  # PG_CLEAN cleared
    assert uvm.physmem.is_zero(pg.phys_addr)
    assert (uvm.uvmexp.pga_zerohit, uvm.uvmexp.pga_zeromiss) == (1, 0)
    assert uvm.uvmexp.zeropages == 63
    settle(uvm, pg)


def test_pagealloc_zero_without_zero_pages_zeroes_the_frame(uvm: Uvm, obj: UvmObject) -> None:
    # Use up the known-zero list, then free everything: the freed frames are poisoned.
    got = []
    while (pg := kernel_page(uvm)) is not None:
        got.append(pg)
    for pg in got:
        pagefree(uvm, pg)
    nzero = len(uvm.free_zero)
    assert nzero == uvm.uvmexp.zeropages == uvm.uvmexp.reserve_kernel
    zeroed = [alloc(uvm, obj, i * 4096, PGA_ZERO) for i in range(nzero + 1)]
    assert (uvm.uvmexp.pga_zerohit, uvm.uvmexp.pga_zeromiss) == (nzero, 1)
    assert uvm.uvmexp.zeropages == 0
    last = zeroed[-1]
    assert last in got  # a frame that was poisoned on free ...
    assert frame_bytes(uvm, last) == bytes(4096)  # ... is handed out zeroed
    assert not last.flags & PG_CLEAN
    for pg in zeroed:
        settle(uvm, pg)


def test_plain_pagealloc_prefers_the_unknown_list(uvm: Uvm, obj: UvmObject) -> None:
    first = alloc(uvm, obj, 0)
    assert uvm.uvmexp.zeropages == 63  # came from the zero list: nothing else was free
    assert first.flags & PG_CLEAN
    assert not first.flags & PG_ZERO
    pagefree(uvm, first)
    again = alloc(uvm, obj, 4096)
    assert again is first  # the page on the unknown list, not another zero page
    assert uvm.uvmexp.zeropages == 63
    assert frame_bytes(uvm, again) == bytes([POISON_BYTE]) * 4096
    settle(uvm, again)


def test_pagealloc_zero_prefers_the_zero_list(uvm: Uvm, obj: UvmObject) -> None:
    used = alloc(uvm, obj, 0)
    pagefree(uvm, used)
    pg = alloc(uvm, obj, 0, PGA_ZERO)
    assert pg is not used
    assert uvm.uvmexp.pga_zerohit == 1
    settle(uvm, pg)


def test_ordinary_allocations_stop_at_the_kernel_reserve(uvm: Uvm) -> None:
    exp = uvm.uvmexp
    assert (exp.reserve_kernel, exp.reserve_pagedaemon) == (5, 1)
    got = []
    while (pg := kernel_page(uvm)) is not None:
        got.append(pg)
    assert len(got) == 64 - exp.reserve_kernel
    assert exp.free == exp.reserve_kernel
    assert exp.pga_fail == 1
    # PGA_ZERO and PGA_PDAEMON alone do not open the reserve either.
    assert kernel_page(uvm, PGA_ZERO) is None
    assert kernel_page(uvm, PGA_PDAEMON) is None
    assert exp.free == exp.reserve_kernel
    assert exp.pga_fail == 3


def test_usereserve_dips_below_the_kernel_reserve_but_not_the_pagedaemon_one(uvm: Uvm) -> None:
    exp = uvm.uvmexp
    while kernel_page(uvm) is not None:
        pass
    got = []
    while (pg := kernel_page(uvm, PGA_USERESERVE)) is not None:
        got.append(pg)
    assert len(got) == exp.reserve_kernel - exp.reserve_pagedaemon
    assert exp.free == exp.reserve_pagedaemon
    # Only the pagedaemon (PGA_PDAEMON) with USERESERVE takes the last reserve.
    assert kernel_page(uvm, PGA_USERESERVE | PGA_ZERO) is None
    last = kernel_page(uvm, PGA_USERESERVE | PGA_PDAEMON)
    assert last is not None
    assert exp.free == 0


def test_pagedaemon_allocation_with_no_free_page_returns_none(uvm: Uvm) -> None:
    # free == 0: even the pagedaemon's reserve is gone.  pagealloc must report the
    # shortage (None, pagedaemon kicked), not raise.
    while kernel_page(uvm) is not None:
        pass
    while kernel_page(uvm, PGA_USERESERVE) is not None:
        pass
    while kernel_page(uvm, PGA_USERESERVE | PGA_PDAEMON) is not None:
        pass
    assert uvm.uvmexp.free == 0
    fails = uvm.uvmexp.pga_fail
    assert kernel_page(uvm, PGA_USERESERVE | PGA_PDAEMON) is None
    assert uvm.uvmexp.pga_fail == fails + 1


def test_allocation_failure_and_low_memory_wake_the_pagedaemon(uvm: Uvm) -> None:
    wakeups: list[int] = []
    uvm.set_pdaemon_wakeup(lambda: wakeups.append(uvm.uvmexp.free))
    exp = uvm.uvmexp
    # Plenty of free memory: no wake-up.
    while exp.free - 1 >= exp.freetarg:
        assert kernel_page(uvm) is not None
    assert wakeups == []
    # Below freemin, every allocation kicks (kernel: free + paging < freemin).
    while exp.free >= exp.freemin:
        assert kernel_page(uvm) is not None
    assert wakeups
    assert wakeups[-1] == exp.freemin - 1
    kicks = len(wakeups)
    assert kernel_page(uvm, PGA_USERESERVE) is not None
    assert len(wakeups) == kicks + 1
    # A refused allocation kicks too.
    while kernel_page(uvm) is not None:
        pass
    kicks = len(wakeups)
    assert kernel_page(uvm) is None
    assert len(wakeups) == kicks + 1
    assert exp.pdkicks == len(wakeups)
    # Without a registered daemon the kick is only counted.
    uvm.set_pdaemon_wakeup(None)
    assert kernel_page(uvm) is None
    assert len(wakeups) == kicks + 1
    assert exp.pdkicks == kicks + 2


def test_between_freemin_and_freetarg_only_a_short_inactive_queue_kicks(uvm: Uvm) -> None:
    """UVM_KICK_PDAEMON: free + paging < freemin, or < freetarg with inactive < inactarg."""
    wakeups: list[int] = []
    uvm.set_pdaemon_wakeup(lambda: wakeups.append(uvm.uvmexp.free))
    exp = uvm.uvmexp
    assert exp.freemin + 2 <= exp.freetarg, "the test needs room between the targets"
    while exp.free - 1 >= exp.freetarg:
        assert kernel_page(uvm) is not None
    exp.inactarg = 0  # the inactive queue is long enough
    assert kernel_page(uvm) is not None
    assert wakeups == []
    exp.inactarg = exp.inactive + 1  # now it is short
    assert kernel_page(uvm) is not None
    assert len(wakeups) == 1


def test_pagealloc_into_an_unlocked_object_panics(uvm: Uvm, obj: UvmObject) -> None:
    with pytest.raises(Panic, match="vmobjlock:vn not held"):
        pagealloc(uvm, obj, 0)
    assert uvm.uvmexp.free == 64
    assert obj.npages == 0


def test_pagealloc_for_an_unlocked_anon_panics(uvm: Uvm) -> None:
    anon = VmAnon()
    with pytest.raises(Panic, match="lock anon not held"):
        pagealloc(uvm, None, 0, anon=anon)
    assert anon.page is None


def test_lock_assertion_is_a_diagnostic_check(
    uvm: Uvm, obj: UvmObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(diag, "DIAGNOSTIC", False)
    pg = pagealloc(uvm, obj, 0)
    assert pg is not None
    settle(uvm, pg)


@pytest.mark.parametrize(
    ("offset", "message"),
    [(100, "not page aligned"), (-4096, "not page aligned"), (0, "already has a page")],
)
def test_pagealloc_bad_offsets_panic(
    uvm: Uvm, obj: UvmObject, new_page: NewPage, offset: int, message: str
) -> None:
    new_page(0)
    with obj.vmobjlock, pytest.raises(Panic, match=message):
        pagealloc(uvm, obj, offset)
    assert obj.npages == 1
    assert uvm.uvmexp.free == 63


def test_pagealloc_with_both_object_and_anon_panics(uvm: Uvm, obj: UvmObject) -> None:
    anon = VmAnon()
    with obj.vmobjlock, anon.lock, pytest.raises(Panic, match="both an object and an anon"):
        pagealloc(uvm, obj, 0, anon=anon)


def test_pagealloc_for_an_anon_that_has_a_page_panics(uvm: Uvm) -> None:
    anon, pg = alloc_anon(uvm)
    with anon.lock, pytest.raises(Panic, match="anon already has a page"):
        pagealloc(uvm, None, 0, anon=anon)
    assert anon.page is pg
    settle(uvm, pg)


# --- pagefree ---------------------------------------------------------------------------


def test_pagefree_returns_the_page_to_the_free_list(uvm: Uvm, obj: UvmObject) -> None:
    pg = resident(uvm, obj, 4096)
    uvm.frame(pg)[:5] = b"hello"
    pagefree(uvm, pg)
    assert pg.pqflags == PQ_FREE
    assert pg.flags == 0
    assert (pg.uobject, pg.uanon, pg.offset, pg.wire_count, pg.mdattrs) == (None, None, -1, 0, 0)
    assert pagelookup(obj, 4096) is None
    assert obj.npages == 0
    exp = uvm.uvmexp
    assert (exp.free, exp.active, exp.filepages) == (64, 0, 0)
    assert uvm.free_unknown[-1] is pg
    assert frame_bytes(uvm, pg) == bytes([POISON_BYTE]) * 4096  # DIAGNOSTIC poison


def test_pagefree_without_diagnostic_does_not_poison(
    uvm: Uvm, obj: UvmObject, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg = resident(uvm, obj, 0)
    uvm.frame(pg)[:] = b"x" * 4096
    monkeypatch.setattr(diag, "DIAGNOSTIC", False)
    pagefree(uvm, pg)
    assert frame_bytes(uvm, pg) == b"x" * 4096


def test_pagefree_of_a_busy_page_by_its_owner(uvm: Uvm, obj: UvmObject) -> None:
    pg = alloc(uvm, obj, 0)
    pagefree(uvm, pg)
    assert uvm.uvmexp.free == 64


def test_pagefree_takes_the_page_off_its_queue(uvm: Uvm, new_page: NewPage) -> None:
    act, inact = new_page(), new_page()
    pagedeactivate(uvm, inact)
    pagefree(uvm, act)
    pagefree(uvm, inact)
    assert (uvm.uvmexp.active, uvm.uvmexp.inactive) == (0, 0)
    assert list(clock_queues(uvm).active) == list(clock_queues(uvm).inactive) == []


def test_pagefree_drops_the_wiring(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    pagewire(uvm, pg)
    pagewire(uvm, pg)
    pagefree(uvm, pg)
    assert pg.wire_count == 0
    assert uvm.uvmexp.wired == 0


def test_pagefree_detaches_an_anon_page(uvm: Uvm) -> None:
    anon, pg = alloc_anon(uvm)
    settle(uvm, pg)
    pagefree(uvm, pg)
    assert anon.page is None
    assert pg.uanon is None
    assert uvm.uvmexp.anonpages == 0


def test_pagefree_of_a_kernel_page(uvm: Uvm) -> None:
    pg = kernel_page(uvm)
    assert pg is not None
    pagefree(uvm, pg)
    assert uvm.uvmexp.kernelpages == 0


def test_pagefree_of_an_aobj_page(uvm: Uvm, aobj: UvmObject) -> None:
    pg = resident(uvm, aobj, 0)
    pagefree(uvm, pg)
    assert uvm.uvmexp.anonpages == 0


def test_double_free_panics(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    pagefree(uvm, pg)
    with pytest.raises(Panic, match="pagefree: double free"):
        pagefree(uvm, pg)
    assert uvm.uvmexp.free == 64


def test_freeing_a_mapped_page_panics(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pg = new_page()
    pmap_enter(pmaps[0], 0x10000, pg, Prot.READ, 0)
    pmap_enter(pmaps[1], 0x20000, pg, Prot.READ, 0)
    with pytest.raises(Panic, match="still has 2 managed mapping"):
        pagefree(uvm, pg)
    assert pg.pqflags == PQ_ACTIVE  # untouched by the refused free
    pmap_page_protect(uvm, pg, Prot.NONE)
    pagefree(uvm, pg)


def test_freeing_a_kentered_page_panics(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    kp = uvm.kernel_pmap
    pmap_kenter_pa(kp, 0x40000, pg.phys_addr, Prot.RW)
    with pytest.raises(Panic, match="pmap_kenter_pa mapping"):
        pagefree(uvm, pg)
    pmap_kremove(kp, 0x40000, 4096)
    # Still reachable through the not-yet-flushed kernel translation.
    with pytest.raises(Panic, match="stale translation"):
        pagefree(uvm, pg)
    pmap_update(kp)
    pagefree(uvm, pg)


def test_freeing_a_page_behind_a_stale_translation_panics(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    pmap_enter(pmaps[0], 0x10000, pg, Prot.RW, 0)
    pmap_remove(pmaps[0], 0x10000, 0x11000)  # no pmap_update: the TLB may still hold it
    assert pg.pvlist is None
    with pytest.raises(Panic, match="stale translation"):
        pagefree(uvm, pg)
    pmap_update(pmaps[0])
    pagefree(uvm, pg)


def test_freeing_a_page_under_pageout_panics(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page(settled=False)
    pg.flags |= PG_PAGEOUT
    uvm.uvmexp.paging += 1
    with pytest.raises(Panic, match="under pageout"):
        pagefree(uvm, pg)
    assert pg.uobject is not None
    pg.flags &= ~PG_PAGEOUT
    uvm.uvmexp.paging -= 1
    pagefree(uvm, pg)


def test_pagefree_bumps_the_object_generation(uvm: Uvm, obj: UvmObject) -> None:
    # UvmObject.generation: "bumped whenever pages are removed", so that a task that slept
    # can tell that a page it looked up may be gone.
    pg = resident(uvm, obj, 0)
    before = obj.generation
    pagefree(uvm, pg)
    assert obj.generation != before


@pytest.mark.parametrize(
    ("op", "name"),
    [
        (pagewire, "pagewire"),
        (pageunwire, "pageunwire"),
        (pageactivate, "pageactivate"),
        (pagedeactivate, "pagedeactivate"),
        (lambda uvm, pg: pagebusy(uvm, pg, "test"), "pagebusy"),
    ],
)
def test_operations_on_a_freed_page_panic(
    uvm: Uvm, new_page: NewPage, op: Callable[[Uvm, VmPage], None], name: str
) -> None:
    pg = new_page()
    pagefree(uvm, pg)
    with pytest.raises(Panic, match=rf"{name}(\(test\))?: free page"):
        op(uvm, pg)
    assert pg.pqflags == PQ_FREE
    assert uvm.uvmexp.free == 64


def test_mapping_a_freed_page_panics(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pg = new_page()
    pagefree(uvm, pg)
    with pytest.raises(Panic, match="mapping free page"):
        pmap_enter(pmaps[0], 0, pg, Prot.READ, 0)
    assert pmap_extract(pmaps[0], 0) is None


# --- wiring -----------------------------------------------------------------------------


def test_wiring_takes_the_page_off_the_queues_and_counts(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    pagewire(uvm, pg)
    assert pg.wire_count == 1
    assert not pg.pqflags & PQ_QUEUES
    assert (uvm.uvmexp.wired, uvm.uvmexp.active) == (1, 0)
    pagewire(uvm, pg)
    assert pg.wire_count == 2
    assert uvm.uvmexp.wired == 1  # pages, not wirings
    pageunwire(uvm, pg)
    assert pg.wire_count == 1
    assert not pg.pqflags & PQ_QUEUES
    pageunwire(uvm, pg)
    assert pg.wire_count == 0
    assert pg.pqflags & PQ_ACTIVE  # the last unwiring activates
    assert (uvm.uvmexp.wired, uvm.uvmexp.active) == (0, 1)


def test_wiring_an_inactive_page(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    pagedeactivate(uvm, pg)
    pagewire(uvm, pg)
    assert uvm.uvmexp.inactive == 0
    assert list(clock_queues(uvm).inactive) == []
    pageunwire(uvm, pg)
    assert pg.pqflags & PQ_ACTIVE
    assert list(clock_queues(uvm).active) == [pg]


def test_wiring_a_fresh_page_then_unwiring_queues_it(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page(settled=False)
    pagewire(uvm, pg)
    pg.flags &= ~PG_FAKE
    page_unbusy(uvm, pg)
    pageunwire(uvm, pg)
    assert list(clock_queues(uvm).active) == [pg]


def test_unwiring_an_unwired_page_panics(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    with pytest.raises(Panic, match="pageunwire: unwiring a page that is not wired"):
        pageunwire(uvm, pg)
    assert pg.wire_count == 0
    assert list(clock_queues(uvm).active) == [pg]


def test_queue_calls_leave_wired_pages_off_the_queues(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    pagewire(uvm, pg)
    pageactivate(uvm, pg)
    pagedeactivate(uvm, pg)
    pageenqueue(uvm, pg)
    assert not pg.pqflags & PQ_QUEUES
    assert (uvm.uvmexp.active, uvm.uvmexp.inactive) == (0, 0)
    pageunwire(uvm, pg)


# --- the paging queues ------------------------------------------------------------------


def test_activate_and_deactivate_move_pages_to_the_tail(uvm: Uvm, new_page: NewPage) -> None:
    a, b, c = new_page(), new_page(), new_page()
    assert list(clock_queues(uvm).active) == [a, b, c]
    pageactivate(uvm, a)
    assert list(clock_queues(uvm).active) == [b, c, a]
    pagedeactivate(uvm, c)
    pagedeactivate(uvm, a)
    assert list(clock_queues(uvm).active) == [b]
    assert list(clock_queues(uvm).inactive) == [c, a]
    assert (uvm.uvmexp.active, uvm.uvmexp.inactive) == (1, 2)
    assert (len(clock_queues(uvm).active), len(clock_queues(uvm).inactive)) == (1, 2)
    assert c.pqflags == PQ_INACTIVE
    pagedeactivate(uvm, c)  # already inactive: stays where it is
    assert list(clock_queues(uvm).inactive) == [c, a]
    pageactivate(uvm, c)
    assert list(clock_queues(uvm).active) == [b, c]
    assert list(clock_queues(uvm).inactive) == [a]
    assert (uvm.uvmexp.active, uvm.uvmexp.inactive) == (2, 1)


def test_dequeue_and_enqueue(uvm: Uvm, new_page: NewPage) -> None:
    a, b = new_page(), new_page()
    pagedeactivate(uvm, b)
    pagedequeue(uvm, a)
    pagedequeue(uvm, b)
    assert not a.pqflags & PQ_QUEUES
    assert not b.pqflags & PQ_QUEUES
    assert (uvm.uvmexp.active, uvm.uvmexp.inactive) == (0, 0)
    pagedequeue(uvm, a)  # unqueued: nothing to do
    pageenqueue(uvm, a)
    assert a.pqflags & PQ_ACTIVE
    pagedeactivate(uvm, a)
    pageenqueue(uvm, a)  # already queued: stays inactive
    assert a.pqflags & PQ_INACTIVE
    pageenqueue(uvm, b)
    assert list(clock_queues(uvm).active) == [b]
    assert list(clock_queues(uvm).inactive) == [a]


def test_queue_removal_from_the_middle_keeps_links(uvm: Uvm, new_page: NewPage) -> None:
    pages = [new_page() for _ in range(5)]
    pagefree(uvm, pages[2])
    pagewire(uvm, pages[0])
    pagedeactivate(uvm, pages[4])
    assert list(clock_queues(uvm).active) == [pages[1], pages[3]]
    assert clock_queues(uvm).active.head is pages[1]
    assert clock_queues(uvm).active.tail is pages[3]
    assert pages[3].pqprev is pages[1]
    pageunwire(uvm, pages[0])


# --- lookup -----------------------------------------------------------------------------


def test_lookup_insert_and_remove_never_scan_the_object() -> None:
    big = Uvm(1024 * 512, page_size=512)
    obj = UvmObject(big, "big")
    pages = [resident(big, obj, i * 512) for i in range(900)]
    obj.pages.probes = 0
    assert pagelookup(obj, 450 * 512) is pages[450]
    assert pagelookup(obj, 900 * 512) is None
    pagefree(big, pages[17])
    assert pagelookup(obj, 17 * 512) is None
    again = resident(big, obj, 17 * 512)
    assert pagelookup(obj, 17 * 512) is again
    # A handful of leaf lookups, never a walk of the 900 pages.
    assert obj.pages.probes <= 8, obj.pages.probes


# --- busy and wanted --------------------------------------------------------------------


def test_pagebusy_records_the_owner_tag_and_unbusy_clears_it(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    pagebusy(uvm, pg, "pageout")
    assert pg.flags & PG_BUSY
    assert uvm.owner_tags[pg] == "pageout"
    with pytest.raises(Panic, match=r"pagebusy\(again\): .* already busy \(pageout\)"):
        pagebusy(uvm, pg, "again")
    page_unbusy(uvm, pg)
    assert not pg.flags & PG_BUSY
    assert pg not in uvm.owner_tags


def test_page_unbusy_of_an_unbusy_page_panics(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    with pytest.raises(Panic, match=r"page_unbusy: .* is not busy"):
        page_unbusy(uvm, pg)


async def test_pagewait_of_an_unbusy_page_panics(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    with pytest.raises(Panic, match=r"pagewait\(w\): .* is not busy"):
        await pagewait(uvm, pg, "w")
    assert not pg.flags & PG_WANTED


async def test_waiter_sleeps_until_the_owner_unbusies(
    uvm: Uvm, new_page: NewPage, lock_instrument: LockInstrument
) -> None:
    pg = new_page(settled=False)
    woke: list[str] = []

    async def waiter(name: str) -> None:
        await pagewait(uvm, pg, name)
        woke.append(name)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, "a")
        nursery.start_soon(waiter, "b")
        await trio.testing.wait_all_tasks_blocked()
        assert woke == []
        assert pg.flags & PG_WANTED
        assert pg in uvm.page_waiters
        pg.flags &= ~PG_FAKE
        page_unbusy(uvm, pg)
        assert not pg.flags & (PG_BUSY | PG_WANTED)
        assert pg not in uvm.page_waiters
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(woke) == ["a", "b"]
    pageactivate(uvm, pg)


async def test_only_the_unbusied_pages_waiters_wake(
    uvm: Uvm, new_page: NewPage, lock_instrument: LockInstrument
) -> None:
    p1, p2 = new_page(settled=False), new_page(settled=False)
    woke: list[VmPage] = []

    async def waiter(pg: VmPage) -> None:
        await pagewait(uvm, pg, "w")
        woke.append(pg)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter, p1)
        nursery.start_soon(waiter, p2)
        await trio.testing.wait_all_tasks_blocked()
        settle(uvm, p1)
        await trio.testing.wait_all_tasks_blocked()
        assert woke == [p1]
        assert p2.flags & PG_WANTED
        settle(uvm, p2)
    assert woke == [p1, p2]


async def test_waiter_wakes_when_the_page_is_freed(
    uvm: Uvm, obj: UvmObject, new_page: NewPage, lock_instrument: LockInstrument
) -> None:
    pg = new_page(0, settled=False)
    found: list[VmPage | None] = []

    async def waiter() -> None:
        await pagewait(uvm, pg, "lookup")
        found.append(pagelookup(obj, 0))  # look it up again after sleeping

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        pagefree(uvm, pg)
        assert pg not in uvm.page_waiters
    assert found == [None]


async def test_released_page_is_freed_and_unmapped_by_unbusy(
    uvm: Uvm,
    obj: UvmObject,
    new_page: NewPage,
    pmaps: list[Pmap],
    lock_instrument: LockInstrument,
) -> None:
    pg = new_page(0)
    pmap_enter(pmaps[0], 0x1000, pg, Prot.RW, Prot.WRITE)
    pmap_enter(pmaps[1], 0x5000, pg, Prot.READ, Prot.READ | PMAP_WIRED)
    pagebusy(uvm, pg, "getpages")
    woke = trio.Event()

    async def waiter() -> None:
        await pagewait(uvm, pg, "truncate")
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        pg.flags |= PG_RELEASED
        page_unbusy(uvm, pg)
        assert pg.pqflags == PQ_FREE
        assert pagelookup(obj, 0) is None
        assert pmap_extract(pmaps[0], 0x1000) is None
        assert pmap_extract(pmaps[1], 0x5000) is None
        assert (pmaps[1].resident_count, pmaps[1].wired_count) == (0, 0)
        assert uvm.pv_free == uvm.pv_total
    assert woke.is_set()
    assert uvm.uvmexp.free == 64


def test_unbusy_of_a_released_pageout_page_panics(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page(settled=False)
    pg.flags |= PG_RELEASED | PG_PAGEOUT
    uvm.uvmexp.paging += 1
    with pytest.raises(Panic, match="both RELEASED and PAGEOUT"):
        page_unbusy(uvm, pg)
    pg.flags &= ~(PG_RELEASED | PG_PAGEOUT)
    uvm.uvmexp.paging -= 1
    settle(uvm, pg)


async def test_page_unbusy_many_is_page_unbusy_of_each(
    uvm: Uvm, obj: UvmObject, new_page: NewPage
) -> None:
    plain, wanted, released = (new_page(settled=False) for _ in range(3))
    for pg in (plain, wanted, released):
        pg.flags &= ~PG_FAKE
        pageactivate(uvm, pg)
    released.flags |= PG_RELEASED
    woke = trio.Event()

    async def waiter() -> None:
        await pagewait(uvm, wanted, "many")
        woke.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await trio.testing.wait_all_tasks_blocked()
        page_unbusy_many(uvm, [plain, wanted, released])
    assert woke.is_set()
    assert not plain.flags & PG_BUSY
    assert not wanted.flags & (PG_BUSY | PG_WANTED)
    assert released.pqflags & PQ_FREE  # freed, as page_unbusy does
    assert plain not in uvm.owner_tags
    with pytest.raises(Panic, match="is not busy"):
        page_unbusy_many(uvm, [plain])
