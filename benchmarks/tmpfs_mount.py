"""A ``--tmpfs`` mount next to a Linux tmpfs and a ubcfs backing mount, in one run.

Targets: ``ubcfs-tmpfs`` (``ubcfs mount --tmpfs --memory M --swap 10M``, so data beyond
memory goes to its swap file), ``linux-tmpfs`` (``mount -t tmpfs``: the kernel's, all in
RAM), ``ubcfs-backing`` (``ubcfs mount --backing DIR --memory M``) and ``null``
(``nullfs.py``: a pyfuse3 daemon with direct_io that does no data work -- the FUSE
transport's ceiling, which no daemon on it can pass).  Each runs the same
jobs at data sizes 1x and 8x the simulated memory: a sequential write in 1 MiB ``write()``
calls then ``fsync``, and a sequential read of the same file in 1 MiB reads (for the
backing mount with the host caches dropped first; for the ubcfs tmpfs at 8x most of it
comes back from swap).  In the same rounds, ``raw``: a cold sequential read of a file as
large as the 8x data in the swap file's directory, host caches dropped -- the speed of the
disk under the swap file.  The report gives MB/s per job and target (median over rounds;
the target order rotates each round) and the tmpfs read at 8x as a ratio of ``raw``
(the swap-in throughput, target >= 0.5x), with ubcfs's swap counters.

Usage (as root)::

    .venv/bin/python benchmarks/tmpfs_mount.py [--memory 64M] [--rounds 3] [--quick]
        [--dir DIR] [--json FILE]

Exit status: 0 after a run, 1 when a mount or a job failed, 2 on bad arguments or without
root.  Every mount is unmounted on the way out.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ubcfs.options import UsageError, parse_size

UBCFS = os.path.join(os.path.dirname(sys.executable), "ubcfs")
TARGETS = ("ubcfs-tmpfs", "linux-tmpfs", "ubcfs-backing", "null")
NULLFS = Path(__file__).resolve().parent / "nullfs.py"
MOUNT_TIMEOUT = 30.0
MIB = 1 << 20
SWAP_TARGET = 0.5


class FailureError(Exception):
    pass


def drop_caches() -> None:
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def run(*argv: str) -> str:
    p = subprocess.run(argv, capture_output=True, text=True)
    if p.returncode != 0:
        last = (p.stderr.strip().splitlines() or [f"exit status {p.returncode}"])[-1]
        raise FailureError(f"{' '.join(argv[:3])}: {last}")
    return p.stdout


def write_file(path: Path, size: int, chunk: bytes) -> float:
    """Sequential 1 MiB writes, then fsync; returns MB/s."""
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for off in range(0, size, len(chunk)):
            os.write(fd, chunk[: size - off])
        os.fsync(fd)
    finally:
        os.close(fd)
    return size / MIB / (time.perf_counter() - t0)


def read_file(path: Path) -> float:
    """Sequential 1 MiB reads to EOF; returns MB/s."""
    n = 0
    t0 = time.perf_counter()
    fd = os.open(path, os.O_RDONLY)
    try:
        while chunk := os.read(fd, MIB):
            n += len(chunk)
    finally:
        os.close(fd)
    return n / MIB / (time.perf_counter() - t0)


class Target:
    def __init__(self, name: str, root: Path, memory: int, swap: int) -> None:
        self.name = name
        self.root = root
        self.mnt = root / name / "mnt"
        self.memory = memory
        self.swap = swap
        self.counters: dict[str, Any] = {}
        self.proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        self.mnt.mkdir(parents=True, exist_ok=True)
        mem = str(self.memory)
        if self.name == "linux-tmpfs":
            run("mount", "-t", "tmpfs", "-o", f"size={self.memory * 10}", "tmpfs", str(self.mnt))
        elif self.name == "null":
            store = self.root / self.name / "store"
            store.mkdir(exist_ok=True)
            self.proc = subprocess.Popen(
                [sys.executable, str(NULLFS), str(store), str(self.mnt)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + MOUNT_TIMEOUT
            while not os.path.ismount(self.mnt):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise FailureError("nullfs did not mount")
                time.sleep(0.02)
        elif self.name == "ubcfs-tmpfs":
            swap_file = str(self.root / self.name / "swap")
            run(UBCFS, "mount", str(self.mnt), "--tmpfs", "--memory", mem,
                "--swap", str(self.swap), "--swap-file", swap_file)  # fmt: skip
        else:
            backing = self.root / self.name / "backing"
            backing.mkdir(exist_ok=True)
            run(UBCFS, "mount", str(self.mnt), "--backing", str(backing), "--memory", mem)

    def stat(self) -> dict[str, Any]:
        if not self.name.startswith("ubcfs"):
            return {}
        out: dict[str, Any] = json.loads(run(UBCFS, "stat", str(self.mnt), "--json"))
        return out

    def umount(self) -> None:
        if not os.path.ismount(self.mnt):
            return
        if self.name == "linux-tmpfs":
            run("umount", str(self.mnt))
        elif self.name == "null":
            run("fusermount3", "-u", str(self.mnt))
            if self.proc is not None:
                self.proc.wait(MOUNT_TIMEOUT)
        else:
            run(UBCFS, "umount", str(self.mnt))

    def force_umount(self) -> None:
        if os.path.ismount(self.mnt):
            subprocess.run(["umount", "-l", str(self.mnt)], capture_output=True)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(MOUNT_TIMEOUT)


def bench(t: Target, sizes: dict[str, int], chunk: bytes) -> dict[str, float]:
    out: dict[str, float] = {}
    t.mount()
    try:
        for label, size in sizes.items():
            path = t.mnt / f"data-{label}"
            out[f"write {label}"] = write_file(path, size, chunk)
            if t.name == "ubcfs-backing":
                run(UBCFS, "sync", str(t.mnt))
                drop_caches()
            out[f"read {label}"] = read_file(path)
            if t.name == "ubcfs-tmpfs" and label == "8x":
                t.counters = t.stat().get("counters", {})
            path.unlink()
    finally:
        t.umount()
    return out


def raw_read(directory: Path, size: int, chunk: bytes) -> float:
    path = directory / "raw-read"
    write_file(path, size, chunk)
    drop_caches()
    try:
        return read_file(path)
    finally:
        path.unlink()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--memory", default=None, help="simulated memory (default 64M; 16M --quick)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (default 3; 1 --quick)")
    ap.add_argument("--quick", action="store_true", help="small and one round (a smoke run)")
    ap.add_argument("--dir", default=None, help="where to mount and keep swap (default: /tmp)")
    ap.add_argument("--json", default=None, help="write the figures to this file")
    args = ap.parse_args(argv)
    try:
        memory = parse_size(args.memory or ("16M" if args.quick else "64M"), "--memory")
    except UsageError as e:
        print(f"tmpfs_mount: error: {e}", file=sys.stderr)
        return 2
    rounds = args.rounds if args.rounds is not None else (1 if args.quick else 3)
    if rounds < 1:
        print("tmpfs_mount: error: --rounds must be at least 1", file=sys.stderr)
        return 2
    if os.geteuid() != 0:
        print("tmpfs_mount: error: needs root (mounts, drop_caches)", file=sys.stderr)
        return 2
    sizes = {"1x": memory, "8x": 8 * memory}
    chunk = os.urandom(MIB)
    root = Path(tempfile.mkdtemp(prefix="ubcfs-tmpfs-bench-", dir=args.dir))
    per_round: list[dict[str, dict[str, float]]] = []
    counters: dict[str, Any] = {}
    targets = [Target(n, root, memory, 10 * memory) for n in TARGETS]
    try:
        for rnd in range(rounds):
            k = rnd % len(targets)
            figures: dict[str, dict[str, float]] = {}
            for t in [*targets[k:], *targets[:k]]:
                figures[t.name] = bench(t, sizes, chunk)
                counters = t.counters or counters
            figures["raw"] = {"read 8x": raw_read(root, sizes["8x"], chunk)}
            per_round.append(figures)
            print(f"round {rnd + 1}/{rounds} done", file=sys.stderr)
    except (FailureError, OSError) as e:
        print(f"tmpfs_mount: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for t in targets:
            t.force_umount()
        subprocess.run(["rm", "-rf", str(root)], capture_output=True)
    report(per_round, counters, memory, args.json)
    return 0


def report(
    per_round: list[dict[str, dict[str, float]]],
    counters: dict[str, Any],
    memory: int,
    json_path: str | None,
) -> None:
    jobs = list(per_round[0][TARGETS[0]])
    med = {t: {j: statistics.median(r[t][j] for r in per_round) for j in jobs} for t in TARGETS}
    raw = statistics.median(r["raw"]["read 8x"] for r in per_round)
    ratios = [r["ubcfs-tmpfs"]["read 8x"] / r["raw"]["read 8x"] for r in per_round]
    swap_ratio = statistics.median(ratios)
    print(f"tmpfs_mount: memory {memory // MIB} MiB, {len(per_round)} rounds, MB/s (median)")
    print(f"{'job':<10}" + "".join(f"{t:>15}" for t in TARGETS))
    for j in jobs:
        print(f"{j:<10}" + "".join(f"{med[t][j]:>15.1f}" for t in TARGETS))
    print(f"raw cold read of the swap file's disk, 8x: {raw:.1f} MB/s")
    ceiling = statistics.median(r["null"]["read 8x"] / r["raw"]["read 8x"] for r in per_round)
    print(f"the FUSE transport's ceiling (null read 8x) / raw read: {ceiling:.2f}x")
    verdict = "PASS" if swap_ratio >= SWAP_TARGET else "MISS"
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    print(
        f"swap-in (ubcfs-tmpfs read 8x) / raw read: {swap_ratio:.2f}x (rounds {spread};"
        f" target >= {SWAP_TARGET}x: {verdict})"
    )
    keys = ("swapins", "swapouts", "swap_ins_io", "swap_outs_io", "readahead_pages")
    moved = {k: counters.get(k, 0) for k in keys}
    print(
        "ubcfs-tmpfs counters after the 8x read: " + ", ".join(f"{k} {v}" for k, v in moved.items())
    )
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                {
                    "memory": memory,
                    "per_round": per_round,
                    "median": med,
                    "raw_read_8x": raw,
                    "swapin_ratio": swap_ratio,
                    "null_ratio": ceiling,
                    "counters": moved,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    sys.exit(main())
