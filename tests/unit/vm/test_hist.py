"""The event history (``ubcfs.vm.hist``): the ring keeps the newest events and says how
many a reader missed; the engine and the processes log what they do."""

from __future__ import annotations

import itertools
from pathlib import Path

from tests.unit.engine.enginetools import PAGE, assert_sound, new_engine, pattern
from ubcfs import options
from ubcfs.vm import hist
from ubcfs.vm.hist import UvmHist
from ubcfs.vm.param import Prot
from ubcfs.vm.proc import ProcTable, proc_load, sys_mlock, sys_mmap, sys_munlock


def test_the_ring_survives_overflow() -> None:
    h = UvmHist(20)
    assert h.size == 32  # a power of two
    for i in range(100):
        h.log(hist.H_GETPAGES, "f", i, 1)
    nxt, lost, events = h.since(0, 1000)
    assert (nxt, lost) == (100, 68)
    assert [seq for seq, _ in events] == list(range(68, 100))
    assert [ev[3] for _, ev in events] == list(range(68, 100))  # the newest, oldest first
    assert all(a[1][0] <= b[1][0] for a, b in itertools.pairwise(events))
    assert h.since(100, 10) == (100, 0, [])
    nxt, lost, events = h.since(90, 4)
    assert (nxt, lost, [s for s, _ in events]) == (94, 0, [90, 91, 92, 93])


def test_the_cli_defaults_match() -> None:
    assert options.DEFAULT_HIST_SIZE == hist.DEFAULT_HIST_SIZE
    assert options.MAX_HIST_SIZE == hist.MAX_HIST_SIZE
    assert set(hist.KINDS) >= {hist.H_FAULT, hist.H_SETSIZE, hist.H_UNWIRE_SKIP}


async def test_the_engine_and_processes_log_their_work(tmp_path: Path) -> None:
    async with new_engine().running() as eng:
        h = eng.uvm.hist
        assert h is not None
        path = tmp_path / "f"
        path.write_bytes(pattern(1, 4 * PAGE))
        vp = await eng.open(str(path))
        assert (await eng.read(vp, 0, PAGE))[0] == 0
        assert await eng.write(vp, 4 * PAGE, b"x" * PAGE) == (0, PAGE)
        assert await eng.fsync(vp) == 0
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 4 * PAGE, vp.uobj, 0, Prot.RW.value, private=False)
        assert await sys_mlock(p, va, 4 * PAGE) == 0
        assert await eng.truncate(vp, PAGE) == 0
        assert await sys_munlock(p, va, 4 * PAGE) == 0
        assert (await proc_load(p, va, 1))[0] == 0
        _, _, events = h.since(0, 100_000)
        kinds = [ev[1] for _, ev in events]
        for kind in (
            hist.H_UBC_FAULT,
            hist.H_GETPAGES,
            hist.H_PUTPAGES,
            hist.H_PAGEOUT,
            hist.H_PAGEOUT_DONE,
            hist.H_WIRE,
            hist.H_SETSIZE,
            hist.H_UNWIRE,
            hist.H_UNWIRE_SKIP,
            hist.H_FAULT,
        ):
            assert kind in kinds, kind
        sizes = [(ev[3], ev[4]) for _, ev in events if ev[1] == hist.H_SETSIZE]
        assert (5 * PAGE, PAGE) in sizes
        skips = [ev for _, ev in events if ev[1] == hist.H_UNWIRE_SKIP]
        assert len(skips) == 3
        assert {ev[2] for ev in skips} == {p.vm.name}
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)
