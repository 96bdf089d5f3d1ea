"""CPU per GiB appended with the extending-write fast path on and off, run side by side.

Run: ``.venv/bin/python benchmarks/fastpath_pairs.py [--pairs N] [--case paging|fits|both]
[--quick] [--json FILE] [--dir DIR] [--timeout S]``

Why pairs that run at the same time: ``engine.py``'s ``fastpath`` job times the "on" and
the "off" runs one after the other, but the CPU speed of the shared 2-core VMs this project
runs on drifts by up to +-40% within seconds, so two back-to-back runs see different
machines, and the savings of single on/off pairs range from a few percent to over half.
Here each pair is two child processes started together, one with the fast path on and one
with it off, one per core: whatever the machine's speed does meanwhile, it does to both.
Which of the two is started first alternates from pair to pair.  The "on" child finishes
first (it has less to do), so the tail of the "off" run has the machine to itself; the
CPU times, unlike the wall times, hardly depend on that.

The workload is exactly ``engine.py``'s (its ``Bench.fastpath_run`` is called): a fresh
``Engine`` with its simulated memory populated and the default tunables but for
``GenfsParams(fastpath=...)``, 64 KiB appends at EOF into a new backing file, then the
final ``eng.fsync`` + ``eng.release``, all of it timed; no warm-up run.  Cases: "paging"
appends 256 MiB with 64 MiB of engine memory (the pagedaemon works throughout), "fits"
appends 128 MiB into 256 MiB.  ``--quick`` uses 1/8 of these sizes and 2 pairs.

What the numbers mean (per GiB appended):

* ``proc`` -- ``time.process_time()`` of the child: the whole process, the backing-I/O
  worker threads and their kernel time included.  The target, at least 25% less of it with
  the fast path on, is judged on the median of the pairs' savings (PASS/MISS).
* ``trio-thr`` -- ``time.thread_time()`` of the trio thread alone (the engine's Python code
  and the inline RWF_NOWAIT reads).
* ``saving`` -- ``1 - on / off`` of one pair; "from the medians" is ``1 - median(on) /
  median(off)`` over the pairs, for comparison.
* ``wall`` -- seconds per GiB; both children share the machine, so it is not comparable
  with ``engine.py``'s.
* ``fp_skip0`` and ``zerofill`` -- the ``eng.uvm.uvmexp`` counters
  ``fastpath_skipped_zero`` and ``zero_fills`` per MiB appended.

A benchmark, not a test: a MISS does not fail it.  It exits 1 only when a child fails or
times out (its stderr is shown), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import trio

# benchmarks/engine.py, next to this file (not ubcfs.vfs.engine): the same workload
from engine import FASTPATH_TARGET, Bench, Config, GiB, MiB, Profiler, cpu_ticks, engine_version

from ubcfs.vm import diag

CASES = ("paging", "fits")
SIDES = ("on", "off")
DEFAULT_PAIRS = 5
QUICK_PAIRS = 2


def case_sizes(cfg: Config, case: str) -> tuple[int, int]:
    """(engine memory, bytes appended) of a case, as in ``Bench.fastpath``."""
    if case == "paging":
        return cfg.small_mem, cfg.fp_bytes
    return cfg.big_mem, cfg.fit


@dataclass(frozen=True)
class Side:
    """One child's run: the JSON line it prints."""

    side: str  # "on" or "off"
    case: str
    memory: int
    nbytes: int
    cpu_s_per_gib: float  # process CPU
    thread_s_per_gib: float  # trio thread CPU
    wall_s_per_gib: float
    fastpath_skipped_zero_per_mib: float
    zero_fills_per_mib: float

    @staticmethod
    def from_json(line: str) -> Side:
        doc = json.loads(line)
        return Side(
            side=str(doc["side"]),
            case=str(doc["case"]),
            memory=int(doc["memory"]),
            nbytes=int(doc["nbytes"]),
            cpu_s_per_gib=float(doc["cpu_s_per_gib"]),
            thread_s_per_gib=float(doc["thread_s_per_gib"]),
            wall_s_per_gib=float(doc["wall_s_per_gib"]),
            fastpath_skipped_zero_per_mib=float(doc["fastpath_skipped_zero_per_mib"]),
            zero_fills_per_mib=float(doc["zero_fills_per_mib"]),
        )


@dataclass(frozen=True)
class Pair:
    first: str  # the side started first
    on: Side
    off: Side

    @property
    def saving(self) -> float:
        return 1 - self.on.cpu_s_per_gib / self.off.cpu_s_per_gib

    @property
    def thread_saving(self) -> float:
        return 1 - self.on.thread_s_per_gib / self.off.thread_s_per_gib


class ChildError(Exception):
    """A child failed or timed out; the message includes its stderr."""


# --- the child: one run ---------------------------------------------------------------------


def child(side: str, case: str, quick: bool, directory: str | None) -> None:
    cfg = Config.make(quick)
    memory, nbytes = case_sizes(cfg, case)
    with tempfile.TemporaryDirectory(dir=directory, prefix=f"fp-{case}-{side}-") as tmp:
        bench = Bench(cfg, Path(tmp), Profiler(set()))
        run = trio.run(bench.fastpath_run, case, 0, memory, nbytes, side == "on")
    gib, mib = nbytes / GiB, nbytes / MiB
    result = Side(
        side=side,
        case=case,
        memory=memory,
        nbytes=nbytes,
        cpu_s_per_gib=run.cpu_s / gib,
        thread_s_per_gib=run.thread_s / gib,
        wall_s_per_gib=run.wall_s / gib,
        fastpath_skipped_zero_per_mib=run.counters["fastpath_skipped_zero"] / mib,
        zero_fills_per_mib=run.counters["zero_fills"] / mib,
    )
    print(json.dumps(asdict(result)), flush=True)


# --- the parent: pairs of children ----------------------------------------------------------


def child_result(what: str, rc: int, out: Path, err: Path) -> Side:
    """The result of a child that has exited with status ``rc``, or ChildError."""
    stdout = out.read_text(errors="replace")
    stderr = err.read_text(errors="replace")
    if rc != 0:
        raise ChildError(f"{what} failed with exit status {rc}; its stderr:\n{stderr}")
    try:
        return Side.from_json(stdout.strip().splitlines()[-1])
    except (IndexError, ValueError, KeyError, TypeError) as exc:
        raise ChildError(
            f"{what} printed no result ({exc!r}); its stdout:\n{stdout}\nits stderr:\n{stderr}"
        ) from None


def run_pair(case: str, index: int, quick: bool, tmp: Path, timeout: float) -> Pair:
    """Start the two children of a pair together (the "on" one first on even pairs), wait
    for both, and return their results; ChildError as soon as either fails, or when the
    pair takes longer than ``timeout`` seconds (both children are then killed)."""
    order = SIDES if index % 2 == 0 else SIDES[::-1]
    procs: dict[str, subprocess.Popen[bytes]] = {}
    logs: dict[str, tuple[Path, Path]] = {}
    try:
        for side in order:
            out, err = tmp / f"{case}-{index}-{side}.out", tmp / f"{case}-{index}-{side}.err"
            logs[side] = out, err
            argv = [sys.executable, str(Path(__file__).resolve()), "--child", side]
            argv += ["--case", case, "--dir", str(tmp)] + (["--quick"] if quick else [])
            with out.open("wb") as fout, err.open("wb") as ferr:
                procs[side] = subprocess.Popen(
                    argv, stdin=subprocess.DEVNULL, stdout=fout, stderr=ferr
                )
        deadline = time.monotonic() + timeout
        results: dict[str, Side] = {}
        while len(results) < len(procs):
            for side, proc in procs.items():
                rc = proc.poll()
                if side in results or rc is None:
                    continue
                results[side] = child_result(
                    f"child {side!r} ({case}, pair {index + 1})", rc, *logs[side]
                )
            if len(results) < len(procs):
                if time.monotonic() > deadline:
                    late = [side for side in procs if side not in results]
                    stderr = "".join(logs[side][1].read_text(errors="replace") for side in late)
                    raise ChildError(
                        f"child(ren) {late} ({case}, pair {index + 1}) timed out after"
                        f" {timeout:g} s; stderr so far:\n{stderr}"
                    )
                time.sleep(0.05)
        return Pair(order[0], results["on"], results["off"])
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def summarize(pairs: list[Pair]) -> dict[str, Any]:
    def med(side: str, get: Callable[[Side], float]) -> float:
        return statistics.median(get(p.on if side == "on" else p.off) for p in pairs)

    res: dict[str, Any] = {
        "memory": pairs[0].on.memory,
        "nbytes": pairs[0].on.nbytes,
        "pairs": [
            asdict(p) | {"saving": p.saving, "thread_saving": p.thread_saving} for p in pairs
        ],
    }
    for side in SIDES:
        res[side] = {
            "cpu_s_per_gib": med(side, lambda s: s.cpu_s_per_gib),
            "thread_s_per_gib": med(side, lambda s: s.thread_s_per_gib),
            "wall_s_per_gib": med(side, lambda s: s.wall_s_per_gib),
            "fastpath_skipped_zero_per_mib": med(side, lambda s: s.fastpath_skipped_zero_per_mib),
            "zero_fills_per_mib": med(side, lambda s: s.zero_fills_per_mib),
        }
    res["saving_paired"] = statistics.median(p.saving for p in pairs)
    res["saving_of_medians"] = 1 - res["on"]["cpu_s_per_gib"] / res["off"]["cpu_s_per_gib"]
    res["thread_saving_paired"] = statistics.median(p.thread_saving for p in pairs)
    res["thread_saving_of_medians"] = (
        1 - res["on"]["thread_s_per_gib"] / res["off"]["thread_s_per_gib"]
    )
    res["verdict"] = "PASS" if res["saving_paired"] >= FASTPATH_TARGET else "MISS"
    return res


def print_case(case: str, res: dict[str, Any]) -> None:
    print(
        f"\n{case}: {res['nbytes'] // MiB} MiB appended, engine memory {res['memory'] // MiB}"
        f" MiB; {len(res['pairs'])} pairs, on and off at the same time"
    )
    print(
        f"{'pair':>6} {'first':>5}  {'proc on':>7} {'off':>6} {'saving':>6}"
        f"  {'thr on':>6} {'off':>6} {'saving':>6}  {'wall on':>7} {'off':>6}"
        f"  {'fp_skip0/MiB on/off':>19}  {'zerofill/MiB on/off':>19}"
    )

    def row(
        label: str, first: str, on: dict[str, Any], off: dict[str, Any], sv: float, tsv: float
    ) -> None:
        def both(key: str) -> str:
            return f"{on[key]:.1f}/{off[key]:.1f}"

        print(
            f"{label:>6} {first:>5}"
            f"  {on['cpu_s_per_gib']:7.2f} {off['cpu_s_per_gib']:6.2f} {sv:6.1%}"
            f"  {on['thread_s_per_gib']:6.2f} {off['thread_s_per_gib']:6.2f} {tsv:6.1%}"
            f"  {on['wall_s_per_gib']:7.2f} {off['wall_s_per_gib']:6.2f}"
            f"  {both('fastpath_skipped_zero_per_mib'):>19}  {both('zero_fills_per_mib'):>19}"
        )

    for i, p in enumerate(res["pairs"]):
        row(str(i + 1), p["first"], p["on"], p["off"], p["saving"], p["thread_saving"])
    row(
        "median",
        "",
        res["on"],
        res["off"],
        res["saving_of_medians"],
        res["thread_saving_of_medians"],
    )
    print(
        f"  process CPU saved with the fast path on: median of pairs {res['saving_paired']:.1%},"
        f" from the medians {res['saving_of_medians']:.1%}"
        f" -- target >= {FASTPATH_TARGET:.0%}: {res['verdict']}"
    )
    print(
        f"  trio thread CPU saved: median of pairs {res['thread_saving_paired']:.1%},"
        f" from the medians {res['thread_saving_of_medians']:.1%}"
    )


def _terminated(signum: int, frame: FrameType | None) -> NoReturn:
    """SIGTERM: unwind, so that the children are killed and the temp files removed."""
    sys.exit(128 + signum)


def parent(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    cases = CASES if args.case == "both" else (args.case,)
    npairs: int = (
        args.pairs if args.pairs is not None else (QUICK_PAIRS if args.quick else DEFAULT_PAIRS)
    )
    load0 = os.getloadavg()
    version = engine_version()
    print(
        f"engine {version}; python {sys.version.split()[0]}, trio {trio.__version__},"
        f" {os.cpu_count()} CPUs, load {load0[0]:.2f};"
        f" DIAGNOSTIC {'ON (slow!)' if diag.DIAGNOSTIC else 'off'};"
        f" {'quick' if args.quick else 'full'} run; {npairs} pairs per case"
    )
    print(
        "CPU seconds per GiB appended (64 KiB appends, final fsync + release included);"
        " each pair runs the fast path on and off at the same time in two processes"
    )
    t0 = time.perf_counter()
    ticks0 = cpu_ticks()
    summary: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(dir=args.dir, prefix="ubcfs-fp-pairs-") as tmp:
            for case in cases:
                pairs = []
                for i in range(npairs):
                    pairs.append(run_pair(case, i, args.quick, Path(tmp), args.timeout))
                    print(f"  [{case} pair {i + 1}/{npairs} done]", file=sys.stderr, flush=True)
                summary[case] = summarize(pairs)
                print_case(case, summary[case])
    except ChildError as exc:
        print(f"fastpath_pairs: {exc}", file=sys.stderr)
        return 1
    ticks1 = cpu_ticks()
    steal = (ticks1[1] - ticks0[1]) / max(1, ticks1[0] - ticks0[0])
    load1 = os.getloadavg()
    total = time.perf_counter() - t0
    print(
        "\n  proc = time.process_time() of a child (worker threads and kernel time included);"
        " thr = time.thread_time()\n  of its trio thread; wall = s/GiB with both children"
        " running; saving = 1 - on/off"
    )
    print(
        f"total {total:.1f} s; load average now {load1[0]:.2f} (1 min);"
        f" CPU steal during the run {steal:.1%}"
    )
    if args.json:
        doc = {
            "engine": version,
            "python": sys.version.split()[0],
            "cpus": os.cpu_count(),
            "diagnostic": diag.DIAGNOSTIC,
            "quick": args.quick,
            "pairs": npairs,
            "load_start": load0[0],
            "load_end": load1[0],
            "steal": steal,
            "total_s": total,
            "target": FASTPATH_TARGET,
            "cases": summary,
        }
        Path(args.json).write_text(json.dumps(doc, indent=2) + "\n")
    return 0


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit status 2 (argparse's default prints the usage too)."""
        self.exit(2, f"{self.prog}: error: {message}\n")


def main() -> int:
    parser = Parser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument(
        "--pairs",
        type=int,
        help=f"simultaneous on/off pairs per case (default {DEFAULT_PAIRS}, {QUICK_PAIRS}"
        " with --quick)",
    )
    parser.add_argument("--case", choices=(*CASES, "both"), default="both")
    parser.add_argument("--quick", action="store_true", help="1/8 of the sizes, 2 pairs")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--dir", help="directory for the backing files (default: $TMPDIR)")
    parser.add_argument(
        "--timeout", type=float, default=600.0, help="seconds a pair may take (default 600)"
    )
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.pairs is not None and args.pairs < 1:
        parser.error(f"--pairs must be at least 1, not {args.pairs}")
    if not args.timeout > 0:
        parser.error(f"--timeout must be positive, not {args.timeout:g}")
    if args.dir is not None and not Path(args.dir).is_dir():
        parser.error(f"--dir {args.dir!r} is not a directory")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        parser.error(f"--json {args.json!r}: no such directory")
    if args.child:
        if args.case == "both":
            parser.error("--child needs --case paging or --case fits")
        child(args.child, args.case, args.quick, args.dir)
        return 0
    return parent(args)


if __name__ == "__main__":
    sys.exit(main())
