"""Write-back failures that persist: retry backoff, the stuck state and bounded waits for
memory (ubcfs's own: the kernel treats a failed write-back as lost data, reference §4.5,
where ubcfs keeps the pages dirty and retries, design.md §5).

Theory of operation
-------------------
A failed cluster write leaves its pages dirty and resident (genfs ``_write_iodone``), and the
pager tells this registry which pages they were.  Per object it remembers those pages, the
errno, and when background write-back of the object may be tried again:

* **Backoff.**  The first failure makes the object wait ``BACKOFF_MIN`` seconds before its
  next *background* write (pagedaemon pageout, write-behind).  Each background write that is
  started once the wait is over is a retry, and it doubles the wait for the one after it, up
  to ``BACKOFF_MAX``: a file whose store keeps failing is tried about once per backoff
  period, however hard memory is pressed.  Meanwhile the pagedaemon reactivates the object's
  dirty pages instead of writing them, and sleeps until the earliest retry when nothing else
  can be reclaimed.  Explicit write-back (fsync, sync, unmount, the last close: PGO_SYNCIO)
  ignores the backoff and tries at once.  A successful write of the object ends its backoff.
* **Stuck state.**  ``npages`` pages of ``len(objects)`` objects are waiting for a
  successful write; ``last_error`` is the errno of the latest failure and ``since`` when the
  state began.  A page leaves it when it is written or freed (truncated away); the state
  ends with the last page.
* **Bounded waits.**  An allocation that sleeps in ``uvm_wait`` while some object's writes
  keep failing gives up with ``last_error`` once it has waited ``timeout`` seconds
  (``--writeback-timeout``): the memory it waits for is held by pages that cannot be written.

Invariants (the DIAGNOSTIC audit checks them): every object here has at least one page
listed; every listed page is resident in its object and dirty or busy (under a new write);
``npages`` is the number of listed pages.

Times are ``trio.current_time()`` (the machine's clock; a MockClock in tests).  Everything
here is sync, so a task owns the registry between two awaits; it is never touched from the
I/O worker threads.
"""

from __future__ import annotations

import errno
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import trio

if TYPE_CHECKING:
    from ubcfs.vm.object import UvmObject

BACKOFF_MIN: Final = 0.01  # seconds before the first background retry
BACKOFF_MAX: Final = 5.0  # the longest wait between two background retries
DEFAULT_TIMEOUT: Final = 30.0  # --writeback-timeout


@dataclass(slots=True, eq=False)
class StuckObject:
    """The write-back failure state of one object (a file).

    Attributes:
        pages: offsets of its pages whose last write failed.
        since: when the current episode of failures began.
        error: errno of its latest failed write; 0 once a write of it has succeeded since
            (then it is no longer backing off, though listed pages still wait to be written).
        failures: failed writes since ``since`` or since its last successful write.
        delay: the wait before the next background retry.
        retry_at: no background write of the object before this time.
    """

    since: float
    error: int = 0
    pages: set[int] = field(default_factory=set)
    failures: int = 0
    delay: float = BACKOFF_MIN
    retry_at: float = 0.0


class WbFailures:
    """The write-back failures of one machine (``Uvm.wbfail``).

    Attributes:
        timeout: seconds an allocation may wait for memory while write-back keeps failing.
        objects: object -> its failure state, for the objects with pages waiting.
        npages: pages waiting for a successful write, over all objects.
        last_error: errno of the latest failure (0 when nothing is waiting).
        since: when pages started waiting (the stuck state began).
    """

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.timeout = timeout
        self.objects: dict[UvmObject, StuckObject] = {}
        self.npages = 0
        self.last_error = 0
        self.since = 0.0
        self._changed = trio.Event()

    # --- what the pager reports ---------------------------------------------------------

    def write_failed(
        self, uobj: UvmObject, offsets: Iterable[int], err: int, now: float
    ) -> StuckObject | None:
        """A write of ``uobj`` failed with ``err``; ``offsets`` are its pages that stay
        resident (dirty).  Starts the object's backoff unless one is running.  Returns the
        object's state, or None if no page of the write is left to wait."""
        ent = self.objects.get(uobj)
        if ent is None:
            ent = StuckObject(since=now)
        for off in offsets:
            if off not in ent.pages:
                if not self.npages:
                    self.since = now
                ent.pages.add(off)
                self.npages += 1
        if not ent.pages:
            return None
        self.objects[uobj] = ent
        if not ent.error:
            ent.since = now  # a new episode (the object's writes had worked again)
        if not ent.error or ent.retry_at <= now:
            # A first failure, or an explicit write that failed after the wait ran out: wait
            # the current delay (background retries double it when they start).
            ent.retry_at = now + ent.delay
        ent.error = err
        ent.failures += 1
        self.last_error = err
        return ent

    def write_done(self, uobj: UvmObject, offsets: Iterable[int]) -> tuple[int, float] | None:
        """A write of ``uobj`` succeeded (its pages at ``offsets`` were written): the object's
        backoff is over.  Returns (failed writes, since when) if the object was failing."""
        ent = self.objects.get(uobj)
        if ent is None:
            return None
        self._discard(uobj, ent, offsets)
        if not ent.error:
            return None
        episode = (ent.failures, ent.since)
        ent.error = 0
        ent.failures = 0
        ent.delay = BACKOFF_MIN
        ent.retry_at = 0.0
        self._wake()
        return episode

    def page_gone(self, uobj: UvmObject, offset: int) -> None:
        """The page of ``uobj`` at ``offset`` is being freed (truncated away, discarded)."""
        ent = self.objects.get(uobj)
        if ent is not None and offset in ent.pages:
            self._discard(uobj, ent, (offset,))

    def _discard(self, uobj: UvmObject, ent: StuckObject, offsets: Iterable[int]) -> None:
        pages = ent.pages
        for off in offsets:
            if off in pages:
                pages.remove(off)
                self.npages -= 1
        if not pages:
            del self.objects[uobj]
            self._wake()
            if not self.objects:
                self.last_error = 0

    # --- what write-back asks ------------------------------------------------------------

    def backoff(self, uobj: UvmObject, now: float) -> float:
        """The time before which no background write of ``uobj`` may start, or 0.0 when one
        may start now.  => cheap: a dict lookup (an empty dict when nothing fails)."""
        ent = self.objects.get(uobj)
        if ent is None or not ent.error or ent.retry_at <= now:
            return 0.0
        return ent.retry_at

    def retry_started(self, uobj: UvmObject, now: float) -> bool:
        """A background write of ``uobj`` starts: if the object is failing this is a retry,
        and the next one waits twice as long.  Returns whether it was a retry."""
        ent = self.objects.get(uobj)
        if ent is None or not ent.error:
            return False
        ent.delay = min(BACKOFF_MAX, ent.delay * 2)
        ent.retry_at = now + ent.delay
        return True

    def failing(self) -> bool:
        """Is some object's write-back failing right now (not yet written since)?"""
        return any(ent.error for ent in self.objects.values())

    def change_event(self) -> trio.Event:
        """An event set when a failing object's write succeeds or an object leaves the
        registry: a pagedaemon sleeping until a retry time wakes early for it."""
        if self._changed.is_set():
            self._changed = trio.Event()
        return self._changed

    def _wake(self) -> None:
        if not self._changed.is_set():
            self._changed.set()

    # --- reports ------------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """The stuck state for ``ubcfs stat`` (without the dirty-page count, which
        ``vm.stat.snapshot`` adds)."""
        now = trio.current_time() if self.objects else 0.0
        failing = [ent for ent in self.objects.values() if ent.error]
        retry = min((ent.retry_at for ent in failing), default=math.inf)
        return {
            "failed_pages": self.npages,
            "files": len(self.objects),
            "failing_files": len(failing),
            "last_error": errno.errorcode.get(self.last_error, str(self.last_error))
            if self.last_error
            else None,
            "stuck_seconds": round(now - self.since, 3) if self.objects else 0.0,
            "next_retry_seconds": round(max(0.0, retry - now), 3) if failing else 0.0,
            "timeout": self.timeout,
        }
