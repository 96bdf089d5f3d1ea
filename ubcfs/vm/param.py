"""Machine-independent VM parameters and address arithmetic (~ uvm_param.h).

The page size is a property of each simulated machine (``Uvm.page_size``), not a module
constant, so that tests can build machines with 512-byte pages and benchmarks with 4 KiB ones.
The helpers below take the page mask or shift explicitly.
"""

from __future__ import annotations

import enum
from typing import Final, NewType, TypeGuard

VAddr = NewType("VAddr", int)  # a virtual address in some pmap
PAddr = NewType("PAddr", int)  # a physical address: byte offset into the physmem arena
VOff = NewType("VOff", int)  # a byte offset in an object

MIN_PAGE_SIZE: Final = 512
MAX_PAGE_SIZE: Final = 65536
MIN_PAGES: Final = 64


class Prot(enum.IntFlag):
    """Protection bits (kernel: VM_PROT_*).  An IntFlag: protections are compared, not tested
    on hot paths, and pmap entries store them as plain ints."""

    NONE = 0
    READ = 1
    WRITE = 2
    EXECUTE = 4
    # Literals, not READ | WRITE: mypyc miscompiles a member computed from other members.
    RW = 3  # READ | WRITE
    ALL = 7  # READ | WRITE | EXECUTE


def is_int(value: object) -> TypeGuard[int]:
    """A real integer (``bool`` is an int to Python, never to us)."""
    return isinstance(value, int) and not isinstance(value, bool)


def check_page_size(page_size: object) -> int:
    """Validate a page size and return its shift.

    Raises:
        ValueError: naming the value, unless it is a power of two from 512 to 65536.
    """
    if (
        not isinstance(page_size, int)
        or not is_int(page_size)
        or page_size < MIN_PAGE_SIZE
        or page_size > MAX_PAGE_SIZE
        or page_size & (page_size - 1)
    ):
        raise ValueError(
            f"page_size {page_size!r} is not a power of two from {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE}"
        )
    return page_size.bit_length() - 1


def trunc_page(x: int, page_size: int) -> int:
    """Round ``x`` down to a page boundary."""
    return x & ~(page_size - 1)


def round_page(x: int, page_size: int) -> int:
    """Round ``x`` up to a page boundary."""
    return (x + page_size - 1) & ~(page_size - 1)
