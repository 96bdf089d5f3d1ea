"""DIAGNOSTIC support: panics, kernel-style assertions, simple locks and the trio instrument
that catches an ``await`` made while holding a VM lock (invariant 17)."""

from __future__ import annotations

import pytest
import trio
import trio.lowlevel
import trio.testing

from ubcfs.vm import diag
from ubcfs.vm.diag import LockInstrument, Panic, SimpleLock, kassert, panic


def test_panic_is_an_assertion_error_with_the_message() -> None:
    with pytest.raises(Panic, match=r"^boom$") as info:
        panic("boom")
    assert isinstance(info.value, AssertionError)


def test_kassert() -> None:
    kassert(True, "never")
    with pytest.raises(Panic, match="the message"):
        kassert(False, "the message")


def test_set_diagnostic_switches_the_module_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diag, "DIAGNOSTIC", diag.DIAGNOSTIC)
    diag.set_diagnostic(False)
    assert diag.DIAGNOSTIC is False
    diag.set_diagnostic(True)
    assert diag.DIAGNOSTIC is True


def test_tests_run_with_diagnostic_on() -> None:
    assert diag.DIAGNOSTIC is True


def test_simple_lock_enter_exit_and_count() -> None:
    lock = SimpleLock("l")
    before = diag.HELD.count
    with lock as held:
        assert held is lock
        inside = lock.held
        assert diag.HELD.count == before + 1
        lock.assert_locked()
    assert inside
    assert not lock.held
    assert diag.HELD.count == before


def test_simple_lock_against_myself_panics() -> None:
    lock = SimpleLock("mine")
    with lock, pytest.raises(Panic, match="lock mine: locking against myself"):
        lock.__enter__()
    assert not lock.held


def test_unlocking_an_unlocked_lock_panics() -> None:
    with pytest.raises(Panic, match="lock u: unlocking an unlocked lock"):
        SimpleLock("u").exit()


def test_try_enter_takes_a_free_lock_only() -> None:
    lock = SimpleLock("t")
    assert lock.try_enter()
    assert not lock.try_enter()
    assert lock.held
    lock.exit()
    assert not lock.held


def test_assert_locked_panics_only_under_diagnostic(monkeypatch: pytest.MonkeyPatch) -> None:
    lock = SimpleLock("a")
    with pytest.raises(Panic, match="lock a not held"):
        lock.assert_locked()
    monkeypatch.setattr(diag, "DIAGNOSTIC", False)
    lock.assert_locked()


async def test_lock_instrument_is_quiet_when_no_lock_crosses_an_await() -> None:
    inst = LockInstrument()
    trio.lowlevel.add_instrument(inst)
    lock = SimpleLock("ok")
    with lock:
        pass
    await trio.lowlevel.checkpoint()
    with lock:
        pass
    await trio.testing.wait_all_tasks_blocked()
    trio.lowlevel.remove_instrument(inst)
    assert inst.violations == []


@pytest.mark.broken_vm
async def test_lock_instrument_reports_an_await_while_locked() -> None:
    inst = LockInstrument()
    trio.lowlevel.add_instrument(inst)
    lock = SimpleLock("held-across-await")
    try:
        with lock:
            await trio.lowlevel.checkpoint()
    finally:
        trio.lowlevel.remove_instrument(inst)
    assert inst.violations
    assert "yielded while holding 1 VM lock" in inst.violations[0]


async def test_lock_instrument_reports_one_await_once_and_keeps_its_count_sane() -> None:
    # One await while locked is one violation.  Afterwards, once the lock is released, the
    # global held count must be back at 0 and later steps must report nothing.
    inst = LockInstrument()
    trio.lowlevel.add_instrument(inst)
    lock = SimpleLock("once")
    try:
        with lock:
            await trio.lowlevel.checkpoint()
        count_after_release = diag.HELD.count
        await trio.lowlevel.checkpoint()
        await trio.lowlevel.checkpoint()
    finally:
        trio.lowlevel.remove_instrument(inst)
    assert count_after_release == 0
    assert len(inst.violations) == 1, inst.violations
