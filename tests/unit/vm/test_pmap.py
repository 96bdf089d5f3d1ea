"""pmap(9): managed and unmanaged mappings, pv lists, PMAP_CANFAIL, protection, wiring,
referenced/modified attributes, loads and stores, and deferred invalidation
(reference section 7; scenario 16)."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable

import pytest

from tests.vmtools import resident, small_uvm
from ubcfs.vm.diag import Panic
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import VmPage, pagefree
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    MD_MODIFIED,
    MD_REFERENCED,
    PMAP,
    PMAP_CANFAIL,
    PMAP_WIRED,
    PageFault,
    Pmap,
    load,
    pmap_clear_modify,
    pmap_clear_reference,
    pmap_copy_page,
    pmap_create,
    pmap_destroy,
    pmap_enter,
    pmap_extract,
    pmap_is_modified,
    pmap_is_referenced,
    pmap_kenter_pa,
    pmap_kenter_pages,
    pmap_kentered,
    pmap_kremove,
    pmap_page_protect,
    pmap_protect,
    pmap_remove,
    pmap_stale_refs,
    pmap_translate,
    pmap_unwire,
    pmap_update,
    pmap_zero_page,
    store,
)
from ubcfs.vm.uvm import Uvm

NewPage = Callable[..., VmPage]
PS = 4096
VA = 0x100000  # a page-aligned user address
KVA = 0x800000  # a page-aligned kernel address
R, W, RW, NONE = int(Prot.READ), int(Prot.WRITE), int(Prot.RW), int(Prot.NONE)


def rm_bits(pg: VmPage) -> tuple[bool, bool]:
    return pmap_is_referenced(pg), pmap_is_modified(pg)


def fault(fn: Callable[[], object]) -> PageFault:
    with pytest.raises(PageFault) as info:
        fn()
    return info.value


# --- creation and destruction -----------------------------------------------------------


def test_pmap_create_registers_and_destroy_tears_down(uvm: Uvm, new_page: NewPage) -> None:
    pm = pmap_create(uvm, "p")
    assert pm in uvm.pmaps
    assert not pm.is_kernel
    pg = new_page()
    pmap_enter(pm, VA, pg, RW, PMAP_WIRED)
    pmap_enter(pm, VA + PS, pg, R, 0)
    pmap_destroy(pm)
    assert pm not in uvm.pmaps
    assert pm.ptes == {}
    assert pm.stale == []
    assert (pm.resident_count, pm.wired_count) == (0, 0)
    assert pg.pvlist is None
    assert uvm.pv_free == uvm.pv_total
    assert pmap_stale_refs(uvm) == {}
    pagefree(uvm, pg)


def test_destroying_the_kernel_pmap_panics(uvm: Uvm) -> None:
    with pytest.raises(Panic, match="pmap_destroy: the kernel pmap"):
        pmap_destroy(uvm.kernel_pmap)
    assert uvm.kernel_pmap in uvm.pmaps


def test_the_kernel_pmap(uvm: Uvm) -> None:
    assert uvm.kernel_pmap.is_kernel
    assert uvm.kernel_pmap in uvm.pmaps


# --- pmap_enter -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prot", "access", "expected"),
    [
        (R, 0, (False, False)),
        (R, R, (True, False)),
        (RW, R, (True, False)),
        (RW, W, (True, True)),
        (RW, RW, (True, True)),
        (int(Prot.ALL), int(Prot.EXECUTE), (True, False)),
    ],
)
def test_pmap_enter_seeds_referenced_and_modified_from_the_access_type(
    uvm: Uvm,
    new_page: NewPage,
    pmaps: list[Pmap],
    prot: int,
    access: int,
    expected: tuple[bool, bool],
) -> None:
    pg = new_page()
    assert pmap_enter(pmaps[0], VA, pg, prot, access) == 0
    assert rm_bits(pg) == expected


def test_pmap_enter_makes_a_managed_mapping(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pg = new_page()
    pm = pmaps[0]
    before = uvm.uvmexp.pmap_enter
    assert pmap_enter(pm, VA, pg, RW, 0) == 0
    assert pmap_extract(pm, VA) == pg.phys_addr
    assert pmap_extract(pm, VA + 123) == pg.phys_addr + 123
    assert pmap_extract(pm, VA + PS) is None
    assert pg.pvlist is not None
    assert [(p.pmap, p.va, p.prot, p.wired) for p in pg.pvlist] == [(pm, VA, RW, False)]
    assert pg.pvlist[0] is pm.ptes[VA // PS]  # the pte is its own pv entry
    assert (pm.resident_count, pm.wired_count) == (1, 0)
    assert uvm.pv_free == uvm.pv_total - 1
    assert uvm.uvmexp.pmap_enter == before + 1


def test_one_page_mapped_in_several_pmaps_and_places(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    for i, pm in enumerate(pmaps):
        pmap_enter(pm, VA, pg, R, 0)
        pmap_enter(pm, VA + (i + 1) * PS, pg, RW, 0)
    assert pg.pvlist is not None
    assert len(pg.pvlist) == 6
    assert uvm.pv_free == uvm.pv_total - 6
    assert all(pm.resident_count == 2 for pm in pmaps)


def test_pmap_enter_wired(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pg = new_page()
    pmap_enter(pmaps[0], VA, pg, RW, W | PMAP_WIRED)
    assert (pmaps[0].resident_count, pmaps[0].wired_count) == (1, 1)
    assert pg.pvlist is not None
    assert pg.pvlist[0].wired
    assert rm_bits(pg) == (True, True)  # seeded, as software-R/M machines must when wired


def test_pmap_enter_replaces_a_mapping_of_another_page(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    old, new = new_page(), new_page()
    pm = pmaps[0]
    pmap_enter(pm, VA, old, RW, PMAP_WIRED)
    pmap_enter(pm, VA, new, R, 0)
    assert pmap_extract(pm, VA) == new.phys_addr
    assert old.pvlist is None
    assert new.pvlist is not None
    assert len(new.pvlist) == 1
    assert (pm.resident_count, pm.wired_count) == (1, 0)
    assert uvm.pv_free == uvm.pv_total - 1
    # The old translation is only invalidated at pmap_update.
    assert pmap_stale_refs(uvm) == {old.phys_addr: 1}
    pmap_update(pm)
    assert pmap_stale_refs(uvm) == {}


def test_pmap_enter_changes_protection_and_wiring_in_place(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    pm = pmaps[0]
    pmap_enter(pm, VA, pg, R, 0)
    pte = pm.ptes[VA // PS]
    pmap_enter(pm, VA, pg, RW, PMAP_WIRED)  # raise protection, wire
    assert pm.ptes[VA // PS] is pte
    assert (pte.prot, pte.wired) == (RW, True)
    assert (pm.resident_count, pm.wired_count) == (1, 1)
    assert pm.stale == []  # raising protection leaves nothing stale
    assert uvm.pv_free == uvm.pv_total - 1
    pmap_enter(pm, VA, pg, R, 0)  # lower protection, unwire
    assert (pte.prot, pte.wired) == (R, False)
    assert pm.wired_count == 0
    assert pg.pvlist == [pte]
    # The writable translation lingers until pmap_update.
    store(pm, VA, b"w")
    pmap_update(pm)
    assert fault(lambda: store(pm, VA, b"w")).protection


def test_pmap_enter_access_beyond_protection_panics(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    with pytest.raises(Panic, match="exceeds protection"):
        pmap_enter(pmaps[0], VA, pg, R, W)
    assert pmap_extract(pmaps[0], VA) is None
    assert rm_bits(pg) == (False, False)


@pytest.mark.parametrize("va", [VA + 1, VA + PS // 2, -PS])
def test_pmap_enter_unaligned_va_panics(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap], va: int
) -> None:
    pg = new_page()
    with pytest.raises(Panic, match="not page aligned"):
        pmap_enter(pmaps[0], va, pg, R, 0)
    assert pg.pvlist is None


def test_pmap_enter_over_a_kenter_mapping_panics(uvm: Uvm, new_page: NewPage) -> None:
    pg, other = new_page(), new_page()
    kp = uvm.kernel_pmap
    pmap_kenter_pa(kp, KVA, pg.phys_addr, RW)
    with pytest.raises(Panic, match="replacing kenter mapping"):
        pmap_enter(kp, KVA, other, R, 0)
    assert pmap_extract(kp, KVA) == pg.phys_addr
    pmap_kremove(kp, KVA, PS)
    pmap_update(kp)


def test_managed_mappings_in_the_kernel_pmap(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page()
    kp = uvm.kernel_pmap
    assert pmap_enter(kp, KVA, pg, RW, 0) == 0
    store(kp, KVA, b"k")
    assert rm_bits(pg) == (True, True)
    pmap_remove(kp, KVA, KVA + PS)
    pmap_update(kp)


# --- PMAP_CANFAIL and the pv pool -------------------------------------------------------


@pytest.fixture
def tiny() -> tuple[Uvm, UvmObject, list[Pmap]]:
    """A machine with a pool of two pv entries."""
    uvm = small_uvm(pv_entries=2)
    return uvm, UvmObject(uvm, "tiny"), [pmap_create(uvm, "a"), pmap_create(uvm, "b")]


def test_canfail_returns_enomem_when_the_pv_pool_is_empty(
    tiny: tuple[Uvm, UvmObject, list[Pmap]],
) -> None:
    uvm, obj, (a, b) = tiny
    pg = resident(uvm, obj, 0)
    assert pmap_enter(a, VA, pg, R, PMAP_CANFAIL) == 0
    assert pmap_enter(b, VA, pg, R, PMAP_CANFAIL) == 0
    assert uvm.pv_free == 0
    assert pmap_enter(a, VA + PS, pg, RW, W | PMAP_CANFAIL) == errno.ENOMEM
    assert pmap_extract(a, VA + PS) is None
    assert a.resident_count == 1
    assert uvm.uvmexp.pmap_enter_fail == 1
    assert uvm.uvmexp.canfail_retries == 0  # counted by whoever retries, not the pmap
    assert not pmap_is_modified(pg)  # a failed enter seeds nothing
    # Freeing one entry makes room again.
    pmap_remove(b, VA, VA + PS)
    pmap_update(b)
    assert pmap_enter(a, VA + PS, pg, RW, PMAP_CANFAIL) == 0


def test_without_canfail_pv_exhaustion_panics(tiny: tuple[Uvm, UvmObject, list[Pmap]]) -> None:
    uvm, obj, (a, b) = tiny
    pg = resident(uvm, obj, 0)
    pmap_enter(a, VA, pg, R, 0)
    pmap_enter(b, VA, pg, R, 0)
    with pytest.raises(Panic, match="out of pv entries"):
        pmap_enter(a, VA + PS, pg, R, 0)
    assert pmap_extract(a, VA + PS) is None
    assert uvm.pv_free == 0


def test_with_an_empty_pool_replacing_and_reprotecting_still_work(
    tiny: tuple[Uvm, UvmObject, list[Pmap]],
) -> None:
    uvm, obj, (a, b) = tiny
    p1, p2 = resident(uvm, obj, 0), resident(uvm, obj, PS)
    pmap_enter(a, VA, p1, RW, 0)
    pmap_enter(b, VA, p1, RW, 0)
    assert pmap_enter(a, VA, p1, R, 0) == 0  # same page: no new pv entry needed
    assert pmap_enter(a, VA, p2, R, 0) == 0  # the old entry is recycled
    assert pmap_extract(a, VA) == p2.phys_addr
    assert uvm.pv_free == 0
    pmap_update(a)


def test_a_zero_pv_pool_fails_every_canfail_enter() -> None:
    uvm = small_uvm(pv_entries=0)
    pg = resident(uvm, UvmObject(uvm, "o"), 0)
    pm = pmap_create(uvm, "p")
    assert pmap_enter(pm, VA, pg, R, PMAP_CANFAIL) == errno.ENOMEM
    assert pm.ptes == {}


# --- pmap_remove ------------------------------------------------------------------------


def test_pmap_remove_removes_the_range_wired_or_not(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pm, other = pmaps[0], pmaps[1]
    pages = [new_page() for _ in range(4)]
    for i, pg in enumerate(pages):
        pmap_enter(pm, VA + i * PS, pg, RW, PMAP_WIRED if i % 2 else 0)
    pmap_enter(other, VA + PS, pages[1], R, 0)
    before = uvm.uvmexp.pmap_remove
    pmap_remove(pm, VA + PS, VA + 3 * PS)  # [VA+PS, VA+3PS): pages 1 and 2
    assert uvm.uvmexp.pmap_remove == before + 1
    assert [pmap_extract(pm, VA + i * PS) is not None for i in range(4)] == [
        True,
        False,
        False,
        True,
    ]
    assert (pm.resident_count, pm.wired_count) == (2, 1)
    assert pages[2].pvlist is None
    assert pages[1].pvlist is not None
    assert [p.pmap for p in pages[1].pvlist] == [other]  # other pmaps untouched
    assert uvm.pv_free == uvm.pv_total - 3
    pmap_update(pm)


def test_pmap_remove_rounds_the_end_up_and_ignores_holes(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    pm = pmaps[0]
    pmap_enter(pm, VA + 2 * PS, pg, R, 0)
    pmap_remove(pm, VA, VA + 2 * PS + 1)
    assert pmap_extract(pm, VA + 2 * PS) is None
    pmap_remove(pm, VA, VA + 100 * PS)  # nothing left: fine
    pmap_update(pm)


def test_pmap_remove_of_a_huge_range_of_a_small_pmap(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    pm = pmaps[0]
    pmap_enter(pm, VA, pg, R, 0)
    pmap_enter(pm, 1 << 40, pg, R, 0)
    pmap_remove(pm, 0, 1 << 60)  # must cost the table, not the range
    assert pm.ptes == {}
    pmap_update(pm)


def test_pmap_remove_unaligned_start_panics(uvm: Uvm, pmaps: list[Pmap]) -> None:
    with pytest.raises(Panic, match=r"pmap_remove: va .* not page aligned"):
        pmap_remove(pmaps[0], VA + 7, VA + PS)


@pytest.mark.parametrize(
    "unmap",
    [
        lambda kp: pmap_remove(kp, KVA, KVA + PS),
        lambda kp: pmap_protect(kp, KVA, KVA + PS, NONE),
    ],
    ids=["pmap_remove", "pmap_protect-NONE"],
)
def test_pmap_remove_over_a_kenter_mapping_panics_and_leaves_it_alone(
    uvm: Uvm, new_page: NewPage, unmap: Callable[[Pmap], None]
) -> None:
    # kenter mappings are removed only with pmap_kremove.  The refusal must come before
    # any change: afterwards the mapping and its bookkeeping are intact.
    pg = new_page()
    kp = uvm.kernel_pmap
    pmap_kenter_pa(kp, KVA, pg.phys_addr, RW)
    with pytest.raises(Panic, match="kenter mapping"):
        unmap(kp)
    assert pmap_extract(kp, KVA) == pg.phys_addr
    assert (kp.resident_count, kp.wired_count) == (len(kp.ptes), len(kp.ptes))
    assert pmap_kentered(uvm) == {pg.phys_addr: 1}
    pmap_kremove(kp, KVA, PS)
    pmap_update(kp)


# --- pmap_protect -----------------------------------------------------------------------


def test_pmap_protect_lowers_protection_in_the_range(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pm = pmaps[0]
    a, b = new_page(), new_page()
    pmap_enter(pm, VA, a, RW, 0)
    pmap_enter(pm, VA + PS, b, RW, PMAP_WIRED)
    pmap_protect(pm, VA, VA + 2 * PS, R)
    assert [pm.ptes[VA // PS + i].prot for i in range(2)] == [R, R]
    assert pm.ptes[VA // PS + 1].wired  # wiring untouched
    store(pm, VA, b"x")  # the old writable translation is still in the TLB
    pmap_update(pm)
    f = fault(lambda: store(pm, VA, b"x"))
    assert (f.va, f.access, f.protection) == (VA, Prot.WRITE, True)
    assert load(pm, VA, 1) == b"x"


def test_pmap_protect_never_raises(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pm = pmaps[0]
    pg = new_page()
    pmap_enter(pm, VA, pg, R, 0)
    pmap_protect(pm, VA, VA + PS, RW)
    assert pm.ptes[VA // PS].prot == R
    assert pm.stale == []


@pytest.mark.parametrize("prot", [NONE, int(Prot.EXECUTE), W])
def test_pmap_protect_without_read_removes(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap], prot: int
) -> None:
    pm = pmaps[0]
    pg = new_page()
    pmap_enter(pm, VA, pg, RW, PMAP_WIRED)
    pmap_protect(pm, VA, VA + PS, prot)
    assert pmap_extract(pm, VA) is None
    assert pg.pvlist is None
    assert (pm.resident_count, pm.wired_count) == (0, 0)
    pmap_update(pm)


def test_pmap_protect_leaves_kenter_mappings_alone(uvm: Uvm, new_page: NewPage) -> None:
    kp = uvm.kernel_pmap
    pg = new_page()
    pmap_kenter_pa(kp, KVA, pg.phys_addr, RW)
    pmap_protect(kp, KVA, KVA + PS, R)
    assert kp.ptes[KVA // PS].prot == RW
    store(kp, KVA, b"still writable")
    pmap_kremove(kp, KVA, PS)
    pmap_update(kp)


# --- pmap_page_protect ------------------------------------------------------------------


def test_page_protect_read_write_protects_every_mapping(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    for i, pm in enumerate(pmaps):
        pmap_enter(pm, VA, pg, RW, PMAP_WIRED if i == 0 else 0)
    kp = uvm.kernel_pmap
    pmap_kenter_pa(kp, KVA, pg.phys_addr, RW)
    pmap_page_protect(uvm, pg, R)
    assert pg.pvlist is not None
    assert [pte.prot for pte in pg.pvlist] == [R, R, R]
    assert pmaps[0].wired_count == 1  # wiring kept
    for pm in pmaps:  # takes effect at once: no pmap_update needed
        assert fault(functools.partial(store, pm, VA, b"x")).protection
        assert load(pm, VA, 1) == b"\0"
    store(kp, KVA, b"k")  # kenter mapping unaffected
    assert kp.ptes[KVA // PS].prot == RW
    assert uvm.pv_free == uvm.pv_total - 3
    pmap_kremove(kp, KVA, PS)
    pmap_update(kp)


def test_page_protect_none_removes_every_mapping_wired_included(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg, other = new_page(), new_page()
    for pm in pmaps:
        pmap_enter(pm, VA, pg, RW, PMAP_WIRED)
        pmap_enter(pm, VA + PS, pg, R, 0)
        pmap_enter(pm, VA + 2 * PS, other, R, 0)
    kp = uvm.kernel_pmap
    pmap_kenter_pa(kp, KVA, pg.phys_addr, R)
    before = uvm.uvmexp.pmap_wired_removed
    pmap_page_protect(uvm, pg, NONE)
    assert pg.pvlist is None
    for pm in pmaps:
        assert pmap_extract(pm, VA) is None
        assert pmap_extract(pm, VA + PS) is None
        assert pmap_extract(pm, VA + 2 * PS) == other.phys_addr
        assert (pm.resident_count, pm.wired_count) == (1, 0)
        assert fault(functools.partial(load, pm, VA, 1)).protection is False  # at once
    assert uvm.uvmexp.pmap_wired_removed == before + 3
    assert uvm.pv_free == uvm.pv_total - 3
    assert pmap_extract(kp, KVA) == pg.phys_addr  # kenter mapping unaffected
    assert pmap_stale_refs(uvm) == {}
    pmap_kremove(kp, KVA, PS)
    pmap_update(kp)
    pagefree(uvm, pg)


def test_page_protect_never_raises_and_ignores_unmapped_pages(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg, unmapped = new_page(), new_page()
    pmap_enter(pmaps[0], VA, pg, R, 0)
    pmap_page_protect(uvm, pg, RW)
    assert pmaps[0].ptes[VA // PS].prot == R
    count = uvm.uvmexp.pmap_page_protect
    pmap_page_protect(uvm, unmapped, NONE)
    assert uvm.uvmexp.pmap_page_protect == count
    pmap_page_protect(uvm, pg, NONE)
    assert uvm.uvmexp.pmap_page_protect == count + 1


# --- pmap_unwire ------------------------------------------------------------------------


def test_pmap_unwire(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pm = pmaps[0]
    pg = new_page()
    pmap_enter(pm, VA, pg, RW, PMAP_WIRED)
    pmap_unwire(pm, VA)
    assert not pm.ptes[VA // PS].wired
    assert (pm.resident_count, pm.wired_count) == (1, 0)
    with pytest.raises(Panic, match="is not wired"):
        pmap_unwire(pm, VA)
    with pytest.raises(Panic, match="no mapping at"):
        pmap_unwire(pm, VA + PS)
    kp = uvm.kernel_pmap
    pmap_kenter_pa(kp, KVA, pg.phys_addr, R)
    with pytest.raises(Panic, match="is a kenter mapping"):
        pmap_unwire(kp, KVA)
    assert kp.ptes[KVA // PS].wired
    pmap_kremove(kp, KVA, PS)
    pmap_update(kp)


# --- pmap_kenter_pa / pmap_kremove ------------------------------------------------------


def test_kenter_is_unmanaged_wired_and_untracked(uvm: Uvm, new_page: NewPage) -> None:
    kp = uvm.kernel_pmap
    pg = new_page()
    pmap_clear_reference(pg)
    pmap_kenter_pa(kp, KVA, pg.phys_addr, RW)
    assert pg.pvlist is None
    assert uvm.pv_free == uvm.pv_total
    assert pmap_kentered(uvm) == {pg.phys_addr: 1}
    assert (kp.resident_count, kp.wired_count) == (1, 1)
    assert kp.ptes[KVA // PS].pg is None
    assert pmap_extract(kp, KVA + 9) == pg.phys_addr + 9
    store(kp, KVA, b"kernel")
    assert load(kp, KVA, 6) == b"kernel"
    assert rm_bits(pg) == (False, False)  # no referenced/modified tracking
    assert uvm.uvmexp.pmap_kenter == 1
    pmap_kremove(kp, KVA, PS)
    assert pmap_extract(kp, KVA) is None
    assert (kp.resident_count, kp.wired_count) == (0, 0)
    assert pmap_kentered(uvm) == {}
    assert uvm.uvmexp.pmap_kremove == 1
    assert load(kp, KVA, 6) == b"kernel"  # stale until pmap_update
    pmap_update(kp)
    assert fault(lambda: load(kp, KVA, 1)).protection is False


def test_kenter_and_kremove_only_in_the_kernel_pmap(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    with pytest.raises(Panic, match="pmap_kenter_pa: not the kernel pmap"):
        pmap_kenter_pa(pmaps[0], VA, pg.phys_addr, R)
    with pytest.raises(Panic, match="pmap_kremove: not the kernel pmap"):
        pmap_kremove(pmaps[0], VA, PS)
    assert pmaps[0].ptes == {}


@pytest.mark.parametrize("pa", [1, PS + 100, 64 * PS, -PS])
def test_kenter_of_a_bad_physical_address_panics(uvm: Uvm, pa: int) -> None:
    with pytest.raises(Panic, match="bad physical address"):
        pmap_kenter_pa(uvm.kernel_pmap, KVA, pa, R)
    assert uvm.kernel_pmap.ptes == {}


def test_kenter_replaces_a_kenter_mapping(uvm: Uvm, new_page: NewPage) -> None:
    kp = uvm.kernel_pmap
    a, b = new_page(), new_page()
    pmap_kenter_pa(kp, KVA, a.phys_addr, R)
    pmap_kenter_pa(kp, KVA, b.phys_addr, R)
    assert pmap_extract(kp, KVA) == b.phys_addr
    assert pmap_kentered(uvm) == {b.phys_addr: 1}
    assert (kp.resident_count, kp.wired_count) == (1, 1)
    assert pmap_stale_refs(uvm) == {a.phys_addr: 1}
    pmap_kremove(kp, KVA, PS)
    pmap_update(kp)


def test_kenter_over_a_managed_mapping_and_kremove_of_one_panic(
    uvm: Uvm, new_page: NewPage
) -> None:
    kp = uvm.kernel_pmap
    pg = new_page()
    pmap_enter(kp, KVA, pg, R, 0)
    with pytest.raises(Panic, match="holds managed mapping"):
        pmap_kenter_pa(kp, KVA, pg.phys_addr, R)
    with pytest.raises(Panic, match="is a managed mapping"):
        pmap_kremove(kp, KVA, PS)
    assert pmap_extract(kp, KVA) == pg.phys_addr
    assert pg.pvlist is not None
    pmap_remove(kp, KVA, KVA + PS)
    pmap_update(kp)


def test_kremove_range(uvm: Uvm, new_page: NewPage) -> None:
    kp = uvm.kernel_pmap
    pages = [new_page() for _ in range(4)]
    for i, pg in enumerate(pages):
        pmap_kenter_pa(kp, KVA + i * PS, pg.phys_addr, RW)
    pmap_kremove(kp, KVA + PS, 2 * PS)
    assert [pmap_extract(kp, KVA + i * PS) is not None for i in range(4)] == [
        True,
        False,
        False,
        True,
    ]
    assert pmap_kentered(uvm) == {pages[0].phys_addr: 1, pages[3].phys_addr: 1}
    pmap_kremove(kp, KVA, 4 * PS)
    pmap_update(kp)
    assert kp.ptes == {}


def test_kenter_pages_is_kenter_pa_of_each_frame(uvm: Uvm, new_page: NewPage) -> None:
    kp = uvm.kernel_pmap
    pages = [new_page() for _ in range(3)]
    pmap_kenter_pa(kp, KVA + PS, new_page().phys_addr, R)  # replaced, as kenter_pa would
    pmap_kenter_pages(kp, KVA, [pg.phys_addr for pg in pages], RW)
    assert [pmap_extract(kp, KVA + i * PS) for i in range(3)] == [pg.phys_addr for pg in pages]
    assert pmap_kentered(uvm) == {pg.phys_addr: 1 for pg in pages}
    assert kp.resident_count == kp.wired_count == 3
    store(kp, KVA + 2 * PS, b"k")
    assert not pages[2].mdattrs  # unmanaged: no referenced/modified bits
    with pytest.raises(Panic, match="bad physical address"):
        pmap_kenter_pages(kp, KVA + 8 * PS, [1], R)
    pmap_kremove(kp, KVA, 3 * PS)
    pmap_update(kp)
    assert kp.ptes == {}
    assert kp.resident_count == 0


# --- attributes -------------------------------------------------------------------------


def test_referenced_and_modified_are_page_attributes(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    pm = pmaps[0]
    pmap_enter(pm, VA, pg, RW, 0)
    assert rm_bits(pg) == (False, False)
    load(pm, VA, 1)
    assert rm_bits(pg) == (True, False)
    store(pm, VA, b"m")
    assert rm_bits(pg) == (True, True)
    # They survive the removal of every mapping.
    pmap_page_protect(uvm, pg, NONE)
    assert rm_bits(pg) == (True, True)
    assert pmap_clear_reference(pg) is True
    assert pmap_clear_reference(pg) is False
    assert rm_bits(pg) == (False, True)
    assert pmap_clear_modify(pg) is True
    assert pmap_clear_modify(pg) is False
    assert rm_bits(pg) == (False, False)
    assert pg.mdattrs & (MD_REFERENCED | MD_MODIFIED) == 0


def test_a_new_page_starts_with_clear_attributes(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    pmap_enter(pmaps[0], VA, pg, RW, RW)
    pmap_page_protect(uvm, pg, NONE)
    pagefree(uvm, pg)
    again = new_page()
    assert again is pg
    assert rm_bits(again) == (False, False)


# --- pmap_update and deferred invalidation ----------------------------------------------


def test_pmap_update_flushes_and_counts(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pm = pmaps[0]
    a, b = new_page(), new_page()
    pmap_enter(pm, VA, a, RW, 0)
    pmap_enter(pm, VA + PS, b, RW, 0)
    pmap_enter(pmaps[1], VA, a, RW, 0)
    pmap_remove(pm, VA, VA + 2 * PS)
    pmap_remove(pmaps[1], VA, VA + PS)
    assert pmap_stale_refs(uvm) == {a.phys_addr: 2, b.phys_addr: 1}
    exp = uvm.uvmexp
    updates, inval = exp.pmap_update, exp.pmap_invalidations
    pmap_update(pm)
    assert pm.stale == []
    assert pmap_stale_refs(uvm) == {a.phys_addr: 1}  # the other pmap's stays until its update
    assert (exp.pmap_update, exp.pmap_invalidations) == (updates + 1, inval + 2)
    pmap_update(pm)  # nothing deferred: counted, but no invalidation
    assert (exp.pmap_update, exp.pmap_invalidations) == (updates + 2, inval + 2)
    pmap_update(pmaps[1])
    assert pmap_stale_refs(uvm) == {}


def test_scenario_16_missing_pmap_update(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    """Reference scenario 16: a removed mapping stays usable until pmap_update."""
    pm = pmaps[0]
    pg = new_page()
    pmap_enter(pm, VA, pg, RW, W)
    store(pm, VA, b"before")
    pmap_remove(pm, VA, VA + PS)
    assert pmap_extract(pm, VA) is None  # gone from the table ...
    hits = uvm.uvmexp.pmap_stale_hits
    assert load(pm, VA, 6) == b"before"  # ... but the TLB still has it
    pmap_clear_modify(pg)
    store(pm, VA, b"during")  # and it still sets the page's modified bit
    assert pmap_is_modified(pg)
    assert uvm.uvmexp.pmap_stale_hits == hits + 2
    assert bytes(uvm.frame(pg)[:6]) == b"during"
    pmap_update(pm)
    f = fault(lambda: load(pm, VA, 6))
    assert (f.va, f.access, f.protection) == (VA, Prot.READ, False)
    pagefree(uvm, pg)


def test_a_stale_translation_never_outranks_a_current_one(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pm = pmaps[0]
    old, new = new_page(), new_page()
    uvm.frame(old)[:3] = b"old"
    uvm.frame(new)[:3] = b"new"
    pmap_enter(pm, VA, old, RW, 0)
    pmap_enter(pm, VA, new, RW, 0)
    assert load(pm, VA, 3) == b"new"
    pmap_update(pm)


# --- load / store -----------------------------------------------------------------------


def test_store_and_load_share_the_frame_between_pmaps(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    pmap_enter(pmaps[0], VA, pg, RW, 0)
    pmap_enter(pmaps[1], 0x3000, pg, R, 0)
    store(pmaps[0], VA + 100, b"shared bytes")
    assert load(pmaps[1], 0x3000 + 100, 12) == b"shared bytes"
    assert bytes(uvm.frame(pg)[100:112]) == b"shared bytes"
    data = bytes(range(256)) * (PS // 256)
    store(pmaps[0], VA, data)
    assert load(pmaps[1], 0x3000, PS) == data
    assert load(pmaps[0], VA, 0) == b""


def test_accesses_cross_page_boundaries(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pm = pmaps[0]
    a, b = new_page(), new_page()
    pmap_enter(pm, VA, a, RW, 0)
    pmap_enter(pm, VA + PS, b, RW, 0)
    store(pm, VA + PS - 3, bytearray(b"abcdef"))
    assert bytes(uvm.frame(a)[-3:]) == b"abc"
    assert bytes(uvm.frame(b)[:3]) == b"def"
    assert load(pm, VA + PS - 3, 6) == b"abcdef"
    assert rm_bits(a) == rm_bits(b) == (True, True)


def test_a_store_that_faults_part_way_keeps_the_earlier_pages(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pm = pmaps[0]
    a, b = new_page(), new_page()
    pmap_enter(pm, VA, a, RW, 0)
    pmap_enter(pm, VA + PS, b, R, 0)
    f = fault(lambda: store(pm, VA + PS - 2, memoryview(b"wxyz")))
    assert (f.va, f.access, f.protection) == (VA + PS, Prot.WRITE, True)
    assert bytes(uvm.frame(a)[-2:]) == b"wx"
    assert bytes(uvm.frame(b)[:2]) != b"yz"
    assert not pmap_is_modified(b)


def test_faults_report_missing_mappings_and_protection(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pm = pmaps[0]
    pg = new_page()
    f = fault(lambda: load(pm, VA + 5, 1))
    assert (f.va, f.access, f.protection) == (VA + 5, Prot.READ, False)
    assert "no mapping" in str(f)
    f = fault(lambda: store(pm, VA, b"x"))
    assert (f.access, f.protection) == (Prot.WRITE, False)
    pmap_enter(pm, VA, pg, R, 0)
    pmap_clear_reference(pg)
    f = fault(lambda: store(pm, VA + 1, b"x"))
    assert (f.va, f.access, f.protection) == (VA + 1, Prot.WRITE, True)
    assert "protection" in str(f)
    assert rm_bits(pg) == (False, False)  # a faulting access sets nothing
    pmap_enter(pm, VA + PS, pg, int(Prot.EXECUTE), 0)
    assert fault(lambda: load(pm, VA + PS, 1)).protection


def test_pmap_translate_sets_attributes(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    pg = new_page()
    pmap_enter(pmaps[0], VA, pg, RW, 0)
    assert pmap_translate(pmaps[0], VA + 7, False) == pg.phys_addr + 7
    assert rm_bits(pg) == (True, False)
    assert pmap_translate(pmaps[0], VA + 8, True) == pg.phys_addr + 8
    assert rm_bits(pg) == (True, True)


# --- page contents ----------------------------------------------------------------------


def test_pmap_zero_page_and_copy_page(uvm: Uvm, new_page: NewPage) -> None:
    a, b = new_page(), new_page()
    uvm.frame(a)[:] = b"\x5a" * PS
    pmap_copy_page(uvm, a.phys_addr, b.phys_addr)
    assert bytes(uvm.frame(b)) == b"\x5a" * PS
    pmap_zero_page(uvm, a.phys_addr)
    assert bytes(uvm.frame(a)) == bytes(PS)
    assert bytes(uvm.frame(b)) == b"\x5a" * PS


def test_pmap_flag_enum() -> None:
    assert PMAP.WIRED.value == PMAP_WIRED
    assert PMAP.CANFAIL.value == PMAP_CANFAIL
    assert PMAP.READ.value == Prot.READ
    assert PMAP_WIRED & int(Prot.ALL) == PMAP_CANFAIL & int(Prot.ALL) == 0
