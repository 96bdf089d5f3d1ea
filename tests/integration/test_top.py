"""``ubcfs top`` on a real mount: one frame with ``--once``, the live view drawn in a
pseudo-terminal and quit with ``q``, and the errors of bad use."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import sys
import time

import pytest

from tests.integration.conftest import Mounted

pytestmark = pytest.mark.fuse

PAGE = 4096


def test_top_once_shows_pages_files_and_processes(mounted: Mounted) -> None:
    m = mounted
    (m.mnt / "big-one").write_bytes(os.urandom(64 * PAGE))
    pid = m.ctl("proc-new").stdout.strip()
    assert pid.isdigit()
    r = m.ubcfs("top", m.mnt, "--once", "--interval", "0.2")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0].startswith("ubcfs top")
    assert any(line.startswith("free") and "[" in line for line in out)
    assert any(line.startswith("per second:") for line in out)
    files = [line for line in out if "big-one" in line]
    assert files, r.stdout
    assert int(files[0].split()[0]) >= 1  # resident pages
    assert any(line.split()[:1] == [pid] for line in out), r.stdout
    assert all(len(line) <= 100 for line in out)
    m.assert_healthy()


def test_top_draws_in_a_terminal_and_quits_with_q(mounted: Mounted) -> None:
    m = mounted
    (m.mnt / "seen").write_bytes(b"x" * PAGE)
    master, slave = pty.openpty()
    env = dict(m.env, TERM="xterm", LINES="40", COLUMNS="120")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ubcfs", "top", str(m.mnt), "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    screen = b""
    try:
        deadline = time.monotonic() + 30
        while b"seen" not in screen or b"per second" not in screen:
            assert time.monotonic() < deadline, f"top drew {screen[-2000:]!r}"
            ready, _, _ = select.select([master], [], [], 1)
            if ready:
                screen += os.read(master, 65536)
        os.write(master, b"q")
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        assert proc.stderr is not None
        err = proc.stderr.read()
        proc.stderr.close()
    assert rc == 0, err
    assert b"Traceback" not in screen
    m.assert_healthy()


def test_top_bad_use_is_a_one_line_error(mounted: Mounted) -> None:
    m = mounted
    r = m.ubcfs("top", m.mnt)  # stdout is a pipe here: no terminal
    assert r.returncode == 2
    assert r.stderr.startswith("ubcfs: error:")
    assert "--once" in r.stderr
    for bad in ("0", "-1", "nan", "x"):
        r = m.ubcfs("top", m.mnt, "--once", "--interval", bad)
        assert r.returncode == 2, (bad, r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1
        assert "--interval" in r.stderr
    r = m.ubcfs("top", m.mnt / "no-such-dir", "--once")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
