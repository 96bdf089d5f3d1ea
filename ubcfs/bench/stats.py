"""Medians, spreads and ratios of per-round figures; the rotation of the target order.

A figure is one number of one round of one (job, column, metric), where a column is a
target (``ubcfs``, ``backing``, ...) or a job's variant (``clock``, ``fastpath-on``, ...).
A round that did not produce it (skipped, failed, interrupted) has ``None`` there, and
every summary is over the rounds that did.

Ratios are taken within each round (the figure over the reference's figure of the same
round) and then summarised, never as a ratio of medians: the machine's speed drifts
between rounds and hits both sides of a same-round ratio alike.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")

# per_round[job][column][metric] -> one value per round (None: not measured in that round)
PerRound = dict[str, dict[str, dict[str, list[float | None]]]]


def rotate(items: Sequence[T], r: int) -> list[T]:
    """``items`` rotated left by ``r`` (round ``r``'s order)."""
    if not items:
        return []
    k = r % len(items)
    return [*items[k:], *items[:k]]


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of sorted values, linear between neighbours."""
    if not sorted_values:
        raise ValueError("quantile of no values")
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def summary(values: Sequence[float | None]) -> dict[str, Any]:
    """Median, min, max and quartiles of the values that exist; ``n`` of them.  With none:
    ``n`` 0 and the figures None."""
    got = sorted(v for v in values if v is not None and math.isfinite(v))
    out: dict[str, Any] = {"per_round": list(values), "n": len(got)}
    if not got:
        return out | {"median": None, "min": None, "max": None, "q1": None, "q3": None}
    return out | {
        "median": statistics.median(got),
        "min": got[0],
        "max": got[-1],
        "q1": quantile(got, 0.25),
        "q3": quantile(got, 0.75),
    }


def ratio(a: float | None, b: float | None) -> float | None:
    """``a / b``; None when either is missing or ``b`` is 0."""
    if a is None or b is None or b == 0:
        return None
    return a / b


def per_round_ratios(
    values: Sequence[float | None], reference: Sequence[float | None]
) -> list[float | None]:
    """Round by round, ``values[r] / reference[r]``."""
    return [ratio(a, b) for a, b in zip(values, reference, strict=False)]


def summarize(per_round: PerRound) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """``summary`` of every (job, column, metric)."""
    return {
        job: {
            col: {metric: summary(vals) for metric, vals in metrics.items()}
            for col, metrics in cols.items()
        }
        for job, cols in per_round.items()
    }


def ratios_to(
    per_round: PerRound, reference: str, jobs: Sequence[str] | None = None
) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """For each job that has the column ``reference``: each other column's per-round ratio
    to it, summarised (``jobs``: only these)."""
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {}
    for job, cols in per_round.items():
        if (jobs is not None and job not in jobs) or reference not in cols:
            continue
        ref = cols[reference]
        out[job] = {}
        for col, metrics in cols.items():
            if col == reference:
                continue
            out[job][col] = {
                m: summary(per_round_ratios(vals, ref.get(m, [])))
                for m, vals in metrics.items()
                if m in ref
            }
    return out


def hit_ratio(pageins: int, page_size: int, bytes_read: int) -> float | None:
    """``1 - pageins * page_size / bytes_read``: the share of what was read that the cache
    held (read-ahead counts as a miss of the pages it brought in).  None if nothing was
    read."""
    if bytes_read <= 0:
        return None
    return 1.0 - (pageins * page_size) / bytes_read
