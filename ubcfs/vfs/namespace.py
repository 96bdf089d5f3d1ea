"""The namespace operations vector: what the FUSE layer needs of a file system's names,
attributes, links and xattrs, whatever keeps them (~ the name-level half of NetBSD's
``struct vnodeops``: VOP_LOOKUP, VOP_CREATE, VOP_MKDIR, VOP_MKNOD, VOP_SYMLINK, VOP_LINK,
VOP_REMOVE, VOP_RMDIR, VOP_RENAME, VOP_READDIR, VOP_READLINK, VOP_GETATTR, VOP_SETATTR,
the extattr calls, and VFS_STATVFS).

Two implementations hold to it: ``ubcfs.vfs.backing.BackingNamespace`` (``--backing``:
everything passed through to a host directory) and ``ubcfs.vfs.tmpfs.TmpfsNamespace``
(``--tmpfs``: everything in memory, ~ sys/fs/tmpfs).  The tests of
``tests/unit/vfs/test_tmpfs_namespace.py`` run the same POSIX behaviour against both.

Not part of it: the file *data*.  The backing namespace opens data descriptors
(``open_data``, ``open_dir``, ``proc_path``), the tmpfs one gives each regular file a slot
for its anonymous memory object; the vnode layer deals with either.  The one place data
shows through is ``create``: it returns a data descriptor, or -1 when the namespace has
none (tmpfs), in which case the caller opens the file itself.

Rules every implementation follows:

* Operations never sleep (plain ``def``): the FUSE layer relies on a namespace operation,
  its lookup counts and its inode table changing in one step (``ubcfs.fuse.Operations``).
* Failures raise ``OSError`` with the errno a local Linux file system would give
  (ENOENT, EEXIST, ENOTDIR, EISDIR, ENOTEMPTY, EINVAL, ENAMETOOLONG, ENODATA, ...); the
  FUSE layer turns it into the same ``FUSEError``.
* Lookup counts are the kernel's: ``lookup``, ``create``, ``mkdir``, ``mknod``, ``symlink``
  and ``link`` add one to the node they return; ``forget`` takes them away, and a node
  that is neither looked up, open nor held by a request in flight (``in_use``) leaves
  ``inodes`` (``drop``).  The root is never forgotten.
* Node ids are stable: the id of a node (``ino``) never changes while the kernel knows it,
  and ``get`` answers ESTALE for an id the namespace does not know.
* ``mode`` of a node is the file type and permission bits as last reported; the FUSE layer
  refreshes it from every stat it hands out (the type never changes).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Protocol, TypeVar


class NodeUse:
    """What the nodes of both namespaces derive alike from their counts, name and mode: a
    base class without state of its own (``backing.Inode`` and ``tmpfs.TmpfsNode`` hold the
    attributes)."""

    __slots__ = ()

    ino: int
    name: bytes
    mode: int
    nlookup: int
    opens: int
    inflight: int

    @property
    def in_use(self) -> bool:
        """Known to the kernel, open, or held by a request in flight."""
        return self.nlookup > 0 or self.opens > 0 or self.inflight > 0

    @property
    def label(self) -> str:
        """``name (ino N)``, for messages and vnode names."""
        return f"{os.fsdecode(self.name)} (ino {self.ino})"

    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    def is_lnk(self) -> bool:
        return stat.S_ISLNK(self.mode)


class NamespaceNode(Protocol):
    """One node the kernel knows (its FUSE node): what the FUSE layer reads or counts.

    Attributes:
        ino: the FUSE node id (root: 1).
        key: the identity the vnode cache keys the file's vnode by (never reused while
            the node exists).
        mode: file type and permission bits as last reported.
        nlookup: the kernel's lookup count.
        opens: open file and directory handles (counted by the FUSE layer).
        inflight: requests that hold the node across an ``await`` without a handle
            (counted by the FUSE layer).
    """

    mode: int
    nlookup: int
    opens: int
    inflight: int

    @property
    def ino(self) -> int: ...

    @property
    def key(self) -> tuple[int, int]: ...

    @property
    def in_use(self) -> bool:
        """Known to the kernel, open, or held by a request in flight."""
        ...

    @property
    def label(self) -> str:
        """``name (ino N)``, for messages and vnode names."""
        ...

    def is_reg(self) -> bool: ...

    def is_dir(self) -> bool: ...

    def is_lnk(self) -> bool: ...


N = TypeVar("N", bound=NamespaceNode)


class Namespace(Protocol[N]):
    """The namespace operations of one mounted file system, over its node type ``N``.

    Attributes:
        root_inode: the root (node id 1), never forgotten.
        inodes: the nodes the kernel knows, by node id.
        by_key: the same nodes by ``key`` (the vnode cache asks whether a key is held).
    """

    @property
    def root_inode(self) -> N: ...

    @property
    def inodes(self) -> Mapping[int, N]: ...

    @property
    def by_key(self) -> Mapping[tuple[int, int], N]: ...

    def close(self) -> None:
        """Release everything the namespace holds (at unmount)."""
        ...

    def get(self, ino: int) -> N:
        """The node for an id the kernel gave us.  Raises: ESTALE when we do not know it."""
        ...

    # --- lookups ------------------------------------------------------------------------

    def ino_of(self, st: os.stat_result) -> int:
        """The node id programs see for a file this namespace stat'ed (``..`` entries)."""
        ...

    def st_ino(self, inode: N, st: os.stat_result) -> int:
        """The st_ino to report for ``inode`` with its stat ``st``."""
        ...

    def lookup(self, parent: N, name: bytes) -> tuple[N, os.stat_result]:
        """Resolve one name (``.`` and ``..`` too) in ``parent``, never following a
        symlink; +1 lookup on the result (kernel: VOP_LOOKUP)."""
        ...

    def forget(self, inode: N, n: int) -> bool:
        """Drop ``n`` lookups; return True when the node was dropped from ``inodes``."""
        ...

    def drop(self, inode: N) -> None:
        """Forget a node now: its lookups and opens are gone."""
        ...

    def known_child(self, parent: N, name: bytes) -> N | None:
        """The node the kernel knows under ``name`` in ``parent``, if any (no lookup)."""
        ...

    # --- attributes ---------------------------------------------------------------------

    def getattr(self, inode: N) -> os.stat_result: ...

    def chmod(self, inode: N, mode: int) -> None:
        """Set the permission bits.  Raises: EOPNOTSUPP on a symlink."""
        ...

    def chown(self, inode: N, uid: int, gid: int) -> None:
        """Set owner and group (-1: leave it)."""
        ...

    def set_times(self, inode: N, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set atime and mtime (None: leave it); ctime becomes now."""
        ...

    def readlink(self, inode: N) -> bytes: ...

    def statvfs(self) -> os.statvfs_result: ...

    # --- creating and removing names ----------------------------------------------------

    def create(
        self, parent: N, name: bytes, mode: int, flags: int, uid: int, gid: int, umask: int = 0
    ) -> tuple[N, os.stat_result, int]:
        """Create (or, without O_EXCL, open an existing) regular file: the node (+1
        lookup), its stat and a read-write data descriptor, or -1 when the namespace has
        no descriptors (the caller then opens the file through the vnode layer)."""
        ...

    def mkdir(
        self, parent: N, name: bytes, mode: int, uid: int, gid: int, umask: int = 0
    ) -> tuple[N, os.stat_result]: ...

    def mknod(
        self, parent: N, name: bytes, mode: int, rdev: int, uid: int, gid: int, umask: int = 0
    ) -> tuple[N, os.stat_result]: ...

    def symlink(
        self, parent: N, name: bytes, target: bytes, uid: int, gid: int
    ) -> tuple[N, os.stat_result]: ...

    def link(self, inode: N, parent: N, name: bytes) -> tuple[N, os.stat_result]:
        """A new name for ``inode`` (+1 lookup).  Raises: EPERM for a directory."""
        ...

    def unlink(self, parent: N, name: bytes) -> N | None:
        """Remove a non-directory name; returns the known node it named, if any."""
        ...

    def rmdir(self, parent: N, name: bytes) -> N | None:
        """Remove an empty directory; returns its node if the kernel knows it."""
        ...

    def rename(
        self, old_parent: N, old: bytes, new_parent: N, new: bytes, flags: int
    ) -> tuple[N | None, N | None]:
        """Rename (flags: 0, RENAME_NOREPLACE or RENAME_EXCHANGE); returns the known nodes
        of the moved object and of the one it replaced (with RENAME_EXCHANGE, of the other
        object moved)."""
        ...

    # --- directories --------------------------------------------------------------------

    def listdir(self, inode: N) -> list[bytes]:
        """The names in a directory, without ``.`` and ``..``, sorted (stable cookies)."""
        ...

    def stat_parent(self, inode: N) -> os.stat_result:
        """The stat of a directory's parent (the root's is the root)."""
        ...

    # --- xattrs -------------------------------------------------------------------------

    def getxattr(self, inode: N, name: bytes) -> bytes:
        """Raises: ENODATA when ``inode`` has no attribute ``name``."""
        ...

    def setxattr(self, inode: N, name: bytes, value: bytes) -> None: ...

    def listxattr(self, inode: N) -> list[bytes]: ...

    def removexattr(self, inode: N, name: bytes) -> None:
        """Raises: ENODATA when ``inode`` has no attribute ``name``."""
        ...
