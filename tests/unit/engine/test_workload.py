"""Random read/write/truncate/fsync workloads through the engine, on files 4-16 times larger
than the simulated memory, checked byte for byte against a plain model after every read, in
the backing files after a final fsync and again after the engine has shut down; the
DIAGNOSTIC checker runs after every operation (and, in the concurrent tests, from a task of
its own at arbitrary interleavings).

Seeded ``random`` rather than hypothesis here: each run is a few hundred operations and must
be reproducible from the seed in the test id.  Every test runs under both page-replacement
policies (``--pdpolicy clock`` and ``clockpro``).
"""

from __future__ import annotations

import errno
import random
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from genfs.node import GenfsParams
from pagers.backing_io import IOKind
from tests.unit.engine.enginetools import (
    PAGE,
    PDPOLICIES,
    FileModel,
    assert_backing_matches,
    assert_engine_matches,
    assert_same,
    assert_sound,
    gated_io,
    new_engine,
)
from ubcfs.vfs.engine import Engine
from ubcfs.vfs.vnode import Vnode
from ubcfs.vm.diag import LockInstrument

pytestmark = pytest.mark.parametrize("pdpolicy", PDPOLICIES)

# --- one task's random operations ------------------------------------------------------------


@dataclass
class OpMix:
    """Relative weights of the operations of a random workload."""

    write: int = 40
    append: int = 8
    read: int = 40
    truncate: int = 4
    fsync: int = 3

    def choose(self, rnd: random.Random) -> str:
        names = ["write", "append", "read", "truncate", "fsync"]
        weights = [self.write, self.append, self.read, self.truncate, self.fsync]
        return rnd.choices(names, weights)[0]


@dataclass
class Counts:
    ops: dict[str, int] = field(default_factory=dict)

    def add(self, op: str) -> None:
        self.ops[op] = self.ops.get(op, 0) + 1


def random_length(rnd: random.Random, limit: int) -> int:
    """Lengths from one byte to several windows, with page multiples over-represented."""
    kind = rnd.randrange(4)
    if kind == 0:
        n = rnd.randint(1, 200)
    elif kind == 1:
        n = rnd.randint(1, 4) * PAGE
    elif kind == 2:
        n = rnd.randint(1, 3 * PAGE)
    else:
        n = rnd.randint(PAGE, 20 * PAGE)
    return max(1, min(n, limit))


def random_offset(rnd: random.Random, size: int, limit: int) -> int:
    kind = rnd.randrange(3)
    if kind == 0:
        return rnd.randrange(0, limit)
    if kind == 1:
        return rnd.randrange(0, limit // PAGE) * PAGE
    return max(0, min(limit - 1, size + rnd.randint(-2 * PAGE, 2 * PAGE)))


async def random_op(
    eng: Engine,
    vp: Vnode,
    model: FileModel,
    rnd: random.Random,
    mix: OpMix,
    limit: int,
    counts: Counts,
) -> None:
    """One random operation on ``vp``, checked against ``model``.

    Args:
        limit: the file never grows past this many bytes.
    """
    op = mix.choose(rnd)
    counts.add(op)
    if op in ("write", "append"):
        off = model.size if op == "append" else random_offset(rnd, model.size, limit)
        off = min(off, limit - 1)
        n = random_length(rnd, limit - off)
        data = rnd.randbytes(n)
        err, done = await eng.write(vp, off, data)
        assert (err, done) == (0, n), f"write({off}, {n})"
        model.write(off, data)
    elif op == "read":
        off = random_offset(rnd, model.size, limit)
        n = random_length(rnd, limit)
        err, got = await eng.read(vp, off, n)
        assert err == 0, f"read({off}, {n}): errno {err}"
        assert_same(bytes(got), model.read(off, n), f"read({off}, {n}) of {vp.name}")
    elif op == "truncate":
        # Mostly small cuts and extensions, so the file stays large.
        if rnd.random() < 0.3:
            size = rnd.randrange(0, limit)
        else:
            size = max(0, min(limit, model.size + rnd.randint(-3 * PAGE, 3 * PAGE)))
        assert await eng.truncate(vp, size) == 0
        model.truncate(size)
    else:
        assert await eng.fsync(vp) == 0
    assert vp.size == model.size


async def final_checks(eng: Engine, files: list[tuple[Path, Vnode, FileModel]]) -> None:
    """fsync everything; the engine and the backing files both hold the model."""
    for path, vp, model in files:
        await assert_engine_matches(eng, vp, model)
        assert await eng.fsync(vp) == 0
        assert_backing_matches(path, model)
    assert_sound(eng)


# --- sequential random workloads -----------------------------------------------------------

CONFIGS = {
    # name: (frames, nwins, params, nowait)
    "64p-fast": (64, 8, GenfsParams(), True),
    "64p-nofast": (64, 8, GenfsParams(fastpath=False), True),
    "64p-thread-reads": (64, 8, GenfsParams(maxphys=32 * 1024), False),
    "128p-writebehind": (128, 16, GenfsParams(writebehind=64 * 1024), True),
    "256p-readahead": (256, 16, GenfsParams(readahead=64 * 1024, maxphys=64 * 1024), True),
}


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("config", sorted(CONFIGS))
async def test_random_workload_two_files(
    tmp_path: Path, config: str, seed: int, pdpolicy: str
) -> None:
    """Two files of 4-16 times memory, random operations, everything checked."""
    frames, nwins, params, nowait = CONFIGS[config]
    memory = frames * PAGE
    limits = [4 * memory, 16 * memory] if frames == 64 else [4 * memory, 8 * memory]
    rnd = random.Random(f"{config}-{seed}")
    eng = new_engine(frames, nwins=nwins, params=params, nowait=nowait, pdpolicy=pdpolicy)
    paths = [tmp_path / f"f{i}" for i in range(2)]
    models = [FileModel() for _ in paths]
    counts = Counts()
    async with eng.running():
        vps = [await eng.open(str(p)) for p in paths]
        # Fill both files beyond memory first, so that later reads really page in.
        for vp, model, limit in zip(vps, models, limits, strict=True):
            off = 0
            while off < limit // 2:
                data = rnd.randbytes(min(rnd.randint(1, 16) * PAGE + rnd.randint(0, 999), limit))
                assert await eng.write(vp, off, data) == (0, len(data))
                model.write(off, data)
                off += len(data)
        assert_sound(eng)
        for _ in range(250):
            k = rnd.randrange(2)
            await random_op(eng, vps[k], models[k], rnd, OpMix(), limits[k], counts)
            assert_sound(eng)
        await final_checks(eng, list(zip(paths, vps, models, strict=True)))
        for vp in vps:
            assert await eng.release(vp) == 0
        assert eng.vnodes == {}
        assert eng.uvm.uvmexp.filepages == 0
    for path, model in zip(paths, models, strict=True):
        assert_backing_matches(path, model)
    exp = eng.uvm.uvmexp
    # The workload did what it is for: memory was short all the time.
    assert max(m.size for m in models) >= 4 * memory or counts.ops.get("truncate", 0) > 10
    assert exp.pdwoke > 0
    assert exp.pdfreed > 0
    assert exp.pageins > 0
    assert exp.pageouts > 0
    assert set(counts.ops) == {"write", "append", "read", "truncate", "fsync"}
    if params.fastpath:
        assert exp.fastpath_skipped_zero > 0
    else:
        assert exp.fastpath_skipped_zero == 0


async def test_random_workload_with_injected_write_errors(tmp_path: Path, pdpolicy: str) -> None:
    """Backing writes fail now and then (EIO, ENOSPC) while memory is short: pageouts fail
    and are retried, nothing is lost; fsyncs report the failures they meet."""
    rnd = random.Random("inject")
    eng = new_engine(pdpolicy=pdpolicy)
    path = tmp_path / "f"
    model = FileModel()
    limit = 8 * 64 * PAGE
    fsync_errors = 0
    async with eng.running():
        vp = await eng.open(str(path))
        counts = Counts()
        for i in range(300):
            if i % 25 == 0:
                eng.injector.arm(IOKind.WRITE, rnd.choice([errno.EIO, errno.ENOSPC]), 3)
            op = rnd.random()
            if op < 0.05:
                err = await eng.fsync(vp)
                assert err in (0, errno.EIO, errno.ENOSPC)
                fsync_errors += err != 0
                continue
            await random_op(eng, vp, model, rnd, OpMix(fsync=0), limit, counts)
            assert_sound(eng)
        eng.injector.arm(IOKind.WRITE, errno.EIO, 0)
        await final_checks(eng, [(path, vp, model)])
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)
    exp = eng.uvm.uvmexp
    assert exp.pageout_failed > 0
    assert exp.write_errors > 0
    assert gated_io(eng).stats.injected_failures == exp.write_errors
    assert exp.paging == 0


# --- concurrency -------------------------------------------------------------------------------


async def auditor(eng: Engine, done: trio.Event, rounds: list[int]) -> None:
    """Run the checker at whatever point the other tasks have reached, until ``done``.

    A whole-machine audit costs far more than a scheduling round, so it runs every
    ``AUDIT_EVERY`` seconds rather than at every round, which would make the test spend
    nearly all its time auditing."""
    while not done.is_set():
        assert_sound(eng)
        rounds[0] += 1
        await trio.sleep(AUDIT_EVERY)


AUDIT_EVERY = 0.002


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_concurrent_tasks_same_file(
    tmp_path: Path, seed: int, lock_instrument: LockInstrument, pdpolicy: str
) -> None:
    """Four writers on disjoint regions of one file, three readers of a region nobody
    writes, and an fsync-er, on a file 16 times the memory: every read sees exactly what the
    model says."""
    rnd = random.Random(seed)
    eng = new_engine(pdpolicy=pdpolicy)
    path = tmp_path / "shared"
    region = 48 * PAGE + 123  # not page aligned: neighbouring writers share a page
    nwriters = 4
    stable_len = 4 * 64 * PAGE
    size = stable_len + nwriters * region
    model = FileModel(rnd.randbytes(size))
    done = trio.Event()
    rounds = [0]
    reads = [0]
    async with eng.running():
        vp = await eng.open(str(path))
        assert await eng.write(vp, 0, bytes(model.data)) == (0, size)

        async def writer(i: int) -> None:
            lo = stable_len + i * region
            hi = lo + region
            wr = random.Random(seed * 100 + i)
            for _ in range(60):
                off = wr.randrange(lo, hi)
                n = wr.randint(1, min(hi - off, 5 * PAGE))
                data = wr.randbytes(n)
                assert await eng.write(vp, off, data) == (0, n)
                model.write(off, data)
                if wr.random() < 0.3:
                    o = wr.randrange(lo, hi)
                    m = wr.randint(1, hi - o)
                    err, got = await eng.read(vp, o, m)
                    assert err == 0
                    assert_same(bytes(got), model.read(o, m), f"writer {i} read({o}, {m})")
                if wr.random() < 0.05:
                    assert await eng.fsync(vp) == 0

        async def reader(i: int) -> None:
            rd = random.Random(seed * 1000 + i)
            while not done.is_set():
                o = rd.randrange(0, stable_len)
                m = rd.randint(1, min(stable_len - o, 12 * PAGE))
                err, got = await eng.read(vp, o, m)
                assert err == 0
                assert_same(bytes(got), model.read(o, m), f"reader {i} read({o}, {m})")
                reads[0] += 1

        async with trio.open_nursery() as outer:
            outer.start_soon(auditor, eng, done, rounds)
            for i in range(3):
                outer.start_soon(reader, i)
            async with trio.open_nursery() as writers:
                for i in range(nwriters):
                    writers.start_soon(writer, i)
            done.set()
        await final_checks(eng, [(path, vp, model)])
        assert await eng.release(vp) == 0
    assert_backing_matches(path, model)
    assert rounds[0] > 10
    assert reads[0] > 3
    assert size >= 4 * 64 * PAGE
    assert eng.uvm.uvmexp.pdpageouts > 0


async def test_concurrent_tasks_many_files(
    tmp_path: Path, lock_instrument: LockInstrument, pdpolicy: str
) -> None:
    """Six tasks, each with random operations (truncate and fsync included) on a file of its
    own, two of them sharing a second vnode opened through a hard link, under memory
    pressure; the checker runs from its own task."""
    eng = new_engine(nwins=8, pdpolicy=pdpolicy)
    ntasks = 6
    paths = [tmp_path / f"f{i}" for i in range(ntasks)]
    models = [FileModel() for _ in paths]
    done = trio.Event()
    rounds = [0]
    limit = 4 * 64 * PAGE
    async with eng.running():
        vps = [await eng.open(str(p)) for p in paths]

        async def worker(i: int) -> None:
            rnd = random.Random(f"many-{i}")
            counts = Counts()
            for _ in range(70):
                await random_op(eng, vps[i], models[i], rnd, OpMix(), limit, counts)
                if rnd.random() < 0.2:
                    await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as outer:
            outer.start_soon(auditor, eng, done, rounds)
            async with trio.open_nursery() as workers:
                for i in range(ntasks):
                    workers.start_soon(worker, i)
            done.set()
        await final_checks(eng, list(zip(paths, vps, models, strict=True)))
        for vp in vps:
            assert await eng.release(vp) == 0
    for path, model in zip(paths, models, strict=True):
        assert_backing_matches(path, model)
    assert rounds[0] > 10
    assert sum(m.size for m in models) > 4 * 64 * PAGE


async def test_concurrent_readers_and_writers_more_tasks_than_windows(
    tmp_path: Path, pdpolicy: str
) -> None:
    """More tasks than UBC windows and than a cluster's worth of memory: tasks wait for
    windows and for pages, nobody deadlocks, everything reads back."""
    eng = new_engine(nwins=2, pdpolicy=pdpolicy)
    ntasks = 10
    paths = [tmp_path / f"g{i}" for i in range(ntasks)]
    models = [FileModel() for _ in paths]
    async with eng.running():
        vps = [await eng.open(str(p)) for p in paths]

        async def worker(i: int) -> None:
            rnd = random.Random(f"win-{i}")
            for _ in range(15):
                off = rnd.randrange(0, 40 * PAGE)
                data = rnd.randbytes(rnd.randint(1, 10 * PAGE))
                assert await eng.write(vps[i], off, data) == (0, len(data))
                models[i].write(off, data)
                o = rnd.randrange(0, models[i].size)
                err, got = await eng.read(vps[i], o, 6 * PAGE)
                assert err == 0
                assert_same(bytes(got), models[i].read(o, 6 * PAGE), f"task {i}")

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for i in range(ntasks):
                    nursery.start_soon(worker, i)
        for vp, model in zip(vps, models, strict=True):
            await assert_engine_matches(eng, vp, model)
        assert_sound(eng)
    for path, model in zip(paths, models, strict=True):
        assert_backing_matches(path, model)
