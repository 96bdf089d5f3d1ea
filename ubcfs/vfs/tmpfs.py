"""The --tmpfs namespace: directories, names, attributes, xattrs, symlinks, hard links,
fifos and device nodes kept in memory (~ NetBSD sys/fs/tmpfs: tmpfs_subr.c, tmpfs_vnops.c,
tmpfs_vfsops.c).

What is kept
------------
One ``TmpfsNode`` per file (kernel: ``struct tmpfs_node``): its type and mode, owner and
group, link count (``tn_links``), size, atime/mtime/ctime/birth time in nanoseconds, rdev
of a device node, xattrs, and, by type (``tn_spec``):

* a directory: its entries, a dict from name to node in which each item is one
  ``struct tmpfs_dirent`` (``td_name`` -> ``td_node``), and its parent (``tn_parent``).
  ``.`` and ``..`` are not stored, as in NetBSD;
* a symlink: its target (``tn_link``);
* a regular file: ``data``, a slot the data layer owns (NetBSD: ``tn_aobj``, the
  anonymous memory object that holds the file's pages).  The namespace never looks
  inside it; it keeps the size only (``set_size``), and hands the node to ``on_destroy``
  when the file goes, so that the data layer frees its pages and swap slots.

A ``TmpfsNamespace`` (kernel: ``struct tmpfs_mount``) keeps every live node by number
(``nodes``: ``tm_nodes``), the nodes the kernel knows (``inodes``, with their lookup counts,
as ``BackingNamespace`` keeps them, so ``ubcfs.fuse.Operations`` drives both the same way),
a bound on the number of nodes (``tm_nodes_max``: ENOSPC past it) and a callable that
reports the bytes of memory + swap the data may use (``statvfs``).

Theory of operation
-------------------
Node numbers come from a counter that only grows (the root is 1, pyfuse3.ROOT_INODE), so a
number never changes for the life of its node and is never reused, not even after the node
is gone.  ``st_ino`` is the node number; it is the FUSE node id too.

A node lives while it has a name or the kernel uses it (``in_use``: looked up, open, or held
by a request in flight).  Removing the last name of a node the kernel still uses leaves it
alive, nameless (``nlink`` 0; a removed directory has no entries, nothing can be created
in it, and its ``..`` stays the directory it was removed from); the ``forget`` or ``drop``
that ends its use destroys it.  A node the kernel does not know leaves ``inodes`` but lives
on in its directory, with the same number, and a later lookup finds it again.

POSIX rules a host file system would apply for the backing mode are applied here: names
are single components of at most 255 bytes (no ``/``, no NUL, not ``.`` or ``..``);
ENOENT/EEXIST/ENOTDIR/EISDIR/ENOTEMPTY and the rename rules of Linux (a directory cannot
move into its own subtree, RENAME_NOREPLACE and RENAME_EXCHANGE); a directory's link count
is 2 + its subdirectories; ctime and mtime of directories change with their entries and
ctime of a node with its attributes and links; xattrs follow Linux (ENODATA, ERANGE,
E2BIG, user.* only on regular files and directories).  Permissions are not checked: the
mount uses ``default_permissions`` and the kernel has checked them before it asks.

Atomicity: nothing here sleeps; each operation changes the tables in one step.  Errors
raise ``OSError`` (the FUSE layer turns it into the same errno), as the backing namespace's
do.  ``audit()`` lists violations of the invariants above (for tests and ``ubcfs check``).
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from ubcfs.vfs.backing import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO
from ubcfs.vfs.namespace import NodeUse

TMPFS_DEV: Final = 0  # st_dev of every node: one file system, never a host device
NAME_MAX: Final = 255
PATH_MAX: Final = 4096  # a symlink target is shorter (it must fit with its NUL)
DIRENT_SIZE: Final = 32  # the nominal st_size of one directory entry (NetBSD: a tmpfs_dirent)
DEFAULT_MAX_NODES: Final = 1 << 20
XATTR_NAME_MAX: Final = 255
XATTR_SIZE_MAX: Final = 65536
XATTR_LIST_MAX: Final = 65536  # the names of one node, NUL-terminated, must fit a listxattr
XATTR_PREFIXES: Final = (b"user.", b"trusted.", b"security.")  # system.* (ACLs): none
MKNOD_TYPES: Final = frozenset(
    {stat.S_IFREG, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO, stat.S_IFSOCK}
)


def _err(code: int, what: str) -> OSError:
    return OSError(code, f"{what}: {os.strerror(code)}")


def check_name(name: bytes) -> None:
    """A name that may be created, removed or renamed: one component, not ``.``/``..``.

    Raises:
        OSError: ENAMETOOLONG past 255 bytes, else EINVAL for an empty name, one with a
            slash or a NUL, and the dot names.
    """
    if len(name) > NAME_MAX:
        raise _err(errno.ENAMETOOLONG, "name")
    if not name or b"/" in name or b"\0" in name or name in (b".", b".."):
        raise _err(errno.EINVAL, f"name {name!r}")


@dataclass(slots=True, eq=False)
class TmpfsNode(NodeUse):
    """One file in memory (kernel: struct tmpfs_node).

    Attributes:
        ino: the node number (tn_id), st_ino and the FUSE node id.
        mode: file type and permission bits (tn_type + tn_mode).
        uid, gid: owner and group (tn_uid, tn_gid).
        nlink: the names of the node, for a directory 2 + its subdirectories (tn_links).
        atime_ns, mtime_ns, ctime_ns, birth_ns: the times (tn_atime ... tn_birthtime).
        name: the name it was created or last linked or renamed by (for messages).
        rdev: the device of a character or block device node (tn_spec.tn_dev.tn_rdev).
        size: bytes of a regular file (tn_size); directories and symlinks report theirs
            from their entries and target.
        entries: a directory's entries (tn_spec.tn_dir.tn_dir: name -> node, one
            tmpfs_dirent each); None for other types.
        parent: a directory's parent (tn_parent); the root's is itself, a removed
            directory's the one it was removed from.
        target: a symlink's target (tn_spec.tn_lnk.tn_link).
        data: a regular file's data, owned by the data layer (tn_spec.tn_reg.tn_aobj).
        xattrs: name -> value, None while it has none.
        nlookup, opens, inflight: the kernel's lookup count, open handles and requests in
            flight, as in ``ubcfs.vfs.backing.Inode`` (the FUSE layer counts the latter two).
    """

    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int
    birth_ns: int
    name: bytes
    rdev: int = 0
    size: int = 0
    entries: dict[bytes, TmpfsNode] | None = None
    parent: TmpfsNode | None = None
    target: bytes | None = None
    data: object | None = None
    xattrs: dict[bytes, bytes] | None = None
    nlookup: int = 0
    opens: int = 0
    inflight: int = 0

    @property
    def key(self) -> tuple[int, int]:
        """The vnode cache's key: (TMPFS_DEV, ino), never reused."""
        return (TMPFS_DEV, self.ino)

    def st_size(self) -> int:
        """The size programs see: a directory's counts its entries, a symlink's is the
        length of its target."""
        if self.entries is not None:
            return DIRENT_SIZE * len(self.entries)
        if self.target is not None:
            return len(self.target)
        return self.size


class TmpfsNamespace:
    """The nodes and namespace operations of one tmpfs mount (kernel: struct tmpfs_mount).

    Args:
        capacity: returns (total, free) bytes the file data may use (memory + swap, from
            the layer that keeps the data); ``statvfs`` reports them.
        max_nodes: the most nodes that may exist at once, the root included
            (tm_nodes_max); a create past it fails with ENOSPC.
        block_size: f_bsize/f_frsize of ``statvfs`` and the unit st_blocks rounds to.
        root_mode, uid, gid: the permission bits and owner of the root directory.
        clock: the time in nanoseconds (``time.time_ns``; tests pass their own).
        on_destroy: called with a node as it is destroyed (its last name and use gone, or
            at ``close``), before its ``data`` slot is cleared.
    """

    def __init__(
        self,
        capacity: Callable[[], tuple[int, int]],
        *,
        max_nodes: int = DEFAULT_MAX_NODES,
        block_size: int = 4096,
        root_mode: int = 0o755,
        uid: int = 0,
        gid: int = 0,
        clock: Callable[[], int] = time.time_ns,
        on_destroy: Callable[[TmpfsNode], None] | None = None,
    ) -> None:
        assert max_nodes >= 1, max_nodes
        assert block_size > 0, block_size
        self.capacity = capacity
        self.max_nodes = max_nodes
        self.block_size = block_size
        self.clock = clock
        self.on_destroy = on_destroy
        self.nodes: dict[int, TmpfsNode] = {}
        self.inodes: dict[int, TmpfsNode] = {}
        self.by_key: dict[tuple[int, int], TmpfsNode] = {}
        self.next_ino = ROOT_INO
        now = clock()
        root = self._node(stat.S_IFDIR | stat.S_IMODE(root_mode), uid, gid, b"/", now)
        root.nlink = 2
        root.entries = {}
        root.parent = root
        root.nlookup = 1  # the root is never forgotten
        self.root_inode = root
        self._register(root)

    def close(self) -> None:
        """Discard every node (at unmount: nothing of a tmpfs outlives it)."""
        for node in list(self.nodes.values()):
            self._destroy(node)
        self.inodes.clear()
        self.by_key.clear()

    def get(self, ino: int) -> TmpfsNode:
        """The node for a number the kernel gave us; ESTALE when the kernel should not
        know it."""
        node = self.inodes.get(ino)
        if node is None:
            raise _err(errno.ESTALE, f"unknown inode {ino}")
        return node

    # --- nodes ----------------------------------------------------------------------------

    def _node(self, mode: int, uid: int, gid: int, name: bytes, now: int) -> TmpfsNode:
        """A new node with a fresh number (kernel: tmpfs_alloc_node), nameless."""
        if len(self.nodes) >= self.max_nodes:
            raise _err(errno.ENOSPC, "no free nodes")
        node = TmpfsNode(self.next_ino, mode, uid, gid, 1, now, now, now, now, name)
        self.next_ino += 1
        self.nodes[node.ino] = node
        return node

    def _register(self, node: TmpfsNode) -> None:
        self.inodes[node.ino] = node
        self.by_key[node.key] = node

    def _hold(self, node: TmpfsNode) -> tuple[TmpfsNode, os.stat_result]:
        """+1 lookup: the kernel now knows ``node``."""
        node.nlookup += 1
        self._register(node)
        return node, self._stat(node)

    def _known(self, node: TmpfsNode | None) -> TmpfsNode | None:
        return node if node is not None and self.inodes.get(node.ino) is node else None

    def _destroy(self, node: TmpfsNode) -> None:
        """The node is gone for good (kernel: tmpfs_free_node): the data layer frees its
        data, the number is retired."""
        del self.nodes[node.ino]
        if self.on_destroy is not None:
            self.on_destroy(node)
        node.data = None
        node.xattrs = None
        node.parent = None

    def _release_if_gone(self, node: TmpfsNode) -> None:
        """After a name of ``node`` went: destroy it if it was its last and nobody uses
        it (otherwise the last ``forget``/``drop`` will)."""
        if node.nlink == 0 and not node.in_use:
            self._destroy(node)

    def ino_of(self, st: os.stat_result) -> int:
        """The node number of a stat this namespace made: its st_ino."""
        return st.st_ino

    def st_ino(self, inode: TmpfsNode, st: os.stat_result) -> int:
        return inode.ino

    # --- lookups ------------------------------------------------------------------------

    def _dir(self, node: TmpfsNode) -> dict[bytes, TmpfsNode]:
        """The entries of a directory that may still get new ones.  Raises: ENOTDIR, or
        ENOENT for a removed directory."""
        if node.entries is None:
            raise _err(errno.ENOTDIR, node.label)
        if node.nlink == 0:
            raise _err(errno.ENOENT, f"{node.label} was removed")
        return node.entries

    def _child(self, parent: TmpfsNode, name: bytes) -> TmpfsNode:
        """The node ``name`` (``.`` and ``..`` too) names in ``parent`` (kernel:
        tmpfs_lookup).  Raises: ENOTDIR, ENOENT, ENAMETOOLONG, EINVAL."""
        if parent.entries is None:
            raise _err(errno.ENOTDIR, parent.label)
        if name == b".":
            return parent
        if name == b"..":
            # A removed directory's ``..`` is still the directory it was removed from, as
            # on Linux, while that one lives.
            up = parent.parent
            if up is None or self.nodes.get(up.ino) is not up:
                raise _err(errno.ENOENT, f"the parent of {parent.label} is gone")
            return up
        check_name(name)
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT, os.fsdecode(name))
        return node

    def lookup(self, parent: TmpfsNode, name: bytes) -> tuple[TmpfsNode, os.stat_result]:
        """Resolve one name in ``parent`` (never following a symlink); +1 lookup."""
        return self._hold(self._child(parent, name))

    def forget(self, inode: TmpfsNode, n: int) -> bool:
        """Drop ``n`` lookups; return True when the node left ``inodes``."""
        if inode is self.root_inode:
            return False
        inode.nlookup -= n
        if inode.in_use:
            return False
        self.drop(inode)
        return True

    def drop(self, inode: TmpfsNode) -> None:
        """The kernel no longer knows the node: it leaves ``inodes``; a nameless node
        that nothing uses any more is destroyed."""
        if inode is self.root_inode:
            return
        if self.inodes.get(inode.ino) is inode:
            del self.inodes[inode.ino]
        if self.by_key.get(inode.key) is inode:
            del self.by_key[inode.key]
        if inode.nlink == 0 and inode.ino in self.nodes and not inode.in_use:
            self._destroy(inode)

    def known_child(self, parent: TmpfsNode, name: bytes) -> TmpfsNode | None:
        """The node the kernel knows under ``name`` in ``parent``, if any (no lookup)."""
        try:
            return self._known(self._child(parent, name))
        except OSError:
            return None

    # --- attributes ---------------------------------------------------------------------

    def _stat(self, node: TmpfsNode) -> os.stat_result:
        """The node's attributes as ``os.stat_result`` (kernel: tmpfs_getattr).  st_blocks
        counts a regular file's size in whole blocks (NetBSD: va_bytes =
        round_page(tn_size)); directory entries and symlink targets take none (Linux's
        tmpfs keeps them in the node too)."""
        size = node.st_size()
        bs = self.block_size
        blocks = (size + bs - 1) // bs * (bs // 512) if node.is_reg() else 0
        a, m, c, ns = node.atime_ns, node.mtime_ns, node.ctime_ns, 1_000_000_000
        ids = (node.mode, node.ino, TMPFS_DEV, node.nlink, node.uid, node.gid)
        seq = (*ids, size, a // ns, m // ns, c // ns)
        extra = {
            "st_atime": a / ns,
            "st_mtime": m / ns,
            "st_ctime": c / ns,
            "st_atime_ns": a,
            "st_mtime_ns": m,
            "st_ctime_ns": c,
            "st_blksize": bs,
            "st_blocks": blocks,
            "st_rdev": node.rdev,
        }
        return os.stat_result(seq, extra)

    def getattr(self, inode: TmpfsNode) -> os.stat_result:
        return self._stat(inode)

    def chmod(self, inode: TmpfsNode, mode: int) -> None:
        """Set the permission bits (setuid, setgid and sticky too); ctime now."""
        if inode.is_lnk():
            raise _err(errno.EOPNOTSUPP, "chmod of a symlink")
        inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
        inode.ctime_ns = self.clock()

    def chown(self, inode: TmpfsNode, uid: int, gid: int) -> None:
        """Set owner and group (-1: leave it); ctime now.  As Linux's chown does, even
        root's: a non-directory loses setuid, and setgid when group-executable."""
        if uid != -1:
            inode.uid = uid
        if gid != -1:
            inode.gid = gid
        if not inode.is_dir():
            kill = stat.S_ISUID
            if inode.mode & stat.S_IXGRP:
                kill |= stat.S_ISGID
            inode.mode &= ~kill
        inode.ctime_ns = self.clock()

    def set_times(self, inode: TmpfsNode, atime_ns: int | None, mtime_ns: int | None) -> None:
        """Set atime and mtime (None: leave that one alone); ctime now."""
        if atime_ns is not None:
            inode.atime_ns = atime_ns
        if mtime_ns is not None:
            inode.mtime_ns = mtime_ns
        inode.ctime_ns = self.clock()

    def readlink(self, inode: TmpfsNode) -> bytes:
        if inode.target is None:
            raise _err(errno.EINVAL, f"{inode.label} is not a symlink")
        return inode.target

    def statvfs(self) -> os.statvfs_result:
        """Blocks from the capacity callable (memory + swap), files from the node bound
        (kernel: tmpfs_statvfs)."""
        total, free = self.capacity()
        bs = self.block_size
        blocks, bfree = max(0, total) // bs, max(0, min(free, total)) // bs
        ffree = max(0, self.max_nodes - len(self.nodes))
        seq = (bs, bs, blocks, bfree, bfree, self.max_nodes, ffree, ffree, 0, NAME_MAX)
        return os.statvfs_result(seq, {"f_fsid": 0})

    # --- the data layer's calls -----------------------------------------------------------

    def set_size(self, inode: TmpfsNode, size: int) -> None:
        """Record a regular file's new size (a write past the end, a truncation); when it
        changes, mtime and ctime become now (kernel: tmpfs_reg_resize + tmpfs_update).

        Raises:
            OSError: EISDIR for a directory, EINVAL for other non-files or a negative size.
        """
        if not inode.is_reg():
            raise _err(errno.EISDIR if inode.is_dir() else errno.EINVAL, inode.label)
        if size < 0:
            raise _err(errno.EINVAL, f"size {size}")
        if size != inode.size:
            inode.size = size
            self.touch(inode)

    def touch(self, inode: TmpfsNode) -> None:
        """The data changed (a write in place, a truncation to the same size): mtime and
        ctime become now."""
        inode.mtime_ns = inode.ctime_ns = self.clock()

    # --- creating and removing names ----------------------------------------------------
    #
    # A new node gets exactly ``mode & ~umask`` and the caller's uid and gid (BSD group
    # semantics in a setgid directory: the directory's group, and a new directory is setgid
    # too), as the backing namespace gives them when it runs as root.

    def _new(self, parent: TmpfsNode, name: bytes, mode: int, uid: int, gid: int) -> TmpfsNode:
        """Make a node and its name in ``parent`` (kernel: tmpfs_construct_node: node,
        then dirent).  Raises: ENOTDIR, ENOENT, EEXIST, ENOSPC, EINVAL, ENAMETOOLONG."""
        entries = self._dir(parent)
        check_name(name)
        if name in entries:
            raise _err(errno.EEXIST, os.fsdecode(name))
        if parent.mode & stat.S_ISGID:
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        now = self.clock()
        node = self._node(mode, uid, gid, name, now)
        if node.is_dir():
            node.nlink = 2
            node.entries = {}
            node.parent = parent
            parent.nlink += 1
        entries[name] = node
        parent.mtime_ns = parent.ctime_ns = now
        return node

    def create(
        self,
        parent: TmpfsNode,
        name: bytes,
        mode: int,
        flags: int,
        uid: int,
        gid: int,
        umask: int = 0,
    ) -> tuple[TmpfsNode, os.stat_result, int]:
        """Create (or without O_EXCL, open an existing) regular file; returns the node (+1
        lookup), its stat and -1: a tmpfs has no data descriptors.

        Raises:
            OSError: EEXIST (O_EXCL), EISDIR, ELOOP (a symlink: O_NOFOLLOW), EINVAL (another
                non-file) for an existing name; else as ``mkdir``.
        """
        existing = self._dir(parent).get(name)
        if existing is None:
            perm = stat.S_IMODE(mode) & ~umask
            return (*self._hold(self._new(parent, name, stat.S_IFREG | perm, uid, gid)), -1)
        if flags & os.O_EXCL:
            raise _err(errno.EEXIST, os.fsdecode(name))
        if not existing.is_reg():
            code = errno.EISDIR if existing.is_dir() else errno.EINVAL
            raise _err(errno.ELOOP if existing.is_lnk() else code, existing.label)
        return (*self._hold(existing), -1)

    def mkdir(
        self, parent: TmpfsNode, name: bytes, mode: int, uid: int, gid: int, umask: int = 0
    ) -> tuple[TmpfsNode, os.stat_result]:
        perm = stat.S_IMODE(mode) & ~umask
        return self._hold(self._new(parent, name, stat.S_IFDIR | perm, uid, gid))

    def mknod(
        self,
        parent: TmpfsNode,
        name: bytes,
        mode: int,
        rdev: int,
        uid: int,
        gid: int,
        umask: int = 0,
    ) -> tuple[TmpfsNode, os.stat_result]:
        """A fifo, socket, device node or empty regular file (no type: regular).

        Raises:
            OSError: EPERM for a directory, EINVAL for a symlink or an unknown type.
        """
        fmt = stat.S_IFMT(mode) or stat.S_IFREG
        if fmt not in MKNOD_TYPES:
            raise _err(errno.EPERM if fmt == stat.S_IFDIR else errno.EINVAL, "mknod type")
        node = self._new(parent, name, fmt | (stat.S_IMODE(mode) & ~umask), uid, gid)
        if fmt in (stat.S_IFCHR, stat.S_IFBLK):
            node.rdev = rdev
        return self._hold(node)

    def symlink(
        self, parent: TmpfsNode, name: bytes, target: bytes, uid: int, gid: int
    ) -> tuple[TmpfsNode, os.stat_result]:
        """Raises: ENOENT for an empty target, ENAMETOOLONG for one of PATH_MAX bytes or
        more, EINVAL for one with a NUL; else as ``mkdir``."""
        if not target:
            raise _err(errno.ENOENT, "empty symlink target")
        if len(target) >= PATH_MAX:
            raise _err(errno.ENAMETOOLONG, "symlink target")
        if b"\0" in target:
            raise _err(errno.EINVAL, "symlink target")
        node = self._new(parent, name, stat.S_IFLNK | 0o777, uid, gid)
        node.target = target
        return self._hold(node)

    def link(
        self, inode: TmpfsNode, parent: TmpfsNode, name: bytes
    ) -> tuple[TmpfsNode, os.stat_result]:
        """A new name for ``inode`` in ``parent`` (+1 lookup); ctime of the node, mtime and
        ctime of the directory now (kernel: tmpfs_link).

        Raises:
            OSError: EPERM for a directory, ENOENT for a node without names (unlinked
                while open); else as ``mkdir``.
        """
        check_name(name)
        if inode.is_dir():
            raise _err(errno.EPERM, "hard link to a directory")
        entries = self._dir(parent)
        if name in entries:
            raise _err(errno.EEXIST, os.fsdecode(name))
        if inode.nlink == 0:
            raise _err(errno.ENOENT, f"{inode.label} has no name left")
        now = self.clock()
        entries[name] = inode
        inode.nlink += 1
        inode.name = name
        inode.ctime_ns = parent.mtime_ns = parent.ctime_ns = now
        return self._hold(inode)

    def _remove(self, parent: TmpfsNode, name: bytes, want_dir: bool) -> TmpfsNode:
        """The node ``name`` names in ``parent``, checked for removal by unlink
        (``want_dir`` False) or rmdir."""
        check_name(name)
        if parent.entries is None:
            raise _err(errno.ENOTDIR, parent.label)
        node = parent.entries.get(name)
        if node is None:
            raise _err(errno.ENOENT, os.fsdecode(name))
        if node.is_dir() != want_dir:
            raise _err(errno.ENOTDIR if want_dir else errno.EISDIR, node.label)
        if want_dir and node.entries:
            raise _err(errno.ENOTEMPTY, node.label)
        return node

    def _unname(self, parent: TmpfsNode, name: bytes, node: TmpfsNode, now: int) -> None:
        """Remove the entry ``name`` -> ``node`` from ``parent`` and one link of the node
        (a directory loses both of its own and its parent's link to it)."""
        assert parent.entries is not None
        del parent.entries[name]
        if node.is_dir():
            node.nlink = 0  # ``parent`` stays: see _child
            parent.nlink -= 1
        else:
            node.nlink -= 1
        node.ctime_ns = parent.mtime_ns = parent.ctime_ns = now

    def unlink(self, parent: TmpfsNode, name: bytes) -> TmpfsNode | None:
        """Remove a name of a non-directory; returns its node if the kernel knows it (the
        node lives on while it is used).  Raises: ENOENT, ENOTDIR, EISDIR, EINVAL."""
        node = self._remove(parent, name, want_dir=False)
        victim = self._known(node)
        self._unname(parent, name, node, self.clock())
        self._release_if_gone(node)
        return victim

    def rmdir(self, parent: TmpfsNode, name: bytes) -> TmpfsNode | None:
        """Remove an empty directory.  Raises: ENOENT, ENOTDIR, ENOTEMPTY, EINVAL."""
        node = self._remove(parent, name, want_dir=True)
        victim = self._known(node)
        self._unname(parent, name, node, self.clock())
        self._release_if_gone(node)
        return victim

    # --- rename -------------------------------------------------------------------------

    @staticmethod
    def _contains(d: TmpfsNode, node: TmpfsNode) -> bool:
        """Is ``node`` the directory ``d`` or somewhere below it?"""
        while True:
            if node is d:
                return True
            up = node.parent
            if up is None or up is node:  # a removed directory, or the root
                return False
            node = up

    def rename(
        self, old_parent: TmpfsNode, old: bytes, new_parent: TmpfsNode, new: bytes, flags: int
    ) -> tuple[TmpfsNode | None, TmpfsNode | None]:
        """Rename (kernel: tmpfs_rename); returns the known nodes of the moved object and
        of the one it replaced (with RENAME_EXCHANGE, of the other object moved).

        Raises:
            OSError: EINVAL for unknown or contradictory flags and for moving a directory
                into its own subtree; ENOENT, EEXIST (RENAME_NOREPLACE), ENOTDIR, EISDIR,
                ENOTEMPTY as rename(2).
        """
        check_name(old)
        check_name(new)
        both = RENAME_NOREPLACE | RENAME_EXCHANGE
        if flags & ~both or flags == both:
            raise _err(errno.EINVAL, "rename flags")
        old_entries = self._dir(old_parent)
        new_entries = self._dir(new_parent)
        moved = old_entries.get(old)
        if moved is None:
            raise _err(errno.ENOENT, os.fsdecode(old))
        other = new_entries.get(new)
        if other is not None and flags & RENAME_NOREPLACE:
            raise _err(errno.EEXIST, os.fsdecode(new))
        known = (self._known(moved), self._known(other))
        if flags & RENAME_EXCHANGE:
            if other is None:
                raise _err(errno.ENOENT, os.fsdecode(new))
            self._exchange(old_parent, old, new_parent, new)
        else:
            self._move(old_parent, old, new_parent, new)
        return known

    def _move(self, old_parent: TmpfsNode, old: bytes, new_parent: TmpfsNode, new: bytes) -> None:
        """A plain rename, in Linux's order of checks (lock_rename's traps first)."""
        old_entries, new_entries = self._dir(old_parent), self._dir(new_parent)
        moved = old_entries[old]
        other = new_entries.get(new)
        if moved.is_dir() and self._contains(moved, new_parent):
            raise _err(errno.EINVAL, f"{moved.label} into its own subtree")
        if other is moved:
            return  # two names of one file: rename(2) does nothing
        if other is not None:
            if other.is_dir() and self._contains(other, old_parent):
                raise _err(errno.ENOTEMPTY, other.label)
            if moved.is_dir() and not other.is_dir():
                raise _err(errno.ENOTDIR, other.label)
            if other.is_dir() and not moved.is_dir():
                raise _err(errno.EISDIR, other.label)
            if other.entries:
                raise _err(errno.ENOTEMPTY, other.label)
        now = self.clock()
        if other is not None:
            self._unname(new_parent, new, other, now)
        del old_entries[old]
        new_entries[new] = moved
        if moved.is_dir() and old_parent is not new_parent:
            old_parent.nlink -= 1
            new_parent.nlink += 1
            moved.parent = new_parent
        moved.name = new
        moved.ctime_ns = now
        for d in (old_parent, new_parent):
            d.mtime_ns = d.ctime_ns = now
        if other is not None:
            self._release_if_gone(other)

    def _exchange(
        self, old_parent: TmpfsNode, old: bytes, new_parent: TmpfsNode, new: bytes
    ) -> None:
        """RENAME_EXCHANGE: the two names swap their nodes."""
        old_entries, new_entries = self._dir(old_parent), self._dir(new_parent)
        a = old_entries[old]
        b = new_entries[new]
        if (a.is_dir() and self._contains(a, new_parent)) or (
            b.is_dir() and self._contains(b, old_parent)
        ):
            raise _err(errno.EINVAL, "exchange of a directory with its own subtree")
        if a is b:
            return
        now = self.clock()
        old_entries[old] = b
        new_entries[new] = a
        if old_parent is not new_parent:
            for node, src, dst in ((a, old_parent, new_parent), (b, new_parent, old_parent)):
                if node.is_dir():
                    src.nlink -= 1
                    dst.nlink += 1
                    node.parent = dst
        a.name, b.name = new, old
        a.ctime_ns = b.ctime_ns = now
        for d in (old_parent, new_parent):
            d.mtime_ns = d.ctime_ns = now

    # --- directories --------------------------------------------------------------------

    def listdir(self, inode: TmpfsNode) -> list[bytes]:
        """The names in a directory, sorted (stable cookies).  Raises: ENOTDIR."""
        if inode.entries is None:
            raise _err(errno.ENOTDIR, inode.label)
        return sorted(inode.entries)

    def stat_parent(self, inode: TmpfsNode) -> os.stat_result:
        """The stat of a directory's parent (the root's is the root).  Raises: ENOTDIR,
        ENOENT for a removed directory."""
        return self._stat(self._child(inode, b".."))

    # --- xattrs -------------------------------------------------------------------------
    #
    # Linux's rules: a name of 1-255 bytes (else ERANGE) in a known namespace (else
    # EOPNOTSUPP) with something after the prefix (else EINVAL), a value of at most 64 KiB
    # (else E2BIG); user.* only on regular files and directories (elsewhere: none to read,
    # EPERM to write).  A node's names must fit in one listxattr reply (else ENOSPC).

    @staticmethod
    def _xattr_name(inode: TmpfsNode, name: bytes, write: bool) -> bool:
        """Check ``name``; return False when ``inode`` cannot have it (user.* on a
        symlink or special file: reads find nothing, writes raise EPERM)."""
        if not name or len(name) > XATTR_NAME_MAX:
            raise _err(errno.ERANGE, "xattr name")
        prefix = next((p for p in XATTR_PREFIXES if name.startswith(p)), None)
        if prefix is None:
            raise _err(errno.EOPNOTSUPP, f"xattr {name!r}")
        if name == prefix:
            raise _err(errno.EINVAL, f"xattr {name!r}")
        if prefix == b"user." and not (inode.is_reg() or inode.is_dir()):
            if write:
                raise _err(errno.EPERM, f"user xattrs on {inode.label}")
            return False
        return True

    def getxattr(self, inode: TmpfsNode, name: bytes) -> bytes:
        value = None
        if self._xattr_name(inode, name, write=False) and inode.xattrs is not None:
            value = inode.xattrs.get(name)
        if value is None:
            raise _err(errno.ENODATA, f"xattr {name!r}")
        return value

    def setxattr(self, inode: TmpfsNode, name: bytes, value: bytes) -> None:
        """Set (create or replace) an xattr; ctime now."""
        self._xattr_name(inode, name, write=True)
        if len(value) > XATTR_SIZE_MAX:
            raise _err(errno.E2BIG, f"xattr value of {len(value)} bytes")
        xattrs = inode.xattrs if inode.xattrs is not None else {}
        if name not in xattrs:
            listed = sum(len(n) + 1 for n in xattrs)
            if listed + len(name) + 1 > XATTR_LIST_MAX:
                raise _err(errno.ENOSPC, f"xattr names of {inode.label}")
        xattrs[name] = bytes(value)
        inode.xattrs = xattrs
        inode.ctime_ns = self.clock()

    def listxattr(self, inode: TmpfsNode) -> list[bytes]:
        return list(inode.xattrs) if inode.xattrs is not None else []

    def removexattr(self, inode: TmpfsNode, name: bytes) -> None:
        """Remove an xattr; ctime now.  Raises: ENODATA when there is none."""
        self._xattr_name(inode, name, write=True)
        if inode.xattrs is None or name not in inode.xattrs:
            raise _err(errno.ENODATA, f"xattr {name!r}")
        del inode.xattrs[name]
        if not inode.xattrs:
            inode.xattrs = None
        inode.ctime_ns = self.clock()

    # --- checks -------------------------------------------------------------------------

    def audit(self) -> list[str]:
        """Violations of the namespace's invariants (the module docstring), for tests and
        ``ubcfs check``: link counts against the tree, parents, the tables, the bounds."""
        out: list[str] = []
        names: dict[int, int] = {}
        subdirs: dict[int, int] = {}
        for node in self.nodes.values():
            if node.entries is None:
                continue
            for name, child in node.entries.items():
                names[child.ino] = names.get(child.ino, 0) + 1
                if self.nodes.get(child.ino) is not child:
                    out.append(f"{node.label}: entry {name!r} names a dead node {child.label}")
                if child.is_dir():
                    subdirs[node.ino] = subdirs.get(node.ino, 0) + 1
                    if child.parent is not node:
                        out.append(f"{child.label}: in {node.label}, but not its parent")
        for ino, node in self.nodes.items():
            out.extend(self._audit_node(node, ino, names.get(ino, 0), subdirs.get(ino, 0)))
        for ino, node in self.inodes.items():
            if self.nodes.get(ino) is not node:
                out.append(f"inode {node.label}: known to the kernel but not alive")
            if self.by_key.get(node.key) is not node:
                out.append(f"inode {node.label}: not the node of its key")
        if len(self.by_key) != len(self.inodes):
            out.append(f"{len(self.by_key)} keys for {len(self.inodes)} known nodes")
        if len(self.nodes) > self.max_nodes:
            out.append(f"{len(self.nodes)} nodes, more than the {self.max_nodes} allowed")
        if self.nodes and max(self.nodes) >= self.next_ino:
            out.append(f"node number {max(self.nodes)} not below the next {self.next_ino}")
        return out

    def _audit_node(self, node: TmpfsNode, ino: int, names: int, subdirs: int) -> list[str]:
        out: list[str] = []
        where = f"node {node.label}"
        if node.ino != ino:
            out.append(f"{where}: kept as number {ino}")
        root = node is self.root_inode
        if node.is_dir():
            removed = names == 0 and not root
            want = 0 if removed else 2 + subdirs
            if node.nlink != want:
                out.append(f"{where}: nlink {node.nlink}, {names} names, {subdirs} subdirs")
            if names > (0 if root else 1):
                out.append(f"{where}: a directory with {names} names")
            if removed and node.entries:
                out.append(f"{where}: removed, but has entries")
            if node.parent is None:
                out.append(f"{where}: a directory without a parent")
        elif node.nlink != names:
            out.append(f"{where}: nlink {node.nlink}, {names} names")
        if node.nlink == 0 and not root and not node.in_use:
            out.append(f"{where}: no name and no use, but alive")
        if node.in_use and self.inodes.get(ino) is not node and not root:
            out.append(f"{where}: in use but not known")
        if (node.entries is not None) != node.is_dir():
            out.append(f"{where}: entries do not match the type")
        if (node.target is not None) != node.is_lnk():
            out.append(f"{where}: target does not match the type")
        return out
