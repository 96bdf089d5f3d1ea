"""The UBC engine against a plain model: a hypothesis state machine that writes, appends,
reads, truncates, fallocates (allocates, punches holes, zeroes ranges), fsyncs, reopens and
injects backing-write failures on two files of a 64-frame engine, and compares every read
with a bytearray per file; the DIAGNOSTIC checker runs after every step, and the backing
files must equal the model after every successful fsync, every reopen and at the end.

Hypothesis rules are synchronous and the engine is a set of trio tasks, so the engine runs
in a trio loop on a thread of its own (``EngineThread``) and each rule calls into it with
``trio.from_thread``; nothing else touches the engine, so its state is only ever seen
between two of its own steps.
"""

from __future__ import annotations

import errno
import random
import shutil
import tempfile
from pathlib import Path
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from genfs.node import GenfsParams
from pagers.backing_io import IOKind
from tests.stateful.loopthread import LoopThread
from tests.unit.engine.enginetools import (
    PAGE,
    FileModel,
    assert_backing_matches,
    assert_same,
    new_engine,
    read_all,
)
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnode import Vnode
from ubcfs.vfs.vnops import FALLOC_MODES
from ubcfs.vm import audit

T = TypeVar("T")

NFILES = 2
MAX_OFFSET = 256 * PAGE  # four times the machine's memory


class EngineThread(LoopThread):
    """An engine running in a trio loop on its own thread, driven from synchronous code."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        super().__init__(engine.running)


offsets = st.one_of(
    st.integers(0, MAX_OFFSET),
    st.integers(0, MAX_OFFSET // PAGE).map(lambda p: p * PAGE),
)
lengths = st.one_of(
    st.integers(1, 300),
    st.integers(1, 24).map(lambda n: n * PAGE),
    st.integers(1, 40 * PAGE),
)
files = st.integers(0, NFILES - 1)


class EngineMachine(RuleBasedStateMachine):
    """Random operations on two files of a small engine, against ``FileModel``s."""

    pdpolicy = "clock"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ubcfs-machine-"))
        self.paths = [self.dir / f"f{i}" for i in range(NFILES)]
        self.models = [FileModel() for _ in range(NFILES)]
        params = GenfsParams(maxphys=64 * 1024, readahead=64 * 1024)
        self.engine = new_engine(nwins=4, params=params, pdpolicy=self.pdpolicy)
        self.eng = EngineThread(self.engine)
        self.vps: list[Vnode] = [self.eng.run(self.engine.open, p) for p in self.paths]

    def teardown(self) -> None:
        try:
            self.engine.injector.arm(IOKind.WRITE, errno.EIO, 0)
            self.eng.close()
            for path, model in zip(self.paths, self.models, strict=True):
                assert_backing_matches(path, model)
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    # --- data -----------------------------------------------------------------------------

    @rule(k=files, offset=offsets, length=lengths, seed=st.integers(0, 2**16))
    def write(self, k: int, offset: int, length: int, seed: int) -> None:
        data = random.Random(seed).randbytes(length)
        assert self.eng.run(self.engine.write, self.vps[k], offset, data) == (0, length)
        self.models[k].write(offset, data)

    @rule(k=files, length=lengths, seed=st.integers(0, 2**16))
    def append(self, k: int, length: int, seed: int) -> None:
        self.write(k, self.models[k].size, length, seed)

    @rule(k=files, offset=offsets, length=lengths)
    def read(self, k: int, offset: int, length: int) -> None:
        err, got = self.eng.run(self.engine.read, self.vps[k], offset, length)
        assert err == 0
        assert_same(bytes(got), self.models[k].read(offset, length), f"read({offset}, {length})")

    @rule(k=files)
    def read_whole_file(self, k: int) -> None:
        got = self.eng.run(read_all, self.engine, self.vps[k])
        assert_same(got, bytes(self.models[k].data), f"file {k}")

    @rule(k=files, size=st.one_of(st.integers(0, MAX_OFFSET), st.just(0)))
    def truncate(self, k: int, size: int) -> None:
        assert self.eng.run(self.engine.truncate, self.vps[k], size) == 0
        self.models[k].truncate(size)

    @rule(k=files, delta=st.integers(-3 * PAGE, 3 * PAGE))
    def truncate_near_eof(self, k: int, delta: int) -> None:
        self.truncate(k, max(0, self.models[k].size + delta))

    @rule(k=files, mode=st.sampled_from(sorted(FALLOC_MODES)), offset=offsets, length=lengths)
    def fallocate(self, k: int, mode: int, offset: int, length: int) -> None:
        assert self.eng.run(self.engine.fallocate, self.vps[k], mode, offset, length) == 0
        self.models[k].fallocate(mode, offset, length)

    @rule(k=files, mode=st.sampled_from(sorted(FALLOC_MODES)), offset=offsets)
    def fallocate_near_eof(self, k: int, mode: int, offset: int) -> None:
        """A range that starts before EOF and ends past it: the EOF page's cases."""
        start = max(0, self.models[k].size - offset % (3 * PAGE))
        self.fallocate(k, mode, start, offset % (5 * PAGE) + 1)

    # --- write-back -----------------------------------------------------------------------

    def _fsync_until_clean(self, k: int) -> None:
        """fsync; an earlier failed write may be reported once more, then it must work."""
        for _ in range(3):
            err = self.eng.run(self.engine.fsync, self.vps[k])
            if err == 0:
                assert_backing_matches(self.paths[k], self.models[k])
                return
            assert err in (errno.EIO, errno.ENOSPC)
        raise AssertionError(f"fsync of file {k} keeps failing")

    @rule(k=files)
    def fsync(self, k: int) -> None:
        self._fsync_until_clean(k)

    @rule(k=files, err=st.sampled_from([errno.EIO, errno.ENOSPC]), count=st.integers(1, 3))
    def failing_writes(self, k: int, err: int, count: int) -> None:
        """The next few backing writes fail; an fsync reports it or (if nothing was dirty
        and no pageout met the failure) succeeds; nothing written is lost."""
        self.engine.injector.arm(IOKind.WRITE, err, count)
        got = self.eng.run(self.engine.fsync, self.vps[k])
        assert got in (0, errno.EIO, errno.ENOSPC)  # this one, or one met by a pageout
        self.engine.injector.arm(IOKind.WRITE, err, 0)
        self._fsync_until_clean(k)

    @rule(k=files, err=st.sampled_from([errno.EIO, errno.ENOSPC]))
    def failing_pageouts(self, k: int, err: int) -> None:
        """Backing writes fail while the other file is read through: pageouts fail and are
        retried later; the model is unchanged."""
        self.engine.injector.arm(IOKind.WRITE, err, 2)
        other = (k + 1) % NFILES
        self.read(other, 0, 64 * PAGE)
        self.engine.injector.arm(IOKind.WRITE, err, 0)

    @precondition(lambda self: any(m.size for m in self.models))
    @rule(k=files)
    def reopen(self, k: int) -> None:
        """Release the file (after an fsync that clears any pending error) and open it
        again: the new vnode starts cold and reads the backing file."""
        self._fsync_until_clean(k)
        assert self.eng.run(self.engine.release, self.vps[k]) == 0
        assert_backing_matches(self.paths[k], self.models[k])
        self.vps[k] = self.eng.run(self.engine.open, self.paths[k])
        assert self.vps[k].uobj.npages == 0

    # --- invariants -----------------------------------------------------------------------

    @invariant()
    def machine_is_sound(self) -> None:
        bad = self.eng.run_sync(audit.audit, self.engine.uvm)
        assert bad == [], "\n".join(bad)

    @invariant()
    def sizes_agree(self) -> None:
        for vp, model in zip(self.vps, self.models, strict=True):
            assert vp.size == model.size


class ClockProEngineMachine(EngineMachine):
    """The same under CLOCK-Pro (``--pdpolicy clockpro``)."""

    pdpolicy = "clockpro"


TestEngineMachine = EngineMachine.TestCase
TestClockProEngineMachine = ClockProEngineMachine.TestCase
# Each step crosses threads and often does real backing I/O: a third of the profile's
# examples (20 in CI, more in the nightly profile), with shorter runs.
_profile = settings()
TestEngineMachine.settings = TestClockProEngineMachine.settings = settings(
    _profile,
    max_examples=max(10, _profile.max_examples // 3),
    stateful_step_count=min(30, _profile.stateful_step_count),
)
