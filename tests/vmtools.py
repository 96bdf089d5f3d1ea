"""Helpers shared by the VM tests: build machines, allocate and settle pages, unmap and free.

Plain functions (not fixtures) so that the hypothesis state machines can use them too.
"""

from __future__ import annotations

from ubcfs.vm.anon import VmAnon
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import (
    PG_FAKE,
    VmPage,
    page_unbusy,
    pageactivate,
    pagealloc,
    pagefree,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pdpolicy_clock import ClockPolicy
from ubcfs.vm.pmap import Pmap, pmap_kremove, pmap_page_protect, pmap_update
from ubcfs.vm.uvm import Uvm

SMALL_PAGES = 64  # the smallest machine the core accepts


def clock_queues(uvm: Uvm) -> ClockPolicy:
    """The clock policy of ``uvm`` (the default), whose active and inactive queues tests
    look at."""
    policy = uvm.pdpolicy
    assert isinstance(policy, ClockPolicy), policy
    return policy


def small_uvm(page_size: int = 4096, pv_entries: int | None = None) -> Uvm:
    """A machine of 64 frames."""
    return Uvm(SMALL_PAGES * page_size, page_size=page_size, pv_entries=pv_entries)


def alloc(uvm: Uvm, obj: UvmObject, offset: int, flags: int = 0) -> VmPage:
    """Allocate a page of ``obj`` at ``offset`` with the object locked; it must succeed."""
    with obj.vmobjlock:
        pg = pagealloc(uvm, obj, offset, flags=flags)
    assert pg is not None, f"pagealloc({obj.name}@{offset:#x}) failed"
    return pg


def alloc_anon(uvm: Uvm, flags: int = 0) -> tuple[VmAnon, VmPage]:
    """Allocate a page for a new anon, with the anon locked; it must succeed."""
    anon = VmAnon()
    with anon.lock:
        pg = pagealloc(uvm, None, 0, anon=anon, flags=flags)
    assert pg is not None, "pagealloc(anon) failed"
    return anon, pg


def settle(uvm: Uvm, pg: VmPage) -> VmPage:
    """Finish a fresh page as a filler would: contents valid, unbusied, activated."""
    pg.flags &= ~PG_FAKE
    page_unbusy(uvm, pg)
    pageactivate(uvm, pg)
    return pg


def resident(uvm: Uvm, obj: UvmObject, offset: int, flags: int = 0) -> VmPage:
    """An allocated, valid, unbusy page on the active queue."""
    return settle(uvm, alloc(uvm, obj, offset, flags))


def unmap_and_free(uvm: Uvm, pg: VmPage, *flush: Pmap) -> None:
    """Free ``pg`` the way a correct caller does: remove every managed mapping, flush the
    given pmaps' deferred invalidations, then free."""
    pmap_page_protect(uvm, pg, Prot.NONE)
    for pmap in flush:
        pmap_update(pmap)
    pagefree(uvm, pg)


def kremove_all(uvm: Uvm) -> None:
    """Remove every kenter mapping of the kernel pmap and flush it."""
    kp = uvm.kernel_pmap
    for vpn in [v for v, pte in kp.ptes.items() if pte.pg is None]:
        pmap_kremove(kp, vpn << uvm.page_shift, uvm.page_size)
    pmap_update(kp)
