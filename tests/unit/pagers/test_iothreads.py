"""Tests for pagers.iothreads: results and exceptions through the pool, cancellation while
queued against while running, shutdown with requests pending, many requests at once, and
reuse across trio runs.

Blocking is made deterministic with ``threading.Event``s inside the submitted functions;
nothing here asserts on timing.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import trio
import trio.lowlevel
import trio.testing

from pagers.iothreads import CANCELLED, DONE, QUEUED, RUNNING, THREAD_NAME, IoThreads

WAIT = 10.0  # seconds a thread waits for an event before a test is declared hung


def io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


_pools: list[IoThreads] = []


def new_pool(nthreads: int = 4) -> IoThreads:
    pool = IoThreads(nthreads)
    _pools.append(pool)
    return pool


@pytest.fixture(autouse=True)
def _close_every_pool() -> Iterator[None]:
    yield
    while _pools:
        _pools.pop().close()
    assert not io_threads(), "I/O threads left running"


class Blocker:
    """A function for the pool that signals it runs, then waits to be released."""

    def __init__(self) -> None:
        self.running = threading.Event()
        self.release = threading.Event()
        self.calls = 0

    def __call__(self, value: int) -> int:
        self.calls += 1
        self.running.set()
        assert self.release.wait(WAIT), "never released"
        return value


async def wait_running(b: Blocker) -> None:
    assert await trio.to_thread.run_sync(b.running.wait, WAIT)


async def test_results_come_back() -> None:
    pool = new_pool()
    assert await pool.run(pow, 3, 4) == 81
    req = pool.start(divmod, 17, 5)
    assert await req.wait() == (3, 2)
    assert req.state == DONE
    assert pool.inflight == 0


async def test_an_exception_in_the_call_is_raised_in_the_waiter() -> None:
    pool = new_pool()
    with pytest.raises(ZeroDivisionError):
        await pool.run(divmod, 1, 0)
    assert await pool.run(abs, -2) == 2  # the worker survived it


async def test_threads_start_at_first_use_and_close_joins_them() -> None:
    pool = new_pool(3)
    assert io_threads() == []
    await pool.run(abs, 1)
    assert len(io_threads()) == 3
    await pool.aclose()
    assert io_threads() == []
    assert await pool.run(abs, -5) == 5  # a closed pool starts again
    assert len(io_threads()) == 3


async def test_many_concurrent_requests() -> None:
    pool = new_pool(4)
    results: dict[int, int] = {}

    async def task(base: int) -> None:
        reqs = [(i, pool.start(pow, i, 2)) for i in range(base, base + 20)]
        for i, req in reqs:
            results[i] = await req.wait()

    async with trio.open_nursery() as nursery:
        for t in range(25):
            nursery.start_soon(task, t * 20)
    assert results == {i: i * i for i in range(500)}
    stats = pool.statistics()
    assert stats["started"] == 500
    assert 1 <= stats["deliveries"] <= 500  # completions may share a wake-up
    assert stats["inflight"] == 0


async def test_completions_waiting_together_share_one_delivery() -> None:
    """Requests finished before the trio thread runs again are delivered in one batch."""
    pool = new_pool(1)
    gate = Blocker()
    first = pool.start(gate, 0)
    await wait_running(gate)
    rest = [pool.start(abs, -i) for i in range(1, 6)]
    marker = threading.Event()
    last = pool.start(marker.set)
    before = pool.deliveries
    gate.release.set()
    # Block the trio thread (deliberately, in a test) until the one worker has run every
    # request up to the marker: the first completion scheduled a delivery, which cannot
    # run before this returns, and the next four were added to it meanwhile.
    assert marker.wait(WAIT)
    assert await first.wait() == 0
    assert all(r.state == DONE for r in rest)  # woken by that same delivery
    assert [await r.wait() for r in rest] == [1, 2, 3, 4, 5]
    await last.wait()
    assert pool.deliveries - before in (1, 2)  # the marker's own may come in a second one


async def test_cancel_while_queued_withdraws_the_request() -> None:
    pool = new_pool(1)
    gate = Blocker()
    queued_fn = Blocker()
    queued_fn.release.set()
    outcome: list[object] = []

    scope = trio.CancelScope()

    async def waiter(req_box: list[object]) -> None:
        with scope:
            req = pool.start(queued_fn, 7)
            req_box.append(req)
            try:
                outcome.append(await req.wait())
            except trio.Cancelled:
                outcome.append("cancelled")
                raise

    box: list[object] = []
    async with trio.open_nursery() as nursery:
        running = pool.start(gate, 1)
        await wait_running(gate)
        nursery.start_soon(waiter, box)
        await trio.testing.wait_all_tasks_blocked()
        scope.cancel()  # the request waits in the queue behind the running one
    assert outcome == ["cancelled"]
    assert box[0].state == CANCELLED  # type: ignore[attr-defined]
    gate.release.set()
    assert await running.wait() == 1
    await pool.aclose()  # the worker has seen the withdrawn request by now
    assert queued_fn.calls == 0
    assert pool.inflight == 0


async def test_cancel_while_running_still_returns_the_result() -> None:
    pool = new_pool(1)
    gate = Blocker()
    results: list[object] = []

    async def waiter() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            results.append(await pool.run(gate, 42))
            await trio.lowlevel.checkpoint()  # the cancellation lands here
            results.append("not cancelled")

    scopes: list[trio.CancelScope] = []
    async with trio.open_nursery() as nursery:
        nursery.start_soon(waiter)
        await wait_running(gate)
        scopes[0].cancel()
        await trio.testing.wait_all_tasks_blocked()
        assert results == []  # still waiting for the thread, not abandoned
        gate.release.set()
    assert results == [42]
    assert gate.calls == 1


async def test_aclose_waits_for_pending_requests() -> None:
    pool = new_pool(2)
    gates = [Blocker() for _ in range(3)]
    reqs = [pool.start(g, i) for i, g in enumerate(gates)]  # the third waits in the queue
    closed = trio.Event()

    async def closer() -> None:
        await pool.aclose()
        closed.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(closer)
        await wait_running(gates[0])
        await wait_running(gates[1])
        await trio.testing.wait_all_tasks_blocked()
        assert not closed.is_set()
        assert reqs[2].state == QUEUED
        for g in gates:
            g.release.set()
    assert closed.is_set()
    assert [await r.wait() for r in reqs] == [0, 1, 2]  # delivered before the close
    assert io_threads() == []


async def test_close_refuses_while_requests_are_in_flight() -> None:
    pool = new_pool(1)
    gate = Blocker()
    req = pool.start(gate, 3)
    await wait_running(gate)
    assert req.state == RUNNING
    with pytest.raises(RuntimeError, match="in flight"):
        pool.close()
    gate.release.set()
    assert await req.wait() == 3


async def test_a_request_done_before_wait_returns_without_sleeping() -> None:
    pool = new_pool(1)
    req = pool.start(abs, -9)
    while req.state != DONE:
        await trio.lowlevel.checkpoint()
    with trio.testing.assert_no_checkpoints():
        assert await req.wait() == 9


def test_one_pool_serves_successive_runs() -> None:
    pool = new_pool(2)
    assert trio.run(pool.run, abs, -1) == 1
    assert trio.run(pool.run, abs, -2) == 2
    assert len(io_threads()) == 2


def test_needs_a_thread() -> None:
    with pytest.raises(ValueError, match="at least one thread"):
        IoThreads(0)
