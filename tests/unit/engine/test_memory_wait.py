"""The pagedaemon's starvation guard (reference §5, scenario 11.2 #23): an allocation made
for the pagedaemon takes its reserve when ordinary allocations are refused, and ``uvm_wait``
with no I/O in flight -- nothing whose completion would wake the sleeper -- does not hang:
its bounded sleep kicks the pagedaemon again, which frees what has become reclaimable."""

from __future__ import annotations

from pathlib import Path

import trio
import trio.testing

from genfs.io import getpages
from genfs.node import GenfsParams
from tests.unit.engine.enginetools import (
    PAGE,
    assert_sound,
    new_engine,
    pattern,
)
from ubcfs.vm.page import (
    PGA_PDAEMON,
    PGA_USERESERVE,
    VmPage,
    page_unbusy_many,
    pageactivate,
    pagealloc,
    pagefree,
)
from ubcfs.vm.pager import PGO_SYNCIO, uvm_wait
from ubcfs.vm.param import Prot

_READ = Prot.READ.value


async def test_pagedaemon_reserve_and_uvm_wait_with_nothing_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A running engine whose memory is all taken by objectless kernel pages (nothing the
    pagedaemon can reclaim, no I/O in flight): ordinary allocations stop at the kernel
    reserve, PGA_USERESERVE ones at the pagedaemon's, and the pagedaemon's own allocation
    (PGA_USERESERVE | PGA_PDAEMON) takes the last pages.  Then ``uvm_wait`` neither hangs
    nor fails: it kicks the daemon, sleeps its bounded slice and returns 0, and the daemon's
    pass that found nothing has not spun."""
    async with new_engine().running() as eng:
        uvm = eng.uvm
        exp = uvm.uvmexp
        taken: list[VmPage] = []

        def take(flags: int) -> None:
            while (pg := pagealloc(uvm, None, 0, flags=flags)) is not None:
                taken.append(pg)

        take(0)
        assert exp.free == exp.reserve_kernel
        take(PGA_USERESERVE)
        assert exp.free == exp.reserve_pagedaemon
        take(PGA_USERESERVE | PGA_PDAEMON)
        assert exp.free == 0
        assert eng.aio.pending == 0
        woke, timeouts = exp.pdwoke, exp.uvm_wait_timeouts
        with trio.fail_after(10):  # virtual seconds: a hang fails at once
            assert await uvm_wait(uvm, "test", 1, trio.current_time()) == 0
        assert exp.uvm_wait_timeouts == timeouts + 1  # woken by its own bound
        assert exp.pdwoke > woke  # the daemon was kicked and looked
        assert exp.pdwoke - woke < 10, "the pagedaemon spun with nothing to reclaim"
        for pg in taken:
            pagefree(uvm, pg)
        uvm.pages_freed()
        assert_sound(eng)


async def test_uvm_wait_with_nothing_in_flight_wakes_when_pages_become_reclaimable(
    tmp_path: Path,
) -> None:
    """All memory above the kernel reserve is held busy (getpages, no read-ahead), so a
    reader of another file sleeps in getpages' ``uvm_wait``.  The holder then lets its pages
    go -- valid, clean, active: reclaimable -- but frees nothing and starts no I/O, so no
    completion and no pass of the pagedaemon will wake the sleeper.  Its bounded sleep must:
    it kicks the daemon again, the daemon frees the clean pages, and the read finishes."""
    held_path = tmp_path / "held"
    held_path.write_bytes(pattern(23, 64 * PAGE))
    other = tmp_path / "other"
    odata = pattern(24, 4 * PAGE)
    other.write_bytes(odata)
    async with new_engine(params=GenfsParams(readahead=0)).running() as eng:
        uvm = eng.uvm
        exp = uvm.uvmexp
        hv = await eng.open(str(held_path))
        ov = await eng.open(str(other))
        held: list[VmPage] = []
        off = 0
        while exp.free > exp.reserve_kernel:
            n = min(uvm.max_cluster_pages(), exp.free - exp.reserve_kernel)
            err, pages = await getpages(hv, off, n, _READ, PGO_SYNCIO)
            assert err == 0
            held += pages
            off += len(pages) * PAGE
        await eng.aio.drain()
        assert exp.free <= exp.reserve_kernel
        done = trio.Event()
        result: list[tuple[int, bytes]] = []

        async def reader() -> None:
            err, got = await eng.read(ov, 0, PAGE)
            result.append((err, bytes(got)))
            done.set()

        timeouts = exp.uvm_wait_timeouts
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            assert not done.is_set(), "the reader found memory that should have been held"
            assert eng.aio.pending == 0
            for pg in held:
                pageactivate(uvm, pg)
            page_unbusy_many(uvm, held)
            with trio.fail_after(10):  # a hang guard: normally a quarter of a second
                await done.wait()
        assert result == [(0, odata[:PAGE])]
        assert exp.uvm_wait_timeouts > timeouts
        assert_sound(eng)
        assert await eng.release(ov) == 0
        assert await eng.release(hv) == 0
