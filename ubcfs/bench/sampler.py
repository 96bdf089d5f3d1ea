"""Page states and paging counters of a ubcfs mount, sampled while a job runs.

A thread asks the daemon for ``stat`` (what ``ubcfs stat --json`` prints) over the control
channel every ``INTERVAL`` seconds and keeps, per sample, the time since the job began, the
page counts (free, active, inactive, wired, dirty, anon) and the counters whose rates the
time line shows (pageouts, swap-outs, swap-ins, pageins).  Each sample costs the daemon one
walk of its pages (for ``dirty``), a few milliseconds at 128M: the jobs that are sampled pay
that, on every ubcfs target alike.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Final

from ubcfs.ctl.client import ControlClient, CtlError

INTERVAL: Final = 0.2
PAGE_KEYS: Final = ("free", "active", "inactive", "wired", "dirty", "anon")
COUNTER_KEYS: Final = ("pageouts", "swapouts", "swapins", "pageins")
MAX_SAMPLES: Final = 20000  # per job: an hour at INTERVAL


def reduce(snap: dict[str, Any], t: float) -> dict[str, float]:
    """The part of a ``stat`` reply a sample keeps."""
    pages = snap.get("pages", {})
    counters = snap.get("counters", {})
    out: dict[str, float] = {"t": round(t, 3)}
    for k in PAGE_KEYS:
        v = pages.get(k, 0)
        out[k] = v if isinstance(v, int) else 0
    for k in COUNTER_KEYS:
        v = counters.get(k, 0)
        out[k] = v if isinstance(v, int) else 0
    return out


class Sampler:
    """``with Sampler(ctl) as s: ...``; then ``s.samples``."""

    def __init__(self, ctl: ControlClient | None, interval: float = INTERVAL) -> None:
        self.ctl = ctl
        self.interval = interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = 0.0

    def __enter__(self) -> Sampler:
        if self.ctl is not None:
            self._t0 = time.monotonic()
            self._thread = threading.Thread(target=self._run, name="bench-sampler", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is None:
            return
        self._thread.join(5.0)
        self._thread = None
        if exc[0] is None:
            self._sample()  # the state at the end, also of a job shorter than INTERVAL

    def _run(self) -> None:
        assert self.ctl is not None
        while len(self.samples) < MAX_SAMPLES:
            if not self._sample() or self._stop.wait(self.interval):
                return

    def _sample(self) -> bool:
        """One sample; False when the mount does not answer (it went away: the job will
        say why)."""
        assert self.ctl is not None
        t = time.monotonic() - self._t0
        try:
            snap = self.ctl.request("stat", timeout=10.0)
        except CtlError:
            return False
        if isinstance(snap, dict):
            self.samples.append(reduce(snap, t))
        return True
