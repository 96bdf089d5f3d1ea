"""A small machine with swap for the swap pager's tests and state machine: a machine, a
gated I/O edge, a swap file, a UBC window pool, the aiodone daemon and the pagedaemon, and
helpers that write and read aobjs through the UBC and push their pages out."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from pagers.aobj import Aobj
from pagers.backing_io import FaultInjector
from pagers.swap import Swap
from tests.unit.engine.enginetools import GatedIO
from ubcfs.vm import audit
from ubcfs.vm.page import pagedeactivate
from ubcfs.vm.pager import Aio
from ubcfs.vm.pdaemon import Pagedaemon
from ubcfs.vm.pmap import pmap_clear_reference
from ubcfs.vm.ubc import UBC_FAULTBUSY, Ubc, Uio
from ubcfs.vm.uvm import Uvm

PAGE = 4096


@dataclass
class Rig:
    uvm: Uvm
    swap: Swap
    io: GatedIO
    ubc: Ubc
    aio: Aio
    daemon: Pagedaemon

    def aobj(self, name: str = "aobj") -> Aobj:
        return Aobj(self.uvm, name, self.swap)

    async def write(self, aobj: Aobj, offset: int, data: bytes) -> int:
        """Write through the UBC; whole pages with UBC_FAULTBUSY, as vop_write does."""
        whole = offset % PAGE == 0 and len(data) % PAGE == 0
        flags = UBC_FAULTBUSY if whole else 0
        return await self.ubc.ubc_write(aobj.uobj, offset, Uio(memoryview(data)), len(data), flags)

    async def read(self, aobj: Aobj, offset: int, n: int) -> tuple[int, bytes]:
        buf = bytearray(n)
        err = await self.ubc.ubc_read(aobj.uobj, offset, Uio(memoryview(buf)))
        return err, bytes(buf)

    def problems(self) -> list[str]:
        return audit.audit(self.uvm) + self.ubc.audit()

    def sound(self) -> None:
        bad = self.problems()
        assert bad == [], "\n".join(bad)


@asynccontextmanager
async def rig(
    tmp_path: Path,
    pages: int = 64,
    swap_pages: int = 1024,
    cluster: int = 16,
    nwins: int = 8,
    pdpolicy: str = "clock",
) -> AsyncIterator[Rig]:
    """A running machine of ``pages`` frames with ``swap_pages`` slots of swap in
    ``tmp_path``; leaving it waits for the I/O in flight and removes the swap file."""
    uvm = Uvm(pages * PAGE, PAGE, pdpolicy=pdpolicy)
    io = GatedIO(FaultInjector())
    swap = Swap(uvm, str(tmp_path / "swap"), swap_pages * PAGE, io, cluster=cluster)
    swap.attach()
    ubc = Ubc(uvm, nwins=nwins, winsize=16 * 1024)
    aio = Aio(uvm)
    daemon = Pagedaemon(uvm)
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(aio.run)
            uvm.aio = aio
            await nursery.start(daemon.run)
            try:
                yield Rig(uvm, swap, io, ubc, aio, daemon)
            finally:
                with trio.CancelScope(shield=True):
                    await aio.drain()
                nursery.cancel_scope.cancel()
    finally:
        uvm.aio = None
        io.close()
        swap.close()


async def evict(r: Rig) -> None:
    """Push every idle aobj page out: purge the windows, deactivate, run the inactive scan
    with the free target raised to all of memory, and wait for the swap writes."""
    deactivate_all(r)
    await scan_short(r)
    await r.aio.drain()


def deactivate_all(r: Rig) -> None:
    for win in list(r.ubc.windows):
        if win.uobj is not None:
            r.ubc.purge(win.uobj)
    queued = [pg for q in r.uvm.pdpolicy.queues() for pg in q]  # the clock: active first
    for pg in queued:
        pmap_clear_reference(pg)  # as the active scan does before deactivating
        pagedeactivate(r.uvm, pg)


async def scan_short(r: Rig) -> int:
    """One inactive scan as if memory were short; returns what it freed or started."""
    exp = r.uvm.uvmexp
    exp.freetarg = exp.npages
    try:
        return await r.daemon.scan_queue()
    finally:
        r.uvm.tune()
