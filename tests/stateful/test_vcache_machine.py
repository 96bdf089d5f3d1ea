"""The vnode life cycle against a model: a hypothesis state machine that drives the FUSE
operations (no kernel mount) the way the kernel may -- lookups, opens, writes, closes,
forgets at any time no file is open, unlinks and renames of open files, truncation by
path -- while vnodes are reclaimed at random moments, sometimes with a failing write-back.

Every read is compared with the model; after every step the FUSE layer's audit (inodes,
handles, descriptors, vnode states) and the VM's DIAGNOSTIC audit must be clean; at the end
the backing directory must hold exactly the model's files.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pyfuse3
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from pagers.backing_io import IOKind
from tests.api.apitools import CTX, setattr_fields
from tests.stateful.test_engine_machine import EngineThread
from tests.unit.engine.enginetools import new_engine
from ubcfs.fuse import Operations
from ubcfs.vfs.backing import ROOT_INO, BackingNamespace
from ubcfs.vfs.vcache import VS
from ubcfs.vm import audit

NAMES = [b"a", b"b", b"c"]
names = st.sampled_from(NAMES)


@dataclass(eq=False)
class File:
    """The model of one file: its data and the kernel's lookup count of its inode."""

    data: bytearray
    ino: int = 0
    lookups: int = 0


class VcacheMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ubcfs-vcache-"))
        (self.dir / "back").mkdir()
        eng = new_engine(pages=64)
        self.ns = BackingNamespace(str(self.dir / "back"))
        self.ops = Operations(eng, self.ns)
        self.eng = EngineThread(eng)
        self.engine = eng
        self.names: dict[bytes, File] = {}  # the directory
        self.forgotten: list[File] = []  # unlinked files the kernel still knows
        self.handles: dict[int, File] = {}

    def teardown(self) -> None:
        try:
            for fh in list(self.handles):
                self.eng.run(self.ops.release, fh)
            self.engine.injector.arm(IOKind.WRITE, errno.EIO, 0)
            assert self.eng.run(self.ops.final_writeback) == 0
            assert self.eng.run_sync(self.ops.audit) == []
            self.eng.close()
            for name, f in self.names.items():
                got = (self.dir / "back" / os.fsdecode(name)).read_bytes()
                assert got == bytes(f.data), f"backing {name!r} differs from the model"
        finally:
            self.ns.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- the kernel's side ----------------------------------------------------------------

    def _lookup(self, name: bytes) -> File:
        f = self.names[name]
        e = self.eng.run(self.ops.lookup, ROOT_INO, name, CTX)
        assert f.ino in (0, e.st_ino), "inode number changed"
        f.ino = e.st_ino
        f.lookups += 1
        return f

    def _errno(self, fn: Callable[..., Awaitable[object]], *args: object) -> int:
        """Run a FUSE operation; its FUSEError's errno, or 0."""
        try:
            self.eng.run(fn, *args)
        except pyfuse3.FUSEError as e:
            return int(e.errno)
        return 0

    def _open_files(self, f: File) -> int:
        return sum(1 for g in self.handles.values() if g is f)

    @rule(name=names)
    def create_or_open(self, name: bytes) -> None:
        if name in self.names:
            f = self._lookup(name)
            fi = self.eng.run(self.ops.open, f.ino, os.O_RDWR, CTX)
        else:
            fi, e = self.eng.run(self.ops.create, ROOT_INO, name, 0o644, os.O_RDWR, CTX)
            f = File(bytearray(), e.st_ino, 1)
            self.names[name] = f
        self.handles[fi.fh] = f

    @precondition(lambda self: self.handles)
    @rule(data=st.data(), off=st.integers(0, 40000), n=st.integers(1, 9000))
    def write(self, data: st.DataObject, off: int, n: int) -> None:
        fh = data.draw(st.sampled_from(sorted(self.handles)))
        buf = os.urandom(n)
        assert self.eng.run(self.ops.write, fh, off, buf) == n
        f = self.handles[fh]
        if len(f.data) < off:
            f.data.extend(bytes(off - len(f.data)))
        f.data[off : off + n] = buf

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        fh = data.draw(st.sampled_from(sorted(self.handles)))
        got = bytes(self.eng.run(self.ops.read, fh, 0, 1 << 20))
        assert got == bytes(self.handles[fh].data)

    @precondition(lambda self: self.handles)
    @rule(data=st.data())
    def close(self, data: st.DataObject) -> None:
        fh = data.draw(st.sampled_from(sorted(self.handles)))
        # close() may report a write-back failure of a failed reclaim; nothing is lost.
        assert self._errno(self.ops.flush, fh) in (0, errno.EIO)
        self.eng.run(self.ops.release, fh)
        del self.handles[fh]

    @rule()
    def drop_caches(self) -> None:
        """The kernel forgets every inode that no open file uses."""
        for f in [*self.names.values(), *self.forgotten]:
            if f.lookups and not self._open_files(f):
                self.eng.run(self.ops.forget, [(f.ino, f.lookups)])
                f.lookups = 0
        self.forgotten = [f for f in self.forgotten if f.lookups]

    @precondition(lambda self: self.names)
    @rule(data=st.data())
    def unlink(self, data: st.DataObject) -> None:
        name = data.draw(st.sampled_from(sorted(self.names)))
        f = self._lookup(name)
        self.eng.run(self.ops.unlink, ROOT_INO, name, CTX)
        del self.names[name]
        self.forgotten.append(f)

    @precondition(lambda self: self.forgotten)
    @rule(data=st.data())
    def reopen_unlinked(self, data: st.DataObject) -> None:
        """Open a file that has no name left by its inode, as ``open("/proc/PID/fd/N")``
        does while the kernel still knows the inode: its data must still be there."""
        f = data.draw(st.sampled_from(self.forgotten))
        fi = self.eng.run(self.ops.open, f.ino, os.O_RDWR, CTX)
        self.handles[fi.fh] = f
        assert bytes(self.eng.run(self.ops.read, fi.fh, 0, 1 << 20)) == bytes(f.data)

    @precondition(lambda self: self.names)
    @rule(data=st.data(), new=names)
    def rename(self, data: st.DataObject, new: bytes) -> None:
        old = data.draw(st.sampled_from(sorted(self.names)))
        if old == new:
            return
        f = self._lookup(old)
        if new in self.names:
            victim = self._lookup(new)
            self.forgotten.append(victim)
        self.eng.run(self.ops.rename, ROOT_INO, old, ROOT_INO, new, 0, CTX)
        self.names[new] = self.names.pop(old)
        assert self.names[new] is f

    @precondition(lambda self: self.names)
    @rule(data=st.data(), size=st.integers(0, 30000))
    def truncate(self, data: st.DataObject, size: int) -> None:
        name = data.draw(st.sampled_from(sorted(self.names)))
        f = self._lookup(name)
        attr = pyfuse3.EntryAttributes()
        attr.st_size = size
        fields = setattr_fields(update_size=True)
        e = self.eng.run(self.ops.setattr, f.ino, attr, fields, None, CTX)
        assert e.st_size == size
        del f.data[size:]
        f.data.extend(bytes(size - len(f.data)))

    # --- the vnode cache's side -----------------------------------------------------------

    @precondition(lambda self: self.names)
    @rule(data=st.data(), fail=st.booleans())
    def reclaim(self, data: st.DataObject, fail: bool) -> None:
        """Reclaim a named file's vnode now, if it is unreferenced (as the drain would),
        maybe with its write-back failing: then it must stay LOADED with nothing lost.
        (The victim is chosen from the model: the free list also depends on when the drain
        discarded unlinked files.)"""
        name = data.draw(st.sampled_from(sorted(self.names)))
        key = os.stat(self.dir / "back" / os.fsdecode(name)).st_dev, self.names[name].ino
        vp = self.engine.vcache.free.get(key)
        if vp is None:
            return
        if fail:
            self.engine.injector.arm(IOKind.WRITE, errno.EIO, 1000)
        err = self.eng.run(self.engine.vcache.vrecycle, vp, False)
        self.engine.injector.arm(IOKind.WRITE, errno.EIO, 0)
        if err:
            assert vp.vstate is VS.LOADED
            assert vp.key in self.engine.vcache.free
        else:
            assert vp.vstate is VS.RECLAIMED

    @rule()
    def fsync_everything(self) -> None:
        assert self.eng.run(self.engine.sync) == 0

    @invariant()
    def audits_are_clean(self) -> None:
        assert self.eng.run_sync(self.ops.audit) == []
        assert self.eng.run_sync(audit.audit, self.engine.uvm) == []

    @invariant()
    def sizes_match(self) -> None:
        for f in self.names.values():
            if f.lookups:
                e = self.eng.run(self.ops.getattr, f.ino, CTX)
                assert e.st_size == len(f.data)


VcacheMachine.TestCase.settings = settings(deadline=None)
test_vcache_machine = VcacheMachine.TestCase
