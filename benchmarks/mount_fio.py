"""Throughput of a real ubcfs mount, side by side with --no-ubc and the backing directory.

Three targets -- ``ubcfs`` (the UBC), ``no-ubc`` (the same daemon with data passed straight
to the backing files) and ``backing`` (the backing directory itself, no FUSE) -- run the
same fio jobs: sequential write (1 MiB, fsync at the end), sequential read cold (fresh
mount, host page cache dropped) and warm (the same file again), random 4 KiB reads and
writes, 1 KiB appends, and a metadata job (create / stat / unlink of small files, timed
here in Python).

The run is split into rounds (``--rounds N``, default 3; 1 with ``--quick``).  Each round
runs every target once (mount on fresh backing directories, all jobs, unmount), and the
order of the targets rotates from round to round (round 0: ubcfs, no-ubc, backing;
round 1: no-ubc, backing, ubcfs; ...), so a drift of the machine's speed hits every target
alike.  The table gives, per job, the median over rounds of each target's MB/s or ops/s,
the ratios ubcfs/no-ubc and ubcfs/backing computed within each round and then their median
(not a ratio of medians), the min-max spread of the per-round ubcfs/no-ubc ratio when there
is more than one round, and PASS/MISS against the targets: ubcfs/no-ubc >= 0.85 for every
job, and absolute floors for ubcfs (FLOORS: 0.8x what a do-nothing pyfuse3 daemon reaches).
The checks are printed, never turned into an exit status.  Then the ubcfs counters that
moved (of the last round).  ``--json FILE`` saves everything, per-round figures included.

Usage (as root, fio installed: ``apt-get install fio``)::

    .venv/bin/python benchmarks/mount_fio.py [--quick] [--rounds N] [--memory 128M]
        [--json out.json] [--dir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

UBCFS = os.path.join(os.path.dirname(sys.executable), "ubcfs")

TARGETS = ("ubcfs", "no-ubc", "backing")

# ubcfs/no-ubc must reach this for every job.
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


@dataclass
class Job:
    name: str
    unit: str  # "MB/s" or "ops/s"
    write: bool
    fio: list[str] = field(default_factory=list)


def fio_jobs(size_mb: int, runtime: int) -> list[Job]:
    common = ["--ioengine=psync", "--fallocate=none", "--group_reporting", "--output-format=json"]
    seq = f"--size={size_mb}M"
    return [
        Job(
            "seq write 1M+fsync",
            "MB/s",
            True,
            [*common, "--rw=write", "--bs=1M", seq, "--end_fsync=1"],
        ),
        Job("seq read 1M cold", "MB/s", False, [*common, "--rw=read", "--bs=1M", seq]),
        Job("seq read 1M warm", "MB/s", False, [*common, "--rw=read", "--bs=1M", seq]),
        Job(
            "rand read 4K",
            "ops/s",
            False,
            [*common, "--rw=randread", "--bs=4k", seq, f"--runtime={runtime}", "--time_based"],
        ),
        Job(
            "rand write 4K",
            "ops/s",
            True,
            [*common, "--rw=randwrite", "--bs=4k", seq, f"--runtime={runtime}", "--time_based"],
        ),
        Job(
            "append 1K",
            "ops/s",
            True,
            [*common, "--rw=write", "--bs=1k", "--size=8M", "--file_append=1", "--filename=app"],
        ),
    ]


def run_fio(job: Job, directory: str) -> float:
    args = ["fio", f"--name={job.name.replace(' ', '_')}", f"--directory={directory}", *job.fio]
    if not any(a.startswith("--filename=") for a in args):
        args.append("--filename=data")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    res = json.loads(out[out.index("{") :])["jobs"][0]
    side = res["write"] if job.write else res["read"]
    if job.unit == "MB/s":
        return float(side["bw_bytes"]) / 1e6
    return float(side["iops"])


def metadata_job(directory: str, n: int) -> dict[str, float]:
    d = os.path.join(directory, "meta")
    os.makedirs(d, exist_ok=True)
    names = [os.path.join(d, f"f{i:06d}") for i in range(n)]
    t0 = time.perf_counter()
    for p in names:
        os.close(os.open(p, os.O_CREAT | os.O_WRONLY, 0o644))
    t1 = time.perf_counter()
    for p in names:
        os.stat(p)
    t2 = time.perf_counter()
    for p in names:
        os.unlink(p)
    t3 = time.perf_counter()
    os.rmdir(d)
    return {"create": n / (t1 - t0), "stat": n / (t2 - t1), "unlink": n / (t3 - t2)}


def drop_caches() -> None:
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def ubcfs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([UBCFS, *args], check=True, capture_output=True, text=True)


class Target:
    def __init__(self, name: str, root: str, memory: str, rnd: int = 0) -> None:
        self.name = name
        self.backing = os.path.join(root, f"{name}-r{rnd}-backing")
        self.mnt = os.path.join(root, f"{name}-r{rnd}-mnt")
        self.memory = memory
        os.makedirs(self.backing)
        os.makedirs(self.mnt)

    @property
    def fuse(self) -> bool:
        return self.name != "backing"

    @property
    def directory(self) -> str:
        return self.mnt if self.fuse else self.backing

    def mount(self) -> None:
        if self.fuse:
            extra = ["--no-ubc"] if self.name == "no-ubc" else []
            ubcfs("mount", self.mnt, "--backing", self.backing, "--memory", self.memory, *extra)

    def umount(self) -> None:
        if self.fuse:
            ubcfs("umount", self.mnt)

    def remove(self) -> None:
        """Delete the (unmounted) directories, so rounds do not pile up files."""
        shutil.rmtree(self.backing, ignore_errors=True)
        shutil.rmtree(self.mnt, ignore_errors=True)

    def counters(self) -> dict[str, int]:
        if self.name != "ubcfs":
            return {}
        out = json.loads(ubcfs("stat", self.mnt, "--json").stdout)
        return dict(out["counters"])


def bench_target(t: Target, jobs: list[Job], nmeta: int) -> tuple[dict[str, float], dict[str, Any]]:
    results: dict[str, float] = {}
    counters: dict[str, Any] = {}
    t.mount()
    try:
        for job in jobs:
            if job.name.endswith("cold"):
                t.umount()
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
    finally:
        t.umount()
    return results, counters


def round_order(rnd: int) -> list[str]:
    """The targets of round ``rnd``, rotated left by ``rnd``."""
    k = rnd % len(TARGETS)
    return [*TARGETS[k:], *TARGETS[:k]]


def mounted_under(root: str) -> list[str]:
    """Mount points under ``root`` still listed in /proc/mounts."""
    prefix = os.path.realpath(root) + os.sep
    try:
        with open("/proc/mounts") as f:
            points = [line.split()[1] for line in f if len(line.split()) > 1]
    except OSError:
        return []
    return [p for p in points if p.startswith(prefix)]


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def summarize(
    per_round: list[dict[str, dict[str, float]]], rows: list[str]
) -> tuple[dict[str, dict[str, float]], dict[str, Any], dict[str, Any]]:
    """Medians per target, per-round ratios with their median/min/max, and the checks."""
    medians = {
        name: {r: statistics.median(rd[name][r] for rd in per_round) for r in rows}
        for name in TARGETS
    }
    ratios: dict[str, Any] = {}
    for other in ("no-ubc", "backing"):
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


def print_table(
    rounds: int,
    rows: list[str],
    units: dict[str, str],
    medians: dict[str, dict[str, float]],
    ratios: dict[str, Any],
    checks: dict[str, Any],
) -> None:
    if rounds > 1:
        print(
            f"{rounds} rounds, target order rotated each round; ubcfs, no-ubc, backing: median"
            " over rounds;\nubc/noubc, ubc/back: ratio within each round, then the median of"
            " those per-round ratios;\nspread: min-max over rounds of the per-round ubc/noubc"
        )
    else:
        print("1 round: the figures and ratios of that round alone (use --rounds 3 or more)")
    print(
        f"checks: ubc/noubc >= {RATIO_TARGET} for every job; floor = absolute minimum for ubcfs"
        " (0.8x a do-nothing pyfuse3 daemon)"
    )
    spread_h = f" {'spread':>11}" if rounds > 1 else ""
    print(
        f"{'job':24} {'ubcfs':>10} {'no-ubc':>10} {'backing':>10} {'ubc/noubc':>10}{spread_h}"
        f" {'ubc/back':>9}  {'unit':5}  {'ratio':5}  floor"
    )
    for r in rows:
        u, n, b = (medians[name][r] for name in TARGETS)
        un = ratios["ubcfs/no-ubc"][r]
        spread = f" {un['min']:5.2f}-{un['max']:<5.2f}" if rounds > 1 else ""
        ub = ratios["ubcfs/backing"][r]["median"]
        c = checks[r]
        floor = f"{c['floor']['verdict']} (>= {c['floor']['target']:g})" if "floor" in c else "-"
        print(
            f"{r:24} {u:10.1f} {n:10.1f} {b:10.1f} {un['median']:10.2f}{spread} {ub:9.3f}"
            f"  {units[r]:5}  {c['ratio']['verdict']:5}  {floor}"
        )
    verdicts = [v["verdict"] for c in checks.values() for v in c.values()]
    print(f"checks: {verdicts.count('PASS')} PASS, {verdicts.count('MISS')} MISS")


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
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--dir", default=None, help="where to put backing dirs (default: a tmp dir)")
    args = ap.parse_args()
    rounds: int = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        ap.error(f"--rounds must be at least 1, not {rounds}")
    if shutil.which("fio") is None:
        print("mount_fio: fio is not installed (apt-get install fio)", file=sys.stderr)
        return 2
    size_mb, runtime, nmeta = (32, 3, 300) if args.quick else (64, 10, 2000)
    jobs = fio_jobs(size_mb, runtime)
    root = tempfile.mkdtemp(prefix="ubcfs-bench-", dir=args.dir)
    per_round: list[dict[str, dict[str, float]]] = []
    orders: list[list[str]] = []
    seconds: list[float] = []
    counters: dict[str, Any] = {}
    try:
        for rnd in range(rounds):
            order = round_order(rnd)
            results: dict[str, dict[str, float]] = {}
            t0 = time.monotonic()
            for name in order:
                t = Target(name, root, args.memory, rnd)
                results[name], c = bench_target(t, jobs, nmeta)
                t.remove()
                if c:
                    counters[name] = c  # the last round's
            seconds.append(time.monotonic() - t0)
            per_round.append(results)
            orders.append(order)
            print(
                f"round {rnd + 1}/{rounds}: {', '.join(order)} ({seconds[-1]:.0f} s)",
                file=sys.stderr,
            )
    finally:
        left = mounted_under(root)
        if left:
            print(f"mount_fio: still mounted, {root} kept: {left}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)
    rows = list(per_round[0]["ubcfs"])
    units = {j.name: j.unit for j in jobs}
    units.update({r: "ops/s" for r in rows if r not in units})
    medians, ratios, checks = summarize(per_round, rows)
    print_table(rounds, rows, units, medians, ratios, checks)
    for job, c in counters.get("ubcfs", {}).items():
        interesting = {k: v for k, v in c.items() if k in COUNTERS_SHOWN}
        print(f"  {job}: {interesting}")
    if args.json:
        out = {
            "rounds": rounds,
            "order": orders,
            "round_seconds": seconds,
            "per_round": per_round,
            "results": medians,
            "ratios": ratios,
            "checks": checks,
            "units": units,
            "counters": counters,
            "memory": args.memory,
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
