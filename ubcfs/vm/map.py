"""Address maps of simulated processes (~ uvm_map.h, uvm_map.c: vm_map, vm_map_entry,
uvm_map, uvm_unmap, uvm_map_lookup_entry, the entry clipping, uvm_map_protect).

A ``VmMap`` is one address space: entries sorted by address, each mapping a range
``[start, end)`` of a memory object (``obj`` at ``offset``; a file's object, or none for
anonymous memory) under an optional amap (the upper layer of anons that private and
anonymous mappings write into), with a protection, a maximum protection, an inheritance
for fork, and a wiring count.  Its pmap holds the translations the faults make
(``ubcfs.vm.fault``).

Object references.  Every entry that maps an object holds one reference on it
(``UvmObject.refs``, kernel: pgo_reference/pgo_detach) and, through ``objref``, on whatever
keeps the object alive above the VM (a vnode's use count): a mapped file stays valid after
its last close, and goes only when its last mapping does.

Clipping.  An operation on part of an entry first splits it at the range's edges
(kernel: uvm_map_clip_start/end).  The two halves of an entry with an amap share it: the
amap gains a reference and keeps per-slot reference counts (``VmAmap.ppref``, kernel:
amap_pp_establish), so that unmapping one half frees the anons only that half used.

Locking (owner checks): the map lock (kernel: vm_map lock, here one owner flag for readers
and writers alike, since nothing runs in parallel) is taken by these functions for sections
that do not sleep; ``timestamp`` grows with every change, so that a fault that slept can
tell the map changed under it and restart (the relock rule).  A map flagged
``VM_MAP_INTRSAFE`` (an interrupt-safe kernel map) can never be faulted on: the fault
refuses it before taking its lock (Thorpe).
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Final, Protocol

from ubcfs.vm.amap import (
    VmAmap,
    amap_alloc,
    amap_copy,
    amap_cow_now,
    amap_ref_range,
    amap_splitref,
    amap_unref_range,
)
from ubcfs.vm.diag import SimpleLock, panic
from ubcfs.vm.page import PageHold
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import Pmap, pmap_create, pmap_destroy, pmap_protect, pmap_remove, pmap_update

if TYPE_CHECKING:
    from ubcfs.vm.object import UvmObject
    from ubcfs.vm.uvm import Uvm


class Inherit(enum.IntEnum):
    """What fork does with an entry (kernel: MAP_INHERIT_*)."""

    SHARE = 0  # the child maps the same pages
    COPY = 1  # the child gets a copy-on-write copy
    NONE = 2  # the child gets nothing there


VM_MAP_INTRSAFE: Final = 0x1  # interrupt-safe kernel map: never faulted on

# Where simulated user mappings go, and where the search for free space starts.
VM_MIN_ADDRESS: Final = 0x10000
VM_MAX_ADDRESS: Final = 1 << 47


class ObjRef(Protocol):
    """What keeps a mapped object alive above the VM (kernel: pgo_reference/pgo_detach of
    the vnode pager, which are vref/vrele): one ``reference`` per map entry, one ``detach``
    when that entry goes."""

    def reference(self) -> None: ...

    def detach(self) -> None: ...


class VmMapEntry:
    """One mapping (kernel: struct vm_map_entry).

    Attributes:
        start, end: the range, page aligned.
        obj: the object mapped (lower layer), or None for anonymous memory.
        offset: the object offset of ``start``.
        amap: the upper layer of anons, or None until one is needed.
        amap_off: the amap slot of ``start``.
        prot, maxprot: current and maximum protection (Prot bits as ints).
        inherit: what fork does with it.
        wired_count: mlock and vslock holds (kernel: wired_count).
        needs_copy: the amap is to be copied before the first write (lazy COW).
        copy_on_write: a private mapping: writes go to anons, never to ``obj``.
        objref: the reference this entry holds on the owner of ``obj``, if any.
    """

    __slots__ = (
        "amap",
        "amap_off",
        "copy_on_write",
        "end",
        "inherit",
        "maxprot",
        "needs_copy",
        "obj",
        "objref",
        "offset",
        "prot",
        "start",
        "wired_count",
    )

    def __init__(
        self,
        start: int,
        end: int,
        obj: UvmObject | None,
        offset: int,
        prot: int,
        maxprot: int,
        inherit: Inherit,
        copy_on_write: bool,
        objref: ObjRef | None,
    ) -> None:
        self.start = start
        self.end = end
        self.obj = obj
        self.offset = offset
        self.amap: VmAmap | None = None
        self.amap_off = 0
        self.prot = prot
        self.maxprot = maxprot
        self.inherit = inherit
        self.wired_count = 0
        self.needs_copy = False
        self.copy_on_write = copy_on_write
        self.objref = objref

    def __repr__(self) -> str:
        what = self.obj.name if self.obj is not None else "anon"
        return (
            f"<VmMapEntry {self.start:#x}-{self.end:#x} {what}+{self.offset:#x}"
            f" {Prot(self.prot)!s}/{Prot(self.maxprot)!s}"
            f"{' private' if self.copy_on_write else ' shared'}"
            f"{f' wired={self.wired_count}' if self.wired_count else ''}>"
        )


class VmMap:
    """An address space (kernel: struct vm_map and its vmspace).

    Attributes:
        name: for messages.
        pmap: its translations.
        entries: the mappings, sorted by address, never overlapping.
        lock: the map lock.
        timestamp: bumped by every change of the entries (kernel: map timestamp).
        flags: VM_MAP_* flags.
        vslocks: page address -> the ``uvm_vslock`` holds made there, oldest first.
    """

    __slots__ = ("entries", "flags", "lock", "name", "pmap", "timestamp", "uvm", "vslocks")

    def __init__(self, uvm: Uvm, name: str, pmap: Pmap, flags: int = 0) -> None:
        self.uvm = uvm
        self.name = name
        self.pmap = pmap
        self.entries: list[VmMapEntry] = []
        self.lock = SimpleLock(f"vm_map:{name}")
        self.timestamp = 0
        self.flags = flags
        self.vslocks: dict[int, list[PageHold]] = {}

    def __repr__(self) -> str:
        return f"<VmMap {self.name} entries={len(self.entries)}>"


def uvmspace_alloc(uvm: Uvm, name: str, flags: int = 0) -> VmMap:
    """A new, empty user address space with its own pmap, registered for the audit."""
    vm = VmMap(uvm, name, pmap_create(uvm, name), flags)
    uvm.maps.add(vm)
    return vm


def uvm_map_lookup_entry(vm: VmMap, va: int) -> VmMapEntry | None:
    """The entry containing ``va``, or None (kernel: uvm_map_lookup_entry).  => map locked."""
    vm.lock.assert_locked()
    entries = vm.entries
    lo, hi = 0, len(entries)
    while lo < hi:
        mid = (lo + hi) // 2
        if entries[mid].end <= va:
            lo = mid + 1
        else:
            hi = mid
    if lo < len(entries) and entries[lo].start <= va:
        return entries[lo]
    return None


def _index(vm: VmMap, entry: VmMapEntry) -> int:
    for i, e in enumerate(vm.entries):
        if e is entry:
            return i
    panic(f"{vm!r}: {entry!r} is not in the map")


def _find_space(vm: VmMap, size: int) -> int:
    """The lowest free address range of ``size`` bytes (kernel: uvm_map_findspace)."""
    va = VM_MIN_ADDRESS
    for e in vm.entries:
        if e.start - va >= size:
            return va
        va = max(va, e.end)
    if VM_MAX_ADDRESS - va < size:
        return -1
    return va


def uvm_map(
    vm: VmMap,
    size: int,
    obj: UvmObject | None,
    offset: int,
    prot: int,
    maxprot: int,
    inherit: Inherit,
    private: bool,
    objref: ObjRef | None = None,
) -> int:
    """Map ``size`` bytes of ``obj`` from ``offset`` (or anonymous memory when ``obj`` is
    None) at the lowest free address (kernel: uvm_map); returns the address, or -1 when the
    address space is full.  A private or anonymous mapping gets its amap at its first write
    (``needs_copy``).  The entry takes a reference on ``obj`` and ``objref``.

    => takes the map lock; never sleeps.
    """
    uvm = vm.uvm
    if size <= 0 or size & uvm.page_mask or offset < 0 or offset & uvm.page_mask:
        panic(f"uvm_map: bad size {size:#x} or offset {offset:#x}")
    if prot & ~maxprot:
        panic(f"uvm_map: protection {Prot(prot)!s} beyond maximum {Prot(maxprot)!s}")
    with vm.lock:
        va = _find_space(vm, size)
        if va < 0:
            return -1
        entry = VmMapEntry(va, va + size, obj, offset, prot, maxprot, inherit, private, objref)
        entry.needs_copy = private or obj is None
        _reference(entry)
        entries = vm.entries
        i = 0
        while i < len(entries) and entries[i].start < va:
            i += 1
        entries.insert(i, entry)
        vm.timestamp += 1
    return va


def _reference(entry: VmMapEntry) -> None:
    if entry.obj is not None:
        entry.obj.refs += 1
    if entry.objref is not None:
        entry.objref.reference()


def _clip_at(vm: VmMap, entry: VmMapEntry, va: int) -> VmMapEntry:
    """Split ``entry`` at ``va`` (strictly inside it); returns the upper half, which the
    map now holds after ``entry`` (kernel: uvm_map_clip_start/end).  => map locked."""
    vm.lock.assert_locked()
    if not entry.start < va < entry.end or va & vm.uvm.page_mask:
        panic(f"clip of {entry!r} at {va:#x}")
    delta = va - entry.start
    upper = VmMapEntry(
        va,
        entry.end,
        entry.obj,
        entry.offset + delta if entry.obj is not None else 0,
        entry.prot,
        entry.maxprot,
        entry.inherit,
        entry.copy_on_write,
        entry.objref,
    )
    upper.wired_count = entry.wired_count
    upper.needs_copy = entry.needs_copy
    if entry.amap is not None:
        upper.amap = entry.amap
        upper.amap_off = entry.amap_off + (delta >> vm.uvm.page_shift)
        amap_splitref(entry.amap)  # the halves share it, each for its own slots
    _reference(upper)
    entry.end = va
    vm.entries.insert(_index(vm, entry) + 1, upper)
    vm.timestamp += 1
    return upper


def clip_range(vm: VmMap, start: int, end: int) -> list[VmMapEntry]:
    """Clip the entries that overlap [start, end) at its edges and return the entries
    wholly inside it, in order; holes are allowed.  => map locked."""
    vm.lock.assert_locked()
    out: list[VmMapEntry] = []
    i = 0
    while i < len(vm.entries):
        e = vm.entries[i]
        if e.end <= start:
            i += 1
            continue
        if e.start >= end:
            break
        if e.start < start:
            _clip_at(vm, e, start)
            i += 1
            continue
        if e.end > end:
            _clip_at(vm, e, end)
        out.append(e)
        i += 1
    return out


def range_is_mapped(vm: VmMap, start: int, end: int) -> bool:
    """Is every address of [start, end) inside some entry?  => map locked."""
    vm.lock.assert_locked()
    va = start
    for e in vm.entries:
        if e.end <= va:
            continue
        if e.start > va:
            return False
        va = e.end
        if va >= end:
            return True
    return va >= end


async def uvm_unmap(vm: VmMap, start: int, end: int) -> None:
    """Remove every mapping in [start, end) (kernel: uvm_unmap_remove, then
    uvm_unmap_detach): the wired ones are unwired first (skipping the pages that truncation
    took, as ``uvm_fault_unwire`` does), the translations removed, the anons only these
    entries used freed, and the object references dropped.

    => may sleep (freeing anons whose pages are busy); the map lock is held only for the
       sections that do not.
    """
    from ubcfs.vm.fault import uvm_map_entry_unwire, vslock_release

    with vm.lock:
        gone = clip_range(vm, start, end)
        for va in [va for va in vm.vslocks if start <= va < end]:
            for hold in vm.vslocks.pop(va):
                vslock_release(vm, hold)  # raw I/O never outlives its buffer's mapping
        for e in gone:
            if e.wired_count:
                uvm_map_entry_unwire(vm, e)
            pmap_remove(vm.pmap, e.start, e.end)
            vm.entries.pop(_index(vm, e))
        pmap_update(vm.pmap)
        vm.timestamp += 1
    for e in gone:
        await uvm_unmap_detach(vm.uvm, e)


async def uvm_unmap_detach(uvm: Uvm, entry: VmMapEntry) -> None:
    """Drop what a removed entry held: its amap slots and its object reference (kernel:
    uvm_unmap_detach).  => the entry is out of every map; may sleep."""
    amap = entry.amap
    if amap is not None:
        entry.amap = None
        await amap_unref_range(
            uvm, amap, entry.amap_off, (entry.end - entry.start) >> uvm.page_shift
        )
    if entry.obj is not None:
        if entry.obj.refs <= 1:
            panic(f"uvm_unmap_detach: {entry.obj!r} would lose its owner's reference")
        entry.obj.refs -= 1
    if entry.objref is not None:
        entry.objref.detach()


def uvm_map_protect(vm: VmMap, start: int, end: int, prot: int) -> int:
    """Set the protection of [start, end) (kernel: uvm_map_protect); returns 0, ENOMEM for
    a hole in the range, or EACCES when ``prot`` exceeds an entry's maximum.  Lowered
    protections reach the pmap at once; raised ones come with the next fault.

    => takes the map lock; never sleeps.
    """
    with vm.lock:
        if not range_is_mapped(vm, start, end):
            return errno.ENOMEM
        for e in vm.entries:
            if e.end > start and e.start < end and prot & ~e.maxprot:
                return errno.EACCES
        for e in clip_range(vm, start, end):
            old = e.prot
            e.prot = prot
            if old & ~prot:
                pmap_protect(vm.pmap, e.start, e.end, prot)
        pmap_update(vm.pmap)
        vm.timestamp += 1
    return 0


async def uvmspace_free(vm: VmMap) -> None:
    """Tear down a whole address space (kernel: uvmspace_free at exit).  => may sleep."""
    await uvm_unmap(vm, 0, VM_MAX_ADDRESS)
    pmap_destroy(vm.pmap)
    vm.uvm.maps.discard(vm)


def amap_copy_entry(vm: VmMap, entry: VmMapEntry) -> tuple[VmAmap, int, int] | None:
    """Resolve ``needs_copy``: the entry gets an amap of its own -- a copy of the one it
    shared since fork, or a new one (kernel: amap_copy, as uvmfault_amapcopy and
    uvm_map_extract call it).  Returns the shared amap's slot range whose reference the
    caller must drop with ``amap_unref_range`` once the map is unlocked, or None.
    => map locked."""
    uvm = vm.uvm
    old = entry.amap
    npages = (entry.end - entry.start) >> uvm.page_shift
    drop = None
    if old is None:
        amap_for(vm, entry)
    elif old.ref > 1:
        drop = (old, entry.amap_off, npages)
        entry.amap = amap_copy(uvm, old, entry.amap_off, npages)
        entry.amap_off = 0
    entry.needs_copy = False
    vm.timestamp += 1
    return drop


def amap_for(vm: VmMap, entry: VmMapEntry) -> VmAmap:
    """Give ``entry`` an amap of its own if it has none (kernel: amap_copy with
    AMAP_COPY_NOCHUNK for a new one).  => map locked."""
    vm.lock.assert_locked()
    if entry.amap is None:
        npages = (entry.end - entry.start) >> vm.uvm.page_shift
        entry.amap = amap_alloc(vm.uvm, npages)
        entry.amap_off = 0
        vm.timestamp += 1
    return entry.amap


# --- fork and extraction ------------------------------------------------------------------


def _copy_entry(e: VmMapEntry) -> VmMapEntry:
    ne = VmMapEntry(
        e.start, e.end, e.obj, e.offset, e.prot, e.maxprot, e.inherit, e.copy_on_write, e.objref
    )
    _reference(ne)
    return ne


async def uvmspace_fork(parent: VmMap, child: VmMap) -> int:
    """Fill the empty ``child`` from ``parent`` by each entry's inheritance (kernel:
    uvmspace_fork).  SHARE: the child maps the same object and amap (resolved now if the
    parent's was pending, then marked shared).  COPY: the child shares the parent's amap
    copy-on-write (``needs_copy`` on both, the parent's range write-protected) -- except
    for an entry the parent has wired, whose pages may not be write-protected: the child's
    copy is made at once (amap_cow_now).  Wiring is not inherited.  NONE: nothing.

    Returns 0 or an errno (EAGAIN: a wired entry's anon is not resident).
    => may sleep (the copies made at once).
    """
    uvm = parent.uvm
    shift = uvm.page_shift
    now: list[VmMapEntry] = []
    drops: list[tuple[VmAmap, int, int]] = []
    with parent.lock, child.lock:
        if child.entries:
            panic(f"uvmspace_fork: {child!r} is not empty")
        for e in parent.entries:
            if e.inherit == Inherit.NONE:
                continue
            ne = _copy_entry(e)
            npages = (e.end - e.start) >> shift
            if e.inherit == Inherit.SHARE:
                if e.needs_copy:
                    drop = amap_copy_entry(parent, e)
                    if drop is not None:
                        drops.append(drop)
                if e.amap is not None:
                    amap_ref_range(e.amap, e.amap_off, npages, True)
                    ne.amap, ne.amap_off = e.amap, e.amap_off
            else:
                ne.copy_on_write = True
                ne.needs_copy = True
                if e.amap is not None:
                    amap_ref_range(e.amap, e.amap_off, npages, False)
                    ne.amap, ne.amap_off = e.amap, e.amap_off
                    if e.wired_count:
                        now.append(ne)
                    else:
                        e.needs_copy = True
                        pmap_protect(parent.pmap, e.start, e.end, e.prot & ~Prot.WRITE.value)
            child.entries.append(ne)
        pmap_update(parent.pmap)
        parent.timestamp += 1
        child.timestamp += 1
    for amap, slot, n in drops:
        await amap_unref_range(uvm, amap, slot, n)
    for ne in now:
        with child.lock:
            drop = amap_copy_entry(child, ne)
        if drop is not None:
            await amap_unref_range(uvm, *drop)
        assert ne.amap is not None
        err = await amap_cow_now(uvm, ne.amap)
        if err:
            return err
    return 0


async def uvm_map_extract(src: VmMap, start: int, end: int, dst: VmMap) -> tuple[int, int]:
    """Map [start, end) of ``src`` into ``dst`` as well (kernel: uvm_map_extract with
    UVM_EXTRACT_FIXPROT, as uvm_io uses it for ptrace): each private entry first gets an
    amap of its own, which the new entry then shares (AMAP_SHARED), so that a write through
    ``dst`` is seen by ``src``; a shared entry's object is simply mapped again.  The new
    entries have their maximum protection (a debugger writes into read-only text).

    Returns (0, address in ``dst``), or (ENOMEM, 0) when [start, end) is not all mapped or
    ``dst`` is full.  => may sleep (dropping a reference to an amap shared since fork).
    """
    uvm = src.uvm
    shift = uvm.page_shift
    drops: list[tuple[VmAmap, int, int]] = []
    made: list[VmMapEntry] = []
    with src.lock:
        if not range_is_mapped(src, start, end):
            return errno.ENOMEM, 0
        with dst.lock:
            base = _find_space(dst, end - start)
        if base < 0:
            return errno.ENOMEM, 0
        for e in clip_range(src, start, end):
            private = e.copy_on_write or e.obj is None
            if private and (e.needs_copy or e.amap is None):
                drop = amap_copy_entry(src, e)
                if drop is not None:
                    drops.append(drop)
            ne = _copy_entry(e)
            ne.start = base + (e.start - start)
            ne.end = base + (e.end - start)
            ne.prot = e.maxprot
            ne.inherit = Inherit.NONE
            if e.amap is not None:
                amap_ref_range(e.amap, e.amap_off, (e.end - e.start) >> shift, True)
                ne.amap, ne.amap_off = e.amap, e.amap_off
            made.append(ne)
        src.timestamp += 1
    with dst.lock:
        for ne in made:
            i = 0
            while i < len(dst.entries) and dst.entries[i].start < ne.start:
                i += 1
            dst.entries.insert(i, ne)
        dst.timestamp += 1
    for amap, slot, n in drops:
        await amap_unref_range(uvm, amap, slot, n)
    return 0, base
