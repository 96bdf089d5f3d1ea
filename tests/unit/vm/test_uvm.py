"""The machine: construction, paging targets, helpers and registries."""

from __future__ import annotations

import pytest

from tests.vmtools import resident
from ubcfs.vm.diag import Panic
from ubcfs.vm.object import UvmObject, obj_destroy
from ubcfs.vm.pmap import pmap_create, pmap_destroy
from ubcfs.vm.uvm import Uvm


@pytest.mark.parametrize(
    ("npages", "page_size"), [(64, 4096), (64, 512), (1024, 4096), (4096, 4096), (64, 65536)]
)
def test_paging_targets_are_ordered_and_bounded(npages: int, page_size: int) -> None:
    uvm = Uvm(npages * page_size, page_size=page_size)
    e = uvm.uvmexp
    assert 0 < e.reserve_pagedaemon <= e.reserve_kernel < e.freemin < e.freetarg < npages
    # freemin is 5% of memory, clamped to 16 KiB .. 256 KiB worth of pages, above the reserve
    assert e.freemin == max(
        min(max(npages // 20, 16384 // page_size), 262144 // page_size), e.reserve_kernel + 1
    )
    assert e.wiredmax == npages // 3


def test_targets_of_a_64_page_machine() -> None:
    e = Uvm(64 * 4096).uvmexp
    assert (e.freemin, e.freetarg, e.wiredmax) == (6, 8, 21)


def test_phys_to_page_and_frame(uvm: Uvm) -> None:
    for i in (0, 1, 63):
        pg = uvm.pages[i]
        assert uvm.phys_to_page(pg.phys_addr) is pg
        assert uvm.phys_to_page(pg.phys_addr + 4095) is pg
    f = uvm.frame(uvm.pages[5])
    f[:2] = b"hi"
    assert bytes(uvm.physmem.view[5 * 4096 : 5 * 4096 + 2]) == b"hi"
    f[:2] = b"\0\0"


def test_repr(uvm: Uvm) -> None:
    assert repr(uvm) == "<Uvm 64x4096B free=64 active=0 inactive=0 wired=0>"


def test_registries_hold_pmaps_and_objects_until_destroyed(uvm: Uvm) -> None:
    pm = pmap_create(uvm, "gone")
    obj = UvmObject(uvm, "gone")
    assert pm in uvm.pmaps
    assert obj in uvm.objects
    pmap_destroy(pm)
    obj_destroy(obj)
    assert [p.name for p in uvm.pmaps] == ["kernel"]
    assert list(uvm.objects) == []


def test_destroying_an_object_with_pages_panics(uvm: Uvm) -> None:
    obj = UvmObject(uvm, "busy")
    resident(uvm, obj, 0)
    with pytest.raises(Panic, match=r"obj_destroy: .* still has pages"):
        obj_destroy(obj)
    assert obj in uvm.objects


@pytest.mark.broken_vm  # a closed machine has no frames left to audit
def test_close_releases_the_arena() -> None:
    uvm = Uvm(64 * 512, page_size=512)
    uvm.close()
    with pytest.raises(ValueError, match="released"):
        uvm.frame(uvm.pages[0])
