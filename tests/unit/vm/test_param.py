"""Machine parameters: page-size validation, address rounding, and the ``Uvm`` constructor's
bad-input contract (issue 2, "Bad input")."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ubcfs.vm.param import (
    MAX_PAGE_SIZE,
    MIN_PAGE_SIZE,
    Prot,
    check_page_size,
    round_page,
    trunc_page,
)
from ubcfs.vm.uvm import Uvm

GOOD_PAGE_SIZES = [512, 1024, 2048, 4096, 8192, 16384, 32768, 65536]


@pytest.mark.parametrize("page_size", GOOD_PAGE_SIZES)
def test_check_page_size_returns_the_shift(page_size: int) -> None:
    assert 1 << check_page_size(page_size) == page_size


@pytest.mark.parametrize(
    "page_size",
    [0, 1, 256, 511, 513, 1000, 3072, 4095, 4097, 131072, -4096, True, 4096.0, "4096", None],
)
def test_check_page_size_rejects_and_names_the_value(page_size: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"page_size {page_size!r}")):
        check_page_size(page_size)


@pytest.mark.parametrize("page_size", GOOD_PAGE_SIZES)
def test_uvm_accepts_every_power_of_two_page_size(page_size: int) -> None:
    uvm = Uvm(64 * page_size, page_size=page_size)
    assert uvm.page_size == page_size
    assert 1 << uvm.page_shift == page_size
    assert uvm.page_mask == page_size - 1
    assert uvm.uvmexp.npages == len(uvm.pages) == 64
    assert uvm.uvmexp.free == 64


@pytest.mark.parametrize("page_size", [256, 1000, 4095, 131072, 3 * 4096])
def test_uvm_rejects_a_bad_page_size_naming_it(page_size: int) -> None:
    with pytest.raises(ValueError, match=rf"page_size {page_size}\b"):
        Uvm(64 * 131072, page_size=page_size)


@pytest.mark.parametrize("memory", [64 * 4096 + 1, 64 * 4096 + 512, 100 * 4096 - 2048])
def test_uvm_rejects_memory_not_a_multiple_of_the_page_size(memory: int) -> None:
    with pytest.raises(ValueError, match=rf"memory {memory}\b.*multiple"):
        Uvm(memory, page_size=4096)


@pytest.mark.parametrize(("npages", "page_size"), [(63, 4096), (1, 4096), (32, 512), (63, 65536)])
def test_uvm_rejects_fewer_than_64_pages_naming_the_memory(npages: int, page_size: int) -> None:
    memory = npages * page_size
    with pytest.raises(ValueError, match=rf"memory {memory}\b.*{npages} pages.*64"):
        Uvm(memory, page_size=page_size)


@pytest.mark.parametrize("memory", [0, -64 * 4096, True, 64 * 4096.0, "262144", None])
def test_uvm_rejects_memory_that_is_not_a_positive_int(memory: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"memory {memory!r}")):
        Uvm(memory, page_size=4096)


@pytest.mark.parametrize("pv_entries", [-1, True, 2.0])
def test_uvm_rejects_a_bad_pv_pool_size(pv_entries: object) -> None:
    with pytest.raises(ValueError, match=re.escape(f"pv_entries {pv_entries!r}")):
        Uvm(64 * 4096, pv_entries=pv_entries)


def test_uvm_defaults() -> None:
    uvm = Uvm(64 * 4096)
    assert uvm.page_size == 4096
    assert uvm.pv_total == uvm.pv_free == 2 * 64
    assert Uvm(64 * 4096, pv_entries=0).pv_free == 0


def test_exactly_64_pages_is_enough() -> None:
    assert Uvm(64 * 512, page_size=512).uvmexp.npages == 64


@given(
    x=st.integers(min_value=0, max_value=1 << 48),
    shift=st.integers(min_value=MIN_PAGE_SIZE.bit_length() - 1, max_value=16),
)
def test_trunc_and_round_page(x: int, shift: int) -> None:
    ps = 1 << shift
    lo, hi = trunc_page(x, ps), round_page(x, ps)
    assert lo % ps == 0
    assert hi % ps == 0
    assert lo <= x < lo + ps
    assert x <= hi < x + ps
    assert (lo == hi) == (x % ps == 0)


def test_page_size_bounds() -> None:
    assert (MIN_PAGE_SIZE, MAX_PAGE_SIZE) == (512, 65536)


def test_prot_bits() -> None:
    assert int(Prot.NONE) == 0
    assert Prot.RW == Prot.READ | Prot.WRITE
    assert Prot.ALL == Prot.READ | Prot.WRITE | Prot.EXECUTE
    assert Prot.READ & Prot.WRITE == Prot.NONE
