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
``pmap_kremove`` and a replacing ``pmap_enter`` put the old translation on the pmap's *stale*
list: until ``pmap_update`` it stands for a TLB entry that may still be used.  An access that
the current table does not allow falls back to a stale translation that does, exactly as a
stale TLB entry would let it through; and freeing a page that a stale translation still
reaches is a panic.  A missing ``pmap_update`` therefore shows up in tests instead of
silently working.  ``pmap_page_protect`` acts at once (it is not one of the calls the seed
made deferrable).

Representation: what is per page and what per run
--------------------------------------------------
The translation table has two levels, as an MMU's does: page-table pages of ``PT_ENTRIES``
slots, found by number in a dict, so that a lookup is one dict probe (none when it hits the
page-table page used last) and a list index, and a range walk visits only the page-table
pages that exist, never the whole table.  A managed mapping is one ``Pte`` per page (it is
also the page's pv entry).  Kenter mappings are entered a run at a time
(``pmap_kenter_pages``: a UBC window's busy pages): one ``KRun`` object holds the run's
frames, and every slot of the run refers to it; ``pmap_kremove`` of the run puts that one
object on the stale list.  The stale list holds Ptes and KRuns, one entry per removed
mapping or run, and ``Uvm.nstale`` counts them over all pmaps, so that ``pagefree`` looks at
stale translations only while some exist.  Per frame there is one counter of kenter mappings
(``Uvm.kentered``, a list indexed by frame number).
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

    Raised on every first touch of a UBC window's page, so it is cheap to make: the access is
    a plain int, and the message is formatted only when someone prints it.
    """

    def __init__(self, va: int, access: int, protection: bool) -> None:
        super().__init__()
        self.va = va
        self.access = access
        self.protection = protection

    def __str__(self) -> str:
        kind = "protection" if self.protection else "no mapping"
        return f"page fault at {self.va:#x} ({Prot(self.access)!s}, {kind})"


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


class KRun:
    """A run of kenter mappings entered together (kernel: the loop of pmap_kenter_pa calls
    in ubc_alloc's UBC_FAULTBUSY path): page ``i`` of the run maps ``va + i * page size`` to
    ``pas[i]``, wired, with ``prot``.  Every table slot of the run refers to this object;
    removed whole, it is also its own stale record.

    Attributes:
        pmap, va, vpn: where the run starts.
        pas: the frames, in virtual order.
        prot: protection (Prot bits as an int).
    """

    __slots__ = ("pas", "pmap", "prot", "va", "vpn")

    def __init__(self, pmap: Pmap, va: int, vpn: int, pas: list[int], prot: int) -> None:
        self.pmap = pmap
        self.va = va
        self.vpn = vpn
        self.pas = pas
        self.prot = prot

    def __repr__(self) -> str:
        return (
            f"<KRun {self.pmap.name} va={self.va:#x} npages={len(self.pas)}"
            f" prot={Prot(self.prot)!s}>"
        )


PT_SHIFT: Final = 9
PT_ENTRIES: Final = 1 << PT_SHIFT  # slots per page-table page
_PT_MASK: Final = PT_ENTRIES - 1


class PTPage:
    """One page-table page: ``PT_ENTRIES`` consecutive slots and how many are in use."""

    __slots__ = ("count", "slots")

    def __init__(self) -> None:
        self.slots: list[Pte | KRun | None] = [None] * PT_ENTRIES
        self.count = 0


class Pmap:
    """One address space's translation table (kernel: struct pmap).

    Attributes:
        name: for messages.
        is_kernel: the kernel pmap, the only one that takes kenter mappings.
        ptps: page-table page number -> page-table page (use ``pmap_lookup``/
            ``pmap_entries`` to read them).
        stale: translations invalidated but not yet flushed (Ptes and KRuns), oldest first.
        resident_count: number of mappings (kernel: pm_stats.resident_count).
        wired_count: number of wired mappings (kernel: pm_stats.wired_count).
    """

    __slots__ = (
        "_last",
        "_lastno",
        "is_kernel",
        "name",
        "ptps",
        "resident_count",
        "stale",
        "uvm",
        "wired_count",
    )

    def __init__(self, uvm: Uvm, name: str, is_kernel: bool = False) -> None:
        self.uvm = uvm
        self.name = name
        self.is_kernel = is_kernel
        self.ptps: dict[int, PTPage] = {}
        self._lastno = -1
        self._last: PTPage | None = None
        self.stale: list[Pte | KRun] = []
        self.resident_count = 0
        self.wired_count = 0

    @property
    def ptes(self) -> dict[int, Pte]:
        """A snapshot of the table, virtual page number -> Pte; kenter slots appear as new
        Pte objects (audits, tests and messages; not a hot path)."""
        return pmap_entries(self)

    def __repr__(self) -> str:
        return f"<Pmap {self.name} resident={self.resident_count} wired={self.wired_count}>"


# --- the table ------------------------------------------------------------------------------


def _ptp(pmap: Pmap, no: int) -> PTPage | None:
    if no == pmap._lastno:
        return pmap._last
    ptp = pmap.ptps.get(no)
    if ptp is not None:
        pmap._lastno = no
        pmap._last = ptp
    return ptp


def pmap_lookup(pmap: Pmap, vpn: int) -> Pte | KRun | None:
    """The table entry of virtual page ``vpn``: a Pte, the KRun it belongs to, or None."""
    ptp = _ptp(pmap, vpn >> PT_SHIFT)
    if ptp is None:
        return None
    return ptp.slots[vpn & _PT_MASK]


def _set(pmap: Pmap, vpn: int, entry: Pte | KRun) -> None:
    """Fill the empty slot of ``vpn``."""
    no = vpn >> PT_SHIFT
    ptp = _ptp(pmap, no)
    if ptp is None:
        ptp = pmap.ptps[no] = PTPage()
        pmap._lastno = no
        pmap._last = ptp
    ptp.slots[vpn & _PT_MASK] = entry
    ptp.count += 1


def _clear(pmap: Pmap, vpn: int) -> None:
    """Empty the slot of ``vpn`` (it is in use); a page-table page left empty is freed."""
    no = vpn >> PT_SHIFT
    ptp = _ptp(pmap, no)
    assert ptp is not None
    ptp.slots[vpn & _PT_MASK] = None
    ptp.count -= 1
    if ptp.count == 0:
        del pmap.ptps[no]
        pmap._lastno = -1
        pmap._last = None


def _vpns_in_range(pmap: Pmap, sva: int, eva: int) -> list[int]:
    """Virtual page numbers in [sva, eva) that have a mapping, ascending: only the
    page-table pages that exist are visited, so removing a huge range of a small pmap is
    cheap."""
    shift = pmap.uvm.page_shift
    svpn = sva >> shift
    evpn = (eva + pmap.uvm.page_mask) >> shift
    if evpn <= svpn:
        return []
    ptps = pmap.ptps
    lo, hi = svpn >> PT_SHIFT, (evpn - 1) >> PT_SHIFT
    if hi - lo < len(ptps):
        nos = [no for no in range(lo, hi + 1) if no in ptps]
    else:
        nos = sorted(no for no in ptps if lo <= no <= hi)
    out: list[int] = []
    for no in nos:
        slots = ptps[no].slots
        base = no << PT_SHIFT
        for i in range(max(svpn - base, 0), min(evpn - base, PT_ENTRIES)):
            if slots[i] is not None:
                out.append(base + i)
    return out


def pmap_resident_in(pmap: Pmap, sva: int, eva: int) -> int:
    """How many pages of [sva, eva) have a translation (cheap for sparse pmaps)."""
    return len(_vpns_in_range(pmap, sva, eva))


def pmap_entries(pmap: Pmap) -> dict[int, Pte]:
    """Every translation of ``pmap``: virtual page number -> Pte (the managed mapping's own
    Pte; a new Pte describing a kenter slot).  Not a hot path."""
    out: dict[int, Pte] = {}
    shift = pmap.uvm.page_shift
    for no in sorted(pmap.ptps):
        base = no << PT_SHIFT
        for i, ent in enumerate(pmap.ptps[no].slots):
            if ent is None:
                continue
            vpn = base + i
            if isinstance(ent, KRun):
                pa = ent.pas[vpn - ent.vpn]
                out[vpn] = Pte(pmap, vpn << shift, pa, None, ent.prot, True)
            else:
                out[vpn] = ent
    return out


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
    for vpn in _vpns_in_range(pmap, 0, 1 << 62):
        _remove_pte(pmap, vpn << shift)
    pmap_update(pmap)
    pmap.uvm.pmaps.discard(pmap)


# --- stale translations -----------------------------------------------------------------


def _make_stale(pmap: Pmap, entry: Pte | KRun) -> None:
    pmap.stale.append(entry)
    pmap.uvm.nstale += 1


def _stale_covers(entry: Pte | KRun, vpn: int, shift: int) -> int:
    """The frame ``entry`` translates ``vpn`` to, or -1."""
    if isinstance(entry, KRun):
        i = vpn - entry.vpn
        return entry.pas[i] if 0 <= i < len(entry.pas) else -1
    return entry.pa if entry.va >> shift == vpn else -1


def pmap_stale_reaches(uvm: Uvm, pa: int) -> bool:
    """Does a stale translation of any pmap still reach frame ``pa``?  Cheap while no stale
    translation exists anywhere (``uvm.nstale`` is 0), which is almost always."""
    if not uvm.nstale:
        return False
    for pmap in list(uvm.pmaps):
        for ent in pmap.stale:
            if isinstance(ent, KRun):
                if pa in ent.pas:
                    return True
            elif ent.pa == pa:
                return True
    return False


def pmap_stale_refs(uvm: Uvm) -> dict[int, int]:
    """Frame -> number of stale translations reaching it, over every pmap (audits, tests)."""
    refs: dict[int, int] = {}
    for pmap in list(uvm.pmaps):
        for ent in pmap.stale:
            for pa in ent.pas if isinstance(ent, KRun) else [ent.pa]:
                refs[pa] = refs.get(pa, 0) + 1
    return refs


def pmap_kentered(uvm: Uvm) -> dict[int, int]:
    """Frame -> number of kenter mappings, from ``uvm.kentered`` (audits, tests)."""
    shift = uvm.page_shift
    return {i << shift: n for i, n in enumerate(uvm.kentered) if n}


def pmap_update(pmap: Pmap) -> None:
    """Make every deferred invalidation of ``pmap`` real (kernel: pmap_update)."""
    uvm = pmap.uvm
    exp = uvm.uvmexp
    exp.pmap_update += 1
    stale = pmap.stale
    if not stale:
        return
    n = 0
    for ent in stale:
        n += len(ent.pas) if isinstance(ent, KRun) else 1
    exp.pmap_invalidations += n
    uvm.nstale -= len(stale)
    stale.clear()


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
    old = pmap_lookup(pmap, vpn)
    if isinstance(old, Pte) and old.pg is pg:
        # Same page: change protection and/or wiring in place.
        if old.prot & ~prot:
            _make_stale(pmap, Pte(pmap, va, old.pa, old.pg, old.prot, old.wired))
        old.prot = prot
        if old.wired != wired:
            pmap.wired_count += 1 if wired else -1
            old.wired = wired
    else:
        if old is not None:
            if isinstance(old, KRun):
                panic(f"pmap_enter: replacing kenter mapping {old!r}")
            _remove_pte(pmap, va)
        if uvm.pv_free <= 0:
            if flags & PMAP_CANFAIL:
                exp.pmap_enter_fail += 1
                return errno.ENOMEM
            panic("pmap_enter: out of pv entries and PMAP_CANFAIL not given")
        uvm.pv_free -= 1
        pte = Pte(pmap, va, pg.phys_addr, pg, prot, wired)
        _set(pmap, vpn, pte)
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
        # dirty from now on, as far as a cleaner looking at its object's dirty tag knows.
        uobj = pg.uobject
        if uobj is not None:
            uobj.pages.set_dirty(pg.offset)
    if access & _P_WRITE:
        pg.mdattrs |= MD_REFERENCED | MD_MODIFIED
    elif access:
        pg.mdattrs |= MD_REFERENCED
    return 0


def _remove_pte(pmap: Pmap, va: int) -> Pte | None:
    """Remove the managed mapping at ``va``, leaving a stale translation; return it."""
    uvm = pmap.uvm
    vpn = va >> uvm.page_shift
    pte = pmap_lookup(pmap, vpn)
    if pte is None:
        return None
    if isinstance(pte, KRun):
        panic(f"pmap_remove: {pte!r} is a kenter mapping (use pmap_kremove)")
    pg = pte.pg
    assert pg is not None
    assert pg.pvlist is not None
    _clear(pmap, vpn)
    pg.pvlist.remove(pte)
    if not pg.pvlist:
        pg.pvlist = None
    uvm.pv_free += 1
    pmap.resident_count -= 1
    if pte.wired:
        pmap.wired_count -= 1
    _make_stale(pmap, pte)
    return pte


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
    for vpn in _vpns_in_range(pmap, sva, eva):
        pte = pmap_lookup(pmap, vpn)
        if not isinstance(pte, Pte):
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
    shift = uvm.page_shift
    for pte in pvlist:
        pmap = pte.pmap
        _clear(pmap, pte.va >> shift)
        pmap.resident_count -= 1
        if pte.wired:
            pmap.wired_count -= 1
            uvm.uvmexp.pmap_wired_removed += 1
        uvm.pv_free += 1
    pg.pvlist = None


def pmap_unwire(pmap: Pmap, va: int) -> None:
    """Clear the wired attribute of the mapping at ``va`` (kernel: pmap_unwire, formerly
    pmap_change_wiring(..., FALSE)).  Afterwards the pmap may forget the mapping."""
    pte = pmap_lookup(pmap, va >> pmap.uvm.page_shift)
    if pte is None:
        panic(f"pmap_unwire: no mapping at {va:#x} in {pmap.name}")
    if isinstance(pte, KRun):
        panic(f"pmap_unwire: {pte!r} is a kenter mapping")
    if not pte.wired:
        panic(f"pmap_unwire: mapping at {va:#x} in {pmap.name} is not wired")
    pte.wired = False
    pmap.wired_count -= 1


def pmap_extract(pmap: Pmap, va: int) -> int | None:
    """The physical address mapped at ``va`` (page offset kept), or None (kernel:
    pmap_extract)."""
    uvm = pmap.uvm
    vpn = va >> uvm.page_shift
    ent = pmap_lookup(pmap, vpn)
    if ent is None:
        return None
    pa = ent.pas[vpn - ent.vpn] if isinstance(ent, KRun) else ent.pa
    return pa | (va & uvm.page_mask)


# --- unmanaged (kernel) mappings --------------------------------------------------------


def pmap_kenter_pa(pmap: Pmap, va: int, pa: int, prot: int) -> None:
    """Enter an unmanaged, wired kernel mapping va -> pa (kernel: pmap_kenter_pa).

    No pv entry, no referenced/modified tracking; only ``pmap_kremove`` removes it.
    """
    pmap_kenter_pages(pmap, va, [pa], prot)


def pmap_kenter_pages(pmap: Pmap, va: int, pas: list[int], prot: int) -> None:
    """``pmap_kenter_pa`` of each frame of ``pas`` at consecutive pages from ``va``, as one
    run (UBC_FAULTBUSY maps a window's run of busy pages this way).  Kenter mappings already
    there are replaced; a managed one there is a panic."""
    uvm = pmap.uvm
    if not pmap.is_kernel:
        panic("pmap_kenter_pa: not the kernel pmap")
    _check_va(pmap, va, "pmap_kenter_pa")
    shift = uvm.page_shift
    mask = uvm.page_mask
    limit = uvm.physmem.size
    for pa in pas:
        if pa & mask or not 0 <= pa < limit:
            panic(f"pmap_kenter_pa: bad physical address {pa:#x}")
    n = len(pas)
    vpn = va >> shift
    there = _vpns_in_range(pmap, va, va + (n << shift))
    for v in there:
        old = pmap_lookup(pmap, v)
        if isinstance(old, Pte):
            panic(f"pmap_kenter_pa: va {v << shift:#x} holds managed mapping {old!r}")
    if there:
        _kremove_range(pmap, va, n << shift)
    run = KRun(pmap, va, vpn, pas, prot)
    kentered = uvm.kentered
    for i in range(n):
        _set(pmap, vpn + i, run)
        kentered[pas[i] >> shift] += 1
    pmap.resident_count += n
    pmap.wired_count += n
    uvm.uvmexp.pmap_kenter += n


def _kremove_range(pmap: Pmap, va: int, size: int) -> None:
    """Remove the kenter mappings in [va, va+size); each run (or part of one) removed goes
    on the stale list as one entry."""
    uvm = pmap.uvm
    shift = uvm.page_shift
    kentered = uvm.kentered
    run: KRun | None = None
    first = last = 0  # indexes into run.pas of the part removed
    for vpn in _vpns_in_range(pmap, va, va + size):
        ent = pmap_lookup(pmap, vpn)
        if not isinstance(ent, KRun):
            panic(f"pmap_kremove: {ent!r} is a managed mapping")
        i = vpn - ent.vpn
        if ent is not run or i != last + 1:
            if run is not None:
                _kremove_stale(pmap, run, first, last)
            run, first = ent, i
        last = i
        _clear(pmap, vpn)
        kentered[ent.pas[i] >> shift] -= 1
        pmap.resident_count -= 1
        pmap.wired_count -= 1
    if run is not None:
        _kremove_stale(pmap, run, first, last)


def _kremove_stale(pmap: Pmap, run: KRun, first: int, last: int) -> None:
    if first == 0 and last == len(run.pas) - 1:
        _make_stale(pmap, run)
        return
    shift = pmap.uvm.page_shift
    va = run.va + (first << shift)
    _make_stale(pmap, KRun(pmap, va, va >> shift, run.pas[first : last + 1], run.prot))


def pmap_kremove(pmap: Pmap, va: int, size: int) -> None:
    """Remove the kenter mappings in [va, va+size) (kernel: pmap_kremove).

    => the invalidations are deferred until pmap_update.
    """
    if not pmap.is_kernel:
        panic("pmap_kremove: not the kernel pmap")
    _check_va(pmap, va, "pmap_kremove")
    _kremove_range(pmap, va, size)
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
    shift = uvm.page_shift
    vpn = va >> shift
    need = _P_WRITE if write else _P_READ
    ent = pmap_lookup(pmap, vpn)
    if ent is not None and ent.prot & need:
        if isinstance(ent, KRun):
            return ent.pas[vpn - ent.vpn] | (va & uvm.page_mask)
        pg = ent.pg
        if pg is not None:
            pg.mdattrs |= (MD_REFERENCED | MD_MODIFIED) if write else MD_REFERENCED
        return ent.pa | (va & uvm.page_mask)
    # No current translation allows the access: a stale one (a TLB entry not yet flushed)
    # may, the newest first.
    for cand in reversed(pmap.stale):
        if cand.prot & need:
            pa = _stale_covers(cand, vpn, shift)
            if pa >= 0:
                uvm.uvmexp.pmap_stale_hits += 1
                if isinstance(cand, Pte) and cand.pg is not None:
                    cand.pg.mdattrs |= (MD_REFERENCED | MD_MODIFIED) if write else MD_REFERENCED
                return pa | (va & uvm.page_mask)
    raise PageFault(va, need, ent is not None)


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
