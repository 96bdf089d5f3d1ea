"""The vnode pager's page finder (~ uvm_vnode.c: uvn_findpages, uvn_findpage).

``findpages`` looks up (and allocates) the pages of a range of a vnode's object and returns
them busy, in ascending offset order -- the order every path busies pages in, so that two
tasks working on overlapping ranges can never wait for each other in a cycle.  The data
movement of the vnode pager is in ``pagers.backing_io``; the getpages/putpages policy that
uses both is genfs's.
"""

from __future__ import annotations

import enum
import errno
from typing import TYPE_CHECKING, Final

from ubcfs.vm.page import (
    PG_BUSY,
    PG_FAKE,
    PG_RDONLY,
    PG_RELEASED,
    is_dirty,
    page_unbusy,
    pagealloc,
    pagebusy,
    pagewait,
)

if TYPE_CHECKING:
    from ubcfs.vm.object import UvmObject
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.uvm import Uvm


class UFP(enum.Flag):
    """findpage flags (kernel: UFP_*)."""

    NONE = 0
    NOWAIT = 0x01  # do not sleep on busy pages (or for memory)
    NOALLOC = 0x02  # do not allocate missing pages
    NOCACHE = 0x04  # only allocate, skip resident pages
    NORDONLY = 0x08  # skip PG_RDONLY pages (a writer must fault them in again)
    DIRTYONLY = 0x10  # only dirty pages (clustering for putpages)


UFP_NOWAIT: Final = UFP.NOWAIT.value
UFP_NOALLOC: Final = UFP.NOALLOC.value
UFP_NOCACHE: Final = UFP.NOCACHE.value
UFP_NORDONLY: Final = UFP.NORDONLY.value
UFP_DIRTYONLY: Final = UFP.DIRTYONLY.value


async def findpages(
    uvm: Uvm, uobj: UvmObject, offset: int, npages: int, flags: int, why: str
) -> tuple[int, list[VmPage | None]]:
    """Find or allocate the pages of [offset, offset + npages pages), busy (kernel:
    uvn_findpages).

    Returns:
        (0, pages) with ``None`` where a page was skipped (NOWAIT, NOALLOC, DIRTYONLY,
        NORDONLY), or (ENOMEM, []) when a page could not be allocated: every page taken so far
        has been released, and the caller should ``uvm_wait(uvm, why, npages)`` and start
        again -- holding busy pages while waiting for memory could starve the pagedaemon
        (the kernel holds them, with far more memory to spare).

    => may sleep on busy pages unless UFP_NOWAIT.  => new pages are PG_BUSY|PG_FAKE|PG_CLEAN.
    """
    ps = uvm.page_size
    out: list[VmPage | None] = []
    end = offset + npages * ps
    off = offset
    pages = uobj.pages
    while off < end:
        # The common cases (resident and unbusy, or missing) need no await at all: take
        # as many pages as possible under one hold of the object lock.
        stop: _Found | None = None
        with uobj.vmobjlock:
            while off < end:
                found = _findpage_locked(uvm, uobj, off, flags, why)
                if isinstance(found, _Found):
                    stop = found
                    break
                out.append(found)
                off += ps
        if stop is None:
            break
        if stop is _Found.NOMEM:
            release_pages(uvm, [p for p in out if p is not None])
            return errno.ENOMEM, []
        await pagewait(uvm, pages[off], why)
        # ... and look the page up again: it may be gone or renamed.
    return 0, out


class _Found(enum.Enum):
    """What ``_findpage_locked`` found when it could not return a page."""

    NOMEM = 0  # no free page for an allocation that may not fail silently
    BUSY = 1  # the page is busy and the caller may sleep on it


def _findpage_locked(
    uvm: Uvm, uobj: UvmObject, off: int, flags: int, why: str
) -> VmPage | _Found | None:
    """One page of ``findpages``, without sleeping (kernel: uvn_findpage).  None: skipped.

    => the object is locked.
    """
    pg = uobj.pages.get(off)
    if pg is None:
        if flags & UFP_NOALLOC:
            return None
        pg = pagealloc(uvm, uobj, off)
        if pg is None:
            return None if flags & UFP_NOWAIT else _Found.NOMEM
        return pg
    if flags & UFP_NOCACHE:
        return None
    if pg.flags & PG_BUSY:
        return None if flags & UFP_NOWAIT else _Found.BUSY
    if flags & UFP_NORDONLY and pg.flags & PG_RDONLY:
        return None
    if flags & UFP_DIRTYONLY and not is_dirty(pg):
        return None
    pagebusy(uvm, pg, why)
    return pg


def release_pages(uvm: Uvm, pages: list[VmPage]) -> None:
    """Unbusy pages got from ``findpages``; pages never filled (PG_FAKE) are freed
    (kernel: the release step of genfs_getpages / uvm_page_unbusy with PG_RELEASED)."""
    for pg in pages:
        if pg.flags & PG_FAKE:
            pg.flags |= PG_RELEASED
        page_unbusy(uvm, pg)
