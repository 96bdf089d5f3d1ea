"""Nothing lost when the kernel forgets inodes (issue 8): ``benchmarks/evict_stress.py`` on
real mounts, and the drop_caches loop of the conftest.

The stress tool's cycle is: extending write of 5000 bytes, close, ``echo 2 >
/proc/sys/vm/drop_caches`` (the daemon gets FORGETs while the file still has dirty pages),
reopen, read back against an exact model, write again.  The bug it reproduces: the daemon's
``forget`` awaits the write-back while the inode is still registered, a new lookup and open
reuse the dying inode, and writes that returned 5000 read back as zeros, or reads and writes
fail with EBADF.  Each run here is bounded with ``--max-seconds`` (a slow ``drop_caches`` on
a busy host then means fewer cycles, not a longer test); the issue's acceptance run, 10,000
cycles from 4 processes, is ``--procs 4 --cycles 2500`` (benchmarks/README.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import (
    DropCachesLoop,
    Mounter,
    is_mounted,
    require_root,
    wait_until,
)

pytestmark = pytest.mark.fuse

REPO = Path(__file__).resolve().parents[2]
TOOL = REPO / "benchmarks" / "evict_stress.py"
PROCS = 4
CYCLES = 150  # per process: what an unloaded host does in a few seconds
MAX_SECONDS = 12.0  # per run: 4 runs stay under a minute even with slow drop_caches
MIN_CYCLES = 40  # in all: fewer would not say much


def evict_stress(*args: str | Path, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(TOOL), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def summary_of(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.stdout.strip(), f"no summary; exit {r.returncode}; stderr: {r.stderr[-2000:]}"
    out: dict[str, Any] = json.loads(r.stdout.strip().splitlines()[-1])
    return out


def one_line(s: dict[str, Any]) -> str:
    """What went wrong, on one line, for the assertion message."""
    first = s["failures"][0] if s["failures"] else "-"
    return (
        f"{s['mismatches']} mismatches ({s['zero_mismatches']} read back as zeros),"
        f" {s['errors']} errors {s['errors_by_errno']} in {s['cycles_done']} cycles;"
        f" sync {s['sync']}; mount {s['final_mount']}; backing {s['final_backing']};"
        f" check {s['check']}; first: {first}"
    )


@pytest.mark.parametrize("memory", ["1M", "4M"])
@pytest.mark.parametrize("mode", ["own", "shared"])
def test_evict_stress(mounter: Mounter, mode: str, memory: str) -> None:
    require_root("writes /proc/sys/vm/drop_caches")
    m = mounter("m", memory=memory)
    args = ["--procs", PROCS, "--cycles", CYCLES, "--max-seconds", MAX_SECONDS]
    args += ["--seed", 8, "--json", "--backing", m.backing, "--timeout", 180]
    if mode == "shared":
        args.append("--shared")
    r = evict_stress(m.mnt, *map(str, args))
    s = summary_of(r)
    assert s["cycles_done"] >= MIN_CYCLES, f"only {s['cycles_done']} cycles ran: {one_line(s)}"
    assert s["ok"], one_line(s)
    assert r.returncode == 0, r.stderr[-2000:]
    m.assert_healthy()


def test_evict_stress_with_its_own_mount(tmp_path: Path) -> None:
    """``--mount``: the tool mounts, runs, unmounts; no mount is left behind either way."""
    require_root("writes /proc/sys/vm/drop_caches")
    before = Path("/proc/mounts").read_text().count("evict-stress-")
    r = evict_stress("--mount", "--memory", "4M", "--procs", "2", "--cycles", "10", "--json")
    s = summary_of(r)
    assert Path("/proc/mounts").read_text().count("evict-stress-") == before
    assert s["umount"] == "ok", s["umount"]
    assert s["cycles_done"] == 20
    assert s["drop_caches"]["count"] >= 1
    assert (r.returncode == 0) == s["ok"], (r.returncode, one_line(s))


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--mount", "/mnt"],
        ["--procs", "0", "/mnt"],
        ["--cycles", "-1", "/mnt"],
        ["--cycles", "many", "/mnt"],
        ["--memory", "4M", "/mnt"],
        ["--mount", "--memory", "4Q"],
        ["--mount", "--backing", "/tmp"],
        ["--no-such-option", "/mnt"],
    ],
    ids=lambda a: " ".join(a) or "none",
)
def test_evict_stress_bad_arguments(args: list[str]) -> None:
    r = evict_stress(*args, timeout=60)
    assert r.returncode == 2, r
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("evict_stress: error: ")


def test_evict_stress_refuses_what_is_not_a_ubcfs_mount(tmp_path: Path) -> None:
    require_root("checks the mountpoint after the root check")
    for target in (tmp_path, Path("/")):
        r = evict_stress(target, timeout=60)
        assert r.returncode == 2, r
        assert len(r.stderr.splitlines()) == 1, r.stderr
        assert "not a" in r.stderr
    assert not is_mounted(tmp_path)


def test_drop_caches_loop_starts_and_stops() -> None:
    """The conftest's background loop (``UBCFS_TEST_DROP_CACHES=1``) drops and stops."""
    require_root("writes /proc/sys/vm/drop_caches")
    loop = DropCachesLoop(0.05).start()
    try:
        wait_until(lambda: loop.drops >= 3, 60, "three drops")
    finally:
        loop.stop()
    assert not loop.errors
    n = loop.drops
    time.sleep(0.3)
    assert loop.drops == n, "the loop goes on after stop()"
