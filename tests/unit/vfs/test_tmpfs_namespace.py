"""The namespace operations vector, held to one POSIX behaviour in both modes (issue 10:
"tmpfs mode"): each behaviour test runs against ``BackingNamespace`` on a tmp directory
(where the host's ext4/xfs/tmpfs gives the answers) and against ``TmpfsNamespace``, which
must give the same ones.  Then the tmpfs-only rules (stable numbers, the node bound,
statvfs from a callable, the data layer's calls, the audit), and a hypothesis machine that
drives both namespaces with the same random name operations and compares the trees.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ubcfs.vfs.backing import RENAME_EXCHANGE, RENAME_NOREPLACE, ROOT_INO, BackingNamespace, Inode
from ubcfs.vfs.namespace import Namespace
from ubcfs.vfs.tmpfs import TmpfsNamespace, TmpfsNode

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="the backing mode gives owners only as root")
GiB = 1 << 30


def _backing_is_a_namespace(ns: BackingNamespace) -> Namespace[Inode]:
    return ns  # mypy checks that BackingNamespace implements the Protocol


def _tmpfs_is_a_namespace(ns: TmpfsNamespace) -> Namespace[TmpfsNode]:
    return ns  # ... and TmpfsNamespace


def new_tmpfs(**kw: Any) -> TmpfsNamespace:
    return TmpfsNamespace(lambda: (GiB, GiB // 2), **kw)


@pytest.fixture
def no_umask() -> Iterator[None]:
    """The daemon's umask (0), so that the backing mode's modes are exactly the asked ones."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


@pytest.fixture(params=["backing", "tmpfs"])
def ns(request: pytest.FixtureRequest, tmp_path: Path, no_umask: None) -> Iterator[Namespace[Any]]:
    """A namespace of each mode; the tmpfs one must pass its audit afterwards."""
    if request.param == "backing":
        backing = BackingNamespace(str(tmp_path))
        try:
            yield backing
        finally:
            backing.close()
        return
    tmpfs = new_tmpfs()
    try:
        yield tmpfs
        assert tmpfs.audit() == []
    finally:
        tmpfs.close()


def mkfile(
    ns: Namespace[Any], parent: Any, name: bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
) -> tuple[Any, os.stat_result]:
    """Create a regular file (+1 lookup), closing the backing mode's data descriptor."""
    node, st, fd = ns.create(parent, name, mode, os.O_CREAT | os.O_EXCL, uid, gid)
    if fd >= 0:
        os.close(fd)
    return node, st


def fails(code: int, fn: Callable[..., object], *args: object) -> None:
    """``fn(*args)`` raises OSError with errno ``code``."""
    with pytest.raises(OSError) as exc:  # noqa: PT011 -- the errno is what matters
        fn(*args)
    got = exc.value.errno
    assert got == code, f"{errno.errorcode.get(got or 0)}, not {errno.errorcode[code]}"


def tick() -> None:
    """Let the host's coarse file-time clock move on (a jiffy or a few)."""
    time.sleep(0.02)


OLD_NS = 1_000_000_000 * 1_000_000  # 2001: a time no operation can stamp


# --- lookups and node ids ---------------------------------------------------------------


def test_create_then_lookup_finds_the_same_node(ns: Namespace[Any]) -> None:
    node, st = mkfile(ns, ns.root_inode, b"f", 0o640)
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert (st.st_nlink, st.st_size) == (1, 0)
    again, st2 = ns.lookup(ns.root_inode, b"f")
    assert again is node
    assert ns.st_ino(again, st2) == node.ino == ns.st_ino(node, st)
    assert node.nlookup == 2
    assert ns.get(node.ino) is node
    assert node.key in ns.by_key
    assert node.ino != ROOT_INO


def test_lookup_errors(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    fails(errno.ENOENT, ns.lookup, root, b"missing")
    fails(errno.ENOTDIR, ns.lookup, f, b"x")
    fails(errno.ENAMETOOLONG, ns.lookup, root, b"n" * 256)
    fails(errno.EINVAL, ns.lookup, root, b"a/b")
    fails(errno.ESTALE, ns.get, 1 << 40)


def test_a_name_of_255_bytes_is_fine_256_is_too_long(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    mkfile(ns, root, b"n" * 255)
    fails(errno.ENAMETOOLONG, ns.create, root, b"n" * 256, 0o644, os.O_CREAT, 0, 0)
    fails(errno.ENAMETOOLONG, ns.mkdir, root, b"d" * 256, 0o755, 0, 0)
    assert ns.listdir(root) == [b"n" * 255]


def test_dot_and_dotdot(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    dot, _ = ns.lookup(d, b".")
    assert dot is d
    up, _ = ns.lookup(d, b"..")
    assert up is root
    top, _ = ns.lookup(root, b"..")
    assert top is root
    assert ns.st_ino(root, ns.stat_parent(d)) == ns.st_ino(root, ns.getattr(root))
    assert ns.stat_parent(root).st_ino == ns.getattr(root).st_ino
    f, _ = mkfile(ns, d, b"f")
    fails(errno.ENOTDIR, ns.stat_parent, f)


def test_forget_drops_a_node_at_zero_lookups(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    node, _ = mkfile(ns, root, b"f")
    ns.lookup(root, b"f")
    assert ns.forget(node, 1) is False
    assert ns.get(node.ino) is node
    assert ns.forget(node, 1) is True
    assert node.ino not in ns.inodes
    fails(errno.ESTALE, ns.get, node.ino)
    assert ns.known_child(root, b"f") is None
    again, _ = ns.lookup(root, b"f")
    assert again.ino == node.ino  # same file, same number
    assert ns.forget(root, 5) is False
    assert ns.get(ROOT_INO) is root


def test_an_open_node_stays_known_after_forget(ns: Namespace[Any]) -> None:
    node, _ = mkfile(ns, ns.root_inode, b"f")
    node.opens += 1
    assert ns.forget(node, 1) is False
    assert ns.get(node.ino) is node
    node.opens -= 1
    ns.drop(node)
    assert node.ino not in ns.inodes


def test_known_child_needs_a_lookup(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    node, _ = mkfile(ns, root, b"f")
    assert ns.known_child(root, b"f") is node
    assert ns.known_child(root, b"nope") is None
    ns.forget(node, 1)
    assert ns.known_child(root, b"f") is None


# --- directories ------------------------------------------------------------------------


def test_directory_link_counts(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    base = ns.getattr(root).st_nlink
    a, st = ns.mkdir(root, b"a", 0o755, 0, 0)
    assert stat.S_ISDIR(st.st_mode)
    assert st.st_nlink == 2
    ns.mkdir(root, b"b", 0o755, 0, 0)
    ns.mkdir(a, b"sub", 0o755, 0, 0)
    mkfile(ns, a, b"file")  # files do not count
    assert ns.getattr(root).st_nlink == base + 2
    assert ns.getattr(a).st_nlink == 3
    ns.rename(a, b"sub", root, b"sub", 0)
    assert ns.getattr(a).st_nlink == 2
    assert ns.getattr(root).st_nlink == base + 3
    ns.rmdir(root, b"b")
    assert ns.getattr(root).st_nlink == base + 2


def test_listdir_is_sorted_and_needs_a_directory(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    for name in (b"zz", b"a", b"\xff\xfe", b"M"):
        mkfile(ns, root, name)
    ns.mkdir(root, b"dir", 0o755, 0, 0)
    assert ns.listdir(root) == sorted([b"zz", b"a", b"\xff\xfe", b"M", b"dir"])
    f, _ = ns.lookup(root, b"a")
    fails(errno.ENOTDIR, ns.listdir, f)


def test_rmdir_and_unlink_errors(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    mkfile(ns, d, b"f")
    fails(errno.ENOTEMPTY, ns.rmdir, root, b"d")
    fails(errno.EISDIR, ns.unlink, root, b"d")
    fails(errno.ENOTDIR, ns.rmdir, d, b"f")
    fails(errno.ENOENT, ns.unlink, root, b"missing")
    fails(errno.ENOENT, ns.rmdir, root, b"missing")
    f, _ = ns.lookup(d, b"f")
    fails(errno.ENOTDIR, ns.unlink, f, b"x")
    ns.unlink(d, b"f")
    ns.rmdir(root, b"d")
    assert ns.listdir(root) == []


def test_a_removed_directory_is_empty_for_good(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    assert ns.rmdir(root, b"d") is d
    assert ns.getattr(d).st_nlink == 0
    assert ns.listdir(d) == []
    fails(errno.ENOENT, ns.lookup, d, b"x")
    fails(errno.ENOENT, ns.mkdir, d, b"x", 0o755, 0, 0)
    fails(errno.ENOENT, ns.create, d, b"x", 0o644, os.O_CREAT, 0, 0)
    fails(errno.ENOENT, ns.symlink, d, b"x", b"t", 0, 0)
    assert ns.stat_parent(d).st_ino == ns.getattr(root).st_ino  # Linux keeps its ..


def test_existing_names(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    ns.mkdir(root, b"d", 0o755, 0, 0)
    for name in (b"f", b"d"):
        fails(errno.EEXIST, ns.mkdir, root, name, 0o755, 0, 0)
        fails(errno.EEXIST, ns.symlink, root, name, b"t", 0, 0)
        fails(errno.EEXIST, ns.mknod, root, name, stat.S_IFIFO | 0o644, 0, 0, 0)
        fails(errno.EEXIST, ns.link, f, root, name)
        fails(errno.EEXIST, ns.create, root, name, 0o644, os.O_CREAT | os.O_EXCL, 0, 0)
    fails(errno.EISDIR, ns.create, root, b"d", 0o644, os.O_CREAT, 0, 0)


def test_create_without_excl_opens_the_existing_file(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f", 0o600)
    node, st, fd = ns.create(root, b"f", 0o644, os.O_CREAT, 0, 0)
    if fd >= 0:
        os.close(fd)
    assert node is f
    assert stat.S_IMODE(st.st_mode) == 0o600  # not re-created
    assert f.nlookup == 2


def test_umask_is_applied(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    _, st = mkfile(ns, root, b"exact", 0o1777)
    assert stat.S_IMODE(st.st_mode) == 0o1777  # no umask: every bit asked for
    _, st, fd = ns.create(root, b"f", 0o666, os.O_CREAT, 0, 0, 0o027)
    if fd >= 0:
        os.close(fd)
    assert stat.S_IMODE(st.st_mode) == 0o640
    _, st = ns.mkdir(root, b"d", 0o777, 0, 0, 0o022)
    assert stat.S_IMODE(st.st_mode) == 0o755
    _, st = ns.mknod(root, b"p", stat.S_IFIFO | 0o666, 0, 0, 0, 0o077)
    assert stat.S_IMODE(st.st_mode) == 0o600


# --- links, symlinks, special files -----------------------------------------------------


def test_hard_links_share_one_node(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    f, _ = mkfile(ns, root, b"f")
    ctime = ns.getattr(f).st_ctime_ns
    tick()
    g, st = ns.link(f, d, b"g")
    assert g is f
    assert st.st_nlink == 2
    assert st.st_ctime_ns > ctime
    again, _ = ns.lookup(d, b"g")
    assert ns.st_ino(again, ns.getattr(again)) == ns.st_ino(f, ns.getattr(f))
    fails(errno.EPERM, ns.link, d, root, b"dirlink")
    assert ns.unlink(root, b"f") is f
    assert ns.getattr(f).st_nlink == 1
    assert ns.listdir(d) == [b"g"]


def test_a_file_unlinked_while_known_stays_alive(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    victim = ns.unlink(root, b"f")
    assert victim is not None
    assert victim is f
    assert ns.getattr(f).st_nlink == 0
    assert ns.get(f.ino) is f
    assert ns.known_child(root, b"f") is None
    fails(errno.ENOENT, ns.link, f, root, b"back")
    ns.forget(f, 1)
    assert f.ino not in ns.inodes


def test_unlink_of_an_unknown_file_returns_none(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    ns.forget(f, 1)
    assert ns.unlink(root, b"f") is None
    assert ns.listdir(root) == []


def test_symlinks(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    target = b"../some/where/\xff"
    link, st = ns.symlink(root, b"l", target, 0, 0)
    assert stat.S_ISLNK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o777
    assert st.st_size == len(target)
    assert ns.readlink(link) == target
    f, _ = mkfile(ns, root, b"f")
    # readlink(2) of a non-symlink is EINVAL; the backing mode's readlinkat(fd, "") says
    # ENOENT (FUSE never asks: the kernel knows the type).
    fails(errno.EINVAL if isinstance(ns, TmpfsNamespace) else errno.ENOENT, ns.readlink, f)
    fails(errno.EOPNOTSUPP, ns.chmod, link, 0o600)
    fails(errno.ENOENT, ns.symlink, root, b"empty", b"", 0, 0)
    fails(errno.ELOOP, ns.create, root, b"l", 0o644, os.O_CREAT, 0, 0)
    hard, st = ns.link(link, root, b"l2")  # a hard link to the symlink itself
    assert hard is link
    assert stat.S_ISLNK(st.st_mode)
    assert st.st_nlink == 2


def test_fifos_and_mknod_types(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    p, st = ns.mknod(root, b"p", stat.S_IFIFO | 0o640, 0, 0, 0)
    assert stat.S_ISFIFO(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_rdev == 0
    _, st = ns.mknod(root, b"r", 0o600, 0, 0, 0)  # no type: a regular file
    assert stat.S_ISREG(st.st_mode)
    fails(errno.EPERM, ns.mknod, root, b"d", stat.S_IFDIR | 0o755, 0, 0, 0)
    fails(errno.EINVAL, ns.mknod, root, b"l", stat.S_IFLNK | 0o777, 0, 0, 0)
    assert not p.is_reg()
    assert not p.is_dir()


@needs_root
def test_device_nodes_keep_their_rdev(ns: Namespace[Any]) -> None:
    rdev = os.makedev(1, 3)
    _, st = ns.mknod(ns.root_inode, b"null", stat.S_IFCHR | 0o666, rdev, 0, 0)
    assert stat.S_ISCHR(st.st_mode)
    assert st.st_rdev == rdev
    _, st = ns.mknod(ns.root_inode, b"blk", stat.S_IFBLK | 0o600, os.makedev(7, 0), 0, 0)
    assert stat.S_ISBLK(st.st_mode)
    assert os.major(st.st_rdev) == 7


# --- rename -----------------------------------------------------------------------------


def test_rename_moves_a_name_and_keeps_the_number(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    f, _ = mkfile(ns, root, b"f")
    ino = ns.st_ino(f, ns.getattr(f))
    moved, other = ns.rename(root, b"f", d, b"g", 0)
    assert moved is f
    assert other is None
    assert ns.listdir(root) == [b"d"]
    assert ns.listdir(d) == [b"g"]
    again, st = ns.lookup(d, b"g")
    assert again is f
    assert ns.st_ino(again, st) == ino


def test_rename_over_a_file_replaces_it(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    a, _ = mkfile(ns, root, b"a")
    b, _ = mkfile(ns, root, b"b")
    moved, other = ns.rename(root, b"a", root, b"b", 0)
    assert (moved, other) == (a, b)
    assert ns.getattr(b).st_nlink == 0
    assert ns.listdir(root) == [b"b"]
    assert ns.lookup(root, b"b")[0] is a


def test_rename_errors(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    sub, _ = ns.mkdir(d, b"sub", 0o755, 0, 0)
    ns.mkdir(root, b"full", 0o755, 0, 0)
    full, _ = ns.lookup(root, b"full")
    mkfile(ns, full, b"x")
    mkfile(ns, root, b"f")
    fails(errno.ENOENT, ns.rename, root, b"missing", root, b"x", 0)
    fails(errno.EINVAL, ns.rename, root, b"d", sub, b"d2", 0)  # into its own subtree
    fails(errno.EINVAL, ns.rename, root, b"d", d, b"d2", 0)
    fails(errno.ENOTEMPTY, ns.rename, d, b"sub", root, b"d", 0)  # over its own parent
    mkfile(ns, sub, b"deep")
    fails(errno.ENOTEMPTY, ns.rename, sub, b"deep", root, b"d", 0)  # a file: not EISDIR
    fails(errno.ENOTEMPTY, ns.rename, root, b"d", root, b"full", 0)
    fails(errno.EISDIR, ns.rename, root, b"f", root, b"d", 0)
    fails(errno.ENOTDIR, ns.rename, root, b"d", root, b"f", 0)
    fails(errno.EEXIST, ns.rename, root, b"f", root, b"d", RENAME_NOREPLACE)
    fails(errno.ENOENT, ns.rename, root, b"f", root, b"nope", RENAME_EXCHANGE)
    fails(errno.EINVAL, ns.rename, root, b"f", root, b"g", RENAME_NOREPLACE | RENAME_EXCHANGE)
    fails(errno.EINVAL, ns.rename, root, b"f", root, b"g", 1 << 5)
    fails(errno.EINVAL, ns.rename, root, b"d", d, b"sub", RENAME_EXCHANGE)
    fails(errno.EINVAL, ns.rename, d, b"sub", root, b"d", RENAME_EXCHANGE)
    f, _ = ns.lookup(root, b"f")
    fails(errno.ENOTDIR, ns.rename, f, b"x", root, b"y", 0)
    assert ns.listdir(root) == [b"d", b"f", b"full"]


def test_rename_of_a_directory_over_an_empty_one(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    a, _ = ns.mkdir(root, b"a", 0o755, 0, 0)
    b, _ = ns.mkdir(root, b"b", 0o755, 0, 0)
    mkfile(ns, a, b"inside")
    base = ns.getattr(root).st_nlink
    moved, other = ns.rename(root, b"a", root, b"b", 0)
    assert (moved, other) == (a, b)
    assert ns.getattr(root).st_nlink == base - 1
    assert ns.getattr(b).st_nlink == 0
    assert ns.listdir(root) == [b"b"]
    assert ns.listdir(a) == [b"inside"]


def test_rename_noreplace_to_a_free_name(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    assert ns.rename(root, b"f", root, b"g", RENAME_NOREPLACE) == (f, None)
    assert ns.listdir(root) == [b"g"]


def test_rename_exchange_swaps_two_names(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    sub, _ = ns.mkdir(d, b"sub", 0o755, 0, 0)
    f, _ = mkfile(ns, root, b"f")
    base = ns.getattr(root).st_nlink
    moved, other = ns.rename(root, b"f", d, b"sub", RENAME_EXCHANGE)
    assert (moved, other) == (f, sub)
    assert ns.lookup(root, b"f")[0] is sub
    assert ns.lookup(d, b"sub")[0] is f
    assert ns.getattr(root).st_nlink == base + 1  # the directory moved up
    assert ns.getattr(d).st_nlink == 2
    assert ns.lookup(sub, b"..")[0] is root


def test_rename_between_two_names_of_one_file_does_nothing(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    ns.link(f, root, b"g")
    assert ns.rename(root, b"f", root, b"g", 0) == (f, f)
    assert ns.listdir(root) == [b"f", b"g"]
    assert ns.getattr(f).st_nlink == 2
    ns.rename(root, b"f", root, b"f", 0)
    assert ns.listdir(root) == [b"f", b"g"]
    fails(errno.EEXIST, ns.rename, root, b"f", root, b"g", RENAME_NOREPLACE)


# --- attributes and times ---------------------------------------------------------------


def test_chmod_sets_every_permission_bit_and_ctime(ns: Namespace[Any]) -> None:
    f, _ = mkfile(ns, ns.root_inode, b"f")
    ctime = ns.getattr(f).st_ctime_ns
    tick()
    ns.chmod(f, stat.S_IFREG | 0o4751)
    st = ns.getattr(f)
    assert stat.S_IMODE(st.st_mode) == 0o4751
    assert stat.S_ISREG(st.st_mode)
    assert st.st_ctime_ns > ctime
    d, _ = ns.mkdir(ns.root_inode, b"d", 0o755, 0, 0)
    ns.chmod(d, 0o1777)
    assert stat.S_IMODE(ns.getattr(d).st_mode) == 0o1777


@needs_root
def test_owners(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, st = mkfile(ns, root, b"f", 0o644, 1234, 5678)
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    ctime = st.st_ctime_ns
    tick()
    ns.chown(f, 42, -1)
    st = ns.getattr(f)
    assert (st.st_uid, st.st_gid) == (42, 5678)
    assert st.st_ctime_ns > ctime
    ns.chown(f, -1, 43)
    assert (ns.getattr(f).st_uid, ns.getattr(f).st_gid) == (42, 43)
    _, st = ns.mkdir(root, b"d", 0o755, 7, 8)
    assert (st.st_uid, st.st_gid) == (7, 8)
    _, st = ns.symlink(root, b"l", b"t", 9, 10)
    assert (st.st_uid, st.st_gid) == (9, 10)


@needs_root
def test_chown_clears_setuid_and_group_executable_setgid(ns: Namespace[Any]) -> None:
    f, _ = mkfile(ns, ns.root_inode, b"f", 0o6755)
    ns.chmod(f, 0o6755)  # the backing mode's create may have lost the bits to its chown
    ns.chown(f, 1, 1)
    assert stat.S_IMODE(ns.getattr(f).st_mode) == 0o755
    ns.chmod(f, 0o6745)
    ns.chown(f, 2, 2)
    assert stat.S_IMODE(ns.getattr(f).st_mode) == 0o2745  # no group x: setgid stays
    d, _ = ns.mkdir(ns.root_inode, b"d", 0o755, 0, 0)
    ns.chmod(d, 0o2775)
    ns.chown(d, 3, 3)
    assert stat.S_IMODE(ns.getattr(d).st_mode) == 0o2775  # directories keep it


@needs_root
def test_setgid_directory_gives_its_group(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 77)
    ns.chmod(d, 0o2775)
    _, st = mkfile(ns, d, b"f", 0o644, 5, 6)
    assert (st.st_uid, st.st_gid) == (5, 77)
    _, st = ns.mkdir(d, b"sub", 0o755, 5, 6)
    assert st.st_gid == 77
    assert st.st_mode & stat.S_ISGID


def test_set_times(ns: Namespace[Any]) -> None:
    f, _ = mkfile(ns, ns.root_inode, b"f")
    ns.set_times(f, 1_500_000_000_123_456_789, 1_400_000_000_987_654_321)
    st = ns.getattr(f)
    assert st.st_atime_ns == 1_500_000_000_123_456_789
    assert st.st_mtime_ns == 1_400_000_000_987_654_321
    ns.set_times(f, None, 1_300_000_000_000_000_000)
    st = ns.getattr(f)
    assert st.st_atime_ns == 1_500_000_000_123_456_789
    assert st.st_mtime_ns == 1_300_000_000_000_000_000
    ns.set_times(f, 1_200_000_000_000_000_000, None)
    assert ns.getattr(f).st_mtime_ns == 1_300_000_000_000_000_000


def test_directory_times_follow_their_entries(ns: Namespace[Any]) -> None:
    """create, link, unlink, rename and rmdir stamp the directories' mtime (and ctime)."""
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    f, _ = mkfile(ns, root, b"f")

    def stamps(op: Callable[[], object], *dirs: Any) -> None:
        for x in dirs:
            ns.set_times(x, None, OLD_NS)
        ctimes = [ns.getattr(x).st_ctime_ns for x in dirs]
        tick()
        op()
        for x, ctime in zip(dirs, ctimes, strict=True):
            st = ns.getattr(x)
            assert st.st_mtime_ns > OLD_NS
            assert st.st_ctime_ns > ctime

    stamps(lambda: mkfile(ns, d, b"new"), d)
    stamps(lambda: ns.mkdir(d, b"sub", 0o755, 0, 0), d)
    stamps(lambda: ns.symlink(d, b"l", b"t", 0, 0), d)
    stamps(lambda: ns.link(f, d, b"hard"), d)
    stamps(lambda: ns.unlink(d, b"hard"), d)
    stamps(lambda: ns.rename(root, b"f", d, b"f", 0), root, d)
    stamps(lambda: ns.rename(d, b"f", d, b"new", RENAME_EXCHANGE), d)
    stamps(lambda: ns.rmdir(d, b"sub"), d)


def test_unlink_and_rename_change_the_ctime_of_the_node(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    ns.link(f, root, b"g")
    for op in (lambda: ns.unlink(root, b"g"), lambda: ns.rename(root, b"f", root, b"h", 0)):
        ctime = ns.getattr(f).st_ctime_ns
        tick()
        op()
        assert ns.getattr(f).st_ctime_ns > ctime


# --- xattrs -----------------------------------------------------------------------------


def test_xattrs(ns: Namespace[Any]) -> None:
    f, _ = mkfile(ns, ns.root_inode, b"f")
    ns.setxattr(f, b"user.a", b"1")
    ns.setxattr(f, b"user.b", b"\0binary\xff")
    ns.setxattr(f, b"user.a", b"replaced")
    assert ns.getxattr(f, b"user.a") == b"replaced"
    assert ns.getxattr(f, b"user.b") == b"\0binary\xff"
    assert sorted(ns.listxattr(f)) == [b"user.a", b"user.b"]
    ctime = ns.getattr(f).st_ctime_ns
    tick()
    ns.removexattr(f, b"user.a")
    assert ns.getattr(f).st_ctime_ns > ctime
    assert ns.listxattr(f) == [b"user.b"]
    fails(errno.ENODATA, ns.getxattr, f, b"user.a")
    fails(errno.ENODATA, ns.removexattr, f, b"user.a")
    d, _ = ns.mkdir(ns.root_inode, b"d", 0o755, 0, 0)
    ns.setxattr(d, b"user.dir", b"")
    assert ns.getxattr(d, b"user.dir") == b""


def test_xattr_name_and_size_rules(ns: Namespace[Any]) -> None:
    f, _ = mkfile(ns, ns.root_inode, b"f")
    fails(errno.ERANGE, ns.setxattr, f, b"", b"1")
    fails(errno.ERANGE, ns.setxattr, f, b"user." + b"x" * 251, b"1")
    fails(errno.ERANGE, ns.getxattr, f, b"user." + b"x" * 251)
    fails(errno.EOPNOTSUPP, ns.setxattr, f, b"nonsense.x", b"1")
    fails(errno.EOPNOTSUPP, ns.getxattr, f, b"nonsense.x")
    fails(errno.EINVAL, ns.setxattr, f, b"user.", b"1")
    fails(errno.E2BIG, ns.setxattr, f, b"user.big", b"x" * 65537)
    ns.setxattr(f, b"user." + b"x" * 250, b"ok")  # 255 bytes: the longest name
    ns.setxattr(f, b"user.small", b"x" * 1000)
    assert ns.getxattr(f, b"user.small") == b"x" * 1000


def test_user_xattrs_only_on_files_and_directories(ns: Namespace[Any]) -> None:
    root = ns.root_inode
    link, _ = ns.symlink(root, b"l", b"t", 0, 0)
    fifo, _ = ns.mknod(root, b"p", stat.S_IFIFO | 0o644, 0, 0, 0)
    for node in (link, fifo):
        fails(errno.EPERM, ns.setxattr, node, b"user.a", b"1")
        fails(errno.ENODATA, ns.getxattr, node, b"user.a")
        assert ns.listxattr(node) == []
    fails(errno.EPERM, ns.removexattr, fifo, b"user.a")


@needs_root
def test_trusted_and_security_xattrs(ns: Namespace[Any]) -> None:
    f, _ = mkfile(ns, ns.root_inode, b"f")
    ns.setxattr(f, b"trusted.t", b"1")
    ns.setxattr(f, b"security.s", b"2")
    assert ns.getxattr(f, b"trusted.t") == b"1"
    assert {b"trusted.t", b"security.s"} <= set(ns.listxattr(f))


# --- statvfs ----------------------------------------------------------------------------


def test_statvfs_is_sane(ns: Namespace[Any]) -> None:
    sv = ns.statvfs()
    assert sv.f_bsize > 0
    assert sv.f_frsize > 0
    assert 0 < sv.f_bfree <= sv.f_blocks
    assert sv.f_bavail <= sv.f_bfree
    assert sv.f_ffree <= sv.f_files
    assert sv.f_namemax == 255


# --- tmpfs only -------------------------------------------------------------------------


class Clock:
    """A settable nanosecond clock: every reading is the last one + 1 µs."""

    def __init__(self) -> None:
        self.now = 5 * OLD_NS

    def __call__(self) -> int:
        self.now += 1000
        return self.now


def test_the_root_is_node_1_with_the_given_owner_and_mode() -> None:
    ns = new_tmpfs(root_mode=0o1777, uid=12, gid=34)
    st = ns.getattr(ns.root_inode)
    assert ns.root_inode.ino == ROOT_INO == 1
    assert st.st_ino == 1
    assert st.st_mode == stat.S_IFDIR | 0o1777
    assert (st.st_uid, st.st_gid, st.st_nlink) == (12, 34, 2)
    assert ns.get(1) is ns.root_inode


def test_numbers_are_stable_while_linked_and_never_reused() -> None:
    ns = new_tmpfs()
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    f, _ = mkfile(ns, d, b"f")
    ino = f.ino
    assert ns.forget(f, 1) is True
    assert ino not in ns.inodes
    assert ino in ns.nodes  # still linked: alive, with its number
    ns.rename(d, b"f", root, b"g", 0)
    again, st = ns.lookup(root, b"g")
    assert again is f
    assert st.st_ino == ino
    seen = {root.ino, d.ino, ino}
    ns.unlink(root, b"g")
    ns.forget(f, 1)
    assert ino not in ns.nodes
    for i in range(5):
        node, _ = mkfile(ns, root, b"n%d" % i)
        assert node.ino not in seen
        seen.add(node.ino)
    assert ns.audit() == []


def test_the_node_bound_gives_enospc() -> None:
    ns = new_tmpfs(max_nodes=4)  # the root and three more
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    ns.mkdir(root, b"d", 0o755, 0, 0)
    ns.symlink(root, b"l", b"t", 0, 0)
    fails(errno.ENOSPC, ns.create, root, b"x", 0o644, os.O_CREAT, 0, 0)
    fails(errno.ENOSPC, ns.mkdir, root, b"x", 0o755, 0, 0)
    fails(errno.ENOSPC, ns.mknod, root, b"x", stat.S_IFIFO | 0o644, 0, 0, 0)
    fails(errno.ENOSPC, ns.symlink, root, b"x", b"t", 0, 0)
    ns.link(f, root, b"hard")  # a name, not a node
    assert ns.statvfs().f_ffree == 0
    ns.unlink(root, b"hard")
    ns.unlink(root, b"f")  # still looked up: it still counts
    fails(errno.ENOSPC, ns.mkdir, root, b"x", 0o755, 0, 0)
    assert ns.forget(f, 2) is True  # create's lookup and link's
    ns.mkdir(root, b"x", 0o755, 0, 0)
    assert ns.listdir(root) == [b"d", b"l", b"x"]
    assert ns.audit() == []


def test_statvfs_reports_the_capacity_callable() -> None:
    cap = [100 * 4096, 40 * 4096 + 100]
    ns = TmpfsNamespace(lambda: (cap[0], cap[1]), max_nodes=10, block_size=4096)
    sv = ns.statvfs()
    assert (sv.f_bsize, sv.f_frsize) == (4096, 4096)
    assert (sv.f_blocks, sv.f_bfree, sv.f_bavail) == (100, 40, 40)
    assert (sv.f_files, sv.f_ffree, sv.f_favail) == (10, 9, 9)
    assert sv.f_namemax == 255
    mkfile(ns, ns.root_inode, b"f")
    cap[:] = [200 * 4096, 300 * 4096]  # free is capped at the total
    sv = ns.statvfs()
    assert (sv.f_blocks, sv.f_bfree, sv.f_ffree) == (200, 200, 8)


def test_a_node_is_destroyed_when_its_last_name_and_use_are_gone() -> None:
    gone: list[int] = []
    ns = new_tmpfs(on_destroy=lambda node: gone.append(node.ino))
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    f.data = "the data layer's object"
    ns.link(f, root, b"g")
    ns.unlink(root, b"f")
    ns.forget(f, 2)
    assert gone == []  # g still names it
    f.opens += 1  # opened again through g
    f.nlookup += 1
    ns.unlink(root, b"g")
    assert gone == []
    assert ns.forget(f, 1) is False  # still open
    assert gone == []
    f.opens -= 1
    ns.drop(f)
    assert gone == [f.ino]
    assert f.data is None
    assert f.ino not in ns.nodes
    ns.drop(f)  # a second drop changes nothing
    assert gone == [f.ino]
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    ns.forget(d, 1)
    ns.rmdir(root, b"d")  # not known: gone at once
    assert gone == [f.ino, d.ino]
    assert ns.audit() == []


def test_rename_over_the_last_name_destroys_the_replaced_node() -> None:
    gone: list[int] = []
    ns = new_tmpfs(on_destroy=lambda node: gone.append(node.ino))
    root = ns.root_inode
    a, _ = mkfile(ns, root, b"a")
    b, _ = mkfile(ns, root, b"b")
    ns.forget(b, 1)
    assert ns.rename(root, b"a", root, b"b", 0) == (a, None)
    assert gone == [b.ino]
    assert ns.audit() == []


def test_close_discards_every_node() -> None:
    gone: list[int] = []
    ns = new_tmpfs(on_destroy=lambda node: gone.append(node.ino))
    d, _ = ns.mkdir(ns.root_inode, b"d", 0o755, 0, 0)
    f, _ = mkfile(ns, d, b"f")
    ns.close()
    assert sorted(gone) == [ROOT_INO, d.ino, f.ino]
    assert ns.nodes == {}
    assert ns.inodes == {}


def test_set_size_and_touch_for_the_data_layer() -> None:
    clock = Clock()
    ns = new_tmpfs(clock=clock, block_size=4096)
    f, st = mkfile(ns, ns.root_inode, b"f")
    born = st.st_mtime_ns
    ns.set_size(f, 5000)
    st = ns.getattr(f)
    assert (st.st_size, st.st_blocks) == (5000, 16)
    assert st.st_mtime_ns == st.st_ctime_ns > born
    before = st.st_mtime_ns
    ns.set_size(f, 5000)  # no change, no new times
    assert ns.getattr(f).st_mtime_ns == before
    ns.touch(f)
    assert ns.getattr(f).st_mtime_ns > before
    ns.set_size(f, 0)
    assert (ns.getattr(f).st_size, ns.getattr(f).st_blocks) == (0, 0)
    d, _ = ns.mkdir(ns.root_inode, b"d", 0o755, 0, 0)
    p, _ = ns.mknod(ns.root_inode, b"p", stat.S_IFIFO | 0o644, 0, 0, 0)
    fails(errno.EISDIR, ns.set_size, d, 1)
    fails(errno.EINVAL, ns.set_size, p, 1)
    fails(errno.EINVAL, ns.set_size, f, -1)


def test_stat_fields_come_from_the_node() -> None:
    clock = Clock()
    ns = new_tmpfs(clock=clock, block_size=8192)
    f, st = mkfile(ns, ns.root_inode, b"f", 0o600, 3, 4)
    assert f.birth_ns == f.ctime_ns == st.st_ctime_ns == clock.now
    assert st.st_atime_ns == st.st_mtime_ns == clock.now
    assert st.st_mtime == clock.now / 1e9
    assert (st.st_dev, st.st_ino, st.st_blksize, st.st_rdev) == (0, f.ino, 8192, 0)
    assert f.key == (0, f.ino)
    assert f.label == f"f (ino {f.ino})"
    d, _ = ns.mkdir(ns.root_inode, b"d", 0o755, 0, 0)
    mkfile(ns, d, b"x")
    mkfile(ns, d, b"y")
    st = ns.getattr(d)
    assert st.st_size > ns.getattr(ns.root_inode).st_size - 1 > 0
    assert st.st_blocks == 0


@pytest.mark.parametrize("bad", [b".", b"..", b"a\0b", b""])
def test_dot_names_and_nul_are_refused(bad: bytes) -> None:
    ns = new_tmpfs()
    root = ns.root_inode
    f, _ = mkfile(ns, root, b"f")
    fails(errno.EINVAL, ns.create, root, bad, 0o644, os.O_CREAT, 0, 0)
    fails(errno.EINVAL, ns.mkdir, root, bad, 0o755, 0, 0)
    fails(errno.EINVAL, ns.mknod, root, bad, stat.S_IFIFO | 0o644, 0, 0, 0)
    fails(errno.EINVAL, ns.symlink, root, bad, b"t", 0, 0)
    fails(errno.EINVAL, ns.link, f, root, bad)
    fails(errno.EINVAL, ns.unlink, root, bad)
    fails(errno.EINVAL, ns.rmdir, root, bad)
    fails(errno.EINVAL, ns.rename, root, bad, root, b"x", 0)
    fails(errno.EINVAL, ns.rename, root, b"f", root, bad, 0)
    assert ns.listdir(root) == [b"f"]


def test_symlink_targets_and_create_over_special_files() -> None:
    ns = new_tmpfs()
    root = ns.root_inode
    fails(errno.ENAMETOOLONG, ns.symlink, root, b"l", b"t" * 4096, 0, 0)
    fails(errno.EINVAL, ns.symlink, root, b"l", b"a\0b", 0, 0)
    link, st = ns.symlink(root, b"l", b"t" * 4095, 0, 0)
    assert st.st_size == 4095
    assert st.st_blocks == 0
    ns.mknod(root, b"p", stat.S_IFIFO | 0o644, 0, 0, 0)
    fails(errno.EINVAL, ns.create, root, b"p", 0o644, os.O_CREAT, 0, 0)
    assert link.target == b"t" * 4095


def test_a_removed_directory_whose_parent_is_gone_has_no_dotdot() -> None:
    ns = new_tmpfs()
    root = ns.root_inode
    a, _ = ns.mkdir(root, b"a", 0o755, 0, 0)
    b, _ = ns.mkdir(a, b"b", 0o755, 0, 0)
    ns.rmdir(a, b"b")
    assert ns.lookup(b, b"..")[0] is a
    ns.forget(a, 2)
    ns.rmdir(root, b"a")
    fails(errno.ENOENT, ns.lookup, b, b"..")
    fails(errno.ENOENT, ns.stat_parent, b)
    assert ns.audit() == []


def test_the_xattr_names_of_a_node_must_fit_one_listxattr() -> None:
    ns = new_tmpfs()
    f, _ = mkfile(ns, ns.root_inode, b"f")
    n = 65536 // 256  # names of 255 bytes + NUL fill a listxattr reply exactly
    for i in range(n):
        ns.setxattr(f, b"user.%0250d" % i, b"")
    fails(errno.ENOSPC, ns.setxattr, f, b"user.%0250d" % n, b"")
    fails(errno.ENOSPC, ns.setxattr, f, b"user.x", b"")
    ns.setxattr(f, b"user.%0250d" % 0, b"replacing takes no new room")
    assert len(ns.listxattr(f)) == n


def test_the_audit_finds_broken_trees() -> None:
    ns = new_tmpfs()
    root = ns.root_inode
    d, _ = ns.mkdir(root, b"d", 0o755, 0, 0)
    f, _ = mkfile(ns, d, b"f")
    assert ns.audit() == []
    f.nlink = 2
    assert any("nlink 2, 1 names" in v for v in ns.audit())
    f.nlink = 1
    root.nlink = 2
    assert any("nlink 2" in v and "1 subdirs" in v for v in ns.audit())
    root.nlink = 3
    del ns.nodes[f.ino]
    assert any("dead node" in v for v in ns.audit())
    ns.nodes[f.ino] = f
    ns.forget(f, 1)
    f.nlookup = 1  # in use but unknown
    assert any("in use but not known" in v for v in ns.audit())
    f.nlookup = 0
    d.parent = d  # a directory that lost its parent pointer
    assert any("not its parent" in v for v in ns.audit())
