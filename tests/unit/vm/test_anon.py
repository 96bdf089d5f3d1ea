"""Anons as page owners."""

from __future__ import annotations

from tests.vmtools import alloc_anon, settle
from ubcfs.vm.anon import VmAnon
from ubcfs.vm.page import VmPage, pagefree
from ubcfs.vm.uvm import Uvm


def page_of(anon: VmAnon) -> VmPage | None:
    return anon.page


def test_a_new_anon() -> None:
    anon = VmAnon()
    assert (anon.ref, anon.page, anon.swslot) == (1, None, 0)
    assert not anon.lock.held
    assert repr(anon) == "<VmAnon ref=1 page=None swslot=0>"


def test_anon_page_round_trip(uvm: Uvm) -> None:
    anon, pg = alloc_anon(uvm)
    settle(uvm, pg)
    assert page_of(anon) is pg
    assert "anon" in repr(pg)
    pagefree(uvm, pg)
    assert page_of(anon) is None
    anon2, pg2 = alloc_anon(uvm)
    assert pg2 is pg
    assert pg2.uanon is anon2
    settle(uvm, pg2)
