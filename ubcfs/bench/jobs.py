"""The jobs of ``ubcfs bench``.  Sizes follow ``--size`` (S) and, for the policy jobs,
``--memory`` (M); every figure is measured, none assumed.

On the targets (each job ``prepare``s untimed, then ``measure``s; files stay for the next
job of the round):

* ``seqwrite``: fio, 1 MiB sequential writes of a new S file, ``fsync`` at the end (MB/s);
* ``seqread-cold``: fio, 1 MiB sequential reads of that file after making it cold
  (``Target.cold``: a remount, and the host's page cache dropped as root) (MB/s);
* ``seqread-warm``: the same, right after an untimed read of the whole file (MB/s; warm
  in the UBC only when S fits in M);
* ``randread`` / ``randwrite``: fio, 4 KiB random reads / writes of S/4 in total within
  that file (IOPS; no fsync after the writes, so the UBC's write-back is not timed);
* ``append``: fio, 1 KiB appends to a new file up to S/8 (IOPS);
* ``metadata``: create, stat and unlink of S/16K small files (64 to 4096), in Python, with
  1.3 s between the creates and the stats so that the kernel's attribute cache (1 s) has
  expired and every stat reaches the file system (ops/s each);
* ``build``: extract the tar of a small C tree (``ctree``) and ``make -j2`` it with ``cc``,
  then run the program and check its output (seconds: lower is better);
* ``truncate``: ``ubcfs stress truncate MNT --ops N --seed S --json`` with N = S/32K (100 to
  4000): truncation under simulated processes' wired mappings, every result checked (ops/s;
  mismatches or invariant violations fail the job).  On the ubcfs mounts with a UBC
  only (ubcfs, tmpfs, kernel-cache): it drives simulated processes through the control
  socket, and a ``--no-ubc`` mount has no page cache for them to map.

With mounts of their own (one per variant, over a fresh backing directory):

* ``fastpath``: 1 MiB writes extending a new file to 4*S, then ``fsync``, on ``ubcfs`` with
  the extending-write fast path on and with ``--no-extend-fastpath``: the daemon's CPU
  seconds (user + system, all threads, from /proc) per GiB written, and MB/s;
* ``loop``: a file of 1.5*M (written into the backing directory before the mount) read
  sequentially ``LOOP_PASSES`` times, once per ``--pdpolicy``: the hit ratio and MB/s;
* ``scan``: a hot file of M/4 read twice, then a cold file of 1.25*M read once, repeated
  ``SCAN_ROUNDS`` times, once per ``--pdpolicy``: the hit ratio of all reads, of the hot
  reads alone, and MB/s.

The hit ratio is ``1 - pageins * page_size / bytes_read``, from the daemon's ``pageins``
counter (``ubcfs stat --json``) before and after: the share of the bytes read that the
UBC already held.  Pages brought in by read-ahead count as misses, so read-ahead that is
evicted before it is read makes the ratio smaller, even below 0 (more paged in than read).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Final

from ubcfs.bench import ctree, system
from ubcfs.bench.config import Config
from ubcfs.bench.stats import hit_ratio
from ubcfs.bench.system import JobError
from ubcfs.bench.targets import Target, round_up, ubcfs_argv

FIO_TIMEOUT: Final = 3600.0
BUILD_TIMEOUT: Final = 1800.0
ATTR_EXPIRY: Final = 1.3
LOOP_PASSES: Final = 3
SCAN_ROUNDS: Final = 3
CHUNK: Final = 1 << 20
SEQ_FILE: Final = "seq"


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool = True

    def as_json(self) -> dict[str, Any]:
        return {"unit": self.unit, "higher_is_better": self.higher_is_better}


@dataclass(frozen=True)
class Spec:
    name: str
    metrics: tuple[Metric, ...]
    what: str
    variant: bool = False  # mounts of its own (variants) instead of the targets
    together: bool = False  # its variants are measured at the same time (one per core)

    def as_json(self) -> dict[str, Any]:
        return {
            "what": self.what,
            "variant": self.variant,
            "together": self.together,
            "metrics": {m.name: m.as_json() for m in self.metrics},
        }


MBS = Metric("throughput", "MB/s")
IOPS = Metric("iops", "IOPS")
SPECS: Final = {
    s.name: s
    for s in (
        Spec("seqwrite", (MBS,), "1 MiB sequential writes of a new file, then fsync"),
        Spec("seqread-cold", (MBS,), "1 MiB sequential reads, cold (see 'cold')"),
        Spec("seqread-warm", (MBS,), "1 MiB sequential reads right after another read"),
        Spec("randread", (IOPS,), "4 KiB random reads"),
        Spec("randwrite", (IOPS,), "4 KiB random writes (no fsync)"),
        Spec("append", (IOPS,), "1 KiB appends to a new file"),
        Spec(
            "metadata",
            (Metric("create", "ops/s"), Metric("stat", "ops/s"), Metric("unlink", "ops/s")),
            "create, stat, unlink of small files",
        ),
        Spec(
            "build",
            (Metric("seconds", "s", False), Metric("extract", "s", False)),
            "extract and make -j2 a small C tree (seconds, lower is better)",
        ),
        Spec("truncate", (Metric("ops", "ops/s"),), "ubcfs stress truncate --ops N"),
        Spec(
            "fastpath",
            (
                Metric("cpu_per_gib", "CPU s/GiB", False),
                Metric("trio_cpu_per_gib", "CPU s/GiB", False),
                MBS,
            ),
            "daemon CPU per GiB of extending writes (all threads; the trio thread), fast path"
            " on and off",
            variant=True,
            together=True,
        ),
        Spec(
            "loop",
            (Metric("hit_ratio", "ratio"), MBS),
            "a file 1.5x memory read sequentially, per page-replacement policy",
            variant=True,
        ),
        Spec(
            "scan",
            (Metric("hit_ratio", "ratio"), Metric("hot_hit_ratio", "ratio"), MBS),
            "a hot set read repeatedly between one-shot scans of a cold file, per policy",
            variant=True,
        ),
    )
}


@dataclass
class Context:
    """What the jobs of one run share."""

    cfg: Config
    root: str
    env: dict[str, str]
    tarball: str = ""
    seed: int = 1
    notes: dict[str, str] = field(default_factory=dict)  # what was done, per job run


def variants(job: str, cfg: Config) -> list[tuple[str, tuple[str, ...]]]:
    """A variant job's mounts: (label, extra ``ubcfs mount`` options)."""
    if job == "fastpath":
        return [("fastpath-on", ()), ("fastpath-off", ("--no-extend-fastpath",))]
    return [(p, ("--pdpolicy", p)) for p in cfg.policies]


def skip_reason(job: str, kind: str) -> str | None:
    """Why ``job`` does not run on targets of ``kind``, or None."""
    if job == "seqread-cold":
        if kind in ("tmpfs", "linux-tmpfs"):
            return "no cold state: the data lives only in memory (or swap)"
        if kind == "backing" and not system.is_root():
            return "needs root to drop the host's page cache"
    if job == "truncate" and kind not in ("ubcfs", "tmpfs", "kernel-cache"):
        if kind == "no-ubc":
            return "a --no-ubc mount has no page cache for simulated processes to map (ENODEV)"
        return "needs a ubcfs mount's control socket (simulated processes)"
    return None


# --- helpers ----------------------------------------------------------------------------


def write_file(path: str, size: int, fsync: bool = True) -> None:
    """``size`` bytes (a repeated random MiB), written in 1 MiB pieces."""
    chunk = os.urandom(CHUNK)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        off = 0
        while off < size:
            off += os.pwrite(fd, chunk[: min(CHUNK, size - off)], off)
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: str) -> int:
    """Read ``path`` sequentially in 1 MiB pieces; the bytes read."""
    buf = bytearray(CHUNK)
    total = 0
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            total += n
    return total


def fio(t: Target, name: str, filename: str, args: list[str], write: bool) -> dict[str, Any]:
    """One fio job in the target's directory; its read or write figures."""
    argv = [
        "fio",
        f"--name={name}",
        f"--directory={t.directory}",
        f"--filename={filename}",
        "--ioengine=psync",
        "--fallocate=none",
        "--invalidate=0",  # we decide what is cold, not fio's fadvise
        "--group_reporting",
        "--output-format=json",
        *args,
    ]
    proc = system.run_cmd(argv, timeout=FIO_TIMEOUT)
    if proc.returncode != 0:
        raise JobError(f"fio {name} on {t.label} failed: {system.last_line(proc)}")
    out = proc.stdout
    try:
        res = json.loads(out[out.index("{") :])["jobs"][0]
        side: dict[str, Any] = res["write" if write else "read"]
    except (ValueError, KeyError, IndexError) as e:
        raise JobError(f"fio {name} on {t.label}: unreadable output ({e})") from None
    return side


def _mbs(side: dict[str, Any]) -> float:
    return float(side["bw_bytes"]) / 1e6


def _ensure_seq(t: Target, ctx: Context) -> str:
    path = os.path.join(t.directory, SEQ_FILE)
    try:
        if os.stat(path).st_size == ctx.cfg.size:
            return path
    except FileNotFoundError:
        pass
    write_file(path, ctx.cfg.size)
    return path


def _io_size(ctx: Context) -> int:
    return max(CHUNK, ctx.cfg.size // 4)


# --- the jobs on targets -----------------------------------------------------------------

Values = dict[str, float]


def prepare(job: str, t: Target, ctx: Context) -> str:
    """The untimed part before ``measure`` (what it did, for the notes)."""
    if job in ("seqread-cold", "seqread-warm", "randread", "randwrite"):
        path = _ensure_seq(t, ctx)
        if job == "seqread-cold":
            t.sync()
            return t.cold()
        if job == "seqread-warm":
            read_file(path)
            return "read once before"
    if job == "seqwrite":
        old = os.path.join(t.directory, SEQ_FILE)
        if os.path.lexists(old):
            os.unlink(old)
    return ""


def measure(job: str, t: Target, ctx: Context) -> Values:
    """The timed part of a job on a target."""
    s = ctx.cfg.size
    if job == "seqwrite":
        side = fio(
            t, job, SEQ_FILE, ["--rw=write", "--bs=1M", f"--size={s}", "--end_fsync=1"], True
        )
        return {"throughput": _mbs(side)}
    if job in ("seqread-cold", "seqread-warm"):
        side = fio(t, job, SEQ_FILE, ["--rw=read", "--bs=1M", f"--size={s}"], False)
        return {"throughput": _mbs(side)}
    if job in ("randread", "randwrite"):
        rw = "randread" if job == "randread" else "randwrite"
        args = [f"--rw={rw}", "--bs=4k", f"--size={s}", f"--io_size={_io_size(ctx)}"]
        side = fio(t, job, SEQ_FILE, [*args, "--randrepeat=1"], job == "randwrite")
        return {"iops": float(side["iops"])}
    if job == "append":
        args = ["--rw=write", "--bs=1k", f"--size={max(CHUNK, s // 8)}", "--file_append=1"]
        side = fio(t, job, "append", args, True)
        return {"iops": float(side["iops"])}
    if job == "metadata":
        return metadata(t.directory, metadata_count(s))
    if job == "build":
        return build(t.directory, ctx)
    if job == "truncate":
        return truncate(t, ctx)
    raise JobError(f"{job} is not a job on targets")


def cleanup(job: str, t: Target) -> None:
    """What a job leaves that no later job needs."""
    if job == "append":
        path = os.path.join(t.directory, "append")
        if os.path.lexists(path):
            os.unlink(path)
    if job == "build":
        shutil.rmtree(os.path.join(t.directory, ctree.TOP), ignore_errors=True)


def metadata_count(size: int) -> int:
    return max(64, min(4096, size // (16 << 10)))


def metadata(directory: str, n: int) -> Values:
    d = os.path.join(directory, "meta")
    os.makedirs(d, exist_ok=True)
    names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o644))
    t1 = time.perf_counter()
    time.sleep(ATTR_EXPIRY)
    t2 = time.perf_counter()
    for p in names:
        os.stat(p)
    t3 = time.perf_counter()
    for p in names:
        os.unlink(p)
    t4 = time.perf_counter()
    os.rmdir(d)
    return {"create": n / (t1 - t0), "stat": n / (t3 - t2), "unlink": n / (t4 - t3)}


def build(directory: str, ctx: Context) -> Values:
    tree = os.path.join(directory, ctree.TOP)
    shutil.rmtree(tree, ignore_errors=True)
    t0 = time.perf_counter()
    proc = system.run_cmd(["tar", "-xf", ctx.tarball, "-C", directory], timeout=BUILD_TIMEOUT)
    if proc.returncode != 0:
        raise JobError(f"build: tar -x failed: {system.last_line(proc)}")
    t1 = time.perf_counter()
    proc = system.run_cmd(
        ["make", "-s", "-j2", "-C", tree, "CC=cc"], timeout=BUILD_TIMEOUT, env=ctx.env
    )
    if proc.returncode != 0:
        raise JobError(f"build: make failed: {system.last_line(proc)}")
    t2 = time.perf_counter()
    proc = system.run_cmd([os.path.join(tree, "prog")], timeout=60.0)
    if proc.returncode != 0 or proc.stdout != ctree.expected_output():
        raise JobError(
            f"build: the program built prints {proc.stdout.strip()!r}, not"
            f" {ctree.expected_output().strip()!r}"
        )
    return {"seconds": t2 - t0, "extract": t1 - t0}


def truncate_ops(size: int) -> int:
    return max(100, min(4000, size // (32 << 10)))


def truncate(t: Target, ctx: Context) -> Values:
    ops = truncate_ops(ctx.cfg.size)
    argv = ubcfs_argv(
        "stress", "truncate", t.mnt, "--ops", str(ops), "--seed", str(ctx.seed), "--json"
    )
    proc = system.run_cmd(argv, timeout=FIO_TIMEOUT, env=ctx.env)
    try:
        summary = json.loads(proc.stdout.strip().splitlines()[-1])
        done = sum(summary["ops"].values())
        seconds = float(summary["seconds"])
        bad = (summary["mismatches"], summary["violations"])
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        raise JobError(f"truncate on {t.label}: {system.last_line(proc)}") from None
    if bad != (0, 0):
        raise JobError(
            f"truncate on {t.label} (seed {ctx.seed}): {bad[0]} mismatches, {bad[1]} violations"
        )
    if proc.returncode != 0:
        raise JobError(f"truncate on {t.label}: {system.last_line(proc)}")
    return {"ops": done / seconds if seconds > 0 else 0.0}


# --- the variant jobs ----------------------------------------------------------------------


def loop_size(cfg: Config) -> int:
    return round_up(cfg.memory * 3 // 2, cfg.page_size)


def scan_sizes(cfg: Config) -> tuple[int, int]:
    return round_up(cfg.memory // 4, cfg.page_size), round_up(cfg.memory * 5 // 4, cfg.page_size)


def prepare_backing(job: str, backing: str, cfg: Config) -> None:
    """Files a variant job reads, written into the backing directory before the mount
    (so that the UBC starts without them)."""
    if job == "loop":
        write_file(os.path.join(backing, "loop"), loop_size(cfg), fsync=False)
    elif job == "scan":
        hot, cold = scan_sizes(cfg)
        write_file(os.path.join(backing, "hot"), hot, fsync=False)
        write_file(os.path.join(backing, "cold"), cold, fsync=False)


def measure_variant(job: str, t: Target, ctx: Context) -> Values:
    if job == "fastpath":
        return fastpath(t, ctx)
    if job == "loop":
        return loop(t)
    if job == "scan":
        return scan(t)
    raise JobError(f"{job} is not a variant job")


def fastpath_size(size: int) -> int:
    """Bytes the fastpath job writes: enough CPU time that /proc's 10 ms ticks are ~1%."""
    return 4 * size


def warm_up(job: str, t: Target, ctx: Context) -> None:
    """Untimed work on a fresh mount before a ``together`` job: a new mount's first writes
    cost more CPU, whichever variant it is (measured: 2.4 CPU s/GiB for a mount's first
    256 MiB, 1.3-1.7 after, the fast path on in both)."""
    if job == "fastpath":
        warm = os.path.join(t.directory, "warm-up")
        write_file(warm, ctx.cfg.memory)
        os.unlink(warm)


def fastpath(t: Target, ctx: Context) -> Values:
    size = fastpath_size(ctx.cfg.size)
    c0 = system.cpu_seconds(t.pid)
    m0 = system.cpu_seconds(t.pid, main_thread=True)
    w0 = time.perf_counter()
    write_file(os.path.join(t.directory, "extend"), size)
    w1 = time.perf_counter()
    c1 = system.cpu_seconds(t.pid)
    m1 = system.cpu_seconds(t.pid, main_thread=True)
    if c0 is None or c1 is None or m0 is None or m1 is None:
        raise JobError(f"{t.label}: the daemon's CPU time cannot be read")
    gib = size / (1 << 30)
    return {
        "cpu_per_gib": (c1 - c0) / gib,
        "trio_cpu_per_gib": (m1 - m0) / gib,
        "throughput": size / (w1 - w0) / 1e6,
    }


def _pageins(t: Target) -> int:
    return t.counters().get("pageins", 0)


def loop(t: Target) -> Values:
    path = os.path.join(t.directory, "loop")
    p0 = _pageins(t)
    w0 = time.perf_counter()
    got = sum(read_file(path) for _ in range(LOOP_PASSES))
    w1 = time.perf_counter()
    p1 = _pageins(t)
    return _hits(p1 - p0, t.page_size, got, w1 - w0)


def scan(t: Target) -> Values:
    hot = os.path.join(t.directory, "hot")
    cold = os.path.join(t.directory, "cold")
    total = hot_bytes = hot_pageins = 0
    p_start = _pageins(t)
    w0 = time.perf_counter()
    for _ in range(SCAN_ROUNDS):
        p0 = _pageins(t)
        got = read_file(hot) + read_file(hot)
        hot_pageins += _pageins(t) - p0
        hot_bytes += got
        total += got + read_file(cold)
    w1 = time.perf_counter()
    out = _hits(_pageins(t) - p_start, t.page_size, total, w1 - w0)
    hot_ratio = hit_ratio(hot_pageins, t.page_size, hot_bytes)
    if hot_ratio is not None:
        out["hot_hit_ratio"] = hot_ratio
    return out


def _hits(pageins: int, page_size: int, nbytes: int, seconds: float) -> Values:
    out = {"throughput": nbytes / seconds / 1e6 if seconds > 0 else 0.0}
    ratio = hit_ratio(pageins, page_size, nbytes)
    if ratio is not None:
        out["hit_ratio"] = ratio
    return out
