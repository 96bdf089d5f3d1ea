"""The write-back failure registry (ubcfs.vm.wbfail): backoff, the stuck state, its audit
rule, and the bound it puts on ``uvm_wait``."""

from __future__ import annotations

import errno
from collections.abc import Callable

import pytest
import trio
import trio.testing

from ubcfs.vm.audit import audit
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import PG_CLEAN, VmPage, pagemarkdirty
from ubcfs.vm.pager import UVM_WAIT_TIMEOUT, uvm_wait
from ubcfs.vm.uvm import Uvm
from ubcfs.vm.wbfail import BACKOFF_MAX, BACKOFF_MIN, DEFAULT_TIMEOUT

NewPage = Callable[..., VmPage]
PAGE = 4096


def dirty_pages(new_page: NewPage, n: int) -> list[int]:
    """``n`` resident dirty pages of the test object; their offsets."""
    offsets = []
    for _ in range(n):
        pg = new_page()
        pagemarkdirty(pg)
        offsets.append(pg.offset)
    return offsets


def test_backoff_doubles_with_each_retry_up_to_the_cap(
    uvm: Uvm, obj: UvmObject, new_page: NewPage
) -> None:
    wbf = uvm.wbfail
    offs = dirty_pages(new_page, 2)
    assert wbf.backoff(obj, 0.0) == 0.0
    assert not wbf.retry_started(obj, 0.0)  # not failing: an ordinary write
    t = 100.0
    ent = wbf.write_failed(obj, offs, errno.EIO, t)
    assert ent is not None
    assert wbf.backoff(obj, t) == t + BACKOFF_MIN
    assert wbf.backoff(obj, t + BACKOFF_MIN) == 0.0  # its time has come
    # Other writes of the same moment failing do not push the retry further.
    wbf.write_failed(obj, offs[:1], errno.EIO, t + BACKOFF_MIN / 2)
    assert ent.retry_at == t + BACKOFF_MIN
    delays = []
    t += BACKOFF_MIN
    for _ in range(12):
        assert wbf.retry_started(obj, t)
        delays.append(round(ent.retry_at - t, 6))
        wbf.write_failed(obj, offs, errno.EIO, t)  # the retry fails at once
        t = ent.retry_at
    assert delays == [0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.0, 5.0, 5.0, 5.0]
    assert max(delays) == BACKOFF_MAX
    # An explicit write failing after the wait ran out waits the delay again, no doubling.
    wbf.write_failed(obj, offs, errno.ENOSPC, t + 1)
    assert ent.retry_at == t + 1 + BACKOFF_MAX
    assert (wbf.last_error, ent.error, ent.failures) == (errno.ENOSPC, errno.ENOSPC, 15)
    assert wbf.failing()
    # A successful write of the object ends the backoff, though a page is still listed.
    assert wbf.write_done(obj, offs[:1]) == (15, 100.0)
    assert wbf.backoff(obj, t) == 0.0
    assert not wbf.retry_started(obj, t)
    assert not wbf.failing()
    assert (wbf.npages, len(wbf.objects), wbf.last_error) == (1, 1, errno.ENOSPC)
    assert wbf.write_done(obj, offs[1:]) is None  # no longer failing: nothing to report
    assert (wbf.npages, wbf.objects, wbf.last_error) == (0, {}, 0)


def test_the_stuck_state_ends_with_its_last_page(
    uvm: Uvm, obj: UvmObject, new_page: NewPage
) -> None:
    wbf = uvm.wbfail
    other = UvmObject(uvm, "other")
    offs = dirty_pages(new_page, 3)
    assert wbf.write_failed(obj, [], errno.EIO, 5.0) is None  # every page was freed
    assert wbf.objects == {}
    wbf.write_failed(obj, offs, errno.EIO, 7.0)
    assert (wbf.npages, wbf.since, wbf.last_error) == (3, 7.0, errno.EIO)
    wbf.page_gone(obj, offs[0])
    wbf.page_gone(other, offs[1])  # not its page: nothing happens
    wbf.page_gone(obj, 99 * PAGE)
    assert wbf.npages == 2
    changed = wbf.change_event()
    wbf.page_gone(obj, offs[1])
    assert not changed.is_set()
    wbf.page_gone(obj, offs[2])
    assert changed.is_set()  # the object left: a waiting pagedaemon looks again
    assert (wbf.npages, wbf.objects, wbf.last_error) == (0, {}, 0)
    assert not wbf.change_event().is_set()


async def test_report(
    uvm: Uvm, obj: UvmObject, new_page: NewPage, autojump_clock: trio.testing.MockClock
) -> None:
    wbf = uvm.wbfail
    calm = wbf.report()
    assert calm == {
        "failed_pages": 0,
        "files": 0,
        "failing_files": 0,
        "last_error": None,
        "stuck_seconds": 0.0,
        "next_retry_seconds": 0.0,
        "timeout": DEFAULT_TIMEOUT,
    }
    offs = dirty_pages(new_page, 2)
    wbf.write_failed(obj, offs, errno.ENOSPC, trio.current_time())
    await trio.sleep(2.5)
    wbf.retry_started(obj, trio.current_time())
    rep = wbf.report()
    assert (rep["failed_pages"], rep["files"], rep["failing_files"]) == (2, 1, 1)
    assert rep["last_error"] == "ENOSPC"
    assert rep["stuck_seconds"] == 2.5
    assert rep["next_retry_seconds"] == 2 * BACKOFF_MIN
    wbf.write_done(obj, offs)


@pytest.mark.broken_vm
def test_audit_checks_the_registry(uvm: Uvm, obj: UvmObject, new_page: NewPage) -> None:
    wbf = uvm.wbfail
    offs = dirty_pages(new_page, 2)
    wbf.write_failed(obj, offs, errno.EIO, 1.0)
    assert audit(uvm) == []
    obj.pages[offs[0]].flags |= PG_CLEAN
    obj.pages[offs[0]].mdattrs = 0
    obj.dirtyoffs.discard(offs[0])
    wbf.objects[obj].pages.add(50 * PAGE)
    bad = audit(uvm)
    assert any("[wbfail]" in b and "is clean" in b for b in bad), bad
    assert any("[wbfail]" in b and "not resident" in b for b in bad), bad
    assert any("[wbfail] wbfail.npages is 2 but 3" in b for b in bad), bad


async def test_uvm_wait_is_bounded_only_while_write_back_fails(
    uvm: Uvm, obj: UvmObject, new_page: NewPage, autojump_clock: trio.testing.MockClock
) -> None:
    """No pagedaemon frees anything here: each uvm_wait sleeps its slice and returns 0 --
    until, with some file's write-back failing, the caller has waited the timeout; then it
    returns that errno at once.  Without a ``since`` (or when nothing fails) it never does."""
    wbf = uvm.wbfail
    wbf.timeout = 2.0
    start = trio.current_time()
    assert await uvm_wait(uvm, "test", 1, start - 100) == 0  # nothing fails: no bound
    assert trio.current_time() - start == UVM_WAIT_TIMEOUT
    offs = dirty_pages(new_page, 1)
    wbf.write_failed(obj, offs, errno.ENOSPC, trio.current_time())
    assert await uvm_wait(uvm, "test") == 0  # no since: no bound
    since = trio.current_time()
    rounds = 0
    while (err := await uvm_wait(uvm, "test", 1, since)) == 0:
        rounds += 1
    assert err == errno.ENOSPC
    assert trio.current_time() - since == 2.0  # the last sleep ends at the deadline
    assert rounds == 2.0 / UVM_WAIT_TIMEOUT
    assert uvm.uvmexp.wb_timeouts == 1
    wbf.write_done(obj, offs)
    assert await uvm_wait(uvm, "test", 1, since) == 0  # no longer failing
