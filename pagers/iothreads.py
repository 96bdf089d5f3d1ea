"""Long-lived I/O threads for the backing I/O edge (~ the kernel's disk driver queue and its
biodone interrupt, for ``pagers.backing_io``).

Why
---
``trio.to_thread.run_sync`` costs 110-240 µs per round trip on these machines (fuse-notes
§1.4, §5.3): it takes a limiter token, finds or starts a cached thread, hands the job over
through a fresh lock, and comes back through ``TrioToken.run_sync_soon`` and a memory
channel.  A 4 KiB miss is then paid mostly in hand-off, not in the disk.  ``IoThreads``
keeps a fixed set of daemon threads blocked on one ``queue.SimpleQueue`` and brings results
back in batches, so that a request costs a queue put, one ``run_sync_soon`` per batch of
completions and one ``reschedule`` per waiting task.

Theory of operation
-------------------
``start(fn, *args)`` (trio thread, never sleeps) wraps the call in an ``IoRequest``, puts it
on the queue and returns it; the I/O is running (or queued for the next free thread) from
that moment on, before the caller awaits anything.  ``await req.wait()`` returns ``fn``'s
result.  A worker thread takes the oldest request, claims it (QUEUED -> RUNNING, under
``_lock``), runs it, and appends it to the done list.  The worker that finds the done list
without a delivery pending asks trio (``run_sync_soon``) to run ``_deliver``; later
completions ride on that same delivery until it has run.  ``_deliver`` (trio thread) marks
every finished request DONE and reschedules the tasks waiting for them: a wake-up of the
trio thread serves however many completions piled up meanwhile.  When several requests are
queued at once each idle thread takes the next without sleeping, so concurrent misses are
batched at both ends with no per-request work beyond the queue operations.

Request states (``IoRequest.state``)::

    QUEUED --(worker claims it, under _lock)--> RUNNING --(_deliver, trio thread)--> DONE
    QUEUED --(waiter cancelled, under _lock)--> CANCELLED   (the worker skips it)

Rules
-----
* A request that a worker has claimed always completes and its result is returned, even to
  a cancelled waiter: ``wait``'s abort function refuses (``Abort.FAILED``) once the state is
  RUNNING, and the cancellation is delivered at the waiter's next checkpoint.  Memory the
  call writes into (page frames held busy by the caller) is therefore never touched after
  ``wait`` returns or raises.  A request still QUEUED when its waiter is cancelled is
  withdrawn: ``wait`` raises ``Cancelled`` and ``fn`` is never called.
* Threads run ``fn`` and nothing else: they never touch trio objects except
  ``run_sync_soon``, and never VM metadata.  ``fn`` reports expected failures in its result
  (errnos); an exception from it is a bug, re-raised in the waiter.
* ``_lock`` guards only ``state`` transitions out of QUEUED, the done list and the
  "delivery pending" flag; it is never held across a blocking call.
* One trio run at a time: the token is taken at the first ``start`` of a run, and a run must
  wait for (or withdraw) every request it started before it ends.
* Threads start at the first ``start`` and stay until ``aclose``/``close``, which let every
  request already started finish, then stop and join the threads.  A closed pool starts
  again at its next ``start``.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import TYPE_CHECKING, Final, Generic, TypeVar, TypeVarTuple

import trio

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

R = TypeVar("R")
Ts = TypeVarTuple("Ts")

QUEUED: Final = 0
RUNNING: Final = 1
DONE: Final = 2
CANCELLED: Final = 3

THREAD_NAME: Final = "ubcfs-io"


class IoRequest(Generic[R]):
    """One call handed to the I/O threads.

    Attributes:
        state: QUEUED, RUNNING, DONE or CANCELLED (see the module doc).
    """

    __slots__ = ("_args", "_exc", "_fn", "_pool", "_result", "_task", "state")

    def __init__(self, pool: IoThreads, fn: Callable[..., R], args: tuple[object, ...]) -> None:
        self._pool = pool
        self._fn = fn
        self._args = args
        self._result: R | None = None
        self._exc: BaseException | None = None
        self._task: trio.lowlevel.Task | None = None
        self.state = QUEUED

    def _run(self) -> None:
        """Worker thread: call ``fn``."""
        try:
            self._result = self._fn(*self._args)
        except BaseException as e:  # noqa: BLE001 -- a bug in fn: re-raised in the waiter
            self._exc = e
        self._args = ()  # drop the views now: the caller may release them after wait

    async def wait(self) -> R:
        """The result of the call, once it has run.

        Raises:
            trio.Cancelled: only while the request is still queued (it is then withdrawn and
                never runs); a running request is waited for whatever happens.

        => may sleep; does not yield when the request is already DONE.
        => on return the worker is done with the call's arguments.
        """
        if self.state != DONE:
            if self._task is not None:
                raise RuntimeError("IoRequest.wait called twice")
            self._task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._exc is not None:
            raise self._exc
        return self._result  # type: ignore[return-value]  # R (None is a valid R too)

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        pool = self._pool
        with pool._lock:
            if self.state != QUEUED:
                return trio.lowlevel.Abort.FAILED  # running: it must finish first
            self.state = CANCELLED
        self._task = None
        pool._finished(1)
        return trio.lowlevel.Abort.SUCCEEDED


class IoThreads:
    """A fixed set of long-lived worker threads fed by one queue.

    Args:
        nthreads: worker threads (the most I/Os in progress at once).
        name: thread name prefix, for debuggers and leak checks.
    """

    def __init__(self, nthreads: int = 8, name: str = THREAD_NAME) -> None:
        if nthreads < 1:
            raise ValueError(f"IoThreads needs at least one thread, got {nthreads}")
        self.nthreads = nthreads
        self.name = name
        self._queue: queue.SimpleQueue[IoRequest[object] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._done: list[IoRequest[object]] = []
        self._kicked = False  # a _deliver is scheduled and has not yet taken _done
        self._threads: list[threading.Thread] = []
        self._token: trio.lowlevel.TrioToken | None = None
        self._idle: trio.Event | None = None  # set when ``inflight`` drops to 0
        self.inflight = 0  # started and neither delivered nor withdrawn (trio thread only)
        self.started = 0  # requests started (statistics)
        self.deliveries = 0  # trio wake-ups that delivered completions (statistics)

    # --- trio thread ------------------------------------------------------------------

    def start(self, fn: Callable[[*Ts], R], *args: *Ts) -> IoRequest[R]:
        """Queue ``fn(*args)`` for a worker thread and return its request.

        => trio thread; never sleeps.  => the call may begin at once, in another thread:
           whatever it writes into must stay reserved until ``wait`` returns.
        """
        token = trio.lowlevel.current_trio_token()
        if token is not self._token:
            if self.inflight:
                raise RuntimeError("IoThreads used by a new trio run while I/O is in flight")
            self._token = token
            self._idle = None
        if not self._threads:
            self._spawn()
        req = IoRequest(self, fn, args)
        self.inflight += 1
        self.started += 1
        self._queue.put(req)  # type: ignore[arg-type]  # IoRequest is covariant in use
        return req

    async def run(self, fn: Callable[[*Ts], R], *args: *Ts) -> R:
        """``start(fn, *args)`` and wait for it (see ``IoRequest.wait`` on cancellation)."""
        return await self.start(fn, *args).wait()

    def _deliver(self) -> None:
        """Run by trio for the worker that found no delivery pending: finish every request
        done so far and wake its waiter."""
        with self._lock:
            batch = self._done
            self._done = []
            self._kicked = False
        self.deliveries += 1
        for req in batch:
            req.state = DONE
            task = req._task
            if task is not None:
                req._task = None
                trio.lowlevel.reschedule(task)
        self._finished(len(batch))

    def _finished(self, n: int) -> None:
        self.inflight -= n
        if self.inflight == 0 and self._idle is not None:
            self._idle.set()
            self._idle = None

    async def aclose(self) -> None:
        """Wait for every request started so far, then stop and join the threads.

        => may sleep.  => the threads are idle when joined, so the join does not block on I/O.
        """
        while self.inflight:
            if self._idle is None:
                self._idle = trio.Event()
            await self._idle.wait()
        self.close()

    def close(self) -> None:
        """Stop and join the threads; nothing may be in flight (use ``aclose`` in a run)."""
        if self.inflight:
            raise RuntimeError(f"IoThreads.close with {self.inflight} requests in flight")
        threads, self._threads = self._threads, []
        for _ in threads:
            self._queue.put(None)
        for t in threads:
            t.join()

    def statistics(self) -> dict[str, int]:
        return {
            "threads": len(self._threads),
            "inflight": self.inflight,
            "started": self.started,
            "deliveries": self.deliveries,
        }

    def _spawn(self) -> None:
        for i in range(self.nthreads):
            t = threading.Thread(target=self._worker, name=f"{self.name}-{i}", daemon=True)
            t.start()
            self._threads.append(t)

    # --- worker threads ---------------------------------------------------------------

    def _worker(self) -> None:
        get = self._queue.get
        lock = self._lock
        while True:
            req = get()
            if req is None:
                return
            with lock:
                claimed = req.state == QUEUED  # else withdrawn by a cancelled waiter
                if claimed:
                    req.state = RUNNING
            if not claimed:
                continue
            req._run()
            with lock:
                self._done.append(req)
                kick = not self._kicked
                self._kicked = True
            if kick:
                self._kick()

    def _kick(self) -> None:
        token = self._token
        assert token is not None
        try:
            token.run_sync_soon(self._deliver)
        except trio.RunFinishedError:
            # The run ended without waiting for its requests (a bug of the caller): nobody
            # is left to deliver to.
            log.error("I/O completed after its trio run had finished")
            with self._lock:
                self._done.clear()
                self._kicked = False
