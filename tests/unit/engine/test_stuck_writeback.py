"""Write-back that keeps failing (issue 8, point 5): background retries back off, a writer
or reader that needs memory held by unwritable pages fails with the store's errno within
``--writeback-timeout``, the log stays small, the pagedaemon does not spin, ``stat`` shows
the state, and nothing accepted is lost once the store works again.

The stuck phases run on trio's MockClock with autojump: injected failures complete without
a worker thread, so virtual time only moves when every task sleeps -- a busy loop would
never let it move (pytest-timeout then fails the test), and a 30 s timeout costs no real
time.  Phases with real backing I/O switch the clock to real time first: autojump would
otherwise race virtual time ahead while a worker thread writes.
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
from pathlib import Path

import pytest
import trio
import trio.testing

from pagers.backing_io import IOKind
from tests.unit.engine.enginetools import (
    PAGE,
    FileModel,
    assert_backing_matches,
    assert_engine_matches,
    assert_sound,
    frame_bytes,
    gated_io,
    new_engine,
    page_dirty,
    pattern,
)
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnode import Vnode
from ubcfs.vm import pager
from ubcfs.vm.page import PG_BUSY
from ubcfs.vm.pdaemon import HOLD_MAX
from ubcfs.vm.stat import snapshot
from ubcfs.vm.wbfail import BACKOFF_MAX, BACKOFF_MIN

TIMEOUT = 30.0  # the default --writeback-timeout
CHUNK = 4 * PAGE
FOREVER = 1_000_000  # an injection count that outlasts every test


def fail_on_a_retry_storm(eng: Engine, limit: int = 500) -> None:
    """Fail the test (from the I/O task) once the engine has asked for ``limit`` backing
    writes: without backoff a stuck store is retried thousands of times a second and the
    mock clock never moves, so the test would otherwise spin until killed."""
    io = gated_io(eng)
    original = io.writev

    async def writev(
        fd: int, views: list[memoryview], offset: int, kind: IOKind = IOKind.WRITE
    ) -> tuple[int, int]:
        if len(io.write_calls) >= limit:
            raise AssertionError(f"{limit} backing writes: failed write-back is not backed off")
        return await original(fd, views, offset, kind)

    io.writev = writev  # type: ignore[method-assign]


class WaitLog:
    """Records each ``uvm_wait`` that getpages makes (through ``Uvm.wait_hook``): (since,
    when it returned, errno)."""

    def __init__(self, eng: Engine) -> None:
        self.waits: list[tuple[float, float, int]] = []
        eng.uvm.wait_hook = self.record

    def record(self, why: str, since: float | None, err: int) -> None:
        if why == "getpages":
            assert since is not None
            self.waits.append((since, trio.current_time(), err))

    def failed(self) -> list[float]:
        """How long each wait that ended in an error had been going on."""
        return [end - since for since, end, err in self.waits if err]


def real_time(clock: trio.testing.MockClock) -> None:
    """From now on the mock clock follows the real one (for phases with thread I/O)."""
    clock.autojump_threshold = math.inf
    clock.rate = 1.0


async def fill_until_a_write_fails(eng: Engine, vp: Vnode, model: FileModel) -> tuple[int, float]:
    """Append CHUNK-sized writes until one fails; the accepted ones go into ``model``.
    Returns the errno and how long the failing write took."""
    for i in itertools.count():
        assert i < 4 * eng.uvm.uvmexp.npages, "memory never ran out"
        data = pattern(1000 + i, CHUNK)
        started = trio.current_time()
        err, n = await eng.write(vp, model.size, data)
        if err:
            assert n == 0
            return err, trio.current_time() - started
        assert n == CHUNK
        model.write(model.size, data)
    raise AssertionError("unreachable")


async def assert_resident_and_dirty(eng: Engine, vp: Vnode, model: FileModel, start: int) -> None:
    """Every page of ``model`` from ``start`` on is resident, dirty and holds its bytes: no
    page whose write failed was dropped.  (Waits for writes in flight first: a retry's
    pages are busy and PG_CLEAN until it fails.)"""
    await eng.aio.drain()
    for off in range(start, model.size, PAGE):
        pg = vp.uobj.pages.get(off)
        assert pg is not None, f"page at {off} was dropped"
        assert page_dirty(pg), f"page at {off} is not dirty"
        want = model.read(off, PAGE)
        assert frame_bytes(eng, pg)[: len(want)] == want, f"page at {off} changed"


@pytest.mark.timeout(120)
async def test_persistent_write_error_backs_off_and_fails_the_writer_in_time(
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every backing write fails (EIO, "forever"): a writer filling memory is accepted until
    memory is full of unwritable dirty pages, then its write fails with EIO after the
    default 30 s -- the file keeps its old size, every accepted page stays dirty and
    resident.  Meanwhile background retries back off from 10 ms to 5 s (about 15 writes in
    30 s, not thousands a second), the pagedaemon sleeps between them, the log has a few
    lines, and stat shows the stuck state.  An explicit fsync still tries at once; once the
    store works, fsync writes everything."""
    caplog.set_level(logging.INFO, logger="genfs.io")
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        waits = WaitLog(eng)
        exp = eng.uvm.uvmexp
        io = gated_io(eng)
        fail_on_a_retry_storm(eng)
        vp = await eng.open(str(path))
        model = FileModel()
        first = pattern(1, 8 * PAGE)
        assert await eng.write(vp, 0, first) == (0, len(first))
        model.write(0, first)
        assert await eng.fsync(vp) == 0
        eng.injector.arm(IOKind.WRITE, errno.EIO, FOREVER)
        armed_at = trio.current_time()
        writes, revs = len(io.write_calls), exp.pdrevs

        err, waited = await fill_until_a_write_fails(eng, vp, model)
        stuck_for = trio.current_time() - armed_at
        assert err == errno.EIO
        [gave_up] = waits.failed()
        assert TIMEOUT <= gave_up <= TIMEOUT + 0.01
        # The write call also cut the file back (an ftruncate in a worker thread, during
        # which autojump may skip to the pagedaemon's next wake-up, at most HOLD_MAX on).
        assert TIMEOUT <= waited <= TIMEOUT + HOLD_MAX + 1
        assert exp.wb_timeouts == 1
        assert vp.size == model.size  # the failed extending write left the old size
        assert model.size > 16 * PAGE  # memory took a good many pages first
        await assert_resident_and_dirty(eng, vp, model, len(first))
        assert_sound(eng)

        # Retries: a first burst, then one at a time with growing gaps up to the cap.
        attempts = len(io.write_calls) - writes
        assert 2 <= attempts <= 40, attempts
        times = sorted(set(io.write_times[writes:]))
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert min(gaps) >= BACKOFF_MIN * 0.99
        assert max(gaps) <= BACKOFF_MAX + 1
        assert gaps[-1] >= BACKOFF_MAX * 0.99  # the backoff reached its cap
        assert exp.wb_retries >= len(gaps)
        assert exp.wb_deferred > 0
        # No spinning: a few pagedaemon passes per second of being stuck, and it slept.
        assert exp.pdrevs - revs <= 10 * stuck_for, exp.pdrevs - revs
        assert exp.pdholds > 0

        # The log: the first failure, then at most one line per 10 s with what was left out.
        lines = [r.getMessage() for r in caplog.records if r.name == "genfs.io"]
        assert 1 <= len(lines) <= 1 + stuck_for // 10, lines
        assert "write of" in lines[0]
        assert "EIO" in lines[0]
        if len(lines) > 1:
            assert "more failed writes of it not logged" in lines[-1]
        assert exp.wb_log_suppressed >= attempts - len(lines)

        wb = snapshot(eng.uvm)["writeback"]
        assert (wb["files"], wb["failing_files"], wb["last_error"]) == (1, 1, "EIO")
        assert wb["waiting_pages"] >= wb["failed_pages"] > 0
        assert wb["stuck_seconds"] >= TIMEOUT
        assert wb["timeout"] == TIMEOUT

        # An explicit fsync ignores the backoff: it writes (and fails) right away.
        before, now = len(io.write_calls), trio.current_time()
        assert await eng.fsync(vp) == errno.EIO
        assert len(io.write_calls) > before
        assert trio.current_time() == now
        await assert_resident_and_dirty(eng, vp, model, len(first))

        # The store works again: fsync writes everything; the stuck state is gone.
        real_time(autojump_clock)
        eng.injector.arm(IOKind.WRITE, errno.EIO, 0)
        assert await eng.fsync(vp) in (0, errno.EIO)  # an error may be reported once more
        assert await eng.fsync(vp) == 0
        assert eng.uvm.wbfail.objects == {}
        assert snapshot(eng.uvm)["writeback"]["last_error"] is None
        assert_backing_matches(path, model)
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


@pytest.mark.timeout(120)
async def test_reader_that_needs_memory_fails_in_time_too(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """With memory full of pages that cannot be written, a read of a file that is not
    resident cannot get memory either: it fails with the store's errno (ENOSPC here) after
    --writeback-timeout, and works once the store does."""
    path, other = tmp_path / "f", tmp_path / "other"
    theirs = pattern(2, 32 * PAGE)
    other.write_bytes(theirs)
    async with new_engine(writeback_timeout=2.0).running() as eng:
        waits = WaitLog(eng)
        fail_on_a_retry_storm(eng)
        vp = await eng.open(str(path))
        ov = await eng.open(str(other))
        model = FileModel()
        eng.injector.arm(IOKind.WRITE, errno.ENOSPC, FOREVER)
        err, waited = await fill_until_a_write_fails(eng, vp, model)
        assert err == errno.ENOSPC
        assert 2.0 <= waited <= 2.0 + HOLD_MAX + 1  # see the test above
        started = trio.current_time()
        err, got = await eng.read(ov, 0, len(theirs))
        assert (err, bytes(got)) == (errno.ENOSPC, b"")
        assert 2.0 <= trio.current_time() - started <= 2.0 + HOLD_MAX + 1
        assert [round(w, 2) for w in waits.failed()] == [2.0, 2.0]
        await assert_resident_and_dirty(eng, vp, model, 0)

        real_time(autojump_clock)
        eng.injector.arm(IOKind.WRITE, errno.ENOSPC, 0)
        assert await eng.fsync(vp) in (0, errno.ENOSPC)
        assert await eng.fsync(vp) == 0
        err, got = await eng.read(ov, 0, len(theirs))
        assert (err, bytes(got)) == (0, theirs)
        assert await eng.release(ov) == 0
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)


@pytest.mark.timeout(120)
async def test_once_the_store_works_the_pagedaemon_writes_and_the_writer_goes_on(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A writer blocked for memory behind failing write-back (well before its timeout) is
    not failed once the store works again: the pagedaemon's next retry succeeds, the rest
    follows without backoff, and the write completes -- no fsync needed.  Everything ends
    up in the backing file."""
    path = tmp_path / "f"
    async with new_engine().running() as eng:
        fail_on_a_retry_storm(eng)
        vp = await eng.open(str(path))
        model = FileModel()
        data = pattern(3, 3 * eng.uvm.uvmexp.npages * PAGE)  # three times the memory
        result: list[tuple[int, int]] = []
        done = trio.Event()
        eng.injector.arm(IOKind.WRITE, errno.EIO, FOREVER)
        async with trio.open_nursery() as nursery:

            async def writer() -> None:
                result.append(await eng.write(vp, 0, data))
                done.set()

            nursery.start_soon(writer)
            await trio.sleep(1.0)  # virtual: the writer has long been waiting for memory
            assert not result
            assert eng.uvm.wbfail.failing()
            assert eng.uvm.uvmexp.pdholds > 0
            real_time(autojump_clock)
            eng.injector.arm(IOKind.WRITE, errno.EIO, 0)
            with trio.fail_after(60):
                await done.wait()
        assert result == [(0, len(data))]
        model.write(0, data)
        assert not eng.uvm.wbfail.failing()
        await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
        assert await eng.release(vp) == 0
    assert eng.uvm.wbfail.objects == {}
    assert_backing_matches(path, model)


async def test_clean_pages_are_still_reclaimed_while_a_file_backs_off(tmp_path: Path) -> None:
    """Half the memory holds a failing file's dirty pages, the rest clean pages of another
    file: a reader of a third file gets its memory from the clean pages at once -- the
    failing file's backoff does not stop reclaim, and its pages are neither written again
    and again nor dropped."""
    stuck, clean, third = tmp_path / "stuck", tmp_path / "clean", tmp_path / "third"
    clean.write_bytes(pattern(4, 24 * PAGE))
    third.write_bytes(pattern(5, 40 * PAGE))
    async with new_engine().running() as eng:
        io = gated_io(eng)
        fail_on_a_retry_storm(eng)
        sv = await eng.open(str(stuck))
        cv = await eng.open(str(clean))
        tv = await eng.open(str(third))
        model = FileModel()
        data = pattern(6, 24 * PAGE)
        eng.injector.arm(IOKind.WRITE, errno.EIO, FOREVER)
        assert await eng.write(sv, 0, data) == (0, len(data))
        model.write(0, data)
        err, got = await eng.read(cv, 0, 24 * PAGE)
        assert err == 0
        writes = len(io.write_calls)
        with trio.fail_after(60):
            for _ in range(5):
                err, got = await eng.read(tv, 0, 40 * PAGE)
                assert (err, bytes(got)) == (0, third.read_bytes())
        assert len(io.write_calls) - writes <= 20  # backed off, not retried per allocation
        await assert_resident_and_dirty(eng, sv, model, 0)
        assert not any(pg.flags & PG_BUSY for pg in sv.uobj.pages.values())
        assert_sound(eng)
        eng.injector.arm(IOKind.WRITE, errno.EIO, 0)
        assert await eng.fsync(sv) in (0, errno.EIO)
        assert await eng.fsync(sv) == 0
        for v in (tv, cv, sv):
            assert await eng.release(v) == 0
    assert_backing_matches(stuck, model)


@pytest.mark.timeout(120)
async def test_window_fault_waiting_for_pv_entries_is_bounded_too(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A UBC window fault whose pmap_enter finds no pv entry waits for memory and retries
    (ERESTART); while some file's write-back fails, that loop too ends after
    --writeback-timeout with the store's errno instead of going on forever."""
    path, stuck = tmp_path / "f", tmp_path / "stuck"
    path.write_bytes(pattern(7, 4 * PAGE))
    async with new_engine(writeback_timeout=2.0).running() as eng:
        uvm = eng.uvm
        sv = await eng.open(str(stuck))
        vp = await eng.open(str(path))
        eng.injector.arm(IOKind.WRITE, errno.EIO, FOREVER)
        assert await eng.write(sv, 0, b"x" * PAGE) == (0, PAGE)
        assert await eng.fsync(sv) == errno.EIO
        assert uvm.wbfail.failing()
        retries = uvm.uvmexp.canfail_retries
        saved, uvm.pv_free = uvm.pv_free, 0  # the pv pool runs dry (memory is not short)
        try:
            started = trio.current_time()
            err, got = await eng.read(vp, 0, 4 * PAGE)
            took = trio.current_time() - started
        finally:
            uvm.pv_free += saved
        assert (err, bytes(got)) == (errno.EIO, b"")
        assert 2.0 <= took <= 2.0 + HOLD_MAX + 1
        assert uvm.uvmexp.canfail_retries - retries >= 2.0 / pager.UVM_WAIT_TIMEOUT
        real_time(autojump_clock)
        eng.injector.arm(IOKind.WRITE, errno.EIO, 0)
        err, got = await eng.read(vp, 0, 4 * PAGE)
        assert (err, bytes(got)) == (0, path.read_bytes())
        assert await eng.fsync(sv) in (0, errno.EIO)
        assert await eng.fsync(sv) == 0
        assert_sound(eng)
        assert await eng.release(vp) == 0
        assert await eng.release(sv) == 0
