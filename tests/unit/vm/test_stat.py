"""uvmexp counters and the ``ubcfs stat --json`` report (design.md section 4)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from pagers.backing_io import BackingIO
from pagers.swap import Swap
from tests.design_contract import DESIGN_COUNTERS, DESIGN_PAGES
from tests.vmtools import alloc_anon, settle
from ubcfs.vm.page import PG_CLEAN, PGA_ZERO, VmPage, pagedeactivate, pagewire
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import Pmap, pmap_enter, store
from ubcfs.vm.stat import Uvmexp, snapshot
from ubcfs.vm.uvm import Uvm

NewPage = Callable[..., VmPage]


def test_snapshot_has_every_key_design_md_names(uvm: Uvm) -> None:
    snap = snapshot(uvm)
    assert snap["page_size"] == 4096
    assert set(DESIGN_PAGES) <= set(snap["pages"])
    assert set(DESIGN_COUNTERS) <= set(snap["counters"])
    assert set(snap["swap"]) >= {"total", "used"}
    assert all(isinstance(v, int) for v in snap["counters"].values())
    json.dumps(snap)  # it is what `ubcfs stat --json` prints


def test_snapshot_of_a_fresh_machine(uvm: Uvm) -> None:
    snap = snapshot(uvm)
    assert {k: snap["pages"][k] for k in DESIGN_PAGES} == {
        "total": 64,
        "free": 64,
        "active": 0,
        "inactive": 0,
        "wired": 0,
        "dirty": 0,
        "file": 0,
        "anon": 0,
    }
    assert all(snap["counters"][k] == 0 for k in DESIGN_COUNTERS)
    assert snap["swap"] == {"total": 0, "used": 0, "bad": 0}


def test_snapshot_follows_the_machine(uvm: Uvm, new_page: NewPage, pmaps: list[Pmap]) -> None:
    clean = new_page()
    zeroed = new_page(flags=PGA_ZERO)  # not clean: the backing store has no copy
    written = new_page()
    wired = new_page()
    pagewire(uvm, wired)
    pagedeactivate(uvm, clean)
    _, anon_pg = alloc_anon(uvm)
    settle(uvm, anon_pg)
    pmap_enter(pmaps[0], 0, written, Prot.RW, 0)
    store(pmaps[0], 0, b"x")  # modified through a mapping: dirty though PG_CLEAN
    snap = snapshot(uvm)
    pages = snap["pages"]
    assert (pages["total"], pages["free"]) == (64, 59)
    assert (pages["active"], pages["inactive"], pages["wired"]) == (3, 1, 1)
    assert (pages["file"], pages["anon"]) == (4, 1)
    assert pages["dirty"] == 2
    assert not zeroed.flags & PG_CLEAN
    assert snap["counters"]["pmap_enter"] == 1


def test_snapshot_reports_swap(uvm: Uvm, tmp_path: Path) -> None:
    io = BackingIO()
    swap = Swap(uvm, str(tmp_path / "swap"), 128 * uvm.page_size, io)
    swap.attach()
    try:
        assert swap.alloc(7, lessok=False) == (1, 7)
        swap.markbad(3)
        assert snapshot(uvm)["swap"] == {"total": 128, "used": 7, "bad": 1}
        assert (uvm.swap_total(), uvm.swap_used(), uvm.swap_bad()) == (128, 7, 1)
        swap.free(1, 7)
        swap.bad.clear()
        swap.free(3)
    finally:
        swap.close()
        io.close()
    assert snapshot(uvm)["swap"] == {"total": 0, "used": 0, "bad": 0}


def test_uvmexp_as_dict_names_every_counter() -> None:
    d = Uvmexp(npages=64, free=64).as_dict()
    assert (d["npages"], d["free"], d["reserve_kernel"], d["reserve_pagedaemon"]) == (64, 64, 5, 1)
    assert set(DESIGN_COUNTERS) <= set(d)
