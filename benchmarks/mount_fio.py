"""Throughput of a real ubcfs mount, side by side with --no-ubc, passthroughfs and the backing.

Five targets -- ``ubcfs`` (the UBC), ``no-ubc`` (the same daemon with data passed straight
to the backing files), ``passthrough`` (pyfuse3's own ``examples/passthroughfs.py``, run
unmodified from the pinned pyfuse3 sdist), ``null`` (``nullfs.py``: pyfuse3 with direct_io
doing no data work, the ceiling of ubcfs's transport) and ``backing`` (the backing directory
itself, no FUSE) -- and, with ``--baseline-tree DIR``, a sixth, ``baseline``: the ubcfs of
another checkout (an earlier commit, ``scripts/setup.sh`` run in it), so that "n times the
earlier figures" is judged within the same rounds, not against a run on another day.  They
run the same fio jobs: sequential write (1 MiB, fsync at the end), sequential read
cold (fresh mount, host page cache dropped) and warm (the same file again), random 4 KiB
reads and writes on a file that fits, 1 KiB appends, random 4 KiB reads and writes on a file
twice the size of ``--memory`` with the host caches dropped and a fresh mount (the file
written into the backing directory beforehand), and a metadata job (create / stat / unlink
of small files, timed here in Python).

The run is split into rounds (``--rounds N``, default 3; 1 with ``--quick``).  Each round
runs every target once (mount on fresh backing directories, all jobs, unmount), and the
order of the targets rotates from round to round (round 0: ubcfs, no-ubc, passthrough,
null, backing; round 1: no-ubc, passthrough, null, backing, ubcfs; ...), so a drift of the machine's
speed hits every target alike.  The table gives, per job, the median over rounds of each
target's MB/s or ops/s, the ratios of ubcfs to each other target computed within each round
and then their median (not a ratio of medians), the min-max spread of the per-round
ubcfs/no-ubc ratio when there is more than one round, and PASS/MISS against the mount
issue's checks: ubcfs/no-ubc >= 0.85 for every job, and absolute floors for ubcfs (FLOORS:
0.8x what a do-nothing pyfuse3 daemon reaches).  With ``--baseline FILE`` (the JSON of an
earlier run) a column gives ubcfs's median over the baseline's.  Then the acceptance rows of
issue 9 (ACCEPT_*), PASS/MISS each.  The checks are printed, never turned into an exit
status.  Then the ubcfs counters that moved (of the last round).  ``--json FILE`` saves
everything, per-round figures and machine information included.

Usage (as root, fio installed: ``apt-get install fio``)::

    .venv/bin/python benchmarks/mount_fio.py [--quick] [--rounds N] [--memory 128M]
        [--json out.json] [--baseline benchmarks/baseline-2e8e637.json]
        [--baseline-tree ../wt-base] [--dir DIR]
        [--sdist-cache DIR]

Exit status: 0 after a run (whatever the verdicts), 1 when a job, a mount or an unmount
failed, 2 on bad arguments or a missing prerequisite (fio, root, the sdist), 130 on Ctrl-C.
Every mount made is unmounted on the way out, whatever the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from ubcfs.bench import jobs as bench_jobs
from ubcfs.options import UsageError, parse_size

UBCFS = os.path.join(os.path.dirname(sys.executable), "ubcfs")
TOP = Path(__file__).resolve().parent.parent
SDIST_PIN = TOP / "scripts" / "pyfuse3-sdist.txt"
BUILD_CONSTRAINTS = TOP / "scripts" / "pyfuse3-build-constraints.txt"
DEFAULT_SDIST_CACHE = TOP / ".venv" / "pyfuse3-sdist"  # .venv/ is not in git

TARGETS = ("ubcfs", "no-ubc", "passthrough", "null", "backing")
BASELINE_TARGET = "baseline"  # with --baseline-tree: that checkout's ubcfs, in the same rounds
SHORT = {"no-ubc": "noubc", "passthrough": "pass", "null": "null", "backing": "back",
         BASELINE_TARGET: "base"}  # fmt: skip
SCRIPTED = ("passthrough", "null")  # targets that are a script run in the foreground
NULLFS = TOP / "benchmarks" / "nullfs.py"

MOUNT_TIMEOUT = 30.0  # seconds for passthroughfs to mount and answer
UMOUNT_TIMEOUT = 60.0

# ubcfs/no-ubc must reach this for every job (the mount issue's check).
RATIO_TARGET = 0.85

# Absolute floors for ubcfs: 0.8x the figures of a do-nothing pyfuse3 daemon
# (280 MB/s seq write, 420 MB/s seq read, 11.7k ops/s 4 KiB random read, 1.9k creates/s).
FLOORS: dict[str, float] = {
    "seq write 1M+fsync": 224.0,
    "seq read 1M cold": 336.0,
    "seq read 1M warm": 336.0,
    "rand read 4K": 9360.0,
    "create (meta)": 1520.0,
}

# Issue 9's acceptance: medians of the per-round ratios, >= 3 rounds, 128M, 4 KiB pages.
# The warm read, random write and append figures are the ratios of the day the issue was
# filed ("not below today's ratios").
ACCEPT_NOUBC: dict[str, float] = {
    "seq write 1M+fsync": 0.75,
    "seq read 1M cold": 0.8,
    "seq read 1M warm": 1.46,
    "rand read 4K": 1.0,
    "rand write 4K": 1.51,
    "append 1K": 1.95,
    "create (meta)": 0.9,
    "stat (meta)": 0.9,
    "unlink (meta)": 0.9,
}
ACCEPT_PASSTHROUGH: dict[str, float] = {"seq write 1M+fsync": 1.0, "seq read 1M cold": 1.0}
# ubcfs's median over the baseline's ubcfs median (``--baseline``: today's figures).
ACCEPT_BASELINE: dict[str, float] = {
    "rand read 4K 2xmem cold": 1.5,
    "rand write 4K 2xmem cold": 1.5,
}
ACCEPT_MIN_ROUNDS = 3


class FailureError(Exception):
    """A mount, an unmount or a job failed: one line for the user, exit 1."""


class PrerequisiteError(Exception):
    """Something the run needs is missing: one line for the user, exit 2."""


@dataclass
class Job:
    name: str
    unit: str  # "MB/s" or "ops/s"
    write: bool
    fio: list[str] = field(default_factory=list)
    filename: str = "data"
    cold: bool = False  # unmount, drop the host caches, mount again before the job
    prepare: int = 0  # bytes of ``filename`` written into the backing dir (unmounted) first


def fio_jobs(size_mb: int, runtime: int, big: int) -> list[Job]:
    """The fio jobs; ``big`` is the size of the file of the "2xmem" jobs, in bytes."""
    common = ["--ioengine=psync", "--fallocate=none", "--group_reporting", "--output-format=json"]
    seq = f"--size={size_mb}M"
    timed = [f"--runtime={runtime}", "--time_based"]
    return [
        Job(
            "seq write 1M+fsync",
            "MB/s",
            True,
            [*common, "--rw=write", "--bs=1M", seq, "--end_fsync=1"],
        ),
        Job("seq read 1M cold", "MB/s", False, [*common, "--rw=read", "--bs=1M", seq], cold=True),
        Job("seq read 1M warm", "MB/s", False, [*common, "--rw=read", "--bs=1M", seq]),
        Job("rand read 4K", "ops/s", False, [*common, "--rw=randread", "--bs=4k", seq, *timed]),
        Job("rand write 4K", "ops/s", True, [*common, "--rw=randwrite", "--bs=4k", seq, *timed]),
        Job(
            "append 1K",
            "ops/s",
            True,
            [*common, "--rw=write", "--bs=1k", "--size=8M", "--file_append=1"],
            filename="app",
        ),
        Job(
            "rand read 4K 2xmem cold",
            "ops/s",
            False,
            [*common, "--rw=randread", "--bs=4k", f"--size={big}", *timed],
            filename="big",
            cold=True,
            prepare=big,
        ),
        Job(
            "rand write 4K 2xmem cold",
            "ops/s",
            True,
            [*common, "--rw=randwrite", "--bs=4k", f"--size={big}", *timed],
            filename="big",
            cold=True,
        ),
    ]


def run_fio(job: Job, directory: str) -> float:
    args = [
        "fio",
        f"--name={job.name.replace(' ', '_')}",
        f"--directory={directory}",
        f"--filename={job.filename}",
        *job.fio,
    ]
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0 and INTERRUPTED:
        raise KeyboardInterrupt  # fio saw the Ctrl-C first
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise FailureError(f"fio {job.name!r} in {directory} failed ({proc.returncode}): {tail}")
    out = proc.stdout
    res = json.loads(out[out.index("{") :])["jobs"][0]
    side = res["write"] if job.write else res["read"]
    if job.unit == "MB/s":
        return float(side["bw_bytes"]) / 1e6
    return float(side["iops"])


# Repetitions of the metadata job per target (the median is kept): a single one swings by
# 2-3x on these machines, with the backing file system's journal and the host's write-back.
META_REPEATS = 3
# Each run waits ubcfs.bench.jobs.ATTR_EXPIRY (1.3 s) between the creates and the stats,
# longer than the attribute and entry timeouts of ubcfs and nullfs (1 s): every stat then
# asks the daemon instead of the kernel's cache.


def metadata_job(directory: str, n: int) -> dict[str, float]:
    """Create, stat and unlink ``n`` files, ``META_REPEATS`` times; the median rates."""
    os.sync()  # the fio jobs' data goes to disk now, not during the timing
    runs = [bench_jobs.metadata(directory, n) for _ in range(META_REPEATS)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def make_file(path: str, size: int) -> None:
    """``size`` bytes of incompressible data, synced (no write-back during the job)."""
    chunk = os.urandom(1 << 20)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, size, len(chunk)):
            os.pwrite(fd, chunk[: size - off], off)
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_caches() -> None:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


# --- mounts ---------------------------------------------------------------------------------


def mount_table() -> list[str]:
    """Every mount point in /proc/mounts (octal escapes decoded)."""
    try:
        with open("/proc/mounts") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        parts = line.split()
        if len(parts) > 1:
            points.append(parts[1].encode().decode("unicode_escape"))
    return points


def is_mounted(path: str) -> bool:
    return os.path.realpath(path) in mount_table()


def mounted_under(root: str) -> list[str]:
    """Mount points under ``root`` still listed in /proc/mounts."""
    prefix = os.path.realpath(root) + os.sep
    return [p for p in mount_table() if p.startswith(prefix)]


def fusermount_u(path: str, lazy: bool = False) -> bool:
    argv = ["fusermount3", "-u", *(["-z"] if lazy else []), path]
    try:
        return subprocess.run(argv, capture_output=True, timeout=UMOUNT_TIMEOUT).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ubcfs_cmd(exe: str, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([exe, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        msg = proc.stderr.strip().splitlines()[-1:] or [f"exit status {proc.returncode}"]
        raise FailureError(f"ubcfs {' '.join(args[:2])} failed: {msg[0]}")
    return proc


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def passthrough_script(cache: Path, dest: Path) -> Path:
    """``examples/passthroughfs.py`` of the pinned pyfuse3 sdist, extracted to ``dest``.

    The sdist is downloaded into ``cache`` (as scripts/setup.sh does: ``pip download
    --require-hashes``) unless a file with the pinned hash is there already.
    """
    pin = SDIST_PIN.read_text()
    line = next(ln for ln in pin.splitlines() if ln.startswith("pyfuse3=="))
    version = line.split()[0].split("==")[1]
    digest = line.split("--hash=sha256:")[1].split()[0]
    tarball = cache / f"pyfuse3-{version}.tar.gz"
    if not tarball.exists() or sha256_of(tarball) != digest:
        cache.mkdir(parents=True, exist_ok=True)
        tarball.unlink(missing_ok=True)
        argv = [
            sys.executable,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "download",
            "-q",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--require-hashes",
            "--build-constraint",
            str(BUILD_CONSTRAINTS),
            "-r",
            str(SDIST_PIN),
            "-d",
            str(cache),
        ]
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0 or not tarball.exists():
            tail = " | ".join(proc.stderr.strip().splitlines()[-2:])
            raise PrerequisiteError(f"cannot download the pyfuse3 {version} sdist: {tail}")
        if sha256_of(tarball) != digest:
            raise PrerequisiteError(f"{tarball}: sha256 differs from scripts/pyfuse3-sdist.txt")
    member = f"pyfuse3-{version}/examples/passthroughfs.py"
    with tarfile.open(tarball) as tf:
        src = tf.extractfile(member)
        if src is None:
            raise PrerequisiteError(f"{tarball} has no {member}")
        out = dest / "passthroughfs.py"
        out.write_bytes(src.read())
    return out


LIVE: dict[str, Target] = {}  # mount point -> mounted target, for the clean-up


class Target:
    def __init__(
        self,
        name: str,
        root: str,
        memory: str,
        page_size: str,
        passthrough: Path | None,
        rnd: int,
        baseline_tree: Path | None = None,
    ) -> None:
        self.name = name
        self.ubcfs = UBCFS
        if name == BASELINE_TARGET:
            assert baseline_tree is not None
            self.ubcfs = str(baseline_tree / ".venv" / "bin" / "ubcfs")
        self.backing = os.path.join(root, f"{name}-r{rnd}-backing")
        self.mnt = os.path.join(root, f"{name}-r{rnd}-mnt")
        self.log = os.path.join(root, f"{name}-r{rnd}.log")
        self.memory = memory
        self.page_size = page_size
        self.passthrough = passthrough
        self.proc: subprocess.Popen[bytes] | None = None
        os.makedirs(self.backing)
        os.makedirs(self.mnt)

    @property
    def fuse(self) -> bool:
        return self.name != "backing"

    @property
    def directory(self) -> str:
        return self.mnt if self.fuse else self.backing

    def mount(self) -> None:
        if not self.fuse:
            return
        LIVE[self.mnt] = self
        if self.name in SCRIPTED:
            self._start_script()
            return
        extra = ["--no-ubc"] if self.name == "no-ubc" else []
        ubcfs_cmd(
            self.ubcfs,
            "mount",
            self.mnt,
            "--backing",
            self.backing,
            "--memory",
            self.memory,
            "--page-size",
            self.page_size,
            *extra,
        )

    def _start_script(self) -> None:
        """passthroughfs or nullfs, in the foreground, as ``script BACKING MOUNTPOINT``."""
        script = NULLFS if self.name == "null" else self.passthrough
        label = "nullfs" if self.name == "null" else "passthroughfs"
        assert script is not None
        with open(self.log, "ab") as log:
            # A session of its own: Ctrl-C goes to us, and we unmount it cleanly.
            self.proc = subprocess.Popen(
                [sys.executable, str(script), self.backing, self.mnt],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + MOUNT_TIMEOUT
        while not is_mounted(self.mnt):
            rc = self.proc.poll()
            if rc is not None:
                raise FailureError(f"{label} exited with {rc} before mounting: {self._log_tail()}")
            if time.monotonic() > deadline:
                raise FailureError(f"{label} did not mount in {MOUNT_TIMEOUT:g} s")
            time.sleep(0.02)
        os.listdir(self.mnt)  # answers: the trio main loop runs

    def _log_tail(self) -> str:
        try:
            return " | ".join(Path(self.log).read_text().strip().splitlines()[-3:])
        except OSError:
            return "(no log)"

    def umount(self) -> None:
        if not self.fuse:
            return
        if self.name not in SCRIPTED:
            ubcfs_cmd(self.ubcfs, "umount", self.mnt)
            LIVE.pop(self.mnt, None)
            return
        proc = self.proc
        deadline = time.monotonic() + UMOUNT_TIMEOUT
        while is_mounted(self.mnt) and not fusermount_u(self.mnt):
            if time.monotonic() > deadline:
                raise FailureError(f"fusermount3 -u {self.mnt} keeps failing (busy?)")
            time.sleep(0.2)
        if proc is not None:
            try:
                rc = proc.wait(timeout=UMOUNT_TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                raise FailureError(f"{self.name} did not exit after its unmount") from None
            self.proc = None
            if rc != 0:
                raise FailureError(f"{self.name} exited with {rc}: {self._log_tail()}")
        LIVE.pop(self.mnt, None)

    def force_umount(self) -> None:
        """Clean-up after an error or Ctrl-C: unmount however it goes, kill what is left."""
        if self.name not in SCRIPTED and is_mounted(self.mnt):
            with contextlib.suppress(FailureError, OSError):
                self.umount()
        if is_mounted(self.mnt) and not fusermount_u(self.mnt):
            fusermount_u(self.mnt, lazy=True)
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None
        LIVE.pop(self.mnt, None)

    def remove(self) -> None:
        """Delete the (unmounted) directories, so rounds do not pile up files."""
        shutil.rmtree(self.backing, ignore_errors=True)
        shutil.rmtree(self.mnt, ignore_errors=True)

    def counters(self) -> dict[str, int]:
        if self.name != "ubcfs":
            return {}
        out = json.loads(ubcfs_cmd(self.ubcfs, "stat", self.mnt, "--json").stdout)
        return dict(out["counters"])


def cleanup(root: str) -> list[str]:
    """Unmount every mount of this run; the mount points still there afterwards."""
    for t in list(LIVE.values()):
        t.force_umount()
    for p in mounted_under(root):
        if not fusermount_u(p):
            fusermount_u(p, lazy=True)
    return mounted_under(root)


def bench_target(t: Target, jobs: list[Job], nmeta: int) -> tuple[dict[str, float], dict[str, Any]]:
    results: dict[str, float] = {}
    counters: dict[str, Any] = {}
    t.mount()
    for job in jobs:
        if job.cold or job.prepare:
            t.umount()
            if job.prepare:
                make_file(os.path.join(t.backing, job.filename), job.prepare)
            drop_caches()
            t.mount()
        before = t.counters()
        results[job.name] = run_fio(job, t.directory)
        after = t.counters()
        counters[job.name] = {
            k: after[k] - before.get(k, 0) for k in after if after[k] != before.get(k, 0)
        }
    meta = metadata_job(t.directory, nmeta)
    for k, v in meta.items():
        results[f"{k} (meta)"] = v
    t.umount()
    return results, counters


def round_order(rnd: int, targets: list[str]) -> list[str]:
    """The targets of round ``rnd``, rotated left by ``rnd``."""
    k = rnd % len(targets)
    return [*targets[k:], *targets[:k]]


# --- results --------------------------------------------------------------------------------


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarize(
    per_round: list[dict[str, dict[str, float]]], rows: list[str], targets: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, Any]]:
    """Medians per target, per-round ratios with their median/min/max, and the checks."""
    medians = {
        name: {r: statistics.median(rd[name][r] for rd in per_round) for r in rows}
        for name in targets
    }
    ratios: dict[str, Any] = {}
    for other in targets[1:]:
        ratios[f"ubcfs/{other}"] = {}
        for r in rows:
            each = [ratio(rd["ubcfs"][r], rd[other][r]) for rd in per_round]
            ratios[f"ubcfs/{other}"][r] = {
                "per_round": each,
                "median": statistics.median(each),
                "min": min(each),
                "max": max(each),
            }
    checks: dict[str, Any] = {}
    for r in rows:
        rat = ratios["ubcfs/no-ubc"][r]["median"]
        c: dict[str, Any] = {
            "ratio": {"target": RATIO_TARGET, "value": rat, "verdict": verdict(rat >= RATIO_TARGET)}
        }
        if r in FLOORS:
            u = medians["ubcfs"][r]
            c["floor"] = {"target": FLOORS[r], "value": u, "verdict": verdict(u >= FLOORS[r])}
        checks[r] = c
    return medians, ratios, checks


def vs_baseline(
    medians: dict[str, dict[str, float]], baseline: dict[str, Any] | None
) -> dict[str, float]:
    """Per job: ubcfs's median over the baseline run's ubcfs median."""
    if baseline is None:
        return {}
    base = baseline["results"]["ubcfs"]
    return {r: ratio(v, base[r]) for r, v in medians["ubcfs"].items() if r in base}


def acceptance(
    rounds: int, ratios: dict[str, Any], base: dict[str, float], has_baseline: bool
) -> list[dict[str, Any]]:
    """Issue 9's acceptance rows; a row whose figure is missing is a MISS."""
    out: list[dict[str, Any]] = []

    def row(job: str, against: str, value: float | None, target: float) -> None:
        ok = value is not None and value == value and value >= target
        out.append(
            {
                "job": job,
                "against": against,
                "value": value,
                "target": target,
                "verdict": verdict(ok),
            }
        )

    for other, table in (("no-ubc", ACCEPT_NOUBC), ("passthrough", ACCEPT_PASSTHROUGH)):
        for job, target in table.items():
            got = ratios[f"ubcfs/{other}"].get(job)
            row(job, f"ubcfs/{other}", got["median"] if got else None, target)
    same_run = ratios.get(f"ubcfs/{BASELINE_TARGET}")
    for job, target in ACCEPT_BASELINE.items():
        if same_run is not None:  # --baseline-tree: the earlier code in these very rounds
            got = same_run.get(job)
            row(job, "ubcfs/baseline-tree", got["median"] if got else None, target)
        else:
            row(job, "ubcfs/baseline", base.get(job) if has_baseline else None, target)
    return out


def print_table(
    rounds: int,
    rows: list[str],
    units: dict[str, str],
    medians: dict[str, dict[str, float]],
    ratios: dict[str, Any],
    checks: dict[str, Any],
    base: dict[str, float],
    targets: list[str],
) -> None:
    others = targets[1:]
    shorts = [SHORT[o] for o in others]
    if rounds > 1:
        print(
            f"{rounds} rounds, target order rotated each round; {', '.join(targets)}: median"
            f" over rounds;\n{', '.join('ubc/' + x for x in shorts)}: ratio within each round,"
            " then the median of those per-round ratios;\nspread: min-max over rounds of the"
            " per-round ubc/noubc"
        )
    else:
        print("1 round: the figures and ratios of that round alone (use --rounds 3 or more)")
    print(
        f"checks: ubc/noubc >= {RATIO_TARGET} for every job; floor = absolute minimum for ubcfs"
        " (0.8x a do-nothing pyfuse3 daemon); null = pyfuse3 doing no data work (nullfs.py):"
        " the transport's ceiling"
        + ("; vs base = ubcfs median / the baseline's ubcfs median" if base else "")
    )
    spread_h = f" {'spread':>11}" if rounds > 1 else ""
    base_h = f" {'vs base':>7}" if base else ""
    print(
        f"{'job':25} "
        + " ".join(f"{SHORT.get(t, t)[:9]:>9}" for t in targets)
        + f" {'ubc/noubc':>9}{spread_h} "
        + " ".join(f"{'ubc/' + x:>9}" for x in shorts[1:])
        + f"{base_h}  {'unit':5}  {'ratio':5}  floor"
    )
    for r in rows:
        un = ratios["ubcfs/no-ubc"][r]
        spread = f" {un['min']:5.2f}-{un['max']:<5.2f}" if rounds > 1 else ""
        vb = (f" {base[r]:7.2f}" if r in base else f" {'-':>7}") if base else ""
        c = checks[r]
        floor = f"{c['floor']['verdict']} (>= {c['floor']['target']:g})" if "floor" in c else "-"
        print(
            f"{r:25} "
            + " ".join(f"{medians[t][r]:9.1f}" for t in targets)
            + f" {un['median']:9.2f}{spread} "
            + " ".join(f"{ratios[f'ubcfs/{o}'][r]['median']:9.3f}" for o in others[1:])
            + f"{vb}  {units[r]:5}  {c['ratio']['verdict']:5}  {floor}"
        )
    verdicts = [v["verdict"] for c in checks.values() for v in c.values()]
    print(f"checks: {verdicts.count('PASS')} PASS, {verdicts.count('MISS')} MISS")


def print_acceptance(
    rounds: int, memory: str, page_size: str, accept: list[dict[str, Any]], baseline: str | None
) -> None:
    print(
        f"\nacceptance (issue 9): medians of per-round ratios; {rounds} round(s), memory {memory},"
        f" pages {page_size}"
    )
    if rounds < ACCEPT_MIN_ROUNDS:
        print(f"  (fewer than {ACCEPT_MIN_ROUNDS} rounds: indicative only, not a judgement)")
    for a in accept:
        v = a["value"]
        shown = f"{v:6.2f}" if v is not None else f"{'n/a':>6}"
        note = ""
        if a["against"] == "ubcfs/baseline-tree":
            note = "  (the --baseline-tree's ubcfs in the same rounds)"
        elif a["against"] == "ubcfs/baseline":
            note = f"  (baseline {baseline})" if baseline else "  (no --baseline given)"
        print(
            f"  {a['job']:25} {a['against']:18} {shown} >= {a['target']:<4g}  {a['verdict']}{note}"
        )
    n_pass = sum(a["verdict"] == "PASS" for a in accept)
    print(f"acceptance: {n_pass} PASS, {len(accept) - n_pass} MISS")


# --- machine --------------------------------------------------------------------------------


def git_commit() -> dict[str, str]:
    """The commit of this checkout (``head``) and the last one that changed ubcfs/, genfs/ or
    pagers/ (``code``, "+dirty" when they have local changes)."""

    def git(*argv: str) -> str:
        return subprocess.run(
            ["git", "-C", str(TOP), *argv], capture_output=True, text=True, check=True
        ).stdout.strip()

    code = ("--", "ubcfs", "genfs", "pagers")
    try:
        head = git("rev-parse", "--short", "HEAD")
        last = git("log", "-1", "--format=%h", *code)
        dirty = git("status", "--porcelain", "--untracked-files=no", *code)
    except (OSError, subprocess.CalledProcessError):
        return {"head": "unknown", "code": "unknown"}
    return {"head": head, "code": last + ("+dirty" if dirty else "")}


def machine_info(label: str) -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    try:
        fio = subprocess.run(["fio", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        fio = "unknown"
    import ubcfs.vm.uvm as uvm_mod

    return {
        "commit": git_commit(),
        "label": label,
        "compiled": not (uvm_mod.__file__ or "").endswith(".py"),
        "ubcfs_pure": os.environ.get("UBCFS_PURE", ""),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_total_mib": mem_kib // 1024,
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "fio": fio,
    }


INTERRUPTED: list[int] = []  # the signals received


def _interrupt(signum: int, frame: FrameType | None) -> None:
    INTERRUPTED.append(signum)
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--quick", action="store_true", help="small sizes, short runs, 1 round")
    ap.add_argument(
        "--rounds",
        type=int,
        default=None,
        metavar="N",
        help="rounds of all targets, order rotated each round (default 3; 1 with --quick)",
    )
    ap.add_argument("--memory", default="128M", help="ubcfs --memory (default 128M)")
    ap.add_argument("--page-size", default="4K", help="ubcfs --page-size (default 4K)")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--baseline", metavar="FILE", help="the --json of an earlier run to compare")
    ap.add_argument(
        "--baseline-tree",
        metavar="DIR",
        help="a checkout of earlier code with its own .venv (scripts/setup.sh run there):"
        " its ubcfs runs as target 'baseline' in the same rounds",
    )
    ap.add_argument("--label", help="a note stored in the JSON's machine information")
    ap.add_argument("--dir", default=None, help="where to put backing dirs (default: a tmp dir)")
    ap.add_argument(
        "--sdist-cache",
        default=str(DEFAULT_SDIST_CACHE),
        metavar="DIR",
        help=f"where the pyfuse3 sdist is downloaded to (default {DEFAULT_SDIST_CACHE})",
    )
    args = ap.parse_args()
    rounds: int = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        ap.error(f"--rounds must be at least 1, not {rounds}")
    try:
        memory = parse_size(args.memory, "--memory")
        parse_size(args.page_size, "--page-size")
    except UsageError as e:
        ap.error(str(e))
    baseline: dict[str, Any] | None = None
    if args.baseline:
        try:
            baseline = json.loads(Path(args.baseline).read_text())
            if not isinstance(baseline, dict) or not isinstance(baseline["results"]["ubcfs"], dict):
                raise TypeError("no results.ubcfs")
        except (OSError, ValueError, KeyError, TypeError) as e:
            ap.error(f"--baseline {args.baseline}: not a mount_fio.py JSON ({e})")
    targets = list(TARGETS)
    baseline_tree: Path | None = None
    if args.baseline_tree:
        baseline_tree = Path(args.baseline_tree).resolve()
        if not os.access(baseline_tree / ".venv" / "bin" / "ubcfs", os.X_OK):
            ap.error(
                f"--baseline-tree {args.baseline_tree}: no .venv/bin/ubcfs there"
                " (run scripts/setup.sh in that checkout first)"
            )
        targets.insert(1, BASELINE_TARGET)
    if shutil.which("fio") is None:
        print("mount_fio: fio is not installed (apt-get install fio)", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("mount_fio: needs root (mounts, /proc/sys/vm/drop_caches)", file=sys.stderr)
        return 2
    size_mb, runtime, nmeta = (32, 3, 300) if args.quick else (64, 10, 2000)
    jobs = fio_jobs(size_mb, runtime, 2 * memory)
    load0 = os.getloadavg()
    root = tempfile.mkdtemp(prefix="ubcfs-bench-", dir=args.dir)
    per_round: list[dict[str, dict[str, float]]] = []
    orders: list[list[str]] = []
    seconds: list[float] = []
    round_load: list[float] = []  # 1-min load average at the end of each round
    counters: dict[str, Any] = {}
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    status = 0
    try:
        script = passthrough_script(Path(args.sdist_cache), Path(root))
        for rnd in range(rounds):
            order = round_order(rnd, targets)
            results: dict[str, dict[str, float]] = {}
            t0 = time.monotonic()
            for name in order:
                t = Target(name, root, args.memory, args.page_size, script, rnd, baseline_tree)
                results[name], c = bench_target(t, jobs, nmeta)
                t.remove()
                if c:
                    counters[name] = c  # the last round's
            seconds.append(time.monotonic() - t0)
            round_load.append(os.getloadavg()[0])
            per_round.append(results)
            orders.append(order)
            print(
                f"round {rnd + 1}/{rounds}: {', '.join(order)} ({seconds[-1]:.0f} s,"
                f" load {round_load[-1]:.2f})",
                file=sys.stderr,
            )
    except PrerequisiteError as e:
        print(f"mount_fio: {e}", file=sys.stderr)
        status = 2
    except (FailureError, OSError, subprocess.SubprocessError) as e:
        print(f"mount_fio: {e}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        print("mount_fio: interrupted; unmounting", file=sys.stderr)
        status = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the clean-up runs to its end
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        left = cleanup(root)
        if left:
            print(f"mount_fio: still mounted, {root} kept: {left}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if status:
        return status
    load1 = os.getloadavg()
    rows = list(per_round[0]["ubcfs"])
    units = {j.name: j.unit for j in jobs}
    units.update({r: "ops/s" for r in rows if r not in units})
    medians, ratios, checks = summarize(per_round, rows, targets)
    base = vs_baseline(medians, baseline)
    print_table(rounds, rows, units, medians, ratios, checks, base, targets)
    if baseline is not None:
        differ = [
            f"{k} {baseline.get(k)!r} here {v!r}"
            for k, v in (("quick", args.quick), ("memory", args.memory))
            if baseline.get(k) != v
        ]
        if differ:
            print(f"warning: the baseline ran with other settings: {'; '.join(differ)}")
    accept = acceptance(rounds, ratios, base, baseline is not None)
    print_acceptance(rounds, args.memory, args.page_size, accept, args.baseline)
    print(f"load average {load0[0]:.2f} at the start, {load1[0]:.2f} at the end (1 min)")
    for job, c in counters.get("ubcfs", {}).items():
        interesting = {k: v for k, v in c.items() if k in COUNTERS_SHOWN}
        print(f"  {job}: {interesting}")
    if args.json:
        out = {
            "machine": machine_info(args.label or "")
            | {"load_start": list(load0), "load_end": list(load1)},
            "rounds": rounds,
            "order": orders,
            "round_seconds": seconds,
            "round_load": round_load,
            "per_round": per_round,
            "results": medians,
            "ratios": ratios,
            "checks": checks,
            "acceptance": accept,
            "baseline": args.baseline,
            "baseline_tree": str(baseline_tree) if baseline_tree else None,
            "targets": targets,
            "vs_baseline": base,
            "units": units,
            "counters": counters,
            "memory": args.memory,
            "page_size": args.page_size,
            "quick": args.quick,
        }
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


COUNTERS_SHOWN = frozenset(
    (
        "pageins",
        "pageouts",
        "pdpageouts",
        "pdfreed",
        "pdreact",
        "ubc_hits",
        "ubc_misses",
        "readahead_pages",
        "fastpath_skipped_zero",
        "zero_fills",
        "faults",
    )
)

if __name__ == "__main__":
    sys.exit(main())
