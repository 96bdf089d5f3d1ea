"""``ubcfs stress truncate``: reproducible truncation stress with wired pages, every result
checked against a model (design.md section 4; reference section 11, scenario 1).

One seeded random sequence of operations, run one at a time so that the same seed always
gives the same sequence: through the mount, ``write``, ``read`` and ``truncate`` (shrinking
and extending) of a few files; through the control channel, simulated processes that
``mmap`` those files (MAP_SHARED and MAP_PRIVATE, read-only and read-write), ``mlock`` and
``munlock`` them, wire them for raw I/O (``vslock``/``vsunlock``), ``load`` and ``store``
through them, are written by a debugger (``ptrace-write``), ``fork`` and ``exit``.  Every
read and every load is compared with the model; every operation's success or failure must
be the one the model predicts (a load past the end of the file is SIGBUS, a store to a
read-only mapping SIGSEGV, an mlock over pages past EOF fails, a vsunlock without a vslock
is refused); ``ubcfs check`` runs every second.  Truncating a file under mlocked and
vslocked mappings is the point: the wired pages past the new end go, and the later
munlock, vsunlock, munmap or exit must skip them.

The model of a mapping's page: a MAP_PRIVATE page that was written (a store, a debugger's
write, or the copy that mlock makes of every page of a private mapping) is the process's
own; any other page is the file's, and exists only below the file's page-rounded end.
Bytes past the file's end in its last page are not compared (what they hold is not
specified), nor are such bytes of a private copy.

Like the rest of the CLI this imports nothing of the VM or trio: it drives a mount the way
a user would.  Exit status: 0 when mismatches and violations are both 0, else 1.
"""

from __future__ import annotations

import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ubcfs.ctl.client import ControlClient, CtlError
from ubcfs.procmodel import GONE, PAGE, FileM, MapM, ProcM

MAX_MAP_PAGES: Final = 6
MAX_FILE_PAGES: Final = 8
MAX_MAPS: Final = 6
REPORT_LIMIT: Final = 20

# Operation kinds and their weights.
KINDS: Final = (
    ("write", 8),
    ("read", 8),
    ("truncate", 6),
    ("mmap", 5),
    ("munmap", 2),
    ("mlock", 4),
    ("munlock", 3),
    ("vslock", 2),
    ("vsunlock", 2),
    ("load", 12),
    ("store", 8),
    ("ptrace-write", 3),
    ("fork", 1),
    ("exit", 1),
)


@dataclass
class Stats:
    ops: dict[str, int] = field(default_factory=dict)
    failed_as_expected: int = 0
    mismatches: list[str] = field(default_factory=list)
    nmismatches: int = 0
    violations: list[str] = field(default_factory=list)
    nviolations: int = 0
    checks: int = 0

    def mismatch(self, text: str) -> None:
        self.nmismatches += 1
        if len(self.mismatches) < REPORT_LIMIT:
            self.mismatches.append(text)


class Stress:
    """One run: the model, the random sequence and the checks."""

    def __init__(
        self,
        mountpoint: str,
        ctl: ControlClient,
        seed: int,
        nprocs: int,
        nfiles: int,
        out: Any = sys.stderr,
    ) -> None:
        self.mnt = Path(mountpoint)
        self.ctl = ctl
        self.rng = random.Random(seed)
        self.seed = seed
        self.nprocs = nprocs
        self.nfiles = nfiles
        self.out = out
        self.dir = self.mnt / f".ubcfs-stress-{seed}"
        self.files: list[FileM] = []
        self.paths: dict[str, Path] = {}  # file name (from the mount's root) -> path
        self.procs: list[ProcM] = []
        self.stats = Stats()
        self.kinds = [k for k, _ in KINDS]
        self.weights = [w for _, w in KINDS]

    # --- set-up and tear-down -----------------------------------------------------------

    def setup(self) -> None:
        self.dir.mkdir(exist_ok=True)
        for i in range(self.nfiles):
            path = self.dir / f"f{i}"
            data = bytearray(self.rng.randbytes(self.rng.randrange(0, MAX_FILE_PAGES) * PAGE))
            path.write_bytes(data)
            rel = str(path.relative_to(self.mnt))
            self.files.append(FileM(rel, data))
            self.paths[rel] = path
        for _ in range(self.nprocs):
            self._new_proc()

    def teardown(self) -> None:
        for p in list(self.procs):
            self._request("exit", {"pid": p.pid})
        self.procs.clear()
        for path in self.paths.values():
            path.unlink(missing_ok=True)
        self.dir.rmdir()

    def _new_proc(self) -> None:
        self.procs.append(ProcM(int(self._request("proc-new", {})["pid"])))

    def _request(self, cmd: str, args: dict[str, Any]) -> Any:
        return self.ctl.request(cmd, args)

    def _attempt(self, cmd: str, args: dict[str, Any]) -> tuple[bool, Any]:
        """(True, result) or (False, error text)."""
        try:
            return True, self.ctl.request(cmd, args)
        except CtlError as e:
            return False, str(e)

    # --- the run ------------------------------------------------------------------------

    def run(self, seconds: float, progress: bool, max_ops: int = 0) -> Stats:
        """Run for ``seconds`` (or, with ``max_ops``, exactly that many operations); with
        ``progress``, a progress line on ``out`` (rewritten every second on a terminal, a
        new line every 5 s otherwise)."""
        tty = bool(getattr(self.out, "isatty", lambda: False)())
        every = 1.0 if tty else 5.0
        start = time.monotonic()
        last_check = start
        last_report = start
        n = 0
        while (n < max_ops) if max_ops else (time.monotonic() - start < seconds):
            kind = self.rng.choices(self.kinds, self.weights)[0]
            getattr(self, "op_" + kind.replace("-", "_"))()
            self.stats.ops[kind] = self.stats.ops.get(kind, 0) + 1
            n += 1
            now = time.monotonic()
            if now - last_check >= 1.0:
                self.check()
                last_check = now
            if progress and now - last_report >= every:
                self._progress(n, now - start, tty)
                last_report = now
        self.check()
        if progress:
            self._progress(n, time.monotonic() - start, tty)
            if tty:
                print(file=self.out)
        return self.stats

    def _progress(self, n: int, elapsed: float, tty: bool) -> None:
        s = self.stats
        lead = "\r" if tty else ""
        print(
            f"{lead}stress truncate: {elapsed:5.0f} s  {n} ops"
            f" ({n / max(elapsed, 1e-9):.0f}/s)  mismatches {s.nmismatches}"
            f"  violations {s.nviolations}",
            end="" if tty else "\n",
            file=self.out,
            flush=True,
        )

    def check(self) -> None:
        got = self.ctl.request("check", timeout=600.0)
        self.stats.checks += 1
        bad = got.get("violations", []) if isinstance(got, dict) else ["malformed check reply"]
        for v in bad:
            self.stats.nviolations += 1
            if len(self.stats.violations) < REPORT_LIMIT:
                self.stats.violations.append(str(v))

    # --- model helpers --------------------------------------------------------------------

    def _file(self) -> FileM:
        return self.rng.choice(self.files)

    def _pick_map(self, writable: bool | None = None) -> tuple[ProcM, MapM] | None:
        cands = [
            (p, m) for p in self.procs for m in p.maps if writable is None or m.writable == writable
        ]
        return self.rng.choice(cands) if cands else None

    def _expect(self, what: str, ok: bool, want_ok: bool, result: Any) -> None:
        if ok != want_ok:
            self.stats.mismatch(
                f"{what}: {'succeeded' if ok else 'failed'}, the model expected"
                f" {'success' if want_ok else 'a failure'}" + ("" if ok else f" ({result})")
            )
        elif not ok:
            self.stats.failed_as_expected += 1

    # --- operations through the mount -------------------------------------------------

    def op_write(self) -> None:
        f = self._file()
        size = len(f.data)
        off = self.rng.randrange(0, min(size + 2 * PAGE, MAX_FILE_PAGES * PAGE))
        n = self.rng.randrange(1, 2 * PAGE)
        n = min(n, MAX_FILE_PAGES * PAGE - off) or 1
        data = self.rng.randbytes(n)
        fd = os.open(self.paths[f.name], os.O_WRONLY)
        try:
            os.pwrite(fd, data, off)
        finally:
            os.close(fd)
        f.write(off, data)

    def op_read(self) -> None:
        f = self._file()
        size = len(f.data)
        off = self.rng.randrange(0, size + PAGE)
        n = self.rng.randrange(1, 2 * PAGE)
        fd = os.open(self.paths[f.name], os.O_RDONLY)
        try:
            got = os.pread(fd, n, off)
        finally:
            os.close(fd)
        want = bytes(f.data[off : off + n])
        if got != want:
            self.stats.mismatch(
                f"read {f.name} at {off}, {n} bytes: got {len(got)} bytes differing from the"
                f" model's {len(want)} (first difference at {_first_diff(got, want)})"
            )

    def op_truncate(self) -> None:
        f = self._file()
        size = self.rng.randrange(0, MAX_FILE_PAGES * PAGE)
        if self.rng.random() < 0.5:
            size = size // PAGE * PAGE
        os.truncate(self.paths[f.name], size)
        f.truncate(size)

    # --- operations of processes --------------------------------------------------------

    def op_mmap(self) -> None:
        p = self.rng.choice(self.procs)
        if len(p.maps) >= MAX_MAPS:
            self.op_munmap()
            return
        f = self._file()
        off = self.rng.randrange(0, MAX_FILE_PAGES // 2) * PAGE
        npages = self.rng.randrange(1, MAX_MAP_PAGES + 1)
        private = self.rng.random() < 0.5
        writable = self.rng.random() < 0.7
        ok, res = self._attempt(
            "mmap",
            {
                "pid": p.pid,
                "path": f.name,
                "offset": off,
                "length": npages * PAGE,
                "private": private,
                "prot": "rw" if writable else "r",
            },
        )
        self._expect(f"mmap {f.name} in {p.pid}", ok, True, res)
        if ok:
            p.maps.append(MapM(int(res["addr"]), npages, f, off, private, writable))

    def op_munmap(self) -> None:
        pick = self._pick_map()
        if pick is None:
            return
        p, m = pick
        ok, res = self._attempt("munmap", {"pid": p.pid, "addr": m.addr, "length": m.npages * PAGE})
        self._expect(f"munmap in {p.pid}", ok, True, res)
        p.maps.remove(m)

    def op_mlock(self) -> None:
        pick = self._pick_map()
        if pick is None:
            return
        p, m = pick
        want_ok, copies = m.mlock_outcome()
        ok, res = self._attempt("mlock", {"pid": p.pid, "addr": m.addr, "length": m.npages * PAGE})
        if not ok and "EAGAIN" in str(res):
            # The system's wiring limit (wiredmax): refused before any page was touched.
            self.stats.failed_as_expected += 1
            return
        self._expect(f"mlock of {m.file.name} in {p.pid}", ok, want_ok, res)
        if ok == want_ok:
            for i in copies:
                m.promote(i)
        if ok:
            m.locked = True

    def op_munlock(self) -> None:
        pick = self._pick_map()
        if pick is None:
            return
        p, m = pick
        ok, res = self._attempt(
            "munlock", {"pid": p.pid, "addr": m.addr, "length": m.npages * PAGE}
        )
        self._expect(f"munlock in {p.pid}", ok, True, res)
        m.locked = False

    def op_vslock(self) -> None:
        pick = self._pick_map()
        if pick is None:
            return
        p, m = pick
        want_ok, copies = m.vslock_outcome()
        ok, res = self._attempt("vslock", {"pid": p.pid, "addr": m.addr, "length": m.npages * PAGE})
        self._expect(f"vslock of {m.file.name} in {p.pid}", ok, want_ok, res)
        if ok == want_ok:
            for i in copies:
                m.promote(i)
        if ok:
            m.holds += 1

    def op_vsunlock(self) -> None:
        pick = self._pick_map()
        if pick is None:
            return
        p, m = pick
        ok, res = self._attempt(
            "vsunlock", {"pid": p.pid, "addr": m.addr, "length": m.npages * PAGE}
        )
        self._expect(f"vsunlock in {p.pid}", ok, m.holds > 0, res)
        if ok:
            m.holds -= 1

    def op_load(self) -> None:
        pick = self._pick_map()
        if pick is None:
            return
        p, m = pick
        i = self.rng.randrange(m.npages)
        start = self.rng.randrange(PAGE)
        n = self.rng.randrange(1, PAGE - start + 1)
        state = m.page(i)[0]
        va = m.addr + i * PAGE + start
        ok, res = self._attempt("load", {"pid": p.pid, "addr": va, "length": n})
        what = f"load of {m.file.name}+{m.offset + i * PAGE + start} in {p.pid}"
        self._expect(what, ok, state != GONE, res)
        if not ok or state == GONE:
            return
        bad = m.check_load(i, start, bytes.fromhex(res["hex"]))
        if bad is not None:
            self.stats.mismatch(f"{what} ({bad})")

    def _store_like(self, cmd: str, writable: bool | None) -> None:
        pick = self._pick_map(writable)
        if pick is None:
            return
        p, m = pick
        i = self.rng.randrange(m.npages)
        start = self.rng.randrange(PAGE)
        n = self.rng.randrange(1, min(64, PAGE - start) + 1)
        data = self.rng.randbytes(n)
        want_ok, data = m.store_outcome(i, start, data, cmd == "ptrace-write")
        if not data:
            return  # a shared page's bytes past EOF: not modelled
        ok, res = self._attempt(
            cmd, {"pid": p.pid, "addr": m.addr + i * PAGE + start, "hex": data.hex()}
        )
        self._expect(f"{cmd} into {m.file.name} in {p.pid}", ok, want_ok, res)
        if ok and want_ok:
            m.store(i, start, data)

    def op_store(self) -> None:
        self._store_like("store", None)

    def op_ptrace_write(self) -> None:
        self._store_like("ptrace-write", None)

    def op_fork(self) -> None:
        parent = self.rng.choice(self.procs)
        ok, res = self._attempt("fork", {"pid": parent.pid})
        self._expect(f"fork of {parent.pid}", ok, True, res)
        if ok:
            self.procs.append(ProcM(int(res["pid"]), [m.forked() for m in parent.maps]))

    def op_exit(self) -> None:
        p = self.rng.choice(self.procs)
        ok, res = self._attempt("exit", {"pid": p.pid})
        self._expect(f"exit of {p.pid}", ok, True, res)
        self.procs.remove(p)
        while len(self.procs) < self.nprocs:
            self._new_proc()
        while len(self.procs) > 2 * self.nprocs:
            q = self.procs.pop(0)
            self._request("exit", {"pid": q.pid})


def _first_diff(a: bytes, b: bytes) -> int:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return min(len(a), len(b))


def summary(stats: Stats, seconds: float, seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "seconds": round(seconds, 3),
        "ops": stats.ops,
        "ops_per_second": {k: round(v / max(seconds, 1e-9), 1) for k, v in stats.ops.items()},
        "failed_as_expected": stats.failed_as_expected,
        "checks": stats.checks,
        "mismatches": stats.nmismatches,
        "violations": stats.nviolations,
        "first_mismatches": stats.mismatches,
        "first_violations": stats.violations,
    }


def print_summary(s: dict[str, Any], out: Any = sys.stdout) -> None:
    total = sum(s["ops"].values())
    print(
        f"stress truncate: seed {s['seed']}, {total} operations in {s['seconds']:.1f} s", file=out
    )
    for kind, n in sorted(s["ops"].items()):
        print(f"  {kind:<13} {n:>8}  {s['ops_per_second'][kind]:>8.1f}/s", file=out)
    print(
        f"  expected failures {s['failed_as_expected']}, checks {s['checks']},"
        f" mismatches {s['mismatches']}, violations {s['violations']}",
        file=out,
    )
    for text in s["first_mismatches"]:
        print(f"  mismatch: {text}", file=out)
    for text in s["first_violations"]:
        print(f"  violation: {text}", file=out)
