"""``ubcfs bench`` for real: a whole small run (every job on every target, both policies)
gives valid JSON with figures, PNGs a real decoder reads and no mount left behind; Ctrl-C
unmounts everything and keeps a partial results.json."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import require_fuse, require_root, ubcfs_env, wait_until
from ubcfs.bench import config, system

pytestmark = pytest.mark.fuse

SMALL = ("--size", "8M", "--memory", "2M")
RUN_TIMEOUT = 240.0


def _require() -> None:
    require_fuse()
    require_root("linux-tmpfs, drop_caches and the cold reads of every target")
    if shutil.which("fio") is None:
        pytest.skip("fio is not installed (apt-get install fio)")
    for tool in config.BUILD_TOOLS:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")


def _env(tmp_path: Path) -> dict[str, str]:
    """Our environment, with the bench's temp dir (its mounts) under ``tmp_path/tmp``."""
    env = ubcfs_env(tmp_path)
    (tmp_path / "tmp").mkdir()
    env["TMPDIR"] = str(tmp_path / "tmp")
    return env


def _left_behind(tmp_path: Path) -> list[str]:
    """Mounts under the test's dir, and processes whose command line names it."""
    left = system.mounted_under(str(tmp_path))
    needle = str(tmp_path).encode()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and system.alive(int(pid)):
            words = cmdline.replace(b"\0", b" ").decode(errors="replace")
            left.append(f"pid {pid}: {words}")
    return left


def _summaries(doc: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    return [
        (job, col, metric, s)
        for job, cols in doc["results"].items()
        for col, metrics in cols.items()
        for metric, s in metrics.items()
    ]


def test_small_run_gives_json_charts_and_leaves_nothing(tmp_path: Path) -> None:
    _require()
    from matplotlib import image

    out = tmp_path / "out"
    argv = [sys.executable, "-m", "ubcfs", "bench", *SMALL, "--rounds", "1", "--out", str(out)]
    t0 = time.monotonic()
    r = subprocess.run(
        argv, env=_env(tmp_path), capture_output=True, text=True, timeout=RUN_TIMEOUT
    )
    took = time.monotonic() - t0
    assert r.returncode == 0, f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    assert "Traceback" not in r.stderr
    assert _left_behind(tmp_path) == []
    assert not os.listdir(tmp_path / "tmp")  # the bench's temp dir is gone
    doc = json.loads((out / "results.json").read_text())
    assert doc["schema"] == "ubcfs-bench/1"
    assert doc["partial"] is False
    assert doc["errors"] == []
    assert doc["rounds_done"] == 1
    assert doc["options"]["size"] == 8 << 20
    assert doc["targets"] == list(config.TARGETS)
    assert set(doc["results"]) == set(config.JOBS)
    assert doc["machine"]["cores"] >= 1
    assert doc["machine"]["cpu_model"]
    assert doc["ubcfs"]["core"] in ("compiled", "pure")
    # Every (job, target) ran or was skipped with its reason.
    for job in config.JOBS:
        if job in config.VARIANT_JOBS:
            assert set(doc["results"][job]) == set(doc["variants"][job]), job
            continue
        for t in config.TARGETS:
            ran = t in doc["results"][job]
            assert ran != (t in doc["skipped"].get(job, {})), (job, t)
    for job, col, metric, s in _summaries(doc):
        median = s["median"]
        if metric.endswith("hit_ratio"):
            assert median is not None, (job, col, metric)
            # below 0 when read-ahead brought in pages evicted before they were read
            assert -1.0 <= median <= 1.0, (job, col, metric, median)
        else:
            assert median is not None, (job, col, metric)
            assert median > 0, (job, col, metric, median)
    assert set(doc["variants"]["loop"]) == set(doc["options"]["policies"])
    assert doc["ratios"]["no-ubc"]["seqwrite"]["ubcfs"]["throughput"]["median"] > 0
    assert doc["ratios"]["backing"]["randread"]["ubcfs"]["iops"]["median"] > 0
    ubc = doc["counters"]["seqwrite"]["ubcfs"][0]
    assert ubc["pageouts"] >= (8 << 20) // 4096  # the file went through the UBC to its store
    loop_clock = doc["counters"]["loop"]["clock"][0]
    assert loop_clock["pageins"] >= 3 * (3 << 20) // 4096 // 2  # 1.5x memory does not fit
    assert doc["samples"]["seqwrite"]["ubcfs"]["0"]  # sampled while it ran
    # The charts: one per kind, each a real PNG.
    assert {"throughput.png", "fastpath.png", "policies.png", "timeline-ubcfs.png"} <= set(
        doc["charts"]
    )
    for name in doc["charts"]:
        pixels = image.imread(str(out / name))
        assert pixels.ndim == 3, name
        assert min(pixels.shape[:2]) > 100, name
    page = (out / "index.html").read_text()
    assert all(f"src='{name}'" in page for name in doc["charts"])
    assert "seqwrite" in r.stdout
    assert "ratio to no-ubc" in r.stdout
    assert took < RUN_TIMEOUT


def test_ctrl_c_unmounts_and_keeps_partial_results(tmp_path: Path) -> None:
    _require()
    out = tmp_path / "out"
    argv = [sys.executable, "-m", "ubcfs", "bench", *SMALL, "--rounds", "5", "--out", str(out)]
    proc = subprocess.Popen(
        argv,
        env=_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Interrupt once the targets are mounted and jobs run on them.
        wait_until(lambda: len(system.mounted_under(str(tmp_path))) >= 4, 60, "the mounts")
        time.sleep(2.0)
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert "interrupted" in stderr
    assert "Traceback" not in stderr
    assert _left_behind(tmp_path) == []
    doc = json.loads((out / "results.json").read_text())
    assert doc["partial"] is True
    assert doc["interrupted"] is True
    assert doc["rounds_done"] == 0
    assert all(s["n"] <= 1 for job, col, metric, s in _summaries(doc))  # round 1 at most
    assert "PARTIAL" in stdout
