"""``ubcfs bench --compare A.json B.json``: two runs' medians side by side, with B/A.

Every (job, column, metric) that either run has gets a row: A's median, B's median and
their ratio B/A (for a metric where lower is better, such as the build's seconds, a ratio
below 1 means B is faster; the unit column says ``(lower)``).  A file that is missing, not
JSON or not a ``ubcfs bench`` results file is a one-line ``UsageError``.  Differing run
options (size, memory, page size) are pointed out: the figures are then not comparable.
"""

from __future__ import annotations

import json
from typing import Any, Final

from ubcfs.bench import report
from ubcfs.bench.stats import ratio
from ubcfs.options import UsageError

WIDTH: Final = 12


def load(path: str) -> dict[str, Any]:
    """A results document, checked for the parts the comparison reads.

    Raises:
        UsageError: missing, unreadable, not JSON, or not a ``ubcfs bench`` result.
    """
    try:
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
    except FileNotFoundError:
        raise UsageError(f"--compare: {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"--compare: {path} is a directory (give its results.json)") from None
    except OSError as e:
        raise UsageError(f"--compare: {path}: {e.strerror}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UsageError(f"--compare: {path} is not JSON ({e})") from None
    if not isinstance(doc, dict) or doc.get("schema") != report.SCHEMA:
        raise UsageError(f"--compare: {path} is not a ubcfs bench results.json")
    results = doc.get("results")
    if not isinstance(results, dict) or not all(
        isinstance(cols, dict) and all(isinstance(m, dict) for m in cols.values())
        for cols in results.values()
    ):
        raise UsageError(f"--compare: {path} has no valid 'results'")
    return doc


def _median(doc: dict[str, Any], job: str, col: str, metric: str) -> float | None:
    s = doc["results"].get(job, {}).get(col, {}).get(metric)
    if not isinstance(s, dict):
        return None
    m = s.get("median")
    return float(m) if isinstance(m, int | float) and not isinstance(m, bool) else None


def rows(
    a: dict[str, Any], b: dict[str, Any]
) -> list[tuple[str, str, str, float | None, float | None]]:
    """(job, column, metric, median A, median B) for everything either run has, in A's
    order and then B's."""
    keys: list[tuple[str, str, str]] = []
    for doc in (a, b):
        for job, cols in doc["results"].items():
            for col, metrics in cols.items():
                for metric in metrics:
                    if (job, col, metric) not in keys:
                        keys.append((job, col, metric))
    return [(j, c, m, _median(a, j, c, m), _median(b, j, c, m)) for j, c, m in keys]


def _describe(name: str, path: str, doc: dict[str, Any]) -> str:
    u = doc.get("ubcfs", {})
    commit = str(u.get("commit", "unknown"))[:12]
    dirty = "+dirty" if u.get("dirty") else ""
    partial = " PARTIAL" if doc.get("partial") else ""
    return (
        f"{name}: {path} (ubcfs {commit}{dirty}, core {u.get('core', '?')},"
        f" {doc.get('started', '?')}, {doc.get('rounds_done', '?')} rounds{partial})"
    )


def format_compare(a: dict[str, Any], b: dict[str, Any], path_a: str, path_b: str) -> str:
    lines = [_describe("A", path_a, a), _describe("B", path_b, b)]
    oa, ob = a.get("options", {}), b.get("options", {})
    differ = [k for k in ("size", "memory", "page_size") if oa.get(k) != ob.get(k)]
    if differ:
        lines.append(
            "warning: the runs differ in "
            + ", ".join(f"{k} ({oa.get(k)} vs {ob.get(k)})" for k in differ)
            + ": the figures are not comparable"
        )
    lines.append("")
    lines.append(
        f"{'job':<13} {'column':<13} {'metric':<13} {'unit':<17}"
        f"{'A':>{WIDTH}}{'B':>{WIDTH}}{'B/A':>{WIDTH}}"
    )
    for job, col, metric, ma, mb in rows(a, b):
        unit, higher = report.metric_unit(a if ma is not None else b, job, metric)
        unit_text = unit + ("" if higher else " (lower)")
        r = ratio(mb, ma)
        lines.append(
            f"{job:<13} {col:<13} {metric:<13} {unit_text:<17}"
            f"{report.fmt_number(ma, unit):>{WIDTH}}{report.fmt_number(mb, unit):>{WIDTH}}"
            f"{report.fmt_number(r, 'x') if r is not None else '-':>{WIDTH}}"
        )
    return "\n".join(lines)


def compare_files(path_a: str, path_b: str) -> str:
    return format_compare(load(path_a), load(path_b), path_a, path_b)
