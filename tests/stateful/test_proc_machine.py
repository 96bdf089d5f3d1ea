"""Simulated processes and files against a model (issue 11): a hypothesis state machine
over two files of a 128-frame engine -- writes, reads and truncations (the wired pages past
a new end go) -- and processes that mmap them (shared and private, read-only and
read-write), mlock and munlock, vslock and vsunlock, load, store, are written by a
debugger, fork and exit.
Every read and load is compared with ``ubcfs.procmodel`` (the model the stress tool uses
too), every success or failure must be the predicted one, and the DIAGNOSTIC checker
(rule 16 included) runs after every step.  At the end every process exits and nothing is
left wired, mapped or anonymous."""

from __future__ import annotations

import errno
import shutil
import tempfile
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.stateful.test_engine_machine import EngineThread
from tests.unit.engine.enginetools import new_engine, pattern
from ubcfs.procmodel import GONE, PAGE, FileM, MapM, ProcM
from ubcfs.vfs.vnode import Vnode
from ubcfs.vm import audit
from ubcfs.vm.param import Prot
from ubcfs.vm.proc import (
    Proc,
    ProcTable,
    proc_load,
    proc_store,
    sys_mlock,
    sys_mmap,
    sys_munlock,
    sys_munmap,
    vslock,
    vsunlock,
)

NFILES = 2
MAX_FILE_PAGES = 12
MAX_PROCS = 4

pages = st.integers(0, MAX_FILE_PAGES - 1)
picks = st.integers(0, 1 << 16)


class ProcMachine(RuleBasedStateMachine):
    pdpolicy = "clock"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ubcfs-proc-machine-"))
        self.engine = new_engine(pages=128, nwins=4, pdpolicy=self.pdpolicy)  # wiredmax: 42
        self.eng = EngineThread(self.engine)
        self.files = [FileM(f"f{i}", bytearray()) for i in range(NFILES)]
        self.vps: list[Vnode] = [
            self.eng.run(self.engine.open, self.dir / f.name) for f in self.files
        ]
        self.table = ProcTable(self.engine.uvm)
        self.procs: list[tuple[Proc, ProcM]] = []
        # A start that has something to work on: files of a few pages, two processes
        # with a shared read-write and a private read-only mapping of the first file.
        for k, f in enumerate(self.files):
            data = pattern(100 + k, (4 + 2 * k) * PAGE)
            assert self.eng.run(self.engine.write, self.vps[k], 0, data) == (0, len(data))
            f.write(0, data)
        for _ in range(2):
            p = self.eng.run_sync(self.table.proc_new)
            pm = ProcM(p.pid)
            self.procs.append((p, pm))
            for private, prot in ((False, Prot.RW.value), (True, Prot.READ.value)):
                err, va = self.eng.run_sync(
                    sys_mmap, p, 6 * PAGE, self.vps[0].uobj, 0, prot, private
                )
                assert err == 0
                pm.maps.append(MapM(va, 6, self.files[0], 0, private, prot == Prot.RW.value))

    def teardown(self) -> None:
        try:
            self.eng.run(self.table.exit_all)
            exp = self.engine.uvm.uvmexp
            assert exp.wired == 0
            assert exp.anonpages == 0
            assert not self.engine.uvm.amaps
            for vp in self.vps:
                assert self.eng.run(self.engine.release, vp) == 0
            assert self.eng.run_sync(audit.audit, self.engine.uvm) == []
            self.eng.close()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _map(self, pick: int) -> tuple[Proc, MapM, int]:
        cands = [(p, m) for p, pm in self.procs for m in pm.maps]
        p, m = cands[pick % len(cands)]
        return p, m, pick // len(cands)

    def _has_maps(self) -> bool:
        return any(pm.maps for _, pm in self.procs)

    # --- files --------------------------------------------------------------------------

    @rule(k=st.integers(0, NFILES - 1), page=pages, start=st.integers(0, PAGE - 1),
          n=st.integers(1, 2 * PAGE), seed=st.integers(0, 1 << 16))  # fmt: skip
    def write(self, k: int, page: int, start: int, n: int, seed: int) -> None:
        off = min(page * PAGE + start, MAX_FILE_PAGES * PAGE - 1)
        data = pattern(seed, min(n, MAX_FILE_PAGES * PAGE - off))
        assert self.eng.run(self.engine.write, self.vps[k], off, data) == (0, len(data))
        self.files[k].write(off, data)

    @rule(k=st.integers(0, NFILES - 1))
    def read(self, k: int) -> None:
        err, got = self.eng.run(self.engine.read, self.vps[k], 0, MAX_FILE_PAGES * PAGE)
        assert err == 0
        assert bytes(got) == bytes(self.files[k].data)

    @rule(k=st.integers(0, NFILES - 1), size=st.integers(0, MAX_FILE_PAGES * PAGE),
          aligned=st.booleans())  # fmt: skip
    def truncate(self, k: int, size: int, aligned: bool) -> None:
        if aligned:
            size -= size % PAGE
        assert self.eng.run(self.engine.truncate, self.vps[k], size) == 0
        self.files[k].truncate(size)

    # --- processes ----------------------------------------------------------------------

    @precondition(lambda self: len(self.procs) < MAX_PROCS)
    @rule()
    def proc_new(self) -> None:
        p = self.eng.run_sync(self.table.proc_new)
        self.procs.append((p, ProcM(p.pid)))

    @precondition(lambda self: bool(self.procs))
    @rule(pick=picks, k=st.integers(0, NFILES - 1), off=st.integers(0, 4),
          npages=st.integers(1, 6), private=st.booleans(), writable=st.booleans())  # fmt: skip
    def mmap(self, pick: int, k: int, off: int, npages: int, private: bool, writable: bool) -> None:
        p, pm = self.procs[pick % len(self.procs)]
        prot = Prot.RW.value if writable else Prot.READ.value
        err, va = self.eng.run_sync(
            sys_mmap, p, npages * PAGE, self.vps[k].uobj, off * PAGE, prot, private
        )
        assert err == 0
        pm.maps.append(MapM(va, npages, self.files[k], off * PAGE, private, writable))

    @precondition(_has_maps)
    @rule(pick=picks)
    def munmap(self, pick: int) -> None:
        p, m, _ = self._map(pick)
        assert self.eng.run(sys_munmap, p, m.addr, m.npages * PAGE) == 0
        next(pm for q, pm in self.procs if q is p).maps.remove(m)

    @precondition(_has_maps)
    @rule(pick=picks)
    def mlock(self, pick: int) -> None:
        p, m, _ = self._map(pick)
        want_ok, copies = m.mlock_outcome()
        exp = self.engine.uvm.uvmexp
        if not m.locked and exp.wired + m.npages > exp.wiredmax:
            # The system's wiring limit: refused before any page is touched.
            assert self.eng.run(sys_mlock, p, m.addr, m.npages * PAGE) == errno.EAGAIN
            return
        err = self.eng.run(sys_mlock, p, m.addr, m.npages * PAGE)
        assert (err == 0) == want_ok, f"mlock: errno {err}, model expected success={want_ok}"
        for i in copies:
            m.promote(i)
        if not err:
            m.locked = True

    @precondition(_has_maps)
    @rule(pick=picks)
    def vslock(self, pick: int) -> None:
        p, m, _ = self._map(pick)
        want_ok, copies = m.vslock_outcome()
        err = self.eng.run(vslock, p, m.addr, m.npages * PAGE)
        assert (err == 0) == want_ok, f"vslock: errno {err}, model expected success={want_ok}"
        for i in copies:
            m.promote(i)
        if not err:
            m.holds += 1

    @precondition(_has_maps)
    @rule(pick=picks)
    def vsunlock(self, pick: int) -> None:
        p, m, _ = self._map(pick)
        err = vsunlock(p, m.addr, m.npages * PAGE)
        assert err == (0 if m.holds else errno.EINVAL), f"vsunlock: errno {err}, holds {m.holds}"
        if not err:
            m.holds -= 1

    @precondition(_has_maps)
    @rule(pick=picks)
    def munlock(self, pick: int) -> None:
        p, m, _ = self._map(pick)
        assert self.eng.run(sys_munlock, p, m.addr, m.npages * PAGE) == 0
        m.locked = False

    @precondition(_has_maps)
    @rule(pick=picks, start=st.integers(0, PAGE - 1), n=st.integers(1, PAGE))
    def load(self, pick: int, start: int, n: int) -> None:
        p, m, rest = self._map(pick)
        i = rest % m.npages
        n = min(n, PAGE - start)
        err, got = self.eng.run(proc_load, p, m.addr + i * PAGE + start, n)
        if m.page(i)[0] == GONE:
            assert err != 0, "a load past EOF succeeded"
            return
        assert err == 0
        bad = m.check_load(i, start, got)
        assert bad is None, bad

    @precondition(_has_maps)
    @rule(pick=picks, start=st.integers(0, PAGE - 1), n=st.integers(1, 64),
          seed=st.integers(0, 1 << 16), debugger=st.booleans())  # fmt: skip
    def store(self, pick: int, start: int, n: int, seed: int, debugger: bool) -> None:
        p, m, rest = self._map(pick)
        i = rest % m.npages
        data = pattern(seed, min(n, PAGE - start))
        want_ok, data = m.store_outcome(i, start, data, debugger)
        if not data:
            return
        va = m.addr + i * PAGE + start
        if debugger:
            err = self.eng.run(self.table.ptrace_write, p, va, data)
        else:
            err = self.eng.run(proc_store, p, va, data)
        assert (err == 0) == want_ok, f"store: errno {err}, model expected success={want_ok}"
        if not err:
            m.store(i, start, data)

    @precondition(lambda self: 0 < len(self.procs) < MAX_PROCS)
    @rule(pick=picks)
    def fork(self, pick: int) -> None:
        p, pm = self.procs[pick % len(self.procs)]
        err, child = self.eng.run(self.table.fork, p)
        assert err == 0
        assert child is not None
        self.procs.append((child, ProcM(child.pid, [m.forked() for m in pm.maps])))

    @precondition(lambda self: bool(self.procs))
    @rule(pick=picks)
    def exit(self, pick: int) -> None:
        p, _ = self.procs.pop(pick % len(self.procs))
        self.eng.run(self.table.exit, p)

    @invariant()
    def sound(self) -> None:
        bad = self.eng.run_sync(audit.audit, self.engine.uvm)
        assert bad == [], "\n".join(bad)


class ClockProProcMachine(ProcMachine):
    """The same under CLOCK-Pro (``--pdpolicy clockpro``)."""

    pdpolicy = "clockpro"


TestProcMachine = ProcMachine.TestCase
TestClockProProcMachine = ClockProProcMachine.TestCase
_profile = settings()
# In process and cheap (about 0.1 s an example): as many examples as the profile asks.
TestProcMachine.settings = TestClockProProcMachine.settings = settings(
    _profile,
    max_examples=_profile.max_examples,
    stateful_step_count=min(50, _profile.stateful_step_count),
    deadline=None,
)
