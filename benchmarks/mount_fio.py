"""Throughput of a real ubcfs mount, side by side with --no-ubc and the backing directory.

Runs in one go, for each target -- ``ubcfs`` (the UBC), ``no-ubc`` (the same daemon with
data passed straight to the backing files) and ``backing`` (the backing directory itself,
no FUSE) -- the same fio jobs: sequential write (1 MiB, fsync at the end), sequential read
cold (fresh mount, host page cache dropped) and warm (the same file again), random 4 KiB
reads and writes, 1 KiB appends, and a metadata job (create / stat / unlink of small files,
timed here in Python).  Prints MB/s or ops/s per target and the ratios ubcfs/no-ubc and
ubcfs/backing, plus the ubcfs counters that moved; ``--json FILE`` saves everything.

Usage (as root, fio installed: ``apt-get install fio``)::

    .venv/bin/python benchmarks/mount_fio.py [--quick] [--memory 128M] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

UBCFS = os.path.join(os.path.dirname(sys.executable), "ubcfs")


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
    def __init__(self, name: str, root: str, memory: str) -> None:
        self.name = name
        self.backing = os.path.join(root, f"{name}-backing")
        self.mnt = os.path.join(root, f"{name}-mnt")
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small sizes, short runs")
    ap.add_argument("--memory", default="128M", help="ubcfs --memory (default 128M)")
    ap.add_argument("--json", help="write the results to this file")
    ap.add_argument("--dir", default=None, help="where to put backing dirs (default: a tmp dir)")
    args = ap.parse_args()
    if shutil.which("fio") is None:
        print("mount_fio: fio is not installed (apt-get install fio)", file=sys.stderr)
        return 2
    size_mb, runtime, nmeta = (32, 3, 300) if args.quick else (64, 10, 2000)
    jobs = fio_jobs(size_mb, runtime)
    root = tempfile.mkdtemp(prefix="ubcfs-bench-", dir=args.dir)
    table: dict[str, dict[str, float]] = {}
    counters: dict[str, Any] = {}
    try:
        for name in ("ubcfs", "no-ubc", "backing"):
            t = Target(name, root, args.memory)
            table[name], c = bench_target(t, jobs, nmeta)
            if c:
                counters[name] = c
    finally:
        shutil.rmtree(root, ignore_errors=True)
    rows = list(table["ubcfs"])
    print(
        f"{'job':24} {'ubcfs':>10} {'no-ubc':>10} {'backing':>10} {'ubc/noubc':>10} {'ubc/back':>9}"
    )
    for r in rows:
        u, n, b = table["ubcfs"][r], table["no-ubc"][r], table["backing"][r]
        unit = "MB/s" if "seq" in r else "ops/s"
        print(f"{r:24} {u:10.1f} {n:10.1f} {b:10.1f} {u / n:10.2f} {u / b:9.3f}   {unit}")
    for job, c in counters.get("ubcfs", {}).items():
        interesting = {k: v for k, v in c.items() if k in COUNTERS_SHOWN}
        print(f"  {job}: {interesting}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"results": table, "counters": counters, "memory": args.memory}, f, indent=1)
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
