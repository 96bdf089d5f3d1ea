"""The DIAGNOSTIC checker catches each broken invariant (reference section 11.1).

Every test here breaks one invariant of a sound machine by hand and asserts that ``audit``
names it with its rule tag: proof that the after-test check (conftest) and the stateful
tests' ``@invariant`` can fail.  The machines stay broken, so the tests opt out of the
after-test check.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.vmtools import alloc_anon, clock_queues, settle
from ubcfs.vm import audit
from ubcfs.vm.diag import Panic
from ubcfs.vm.object import LEAF_PAGES, UvmObject
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    PG_PAGEOUT,
    PG_RDONLY,
    PG_RELEASED,
    PG_TABLED,
    PG_WANTED,
    PG_ZERO,
    PQ_ACTIVE,
    PQ_AOBJ,
    PQ_FREE,
    PQ_INACTIVE,
    VmPage,
    page_unbusy,
    pageactivate,
    pagealloc,
    pagedeactivate,
    pagedequeue,
    pagefree,
    pagemarkdirty,
    pagewire,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    MD_MODIFIED,
    PMAP_WIRED,
    KRun,
    Pmap,
    pmap_clear_modify,
    pmap_enter,
    pmap_kenter_pa,
    pmap_page_writable,
    pmap_remove,
)
from ubcfs.vm.pmap import (
    _clear as pmap_clear_slot,
)
from ubcfs.vm.pmap import (
    _set as pmap_set_slot,
)
from ubcfs.vm.uvm import Uvm

pytestmark = pytest.mark.broken_vm

NewPage = Callable[..., VmPage]
VA = 0x10000


def caught(uvm: Uvm, tag: str, text: str = "") -> list[str]:
    """The violations reported under rule ``tag`` (containing ``text``); asserts some."""
    found = [v for v in audit.audit(uvm) if v.startswith(f"[{tag}] ") and text in v]
    assert found, f"no [{tag}] violation containing {text!r} in {audit.audit(uvm)}"
    return found


@pytest.fixture
def busy_machine(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> Uvm:
    """A sound machine with pages in every state and mappings of every kind."""
    a, b, c, d = new_page(), new_page(), new_page(), new_page()
    pagedeactivate(uvm, b)
    new_page(settled=False)  # busy in flight
    pagewire(uvm, c)
    _, anon_pg = alloc_anon(uvm)
    settle(uvm, anon_pg)
    pmap_enter(pmaps[0], VA, a, Prot.RW, Prot.WRITE)
    pmap_enter(pmaps[1], VA, a, Prot.READ, PMAP_WIRED)
    pmap_enter(pmaps[1], VA + 4096, c, Prot.READ, 0)
    pmap_kenter_pa(uvm.kernel_pmap, 0x400000, d.phys_addr, Prot.RW)
    assert audit.audit(uvm) == []
    return uvm


# --- the checker itself -----------------------------------------------------------------


def test_a_sound_machine_passes(busy_machine: Uvm) -> None:
    assert audit.audit(busy_machine) == []
    audit.check(busy_machine)


def test_check_panics_listing_every_violation(busy_machine: Uvm) -> None:
    busy_machine.uvmexp.free += 1
    busy_machine.uvmexp.wired += 1
    n = len(audit.audit(busy_machine))
    assert n >= 2
    with pytest.raises(Panic, match=rf"^{n} invariant violation\(s\):\n  \[") as info:
        audit.check(busy_machine)
    assert "free count" in str(info.value)
    assert "uvmexp.wired" in str(info.value)


# --- rule 1: one state per frame, queues and counts -------------------------------------


def test_rule1_free_count_desync(busy_machine: Uvm) -> None:
    busy_machine.uvmexp.free -= 1
    caught(busy_machine, "1", "free count")


def test_rule1_queue_count_corrupt(busy_machine: Uvm) -> None:
    clock_queues(busy_machine).active.count += 1
    caught(busy_machine, "1", "active queue holds")


def test_rule1_uvmexp_inactive_desync(busy_machine: Uvm) -> None:
    busy_machine.uvmexp.inactive += 1
    caught(busy_machine, "1", "uvmexp.inactive")


def test_rule1_page_twice_on_the_free_lists(busy_machine: Uvm) -> None:
    busy_machine.free_zero.append(busy_machine.free_zero[0])
    caught(busy_machine, "1", "twice on the free lists")


def test_rule1_free_list_page_without_pq_free(busy_machine: Uvm) -> None:
    busy_machine.free_zero[-1].pqflags = 0
    caught(busy_machine, "1", "without PQ_FREE")


def test_rule1_pg_zero_page_that_is_not_zero(busy_machine: Uvm) -> None:
    pg = busy_machine.free_zero[0]
    busy_machine.frame(pg)[100] = 1
    caught(busy_machine, "1", "its frame is not zero")


def test_rule1_zeropages_desync(busy_machine: Uvm) -> None:
    busy_machine.uvmexp.zeropages -= 1
    caught(busy_machine, "1", "zeropages")


def test_rule1_unknown_free_page_with_pg_zero(uvm: Uvm, new_page: NewPage) -> None:
    pagefree(uvm, new_page())
    uvm.free_unknown[0].flags |= PG_ZERO
    caught(uvm, "1", "on free_unknown with PG_ZERO")


def test_rule1_pq_free_page_off_the_free_lists(uvm: Uvm) -> None:
    pg = uvm.free_zero.pop()
    uvm.uvmexp.free -= 1
    uvm.uvmexp.zeropages -= 1
    uvm.uvmexp.kernelpages += 1
    assert pg.pqflags == PQ_FREE
    caught(uvm, "1", "pages have PQ_FREE but")


def test_rule1_lost_page(busy_machine: Uvm, obj: UvmObject) -> None:
    pg = obj.pages[0]
    pagedequeue(busy_machine, pg)  # owned, unbusy, unwired, on no queue
    caught(busy_machine, "1", "is lost")


def test_rule1_unbusy_without_requeue_loses_the_page(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page(settled=False)
    pg.flags &= ~PG_FAKE
    page_unbusy(uvm, pg)  # and the caller forgets pageactivate
    caught(uvm, "1", "is lost")


def test_rule1_queue_back_link_broken(busy_machine: Uvm, new_page: NewPage) -> None:
    new_page()
    pg = clock_queues(busy_machine).active.tail
    assert pg is not None
    pg.pqprev = pg
    caught(busy_machine, "1", "back link")


def test_rule1_queue_cycle(busy_machine: Uvm) -> None:
    pg = clock_queues(busy_machine).active.head
    assert pg is not None
    pg.pqnext = pg
    caught(busy_machine, "1", "cycle")


def test_rule1_queue_flag_on_an_unqueued_page(busy_machine: Uvm, obj: UvmObject) -> None:
    busy = next(pg for pg in obj.pages.values() if pg.flags & PG_BUSY)
    busy.pqflags |= PQ_INACTIVE
    caught(busy_machine, "1", "carry the inactive queue's flag")


def test_rule1_page_count_sum(busy_machine: Uvm) -> None:
    busy_machine.uvmexp.npages += 1
    caught(busy_machine, "1", "not npages")


def test_rule1_reserve_order(busy_machine: Uvm) -> None:
    busy_machine.uvmexp.freemin = busy_machine.uvmexp.reserve_kernel
    caught(busy_machine, "1", "reserve/target order")


# --- rule 2: wiring ---------------------------------------------------------------------


def test_rule2_wired_page_on_the_active_queue(busy_machine: Uvm, obj: UvmObject) -> None:
    pg = obj.pages[0]
    assert pg.pqflags & PQ_ACTIVE
    pg.wire_count = 1  # wired by hand, left on the queue
    busy_machine.uvmexp.wired += 1
    caught(busy_machine, "2", "wired")


def test_rule2_wired_count_desync(busy_machine: Uvm) -> None:
    busy_machine.uvmexp.wired -= 1
    caught(busy_machine, "2", "uvmexp.wired")


def test_rule2_negative_wire_count(busy_machine: Uvm, obj: UvmObject) -> None:
    obj.pages[0].wire_count = -1
    caught(busy_machine, "2", "negative")


def test_owner_counts_desync(busy_machine: Uvm) -> None:
    busy_machine.uvmexp.filepages += 1
    busy_machine.uvmexp.anonpages -= 1
    assert [v for v in audit.audit(busy_machine) if "uvmexp.filepages" in v]
    assert [v for v in audit.audit(busy_machine) if "uvmexp.anonpages" in v]


# --- rule 3: PG_PAGEOUT -----------------------------------------------------------------


def test_rule3_pageout_page_on_a_paging_queue(busy_machine: Uvm, obj: UvmObject) -> None:
    pg = obj.pages[0]
    pg.flags |= PG_BUSY | PG_PAGEOUT
    busy_machine.uvmexp.paging += 1
    caught(busy_machine, "3", "PG_PAGEOUT")


def test_rule3_paging_count_desync(busy_machine: Uvm, obj: UvmObject) -> None:
    # Reference rule 3 (and the audit module's own list): `paging` equals the number of
    # PG_PAGEOUT pages.
    pg = next(pg for pg in obj.pages.values() if pg.flags & PG_BUSY)
    pg.flags |= PG_PAGEOUT  # started a pageout without counting it
    caught(busy_machine, "3", "paging")


# --- rule 4: flag implications ----------------------------------------------------------


@pytest.mark.parametrize("flag", [PG_WANTED, PG_RELEASED, PG_PAGEOUT, PG_FAKE])
def test_rule4_flags_that_need_busy(busy_machine: Uvm, obj: UvmObject, flag: int) -> None:
    pg = obj.pages[0]
    pg.flags |= flag
    if flag == PG_PAGEOUT:
        pagedequeue(busy_machine, pg)
        busy_machine.uvmexp.paging += 1
    caught(busy_machine, "4", "without BUSY")


def test_rule4_unbusy_with_fake_still_set(uvm: Uvm, new_page: NewPage) -> None:
    pg = new_page(settled=False)
    page_unbusy(uvm, pg)  # the filler forgot to clear PG_FAKE
    pageactivate(uvm, pg)
    caught(uvm, "4", "without BUSY")


def test_rule4_released_and_pageout(busy_machine: Uvm, obj: UvmObject) -> None:
    pg = next(pg for pg in obj.pages.values() if pg.flags & PG_BUSY)
    pg.flags |= PG_RELEASED | PG_PAGEOUT
    busy_machine.uvmexp.paging += 1
    caught(busy_machine, "4", "both RELEASED and PAGEOUT")


def test_rule4_free_page_with_other_flags(busy_machine: Uvm) -> None:
    busy_machine.free_zero[0].flags |= PG_BUSY
    caught(busy_machine, "4", "carries other flags")


def test_rule4_free_page_with_an_owner(busy_machine: Uvm, obj: UvmObject) -> None:
    busy_machine.free_zero[0].uobject = obj
    caught(busy_machine, "4", "has an owner")


def test_rule4_free_page_wired(busy_machine: Uvm) -> None:
    busy_machine.free_zero[0].wire_count = 1
    caught(busy_machine, "4", "wired or loaned")


def test_rule4_pg_zero_on_a_paging_queue(busy_machine: Uvm, obj: UvmObject) -> None:
    obj.pages[0].flags |= PG_ZERO
    caught(busy_machine, "4", "PG_ZERO")


def test_rule4_on_both_queues(busy_machine: Uvm, obj: UvmObject) -> None:
    obj.pages[0].pqflags |= PQ_INACTIVE
    caught(busy_machine, "4", "both paging queues")


# --- rule 5: owners ---------------------------------------------------------------------


def test_rule5_page_under_the_wrong_offset(busy_machine: Uvm, obj: UvmObject) -> None:
    pg = obj.pages[0]
    obj.pages.remove(0)
    obj.pages.insert(0x77000, pg)
    caught(busy_machine, "5", "not found by lookup")
    caught(busy_machine, "5", "which is not its page")


def test_rule5_object_page_without_pg_tabled(busy_machine: Uvm, obj: UvmObject) -> None:
    obj.pages[0].flags &= ~PG_TABLED
    caught(busy_machine, "5", "without PG_TABLED")


def test_rule5_object_holds_a_free_page(busy_machine: Uvm, obj: UvmObject) -> None:
    obj.pages.insert(0x99000, busy_machine.free_zero[0])
    caught(busy_machine, "5", "holds free page")


def test_rule5_anon_whose_page_is_another(busy_machine: Uvm) -> None:
    pg = next(p for p in busy_machine.pages if p.uanon is not None)
    assert pg.uanon is not None
    pg.uanon.page = None
    caught(busy_machine, "5", "its anon's page is another")


def test_rule5_anon_page_without_pq_anon(busy_machine: Uvm) -> None:
    pg = next(p for p in busy_machine.pages if p.uanon is not None)
    pg.pqflags = PQ_ACTIVE
    caught(busy_machine, "5", "without PQ_ANON")


def test_rule5_pq_aobj_mismatch(busy_machine: Uvm, obj: UvmObject) -> None:
    obj.pages[0].pqflags |= PQ_AOBJ
    caught(busy_machine, "5", "PQ_AOBJ")


def test_rule5_objectless_page_on_a_queue(uvm: Uvm) -> None:
    pg = pagealloc(uvm, None, 0)
    assert pg is not None
    pg.flags &= ~PG_FAKE
    page_unbusy(uvm, pg)
    pageactivate(uvm, pg)  # kernel pages never go on the paging queues
    caught(uvm, "5", "objectless")


# --- rule 7: free pages have no mappings ------------------------------------------------


def test_rule7_free_page_still_mapped(busy_machine: Uvm, obj: UvmObject) -> None:
    pg = obj.pages[0]
    assert pg.pvlist
    # Free it behind the pmap's back (pagefree itself refuses).
    pagedequeue(busy_machine, pg)
    obj.pages.remove(0)
    pg.uobject, pg.offset, pg.flags, pg.pqflags = None, -1, 0, PQ_FREE
    busy_machine.free_unknown.append(pg)
    busy_machine.uvmexp.free += 1
    busy_machine.uvmexp.filepages -= 1
    caught(busy_machine, "7", "still mapped")
    caught(busy_machine, "7", "maps free page")


# --- rule 9: pv lists and pmaps ---------------------------------------------------------


def test_rule9_pte_missing_from_its_pv_list(busy_machine: Uvm, pmaps: list[Pmap]) -> None:
    pte = pmaps[0].ptes[VA >> 12]
    assert pte.pg is not None
    assert pte.pg.pvlist is not None
    pte.pg.pvlist.remove(pte)
    caught(busy_machine, "9", "missing from its page's pv list")
    caught(busy_machine, "9", "pv entries but")


def test_rule9_pv_entry_not_in_its_pmap(busy_machine: Uvm, pmaps: list[Pmap]) -> None:
    pmap_clear_slot(pmaps[1], VA >> 12)
    pmaps[1].resident_count -= 1
    pmaps[1].wired_count -= 1
    caught(busy_machine, "9", "is not in its pmap")


def test_rule9_resident_and_wired_counts(busy_machine: Uvm, pmaps: list[Pmap]) -> None:
    pmaps[0].resident_count += 1
    pmaps[1].wired_count = 0
    caught(busy_machine, "9", "resident_count")
    caught(busy_machine, "9", "wired_count")


def test_rule9_pv_pool_leak(busy_machine: Uvm) -> None:
    busy_machine.pv_free -= 1
    caught(busy_machine, "9", "pv pool")


def test_rule9_kenter_mapping_in_a_user_pmap(busy_machine: Uvm, pmaps: list[Pmap]) -> None:
    pm = pmaps[2]
    pmap_set_slot(pm, 5, KRun(pm, 5 << 12, 5, [0], int(Prot.READ)))
    pm.resident_count += 1
    pm.wired_count += 1
    busy_machine.kentered[0] += 1
    caught(busy_machine, "9", "in a user pmap")


def test_rule9_kenter_bookkeeping(busy_machine: Uvm) -> None:
    frame = next(i for i, n in enumerate(busy_machine.kentered) if n)
    busy_machine.kentered[frame] += 1
    caught(busy_machine, "9", "kenter bookkeeping")


def test_rule9_empty_pv_list(busy_machine: Uvm, obj: UvmObject) -> None:
    obj.pages[4096].pvlist = []
    caught(busy_machine, "9", "empty (not None) pv list")


def test_rule9_pte_filed_under_the_wrong_va(busy_machine: Uvm, pmaps: list[Pmap]) -> None:
    pm = pmaps[0]
    pte = pm.ptes[VA >> 12]
    pmap_clear_slot(pm, VA >> 12)
    pmap_set_slot(pm, (VA >> 12) + 9, pte)
    caught(busy_machine, "9", "holds foreign")


def test_rule9_pte_frame_mismatch(busy_machine: Uvm, pmaps: list[Pmap]) -> None:
    pmaps[0].ptes[VA >> 12].pa += 4096
    caught(busy_machine, "9", "does not match its page's frame")


# --- rule 10: PG_RDONLY -----------------------------------------------------------------


def test_rule10_writable_mapping_of_an_rdonly_page(
    uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]
) -> None:
    pg = new_page()
    pg.flags |= PG_RDONLY  # a hole: backing blocks not allocated
    pmap_enter(pmaps[0], VA, pg, Prot.READ, 0)
    assert audit.audit(uvm) == []
    pmap_enter(pmaps[0], VA, pg, Prot.RW, 0)  # the bug: a writable mapping anyway
    caught(uvm, "10", "PG_RDONLY")


# --- rule 11: stale translations --------------------------------------------------------


def test_rule11_stale_bookkeeping(busy_machine: Uvm, pmaps: list[Pmap]) -> None:
    pmap_remove(pmaps[0], VA, VA + 4096)
    assert audit.audit(busy_machine) == []  # stale but consistent: fine until update
    pmaps[0].stale.clear()  # flushed without updating the bookkeeping
    caught(busy_machine, "11", "stale-translation bookkeeping")


def _clean_unmapped(obj: UvmObject) -> VmPage:
    return next(pg for pg in obj.pages.values() if pg.flags & PG_CLEAN and not pg.pvlist)


def test_rule12_cleared_pg_clean_without_the_dirty_set(busy_machine: Uvm, obj: UvmObject) -> None:
    pg = _clean_unmapped(obj)
    pg.flags &= ~PG_CLEAN
    caught(busy_machine, "dirty", "not tagged dirty")
    pagemarkdirty(pg)  # the right way
    assert audit.audit(busy_machine) == []


def test_rule12_modified_bit_without_the_dirty_set(busy_machine: Uvm, obj: UvmObject) -> None:
    _clean_unmapped(obj).mdattrs |= MD_MODIFIED
    caught(busy_machine, "dirty", "not tagged dirty")


def test_rule12_writable_mapping_dropped_from_the_dirty_set(
    busy_machine: Uvm, obj: UvmObject
) -> None:
    mapped = [pg for pg in obj.pages.values() if pmap_page_writable(pg)]
    assert mapped
    assert all(pg.offset in obj.dirtyoffs for pg in mapped)
    pmap_clear_modify(mapped[0])
    mapped[0].flags |= PG_CLEAN
    obj.pages.clear_dirty(mapped[0].offset)  # a store through the mapping would be missed
    caught(busy_machine, "dirty", "not tagged dirty")


def test_rule12_dirty_set_names_a_missing_page(busy_machine: Uvm, obj: UvmObject) -> None:
    # A tag on an empty slot of a leaf that holds pages: raw state, as a bug would leave it.
    ps = busy_machine.page_size
    hole = next(off for off in range(0, LEAF_PAGES * ps, ps) if off not in obj.pages)
    obj.pages._leaves[0].dirty |= 1 << (hole // ps)
    obj.pages.ndirty += 1
    caught(busy_machine, "dirty", "not resident")


# --- the after-test check in conftest ---------------------------------------------------


def test_the_after_test_check_fails_a_test_that_breaks_a_machine(tmp_path: Path) -> None:
    """Run a tiny suite with our conftest: an unmarked test that leaves a broken machine
    errors at teardown; the same test marked ``broken_vm`` passes; a sound one passes."""
    tests_dir = Path(__file__).resolve().parents[2]
    pkg = tmp_path / "tests"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "conftest.py").write_text((tests_dir / "conftest.py").read_text())
    (pkg / "vmtools.py").write_text((tests_dir / "vmtools.py").read_text())
    (pkg / "test_inner.py").write_text(
        textwrap.dedent(
            """
            import pytest
            from ubcfs.vm.uvm import Uvm

            def test_breaks():
                Uvm(64 * 512, page_size=512).uvmexp.free -= 1

            @pytest.mark.broken_vm
            def test_breaks_on_purpose():
                Uvm(64 * 512, page_size=512).uvmexp.free -= 1

            def test_sound():
                Uvm(64 * 512, page_size=512)
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "tests"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "ERROR tests/test_inner.py::test_breaks - ubcfs.vm.diag.Panic" in out, out
    assert "PASSED tests/test_inner.py::test_breaks_on_purpose" in out, out
    assert "PASSED tests/test_inner.py::test_sound" in out, out
    assert "3 passed, 1 error" in out, out  # test_breaks: call passed, teardown erred
