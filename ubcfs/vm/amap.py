"""Anonymous maps (~ uvm_amap.h, uvm_amap.c: amap_alloc, amap_lookup, amap_add, amap_unadd,
amap_ref, amap_unref, amap_wipeout, amap_copy, amap_cow_now).

A ``VmAmap`` is the upper layer of a mapping of anonymous memory: per page index of its
map entry, the anon that holds that page, if any.  It is reference counted (map entries
that use it) and ``shared`` once more than one of them does so on purpose (MAP_SHARED of
anonymous memory, ``uvm_map_extract``): a promotion must then be seen by every sharer.
Copy-on-write is lazy: ``amap_copy`` makes a new amap whose slots point at the same anons
(each anon gains a reference); ``amap_cow_now`` gives every slot whose anon is still
shared an anon of its own with a copy of the page (fork of a wired entry, mlock of a
private mapping).

What is per page and what per run: one dict entry per page that has an anon; nothing for
the others (kernel: am_anon[] with am_slots[] / am_bckptr[] for the used ones).

Locking (Thorpe's assertions, as owner checks): lookups and changes of the slots assert
``amap.lock``; ``amap_wipeout`` and ``amap_cow_now`` take it themselves, for sections that do
not sleep, and drop it around their sleeps.  ``amap_cow_now`` follows the seed's order: the
new anon is locked only after it has been allocated, and on failure it is unreferenced and
unlocked before it is freed.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from ubcfs.vm.anon import VmAnon, analloc, anfree
from ubcfs.vm.diag import SimpleLock, panic
from ubcfs.vm.page import (
    PG_BUSY,
    PG_FAKE,
    page_unbusy,
    pageactivate,
    pagealloc,
    pagemarkdirty,
    pagewait,
)
from ubcfs.vm.pager import uvm_wait

if TYPE_CHECKING:
    from ubcfs.vm.uvm import Uvm


class VmAmap:
    """An anonymous map (kernel: struct vm_amap).

    Attributes:
        nslot: page slots (the size of the map entry it belongs to).
        anons: slot -> anon, for the slots that have one (kernel: am_anon).
        ref: map entries referencing it (kernel: am_ref).
        ppref: per slot, how many of those references cover it, once references cover
            parts of the amap (a clipped entry, a partial share); None while every
            reference covers every slot (kernel: am_ppref and PPREF_NONE).
        shared: shared on purpose by several entries (kernel: AMAP_SHARED).
        lock: the amap lock.
    """

    __slots__ = ("anons", "lock", "nslot", "ppref", "ref", "shared")

    def __init__(self, nslot: int) -> None:
        if nslot <= 0:
            raise ValueError(f"amap: {nslot} slots")
        self.nslot = nslot
        self.anons: dict[int, VmAnon] = {}
        self.ref = 1
        self.ppref: list[int] | None = None
        self.shared = False
        self.lock = SimpleLock("amap")

    def __repr__(self) -> str:
        return f"<VmAmap nslot={self.nslot} used={len(self.anons)} ref={self.ref}>"

    def _slot(self, slot: int) -> None:
        if not 0 <= slot < self.nslot:
            panic(f"amap: slot {slot} outside 0..{self.nslot}")


def amap_alloc(uvm: Uvm, nslot: int) -> VmAmap:
    """A new, empty amap with one reference, registered with the machine (audits)."""
    amap = VmAmap(nslot)
    uvm.amaps.add(amap)
    return amap


def amap_lookup(amap: VmAmap, slot: int) -> VmAnon | None:
    """The anon of ``slot``, or None.  => amap locked."""
    amap.lock.assert_locked()
    amap._slot(slot)
    return amap.anons.get(slot)


def amap_add(amap: VmAmap, slot: int, anon: VmAnon, replace: bool = False) -> None:
    """Put ``anon`` (whose reference the caller hands over) in ``slot`` (kernel: amap_add).
    => amap locked; ``replace``: the slot has an anon, whose reference the caller has
    dropped; else it is empty."""
    amap.lock.assert_locked()
    amap._slot(slot)
    if (slot in amap.anons) != replace:
        panic(f"amap_add: slot {slot} {'empty' if replace else 'in use'}")
    amap.anons[slot] = anon


def amap_unadd(amap: VmAmap, slot: int) -> VmAnon:
    """Take the anon out of ``slot`` and return it, with the reference it held (kernel:
    amap_unadd).  => amap locked; the slot has an anon."""
    amap.lock.assert_locked()
    anon = amap.anons.pop(slot, None)
    if anon is None:
        panic(f"amap_unadd: slot {slot} is empty")
    return anon


def amap_ref(amap: VmAmap, shared: bool) -> None:
    """One more map entry uses all of ``amap`` (kernel: amap_ref); ``shared``: on purpose."""
    amap_ref_range(amap, 0, amap.nslot, shared)


async def amap_unref(uvm: Uvm, amap: VmAmap) -> None:
    """A map entry that used all of ``amap`` stops using it; the last one wipes it out
    (kernel: amap_unref).  => may sleep (in ``amap_wipeout``)."""
    await amap_unref_range(uvm, amap, 0, amap.nslot)


def _pp_establish(amap: VmAmap) -> list[int]:
    """Per-slot reference counts, made when references stop covering the whole amap
    (kernel: amap_pp_establish)."""
    if amap.ppref is None:
        amap.ppref = [amap.ref] * amap.nslot
    return amap.ppref


def amap_splitref(amap: VmAmap) -> None:
    """A map entry using ``amap`` is split in two, each half keeping its own slots (kernel:
    amap_splitref): one more reference, no slot more referenced than before."""
    _pp_establish(amap)
    amap.ref += 1


def amap_ref_range(amap: VmAmap, slot: int, n: int, shared: bool) -> None:
    """One more map entry uses slots [slot, slot + n) of ``amap`` (kernel: amap_ref with
    a range, as fork's sharing and ``uvm_map_extract`` do); ``shared``: on purpose."""
    amap._slot(slot)
    amap._slot(slot + n - 1)
    if amap.ppref is not None or slot or n != amap.nslot:
        pp = _pp_establish(amap)
        for i in range(slot, slot + n):
            pp[i] += 1
    amap.ref += 1
    if shared:
        amap.shared = True


async def amap_unref_range(uvm: Uvm, amap: VmAmap, slot: int, n: int) -> None:
    """A map entry that used slots [slot, slot + n) of ``amap`` goes (kernel: amap_unref
    with amap_pp_adjref): the anons of slots nobody references any more are let go; the
    last reference wipes the amap out.  => may sleep (freeing anons)."""
    if amap.ref <= 0:
        panic(f"amap_unref_range: {amap!r} has no reference left")
    pp = amap.ppref
    drop: list[int] = []
    if pp is not None:
        for i in range(slot, slot + n):
            pp[i] -= 1
            if pp[i] < 0:
                panic(f"amap_unref_range: slot {i} of {amap!r} unreferenced twice")
            if pp[i] == 0 and i in amap.anons:
                drop.append(i)
    amap.ref -= 1
    if amap.ref == 0:
        await amap_wipeout(uvm, amap)
        return
    if amap.ref == 1:
        amap.shared = False
    for i in drop:
        with amap.lock:
            anon = amap_unadd(amap, i)
        with anon.lock:
            anon.ref -= 1
            last = anon.ref == 0
        if last:
            await anfree(uvm, anon)


async def amap_wipeout(uvm: Uvm, amap: VmAmap) -> None:
    """Drop every anon reference of a dead amap, freeing the anons nobody else holds
    (kernel: amap_wipeout).  => the amap has no reference; may sleep (in ``anfree``)."""
    if amap.ref:
        panic(f"amap_wipeout: {amap!r} still referenced")
    while amap.anons:
        with amap.lock:
            slot, anon = next(iter(amap.anons.items()))
            amap_unadd(amap, slot)
        with anon.lock:
            anon.ref -= 1
            last = anon.ref == 0
        if last:
            await anfree(uvm, anon)  # unlocked, as anfree requires
    uvm.amaps.discard(amap)


def amap_copy(uvm: Uvm, amap: VmAmap, slot: int = 0, n: int = -1) -> VmAmap:
    """A private copy of slots [slot, slot + n) of ``amap`` (all of it by default) for a
    copy-on-write entry: the same anons, each with one more reference (kernel: amap_copy);
    the caller drops its reference to ``amap``."""
    if n < 0:
        n = amap.nslot - slot
    new = amap_alloc(uvm, n)
    with amap.lock:
        for i, anon in amap.anons.items():
            if slot <= i < slot + n:
                with anon.lock:
                    anon.ref += 1
                new.anons[i - slot] = anon
    return new


async def amap_cow_now(uvm: Uvm, amap: VmAmap) -> int:
    """Resolve every pending copy-on-write of ``amap`` now: each slot whose anon has other
    references gets a new anon holding a copy of the page (kernel: amap_cow_now, used when an
    entry is wired).  Returns 0, or EAGAIN when a shared anon's page is not resident (the
    swap-in of anons comes with the processes issue).

    => not for a shared amap (its sharers must all see the same anons).
    => may sleep: on a busy page, and for memory (nothing is locked meanwhile).
    """
    if amap.shared:
        panic(f"amap_cow_now: {amap!r} is shared")
    exp = uvm.uvmexp
    slot = 0
    while slot < amap.nslot:
        with amap.lock:
            anon = amap_lookup(amap, slot)
        if anon is None or anon.ref == 1:
            slot += 1
            continue
        old = anon.page
        if old is None:
            return errno.EAGAIN
        if old.flags & PG_BUSY:
            await pagewait(uvm, old, "amap_cow_now")
            continue  # look again: it may have changed meanwhile
        nanon = analloc()
        with nanon.lock:  # locked only once it exists
            npg = pagealloc(uvm, None, 0, anon=nanon)
        if npg is None:
            # No memory: unreference and unlock the new anon before freeing it, then wait.
            nanon.ref = 0
            await anfree(uvm, nanon)
            await uvm_wait(uvm, "amap_cow_now")
            continue
        uvm.physmem.copy(old.phys_addr, npg.phys_addr)
        exp.cow_copies += 1
        with amap.lock:
            if amap_lookup(amap, slot) is not anon:
                panic(f"amap_cow_now: slot {slot} changed while it was copied")
            with anon.lock:
                anon.ref -= 1  # still referenced elsewhere: it had ref > 1
            amap.anons[slot] = nanon
        npg.flags &= ~PG_FAKE
        pagemarkdirty(npg)  # no slot holds the copy
        pageactivate(uvm, npg)
        page_unbusy(uvm, npg)
        slot += 1
    return 0
