"""``ubcfs top MOUNTPOINT``: a live full-screen view of a mount's page cache, as ``top`` is
of processes.

Every ``--interval`` seconds it asks the daemon, over the control channel, for ``stat``
(page states and counters), ``files`` (the objects with the most resident pages) and
``procs`` (the simulated processes), and draws:

* the page states as bars of the managed memory (free, active, inactive, wired, dirty,
  file, anonymous) and swap use;
* rates per second of the counters that say what the VM is doing (faults, pageins,
  pageouts, swap-ins and -outs, pagedaemon scans and frees, UBC window hits and misses),
  from the difference of two samples;
* the files with the most resident pages (with their dirty and wired pages);
* the simulated processes (resident and wired pages, map entries).

The screen is plain text (``curses`` with ASCII bars and no colours it needs), so it works
over ssh and in any terminal; ``q`` (or Ctrl-C) quits, and the terminal is always put
back.  ``--once`` prints one frame to stdout instead (two samples ``--interval`` apart,
for the rates), for scripts and for a terminal that curses cannot drive.  The daemon going
away ends the view with a one-line error.

This module, like ``ubcfs.cli``, talks to the daemon only through ``ubcfs.ctl.client``.
"""

from __future__ import annotations

import contextlib
import curses
import dataclasses
import time
from typing import Any, Final

from ubcfs.ctl import client

FILES_SHOWN: Final = 10
BAR_MIN: Final = 10  # the narrowest bar drawn
_PAGE_ROWS: Final = (
    ("free", "free"),
    ("active", "active"),
    ("inactive", "inactive"),
    ("wired", "wired"),
    ("dirty", "dirty"),
    ("file", "file"),
    ("anon", "anon"),
)
_RATES: Final = (
    ("faults", "faults"),
    ("pageins", "pageins"),
    ("pageouts", "pageouts"),
    ("swapins", "swap-ins"),
    ("swapouts", "swap-outs"),
    ("pdscans", "pd scans"),
    ("pdfreed", "pd freed"),
    ("ubc_hits", "ubc hits"),
    ("ubc_misses", "ubc misses"),
    ("zero_fills", "zero fills"),
)


@dataclasses.dataclass
class Sample:
    """What one round of requests returned, and when."""

    when: float
    stat: dict[str, Any]
    files: list[dict[str, Any]]
    procs: list[dict[str, Any]]


def sample(ctl: client.ControlClient) -> Sample:
    """One round of requests to the daemon.  Raises ``CtlError`` when it does not answer
    or answers nonsense (its message is the one-line error)."""
    stat = ctl.request("stat")
    files = ctl.request("files", {"limit": FILES_SHOWN})
    procs = ctl.request("procs")
    if not isinstance(stat, dict) or not isinstance(files, list) or not isinstance(procs, list):
        raise client.CtlError(f"{ctl.mountpoint}: malformed reply from the daemon")
    return Sample(time.monotonic(), stat, files, procs)


def rates(cur: Sample, prev: Sample | None) -> dict[str, float]:
    """Counter increments per second between two samples (none for the first)."""
    if prev is None:
        return {}
    dt = cur.when - prev.when
    now, then = _ints(cur.stat, "counters"), _ints(prev.stat, "counters")
    if dt <= 0:
        return {}
    return {k: max(0, now[k] - then.get(k, 0)) / dt for k in now}


def _ints(d: dict[str, Any], key: str) -> dict[str, int]:
    part = d.get(key)
    if not isinstance(part, dict):
        return {}
    return {k: v for k, v in part.items() if isinstance(v, int) and not isinstance(v, bool)}


def _bar(n: int, total: int, width: int) -> str:
    filled = 0 if total <= 0 else min(width, round(width * n / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def _size(pages: int, page_size: int) -> str:
    n = float(pages * page_size)
    for unit in ("B", "K", "M", "G", "T"):
        if n < 1024 or unit == "T":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}T"  # not reached


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "~"


def render(mountpoint: str, cur: Sample, prev: Sample | None, width: int, height: int) -> list[str]:
    """The lines of one frame, none longer than ``width``, at most ``height`` of them."""
    width = max(20, width)
    st = cur.stat
    pages = _ints(st, "pages")
    swap = _ints(st, "swap")
    ps = st.get("page_size") if isinstance(st.get("page_size"), int) else 4096
    assert isinstance(ps, int)
    total = pages.get("total", 0)
    lines = [
        f"ubcfs top  {mountpoint}  {time.strftime('%H:%M:%S')}  memory {_size(total, ps)}"
        f" ({total} pages of {ps // 1024}K)  q: quit",
        "",
    ]
    label_w = 9
    count_w = max(len(str(total)), 5)
    bar_w = max(BAR_MIN, width - label_w - count_w - 20)
    for key, label in _PAGE_ROWS:
        n = pages.get(key, 0)
        lines.append(f"{label:<{label_w}}{n:>{count_w}} {_bar(n, total, bar_w)} {_size(n, ps):>8}")
    if swap.get("total"):
        used, stotal = swap.get("used", 0), swap["total"]
        lines.append(
            f"{'swap':<{label_w}}{used:>{count_w}} {_bar(used, stotal, bar_w)}"
            f" {_size(used, ps):>8} of {_size(stotal, ps)}, {swap.get('bad', 0)} bad"
        )
    lines.append(_policy_line(st))
    r = rates(cur, prev)
    lines.append("")
    lines.append("per second:" if r else "per second: (after the next sample)")
    cells = [f"{label:>10} {r.get(key, 0.0):>9.0f}" for key, label in _RATES]
    per_row = max(1, width // 22)
    for i in range(0, len(cells), per_row):
        lines.append("  ".join(cells[i : i + per_row]))
    lines.append("")
    lines.append(f"{'resident':>9} {'dirty':>7} {'wired':>6}  file")
    if not cur.files:
        lines.append("        (no file has resident pages)")
    for f in cur.files:
        name = str(f.get("name", "?")) + (" (tmpfs)" if f.get("anon") else "")
        lines.append(
            f"{_num(f, 'resident'):>9} {_num(f, 'dirty'):>7} {_num(f, 'wired'):>6}  {name}"
        )
    lines.append("")
    lines.append(f"{'pid':>9} {'resident':>8} {'wired':>6} {'entries':>7}")
    if not cur.procs:
        lines.append("        (no simulated processes: see 'ubcfs ctl MNT proc-new')")
    for p in cur.procs:
        maps = p.get("maps")
        nmaps = len(maps) if isinstance(maps, list) else 0
        lines.append(
            f"{_num(p, 'pid'):>9} {_num(p, 'resident'):>8} {_num(p, 'wired'):>6} {nmaps:>7}"
        )
    lines = [_fit(line, width) for line in lines]
    if len(lines) > height:
        lines = [*lines[: max(1, height - 1)], _fit("(more: make the window taller)", width)]
    return lines


def _policy_line(st: dict[str, Any]) -> str:
    """The replacement policy and the shape of its queues."""
    pol = st.get("pdpolicy")
    name = pol.get("name") if isinstance(pol, dict) else None
    if not isinstance(name, str):
        return "policy   ?"
    q = _ints(st, "pdpolicy")
    if name == "clockpro":
        return (
            f"policy   clockpro: hot {q.get('hot', 0)}, cold {q.get('cold', 0)} (target"
            f" {q.get('cold_target', 0)}), remembered evictions {q.get('nonresident', 0)}"
        )
    return (
        f"policy   {name}: active {q.get('active_pages', 0)}, inactive"
        f" {q.get('inactive_pages', 0)} (target {q.get('inactive_target', 0)})"
    )


def _num(d: dict[str, Any], key: str) -> int:
    v = d.get(key)
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def run_once(ctl: client.ControlClient, mountpoint: str, interval: float, width: int) -> None:
    """Print one frame: two samples ``interval`` apart (for the rates)."""
    first = sample(ctl)
    time.sleep(interval)
    cur = sample(ctl)
    print("\n".join(render(mountpoint, cur, first, width, 10_000)), flush=True)


def run_screen(ctl: client.ControlClient, mountpoint: str, interval: float) -> None:
    """The live view until ``q``; raises ``CtlError`` when the daemon goes away (after
    the terminal is put back)."""
    curses.wrapper(_loop, ctl, mountpoint, interval)


def _loop(scr: Any, ctl: client.ControlClient, mountpoint: str, interval: float) -> None:
    with contextlib.suppress(curses.error):  # a terminal that cannot hide the cursor
        curses.curs_set(0)
    scr.nodelay(False)
    prev: Sample | None = None
    while True:
        cur = sample(ctl)
        height, width = scr.getmaxyx()
        scr.erase()
        for y, line in enumerate(render(mountpoint, cur, prev, width - 1, height)):
            with contextlib.suppress(curses.error):  # the window shrank while drawing
                scr.addstr(y, 0, line)
        scr.refresh()
        prev = cur
        deadline = time.monotonic() + interval
        while (left := deadline - time.monotonic()) > 0:
            scr.timeout(max(1, int(left * 1000)))
            key = scr.getch()
            if key in (ord("q"), ord("Q")):
                return
            if key == curses.KEY_RESIZE:
                break  # redraw at the new size now
