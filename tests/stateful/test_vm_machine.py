"""The VM core against a plain model: a hypothesis state machine that allocates, frees, wires,
queues, busies, maps, protects, unmaps, flushes and touches pages on a small machine and
compares everything with a model made of dicts and lists after every step, where it also
runs the DIAGNOSTIC checker.

The model is deliberately naive: per frame the bytes it must hold; per page its busy bit,
wire count, queue and referenced/modified bits; per pmap a dict of mappings and a list of
stale (invalidated, not yet flushed) translations per virtual page.  The machine is small
(64 frames of 512 bytes, three user pmaps plus the kernel pmap, a pv pool of 8 entries) and
starts with a random amount of memory already in use and a random set of mappings, so the
reserves and PMAP_CANFAIL are reached within a few steps.  Rules are synchronous: hypothesis
has no async rules.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.vmtools import clock_queues
from ubcfs.vm import audit
from ubcfs.vm.anon import VmAnon
from ubcfs.vm.diag import Panic
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    PG_RELEASED,
    PG_TABLED,
    PGA_PDAEMON,
    PGA_USERESERVE,
    PGA_ZERO,
    POISON_BYTE,
    PQ_ACTIVE,
    PQ_FREE,
    PQ_INACTIVE,
    PQ_QUEUES,
    VmPage,
    page_unbusy,
    pageactivate,
    pagealloc,
    pagebusy,
    pagedeactivate,
    pagefree,
    pageunwire,
    pagewire,
)
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import (
    PMAP_CANFAIL,
    PMAP_WIRED,
    KRun,
    PageFault,
    Pmap,
    load,
    pmap_clear_modify,
    pmap_clear_reference,
    pmap_create,
    pmap_destroy,
    pmap_enter,
    pmap_is_modified,
    pmap_is_referenced,
    pmap_kenter_pa,
    pmap_kremove,
    pmap_page_protect,
    pmap_protect,
    pmap_remove,
    pmap_unwire,
    pmap_update,
    store,
)
from ubcfs.vm.uvm import Uvm

PS = 512
NPAGES = 64
NUSER = 3  # user pmaps 0..2; index 3 is the kernel pmap
KERNEL = NUSER
NVPN = 6  # user virtual pages per pmap
NKVPN = 4  # kernel virtual pages (kenter windows)
PV_ENTRIES = 8

R, W, X = int(Prot.READ), int(Prot.WRITE), int(Prot.EXECUTE)
RW = R | W
ZERO_FRAME = bytes(PS)
POISON_FRAME = bytes([POISON_BYTE]) * PS

PICK = st.integers(min_value=0, max_value=1 << 20)
USER = st.integers(min_value=0, max_value=NUSER - 1)
ANY_PMAP = st.integers(min_value=0, max_value=NUSER)
VPN = st.integers(min_value=0, max_value=NVPN - 1)
KVPN = st.integers(min_value=0, max_value=NKVPN - 1)
RUN = st.integers(min_value=1, max_value=4)
OFF = st.integers(min_value=0, max_value=PS - 1)
LENGTH = st.integers(min_value=1, max_value=PS + 40)
SEED = st.integers(min_value=0, max_value=255)


@dataclass
class PageModel:
    """What the model knows of one allocated page."""

    pg: VmPage
    kind: str  # "file", "aobj", "anon" or "kernel"
    busy: bool = False
    wire: int = 0
    ref: bool = False
    mod: bool = False


@dataclass
class Mapping:
    pa: int
    prot: int
    wired: bool = False


@dataclass
class Stale:
    pa: int
    prot: int
    managed: bool


@dataclass
class PmapModel:
    maps: dict[int, Mapping] = field(default_factory=dict)
    stale: dict[int, list[Stale]] = field(default_factory=dict)


class VmMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.uvm = Uvm(NPAGES * PS, page_size=PS, pv_entries=PV_ENTRIES)
        self.file = UvmObject(self.uvm, "file")
        self.aobj = UvmObject(self.uvm, "aobj", is_aobj=True)
        self.pmaps: list[Pmap] = [pmap_create(self.uvm, f"p{i}") for i in range(NUSER)]
        self.pmaps.append(self.uvm.kernel_pmap)
        self.next_off = {"file": 0, "aobj": 0}
        # --- the model ---
        # The reserves are tunables (test_page pins their defaults); the rule is the model's.
        self.reserve_kernel = self.uvm.uvmexp.reserve_kernel
        self.reserve_pagedaemon = self.uvm.uvmexp.reserve_pagedaemon
        self.frames: dict[int, bytes] = {pg.phys_addr: ZERO_FRAME for pg in self.uvm.pages}
        self.free_zero: set[int] = set(self.frames)
        self.free_unknown: set[int] = set()
        self.live: dict[int, PageModel] = {}
        self.ballast: set[int] = set()  # pages taken only to make memory short
        self.active: list[int] = []
        self.inactive: list[int] = []
        self.pm: list[PmapModel] = [PmapModel() for _ in range(NUSER + 1)]

    # --- model helpers ------------------------------------------------------------------

    def _candidates(self, owned: bool = False) -> list[int]:
        """Pages the rules work on: all allocated pages but the ballast (``owned``: not
        kernel pages either)."""
        return sorted(
            pa
            for pa, m in self.live.items()
            if pa not in self.ballast and (not owned or m.kind != "kernel")
        )

    def _pick(self, pick: int, *, owned: bool = False) -> PageModel:
        pas = self._candidates(owned)
        return self.live[pas[pick % len(pas)]]

    def _has_owned(self) -> bool:
        return bool(self._candidates(owned=True))

    def _pv_used(self) -> int:
        return sum(len(p.maps) for p in self.pm[:NUSER])

    def _dequeue(self, pa: int) -> None:
        for q in (self.active, self.inactive):
            if pa in q:
                q.remove(pa)

    def _make_stale(self, i: int, vpn: int, pa: int, prot: int, managed: bool) -> None:
        self.pm[i].stale.setdefault(vpn, []).append(Stale(pa, prot, managed))

    def _unmap(self, i: int, vpn: int) -> None:
        """Model of pmap_remove/kremove of one page: the translation goes stale."""
        m = self.pm[i].maps.pop(vpn)
        self._make_stale(i, vpn, m.pa, m.prot, i != KERNEL)

    def _reachable(self) -> list[int]:
        """Frames still reachable through a mapping or a stale translation."""
        pas = {m.pa for p in self.pm for m in p.maps.values()}
        pas.update(s.pa for p in self.pm for lst in p.stale.values() for s in lst)
        return sorted(pas)

    def _translate(self, i: int, vpn: int, write: bool) -> int | None:
        """The model MMU: the frame an access reaches, or None for a fault; sets R/M."""
        need = W if write else R
        cur = self.pm[i].maps.get(vpn)
        found: Mapping | Stale | None = None
        managed = i != KERNEL
        if cur is not None and cur.prot & need:
            found = cur
        else:
            for s in reversed(self.pm[i].stale.get(vpn, [])):
                if s.prot & need:
                    found, managed = s, s.managed
                    break
        if found is None:
            return None
        if managed:
            page = self.live[found.pa]
            page.ref = True
            page.mod = page.mod or write
        return found.pa

    def _va(self, vpn: int) -> int:
        return vpn * PS

    def _free_in_model(self, pa: int) -> None:
        self.live.pop(pa)
        self._dequeue(pa)
        self.frames[pa] = POISON_FRAME  # DIAGNOSTIC poisons freed frames
        self.free_unknown.add(pa)

    # --- set-up -------------------------------------------------------------------------

    @initialize(
        ballast=st.integers(min_value=0, max_value=NPAGES),
        kinds=st.lists(st.sampled_from(["file", "aobj", "anon"]), max_size=8),
        maps=st.lists(
            st.tuples(USER, VPN, PICK, st.sampled_from([R, RW]), st.booleans()),
            max_size=PV_ENTRIES + 2,
        ),
    )
    def start_with_memory_in_use(
        self, ballast: int, kinds: list[str], maps: list[tuple[int, int, int, int, bool]]
    ) -> None:
        """Objectless kernel pages (taken as the pagedaemon would, reserves included), so
        that memory is short from the first step; then some owned pages and mappings."""
        self.alloc("kernel", PGA_USERESERVE | PGA_PDAEMON, ballast)
        self.ballast = set(self.live)
        for kind in kinds:
            self.alloc(kind, PGA_USERESERVE | PGA_PDAEMON, 1)
        for i, vpn, pick, prot, wired in maps:
            if self._candidates():
                self.enter(i, vpn, pick, prot, 0, wired, True)

    # --- allocation and freeing ---------------------------------------------------------

    @rule(
        kind=st.sampled_from(["file", "aobj", "anon", "kernel"]),
        flags=st.sampled_from(
            [
                0,
                PGA_ZERO,
                PGA_PDAEMON,
                PGA_USERESERVE,
                PGA_USERESERVE | PGA_ZERO,
                PGA_USERESERVE | PGA_PDAEMON,
            ]
        ),
        n=st.integers(min_value=1, max_value=8),
    )
    def alloc(self, kind: str, flags: int, n: int) -> None:
        for _ in range(n):
            self._alloc_one(kind, flags)

    def _alloc_one(self, kind: str, flags: int) -> None:
        uvm = self.uvm
        nfree = NPAGES - len(self.live)
        assert uvm.uvmexp.free == nfree
        reserve = flags & PGA_USERESERVE
        refused = (
            nfree == 0
            or (nfree <= self.reserve_kernel and not reserve)
            or (nfree <= self.reserve_pagedaemon and not (reserve and flags & PGA_PDAEMON))
        )
        fails = uvm.uvmexp.pga_fail
        pg: VmPage | None
        if kind in ("file", "aobj"):
            obj = self.file if kind == "file" else self.aobj
            off = self.next_off[kind]
            with obj.vmobjlock:
                pg = pagealloc(uvm, obj, off, flags=flags)
        elif kind == "anon":
            anon = VmAnon()
            with anon.lock:
                pg = pagealloc(uvm, None, 0, anon=anon, flags=flags)
        else:
            pg = pagealloc(uvm, None, 0, flags=flags)
        if refused:
            assert pg is None
            assert uvm.uvmexp.pga_fail == fails + 1
            return
        assert pg is not None
        pa = pg.phys_addr
        assert pa in self.free_zero | self.free_unknown
        zeroed = bool(flags & PGA_ZERO)
        # Zeroed requests prefer known-zero frames, the others the unknown ones.
        if zeroed and self.free_zero:
            assert pa in self.free_zero
        if not zeroed and self.free_unknown:
            assert pa in self.free_unknown
        self.free_zero.discard(pa)
        self.free_unknown.discard(pa)
        if zeroed:
            self.frames[pa] = ZERO_FRAME
        want = PG_BUSY | PG_FAKE | (0 if zeroed else PG_CLEAN)
        if kind in ("file", "aobj"):
            want |= PG_TABLED
            self.next_off[kind] += PS
        assert pg.flags == want
        assert bytes(uvm.frame(pg)) == self.frames[pa]
        # Fill and release it, as a pager would.
        pg.flags &= ~PG_FAKE
        page_unbusy(uvm, pg)
        self.live[pa] = PageModel(pg, kind)
        if kind != "kernel":
            pageactivate(uvm, pg)
            self.active.append(pa)

    def _drop_kernel_and_stale(self, pa: int) -> None:
        """kremove the frame's kenter mappings and flush every pmap whose stale
        translations reach it: what a caller does before the page may be freed."""
        kmodel = self.pm[KERNEL]
        for kvpn in [v for v, m in kmodel.maps.items() if m.pa == pa]:
            pmap_kremove(self.uvm.kernel_pmap, self._va(kvpn), PS)
            self._unmap(KERNEL, kvpn)
        for i, pmap in enumerate(self.pmaps):
            if any(s.pa == pa for lst in self.pm[i].stale.values() for s in lst):
                pmap_update(pmap)
                self.pm[i].stale.clear()

    def _forget_managed(self, pa: int) -> None:
        """Model of pmap_page_protect(NONE): every managed mapping of the frame goes, at
        once (no stale translation)."""
        for p in self.pm[:NUSER]:
            for vpn in [v for v, m in p.maps.items() if m.pa == pa]:
                del p.maps[vpn]

    def _cleanup_and_free(self, page: PageModel) -> None:
        """The correct free sequence: unmap everywhere, kremove, flush, free."""
        pa = page.pg.phys_addr
        pmap_page_protect(self.uvm, page.pg, Prot.NONE)
        self._forget_managed(pa)
        self._drop_kernel_and_stale(pa)
        pagefree(self.uvm, page.pg)
        self._free_in_model(pa)

    @precondition(lambda self: self.live)
    @rule(pick=PICK, ballast=st.booleans())
    def free(self, pick: int, ballast: bool) -> None:
        """Free a page (``ballast``: one of the pages that keep memory short)."""
        if ballast and self.ballast:
            pas = sorted(self.ballast)
            pa = pas[pick % len(pas)]
            self.ballast.discard(pa)
            self._cleanup_and_free(self.live[pa])
        elif self._candidates():
            self._cleanup_and_free(self._pick(pick))

    @precondition(lambda self: self._reachable())
    @rule(pick=PICK)
    def free_while_reachable_panics(self, pick: int) -> None:
        pas = self._reachable()
        pg = self.live[pas[pick % len(pas)]].pg
        with pytest.raises(Panic, match="pagefree"):
            pagefree(self.uvm, pg)

    # --- busy ---------------------------------------------------------------------------

    @precondition(lambda self: self._candidates())
    @rule(pick=PICK, release=st.booleans())
    def busy_or_unbusy(self, pick: int, release: bool) -> None:
        """Busy an unbusy page, or unbusy a busy one (``release``: with PG_RELEASED)."""
        page = self._pick(pick)
        if not page.busy:
            pagebusy(self.uvm, page.pg, "machine")
            page.busy = True
            return
        pa = page.pg.phys_addr
        if release and page.kind == "file":
            # PG_RELEASED (vnode pages only, after the seed): unbusy removes the managed
            # mappings and frees the page.  The kernel's mappings must be gone first.
            self._drop_kernel_and_stale(pa)
            page.pg.flags |= PG_RELEASED
            page_unbusy(self.uvm, page.pg)
            self._forget_managed(pa)
            self._free_in_model(pa)
            return
        page_unbusy(self.uvm, page.pg)
        page.busy = False

    # --- wiring and queues (owned pages only: kernel pages never queue) -----------------

    @precondition(lambda self: self._has_owned())
    @rule(pick=PICK, unwire=st.booleans())
    def wiring(self, pick: int, unwire: bool) -> None:
        """pagewire or pageunwire (which panics on an unwired page)."""
        page = self._pick(pick, owned=True)
        if not unwire:
            pagewire(self.uvm, page.pg)
            if page.wire == 0:
                self._dequeue(page.pg.phys_addr)
            page.wire += 1
            return
        if page.wire == 0:
            with pytest.raises(Panic, match="not wired"):
                pageunwire(self.uvm, page.pg)
            return
        pageunwire(self.uvm, page.pg)
        page.wire -= 1
        if page.wire == 0:
            self.active.append(page.pg.phys_addr)

    @precondition(lambda self: self._has_owned())
    @rule(pick=PICK, deactivate=st.booleans(), clear_ref=st.booleans())
    def requeue(self, pick: int, deactivate: bool, clear_ref: bool) -> None:
        """pageactivate, or pagedeactivate (after pmap_clear_reference, as the pagedaemon
        does, when ``clear_ref``)."""
        page = self._pick(pick, owned=True)
        pa = page.pg.phys_addr
        if not deactivate:
            pageactivate(self.uvm, page.pg)
            self._dequeue(pa)
            if page.wire == 0:
                self.active.append(pa)
            return
        if clear_ref:
            assert pmap_clear_reference(page.pg) is page.ref
            page.ref = False
        pagedeactivate(self.uvm, page.pg)
        if page.wire == 0 and pa not in self.inactive:
            self._dequeue(pa)
            self.inactive.append(pa)

    # --- managed mappings ---------------------------------------------------------------

    @precondition(lambda self: self._candidates())
    @rule(
        i=USER,
        vpn=VPN,
        pick=PICK,
        prot=st.sampled_from([R, RW, R | X, RW | X]),
        access_bits=st.sampled_from([0, R, W, RW, X]),
        wired=st.booleans(),
        canfail=st.booleans(),
        again=st.booleans(),
    )
    def enter(
        self,
        i: int,
        vpn: int,
        pick: int,
        prot: int,
        access_bits: int,
        wired: bool,
        canfail: bool,
        again: bool = False,
    ) -> None:
        """pmap_enter; ``again``: over an existing mapping of the same page (a change of
        protection or wiring in place)."""
        existing = sorted((j, v) for j in range(NUSER) for v in self.pm[j].maps)
        if again and existing:
            i, vpn = existing[pick % len(existing)]
            page = self.live[self.pm[i].maps[vpn].pa]
        else:
            page = self._pick(pick)
        pa = page.pg.phys_addr
        access = access_bits & prot
        flags = access | (PMAP_WIRED if wired else 0) | (PMAP_CANFAIL if canfail else 0)
        model = self.pm[i]
        old = model.maps.get(vpn)
        exhausted = old is None and self._pv_used() >= PV_ENTRIES
        if exhausted and not canfail:
            with pytest.raises(Panic, match="out of pv entries"):
                pmap_enter(self.pmaps[i], self._va(vpn), page.pg, prot, flags)
            return
        rv = pmap_enter(self.pmaps[i], self._va(vpn), page.pg, prot, flags)
        if exhausted:
            assert rv == errno.ENOMEM
            return
        assert rv == 0
        if old is not None and old.pa == pa:
            if old.prot & ~prot:
                self._make_stale(i, vpn, pa, old.prot, True)
            old.prot, old.wired = prot, wired
        else:
            if old is not None:
                self._unmap(i, vpn)
            model.maps[vpn] = Mapping(pa, prot, wired)
        if access & W:
            page.ref = page.mod = True
        elif access:
            page.ref = True

    @rule(i=USER, vpn=VPN, n=RUN)
    def remove(self, i: int, vpn: int, n: int) -> None:
        pmap_remove(self.pmaps[i], self._va(vpn), self._va(vpn + n))
        for v in range(vpn, vpn + n):
            if v in self.pm[i].maps:
                self._unmap(i, v)

    @rule(i=USER, vpn=VPN, n=RUN, prot=st.sampled_from([0, R, RW, X, R | X]))
    def protect(self, i: int, vpn: int, n: int, prot: int) -> None:
        pmap_protect(self.pmaps[i], self._va(vpn), self._va(vpn + n), prot)
        for v in range(vpn, vpn + n):
            m = self.pm[i].maps.get(v)
            if m is None:
                continue
            if not prot & R:
                self._unmap(i, v)
            elif m.prot & ~prot:
                self._make_stale(i, v, m.pa, m.prot, True)
                m.prot &= prot

    @precondition(lambda self: self._candidates())
    @rule(pick=PICK, prot=st.sampled_from([0, R, RW]))
    def page_protect(self, pick: int, prot: int) -> None:
        mapped = sorted({m.pa for p in self.pm[:NUSER] for m in p.maps.values()})
        pa = mapped[pick % len(mapped)] if mapped else self._pick(pick).pg.phys_addr
        page = self.live[pa]
        pmap_page_protect(self.uvm, page.pg, prot)
        for p in self.pm[:NUSER]:
            for vpn, m in list(p.maps.items()):
                if m.pa != pa:
                    continue
                if not prot & R:
                    del p.maps[vpn]  # at once: no stale translation
                elif not prot & W:
                    m.prot &= ~W

    @rule(i=USER, vpn=VPN, pick=PICK, anywhere=st.booleans())
    def unwire_mapping(self, i: int, vpn: int, pick: int, anywhere: bool) -> None:
        """pmap_unwire of a wired mapping, or (``anywhere``) of any address: then it panics
        unless a wired mapping happens to be there."""
        wired = sorted(
            (j, v) for j in range(NUSER) for v, mp in self.pm[j].maps.items() if mp.wired
        )
        if wired and not anywhere:
            i, vpn = wired[pick % len(wired)]
        m = self.pm[i].maps.get(vpn)
        if m is None or not m.wired:
            with pytest.raises(Panic, match="pmap_unwire"):
                pmap_unwire(self.pmaps[i], self._va(vpn))
            return
        pmap_unwire(self.pmaps[i], self._va(vpn))
        m.wired = False

    # --- kernel (unmanaged) mappings ----------------------------------------------------

    @precondition(lambda self: self._candidates())
    @rule(kvpn=KVPN, pick=PICK, prot=st.sampled_from([R, RW]))
    def kenter(self, kvpn: int, pick: int, prot: int) -> None:
        page = self._pick(pick)
        pmap_kenter_pa(self.uvm.kernel_pmap, self._va(kvpn), page.pg.phys_addr, prot)
        if kvpn in self.pm[KERNEL].maps:
            self._unmap(KERNEL, kvpn)
        self.pm[KERNEL].maps[kvpn] = Mapping(page.pg.phys_addr, prot, True)

    @rule(kvpn=KVPN, n=RUN)
    def kremove(self, kvpn: int, n: int) -> None:
        pmap_kremove(self.uvm.kernel_pmap, self._va(kvpn), n * PS)
        for v in range(kvpn, kvpn + n):
            if v in self.pm[KERNEL].maps:
                self._unmap(KERNEL, v)

    @rule(i=ANY_PMAP)
    def update(self, i: int) -> None:
        pmap_update(self.pmaps[i])
        self.pm[i].stale.clear()

    # --- attributes and accesses --------------------------------------------------------

    @precondition(lambda self: self._candidates())
    @rule(pick=PICK, modify=st.booleans())
    def clear_attribute(self, pick: int, modify: bool) -> None:
        page = self._pick(pick)
        if modify:
            assert pmap_clear_modify(page.pg) is page.mod
            page.mod = False
        else:
            assert pmap_clear_reference(page.pg) is page.ref
            page.ref = False

    def _access_plan(
        self, i: int, vpn: int, off: int, length: int, write: bool
    ) -> tuple[list[tuple[int, int, int]], int | None]:
        """Split an access into (pa, start, n) pieces as the model MMU translates them;
        return them and the faulting address, if any."""
        pieces: list[tuple[int, int, int]] = []
        va, end = self._va(vpn) + off, self._va(vpn) + off + length
        while va < end:
            pa = self._translate(i, va // PS, write)
            if pa is None:
                return pieces, va
            n = min(end - va, PS - va % PS)
            pieces.append((pa, va % PS, n))
            va += n
        return pieces, None

    def _load(self, i: int, vpn: int, off: int, length: int) -> None:
        va = self._va(vpn) + off
        pieces, fault_va = self._access_plan(i, vpn, off, length, False)
        if fault_va is not None:
            with pytest.raises(PageFault) as info:
                load(self.pmaps[i], va, length)
            assert info.value.va == fault_va
            assert info.value.access == Prot.READ
            return
        want = b"".join(self.frames[pa][s : s + n] for pa, s, n in pieces)
        assert load(self.pmaps[i], va, length) == want

    def _store(self, i: int, vpn: int, off: int, length: int, seed: int) -> None:
        va = self._va(vpn) + off
        data = bytes((seed + k) % 256 for k in range(length))
        pieces, fault_va = self._access_plan(i, vpn, off, length, True)
        if fault_va is not None:
            with pytest.raises(PageFault) as info:
                store(self.pmaps[i], va, data)
            assert info.value.va == fault_va
            assert info.value.access == Prot.WRITE
        else:
            store(self.pmaps[i], va, data)
        done = 0
        for pa, s, n in pieces:  # the pages before a fault were written
            frame = self.frames[pa]
            self.frames[pa] = frame[:s] + data[done : done + n] + frame[s + n :]
            done += n

    @rule(i=ANY_PMAP, vpn=VPN, off=OFF, length=LENGTH, write=st.booleans(), seed=SEED)
    def access_anywhere(
        self, i: int, vpn: int, off: int, length: int, write: bool, seed: int
    ) -> None:
        """A load or store at any address: mostly faults."""
        if i == KERNEL:
            vpn %= NKVPN
        if write:
            self._store(i, vpn, off, length, seed)
        else:
            self._load(i, vpn, off, length)

    def _translations(self, need: int = 0) -> list[tuple[int, int]]:
        """(pmap, vpn) pairs with a current or stale translation allowing ``need``."""
        return sorted(
            {
                (i, vpn)
                for i, p in enumerate(self.pm)
                for vpn, t in [
                    *((v, m.prot) for v, m in p.maps.items()),
                    *((v, s.prot) for v, lst in p.stale.items() for s in lst),
                ]
                if t & need == need
            }
        )

    @precondition(lambda self: self._translations())
    @rule(pick=PICK, off=OFF, length=LENGTH, write=st.booleans(), seed=SEED)
    def access_mapped(self, pick: int, off: int, length: int, write: bool, seed: int) -> None:
        """A load or store within one page that has a current or stale translation (one
        that allows a store, for a store, when there is one)."""
        targets = self._translations(W if write else 0) or self._translations()
        i, vpn = targets[pick % len(targets)]
        length = min(length, PS - off)
        if write:
            self._store(i, vpn, off, length, seed)
        else:
            self._load(i, vpn, off, length)

    def teardown(self) -> None:
        # A process's pmap ends with pmap_destroy; one merely dropped would leave its
        # pending invalidations counted in uvm.stale_refs for ever (the after-test audit in
        # conftest reports that as rule 11).
        for pmap in self.pmaps[:NUSER]:
            pmap_destroy(pmap)

    # --- checks -------------------------------------------------------------------------

    @invariant()
    def audit_passes(self) -> None:
        audit.check(self.uvm)

    @invariant()
    def pages_match_the_model(self) -> None:
        uvm, exp = self.uvm, self.uvm.uvmexp
        assert exp.free == NPAGES - len(self.live)
        assert exp.active == len(self.active)
        assert exp.inactive == len(self.inactive)
        assert exp.wired == sum(1 for m in self.live.values() if m.wire)
        queues = clock_queues(uvm)
        assert [pg.phys_addr for pg in queues.active] == self.active
        assert [pg.phys_addr for pg in queues.inactive] == self.inactive
        active, inactive = set(self.active), set(self.inactive)
        for pa, m in self.live.items():
            pg = m.pg
            assert uvm.phys_to_page(pa) is pg
            assert not pg.pqflags & PQ_FREE
            assert bool(pg.flags & PG_BUSY) is m.busy
            assert pg.wire_count == m.wire
            want_q = PQ_ACTIVE if pa in active else PQ_INACTIVE if pa in inactive else 0
            assert pg.pqflags & PQ_QUEUES == want_q
            assert (pmap_is_referenced(pg), pmap_is_modified(pg)) == (m.ref, m.mod), pg
        for pa in self.free_zero | self.free_unknown:
            assert uvm.phys_to_page(pa).pqflags == PQ_FREE

    @invariant()
    def frames_match_the_model(self) -> None:
        view = self.uvm.physmem.view
        for pa, want in self.frames.items():
            assert view[pa : pa + PS] == want, f"frame {pa:#x}"

    @invariant()
    def pmaps_match_the_model(self) -> None:
        for i, pmap in enumerate(self.pmaps):
            model = self.pm[i]
            got = {vpn: (p.pa, p.prot, p.wired) for vpn, p in pmap.ptes.items()}
            assert got == {v: (m.pa, m.prot, m.wired) for v, m in model.maps.items()}
            stale: dict[int, list[tuple[int, int]]] = {}
            for ent in pmap.stale:
                if isinstance(ent, KRun):
                    for k, pa in enumerate(ent.pas):
                        stale.setdefault(ent.vpn + k, []).append((pa, ent.prot))
                else:
                    stale.setdefault(ent.va // PS, []).append((ent.pa, ent.prot))
            assert stale == {v: [(s.pa, s.prot) for s in lst] for v, lst in model.stale.items()}
            assert all((p.pg is None) is (i == KERNEL) for p in pmap.ptes.values())
        assert self.uvm.pv_free == PV_ENTRIES - self._pv_used()
        want: dict[int, list[tuple[str, int]]] = {}
        for i in range(NUSER):
            for v, mp in self.pm[i].maps.items():
                want.setdefault(mp.pa, []).append((self.pmaps[i].name, self._va(v)))
        for pa, m in self.live.items():
            pv = sorted((p.pmap.name, p.va) for p in m.pg.pvlist or [])
            assert pv == sorted(want.get(pa, []))


# Runs under the loaded hypothesis profile (tests/conftest.py): "ci" reports a failing run
# unshrunk, "dev" and "nightly" shrink it.
TestVmMachine = VmMachine.TestCase
