"""Eviction stress: extending writes, ``drop_caches``, read back, against an exact model.

Run (as root: it writes ``/proc/sys/vm/drop_caches``)::

    .venv/bin/python benchmarks/evict_stress.py MOUNTPOINT [--procs 4] [--cycles N]
        [--shared] [--seed S] [--json] [--backing DIR] [--max-seconds S] [--timeout S]
    .venv/bin/python benchmarks/evict_stress.py --mount [--memory 4M] [...]

Each of ``--procs`` worker processes runs ``--cycles`` cycles (so ``--procs 4 --cycles 2500``
is 10,000 cycles in all).  One cycle is:

1. open the file on the mount (creating it), an extending write of ``--chunk`` (5000) bytes at
   its end, close;
2. ``echo 2 > /proc/sys/vm/drop_caches``: the kernel forgets unused dentries and inodes, so
   the daemon gets FORGETs for the file just closed -- and reclaims its vnode, which has
   dirty pages, while the next step already looks the name up again;
3. reopen it, read the whole file back and compare it with the model, then write
   ``--chunk`` bytes more at its end through the same descriptor, close.

Every chunk's content is pseudo-random, derived from ``(seed, process, cycle, k)``, so the
model is exact and a run is reproducible.  Modes:

* default: each process has its own file, written with ``pwrite`` at the model's end of
  file (so a lost or shortened write shows up as a hole of zeros, not as shifted data);
* ``--shared``: all processes share one file, written with ``O_APPEND``.  Each process does
  step 1 and step 3 under an ``flock`` of a lock file outside the mount and appends what it
  wrote to a model file next to it, so every process can check the whole file exactly; the
  ``drop_caches`` of step 2 runs outside the lock, concurrently with the others' I/O.

Files are started afresh (unlinked, a new name) every ``--rotate`` cycles, so the read-back
stays cheap; a file that failed is kept (for post-mortem) and the process goes on with a new
one.  Everything the run writes lives in one directory ``evict-stress-PID`` on the mount,
removed at the end of a clean run.

Counted: *mismatches* (a read-back that differs from the model; "zeros" when the first bad
chunk reads back as all zeros, the signature of a write that returned 5000 and was lost),
and *errors* (any failing syscall on the mount -- EBADF, EIO, ESTALE, ... -- and short
writes).  A progress line goes to stderr every ``--progress`` seconds.  After the workers
finish: ``ubcfs sync``, one more ``drop_caches``, then each final file is compared with its
model on the mount and, when the backing directory is known (``--backing DIR``, or the
``ubcfs:DIR`` source of the mount in the mount table), in the backing directory; then
``ubcfs check``.  ``--max-seconds S`` starts no cycle after S seconds (the run then counts
as complete: a bound for tests on a slow host); ``--timeout S`` gives up after S seconds,
which is a failure.

``--mount`` makes its own mount (``python -m ubcfs mount`` in a temp dir, with ``--memory
SIZE``, default 4M) and unmounts it at the end (``ubcfs umount`` must succeed too); its temp
dir is removed after a clean run and kept, with the daemon's log, otherwise.

Output: a summary (``--json``: one JSON object on stdout).  Exit status 0 iff there was no
mismatch, no error, no timeout and every final check passed; 1 otherwise; 2 (one line,
``evict_stress: error: ...``) for bad arguments or when it cannot run (not root, not a ubcfs
mount).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import functools
import json
import multiprocessing as mp
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from ubcfs.ctl.protocol import mount_entry
from ubcfs.options import UsageError, parse_size

PROG = "evict_stress"
DROP_CACHES = "/proc/sys/vm/drop_caches"
MAX_FAILURES_KEPT = 20  # failure messages per worker kept for the summary
CLI_TIMEOUT = 300.0  # seconds for one ubcfs sync / check / umount
RESULT_GRACE = 10.0  # seconds a worker's result may take to arrive after it exited


# --- the model ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=8192)
def chunk(seed: int, proc: int, cycle: int, k: int, size: int) -> bytes:
    """The content of write ``k`` (0 or 1) of ``cycle`` of process ``proc``."""
    return random.Random(f"evict:{seed}:{proc}:{cycle}:{k}").randbytes(size)


Record = tuple[int, int, int]  # (proc, cycle, k): one chunk of a file, in file order


def expected(seed: int, size: int, records: list[Record]) -> bytes:
    return b"".join(chunk(seed, p, c, k, size) for p, c, k in records)


def mismatch(got: bytes, want: bytes, size: int) -> str | None:
    """None if equal, else what differs (``zeros`` first when the first bad chunk is all
    zeros)."""
    if got == want:
        return None
    n = min(len(got), len(want))
    first = next((i for i in range(n) if got[i] != want[i]), n)
    idx = first // size
    bad = got[idx * size : (idx + 1) * size]
    what = "zeros" if bad and not any(bad) else "data"
    return (
        f"{what}: {len(got)} bytes read, {len(want)} expected, first difference at byte"
        f" {first} (chunk {idx})"
    )


def read_all(fd: int) -> bytes:
    parts: list[bytes] = []
    while True:
        b = os.read(fd, 1 << 20)
        if not b:
            return b"".join(parts)
        parts.append(b)


def drop_caches() -> float:
    """``echo 2 > /proc/sys/vm/drop_caches`` (dentries and inodes); returns its seconds."""
    t0 = time.monotonic()
    with open(DROP_CACHES, "w") as f:
        f.write("2")
    return time.monotonic() - t0


def errname(e: OSError) -> str:
    return errno.errorcode.get(e.errno or 0, str(e.errno))


# --- workers ------------------------------------------------------------------------------


@dataclass
class Config:
    mnt: Path
    workdir: Path  # on the mount
    lockdir: Path  # outside the mount (shared mode: lock and model files)
    procs: int
    cycles: int
    shared: bool
    seed: int
    size: int
    rotate: int
    stop_at: float  # time.monotonic() after which no cycle starts (0: none)

    def stopping(self) -> bool:
        return bool(self.stop_at) and time.monotonic() >= self.stop_at


@dataclass
class WorkerResult:
    proc: int
    cycles: int = 0
    writes: int = 0
    bytes_written: int = 0
    reads: int = 0
    mismatches: int = 0
    zeros: int = 0
    errors: int = 0
    errnos: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    drops: int = 0
    drop_seconds: float = 0.0
    final_name: str = ""  # own mode: the last file, relative to workdir
    final_records: list[Record] = field(default_factory=list)

    def fail(self, msg: str) -> None:
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append(f"proc {self.proc}: {msg}")

    def error(self, cycle: int, step: str, e: OSError | str) -> None:
        self.errors += 1
        name = errname(e) if isinstance(e, OSError) else e
        self.errnos[name] = self.errnos.get(name, 0) + 1
        self.fail(f"cycle {cycle}: {step}: {e}")

    def compared(self, cycle: int, got: bytes, want: bytes, size: int) -> bool:
        self.reads += 1
        bad = mismatch(got, want, size)
        if bad is None:
            return True
        self.mismatches += 1
        if bad.startswith("zeros"):
            self.zeros += 1
        self.fail(f"cycle {cycle}: read-back mismatch: {bad}")
        return False

    def wrote(self, n: int) -> None:
        self.writes += 1
        self.bytes_written += n

    def close(self, fd: int, cycle: int, step: str) -> None:
        """Close ``fd``; a failure (flush reporting a lost write-back, EBADF, ...) is counted
        as an error, but the write before it returned its full count, so the model keeps
        it: if the data was really lost, the next read-back shows it."""
        try:
            os.close(fd)
        except OSError as e:
            self.error(cycle, step, e)

    def drop(self) -> None:
        self.drop_seconds += drop_caches()
        self.drops += 1


def write_full(fd: int, data: bytes, offset: int | None) -> None:
    """One write of all of ``data`` (at ``offset``, or at the file position); a short write
    is an error."""
    n = os.write(fd, data) if offset is None else os.pwrite(fd, data, offset)
    if n != len(data):
        raise OSError(errno.EIO, f"short write: {n} of {len(data)} bytes")


def own_worker(cfg: Config, proc: int, progress: Any) -> WorkerResult:
    """Default mode: one file per process, ``pwrite`` at the model's end of file."""
    res = WorkerResult(proc)
    gen = 0
    records: list[Record] = []
    length = 0
    for cycle in range(cfg.cycles):
        if cfg.stopping():
            break
        path = cfg.workdir / f"p{proc}-g{gen}"
        ok = True
        step = "open for the first write"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                step = "first write"
                data = chunk(cfg.seed, proc, cycle, 0, cfg.size)
                write_full(fd, data, length)
                records.append((proc, cycle, 0))
                length += len(data)
                res.wrote(len(data))
            finally:
                res.close(fd, cycle, "close after the first write")
            res.drop()
            step = "reopen"
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                step = "read back"
                got = read_all(fd)
                ok = res.compared(cycle, got, expected(cfg.seed, cfg.size, records), cfg.size)
                if ok:
                    step = "second write"
                    data = chunk(cfg.seed, proc, cycle, 1, cfg.size)
                    write_full(fd, data, length)
                    records.append((proc, cycle, 1))
                    length += len(data)
                    res.wrote(len(data))
            finally:
                res.close(fd, cycle, "close after the second write")
        except OSError as e:
            res.error(cycle, step, e)
            ok = False
        res.cycles += 1
        progress.put((proc, res.cycles, res.mismatches, res.errors))
        if not ok:  # keep the bad file; go on with a fresh one
            gen, records, length = gen + 1, [], 0
        elif (cycle + 1) % cfg.rotate == 0 and cycle + 1 < cfg.cycles:
            try:
                os.unlink(path)
            except OSError as e:
                res.error(cycle, "unlink at rotation", e)
            gen, records, length = gen + 1, [], 0
    res.final_name = f"p{proc}-g{gen}"
    res.final_records = records
    return res


@contextlib.contextmanager
def locked(fd: int) -> Iterator[None]:
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)


def read_model(path: Path) -> list[Record]:
    out: list[Record] = []
    with open(path) as f:
        for line in f:
            p, c, k = line.split()
            out.append((int(p), int(c), int(k)))
    return out


def append_model(path: Path, rec: Record) -> None:
    with open(path, "a") as f:
        f.write(f"{rec[0]} {rec[1]} {rec[2]}\n")


def clear_model(path: Path) -> None:
    with open(path, "w"):
        pass


SHARED_NAME = "shared"


def shared_worker(cfg: Config, proc: int, progress: Any) -> WorkerResult:
    """``--shared``: one file for all, ``O_APPEND``; the model is a file appended under the
    lock, so the content is exact whatever the interleaving of the processes."""
    res = WorkerResult(proc)
    path = cfg.workdir / SHARED_NAME
    model = cfg.lockdir / "model"
    lock_fd = os.open(cfg.lockdir / "lock", os.O_RDWR | os.O_CLOEXEC)

    def start_afresh() -> None:  # under the lock: keep the bad file, empty the model
        with contextlib.suppress(OSError):
            os.rename(path, cfg.workdir / f"bad-{proc}-{time.monotonic_ns()}")
        clear_model(model)

    for cycle in range(cfg.cycles):
        if cfg.stopping():
            break
        with locked(lock_fd):
            step = "open for the first write"
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
                try:
                    step = "first write"
                    data = chunk(cfg.seed, proc, cycle, 0, cfg.size)
                    write_full(fd, data, None)
                    append_model(model, (proc, cycle, 0))
                    res.wrote(len(data))
                finally:
                    res.close(fd, cycle, "close after the first write")
            except OSError as e:
                res.error(cycle, step, e)
                start_afresh()
        res.drop()
        with locked(lock_fd):
            ok = True
            step = "reopen"
            try:
                # Another process may have started the file afresh since our first write
                # (after a failure or at rotation): then the model is empty, and so is it.
                records = read_model(model)
                create = 0 if records else os.O_CREAT
                fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CLOEXEC | create, 0o644)
                try:
                    step = "read back"
                    got = read_all(fd)
                    ok = res.compared(cycle, got, expected(cfg.seed, cfg.size, records), cfg.size)
                    if ok:
                        step = "second write"
                        data = chunk(cfg.seed, proc, cycle, 1, cfg.size)
                        write_full(fd, data, None)
                        append_model(model, (proc, cycle, 1))
                        res.wrote(len(data))
                finally:
                    res.close(fd, cycle, "close after the second write")
            except OSError as e:
                res.error(cycle, step, e)
                ok = False
            if not ok:
                start_afresh()
            elif len(read_model(model)) >= 2 * cfg.rotate and cycle + 1 < cfg.cycles:
                try:
                    os.unlink(path)
                except OSError as e:
                    res.error(cycle, "unlink at rotation", e)
                clear_model(model)
        res.cycles += 1
        progress.put((proc, res.cycles, res.mismatches, res.errors))
    os.close(lock_fd)
    return res


def worker_main(cfg: Config, proc: int, progress: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        fn = shared_worker if cfg.shared else own_worker
        results.put(asdict(fn(cfg, proc, progress)))
    except BaseException as e:
        results.put({"proc": proc, "crash": f"{type(e).__name__}: {e}"})
        raise


# --- the run ------------------------------------------------------------------------------


@dataclass
class Summary:
    mountpoint: str
    mode: str
    procs: int
    cycles_per_proc: int
    seed: int
    chunk: int
    cycles_done: int = 0
    writes: int = 0
    bytes_written: int = 0
    reads: int = 0
    mismatches: int = 0
    zero_mismatches: int = 0
    errors: int = 0
    errors_by_errno: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    timed_out: bool = False
    stopped_early: bool = False  # --max-seconds ended the run before --cycles
    drop_caches: dict[str, float] = field(default_factory=dict)
    sync: str = "not run"
    final_mount: str = "not run"
    final_backing: str = "not run"
    check: str = "not run"
    umount: str = "not applicable"
    seconds: float = 0.0
    ok: bool = False

    def judge(self) -> None:
        self.ok = (
            self.mismatches == 0
            and self.errors == 0
            and not self.timed_out
            and (self.stopped_early or self.cycles_done == self.procs * self.cycles_per_proc)
            and self.sync == "ok"
            and self.final_mount == "ok"
            and self.final_backing in ("ok", "skipped (backing directory unknown)")
            and self.check == "ok"
            and self.umount in ("ok", "not applicable")
        )


def ubcfs_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``python -m ubcfs ARGS``: (exit status, its output on one line)."""
    try:
        r = subprocess.run(
            [sys.executable, "-m", "ubcfs", *args],
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return -1, f"timed out after {CLI_TIMEOUT:g} s"
    out = " | ".join(line for line in (r.stdout + r.stderr).splitlines() if line.strip())
    return r.returncode, out


def run(
    mnt: Path, backing: Path | None, args: argparse.Namespace, env: dict[str, str] | None
) -> Summary:
    s = Summary(
        str(mnt), "shared" if args.shared else "own", args.procs, args.cycles, args.seed, args.chunk
    )
    t0 = time.monotonic()
    workdir = mnt / f"evict-stress-{os.getpid()}"
    workdir.mkdir()
    lockdir = Path(tempfile.mkdtemp(prefix="evict-stress-lock-"))
    (lockdir / "lock").touch()
    (lockdir / "model").touch()
    cfg = Config(
        mnt,
        workdir,
        lockdir,
        args.procs,
        args.cycles,
        args.shared,
        args.seed,
        args.chunk,
        args.rotate,
        t0 + args.max_seconds if args.max_seconds else 0.0,
    )
    ctx = mp.get_context("fork")
    progress: Any = ctx.Queue()
    results: Any = ctx.Queue()
    procs = [
        ctx.Process(target=worker_main, args=(cfg, i, progress, results), name=f"evict-{i}")
        for i in range(args.procs)
    ]
    for p in procs:
        p.start()
    done: dict[int, dict[str, Any]] = {}
    state = dict.fromkeys(range(args.procs), (0, 0, 0))
    exited: dict[int, float] = {}
    last_line = time.monotonic()
    try:
        while len(done) < args.procs:
            with contextlib.suppress(queue.Empty):
                while True:
                    r = results.get_nowait()
                    done[r["proc"]] = r
            with contextlib.suppress(queue.Empty):
                pr, cycles, mm, er = progress.get(timeout=0.2)
                state[pr] = (cycles, mm, er)
                for _ in range(1000):  # what else has arrived, but not forever
                    pr, cycles, mm, er = progress.get_nowait()
                    state[pr] = (cycles, mm, er)
            now = time.monotonic()
            for i, p in enumerate(procs):
                if i not in done and p.exitcode is not None:
                    # Its result may still be on the way through the queue.
                    exited.setdefault(i, now)
                    if now - exited[i] > RESULT_GRACE:
                        done[i] = {"proc": i, "crash": f"worker died, exit code {p.exitcode}"}
            if args.timeout and now - t0 > args.timeout:
                s.timed_out = True
                break
            if now - last_line >= args.progress:
                last_line = now
                c = sum(v[0] for v in state.values())
                mm = sum(v[1] for v in state.values())
                er = sum(v[2] for v in state.values())
                print(
                    f"{PROG}: {c}/{args.procs * args.cycles} cycles, {mm} mismatches,"
                    f" {er} errors, {now - t0:.0f} s",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
            p.join(10)
    finals: list[tuple[str, list[Record]]] = []
    for i in range(args.procs):
        r = done.get(i)
        if r is None:
            s.errors += 1
            s.failures.append(f"proc {i}: did not finish (timed out after {args.timeout:g} s)")
            continue
        if "crash" in r:
            s.errors += 1
            s.failures.append(f"proc {i}: {r['crash']}")
            continue
        wr = WorkerResult(**r)
        s.cycles_done += wr.cycles
        s.writes += wr.writes
        s.bytes_written += wr.bytes_written
        s.reads += wr.reads
        s.mismatches += wr.mismatches
        s.zero_mismatches += wr.zeros
        s.errors += wr.errors
        for k, v in wr.errnos.items():
            s.errors_by_errno[k] = s.errors_by_errno.get(k, 0) + v
        s.failures.extend(wr.failures)
        s.drop_caches["count"] = s.drop_caches.get("count", 0) + wr.drops
        s.drop_caches["seconds"] = round(s.drop_caches.get("seconds", 0.0) + wr.drop_seconds, 3)
        if not args.shared:
            finals.append((wr.final_name, wr.final_records))
    if args.shared and not s.timed_out:
        finals.append((SHARED_NAME, read_model(lockdir / "model")))
    shutil.rmtree(lockdir, ignore_errors=True)
    s.stopped_early = bool(args.max_seconds) and s.cycles_done < args.procs * args.cycles

    if not s.timed_out:
        final_checks(s, mnt, backing, workdir, finals, args, env)
    s.seconds = round(time.monotonic() - t0, 1)
    s.judge()
    if s.ok:
        shutil.rmtree(workdir, ignore_errors=True)
    return s


def final_checks(
    s: Summary,
    mnt: Path,
    backing: Path | None,
    workdir: Path,
    finals: list[tuple[str, list[Record]]],
    args: argparse.Namespace,
    env: dict[str, str] | None,
) -> None:
    """``ubcfs sync``, then every final file on the mount and in the backing dir, then
    ``ubcfs check``."""
    rc, out = ubcfs_cli("sync", str(mnt), env=env)
    s.sync = "ok" if rc == 0 else f"exit {rc}: {out}"
    drop_caches()
    bad_mount: list[str] = []
    bad_backing: list[str] = []
    for name, records in finals:
        want = expected(args.seed, args.chunk, records)
        try:
            got = (workdir / name).read_bytes()
        except FileNotFoundError:
            got = b""  # a file not written to at all is no file
            if want:
                bad_mount.append(f"{name}: missing")
        except OSError as e:
            bad_mount.append(f"{name}: {e}")
            got = want
        diff = mismatch(got, want, args.chunk)
        if diff is not None:
            bad_mount.append(f"{name}: {diff}")
        if backing is None:
            continue
        bpath = backing / workdir.relative_to(mnt) / name
        try:
            bgot = bpath.read_bytes() if want or bpath.exists() else b""
        except OSError as e:
            bad_backing.append(f"{name}: {e}")
            continue
        diff = mismatch(bgot, want, args.chunk)
        if diff is not None:
            bad_backing.append(f"{name}: {diff}")
    s.final_mount = "ok" if not bad_mount else "; ".join(bad_mount)
    if backing is None:
        s.final_backing = "skipped (backing directory unknown)"
    else:
        s.final_backing = "ok" if not bad_backing else "; ".join(bad_backing)
    rc, out = ubcfs_cli("check", str(mnt), env=env)
    s.check = "ok" if rc == 0 else f"exit {rc}: {out}"


# --- command line -------------------------------------------------------------------------


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{PROG}: error: {message}\n")


def die(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = Parser(prog=PROG, description=__doc__.split("\n", 1)[0] if __doc__ else None)
    p.add_argument("mountpoint", nargs="?", type=Path, help="a ubcfs mount (or use --mount)")
    p.add_argument("--mount", action="store_true", help="make a mount of its own")
    p.add_argument("--memory", default=None, help="--memory of that mount (default 4M)")
    p.add_argument("--backing", type=Path, default=None, help="the mount's backing directory")
    p.add_argument("--procs", type=int, default=4, help="worker processes (default 4)")
    p.add_argument("--cycles", type=int, default=100, help="cycles per process (default 100)")
    p.add_argument("--shared", action="store_true", help="all processes on one file")
    p.add_argument("--seed", type=int, default=1, help="content seed (default 1)")
    p.add_argument("--chunk", type=int, default=5000, help="bytes per write (default 5000)")
    p.add_argument("--rotate", type=int, default=20, help="cycles per file (default 20)")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=0.0,
        help="start no cycle after S seconds (the cycles done count; not a failure)",
    )
    p.add_argument("--timeout", type=float, default=0.0, help="give up (fail) after S seconds")
    p.add_argument("--progress", type=float, default=5.0, help="seconds between progress lines")
    p.add_argument("--json", action="store_true", help="the summary as one JSON object")
    args = p.parse_args(argv)
    if args.mount and args.mountpoint is not None:
        p.error("give either MOUNTPOINT or --mount, not both")
    if not args.mount and args.mountpoint is None:
        p.error("MOUNTPOINT or --mount is required")
    if args.memory is not None and not args.mount:
        p.error("--memory goes with --mount")
    if args.mount and args.backing is not None:
        p.error("--backing goes with MOUNTPOINT (--mount knows its own)")
    for name, lo in (("procs", 1), ("cycles", 1), ("chunk", 1), ("rotate", 1)):
        if getattr(args, name) < lo:
            p.error(f"--{name} must be at least {lo}, not {getattr(args, name)}")
    if args.procs > 256:
        p.error(f"--procs must be at most 256, not {args.procs}")
    if args.timeout < 0:
        p.error(f"--timeout must not be negative, not {args.timeout:g}")
    if args.max_seconds < 0:
        p.error(f"--max-seconds must not be negative, not {args.max_seconds:g}")
    if args.progress <= 0:
        p.error(f"--progress must be positive, not {args.progress:g}")
    if args.mount:
        try:
            parse_size(args.memory or "4M", "--memory")
        except UsageError as e:
            p.error(str(e))
    return args


def check_environment(args: argparse.Namespace) -> Path | None:
    """Refuse (exit 2) what cannot run; returns the backing dir when known."""
    if os.geteuid() != 0:
        die(f"needs root (it writes {DROP_CACHES})")
    try:
        with open(DROP_CACHES, "w"):
            pass
    except OSError as e:
        die(f"cannot write {DROP_CACHES}: {e.strerror}")
    if args.mount:
        return None
    mnt: Path = args.mountpoint
    entry = mount_entry(str(mnt))
    if not mnt.is_dir() or entry is None or os.path.realpath(mnt) != entry.mountpoint:
        die(f"{mnt} is not a mountpoint")
    if entry.fstype != "fuse.ubcfs":
        die(f"{mnt} is not a ubcfs mount (it is {entry.fstype})")
    if args.backing is not None:
        if not args.backing.is_dir():
            die(f"--backing {args.backing}: not a directory")
        return Path(args.backing)
    src = entry.source
    if src.startswith("ubcfs:") and os.path.isdir(src[len("ubcfs:") :]):
        return Path(src[len("ubcfs:") :])
    return None


@contextlib.contextmanager
def own_mount(memory: str) -> Iterator[tuple[Path, Path, dict[str, str], list[str]]]:
    """A mount in a temp dir; yields (mnt, backing, env, umount-result holder)."""
    base = Path(tempfile.mkdtemp(prefix="evict-stress-"))
    mnt, backing = base / "mnt", base / "backing"
    mnt.mkdir()
    backing.mkdir()
    env = dict(os.environ, XDG_STATE_HOME=str(base / "state"), XDG_DATA_HOME=str(base / "data"))
    rc, out = ubcfs_cli("mount", str(mnt), "--backing", str(backing), "--memory", memory, env=env)
    if rc != 0:
        print(f"{PROG}: ubcfs mount failed (exit {rc}): {out}", file=sys.stderr)
        shutil.rmtree(base, ignore_errors=True)
        raise SystemExit(1)
    holder: list[str] = []
    clean = False
    try:
        yield mnt, backing, env, holder
        clean = True
    finally:
        rc, out = ubcfs_cli("umount", str(mnt), env=env)
        holder.append("ok" if rc == 0 else f"exit {rc}: {out}")
        if mount_entry(str(mnt)) is not None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False, capture_output=True)
            holder[-1] += "; still mounted, detached with fusermount3 -u -z"
        if clean and holder[-1] == "ok":
            shutil.rmtree(base, ignore_errors=True)
        else:
            print(f"{PROG}: kept {base} (logs under state/ubcfs)", file=sys.stderr)


def report(s: Summary, as_json: bool) -> None:
    if as_json:
        print(json.dumps(asdict(s), sort_keys=True))
        return
    total = s.procs * s.cycles_per_proc
    files = "one shared file" if s.mode == "shared" else "a file each"
    print(
        f"{PROG}: {files}, {s.procs} processes, {s.cycles_done}/{total} cycles,"
        f" {s.writes} writes of {s.chunk} bytes, {s.seconds:g} s"
    )
    dc = s.drop_caches
    if dc.get("count"):
        print(
            f"  drop_caches: {dc['count']:g} in {dc['seconds']:g} s"
            f" ({dc['seconds'] / dc['count'] * 1000:.0f} ms each)"
        )
    by = ", ".join(f"{k} {v}" for k, v in sorted(s.errors_by_errno.items()))
    print(f"  mismatches: {s.mismatches} ({s.zero_mismatches} read back as zeros)")
    print(f"  errors: {s.errors}" + (f" ({by})" if by else ""))
    if s.timed_out:
        print("  timed out")
    if s.stopped_early:
        print("  stopped early (--max-seconds)")
    for line in s.failures[:MAX_FAILURES_KEPT]:
        print(f"    {line}")
    print(
        f"  after the run: sync {s.sync}; mount {s.final_mount}; backing {s.final_backing};"
        f" check {s.check}; umount {s.umount}"
    )
    print(f"  {'OK' if s.ok else 'FAILED'}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    backing = check_environment(args)

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    try:
        if args.mount:
            with own_mount(args.memory or "4M") as (mnt, own_backing, env, umount):
                s = run(mnt, own_backing, args, env)
            s.umount = umount[0]
            s.judge()
        else:
            s = run(args.mountpoint, backing, args, None)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1
    report(s, args.json)
    return 0 if s.ok else 1


if __name__ == "__main__":
    sys.exit(main())
