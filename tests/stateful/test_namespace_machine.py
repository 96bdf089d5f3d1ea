"""The tmpfs namespace against the backing one: a hypothesis state machine applies the same
random name operations (create, mkdir, mknod, symlink, link, unlink, rmdir, rename with
its flags, chmod, xattrs, lookups held across removals) to a ``BackingNamespace`` on a tmp
directory -- the host file system is the model -- and to a ``TmpfsNamespace``.

Every operation must succeed in both or fail in both with the same errno.  After every
step the two trees must agree: the same names, and for each the type, permission bits,
link count, size (files and symlinks), symlink target and xattrs; the same grouping of
names into hard links; the same attributes for the nodes held by lookups (unlinked ones
too).  The tmpfs audit must be clean.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from ubcfs.vfs.backing import RENAME_EXCHANGE, RENAME_NOREPLACE, BackingNamespace
from ubcfs.vfs.namespace import Namespace
from ubcfs.vfs.tmpfs import TmpfsNamespace

NAMES = [b"a", b"b", b"c"]
names = st.sampled_from(NAMES)
# Directories to work in: the root and three that ``start`` makes (the rules may remove,
# replace or move them), and one that only the rules can make.
DIRS = [b"", b"a", b"b", b"a/b", b"b/c/a"]
dirs = st.sampled_from(DIRS)
paths = st.sampled_from([d + b"/" + n if d else n for d in DIRS[:4] for n in NAMES])
modes = st.sampled_from([0o600, 0o755, 0o4755, 0o2750, 0o1777])
Tree = dict[bytes, tuple[object, ...]]


def _walk(ns: Namespace[Any], held: list[Any], path: bytes) -> Any:
    """The node at ``path`` (b"" is the root), each step a lookup recorded in ``held``."""
    node = ns.root_inode
    for name in path.split(b"/") if path else []:
        node, _ = ns.lookup(node, name)
        held.append(node)
    return node


def _describe(ns: Namespace[Any], node: Any, st_: os.stat_result) -> tuple[object, ...]:
    """What must agree between the modes: not times, numbers or directory sizes."""
    fmt = stat.S_IFMT(st_.st_mode)
    size = st_.st_size if fmt in (stat.S_IFREG, stat.S_IFLNK) else None
    target = ns.readlink(node) if fmt == stat.S_IFLNK else None
    xattrs = sorted((n, ns.getxattr(node, n)) for n in ns.listxattr(node))
    return (fmt, stat.S_IMODE(st_.st_mode), st_.st_nlink, size, target, xattrs)


def _tree(ns: Namespace[Any]) -> tuple[Tree, set[frozenset[bytes]]]:
    """Every path below the root described, and the paths grouped by node number."""
    out: Tree = {}
    by_ino: dict[int, set[bytes]] = {}
    todo: list[tuple[bytes, Any]] = [(b"", ns.root_inode)]
    held: list[Any] = []
    try:
        while todo:
            path, d = todo.pop()
            for name in ns.listdir(d):
                node, st_ = ns.lookup(d, name)
                held.append(node)
                sub = path + b"/" + name if path else name
                out[sub] = _describe(ns, node, st_)
                by_ino.setdefault(ns.st_ino(node, st_), set()).add(sub)
                if stat.S_ISDIR(st_.st_mode):
                    todo.append((sub, node))
    finally:
        for node in reversed(held):
            ns.forget(node, 1)
    return out, {frozenset(p) for p in by_ino.values()}


class NamespaceComparison(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.umask = os.umask(0)  # the daemon's: the backing mode's modes are exact
        self.dir = tempfile.mkdtemp(prefix="ubcfs-ns-")
        os.chmod(self.dir, 0o755)
        self.backing = BackingNamespace(self.dir)
        self.tmpfs = TmpfsNamespace(lambda: (1 << 30, 1 << 29), max_nodes=10_000)
        self.held: list[tuple[Any, Any]] = []  # (backing node, tmpfs node) kept looked up

    def teardown(self) -> None:
        try:
            for b, t in self.held:
                self.backing.forget(b, 1)
                self.tmpfs.forget(t, 1)
            assert self.tmpfs.audit() == []
            assert set(self.tmpfs.inodes) == {self.tmpfs.root_inode.ino}
        finally:
            self.backing.close()
            self.tmpfs.close()
            shutil.rmtree(self.dir, ignore_errors=True)
            os.umask(self.umask)

    def both(self, op: Callable[[Namespace[Any], list[Any]], object]) -> None:
        """Run ``op(ns, held)`` in each mode; ``held`` collects the lookups it took, which
        are given back afterwards.  Both must succeed or fail with one errno."""
        results: list[int] = []
        for ns in (self.backing, self.tmpfs):
            held: list[Any] = []
            try:
                op(ns, held)
                results.append(0)
            except OSError as e:
                results.append(e.errno or -1)
            finally:
                for node in reversed(held):
                    ns.forget(node, 1)
        assert results[0] == results[1], f"backing errno {results[0]}, tmpfs {results[1]}"

    # --- the rules ------------------------------------------------------------------------

    @initialize()
    def start(self) -> None:
        """A small tree, so that most rules find something to work on: directories a, b
        and a/b, a file c with a second name a/c, a fifo b/a and a symlink a/b/c."""

        def op(ns: Namespace[Any], held: list[Any]) -> None:
            root = ns.root_inode
            a = ns.mkdir(root, b"a", 0o755, 0, 0)[0]
            b = ns.mkdir(root, b"b", 0o755, 0, 0)[0]
            ab = ns.mkdir(a, b"b", 0o755, 0, 0)[0]
            c, _, fd = ns.create(root, b"c", 0o644, os.O_CREAT | os.O_EXCL, 0, 0)
            if fd >= 0:
                os.close(fd)
            held.extend((a, b, ab, c, ns.link(c, a, b"c")[0]))
            held.append(ns.mknod(b, b"a", stat.S_IFIFO | 0o600, 0, 0, 0)[0])
            held.append(ns.symlink(ab, b"c", b"../../c", 0, 0)[0])

        self.both(op)

    def _special(self, d: bytes, name: bytes) -> bool:
        """Does ``d/name`` name a fifo in the tmpfs namespace?"""
        held: list[Any] = []
        try:
            node = _walk(self.tmpfs, held, d + b"/" + name if d else name)
        except OSError:
            return False
        finally:
            for n in reversed(held):
                self.tmpfs.forget(n, 1)
        return stat.S_ISFIFO(node.mode)

    @rule(d=dirs, name=names, mode=modes, excl=st.booleans())
    def create(self, d: bytes, name: bytes, mode: int, excl: bool) -> None:
        if not excl and self._special(d, name):
            # The backing mode opens an existing fifo for data, tmpfs refuses (EINVAL); FUSE
            # sends CREATE for an existing name only when it lost a race.
            return
        flags = os.O_CREAT | (os.O_EXCL if excl else 0)

        def op(ns: Namespace[Any], held: list[Any]) -> None:
            node, _, fd = ns.create(_walk(ns, held, d), name, mode, flags, 0, 0)
            held.append(node)
            if fd >= 0:
                os.close(fd)

        self.both(op)

    @rule(d=dirs, name=names)
    def mkdir(self, d: bytes, name: bytes) -> None:
        self.both(lambda ns, held: held.append(ns.mkdir(_walk(ns, held, d), name, 0o755, 0, 0)[0]))

    @rule(d=dirs, name=names)
    def mkfifo(self, d: bytes, name: bytes) -> None:
        mode = stat.S_IFIFO | 0o640
        self.both(
            lambda ns, held: held.append(ns.mknod(_walk(ns, held, d), name, mode, 0, 0, 0)[0])
        )

    @rule(d=dirs, name=names, dest=st.sampled_from([b"a", b"../b/c", b"/x" * 20]))
    def symlink(self, d: bytes, name: bytes, dest: bytes) -> None:
        self.both(lambda ns, held: held.append(ns.symlink(_walk(ns, held, d), name, dest, 0, 0)[0]))

    @rule(src=paths, d=dirs, name=names)
    def link(self, src: bytes, d: bytes, name: bytes) -> None:
        def op(ns: Namespace[Any], held: list[Any]) -> None:
            node = _walk(ns, held, src)
            held.append(ns.link(node, _walk(ns, held, d), name)[0])

        self.both(op)

    @rule(d=dirs, name=names)
    def unlink(self, d: bytes, name: bytes) -> None:
        self.both(lambda ns, held: ns.unlink(_walk(ns, held, d), name))

    @rule(d=dirs, name=names)
    def rmdir(self, d: bytes, name: bytes) -> None:
        self.both(lambda ns, held: ns.rmdir(_walk(ns, held, d), name))

    @rule(
        d1=dirs,
        n1=names,
        d2=dirs,
        n2=names,
        flags=st.sampled_from([0, 0, RENAME_NOREPLACE, RENAME_EXCHANGE]),
    )
    def rename(self, d1: bytes, n1: bytes, d2: bytes, n2: bytes, flags: int) -> None:
        def op(ns: Namespace[Any], held: list[Any]) -> None:
            ns.rename(_walk(ns, held, d1), n1, _walk(ns, held, d2), n2, flags)

        self.both(op)

    @rule(p=paths, mode=modes)
    def chmod(self, p: bytes, mode: int) -> None:
        self.both(lambda ns, held: ns.chmod(_walk(ns, held, p), mode))

    @rule(p=paths, name=st.sampled_from([b"user.x", b"user.y"]), value=st.binary(max_size=8))
    def setxattr(self, p: bytes, name: bytes, value: bytes) -> None:
        self.both(lambda ns, held: ns.setxattr(_walk(ns, held, p), name, value))

    @rule(p=paths)
    def removexattr(self, p: bytes) -> None:
        self.both(lambda ns, held: ns.removexattr(_walk(ns, held, p), b"user.x"))

    @precondition(lambda self: len(self.held) < 4)
    @rule(p=paths)
    def hold(self, p: bytes) -> None:
        """Keep a lookup of ``p`` (as the kernel does for an open file or a cwd), so that
        removals leave it alive and nameless."""
        got: list[Any] = []

        def op(ns: Namespace[Any], held: list[Any]) -> None:
            got.append(_walk(ns, held, p))
            held.pop()  # the walk's last lookup is kept

        self.both(op)
        if len(got) == 2:
            self.held.append((got[0], got[1]))

    @precondition(lambda self: self.held)
    @rule(i=st.integers(min_value=0, max_value=3))
    def release(self, i: int) -> None:
        b, t = self.held.pop(i % len(self.held))
        self.backing.forget(b, 1)
        self.tmpfs.forget(t, 1)

    # --- what must agree ------------------------------------------------------------------

    @invariant()
    def trees_agree(self) -> None:
        b_tree, b_links = _tree(self.backing)
        t_tree, t_links = _tree(self.tmpfs)
        assert t_tree == b_tree
        assert t_links == b_links

    @invariant()
    def held_nodes_agree(self) -> None:
        for b, t in self.held:
            assert _describe(self.tmpfs, t, self.tmpfs.getattr(t)) == _describe(
                self.backing, b, self.backing.getattr(b)
            )

    @invariant()
    def tmpfs_audit_is_clean(self) -> None:
        assert self.tmpfs.audit() == []


_profile = settings()
NamespaceComparison.TestCase.settings = settings(
    _profile, deadline=None, max_examples=max(10, _profile.max_examples // 2)
)
test_namespace_comparison = NamespaceComparison.TestCase
