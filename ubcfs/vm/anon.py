"""Anonymous memory pages (~ uvm_anon.h, uvm_anon.c).

A ``VmAnon`` is one page of anonymous memory: at most one resident copy (``page``) and at
most one swap copy (``swslot``; 0 = none).  ``ref`` counts the amap slots that point at it.
The swap pager and the amap layer build on this record; the core only needs it as a page
owner.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ubcfs.vm.diag import SimpleLock

if TYPE_CHECKING:
    from ubcfs.vm.page import VmPage


class VmAnon:
    """One anonymous page (kernel: struct vm_anon).

    Attributes:
        ref: number of amap slots referencing it (kernel: an_ref).
        page: the resident page, or None (kernel: an_page).
        swslot: the swap slot holding a copy, or 0 (kernel: an_swslot).
        lock: the anon lock.
    """

    __slots__ = ("lock", "page", "ref", "swslot")

    def __init__(self) -> None:
        self.ref = 1
        self.page: VmPage | None = None
        self.swslot = 0
        self.lock = SimpleLock("anon")

    def __repr__(self) -> str:
        return f"<VmAnon ref={self.ref} page={self.page!r} swslot={self.swslot}>"
