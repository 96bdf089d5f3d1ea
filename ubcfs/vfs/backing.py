"""The --backing namespace: names, attributes, links and xattrs passed through to a backing
directory with ``O_PATH`` handles and ``*at()`` calls (~ libfuse passthrough_hp's design).

Theory of operation
-------------------
Every inode the kernel knows has one ``O_PATH | O_NOFOLLOW`` file descriptor.  A lookup
resolves exactly one name relative to its parent's descriptor and never follows a symlink,
so a symlink or a renamed directory planted inside the backing directory while mounted can
never make the daemon (often root) reach outside it: the daemon never walks a path.
Operations on an inode itself go through its descriptor (``fstat``; ``/proc/self/fd/N``,
a magic link that names exactly that inode, to reopen it for I/O or change its mode; the
``*at(fd, "", AT_EMPTY_PATH)`` calls for owner and times, which work on symlinks too).

FUSE inode numbers are our own, handed out once and never reused; ``(st_dev, st_ino)`` maps
to one ``Inode``, so hard links share one inode and one page cache.  Lookup counts follow
the kernel's: each reply that hands out an inode adds one, ``forget`` takes them back, and
at zero the descriptor is closed and the file's vnode reclaimed.

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
import stat
from typing import Final

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


class Inode:
    """One inode known to the kernel.

    Attributes:
        ino: our FUSE inode number.
        fd: the O_PATH descriptor.
        key: (st_dev, st_ino) of the backing inode.
        mode: file type and permission bits at lookup (the type never changes).
        nlookup: the kernel's lookup count.
        vnode: the engine's vnode, for regular files once their data is used (set by the
            FUSE layer).
        opens: open file handles.
    """

    __slots__ = ("fd", "ino", "key", "mode", "nlookup", "opens", "vnode")

    def __init__(self, ino: int, fd: int, key: tuple[int, int], mode: int) -> None:
        self.ino = ino
        self.fd = fd
        self.key = key
        self.mode = mode
        self.nlookup = 0
        self.vnode: object | None = None
        self.opens = 0

    @property
    def proc_path(self) -> str:
        """The magic link naming exactly this inode."""
        return f"/proc/self/fd/{self.fd}"

    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)


class BackingNamespace:
    """The inode table and namespace operations over one backing directory.

    Args:
        root: the backing directory.

    Raises:
        OSError: the directory cannot be opened.
    """

    def __init__(self, root: str) -> None:
        self.root = os.path.realpath(root)
        fd = os.open(self.root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        st = os.fstat(fd)
        self.inodes: dict[int, Inode] = {}
        self.by_key: dict[tuple[int, int], Inode] = {}
        self.next_ino = ROOT_INO + 1
        self.root_inode = Inode(ROOT_INO, fd, (st.st_dev, st.st_ino), st.st_mode)
        self.root_inode.nlookup = 1  # the root is never forgotten
        self.inodes[ROOT_INO] = self.root_inode
        self.by_key[self.root_inode.key] = self.root_inode
        self.is_root_user = os.geteuid() == 0

    def close(self) -> None:
        """Close every descriptor."""
        for inode in self.inodes.values():
            try:
                os.close(inode.fd)
            except OSError:
                log.debug("closing fd %d failed", inode.fd)
        self.inodes.clear()
        self.by_key.clear()

    def get(self, ino: int) -> Inode:
        """The inode for a number the kernel gave us; ESTALE when we do not know it."""
        inode = self.inodes.get(ino)
        if inode is None:
            raise OSError(errno.ESTALE, f"unknown inode {ino}")
        return inode

    # --- lookups ------------------------------------------------------------------------

    def lookup(self, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        """Resolve one name in ``parent`` without following symlinks; +1 lookup."""
        if name == b".":
            inode = parent
            st = os.fstat(parent.fd)
        elif name == b"..":
            if parent.ino == ROOT_INO:
                inode, st = parent, os.fstat(parent.fd)
            else:
                inode, st = self._adopt(os.open(b"..", os.O_PATH | os.O_CLOEXEC, dir_fd=parent.fd))
        else:
            check_name(name)
            fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent.fd)
            inode, st = self._adopt(fd)
        inode.nlookup += 1
        return inode, st

    def _adopt(self, fd: int) -> tuple[Inode, os.stat_result]:
        """Find or make the inode of an O_PATH fd; the fd is closed if it is a duplicate."""
        try:
            st = os.fstat(fd)
        except BaseException:
            os.close(fd)
            raise
        key = (st.st_dev, st.st_ino)
        inode = self.by_key.get(key)
        if inode is not None:
            os.close(fd)
            return inode, st
        inode = Inode(self.next_ino, fd, key, st.st_mode)
        self.next_ino += 1
        self.inodes[inode.ino] = inode
        self.by_key[key] = inode
        return inode, st

    def forget(self, inode: Inode, n: int) -> bool:
        """Drop ``n`` lookups; return True when the inode was dropped (its fd closed)."""
        if inode.ino == ROOT_INO:
            return False
        inode.nlookup -= n
        if inode.nlookup > 0 or inode.opens > 0:
            return False
        self.drop(inode)
        return True

    def drop(self, inode: Inode) -> None:
        """Forget an inode now (its lookups and opens are gone)."""
        self.inodes.pop(inode.ino, None)
        if self.by_key.get(inode.key) is inode:
            del self.by_key[inode.key]
        try:
            os.close(inode.fd)
        except OSError:
            log.debug("closing fd %d failed", inode.fd)

    # --- attributes ---------------------------------------------------------------------

    def getattr(self, inode: Inode) -> os.stat_result:
        return os.fstat(inode.fd)

    def chmod(self, inode: Inode, mode: int) -> None:
        if inode.is_lnk():
            raise OSError(errno.EOPNOTSUPP, "chmod of a symlink")
        os.chmod(inode.proc_path, stat.S_IMODE(mode))

    def chown(self, inode: Inode, uid: int, gid: int) -> None:
        fchown_empty(inode.fd, uid, gid)

    def set_times(self, inode: Inode, atime_ns: int | None, mtime_ns: int | None) -> None:
        futimens_empty(inode.fd, atime_ns, mtime_ns)

    def readlink(self, inode: Inode) -> bytes:
        return os.readlink(b"", dir_fd=inode.fd)

    def open_data(self, inode: Inode, write: bool) -> int:
        """A data descriptor of a regular file (read-write when possible)."""
        if not inode.is_reg():
            raise OSError(errno.EISDIR if inode.is_dir() else errno.EINVAL, "not a file")
        try:
            return os.open(inode.proc_path, os.O_RDWR | os.O_CLOEXEC)
        except PermissionError:
            if write:
                raise
            return os.open(inode.proc_path, os.O_RDONLY | os.O_CLOEXEC)

    def statvfs(self) -> os.statvfs_result:
        return os.statvfs(self.root_inode.proc_path)

    # --- creating and removing names ----------------------------------------------------

    def _owner(self, parent: Inode, uid: int, gid: int) -> tuple[int, int]:
        pst = os.fstat(parent.fd)
        if pst.st_mode & stat.S_ISGID:
            gid = pst.st_gid  # BSD group semantics of a setgid directory
        return uid, gid

    def _give(self, parent: Inode, name: bytes, uid: int, gid: int) -> None:
        if not self.is_root_user:
            return
        uid, gid = self._owner(parent, uid, gid)
        os.chown(name, uid, gid, dir_fd=parent.fd, follow_symlinks=False)

    def create(
        self, parent: Inode, name: bytes, mode: int, flags: int, uid: int, gid: int
    ) -> tuple[Inode, os.stat_result, int]:
        """Create (or with O_CREAT only, open) a file; returns the inode (+1 lookup), its
        stat and a read-write data fd."""
        check_name(name)
        oflags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            dfd = os.open(
                name, oflags | os.O_CREAT | os.O_EXCL, stat.S_IMODE(mode), dir_fd=parent.fd
            )
            created = True
        except FileExistsError:
            if flags & os.O_EXCL:
                raise
            # Made in the backing directory since the kernel's lookup: open it as it is,
            # without taking its ownership away from whoever made it.
            dfd = os.open(name, oflags, dir_fd=parent.fd)
            created = False
        try:
            if created and self.is_root_user:
                # Through the descriptor: no second lookup of the name, which someone may
                # have renamed or replaced meanwhile.
                os.fchown(dfd, *self._owner(parent, uid, gid))
            inode, st = self.lookup(parent, name)
        except BaseException:
            os.close(dfd)
            raise
        return inode, st, dfd

    def mkdir(
        self, parent: Inode, name: bytes, mode: int, uid: int, gid: int
    ) -> tuple[Inode, os.stat_result]:
        check_name(name)
        os.mkdir(name, stat.S_IMODE(mode), dir_fd=parent.fd)
        self._give(parent, name, uid, gid)
        return self.lookup(parent, name)

    def mknod(
        self, parent: Inode, name: bytes, mode: int, rdev: int, uid: int, gid: int
    ) -> tuple[Inode, os.stat_result]:
        check_name(name)
        os.mknod(name, mode, rdev, dir_fd=parent.fd)
        self._give(parent, name, uid, gid)
        return self.lookup(parent, name)

    def symlink(
        self, parent: Inode, name: bytes, target: bytes, uid: int, gid: int
    ) -> tuple[Inode, os.stat_result]:
        check_name(name)
        os.symlink(target, name, dir_fd=parent.fd)
        self._give(parent, name, uid, gid)
        return self.lookup(parent, name)

    def link(self, inode: Inode, parent: Inode, name: bytes) -> tuple[Inode, os.stat_result]:
        check_name(name)
        if inode.is_dir():
            raise OSError(errno.EPERM, "hard link to a directory")
        if inode.is_lnk():
            # The magic link would follow the symlink; linkat(fd, "", AT_EMPTY_PATH) links the
            # symlink itself (it needs CAP_DAC_READ_SEARCH, which a root daemon has).
            _check(
                _libc.linkat(inode.fd, b"", parent.fd, name, AT_EMPTY_PATH),
                "linkat",
            )
        else:
            os.link(inode.proc_path, name, dst_dir_fd=parent.fd, follow_symlinks=True)
        return self.lookup(parent, name)

    def unlink(self, parent: Inode, name: bytes) -> None:
        check_name(name)
        os.unlink(name, dir_fd=parent.fd)

    def rmdir(self, parent: Inode, name: bytes) -> None:
        check_name(name)
        os.rmdir(name, dir_fd=parent.fd)

    def rename(
        self, old_parent: Inode, old: bytes, new_parent: Inode, new: bytes, flags: int
    ) -> None:
        check_name(old)
        check_name(new)
        if flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE):
            raise OSError(errno.EINVAL, "unknown rename flags")
        if flags:
            renameat2(old_parent.fd, old, new_parent.fd, new, flags)
        else:
            os.rename(old, new, src_dir_fd=old_parent.fd, dst_dir_fd=new_parent.fd)

    # --- directories --------------------------------------------------------------------

    def listdir(self, inode: Inode) -> list[bytes]:
        """The names in a directory, as a snapshot (sorted, for stable cookies)."""
        if not inode.is_dir():
            raise OSError(errno.ENOTDIR, "not a directory")
        dfd = os.open(b".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=inode.fd)
        try:
            # With an fd, listdir returns str (surrogate-escaped): back to the exact bytes.
            return sorted(os.fsencode(n) for n in os.listdir(dfd))
        finally:
            os.close(dfd)

    # --- xattrs -------------------------------------------------------------------------

    def getxattr(self, inode: Inode, name: bytes) -> bytes:
        return os.getxattr(inode.proc_path, name, follow_symlinks=not inode.is_lnk())

    def setxattr(self, inode: Inode, name: bytes, value: bytes) -> None:
        os.setxattr(inode.proc_path, name, value, 0, follow_symlinks=not inode.is_lnk())

    def listxattr(self, inode: Inode) -> list[bytes]:
        names = os.listxattr(inode.proc_path, follow_symlinks=not inode.is_lnk())
        return [os.fsencode(n) for n in names]

    def removexattr(self, inode: Inode, name: bytes) -> None:
        os.removexattr(inode.proc_path, name, follow_symlinks=not inode.is_lnk())
