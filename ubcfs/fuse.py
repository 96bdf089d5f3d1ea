"""The pyfuse3 adapter: FUSE requests become vnode and namespace operations (~ the VFS
syscall layer above VOP_*).

Rules:
* Only this module (and ``ubcfs.daemon``) imports pyfuse3.  Below it, failures are errno
  values or ``OSError``; here each becomes ``FUSEError(errno)``.  Any other exception is a
  bug: it is logged with its traceback and answered with EIO, because pyfuse3 ends the whole
  mount on anything but ``FUSEError`` -- except ``Panic``, which is let through on purpose:
  a panicked VM must stop (the daemon then unmounts).
* Every open is ``direct_io``: the UBC, not the Linux page cache, is the cache.  The price
  (fuse-notes §2.3): shared writable ``mmap`` of a file on the mount fails with ENODEV,
  and each ``read()`` reaches the daemon; ``MAP_PRIVATE`` mappings and ``execve`` work.
* Sizes and mtimes that programs see are the engine's: a file with dirty pages not yet
  written shows its new size.
* ``open`` receives O_TRUNC (ATOMIC_O_TRUNC) and truncates itself.  ``flush`` and ``fsync``
  are implemented, so errors are never silently dropped.
* ``fallocate`` reaches us only with the pyfuse3 that scripts/setup.sh builds with
  scripts/pyfuse3-fallocate.patch (``fallocate_wired()``); with a plain pyfuse3 3.5 libfuse
  answers ENOSYS and the kernel fails fallocate(2) with EOPNOTSUPP, and nothing else changes.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar, cast

import pyfuse3

from ubcfs.vfs.backing import BackingNamespace, Inode
from ubcfs.vfs.vnode import Vnode
from ubcfs.vm.diag import Panic

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ubcfs.vfs.engine import Engine

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

ATTR_TIMEOUT: Final = 1.0
ENTRY_TIMEOUT: Final = 1.0


def fuse_options(fsname: str, allow_other: bool) -> set[str]:
    """The -o options of a ubcfs mount."""
    opts = set(pyfuse3.default_options)  # default_permissions: the kernel checks modes
    opts |= {f"fsname=ubcfs:{fsname}", "subtype=ubcfs", "auto_unmount", "noatime"}
    if allow_other:
        opts.add("allow_other")
    return opts


def fallocate_wired() -> bool:
    """Does the running pyfuse3 hand FUSE fallocate requests to ``Operations.fallocate``?"""
    return bool(getattr(pyfuse3, "FALLOCATE_HANDLER", False))


def handler(fn: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """Turn OSError into FUSEError, and log-and-EIO any other non-panic exception."""

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except OSError as e:
            raise pyfuse3.FUSEError(e.errno or errno.EIO) from None
        except Panic:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


def _fail(err: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(err)


class Handle:
    """An open file (kernel: struct file)."""

    __slots__ = ("data_fd", "flags", "inode", "vnode")

    def __init__(self, inode: Inode, vnode: Vnode | None, data_fd: int, flags: int) -> None:
        self.inode = inode
        self.vnode = vnode
        self.data_fd = data_fd  # --no-ubc only: the fd the data goes through
        self.flags = flags


class Operations(pyfuse3.Operations):
    """ubcfs's FUSE operations over a backing directory.

    Args:
        engine: the running UBC engine.
        namespace: the backing directory's inode table.
        ubc: False for ``--no-ubc``: data goes straight to the backing files (the baseline
            benchmarks compare against); everything else is the same.
    """

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, engine: Engine, namespace: BackingNamespace, *, ubc: bool = True) -> None:
        super().__init__()
        self.engine = engine
        self.ns = namespace
        self.ubc = ubc
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.dirs: dict[int, tuple[Inode, list[bytes]]] = {}

    # --- helpers ------------------------------------------------------------------------

    def _vnode(self, inode: Inode, data_fd: int = -1) -> Vnode:
        """The engine vnode of a regular file, made on first use (from ``data_fd`` when the
        caller has a read-write descriptor, which the vnode then owns); the inode holds one
        use until it is forgotten."""
        vp = inode.vnode
        if vp is None:
            fd = data_fd if data_fd >= 0 else self.ns.open_data(inode, write=False)
            vp = self.engine.adopt(fd, inode.proc_path)
            inode.vnode = vp
        return cast("Vnode", vp)

    def _entry(self, inode: Inode, st: os.stat_result) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = inode.ino
        e.generation = 0
        e.entry_timeout = ENTRY_TIMEOUT
        e.attr_timeout = ATTR_TIMEOUT
        e.st_mode = st.st_mode
        e.st_nlink = st.st_nlink
        e.st_uid = st.st_uid
        e.st_gid = st.st_gid
        e.st_rdev = st.st_rdev
        e.st_size = st.st_size
        e.st_blksize = 4096
        e.st_blocks = st.st_blocks
        e.st_atime_ns = st.st_atime_ns
        e.st_mtime_ns = st.st_mtime_ns
        e.st_ctime_ns = st.st_ctime_ns
        vp = inode.vnode
        if vp is not None and self.ubc:
            v = cast("Vnode", vp)
            e.st_size = v.size
            e.st_mtime_ns = v.mtime_ns
            e.st_ctime_ns = max(v.ctime_ns, v.mtime_ns)
            e.st_blocks = max(st.st_blocks, (v.size + 511) // 512)
        return e

    def _attr(self, inode: Inode) -> pyfuse3.EntryAttributes:
        return self._entry(inode, self.ns.getattr(inode))

    # --- lookups and attributes ---------------------------------------------------------

    @handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, st = self.ns.lookup(self.ns.get(parent_inode), name)
        return self._entry(inode, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        for ino, n in inode_list:
            inode = self.ns.inodes.get(ino)
            if inode is None:
                continue
            try:
                if inode.ino != 1 and inode.nlookup - n <= 0 and inode.opens == 0:
                    await self._reclaim(inode)
                self.ns.forget(inode, n)
            except Panic:
                raise
            except Exception:
                log.exception("forget of inode %d", ino)

    async def _reclaim(self, inode: Inode) -> None:
        """Give the inode's vnode back to the engine: write back (unless the file is gone)
        and free its pages."""
        vp = inode.vnode
        if vp is None:
            return
        v = cast("Vnode", vp)
        try:
            gone = os.fstat(v.fd).st_nlink == 0
        except OSError:
            gone = False
        # An unlinked file's data can never be read again: drop it unwritten.
        err = await self.engine.release(v, discard=gone)
        if err:
            log.error("%s: write-back at reclaim failed: errno %d; kept", v.name, err)
            v.usecount -= 1  # release kept it; the engine still owns the vnode
        inode.vnode = None

    @handler
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._attr(self.ns.get(inode))

    @handler
    async def setattr(
        self,
        inode: int,
        attr: pyfuse3.EntryAttributes,
        fields: pyfuse3.SetattrFields,
        fh: int | None,
        ctx: pyfuse3.RequestContext,
    ) -> pyfuse3.EntryAttributes:
        ino = self.ns.get(inode)
        if fields.update_size:
            if not ino.is_reg():
                raise _fail(errno.EISDIR if ino.is_dir() else errno.EINVAL)
            if self.ubc:
                err = await self.engine.truncate(self._vnode(ino), attr.st_size)
                if err:
                    raise _fail(err)
            else:
                os.truncate(ino.proc_path, attr.st_size)
        if fields.update_mode:
            self.ns.chmod(ino, attr.st_mode)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            self.ns.chown(ino, uid, gid)
        vp_changed = ino.vnode
        if vp_changed is not None and (
            fields.update_mode or fields.update_uid or fields.update_gid or fields.update_mtime
        ):
            cast("Vnode", vp_changed).changed()
        if fields.update_atime or fields.update_mtime:
            atime = attr.st_atime_ns if fields.update_atime else None
            mtime = attr.st_mtime_ns if fields.update_mtime else None
            self.ns.set_times(ino, atime, mtime)
            vp = ino.vnode
            if vp is not None and mtime is not None:
                cast("Vnode", vp).mtime_ns = mtime
                cast("Vnode", vp).mtime_explicit = True
        return self._attr(ino)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.ns.readlink(self.ns.get(inode))

    # --- names --------------------------------------------------------------------------

    @handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, st = self.ns.mknod(self.ns.get(parent_inode), name, mode, rdev, ctx.uid, ctx.gid)
        return self._entry(inode, st)

    @handler
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, st = self.ns.mkdir(self.ns.get(parent_inode), name, mode, ctx.uid, ctx.gid)
        return self._entry(inode, st)

    @handler
    async def symlink(
        self, parent_inode: int, name: bytes, target: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, st = self.ns.symlink(self.ns.get(parent_inode), name, target, ctx.uid, ctx.gid)
        return self._entry(inode, st)

    @handler
    async def link(
        self, inode: int, new_parent_inode: int, new_name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        ino, st = self.ns.link(self.ns.get(inode), self.ns.get(new_parent_inode), new_name)
        return self._entry(ino, st)

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.ns.unlink(self.ns.get(parent_inode), name)

    @handler
    async def rmdir(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self.ns.rmdir(self.ns.get(parent_inode), name)

    @handler
    async def rename(
        self,
        parent_inode_old: int,
        name_old: bytes,
        parent_inode_new: int,
        name_new: bytes,
        flags: int,
        ctx: pyfuse3.RequestContext,
    ) -> None:
        self.ns.rename(
            self.ns.get(parent_inode_old),
            name_old,
            self.ns.get(parent_inode_new),
            name_new,
            flags,
        )

    # --- files --------------------------------------------------------------------------

    def _new_handle(self, inode: Inode, flags: int, data_fd: int = -1) -> pyfuse3.FileInfo:
        vnode = None
        if self.ubc:
            fresh = inode.vnode is None
            vnode = self._vnode(inode, data_fd)
            if data_fd >= 0 and not fresh:
                os.close(data_fd)
            data_fd = -1
        if vnode is None and data_fd < 0:
            data_fd = self.ns.open_data(inode, write=(flags & os.O_ACCMODE) != os.O_RDONLY)
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(inode, vnode, data_fd, flags)
        inode.opens += 1
        return pyfuse3.FileInfo(fh=fh, direct_io=True, keep_cache=False)

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        return h

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        ino = self.ns.get(inode)
        if not ino.is_reg():
            raise _fail(errno.EISDIR if ino.is_dir() else errno.EINVAL)
        fi = self._new_handle(ino, flags)
        if flags & os.O_TRUNC:
            h = self.handles[fi.fh]
            if h.vnode is not None:
                err = await self.engine.truncate(h.vnode, 0)
                if err:
                    await self._close_handle(fi.fh)
                    raise _fail(err)
            else:
                os.ftruncate(h.data_fd, 0)
        return fi

    @handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.ns.get(parent_inode)
        inode, st, dfd = self.ns.create(parent, name, mode, flags, ctx.uid, ctx.gid)
        try:
            fi = self._new_handle(inode, flags, dfd)
        except BaseException:
            self.ns.forget(inode, 1)
            raise
        return fi, self._entry(inode, st)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.vnode is not None:
            err, data = await self.engine.read(h.vnode, off, size)
            if err:
                raise _fail(err)
            return data  # type: ignore[return-value]  # pyfuse3 takes any buffer
        buf = bytearray(size)
        err, n = await self.engine.io.readv(h.data_fd, [memoryview(buf)], off)
        if err:
            raise _fail(err)
        del buf[n:]
        return bytes(buf)

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handle(fh)
        if h.flags & os.O_APPEND:
            off = h.vnode.size if h.vnode is not None else os.fstat(h.data_fd).st_size
        if h.vnode is not None:
            err, n = await self.engine.write(h.vnode, off, buf)
            if err:
                raise _fail(err)
            return n
        err, n = await self.engine.io.writev(h.data_fd, [memoryview(buf)], off)
        if err:
            raise _fail(err)
        return n

    @handler
    async def flush(self, fh: int) -> None:
        # close() reports a background write-back failure of this file since the last
        # report (its pages stay dirty and are retried); flush does no I/O itself, since it
        # runs on every close of every descriptor.
        h = self._handle(fh)
        err = h.vnode.take_write_error() if h.vnode is not None else 0
        if err:
            raise _fail(err)

    @handler
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self._handle(fh)
        if h.vnode is not None:
            err = await self.engine.fsync(h.vnode)
        else:
            err = await self.engine.io.fsync(h.data_fd, datasync)
        if err:
            raise _fail(err)

    @handler
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        h = self._handle(fh)
        if h.vnode is not None:
            err = await self.engine.fallocate(h.vnode, mode, offset, length)
        else:
            err = await self.engine.io.fallocate(h.data_fd, mode, offset, length)
        if err:
            raise _fail(err)

    @handler
    async def release(self, fh: int) -> None:
        await self._close_handle(fh)

    async def _close_handle(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        if h.data_fd >= 0:
            self.engine.io.forget(h.data_fd)
            os.close(h.data_fd)
        h.inode.opens -= 1
        await self._drop_if_unused(h.inode)

    async def _drop_if_unused(self, inode: Inode) -> None:
        """Forget an inode the kernel no longer knows once its last open is closed
        (kernel: vrele -> VOP_INACTIVE/VOP_RECLAIM)."""
        if inode.opens == 0 and inode.nlookup <= 0 and inode.ino in self.ns.inodes:
            await self._reclaim(inode)
            self.ns.drop(inode)

    # --- directories --------------------------------------------------------------------

    @handler
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        ino = self.ns.get(inode)
        names = self.ns.listdir(ino)
        fh = self.next_fh
        self.next_fh += 1
        self.dirs[fh] = (ino, names)
        ino.opens += 1
        return fh

    @handler
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        d = self.dirs.get(fh)
        if d is None:
            raise _fail(errno.EBADF)
        dino, names = d
        if start_id == 0:
            names = self.ns.listdir(dino)  # rewinddir: a fresh snapshot
            self.dirs[fh] = (dino, names)
        for i in range(start_id, len(names)):
            try:
                inode, st = self.ns.lookup(dino, names[i])
            except OSError:
                continue  # removed since the snapshot
            if not pyfuse3.readdir_reply(token, names[i], self._entry(inode, st), i + 1):
                self.ns.forget(inode, 1)  # not handed out after all
                break

    @handler
    async def releasedir(self, fh: int) -> None:
        d = self.dirs.pop(fh, None)
        if d is not None:
            d[0].opens -= 1
            await self._drop_if_unused(d[0])

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        d = self.dirs.get(fh)
        if d is None:
            raise _fail(errno.EBADF)
        dfd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=d[0].fd)
        try:
            err = await self.engine.io.fsync(dfd, datasync)
        finally:
            self.engine.io.forget(dfd)
            os.close(dfd)
        if err:
            raise _fail(err)

    # --- the rest -----------------------------------------------------------------------

    @handler
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        sv = self.ns.statvfs()
        out = pyfuse3.StatvfsData()
        out.f_bsize = sv.f_bsize
        out.f_frsize = sv.f_frsize
        out.f_blocks = sv.f_blocks
        out.f_bfree = sv.f_bfree
        out.f_bavail = sv.f_bavail
        out.f_files = sv.f_files
        out.f_ffree = sv.f_ffree
        out.f_favail = sv.f_favail
        out.f_namemax = sv.f_namemax
        return out

    @handler
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        try:
            return self.ns.getxattr(self.ns.get(inode), name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise _fail(pyfuse3.ENOATTR) from None
            raise

    @handler
    async def setxattr(
        self, inode: int, name: bytes, value: bytes, ctx: pyfuse3.RequestContext
    ) -> None:
        self.ns.setxattr(self.ns.get(inode), name, value)

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self.ns.listxattr(self.ns.get(inode))

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        try:
            self.ns.removexattr(self.ns.get(inode), name)
        except OSError as e:
            if e.errno == errno.ENODATA:
                raise _fail(pyfuse3.ENOATTR) from None
            raise

    @handler
    async def access(self, inode: int, mode: int, ctx: pyfuse3.RequestContext) -> bool:
        # Only called without default_permissions, which ubcfs always sets: the kernel has
        # already checked the caller against the modes we report.
        self.ns.get(inode)
        return True

    # --- unmount ------------------------------------------------------------------------

    async def final_writeback(self) -> int:
        """After ``pyfuse3.main()`` returned: close what the kernel did not release, write
        back every dirty page and wait for all I/O.  Returns the first error (0: all data is
        in the backing directory)."""
        for fh in list(self.handles):
            await self._close_handle(fh)
        err = await self.engine.shutdown()
        for inode in list(self.ns.inodes.values()):
            vp = inode.vnode
            if vp is not None:
                e2 = await self.engine.release(cast("Vnode", vp))
                if e2 and not err:
                    err = e2
                inode.vnode = None
        return err
