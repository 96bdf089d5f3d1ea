"""The vnode life cycle through the FUSE operations, without a kernel mount (s3ql's
``t3_fs_api`` level): forget, reclaim and the requests that race with them.

Each race is forced, not left to timing: the reclaim's write-back is held at a gate
(``GatedIO``), the racing request runs while the vnode is BLOCKED, and only then is the
write let through.  Every test ends with the FUSE layer's and the VM's audits.
"""

from __future__ import annotations

import errno
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pyfuse3
import pytest
import trio
import trio.testing

from pagers.backing_io import IOKind
from tests.api.apitools import CTX, setattr_fields
from tests.unit.engine.enginetools import PAGE, assert_sound, gated_io, new_engine, pattern
from ubcfs.fuse import Operations
from ubcfs.vfs.backing import ROOT_INO, BackingNamespace
from ubcfs.vfs.vcache import VS
from ubcfs.vfs.vnode import Vnode

DATA = pattern(7, 5000)


@asynccontextmanager
async def mounted_ops(tmp_path: Path, maxvnodes: int = 64) -> AsyncIterator[Operations]:
    """FUSE operations over a fresh backing dir on a small running engine; at the end a
    final write-back, then both audits must be clean."""
    back = tmp_path / "back"
    back.mkdir()
    eng = new_engine(pages=64)
    eng.vcache.maxvnodes = maxvnodes
    ns = BackingNamespace(str(back))
    ops = Operations(eng, ns)
    try:
        async with eng.running():
            yield ops
            assert await ops.final_writeback() == 0
            assert ops.audit() == []
            assert_sound(eng)
    finally:
        ns.close()


async def make_file(ops: Operations, name: bytes, data: bytes = DATA) -> int:
    """Create, write, close and forget a file as the kernel would; its inode number."""
    fi, e = await ops.create(ROOT_INO, name, 0o644, os.O_RDWR, CTX)
    assert await ops.write(fi.fh, 0, data) == len(data)
    await ops.release(fi.fh)
    await ops.forget([(e.st_ino, 1)])
    assert e.st_ino not in ops.ns.inodes
    return int(e.st_ino)


async def read_file(ops: Operations, name: bytes) -> bytes:
    e = await ops.lookup(ROOT_INO, name, CTX)
    fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)
    data = bytes(await ops.read(fi.fh, 0, 1 << 20))
    await ops.release(fi.fh)
    await ops.forget([(e.st_ino, 1)])
    return data


async def eventually(cond: Callable[[], bool], what: str) -> None:
    """Wait (a bounded time) for the drain task to make ``cond`` true: it may be waiting
    for a worker thread, which ``wait_all_tasks_blocked`` counts as blocked."""
    with trio.fail_after(10):
        while not cond():  # noqa: ASYNC110 -- polls state that no event announces
            await trio.sleep(0.005)
    assert cond(), what


def cached(ops: Operations, ino: int) -> Vnode:
    """The vnode cached for the backing file of inode ``ino`` (by its key)."""
    for vp in ops.engine.vcache.table.values():
        if vp.key[1] == ino:
            return vp
    raise AssertionError(f"no vnode cached for inode {ino}")


async def test_forgotten_file_is_read_again_from_the_ubc(tmp_path: Path) -> None:
    """Closed and forgotten by the kernel: the vnode and its pages stay, so reading it again
    costs no backing read, and the inode number is the same (the backing file's own)."""
    async with mounted_ops(tmp_path) as ops:
        ino = await make_file(ops, b"f")
        assert ino == os.stat(tmp_path / "back" / "f").st_ino
        vp = cached(ops, ino)
        assert vp.vstate is VS.LOADED
        assert vp.usecount == 0
        assert vp.uobj.npages > 0
        reads = len(gated_io(ops.engine).read_calls)
        assert await read_file(ops, b"f") == DATA
        assert len(gated_io(ops.engine).read_calls) == reads
        assert cached(ops, ino) is vp


@asynccontextmanager
async def held_reclaim(
    ops: Operations, ino: int, via_drain: bool = False
) -> AsyncIterator[tuple[Vnode, list[int]]]:
    """Start the reclaim of ``ino``'s vnode -- directly, or by making the drain task want
    the room -- and hold its write-back at a gate; the body runs while the vnode is
    BLOCKED; leaving the block opens the gate and waits for the reclaim to end (a direct
    reclaim's errno lands in the yielded list)."""
    vcache = ops.engine.vcache
    vp = cached(ops, ino)
    gate = gated_io(ops.engine).gate_write()
    result: list[int] = []

    async def reclaim() -> None:
        result.append(await vcache.vrecycle(vp))

    maxvnodes = vcache.maxvnodes
    async with trio.open_nursery() as nursery:
        if via_drain:
            vcache.maxvnodes = 0
            vcache._check_size()
        else:
            nursery.start_soon(reclaim)
        await gate.wait_reached()
        assert vp.vstate is VS.BLOCKED
        try:
            yield vp, result
        finally:
            gate.open()
            await eventually(lambda: vp.vstate in (VS.LOADED, VS.RECLAIMED), "reclaim ends")
            vcache.maxvnodes = maxvnodes


async def test_open_during_reclaim_waits_and_gets_a_fresh_vnode(tmp_path: Path) -> None:
    async with mounted_ops(tmp_path) as ops:
        ino = await make_file(ops, b"f")
        opened: list[int] = []

        async def open_it() -> None:
            e = await ops.lookup(ROOT_INO, b"f", CTX)
            opened.append((await ops.open(e.st_ino, os.O_RDWR, CTX)).fh)

        async with trio.open_nursery() as nursery, held_reclaim(ops, ino) as (old, result):
            nursery.start_soon(open_it)
            await trio.testing.wait_all_tasks_blocked()
            assert opened == [], "open went ahead while the vnode was being reclaimed"
            assert ops.audit() == []  # an open in flight is no broken state
        assert result == [0]
        assert old.vstate is VS.RECLAIMED
        assert old.fd == -1
        fh = opened[0]
        new = ops.handles[fh].vnode
        assert new is not None
        assert new is not old
        assert new.vstate is VS.LOADED
        assert bytes(await ops.read(fh, 0, 1 << 20)) == DATA
        assert await ops.write(fh, 5000, b"more") == 4
        await ops.release(fh)
        assert await read_file(ops, b"f") == DATA + b"more"


async def test_lookup_and_getattr_during_reclaim_see_the_engine_size(tmp_path: Path) -> None:
    """While the write-back runs the backing file may be short; attributes come from the
    vnode, and after the reclaim from the backing file -- the same size, mtime and ctime."""
    async with mounted_ops(tmp_path) as ops:
        ino = await make_file(ops, b"f")
        async with held_reclaim(ops, ino) as (vp, _):
            e = await ops.lookup(ROOT_INO, b"f", CTX)
            during = (e.st_size, e.st_mtime_ns, e.st_ctime_ns, e.st_ino)
        assert during[0] == len(DATA)
        assert vp.vstate is VS.RECLAIMED
        a = await ops.getattr(ino, CTX)
        assert (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino) == during
        await ops.forget([(ino, 1)])


async def test_unlink_during_reclaim(tmp_path: Path) -> None:
    """The name goes while the vnode is written back; the kernel still knows the inode, so
    it stays usable (its descriptor pinned); once forgotten, its data is discarded."""
    async with mounted_ops(tmp_path) as ops:
        ino = await make_file(ops, b"f")
        async with held_reclaim(ops, ino) as (vp, result):
            e = await ops.lookup(ROOT_INO, b"f", CTX)
            await ops.unlink(ROOT_INO, b"f", CTX)
        assert result == [0]
        assert vp.vstate is VS.RECLAIMED
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.lookup(ROOT_INO, b"f", CTX)
        assert exc.value.errno == errno.ENOENT
        assert (await ops.getattr(e.st_ino, CTX)).st_nlink == 0
        fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)
        assert bytes(await ops.read(fi.fh, 0, 1 << 20)) == DATA
        await ops.release(fi.fh)
        await ops.forget([(e.st_ino, 1)])
        await eventually(lambda: not ops.engine.vcache.table, "the drain discards it")
        assert ops.engine.vcache.discards == 1
        assert ops.audit() == []


async def test_unlinked_file_the_kernel_knows_keeps_its_unwritten_data(tmp_path: Path) -> None:
    """Unlinked and closed, but still known (a cwd, an fd reopened by /proc): the vnode
    must not be discarded, or the dirty data a later open reads would be gone."""
    async with mounted_ops(tmp_path) as ops:
        fi, e = await ops.create(ROOT_INO, b"f", 0o644, os.O_RDWR, CTX)
        assert await ops.write(fi.fh, 0, DATA) == len(DATA)
        await ops.unlink(ROOT_INO, b"f", CTX)
        await ops.release(fi.fh)
        await trio.testing.wait_all_tasks_blocked()
        assert ops.engine.vcache.discards == 0
        fi = await ops.open(e.st_ino, os.O_RDONLY, CTX)
        assert bytes(await ops.read(fi.fh, 0, 1 << 20)) == DATA
        await ops.release(fi.fh)
        await ops.forget([(e.st_ino, 1)])
        await eventually(lambda: ops.engine.vcache.discards == 1, "discarded once forgotten")


async def test_unlinked_file_without_pages_is_discarded_by_its_last_forget(
    tmp_path: Path,
) -> None:
    """The common unlink (a file never written, or whose pages were written and freed):
    the vnode goes in the request that drops the last reference (kernel: vrelel), not in a
    drain task woken for it; one with pages still goes through the drain."""
    async with mounted_ops(tmp_path) as ops:
        vc = ops.engine.vcache
        fi, e = await ops.create(ROOT_INO, b"empty", 0o644, os.O_RDWR, CTX)
        await ops.release(fi.fh)
        vp = cached(ops, e.st_ino)
        await ops.unlink(ROOT_INO, b"empty", CTX)
        await ops.forget([(e.st_ino, 1)])  # no checkpoint since: the drain has not run
        assert (vc.discards, vp.vstate, vp.fd, vc.doomed) == (1, VS.RECLAIMED, -1, {})
        assert vp.key not in vc.table
        assert vp.uobj not in ops.engine.uvm.objects
        assert ops.audit() == []

        fi, e = await ops.create(ROOT_INO, b"dirty", 0o644, os.O_RDWR, CTX)
        assert await ops.write(fi.fh, 0, DATA) == len(DATA)
        await ops.release(fi.fh)
        vp = cached(ops, e.st_ino)
        await ops.unlink(ROOT_INO, b"dirty", CTX)
        await ops.forget([(e.st_ino, 1)])
        assert list(vc.doomed.values()) == [vp]  # its pages are the drain's to free
        await eventually(lambda: vc.discards == 2, "the drain discards it")
        assert vp.vstate is VS.RECLAIMED
        assert not vp.uobj.pages


async def test_rename_during_reclaim(tmp_path: Path) -> None:
    async with mounted_ops(tmp_path) as ops:
        ino = await make_file(ops, b"f")
        async with held_reclaim(ops, ino) as (_, result):
            await ops.rename(ROOT_INO, b"f", ROOT_INO, b"g", 0, CTX)
        assert result == [0]
        assert await read_file(ops, b"g") == DATA
        e = await ops.lookup(ROOT_INO, b"g", CTX)
        assert e.st_ino == ino  # unchanged by rename
        await ops.forget([(ino, 1)])
        with pytest.raises(pyfuse3.FUSEError):
            await ops.lookup(ROOT_INO, b"f", CTX)


async def test_failed_reclaim_keeps_the_vnode_and_the_waiting_open_gets_it(
    tmp_path: Path,
) -> None:
    """A write-back error during the reclaim: nothing is dropped, the vnode is LOADED again
    and the open that waited uses it; once the error clears, everything is written."""
    async with mounted_ops(tmp_path) as ops:
        ino = await make_file(ops, b"f")
        ops.engine.injector.arm(IOKind.WRITE, errno.EIO, 1000)
        opened: list[int] = []

        async def open_it() -> None:
            e = await ops.lookup(ROOT_INO, b"f", CTX)
            opened.append((await ops.open(e.st_ino, os.O_RDWR, CTX)).fh)

        async with (
            trio.open_nursery() as nursery,
            held_reclaim(ops, ino, via_drain=True) as (vp, _),
        ):
            nursery.start_soon(open_it)
            await trio.testing.wait_all_tasks_blocked()
        assert ops.engine.vcache.reclaim_failures == 1
        assert vp.vstate is VS.LOADED
        handle = ops.handles[opened[0]]
        assert handle.vnode is vp
        assert bytes(await ops.read(opened[0], 0, 1 << 20)) == DATA
        ops.engine.injector.arm(IOKind.WRITE, errno.EIO, 0)
        with pytest.raises(pyfuse3.FUSEError) as exc:
            await ops.flush(opened[0])  # the error nobody saw is reported, once
        assert exc.value.errno == errno.EIO
        await ops.fsync(opened[0], False)
        await ops.release(opened[0])
        await ops.forget([(ino, 1)])
    assert (tmp_path / "back" / "f").read_bytes() == DATA


async def test_drain_keeps_the_cache_at_maxvnodes_without_losing_data(tmp_path: Path) -> None:
    async with mounted_ops(tmp_path, maxvnodes=16) as ops:
        files = {f"f{i}".encode(): pattern(i, 3000 + i) for i in range(40)}
        for name, data in files.items():
            await make_file(ops, name, data)
            await eventually(lambda: len(ops.engine.vcache.table) <= 16, "drained to 16")
        assert ops.engine.vcache.reclaims >= 24
        for name, data in files.items():
            assert await read_file(ops, name) == data
    for name, data in files.items():
        assert (tmp_path / "back" / os.fsdecode(name)).read_bytes() == data


async def test_forget_while_open_keeps_the_handle_working(tmp_path: Path) -> None:
    """The kernel may forget a name's lookups while the file is open (its last lookup came
    from create); the handle keeps the inode and the vnode alive."""
    async with mounted_ops(tmp_path) as ops:
        fi, e = await ops.create(ROOT_INO, b"f", 0o644, os.O_RDWR, CTX)
        await ops.forget([(e.st_ino, 1)])
        assert e.st_ino in ops.ns.inodes  # still open
        assert await ops.write(fi.fh, 0, DATA) == len(DATA)
        assert bytes(await ops.read(fi.fh, 0, 100)) == DATA[:100]
        await ops.release(fi.fh)
        assert e.st_ino not in ops.ns.inodes
        assert await read_file(ops, b"f") == DATA


async def test_truncate_without_a_handle_takes_a_use(tmp_path: Path) -> None:
    async with mounted_ops(tmp_path) as ops:
        ino = await make_file(ops, b"f")
        e = await ops.lookup(ROOT_INO, b"f", CTX)
        attr = pyfuse3.EntryAttributes()
        attr.st_size = 3 * PAGE // 2
        fields = setattr_fields(update_size=True)
        got = await ops.setattr(ino, attr, fields, None, CTX)
        assert got.st_size == 3 * PAGE // 2
        assert cached(ops, ino).usecount == 0
        await ops.forget([(e.st_ino, 1)])
        assert await read_file(ops, b"f") == DATA[:5000] + bytes(3 * PAGE // 2 - 5000)


async def test_check_rules_catch_broken_state(tmp_path: Path) -> None:
    """The rules that would have caught the eviction bug fire when their state is broken."""
    async with mounted_ops(tmp_path) as ops:
        ino = await make_file(ops, b"f")
        fi = await ops.open((await ops.lookup(ROOT_INO, b"f", CTX)).st_ino, os.O_RDONLY, CTX)
        vp = cached(ops, ino)
        vcache = ops.engine.vcache
        # A handle whose vnode was reclaimed behind its back.
        vcache.table.pop(vp.key)
        assert any("not in the vnode cache" in v for v in ops.audit())
        vcache.table[vp.key] = vp
        # A vnode in use on the free list.
        vcache.free[vp.key] = vp
        assert any("on the free list with 1 uses" in v for v in ops.audit())
        del vcache.free[vp.key]
        # An inode whose cached descriptor was closed.
        assert ops.backing is not None
        inode = ops.backing.inodes[ino]
        fd = ops.backing.fd(inode)
        again = os.open(tmp_path / "back" / "f", os.O_PATH)
        os.close(fd)
        assert any("is not open" in v for v in ops.audit())
        os.dup2(again, fd)
        os.close(again)
        assert ops.audit() == []
        await ops.release(fi.fh)
        await ops.forget([(ino, 1)])
