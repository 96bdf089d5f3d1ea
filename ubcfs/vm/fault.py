"""Page faults of simulated processes and wiring (~ uvm_fault.c: uvm_fault, uvm_fault_wire,
uvm_fault_unwire, uvm_fault_unwire_locked; uvm_map.c: uvm_map_pageable, uvm_map_entry_unwire;
uvm_glue.c: uvm_vslock, uvm_vsunlock).

A fault is resolved as NetBSD structures it:

1. *Check*: find the map entry (EFAULT outside every entry; a map flagged interrupt-safe
   is refused before its lock is taken), check the access against the entry's protection
   -- its **maximum** protection for a ``VM_FAULT_WIREMAX`` fault (the seed's change) --
   and resolve a pending copy-on-write of the amap (``needs_copy``) if the fault will
   write, or is a WIREMAX fault of an entry whose maximum protection includes write, or
   maps anonymous memory (which lives only in the amap).
2. *Upper layer*: an anon in the amap holds the page: bring it in from swap if need be;
   copy it to a new anon first if the access writes (or wires for write) and the anon is
   shared (``ref > 1``); otherwise map a shared anon read-only.
3. *Lower layer*: the object's page (``pgo_get``, one page, no neighbours, no
   PGO_NOBLOCKALLOC: a write fault into a hole allocates its blocks there, and a full disk
   is ENOSPC at the fault; EINVAL past EOF is the process's SIGBUS), mapped as it is for a
   shared mapping -- read-only if PG_RDONLY (a hole read) -- or read-only for a private
   one; a write to a private mapping *promotes* it: the data is copied into a new anon in
   the amap.  Anonymous memory with no anon yet gets a zero-filled one.

Then ``pmap_enter`` with PMAP_CANFAIL: when the pv pool is empty, everything is let go,
the fault waits for the pagedaemon (``uvm_wait``) and starts again from the map lookup
(``canfail_retries``).  A fault in a wired entry, or a wiring fault, enters the mapping
wired and wires the page instead of activating it.

Every ``await`` here (the pager's get, a swap-in, a wait for a busy page or for memory) is
taken with no lock held and only the pages the fault busied; afterwards the map's
timestamp is compared and the fault restarts (ERESTART inside, never to the caller) if
the map changed, as the kernel's relock does.

Unwiring skips an address that has no translation any more (kernel: "just skip that
page" in uvm_fault_unwire_locked): truncation removes wired mappings of the pages it frees,
and the later munlock, munmap or exit finds nothing there (``unwire_skips``).  The pmap
wiring of an address is cleared only when its entry is no longer wired (Thorpe's physio
fix: a vsunlock inside an mlocked range leaves the mapping wired), nor a vslock hold there.

A ``uvm_vslock`` records one hold per page (``PageHold``, in the map and on the page):
in the kernel physio unlocks within the same system call, here the unlock is a later
command, so the hold is what it unlocks -- the page it wired, even if a promotion has
since moved the mapping to another page; a hold whose page truncation freed is skipped.
A vsunlock of a range that holds nothing is EINVAL, and munmap and exit drop the holds of
their range (no raw I/O outlives its buffer).
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Final

import trio

from ubcfs.vm.amap import amap_add, amap_lookup, amap_unref_range
from ubcfs.vm.anon import VmAnon, analloc, anfree
from ubcfs.vm.diag import panic
from ubcfs.vm.hist import H_FAULT, H_UNWIRE, H_UNWIRE_SKIP, H_WIRE
from ubcfs.vm.map import (
    VM_MAP_INTRSAFE,
    VmMap,
    VmMapEntry,
    amap_copy_entry,
    uvm_map_lookup_entry,
)
from ubcfs.vm.page import (
    PG_BUSY,
    PG_FAKE,
    PG_RDONLY,
    PageHold,
    page_unbusy,
    pageactivate,
    pagealloc,
    pagemarkdirty,
    pageunwire,
    pagewait,
    pagewire,
)
from ubcfs.vm.pager import PGO_SYNCIO, uvm_wait
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    PMAP_CANFAIL,
    PMAP_WIRED,
    Pte,
    pmap_enter,
    pmap_lookup,
    pmap_page_protect,
    pmap_unwire,
    pmap_update,
)

if TYPE_CHECKING:
    from ubcfs.vm.amap import VmAmap
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.uvm import Uvm

VM_FAULT_NORMAL: Final = 0  # an access by the process
VM_FAULT_WIRE: Final = 1  # wiring: narrow, enters the mapping wired
VM_FAULT_WIREMAX: Final = 2  # wiring, checked against the maximum protection (seed)

_P_READ: Final = Prot.READ.value
_P_WRITE: Final = Prot.WRITE.value

FAULT_NOMEM_WAIT: Final = 5.0  # seconds a fault waits for memory before it fails

# How a fault wires what it maps.
_WIRE_NONE: Final = 0
_WIRE_ENTRY: Final = 1  # an access in a wired entry (the page was unmapped meanwhile)
_WIRE_FAULT: Final = 2  # a wiring fault: one more wiring of the page
# A vslock's fault in a wired entry: one more wiring, and the entry's own if the address
# does not map the page (truncation took the entry's page, this is a new one).
_WIRE_BOTH: Final = 3


async def uvm_fault(vm: VmMap, va: int, access: int, fault_type: int = VM_FAULT_NORMAL) -> int:
    """Resolve a fault at ``va`` for ``access`` (Prot bits) in ``vm`` (kernel: uvm_fault).

    Returns:
        0 (the access can be retried and will succeed, barring a pageout meanwhile);
        EFAULT: no mapping there, or an interrupt-safe map; EACCES: protection;
        EINVAL: past the end of the mapped file (SIGBUS); EIO: the page could not be read
        (or its swap copy is lost); ENOSPC/ENOMEM, or a write-back errno: memory stayed
        short (``uvm_wait``'s bound).

    => may sleep; holds no lock across a sleep.  Never call it from an I/O completion.
    """
    if vm.flags & VM_MAP_INTRSAFE:
        # Refused before the map lock is even tried (Thorpe): an interrupt-safe map is
        # locked by interrupt handlers, and nothing may sleep on it.
        vm.uvm.uvmexp.fault_intrsafe += 1
        return errno.EFAULT
    h = vm.uvm.hist
    if h is not None:
        h.log(H_FAULT, vm.name, va, access)
    since: float | None = None
    while True:
        err = await _fault_once(vm, va, access, fault_type, since)
        if err != errno.ERESTART:
            return err
        if since is None:
            since = trio.current_time()


def _wants_copy(entry: VmMapEntry, access: int, fault_type: int) -> bool:
    """Will this fault write (or wire for writing) through ``entry``?  Then a private
    mapping's data must be its own (kernel: cow_now)."""
    if access & _P_WRITE:
        return True
    return fault_type == VM_FAULT_WIREMAX and bool(entry.maxprot & _P_WRITE)


async def _fault_once(vm: VmMap, va: int, access: int, fault_type: int, since: float | None) -> int:
    uvm = vm.uvm
    exp = uvm.uvmexp
    exp.faults += 1
    pgva = va & ~uvm.page_mask
    with vm.lock:
        entry = uvm_map_lookup_entry(vm, pgva)
        if entry is None:
            return errno.EFAULT
        check = entry.maxprot if fault_type == VM_FAULT_WIREMAX else entry.prot
        if access & ~check:
            return errno.EACCES
        if fault_type == VM_FAULT_WIRE and entry.wired_count > 0:
            wired = _WIRE_BOTH
        elif fault_type != VM_FAULT_NORMAL:
            wired = _WIRE_FAULT
        else:
            wired = _WIRE_ENTRY if entry.wired_count > 0 else _WIRE_NONE
        enter_prot = entry.prot
        if wired:
            access = enter_prot  # full access for wired (seeds referenced and modified)
        cow = _wants_copy(entry, access, fault_type)
        old = None
        if entry.needs_copy and (cow or entry.obj is None):
            old = amap_copy_entry(vm, entry)
        if entry.needs_copy:
            enter_prot &= ~_P_WRITE  # still sharing its amap: the first write copies it
        stamp = vm.timestamp
        amap = entry.amap
        slot = entry.amap_off + ((pgva - entry.start) >> uvm.page_shift)
        anon = None
        if amap is not None:
            with amap.lock:
                anon = amap_lookup(amap, slot)
    if old is not None:
        # The amap shared since fork was copied: drop our reference to it now that the
        # map is unlocked (it may free anons, and sleep), then look everything up again.
        await amap_unref_range(uvm, *old)
        return errno.ERESTART
    if anon is not None:
        return await _upper(vm, entry, pgva, anon, slot, enter_prot, access, wired, cow, since)
    return await _lower(vm, entry, pgva, slot, stamp, enter_prot, access, wired, cow, since)


def _enter(vm: VmMap, pgva: int, pg: VmPage, prot: int, access: int, wired: int) -> bool:
    """pmap_enter for a fault; False when the pv pool is empty (PMAP_CANFAIL).  A wiring
    fault (mlock's, vslock's) wires the page once more; a fault in a wired entry wires it
    for the entry unless this address already maps it wired (a protection fault there, or
    the entry's wiring is there) -- so a vslock's fault in a wired entry whose page
    truncation took wires the new page twice, for the entry and for the hold."""
    wirings = 1 if wired == _WIRE_FAULT else 0
    if wired in (_WIRE_ENTRY, _WIRE_BOTH):
        old = pmap_lookup(vm.pmap, pgva >> vm.uvm.page_shift)
        held = isinstance(old, Pte) and old.pg is pg and old.wired
        wirings = (0 if held else 1) + (1 if wired == _WIRE_BOTH else 0)
    flags = (access & prot) | PMAP_CANFAIL | (PMAP_WIRED if wired else 0)
    if pmap_enter(vm.pmap, pgva, pg, prot, flags):
        return False
    uvm = vm.uvm
    for _ in range(wirings):
        pagewire(uvm, pg)
    if not wirings and pg.wire_count == 0:
        pageactivate(uvm, pg)
    pmap_update(vm.pmap)
    return True


async def _shortage(vm: VmMap, since: float | None) -> int:
    """pmap_enter found no pv entry: wait for the pagedaemon, then refault (kernel: the
    PMAP_CANFAIL path of uvm_fault)."""
    vm.uvm.uvmexp.canfail_retries += 1
    return await _wait_memory(vm.uvm, since)


async def _wait_memory(uvm: Uvm, since: float | None) -> int:
    """Wait for the pagedaemon to free memory, then refault (ERESTART); ENOMEM once the
    fault has waited ``FAULT_NOMEM_WAIT`` seconds in all (memory full of pages nothing can
    free, e.g. anonymous memory with no swap: the kernel's OOM killer would act; here the
    access fails), or the write-back errno that ``uvm_wait`` gives."""
    if since is not None and trio.current_time() - since >= FAULT_NOMEM_WAIT:
        uvm.uvmexp.fault_nomem += 1
        return errno.ENOMEM
    err = await uvm_wait(uvm, "uvm_fault", 1, since)
    return err or errno.ERESTART


async def _upper(
    vm: VmMap,
    entry: VmMapEntry,
    pgva: int,
    anon: VmAnon,
    slot: int,
    enter_prot: int,
    access: int,
    wired: int,
    cow: bool,
    since: float | None,
) -> int:
    """The amap has an anon for the page (kernel: the upper-layer half of uvm_fault)."""
    uvm = vm.uvm
    pg = anon.page
    if pg is None:
        if anon.swslot <= 0:
            return errno.EIO  # its only copy was lost (a bad slot, scenario 22)
        swap = uvm.swap
        if swap is None:
            panic(f"uvm_fault: {anon!r} has a slot but there is no swap")
        err, npg = await swap.anon_swapin(anon)
        if err == errno.ENOMEM:
            return await _wait_memory(uvm, since)
        if err:
            return err
        assert npg is not None
        pageactivate(uvm, npg)
        page_unbusy(uvm, npg)
        return errno.ERESTART  # look everything up again: we slept
    if pg.flags & PG_BUSY:
        await pagewait(uvm, pg, "uvm_fault")
        return errno.ERESTART
    amap = entry.amap
    assert amap is not None
    if cow and anon.ref > 1:
        # Copy-on-write: this amap gets an anon of its own with a copy of the page.
        made = await _anon_alloc(uvm, pg)
        if made is None:
            return await _wait_memory(uvm, since)
        nanon, npg = made
        with amap.lock:
            if amap_lookup(amap, slot) is not anon:
                panic(f"uvm_fault: amap slot {slot} changed under a fault that did not sleep")
            with anon.lock:
                anon.ref -= 1  # others still hold it: its ref was > 1
            amap_add(amap, slot, nanon, replace=True)
        if amap.shared:
            _protect_for_sharers(uvm, pg)
        page_unbusy(uvm, npg)
        anon, pg = nanon, npg
    prot = enter_prot
    if anon.ref > 1:
        prot &= ~_P_WRITE  # shared with another amap: the next write copies it
    if access & _P_WRITE or wired:
        # The page is to be written (or wired, scenario 7): its swap copy becomes stale.
        pagemarkdirty(pg)
    if not _enter(vm, pgva, pg, prot, access, wired):
        return await _shortage(vm, since)
    return 0


async def _anon_alloc(uvm: Uvm, src: VmPage | None) -> tuple[VmAnon, VmPage] | None:
    """A new anon with a page holding a copy of ``src`` (or zeros), valid and dirty (no
    slot holds it), still busy; None when memory is short (the anon is freed again)."""
    nanon = analloc()
    with nanon.lock:  # locked only once it exists (the seed's amap_cow_now order)
        npg = pagealloc(uvm, None, 0, anon=nanon)
    if npg is None:
        nanon.ref = 0
        await anfree(uvm, nanon)
        return None
    if src is None:
        uvm.physmem.zero(npg.phys_addr)
        uvm.uvmexp.zero_fills += 1
    else:
        uvm.physmem.copy(src.phys_addr, npg.phys_addr)
        uvm.uvmexp.cow_copies += 1
    npg.flags &= ~PG_FAKE
    pagemarkdirty(npg)
    return nanon, npg


async def _lower(
    vm: VmMap,
    entry: VmMapEntry,
    pgva: int,
    slot: int,
    stamp: int,
    enter_prot: int,
    access: int,
    wired: int,
    cow: bool,
    since: float | None,
) -> int:
    """No anon: the object's page, or a new zero-filled anon (kernel: the lower-layer half
    of uvm_fault)."""
    uvm = vm.uvm
    obj = entry.obj
    if obj is None:
        return await _promote(vm, entry, pgva, slot, None, enter_prot, access, wired, since)
    assert obj.pgops is not None
    offset = entry.offset + (pgva - entry.start)
    promote = entry.copy_on_write and cow
    get_access = _P_READ if promote or entry.copy_on_write else access
    err, pages = await obj.pgops.get(obj, offset, 1, get_access, PGO_SYNCIO)
    if err:
        return err
    pg = pages[0]
    assert pg is not None
    if vm.timestamp != stamp or uvm_map_lookup_entry_unlocked(vm, pgva) is not entry:
        # The map changed while the pager slept: start again.
        pageactivate(uvm, pg)
        page_unbusy(uvm, pg)
        return errno.ERESTART
    if promote:
        return await _promote(vm, entry, pgva, slot, pg, enter_prot, access, wired, since)
    prot = enter_prot
    # A write's get gave a hole its blocks and cleared PG_RDONLY (genfs: GOP_ALLOC; an
    # aobj: its file system's capacity), or failed (ENOSPC) above; a read's get marked a
    # hole's page PG_RDONLY, so that the first store faults again and allocates.
    if entry.copy_on_write or pg.flags & PG_RDONLY:
        prot &= ~_P_WRITE  # private: a write promotes; a hole: a write allocates
    ok = _enter(vm, pgva, pg, prot, access, wired)
    page_unbusy(uvm, pg)
    if not ok:
        pageactivate(uvm, pg)
        return await _shortage(vm, since)
    return 0


def uvm_map_lookup_entry_unlocked(vm: VmMap, va: int) -> VmMapEntry | None:
    """``uvm_map_lookup_entry`` taking the map lock itself (the fault's relock)."""
    with vm.lock:
        return uvm_map_lookup_entry(vm, va)


async def _promote(
    vm: VmMap,
    entry: VmMapEntry,
    pgva: int,
    slot: int,
    opg: VmPage | None,
    enter_prot: int,
    access: int,
    wired: int,
    since: float | None,
) -> int:
    """Give the page a new anon in the entry's amap (kernel: the promote and zero-fill
    cases of uvm_fault's lower layer): a copy of the object page ``opg`` for a write (or
    wiring for write) to a private mapping, zeros for the first touch of anonymous memory.
    => ``opg``, if any, is busy, ours; it is let go here."""
    uvm = vm.uvm
    amap = entry.amap
    assert amap is not None
    made = await _anon_alloc(uvm, opg)
    if opg is not None:
        pageactivate(uvm, opg)
        page_unbusy(uvm, opg)
    if made is None:
        return await _wait_memory(uvm, since)
    nanon, npg = made
    with amap.lock:
        amap_add(amap, slot, nanon)
    if opg is not None and amap.shared:
        _protect_for_sharers(uvm, opg)
    ok = _enter(vm, pgva, npg, enter_prot, access, wired)
    page_unbusy(uvm, npg)
    if not ok:
        pageactivate(uvm, npg)
        return await _shortage(vm, since)
    return 0


def _protect_for_sharers(uvm: Uvm, pg: VmPage) -> None:
    """A page was copied into a new anon of a *shared* amap: every sharer must stop using
    the old page, but the amap does not know which maps share it, so every mapping of the
    page goes (kernel: pmap_page_protect(pg, VM_PROT_NONE) in uvm_fault) -- wired ones
    included, which is the seed's ptrace story.  With VM_FAULT_WIREMAX no private mapping
    wires a vnode page any more; what is left is a MAP_SHARED mapping that a process has
    wired (the case the seed leaves open).  That mapping belongs to no amap and must keep
    the page, so this project enters it again at once, wired as before (``shared_wired_kept``),
    instead of letting the later unwire skip it and leave the page wired for ever.
    """
    keep: list[tuple[VmMap, Pte]] = []
    for pte in pg.pvlist or []:
        if not pte.wired:
            continue
        for vm in uvm.maps:
            if vm.pmap is pte.pmap:
                with vm.lock:
                    e = uvm_map_lookup_entry(vm, pte.va)
                if e is not None and e.wired_count and not e.copy_on_write:
                    keep.append((vm, pte))
                break
    pmap_page_protect(uvm, pg, 0)
    for vm, pte in keep:
        pmap_enter(vm.pmap, pte.va, pg, pte.prot, PMAP_WIRED)  # a pv entry was just freed
        pmap_update(vm.pmap)
        uvm.uvmexp.shared_wired_kept += 1


# --- wiring -------------------------------------------------------------------------------


async def _wire_range(
    vm: VmMap, start: int, end: int, access: int, fault_type: int
) -> tuple[int, int]:
    """Fault in and wire the pages of [start, end) in order: (0, end), or (errno, the
    address that failed) with the pages before it left wired."""
    ps = vm.uvm.page_size
    va = start
    while va < end:
        err = await uvm_fault(vm, va, access, fault_type)
        if err:
            return err, va
        va += ps
    return 0, end


def uvm_fault_unwire(vm: VmMap, start: int, end: int) -> None:
    """Unwire [start, end) (kernel: uvm_fault_unwire): takes the map lock for
    ``uvm_fault_unwire_locked``.  => the map is not locked (the lock panics on a second
    entry); never sleeps."""
    with vm.lock:
        uvm_fault_unwire_locked(vm, start, end)


def uvm_fault_unwire_locked(vm: VmMap, start: int, end: int) -> None:
    """Drop one wiring of each page mapped in [start, end) (kernel: uvm_fault_unwire_locked).

    An address with no translation is skipped: truncation freed its page and removed the
    wired mapping with it (``unwire_skips``).  The pmap wiring goes only where neither the
    map entry (the physio fix) nor a ``uvm_vslock`` hold still wires it.

    => the map is locked (asserted, Thorpe).  => never sleeps.
    """
    vm.lock.assert_locked()
    uvm = vm.uvm
    exp = uvm.uvmexp
    shift = uvm.page_shift
    va = start
    while va < end:
        pte = pmap_lookup(vm.pmap, va >> shift)
        if not isinstance(pte, Pte) or pte.pg is None:
            exp.unwire_skips += 1  # "just skip that page": truncation took it
            _hist_skip(vm, va)
            va += uvm.page_size
            continue
        entry = uvm_map_lookup_entry(vm, va)
        if entry is None:
            panic(f"uvm_fault_unwire: {va:#x} is mapped in {vm.pmap.name} but not in {vm!r}")
        if not pte.wired:
            panic(f"uvm_fault_unwire: the mapping at {va:#x} of {vm!r} is not wired")
        if entry.wired_count == 0 and not _held_at(vm, va, pte.pg):
            pmap_unwire(vm.pmap, va)
        pageunwire(uvm, pte.pg)
        va += uvm.page_size


def uvm_map_entry_unwire(vm: VmMap, entry: VmMapEntry) -> None:
    """An entry stops being wired: count to 0, then unwire its range (kernel:
    uvm_map_entry_unwire).  => map locked."""
    entry.wired_count = 0
    uvm_fault_unwire_locked(vm, entry.start, entry.end)


async def uvm_map_pageable(vm: VmMap, start: int, end: int, wire: bool) -> int:
    """mlock (``wire``) or munlock of [start, end) (kernel: uvm_map_pageable).

    Wiring, pass 1 under the map lock: clip, and for an entry not yet wired whose maximum
    protection includes write (or with no object), resolve its copy-on-write now; mark the
    entries wired.  Pass 2, unlocked: ``uvm_fault_wire`` with VM_FAULT_WIREMAX each entry
    that just became wired, so that a private mapping's pages are anon copies from the
    start (the seed's fix for the ptrace story).  On failure every entry wired here is
    unwired again (the private pages already copied stay copied).  The caller keeps the
    map from changing meanwhile (kernel: the map is marked busy for pass 2): the control
    channel runs one process command at a time.  Locks do not stack (POSIX): an mlocked
    range is not wired twice, and one munlock unwires it.

    Returns:
        0; ENOMEM when part of the range is not mapped; EAGAIN when it would wire more
        than ``wiredmax`` pages in all; or the fault's errno.

    => may sleep (pass 2).
    """
    with vm.lock:
        from ubcfs.vm.map import clip_range, range_is_mapped

        if not range_is_mapped(vm, start, end):
            return errno.ENOMEM
        entries = clip_range(vm, start, end)
        _hist_range(vm, H_WIRE if wire else H_UNWIRE, start, end)
        if not wire:
            for e in entries:
                if e.wired_count:
                    uvm_map_entry_unwire(vm, e)
            vm.timestamp += 1
            return 0
        want = sum((e.end - e.start) >> vm.uvm.page_shift for e in entries if not e.wired_count)
        exp = vm.uvm.uvmexp
        if exp.wired + want > exp.wiredmax:
            return errno.EAGAIN  # the system's wiring limit (kernel: uvmexp.wiredmax)
        new: list[VmMapEntry] = []
        drops: list[tuple[VmAmap, int, int]] = []
        for e in entries:
            if e.wired_count:
                continue
            if e.needs_copy and (e.maxprot & _P_WRITE or e.obj is None):
                old = amap_copy_entry(vm, e)
                if old is not None:
                    drops.append(old)
            e.wired_count = 1
            new.append(e)
        vm.timestamp += 1
    for amap, slot, n in drops:
        await amap_unref_range(vm.uvm, amap, slot, n)
    for i, e in enumerate(new):
        err, va = await _wire_range(vm, e.start, e.end, _P_READ, VM_FAULT_WIREMAX)
        if err:
            # Undo: the entries first (so that the pmap wirings go too), then the pages.
            with vm.lock:
                for undo in new:
                    undo.wired_count = 0
                for undo in new[:i]:
                    uvm_fault_unwire_locked(vm, undo.start, undo.end)
                uvm_fault_unwire_locked(vm, e.start, va)
                vm.timestamp += 1
            return err
    return 0


async def uvm_vslock(vm: VmMap, start: int, end: int, access: int) -> int:
    """Wire a user buffer for raw I/O that needs ``access`` to it (kernel: uvm_vslock,
    uvm_fault_wire): fault in and wire each page and its mapping, without marking the map
    entries wired, and record a hold per page (``PageHold``) for ``uvm_vsunlock``.  On a
    failure (EACCES when the mapping does not allow ``access``, or the fault's errno) the
    pages already wired are unwired again.  => may sleep; the map unlocked."""
    uvm = vm.uvm
    _hist_range(vm, H_WIRE, start, end)
    va = start
    while va < end:
        err = await uvm_fault(vm, va, access, VM_FAULT_WIRE)
        if err:
            with vm.lock:
                _vsunlock_locked(vm, start, va)
            return err
        # No sleep since the fault: its wired translation is there.
        pte = pmap_lookup(vm.pmap, va >> uvm.page_shift)
        if not isinstance(pte, Pte) or pte.pg is None or not pte.wired:
            panic(f"uvm_vslock: the wiring fault at {va:#x} of {vm!r} left {pte!r}")
        hold = PageHold(pte.pg, va)
        vm.vslocks.setdefault(va, []).append(hold)
        uvm.page_holds.setdefault(pte.pg, []).append(hold)
        va += uvm.page_size
    return 0


def uvm_vsunlock(vm: VmMap, start: int, end: int) -> int:
    """Undo ``uvm_vslock`` (kernel: uvm_vsunlock): drop the newest hold of each page of
    [start, end); 0, or EINVAL (nothing changed) when some page there holds none.  A
    page that truncation took is skipped (``unwire_skips``); the pmap wiring stays where
    an mlock still holds the entry wired (scenario 3).  => never sleeps."""
    with vm.lock:
        ps = vm.uvm.page_size
        if any(va not in vm.vslocks for va in range(start, end, ps)):
            return errno.EINVAL
        _hist_range(vm, H_UNWIRE, start, end)
        _vsunlock_locked(vm, start, end)
    return 0


def _vsunlock_locked(vm: VmMap, start: int, end: int) -> None:
    for va in range(start, end, vm.uvm.page_size):
        holds = vm.vslocks.get(va)
        if holds:
            hold = holds.pop()
            if not holds:
                del vm.vslocks[va]
            vslock_release(vm, hold)


def vslock_release(vm: VmMap, hold: PageHold) -> None:
    """Drop one ``uvm_vslock`` hold that is out of ``vm.vslocks``: the page's wiring, and
    its translation's unless the entry or another hold there still wires it.  A hold whose
    page was freed is skipped (``unwire_skips``).  => the map is locked; never sleeps."""
    vm.lock.assert_locked()
    uvm = vm.uvm
    pg = hold.pg
    if pg is None:
        uvm.uvmexp.unwire_skips += 1  # "just skip that page": truncation took it
        _hist_skip(vm, hold.va)
        return
    hold.pg = None
    holds = uvm.page_holds[pg]
    holds.remove(hold)
    if not holds:
        del uvm.page_holds[pg]
    va = hold.va
    pte = pmap_lookup(vm.pmap, va >> uvm.page_shift)
    if isinstance(pte, Pte) and pte.pg is pg and pte.wired:
        entry = uvm_map_lookup_entry(vm, va)
        if (entry is None or entry.wired_count == 0) and not _held_at(vm, va, pg):
            pmap_unwire(vm.pmap, va)
    pageunwire(uvm, pg)


def _hist_skip(vm: VmMap, va: int) -> None:
    h = vm.uvm.hist
    if h is not None:
        h.log(H_UNWIRE_SKIP, vm.name, va, 1)


def _hist_range(vm: VmMap, kind: str, start: int, end: int) -> None:
    h = vm.uvm.hist
    if h is not None:
        h.log(kind, vm.name, start, end)


def _held_at(vm: VmMap, va: int, pg: VmPage) -> bool:
    """Does a live ``uvm_vslock`` hold of ``vm`` at ``va`` wire ``pg``?"""
    return any(h.pg is pg for h in vm.vslocks.get(va, ()))
