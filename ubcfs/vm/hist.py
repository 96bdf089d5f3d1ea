"""The event history (~ NetBSD's UVMHIST, uvm_stat.h / kern_history.c): a bounded ring of
the VM's recent events, kept cheaply enough to be on by default.

Each event is a tuple ``(time, kind, what, a, b)``: ``time`` from ``time.monotonic()``,
``kind`` one of the ``H_*`` names below, ``what`` the name of the object or map it is about
(a reference to a string that already exists: nothing is formatted when an event is
logged), and two integers whose meaning depends on the kind (``KINDS``).  The ring keeps
the last ``size`` events; ``seq`` counts every event ever logged, so a reader that asks for
the events since the sequence number it saw last learns how many it missed (the ring
overflowed meanwhile) instead of reading stale ones.

Where events are logged: a UBC window fault and a process fault; every getpages and
putpages call; the start, completion and failure of a pageout write (a cluster); each swap
read and write; the wiring and unwiring of a process range (mlock, munlock, vslock,
vsunlock); each unwire that skips a page truncation took; each change of a file's size.
Per call or per cluster, never per page, so that the cost stays per request: 3.9 events
per MiB of sequential I/O at about 0.4 µs each, at most 0.05% of sequential throughput
(``benchmarks/hist_cost.py``; benchmarks/README.md has the figures).

``Uvm.hist`` is the machine's history, or None (``--hist 0``); callers test it first::

    h = uvm.hist
    if h is not None:
        h.log(H_GETPAGES, uobj.name, offset, npages)

=> ``log`` never sleeps and never fails.
"""

from __future__ import annotations

import time
from typing import Final

DEFAULT_HIST_SIZE: Final = 4096  # events kept by default (a power of two)
MAX_HIST_SIZE: Final = 1 << 20

H_UBC_FAULT: Final = "ubc-fault"
H_FAULT: Final = "fault"
H_GETPAGES: Final = "getpages"
H_PUTPAGES: Final = "putpages"
H_PAGEOUT: Final = "pageout"
H_PAGEOUT_DONE: Final = "pageout-done"
H_PAGEOUT_FAIL: Final = "pageout-fail"
H_SWAPOUT: Final = "swapout"
H_SWAPIN: Final = "swapin"
H_WIRE: Final = "wire"
H_UNWIRE: Final = "unwire"
H_UNWIRE_SKIP: Final = "unwire-skip"
H_SETSIZE: Final = "setsize"

# What ``a`` and ``b`` mean for each kind (for the dump's labels).
KINDS: Final = {
    H_UBC_FAULT: ("offset", "access"),
    H_FAULT: ("va", "access"),
    H_GETPAGES: ("offset", "npages"),
    H_PUTPAGES: ("start", "end"),
    H_PAGEOUT: ("offset", "npages"),
    H_PAGEOUT_DONE: ("offset", "npages"),
    H_PAGEOUT_FAIL: ("offset", "errno"),
    H_SWAPOUT: ("slot", "npages"),
    H_SWAPIN: ("slot", "npages"),
    H_WIRE: ("start", "end"),
    H_UNWIRE: ("start", "end"),
    H_UNWIRE_SKIP: ("va", "count"),
    H_SETSIZE: ("old", "new"),
}

Event = tuple[float, str, str, int, int]


class UvmHist:
    """The ring.

    Args:
        size: events kept; rounded up to a power of two (at least 16).

    Attributes:
        seq: events logged so far (the sequence number of the next one).
    """

    __slots__ = ("mask", "ring", "seq", "size")

    def __init__(self, size: int = DEFAULT_HIST_SIZE) -> None:
        n = 16
        while n < size:
            n <<= 1
        self.size = n
        self.mask = n - 1
        self.ring: list[Event | None] = [None] * n
        self.seq = 0

    def log(self, kind: str, what: str, a: int, b: int) -> None:
        """Record one event.  => never sleeps."""
        self.ring[self.seq & self.mask] = (time.monotonic(), kind, what, a, b)
        self.seq += 1

    def since(self, seq: int, limit: int) -> tuple[int, int, list[tuple[int, Event]]]:
        """The events from sequence number ``seq`` on, at most ``limit`` (the oldest
        first): (the sequence number to ask for next, how many events from ``seq`` on the
        ring no longer holds, [(sequence number, event)...])."""
        first = max(seq, self.seq - self.size, 0)
        lost = first - seq if seq >= 0 else 0
        last = min(self.seq, first + max(0, limit))
        out: list[tuple[int, Event]] = []
        for n in range(first, last):
            ev = self.ring[n & self.mask]
            assert ev is not None
            out.append((n, ev))
        return last, max(0, lost), out
