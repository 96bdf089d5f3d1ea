"""Memory objects: a container of pages looked up by offset (~ uvm_object.h, uvm_object.c).

A ``UvmObject`` is a vnode's page container (a file's cache) or an anonymous object's.
Its pages live in a dict keyed by byte offset, so lookup, insertion and removal are O(1), and
walking a range costs the smaller of the range and the resident set.  The pager operations
that fill and clean it are attached by the layer above (genfs, the aobj pager) through the
``pgops`` protocol, which this core only names.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import TYPE_CHECKING, Protocol

from ubcfs.vm.diag import SimpleLock, panic

if TYPE_CHECKING:
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.uvm import Uvm


class PagerOps(Protocol):
    """The pager operations vector (kernel: struct uvm_pagerops after the 2001 rewrite:
    pgo_get and pgo_put; reference/detach are the object's own refcount here).

    Both return an errno: 0, EIO, EAGAIN, EBUSY or ERESTART.  An asynchronous request returns
    0 once started, and its completion (aiodone) does all post-I/O work.
    """

    async def get(
        self, uobj: UvmObject, offset: int, npages: int, access: int, flags: int
    ) -> tuple[int, list[VmPage | None]]: ...

    async def put(self, uobj: UvmObject, start: int, end: int, flags: int) -> int: ...


class UvmObject:
    """A memory object (kernel: struct uvm_object).

    Attributes:
        name: for messages and audits.
        pages: offset -> resident page (kernel: memq + the global page hash).
        refs: reference count (kernel: uo_refs).
        is_aobj: an anonymous object (its pages are PQ_AOBJ, swap backed).
        pgops: the pager operations, attached by the layer that owns the object.
        vmobjlock: the object lock, an assertion-checked owner flag.
        generation: bumped whenever pages are removed or the object is resized, so a task
            that slept can tell that what it looked up may be gone (fault relock rule).
        dirtyoffs: offsets of the pages that may be dirty (kernel, NetBSD 9 on: the
            UVM_PAGE_DIRTY_TAG of the object's page tree), so that cleaning visits those
            pages only, not every resident one.  A superset: it holds every page whose
            PG_CLEAN is clear and every page with a writable managed mapping (a store
            through that sets only the modified bit); putpages drops a page it finds clean
            and not writably mapped.
    """

    __slots__ = (
        "dirtyoffs",
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
        self.pages: dict[int, VmPage] = {}
        self.dirtyoffs: set[int] = set()
        self.refs = 1
        self.vmobjlock = SimpleLock(f"vmobjlock:{name}")
        self.generation = 0
        uvm.objects.add(self)

    @property
    def npages(self) -> int:
        """Resident page count (kernel: uo_npages)."""
        return len(self.pages)

    def pages_in_range(self, start: int, end: int) -> list[VmPage]:
        """Resident pages with start <= offset < end, in ascending offset order.

        Costs O(min(range pages, resident pages) · log), never O(file size).
        """
        pages = self.pages
        return [pages[off] for off in _offsets_in_range(pages, start, end, self.uvm.page_size)]

    def dirty_in_range(self, start: int, end: int) -> list[int]:
        """Offsets of the maybe-dirty pages with start <= offset < end, ascending; costs
        like ``pages_in_range``."""
        return _offsets_in_range(self.dirtyoffs, start, end, self.uvm.page_size)

    def __repr__(self) -> str:
        return f"<UvmObject {self.name} npages={len(self.pages)} refs={self.refs}>"


def obj_destroy(uobj: UvmObject) -> None:
    """Take a dead object off its machine's registry (kernel: uvm_obj_destroy).

    => no page left: its owner has freed them (a vnode's reclaim).
    """
    if uobj.pages:
        panic(f"obj_destroy: {uobj!r} still has pages")
    uobj.uvm.objects.discard(uobj)


def _offsets_in_range(offsets: Collection[int], start: int, end: int, ps: int) -> list[int]:
    """The page offsets of ``offsets`` with start <= offset < end, ascending: by probing each
    page of the range or by sorting the collection, whichever is smaller."""
    first = start - start % ps
    if (end - first) // ps <= len(offsets):
        lo = first if first == start else first + ps
        return [off for off in range(lo, end, ps) if off in offsets]
    return sorted(o for o in offsets if start <= o < end)
