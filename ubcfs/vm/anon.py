"""Anonymous memory pages (~ uvm_anon.h, uvm_anon.c: uvm_analloc, uvm_anfree).

A ``VmAnon`` is one page of anonymous memory: at most one resident copy (``page``) and at
most one swap copy (``swslot``; 0 = none).  ``ref`` counts the amap slots that point at it
(``ubcfs.vm.amap``); the last unreference frees it with ``anfree``.

Locking (Thorpe's assertions, as owner checks): ``anfree`` requires ``ref == 0`` and the
anon *unlocked* (its caller dropped the lock with the last reference); the paths that look
at or change an anon's page or slot hold ``anon.lock`` around sections that do not sleep.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ubcfs.vm.diag import SimpleLock, panic
from ubcfs.vm.page import PG_BUSY, pagefree, pagewait
from ubcfs.vm.pmap import pmap_page_protect

if TYPE_CHECKING:
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.pager import SwapPager
    from ubcfs.vm.uvm import Uvm


class VmAnon:
    """One anonymous page (kernel: struct vm_anon).

    Attributes:
        ref: number of amap slots referencing it (kernel: an_ref).
        page: the resident page, or None (kernel: an_page).
        swslot: the swap slot holding a copy, or 0 (kernel: an_swslot).
        swap: the swap pager that gave ``swslot`` (so that dirtying the page, which knows
            no machine, can give the slot back), or None.
        lock: the anon lock.
    """

    __slots__ = ("lock", "page", "ref", "swap", "swslot")

    def __init__(self) -> None:
        self.ref = 1
        self.page: VmPage | None = None
        self.swslot = 0
        self.swap: SwapPager | None = None
        self.lock = SimpleLock("anon")

    def __repr__(self) -> str:
        return f"<VmAnon ref={self.ref} page={self.page!r} swslot={self.swslot}>"


def analloc() -> VmAnon:
    """A new anon with one reference and neither page nor slot (kernel: uvm_analloc)."""
    return VmAnon()


async def anfree(uvm: Uvm, anon: VmAnon) -> None:
    """Free an anon whose last reference is gone: its page and its swap slot (kernel:
    uvm_anfree).

    => ``anon.ref == 0`` and the anon is not locked (asserted).
    => may sleep: a busy page (under swap-out, or being read in) is waited for and never
       marked PG_RELEASED -- swap-backed pages cannot tell when a write into their slot is
       done (seed) -- and the slot is freed only after that.
    """
    if anon.ref != 0:
        panic(f"anfree: {anon!r} still has {anon.ref} reference(s)")
    if anon.lock.held:
        panic(f"anfree: {anon!r} is locked")
    while anon.page is not None and anon.page.flags & PG_BUSY:
        await pagewait(uvm, anon.page, "anfree")
    pg = anon.page
    exp = uvm.uvmexp
    if pg is not None:
        pmap_page_protect(uvm, pg, 0)
        pagefree(uvm, pg)  # clears anon.page
    elif anon.swslot > 0:
        exp.swpgonly -= 1  # its only copy was in swap
    if anon.swslot > 0 and uvm.swap is not None:
        uvm.swap.free(anon.swslot)
    anon.swslot = 0
    uvm.pdpolicy.anfree(anon)
