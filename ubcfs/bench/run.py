"""The run of ``ubcfs bench``: rounds, the progress line, the clean-up, Ctrl-C.

Round ``r`` mounts every target (in the order of ``--targets`` rotated left by ``r``), then
runs each job on each target in that order, then unmounts them all; a variant job (loop,
scan, fastpath) makes one fresh mount per variant instead, the variants' order rotated the
same way.  So every (job, target) runs once per round, and a drift of the machine's speed
over the run hits every target alike.  A failure is recorded (``errors`` in the results)
and the run goes on with the next (job, target); the exit status is then 1.

Ctrl-C (or SIGTERM) stops the run: the job in progress is killed, every mount is undone,
and the results so far are written (``"partial": true``), with the charts; exit 130.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Final, TextIO

from ubcfs.bench import config, ctree, jobs, report, stats, system
from ubcfs.bench.config import Config
from ubcfs.bench.sampler import Sampler
from ubcfs.bench.system import Interrupts, JobError
from ubcfs.bench.targets import Mounts, Target, child_env
from ubcfs.options import UsageError

BAR_WIDTH: Final = 24


class Progress:
    """A progress bar per job on ``out`` (stderr), in the style of ``ubcfs stress``: on a
    terminal one line rewritten as each target (or variant) of the job is done, then left
    with the job's figures; elsewhere only that last line."""

    def __init__(self, rounds: int, out: TextIO = sys.stderr) -> None:
        self.rounds = rounds
        self.out = out
        self.tty = bool(getattr(out, "isatty", lambda: False)())
        self.t0 = time.monotonic()
        self.head = ""
        self.total = 0
        self.width = 0

    def start(self, r: int, job: str, total: int) -> None:
        self.head = f"round {r + 1}/{self.rounds}  {job:<13}"
        self.total = total
        self.step(0, "")

    def step(self, done: int, what: str) -> None:
        if not self.tty:
            return
        fill = BAR_WIDTH * done // max(1, self.total)
        bar = "#" * fill + "-" * (BAR_WIDTH - fill)
        elapsed = time.monotonic() - self.t0
        line = f"{self.head} [{bar}] {done}/{self.total} {what:<14} {elapsed:6.0f} s"
        self._put("\r" + line.ljust(self.width))
        self.width = len(line)

    def end(self, text: str) -> None:
        line = f"{self.head} {text}"
        if self.tty:
            self._put("\r" + line.ljust(self.width) + "\n")
        else:
            self._put(line + "\n")
        self.width = 0

    def close(self) -> None:
        """End a bar left half-drawn (by Ctrl-C)."""
        if self.tty and self.width:
            self._put("\n")
            self.width = 0

    def note(self, text: str) -> None:
        if self.tty and self.width:
            self._put("\r" + " " * self.width + "\r")
            self.width = 0
        self._put(text + "\n")

    def _put(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()


class Bench:
    """One run: what was measured so far, and how to write it down."""

    def __init__(self, cfg: Config, progress: Progress | None = None) -> None:
        self.cfg = cfg
        self.progress = progress if progress is not None else Progress(cfg.rounds)
        self.interrupts = Interrupts()
        self.targets = list(cfg.targets)
        self.skipped: dict[str, dict[str, str]] = {}
        self.notes: list[str] = []
        if "linux-tmpfs" in self.targets and not system.is_root():
            self.targets.remove("linux-tmpfs")
            self.notes.append("linux-tmpfs skipped: mounting a tmpfs needs root")
        self.target_jobs = [j for j in cfg.jobs if not jobs.SPECS[j].variant]
        self.variant_jobs = [j for j in cfg.jobs if jobs.SPECS[j].variant]
        if self.target_jobs and not self.targets:
            self.notes.append("no targets: only the variant jobs ran")
        self.values: stats.PerRound = {}
        self.counters: dict[str, dict[str, list[dict[str, int] | None]]] = {}
        self.samples: dict[str, dict[str, dict[str, list[dict[str, float]]]]] = {}
        self.done: dict[str, dict[str, list[str]]] = {}  # what preparing did, per round
        self.errors: list[dict[str, Any]] = []
        self.orders: list[list[str]] = []
        self.round_seconds: list[float] = []
        self.core: str = "unknown"
        self.rounds_done = 0
        self.interrupted = False
        self.where = "before the first job"  # the job running, for the Ctrl-C message

    # --- recording --------------------------------------------------------------------

    def _slot(self, job: str, col: str) -> dict[str, list[float | None]]:
        cols = self.values.setdefault(job, {})
        if col not in cols:
            n = self.cfg.rounds
            cols[col] = {m.name: [None] * n for m in jobs.SPECS[job].metrics}
            self.counters.setdefault(job, {})[col] = [None] * n
        return cols[col]

    def _record(
        self,
        r: int,
        job: str,
        col: str,
        values: jobs.Values,
        counters: dict[str, int] | None,
        samples: list[dict[str, float]],
        did: str,
    ) -> None:
        slot = self._slot(job, col)
        for k, v in values.items():
            slot[k][r] = v
        self.counters[job][col][r] = counters
        if samples:
            self.samples.setdefault(job, {}).setdefault(col, {})[str(r)] = samples
        if did:
            self.done.setdefault(job, {}).setdefault(col, []).append(did)

    def _error(self, r: int, job: str, col: str, message: str) -> None:
        if job in jobs.SPECS:
            self._slot(job, col)  # the column exists in the results, with None there
        self.errors.append({"round": r, "job": job, "column": col, "error": message})
        self.progress.note(f"ubcfs bench: round {r + 1} {job} {col}: {message}")

    # --- the run ------------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.cfg
        os.makedirs(cfg.out, exist_ok=True)
        root = tempfile.mkdtemp(prefix="ubcfs-bench-")
        self.mounts = Mounts(root)
        self.root = root
        state = os.path.join(root, "state")
        self.ctx = jobs.Context(cfg, root, child_env(state))
        if "build" in cfg.jobs:
            self.ctx.tarball = os.path.join(root, "ctree.tar")
            with open(self.ctx.tarball, "wb") as f:
                f.write(ctree.tarball())
        self.started = time.time()
        self.load_before = system.load_average()
        for note in self.notes:
            self.progress.note(f"ubcfs bench: {note}")
        self.interrupts.install()
        left: list[str] = []
        try:
            for r in range(cfg.rounds):
                t0 = time.monotonic()
                self.run_round(r)
                self.round_seconds.append(time.monotonic() - t0)
                self.rounds_done = r + 1
        except KeyboardInterrupt:
            self.interrupted = True
        finally:
            self.interrupts.ignore()
            try:
                left = self.mounts.cleanup()
                self._keep_logs(state)
                if not left:
                    shutil.rmtree(root, ignore_errors=True)
            finally:
                self.interrupts.restore()
        self.progress.close()
        if left:
            message = f"still mounted: {', '.join(left)} ({root} is kept)"
            self.errors.append({"round": None, "job": None, "column": None, "error": message})
            print(f"ubcfs bench: {message}", file=sys.stderr)
        return self.finish()

    def finish(self) -> int:
        """Write results.json, the charts and index.html; print the table; the status."""
        doc = report.build_doc(self)
        path = os.path.join(self.cfg.out, "results.json")
        report.write_json(path, doc)
        try:
            from ubcfs.bench import charts

            doc["charts"] = charts.write_all(doc, self.cfg.out)
        except Exception as e:  # noqa: BLE001 -- a chart must not cost the measurements
            doc["charts"] = []
            doc["errors"].append(
                {"round": None, "job": None, "column": None, "error": f"charts: {e}"}
            )
        report.write_json(path, doc)
        try:
            from ubcfs.bench import charts

            charts.write_index(doc, self.cfg.out)
        except Exception as e:  # noqa: BLE001
            print(f"ubcfs bench: index.html: {e}", file=sys.stderr)
        print(report.format_table(doc))
        print(f"\nresults: {path}", flush=True)
        if self.interrupted:
            print(
                f"ubcfs bench: interrupted ({self.where}); everything was unmounted and the"
                " results so far are marked partial",
                file=sys.stderr,
            )
            return 130
        return 1 if self.errors else 0

    def _keep_logs(self, state: str) -> None:
        logs = os.path.join(state, "ubcfs")
        if not os.path.isdir(logs):
            return
        dest = os.path.join(self.cfg.out, "logs")
        os.makedirs(dest, exist_ok=True)
        for name in os.listdir(logs):
            if name.endswith((".log", ".log.1")):
                shutil.copy(os.path.join(logs, name), dest)

    def run_round(self, r: int) -> None:
        order = stats.rotate(self.targets, r)
        self.orders.append(order)
        live: dict[str, Target] = {}
        try:
            for name in order if self.target_jobs else []:
                t = self._target(name, name, os.path.join(self.root, f"r{r}-{name}"))
                try:
                    t.mount()
                    live[name] = t
                    if t.daemon and self.core == "unknown":
                        self.core = str(t.info.get("core", "unknown"))
                except (JobError, OSError) as e:
                    self._error(r, "mount", name, str(e))
            for job in self.cfg.jobs:
                if jobs.SPECS[job].variant:
                    self.run_variants(r, job)
                else:
                    self.run_on_targets(r, job, order, live)
        finally:
            for name, t in live.items():
                try:
                    t.umount()
                except JobError as e:
                    self._error(r, "umount", name, str(e))
                t.remove()

    def _target(self, kind: str, label: str, base: str, extra: tuple[str, ...] = ()) -> Target:
        return Target(
            kind,
            label,
            base,
            memory=self.cfg.memory,
            page_size=self.cfg.page_size,
            size=self.cfg.size,
            env=self.ctx.env,
            interrupts=self.interrupts,
            mounts=self.mounts,
            extra=extra,
        )

    def run_on_targets(self, r: int, job: str, order: list[str], live: dict[str, Target]) -> None:
        self.progress.start(r, job, len(order))
        shown: list[str] = []
        for i, name in enumerate(order):
            self.progress.step(i, name)
            why = jobs.skip_reason(job, name)
            if why is not None:
                self.skipped.setdefault(job, {})[name] = why
                continue
            t = live.get(name)
            if t is None:
                continue  # its mount failed this round: that error is recorded once
            self.ctx.seed = 1000 + r
            self.where = f"round {r + 1}, {job} on {name}"
            try:
                if not t.mounted:
                    t.mount()
                did = jobs.prepare(job, t, self.ctx)
                before = t.counters() if t.daemon else None
                with Sampler(t.ctl if t.daemon else None) as sampler:
                    values = jobs.measure(job, t, self.ctx)
                after = t.counters() if t.daemon else None
                jobs.cleanup(job, t)
                t.sync()
            except (JobError, OSError) as e:
                self._error(r, job, name, str(e))
                continue
            delta = _delta(before, after)
            self._record(r, job, name, values, delta, sampler.samples, did)
            shown.append(f"{name} {report.fmt_value(next(iter(values.values())), job)}")
        self.progress.end(_summary_line(job, shown))

    def run_variants(self, r: int, job: str) -> None:
        if jobs.SPECS[job].together:
            self.run_variants_together(r, job)
            return
        vs = stats.rotate(jobs.variants(job, self.cfg), r)
        self.progress.start(r, job, len(vs))
        shown: list[str] = []
        for i, (label, extra) in enumerate(vs):
            self.progress.step(i, label)
            self.where = f"round {r + 1}, {job} with {label}"
            t = self._target("ubcfs", label, os.path.join(self.root, f"r{r}-{job}-{label}"), extra)
            try:
                jobs.prepare_backing(job, t.backing, self.cfg)
                os.sync()  # the previous mount's files, written and deleted, settle first
                t.mount()
                if self.core == "unknown":
                    self.core = str(t.info.get("core", "unknown"))
                before = t.counters()
                with Sampler(t.ctl) as sampler:
                    values = jobs.measure_variant(job, t, self.ctx)
                after = t.counters()
                t.umount()
            except (JobError, OSError) as e:
                self._error(r, job, label, str(e))
                continue
            finally:
                t.force_umount()
                t.remove()
            self._record(r, job, label, values, _delta(before, after), sampler.samples, "")
            shown.append(
                " ".join(f"{label} {k} {report.fmt_value(v, job, k)}" for k, v in values.items())
            )
        self.progress.end(_summary_line(job, shown))

    def run_variants_together(self, r: int, job: str) -> None:
        """Mount every variant, warm each up, then measure them all at the same time, each
        in a thread of its own: on two cores the variants then see the same machine
        speed, which measuring one after the other does not give (in turn, whichever ran
        first in a round came out slower, by up to 40%)."""
        vs = stats.rotate(jobs.variants(job, self.cfg), r)
        self.progress.start(r, job, len(vs))
        self.where = f"round {r + 1}, {job}"
        live: list[Target] = []
        try:
            for label, extra in vs:
                base = os.path.join(self.root, f"r{r}-{job}-{label}")
                t = self._target("ubcfs", label, base, extra)
                live.append(t)
                jobs.prepare_backing(job, t.backing, self.cfg)
                t.mount()
                if self.core == "unknown":
                    self.core = str(t.info.get("core", "unknown"))
            for i, t in enumerate(live):
                self.progress.step(i, t.label)
                jobs.warm_up(job, t, self.ctx)
            os.sync()
            befores = [t.counters() for t in live]
            with concurrent.futures.ThreadPoolExecutor(len(live)) as pool:
                futures = [pool.submit(jobs.measure_variant, job, t, self.ctx) for t in live]
                results = [f.result() for f in futures]
            afters = [t.counters() for t in live]
            for t in live:
                t.umount()
        except (JobError, OSError) as e:
            self._error(r, job, "+".join(label for label, _ in vs), str(e))
            return
        finally:
            for t in live:
                t.force_umount()
                t.remove()
        shown: list[str] = []
        for t, values, before, after in zip(live, results, befores, afters, strict=True):
            self._record(r, job, t.label, values, _delta(before, after), [], "")
            shown.append(
                " ".join(f"{t.label} {k} {report.fmt_value(v, job, k)}" for k, v in values.items())
            )
        self.progress.end(_summary_line(job, shown))


def _delta(before: dict[str, int] | None, after: dict[str, int] | None) -> dict[str, int] | None:
    if before is None or after is None:
        return None
    return {k: v - before.get(k, 0) for k, v in after.items() if v != before.get(k, 0)}


def _summary_line(job: str, shown: list[str]) -> str:
    unit = jobs.SPECS[job].metrics[0].unit
    if not shown:
        return "(nothing measured)"
    if jobs.SPECS[job].variant:
        return " | ".join(shown)
    return " | ".join(shown) + f"  ({unit})"


def main(ns: argparse.Namespace) -> int:
    """``ubcfs bench``; returns the exit status (raises UsageError/SetupError)."""
    if ns.compare is not None:
        from ubcfs.bench import compare

        given = [
            opt
            for opt, value in (
                ("--size", ns.size),
                ("--memory", ns.memory),
                ("--page-size", ns.page_size),
                ("--jobs", ns.jobs),
                ("--targets", ns.targets),
                ("--policies", ns.policies),
                ("--rounds", ns.rounds),
                ("--out", ns.out),
            )
            if value is not None
        ]
        if given:
            raise UsageError(f"--compare takes no other options (got {given[0]})")
        print(compare.compare_files(ns.compare[0], ns.compare[1]))
        return 0
    cfg = config.from_args(ns)
    config.check_prerequisites(cfg)
    return Bench(cfg).run()
