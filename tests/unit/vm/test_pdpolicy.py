"""The page-replacement policies behind the pdpolicy split: the hooks page.py calls, the
victims they name, CLOCK-Pro's hot/cold/test states and non-resident history, and the audit
asking each policy to check itself.  The engine-level tests measure hit ratios on the two
workloads CLOCK-Pro was made for (a loop a little larger than memory, a hot set under
one-shot scans) by counting pages read, never by timing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.unit.engine.enginetools import PAGE, new_engine
from tests.vmtools import alloc, alloc_anon, clock_queues, resident, settle
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnode import Vnode
from ubcfs.vm import audit
from ubcfs.vm.anon import anfree
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import (
    PG_FAKE,
    PQ_ACTIVE,
    PQ_INACTIVE,
    PQ_QUEUES,
    VmPage,
    page_unbusy,
    pageactivate,
    pagedeactivate,
    pageenqueue,
    pagefree,
    pageunwire,
    pagewire,
)
from ubcfs.vm.pdpolicy import POLICIES, make_policy
from ubcfs.vm.pdpolicy_clockpro import (
    PQ_HOTQ,
    PQ_INITIALREF,
    PQ_SPECULATIVE,
    PQ_TEST,
    ClockProPolicy,
)
from ubcfs.vm.pmap import MD_REFERENCED, pmap_page_protect
from ubcfs.vm.uvm import Uvm

NPAGES = 256


def machine(policy: str) -> Uvm:
    return Uvm(NPAGES * PAGE, page_size=PAGE, pdpolicy=policy)


def clockpro(uvm: Uvm) -> ClockProPolicy:
    policy = uvm.pdpolicy
    assert isinstance(policy, ClockProPolicy)
    return policy


def fill(uvm: Uvm, obj: UvmObject, n: int) -> list[VmPage]:
    """``n`` resident, used pages of ``obj`` at offsets 0, PAGE, ..."""
    return [resident(uvm, obj, i * PAGE) for i in range(n)]


def reclaim(uvm: Uvm, n: int) -> list[tuple[int, int]]:
    """Free ``n`` victims the way the pagedaemon would (they are clean and unmapped);
    returns their (object id, offset)."""
    policy = uvm.pdpolicy
    policy.scaninit()
    gone = []
    for _ in range(n):
        pg = policy.selectvictim()
        assert pg is not None
        assert pg.pqflags & PQ_QUEUES, "a victim is still queued"
        gone.append((id(pg.uobject), pg.offset))
        pmap_page_protect(uvm, pg, 0)
        pagefree(uvm, pg)
    return gone


# --- both policies --------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_hooks_keep_the_counts_and_the_audit_clean(policy: str) -> None:
    uvm = machine(policy)
    obj = UvmObject(uvm, "f")
    pages = fill(uvm, obj, 100)
    exp = uvm.uvmexp
    assert exp.active + exp.inactive == 100
    for pg in pages[::3]:
        pagedeactivate(uvm, pg)
    for pg in pages[::5]:
        pagewire(uvm, pg)
        assert not pg.pqflags & PQ_QUEUES
    for pg in pages[::5]:
        pageunwire(uvm, pg)
        assert pg.pqflags & PQ_QUEUES
    uvm.tune()
    reclaim(uvm, 20)
    assert exp.active + exp.inactive == 80
    assert audit.audit(uvm) == []


@pytest.mark.parametrize("policy", POLICIES)
def test_a_wired_page_is_never_queued(policy: str) -> None:
    uvm = machine(policy)
    obj = UvmObject(uvm, "f")
    pg = alloc(uvm, obj, 0)
    pagewire(uvm, pg)
    settle(uvm, pg)  # activation of a wired page: no queue
    pageenqueue(uvm, pg)
    pagedeactivate(uvm, pg)
    assert not pg.pqflags & PQ_QUEUES
    pageunwire(uvm, pg)
    assert pg.pqflags & PQ_QUEUES
    assert audit.audit(uvm) == []


def test_an_unknown_policy_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="not one of clock, clockpro"):
        Uvm(NPAGES * PAGE, page_size=PAGE, pdpolicy="lru")
    with pytest.raises(ValueError, match="not one of"):
        make_policy("", machine("clock"))


# --- the clock ------------------------------------------------------------------------------


def test_clock_victims_come_from_the_inactive_head_and_referenced_ones_stay() -> None:
    uvm = machine("clock")
    obj = UvmObject(uvm, "f")
    a, b, c = fill(uvm, obj, 3)
    for pg in (a, b, c):
        pagedeactivate(uvm, pg)
    q = clock_queues(uvm)
    assert list(q.inactive) == [a, b, c]
    b.mdattrs |= MD_REFERENCED  # b is used (as an access through a mapping would mark it)
    uvm.pdpolicy.scaninit()
    assert uvm.pdpolicy.selectvictim() is a
    pagefree(uvm, a)
    assert uvm.pdpolicy.selectvictim() is c  # b was referenced: reactivated, skipped
    assert list(q.active) == [b]
    assert uvm.uvmexp.pdreact == 1
    assert audit.audit(uvm) == []


# --- CLOCK-Pro ------------------------------------------------------------------------------


def test_clockpro_new_pages_are_cold_on_test_and_the_first_use_is_not_counted() -> None:
    uvm = machine("clockpro")
    obj = UvmObject(uvm, "f")
    cp = clockpro(uvm)
    pages = fill(uvm, obj, 200)
    first = pages[0]
    # The oldest pages left newq: cold, on test, their queueing use forgotten.
    assert first.pqflags & PQ_INACTIVE
    assert first.pqflags & PQ_TEST
    assert not first.pqflags & PQ_INITIALREF
    assert cp.ncold == uvm.uvmexp.inactive == 200
    assert pages[-1].pqflags & PQ_INITIALREF  # still in newq
    assert audit.audit(uvm) == []


def test_clockpro_a_cold_page_used_again_on_test_turns_hot() -> None:
    uvm = machine("clockpro")
    obj = UvmObject(uvm, "f")
    cp = clockpro(uvm)
    pages = fill(uvm, obj, 200)
    uvm.tune()
    for pg in pages[:20]:
        pageactivate(uvm, pg)  # used again while cold and on test
    reclaim(uvm, 10)
    hot = [pg for pg in pages[:20] if pg.pqflags & PQ_ACTIVE]
    assert hot, "no page turned hot"
    assert cp.counts["cold_to_hot"] == len(hot)
    for pg in hot:
        assert not pg.pqflags & PQ_TEST
    assert audit.audit(uvm) == []


def test_clockpro_a_page_evicted_on_test_and_read_again_soon_starts_hot() -> None:
    uvm = machine("clockpro")
    obj = UvmObject(uvm, "f")
    cp = clockpro(uvm)
    fill(uvm, obj, 200)
    uvm.tune()
    gone = reclaim(uvm, 5)
    assert cp.counts["nres_recorded"] == 5
    _, offset = gone[0]
    back = resident(uvm, obj, offset)
    assert back.pqflags & PQ_ACTIVE, "remembered as recently evicted: hot at once"
    assert cp.counts["nres_found"] == 1
    other = resident(uvm, obj, 300 * PAGE)  # never seen before: cold, on test
    assert other.pqflags & PQ_INACTIVE
    assert other.pqflags & PQ_TEST
    assert audit.audit(uvm) == []


def test_clockpro_read_ahead_is_speculative_until_used() -> None:
    uvm = machine("clockpro")
    obj = UvmObject(uvm, "f")
    cp = clockpro(uvm)
    pg = alloc(uvm, obj, 0)
    pg.flags &= ~PG_FAKE  # read ahead: the read completed, nobody has used it yet
    pageenqueue(uvm, pg)
    page_unbusy(uvm, pg)
    assert pg.pqflags & PQ_SPECULATIVE
    assert pg.pqflags & PQ_INACTIVE
    assert not pg.pqflags & PQ_TEST, "read-ahead is not on test"
    pageactivate(uvm, pg)  # the read-ahead hit
    assert not pg.pqflags & PQ_SPECULATIVE
    assert pg.pqflags & PQ_INITIALREF
    assert pg.pqflags & PQ_TEST
    assert cp.counts["speculative_hits"] == 1
    assert audit.audit(uvm) == []


def test_clockpro_keeps_the_cold_share_at_its_target() -> None:
    uvm = machine("clockpro")
    obj = UvmObject(uvm, "f")
    cp = clockpro(uvm)
    pages = fill(uvm, obj, 200)
    uvm.tune()
    for _ in range(6):
        for pg in pages:
            if pg.pqflags & PQ_QUEUES:
                pageactivate(uvm, pg)
        reclaim(uvm, 8)
    assert cp.npages - cp.ncold > 0, "a working set used over and over is hot"
    # Hand-hot turned hot pages cold up to the target before the last victim went.
    assert cp.ncold >= cp.coldtarget - 1
    assert cp.counts["hot_to_cold"] + cp.counts["cold_to_hot"] > 0
    assert audit.audit(uvm) == []


async def test_clockpro_forgets_a_freed_anon() -> None:
    uvm = machine("clockpro")
    cp = clockpro(uvm)
    anon, pg = alloc_anon(uvm)
    settle(uvm, pg)
    key = (id(anon), 0)
    cp._nres_record(pg)
    anon.ref = 0
    await anfree(uvm, anon)
    assert not cp._nres_lookupremove(*key), "the freed anon's cookie is gone"


@pytest.mark.broken_vm
@pytest.mark.parametrize(
    ("damage", "finding"),
    [
        ("cold_in_hotq", "cold"),
        ("ncold", "ncold is"),
        ("two_queue_flags", "more than one queue flag"),
        ("initialref_out_of_newq", "left newq with PQ_INITIALREF"),
        ("npages", "npages is"),
    ],
)
def test_the_audit_asks_clockpro_to_check_itself(damage: str, finding: str) -> None:
    uvm = machine("clockpro")
    obj = UvmObject(uvm, "f")
    cp = clockpro(uvm)
    pages = fill(uvm, obj, 200)
    assert audit.audit(uvm) == []
    cold = next(pg for pg in pages if pg.pqflags & PQ_INACTIVE and not pg.pqflags & PQ_INITIALREF)
    if damage == "cold_in_hotq":
        cp._queue_of(cold).remove(cold)
        cp.hotq.insert_tail(cold)
    elif damage == "ncold":
        cp.ncold += 1
    elif damage == "two_queue_flags":
        cold.pqflags |= PQ_HOTQ
    elif damage == "initialref_out_of_newq":
        cold.pqflags |= PQ_INITIALREF
    else:
        cp.npages -= 1
    found = [v for v in audit.audit(uvm) if v.startswith("[1] ") and finding in v]
    assert found, audit.audit(uvm)


# --- hit ratios through the engine ------------------------------------------------------------


def _file(path: Path, npages: int) -> Path:
    path.write_bytes(os.urandom(npages * PAGE))
    return path


async def _read_all(eng: Engine, vp: Vnode, start: int, length: int) -> None:
    for off in range(start, start + length, 64 * 1024):
        err, _ = await eng.read(vp, off, 64 * 1024)
        assert err == 0


async def _loop_hits(tmp_path: Path, policy: str) -> float:
    """Read a file 1.5 times the memory from start to end six times; the hit ratio of the
    last five passes."""
    frames = 512
    size = 768 * PAGE
    path = _file(tmp_path / f"loop-{policy}", 768)
    eng = new_engine(frames, nwins=8, pdpolicy=policy)
    async with eng.running():
        vp = await eng.open(str(path))
        await _read_all(eng, vp, 0, size)
        before = eng.uvm.uvmexp.pageins
        for _ in range(5):
            await _read_all(eng, vp, 0, size)
        ins = eng.uvm.uvmexp.pageins - before
        assert audit.audit(eng.uvm) == []
    return 1 - ins / (5 * 768)


async def _scan_hits(tmp_path: Path, policy: str) -> float:
    """A hot set of half the memory read again and again, with a one-shot scan of as much
    as the whole memory between its passes; the hot set's hit ratio."""
    frames = 512
    hot = _file(tmp_path / f"hot-{policy}", 256)
    cold = _file(tmp_path / f"cold-{policy}", 4 * frames)
    eng = new_engine(frames, nwins=8, pdpolicy=policy)
    exp = eng.uvm.uvmexp
    hot_ins = 0
    async with eng.running():
        vh = await eng.open(str(hot))
        vc = await eng.open(str(cold))
        await _read_all(eng, vh, 0, 256 * PAGE)
        for i in range(8):
            before = exp.pageins
            await _read_all(eng, vh, 0, 256 * PAGE)
            hot_ins += exp.pageins - before
            await _read_all(eng, vc, (i % 4) * frames * PAGE, frames * PAGE)
        assert audit.audit(eng.uvm) == []
    return 1 - hot_ins / (8 * 256)


async def test_clockpro_hits_on_a_loop_larger_than_memory_where_the_clock_misses(
    tmp_path: Path,
) -> None:
    clock = await _loop_hits(tmp_path, "clock")
    pro = await _loop_hits(tmp_path, "clockpro")
    assert clock < 0.05, f"the clock evicts each page just before its reuse: {clock:.3f}"
    assert pro > 0.2, f"CLOCK-Pro keeps part of the loop hot: {pro:.3f}"


async def test_clockpro_keeps_a_hot_set_through_one_shot_scans(tmp_path: Path) -> None:
    clock = await _scan_hits(tmp_path, "clock")
    pro = await _scan_hits(tmp_path, "clockpro")
    assert pro > clock + 0.2, f"clockpro {pro:.3f} vs clock {clock:.3f}"


def test_pagereclaimable_answers_as_the_policy_would_choose() -> None:
    uvm = machine("clock")
    obj = UvmObject(uvm, "f")
    (a,) = fill(uvm, obj, 1)
    assert not uvm.pdpolicy.pagereclaimable(a), "active"
    pagedeactivate(uvm, a)
    assert uvm.pdpolicy.pagereclaimable(a)
    a.mdattrs |= MD_REFERENCED
    assert not uvm.pdpolicy.pagereclaimable(a), "used since it was deactivated"

    uvm = machine("clockpro")
    obj = UvmObject(uvm, "f")
    pages = fill(uvm, obj, 200)
    cold = pages[0]  # out of newq: cold, on test
    assert cold.pqflags & PQ_TEST
    assert not uvm.pdpolicy.pagereclaimable(cold), "on test: hand-cold must remember it"
    cold.pqflags &= ~PQ_TEST
    assert uvm.pdpolicy.pagereclaimable(cold)
    pageactivate(uvm, cold)  # a use sets PQ_REFERENCED, not a pmap bit
    assert not uvm.pdpolicy.pagereclaimable(cold)
    assert not uvm.pdpolicy.pagereclaimable(pages[-1]), "new, queued because it was used"


def test_the_reports_have_what_stat_and_top_show() -> None:
    uvm = machine("clock")
    fill(uvm, UvmObject(uvm, "f"), 10)
    rep = uvm.pdpolicy.report()
    assert (rep["active_pages"], rep["inactive_pages"]) == (10, 0)
    assert rep["inactive_target"] == uvm.uvmexp.inactarg
    uvm = machine("clockpro")
    fill(uvm, UvmObject(uvm, "f"), 100)
    rep = uvm.pdpolicy.report()
    assert sum(rep[f"{q}_pages"] for q in ("newq", "coldq", "hotq", "listq")) == 100
    assert rep["hot"] + rep["cold"] == 100
    assert rep["cold_target"] == clockpro(uvm).coldtarget
    assert rep["nonresident"] == 0
    assert rep["nres_recorded"] == 0
