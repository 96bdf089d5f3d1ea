"""Fixtures for tests on real mounts (style.md section 7; after pyfuse3 ``test/util.py`` and
s3ql ``t4_fuse.py``).

* ``mounted``: one mount made by the real CLI (``ubcfs mount MNT --backing DIR --memory 1M``,
  so the pagedaemon works all the time) in a temp dir.  At teardown ``ubcfs check`` and
  ``ubcfs umount`` must both exit 0.
* ``mounter``: makes more mounts (``mounter(name, *options)``), for tests that unmount on
  their own or need special options; every mount it made is cleaned up the same way.
  ``mounter(name, "--tmpfs")`` makes a tmpfs mount (``TMPFS_SWAP`` of swap unless the
  options give ``--swap``): then ``Mounted.tmpfs`` is true and ``backing`` does not exist.
* ``any_mounted``: ``mounted`` once over a backing directory and once as a tmpfs, for the
  tests whose behaviour both modes share (a module may rename it ``mounted`` for all of
  its tests, as test_workloads.py does); ``Mounted.store(path)`` is where a file of the
  mount lies on the backing directory after ``ubcfs sync``, None for a tmpfs.

Whatever happens -- a failed assertion, a dead daemon -- teardown never leaves a mount
behind: after the polite unmount it falls back to ``fusermount3 -u -z`` and SIGKILL.

Without FUSE (no ``/dev/fuse`` or no ``fusermount3``) the tests are skipped on a developer's
machine but fail under ``CI=true``: the mounted tests are the point of the suite.

Every CLI run gets its own XDG_STATE_HOME and XDG_DATA_HOME, so logs and the default store
stay in the test's temp dirs.

With ``UBCFS_TEST_DROP_CACHES=1`` in the environment, a thread writes ``2`` to
``/proc/sys/vm/drop_caches`` every ``UBCFS_TEST_DROP_CACHES_INTERVAL`` seconds (default 0.2)
for the whole session, so the kernel forgets dentries and inodes of every mount all the
time and the daemons get FORGETs in the middle of everything (issue 8).  It needs root;
without it every test here is skipped with the reason.  ``drop_caches()`` does it once, for
tests that need it at a given moment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ubcfs.ctl.protocol import mount_entry

CMD_TIMEOUT = 120.0
MEMORY = "1M"
TMPFS_SWAP = "256M"  # tmpfs mounts with MEMORY of memory keep their data in swap
MODES = ("backing", "tmpfs")
DROP_CACHES = "/proc/sys/vm/drop_caches"
DROP_CACHES_ENV = "UBCFS_TEST_DROP_CACHES"
DROP_CACHES_INTERVAL_ENV = "UBCFS_TEST_DROP_CACHES_INTERVAL"


def fuse_missing() -> str | None:
    """Why real mounts cannot be made here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as e:
        return f"cannot open /dev/fuse: {e.strerror}"
    return None


def require_fuse() -> None:
    """Skip without FUSE -- or fail, under CI=true."""
    why = fuse_missing()
    if why is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"FUSE is required under CI=true: {why}")
    pytest.skip(f"no FUSE: {why}")


def require_root(why: str) -> None:
    """Skip unless running as root."""
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


def drop_caches() -> None:
    """``echo 2 > /proc/sys/vm/drop_caches``: the kernel forgets unused dentries and inodes
    (FUSE sends FORGETs), and the page cache stays.  Root only."""
    with open(DROP_CACHES, "w") as f:
        f.write("2")


class DropCachesLoop:
    """A thread that calls ``drop_caches()`` every ``interval`` seconds until ``stop()``.

    A failing write is remembered (``errors``) and ends the loop; ``drops`` counts the
    successful ones.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.drops = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="drop-caches", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                drop_caches()
            except OSError as e:
                self.errors.append(f"{DROP_CACHES}: {e}")
                return
            self.drops += 1

    def start(self) -> DropCachesLoop:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop and wait for the thread (a drop in progress finishes first)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise AssertionError(f"the drop_caches thread did not stop within {timeout:g} s")


@pytest.fixture(scope="session", autouse=True)
def _drop_caches_loop() -> Iterator[DropCachesLoop | None]:
    """With UBCFS_TEST_DROP_CACHES=1: drop dentries and inodes in a loop for the whole run."""
    if os.environ.get(DROP_CACHES_ENV, "") in ("", "0"):
        yield None
        return
    if os.geteuid() != 0:
        pytest.skip(f"{DROP_CACHES_ENV}=1 needs root to write {DROP_CACHES}")
    try:
        interval = float(os.environ.get(DROP_CACHES_INTERVAL_ENV, "0.2"))
    except ValueError:
        pytest.fail(f"{DROP_CACHES_INTERVAL_ENV} must be a number of seconds")
    drop_caches()  # fail here, not in the thread, if it cannot work at all
    loop = DropCachesLoop(interval).start()
    try:
        yield loop
    finally:
        loop.stop()
    assert not loop.errors, f"the drop_caches loop failed: {loop.errors[0]}"


def ubcfs_env(base: Path) -> dict[str, str]:
    """The environment for CLI runs: state and default store under ``base``."""
    env = dict(os.environ)
    env["XDG_STATE_HOME"] = str(base / "state")
    env["XDG_DATA_HOME"] = str(base / "data")
    return env


def run_ubcfs(
    *args: str | Path,
    env: dict[str, str],
    timeout: float = CMD_TIMEOUT,
    prefix: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run the ``ubcfs`` CLI (as ``python -m ubcfs``, after the command ``prefix``, e.g.
    ``prlimit --nofile=...``) and capture its output."""
    return subprocess.run(
        [*prefix, sys.executable, "-m", "ubcfs", *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def is_mounted(path: Path) -> bool:
    """Something is mounted on ``path`` (read from the mount table, never touching it)."""
    return mount_entry(str(path)) is not None


def pid_alive(pid: int) -> bool:
    """``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def wait_until(cond: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


class Mounted:
    """A live ubcfs mount made by the CLI.

    Attributes:
        mnt: the mountpoint.  backing: the backing directory.  pid: the daemon.
        env: the environment its CLI commands run with.
    """

    def __init__(self, mnt: Path, backing: Path, env: dict[str, str], tmpfs: bool = False) -> None:
        self.mnt = mnt
        self.backing = backing
        self.env = env
        self.tmpfs = tmpfs
        self.pid = 0
        self.log: str | None = None

    def ubcfs(
        self, *args: str | Path, timeout: float = CMD_TIMEOUT
    ) -> subprocess.CompletedProcess[str]:
        """Run a ``ubcfs`` CLI command with this mount's environment."""
        return run_ubcfs(*args, env=self.env, timeout=timeout)

    def ctl(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return self.ubcfs("ctl", self.mnt, *args)

    def stat(self) -> dict[str, Any]:
        """``ubcfs stat --json``, checked."""
        r = self.ubcfs("stat", self.mnt, "--json")
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout)
        return out

    def ping(self) -> dict[str, Any]:
        r = self.ctl("ping")
        assert r.returncode == 0, r.stderr
        out: dict[str, Any] = json.loads(r.stdout.splitlines()[-1])
        return out

    def store(self, path: Path) -> Path | None:
        """Where ``path`` (on the mount) lies in the backing directory, after ``ubcfs
        sync`` (which this runs); None for a tmpfs, whose data is nowhere else."""
        if self.tmpfs:
            return None
        r = self.ubcfs("sync", self.mnt)
        assert r.returncode == 0, r.stderr
        return self.backing / path.relative_to(self.mnt)

    @property
    def mounted(self) -> bool:
        return is_mounted(self.mnt)

    def log_tail(self, n: int = 30) -> str:
        """The end of the daemon's log, for assertion messages."""
        if self.log is None:
            return "(no log)"
        try:
            return "\n".join(Path(self.log).read_text(errors="replace").splitlines()[-n:])
        except OSError as e:
            return f"(log unreadable: {e})"

    def assert_healthy(self) -> None:
        """The mount answers: a file round-trips, stat and check succeed."""
        assert self.mounted, f"{self.mnt} is not mounted\n{self.log_tail()}"
        assert pid_alive(self.pid), f"daemon {self.pid} died\n{self.log_tail()}"
        probe = self.mnt / ".health-probe"
        data = os.urandom(10000)
        probe.write_bytes(data)
        assert probe.read_bytes() == data
        probe.unlink()
        self.stat()
        r = self.ubcfs("check", self.mnt)
        assert r.returncode == 0, f"{r.stdout}{r.stderr}"


class Mounter:
    """Makes mounts under one temp dir and cleans them all up."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.env = ubcfs_env(base)
        self.mounts: list[Mounted] = []
        self.paths: list[Path] = []

    def __call__(
        self,
        name: str = "m",
        *options: str,
        memory: str = MEMORY,
        backing: bool = True,
        nofile: int | None = None,
    ) -> Mounted:
        """Mount ``<base>/<name>/mnt`` with ``options`` over ``<base>/<name>/backing`` (or,
        with ``backing=False``, over the default store of this test's XDG_DATA_HOME).
        ``nofile``: run ``ubcfs mount``, and so the daemon it spawns, under
        ``prlimit --nofile=N:N`` (soft and hard RLIMIT_NOFILE)."""
        require_fuse()
        top = self.base / name
        mnt = top / "mnt"
        mnt.mkdir(parents=True)
        self.paths.append(mnt)
        tmpfs = "--tmpfs" in options
        if tmpfs:
            store = top / "no-backing"  # a tmpfs has none
            if "--swap" not in options:
                options = (*options, "--swap", TMPFS_SWAP)
        elif backing:
            store = top / "backing"
            store.mkdir()
            options = ("--backing", str(store), *options)
        else:
            store = Path(self.env["XDG_DATA_HOME"]) / "ubcfs" / "store"
        prefix = () if nofile is None else ("prlimit", f"--nofile={nofile}:{nofile}")
        r = run_ubcfs("mount", mnt, "--memory", memory, *options, env=self.env, prefix=prefix)
        assert r.returncode == 0, f"mount failed: {r.stderr}"
        assert r.stderr == "", r.stderr
        assert r.stdout == "", r.stdout
        return self.adopt(mnt, store, tmpfs)

    def adopt(self, mnt: Path, backing: Path, tmpfs: bool = False) -> Mounted:
        """Track a mount made some other way (mount.sh, --foreground) for cleanup."""
        if mnt not in self.paths:
            self.paths.append(mnt)
        m = Mounted(mnt, backing, self.env, tmpfs)
        self.mounts.append(m)
        assert os.path.ismount(mnt)
        info = m.ping()
        m.pid = info["pid"]
        m.log = info["log"]
        return m

    def cleanup(self) -> None:
        """``check`` and ``umount`` every live mount (asserting exit 0), then force away
        whatever is left; the first failure is raised after everything was cleaned."""
        failures: list[str] = []
        for m in self.mounts:
            if not m.mounted or not pid_alive(m.pid):
                continue  # the test unmounted it (or killed it: forced below)
            try:
                r = m.ubcfs("check", m.mnt)
                if r.returncode != 0:
                    failures.append(
                        f"ubcfs check {m.mnt}: exit {r.returncode}: {r.stdout}{r.stderr}"
                    )
                r = m.ubcfs("umount", m.mnt)
                if r.returncode != 0:
                    failures.append(f"ubcfs umount {m.mnt}: exit {r.returncode}: {r.stderr}")
            except subprocess.TimeoutExpired as e:
                failures.append(f"{m.mnt}: {e}")
        for path in self.paths:
            if is_mounted(path):
                failures.append(f"{path} still mounted after umount; forcing")
                subprocess.run(
                    ["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True
                )
        for m in self.mounts:
            if m.pid and pid_alive(m.pid):
                failures.append(f"daemon {m.pid} still running after umount; killing")
                with contextlib.suppress(OSError):
                    os.kill(m.pid, signal.SIGKILL)
                with contextlib.suppress(AssertionError):
                    wait_until(lambda pid=m.pid: not pid_alive(pid), 10, "the daemon to die")
        for path in self.paths:  # a killed daemon's mount, if auto_unmount did not get it
            if is_mounted(path):
                subprocess.run(
                    ["fusermount3", "-u", "-z", str(path)], check=False, capture_output=True
                )
        assert not failures, "; ".join(failures)


@pytest.fixture
def mounter(tmp_path: Path) -> Iterator[Mounter]:
    """Make mounts with ``mounter(name, *options)``; all are unmounted at teardown."""
    mk = Mounter(tmp_path)
    try:
        yield mk
    finally:
        mk.cleanup()


@pytest.fixture
def mounted(mounter: Mounter) -> Mounted:
    """One mount with 1M of memory over an empty backing directory."""
    return mounter("m")


@pytest.fixture(params=MODES)
def any_mounted(request: pytest.FixtureRequest, mounter: Mounter) -> Mounted:
    """``mounted`` over a backing directory, then a tmpfs with ``TMPFS_SWAP`` of swap."""
    if request.param == "tmpfs":
        return mounter("m", "--tmpfs")
    return mounter("m")


@pytest.fixture
def world_mounter() -> Iterator[Mounter]:
    """Mounts (made with ``--allow-other``) under a directory every user may traverse
    (pytest's tmp dirs are 0700), for tests that act as a second user; root only."""
    require_root("acts as a second user")
    base = Path(tempfile.mkdtemp(prefix="ubcfs-world-", dir="/tmp"))
    base.chmod(0o755)
    mk = Mounter(base)
    try:
        yield mk
    finally:
        try:
            mk.cleanup()
        finally:
            shutil.rmtree(base, ignore_errors=True)
