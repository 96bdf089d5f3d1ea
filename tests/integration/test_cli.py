"""The ``ubcfs`` command line and the control channel, on real mounts where needed.

Every error path must give one line on stderr starting ``ubcfs: error:``, no traceback, the
documented exit status (2: the command line is wrong; 1: the command failed), and leave any
mount healthy.  The control socket must survive malformed and hostile clients.  ``umount``
and SIGTERM/SIGINT (and an external ``fusermount3 -u``) must leave the backing directory
holding exactly what was written.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.design_contract import DESIGN_COUNTERS, DESIGN_PAGES
from tests.integration.conftest import (
    CMD_TIMEOUT,
    Mounted,
    Mounter,
    is_mounted,
    pid_alive,
    require_fuse,
    run_ubcfs,
    ubcfs_env,
    wait_until,
)
from ubcfs.ctl.client import find_socket
from ubcfs.ctl.protocol import socket_path
from ubcfs.ctl.server import prepare_dir

REPO = Path(__file__).resolve().parents[2]


def assert_error(r: subprocess.CompletedProcess[str], code: int, *fragments: str) -> None:
    """One line ``ubcfs: error: ...`` on stderr containing ``fragments``, nothing on
    stdout, no traceback, exit status ``code``."""
    detail = f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    assert "Traceback" not in r.stderr + r.stdout, detail
    assert r.returncode == code, detail
    lines = r.stderr.splitlines()
    assert len(lines) == 1, detail
    assert lines[0].startswith("ubcfs: error: "), detail
    for fragment in fragments:
        assert fragment in lines[0], detail
    assert r.stdout == "", detail


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return ubcfs_env(tmp_path)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    """An unmounted (mountpoint, backing dir) pair."""
    mnt, backing = tmp_path / "mnt", tmp_path / "backing"
    mnt.mkdir()
    backing.mkdir()
    return mnt, backing


# --- errors found before anything is mounted (no FUSE needed) -------------------------------

BAD_SIZES = [
    ("--memory", "12Q", "invalid size"),
    ("--memory", "0", "must be positive"),
    ("--memory", "-1", "invalid size"),
    ("--memory", "1.5M", "invalid size"),
    ("--memory", "", "invalid size"),
    ("--memory", "0x100", "invalid size"),
    ("--memory", " 1M", "invalid size"),
    ("--memory", "100K", "at least 64 are needed"),
    ("--memory", "1000001", "not a multiple of the page size"),
    ("--memory", "1024T", "RAM"),
    ("--memory", "99999999999999999999999G", "too large"),
    ("--page-size", "3000", "not a power of two"),
    ("--page-size", "256", "not a power of two"),
    ("--page-size", "128K", "not a power of two"),
    ("--swap", "lots", "invalid size"),
    ("--swap", "-1", "invalid size"),
    ("--swap", "00x", "invalid size"),
]


@pytest.mark.parametrize(("option", "value", "why"), BAD_SIZES)
def test_bad_size(
    dirs: tuple[Path, Path], env: dict[str, str], option: str, value: str, why: str
) -> None:
    mnt, backing = dirs
    r = run_ubcfs("mount", mnt, "--backing", backing, option, value, env=env)
    assert_error(r, 2, option, why)
    assert not is_mounted(mnt)


def test_sizes_with_suffixes_are_accepted_up_to_the_paths(
    dirs: tuple[Path, Path], env: dict[str, str], tmp_path: Path
) -> None:
    # Every size is fine; the mountpoint is what is wrong, so the sizes were accepted.
    _, backing = dirs
    r = run_ubcfs(
        "mount", tmp_path / "nope", "--backing", backing, "--memory", "2m",
        "--page-size", "8K", "--swap", "1G", env=env,
    )  # fmt: skip
    assert_error(r, 2, "mountpoint", "does not exist")


def test_path_errors(dirs: tuple[Path, Path], env: dict[str, str], tmp_path: Path) -> None:
    mnt, backing = dirs
    a_file = tmp_path / "file"
    a_file.write_text("x")
    inside = backing / "sub"
    inside.mkdir()
    cases: list[tuple[list[str | Path], str]] = [
        ([mnt, "--backing", tmp_path / "nope"], "backing directory"),
        ([mnt, "--backing", a_file], "is not a directory"),
        ([tmp_path / "nope", "--backing", backing], "does not exist"),
        ([a_file, "--backing", backing], "is not a directory"),
        ([mnt, "--backing", tmp_path], "overlap"),
        ([inside, "--backing", backing], "overlap"),
    ]
    for args, why in cases:
        r = run_ubcfs("mount", *args, "--memory", "1M", env=env)
        assert_error(r, 2, why)
    assert not is_mounted(mnt)


def test_usage_errors(dirs: tuple[Path, Path], env: dict[str, str]) -> None:
    mnt, backing = dirs
    cases: list[list[str | Path]] = [
        [],
        ["bogus"],
        ["mount"],
        ["mount", mnt, "--backing", backing, "--frobnicate"],
        ["mount", mnt, "--memory"],
        ["stat"],
        ["stat", mnt, "--watch", "0"],
        ["stat", mnt, "--watch", "soon"],
        ["stat", mnt, "--watch", "nan"],
        ["umount", mnt, "extra"],
        ["ctl", mnt],
        ["ctl", mnt, "bogus"],
    ]
    for args in cases:
        assert_error(run_ubcfs(*args, env=env), 2)


COMMANDS: list[Callable[[Path], list[str | Path]]] = [
    lambda p: ["stat", p],
    lambda p: ["stat", p, "--json"],
    lambda p: ["stat", p, "--watch", "1"],
    lambda p: ["check", p],
    lambda p: ["sync", p],
    lambda p: ["umount", p],
    lambda p: ["ctl", p, "ping"],
    lambda p: ["ctl", p, "inject", "backing-write", "EIO", "1"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(map(str, c(Path("MNT")))))
def test_not_a_ubcfs_mount(
    command: Callable[[Path], list[str | Path]], dirs: tuple[Path, Path], env: dict[str, str]
) -> None:
    mnt, _ = dirs
    assert_error(run_ubcfs(*command(mnt), env=env), 1, "not a ubcfs mount")
    assert_error(run_ubcfs(*command(Path("/proc")), env=env), 1, "not a ubcfs mount")
    assert_error(run_ubcfs(*command(mnt / "nope"), env=env), 2, "does not exist")


def test_stale_control_socket(dirs: tuple[Path, Path], env: dict[str, str]) -> None:
    """A socket left by a killed daemon: nobody answers."""
    mnt, _ = dirs
    path = socket_path(str(mnt))
    prepare_dir(os.path.dirname(path))
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(path)
    try:
        assert_error(run_ubcfs("stat", mnt, env=env), 1, "not a ubcfs mount", "gone")
    finally:
        os.unlink(path)


def test_cli_imports_neither_fuse_nor_the_vm() -> None:
    code = (
        "import sys, ubcfs.cli, ubcfs.__main__\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('pyfuse3', 'trio', 'genfs',"
        " 'pagers') or m.startswith(('ubcfs.vm', 'ubcfs.vfs', 'ubcfs.fuse', 'ubcfs.daemon',"
        " 'ubcfs.ctl.server')))\n"
        "print(bad)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


def test_console_script_and_module(env: dict[str, str]) -> None:
    script = Path(sys.executable).with_name("ubcfs")
    assert script.exists(), "the ubcfs console script is not installed"
    r = subprocess.run([script, "--version"], capture_output=True, text=True, check=False)
    assert r.returncode == 0
    assert r.stdout.startswith("ubcfs ")
    r = run_ubcfs("--help", env=env)
    assert r.returncode == 0
    for command in ("mount", "umount", "sync", "stat", "check", "ctl"):
        assert command in r.stdout


# --- errors with a live mount ---------------------------------------------------------------


@pytest.mark.fuse
def test_mount_serves_when_the_command_returns(mounted: Mounted) -> None:
    assert os.listdir(mounted.mnt) == []
    info = mounted.ping()
    assert info["mountpoint"] == os.path.realpath(mounted.mnt)
    assert info["backing"] == os.path.realpath(mounted.backing)
    assert info["uid"] == os.getuid()
    assert pid_alive(info["pid"])
    # The daemon runs the build this test run expects (tests/run.sh says which).
    assert info["core"] == os.environ.get("UBCFS_TEST_EXPECT_CORE", info["core"])
    assert info["core"] in ("compiled", "pure")
    assert info["core_why"]
    with open("/proc/self/mountinfo") as f:
        assert any(f" {mounted.mnt} " in line and "fuse.ubcfs" in line for line in f)


@pytest.mark.fuse
def test_mountpoint_already_mounted(mounted: Mounted, tmp_path: Path) -> None:
    backing = tmp_path / "other"
    backing.mkdir()
    r = mounted.ubcfs("mount", mounted.mnt, "--backing", backing, "--memory", "1M")
    assert_error(r, 2, "already a mount point")
    mounted.assert_healthy()


@pytest.mark.fuse
def test_bad_inject_arguments(mounted: Mounted) -> None:
    cases: list[tuple[list[str], str]] = [
        (["bogus-kind", "EIO", "1"], "invalid choice"),
        (["swap-bogus", "EIO", "1"], "invalid choice"),
        (["backing-write", "EBOGUS", "1"], "unknown errno"),
        (["backing-write", "NOPE", "1"], "unknown errno"),
        (["backing-write", "99999", "1"], "not an errno"),
        (["backing-write", "-5", "1"], "unknown errno"),
        (["backing-write", "EIO", "-1"], "COUNT"),
        (["backing-write", "EIO", "x"], "COUNT"),
        (["backing-write", "EIO", "1e3"], "COUNT"),
        (["backing-write", "EIO", "99999999999"], "COUNT"),
        (["backing-write", "EIO"], "required"),
        (["backing-write", "EIO", "1", "extra"], "unrecognized"),
    ]
    for args, why in cases:
        assert_error(mounted.ctl("inject", *args), 2, why)
    assert mounted.ping()["injected"] == {}
    mounted.assert_healthy()


@pytest.mark.fuse
def test_inject_arms_and_disarms(mounted: Mounted) -> None:
    armed = (
        ("backing-read", "eio"),
        ("backing-write", "28"),
        ("backing-fsync", "EIO"),
        ("swap-read", "EIO"),
    )
    for kind, err in armed:
        r = mounted.ctl("inject", kind, err, "3")
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert mounted.ping()["injected"] == {
        "backing-read": {"errno": "EIO", "count": 3},
        "backing-write": {"errno": "ENOSPC", "count": 3},
        "backing-fsync": {"errno": "EIO", "count": 3},
        "swap-read": {"errno": "EIO", "count": 3},
    }
    for kind, _ in armed:
        assert mounted.ctl("inject", kind, "EIO", "0").returncode == 0
    assert mounted.ping()["injected"] == {}
    mounted.assert_healthy()


@pytest.mark.fuse
def test_failed_write_back_keeps_data_until_umount_succeeds(mounter: Mounter) -> None:
    m = mounter("wb")
    first = os.urandom(200_000)
    (m.mnt / "first").write_bytes(first)
    r = m.ubcfs("sync", m.mnt)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
    assert (m.backing / "first").read_bytes() == first

    assert m.ctl("inject", "backing-write", "EIO", "1000000").returncode == 0
    second = os.urandom(100_000)
    (m.mnt / "second").write_bytes(second)
    assert_error(m.ubcfs("sync", m.mnt), 1, "write-back failed", "EIO")
    assert_error(m.ubcfs("umount", m.mnt), 1, "write-back failed", "still mounted")
    assert m.mounted
    assert (m.mnt / "second").read_bytes() == second  # nothing lost
    m.assert_healthy()

    assert m.ctl("inject", "backing-write", "EIO", "0").returncode == 0
    r = m.ubcfs("umount", m.mnt)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), m.log_tail()
    assert not is_mounted(m.mnt)
    assert (m.backing / "first").read_bytes() == first
    assert (m.backing / "second").read_bytes() == second


@pytest.mark.fuse
def test_mount_fails_with_the_daemons_reason(dirs: tuple[Path, Path], env: dict[str, str]) -> None:
    """A failure inside the daemon comes back through the ready pipe as one line."""
    require_fuse()
    mnt, backing = dirs
    path = socket_path(str(mnt))
    prepare_dir(os.path.dirname(path))
    with socket.socket(socket.AF_UNIX) as squatter:
        squatter.bind(path)
        squatter.listen()
        try:
            r = run_ubcfs("mount", mnt, "--backing", backing, "--memory", "1M", env=env)
        finally:
            os.unlink(path)
    assert_error(r, 1, "control socket", "another ubcfs daemon")
    assert not is_mounted(mnt)


# --- stat and check -------------------------------------------------------------------------


def _check_contract(snap: dict[str, Any]) -> None:
    assert snap["page_size"] == 4096
    for key in DESIGN_PAGES:
        assert isinstance(snap["pages"][key], int), key
    for key in DESIGN_COUNTERS:
        assert isinstance(snap["counters"][key], int), key
    assert isinstance(snap["swap"]["total"], int)
    assert isinstance(snap["swap"]["used"], int)


@pytest.mark.fuse
def test_stat_json_contract_and_counters_grow(mounted: Mounted) -> None:
    r = mounted.ubcfs("stat", mounted.mnt, "--json")
    assert r.returncode == 0
    assert len(r.stdout.splitlines()) == 1  # exactly one JSON object
    s0 = json.loads(r.stdout)
    _check_contract(s0)
    assert s0["pages"]["total"] == 256  # --memory 1M

    data = os.urandom(3 << 20)  # three times the memory: the pagedaemon must page out
    (mounted.mnt / "big").write_bytes(data)
    s1 = mounted.stat()
    assert (mounted.mnt / "big").read_bytes() == data
    s2 = mounted.stat()
    for before, after in ((s0, s1), (s1, s2)):
        _check_contract(after)
        for key in DESIGN_COUNTERS:
            assert after["counters"][key] >= before["counters"][key], key
    for key in ("faults", "pageouts", "pdwoke", "pdscans", "pdfreed", "ubc_misses", "pmap_enter"):
        assert s1["counters"][key] > s0["counters"][key], key
    assert s2["counters"]["pageins"] > s1["counters"]["pageins"]
    # The vnode cache and the descriptors (issue 8): "big" is cached after its close.
    for key in ("total", "active", "inactive", "max", "loads", "reclaims", "discards"):
        assert isinstance(s2["vnodes"][key], int), key
    assert s2["vnodes"]["total"] >= 1
    assert s2["vnodes"]["max"] == 64  # one per 16 KiB of the 1M of memory
    for key in ("limit", "nofile", "open", "pinned", "mounts", "hits", "misses"):
        assert isinstance(s2["fds"][key], int), key
    # The cache may be empty: the kernel may have forgotten every inode (drop_caches).
    assert 0 <= s2["fds"]["open"] <= s2["fds"]["limit"] < s2["fds"]["nofile"]


@pytest.mark.fuse
def test_stat_human_report(mounted: Mounted) -> None:
    r = mounted.ubcfs("stat", mounted.mnt)
    assert r.returncode == 0, r.stderr
    for text in ("4096 bytes per page", "256 pages managed", "pages free", "pages dirty"):
        assert text in r.stdout
    for key in DESIGN_COUNTERS:
        assert f" {key}\n" in r.stdout + "\n", key


@pytest.mark.fuse
def test_stat_watch_until_ctrl_c(mounted: Mounted) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "ubcfs", "stat", str(mounted.mnt), "--watch", "0.1"],
        env=mounted.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        (mounted.mnt / "f").write_bytes(os.urandom(100_000))
        time.sleep(2.0)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=CMD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert err == ""
    lines = out.splitlines()
    assert "free" in lines[0]
    assert "pgout" in lines[0]
    assert len(lines) >= 3


@pytest.mark.fuse
def test_check_and_sync(mounted: Mounted) -> None:
    r = mounted.ubcfs("check", mounted.mnt)
    assert r.returncode == 0
    assert "no invariant violations" in r.stdout
    data = os.urandom(50_000)
    fd = os.open(mounted.mnt / "open", os.O_CREAT | os.O_WRONLY, 0o644)
    try:
        os.write(fd, data)
        r = mounted.ubcfs("sync", mounted.mnt)
        assert (r.returncode, r.stdout, r.stderr) == (0, "", "")
        assert (mounted.backing / "open").read_bytes() == data  # written while still open
    finally:
        os.close(fd)


# --- the control channel --------------------------------------------------------------------


def exchange(path: str, payload: bytes, timeout: float = 20.0) -> list[dict[str, Any]]:
    """Send raw bytes, close our side, return the reply lines (an empty list if the daemon
    dropped us)."""
    data = b""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(timeout)
        s.connect(path)
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
        with contextlib.suppress(ConnectionResetError):
            while chunk := s.recv(65536):
                data += chunk
    return [json.loads(line) for line in data.splitlines()]


BAD_REQUESTS = [
    b"this is not json\n",
    b"\n",
    b"\xff\xfe\x00garbage\n",
    b'{"cmd": "no-such-command"}\n',
    b'{"cmd": ""}\n',
    b'{"cmd": 5}\n',
    b'{"args": {}}\n',
    b'{"cmd": "stat", "args": [1, 2]}\n',
    b'{"cmd": "stat", "args": {"unexpected": 1}}\n',
    b'{"cmd": "stat", "extra": 1}\n',
    b'{"cmd": "stat", "args": {"x": NaN}}\n',
    b"[1, 2, 3]\n",
    b'"just a string"\n',
    b"null\n",
    b'{"cmd": "inject", "args": {"kind": 1, "errno": "EIO", "count": 1}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": "EIO", "count": "1"}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": true, "count": 1}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": [5], "count": 1}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": 99999, "count": 1}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": -5, "count": 1}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": "EIO", "count": -5}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": "EIO", "count": 1e999}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": "EIO", "count": 1.5}}\n',
    b'{"cmd": "inject", "args": {"kind": "nope", "errno": "EIO", "count": 1}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "errno": "NOTERR", "count": 1}}\n',
    b'{"cmd": "inject", "args": {"kind": "backing-write", "count": 1}}\n',
    b"[" * 100_000 + b"\n",
    b'{"cmd": "stat", "args": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001 + b"\n",
]


@pytest.mark.fuse
def test_control_channel_survives_bad_requests(mounted: Mounted) -> None:
    path, _ = find_socket(str(mounted.mnt))
    for payload in BAD_REQUESTS:
        replies = exchange(path, payload)
        assert len(replies) == 1, (payload[:60], replies)
        assert replies[0]["ok"] is False, (payload[:60], replies)
        assert isinstance(replies[0]["error"], str)
        assert replies[0]["error"]
        assert "\n" not in replies[0]["error"]
    # Several requests on one connection, good and bad mixed: one reply each, in order.
    replies = exchange(path, b'{"cmd": "ping"}\n{"cmd": "nope"}\n{"cmd": "stat", "args": {}}\n')
    assert [r["ok"] for r in replies] == [True, False, True]
    assert replies[0]["result"]["pid"] == mounted.pid
    _check_contract(replies[2]["result"])
    assert mounted.ping()["injected"] == {}  # no bad inject armed anything
    mounted.assert_healthy()


@pytest.mark.fuse
def test_control_channel_survives_hostile_clients(mounted: Mounted) -> None:
    path, _ = find_socket(str(mounted.mnt))
    # A 1 MiB line: an error reply or a dropped connection, never a stuck daemon.
    replies = exchange(path, b'{"cmd": "' + b"x" * (1 << 20) + b'"}\n')
    assert all(r["ok"] is False for r in replies)
    assert len(replies) <= 1
    mounted.stat()
    # A 1 MiB line without a newline.
    replies = exchange(path, b"y" * (1 << 20))
    assert all(r["ok"] is False for r in replies)
    mounted.stat()
    # Half a line, then a disconnect.
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.sendall(b'{"cmd": "st')
    mounted.stat()
    # Clients that never finish their line (or never send anything) do not block others.
    idle = []
    try:
        for i in range(5):
            s = socket.socket(socket.AF_UNIX)
            idle.append(s)
            s.connect(path)
            if i % 2:
                s.sendall(b'{"cmd": "pi')
        mounted.stat()
        mounted.assert_healthy()
    finally:
        for s in idle:
            s.close()
    # More connections than the daemon serves at once: refused politely, then fine again.
    crowd = []
    try:
        for _ in range(40):
            s = socket.socket(socket.AF_UNIX)
            crowd.append(s)
            s.connect(path)
    finally:
        for s in crowd:
            s.close()
    wait_until(lambda: mounted.ubcfs("stat", mounted.mnt).returncode == 0, 10, "stat to work")
    mounted.assert_healthy()


# --- unmounting writes everything back ------------------------------------------------------


def write_tree(mnt: Path) -> dict[str, bytes]:
    """Files of awkward sizes, rewritten, truncated and appended to; returns the expected
    content by relative path."""
    files: dict[str, bytes] = {}
    for size in (0, 1, 4095, 4096, 4097, 65536 + 17, 300_000, 3 << 20):
        files[f"f{size}"] = os.urandom(size)
    files["dir/sub/nested"] = os.urandom(123_457)
    (mnt / "dir" / "sub").mkdir(parents=True)
    for name, data in files.items():
        (mnt / name).write_bytes(data)
    with open(mnt / "f300000", "r+b") as f:  # overwrite the middle
        f.seek(100_000)
        patch = os.urandom(50_000)
        f.write(patch)
        files["f300000"] = files["f300000"][:100_000] + patch + files["f300000"][150_000:]
    os.truncate(mnt / "f4097", 10)
    files["f4097"] = files["f4097"][:10]
    with open(mnt / "f1", "ab") as f:
        tail = os.urandom(9000)
        f.write(tail)
        files["f1"] += tail
    return files


def assert_tree(backing: Path, files: dict[str, bytes]) -> None:
    found = {str(p.relative_to(backing)) for p in backing.rglob("*") if p.is_file()}
    assert found == set(files)
    for name, data in files.items():
        got = (backing / name).read_bytes()
        assert len(got) == len(data), name
        assert got == data, name


@pytest.mark.fuse
def test_umount_writes_everything_back(mounter: Mounter) -> None:
    m = mounter("u")
    files = write_tree(m.mnt)
    r = m.ubcfs("umount", m.mnt)
    assert (r.returncode, r.stdout, r.stderr) == (0, "", ""), m.log_tail()
    assert not m.mounted
    assert not pid_alive(m.pid)
    assert_tree(m.backing, files)
    assert_error(m.ubcfs("stat", m.mnt), 1, "not a ubcfs mount")
    assert not os.path.exists(socket_path(str(m.mnt)))


@pytest.mark.fuse
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "fusermount3"])
def test_signal_or_external_unmount_writes_everything_back(mounter: Mounter, how: str) -> None:
    m = mounter("s")
    files = write_tree(m.mnt)
    if how == "fusermount3":
        subprocess.run(["fusermount3", "-u", str(m.mnt)], check=True, timeout=CMD_TIMEOUT)
    else:
        os.kill(m.pid, signal.Signals[how])
    wait_until(lambda: not pid_alive(m.pid), 60, "the daemon to exit")
    wait_until(lambda: not m.mounted, 10, "the mount to go away")
    assert_tree(m.backing, files)
    log = m.log_tail(100)
    assert "final write-back done" in log, log
    assert "Traceback" not in log, log


@pytest.mark.fuse
def test_default_store(mounter: Mounter) -> None:
    m = mounter("d", backing=False)
    assert m.backing.is_dir()
    assert m.ping()["options"]["default_store"] is True
    (m.mnt / "hello").write_bytes(b"hello, store\n")
    r = m.ubcfs("umount", m.mnt)
    assert r.returncode == 0, r.stderr
    assert (m.backing / "hello").read_bytes() == b"hello, store\n"


@pytest.mark.fuse
def test_foreground_mount_stops_on_ctrl_c(mounter: Mounter, tmp_path: Path) -> None:
    require_fuse()
    mnt, backing = tmp_path / "fg", tmp_path / "fg-backing"
    mnt.mkdir()
    backing.mkdir()
    mounter.paths.append(mnt)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ubcfs", "mount", str(mnt), "--backing", str(backing),
         "--memory", "1M", "--foreground"],
        env=mounter.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_until(lambda: is_mounted(mnt) or proc.poll() is not None, 30, "the mount")
        m = mounter.adopt(mnt, backing)
        assert m.pid == proc.pid  # the CLI became the daemon
        (mnt / "fg").write_bytes(b"foreground\n")
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=CMD_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert "final write-back done" in err
    assert not is_mounted(mnt)
    assert (backing / "fg").read_bytes() == b"foreground\n"


@pytest.mark.fuse
def test_mount_sh(mounter: Mounter, tmp_path: Path) -> None:
    require_fuse()
    mnt, backing = tmp_path / "sh", tmp_path / "sh-backing"
    mnt.mkdir()
    backing.mkdir()
    mounter.paths.append(mnt)
    r = subprocess.run(
        ["bash", str(REPO / "mount.sh"), str(mnt), "--backing", str(backing), "--memory", "1M"],
        env=mounter.env, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    m = mounter.adopt(mnt, backing)
    m.assert_healthy()
