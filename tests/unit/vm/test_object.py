"""Memory objects: O(1) page tables and range walks (~ uvm_object)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tests.vmtools import resident
from ubcfs.vm.object import UvmObject
from ubcfs.vm.uvm import Uvm

PS = 512


def test_a_new_object(uvm: Uvm) -> None:
    obj = UvmObject(uvm, "file")
    assert (obj.name, obj.npages, obj.refs, obj.is_aobj, obj.pgops) == ("file", 0, 1, False, None)
    assert obj in uvm.objects
    assert repr(obj) == "<UvmObject file npages=0 refs=1>"
    assert not obj.vmobjlock.held


@given(
    present=st.sets(st.integers(min_value=0, max_value=40), max_size=40),
    start=st.integers(min_value=0, max_value=50 * PS),
    length=st.integers(min_value=0, max_value=50 * PS),
)
def test_pages_in_range_is_the_sorted_filter(present: set[int], start: int, length: int) -> None:
    uvm = Uvm(64 * PS, page_size=PS)
    obj = UvmObject(uvm, "o")
    for i in sorted(present):
        resident(uvm, obj, i * PS)
    end = start + length
    got = obj.pages_in_range(start, end)
    want = [obj.pages[o] for o in sorted(obj.pages) if start <= o < end]
    assert got == want


def test_pages_in_range_of_a_huge_range_costs_the_resident_set() -> None:
    uvm = Uvm(64 * PS, page_size=PS)
    obj = UvmObject(uvm, "sparse")
    pages = [resident(uvm, obj, off) for off in (0, 7 * PS, 1 << 50)]
    assert obj.pages_in_range(0, 1 << 62) == pages
    assert obj.pages_in_range(PS, 1 << 62) == pages[1:]
