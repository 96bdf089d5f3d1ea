"""Memory objects: a container of pages looked up by offset (~ uvm_object.h, uvm_object.c,
and NetBSD 9's radix-tree page table with its dirty tag, uvm_page_status.c).

A ``UvmObject`` is a vnode's page container (a file's cache) or an anonymous object's.  Its
pages live in a ``PageTree``: a radix tree one level deep whose leaves hold
``LEAF_PAGES`` page slots each, keyed by leaf number in a dict.  What is per page and what
per run:

* per page: the slot of a leaf (a list item) and one bit of its leaf's dirty tag;
* per run of up to ``LEAF_PAGES`` pages: one dict entry, so walking a range, finding its
  dirty pages and counting them cost one dict probe per leaf, and never the object's size.

The tree remembers the last leaf it used, so a sequential walk probes the dict once per
leaf, not once per page.  The pager operations that fill and clean the object are attached
by the layer above (genfs, the aobj pager) through the ``pgops`` protocol, which this core
only names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Final

from ubcfs.vm.diag import SimpleLock, panic

if TYPE_CHECKING:
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.pager import PagerOps
    from ubcfs.vm.uvm import Uvm

LEAF_SHIFT: Final = 5
LEAF_PAGES: Final = 1 << LEAF_SHIFT  # page slots per leaf: a tag fits a small int
_LEAF_MASK: Final = LEAF_PAGES - 1
_ALL_TAGS: Final = (1 << LEAF_PAGES) - 1


class _Leaf:
    """``LEAF_PAGES`` consecutive page slots of an object, and their dirty tag bits."""

    __slots__ = ("count", "dirty", "slots")

    def __init__(self) -> None:
        self.slots: list[VmPage | None] = [None] * LEAF_PAGES
        self.count = 0  # slots in use
        self.dirty = 0  # bit i: slot i is tagged dirty


def _bits(mask: int) -> Iterator[int]:
    """The indexes of the set bits of ``mask``, ascending."""
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low


class PageTree:
    """An object's pages by byte offset (kernel: uo_pages, a radix tree), with the dirty tag
    (kernel: UVM_PAGE_DIRTY_TAG) kept on the same leaves.

    Reads like a mapping ``offset -> VmPage`` (``get``, ``in``, ``[]``, ``len``, iteration
    in ascending offset order); it is changed only by ``insert`` and ``remove``, which
    ``pagealloc`` and ``pagefree`` call.  Offsets are page aligned; an unaligned one is never
    present.  The dirty tag of an offset can be set only while a page is there, and goes
    with the page.

    ``probes`` counts the work done: leaf lookups in the dict and slots visited by range
    walks, so that a test can prove an operation never walks the whole object or range.
    """

    __slots__ = ("_last", "_lastkey", "_leaves", "_mask", "_shift", "count", "ndirty", "probes")

    def __init__(self, page_shift: int) -> None:
        self._shift = page_shift
        self._mask = (1 << page_shift) - 1
        self._leaves: dict[int, _Leaf] = {}
        self._lastkey = -1
        self._last: _Leaf | None = None
        self.count = 0
        self.ndirty = 0
        self.probes = 0

    # --- leaves -----------------------------------------------------------------------------

    def _leaf(self, key: int) -> _Leaf | None:
        if key == self._lastkey:
            return self._last
        self.probes += 1
        leaf = self._leaves.get(key)
        if leaf is not None:
            self._lastkey = key
            self._last = leaf
        return leaf

    def _keys_between(self, lo: int, hi: int) -> list[int]:
        """Leaf numbers in [lo, hi] that exist, ascending: by probing or by sorting the
        leaves, whichever is fewer."""
        leaves = self._leaves
        if hi - lo < len(leaves):
            self.probes += hi - lo + 1
            return [k for k in range(lo, hi + 1) if k in leaves]
        self.probes += len(leaves)
        return sorted(k for k in leaves if lo <= k <= hi)

    # --- the mapping --------------------------------------------------------------------------

    def get(self, offset: int) -> VmPage | None:
        """The page at ``offset``, or None.  O(1)."""
        if offset & self._mask or offset < 0:
            return None
        idx = offset >> self._shift
        leaf = self._leaf(idx >> LEAF_SHIFT)
        if leaf is None:
            return None
        return leaf.slots[idx & _LEAF_MASK]

    def __getitem__(self, offset: int) -> VmPage:
        pg = self.get(offset)
        if pg is None:
            raise KeyError(offset)
        return pg

    def __contains__(self, offset: object) -> bool:
        return isinstance(offset, int) and self.get(offset) is not None

    def __len__(self) -> int:
        return self.count

    def __bool__(self) -> bool:
        return self.count > 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.keys())

    def keys(self) -> list[int]:
        """Every resident offset, ascending."""
        return [off for off, _ in self.items()]

    def values(self) -> list[VmPage]:
        """Every resident page, in ascending offset order."""
        return [pg for _, pg in self.items()]

    def items(self) -> list[tuple[int, VmPage]]:
        """(offset, page) of every slot in use, ascending; the offset is the slot's, so an
        audit can compare it with the page's own."""
        out: list[tuple[int, VmPage]] = []
        shift = self._shift
        self.probes += len(self._leaves) * LEAF_PAGES
        for key in sorted(self._leaves):
            base = key << LEAF_SHIFT
            for i, pg in enumerate(self._leaves[key].slots):
                if pg is not None:
                    out.append(((base + i) << shift, pg))
        return out

    def insert(self, offset: int, pg: VmPage) -> None:
        """Enter ``pg`` at the free, page-aligned ``offset``.  => the caller checked both."""
        idx = offset >> self._shift
        key = idx >> LEAF_SHIFT
        leaf = self._leaf(key)
        if leaf is None:
            leaf = self._leaves[key] = _Leaf()
            self._lastkey = key
            self._last = leaf
        leaf.slots[idx & _LEAF_MASK] = pg
        leaf.count += 1
        self.count += 1

    def remove(self, offset: int) -> None:
        """Take the page at ``offset`` out, with its dirty tag.  => a page is there."""
        idx = offset >> self._shift
        key = idx >> LEAF_SHIFT
        leaf = self._leaf(key)
        assert leaf is not None, f"PageTree.remove: no page at {offset:#x}"
        slot = idx & _LEAF_MASK
        leaf.slots[slot] = None
        bit = 1 << slot
        if leaf.dirty & bit:
            leaf.dirty ^= bit
            self.ndirty -= 1
        leaf.count -= 1
        self.count -= 1
        if leaf.count == 0:
            del self._leaves[key]
            if self._lastkey == key:
                self._lastkey = -1
                self._last = None

    def _span(self, start: int, end: int) -> tuple[int, int]:
        """Page numbers [first, last] of the offsets with start <= offset < end, page
        aligned (last < first: there are none)."""
        if end <= start:
            return 0, -1
        return (start + self._mask) >> self._shift, (end - 1) >> self._shift

    def in_range(self, start: int, end: int) -> list[VmPage]:
        """Resident pages with start <= offset < end, ascending: one probe per leaf."""
        first, last = self._span(start, end)
        if last < first:
            return []
        out: list[VmPage] = []
        for key in self._keys_between(first >> LEAF_SHIFT, last >> LEAF_SHIFT):
            slots = self._leaves[key].slots
            base = key << LEAF_SHIFT
            lo = max(first - base, 0)
            hi = min(last - base, _LEAF_MASK)
            self.probes += hi - lo + 1
            for i in range(lo, hi + 1):
                pg = slots[i]
                if pg is not None:
                    out.append(pg)
        return out

    # --- the dirty tag --------------------------------------------------------------------------

    def set_dirty(self, offset: int) -> None:
        """Tag the page at ``offset`` dirty (kernel: uvm_obj_page_set_dirty)."""
        idx = offset >> self._shift
        leaf = self._leaf(idx >> LEAF_SHIFT)
        assert leaf is not None, f"PageTree.set_dirty: no page at {offset:#x}"
        bit = 1 << (idx & _LEAF_MASK)
        if not leaf.dirty & bit:
            leaf.dirty |= bit
            self.ndirty += 1

    def clear_dirty(self, offset: int) -> None:
        """Drop the dirty tag of ``offset`` (kernel: uvm_obj_page_clear_dirty)."""
        idx = offset >> self._shift
        leaf = self._leaf(idx >> LEAF_SHIFT)
        if leaf is None:
            return
        bit = 1 << (idx & _LEAF_MASK)
        if leaf.dirty & bit:
            leaf.dirty ^= bit
            self.ndirty -= 1

    def is_tagged(self, offset: int) -> bool:
        """Is ``offset`` tagged dirty (kernel: uvm_obj_page_dirty_p)?"""
        if offset & self._mask or offset < 0:
            return False
        idx = offset >> self._shift
        leaf = self._leaf(idx >> LEAF_SHIFT)
        return leaf is not None and bool(leaf.dirty >> (idx & _LEAF_MASK) & 1)

    def dirty_in_range(self, start: int, end: int) -> list[int]:
        """Offsets tagged dirty with start <= offset < end, ascending: one probe per leaf,
        and per leaf only its set bits."""
        first, last = self._span(start, end)
        if last < first or not self.ndirty:
            return []
        shift = self._shift
        out: list[int] = []
        for key in self._keys_between(first >> LEAF_SHIFT, last >> LEAF_SHIFT):
            mask = self._leaves[key].dirty
            if not mask:
                continue
            base = key << LEAF_SHIFT
            lo = first - base
            if lo > 0:
                mask &= _ALL_TAGS << lo
            hi = last - base
            if hi < _LEAF_MASK:
                mask &= (1 << (hi + 1)) - 1
            for i in _bits(mask):
                out.append((base + i) << shift)
        return out

    def audit(self, name: str, out: list[str]) -> None:
        """Check the tree's own bookkeeping; append one line per violation to ``out``."""
        total = tagged = 0
        for key, leaf in self._leaves.items():
            used = sum(1 for pg in leaf.slots if pg is not None)
            if used != leaf.count or used == 0:
                out.append(f"[5] {name}: leaf {key} counts {leaf.count} pages, holds {used}")
            for i in _bits(leaf.dirty):
                if leaf.slots[i] is None:
                    off = ((key << LEAF_SHIFT) + i) << self._shift
                    out.append(f"[dirty] {name}: dirty tag on {off:#x}, which is not resident")
            total += used
            tagged += bin(leaf.dirty).count("1")
        if total != self.count:
            out.append(f"[5] {name}: page tree counts {self.count} pages, holds {total}")
        if tagged != self.ndirty:
            out.append(f"[dirty] {name}: page tree counts {self.ndirty} dirty tags, holds {tagged}")
        if self._last is not None and self._leaves.get(self._lastkey) is not self._last:
            out.append(f"[5] {name}: page tree remembers leaf {self._lastkey}, not in the tree")

    def dirty_offsets(self) -> set[int]:
        """Every offset tagged dirty (for audits and tests; not a hot path)."""
        return set(self.dirty_in_range(0, 1 << 62))


class UvmObject:
    """A memory object (kernel: struct uvm_object).

    Attributes:
        name: for messages and audits.
        pages: offset -> resident page, a ``PageTree`` (kernel: uo_pages).  Its dirty tag
            marks the pages that may be dirty (kernel, NetBSD 9 on: UVM_PAGE_DIRTY_TAG), so
            that cleaning visits those pages only, not every resident one.  The tag is a
            superset: it is on every page whose PG_CLEAN is clear and every page with a
            writable managed mapping (a store through that sets only the modified bit);
            putpages drops it from a page it finds clean and not writably mapped.
        refs: reference count (kernel: uo_refs).
        is_aobj: an anonymous object (its pages are PQ_AOBJ, swap backed).
        pgops: the pager operations, attached by the layer that owns the object.
        vmobjlock: the object lock, an assertion-checked owner flag.
        generation: bumped whenever pages are removed or the object is resized, so a task
            that slept can tell that what it looked up may be gone (fault relock rule).
    """

    __slots__ = (
        "generation",
        "is_aobj",
        "name",
        "pages",
        "pgops",
        "refs",
        "uvm",
        "vmobjlock",
    )

    def __init__(
        self, uvm: Uvm, name: str, is_aobj: bool = False, pgops: PagerOps | None = None
    ) -> None:
        self.uvm = uvm
        self.name = name
        self.is_aobj = is_aobj
        self.pgops = pgops
        self.pages = PageTree(uvm.page_shift)
        self.refs = 1
        self.vmobjlock = SimpleLock(f"vmobjlock:{name}")
        self.generation = 0
        uvm.objects.add(self)

    @property
    def npages(self) -> int:
        """Resident page count (kernel: uo_npages)."""
        return self.pages.count

    @property
    def dirtyoffs(self) -> set[int]:
        """The offsets tagged dirty, as a new set (audits and tests)."""
        return self.pages.dirty_offsets()

    def pages_in_range(self, start: int, end: int) -> list[VmPage]:
        """Resident pages with start <= offset < end, in ascending offset order.

        Costs one probe per ``LEAF_PAGES`` pages of the range or a sort of the leaves,
        whichever is less; never O(file size).
        """
        return self.pages.in_range(start, end)

    def dirty_in_range(self, start: int, end: int) -> list[int]:
        """Offsets of the maybe-dirty pages with start <= offset < end, ascending; costs
        like ``pages_in_range``."""
        return self.pages.dirty_in_range(start, end)

    def __repr__(self) -> str:
        return f"<UvmObject {self.name} npages={self.pages.count} refs={self.refs}>"


def obj_destroy(uobj: UvmObject) -> None:
    """Take a dead object off its machine's registry (kernel: uvm_obj_destroy).

    => no page left: its owner has freed them (a vnode's reclaim).
    """
    if uobj.pages:
        panic(f"obj_destroy: {uobj!r} still has pages")
    uobj.uvm.objects.discard(uobj)
