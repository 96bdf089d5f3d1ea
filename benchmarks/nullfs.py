"""A pyfuse3 filesystem that does no data work: the ceiling of the FUSE transport.

``mount_fio.py`` runs it as the ``null`` target beside ubcfs.  It serves the same kind of
tree the jobs make (directories, regular files with sizes) from a dict in memory; a write
only moves the file's size, a read returns zeros from one preallocated buffer (no copy, no
allocation per request), and every open asks for ``direct_io`` as ubcfs does.  So each job
measures what the kernel, libfuse, pyfuse3 and trio cost per request with a daemon doing
nothing else: no daemon on this transport can be faster, and a target ubcfs misses where
``null`` misses it too is a limit of the transport, not of the model.

Usage: ``python benchmarks/nullfs.py STORE MOUNTPOINT`` (foreground, like passthroughfs;
unmount with ``fusermount3 -u``).  STORE keeps the tree between mounts without its data:
at start the names and sizes of STORE's tree are loaded, at exit STORE is made to match
the mount's tree with sparse files (so a job that remounts finds its files, with their
sizes).  ``--kernel-cache`` opens files without ``direct_io`` (the kernel's page cache then
sits in front, as for passthroughfs).  Reads return zeros: only the timing is meaningful.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import stat
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyfuse3
import trio

ZEROS = memoryview(bytes(1 << 20))  # the largest FUSE read request is 1 MiB


@dataclass
class Node:
    ino: int
    mode: int
    size: int = 0
    nlink: int = 1
    lookups: int = 0
    children: dict[bytes, int] = field(default_factory=dict)
    mtime_ns: int = field(default_factory=time.time_ns)


class NullFS(pyfuse3.Operations):
    def __init__(self, direct_io: bool) -> None:
        super().__init__()
        self.direct_io = direct_io
        self.nodes: dict[int, Node] = {
            pyfuse3.ROOT_INODE: Node(pyfuse3.ROOT_INODE, stat.S_IFDIR | 0o755, nlink=2)
        }
        self.next_ino = pyfuse3.ROOT_INODE + 1

    def load(self, store: str, ino: int = pyfuse3.ROOT_INODE) -> None:
        """Names, types and sizes of ``store``'s tree (directories and regular files)."""
        for entry in os.scandir(store):
            st = entry.stat(follow_symlinks=False)
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                continue
            n = self._add(ino, os.fsencode(entry.name), st.st_mode)
            n.lookups = 0
            n.size = 0 if stat.S_ISDIR(st.st_mode) else st.st_size
            if stat.S_ISDIR(st.st_mode):
                self.load(entry.path, n.ino)

    def store(self, store: str, ino: int = pyfuse3.ROOT_INODE) -> None:
        """Make ``store``'s tree match the mount's: sparse files of the right sizes."""
        children = self.nodes[ino].children
        for entry in os.scandir(store):
            if os.fsencode(entry.name) not in children:
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
        for name, child in children.items():
            n = self.nodes[child]
            path = os.path.join(store, os.fsdecode(name))
            if stat.S_ISDIR(n.mode):
                os.makedirs(path, exist_ok=True)
                self.store(path, child)
            else:
                with open(path, "ab") as f:
                    f.truncate(n.size)

    def _node(self, ino: int) -> Node:
        try:
            return self.nodes[ino]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def _entry(self, n: Node) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = n.ino
        e.st_mode = n.mode
        e.st_nlink = n.nlink
        e.st_size = n.size
        e.st_blksize = 4096
        e.st_blocks = (n.size + 511) // 512
        e.st_atime_ns = e.st_mtime_ns = e.st_ctime_ns = n.mtime_ns
        e.attr_timeout = e.entry_timeout = 1.0
        return e

    def _add(self, parent: int, name: bytes, mode: int) -> Node:
        p = self._node(parent)
        if name in p.children:
            raise pyfuse3.FUSEError(errno.EEXIST)
        n = Node(self.next_ino, mode, nlink=2 if stat.S_ISDIR(mode) else 1)
        self.next_ino += 1
        self.nodes[n.ino] = n
        p.children[name] = n.ino
        n.lookups += 1
        return n

    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        p = self._node(parent_inode)
        if name == b".":
            return self._entry(p)
        ino = p.children.get(name)
        if ino is None:
            e = pyfuse3.EntryAttributes()
            e.st_ino = 0  # a negative entry the kernel may cache
            e.entry_timeout = 1.0
            return e
        n = self.nodes[ino]
        n.lookups += 1
        return self._entry(n)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, k in inode_list:
            n = self.nodes.get(ino)
            if n is not None:
                n.lookups -= k
                if n.lookups <= 0 and n.nlink == 0:
                    del self.nodes[ino]

    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(self._node(inode))

    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        n = self._node(inode)
        if fields.update_size:
            n.size = attr.st_size
        if fields.update_mode:
            n.mode = stat.S_IFMT(n.mode) | stat.S_IMODE(attr.st_mode)
        return self._entry(n)

    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        return self._entry(self._add(parent_inode, name, stat.S_IFDIR | (mode & 0o7777)))

    async def _remove(self, parent_inode: int, name: bytes, want_dir: bool) -> None:
        p = self._node(parent_inode)
        ino = p.children.get(name)
        if ino is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        n = self.nodes[ino]
        if want_dir != stat.S_ISDIR(n.mode):
            raise pyfuse3.FUSEError(errno.ENOTDIR if want_dir else errno.EISDIR)
        if want_dir and n.children:
            raise pyfuse3.FUSEError(errno.ENOTEMPTY)
        del p.children[name]
        n.nlink = 0
        if n.lookups <= 0:
            del self.nodes[ino]

    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, want_dir=False)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        await self._remove(parent_inode, name, want_dir=True)

    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        self._node(inode)
        return inode

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        items = sorted(self._node(fh).children.items())
        for i, (name, ino) in enumerate(items[start_id:], start_id + 1):
            if not pyfuse3.readdir_reply(token, name, self._entry(self.nodes[ino]), i):
                break

    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        n = self._node(inode)
        if flags & os.O_TRUNC:
            n.size = 0
        return pyfuse3.FileInfo(fh=inode, direct_io=self.direct_io)

    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        n = self._add(parent_inode, name, stat.S_IFREG | (mode & 0o7777))
        return pyfuse3.FileInfo(fh=n.ino, direct_io=self.direct_io), self._entry(n)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        n = self._node(fh)
        # pyfuse3 takes any buffer; a slice of one zero buffer costs no copy.
        return ZEROS[: max(0, min(size, n.size - off))]  # type: ignore[return-value]

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        n = self._node(fh)
        n.size = max(n.size, off + len(buf))
        return len(buf)

    async def fsync(self, fh: int, datasync: bool) -> None:
        pass

    async def flush(self, fh: int) -> None:
        pass

    async def release(self, fh: int) -> None:
        pass

    async def releasedir(self, fh: int) -> None:
        pass

    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = 4096
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 30
        s.f_namemax = 255
        return s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="a FUSE filesystem that does no data work")
    ap.add_argument("store", help="the directory that keeps the tree (names and sizes)")
    ap.add_argument("mountpoint")
    ap.add_argument("--kernel-cache", action="store_true", help="open files without direct_io")
    args = ap.parse_args(argv)
    for d in (args.store, args.mountpoint):
        if not os.path.isdir(d):
            print(f"nullfs: {d}: not a directory", file=sys.stderr)
            return 2
    fs = NullFS(not args.kernel_cache)
    fs.load(args.store)
    pyfuse3.init(fs, args.mountpoint, {"fsname=nullfs"})
    try:
        trio.run(pyfuse3.main)
    finally:
        pyfuse3.close()
    fs.store(args.store)
    return 0


if __name__ == "__main__":
    sys.exit(main())
