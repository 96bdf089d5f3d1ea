"""DIAGNOSTIC support: panics, kernel-style assertions and simple locks (~ KASSERT, DIAGNOSTIC).

Two kinds of failure exist in ubcfs, as in the kernel:

* expected failures (EIO, EAGAIN, EBUSY, ERESTART, ENOSPC, ENOMEM) are errno ints returned
  by pager, genfs and vfs operations;
* bugs -- a double free, unwiring an unwired page, a broken invariant -- raise ``Panic``.

Cheap assertions (``kassert``) are always on: they guard against silent corruption of the
simulated machine.  Whole-structure audits (``ubcfs.vm.audit``) and the lock instrumentation
run when ``DIAGNOSTIC`` is on: tests turn it on; the daemon turns it on with
``UBCFS_DIAGNOSTIC=1``.

Locks.  One trio thread owns all VM state, so a kernel "simple lock" becomes an owner flag:
between two ``await``s a task owns everything.  ``SimpleLock`` records that a section holds a
lock so that code can assert "object locked" (Thorpe's assertions in uvm_pagealloc_strat,
amap_free, ...), and ``LockInstrument`` panics when a task yields to trio while holding one
(invariant 17: no await while "holding" an owner lock).
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final, NoReturn

import trio
from mypy_extensions import mypyc_attr

if TYPE_CHECKING:
    from types import TracebackType

DIAGNOSTIC: bool = os.environ.get("UBCFS_DIAGNOSTIC", "0") not in ("", "0")


def set_diagnostic(on: bool) -> None:
    """Turn the DIAGNOSTIC checks on or off for the whole process."""
    global DIAGNOSTIC
    DIAGNOSTIC = on


# mypyc cannot make a native class of an exception derived from a builtin one other than
# Exception: Panic stays a Python class in the compiled build (its behaviour is the same).
@mypyc_attr(native_class=False)
class Panic(AssertionError):  # noqa: N818 -- the kernel's word
    """A kernel panic: the simulated machine found itself in an impossible state."""


def panic(msg: str) -> NoReturn:
    """Stop with ``Panic(msg)`` (kernel: panic)."""
    raise Panic(msg)


def kassert(cond: bool, msg: str) -> None:
    """Panic with ``msg`` unless ``cond`` (kernel: KASSERT)."""
    if not cond:
        raise Panic(msg)


class HeldLocks:
    """How many ``SimpleLock``s are held right now, over all of them (for ``LockInstrument``).

    An attribute of one object rather than a class variable of ``SimpleLock``: in the
    compiled build a class variable is a type attribute, and every update of one costs a
    dictionary write and invalidates the type's method cache.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


HELD: Final = HeldLocks()


class SimpleLock:
    """A kernel simple lock turned into an assertion-checked owner flag.

    ``with lock:`` marks the lock held for a section that must not ``await``.  Taking a lock
    that is already held is a panic (there is no one to wait for: the holder is this thread).
    """

    __slots__ = ("held", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.held = False

    def __enter__(self) -> SimpleLock:
        if self.held:
            panic(f"lock {self.name}: locking against myself")
        self.held = True
        HELD.count += 1
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if not self.held:
            panic(f"lock {self.name}: unlocking an unlocked lock")
        self.held = False
        HELD.count -= 1

    def try_enter(self) -> bool:
        """Take the lock if free (kernel: simple_lock_try); the pagedaemon's way to lock
        out of order.  Pair with ``exit()``."""
        if self.held:
            return False
        self.__enter__()
        return True

    def exit(self) -> None:
        """Release a lock taken with ``try_enter``."""
        self.__exit__(None, None, None)

    def assert_locked(self) -> None:
        """Panic unless held (kernel: LOCK_ASSERT(simple_lock_held(...)))."""
        if DIAGNOSTIC and not self.held:
            panic(f"lock {self.name} not held")


class LockInstrument(trio.abc.Instrument):
    """Panic when a task yields to the scheduler while holding a ``SimpleLock``.

    A yield while "locked" would let another task see half-updated VM state: exactly the
    bug that a kernel lock prevents.  Installed by tests (and the daemon under DIAGNOSTIC).
    """

    def __init__(self) -> None:
        self.violations: list[str] = []
        self._reported = False

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if not HELD.count:
            self._reported = False
        elif not self._reported:
            # Report each held period once (the count itself belongs to the locks).
            msg = f"task {task.name} yielded while holding {HELD.count} VM lock(s)"
            self.violations.append(msg)
            self._reported = True
