"""Anonymous objects, anons and the swap pager against a plain model: a hypothesis state
machine that writes, reads, truncates and evicts two aobjs holding four times the memory of
a 64-frame machine with swap, fills, reads, rewrites and frees the anons of an amap (swapped
in with ``Swap.anon_swapin``), and injects swap-write failures (EIO: slots go bad; ENOMEM:
transient); every read is compared with a bytearray per object and a bytes per anon, and
the DIAGNOSTIC checker (invariants 12-15 included) runs after every step.  At the end every
slot but the bad ones is free again."""

from __future__ import annotations

import errno
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import trio
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from pagers.aobj import Aobj
from pagers.backing_io import IOKind
from tests.stateful.loopthread import LoopThread
from tests.unit.engine.enginetools import pattern
from tests.unit.pagers.swaptools import PAGE, Rig, evict, rig
from ubcfs.vm import audit
from ubcfs.vm.amap import VmAmap, amap_add, amap_alloc, amap_lookup, amap_unadd, amap_unref
from ubcfs.vm.anon import VmAnon, anfree
from ubcfs.vm.page import (
    PG_BUSY,
    PG_CLEAN,
    PG_FAKE,
    VmPage,
    page_unbusy,
    pageactivate,
    pagealloc,
    pagemarkdirty,
    pagewait,
)
from ubcfs.vm.pager import uvm_wait

NOBJ = 2
MAX_PAGES = 128  # per object: the two hold four times the machine's 64 frames
SIZE = MAX_PAGES * PAGE


offsets = st.one_of(
    st.integers(0, SIZE - 1),
    st.integers(0, MAX_PAGES - 1).map(lambda p: p * PAGE),
)
lengths = st.one_of(
    st.integers(1, 300),
    st.integers(1, 8).map(lambda n: n * PAGE),
    st.integers(1, 48 * PAGE),
)
objs = st.integers(0, NOBJ - 1)
NANON = 24
anon_slots = st.integers(0, NANON - 1)


class SwapMachine(RuleBasedStateMachine):
    """Random operations on two aobjs of a 64-frame machine with 512 slots of swap."""

    pdpolicy = "clock"

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ubcfs-swap-machine-"))
        self.models = [bytearray(SIZE) for _ in range(NOBJ)]
        self.anon_models: dict[int, bytes] = {}
        self._rig: Rig | None = None
        self.objs: list[Aobj] = []
        self.amap: VmAmap | None = None
        self.loop = LoopThread(self._running)

    @property
    def rig(self) -> Rig:
        assert self._rig is not None
        return self._rig

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        async with rig(
            self.dir, pages=64, swap_pages=512, cluster=16, nwins=4, pdpolicy=self.pdpolicy
        ) as r:
            self._rig = r
            self.objs = [r.aobj(f"a{i}") for i in range(NOBJ)]
            self.amap = amap_alloc(r.uvm, NANON)
            try:
                yield
            finally:
                with trio.CancelScope(shield=True):
                    r.io.injector.arm(IOKind.SWAP_WRITE, errno.EIO, 0)
                    await r.aio.drain()
                    for obj in self.objs:
                        await obj.destroy()
                    await amap_unref(r.uvm, self.amap)

    def teardown(self) -> None:
        try:
            self.loop.close()
            assert self.rig.swap.inuse == len(self.rig.swap.bad), "slots left after destroy"
            assert self.rig.uvm.uvmexp.swpgonly == 0
            assert audit.audit(self.rig.uvm) == []
        finally:
            self.dir.rmdir()  # the rig removed its swap file

    async def _truncate(self, k: int, size: int) -> None:
        """Cut object ``k`` to ``size`` bytes: the partial last page's tail zeroed, every
        page and slot past it freed (what tmpfs's setsize does)."""
        r = self.rig
        tail = -size % PAGE
        if tail:
            assert await r.write(self.objs[k], size, bytes(tail)) == 0
        r.ubc.purge(self.objs[k].uobj)
        await self.objs[k].free_range(size + tail, 1 << 62)

    @rule(k=objs, offset=offsets, length=lengths, seed=st.integers(0, 2**16))
    def write(self, k: int, offset: int, length: int, seed: int) -> None:
        length = min(length, SIZE - offset)
        data = pattern(seed, length)
        assert self.loop.run(self.rig.write, self.objs[k], offset, data) == 0
        self.models[k][offset : offset + length] = data

    @rule(k=objs, offset=offsets, length=lengths)
    def read(self, k: int, offset: int, length: int) -> None:
        length = min(length, SIZE - offset)
        err, got = self.loop.run(self.rig.read, self.objs[k], offset, length)
        assert err == 0
        assert got == bytes(self.models[k][offset : offset + length])

    @rule(k=objs)
    def read_whole(self, k: int) -> None:
        err, got = self.loop.run(self.rig.read, self.objs[k], 0, SIZE)
        assert err == 0
        assert got == bytes(self.models[k])

    @rule(k=objs, size=st.integers(0, SIZE))
    def truncate(self, k: int, size: int) -> None:
        self.loop.run(self._truncate, k, size)
        self.models[k][size:] = bytes(SIZE - size)

    @rule()
    def evict(self) -> None:
        self.loop.run(evict, self.rig)

    @rule(err=st.sampled_from([errno.EIO, errno.ENOMEM]), count=st.integers(1, 3))
    def fail_swap_writes(self, err: int, count: int) -> None:
        self.loop.run_sync(self.rig.io.injector.arm, IOKind.SWAP_WRITE, err, count)

    # --- anons ----------------------------------------------------------------------------

    def _anon(self, slot: int) -> VmAnon | None:
        assert self.amap is not None
        with self.amap.lock:
            return amap_lookup(self.amap, slot)

    async def _page_of(self, anon: VmAnon) -> VmPage:
        """The anon's page, resident and busy for the caller (swapped in if need be)."""
        uvm = self.rig.uvm
        while True:
            pg = anon.page
            if pg is not None:
                if pg.flags & PG_BUSY:
                    await pagewait(uvm, pg, "machine")  # under swap-out
                    continue
                pg.flags |= PG_BUSY
                return pg
            err, pg = await self.rig.swap.anon_swapin(anon)
            if err == errno.ENOMEM:
                await uvm_wait(uvm, "machine")
                continue
            assert err == 0
            assert pg is not None
            return pg

    def _done(self, pg: VmPage) -> None:
        pageactivate(self.rig.uvm, pg)
        page_unbusy(self.rig.uvm, pg)

    async def _anon_fill(self, slot: int, data: bytes) -> None:
        uvm = self.rig.uvm
        anon = VmAnon()
        while True:
            with anon.lock:
                pg = pagealloc(uvm, None, 0, anon)
            if pg is not None:
                break
            await uvm_wait(uvm, "machine")
        uvm.frame(pg)[:] = data
        pg.flags &= ~(PG_FAKE | PG_CLEAN)  # filled: no slot holds it
        self._done(pg)
        assert self.amap is not None
        with self.amap.lock:
            amap_add(self.amap, slot, anon)

    async def _anon_read(self, slot: int) -> bytes:
        anon = self._anon(slot)
        assert anon is not None
        pg = await self._page_of(anon)
        data = bytes(self.rig.uvm.frame(pg))
        self._done(pg)
        return data

    async def _anon_write(self, slot: int, data: bytes) -> None:
        anon = self._anon(slot)
        assert anon is not None
        pg = await self._page_of(anon)
        self.rig.uvm.frame(pg)[:] = data
        pagemarkdirty(pg)  # its slot, if any, no longer holds it: given back
        self._done(pg)

    async def _anon_free(self, slot: int) -> None:
        assert self.amap is not None
        with self.amap.lock:
            anon = amap_unadd(self.amap, slot)
        anon.ref -= 1
        await anfree(self.rig.uvm, anon)

    @rule(slot=anon_slots, seed=st.integers(0, 2**16), out=st.booleans())
    def anon_store(self, slot: int, seed: int, out: bool) -> None:
        data = pattern(seed, PAGE)
        if out:
            self.loop.run(evict, self.rig)  # so that the store finds it in swap
        if slot in self.anon_models:
            self.loop.run(self._anon_write, slot, data)
        else:
            self.loop.run(self._anon_fill, slot, data)
        self.anon_models[slot] = data

    @rule(slot=anon_slots, out=st.booleans())
    def anon_load(self, slot: int, out: bool) -> None:
        if out:
            self.loop.run(evict, self.rig)  # so that the load swaps it in
        if slot in self.anon_models:
            assert self.loop.run(self._anon_read, slot) == self.anon_models[slot]

    @rule(slot=anon_slots)
    def anon_free(self, slot: int) -> None:
        if slot in self.anon_models:
            self.loop.run(self._anon_free, slot)
            del self.anon_models[slot]

    @invariant()
    def sound(self) -> None:
        bad = self.loop.run_sync(self.rig.problems)
        assert bad == [], "\n".join(bad)


class ClockProSwapMachine(SwapMachine):
    """The same under CLOCK-Pro (``--pdpolicy clockpro``)."""

    pdpolicy = "clockpro"


TestSwapMachine = SwapMachine.TestCase
TestClockProSwapMachine = ClockProSwapMachine.TestCase
_profile = settings()
TestSwapMachine.settings = TestClockProSwapMachine.settings = settings(
    _profile,
    max_examples=max(10, _profile.max_examples // 3),
    stateful_step_count=min(30, _profile.stateful_step_count),
    deadline=None,
)
