"""Backing-file I/O for the vnode pager: clustered preadv/pwritev straight into page frames
(~ the buf/VOP_STRATEGY edge under genfs_do_io in genfs_io.c and uvm_vnode.c).

Theory of operation
-------------------
The pager hands this module a *cluster*: a list of frame memoryviews (``PhysMem.frame``
slices of the one arena mmap, or parts of them) that stand for contiguous file bytes starting
at ``offset``.  Each attempt at a cluster is ONE ``os.preadv``/``os.pwritev`` call, so a
single syscall (and at most a single thread hop) carries every page of the cluster.  Data moves
straight between the backing file and the frames; there are no Python byte loops and no
intermediate ``bytes``.

Blocking calls run in long-lived worker threads (``pagers.iothreads.IoThreads``): a queue
put to hand a call over, one trio wake-up per batch of completions to hand results back,
instead of a ``trio.to_thread`` hop per call (110-240 µs on these machines, fuse-notes §1.4
and §5.3; the pool's round trip is measured in ``benchmarks/backing_io.py``).

Reads try the cheap path first.  Even the pool's hop costs more than a 4 KiB ``preadv`` of
data already in the host page cache (~3 µs).  So ``readv`` first calls
``os.preadv(..., os.RWF_NOWAIT)`` inline, on the trio thread: the kernel copies whatever is
cached and never sleeps on the disk.  Then:

* all bytes came back: done, no hop (``reads_inline``);
* ``EAGAIN`` (nothing cached): the whole cluster goes to a worker thread (``nowait_eagain``);
* a short count: RWF_NOWAIT stops at the first uncached page, so a short count is not proof
  of EOF.  One ``fstat`` (~1 µs, in-core inode) tells: when the read stopped at or past the
  file size it was EOF and we are done inline (``nowait_eof``: the last, partial page of most
  files, and reads past EOF); otherwise the rest of the cluster -- the views not yet filled,
  the first of them sliced past the bytes already read -- goes to a worker thread
  (``nowait_partial``);
* ``EOPNOTSUPP``/``ENOSYS``: the file system (tmpfs, FUSE, ...) does not do RWF_NOWAIT.  The
  fd is remembered and its reads go straight to the thread from then on
  (``nowait_unsupported``).  ``EINVAL`` may mean the same on old kernels, or a real error:
  the thread retries without the flag, and the fd is remembered only when that retry does
  not fail with EINVAL too.  Call ``forget(fd)`` when a backing fd is closed, so that a new
  file that reuses the number is tried again.

In the worker thread, the blocking read loops on short counts until the cluster is full or a
read returns 0 bytes (true EOF).  ``readv`` returns how many bytes landed; fewer than asked
means EOF, and the caller zero-fills the rest of its pages (genfs_getpages does the same for
the part of the last page past EOF).

Writes (``writev``), ``fsync`` and ``fallocate`` always run in a worker thread: write-back
may stall on the disk or on dirty-page throttling for milliseconds, and the trio thread must
never wait for that.  A write loops on short counts in the same hop.  ``fallocate`` is
fallocate(2) itself (glibc's, through ctypes: Python has only ``posix_fallocate``, which
glibc emulates by writing when the file system refuses, and which takes no mode), so the
backing file system's own answer, EOPNOTSUPP or ENOSPC included, comes back unchanged.

Errors and fault injection
--------------------------
Expected failures are errno ints, never exceptions (style.md §5): every ``OSError`` from the
backing file is caught here and returned as ``(errno, bytes_done_before_the_error)``;
callers treat the whole cluster as failed.  A bug (too many views, a negative offset, and
under DIAGNOSTIC a non-byte view) raises ``AssertionError``.  ``FaultInjector`` makes the
next COUNT I/Os of one kind (backing-read, backing-write, backing-fsync, backing-fallocate)
fail with a chosen errno, before any I/O is issued (``ubcfs ctl inject``).  FSYNC and
FALLOCATE are kinds of their own: an armed backing-write fault does not make fsync or
fallocate fail, and vice versa.

Read-ahead (``start_readv``) does the same RWF_NOWAIT attempt, but returns at once with a
``PendingRead``: what the attempt did not serve is queued to a worker now, so that the disk
read runs while the trio thread goes on copying the data the reader asked for, and
``PendingRead.finish()`` later collects the result (``readv`` is ``start`` + ``finish``).

Thread-safety rule, and what a page may be across each await
------------------------------------------------------------
A worker thread touches only the memoryviews handed in, and the caller holds the pages
behind them BUSY for the whole call.  Threads never see VM metadata, the injector or the
counters: those are read and updated on the trio thread only, before the call is queued and
after its result is delivered, so they need no locks.  Across the one ``await`` of
``readv``/``writev``/``fsync``/``fallocate`` (and ``PendingRead.finish``) the pages stay BUSY
and owned by the caller (a read fills their frames; a write only reads them); nothing
here changes their flags.  Once a worker has claimed a call it finishes, and its result is
returned even if the caller was cancelled meanwhile (the cancellation is then delivered at
the caller's next checkpoint), because a frame must never be unbusied, freed or reused while
a thread may still write into it.  A cancellation takes effect only while the call is still
queued (all threads busy): the call is withdrawn without running, ``Cancelled`` is raised,
the views hold whatever the inline attempt put there, and they are still the caller's.

Checkpoints: a read served inline returns without yielding to trio (that is the point), so
``readv`` is not a guaranteed checkpoint.  Callers must already re-verify their state after
any ``await``; they must not count on one here.
"""

from __future__ import annotations

import ctypes
import dataclasses
import enum
import errno
import os
from collections.abc import Callable
from typing import Final, TypeGuard, cast

from mypy_extensions import mypyc_attr

from pagers.iothreads import IoRequest, IoThreads
from ubcfs.vm import diag

# 0 when the platform has no preadv2 flags (not Linux): reads then always use the thread.
RWF_NOWAIT: Final[int] = getattr(os, "RWF_NOWAIT", 0)


def _iov_max() -> int:
    try:
        n = os.sysconf("SC_IOV_MAX")
    except (ValueError, OSError):
        return 1024
    return n if n > 0 else 1024


# Most views one preadv/pwritev may take (Linux: 1024, i.e. 4 MiB of 4 KiB frames).
IOV_MAX: Final[int] = _iov_max()


def _libc_fallocate() -> Callable[[int, int, int, int], int] | None:
    """glibc's fallocate(fd, mode, offset, len) with 64-bit offsets, or None without it."""
    libc = ctypes.CDLL(None, use_errno=True)  # the C library the interpreter runs on
    fn = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
    if fn is None:
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    fn.restype = ctypes.c_int
    return cast("Callable[[int, int, int, int], int]", fn)


# Not Final: a test replaces it, and the compiled build reads a Final only once.
_FALLOCATE: Callable[[int, int, int, int], int] | None = _libc_fallocate()

# Answers to RWF_NOWAIT that mean "this fd cannot do it" (EINVAL is handled apart).
_NOWAIT_UNSUPPORTED: Final = frozenset({errno.EOPNOTSUPP, errno.ENOSYS})


class IOKind(enum.Enum):
    """A kind of backing I/O that faults can be injected into (``ubcfs ctl inject KIND``)."""

    READ = "backing-read"
    WRITE = "backing-write"
    FSYNC = "backing-fsync"
    FALLOCATE = "backing-fallocate"
    SWAP_READ = "swap-read"
    SWAP_WRITE = "swap-write"

    @classmethod
    def parse(cls, name: str) -> IOKind:
        """The kind named ``name`` (e.g. ``"backing-read"``); ValueError if unknown."""
        try:
            return cls(name)
        except ValueError:
            known = ", ".join(k.value for k in cls)
            raise ValueError(f"unknown backing I/O kind {name!r} (expected {known})") from None


def parse_errno(text: str) -> int:
    """An errno from its name or number (``"EIO"``, ``"eio"``, ``"5"``), for the ctl command.

    Raises:
        ValueError: ``text`` names no errno (the number is validated by ``FaultInjector.arm``).
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    code = getattr(errno, text.upper(), None)
    if not text.upper().startswith("E") or not isinstance(code, int):
        raise ValueError(f"unknown errno name {text!r}")
    return code


def _is_int(x: object) -> TypeGuard[int]:
    """Is ``x`` an int and not a bool (``True`` would pass for EPERM)?  The ctl hands us
    decoded JSON, so the annotations alone do not guarantee it."""
    return isinstance(x, int) and not isinstance(x, bool)


class FaultInjector:
    """Makes the next ``count`` backing I/Os of a kind fail with a chosen errno.

    Used from the trio thread only (tests, ``ubcfs ctl inject``, and ``BackingIO`` before it
    issues an I/O), so it needs no lock.  At most one arming per kind: arming again replaces
    the previous one, and ``count == 0`` disarms.
    """

    __slots__ = ("_armed",)

    def __init__(self) -> None:
        self._armed: dict[IOKind, tuple[int, int]] = {}  # kind -> (errno, remaining)

    def arm(self, kind: IOKind, err: object, count: object) -> None:
        """Fail the next ``count`` I/Os of ``kind`` with ``err``; ``count == 0`` disarms.

        ``err`` and ``count`` are checked here, not by their annotations (they come from
        decoded JSON; the compiled build would refuse a float, and take True for 1, at the
        call).

        Raises:
            ValueError: ``err`` is not a positive errno known to the ``errno`` module, or
                ``count`` is negative.
        """
        if not _is_int(err) or err <= 0:
            raise ValueError(f"inject {kind.value}: errno must be a positive integer, got {err!r}")
        if err not in errno.errorcode:
            raise ValueError(f"inject {kind.value}: {err} is not an errno known to this system")
        if not _is_int(count) or count < 0:
            raise ValueError(f"inject {kind.value}: count must be an integer >= 0, got {count!r}")
        if count == 0:
            self._armed.pop(kind, None)
        else:
            self._armed[kind] = (err, count)

    def take(self, kind: IOKind) -> int:
        """The errno this I/O of ``kind`` must fail with, consuming one arming; 0 if none."""
        armed = self._armed.get(kind)
        if armed is None:
            return 0
        err, left = armed
        if left <= 1:
            del self._armed[kind]
        else:
            self._armed[kind] = (err, left - 1)
        return err

    def armed(self) -> dict[str, tuple[int, int]]:
        """What is armed, for reports: ``{kind name: (errno, remaining count)}``."""
        return {kind.value: armed for kind, armed in self._armed.items()}


@dataclasses.dataclass(slots=True)
class BackingStats:
    """Counters of one ``BackingIO`` (updated on the trio thread only).

    Attributes:
        reads_inline: readv calls served entirely inline with RWF_NOWAIT (no thread hop).
        reads_threaded: readv calls that used a worker thread (for all or part of the cluster).
        nowait_eagain: RWF_NOWAIT attempts answered EAGAIN (nothing cached).
        nowait_partial: RWF_NOWAIT attempts that came back short before EOF.
        nowait_eof: RWF_NOWAIT attempts that came back short because EOF was reached
            (checked with fstat), so no hop was needed.
        nowait_unsupported: fds found not to support RWF_NOWAIT.
        reads_ahead: reads started with ``start_readv`` (read-ahead); they count in the
            other read counters too.
        writes: writev calls that issued I/O.
        fsyncs: fsync calls that issued I/O.
        fallocates: fallocate calls made on backing files (failed ones included).
        bytes_read: bytes read into frames (successful calls).
        bytes_written: bytes written from frames (successful calls).
        injected_failures: I/Os failed by the FaultInjector (no I/O issued).
        errors: real I/O errors returned as errnos.
    """

    reads_inline: int = 0
    reads_threaded: int = 0
    nowait_eagain: int = 0
    nowait_partial: int = 0
    nowait_eof: int = 0
    nowait_unsupported: int = 0
    reads_ahead: int = 0
    writes: int = 0
    fsyncs: int = 0
    fallocates: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    injected_failures: int = 0
    errors: int = 0

    def snapshot(self) -> dict[str, int]:
        """The counters as a plain dict (for ``ubcfs stat --json``)."""
        return dataclasses.asdict(self)


def _cluster_bytes(views: list[memoryview], offset: int) -> int:
    """Check a cluster's shape (bugs, not I/O errors) and return its size in bytes.

    The per-view checks cost ~25 µs for a 1 MiB cluster of 256 frames (a quarter of the
    cached read itself), so they run under DIAGNOSTIC only; frames from ``PhysMem.frame`` are
    always contiguous byte views, for which ``len`` is the byte count.
    """
    assert offset >= 0, f"backing I/O at negative offset {offset}"
    assert len(views) <= IOV_MAX, f"cluster of {len(views)} views exceeds IOV_MAX {IOV_MAX}"
    if diag.DIAGNOSTIC:
        for v in views:
            assert v.itemsize == 1, f"backing I/O needs byte views, got format {v.format!r}"
            assert v.c_contiguous, "backing I/O needs contiguous views"
    return sum(map(len, views))


def _advance(views: list[memoryview], skip: int) -> list[memoryview]:
    """The views left after the first ``skip`` bytes: filled views dropped, the first
    partly filled one sliced."""
    if skip == 0:
        return views
    for i, v in enumerate(views):
        n = v.nbytes
        if skip < n:
            return [v[skip:], *views[i + 1 :]]
        skip -= n
    return []


# --- worker-thread bodies: they touch only the views and the fd, and return errnos. ----------


def _preadv_blocking(fd: int, views: list[memoryview], offset: int) -> tuple[int, int]:
    """Read until ``views`` are full or a read returns 0 (EOF).  Runs in a worker thread."""
    want = sum(map(len, views))
    done = 0
    while done < want:
        try:
            n = os.preadv(fd, _advance(views, done), offset + done)
        except OSError as e:
            return e.errno or errno.EIO, done
        if n == 0:
            break
        done += n
    return 0, done


def _pwritev_blocking(fd: int, views: list[memoryview], offset: int) -> tuple[int, int]:
    """Write all of ``views``, looping on short counts.  Runs in a worker thread."""
    want = sum(map(len, views))
    done = 0
    while done < want:
        try:
            n = os.pwritev(fd, _advance(views, done), offset + done)
        except OSError as e:
            return e.errno or errno.EIO, done
        if n == 0:
            # A regular file never does this; retrying would spin forever.
            return errno.EIO, done
        done += n
    return 0, done


def _fsync_blocking(fd: int, datasync: bool) -> int:
    """fsync or fdatasync ``fd``.  Runs in a worker thread."""
    try:
        if datasync:
            os.fdatasync(fd)
        else:
            os.fsync(fd)
    except OSError as e:
        return e.errno or errno.EIO
    return 0


def _is_hole_blocking(fd: int, offset: int, length: int) -> bool:
    """``BackingIO.is_hole``.  Runs in a worker thread."""
    try:
        return os.lseek(fd, offset, os.SEEK_DATA) >= offset + length
    except OSError as e:
        return e.errno == errno.ENXIO  # no data at or after offset


def _fallocate_blocking(fd: int, mode: int, offset: int, length: int) -> int:
    """fallocate(2) ``fd``.  Runs in a worker thread."""
    if _FALLOCATE is None:
        return errno.EOPNOTSUPP
    if _FALLOCATE(fd, mode, offset, length) != 0:
        return ctypes.get_errno() or errno.EIO
    return 0


class _Nowait(enum.Enum):
    """Sentinel: the RWF_NOWAIT attempt got EINVAL, which may refuse the flag or the request;
    the blocking retry in the thread decides which."""

    SUSPECT = "suspect"


# Tests subclass it (a gated or failing backing store).
@mypyc_attr(allow_interpreted_subclasses=True)
class BackingIO:
    """The vnode pager's I/O edge: cluster reads, writes and fsyncs of backing files.

    Args:
        injector: fault injector consulted before every I/O (a private one if None).
        threads: worker threads for backing I/O (the most I/Os in progress at once).
        nowait: try reads inline with RWF_NOWAIT first (off: every read uses a thread).

    Attributes:
        stats: ``BackingStats`` counters.
        threads: the ``IoThreads`` the I/Os run in; started at the first I/O that needs a
            thread, stopped by ``aclose``/``close``.
    """

    __slots__ = ("_nowait_off", "injector", "nowait", "stats", "threads")

    def __init__(
        self,
        injector: FaultInjector | None = None,
        threads: int = 8,
        nowait: bool = True,
    ) -> None:
        self.injector = injector if injector is not None else FaultInjector()
        self.threads = IoThreads(threads)
        self.nowait = nowait and RWF_NOWAIT != 0
        self.stats = BackingStats()
        self._nowait_off: set[int] = set()  # fds whose file system refused RWF_NOWAIT

    async def aclose(self) -> None:
        """Wait for the I/Os in flight, then stop the worker threads (engine shutdown).
        => may sleep."""
        await self.threads.aclose()

    def close(self) -> None:
        """Stop the worker threads outside a trio run; no I/O may be in flight."""
        self.threads.close()

    def forget(self, fd: int) -> None:
        """Drop what is remembered about ``fd``; call it when the backing fd is closed."""
        self._nowait_off.discard(fd)

    def nowait_unsupported(self, fd: int) -> bool:
        """Has ``fd`` been found not to support RWF_NOWAIT?"""
        return fd in self._nowait_off

    def _injected(self, kind: IOKind) -> int:
        err = self.injector.take(kind)
        if err:
            self.stats.injected_failures += 1
        return err

    async def readv(
        self, fd: int, views: list[memoryview], offset: int, kind: IOKind = IOKind.READ
    ) -> tuple[int, int]:
        """Read the file bytes at ``offset`` into ``views`` (kernel: the read side of
        genfs_do_io), with one preadv per attempt.

        Returns:
            ``(0, nbytes)``: ``nbytes`` less than the cluster size means EOF, and the caller
            zero-fills the rest; ``(errno, nbytes_before_error)`` on failure (an injected
            fault returns ``(errno, 0)`` with no I/O issued).

        => the caller holds the pages behind ``views`` BUSY; only they are written.
        => may sleep (worker thread), but does not yield when served inline.
        => once a thread is started the read completes, even if cancelled (see module doc).
        => ``kind`` is the fault-injection kind (the swap pager reads with SWAP_READ).
        """
        return await self._start_read(fd, views, offset, kind).finish()

    def start_readv(self, fd: int, views: list[memoryview], offset: int) -> PendingRead:
        """Start reading the file bytes at ``offset`` into ``views`` and return at once
        (read-ahead): what the inline RWF_NOWAIT attempt does not serve is queued to a
        worker thread now, so the read runs while the trio thread goes on copying.

        Returns:
            a ``PendingRead``; ``await`` its ``finish()`` for what ``readv`` would return
            (at once when the read was served inline or a fault was injected).

        => the caller holds the pages behind ``views`` BUSY until ``finish()`` has returned.
        => never sleeps.
        """
        self.stats.reads_ahead += 1
        return self._start_read(fd, views, offset, IOKind.READ)

    def _start_read(
        self, fd: int, views: list[memoryview], offset: int, kind: IOKind
    ) -> PendingRead:
        """Everything of a read up to the hop: injection, the RWF_NOWAIT attempt, and the
        queueing of the rest to a worker."""
        err = self._injected(kind)
        if err:
            return PendingRead(self, None, (err, 0))
        want = _cluster_bytes(views, offset)
        if want == 0:
            return PendingRead(self, None, (0, 0))
        done = 0
        suspect = False
        if self.nowait and fd not in self._nowait_off:
            res = self._read_nowait(fd, views, offset, want)
            if isinstance(res, tuple):
                return PendingRead(self, None, res)
            if res is _Nowait.SUSPECT:
                suspect = True
            else:
                done = res
        req = self.threads.start(_preadv_blocking, fd, _advance(views, done), offset + done)
        return PendingRead(self, req, (0, done), fd if suspect else -1)

    def _thread_read_done(self, err: int, nbytes: int, suspect_fd: int) -> tuple[int, int]:
        self.stats.reads_threaded += 1
        if suspect_fd >= 0 and err != errno.EINVAL:
            # The read works without the flag, so it was the flag that was refused.
            self._nowait_off.add(suspect_fd)
            self.stats.nowait_unsupported += 1
        return self._read_done(err, nbytes)

    def _read_nowait(
        self, fd: int, views: list[memoryview], offset: int, want: int
    ) -> tuple[int, int] | int | _Nowait:
        """The inline RWF_NOWAIT attempt: a final ``(errno, nbytes)``, or the bytes already
        read (the thread does the rest), or ``_Nowait.SUSPECT``."""
        try:
            n = os.preadv(fd, views, offset, RWF_NOWAIT)
        except BlockingIOError:
            self.stats.nowait_eagain += 1
            return 0
        except OSError as e:
            if e.errno in _NOWAIT_UNSUPPORTED:
                self._nowait_off.add(fd)
                self.stats.nowait_unsupported += 1
                return 0
            if e.errno == errno.EINVAL:
                return _Nowait.SUSPECT
            return self._read_done(e.errno or errno.EIO, 0)
        if n < want and not self._at_eof(fd, offset + n):
            self.stats.nowait_partial += 1
            return n
        if n < want:
            self.stats.nowait_eof += 1
        self.stats.reads_inline += 1
        return self._read_done(0, n)

    def _at_eof(self, fd: int, end: int) -> bool:
        """Does the file end at or before ``end``?  (fstat reads the in-core inode.)"""
        try:
            return os.fstat(fd).st_size <= end
        except OSError:
            return False  # let the blocking read find out

    def _read_done(self, err: int, nbytes: int) -> tuple[int, int]:
        if err:
            self.stats.errors += 1
        else:
            self.stats.bytes_read += nbytes
        return err, nbytes

    async def writev(
        self, fd: int, views: list[memoryview], offset: int, kind: IOKind = IOKind.WRITE
    ) -> tuple[int, int]:
        """Write ``views`` to the file at ``offset`` with one pwritev per attempt, in a worker
        thread (kernel: the write side of genfs_do_io).

        Returns:
            ``(0, total)``, or ``(errno, bytes_written_before_the_error)``; an injected fault
            returns ``(errno, 0)`` with nothing written.

        => the caller holds the pages behind ``views`` BUSY (or otherwise stable) until return.
        => always sleeps unless a fault is injected or the cluster is empty.
        => ``kind`` is the fault-injection kind (the swap pager writes with SWAP_WRITE).
        """
        err = self._injected(kind)
        if err:
            return err, 0
        want = _cluster_bytes(views, offset)
        if want == 0:
            return 0, 0
        err, n = await self.threads.run(_pwritev_blocking, fd, views, offset)
        self.stats.writes += 1
        if err:
            self.stats.errors += 1
        else:
            self.stats.bytes_written += n
        return err, n

    async def fsync(self, fd: int, datasync: bool = False) -> int:
        """Flush ``fd`` to stable storage (``os.fsync``, or ``os.fdatasync`` with
        ``datasync``) in a worker thread; returns an errno.

        Only IOKind.FSYNC faults apply here, not IOKind.WRITE ones.

        => sleeps (unless a fault is injected).
        """
        err = self._injected(IOKind.FSYNC)
        if err:
            return err
        err = await self.threads.run(_fsync_blocking, fd, datasync)
        self.stats.fsyncs += 1
        if err:
            self.stats.errors += 1
        return err

    async def fallocate(self, fd: int, mode: int, offset: int, length: int) -> int:
        """Allocate, punch or zero ``length`` bytes of the file at ``offset`` with
        fallocate(2) and its ``FALLOC_FL_*`` ``mode``, in a worker thread; returns an errno
        (the backing file system's EOPNOTSUPP, ENOSPC, EFBIG... unchanged).

        Only IOKind.FALLOCATE faults apply here.

        => sleeps (unless a fault is injected).
        """
        err = self._injected(IOKind.FALLOCATE)
        if err:
            return err
        err = await self.threads.run(_fallocate_blocking, fd, mode, offset, length)
        self.stats.fallocates += 1
        if err:
            self.stats.errors += 1
        return err

    async def is_hole(self, fd: int, offset: int, length: int) -> bool:
        """Does the file hold no data in [offset, offset + length) -- a hole, or past its
        end (lseek SEEK_DATA, kernel: the VOP_BMAP question of genfs_getpages)?  In a
        worker thread (the file system may read its block map).  A file system that
        cannot tell answers "data" (False).  => sleeps."""
        return await self.threads.run(_is_hole_blocking, fd, offset, length)


@mypyc_attr(allow_interpreted_subclasses=True)
class PendingRead:
    """A read started by ``BackingIO.readv``/``start_readv``: finished inline already, or
    with its remainder queued to a worker thread."""

    __slots__ = ("_bio", "_req", "_res", "_suspect_fd")

    def __init__(
        self,
        bio: BackingIO,
        req: IoRequest[tuple[int, int]] | None,
        res: tuple[int, int],
        suspect_fd: int = -1,
    ) -> None:
        self._bio = bio
        self._req = req
        # Without req: the final result (already counted).  With it: (0, bytes read inline).
        self._res = res
        self._suspect_fd = suspect_fd  # the fd whose RWF_NOWAIT attempt got EINVAL, or -1

    def done(self) -> bool:
        """Finished already (served inline, or failed before any hop): ``result()`` has it.
        (A method, not a property: interpreted subclasses override it.)"""
        return self._req is None

    def result(self) -> tuple[int, int]:
        """What ``finish()`` returns, for a read that is ``done``.  => never sleeps."""
        if self._req is not None:
            raise RuntimeError("PendingRead.result() of a read still in a worker thread")
        return self._res

    async def finish(self) -> tuple[int, int]:
        """Wait for the read; returns ``(0, nbytes)`` or ``(errno, nbytes_before_error)`` as
        ``BackingIO.readv`` does (fewer bytes than asked means EOF).

        => may sleep; does not yield when the read was served inline.  A read a worker has
           begun completes even if the caller is cancelled; one still queued is withdrawn,
           with nothing written to its views by the thread.
        """
        req = self._req
        if req is None:
            return self._res
        err, n = await req.wait()
        return self._bio._thread_read_done(err, self._res[1] + n, self._suspect_fd)
