"""The pyfuse3 adapter: FUSE requests become vnode and namespace operations (~ the VFS
syscall layer above VOP_*).

Rules:
* Only this module (and ``ubcfs.daemon``) imports pyfuse3.  Below it, failures are errno
  values or ``OSError``; here each becomes ``FUSEError(errno)``.  Any other exception is a
  bug: it is logged with its traceback and answered with EIO, because pyfuse3 ends the whole
  mount on anything but ``FUSEError`` -- except ``Panic``, which is let through on purpose:
  a panicked VM must stop (the daemon then unmounts).
* By default every open is ``direct_io``: the UBC, not the Linux page cache, is the cache.
  The price (fuse-notes §2.3): shared ``mmap`` of a file on the mount fails with ENODEV,
  and each ``read()`` reaches the daemon; ``MAP_PRIVATE`` mappings and ``execve`` work.
* With ``--kernel-cache`` opens are neither ``direct_io`` nor ``keep_cache``: the kernel's
  page cache sits in front of the UBC, so shared mappings work.  The UBC then sees the
  kernel's misses (read-ahead sized reads, possibly past EOF: a read returns exactly
  ``size`` bytes unless it reaches EOF, a write takes all of ``buf``), every write (write-
  through: there is no writeback cache) and the write-back of dirty shared mappings.
  Coherence needs no ``invalidate_inode``: every change of file data or size reaches the
  daemon as a request from this kernel, which has already applied it to its own cache
  (write-through writes, the truncate of SETATTR and of an O_TRUNC open), and the UBC
  never changes data by itself (page-in reads what page-out wrote).  ``keep_cache=False``
  also drops the kernel's pages at every open, and libfuse's AUTO_INVAL_DATA drops them
  whenever a refreshed mtime or size differs (so a truncate that fails after the engine
  applied the new size is caught up with at the next refresh; measured: at once).  The
  attribute and entry timeouts stay at 1 s: no size changes without the kernel making it,
  so its cached size cannot go stale, while with AUTO_INVAL_DATA an expired timeout costs a
  GETATTR before each read that the kernel would otherwise serve from its cache.
  XXX issue 11: the day something below this module changes file data on its own (stores
  of simulated processes through the UBC), it must have the kernel drop its pages with
  ``pyfuse3.invalidate_inode`` -- from a thread of its own, never inline in a handler
  (fuse-notes §5.5).
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
import stat
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

import pyfuse3

from ubcfs.vfs.backing import BackingNamespace, Inode
from ubcfs.vfs.direct import DirectFile, fsync_fd
from ubcfs.vfs.namespace import Namespace, NamespaceNode
from ubcfs.vfs.tmpfs import TmpfsNamespace, TmpfsNode
from ubcfs.vfs.vcache import VS
from ubcfs.vm.diag import Panic

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ubcfs.vfs.engine import Engine
    from ubcfs.vfs.tmpfs_vnops import TmpfsFiles
    from ubcfs.vfs.vnode import Vnode

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

ATTR_TIMEOUT: Final = 1.0
# How close to our clock a setattr's mtime must be to count as UTIME_NOW (see setattr).
UTIME_NOW_SLACK_NS: Final = 250_000_000
ENTRY_TIMEOUT: Final = 1.0

Node = NamespaceNode  # a backing ``Inode`` or a ``TmpfsNode``


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


def _in_group(opener: tuple[int, int, int], gid: int) -> bool:
    """Is ``gid`` the opener's group or one of its supplementary groups (read now from
    /proc; a process that is gone counts with its primary group only)?"""
    _, egid, pid = opener
    if gid == egid:
        return True
    try:
        return gid in pyfuse3.get_sup_groups(pid)
    except (OSError, ValueError, RuntimeError):
        return False


def _fail(err: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(err)


class MapRef:
    """The reference a simulated process's map entry holds on a mapped file (kernel: the
    vnode pager's pgo_reference/pgo_detach, which are vref/vrele): a vnode use, so that the
    file's page cache outlives its last close and the kernel's forget, and goes only when
    its last mapping does.  ``Operations.mapped`` counts them per vnode for the audit."""

    def __init__(self, ops: Operations, vp: Vnode) -> None:
        self.ops = ops
        self.vp = vp

    def reference(self) -> None:
        ops = self.ops
        vp = self.vp
        if ops.tmpfs is not None:
            vp.usecount += 1  # a tmpfs node's vnode is its data: always loaded
        else:
            ops.engine.vcache.vref(vp)
        ops.mapped[vp] = ops.mapped.get(vp, 0) + 1

    def detach(self) -> None:
        ops = self.ops
        vp = self.vp
        n = ops.mapped.get(vp, 0) - 1
        if n < 0:
            raise ValueError(f"detach of an unmapped vnode {vp.name}")
        if n:
            ops.mapped[vp] = n
        else:
            ops.mapped.pop(vp, None)
        ops._vrele(vp)


class Handle:
    """An open file (kernel: struct file).  With the UBC it holds a use of its vnode, so
    the vnode cannot be reclaimed while the file is open.

    ``opener``: (uid, gid, pid) of the process that opened it.  FUSE's WRITE carries no
    caller, so the clearing of setuid/setgid on a write is decided with the opener's.
    """

    __slots__ = ("direct", "flags", "inode", "opener", "vnode")

    def __init__(
        self,
        inode: Node,
        vnode: Vnode | None,
        direct: DirectFile | None,
        flags: int,
        opener: tuple[int, int, int],
    ) -> None:
        self.inode = inode
        self.vnode = vnode
        self.direct = direct  # --no-ubc only: the backing file the data goes to
        self.flags = flags
        self.opener = opener

    @property
    def kill_priv(self) -> bool:
        """Writes clear setuid/setgid: the opener was not root (no CAP_FSETID)."""
        return self.opener[0] != 0


class Operations(pyfuse3.Operations):
    """ubcfs's FUSE operations over a namespace: a backing directory's or a tmpfs's.

    Two levels of objects, as in the kernel: the name-level node (a backing ``Inode`` or a
    ``TmpfsNode``: the FUSE node the kernel knows, with its lookup count) and the ``Vnode``
    (the file's page cache).  A backing file's vnode is in the engine's vnode cache, keyed
    by backing identity; a tmpfs file's is its node's data (``ubcfs.vfs.tmpfs_vnops``).  A
    FUSE forget drops a node, never a vnode: the vnode stays with its pages, so a file
    closed and forgotten by the kernel is read again from the UBC.  Open handles hold vnode
    uses.

    Atomicity: ``forget``, ``release``, ``releasedir`` and every namespace operation run
    without an ``await``, so the inode table, lookup counts and vnode uses change together.
    The awaits are in ``open``/``create``/``setattr`` (``vget`` may wait for a reclaim to
    finish; the inode's ``inflight`` count or the handle pins the inode across it) and in
    the data operations, which hold a vnode use through their handle.

    Args:
        engine: the running UBC engine.
        namespace: the backing directory's inode table, or a tmpfs's nodes.
        ubc: False for ``--no-ubc``: data goes straight to the backing files (the baseline
            benchmarks compare against); everything else is the same.  Backing only.
        kernel_cache: True for ``--kernel-cache``: opens without ``direct_io``, the
            kernel's page cache in front (module docstring).
        tmpfs: the data layer of a tmpfs namespace (required with one).
    """

    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(
        self,
        engine: Engine,
        namespace: Namespace[Any],
        *,
        ubc: bool = True,
        kernel_cache: bool = False,
        tmpfs: TmpfsFiles | None = None,
    ) -> None:
        super().__init__()
        self.engine = engine
        self.ns = namespace
        self.backing = namespace if isinstance(namespace, BackingNamespace) else None
        self.tmpfs = tmpfs
        if (self.backing is None) == (tmpfs is None):
            raise ValueError("a tmpfs data layer goes with a tmpfs namespace, and only there")
        if tmpfs is not None and not ubc:
            raise ValueError("a tmpfs keeps its data in the UBC: --no-ubc is backing-only")
        self.ubc = ubc
        self.kernel_cache = kernel_cache
        self.handles: dict[int, Handle] = {}
        self.next_fh = 1
        self.dirs: dict[int, tuple[Node, list[bytes]]] = {}
        self.mapped: dict[Vnode, int] = {}  # vnode -> map entries of simulated processes
        engine.vcache.is_held = namespace.by_key.__contains__

    # --- helpers ------------------------------------------------------------------------

    async def _vget(self, inode: Node, data_fd: int = -1) -> Vnode:
        """The vnode of a regular file with one more use, loaded on first use (from
        ``data_fd`` when the caller has a read-write descriptor, which the vnode then owns;
        otherwise this closes it).  => may sleep (a reclaim of the file is waited for);
        a tmpfs file's never does."""
        if self.tmpfs is not None:
            return self.tmpfs.vget(_tmpfs_node(inode))
        backing = self._backing()

        def load() -> Vnode:
            fd = data_fd if data_fd >= 0 else backing.open_data(_backing_inode(inode), write=False)
            try:
                return self.engine.new_vnode(fd, inode.label, os.fstat(fd))
            except BaseException:
                if fd != data_fd:
                    os.close(fd)
                raise

        try:
            vp = await self.engine.vget(inode.key, load)
        except BaseException:
            if data_fd >= 0:
                os.close(data_fd)
            raise
        if data_fd >= 0 and vp.fd != data_fd:
            os.close(data_fd)
        return vp

    def _vrele(self, vp: Vnode) -> None:
        """Drop a use taken by ``_vget``.  => never sleeps."""
        if self.tmpfs is not None:
            self.tmpfs.vrele(vp)
        else:
            self.engine.vrele(vp)

    async def map_file(self, path: str) -> tuple[Vnode, MapRef]:
        """The vnode of the regular file at ``path`` (from the mount's root; ``/`` and
        ``.`` components are skipped, nothing is followed) with one use, and the object
        reference a simulated process's mapping of it holds (``ubcfs.vm.map.ObjRef``): the
        caller maps it, then drops the use with ``unmap_use``.  The names looked up on the
        way are forgotten again, so the mapping holds the file's vnode -- its page cache --
        and not the kernel's names for it.

        Raises:
            OSError: ENOENT, ENOTDIR, ENAMETOOLONG, ENODEV (not a regular file, or a
                --no-ubc mount, which has no page cache to map).
        => may sleep (a reclaim of the file is waited for).
        """
        if not self.ubc:
            raise OSError(errno.ENODEV, "a --no-ubc mount has no page cache to map")
        node: Node = self.ns.root_inode
        taken: list[Node] = []
        try:
            for comp in os.fsencode(path).split(b"/"):
                if comp in (b"", b"."):
                    continue
                if not node.is_dir():
                    raise OSError(errno.ENOTDIR, f"{node.label} is not a directory")
                node, _ = self.ns.lookup(node, comp)
                taken.append(node)
            if not node.is_reg():
                raise OSError(errno.ENODEV, "not a regular file")
            node.inflight += 1
            try:
                vp = await self._vget(node)
            finally:
                node.inflight -= 1
            return vp, MapRef(self, vp)
        finally:
            for n in reversed(taken):
                self._forget(n, 1)

    def unmap_use(self, vp: Vnode) -> None:
        """Drop the use ``map_file`` returned with the vnode.  => never sleeps."""
        self._vrele(vp)

    def _backing(self) -> BackingNamespace:
        """The backing namespace, for what only it has (data descriptors)."""
        if self.backing is None:
            raise _fail(errno.EOPNOTSUPP)
        return self.backing

    def _cached_vnode(self, inode: Node) -> Vnode | None:
        """The vnode of ``inode`` if it has one (no use taken)."""
        if not self.ubc or not inode.is_reg():
            return None
        if self.tmpfs is not None:
            return self.tmpfs.cached(_tmpfs_node(inode))
        return self.engine.vcache.lookup(inode.key)

    def _entry(self, inode: Node, st: os.stat_result) -> pyfuse3.EntryAttributes:
        inode.mode = st.st_mode  # the permission bits may have changed (the type cannot)
        e = pyfuse3.EntryAttributes()
        e.st_ino = self.ns.st_ino(inode, st)
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
        vp = self._cached_vnode(inode)
        if vp is None:
            if self.ubc and self.backing is not None and inode.is_reg():
                e.st_ctime_ns = self.engine.vcache.visible_ctime(inode.key, st.st_ctime_ns)
        else:
            # The engine's view: dirty data may not be written yet, and write-back changes
            # the backing file's mtime and ctime, which programs must not see.
            e.st_size = vp.size
            e.st_mtime_ns = vp.mtime_ns
            e.st_ctime_ns = vp.ctime_ns
            if self.tmpfs is not None:
                # As the tmpfs namespace counts them: the size in whole blocks (NetBSD:
                # va_bytes = round_page(tn_size)).
                bs = st.st_blksize
                e.st_blocks = (vp.size + bs - 1) // bs * (bs // 512)
            else:
                e.st_blocks = max(st.st_blocks, (vp.size + 511) // 512)
        return e

    def _attr(self, inode: Node) -> pyfuse3.EntryAttributes:
        return self._entry(inode, self.ns.getattr(inode))

    def _changed(self, inode: Node | None) -> None:
        """A namespace operation changed ``inode``'s ctime on the backing file: the engine's
        ctime follows."""
        if inode is None:
            return
        vp = self._cached_vnode(inode)
        if vp is not None:
            try:
                vp.changed(self.ns.getattr(inode).st_ctime_ns)
            except OSError:
                vp.changed()

    def _forget(self, inode: Node, n: int) -> None:
        """Drop ``n`` lookups; when the inode goes, tell the vnode cache.  => never sleeps."""
        if self.ns.forget(inode, n):
            self.engine.vcache.forgotten(inode.key)

    def _drop_if_unused(self, inode: Node) -> None:
        """Forget an inode the kernel no longer knows once its last open is closed.
        => never sleeps."""
        if not inode.in_use and self.ns.inodes.get(inode.ino) is inode:
            self.ns.drop(inode)
            self.engine.vcache.forgotten(inode.key)

    # --- lookups and attributes ---------------------------------------------------------

    @handler
    async def lookup(
        self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        inode, st = self.ns.lookup(self.ns.get(parent_inode), name)
        return self._entry(inode, st)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        # No await: the lookup counts and the inode table change in one step, so a lookup
        # cannot find a half-forgotten inode.  The vnode stays cached.
        for ino, n in inode_list:
            inode = self.ns.inodes.get(ino)
            if inode is None:
                continue
            try:
                self._forget(inode, n)
            except Panic:
                raise
            except Exception:
                log.exception("forget of inode %d", ino)

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
            await self._truncate(ino, fh, attr.st_size)
        if fields.update_mode:
            self.ns.chmod(ino, attr.st_mode)
        if fields.update_uid or fields.update_gid:
            uid = attr.st_uid if fields.update_uid else -1
            gid = attr.st_gid if fields.update_gid else -1
            self.ns.chown(ino, uid, gid)
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        if fields.update_atime or fields.update_mtime:
            atime = attr.st_atime_ns if fields.update_atime else None
            self.ns.set_times(ino, atime, mtime)
            vp = self._cached_vnode(ino)
            if vp is not None and mtime is not None:
                vp.mtime_ns = mtime
                vp.times_dirty = True
        elif not (fields.update_mode or fields.update_uid or fields.update_gid):
            return self._attr(ino)
        st = self.ns.getattr(ino)
        ctime = st.st_ctime_ns
        if mtime is not None and abs(mtime - time.time_ns()) < UTIME_NOW_SLACK_NS:
            # UTIME_NOW, which pyfuse3 turned into a clock reading just before calling us:
            # a local file system stamps mtime and ctime with the same reading.
            ctime = mtime
        vp = self._cached_vnode(ino)
        if vp is not None:
            vp.changed(ctime)
        elif ino.is_reg() and self.ubc and self.backing and ctime != st.st_ctime_ns:
            self.engine.vcache.ctimes[ino.key] = (st.st_ctime_ns, ctime)
        return self._entry(ino, st)

    async def _truncate(self, ino: Node, fh: int | None, size: int) -> None:
        if not self.ubc:
            os.truncate(self._backing().proc_path(_backing_inode(ino)), size)
            return
        h = self.handles.get(fh) if fh is not None else None
        if h is not None and h.vnode is not None:
            err = await self.engine.truncate(h.vnode, size)
        else:
            ino.inflight += 1  # keeps the inode across the awaits
            try:
                vp = await self._vget(ino)
                try:
                    err = await self.engine.truncate(vp, size)
                finally:
                    self._vrele(vp)
            finally:
                ino.inflight -= 1
                self._drop_if_unused(ino)
        if err:
            raise _fail(err)

    @handler
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        return self.ns.readlink(self.ns.get(inode))

    # --- names --------------------------------------------------------------------------

    @handler
    async def mknod(
        self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        p = self.ns.get(parent_inode)
        inode, st = self.ns.mknod(p, name, mode, rdev, ctx.uid, ctx.gid, ctx.umask)
        return self._entry(inode, st)

    @handler
    async def mkdir(
        self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext
    ) -> pyfuse3.EntryAttributes:
        p = self.ns.get(parent_inode)
        inode, st = self.ns.mkdir(p, name, mode, ctx.uid, ctx.gid, ctx.umask)
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
        self._changed(ino)
        return self._entry(ino, st)

    @handler
    async def unlink(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        self._changed(self.ns.unlink(self.ns.get(parent_inode), name))

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
        moved, other = self.ns.rename(
            self.ns.get(parent_inode_old),
            name_old,
            self.ns.get(parent_inode_new),
            name_new,
            flags,
        )
        self._changed(moved)
        self._changed(other)

    # --- files --------------------------------------------------------------------------

    def _add_handle(
        self,
        inode: Node,
        vnode: Vnode | None,
        flags: int,
        direct: DirectFile | None,
        ctx: pyfuse3.RequestContext,
    ) -> int:
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = Handle(inode, vnode, direct, flags, (ctx.uid, ctx.gid, ctx.pid))
        return fh

    def _file_info(self, fh: int) -> pyfuse3.FileInfo:
        """The reply to an open: ``direct_io`` unless ``--kernel-cache`` (see the module
        docstring), and never keep_cache (the kernel drops its pages at every open)."""
        return pyfuse3.FileInfo(fh=fh, direct_io=not self.kernel_cache, keep_cache=False)

    def _handle(self, fh: int) -> Handle:
        h = self.handles.get(fh)
        if h is None:
            raise _fail(errno.EBADF)
        return h

    async def _new_handle(
        self, inode: Node, flags: int, ctx: pyfuse3.RequestContext, data_fd: int = -1
    ) -> int:
        """Open ``inode``: a handle with a vnode use (or, with --no-ubc, a data descriptor).
        => may sleep; ``inode.inflight`` holds the inode meanwhile, so a forget arriving
        then cannot drop it."""
        inode.inflight += 1
        try:
            if self.ubc:
                vp = await self._vget(inode, data_fd)
                fh = self._add_handle(inode, vp, flags, None, ctx)
            else:
                if data_fd < 0:
                    write = (flags & os.O_ACCMODE) != os.O_RDONLY
                    data_fd = self._backing().open_data(_backing_inode(inode), write)
                direct = DirectFile(self.engine.io, data_fd)
                fh = self._add_handle(inode, None, flags, direct, ctx)
            inode.opens += 1
            return fh
        finally:
            inode.inflight -= 1
            self._drop_if_unused(inode)

    @handler
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        ino = self.ns.get(inode)
        if not ino.is_reg():
            raise _fail(errno.EISDIR if ino.is_dir() else errno.EINVAL)
        fh = await self._new_handle(ino, flags, ctx)
        if flags & os.O_TRUNC:
            h = self.handles[fh]
            if h.vnode is not None:
                err = await self.engine.truncate(h.vnode, 0)
                if err:
                    self._close_handle(fh)
                    raise _fail(err)
            elif h.direct is not None:
                h.direct.truncate(0)
        return self._file_info(fh)

    @handler
    async def create(
        self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: pyfuse3.RequestContext
    ) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        parent = self.ns.get(parent_inode)
        inode, st, dfd = self.ns.create(parent, name, mode, flags, ctx.uid, ctx.gid, ctx.umask)
        try:
            fh = await self._new_handle(inode, flags, ctx, dfd)
        except BaseException:
            self._forget(inode, 1)
            raise
        return self._file_info(fh), self._entry(inode, st)

    @handler
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self._handle(fh)
        if h.vnode is not None:
            err, data = await self.engine.read(h.vnode, off, size)
            if err:
                raise _fail(err)
            return data  # type: ignore[return-value]  # pyfuse3 takes any buffer
        err, out = await _direct(h).read(off, size)
        if err:
            raise _fail(err)
        return out

    @handler
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self._handle(fh)
        if h.kill_priv and h.inode.mode & (stat.S_ISUID | stat.S_ISGID):
            self._kill_priv(h)
        # With the kernel cache, the kernel has put the bytes at ``off`` in its own cache
        # already (an O_APPEND write at its i_size), and the write-back of a shared mapping
        # may come through an O_APPEND descriptor: ``off`` is the truth.
        if h.flags & os.O_APPEND and not self.kernel_cache:
            off = h.vnode.size if h.vnode is not None else _direct(h).size()
        if self.tmpfs is not None and h.vnode is not None:
            err = self.tmpfs.reserve(h.vnode, off, len(buf))
            if err:
                raise _fail(err)
        if h.vnode is not None:
            err, n = await self.engine.write(h.vnode, off, buf)
            if err:
                raise _fail(err)
            return n
        err, n = await _direct(h).write(off, buf)
        if err:
            raise _fail(err)
        return n

    def _kill_priv(self, h: Handle) -> None:
        """A write without CAP_FSETID clears setuid, and setgid where group execution is
        allowed or the writer is not in the file's group (the kernel's
        setattr_should_drop_suidgid)."""
        inode = h.inode
        st = self.ns.getattr(inode)
        mode = stat.S_IMODE(st.st_mode)
        kill = stat.S_ISUID
        if mode & stat.S_ISGID and (mode & stat.S_IXGRP or not _in_group(h.opener, st.st_gid)):
            kill |= stat.S_ISGID
        if mode & kill:
            self.ns.chmod(inode, mode & ~kill)
            self._changed(inode)
        inode.mode = stat.S_IFMT(st.st_mode) | (mode & ~kill)

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
            err = await _direct(h).fsync(datasync)
        if err:
            raise _fail(err)

    @handler
    async def fallocate(self, fh: int, mode: int, offset: int, length: int) -> None:
        h = self._handle(fh)
        if h.vnode is not None:
            err = await self.engine.fallocate(h.vnode, mode, offset, length)
        else:
            err = await _direct(h).fallocate(mode, offset, length)
        if err:
            raise _fail(err)

    @handler
    async def release(self, fh: int) -> None:
        self._close_handle(fh)

    def _close_handle(self, fh: int) -> None:
        """Drop an open file: its vnode use and its inode's open.  => never sleeps: the
        vnode stays cached (the drain writes it back when it needs the room)."""
        h = self.handles.pop(fh, None)
        if h is None:
            return
        if h.direct is not None:
            h.direct.close()
        h.inode.opens -= 1
        self._drop_if_unused(h.inode)
        if h.vnode is not None:
            self._vrele(h.vnode)

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
        # Cookies index the snapshot [".", "..", *names]; the dot entries add no lookup
        # (the kernel does not link them), every other entry handed out adds one.
        d = self.dirs.get(fh)
        if d is None:
            raise _fail(errno.EBADF)
        dino, names = d
        if start_id == 0:
            names = self.ns.listdir(dino)  # rewinddir: a fresh snapshot
            self.dirs[fh] = (dino, names)
        for i in range(start_id, len(names) + 2):
            if i < 2:
                name = b"." if i == 0 else b".."
                st = self.ns.getattr(dino) if i == 0 else self.ns.stat_parent(dino)
                e = self._entry(dino, st) if i == 0 else self._dot_entry(st)
                if not pyfuse3.readdir_reply(token, name, e, i + 1):
                    break
                continue
            name = names[i - 2]
            try:
                inode, st = self.ns.lookup(dino, name)
            except OSError:
                continue  # removed since the snapshot
            if not pyfuse3.readdir_reply(token, name, self._entry(inode, st), i + 1):
                self._forget(inode, 1)  # not handed out after all
                break

    def _dot_entry(self, st: os.stat_result) -> pyfuse3.EntryAttributes:
        """The attributes of a ``..`` entry (only its number and type are used)."""
        e = pyfuse3.EntryAttributes()
        root = self.ns.root_inode
        e.st_ino = st.st_ino if (st.st_dev, st.st_ino) == root.key else self.ns.ino_of(st)
        e.st_mode = st.st_mode
        return e

    @handler
    async def releasedir(self, fh: int) -> None:
        d = self.dirs.pop(fh, None)
        if d is not None:
            d[0].opens -= 1
            self._drop_if_unused(d[0])

    @handler
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        d = self.dirs.get(fh)
        if d is None:
            raise _fail(errno.EBADF)
        if self.backing is None:
            return  # a tmpfs directory is as durable as it will ever be
        dfd = self.backing.open_dir(_backing_inode(d[0]))
        err = await fsync_fd(self.engine.io, dfd, datasync)
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
        ino = self.ns.get(inode)
        self.ns.setxattr(ino, name, value)
        self._changed(ino)

    @handler
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        return self.ns.listxattr(self.ns.get(inode))

    @handler
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        ino = self.ns.get(inode)
        try:
            self.ns.removexattr(ino, name)
            self._changed(ino)
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

    # --- unmount and checks -------------------------------------------------------------

    async def final_writeback(self) -> int:
        """After ``pyfuse3.main()`` returned: close what the kernel did not release, write
        back every dirty page, wait for all I/O and reclaim every vnode.  Returns the first
        error (0: all data is in the backing directory)."""
        for fh in list(self.handles):
            self._close_handle(fh)
        err = await self.engine.shutdown()
        e2 = await self.engine.vcache.reclaim_all()
        if self.tmpfs is not None:
            # Like tmpfs's unmount: every node goes, and with it every page and slot.
            self.ns.close()
            await self.tmpfs.drain()
        return err or e2

    def audit(self) -> list[str]:
        """Violations of the FUSE layer's rules, the vnode cache's and the namespace's
        (``ubcfs check``)."""
        out = self.engine.vcache.audit() + self.engine.ubc.audit()
        ns = self.ns
        opens: dict[int, int] = {}
        uses: dict[int, int] = {}  # vnode id -> handles
        vnodes: dict[int, Vnode] = {}
        for fh, h in self.handles.items():
            opens[id(h.inode)] = opens.get(id(h.inode), 0) + 1
            if ns.inodes.get(h.inode.ino) is not h.inode:
                out.append(f"handle {fh}: its inode {h.inode.label} is not registered")
            vp = h.vnode
            if vp is None:
                continue
            uses[id(vp)] = uses.get(id(vp), 0) + 1
            vnodes[id(vp)] = vp
            if self._cached_vnode(h.inode) is not vp:
                where = "the vnode cache" if self.tmpfs is None else "its node's data"
                out.append(f"handle {fh}: its vnode {vp.name} is not in {where}")
            if vp.vstate is not VS.LOADED:
                out.append(f"handle {fh}: its vnode {vp.name} is {vp.vstate.value}")
            if vp.key != h.inode.key:
                out.append(f"handle {fh}: vnode {vp.name} is not its inode's file")
        for vp, n in self.mapped.items():  # simulated processes' mappings hold uses too
            uses[id(vp)] = uses.get(id(vp), 0) + n
            vnodes[id(vp)] = vp
        for d_ino, _ in self.dirs.values():
            opens[id(d_ino)] = opens.get(id(d_ino), 0) + 1
        for vid, n in uses.items():
            vp = vnodes[vid]
            if vp.usecount < n:
                out.append(f"vnode {vp.name}: {n} handles and mappings but usecount {vp.usecount}")
        for ino, inode in ns.inodes.items():
            where = f"inode {inode.label}"
            if inode.ino != ino:
                out.append(f"{where}: registered as {ino}")
            if ns.by_key.get(inode.key) is not inode:
                out.append(f"{where}: not the inode of its key {inode.key}")
            if inode.opens != opens.get(id(inode), 0):
                out.append(f"{where}: opens {inode.opens}, handles {opens.get(id(inode), 0)}")
            if inode.inflight < 0:
                out.append(f"{where}: {inode.inflight} requests in flight")
            if not inode.in_use:
                out.append(f"{where}: neither looked up, open nor in use, but registered")
        if self.backing is not None:
            out += self._audit_descriptors(self.backing)
        if self.tmpfs is not None and isinstance(ns, TmpfsNamespace):
            by_ino = {vnodes[vid].key[1]: n for vid, n in uses.items()}
            out += ns.audit() + self.tmpfs.audit(ns.nodes, by_ino)
        return out

    @staticmethod
    def _audit_descriptors(ns: BackingNamespace) -> list[str]:
        """Every backing inode has a descriptor of its own file, or a handle to reopen it."""
        out: list[str] = []
        for inode in ns.inodes.values():
            where = f"inode {inode.label}"
            fd = inode.pinned if inode.pinned >= 0 else ns.fdcache.get(inode.ino)
            if fd is None:
                if inode.handle is None:
                    out.append(f"{where}: no descriptor and no handle")
                continue
            try:
                st = os.fstat(fd)
            except OSError as e:
                out.append(f"{where}: descriptor {fd} is not open: {e.strerror}")
                continue
            if (st.st_dev, st.st_ino) != inode.key:
                out.append(f"{where}: descriptor {fd} is another file {(st.st_dev, st.st_ino)}")
        return out


def _tmpfs_node(inode: Node) -> TmpfsNode:
    if not isinstance(inode, TmpfsNode):
        raise TypeError(f"{inode.label} is not a tmpfs node")
    return inode


def _backing_inode(inode: Node) -> Inode:
    if not isinstance(inode, Inode):
        raise TypeError(f"{inode.label} is not a backing inode")
    return inode


def _direct(h: Handle) -> DirectFile:
    if h.direct is None:
        raise _fail(errno.EBADF)  # neither a vnode nor a backing file: cannot happen
    return h.direct
