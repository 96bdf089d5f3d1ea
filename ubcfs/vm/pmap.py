"""The simulated pmap: translation tables, pv lists, referenced/modified attributes, wired
mappings and deferred invalidation (~ pmap(9), uvm_pmap.h, sys/arch/*/pmap.c).

Theory of operation
-------------------
A ``Pmap`` is one address space's translation table: virtual page number -> ``Pte``.  A
*managed* mapping (``pmap_enter``) maps a ``VmPage`` and is also entered on that page's pv
list, so that ``pmap_page_protect`` and the attribute calls can find every mapping of a
frame.  The ``Pte`` object is its own pv entry: the page's ``pvlist`` holds the very Pte
objects that the pmaps hold, and the DIAGNOSTIC audit checks both directions.  An
*unmanaged* mapping (``pmap_kenter_pa``, kernel pmap only) maps a physical address, is always
wired, has no pv entry and no attribute tracking, and is removed only by ``pmap_kremove``.

pv entries come from a finite pool (``Uvm.pv_free``).  ``pmap_enter`` with ``PMAP_CANFAIL``
returns ``ENOMEM`` (the kernel's KERN_RESOURCE_SHORTAGE) when the pool is empty; without it
that is a panic, as in a real pmap.  The fault path retries after the pagedaemon runs.

Referenced/modified are attributes of the page, not of a mapping: every access the
simulation makes through a managed mapping (``pmap_translate``, used by ``load``/``store``
and by the UBC copies) sets them, and they survive removal of the mappings.  Accesses through
kenter mappings set neither, so code that writes that way clears PG_CLEAN itself.

Deferred invalidation (``pmap_update``).  ``pmap_remove``, ``pmap_protect``,
``pmap_kremove`` and a replacing ``pmap_enter`` leave the old translation in the pmap's
*stale* set: until ``pmap_update`` it stands for a TLB entry that may still be used.  An
access that the current table does not allow falls back to a stale translation that does,
exactly as a stale TLB entry would let it through; and freeing a page that a stale
translation still reaches is a panic.  A missing ``pmap_update`` therefore shows up in tests
instead of silently working.  ``pmap_page_protect`` acts at once (it is not one of the calls
the seed made deferrable).
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Final

from ubcfs.vm.diag import panic
from ubcfs.vm.param import Prot

if TYPE_CHECKING:
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.uvm import Uvm

# Page attributes kept by the pmap (kernel: PG_REFERENCED/PG_MODIFIED in the mdpage).
MD_REFERENCED: Final = 0x1
MD_MODIFIED: Final = 0x2


class PMAP(enum.Flag):
    """pmap_enter flags (kernel: PMAP_*); the low bits carry the access type (Prot)."""

    NONE = 0
    READ = Prot.READ.value  # access type that caused the mapping
    WRITE = Prot.WRITE.value
    EXECUTE = Prot.EXECUTE.value
    WIRED = 0x10
    CANFAIL = 0x20


PMAP_WIRED: Final = PMAP.WIRED.value
PMAP_CANFAIL: Final = PMAP.CANFAIL.value
_ACCESS_MASK: Final = Prot.ALL.value
_P_READ: Final = Prot.READ.value
_P_WRITE: Final = Prot.WRITE.value


class PageFault(Exception):  # noqa: N818 -- the kernel's name for the trap
    """An access through a pmap found no translation, or too little protection.

    Not an error: the caller (uiomove, a simulated process) handles it by faulting the page in
    and retrying, as the trap handler would.

    Attributes:
        va: the faulting virtual address.
        access: the access type (Prot.READ or Prot.WRITE).
        protection: True for a protection fault (a mapping existed), False for a missing page.
    """

    def __init__(self, va: int, access: Prot, protection: bool) -> None:
        kind = "protection" if protection else "no mapping"
        super().__init__(f"page fault at {va:#x} ({access!s}, {kind})")
        self.va = va
        self.access = access
        self.protection = protection


class Pte:
    """One translation: a page-table entry, and for managed mappings also the pv entry.

    Attributes:
        pmap: the pmap it belongs to.
        va: the virtual address (page aligned).
        pa: the frame's physical address.
        pg: the page for a managed mapping; None for a kenter (unmanaged) one.
        prot: protection (Prot bits as an int).
        wired: wired mappings may never be forgotten by the pmap.
    """

    __slots__ = ("pa", "pg", "pmap", "prot", "va", "wired")

    def __init__(
        self, pmap: Pmap, va: int, pa: int, pg: VmPage | None, prot: int, wired: bool
    ) -> None:
        self.pmap = pmap
        self.va = va
        self.pa = pa
        self.pg = pg
        self.prot = prot
        self.wired = wired

    def __repr__(self) -> str:
        kind = "managed" if self.pg is not None else "kenter"
        return (
            f"<Pte {self.pmap.name} va={self.va:#x} pa={self.pa:#x} {kind}"
            f" prot={Prot(self.prot)!s}{' wired' if self.wired else ''}>"
        )


class Pmap:
    """One address space's translation table (kernel: struct pmap).

    Attributes:
        name: for messages.
        is_kernel: the kernel pmap, the only one that takes kenter mappings.
        ptes: virtual page number -> Pte.
        stale: virtual page number -> translations invalidated but not yet flushed.
        resident_count: number of mappings (kernel: pm_stats.resident_count).
        wired_count: number of wired mappings (kernel: pm_stats.wired_count).
    """

    __slots__ = (
        "is_kernel",
        "name",
        "ptes",
        "resident_count",
        "stale",
        "uvm",
        "wired_count",
    )

    def __init__(self, uvm: Uvm, name: str, is_kernel: bool = False) -> None:
        self.uvm = uvm
        self.name = name
        self.is_kernel = is_kernel
        self.ptes: dict[int, Pte] = {}
        self.stale: dict[int, list[Pte]] = {}
        self.resident_count = 0
        self.wired_count = 0

    def __repr__(self) -> str:
        return f"<Pmap {self.name} resident={self.resident_count} wired={self.wired_count}>"


def pmap_create(uvm: Uvm, name: str) -> Pmap:
    """Make an empty user pmap (kernel: pmap_create)."""
    pmap = Pmap(uvm, name)
    uvm.pmaps.add(pmap)
    return pmap


def pmap_destroy(pmap: Pmap) -> None:
    """Drop every mapping of a user pmap and flush it (kernel: pmap_destroy)."""
    if pmap.is_kernel:
        panic("pmap_destroy: the kernel pmap")
    shift = pmap.uvm.page_shift
    for vpn in list(pmap.ptes):
        _remove_pte(pmap, vpn << shift)
    pmap_update(pmap)
    pmap.uvm.pmaps.discard(pmap)


# --- stale translations -----------------------------------------------------------------


def _make_stale(pmap: Pmap, pte: Pte) -> None:
    vpn = pte.va >> pmap.uvm.page_shift
    lst = pmap.stale.get(vpn)
    if lst is None:
        pmap.stale[vpn] = [pte]
    else:
        lst.append(pte)
    refs = pmap.uvm.stale_refs
    refs[pte.pa] = refs.get(pte.pa, 0) + 1


def pmap_update(pmap: Pmap) -> None:
    """Make every deferred invalidation of ``pmap`` real (kernel: pmap_update)."""
    uvm = pmap.uvm
    exp = uvm.uvmexp
    exp.pmap_update += 1
    if not pmap.stale:
        return
    refs = uvm.stale_refs
    for lst in pmap.stale.values():
        exp.pmap_invalidations += len(lst)
        for pte in lst:
            n = refs[pte.pa] - 1
            if n:
                refs[pte.pa] = n
            else:
                del refs[pte.pa]
    pmap.stale.clear()


# --- managed mappings -------------------------------------------------------------------


def _check_va(pmap: Pmap, va: int, what: str) -> None:
    if va < 0 or va & pmap.uvm.page_mask:
        panic(f"{what}: va {va:#x} is not page aligned")


def pmap_enter(pmap: Pmap, va: int, pg: VmPage, prot: int, flags: int) -> int:
    """Map ``pg`` at ``va`` with ``prot`` (kernel: pmap_enter).

    Args:
        pmap: the address space.
        va: page-aligned virtual address; an existing mapping there is replaced.
        pg: the page (managed mapping).
        prot: protection, Prot bits.
        flags: the access type that caused the mapping (Prot bits: seeds referenced and
            modified), plus PMAP_WIRED and PMAP_CANFAIL.

    Returns:
        0, or ENOMEM when no pv entry is left and PMAP_CANFAIL was given.

    => panics on pv exhaustion without PMAP_CANFAIL.  => never sleeps.
    """
    uvm = pmap.uvm
    exp = uvm.uvmexp
    exp.pmap_enter += 1
    shift = uvm.page_shift
    if va & uvm.page_mask or va < 0:
        panic(f"pmap_enter: va {va:#x} is not page aligned")
    access = flags & _ACCESS_MASK
    if access & ~prot:
        panic(f"pmap_enter: access {Prot(access)!s} exceeds protection {Prot(prot)!s}")
    if pg.pqflags & 0x0001:  # PQ_FREE
        panic(f"pmap_enter: mapping free page {pg!r}")
    vpn = va >> shift
    wired = bool(flags & PMAP_WIRED)
    old = pmap.ptes.get(vpn)
    if old is not None and old.pg is pg:
        # Same page: change protection and/or wiring in place.
        if old.prot & ~prot:
            _make_stale(pmap, Pte(pmap, va, old.pa, old.pg, old.prot, old.wired))
        old.prot = prot
        if old.wired != wired:
            pmap.wired_count += 1 if wired else -1
            old.wired = wired
    else:
        if old is not None:
            if old.pg is None:
                panic(f"pmap_enter: replacing kenter mapping {old!r}")
            _remove_pte(pmap, va)
        if uvm.pv_free <= 0:
            if flags & PMAP_CANFAIL:
                exp.pmap_enter_fail += 1
                return errno.ENOMEM
            panic("pmap_enter: out of pv entries and PMAP_CANFAIL not given")
        uvm.pv_free -= 1
        pte = Pte(pmap, va, pg.phys_addr, pg, prot, wired)
        pmap.ptes[vpn] = pte
        pvlist = pg.pvlist
        if pvlist is None:
            pg.pvlist = [pte]
        else:
            pvlist.append(pte)
        pmap.resident_count += 1
        if wired:
            pmap.wired_count += 1
    if prot & _P_WRITE:
        # A store through this mapping will set only the modified bit: the page may be
        # dirty from now on, as far as a cleaner looking at its object's dirty set knows.
        uobj = pg.uobject
        if uobj is not None:
            uobj.dirtyoffs.add(pg.offset)
    if access & _P_WRITE:
        pg.mdattrs |= MD_REFERENCED | MD_MODIFIED
    elif access:
        pg.mdattrs |= MD_REFERENCED
    return 0


def _remove_pte(pmap: Pmap, va: int) -> Pte | None:
    """Remove the managed mapping at ``va``, leaving a stale translation; return it."""
    uvm = pmap.uvm
    vpn = va >> uvm.page_shift
    pte = pmap.ptes.get(vpn)
    if pte is None:
        return None
    pg = pte.pg
    if pg is None:
        panic(f"pmap_remove: {pte!r} is a kenter mapping (use pmap_kremove)")
    del pmap.ptes[vpn]
    assert pg.pvlist is not None
    pg.pvlist.remove(pte)
    if not pg.pvlist:
        pg.pvlist = None
    uvm.pv_free += 1
    pmap.resident_count -= 1
    if pte.wired:
        pmap.wired_count -= 1
    _make_stale(pmap, pte)
    return pte


def _vpns_in_range(pmap: Pmap, sva: int, eva: int) -> list[int]:
    """Virtual page numbers in [sva, eva) that have a mapping: cost is the smaller of the
    range and the table, so removing a huge range of a small pmap is cheap."""
    shift = pmap.uvm.page_shift
    svpn, evpn = sva >> shift, (eva + pmap.uvm.page_mask) >> shift
    if evpn - svpn <= len(pmap.ptes):
        ptes = pmap.ptes
        return [v for v in range(svpn, evpn) if v in ptes]
    return sorted(v for v in pmap.ptes if svpn <= v < evpn)


def pmap_remove(pmap: Pmap, sva: int, eva: int) -> None:
    """Remove the managed mappings in [sva, eva), wired or not (kernel: pmap_remove).

    => the invalidations are deferred until pmap_update.
    """
    _check_va(pmap, sva, "pmap_remove")
    pmap.uvm.uvmexp.pmap_remove += 1
    shift = pmap.uvm.page_shift
    for vpn in _vpns_in_range(pmap, sva, eva):
        _remove_pte(pmap, vpn << shift)


def pmap_protect(pmap: Pmap, sva: int, eva: int, prot: int) -> None:
    """Lower the protection of the mappings in [sva, eva) (kernel: pmap_protect).

    Without READ the mappings are removed.  Never raises a protection.
    => the invalidations are deferred until pmap_update.
    """
    _check_va(pmap, sva, "pmap_protect")
    if not prot & _P_READ:
        pmap_remove(pmap, sva, eva)
        return
    ptes = pmap.ptes
    for vpn in _vpns_in_range(pmap, sva, eva):
        pte = ptes[vpn]
        if pte.pg is None:
            continue  # kenter mappings are not the business of pmap_protect
        newprot = pte.prot & prot
        if newprot != pte.prot:
            _make_stale(pmap, Pte(pmap, pte.va, pte.pa, pte.pg, pte.prot, pte.wired))
            pte.prot = newprot


def pmap_page_protect(uvm: Uvm, pg: VmPage, prot: int) -> None:
    """Lower the protection of every managed mapping of ``pg`` in every pmap
    (kernel: pmap_page_protect).

    ``Prot.READ``: write-protect them all; ``Prot.NONE``: remove them all, **wired ones
    included** (a truncated file's wired page loses its mappings this way).  Kenter mappings
    are unaffected.  => takes effect at once.
    """
    pvlist = pg.pvlist
    if not pvlist:
        return
    uvm.uvmexp.pmap_page_protect += 1
    if prot & _P_READ:
        if not prot & _P_WRITE:
            for pte in pvlist:
                pte.prot &= ~_P_WRITE
        return
    for pte in pvlist:
        pmap = pte.pmap
        del pmap.ptes[pte.va >> uvm.page_shift]
        pmap.resident_count -= 1
        if pte.wired:
            pmap.wired_count -= 1
            uvm.uvmexp.pmap_wired_removed += 1
        uvm.pv_free += 1
    pg.pvlist = None


def pmap_unwire(pmap: Pmap, va: int) -> None:
    """Clear the wired attribute of the mapping at ``va`` (kernel: pmap_unwire, formerly
    pmap_change_wiring(..., FALSE)).  Afterwards the pmap may forget the mapping."""
    pte = pmap.ptes.get(va >> pmap.uvm.page_shift)
    if pte is None:
        panic(f"pmap_unwire: no mapping at {va:#x} in {pmap.name}")
    if pte.pg is None:
        panic(f"pmap_unwire: {pte!r} is a kenter mapping")
    if not pte.wired:
        panic(f"pmap_unwire: mapping at {va:#x} in {pmap.name} is not wired")
    pte.wired = False
    pmap.wired_count -= 1


def pmap_extract(pmap: Pmap, va: int) -> int | None:
    """The physical address mapped at ``va`` (page offset kept), or None (kernel:
    pmap_extract)."""
    uvm = pmap.uvm
    pte = pmap.ptes.get(va >> uvm.page_shift)
    if pte is None:
        return None
    return pte.pa | (va & uvm.page_mask)


# --- unmanaged (kernel) mappings --------------------------------------------------------


def pmap_kenter_pa(pmap: Pmap, va: int, pa: int, prot: int) -> None:
    """Enter an unmanaged, wired kernel mapping va -> pa (kernel: pmap_kenter_pa).

    No pv entry, no referenced/modified tracking; only ``pmap_kremove`` removes it.
    """
    uvm = pmap.uvm
    if not pmap.is_kernel:
        panic("pmap_kenter_pa: not the kernel pmap")
    _check_va(pmap, va, "pmap_kenter_pa")
    if pa & uvm.page_mask or not 0 <= pa < uvm.physmem.size:
        panic(f"pmap_kenter_pa: bad physical address {pa:#x}")
    vpn = va >> uvm.page_shift
    old = pmap.ptes.get(vpn)
    if old is not None:
        if old.pg is not None:
            panic(f"pmap_kenter_pa: va {va:#x} holds managed mapping {old!r}")
        _kremove_pte(pmap, vpn)
    pmap.ptes[vpn] = Pte(pmap, va, pa, None, prot, True)
    pmap.resident_count += 1
    pmap.wired_count += 1
    kentered = uvm.kentered
    kentered[pa] = kentered.get(pa, 0) + 1
    uvm.uvmexp.pmap_kenter += 1


def pmap_kenter_pages(pmap: Pmap, va: int, pas: list[int], prot: int) -> None:
    """``pmap_kenter_pa`` of each frame of ``pas`` at consecutive pages from ``va``
    (UBC_FAULTBUSY maps a window's run of busy pages this way)."""
    ps = pmap.uvm.page_size
    for i, pa in enumerate(pas):
        pmap_kenter_pa(pmap, va + i * ps, pa, prot)


def _kremove_pte(pmap: Pmap, vpn: int) -> None:
    uvm = pmap.uvm
    pte = pmap.ptes.pop(vpn)
    pmap.resident_count -= 1
    pmap.wired_count -= 1
    n = uvm.kentered[pte.pa] - 1
    if n:
        uvm.kentered[pte.pa] = n
    else:
        del uvm.kentered[pte.pa]
    _make_stale(pmap, pte)


def pmap_kremove(pmap: Pmap, va: int, size: int) -> None:
    """Remove the kenter mappings in [va, va+size) (kernel: pmap_kremove).

    => the invalidations are deferred until pmap_update.
    """
    if not pmap.is_kernel:
        panic("pmap_kremove: not the kernel pmap")
    _check_va(pmap, va, "pmap_kremove")
    ptes = pmap.ptes
    for vpn in _vpns_in_range(pmap, va, va + size):
        if ptes[vpn].pg is not None:
            panic(f"pmap_kremove: {ptes[vpn]!r} is a managed mapping")
        _kremove_pte(pmap, vpn)
    pmap.uvm.uvmexp.pmap_kremove += 1


# --- page attributes --------------------------------------------------------------------


def pmap_page_writable(pg: VmPage) -> bool:
    """Has ``pg`` a managed mapping that allows writes (through which a store would set
    only the modified bit)?"""
    pvlist = pg.pvlist
    if not pvlist:
        return False
    return any(pte.prot & _P_WRITE for pte in pvlist)


def pmap_is_referenced(pg: VmPage) -> bool:
    """Has the page been accessed since its referenced bit was cleared?"""
    return bool(pg.mdattrs & MD_REFERENCED)


def pmap_is_modified(pg: VmPage) -> bool:
    """Has the page been written through a managed mapping since its modified bit was
    cleared?"""
    return bool(pg.mdattrs & MD_MODIFIED)


def pmap_clear_reference(pg: VmPage) -> bool:
    """Clear the referenced bit; return whether it was set (kernel: pmap_clear_reference)."""
    was = pg.mdattrs & MD_REFERENCED
    pg.mdattrs &= ~MD_REFERENCED
    return bool(was)


def pmap_clear_modify(pg: VmPage) -> bool:
    """Clear the modified bit; return whether it was set (kernel: pmap_clear_modify)."""
    was = pg.mdattrs & MD_MODIFIED
    pg.mdattrs &= ~MD_MODIFIED
    return bool(was)


def pmap_zero_page(uvm: Uvm, pa: int) -> None:
    """Fill a frame with zeroes (kernel: pmap_zero_page)."""
    uvm.physmem.zero(pa)


def pmap_copy_page(uvm: Uvm, src: int, dst: int) -> None:
    """Copy one frame to another (kernel: pmap_copy_page)."""
    uvm.physmem.copy(src, dst)


# --- accesses through a pmap ------------------------------------------------------------


def pmap_translate(pmap: Pmap, va: int, write: bool) -> int:
    """Translate ``va`` for an access, as the MMU would, and return the physical address.

    Sets the page's referenced bit (and modified bit on a write) for managed mappings.  A
    translation invalidated without a ``pmap_update`` is still honoured (a stale TLB entry).

    Raises:
        PageFault: no translation, or too little protection.
    """
    uvm = pmap.uvm
    vpn = va >> uvm.page_shift
    need = _P_WRITE if write else _P_READ
    pte = pmap.ptes.get(vpn)
    if pte is None or not pte.prot & need:
        stale = pmap.stale.get(vpn)
        found = None
        if stale:
            for cand in reversed(stale):
                if cand.prot & need:
                    found = cand
                    break
        if found is None:
            raise PageFault(va, Prot(need), pte is not None)
        pte = found
        uvm.uvmexp.pmap_stale_hits += 1
    pg = pte.pg
    if pg is not None:
        pg.mdattrs |= (MD_REFERENCED | MD_MODIFIED) if write else MD_REFERENCED
    return pte.pa | (va & uvm.page_mask)


def load(pmap: Pmap, va: int, length: int) -> bytes:
    """Read ``length`` bytes at ``va`` through ``pmap`` (a simulated CPU load).

    Raises:
        PageFault: at the first page that cannot be read.
    """
    uvm = pmap.uvm
    ps = uvm.page_size
    view = uvm.physmem.view
    out = bytearray(length)
    done = 0
    while done < length:
        pa = pmap_translate(pmap, va + done, False)
        n = min(length - done, ps - (pa & uvm.page_mask))
        out[done : done + n] = view[pa : pa + n]
        done += n
    return bytes(out)


def store(pmap: Pmap, va: int, data: bytes | bytearray | memoryview) -> None:
    """Write ``data`` at ``va`` through ``pmap`` (a simulated CPU store).

    Pages are translated one at a time, so a fault part way leaves the earlier pages written,
    as a real store loop would.

    Raises:
        PageFault: at the first page that cannot be written.
    """
    uvm = pmap.uvm
    ps = uvm.page_size
    view = uvm.physmem.view
    src = memoryview(data).cast("B")
    length = len(src)
    done = 0
    while done < length:
        pa = pmap_translate(pmap, va + done, True)
        n = min(length - done, ps - (pa & uvm.page_mask))
        view[pa : pa + n] = src[done : done + n]
        done += n
