"""Tests for pagers.backing_io: cluster reads into mmap frames, the RWF_NOWAIT fast path and
its fallbacks, clustered writes, fsync, errors as errnos, and fault injection.

The fallback paths are forced by replacing ``os.preadv``/``os.pwritev`` with fakes that
answer the RWF_NOWAIT attempt as a test needs (EAGAIN, a short count, EOPNOTSUPP, ...) and
otherwise do the real I/O, recording every call (flags, offset, view sizes, thread).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import mmap
import os
import random
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from unittest import mock

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from pagers import backing_io
from pagers.backing_io import (
    IOV_MAX,
    RWF_NOWAIT,
    BackingIO,
    FaultInjector,
    IOKind,
    parse_errno,
)
from pagers.iothreads import THREAD_NAME
from ubcfs.vm import diag

PAGE = 4096
FILL = 0xAA  # what frames hold before a read, so that "untouched" can be checked

_real_preadv = os.preadv
_real_pwritev = os.pwritev

needs_nowait = pytest.mark.skipif(RWF_NOWAIT == 0, reason="no RWF_NOWAIT on this platform")


# --- fixtures and helpers -----------------------------------------------------------------------

_made: list[BackingIO] = []  # every BackingIO of the running test, closed at its teardown


def new_bio(
    injector: FaultInjector | None = None, threads: int = 8, nowait: bool = True
) -> BackingIO:
    """A BackingIO whose worker threads the test's teardown stops (and checks stopped)."""
    bio = BackingIO(injector, threads, nowait)
    _made.append(bio)
    return bio


@pytest.fixture(autouse=True)
def _close_every_bio() -> Iterator[None]:
    yield
    while _made:
        _made.pop().close()
    assert not io_threads(), "backing-I/O threads left running"


def io_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_NAME)]


class Arena:
    """An anonymous mmap cut into 4 KiB frames, as ubcfs.vm.physmem does.

    ``close`` releases the views it handed out and closes the map; if the code under test
    kept a view (or a slice of one) alive, mmap.close raises BufferError.
    """

    def __init__(self, npages: int) -> None:
        self.map = mmap.mmap(-1, npages * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.view = memoryview(self.map)
        self.handed: list[memoryview] = []

    def span(self, start: int, end: int) -> memoryview:
        """A view of arena bytes [start, end), filled with FILL."""
        v = self.view[start:end]
        v[:] = bytes([FILL]) * (end - start)
        self.handed.append(v)
        return v

    def frames(self, n: int, first: int = 0) -> list[memoryview]:
        return [self.span((first + i) * PAGE, (first + i + 1) * PAGE) for i in range(n)]

    def close(self) -> None:
        for v in self.handed:
            v.release()
        self.view.release()
        self.map.close()


@pytest.fixture
def arena() -> Iterator[Arena]:
    a = Arena(64)
    yield a
    a.close()


MakeFile = Callable[[bytes], int]


@pytest.fixture
def make_file(tmp_path: Path) -> Iterator[MakeFile]:
    """Create a file holding ``data``; returns an O_RDWR fd, closed at teardown."""
    fds: list[int] = []

    def make(data: bytes) -> int:
        fd = os.open(tmp_path / f"f{len(fds)}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        fds.append(fd)
        assert os.pwrite(fd, data, 0) == len(data)
        return fd

    yield make
    for fd in fds:
        with contextlib.suppress(OSError):  # a test may have closed it already
            os.close(fd)


def randbytes(n: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(n)


def joined(views: list[memoryview]) -> bytes:
    return b"".join(v.tobytes() for v in views)


def truncate_views(views: list[memoryview], limit: int) -> list[memoryview]:
    """The first ``limit`` bytes of ``views``, as views."""
    out: list[memoryview] = []
    for v in views:
        if limit <= 0:
            break
        out.append(v[:limit])
        limit -= v.nbytes
    return out


@dataclasses.dataclass
class Call:
    flags: int
    offset: int
    sizes: list[int]
    in_thread: bool


NowaitAnswer = Callable[[int, list[memoryview], int], int]


def cached(fd: int, views: list[memoryview], offset: int) -> int:
    """RWF_NOWAIT answer when everything is in the page cache (whatever the file system)."""
    return _real_preadv(fd, views, offset)


def eagain(fd: int, views: list[memoryview], offset: int) -> int:
    raise BlockingIOError(errno.EAGAIN, "fake: not cached")


def short(k: int) -> NowaitAnswer:
    """RWF_NOWAIT answer when only the first ``k`` bytes are cached."""

    def answer(fd: int, views: list[memoryview], offset: int) -> int:
        return _real_preadv(fd, truncate_views(views, k), offset)

    return answer


def refuse(err: int) -> NowaitAnswer:
    def answer(fd: int, views: list[memoryview], offset: int) -> int:
        raise OSError(err, os.strerror(err))

    return answer


@dataclasses.dataclass
class FakePreadv:
    """Stands in for os.preadv: RWF_NOWAIT calls get ``nowait``'s answer; blocking calls
    sleep ``delay`` seconds, then do the real read, at most ``chunk`` bytes at a time, or
    fail with ``blocking_err``.  ``peak`` is the most blocking calls seen at once."""

    nowait: NowaitAnswer = cached
    chunk: int | None = None
    blocking_err: int = 0
    delay: float = 0.0
    calls: list[Call] = dataclasses.field(default_factory=list)
    active: int = 0
    peak: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def __call__(self, fd: int, views: list[memoryview], offset: int, flags: int = 0) -> int:
        in_thread = threading.current_thread() is not threading.main_thread()
        self.calls.append(Call(flags, offset, [v.nbytes for v in views], in_thread))
        if flags & RWF_NOWAIT:
            return self.nowait(fd, views, offset)
        with self.lock:
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            return self._blocking(fd, views, offset, flags)
        finally:
            with self.lock:
                self.active -= 1

    def _blocking(self, fd: int, views: list[memoryview], offset: int, flags: int) -> int:
        if self.blocking_err:
            raise OSError(self.blocking_err, os.strerror(self.blocking_err))
        if self.delay:
            time.sleep(self.delay)
        if self.chunk is not None:
            views = truncate_views(views, self.chunk)
        return _real_preadv(fd, views, offset, flags)

    @property
    def nowait_calls(self) -> list[Call]:
        return [c for c in self.calls if c.flags & RWF_NOWAIT]

    @property
    def blocking_calls(self) -> list[Call]:
        return [c for c in self.calls if not c.flags & RWF_NOWAIT]


@pytest.fixture
def fake_preadv(monkeypatch: pytest.MonkeyPatch) -> FakePreadv:
    fake = FakePreadv()
    monkeypatch.setattr(os, "preadv", fake)
    return fake


@dataclasses.dataclass
class FakePwritev:
    """Stands in for os.pwritev: writes at most ``chunk`` bytes per call; ``zero_after``
    calls that made progress, it returns 0 (no progress)."""

    chunk: int | None = None
    zero_after: int | None = None
    calls: list[Call] = dataclasses.field(default_factory=list)

    def __call__(self, fd: int, views: list[memoryview], offset: int, flags: int = 0) -> int:
        in_thread = threading.current_thread() is not threading.main_thread()
        self.calls.append(Call(flags, offset, [v.nbytes for v in views], in_thread))
        if self.zero_after is not None and len(self.calls) > self.zero_after:
            return 0
        if self.chunk is not None:
            views = truncate_views(views, self.chunk)
        return _real_pwritev(fd, views, offset, flags)


@pytest.fixture
def fake_pwritev(monkeypatch: pytest.MonkeyPatch) -> FakePwritev:
    fake = FakePwritev()
    monkeypatch.setattr(os, "pwritev", fake)
    return fake


def closed_fd(tmp_path: Path) -> int:
    fd = os.open(tmp_path / "closed", os.O_RDWR | os.O_CREAT, 0o600)
    os.close(fd)
    return fd


# --- reads: data -------------------------------------------------------------------------------


async def test_read_full_cluster(arena: Arena, make_file: MakeFile) -> None:
    data = randbytes(8 * PAGE)
    fd = make_file(data)
    bio = new_bio()
    views = arena.frames(4)
    assert await bio.readv(fd, views, 2 * PAGE) == (0, 4 * PAGE)
    assert joined(views) == data[2 * PAGE : 6 * PAGE]
    assert bio.stats.bytes_read == 4 * PAGE
    assert bio.stats.reads_inline + bio.stats.reads_threaded == 1


@pytest.mark.parametrize("nowait", [True, False])
async def test_read_partial_last_page(arena: Arena, make_file: MakeFile, nowait: bool) -> None:
    data = randbytes(2 * PAGE + 1000)
    fd = make_file(data)
    bio = new_bio(nowait=nowait)
    views = arena.frames(3)
    assert await bio.readv(fd, views, 0) == (0, len(data))
    got = joined(views)
    assert got[: len(data)] == data
    # Past EOF the frame is untouched: zero-filling it is the caller's job.
    assert got[len(data) :] == bytes([FILL]) * (3 * PAGE - len(data))


@pytest.mark.parametrize("nowait", [True, False])
async def test_read_past_eof_reads_nothing(arena: Arena, make_file: MakeFile, nowait: bool) -> None:
    fd = make_file(randbytes(PAGE))
    bio = new_bio(nowait=nowait)
    views = arena.frames(2)
    assert await bio.readv(fd, views, 4 * PAGE) == (0, 0)
    assert await bio.readv(fd, views, PAGE) == (0, 0)  # exactly at EOF
    assert joined(views) == bytes([FILL]) * 2 * PAGE
    assert bio.stats.bytes_read == 0
    assert bio.stats.errors == 0


@pytest.mark.parametrize("nowait", [True, False])
async def test_read_hole_reads_zeros(arena: Arena, make_file: MakeFile, nowait: bool) -> None:
    first, last = randbytes(PAGE, 1), randbytes(PAGE, 2)
    fd = make_file(first)
    assert os.pwrite(fd, last, 3 * PAGE) == PAGE  # pages 1 and 2 are a hole
    bio = new_bio(nowait=nowait)
    views = arena.frames(4)
    assert await bio.readv(fd, views, 0) == (0, 4 * PAGE)
    assert joined(views) == first + bytes(2 * PAGE) + last


async def test_read_odd_views_and_offset(arena: Arena, make_file: MakeFile) -> None:
    """Views need not be whole frames, nor the offset page-aligned."""
    data = randbytes(4 * PAGE)
    fd = make_file(data)
    views = [arena.span(0, 100), arena.span(PAGE, PAGE + 3000), arena.span(3 * PAGE, 4 * PAGE)]
    assert await new_bio().readv(fd, views, 777) == (0, 100 + 3000 + PAGE)
    assert joined(views) == data[777 : 777 + 100 + 3000 + PAGE]


async def test_empty_cluster_does_no_io(fake_preadv: FakePreadv, make_file: MakeFile) -> None:
    fd = make_file(randbytes(PAGE))
    assert await new_bio().readv(fd, [], 0) == (0, 0)
    assert fake_preadv.calls == []


# --- reads: which path -----------------------------------------------------------------------


@needs_nowait
async def test_cached_read_is_inline(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    data = randbytes(4 * PAGE)
    fd = make_file(data)
    bio = new_bio()
    views = arena.frames(4)
    assert await bio.readv(fd, views, 0) == (0, 4 * PAGE)
    assert joined(views) == data
    assert [(c.flags, c.offset, c.sizes, c.in_thread) for c in fake_preadv.calls] == [
        (RWF_NOWAIT, 0, [PAGE] * 4, False)
    ]
    assert (bio.stats.reads_inline, bio.stats.reads_threaded) == (1, 0)


@needs_nowait
async def test_real_page_cache_hit_is_inline(arena: Arena, make_file: MakeFile) -> None:
    """Without fakes: data just written sits in the host page cache, so no thread is used."""
    fd = make_file(randbytes(4 * PAGE))
    try:
        os.preadv(fd, [bytearray(1)], 0, RWF_NOWAIT)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise
        pytest.skip(f"the file system under tmp_path refuses RWF_NOWAIT ({e.strerror})")
    bio = new_bio()
    assert await bio.readv(fd, arena.frames(4), 0) == (0, 4 * PAGE)
    assert (bio.stats.reads_inline, bio.stats.reads_threaded) == (1, 0)


async def test_nowait_off_always_uses_thread(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    data = randbytes(4 * PAGE)
    fd = make_file(data)
    bio = new_bio(nowait=False)
    views = arena.frames(4)
    assert await bio.readv(fd, views, 0) == (0, 4 * PAGE)
    assert joined(views) == data
    assert fake_preadv.nowait_calls == []
    assert [c.in_thread for c in fake_preadv.blocking_calls] == [True]
    assert (bio.stats.reads_inline, bio.stats.reads_threaded) == (0, 1)


@needs_nowait
async def test_eagain_reads_whole_cluster_in_thread(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fake_preadv.nowait = eagain
    data = randbytes(4 * PAGE)
    fd = make_file(data)
    bio = new_bio()
    views = arena.frames(4)
    assert await bio.readv(fd, views, 0) == (0, 4 * PAGE)
    assert joined(views) == data
    assert [(c.flags, c.offset, c.sizes, c.in_thread) for c in fake_preadv.calls] == [
        (RWF_NOWAIT, 0, [PAGE] * 4, False),
        (0, 0, [PAGE] * 4, True),
    ]
    assert bio.stats.nowait_eagain == 1
    assert (bio.stats.reads_inline, bio.stats.reads_threaded) == (0, 1)
    assert bio.stats.bytes_read == 4 * PAGE


@needs_nowait
@pytest.mark.parametrize(
    ("k", "rest_sizes"),
    [
        (PAGE, [PAGE] * 3),  # stopped at a frame boundary
        (PAGE + 100, [PAGE - 100, PAGE, PAGE]),  # stopped inside the second frame
        (4 * PAGE - 1, [1]),  # one byte short
        (0, [PAGE] * 4),  # nothing, but not at EOF either
    ],
)
async def test_short_nowait_read_finishes_in_thread(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv, k: int, rest_sizes: list[int]
) -> None:
    fake_preadv.nowait = short(k)
    data = randbytes(6 * PAGE)
    fd = make_file(data)
    bio = new_bio()
    views = arena.frames(4)
    assert await bio.readv(fd, views, PAGE) == (0, 4 * PAGE)
    assert joined(views) == data[PAGE : 5 * PAGE]
    rest = fake_preadv.blocking_calls
    assert [(c.offset, c.sizes, c.in_thread) for c in rest] == [(PAGE + k, rest_sizes, True)]
    assert bio.stats.nowait_partial == 1
    assert (bio.stats.reads_inline, bio.stats.reads_threaded) == (0, 1)
    assert bio.stats.bytes_read == 4 * PAGE


@needs_nowait
async def test_short_nowait_read_at_eof_stays_inline(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    data = randbytes(2 * PAGE + 1000)
    fd = make_file(data)
    bio = new_bio()
    views = arena.frames(3)
    assert await bio.readv(fd, views, 0) == (0, len(data))
    assert joined(views)[: len(data)] == data
    assert await bio.readv(fd, arena.frames(2, first=8), 5 * PAGE) == (0, 0)
    assert fake_preadv.blocking_calls == []
    assert bio.stats.nowait_eof == 2
    assert (bio.stats.reads_inline, bio.stats.reads_threaded) == (2, 0)


async def test_thread_loops_on_short_reads_until_eof(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fake_preadv.chunk = 1000
    data = randbytes(2 * PAGE + 1240)
    fd = make_file(data)
    bio = new_bio(nowait=False)
    views = arena.frames(3)
    assert await bio.readv(fd, views, 0) == (0, len(data))
    assert joined(views)[: len(data)] == data
    offsets = [c.offset for c in fake_preadv.blocking_calls]
    # 9 full chunks, one of 432 bytes, then a read of 0 bytes: EOF.
    assert offsets == [*range(0, len(data), 1000), len(data)]
    assert all(c.in_thread for c in fake_preadv.calls)
    assert bio.stats.reads_threaded == 1


async def test_thread_stops_when_full(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fake_preadv.chunk = 1000
    data = randbytes(4 * PAGE)
    fd = make_file(data)
    views = arena.frames(2)
    assert await new_bio(nowait=False).readv(fd, views, 0) == (0, 2 * PAGE)
    assert joined(views) == data[: 2 * PAGE]
    assert len(fake_preadv.blocking_calls) == 9  # ceil(8192 / 1000), no extra EOF probe


@needs_nowait
@pytest.mark.parametrize("err", [errno.EOPNOTSUPP, errno.ENOSYS])
async def test_nowait_unsupported_is_remembered_per_fd(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv, err: int
) -> None:
    fake_preadv.nowait = refuse(err)
    data = randbytes(2 * PAGE)
    fd, other = make_file(data), make_file(data)
    bio = new_bio()
    views = arena.frames(2)
    assert await bio.readv(fd, views, 0) == (0, 2 * PAGE)
    assert joined(views) == data
    assert bio.nowait_unsupported(fd)
    assert not bio.nowait_unsupported(other)
    assert await bio.readv(fd, views, 0) == (0, 2 * PAGE)
    assert len(fake_preadv.nowait_calls) == 1  # not tried again on that fd
    assert await bio.readv(other, views, 0) == (0, 2 * PAGE)
    assert len(fake_preadv.nowait_calls) == 2  # but tried on another
    bio.forget(fd)
    assert await bio.readv(fd, views, 0) == (0, 2 * PAGE)
    assert len(fake_preadv.nowait_calls) == 3  # and again after forget
    assert bio.stats.nowait_unsupported == 3
    assert bio.stats.reads_threaded == 4


@needs_nowait
async def test_real_tmpfs_refusing_nowait(arena: Arena) -> None:
    """Without fakes: shmem (memfd, tmpfs) refuses RWF_NOWAIT on many kernels."""
    data = randbytes(2 * PAGE)
    fd = os.memfd_create("ubcfs-test")
    try:
        os.pwrite(fd, data, 0)
        try:
            os.preadv(fd, [bytearray(1)], 0, RWF_NOWAIT)
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
                raise
        else:
            pytest.skip("this kernel's shmem supports RWF_NOWAIT")
        bio = new_bio()
        views = arena.frames(2)
        assert await bio.readv(fd, views, 0) == (0, 2 * PAGE)
        assert await bio.readv(fd, views, 0) == (0, 2 * PAGE)
        assert joined(views) == data
        assert bio.stats.nowait_unsupported == 1
        assert (bio.stats.reads_inline, bio.stats.reads_threaded) == (0, 2)
    finally:
        os.close(fd)


@needs_nowait
async def test_nowait_einval_then_thread_succeeds_remembers_fd(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fake_preadv.nowait = refuse(errno.EINVAL)
    data = randbytes(2 * PAGE)
    fd = make_file(data)
    bio = new_bio()
    views = arena.frames(2)
    assert await bio.readv(fd, views, 0) == (0, 2 * PAGE)
    assert joined(views) == data
    assert bio.nowait_unsupported(fd)
    assert bio.stats.nowait_unsupported == 1
    assert bio.stats.errors == 0


@needs_nowait
async def test_nowait_einval_twice_is_an_error_not_a_flag_problem(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fake_preadv.nowait = refuse(errno.EINVAL)
    fake_preadv.blocking_err = errno.EINVAL
    fd = make_file(randbytes(2 * PAGE))
    bio = new_bio()
    assert await bio.readv(fd, arena.frames(2), 0) == (errno.EINVAL, 0)
    assert not bio.nowait_unsupported(fd)
    assert bio.stats.nowait_unsupported == 0
    assert bio.stats.errors == 1


@needs_nowait
async def test_nowait_real_error_is_returned_inline(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fake_preadv.nowait = refuse(errno.EIO)
    fd = make_file(randbytes(PAGE))
    bio = new_bio()
    assert await bio.readv(fd, arena.frames(1), 0) == (errno.EIO, 0)
    assert fake_preadv.blocking_calls == []
    assert bio.stats.errors == 1


# --- reads: errors, shapes, threads ---------------------------------------------------------------


@pytest.mark.parametrize("nowait", [True, False])
async def test_read_errors_come_back_as_errnos(arena: Arena, tmp_path: Path, nowait: bool) -> None:
    bio = new_bio(nowait=nowait)
    assert await bio.readv(closed_fd(tmp_path), arena.frames(2), 0) == (errno.EBADF, 0)
    dfd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert await bio.readv(dfd, arena.frames(1), 0) == (errno.EISDIR, 0)
    finally:
        os.close(dfd)
    assert bio.stats.errors == 2
    assert bio.stats.bytes_read == 0


async def test_thread_error_after_progress_reports_bytes_done(
    arena: Arena, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    def flaky(fd: int, views: list[memoryview], offset: int, flags: int = 0) -> int:
        if offset == 0:
            return _real_preadv(fd, truncate_views(views, PAGE), offset)
        raise OSError(errno.EIO, "fake media error")

    monkeypatch.setattr(os, "preadv", flaky)
    fd = make_file(randbytes(4 * PAGE))
    assert await new_bio(nowait=False).readv(fd, arena.frames(4), 0) == (errno.EIO, PAGE)


def test_bad_clusters_are_bugs(arena: Arena, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(diag, "DIAGNOSTIC", True)  # the per-view checks need it
    bio = new_bio()
    frame = arena.frames(1)
    with pytest.raises(AssertionError, match="negative offset"):
        trio.run(bio.readv, 0, frame, -1)
    with pytest.raises(AssertionError, match="IOV_MAX"):
        trio.run(bio.writev, 0, frame * (IOV_MAX + 1), 0)
    words = frame[0].cast("I")
    try:
        with pytest.raises(AssertionError, match="byte views"):
            trio.run(bio.readv, 0, [words], 0)
    finally:
        words.release()


async def test_threads_cap_concurrent_io(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fake_preadv.delay = 0.05
    fd = make_file(randbytes(PAGE))
    for threads in (1, 2):
        fake_preadv.peak = 0
        bio = new_bio(threads=threads, nowait=False)
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(bio.readv, fd, arena.frames(1, first=i), 0)
        assert fake_preadv.peak == threads
        assert bio.stats.reads_threaded == 4


async def test_cancel_does_not_abandon_the_thread(
    arena: Arena, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cancelled caller still gets the completed read; the cancellation comes after."""
    started, release = threading.Event(), threading.Event()

    def slow(fd: int, views: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags:
            raise BlockingIOError(errno.EAGAIN, "fake")
        started.set()
        release.wait(10)
        return _real_preadv(fd, views, offset)

    monkeypatch.setattr(os, "preadv", slow)
    data = randbytes(2 * PAGE)
    fd = make_file(data)
    bio = new_bio()
    views = arena.frames(2)
    results: list[object] = []
    scopes: list[trio.CancelScope] = []

    async def reader() -> None:
        with trio.CancelScope() as scope:
            scopes.append(scope)
            results.append(await bio.readv(fd, views, 0))
            await trio.lowlevel.checkpoint()
            results.append("not cancelled")

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader)
            assert await trio.to_thread.run_sync(started.wait, 10.0)
            scopes[0].cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert results == []  # still waiting for the thread, not abandoned
            release.set()
    finally:
        release.set()
    assert results == [(0, 2 * PAGE)]
    assert joined(views) == data


async def test_cancel_while_queued_leaves_the_views_untouched(
    arena: Arena, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With every thread busy, a cancelled read is withdrawn: Cancelled, nothing written."""
    started, release = threading.Event(), threading.Event()
    blocking_offsets: list[int] = []

    def slow(fd: int, views: list[memoryview], offset: int, flags: int = 0) -> int:
        if flags:
            raise BlockingIOError(errno.EAGAIN, "fake")
        blocking_offsets.append(offset)
        if offset == 0:
            started.set()
            release.wait(10)
        return _real_preadv(fd, views, offset)

    monkeypatch.setattr(os, "preadv", slow)
    data = randbytes(2 * PAGE)
    fd = make_file(data)
    bio = new_bio(threads=1)
    first, second = arena.frames(1), arena.frames(1, first=1)
    outcome: list[object] = []

    scope = trio.CancelScope()

    async def reader(views: list[memoryview], offset: int, scope: trio.CancelScope) -> None:
        with scope:
            try:
                outcome.append(await bio.readv(fd, views, offset))
            except trio.Cancelled:
                outcome.append("cancelled")
                raise

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader, first, 0, trio.CancelScope())
            assert await trio.to_thread.run_sync(started.wait, 10.0)
            nursery.start_soon(reader, second, PAGE, scope)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()  # the second read waits in the queue behind the first
            await trio.testing.wait_all_tasks_blocked()
            assert outcome == ["cancelled"]
            release.set()
    finally:
        release.set()
    assert outcome == ["cancelled", (0, PAGE)]  # the running one completed all the same
    assert joined(first) == data[:PAGE]
    assert joined(second) == bytes([FILL]) * PAGE  # never read
    await bio.aclose()
    assert blocking_offsets == [0]
    assert bio.stats.reads_threaded == 1


async def test_aclose_waits_for_io_in_flight(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fake_preadv.delay = 0.02
    data = randbytes(4 * PAGE)
    fd = make_file(data)
    bio = new_bio(threads=2, nowait=False)
    views = [arena.frames(1, first=i) for i in range(4)]
    results: list[tuple[int, int]] = []

    async def reader(i: int) -> None:
        results.append(await bio.readv(fd, views[i], i * PAGE))

    async with trio.open_nursery() as nursery:
        for i in range(4):
            nursery.start_soon(reader, i)
        await trio.testing.wait_all_tasks_blocked()
        await bio.aclose()  # two reads running, two queued: all of them finish first
        # Every read has landed by now; its task may not have run yet to note the result.
        assert [joined(v) for v in views] == [data[i * PAGE : (i + 1) * PAGE] for i in range(4)]
        assert io_threads() == []
    assert results == [(0, PAGE)] * 4


async def test_many_concurrent_reads_and_writes(arena: Arena, make_file: MakeFile) -> None:
    data = randbytes(32 * PAGE)
    fd = make_file(data)
    wfd = make_file(b"")
    bio = new_bio(threads=3, nowait=False)
    rviews = [arena.frames(1, first=i) for i in range(32)]
    wviews = [arena.frames(1, first=32 + i) for i in range(32)]
    for i, v in enumerate(wviews):
        v[0][:] = randbytes(PAGE, seed=100 + i)
    results: dict[tuple[str, int], tuple[int, int]] = {}

    async def read(i: int) -> None:
        results["r", i] = await bio.readv(fd, rviews[i], i * PAGE)

    async def write(i: int) -> None:
        results["w", i] = await bio.writev(wfd, wviews[i], i * PAGE)

    async with trio.open_nursery() as nursery:
        for i in range(32):
            nursery.start_soon(read, i)
            nursery.start_soon(write, i)
    assert set(results.values()) == {(0, PAGE)}
    assert b"".join(joined(v) for v in rviews) == data
    assert os.pread(wfd, 32 * PAGE, 0) == b"".join(joined(v) for v in wviews)
    assert bio.stats.reads_threaded == bio.stats.writes == 32
    assert bio.threads.statistics()["deliveries"] <= 64


# --- read-ahead (start_readv) ---------------------------------------------------------------


@needs_nowait
async def test_start_readv_queues_what_nowait_did_not_serve(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    data = randbytes(3 * PAGE)
    fd = make_file(data)
    bio = new_bio()
    fake_preadv.nowait = short(PAGE)
    views = arena.frames(3)
    pending = bio.start_readv(fd, views, 0)
    assert [c.offset for c in fake_preadv.nowait_calls] == [0]
    assert await pending.finish() == (0, 3 * PAGE)
    assert joined(views) == data
    assert [(c.offset, c.in_thread) for c in fake_preadv.blocking_calls] == [(PAGE, True)]
    assert (bio.stats.reads_ahead, bio.stats.reads_threaded, bio.stats.bytes_read) == (
        1,
        1,
        3 * PAGE,
    )
    fake_preadv.nowait = cached
    views = arena.frames(2, first=3)
    pending = bio.start_readv(fd, views, PAGE)
    assert joined(views) == data[PAGE:]  # served inline, before finish
    with trio.testing.assert_no_checkpoints():
        assert await pending.finish() == (0, 2 * PAGE)
    assert bio.stats.reads_inline == 1


async def test_start_readv_at_eof_is_short(arena: Arena, make_file: MakeFile) -> None:
    data = randbytes(PAGE + 100)
    fd = make_file(data)
    bio = new_bio()
    views = arena.frames(3)
    assert await bio.start_readv(fd, views, 0).finish() == (0, PAGE + 100)
    assert joined(views)[: PAGE + 100] == data
    assert joined(views)[PAGE + 100 :] == bytes([FILL]) * (2 * PAGE - 100)  # caller zeroes
    assert await bio.start_readv(fd, arena.frames(1, first=5), 8 * PAGE).finish() == (0, 0)


async def test_start_readv_fault_is_injected_before_issue(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    fd = make_file(randbytes(PAGE))
    bio = new_bio()
    bio.injector.arm(IOKind.READ, errno.EIO, 1)
    pending = bio.start_readv(fd, arena.frames(1), 0)
    assert fake_preadv.calls == []
    assert await pending.finish() == (errno.EIO, 0)
    assert fake_preadv.calls == []
    assert bio.stats.injected_failures == 1
    assert await bio.start_readv(fd, [], 0).finish() == (0, 0)  # empty: no I/O either
    assert fake_preadv.calls == []


@pytest.mark.parametrize("nowait", [True, False])
async def test_start_readv_errors_are_errnos(arena: Arena, tmp_path: Path, nowait: bool) -> None:
    bio = new_bio(nowait=nowait)
    assert await bio.start_readv(closed_fd(tmp_path), arena.frames(1), 0).finish() == (
        errno.EBADF,
        0,
    )
    assert bio.stats.errors == 1


# --- writes ------------------------------------------------------------------------------------


async def test_writes_land_at_the_right_offsets(
    arena: Arena, make_file: MakeFile, fake_pwritev: FakePwritev
) -> None:
    fd = make_file(b"")
    pages = [randbytes(PAGE, seed) for seed in range(3)]
    views = arena.frames(3)
    for v, p in zip(views, pages, strict=True):
        v[:] = p
    bio = new_bio()
    assert await bio.writev(fd, views, 5 * PAGE) == (0, 3 * PAGE)
    part = arena.span(10 * PAGE, 10 * PAGE + 300)
    part[:] = b"x" * 300
    assert await bio.writev(fd, [part], 5 * PAGE + 100) == (0, 300)
    expect = bytearray(bytes(5 * PAGE) + b"".join(pages))
    expect[5 * PAGE + 100 : 5 * PAGE + 400] = b"x" * 300
    assert os.pread(fd, 16 * PAGE, 0) == expect
    assert [(c.offset, c.sizes, c.in_thread) for c in fake_pwritev.calls] == [
        (5 * PAGE, [PAGE] * 3, True),
        (5 * PAGE + 100, [300], True),
    ]
    assert (bio.stats.writes, bio.stats.bytes_written) == (2, 3 * PAGE + 300)


async def test_write_loops_on_short_writes(
    arena: Arena, make_file: MakeFile, fake_pwritev: FakePwritev
) -> None:
    fake_pwritev.chunk = 1000
    fd = make_file(b"")
    data = randbytes(3 * PAGE)
    views = arena.frames(3)
    for i, v in enumerate(views):
        v[:] = data[i * PAGE : (i + 1) * PAGE]
    assert await new_bio().writev(fd, views, 0) == (0, 3 * PAGE)
    assert os.pread(fd, 4 * PAGE, 0) == data
    assert [c.offset for c in fake_pwritev.calls] == list(range(0, 3 * PAGE, 1000))
    assert all(c.in_thread for c in fake_pwritev.calls)


@pytest.mark.parametrize(("zero_after", "written"), [(0, 0), (2, 2000)])
async def test_write_without_progress_is_eio(
    arena: Arena,
    make_file: MakeFile,
    fake_pwritev: FakePwritev,
    zero_after: int,
    written: int,
) -> None:
    fake_pwritev.chunk = 1000
    fake_pwritev.zero_after = zero_after
    fd = make_file(b"")
    bio = new_bio()
    assert await bio.writev(fd, arena.frames(1), 0) == (errno.EIO, written)
    assert len(fake_pwritev.calls) == zero_after + 1  # gave up, did not spin
    assert bio.stats.errors == 1


async def test_write_errors_come_back_as_errnos(arena: Arena, tmp_path: Path) -> None:
    bio = new_bio()
    assert await bio.writev(closed_fd(tmp_path), arena.frames(1), 0) == (errno.EBADF, 0)
    path = tmp_path / "ro"
    path.write_bytes(b"")
    rfd = os.open(path, os.O_RDONLY)
    try:
        assert await bio.writev(rfd, arena.frames(1), 0) == (errno.EBADF, 0)
    finally:
        os.close(rfd)
    assert bio.stats.errors == 2
    assert bio.stats.bytes_written == 0
    assert path.read_bytes() == b""


# --- fsync -------------------------------------------------------------------------------------


@dataclasses.dataclass
class SyncRecorder:
    calls: list[tuple[str, int, bool]] = dataclasses.field(default_factory=list)

    def fsync(self, fd: int) -> None:
        self.calls.append(("fsync", fd, threading.current_thread() is threading.main_thread()))

    def fdatasync(self, fd: int) -> None:
        self.calls.append(("fdatasync", fd, threading.current_thread() is threading.main_thread()))


async def test_fsync_ok(make_file: MakeFile) -> None:
    fd = make_file(randbytes(PAGE))
    bio = new_bio()
    assert await bio.fsync(fd) == 0
    assert await bio.fsync(fd, datasync=True) == 0
    assert bio.stats.fsyncs == 2


async def test_fsync_runs_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = SyncRecorder()
    monkeypatch.setattr(os, "fsync", rec.fsync)
    monkeypatch.setattr(os, "fdatasync", rec.fdatasync)
    bio = new_bio()
    assert await bio.fsync(7) == 0
    assert await bio.fsync(8, datasync=True) == 0
    assert rec.calls == [("fsync", 7, False), ("fdatasync", 8, False)]


async def test_fsync_error_is_an_errno(tmp_path: Path) -> None:
    bio = new_bio()
    assert await bio.fsync(closed_fd(tmp_path)) == errno.EBADF
    assert bio.stats.errors == 1


# --- fallocate -----------------------------------------------------------------------------

KEEP_SIZE = 0x01
PUNCH_HOLE = 0x02
COLLAPSE_RANGE = 0x08
UNKNOWN_MODE = 0x4000  # no such FALLOC_FL_* flag


async def test_fallocate_keep_size_and_mode_0(make_file: MakeFile) -> None:
    """KEEP_SIZE allocates past EOF without growing the file; mode 0 grows it."""
    fd = make_file(b"x" * 100)
    bio = new_bio()
    assert await bio.fallocate(fd, KEEP_SIZE, 0, 64 * PAGE) == 0
    st = os.fstat(fd)
    assert st.st_size == 100
    assert st.st_blocks * 512 >= 64 * PAGE
    assert await bio.fallocate(fd, 0, 0, 3 * PAGE + 5) == 0
    assert os.fstat(fd).st_size == 3 * PAGE + 5
    assert os.pread(fd, 200, 0) == b"x" * 100 + bytes(100)
    assert (bio.stats.fallocates, bio.stats.errors) == (2, 0)


async def test_fallocate_punch_hole(make_file: MakeFile) -> None:
    data = randbytes(4 * PAGE)
    fd = make_file(data)
    os.fsync(fd)
    bio = new_bio()
    assert await bio.fallocate(fd, PUNCH_HOLE | KEEP_SIZE, PAGE, 2 * PAGE) == 0
    assert os.fstat(fd).st_size == 4 * PAGE
    assert os.pread(fd, 4 * PAGE, 0) == data[:PAGE] + bytes(2 * PAGE) + data[3 * PAGE :]
    assert os.lseek(fd, 0, os.SEEK_HOLE) == PAGE


async def test_fallocate_runs_in_a_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    threads: list[bool] = []

    def fake(fd: int, mode: int, offset: int, length: int) -> int:
        threads.append(threading.current_thread() is threading.main_thread())
        return 0

    monkeypatch.setattr(backing_io, "_FALLOCATE", fake)
    assert await new_bio().fallocate(3, 0, 0, PAGE) == 0
    assert threads == [False]


async def test_fallocate_errors_are_the_file_systems(make_file: MakeFile, tmp_path: Path) -> None:
    """The backing file system's own errno comes back: nothing is emulated or retried."""
    fd = make_file(randbytes(PAGE))
    bio = new_bio()
    assert await bio.fallocate(fd, UNKNOWN_MODE, 0, PAGE) == errno.EOPNOTSUPP
    assert await bio.fallocate(fd, PUNCH_HOLE, 0, PAGE) == errno.EOPNOTSUPP  # no KEEP_SIZE
    assert await bio.fallocate(fd, COLLAPSE_RANGE, 1, PAGE) == errno.EINVAL  # unaligned
    assert await bio.fallocate(fd, 0, -1, PAGE) == errno.EINVAL
    assert await bio.fallocate(closed_fd(tmp_path), 0, 0, PAGE) == errno.EBADF
    assert await bio.fallocate(fd, 0, 0, 1 << 62) in (errno.EFBIG, errno.ENOSPC)
    assert bio.stats.errors == bio.stats.fallocates == 6
    assert os.pread(fd, PAGE, 0) == randbytes(PAGE)


async def test_injected_fallocate_fault(make_file: MakeFile) -> None:
    fd = make_file(b"")
    bio = new_bio()
    bio.injector.arm(IOKind.FALLOCATE, errno.ENOSPC, 1)
    assert await bio.fallocate(fd, 0, 0, PAGE) == errno.ENOSPC
    assert os.fstat(fd).st_size == 0  # not issued
    assert await bio.fallocate(fd, 0, 0, PAGE) == 0
    assert os.fstat(fd).st_size == PAGE
    assert (bio.stats.injected_failures, bio.stats.fallocates) == (1, 1)


# --- fault injection ---------------------------------------------------------------------------


async def test_injected_read_faults(
    arena: Arena, make_file: MakeFile, fake_preadv: FakePreadv
) -> None:
    data = randbytes(PAGE)
    fd = make_file(data)
    bio = new_bio()
    bio.injector.arm(IOKind.READ, errno.EIO, 2)
    assert bio.injector.armed() == {"backing-read": (errno.EIO, 2)}
    views = arena.frames(1)
    assert await bio.readv(fd, views, 0) == (errno.EIO, 0)
    assert bio.injector.armed() == {"backing-read": (errno.EIO, 1)}
    assert await bio.readv(fd, views, 0) == (errno.EIO, 0)
    assert bio.injector.armed() == {}
    assert fake_preadv.calls == []  # failed before any I/O
    assert joined(views) == bytes([FILL]) * PAGE
    assert await bio.readv(fd, views, 0) == (0, PAGE)
    assert joined(views) == data
    assert bio.stats.injected_failures == 2
    assert bio.stats.errors == 0  # injected failures are counted apart


async def test_injected_write_fault(
    arena: Arena, make_file: MakeFile, fake_pwritev: FakePwritev
) -> None:
    fd = make_file(b"")
    bio = new_bio()
    bio.injector.arm(IOKind.WRITE, errno.ENOSPC, 1)
    views = arena.frames(1)
    assert await bio.writev(fd, views, 0) == (errno.ENOSPC, 0)
    assert fake_pwritev.calls == []
    assert os.fstat(fd).st_size == 0
    assert await bio.writev(fd, views, 0) == (0, PAGE)
    assert os.pread(fd, PAGE, 0) == bytes([FILL]) * PAGE
    assert (bio.stats.injected_failures, bio.stats.writes) == (1, 1)


async def test_injected_fsync_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    rec = SyncRecorder()
    monkeypatch.setattr(os, "fsync", rec.fsync)
    bio = new_bio()
    bio.injector.arm(IOKind.FSYNC, errno.EIO, 1)
    assert await bio.fsync(3) == errno.EIO
    assert rec.calls == []
    assert await bio.fsync(3) == 0
    assert len(rec.calls) == 1
    assert (bio.stats.injected_failures, bio.stats.fsyncs) == (1, 1)


async def test_kinds_are_independent(
    arena: Arena, make_file: MakeFile, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", SyncRecorder().fsync)
    fd = make_file(randbytes(PAGE))
    views = arena.frames(1)
    for kind in IOKind:
        bio = new_bio()
        bio.injector.arm(kind, errno.EIO, 1)
        failed = {
            IOKind.READ: (await bio.readv(fd, views, 0))[0],
            IOKind.WRITE: (await bio.writev(fd, views, 0))[0],
            IOKind.FSYNC: await bio.fsync(fd),
            IOKind.FALLOCATE: await bio.fallocate(fd, KEEP_SIZE, 0, PAGE),
            IOKind.SWAP_READ: (await bio.readv(fd, views, 0, IOKind.SWAP_READ))[0],
            IOKind.SWAP_WRITE: (await bio.writev(fd, views, 0, IOKind.SWAP_WRITE))[0],
        }
        assert failed == {k: errno.EIO if k is kind else 0 for k in IOKind}


async def test_injector_shared_between_instances(arena: Arena, make_file: MakeFile) -> None:
    injector = FaultInjector()
    fd = make_file(randbytes(PAGE))
    a, b = new_bio(injector), new_bio(injector)
    injector.arm(IOKind.READ, errno.EAGAIN, 2)
    assert (await a.readv(fd, arena.frames(1), 0))[0] == errno.EAGAIN
    assert (await b.readv(fd, arena.frames(1), 0))[0] == errno.EAGAIN
    assert (await a.readv(fd, arena.frames(1), 0))[0] == 0


def test_count_zero_disarms() -> None:
    inj = FaultInjector()
    inj.arm(IOKind.READ, errno.EIO, 5)
    inj.arm(IOKind.WRITE, errno.ENOSPC, 1)
    inj.arm(IOKind.READ, errno.EIO, 0)
    assert inj.armed() == {"backing-write": (errno.ENOSPC, 1)}
    assert inj.take(IOKind.READ) == 0
    inj.arm(IOKind.FSYNC, errno.EIO, 0)  # disarming what is not armed is fine
    assert inj.armed() == {"backing-write": (errno.ENOSPC, 1)}


def test_arming_again_replaces() -> None:
    inj = FaultInjector()
    inj.arm(IOKind.WRITE, errno.EIO, 5)
    inj.arm(IOKind.WRITE, errno.ENOSPC, 1)
    assert inj.take(IOKind.WRITE) == errno.ENOSPC
    assert inj.take(IOKind.WRITE) == 0


@pytest.mark.parametrize(
    ("err", "count", "match"),
    [
        (0, 1, r"errno must be a positive integer, got 0$"),
        (-5, 1, r"errno must be a positive integer, got -5$"),
        (True, 1, r"errno must be a positive integer, got True$"),
        (99999, 1, r"99999 is not an errno known to this system$"),
        (errno.EIO, -1, r"count must be an integer >= 0, got -1$"),
        (errno.EIO, 1.5, r"count must be an integer >= 0, got 1.5$"),
    ],
)
def test_arm_validation(err: object, count: object, match: str) -> None:
    inj = FaultInjector()
    with pytest.raises(ValueError, match=r"^inject backing-write: " + match) as info:
        inj.arm(IOKind.WRITE, err, count)
    assert "\n" not in str(info.value)
    assert inj.armed() == {}


def test_iokind_names() -> None:
    assert [k.value for k in IOKind] == [
        "backing-read",
        "backing-write",
        "backing-fsync",
        "backing-fallocate",
        "swap-read",
        "swap-write",
    ]
    assert IOKind.parse("backing-write") is IOKind.WRITE
    assert IOKind.parse("swap-write") is IOKind.SWAP_WRITE
    with pytest.raises(ValueError, match=r"unknown backing I/O kind 'swap-writ' \(expected "):
        IOKind.parse("swap-writ")


@pytest.mark.parametrize(
    ("text", "code"), [("EIO", errno.EIO), ("enospc", errno.ENOSPC), (" 28 ", 28)]
)
def test_parse_errno(text: str, code: int) -> None:
    assert parse_errno(text) == code


@pytest.mark.parametrize("text", ["", "EBOGUS", "errorcode", "-5", "IO"])
def test_parse_errno_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="unknown errno name"):
        parse_errno(text)


def test_stats_snapshot() -> None:
    bio = new_bio()
    bio.stats.reads_inline = 3
    snap = bio.stats.snapshot()
    assert snap["reads_inline"] == 3
    assert set(snap) >= {"reads_threaded", "nowait_eagain", "nowait_partial", "injected_failures"}


# --- properties --------------------------------------------------------------------------------

Nowait = str | int  # "cached", "eagain", "off", or the byte count a short answer stops at


def nowait_answer(nowait: Nowait) -> NowaitAnswer:
    if isinstance(nowait, int):
        return short(nowait)
    return eagain if nowait == "eagain" else cached


@settings(deadline=None)
@given(
    size=st.integers(0, 6 * PAGE),
    offset=st.integers(0, 7 * PAGE),
    sizes=st.lists(st.integers(1, 2 * PAGE), min_size=1, max_size=6),
    nowait=st.one_of(st.sampled_from(["cached", "eagain", "off"]), st.integers(0, 12 * PAGE)),
    chunk=st.one_of(st.none(), st.integers(1, 3 * PAGE)),
)
def test_read_matches_model(
    size: int, offset: int, sizes: list[int], nowait: Nowait, chunk: int | None
) -> None:
    """Whatever the inline attempt and the thread's reads return, the bytes that land are
    the file's, the count stops exactly at EOF, and nothing past it is touched."""
    data = randbytes(size, size)
    fake = FakePreadv(nowait=nowait_answer(nowait), chunk=chunk)
    arena = Arena(16)
    try:
        views, at = [], 0
        for n in sizes:
            views.append(arena.span(at, at + n))
            at += n + 7  # not adjacent in the arena
        want = sum(sizes)
        with tempfile.TemporaryFile() as f, mock.patch.object(os, "preadv", fake):
            os.pwrite(f.fileno(), data, 0)
            bio = new_bio(nowait=nowait != "off")
            err, n = trio.run(bio.readv, f.fileno(), views, offset)
        expect = data[offset : offset + want]
        assert (err, n) == (0, len(expect))
        got = joined(views)
        assert got[:n] == expect
        assert got[n:] == bytes([FILL]) * (want - n)
        assert bio.stats.reads_inline + bio.stats.reads_threaded == 1
    finally:
        arena.close()


@settings(deadline=None)
@given(
    offset=st.integers(0, 5 * PAGE),
    sizes=st.lists(st.integers(1, 2 * PAGE), min_size=1, max_size=6),
    chunk=st.one_of(st.none(), st.integers(1, 3 * PAGE)),
)
def test_write_matches_model(offset: int, sizes: list[int], chunk: int | None) -> None:
    arena = Arena(16)
    try:
        views, at = [], 0
        for i, n in enumerate(sizes):
            v = arena.span(at, at + n)
            v[:] = randbytes(n, i)
            views.append(v)
            at += n
        expect = bytes(offset) + joined(views)
        fake = FakePwritev(chunk=chunk)
        with tempfile.TemporaryFile() as f, mock.patch.object(os, "pwritev", fake):
            err, n = trio.run(new_bio().writev, f.fileno(), views, offset)
            assert (err, n) == (0, sum(sizes))
            assert os.pread(f.fileno(), len(expect) + 1, 0) == expect
    finally:
        arena.close()
