"""``results.json`` and the terminal table of ``ubcfs bench``.

``results.json`` (``SCHEMA``) holds every raw figure: ``per_round[job][column][metric]``
(one value per round, null where not measured), their ``results`` (median, min, max,
quartiles, n), ``ratios`` (per-round ratios to ``no-ubc`` and to ``backing``, and for a
variant job to its first variant, summarised the same way), the VM counters each job moved
on each ubcfs mount per round, the page-state samples, the machine (cores, memory, kernel,
CPU model, load average before and after), the ubcfs version and git commit, the options,
what "cold" meant per target, what was skipped and why, and the errors.  ``partial`` is
true when the run was interrupted or not every round finished.

The table shows, per (job, metric), each column's median and, after ``±``, half its
min-max spread in per cent of the median; then the ratios.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import time
from typing import TYPE_CHECKING, Any, Final

import ubcfs
from ubcfs.bench import jobs, sampler, stats, system
from ubcfs.options import format_size

if TYPE_CHECKING:
    from ubcfs.bench.run import Bench

SCHEMA: Final = "ubcfs-bench/1"
REFERENCES: Final = ("no-ubc", "backing")
COLD: Final = {
    "ubcfs": "unmounted and mounted again (the UBC starts empty); as root also the host's page"
    " cache dropped (echo 3 > /proc/sys/vm/drop_caches), so the backing file comes from disk",
    "no-ubc": "as ubcfs: remounted, and the host's page cache dropped as root",
    "kernel-cache": "as ubcfs: remounted (the kernel's cache of the mount goes too), and the"
    " host's page cache dropped as root",
    "backing": "the host's page cache dropped (echo 3 > /proc/sys/vm/drop_caches; root only)",
    "tmpfs": "none: the data lives only in memory or swap (unmounting loses it); skipped",
    "linux-tmpfs": "none: drop_caches does not drop tmpfs pages; skipped",
}
CELL: Final = 13


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def build_doc(b: Bench) -> dict[str, Any]:
    """Everything a run measured, as the JSON document."""
    now = time.time()
    cfg = b.cfg
    variant_jobs = [j for j in b.values if jobs.SPECS[j].variant]
    target_jobs = [j for j in b.values if not jobs.SPECS[j].variant]
    ratios: dict[str, Any] = {
        ref: stats.ratios_to(b.values, ref, target_jobs) for ref in REFERENCES
    }
    ratios["variants"] = {}
    for job in variant_jobs:
        first = jobs.variants(job, cfg)[0][0]
        ratios["variants"].update(stats.ratios_to(b.values, first, [job]))
    commit = system.git_commit()
    return {
        "schema": SCHEMA,
        "partial": b.interrupted or b.rounds_done < cfg.rounds,
        "interrupted": b.interrupted,
        "rounds_done": b.rounds_done,
        "started": _iso(b.started),
        "finished": _iso(now),
        "seconds": round(now - b.started, 1),
        "ubcfs": {"version": ubcfs.__version__, "core": b.core} | commit,
        "machine": system.machine()
        | {"load_before": b.load_before, "load_after": system.load_average()},
        "options": cfg.as_json(),
        "targets": b.targets,
        "jobs": {j: jobs.SPECS[j].as_json() for j in cfg.jobs},
        "variants": {
            j: [v for v, _ in jobs.variants(j, cfg)] for j in cfg.jobs if jobs.SPECS[j].variant
        },
        "cold": {t: COLD[t] for t in b.targets},
        "notes": b.notes,
        "skipped": b.skipped,
        "errors": b.errors,
        "order": b.orders,
        "round_seconds": [round(s, 2) for s in b.round_seconds],
        "per_round": b.values,
        "results": stats.summarize(b.values),
        "ratios": ratios,
        "counters": b.counters,
        "prepared": b.done,
        "sample_interval": sampler.INTERVAL,
        "samples": b.samples,
        "charts": [],
    }


def write_json(path: str, doc: dict[str, Any]) -> None:
    """Atomically (a reader never sees half a file); NaN and infinities as null."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(_finite(doc), f, indent=1, allow_nan=False)
        f.write("\n")
    os.replace(tmp, path)


def _finite(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_finite(v) for v in x]
    return x


# --- formatting ---------------------------------------------------------------------------


def fmt_number(v: float | None, unit: str = "") -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if unit == "ratio":
        return f"{v:.3f}"
    a = abs(v)
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_value(v: float | None, job: str, metric: str | None = None) -> str:
    spec = jobs.SPECS[job]
    m = next((x for x in spec.metrics if x.name == metric), spec.metrics[0])
    return fmt_number(v, m.unit)


def cell(s: dict[str, Any] | None, unit: str) -> str:
    """A median and ``±`` half its min-max spread in per cent."""
    if not s or s.get("median") is None:
        return "-"
    med = s["median"]
    text = fmt_number(med, unit)
    if s.get("n", 0) > 1 and med:
        text += f" ±{50 * (s['max'] - s['min']) / abs(med):.0f}%"
    return text


def metric_unit(doc: dict[str, Any], job: str, metric: str) -> tuple[str, bool]:
    m = doc.get("jobs", {}).get(job, {}).get("metrics", {}).get(metric, {})
    return str(m.get("unit", "")), bool(m.get("higher_is_better", True))


def _row_label(doc: dict[str, Any], job: str, metric: str) -> str:
    unit, higher = metric_unit(doc, job, metric)
    return f"{job:<13} {metric:<13} {unit + ('' if higher else ' (lower)'):<17}"


def format_table(doc: dict[str, Any]) -> str:
    """The terminal table of a results document."""
    o = doc.get("options", {})
    lines = [
        f"ubcfs bench: {doc.get('rounds_done', 0)}/{o.get('rounds', '?')} rounds,"
        f" --size {format_size(int(o.get('size', 0)) or 1)},"
        f" --memory {format_size(int(o.get('memory', 0)) or 1)},"
        f" pages {o.get('page_size', '?')}; core {doc.get('ubcfs', {}).get('core', '?')}"
        + ("  (PARTIAL)" if doc.get("partial") else ""),
        "medians over rounds; ±: half the min-max spread, in % of the median",
    ]
    results = doc.get("results", {})
    variant_jobs = set(doc.get("variants", {}))
    targets = list(doc.get("targets", []))
    tjobs = [j for j in results if j not in variant_jobs]
    if tjobs and targets:
        lines.append("")
        lines.append(" " * 45 + "".join(f"{t:>{CELL}}" for t in targets))
        for job in tjobs:
            for metric in metrics_of(results[job]):
                unit, _ = metric_unit(doc, job, metric)
                row = [cell(results[job].get(t, {}).get(metric), unit) for t in targets]
                lines.append(_row_label(doc, job, metric) + "".join(f"{c:>{CELL}}" for c in row))
        for ref in REFERENCES:
            rat = doc.get("ratios", {}).get(ref, {})
            if not rat:
                continue
            others = [t for t in targets if t != ref]
            lines.append("")
            lines.append(
                f"ratio to {ref} (median of per-round ratios)".ljust(45)
                + "".join(f"{t:>{CELL}}" for t in others)
            )
            for job in tjobs:
                for metric in metrics_of(results[job]):
                    row = [
                        fmt_number(rat.get(job, {}).get(t, {}).get(metric, {}).get("median"), "x")
                        for t in others
                    ]
                    if all(c == "-" for c in row):
                        continue
                    lines.append(
                        _row_label(doc, job, metric) + "".join(f"{c:>{CELL}}" for c in row)
                    )
    for job in [j for j in results if j in variant_jobs]:
        cols = doc["variants"][job]
        first = cols[0] if cols else ""
        heads = [*cols, *(f"{c}/{first}" for c in cols[1:])]
        width = max(CELL, *(len(h) + 2 for h in heads))
        lines.append("")
        lines.append(f"{job}: {doc['jobs'][job]['what']}")
        lines.append(" " * 45 + "".join(f"{h:>{width}}" for h in heads))
        for metric in metrics_of(results[job]):
            unit, _ = metric_unit(doc, job, metric)
            row = [cell(results[job].get(c, {}).get(metric), unit) for c in cols]
            rat = doc.get("ratios", {}).get("variants", {}).get(job, {})
            row += [fmt_number(rat.get(c, {}).get(metric, {}).get("median"), "x") for c in cols[1:]]
            lines.append(_row_label(doc, job, metric) + "".join(f"{c:>{width}}" for c in row))
    skipped = doc.get("skipped", {})
    if skipped:
        lines.append("")
        for job, cols in skipped.items():
            for col, why in cols.items():
                lines.append(f"skipped: {job} on {col}: {why}")
    for note in doc.get("notes", []):
        lines.append(f"note: {note}")
    errors = doc.get("errors", [])
    if errors:
        lines.append("")
        for e in errors[:20]:
            where = " ".join(str(e[k]) for k in ("job", "column") if e.get(k) is not None)
            rnd = f"round {e['round'] + 1} " if isinstance(e.get("round"), int) else ""
            lines.append(f"error: {rnd}{where}: {e['error']}")
        if len(errors) > 20:
            lines.append(f"... and {len(errors) - 20} more errors (results.json has them all)")
    return "\n".join(lines)


def metrics_of(cols: dict[str, dict[str, Any]]) -> list[str]:
    """The metrics of a job's columns, in first-seen order."""
    out: list[str] = []
    for metrics in cols.values():
        out += [m for m in metrics if m not in out]
    return out
