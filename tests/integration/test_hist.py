"""``ubcfs ctl MNT hist`` on a real mount: the event history of what the mount did, as
text and JSON, followed live, and the errors of bad use."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import Mounted, Mounter

pytestmark = pytest.mark.fuse

PAGE = 4096


def test_hist_shows_what_the_mount_did(mounted: Mounted) -> None:
    m = mounted
    f = m.mnt / "traced"
    data = os.urandom(16 * PAGE)
    f.write_bytes(data)
    assert f.read_bytes() == data  # through read windows: their faults
    os.truncate(f, 4 * PAGE)
    r = m.ctl("hist", "--json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = {e["kind"] for e in events}
    assert {"getpages", "ubc-fault", "setsize"} <= kinds, kinds
    sizes = [e for e in events if e["kind"] == "setsize" and "traced" in e["what"]]
    assert any(e["old"] == 16 * PAGE and e["new"] == 4 * PAGE for e in sizes), sizes
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs)
    assert all(abs(e["time"] - time.time()) < 600 for e in events)  # wall-clock times
    text = m.ctl("hist", "--limit", "5")
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert 1 <= len(lines) <= 5
    assert all(len(line.split()) >= 3 for line in lines)
    m.assert_healthy()


def test_hist_follow_prints_new_events_until_interrupted(mounted: Mounted) -> None:
    m = mounted
    proc = subprocess.Popen(
        [sys.executable, "-m", "ubcfs", "ctl", str(m.mnt), "hist", "--follow", "--json"],
        env=m.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.0)
        (m.mnt / "late").write_bytes(os.urandom(8 * PAGE))
        os.truncate(m.mnt / "late", 0)
        time.sleep(1.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    events = [json.loads(line) for line in out.splitlines()]
    assert any(e["kind"] == "setsize" and "late" in e["what"] for e in events)
    assert "Traceback" not in err


def test_hist_errors(mounter: Mounter) -> None:
    m = mounter("m", "--hist", "0")
    r = m.ctl("hist")
    assert r.returncode == 1
    assert r.stderr.startswith("ubcfs: error:")
    assert "--hist 0" in r.stderr
    r = m.ctl("hist", "--limit", "0")
    assert r.returncode == 2
    assert "--limit" in r.stderr
    r = m.ubcfs("mount", m.mnt.parent / "other", "--hist", "lots")
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1
    assert "--hist" in r.stderr
    m.assert_healthy()
