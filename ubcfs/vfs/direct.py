"""``--no-ubc``: file data straight between FUSE and the backing file, bypassing the UBC
(the baseline the benchmarks compare against; ubcfs's own names, attributes and FUSE
handling are unchanged).

A ``DirectFile`` is an open backing file's data descriptor with the engine's I/O edge: the
same ``BackingIO`` the UBC's page I/O uses (RWF_NOWAIT attempt first, then a worker
thread), so the two modes differ only in the cache.  Each call returns an errno (0: done),
as the vnode operations do.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pagers.backing_io import BackingIO


class DirectFile:
    """One open file of a ``--no-ubc`` mount (it owns ``fd``).

    => every method may be called from any request; the async ones may sleep (their I/O
       goes to a thread when it would block), and the descriptor stays open across it.
    """

    __slots__ = ("fd", "io")

    def __init__(self, io: BackingIO, fd: int) -> None:
        self.io = io
        self.fd = fd

    async def read(self, offset: int, size: int) -> tuple[int, bytes]:
        """Up to ``size`` bytes at ``offset`` (short at EOF)."""
        buf = bytearray(size)
        err, n = await self.io.readv(self.fd, [memoryview(buf)], offset)
        if err:
            return err, b""
        del buf[n:]
        return 0, bytes(buf)

    async def write(self, offset: int, data: bytes) -> tuple[int, int]:
        return await self.io.writev(self.fd, [memoryview(data)], offset)

    def size(self) -> int:
        """The backing file's size now (an O_APPEND write goes there)."""
        return os.fstat(self.fd).st_size

    def truncate(self, size: int) -> None:
        """Raises: OSError."""
        os.ftruncate(self.fd, size)

    async def fsync(self, datasync: bool) -> int:
        return await self.io.fsync(self.fd, datasync)

    async def fallocate(self, mode: int, offset: int, length: int) -> int:
        return await self.io.fallocate(self.fd, mode, offset, length)

    def close(self) -> None:
        self.io.forget(self.fd)
        os.close(self.fd)
        self.fd = -1


async def fsync_fd(io: BackingIO, fd: int, datasync: bool) -> int:
    """fsync (or fdatasync) a backing descriptor the caller owns, then close it: a directory
    opened for ``fsyncdir``."""
    try:
        return await io.fsync(fd, datasync)
    finally:
        io.forget(fd)
        os.close(fd)
