"""The PNG charts and ``index.html`` of ``ubcfs bench`` (matplotlib, Agg backend), all
drawn from the results document alone:

* ``throughput.png``: per job and metric, each target's median as a bar, the min-max
  spread over rounds as its error bar;
* ``timeline-<column>.png``: per ubcfs mount (target or variant), the page states (free,
  active, inactive, wired, dirty, anon) sampled during each of its jobs in the first round
  that has samples, the jobs one after the other, and below them the rates of pageouts,
  swap-outs and swap-ins per second;
* ``fastpath.png``: the daemon's CPU seconds per GiB of extending writes (all threads, and the
  trio thread alone) with the fast path on and off (``--no-extend-fastpath``), and their
  MB/s;
* ``policies.png``: the hit ratios of the loop and scan jobs per page-replacement policy,
  and their MB/s.
"""

from __future__ import annotations

import html
import itertools
import math
import os
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
from matplotlib.axes import Axes

from ubcfs.bench import report

DPI: Final = 100
PAGE_STATES: Final = ("free", "active", "inactive", "wired", "dirty", "anon")
RATES: Final = ("pageouts", "swapouts", "swapins")
LOG_SPAN: Final = 20.0  # a panel whose bars span more than this factor gets a log scale


def _bars(
    ax: Axes,
    labels: list[str],
    stats: list[dict[str, Any] | None],
    title: str,
    log_ok: bool = True,
) -> bool:
    """Median bars with min-max error bars; False when there is nothing to draw."""
    meds: list[float] = []
    lo: list[float] = []
    hi: list[float] = []
    for s in stats:
        m = s.get("median") if s else None
        if m is None or not math.isfinite(m):
            meds.append(0.0)
            lo.append(0.0)
            hi.append(0.0)
            continue
        assert s is not None
        meds.append(m)
        lo.append(max(0.0, m - s["min"]))
        hi.append(max(0.0, s["max"] - m))
    ax.set_title(title, fontsize=9)
    ax.tick_params(axis="both", labelsize=7)
    if not any(meds):
        ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        return False
    xs = list(range(len(labels)))
    ax.bar(xs, meds, yerr=[lo, hi], capsize=3, color="#4c72b0")
    for x, s in zip(xs, stats, strict=True):
        if not s or s.get("median") is None:  # skipped or failed: say so, not a zero
            ax.text(x, 0.02, "n/a", ha="center", va="bottom", fontsize=7,
                    transform=ax.get_xaxis_transform())  # fmt: skip
    positive = [m for m in meds if m > 0]
    if log_ok and len(positive) > 1 and max(positive) / min(positive) > LOG_SPAN:
        ax.set_yscale("log")  # a host tmpfs next to a FUSE mount: bars of both visible
        ax.set_title(title + ", log", fontsize=9)
    ax.set_xticks(xs)
    ax.set_xticklabels(labels, rotation=30, ha="right")
    return True


def throughput(doc: dict[str, Any], path: str) -> bool:
    results = doc.get("results", {})
    variants = set(doc.get("variants", {}))
    targets = list(doc.get("targets", []))
    panels = [
        (job, metric)
        for job in results
        if job not in variants
        for metric in report.metrics_of(results[job])
    ]
    if not panels or not targets:
        return False
    ncols = min(4, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.6 * ncols, 2.9 * nrows), squeeze=False)
    drawn = False
    for i, (job, metric) in enumerate(panels):
        ax = axes[i // ncols][i % ncols]
        unit, higher = report.metric_unit(doc, job, metric)
        title = f"{job} {metric} ({unit}{'' if higher else ', lower is better'})"
        stats = [results[job].get(t, {}).get(metric) for t in targets]
        drawn |= _bars(ax, targets, stats, title)
    for j in range(len(panels), nrows * ncols):
        axes[j // ncols][j % ncols].set_visible(False)
    fig.suptitle("ubcfs bench: medians over rounds, error bars min-max", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return drawn


def _series(
    doc: dict[str, Any], col: str
) -> tuple[list[tuple[str, float]], list[dict[str, float]]]:
    """The samples of one column, its jobs one after the other (the first round that has
    samples for each job); the jobs' start times."""
    starts: list[tuple[str, float]] = []
    out: list[dict[str, float]] = []
    offset = 0.0
    interval = float(doc.get("sample_interval", 0.2))
    for job, cols in doc.get("samples", {}).items():
        rounds = cols.get(col)
        if not rounds:
            continue
        first = rounds[min(rounds, key=int)]
        if not first:
            continue
        starts.append((job, offset))
        for s in first:
            out.append(s | {"t": s["t"] + offset})
        offset = out[-1]["t"] + interval
    return starts, out


def timeline(doc: dict[str, Any], col: str, path: str) -> bool:
    starts, samples = _series(doc, col)
    if len(samples) < 2:
        return False
    page = float(doc.get("options", {}).get("page_size", 4096))
    ts = [s["t"] for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    for k in PAGE_STATES:
        top.plot(ts, [s.get(k, 0) * page / (1 << 20) for s in samples], label=k, linewidth=1)
    top.set_ylabel("MiB")
    top.legend(fontsize=7, ncol=6, loc="upper right")
    fig.suptitle(f"ubcfs bench: page states and paging on {col}", fontsize=10)
    for k in RATES:
        rates = [0.0]
        for a, b in itertools.pairwise(samples):
            dt = b["t"] - a["t"]
            rates.append(max(0.0, (b.get(k, 0) - a.get(k, 0)) / dt) if dt > 0 else 0.0)
        bottom.plot(ts, rates, label=f"{k}/s", linewidth=1)
    bottom.set_ylabel("pages per second")
    bottom.set_xlabel("seconds (jobs one after the other)")
    bottom.legend(fontsize=7, loc="upper right")
    for ax in (top, bottom):
        ax.tick_params(labelsize=7)
        for _job, t in starts:
            ax.axvline(t, color="grey", linestyle=":", linewidth=0.8)
    for job, t in starts:
        top.text(t, 1.0, f" {job}", transform=top.get_xaxis_transform(), fontsize=7, va="bottom",
                 rotation=30)  # fmt: skip
    fig.tight_layout(rect=(0.0, 0.0, 1.0, 0.95))
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return True


def _variant_figure(doc: dict[str, Any], jobs: list[str], path: str, title: str) -> bool:
    results = doc.get("results", {})
    panels = [
        (job, metric)
        for job in jobs
        if job in results
        for metric in report.metrics_of(results[job])
    ]
    if not panels:
        return False
    fig, axes = plt.subplots(1, len(panels), figsize=(3.3 * len(panels), 3.4), squeeze=False)
    drawn = False
    for i, (job, metric) in enumerate(panels):
        cols = list(doc.get("variants", {}).get(job, []))
        unit, higher = report.metric_unit(doc, job, metric)
        stats = [results[job].get(c, {}).get(metric) for c in cols]
        t = f"{job} {metric}\n({unit}{'' if higher else ', lower is better'})"
        drawn |= _bars(axes[0][i], cols, stats, t, log_ok=unit != "ratio")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return drawn


def write_all(doc: dict[str, Any], out: str) -> list[str]:
    """Every chart the document has data for; their file names."""
    made: list[str] = []
    if throughput(doc, os.path.join(out, "throughput.png")):
        made.append("throughput.png")
    cols: list[str] = []
    for job_cols in doc.get("samples", {}).values():
        cols += [c for c in job_cols if c not in cols]
    for col in cols:
        name = f"timeline-{col}.png"
        if timeline(doc, col, os.path.join(out, name)):
            made.append(name)
    if _variant_figure(
        doc,
        ["fastpath"],
        os.path.join(out, "fastpath.png"),
        "extending writes: daemon CPU per GiB, fast path on and off (--no-extend-fastpath)",
    ):
        made.append("fastpath.png")
    if _variant_figure(
        doc,
        ["loop", "scan"],
        os.path.join(out, "policies.png"),
        "page-replacement policies: hit ratio = 1 - pageins x page size / bytes read",
    ):
        made.append("policies.png")
    return made


_CAPTIONS: Final = {
    "throughput.png": "Throughput per job and target: medians over rounds, error bars min-max.",
    "fastpath.png": "The daemon's CPU seconds per GiB of extending writes, all its threads and"
    " the trio thread alone (and MB/s), with the extending-write fast path on and off, both"
    " measured at the same time.",
    "policies.png": "Hit ratios and throughput of the loop and scan jobs per page-replacement"
    " policy.",
}


def write_index(doc: dict[str, Any], out: str) -> None:
    """``index.html``: the table, then every chart."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>ubcfs bench</title>",
        "<style>body{font-family:sans-serif;margin:2em}pre{background:#f4f4f4;padding:1em;"
        "overflow-x:auto}img{max-width:100%;border:1px solid #ddd}</style></head><body>",
        "<h1>ubcfs bench</h1>",
    ]
    u = doc.get("ubcfs", {})
    m = doc.get("machine", {})
    parts.append(
        "<p>"
        + html.escape(
            f"ubcfs {u.get('version')} commit {u.get('commit')}"
            f"{' (uncommitted changes)' if u.get('dirty') else ''}, core {u.get('core')};"
            f" {m.get('cores')} cores, {m.get('cpu_model')}, kernel {m.get('kernel')};"
            f" started {doc.get('started')}, {doc.get('seconds')} s"
            + (" — PARTIAL (interrupted)" if doc.get("partial") else "")
        )
        + "</p>"
    )
    parts.append(f"<pre>{html.escape(report.format_table(doc))}</pre>")
    for name in doc.get("charts", []):
        caption = _CAPTIONS.get(name)
        if caption is None and name.startswith("timeline-"):
            col = name[len("timeline-") : -len(".png")]
            caption = (
                f"Page states and paging rates on {col}, sampled every"
                f" {doc.get('sample_interval')} s during its jobs (first round)."
            )
        parts.append(f"<h2>{html.escape(name)}</h2><p>{html.escape(caption or '')}</p>")
        parts.append(f"<img src='{html.escape(name)}' alt='{html.escape(name)}'>")
    parts.append("</body></html>")
    tmp = os.path.join(out, "index.html.tmp")
    with open(tmp, "w") as f:
        f.write("\n".join(parts) + "\n")
    os.replace(tmp, os.path.join(out, "index.html"))
