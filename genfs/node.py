"""The per-file genfs node: size, backing file, object and I/O bookkeeping (~ genfs_node.h,
the UBC fields of struct vnode: v_size, v_writesize, v_numoutput, v_uobj).

A ``GenfsNode`` implements the pager operations (``PagerOps``) of its object, so the
pagedaemon's ``pgo_put`` and a UBC window's fault land in ``genfs.io``.  Filesystems (the
vfs layer) build their vnodes on top of it, as NetBSD requires ``struct genfs_node`` to be
the first member of a filesystem's per-vnode data.

Sizes: ``size`` is what readers see (v_size).  ``writesize`` is at least ``size`` and, during
an extending write, the end of that write (v_writesize): pages up to it may exist and may be
written back before the write publishes the new size, so write-back clips to ``writesize``,
never to ``size``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from genfs import io as gio
from ubcfs.vm.object import UvmObject

if TYPE_CHECKING:
    from pagers.backing_io import BackingIO
    from ubcfs.vm.page import VmPage
    from ubcfs.vm.uvm import Uvm


@dataclass(slots=True)
class GenfsParams:
    """Tunables shared by the nodes of one engine.

    Attributes:
        maxphys: largest single I/O in bytes (kernel: MAXPHYS); clusters never exceed it.
        readahead: the largest read-ahead window, in bytes: how far ahead of a sequential
            reader its pages are read (kernel: RA_WINSIZE_MAX).
        readahead_min: the window a reader starts with once it is seen to be sequential;
            each further sequential access doubles it up to ``readahead``, any other access
            drops it (kernel: RA_WINSIZE_INIT, uvm_ra_request).
        fastpath: the extending-write fast path is on.
        writebehind: start an async write-back each time a sequential writer finishes this
            many bytes (0: off), as ffs_write does every 64 KiB.
    """

    maxphys: int = 1024 * 1024
    readahead: int = 4 * 1024 * 1024
    readahead_min: int = 128 * 1024
    fastpath: bool = True
    writebehind: int = 1024 * 1024


class GenfsNode:
    """A file's genfs state (kernel: struct genfs_node + the UBC part of struct vnode).

    Attributes:
        uvm: the machine.
        uobj: the file's object (its page cache): its own, whose pager is this node, or
            the one a file system passed in (an aobj's, for tmpfs).
        fd: a data file descriptor of the backing file (read/write); -1 without one.
        size: the file size readers see (v_size).
        writesize: end of the data pages may hold (v_writesize), >= size.
        io: the backing I/O edge.
        params: tunables.
        numoutput: writes in flight (v_numoutput).
        ra_next: where a sequential reader would read next; ra_end: end of read-ahead issued;
            ra_win: the current read-ahead window (0 while the access is not sequential).
        write_error: errno of the last failed write not yet reported (its pages stay dirty).
        wb_logged_at, wb_unlogged, wb_logged: the rate limit of write-failure log lines (see
            ``genfs.io._note_write_result``): when the last line was written, failures left
            out since, and whether the current episode of failures was logged.
    """

    def __init__(
        self,
        uvm: Uvm,
        name: str,
        fd: int,
        size: int,
        io: BackingIO,
        params: GenfsParams | None = None,
        uobj: UvmObject | None = None,
    ) -> None:
        self.uvm = uvm
        # A file system whose data lives elsewhere (tmpfs: in an aobj) passes that object;
        # its own pager then serves the windows' faults, and genfs never sees them.
        self.uobj = uobj if uobj is not None else UvmObject(uvm, name, pgops=self)
        self.fd = fd
        self.size = size
        self.writesize = size
        self.io = io
        self.params = params if params is not None else GenfsParams()
        self.numoutput = 0
        self._output_done = trio.Event()
        self._output_done.set()
        self.ra_next = -1
        self.ra_end = 0
        self.ra_win = 0
        self.write_error = 0
        self.wb_logged_at = -math.inf
        self.wb_unlogged = 0
        self.wb_logged = False

    @property
    def name(self) -> str:
        return self.uobj.name

    # --- PagerOps -----------------------------------------------------------------------

    async def get(
        self, uobj: UvmObject, offset: int, npages: int, access: int, flags: int
    ) -> tuple[int, list[VmPage | None]]:
        """pgo_get: genfs_getpages."""
        err, pages = await gio.getpages(self, offset, npages, access, flags)
        return err, list(pages)

    async def put(self, uobj: UvmObject, start: int, end: int, flags: int) -> int:
        """pgo_put: genfs_putpages."""
        return await gio.putpages(self, start, end, flags)

    # --- write accounting (v_numoutput) -------------------------------------------------

    def output_start(self) -> None:
        self.numoutput += 1
        if self._output_done.is_set():
            self._output_done = trio.Event()

    def output_done(self) -> None:
        self.numoutput -= 1
        if self.numoutput == 0:
            self._output_done.set()

    def take_write_error(self) -> int:
        """Report (and forget) the last write error of this node."""
        err, self.write_error = self.write_error, 0
        return err

    async def wait_output(self) -> None:
        """Sleep until no write of this node is in flight (kernel: waiting on v_numoutput)."""
        while self.numoutput:
            await self._output_done.wait()

    def current_size(self) -> int:
        """The file size now (the end that an aobj holding this file's data checks faults
        against, ``Aobj.size_of``)."""
        return self.size

    def __repr__(self) -> str:
        return f"<GenfsNode {self.name} size={self.size} npages={self.uobj.npages}>"
