"""Simulated processes on files of the engine: mmap (shared, private, anonymous), faults,
copy-on-write, mlock/munlock with VM_FAULT_WIREMAX, vslock/vsunlock (physio), truncation of
wired pages (the later unwire skips them), the PMAP_CANFAIL retry, interrupt-safe maps, and
rule 16 of the audit (reference §7-8, §11 scenarios 1, 3, 13, 15, 21)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import trio
import trio.testing

from pagers.backing_io import IOKind
from tests.unit.engine.enginetools import (
    PAGE,
    assert_sound,
    gated_io,
    new_engine,
    page_is_free,
    pattern,
)
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnode import Vnode
from ubcfs.vm import audit
from ubcfs.vm.diag import Panic
from ubcfs.vm.fault import (
    FAULT_NOMEM_WAIT,
    VM_FAULT_NORMAL,
    uvm_fault,
    uvm_fault_unwire,
    uvm_fault_unwire_locked,
)
from ubcfs.vm.map import VM_MAP_INTRSAFE, uvm_map_lookup_entry, uvmspace_alloc
from ubcfs.vm.page import PG_BUSY, PG_RDONLY
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import Pte, pmap_lookup
from ubcfs.vm.proc import (
    Proc,
    ProcTable,
    proc_load,
    proc_store,
    sys_mlock,
    sys_mmap,
    sys_mprotect,
    sys_munlock,
    sys_munmap,
    vslock,
    vsunlock,
)

RW = Prot.RW.value
R = Prot.READ.value


async def _file(eng: Engine, tmp_path: Path, data: bytes, name: str = "f") -> Vnode:
    path = tmp_path / name
    path.write_bytes(data)
    return await eng.open(str(path))


def _mapmap(eng: Engine, procs: ProcTable) -> None:
    """Every process map is also registered for the audit; the engine is sound."""
    assert all(p.vm in eng.uvm.maps for p in procs.procs.values())
    assert_sound(eng)


def _pte(proc: Proc, va: int) -> Pte | None:
    ent = pmap_lookup(proc.vm.pmap, va >> proc.vm.uvm.page_shift)
    assert ent is None or isinstance(ent, Pte)
    return ent


async def test_shared_mapping_sees_reads_and_writes_of_the_file(tmp_path: Path) -> None:
    """A store through a MAP_SHARED mapping is what read() returns (same frames), and a
    write() is what the next load sees."""
    data = pattern(1, 4 * PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, data)
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        err, va = sys_mmap(p, 4 * PAGE, vp.uobj, 0, RW, private=False)
        assert err == 0
        assert await proc_load(p, va + PAGE, 16) == (0, data[PAGE : PAGE + 16])
        assert await proc_store(p, va + 2 * PAGE + 5, b"hello") == 0
        err, got = await eng.read(vp, 2 * PAGE, PAGE)
        assert err == 0
        assert bytes(got[5:10]) == b"hello"
        assert await eng.write(vp, 3 * PAGE, b"W" * 8) == (0, 8)
        assert await proc_load(p, va + 3 * PAGE, 8) == (0, b"W" * 8)
        _mapmap(eng, procs)
        assert await eng.fsync(vp) == 0
        await procs.exit(p)
        assert await eng.release(vp) == 0
        assert_sound(eng)
    got_file = (tmp_path / "f").read_bytes()
    assert got_file[2 * PAGE + 5 : 2 * PAGE + 10] == b"hello"


async def test_private_mapping_copies_on_write(tmp_path: Path) -> None:
    """A store through a MAP_PRIVATE mapping promotes the page into an anon: the process
    sees its store, the file and other processes do not; a shared reader is unaffected."""
    data = pattern(2, 2 * PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, data)
        procs = ProcTable(eng.uvm)
        a, b = procs.proc_new(), procs.proc_new()
        _, va = sys_mmap(a, 2 * PAGE, vp.uobj, 0, RW, private=True)
        _, vb = sys_mmap(b, 2 * PAGE, vp.uobj, 0, R, private=False)
        assert await proc_load(a, va, 4) == (0, data[:4])
        pte = _pte(a, va)
        assert pte is not None
        assert not pte.prot & Prot.WRITE
        copies = eng.uvm.uvmexp.cow_copies
        assert await proc_store(a, va, b"PRIV") == 0
        assert eng.uvm.uvmexp.cow_copies == copies + 1
        assert await proc_load(a, va, 8) == (0, b"PRIV" + data[4:8])
        assert await proc_load(b, vb, 4) == (0, data[:4])
        err, got = await eng.read(vp, 0, 4)
        assert err == 0
        assert bytes(got) == data[:4]
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)
    assert (tmp_path / "f").read_bytes() == data


async def test_anonymous_memory_is_zero_then_keeps_stores() -> None:
    async with new_engine().running() as eng:
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        err, va = sys_mmap(p, 3 * PAGE, None, 0, RW, private=True)
        assert err == 0
        assert await proc_load(p, va + PAGE, 8) == (0, bytes(8))
        assert await proc_store(p, va + 2 * PAGE, b"anon") == 0
        assert await proc_load(p, va + 2 * PAGE, 4) == (0, b"anon")
        assert eng.uvm.uvmexp.anonpages == 2
        _mapmap(eng, procs)
        await procs.exit(p)
        assert eng.uvm.uvmexp.anonpages == 0
        assert not eng.uvm.amaps
        assert_sound(eng)


async def test_access_errors_are_errnos(tmp_path: Path) -> None:
    """SIGSEGV- and SIGBUS-like outcomes (scenario 21): no mapping, protection, past EOF."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(3, PAGE + 100))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 4 * PAGE, vp.uobj, 0, R, private=False)
        assert (await proc_load(p, va + 64 * PAGE, 1))[0] == errno.EFAULT
        assert await proc_store(p, va, b"x") == errno.EACCES
        assert (await proc_load(p, va + PAGE + 50, 10))[0] == 0  # the last, partial page
        assert (await proc_load(p, va + 2 * PAGE, 1))[0] == errno.EINVAL  # past EOF
        assert sys_mprotect(p, va, PAGE, RW) == errno.EACCES  # beyond its maximum
        assert sys_mmap(p, 0, vp.uobj, 0, R, private=False)[0] == errno.EINVAL
        assert sys_mmap(p, PAGE, vp.uobj, 1, R, private=False)[0] == errno.EINVAL
        assert await sys_munmap(p, va + 1, PAGE) == errno.EINVAL
        assert await sys_mlock(p, va + 64 * PAGE, PAGE) == errno.ENOMEM
        await procs.exit(p)
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_mlock_wires_and_munlock_unwires(tmp_path: Path) -> None:
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(4, 4 * PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 4 * PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va + PAGE, 2 * PAGE) == 0
        assert eng.uvm.uvmexp.wired == 2
        assert p.vm.pmap.wired_count == 2
        assert len(p.vm.entries) == 3  # clipped around the locked range
        pg = vp.uobj.pages[PAGE]
        assert pg.wire_count == 1
        assert await sys_mlock(p, va + PAGE, 2 * PAGE) == 0  # locks do not stack
        assert pg.wire_count == 1
        _mapmap(eng, procs)
        assert await sys_munlock(p, va, 4 * PAGE) == 0
        assert eng.uvm.uvmexp.wired == 0
        assert p.vm.pmap.wired_count == 0
        assert pg.wire_count == 0
        _mapmap(eng, procs)
        await procs.exit(p)
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_wired_truncate_unwire_skips_vanished_pages(tmp_path: Path) -> None:
    """Scenario 1: mmap MAP_SHARED, mlock, truncate below the locked range; the wired pages
    are freed with their wired mappings; munlock skips them (``unwire_skips``) instead of
    panicking; the process then faults there as past EOF; re-extended, the file reads
    zeros there, never the old data."""
    data = pattern(5, 4 * PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, data)
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 4 * PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va, 4 * PAGE) == 0
        gone = [vp.uobj.pages[off] for off in (2 * PAGE, 3 * PAGE)]
        assert await eng.truncate(vp, 2 * PAGE) == 0
        assert all(page_is_free(pg) for pg in gone)
        assert _pte(p, va + 2 * PAGE) is None
        assert eng.uvm.uvmexp.wired == 2
        _mapmap(eng, procs)  # rule 16 allows the two vanished wired addresses
        assert (await proc_load(p, va + 2 * PAGE, 1))[0] == errno.EINVAL
        skips = eng.uvm.uvmexp.unwire_skips
        assert await sys_munlock(p, va, 4 * PAGE) == 0
        assert eng.uvm.uvmexp.unwire_skips == skips + 2
        assert eng.uvm.uvmexp.wired == 0
        assert await eng.truncate(vp, 4 * PAGE) == 0
        assert await proc_load(p, va + 2 * PAGE, 8) == (0, bytes(8))
        assert await proc_load(p, va, 8) == (0, data[:8])
        _mapmap(eng, procs)
        await procs.exit(p)
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_wired_truncate_then_exit_and_munmap(tmp_path: Path) -> None:
    """The other unwire paths of scenario 1: munmap of a wired range and exit both skip
    the vanished pages."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(6, 4 * PAGE))
        procs = ProcTable(eng.uvm)
        a, b = procs.proc_new(), procs.proc_new()
        _, va = sys_mmap(a, 4 * PAGE, vp.uobj, 0, RW, private=False)
        _, vb = sys_mmap(b, 4 * PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(a, va, 4 * PAGE) == 0
        assert await sys_mlock(b, vb + 3 * PAGE, PAGE) == 0
        assert vp.uobj.pages[3 * PAGE].wire_count == 2
        assert await eng.truncate(vp, PAGE) == 0
        skips = eng.uvm.uvmexp.unwire_skips
        assert await sys_munmap(a, va, 4 * PAGE) == 0
        assert eng.uvm.uvmexp.unwire_skips == skips + 3
        await procs.exit(b)
        assert eng.uvm.uvmexp.unwire_skips == skips + 4
        assert eng.uvm.uvmexp.wired == 0
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_mlock_private_mapping_copies_to_anons_up_front(tmp_path: Path) -> None:
    """VM_FAULT_WIREMAX (the seed's fix for the ptrace story): mlock of a MAP_PRIVATE
    mapping whose maximum protection includes write wires anon copies, not the vnode's
    pages, even though the mapping is read-only now."""
    data = pattern(7, 2 * PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, data)
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 2 * PAGE, vp.uobj, 0, R, private=True)
        assert await sys_mlock(p, va, 2 * PAGE) == 0
        for i in range(2):
            pte = _pte(p, va + i * PAGE)
            assert pte is not None
            assert pte.wired
            assert pte.pg is not None
            assert pte.pg.uanon is not None, "wired the vnode's page, not an anon copy"
            assert pte.pg.wire_count == 1
        assert all(pg.wire_count == 0 for pg in vp.uobj.pages.values())
        assert await proc_load(p, va, 2 * PAGE) == (0, data)
        assert await proc_store(p, va, b"x") == errno.EACCES  # still read-only
        _mapmap(eng, procs)
        await procs.exit(p)
        assert eng.uvm.uvmexp.wired == 0
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_vslock_inside_mlock_keeps_the_pmap_wiring(tmp_path: Path) -> None:
    """Scenario 3 (mlock + physio, Thorpe 1999): wire counts 1 -> 2 -> 1 -> 0, and the PTE
    stays wired until munlock: a touch after vsunlock takes no fault."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(8, PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va, PAGE) == 0
        pg = vp.uobj.pages[0]
        assert pg.wire_count == 1
        assert await vslock(p, va, PAGE) == 0
        assert pg.wire_count == 2
        assert vsunlock(p, va, PAGE) == 0
        assert pg.wire_count == 1
        pte = _pte(p, va)
        assert pte is not None
        assert pte.wired, "vsunlock cleared the pmap wiring of an mlocked page"
        faults = eng.uvm.uvmexp.faults
        assert await proc_store(p, va, b"io") == 0
        assert eng.uvm.uvmexp.faults == faults  # no fault on the wired mapping
        _mapmap(eng, procs)
        assert await sys_munlock(p, va, PAGE) == 0
        assert pg.wire_count == 0
        assert p.vm.pmap.wired_count == 0
        # vslock alone (no mlock): the pmap wiring goes with vsunlock.
        assert await vslock(p, va, PAGE) == 0
        assert vsunlock(p, va, PAGE) == 0
        assert p.vm.pmap.wired_count == 0
        assert pg.wire_count == 0
        _mapmap(eng, procs)
        await procs.exit(p)
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_fsync_of_mlocked_dirty_pages(tmp_path: Path) -> None:
    """Scenario 13: fsync writes mlocked dirty file pages; the wired mapping takes no fault
    afterwards and the wiring is unchanged."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, bytes(2 * PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 2 * PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va, 2 * PAGE) == 0
        assert await proc_store(p, va + 10, b"locked") == 0
        assert await eng.fsync(vp) == 0
        assert (tmp_path / "f").read_bytes()[10:16] == b"locked"
        assert eng.uvm.uvmexp.wired == 2
        assert p.vm.pmap.wired_count == 2
        faults = eng.uvm.uvmexp.faults
        assert await proc_store(p, va + PAGE, b"again") == 0
        assert eng.uvm.uvmexp.faults == faults
        assert await eng.fsync(vp) == 0
        assert (tmp_path / "f").read_bytes()[PAGE : PAGE + 5] == b"again"
        _mapmap(eng, procs)
        await procs.exit(p)
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_fault_waits_and_retries_when_pv_entries_run_out(tmp_path: Path) -> None:
    """Scenario 15: with the pv pool empty the fault's pmap_enter fails (PMAP_CANFAIL); it
    waits for the pagedaemon, which frees mapped pages (and their pv entries), and
    retries; no page is left busy."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(9, 8 * PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 8 * PAGE, vp.uobj, 0, R, private=False)
        assert await proc_load(p, va, 4) == (0, pattern(9, 8 * PAGE)[:4])
        uvm = eng.uvm
        taken = uvm.pv_free
        uvm.pv_free = 0  # every entry in use elsewhere
        retries = uvm.uvmexp.canfail_retries

        want = pattern(9, 8 * PAGE)[4 * PAGE : 4 * PAGE + 4]
        got: list[tuple[int, bytes]] = []

        async def loader() -> None:
            got.append(await proc_load(p, va + 4 * PAGE, 4))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader)
            with trio.fail_after(10):  # the fault's look-up of holes runs in a thread
                while uvm.uvmexp.canfail_retries < retries + 1:  # noqa: ASYNC110 (a counter)
                    await trio.sleep(0.01)
            await trio.testing.wait_all_tasks_blocked()
            assert not got, "the fault gave up instead of waiting for pv entries"
            uvm.pv_free = taken
            uvm.pages_freed()
        assert got == [(0, want)]
        assert not any(pg.flags & PG_BUSY for pg in vp.uobj.pages.values())
        _mapmap(eng, procs)
        await procs.exit(p)
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_interrupt_safe_map_refuses_faults() -> None:
    """Thorpe's interrupt-safe maps: the fault is refused before the map lock is taken."""
    async with new_engine().running() as eng:
        kmap = uvmspace_alloc(eng.uvm, "kmem", VM_MAP_INTRSAFE)
        with kmap.lock:  # held by an "interrupt handler": a fault must not even try it
            assert await uvm_fault(kmap, 0x10000, Prot.READ.value, VM_FAULT_NORMAL) == errno.EFAULT
        assert eng.uvm.uvmexp.fault_intrsafe == 1
        with kmap.lock:
            assert uvm_map_lookup_entry(kmap, 0x10000) is None


async def test_rule_16_catches_an_unwired_pte_in_a_wired_entry(tmp_path: Path) -> None:
    """The audit's rule 16 is not vacuous: a wired entry whose PTE lost its wiring (what
    the physio bug did) is reported."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(10, PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va, PAGE) == 0
        pte = _pte(p, va)
        assert pte is not None
        pte.wired = False
        p.vm.pmap.wired_count -= 1
        assert any(v.startswith("[16]") for v in audit.audit(eng.uvm))
        pte.wired = True
        p.vm.pmap.wired_count += 1
        assert not audit.audit(eng.uvm)
        await procs.exit(p)
        assert await eng.release(vp) == 0


async def test_a_mapping_keeps_its_object_referenced(tmp_path: Path) -> None:
    """Every map entry holds a reference on its object (clipping adds one per half)."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(11, 4 * PAGE))
        base = vp.uobj.refs
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 4 * PAGE, vp.uobj, 0, RW, private=False)
        assert vp.uobj.refs == base + 1
        assert await sys_mlock(p, va + PAGE, PAGE) == 0
        assert vp.uobj.refs == base + 3  # three entries now
        assert await sys_munmap(p, va, 2 * PAGE) == 0
        assert vp.uobj.refs == base + 1
        await procs.exit(p)
        assert vp.uobj.refs == base
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_partial_munmap_of_anonymous_memory_frees_its_anons() -> None:
    """Per-slot amap references: unmapping half of an anonymous mapping frees the anons of
    that half only."""
    async with new_engine().running() as eng:
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 4 * PAGE, None, 0, RW, private=True)
        for i in range(4):
            assert await proc_store(p, va + i * PAGE, bytes([i + 1]) * 4) == 0
        assert eng.uvm.uvmexp.anonpages == 4
        assert await sys_munmap(p, va + 2 * PAGE, 2 * PAGE) == 0
        assert eng.uvm.uvmexp.anonpages == 2
        assert await proc_load(p, va + PAGE, 4) == (0, b"\x02" * 4)
        assert (await proc_load(p, va + 2 * PAGE, 1))[0] == errno.EFAULT
        _mapmap(eng, procs)
        await procs.exit(p)
        assert eng.uvm.uvmexp.anonpages == 0
        assert_sound(eng)


# --- fork -----------------------------------------------------------------------------------


async def test_fork_copies_private_memory_on_write() -> None:
    """After fork, parent and child share anonymous pages until one writes: each then has
    its own copy; the other keeps the old data."""
    async with new_engine().running() as eng:
        procs = ProcTable(eng.uvm)
        parent = procs.proc_new()
        _, va = sys_mmap(parent, 2 * PAGE, None, 0, RW, private=True)
        assert await proc_store(parent, va, b"before") == 0
        assert await proc_store(parent, va + PAGE, b"second") == 0
        err, child = await procs.fork(parent)
        assert err == 0
        assert child is not None
        assert await proc_load(child, va, 6) == (0, b"before")
        # A read fault of the child maps the shared page read-only: its write then copies.
        assert await proc_load(child, va + PAGE, 6) == (0, b"second")
        assert await proc_store(child, va + PAGE, b"CHILD2") == 0
        assert await proc_load(parent, va + PAGE, 6) == (0, b"second")
        assert await proc_store(parent, va, b"parent") == 0
        assert await proc_load(child, va, 6) == (0, b"before")
        assert await proc_store(child, va, b"child!") == 0
        assert await proc_load(parent, va, 6) == (0, b"parent")
        assert await proc_load(child, va, 6) == (0, b"child!")
        _mapmap(eng, procs)
        await procs.exit(parent)
        assert await proc_load(child, va, 6) == (0, b"child!")
        await procs.exit_all()
        assert eng.uvm.uvmexp.anonpages == 0
        assert not eng.uvm.amaps
        assert_sound(eng)


async def test_fork_of_a_private_file_mapping(tmp_path: Path) -> None:
    """A child's read of a page its parent had promoted maps the shared anon read-only
    (the entry still needs its amap copied): the child's write then copies it."""
    data = pattern(15, PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, data)
        procs = ProcTable(eng.uvm)
        parent = procs.proc_new()
        _, va = sys_mmap(parent, PAGE, vp.uobj, 0, RW, private=True)
        assert await proc_store(parent, va, b"mine") == 0
        _, child = await procs.fork(parent)
        assert child is not None
        assert await proc_load(child, va, 4) == (0, b"mine")
        assert await proc_store(child, va, b"kid!") == 0
        assert await proc_load(parent, va, 4) == (0, b"mine")
        assert await proc_load(child, va, 8) == (0, b"kid!" + data[4:8])
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)
    assert (tmp_path / "f").read_bytes() == data


async def test_fork_shares_a_shared_anonymous_mapping() -> None:
    async with new_engine().running() as eng:
        procs = ProcTable(eng.uvm)
        parent = procs.proc_new()
        _, shared = sys_mmap(parent, PAGE, None, 0, RW, private=False)
        assert await proc_store(parent, shared, b"one") == 0
        _, child = await procs.fork(parent)
        assert child is not None
        assert await proc_store(child, shared, b"two") == 0
        assert await proc_load(parent, shared, 3) == (0, b"two")  # same anon: shared memory
        _mapmap(eng, procs)
        await procs.exit_all()
        assert_sound(eng)


async def test_fork_of_a_wired_entry_copies_for_the_child_at_once() -> None:
    """The parent's wired pages may not be write-protected (the parent would fault on a
    wired mapping): the child gets its copies at fork time, the parent keeps its wiring."""
    async with new_engine().running() as eng:
        procs = ProcTable(eng.uvm)
        parent = procs.proc_new()
        _, va = sys_mmap(parent, PAGE, None, 0, RW, private=True)
        assert await proc_store(parent, va, b"wired") == 0
        assert await sys_mlock(parent, va, PAGE) == 0
        _, child = await procs.fork(parent)
        assert child is not None
        pte = _pte(parent, va)
        assert pte is not None
        assert pte.wired
        assert pte.prot & Prot.WRITE, "fork write-protected a wired mapping"
        faults = eng.uvm.uvmexp.faults
        assert await proc_store(parent, va, b"WIRED") == 0
        assert eng.uvm.uvmexp.faults == faults
        assert await proc_load(child, va, 5) == (0, b"wired")
        _mapmap(eng, procs)
        await procs.exit_all()
        assert eng.uvm.uvmexp.wired == 0
        assert_sound(eng)


# --- ptrace ---------------------------------------------------------------------------------


async def test_ptrace_into_mlocked_private_mapping(tmp_path: Path) -> None:
    """Scenario 2 (PRs 10363 ... 14853): A maps a "library" MAP_PRIVATE and mlocks it; a
    debugger writes into B's copy through uvm_map_extract; the promotion in the shared amap
    removes every mapping of the vnode page -- but A's wired pages are anon copies made at
    mlock time (WIREMAX), so A loses nothing; B exits; A munlocks with nothing skipped."""
    lib = pattern(12, 2 * PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, lib, "lib.so")
        procs = ProcTable(eng.uvm)
        a, b = procs.proc_new(), procs.proc_new()
        _, va = sys_mmap(a, 2 * PAGE, vp.uobj, 0, R, private=True)
        _, vb = sys_mmap(b, 2 * PAGE, vp.uobj, 0, R, private=True)
        assert await sys_mlock(a, va, 2 * PAGE) == 0
        assert await proc_load(b, vb, 4) == (0, lib[:4])
        assert await procs.ptrace_write(b, vb + 8, b"\xcc\xcc") == 0  # a breakpoint
        assert await proc_load(b, vb, 12) == (0, lib[:8] + b"\xcc\xcc" + lib[10:12])
        assert await proc_load(a, va, 12) == (0, lib[:12])
        err, got = await eng.read(vp, 0, 12)
        assert err == 0
        assert bytes(got) == lib[:12]  # the file is untouched
        _mapmap(eng, procs)
        await procs.exit(b)
        skips = eng.uvm.uvmexp.unwire_skips
        assert await sys_munlock(a, va, 2 * PAGE) == 0
        assert eng.uvm.uvmexp.unwire_skips == skips, "A's wired mapping was stripped"
        assert eng.uvm.uvmexp.wired == 0
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_ptrace_with_a_wired_shared_mapping_keeps_it(tmp_path: Path) -> None:
    """Scenario 2's MAP_SHARED variant, which the seed leaves open: A wires the vnode page
    itself (MAP_SHARED, mlock); the promotion in B's shared amap removes every mapping of
    that page, A's wired one too.  This project enters A's mapping again at once
    (``shared_wired_kept``): A keeps seeing the file, its munlock skips nothing, and the
    page is not left wired."""
    lib = pattern(13, PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, lib, "lib.so")
        procs = ProcTable(eng.uvm)
        a, b = procs.proc_new(), procs.proc_new()
        _, va = sys_mmap(a, PAGE, vp.uobj, 0, R, private=False)
        _, vb = sys_mmap(b, PAGE, vp.uobj, 0, R, private=True)
        assert await sys_mlock(a, va, PAGE) == 0
        assert await proc_load(b, vb, 4) == (0, lib[:4])
        assert await procs.ptrace_write(b, vb, b"BP") == 0
        assert eng.uvm.uvmexp.shared_wired_kept == 1
        pte = _pte(a, va)
        assert pte is not None
        assert pte.wired
        assert await proc_load(a, va, 4) == (0, lib[:4])
        assert await proc_load(b, vb, 4) == (0, b"BP" + lib[2:4])
        _mapmap(eng, procs)
        await procs.exit(b)
        skips = eng.uvm.uvmexp.unwire_skips
        assert await sys_munlock(a, va, PAGE) == 0
        assert eng.uvm.uvmexp.unwire_skips == skips
        assert eng.uvm.uvmexp.wired == 0
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_ptrace_write_errors(tmp_path: Path) -> None:
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(14, PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 2 * PAGE, vp.uobj, 0, R, private=True)
        assert await procs.ptrace_write(p, va + 8 * PAGE, b"x") == errno.ENOMEM
        assert await procs.ptrace_write(p, va, b"") == errno.EINVAL
        assert await procs.ptrace_write(p, va + PAGE, b"x") == errno.EINVAL  # past EOF
        assert not procs.kernel_map.entries
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_a_tmpfs_files_mapping_ends_at_its_eof() -> None:
    """A mapping of a tmpfs file (an aobj's data): past its end a load is EINVAL (SIGBUS),
    as tmpfs_getpages refuses; a truncation below a wired page frees it as for a backing
    file, and the unwire skips it."""
    async with new_engine().running() as eng:
        vp = eng.new_anon_vnode("t", (0, 1), 0, 0)
        vp.usecount = 1
        assert await eng.write(vp, 0, pattern(16, 2 * PAGE)) == (0, 2 * PAGE)
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 4 * PAGE, vp.uobj, 0, RW, private=False)
        assert await proc_load(p, va + PAGE, 4) == (0, pattern(16, 2 * PAGE)[PAGE : PAGE + 4])
        assert (await proc_load(p, va + 2 * PAGE, 1))[0] == errno.EINVAL
        assert await sys_mlock(p, va, 2 * PAGE) == 0
        assert await eng.truncate(vp, PAGE) == 0
        assert (await proc_load(p, va + PAGE, 1))[0] == errno.EINVAL
        skips = eng.uvm.uvmexp.unwire_skips
        await procs.exit_all()
        assert eng.uvm.uvmexp.unwire_skips == skips + 1
        assert eng.uvm.uvmexp.wired == 0
        assert_sound(eng)


async def test_a_failed_mlock_leaves_nothing_wired(tmp_path: Path) -> None:
    """mlock of a mapping that runs past EOF fails at the first page past it (EINVAL); the
    pages wired before it are unwired again, PTEs included, and the private pages copied
    before it stay the process's own copies."""
    data = pattern(17, 2 * PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, data)
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, shared = sys_mmap(p, 4 * PAGE, vp.uobj, 0, RW, private=False)
        _, private = sys_mmap(p, 4 * PAGE, vp.uobj, 0, R, private=True)
        assert await sys_mlock(p, shared, 4 * PAGE) == errno.EINVAL
        assert await sys_mlock(p, private, 4 * PAGE) == errno.EINVAL
        assert eng.uvm.uvmexp.wired == 0
        assert p.vm.pmap.wired_count == 0
        assert all(e.wired_count == 0 for e in p.vm.entries)
        assert await eng.write(vp, 0, b"NEW!") == (0, 4)
        assert await proc_load(p, shared, 4) == (0, b"NEW!")
        assert await proc_load(p, private, 4) == (0, data[:4])  # copied by the mlock
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_anonymous_memory_beyond_physical_memory_fails_cleanly() -> None:
    """With no swap, touching more anonymous memory than the machine has cannot be met:
    the fault gives up after FAULT_NOMEM_WAIT seconds with ENOMEM (no hang), and the
    process's exit gives every page back."""
    async with new_engine().running() as eng:
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        npages = eng.uvm.uvmexp.npages
        _, va = sys_mmap(p, 2 * npages * PAGE, None, 0, RW, private=True)
        err = 0
        with trio.fail_after(4 * FAULT_NOMEM_WAIT):
            for i in range(2 * npages):
                err = await proc_store(p, va + i * PAGE, b"x")
                if err:
                    break
        assert err == errno.ENOMEM
        assert eng.uvm.uvmexp.fault_nomem >= 1
        _mapmap(eng, procs)
        await procs.exit_all()
        assert eng.uvm.uvmexp.anonpages == 0
        assert_sound(eng)


async def test_a_protection_fault_in_a_wired_entry_does_not_wire_twice(tmp_path: Path) -> None:
    """mprotect down and up again over an mlocked range: the next store takes a protection
    fault in the wired entry, which must not wire the page a second time (munlock would
    leave it wired for ever)."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(18, PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va, PAGE) == 0
        assert sys_mprotect(p, va, PAGE, R) == 0
        assert await proc_store(p, va, b"x") == errno.EACCES
        assert sys_mprotect(p, va, PAGE, RW) == 0
        faults = eng.uvm.uvmexp.faults
        assert await proc_store(p, va, b"y") == 0
        assert eng.uvm.uvmexp.faults == faults + 1
        pg = vp.uobj.pages[0]
        assert pg.wire_count == 1
        assert await sys_munlock(p, va, PAGE) == 0
        assert pg.wire_count == 0
        assert eng.uvm.uvmexp.wired == 0
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_truncation_under_physio_wiring_and_private_mlock(tmp_path: Path) -> None:
    """The other wirings of scenario 1: a vslock'd range truncated away (vsunlock skips
    the vanished pages), and an mlocked MAP_PRIVATE mapping (its wired pages are anon
    copies: truncation of the file leaves them, and the process keeps its data)."""
    data = pattern(19, 4 * PAGE)
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, data)
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, shared = sys_mmap(p, 4 * PAGE, vp.uobj, 0, RW, private=False)
        _, private = sys_mmap(p, 4 * PAGE, vp.uobj, 0, R, private=True)
        assert await vslock(p, shared, 4 * PAGE) == 0
        assert await sys_mlock(p, private, 4 * PAGE) == 0
        assert eng.uvm.uvmexp.wired == 8
        assert await eng.truncate(vp, PAGE) == 0
        assert eng.uvm.uvmexp.wired == 5  # three file pages went; the anon copies stay
        skips = eng.uvm.uvmexp.unwire_skips
        assert vsunlock(p, shared, 4 * PAGE) == 0
        assert eng.uvm.uvmexp.unwire_skips == skips + 3
        assert await proc_load(p, private + 3 * PAGE, 8) == (0, data[3 * PAGE : 3 * PAGE + 8])
        assert (await proc_load(p, shared + 3 * PAGE, 1))[0] == errno.EINVAL
        _mapmap(eng, procs)
        await procs.exit_all()
        assert eng.uvm.uvmexp.wired == 0
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_vsunlock_after_truncation_and_a_refault(tmp_path: Path) -> None:
    """A vslock'd page truncated away, the file extended again and the address faulted in
    afresh (an unwired mapping of a new page; inside an mlock, a wired one): vsunlock
    skips the page it held instead of unwiring the new one, and munlock then finds its
    own wiring intact."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(20, 2 * PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 2 * PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va + PAGE, PAGE) == 0
        assert await vslock(p, va, 2 * PAGE) == 0
        assert await eng.truncate(vp, 0) == 0
        assert await eng.truncate(vp, 2 * PAGE) == 0
        assert await proc_load(p, va, 2 * PAGE) == (0, bytes(2 * PAGE))
        _mapmap(eng, procs)
        skips = eng.uvm.uvmexp.unwire_skips
        assert vsunlock(p, va, 2 * PAGE) == 0
        assert eng.uvm.uvmexp.unwire_skips == skips + 2
        assert vp.uobj.pages[PAGE].wire_count == 1  # the mlock's wiring of the new page
        assert eng.uvm.uvmexp.wired == 1
        _mapmap(eng, procs)
        assert await sys_munlock(p, va + PAGE, PAGE) == 0
        assert eng.uvm.uvmexp.wired == 0
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_vslock_holds_end_with_the_mapping(tmp_path: Path) -> None:
    """A vsunlock of a range that holds nothing is EINVAL (not a panic), munlock inside a
    vslock keeps the pmap wiring the hold needs, and munmap or exit with a range still
    vslocked unwires its pages (none stays wired for ever)."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(21, 2 * PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 2 * PAGE, vp.uobj, 0, RW, private=False)
        assert await proc_load(p, va, 1) == (0, pattern(21, 2 * PAGE)[:1])
        assert vsunlock(p, va, PAGE) == errno.EINVAL
        assert await vslock(p, va, PAGE) == 0
        assert vsunlock(p, va, 2 * PAGE) == errno.EINVAL  # the second page holds nothing
        assert vp.uobj.pages[0].wire_count == 1  # nothing changed
        assert await sys_mlock(p, va, PAGE) == 0
        assert vp.uobj.pages[0].wire_count == 2
        assert await sys_munlock(p, va, PAGE) == 0
        pte = _pte(p, va)
        assert pte is not None
        assert pte.wired, "munlock cleared a vslock hold's pmap wiring"
        _mapmap(eng, procs)
        assert await sys_munmap(p, va, PAGE) == 0
        assert eng.uvm.uvmexp.wired == 0
        _, va = sys_mmap(p, 2 * PAGE, vp.uobj, 0, RW, private=False)
        assert await vslock(p, va, 2 * PAGE) == 0
        assert await vslock(p, va, PAGE) == 0
        assert vp.uobj.pages[0].wire_count == 2
        _mapmap(eng, procs)
        await procs.exit(p)
        assert eng.uvm.uvmexp.wired == 0
        assert not eng.uvm.page_holds
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_rule_16_counts_every_wiring_of_a_process_page(tmp_path: Path) -> None:
    """The audit's count: a page of a wired entry wired once more than its mappings and
    holds (a double wiring) is a violation, and so is a hold left on a page by a map
    that no longer has it."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(22, 2 * PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 2 * PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va, PAGE) == 0
        assert await vslock(p, va + PAGE, PAGE) == 0
        assert audit.audit(eng.uvm) == []
        pg = vp.uobj.pages[0]
        pg.wire_count += 1
        assert any("[16]" in v and "wire count 2" in v for v in audit.audit(eng.uvm))
        pg.wire_count -= 1
        hold = p.vm.vslocks.pop(va + PAGE)
        assert any("[16]" in v and "vslock hold" in v for v in audit.audit(eng.uvm))
        p.vm.vslocks[va + PAGE] = hold
        assert audit.audit(eng.uvm) == []
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_hole_then_write_allocates_at_the_fault(tmp_path: Path) -> None:
    """Scenario 11 on a backing file: a process's read fault of a hole maps a zero page
    PG_RDONLY (read-only); the first store faults again and allocates the hole's block
    (fallocate KEEP_SIZE) -- and when the disk is full that store fails with ENOSPC, at the
    fault, with nothing changed; a page with data, and the mount's own writes, allocate
    nothing here."""
    async with new_engine().running() as eng:
        path = tmp_path / "sparse"
        path.write_bytes(pattern(23, 2 * PAGE))
        os.truncate(path, 8 * PAGE)  # pages 2-7: a hole
        vp = await eng.open(str(path))
        io = gated_io(eng)
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 8 * PAGE, vp.uobj, 0, RW, private=False)
        assert await proc_load(p, va + 5 * PAGE, 8) == (0, bytes(8))
        pg = vp.uobj.pages[5 * PAGE]
        assert pg.flags & PG_RDONLY
        pte = _pte(p, va + 5 * PAGE)
        assert pte is not None
        assert not pte.prot & Prot.WRITE.value  # read-only until written
        assert await proc_load(p, va, 4) == (0, pattern(23, 2 * PAGE)[:4])
        assert not vp.uobj.pages[0].flags & PG_RDONLY  # data: not a hole
        eng.injector.arm(IOKind.FALLOCATE, errno.ENOSPC, 1)
        assert await proc_store(p, va + 5 * PAGE, b"full") == errno.ENOSPC
        assert pg.flags & PG_RDONLY
        assert await proc_load(p, va + 5 * PAGE, 4) == (0, bytes(4))
        _mapmap(eng, procs)
        before = len(io.fallocate_calls)
        assert await proc_store(p, va + 5 * PAGE, b"room") == 0
        assert io.fallocate_calls[before:] == [(1, 5 * PAGE, PAGE)]
        assert not pg.flags & PG_RDONLY
        assert eng.uvm.uvmexp.gop_allocs == 1
        fd = os.open(path, os.O_RDONLY)
        try:
            assert os.lseek(fd, 5 * PAGE, os.SEEK_DATA) == 5 * PAGE  # allocated already
        finally:
            os.close(fd)
        assert await proc_store(p, va + 8, b"data") == 0  # no hole there: nothing allocated
        assert await proc_load(p, va + 6 * PAGE, 1) == (0, b"\0")
        assert vp.uobj.pages[6 * PAGE].flags & PG_RDONLY
        assert await eng.write(vp, 6 * PAGE + 10, b"via write") == (0, 9)  # the mount's
        assert not vp.uobj.pages[6 * PAGE].flags & PG_RDONLY
        assert len(io.fallocate_calls) == before + 1
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.fsync(vp) == 0
        assert await eng.release(vp) == 0
        data = path.read_bytes()
        assert data[5 * PAGE : 5 * PAGE + 4] == b"room"
        assert data[8:12] == b"data"
        assert data[6 * PAGE + 10 : 6 * PAGE + 19] == b"via write"
        assert_sound(eng)


async def test_vslock_in_a_wired_entry_after_truncation_wires_for_both(tmp_path: Path) -> None:
    """Found by the state machine: an mlocked range truncated away and extended again, then
    vslock'd before any access: its fault maps a new page in a wired entry, which must be
    wired for the entry as well as for the hold (once only, the munlock found a page
    that was not wired, a panic)."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(24, 2 * PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, 2 * PAGE, vp.uobj, 0, RW, private=False)
        assert await sys_mlock(p, va, 2 * PAGE) == 0
        assert await eng.truncate(vp, 0) == 0
        assert await eng.write(vp, PAGE - 1, b"xy") == (0, 2)
        assert await vslock(p, va, 2 * PAGE) == 0
        assert [vp.uobj.pages[o].wire_count for o in (0, PAGE)] == [2, 2]
        _mapmap(eng, procs)
        assert vsunlock(p, va, 2 * PAGE) == 0
        assert [vp.uobj.pages[o].wire_count for o in (0, PAGE)] == [1, 1]
        assert await sys_munlock(p, va, 2 * PAGE) == 0
        assert eng.uvm.uvmexp.wired == 0
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)


async def test_the_unwire_variants_check_the_map_lock(tmp_path: Path) -> None:
    """Thorpe's assertions: uvm_fault_unwire_locked panics without the map lock (under
    DIAGNOSTIC), uvm_fault_unwire takes it itself (and panics if it is already held)."""
    async with new_engine().running() as eng:
        vp = await _file(eng, tmp_path, pattern(25, PAGE))
        procs = ProcTable(eng.uvm)
        p = procs.proc_new()
        _, va = sys_mmap(p, PAGE, vp.uobj, 0, RW, private=False)
        assert await vslock(p, va, PAGE) == 0
        with pytest.raises(Panic, match="not held"):
            uvm_fault_unwire_locked(p.vm, va, va + PAGE)
        with p.vm.lock, pytest.raises(Panic):
            uvm_fault_unwire(p.vm, va, va + PAGE)
        assert vp.uobj.pages[0].wire_count == 1  # neither unwired anything
        assert vsunlock(p, va, PAGE) == 0
        _mapmap(eng, procs)
        await procs.exit_all()
        assert await eng.release(vp) == 0
        assert_sound(eng)
