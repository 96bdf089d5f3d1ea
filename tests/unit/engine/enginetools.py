"""Helpers for the engine tests: small engines, a byte-for-byte model of a file, checks of
the page cache and of the backing file, and backing I/O that can be held at a gate.

Plain functions and classes (not fixtures) so that the hypothesis state machine in
``tests/stateful/test_engine_machine.py`` can use them too.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import trio

from genfs.node import GenfsParams
from pagers.backing_io import BackingIO, FaultInjector, IOKind, PendingRead
from tests.vmtools import SMALL_PAGES
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnode import Vnode
from ubcfs.vfs.vnops import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE
from ubcfs.vm import audit
from ubcfs.vm.page import PG_BUSY, PG_FAKE, PG_ZERO, POISON_BYTE, PQ_FREE, VmPage, is_dirty

PAGE = 4096


def new_engine(
    pages: int = SMALL_PAGES,
    nwins: int = 8,
    winsize: int = 16 * 1024,
    params: GenfsParams | None = None,
    nowait: bool = True,
    test_reference: bool = False,
    writeback_timeout: float = 30.0,
    pdpolicy: str = "clock",
) -> Engine:
    """A small engine (64 frames of 4 KiB by default) whose backing I/O can be gated.

    The ``GatedIO`` replaces the engine's ``BackingIO`` before any file is opened, so every
    vnode uses it; it shares the engine's fault injector.
    """
    eng = Engine(
        memory=pages * PAGE,
        page_size=PAGE,
        nwins=nwins,
        winsize=winsize,
        params=params,
        nowait=nowait,
        test_reference=test_reference,
        writeback_timeout=writeback_timeout,
        pdpolicy=pdpolicy,
    )
    eng.io = GatedIO(eng.injector, nowait=nowait)
    return eng


def gated_io(eng: Engine) -> GatedIO:
    """The engine's backing I/O as the ``GatedIO`` that ``new_engine`` installed."""
    io = eng.io
    assert isinstance(io, GatedIO), "engine not built by new_engine"
    return io


def assert_sound(eng: Engine) -> None:
    """The DIAGNOSTIC checker finds nothing wrong with the engine's machine."""
    bad = audit.audit(eng.uvm) + eng.ubc.audit()
    assert bad == [], "\n".join(bad)


def pattern(seed: int, n: int) -> bytes:
    """``n`` bytes that differ from page to page and from seed to seed, never all zero."""
    return random.Random(seed).randbytes(n).replace(b"\0", b"\1")


# The page-replacement policies the engine's workload tests and machines run under.
PDPOLICIES = ("clock", "clockpro")


# --- the model -------------------------------------------------------------------------------


class FileModel:
    """What a file must hold: a plain bytearray with write/truncate semantics of a file."""

    def __init__(self, data: bytes = b"") -> None:
        self.data = bytearray(data)

    def write(self, offset: int, buf: bytes) -> None:
        end = offset + len(buf)
        if end > len(self.data):
            self.data.extend(bytes(end - len(self.data)))
        self.data[offset:end] = buf

    def truncate(self, size: int) -> None:
        if size < len(self.data):
            del self.data[size:]
        else:
            self.data.extend(bytes(size - len(self.data)))

    def read(self, offset: int, length: int) -> bytes:
        return bytes(self.data[offset : offset + length])

    def fallocate(self, mode: int, offset: int, length: int) -> None:
        """What fallocate(2) with ``mode`` does to the contents (the supported modes only):
        without KEEP_SIZE a range past EOF extends the file with zeroes; PUNCH_HOLE and
        ZERO_RANGE make the part of the range inside the file zeroes."""
        end = offset + length
        if not mode & FALLOC_FL_KEEP_SIZE and end > self.size:
            self.truncate(end)
        if mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE):
            hi = min(end, self.size)
            if offset < hi:
                self.data[offset:hi] = bytes(hi - offset)

    @property
    def size(self) -> int:
        return len(self.data)


async def read_all(eng: Engine, vp: Vnode, chunk: int = 64 * 1024) -> bytes:
    """The whole file as the engine serves it."""
    out = bytearray()
    off = 0
    while True:
        err, data = await eng.read(vp, off, chunk)
        assert err == 0, f"read at {off} failed: errno {err}"
        if not data:
            return bytes(out)
        out += data
        off += len(data)


async def assert_engine_matches(eng: Engine, vp: Vnode, model: FileModel) -> None:
    """Size and every byte of ``vp`` as the engine reads it equal the model."""
    assert vp.size == model.size
    got = await read_all(eng, vp)
    assert_same(got, bytes(model.data), vp.name)


def assert_backing_matches(path: Path | str, model: FileModel) -> None:
    """The backing file holds exactly the model's bytes."""
    with open(path, "rb") as f:
        got = f.read()
    assert_same(got, bytes(model.data), f"backing file {path}")


def assert_same(got: bytes, want: bytes, what: str) -> None:
    """Equal bytes, or a failure that says where they first differ (not a 1 MiB diff)."""
    if got == want:
        return
    n = min(len(got), len(want))
    first = next((i for i in range(n) if got[i] != want[i]), n)
    raise AssertionError(
        f"{what}: {len(got)} bytes, expected {len(want)}; first difference at byte {first}"
        f" (page {first // PAGE}): got {got[first : first + 8].hex()}"
        f" expected {want[first : first + 8].hex()}"
    )


def frame_bytes(eng: Engine, pg: VmPage) -> bytes:
    """The current contents of a page's frame."""
    return bytes(eng.uvm.physmem.frame(pg.phys_addr))


def page_is_free(pg: VmPage) -> bool:
    return bool(pg.pqflags & PQ_FREE)


def page_dirty(pg: VmPage) -> bool:
    return is_dirty(pg)


def page_settled(pg: VmPage) -> bool:
    """Resident, valid and nobody's: not busy, not FAKE."""
    return not pg.flags & (PG_BUSY | PG_FAKE) and not pg.pqflags & PQ_FREE


def backing_size(path: Path | str) -> int:
    return os.stat(path).st_size


# --- frames holding junk -------------------------------------------------------------------

JUNK_BYTE = 0x5A  # what junk_free_frames stamps: neither zero nor DIAGNOSTIC's POISON_BYTE


def junk_free_frames(eng: Engine, byte: int = JUNK_BYTE) -> int:
    """Fill the frame of every free page not known to be zero with ``byte``, as a frame's
    previous owner might have left it (DIAGNOSTIC poisons freed frames with POISON_BYTE; this
    does not depend on it).  Returns how many frames were filled.  Known-zero (PG_ZERO) free
    pages are left alone: their frames must stay zero."""
    uvm = eng.uvm
    junk = bytes([byte]) * uvm.page_size
    n = 0
    for pg in uvm.pages:
        if pg.pqflags & PQ_FREE and not pg.flags & PG_ZERO:
            uvm.frame(pg)[:] = junk
            n += 1
    return n


async def recycle_frames(eng: Engine, path: Path, npages: int) -> int:
    """Make ``npages`` frames used-and-freed, then junk-filled: read a file of ``npages``
    pages at ``path`` through the engine, reclaim its vnode (its pages are freed, and
    allocations take such frames before known-zero ones) and ``junk_free_frames``.  Returns
    the number of junk frames."""
    await trio.to_thread.run_sync(path.write_bytes, pattern(0xF00, npages * PAGE))
    vp = await eng.open(str(path))
    data = await read_all(eng, vp)
    assert len(data) == npages * PAGE
    assert await eng.release(vp) == 0
    return junk_free_frames(eng)


def garbage_note(got: bytes) -> str:
    """Say whether ``got`` holds junk or poison bytes, for failure messages."""
    notes = []
    if bytes([JUNK_BYTE]) * 4 in got:
        notes.append(f"junk {JUNK_BYTE:#x} (a recycled frame never zeroed)")
    if bytes([POISON_BYTE]) * 4 in got:
        notes.append(f"poison {POISON_BYTE:#x} (a freed frame)")
    return "; ".join(notes) or "no junk or poison runs"


# --- gated backing I/O -------------------------------------------------------------------


class Gate:
    """Holds one backing I/O until ``open()``.

    Attributes:
        reached: set when the I/O arrived at the gate (and is now waiting).
        offset, nbytes: what the held I/O covers.
        snapshot: for a write, the bytes as they were when the I/O reached the gate; they,
            not the frames' later contents, are what gets written (a device that has already
            fetched the data by DMA).
    """

    def __init__(self, offset: int | None = None, snapshot: bool = False) -> None:
        self.want_offset = offset
        self.want_snapshot = snapshot
        self.reached = trio.Event()
        self._open = trio.Event()
        self.offset = -1
        self.nbytes = 0
        self.snapshot: list[bytearray] | None = None

    def matches(self, offset: int, nbytes: int) -> bool:
        if self.want_offset is None:
            return True
        return offset <= self.want_offset < offset + nbytes

    def open(self) -> None:
        self._open.set()

    async def wait_reached(self, limit: float = 10.0) -> None:
        """Sleep until the I/O is held here (failing the test after ``limit`` seconds)."""
        with trio.fail_after(limit):
            await self.reached.wait()

    async def hold(self, views: list[memoryview], offset: int) -> list[memoryview]:
        self.offset = offset
        self.nbytes = sum(map(len, views))
        if self.want_snapshot:
            self.snapshot = [bytearray(v) for v in views]
        self.reached.set()
        await self._open.wait()
        if self.snapshot is not None:
            return [memoryview(b) for b in self.snapshot]
        return views


class GatedIO(BackingIO):
    """A ``BackingIO`` whose next matching read or write, or next fallocate, can be held at a
    ``Gate``, and that counts the I/Os it was asked for (injected failures included)."""

    def __init__(self, injector: FaultInjector, nowait: bool = True) -> None:
        super().__init__(injector, 8, nowait=nowait)
        self.read_gate: Gate | None = None
        self.write_gate: Gate | None = None
        self.read_calls: list[tuple[int, int]] = []  # (offset, nbytes)
        self.write_calls: list[tuple[int, int]] = []
        self.writes_stopped: trio.Event | None = None  # every write waits until it is set
        self.writes_held = 0
        self.fallocate_gate: Gate | None = None
        self.fallocate_calls: list[tuple[int, int, int]] = []  # (mode, offset, length)
        self.write_times: list[float] = []  # trio.current_time() of each write asked for

    def gate_write(self, offset: int | None = None, snapshot: bool = False) -> Gate:
        """Hold the next write (covering ``offset``, if given) at a new gate."""
        self.write_gate = Gate(offset, snapshot)
        return self.write_gate

    def stop_writes(self) -> trio.Event:
        """Hold every backing write from now on until the returned event is set."""
        self.writes_stopped = trio.Event()
        return self.writes_stopped

    def gate_fallocate(self) -> Gate:
        """Hold the next fallocate of a backing file at a new gate."""
        self.fallocate_gate = Gate()
        return self.fallocate_gate

    def gate_read(self, offset: int | None = None) -> Gate:
        """Hold the next read (covering ``offset``, if given) at a new gate."""
        self.read_gate = Gate(offset)
        return self.read_gate

    async def readv(
        self, fd: int, views: list[memoryview], offset: int, kind: IOKind = IOKind.READ
    ) -> tuple[int, int]:
        nbytes = sum(map(len, views))
        self.read_calls.append((offset, nbytes))
        gate = self.read_gate
        if gate is not None and gate.matches(offset, nbytes):
            self.read_gate = None
            views = await gate.hold(views, offset)
        return await super().readv(fd, views, offset, kind)

    def start_readv(self, fd: int, views: list[memoryview], offset: int) -> PendingRead:
        nbytes = sum(map(len, views))
        self.read_calls.append((offset, nbytes))
        gate = self.read_gate
        if gate is None or not gate.matches(offset, nbytes):
            return super().start_readv(fd, views, offset)
        self.read_gate = None
        return _GatedRead(self, gate, fd, views, offset)

    async def writev(
        self, fd: int, views: list[memoryview], offset: int, kind: IOKind = IOKind.WRITE
    ) -> tuple[int, int]:
        nbytes = sum(map(len, views))
        self.write_calls.append((offset, nbytes))
        self.write_times.append(trio.current_time())
        gate = self.write_gate
        if gate is not None and gate.matches(offset, nbytes):
            self.write_gate = None
            views = await gate.hold(views, offset)
        stopped = self.writes_stopped
        if stopped is not None and not stopped.is_set():
            self.writes_held += 1
            await stopped.wait()
            self.writes_held -= 1
        return await super().writev(fd, views, offset, kind)

    async def fallocate(self, fd: int, mode: int, offset: int, length: int) -> int:
        self.fallocate_calls.append((mode, offset, length))
        gate = self.fallocate_gate
        if gate is not None:
            self.fallocate_gate = None
            await gate.hold([], offset)
        return await super().fallocate(fd, mode, offset, length)


class _GatedRead(PendingRead):
    """A read-ahead held at a gate: it is issued (as a plain ``readv``) once the gate opens."""

    __slots__ = ("_args", "_gate")

    def __init__(
        self, bio: GatedIO, gate: Gate, fd: int, views: list[memoryview], offset: int
    ) -> None:
        super().__init__(bio, None, (0, 0))
        self._gate = gate
        self._args = (fd, views, offset)

    def done(self) -> bool:
        return False  # held at its gate until the test opens it

    async def finish(self) -> tuple[int, int]:
        fd, views, offset = self._args
        views = await self._gate.hold(views, offset)
        return await BackingIO.readv(self._bio, fd, views, offset)
