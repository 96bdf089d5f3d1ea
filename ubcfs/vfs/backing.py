"""The --backing namespace: names, attributes, links and xattrs passed through to a backing
directory with ``*at()`` calls relative to directory descriptors (~ libfuse passthrough_hp's
design), with a bounded number of descriptors.

Theory of operation
-------------------
A lookup resolves exactly one name relative to its parent's ``O_PATH`` descriptor and never
follows a symlink, so a symlink or a renamed directory planted inside the backing directory
while mounted can never make the daemon (often root) reach outside it: the daemon never
walks a path.  Operations on an inode itself go through a descriptor of that inode
(``fstat``; ``/proc/self/fd/N``, a magic link that names exactly that inode, to reopen it
for I/O or change its mode; the ``*at(fd, "", AT_EMPTY_PATH)`` calls for owner and times,
which work on symlinks too).

Descriptors.  The kernel may know hundreds of thousands of inodes; a descriptor each would
exhaust RLIMIT_NOFILE (an untar of 20k files did).  So an ``Inode`` keeps the backing file's
*handle* (``name_to_handle_at``) instead, and ``fd(inode)`` returns an ``O_PATH``
descriptor from a bounded LRU (``DescriptorCache``), reopening the inode with
``open_by_handle_at`` on a miss.  That needs CAP_DAC_READ_SEARCH and a backing file system
that exports handles; where either is missing, the inode *pins* its descriptor for as long as
the kernel knows it (what passthrough servers do) and the soft limit, raised to the hard one
at start, is the bound.  An inode whose last name was removed through the mount pins its
descriptor too, so that it stays reachable while the kernel still uses it (open or as a cwd),
and so that its inode number cannot be reused by the backing file system meanwhile.

A descriptor from ``fd()`` is valid until the next call of ``fd()`` that misses and evicts
it: callers use it at once, never across an ``await``, and at most a couple at a time (the
cache never evicts its two most recently used entries, which covers rename's two parents).

Inode numbers.  The FUSE node id, and so the ``st_ino`` programs see, is the backing file's
own ``st_ino`` when the file lives on the backing directory's file system (1, FUSE's root id,
and numbers on other file systems are mapped to numbers above ``REMAP_BASE``, stably for the
life of the mount).  So st_ino is stable for the life of the file, shared by hard links and
unchanged by rename.  The root is node id 1 but reports the backing root's own number.

Blocking: namespace syscalls run inline on the trio thread.  They touch directory metadata
that is cached in the host kernel and take microseconds, while a worker-thread hop costs
110-240 µs (fuse-notes §1.4), which would cut metadata throughput several times over.  Data
I/O, fsync and truncation of the backing files -- the calls that can wait for a disk for
milliseconds -- always run in worker threads (``pagers.backing_io``, ``ubcfs.vfs.vnops``).

Errors: ``OSError`` propagates to the FUSE layer, which turns it into the same errno.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import logging
import os
import resource
import stat
import struct
from typing import Final

from cachetools import LRUCache

from ubcfs.vfs.namespace import NodeUse

log = logging.getLogger(__name__)

ROOT_INO: Final = 1
AT_EMPTY_PATH: Final = 0x1000
AT_SYMLINK_NOFOLLOW: Final = 0x100
RENAME_NOREPLACE: Final = 1
RENAME_EXCHANGE: Final = 2
UTIME_OMIT: Final = (1 << 30) - 2

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


def _check(rc: int, what: str) -> None:
    if rc != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def renameat2(olddirfd: int, old: bytes, newdirfd: int, new: bytes, flags: int) -> None:
    """rename with RENAME_NOREPLACE / RENAME_EXCHANGE (glibc renameat2)."""
    _check(_libc.renameat2(olddirfd, old, newdirfd, new, ctypes.c_uint(flags)), "renameat2")


def fchown_empty(fd: int, uid: int, gid: int) -> None:
    """Change the owner of the inode behind an O_PATH fd, a symlink included."""
    _check(_libc.fchownat(fd, b"", uid, gid, AT_EMPTY_PATH), "fchownat")


def futimens_empty(fd: int, atime_ns: int | None, mtime_ns: int | None) -> None:
    """Set the times of the inode behind an O_PATH fd (None: leave that time alone)."""
    times = (_Timespec * 2)()
    for i, t in enumerate((atime_ns, mtime_ns)):
        if t is None:
            times[i].tv_sec, times[i].tv_nsec = 0, UTIME_OMIT
        else:
            times[i].tv_sec, times[i].tv_nsec = divmod(t, 1_000_000_000)
    _check(_libc.utimensat(fd, b"", times, AT_EMPTY_PATH), "utimensat")


def check_name(name: bytes) -> None:
    """A single path component: not empty, no slash, no NUL."""
    if not name or b"/" in name or b"\0" in name or len(name) > 255:
        raise OSError(errno.EINVAL if len(name) <= 255 else errno.ENAMETOOLONG, "bad name")


REMAP_BASE: Final = 1 << 62  # numbers for inodes whose own st_ino cannot be used
MAX_HANDLE_SZ: Final = 128
FD_RESERVE: Final = 96  # descriptors kept free for sockets, logs, pipes, worker-thread opens
MIN_PATH_FDS: Final = 16


def _nofile() -> tuple[int, int]:
    """RLIMIT_NOFILE (soft, hard), with "unlimited" as the kernel's own cap."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = 1 << 20  # fs.nr_open's default
    return (cap if soft == resource.RLIM_INFINITY else soft), (
        cap if hard == resource.RLIM_INFINITY else hard
    )


def vnode_fd_budget() -> int:
    """Descriptors the vnode cache may hold: half of what RLIMIT_NOFILE leaves after the
    reserve (a quarter goes to the O_PATH cache, the rest to sockets and worker threads)."""
    return max(0, _nofile()[0] - FD_RESERVE) // 2


def raise_nofile_limit() -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard one; return the soft limit now."""
    soft, hard = _nofile()
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            log.warning("cannot raise the descriptor limit to %d: %s", hard, e)
    return soft


def name_to_handle(fd: int) -> tuple[bytes, int] | None:
    """The file handle and mount id of the inode behind ``fd`` (an O_PATH fd is fine), or
    None when its file system cannot make handles."""
    buf = ctypes.create_string_buffer(8 + MAX_HANDLE_SZ)
    struct.pack_into("I", buf, 0, MAX_HANDLE_SZ)
    mount_id = ctypes.c_int()
    if _libc.name_to_handle_at(fd, b"", buf, ctypes.byref(mount_id), AT_EMPTY_PATH) != 0:
        return None
    nbytes = struct.unpack_from("I", buf, 0)[0]
    return buf.raw[: 8 + nbytes], mount_id.value


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """Open the inode a handle names (kernel: open_by_handle_at; needs CAP_DAC_READ_SEARCH).

    Raises:
        OSError: ESTALE when the inode is gone, EPERM without the capability.
    """
    buf = ctypes.create_string_buffer(handle, len(handle))
    fd = int(_libc.open_by_handle_at(mount_fd, buf, flags))
    if fd < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"open_by_handle_at: {os.strerror(e)}")
    return fd


class DescriptorCache(LRUCache[int, int]):
    """A bounded LRU of O_PATH descriptors by inode number; evicting one closes it.

    Attributes:
        hits, misses, evictions: for ``ubcfs stat``.
    """

    def __init__(self, maxsize: int) -> None:
        super().__init__(maxsize=max(MIN_PATH_FDS, maxsize))
        self.hits = 0
        self.misses = 0
        self.evictions = 0

    def popitem(self) -> tuple[int, int]:
        ino, fd = super().popitem()
        self.evictions += 1
        _close(fd)
        return ino, fd

    def discard(self, ino: int) -> None:
        """Forget (and close) the descriptor of ``ino``, if cached."""
        fd = self.pop(ino, None)
        if fd is not None:
            _close(fd)

    def take(self, ino: int) -> int | None:
        """Remove the descriptor of ``ino`` from the cache without closing it."""
        return self.pop(ino, None)

    def shrink(self) -> None:
        """Close the older half (after EMFILE), never the two most recent entries."""
        target = max(2, len(self) // 2)
        while len(self) > target:
            self.popitem()

    def close_all(self) -> None:
        while len(self):
            self.popitem()


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        log.debug("closing fd %d failed", fd)


class Inode(NodeUse):
    """One inode known to the kernel (its FUSE node).

    Attributes:
        ino: the FUSE node id, which is also the st_ino programs see (see the module doc).
        key: (st_dev, st_ino) of the backing inode.
        mode: file type and permission bits as last reported (the type never changes).
        name: the name it was last looked up by (for messages).
        handle: the backing file handle, or None when ``pinned`` must be used.
        mount_id: the backing mount the handle belongs to.
        pinned: an O_PATH descriptor held for the inode's whole life (the root, inodes
            without a handle, inodes whose last name was removed), or -1.
        nlookup: the kernel's lookup count.
        opens: open file and directory handles.
        inflight: requests that hold the inode across an ``await`` without a handle (an
            open not finished yet, a truncate by path).
    """

    __slots__ = (
        "handle",
        "inflight",
        "ino",
        "key",
        "mode",
        "mount_id",
        "name",
        "nlookup",
        "opens",
        "pinned",
    )

    def __init__(self, ino: int, key: tuple[int, int], mode: int, name: bytes) -> None:
        self.ino = ino
        self.key = key
        self.mode = mode
        self.name = name
        self.handle: bytes | None = None
        self.mount_id = -1
        self.pinned = -1
        self.nlookup = 0
        self.opens = 0
        self.inflight = 0


class BackingNamespace:
    """The inode table and namespace operations over one backing directory.

    Args:
        root: the backing directory.
        path_fds: how many O_PATH descriptors to cache (default: a quarter of the
            descriptor limit left after the reserve).

    Raises:
        OSError: the directory cannot be opened.
    """

    def __init__(self, root: str, path_fds: int | None = None) -> None:
        self.root = os.path.realpath(root)
        self.fd_limit = raise_nofile_limit()
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self.root_dev = st.st_dev
        self.inodes: dict[int, Inode] = {}
        self.by_key: dict[tuple[int, int], Inode] = {}
        self.remap: dict[tuple[int, int], int] = {}  # keys that cannot use their st_ino
        self.next_remap = REMAP_BASE
        self.root_inode = Inode(ROOT_INO, (st.st_dev, st.st_ino), st.st_mode, b"/")
        self.root_inode.pinned = fd
        self.root_inode.nlookup = 1  # the root is never forgotten
        self.inodes[ROOT_INO] = self.root_inode
        self.by_key[self.root_inode.key] = self.root_inode
        self.is_root_user = os.geteuid() == 0
        if path_fds is None:
            path_fds = max(0, self.fd_limit - FD_RESERVE) // 4
        self.fdcache = DescriptorCache(path_fds)
        self.mount_fds: dict[int, int] = {}  # backing mount id -> a descriptor to decode on
        self.handles_ok = self._probe_handles(fd)

    def _probe_handles(self, root_fd: int) -> bool:
        """Can inodes be reopened from handles here?  Tried on the root."""
        got = name_to_handle(root_fd)
        if got is None:
            log.info("backing file system makes no file handles: one descriptor per inode")
            return False
        handle, mount_id = got
        try:
            mfd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            log.info("cannot open the backing root for handles (%s): one descriptor per inode", e)
            return False
        try:
            _close(open_by_handle(mfd, handle, os.O_PATH | os.O_CLOEXEC))
        except OSError as e:
            _close(mfd)
            log.info("open_by_handle_at refused (%s): one descriptor per inode", e.strerror)
            return False
        self.mount_fds[mount_id] = mfd
        return True

    def close(self) -> None:
        """Close every descriptor."""
        self.fdcache.close_all()
        for inode in self.inodes.values():
            if inode.pinned >= 0:
                _close(inode.pinned)
                inode.pinned = -1
        for mfd in self.mount_fds.values():
            _close(mfd)
        self.mount_fds.clear()
        self.inodes.clear()
        self.by_key.clear()

    def get(self, ino: int) -> Inode:
        """The inode for a number the kernel gave us; ESTALE when we do not know it."""
        inode = self.inodes.get(ino)
        if inode is None:
            raise OSError(errno.ESTALE, f"unknown inode {ino}")
        return inode

    # --- descriptors --------------------------------------------------------------------

    def fd(self, inode: Inode) -> int:
        """An O_PATH descriptor of ``inode``, valid until a later ``fd()`` evicts it.

        => never sleeps; use the descriptor before the next ``await``.
        """
        if inode.pinned >= 0:
            return inode.pinned
        cache = self.fdcache
        fd = cache.get(inode.ino)
        if fd is not None:
            cache.hits += 1
            return fd
        cache.misses += 1
        assert inode.handle is not None, f"{inode.label}: neither pinned nor a handle"
        mfd = self.mount_fds[inode.mount_id]
        flags = os.O_PATH | os.O_CLOEXEC
        try:
            fd = open_by_handle(mfd, inode.handle, flags)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            cache.shrink()
            fd = open_by_handle(mfd, inode.handle, flags)
        cache[inode.ino] = fd
        return fd

    def proc_path(self, inode: Inode) -> str:
        """The magic link naming exactly this inode (valid like ``fd()``)."""
        return f"/proc/self/fd/{self.fd(inode)}"

    def pin(self, inode: Inode) -> None:
        """Hold a descriptor of ``inode`` until it is dropped: its last name is going away.
        => call before removing the name (afterwards the handle may no longer open it)."""
        if inode.pinned >= 0:
            return
        fd = self.fd(inode)
        taken = self.fdcache.take(inode.ino)
        assert taken == fd
        inode.pinned = fd

    def descriptors(self) -> dict[str, int]:
        """Descriptor accounting for ``ubcfs stat``."""
        c = self.fdcache
        pinned = sum(1 for i in self.inodes.values() if i.pinned >= 0)
        return {
            "limit": int(c.maxsize),  # the cache's bound
            "nofile": self.fd_limit,  # RLIMIT_NOFILE (the soft limit, raised at start)
            "open": len(c),  # in the cache
            "pinned": pinned,  # held by their inodes: the root, unlinked files, no handle
            "mounts": len(self.mount_fds),  # kept to decode handles on
            "hits": c.hits,
            "misses": c.misses,
            "evictions": c.evictions,
            "handles": int(self.handles_ok),
        }

    # --- lookups ------------------------------------------------------------------------

    def ino_of(self, st: os.stat_result) -> int:
        """The inode number programs see for a backing inode (stable while mounted)."""
        key = (st.st_dev, st.st_ino)
        if key == self.root_inode.key:
            return ROOT_INO
        if st.st_dev == self.root_dev and st.st_ino > ROOT_INO:
            return st.st_ino
        ino = self.remap.get(key)
        if ino is None:
            ino = self.remap[key] = self.next_remap
            self.next_remap += 1
        return ino

    def st_ino(self, inode: Inode, st: os.stat_result) -> int:
        """The st_ino to report for ``inode``: its node id, but the root's own number."""
        return st.st_ino if inode is self.root_inode else inode.ino

    def lookup(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Resolve one name in ``parent`` without following symlinks; +1 lookup."""
        pfd = self.fd(parent)
        if name == b"." or (name == b".." and parent is self.root_inode):
            inode, st = parent, os.fstat(pfd)
        elif name == b"..":
            inode, st = self._adopt(os.open(b"..", os.O_PATH | os.O_CLOEXEC, dir_fd=pfd), name)
        else:
            check_name(name)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=pfd)
            inode, st = self._adopt(fd, name)
        inode.nlookup += 1
        return inode, st

    def _adopt(self, fd: int, name: bytes) -> tuple[Inode, os.stat_result]:
        """Find or make the inode of a new O_PATH fd, which this takes over (caches, pins
        or closes it)."""
        try:
            st = os.fstat(fd)
        except BaseException:
            _close(fd)
            raise
        key = (st.st_dev, st.st_ino)
        inode = self.by_key.get(key)
        if inode is not None:
            inode.name = name
            if inode.pinned >= 0 or inode.ino in self.fdcache:
                _close(fd)
            else:
                self.fdcache[inode.ino] = fd
            return inode, st
        inode = Inode(self.ino_of(st), key, st.st_mode, name)
        got = name_to_handle(fd) if self.handles_ok else None
        if got is not None and got[1] not in self.mount_fds:
            got = self._add_mount(fd, st, got)
        if got is None:
            inode.pinned = fd
        else:
            inode.handle, inode.mount_id = got
            self.fdcache[inode.ino] = fd
        self.inodes[inode.ino] = inode
        self.by_key[key] = inode
        return inode, st

    def _add_mount(
        self, fd: int, st: os.stat_result, got: tuple[bytes, int]
    ) -> tuple[bytes, int] | None:
        """First inode seen on another backing mount: keep a descriptor to decode its handles
        on, if it is a directory (opening anything else could have side effects)."""
        if not stat.S_ISDIR(st.st_mode):
            return None
        try:
            self.mount_fds[got[1]] = os.open(
                f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
            )
        except OSError:
            return None
        return got

    def forget(self, inode: Inode, n: int) -> bool:
        """Drop ``n`` lookups; return True when the inode was dropped."""
        if inode.ino == ROOT_INO:
            return False
        inode.nlookup -= n
        if inode.in_use:
            return False
        self.drop(inode)
        return True

    def drop(self, inode: Inode) -> None:
        """Forget an inode now (its lookups and opens are gone): close its descriptors."""
        if self.inodes.get(inode.ino) is inode:
            del self.inodes[inode.ino]
        if self.by_key.get(inode.key) is inode:
            del self.by_key[inode.key]
        self.fdcache.discard(inode.ino)
        if inode.pinned >= 0:
            _close(inode.pinned)
            inode.pinned = -1

    def known_child(self, parent: Inode, name: bytes) -> Inode | None:
        """The inode we know under ``name`` in ``parent``, if any (no lookup count)."""
        try:
            st = os.stat(name, dir_fd=self.fd(parent), follow_symlinks=False)
        except OSError:
            return None
        return self.by_key.get((st.st_dev, st.st_ino))

    # --- attributes ---------------------------------------------------------------------

    def getattr(self, inode: Inode) -> os.stat_result:
        return os.fstat(self.fd(inode))

    def chmod(self, inode: Inode, mode: int) -> None:
        if inode.is_lnk():
            raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
        os.chmod(self.proc_path(inode), stat.S_IMODE(mode))

    def chown(self, inode: Inode, uid: int, gid: int) -> None:
        fchown_empty(self.fd(inode), uid, gid)

    def set_times(self, inode: Inode, atime_ns: int | None, mtime_ns: int | None) -> None:
        futimens_empty(self.fd(inode), atime_ns, mtime_ns)

    def readlink(self, inode: Inode) -> bytes:
        return os.readlink(b"", dir_fd=self.fd(inode))

    def open_data(self, inode: Inode, write: bool) -> int:
        """A data descriptor of a regular file (read-write when possible)."""
        if not inode.is_reg():
            raise OSError(errno.EISDIR if inode.is_dir() else errno.EINVAL, "not a file")
        path = self.proc_path(inode)
        try:
            return os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except PermissionError:
            if write:
                raise
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC)

    def open_dir(self, inode: Inode) -> int:
        """A readable descriptor of a directory (for listings and fsyncdir); the caller
        closes it."""
        if not inode.is_dir():
            raise OSError(errno.ENOTDIR, "not a directory")
        return os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=self.fd(inode))

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.proc_path(self.root_inode))

    # --- creating and removing names ----------------------------------------------------
    #
    # New objects get exactly ``mode & ~umask`` (the daemon runs with umask 0; the kernel
    # has usually masked the mode already, and masking twice changes nothing), setuid and
    # setgid included, and belong to the caller.  Root's chown of a non-directory clears
    # setuid/setgid, so a new file's mode is put back after it.

    def _owner(self, parent: Inode, uid: int, gid: int) -> tuple[int, int]:
        pst = os.fstat(self.fd(parent))
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid  # BSD group semantics of a setgid directory
        return uid, gid

    def _give(self, parent: Inode, name: bytes, uid: int, gid: int, mode: int) -> None:
        if not self.is_root_user:
            return
        pfd = self.fd(parent)
        uid, gid = self._owner(parent, uid, gid)
        os.chown(name, uid, gid, dir_fd=pfd, follow_symlinks=False)
        if mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(mode):
            os.chmod(name, stat.S_IMODE(mode), dir_fd=pfd, follow_symlinks=False)

    def create(
        self, parent: Inode, name: bytes, mode: int, flags: int, uid: int, gid: int, umask: int = 0
    ) -> tuple[Inode, os.stat_result, int]:
        """Create (or with O_CREAT only, open) a file; returns the inode (+1 lookup), its
        stat and a read-write data fd."""
        check_name(name)
        perm = stat.S_IMODE(mode) & ~umask
        oflags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        pfd = self.fd(parent)
        try:
            dfd = os.open(name, oflags | os.O_CREAT | os.O_EXCL, perm, dir_fd=pfd)
            created = True
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            # Made in the backing directory since the kernel's lookup: open it as it is,
            # without taking its ownership away from whoever made it.
            dfd = os.open(name, oflags, dir_fd=pfd)
            created = False
        try:
            if created and self.is_root_user:
                # Through the descriptor: no second lookup of the name, which someone may
                # have renamed or replaced meanwhile.
                os.fchown(dfd, *self._owner(parent, uid, gid))
                if perm & (stat.S_ISUID | stat.S_ISGID):
                    os.fchmod(dfd, perm)
            inode, st = self.lookup(parent, name)
        except BaseException:
            os.close(dfd)
            raise
        return inode, st, dfd

    def mkdir(
        self, parent: Inode, name: bytes, mode: int, uid: int, gid: int, umask: int = 0
    ) -> tuple[Inode, os.stat_result]:
        check_name(name)
        perm = stat.S_IMODE(mode) & ~umask
        os.mkdir(name, perm, dir_fd=self.fd(parent))
        self._give(parent, name, uid, gid, stat.S_IFDIR | perm)
        return self.lookup(parent, name)

    def mknod(
        self, parent: Inode, name: bytes, mode: int, rdev: int, uid: int, gid: int, umask: int = 0
    ) -> tuple[Inode, os.stat_result]:
        check_name(name)
        mode = stat.S_IFMT(mode) | (stat.S_IMODE(mode) & ~umask)
        os.mknod(name, mode, rdev, dir_fd=self.fd(parent))
        self._give(parent, name, uid, gid, mode)
        return self.lookup(parent, name)

    def symlink(
        self, parent: Inode, name: bytes, target: bytes, uid: int, gid: int
    ) -> tuple[Inode, os.stat_result]:
        check_name(name)
        os.symlink(target, name, dir_fd=self.fd(parent))
        self._give(parent, name, uid, gid, stat.S_IFLNK | 0o777)
        return self.lookup(parent, name)

    def link(self, inode: Inode, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        check_name(name)
        if inode.is_dir():
            raise OSError(errno.EPERM, "hard link to a directory")
        ifd = self.fd(inode)
        pfd = self.fd(parent)
        if inode.is_lnk():
            # The magic link would follow the symlink; linkat(fd, "", AT_EMPTY_PATH) links the
            # symlink itself (it needs CAP_DAC_READ_SEARCH, which a root daemon has).
            _check(_libc.linkat(ifd, b"", pfd, name, AT_EMPTY_PATH), "linkat")
        else:
            os.link(f"/proc/self/fd/{ifd}", name, dst_dir_fd=pfd, follow_symlinks=True)
        return self.lookup(parent, name)

    def _pin_if_last_name(self, parent: Inode, name: bytes) -> Inode | None:
        """Before ``name`` in ``parent`` is removed: the known inode behind it, pinned when
        this is its last name (see the module doc)."""
        try:
            st = os.stat(name, dir_fd=self.fd(parent), follow_symlinks=False)
        except OSError:
            return None
        inode = self.by_key.get((st.st_dev, st.st_ino))
        if inode is not None and (st.st_nlink <= 1 or stat.S_ISDIR(st.st_mode)):
            self.pin(inode)
        return inode

    def unlink(self, parent: Inode, name: bytes) -> Inode | None:
        """Remove a name; returns the known inode it named, if any."""
        check_name(name)
        victim = self._pin_if_last_name(parent, name)
        os.unlink(name, dir_fd=self.fd(parent))
        return victim

    def rmdir(self, parent: Inode, name: bytes) -> Inode | None:
        check_name(name)
        victim = self._pin_if_last_name(parent, name)
        os.rmdir(name, dir_fd=self.fd(parent))
        return victim

    def rename(
        self, old_parent: Inode, old: bytes, new_parent: Inode, new: bytes, flags: int
    ) -> tuple[Inode | None, Inode | None]:
        """Rename; returns the known inodes of the moved object and of the one it replaced
        (or, with RENAME_EXCHANGE, of the other object moved)."""
        check_name(old)
        check_name(new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, "unknown rename flags")
        moved = self.known_child(old_parent, old)
        if flags & (RENAME_NOREPLACE | RENAME_EXCHANGE):
            other = self.known_child(new_parent, new)
        else:
            other = self._pin_if_last_name(new_parent, new)
        ofd = self.fd(old_parent)
        nfd = self.fd(new_parent)
        if flags:
            renameat2(ofd, old, nfd, new, flags)
        else:
            os.rename(old, new, src_dir_fd=ofd, dst_dir_fd=nfd)
        return moved, other

    # --- directories --------------------------------------------------------------------

    def listdir(self, inode: Inode) -> list[bytes]:
        """The names in a directory, as a snapshot (sorted, for stable cookies)."""
        dfd = self.open_dir(inode)
        try:
            # With an fd, listdir returns str (surrogate-escaped): back to the exact bytes.
            return sorted(os.fsencode(n) for n in os.listdir(dfd))
        finally:
            os.close(dfd)

    def stat_parent(self, inode: Inode) -> os.stat_result:
        """The stat of a directory's parent (the root's is the root: ``..`` never leaves)."""
        if inode is self.root_inode:
            return os.fstat(self.fd(inode))
        return os.stat(b"..", dir_fd=self.fd(inode), follow_symlinks=False)

    # --- xattrs -------------------------------------------------------------------------

    def getxattr(self, inode: Inode, name: bytes) -> bytes:
        return os.getxattr(self.proc_path(inode), name, follow_symlinks=not inode.is_lnk())

    def setxattr(self, inode: Inode, name: bytes, value: bytes) -> None:
        os.setxattr(self.proc_path(inode), name, value, 0, follow_symlinks=not inode.is_lnk())

    def listxattr(self, inode: Inode) -> list[bytes]:
        names = os.listxattr(self.proc_path(inode), follow_symlinks=not inode.is_lnk())
        return [os.fsencode(n) for n in names]

    def removexattr(self, inode: Inode, name: bytes) -> None:
        os.removexattr(self.proc_path(inode), name, follow_symlinks=not inode.is_lnk())
