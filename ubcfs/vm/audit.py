"""The DIAGNOSTIC checker: proves the whole-machine invariants (reference section 11.1).

``audit(uvm)`` recounts everything from scratch and returns one line per violation;
``check(uvm)`` panics with all of them.  It runs after every test that built a machine, after
every step of the stateful tests, and behind ``ubcfs check`` on a live mount.  Each rule is a
small function so that a violation names the rule that caught it.

Rules checked (numbers as in the reference):
  1  every frame in exactly one state; free lists and queues agree with the page flags and
     with the counts; known-zero free pages are zero
  2  wired pages are on no paging queue; ``wired`` equals the recount
  3  ``paging`` equals the PG_PAGEOUT count; PG_PAGEOUT pages are busy and unqueued
  4  flag implications (WANTED/RELEASED/PAGEOUT/FAKE need BUSY; not RELEASED and PAGEOUT;
     PQ_FREE excludes everything else; PG_ZERO only on unqueued pages)
  5  owner consistency: object tables and page identities agree both ways; anon pages
  7  free pages have no mapping (part of 4)
  9  pv lists and page tables correspond one to one; pmap statistics; the pv pool
  10 no writable managed mapping of a PG_RDONLY page
  11 stale-translation bookkeeping agrees with the pmaps
  12 a swap-backed page that is clean and not busy has a valid slot (PR 7578)
  13 a swap-backed page that is dirty records no slot
  14 each allocated slot belongs to exactly one page index, an open swap-out cluster, or
     the bad slots; ``swpginuse`` and ``swpgonly`` equal their recounts (12-14 are checked by
     the swap pager's own ``audit``, ``pagers.swap.Swap.audit``)
  15 an anon's reference count equals the amap slots that hold it
  16 process maps: entries sorted and disjoint; a wired entry's translations are wired
     (the missing ones bounded by the wired mappings truncation removed); a page that a
     process maps or vslocks is wired exactly once per wired entry mapping it and per
     live vslock hold; the holds in the maps are those on the pages
  dirty (ubcfs) an object's dirty set covers every page of it that is dirty (PG_CLEAN clear
     or modified bit set) or writably mapped, and names only resident pages
  wbfail (ubcfs) the write-back failure registry names live objects, each with pages
     waiting, and only resident pages that are dirty or busy (under a new write); its page
     count is the sum of them
  and: an owned page that is not busy, not wired and on no queue is lost.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ubcfs.vm.diag import Panic
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    PG_PAGEOUT,
    PG_RDONLY,
    PG_RELEASED,
    PG_TABLED,
    PG_WANTED,
    PG_ZERO,
    PQ_ANON,
    PQ_AOBJ,
    PQ_FREE,
    PQ_QUEUES,
    VmPage,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    MD_MODIFIED,
    PT_SHIFT,
    KRun,
    Pte,
    pmap_entries,
    pmap_kentered,
    pmap_lookup,
)

if TYPE_CHECKING:
    from ubcfs.vm.anon import VmAnon
    from ubcfs.vm.uvm import Uvm

_P_WRITE = Prot.WRITE.value


def audit(uvm: Uvm) -> list[str]:
    """Check every invariant of ``uvm``; return the violations (empty when sound)."""
    out: list[str] = []
    _check_free_lists(uvm, out)
    uvm.pdpolicy.check(out)  # the queues are the policy's: it checks them itself
    _check_pages(uvm, out)
    _check_objects(uvm, out)
    _check_wbfail(uvm, out)
    _check_pmaps(uvm, out)
    if uvm.swap is not None:
        out.extend(uvm.swap.audit())  # invariants 12-14: slots and their owners
    _check_amaps(uvm, out)
    _check_maps(uvm, out)
    return out


def _check_maps(uvm: Uvm, out: list[str]) -> None:
    """Rule 16: in a wired map entry every address that still has a translation has a
    wired one (the others lost theirs to truncation: at most as many as the pmap has seen
    wired mappings removed); a page's wire count covers the wired entries mapping it."""
    shift = uvm.page_shift
    wired_maps: dict[VmPage, int] = {}
    missing = 0
    for vm in uvm.maps:
        if vm.pmap not in uvm.pmaps:
            out.append(f"[16] {vm!r}: its pmap is not registered")
        last = 0
        for e in vm.entries:
            if e.start < last or e.end <= e.start:
                out.append(f"[16] {vm!r}: {e!r} overlaps or is empty")
            last = e.end
            if e.wired_count < 0:
                out.append(f"[16] {vm!r}: {e!r} has a negative wiring count")
            if not e.wired_count:
                continue
            for va in range(e.start, e.end, uvm.page_size):
                pte = pmap_lookup(vm.pmap, va >> shift)
                if pte is None:
                    missing += 1
                    continue
                if not isinstance(pte, Pte) or pte.pg is None:
                    out.append(f"[16] {vm!r}: kenter mapping at {va:#x} of a user map")
                    continue
                if not pte.wired:
                    out.append(f"[16] {vm!r}: {va:#x} of wired {e!r} has an unwired PTE")
                wired_maps[pte.pg] = wired_maps.get(pte.pg, 0) + 1
    _check_wirings(uvm, wired_maps, out)
    if missing > uvm.uvmexp.pmap_wired_removed:
        out.append(
            f"[16] {missing} address(es) of wired entries have no translation, but only"
            f" {uvm.uvmexp.pmap_wired_removed} wired mapping(s) were ever removed"
        )


def _check_wirings(uvm: Uvm, wired_maps: dict[VmPage, int], out: list[str]) -> None:
    """Rule 16, the count: the vslock holds in the maps are those on the pages, and a page
    that a process maps or holds is wired exactly once per wired entry mapping it and per
    live hold -- no wiring lost, none left behind (a second wiring by a protection fault,
    a hold that outlived its process)."""
    in_maps: dict[VmPage, int] = {}
    for vm in uvm.maps:
        for va, holds in vm.vslocks.items():
            if not holds:
                out.append(f"[16] {vm!r}: an empty vslock record at {va:#x}")
            for h in holds:
                if h.va != va:
                    out.append(f"[16] {vm!r}: the vslock hold at {va:#x} says {h.va:#x}")
                pg = h.pg
                if pg is None:
                    continue
                in_maps[pg] = in_maps.get(pg, 0) + 1
                if not any(x is h for x in uvm.page_holds.get(pg, ())):
                    out.append(f"[16] {vm!r}: its vslock hold at {va:#x} is not on {pg!r}")
    for pg, holds in uvm.page_holds.items():
        if any(h.pg is not pg for h in holds):
            out.append(f"[16] {pg!r}: holds a vslock hold of another page")
        if len(holds) != in_maps.get(pg, 0):
            out.append(
                f"[16] {pg!r}: {len(holds)} vslock hold(s), but live maps record"
                f" {in_maps.get(pg, 0)}"
            )
    user_pmaps = {vm.pmap for vm in uvm.maps}
    pages = set(wired_maps) | set(uvm.page_holds)
    for pg in uvm.pages:
        if pg.wire_count and pg.pvlist and any(p.pmap in user_pmaps for p in pg.pvlist):
            pages.add(pg)
    for pg in pages:
        n, nholds = wired_maps.get(pg, 0), len(uvm.page_holds.get(pg, ()))
        if pg.wire_count != n + nholds:
            out.append(
                f"[16] {pg!r}: wire count {pg.wire_count}, but {n} wired-entry mapping(s)"
                f" and {nholds} vslock hold(s)"
            )


def _check_amaps(uvm: Uvm, out: list[str]) -> None:
    """Rule 15: an anon in some amap has as many references as amap slots hold it, and an
    amap in use has a reference."""
    held: dict[int, int] = {}
    anons: dict[int, VmAnon] = {}
    for amap in uvm.amaps:
        if amap.ref <= 0:
            out.append(f"[15] {amap!r} is registered with no reference")
        for anon in amap.anons.values():
            held[id(anon)] = held.get(id(anon), 0) + 1
            anons[id(anon)] = anon
    for key, anon in anons.items():
        if anon.ref != held[key]:
            out.append(f"[15] {anon!r}: ref {anon.ref}, held by {held[key]} amap slot(s)")


def check(uvm: Uvm) -> None:
    """Panic listing every violated invariant of ``uvm``."""
    bad = audit(uvm)
    if bad:
        raise Panic(f"{len(bad)} invariant violation(s):\n  " + "\n  ".join(bad))


def _check_free_lists(uvm: Uvm, out: list[str]) -> None:
    exp = uvm.uvmexp
    seen: set[int] = set()
    for name, lst in (("free_zero", uvm.free_zero), ("free_unknown", uvm.free_unknown)):
        for pg in lst:
            if id(pg) in seen:
                out.append(f"[1] {pg!r} twice on the free lists")
            seen.add(id(pg))
            if not pg.pqflags & PQ_FREE:
                out.append(f"[1] {pg!r} on {name} without PQ_FREE")
    if len(seen) != exp.free:
        out.append(f"[1] free count {exp.free} but {len(seen)} pages on the free lists")
    if len(uvm.free_zero) != exp.zeropages:
        out.append(f"[1] zeropages {exp.zeropages} but {len(uvm.free_zero)} on free_zero")
    for pg in uvm.free_zero:
        if not pg.flags & PG_ZERO:
            out.append(f"[1] {pg!r} on free_zero without PG_ZERO")
        elif not uvm.physmem.is_zero(pg.phys_addr):
            out.append(f"[1] {pg!r} is PG_ZERO but its frame is not zero")
    for pg in uvm.free_unknown:
        if pg.flags & PG_ZERO:
            out.append(f"[1] {pg!r} on free_unknown with PG_ZERO")
    npfree = sum(1 for pg in uvm.pages if pg.pqflags & PQ_FREE)
    if npfree != len(seen):
        out.append(f"[1] {npfree} pages have PQ_FREE but {len(seen)} are on the free lists")


def _check_pages(uvm: Uvm, out: list[str]) -> None:
    exp = uvm.uvmexp
    wired = paging = filepages = anonpages = kernelpages = 0
    objects = set(uvm.objects)
    for pg in uvm.pages:
        f, q = pg.flags, pg.pqflags
        if q & PQ_FREE:
            if q != PQ_FREE or f & ~PG_ZERO:
                out.append(f"[4] free {pg!r} carries other flags")
            if pg.uobject is not None or pg.uanon is not None or pg.offset != -1:
                out.append(f"[4] free {pg!r} has an owner")
            if pg.wire_count or pg.loan_count:
                out.append(f"[4] free {pg!r} is wired or loaned")
            if pg.pvlist:
                out.append(f"[7] free {pg!r} is still mapped")
            continue
        if pg.uobject is not None and pg.uobject not in objects:
            out.append(f"[5] {pg!r} belongs to an object no longer registered (reclaimed)")
        if (q & PQ_QUEUES) == PQ_QUEUES:
            out.append(f"[4] {pg!r} on both paging queues")
        if pg.wire_count < 0 or pg.loan_count < 0:
            out.append(f"[2] {pg!r} has a negative wire or loan count")
        if pg.wire_count:
            wired += 1
            if q & PQ_QUEUES:
                out.append(f"[2] wired {pg!r} is on a paging queue")
        if f & PG_PAGEOUT:
            paging += 1
            if q & PQ_QUEUES:
                out.append(f"[3] PG_PAGEOUT {pg!r} is on a paging queue")
        if not f & PG_BUSY and f & (PG_WANTED | PG_RELEASED | PG_PAGEOUT | PG_FAKE):
            out.append(f"[4] {pg!r} has WANTED/RELEASED/PAGEOUT/FAKE without BUSY")
        if f & PG_RELEASED and f & PG_PAGEOUT:
            out.append(f"[4] {pg!r} is both RELEASED and PAGEOUT")
        if f & PG_ZERO and q & PQ_QUEUES:
            out.append(f"[4] PG_ZERO {pg!r} is on a paging queue")
        owned = pg.uobject is not None or pg.uanon is not None
        if pg.uobject is not None:
            if pg.uobject.is_aobj:
                anonpages += 1
            else:
                filepages += 1
            if bool(q & PQ_AOBJ) != pg.uobject.is_aobj:
                out.append(f"[5] {pg!r}: PQ_AOBJ does not match its object")
            if not f & PG_TABLED:
                out.append(f"[5] object page {pg!r} without PG_TABLED")
            elif pg.uobject.pages.get(pg.offset) is not pg:
                out.append(f"[5] {pg!r} not found by lookup in its object")
        elif pg.uanon is not None:
            anonpages += 1
            if not q & PQ_ANON:
                out.append(f"[5] anon page {pg!r} without PQ_ANON")
            if pg.uanon.page is not pg:
                out.append(f"[5] {pg!r}: its anon's page is another")
        else:
            kernelpages += 1
            if q & (PQ_ANON | PQ_AOBJ | PQ_QUEUES):
                out.append(f"[5] objectless {pg!r} carries owner or queue flags")
        if owned and not q & PQ_QUEUES and not pg.wire_count and not f & PG_BUSY:
            out.append(f"[1] {pg!r} is lost: owned, not busy, not wired and on no queue")
        if pg.pvlist is not None and f & PG_RDONLY:
            for pte in pg.pvlist:
                if pte.prot & _P_WRITE:
                    out.append(f"[10] PG_RDONLY {pg!r} has a writable mapping")
    for name, counted, kept in (
        ("wired", wired, exp.wired),
        ("filepages", filepages, exp.filepages),
        ("anonpages", anonpages, exp.anonpages),
        ("kernelpages", kernelpages, exp.kernelpages),
    ):
        if counted != kept:
            out.append(f"[2] uvmexp.{name} is {kept} but {counted} pages qualify")
    if paging != exp.paging:
        out.append(f"[3] uvmexp.paging is {exp.paging} but {paging} pages have PG_PAGEOUT")
    total = exp.free + exp.filepages + exp.anonpages + exp.kernelpages
    if total != exp.npages:
        out.append(f"[1] free+file+anon+kernel pages = {total}, not npages {exp.npages}")
    if not 0 <= exp.free <= exp.npages:
        out.append(f"[1] free count {exp.free} out of range")
    if not 0 < exp.reserve_pagedaemon <= exp.reserve_kernel < exp.freemin < exp.freetarg:
        out.append("[1] reserve/target order broken: want 0 < pd <= kernel < freemin < freetarg")


def _check_objects(uvm: Uvm, out: list[str]) -> None:
    for obj in list(uvm.objects):
        obj.pages.audit(obj.name, out)
        dirty = obj.dirtyoffs
        for off, pg in obj.pages.items():
            if pg.uobject is not obj or pg.offset != off:
                out.append(f"[5] {obj.name}@{off:#x} holds {pg!r}, which is not its page")
            if pg.pqflags & PQ_FREE:
                out.append(f"[5] {obj.name}@{off:#x} holds free page {pg!r}")
            if off not in dirty and (
                not pg.flags & PG_CLEAN
                or pg.mdattrs & MD_MODIFIED
                or any(pte.prot & _P_WRITE for pte in pg.pvlist or ())
            ):
                out.append(f"[dirty] {obj.name}@{off:#x}: {pg!r} may be dirty, not tagged dirty")


def _check_wbfail(uvm: Uvm, out: list[str]) -> None:
    wbf = uvm.wbfail
    live = set(uvm.objects)
    total = 0
    for obj, ent in wbf.objects.items():
        total += len(ent.pages)
        if obj not in live:
            out.append(f"[wbfail] write-back failures of {obj.name}, which is no longer an object")
        if not ent.pages:
            out.append(f"[wbfail] {obj.name} is listed as failing write-back with no page waiting")
        for off in sorted(ent.pages):
            pg = obj.pages.get(off)
            if pg is None:
                out.append(f"[wbfail] {obj.name}@{off:#x} waits for a write but is not resident")
            elif pg.flags & PG_CLEAN and not pg.mdattrs & MD_MODIFIED and not pg.flags & PG_BUSY:
                out.append(f"[wbfail] {obj.name}@{off:#x} waits for a write but is clean: {pg!r}")
    if total != wbf.npages:
        out.append(f"[wbfail] wbfail.npages is {wbf.npages} but {total} pages are listed")
    if bool(wbf.objects) != bool(wbf.last_error):
        out.append(f"[wbfail] wbfail.last_error {wbf.last_error} with {len(wbf.objects)} objects")


def _check_pmaps(uvm: Uvm, out: list[str]) -> None:
    shift = uvm.page_shift
    managed = 0
    kentered: dict[int, int] = {}
    nstale = 0
    for pmap in list(uvm.pmaps):
        nwired = 0
        ptes = pmap_entries(pmap)
        for no, ptp in pmap.ptps.items():
            used = sum(1 for ent in ptp.slots if ent is not None)
            if used != ptp.count or used == 0:
                out.append(f"[9] {pmap.name} page-table page {no} counts {ptp.count}, has {used}")
            base = no << PT_SHIFT
            for i, ent in enumerate(ptp.slots):
                if isinstance(ent, KRun) and not 0 <= base + i - ent.vpn < len(ent.pas):
                    out.append(f"[9] {pmap.name} vpn {base + i:#x} holds {ent!r}, not its run")
        for vpn, pte in ptes.items():
            if pte.pmap is not pmap or pte.va >> shift != vpn:
                out.append(f"[9] {pmap.name} vpn {vpn:#x} holds foreign {pte!r}")
            if pte.wired:
                nwired += 1
            pg = pte.pg
            if pg is None:
                if not pmap.is_kernel:
                    out.append(f"[9] kenter mapping {pte!r} in a user pmap")
                if not pte.wired:
                    out.append(f"[9] kenter mapping {pte!r} is not wired")
                kentered[pte.pa] = kentered.get(pte.pa, 0) + 1
                continue
            managed += 1
            if pg.pqflags & PQ_FREE:
                out.append(f"[7] {pte!r} maps free page {pg!r}")
            if pte.pa != pg.phys_addr:
                out.append(f"[9] {pte!r} does not match its page's frame")
            if pg.pvlist is None or not any(p is pte for p in pg.pvlist):
                out.append(f"[9] {pte!r} missing from its page's pv list")
        if pmap.resident_count != len(ptes):
            out.append(f"[9] {pmap.name} resident_count {pmap.resident_count}, has {len(ptes)}")
        if pmap.wired_count != nwired:
            out.append(f"[9] {pmap.name} wired_count {pmap.wired_count}, has {nwired}")
        nstale += len(pmap.stale)
        for ent in pmap.stale:
            if ent.pmap is not pmap:
                out.append(f"[11] {pmap.name} stale list holds foreign {ent!r}")
    npv = 0
    for pg in uvm.pages:
        if pg.pvlist is None:
            continue
        if not pg.pvlist:
            out.append(f"[9] {pg!r} has an empty (not None) pv list")
        for pte in pg.pvlist:
            npv += 1
            p = pte.pmap
            if pmap_lookup(p, pte.va >> shift) is not pte:
                out.append(f"[9] pv entry {pte!r} of {pg!r} is not in its pmap")
    if npv != managed:
        out.append(f"[9] {npv} pv entries but {managed} managed mappings")
    if uvm.pv_total - uvm.pv_free != managed:
        out.append(f"[9] pv pool: {uvm.pv_total - uvm.pv_free} entries in use, {managed} mappings")
    if kentered != pmap_kentered(uvm):
        out.append("[9] kenter bookkeeping disagrees with the kernel pmap")
    if nstale != uvm.nstale:
        out.append(
            f"[11] stale-translation bookkeeping disagrees with the pmaps:"
            f" uvm.nstale {uvm.nstale}, the stale lists hold {nstale}"
        )
