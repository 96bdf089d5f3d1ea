"""The targets of ``ubcfs bench``: where a job's files go, and how they are made cold.

* ``ubcfs``: ``ubcfs mount --backing DIR`` (the UBC over a backing directory);
* ``tmpfs``: ``ubcfs mount --tmpfs`` (file data in anonymous memory, paged to swap);
* ``no-ubc``: ``ubcfs mount --backing DIR --no-ubc`` (the same daemon, data straight to the
  backing files: the cost of FUSE and the daemon without the cache);
* ``kernel-cache``: ``ubcfs mount --backing DIR --kernel-cache`` (the kernel's page cache in
  front of the UBC);
* ``backing``: the backing directory itself, no FUSE (the host file system);
* ``linux-tmpfs``: ``mount -t tmpfs`` (root only).

Every mount lives in the run's temp dir with the run's ``--memory`` and ``--page-size``, is
registered in a ``Mounts`` while it exists, and is undone by ``ubcfs umount`` -- or, when
that fails, ``fusermount3 -u`` and ``-u -z`` -- whatever ends the run.  Mounting and
unmounting are never interrupted half-way (``Interrupts.critical``).

"Cold" (``cold()``) means, per target: for the ubcfs mounts over a backing directory,
unmounted and mounted again (the UBC starts empty) and, as root, the host's page cache
dropped too (the backing file is read from the disk); for ``backing``, the host's page
cache dropped (root only); a ``tmpfs`` or a ``linux-tmpfs`` has no cold state (its data is
only in memory or swap, and unmounting loses it), so the cold read is skipped there.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import time
from typing import Any, Final

import ubcfs
from ubcfs.bench import system
from ubcfs.bench.system import Interrupts, JobError
from ubcfs.ctl import client
from ubcfs.ctl.client import ControlClient, CtlError

MOUNT_TIMEOUT: Final = 120.0
UMOUNT_TIMEOUT: Final = 300.0
DAEMON_EXIT_WAIT: Final = 15.0

_DAEMON_FLAGS: Final = {
    "ubcfs": (),
    "tmpfs": ("--tmpfs",),
    "no-ubc": ("--no-ubc",),
    "kernel-cache": ("--kernel-cache",),
}


def child_env(state_dir: str) -> dict[str, str]:
    """The environment of the ``ubcfs`` commands we run: our package first on PYTHONPATH
    (the same code as ours), logs and swap files under ``state_dir``."""
    env = dict(os.environ)
    top = os.path.dirname(os.path.dirname(os.path.abspath(ubcfs.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (top, env.get("PYTHONPATH", "")) if p)
    env["XDG_STATE_HOME"] = state_dir
    return env


def ubcfs_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "ubcfs", *args]


def round_up(n: int, unit: int) -> int:
    return -(-n // unit) * unit


class Target:
    """One target (or one variant mount of a job) in one round.

    Args:
        kind: a name of ``config.TARGETS``: what is mounted.
        label: the column it is reported under (the target's name, or a variant's).
        base: a new directory for its mountpoint and backing directory.
        extra: more ``ubcfs mount`` options (``--pdpolicy clockpro``, ...).
    """

    def __init__(
        self,
        kind: str,
        label: str,
        base: str,
        *,
        memory: int,
        page_size: int,
        size: int,
        env: dict[str, str],
        interrupts: Interrupts,
        mounts: Mounts,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.kind = kind
        self.label = label
        self.base = base
        self.memory = memory
        self.page_size = page_size
        self.size = size
        self.env = env
        self.interrupts = interrupts
        self.mounts = mounts
        self.extra = extra
        self.mnt = os.path.join(base, "mnt")
        self.backing = os.path.join(base, "backing")
        self.ctl: ControlClient | None = None
        self.pid = 0
        self.info: dict[str, Any] = {}
        self.mounted = False
        os.makedirs(self.mnt)
        if self.has_backing:
            os.makedirs(self.backing)

    @property
    def daemon(self) -> bool:
        """A ubcfs mount (it has a control channel, counters and a daemon process)."""
        return self.kind in _DAEMON_FLAGS

    @property
    def has_backing(self) -> bool:
        return self.kind in ("ubcfs", "no-ubc", "kernel-cache", "backing")

    @property
    def directory(self) -> str:
        """Where the jobs put their files."""
        return self.backing if self.kind == "backing" else self.mnt

    def swap_size(self) -> int:
        """A ``tmpfs``'s swap: room for every job's files besides its memory."""
        return round_up(2 * self.memory + 4 * self.size, self.page_size)

    # --- mount and unmount --------------------------------------------------------------

    def mount(self) -> None:
        with self.interrupts.critical():
            self.mounts.live[self.mnt] = self
            if self.kind == "backing":
                self.mounted = True
                return
            if self.kind == "linux-tmpfs":
                self._mount_linux_tmpfs()
                return
            store = ["--tmpfs", "--swap", str(self.swap_size())] if self.kind == "tmpfs" else []
            if self.has_backing:
                store = ["--backing", self.backing]
            argv = ubcfs_argv(
                "mount",
                self.mnt,
                *store,
                "--memory",
                str(self.memory),
                "--page-size",
                str(self.page_size),
                *_DAEMON_FLAGS[self.kind],
                *self.extra,
            )
            proc = system.run_cmd(argv, timeout=MOUNT_TIMEOUT, env=self.env)
            if proc.returncode != 0:
                self.mounts.live.pop(self.mnt, None)
                raise JobError(f"{self.label}: ubcfs mount failed: {system.last_line(proc)}")
            self.mounted = True
            try:
                self.ctl = client.connect(self.mnt)
                info = self.ctl.request("ping")
            except CtlError as e:
                raise JobError(f"{self.label}: the new mount does not answer: {e}") from None
            self.info = info if isinstance(info, dict) else {}
            pid = self.info.get("pid")
            self.pid = pid if isinstance(pid, int) else 0

    def _mount_linux_tmpfs(self) -> None:
        size = round_up(4 * self.size + (256 << 20), 1 << 20)
        argv = ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "ubcfs-bench", self.mnt]
        proc = system.run_cmd(argv, timeout=MOUNT_TIMEOUT)
        if proc.returncode != 0:
            self.mounts.live.pop(self.mnt, None)
            raise JobError(f"{self.label}: mount -t tmpfs failed: {system.last_line(proc)}")
        self.mounted = True

    def umount(self) -> None:
        """Unmount (writing everything back, for ubcfs); a failure is raised after the
        mount was forced away."""
        with self.interrupts.critical():
            error = self._umount()
        if error:
            raise JobError(f"{self.label}: {error}")

    def _umount(self) -> str | None:
        if not self.mounted:
            return None
        self.mounted = False
        self.mounts.live.pop(self.mnt, None)
        self.ctl = None
        if self.kind == "backing":
            return None
        if self.kind == "linux-tmpfs":
            proc = system.run_cmd(["umount", self.mnt], timeout=UMOUNT_TIMEOUT)
            if proc.returncode == 0:
                return None
            system.run_cmd(["umount", "-l", self.mnt], timeout=UMOUNT_TIMEOUT)
            return f"umount failed ({system.last_line(proc)}); unmounted lazily"
        error = None
        try:
            proc = system.run_cmd(
                ubcfs_argv("umount", self.mnt), timeout=UMOUNT_TIMEOUT, env=self.env
            )
            if proc.returncode != 0:
                error = f"ubcfs umount failed: {system.last_line(proc)}"
        except JobError as e:
            error = str(e)
        if error is not None or self.mnt in system.mount_points():
            force_fuse_umount(self.mnt)
        self._reap_daemon()
        return error

    def _reap_daemon(self) -> None:
        """Our daemon must be gone once its mount is: SIGTERM, then SIGKILL, if not."""
        if not self.pid:
            return
        deadline = time.monotonic() + DAEMON_EXIT_WAIT
        for sig in (signal.SIGTERM, signal.SIGKILL):
            while system.alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if not system.alive(self.pid):
                break
            with contextlib.suppress(OSError):
                os.kill(self.pid, sig)
            deadline = time.monotonic() + DAEMON_EXIT_WAIT
        self.pid = 0

    def force_umount(self) -> None:
        """Clean-up after an error or Ctrl-C: unmount however it goes, never raise."""
        with contextlib.suppress(JobError, OSError):
            self._umount()
        if self.mnt in system.mount_points():
            force_fuse_umount(self.mnt)

    def cold(self) -> str:
        """Make the file data cold (see the module docstring); what was done.

        Raises:
            JobError: the target has no cold state, or the remount failed.
        """
        if self.kind in ("tmpfs", "linux-tmpfs"):
            raise JobError(f"{self.label}: no cold state (the data lives only in memory)")
        if self.kind == "backing":
            if not system.drop_host_caches():
                raise JobError("backing: dropping the host's page cache needs root")
            return "host page cache dropped"
        self.umount()
        dropped = system.drop_host_caches()
        self.mount()
        return "remounted" + (", host page cache dropped" if dropped else "")

    # --- while mounted ----------------------------------------------------------------

    def request(self, cmd: str, timeout: float | None = 60.0) -> Any:
        if self.ctl is None:
            raise JobError(f"{self.label}: not a ubcfs mount")
        try:
            return self.ctl.request(cmd, timeout=timeout)
        except CtlError as e:
            raise JobError(str(e)) from None

    def stat(self) -> dict[str, Any]:
        snap = self.request("stat")
        if not isinstance(snap, dict):
            raise JobError(f"{self.label}: malformed stat reply")
        return snap

    def counters(self) -> dict[str, int]:
        """The VM counters of ``ubcfs stat --json`` (empty when not a ubcfs mount)."""
        if self.ctl is None:
            return {}
        got = self.stat().get("counters", {})
        return {k: v for k, v in got.items() if isinstance(v, int) and not isinstance(v, bool)}

    def sync(self) -> None:
        """Everything written so far on its way to its store (between jobs)."""
        if self.ctl is not None:
            self.request("sync", timeout=None)
        os.sync()

    def remove(self) -> None:
        """Delete the (unmounted) directories."""
        if not self.mounted:
            shutil.rmtree(self.base, ignore_errors=True)


def force_fuse_umount(mnt: str) -> None:
    for argv in (["fusermount3", "-u", mnt], ["fusermount3", "-u", "-z", mnt]):
        if mnt not in system.mount_points():
            return
        with contextlib.suppress(JobError):
            system.run_cmd(argv, timeout=UMOUNT_TIMEOUT)


class Mounts:
    """Every mount of a run that exists, for the clean-up."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.live: dict[str, Target] = {}

    def cleanup(self) -> list[str]:
        """Unmount everything; the mount points under the root still there afterwards."""
        for t in list(self.live.values()):
            t.force_umount()
        for mnt in system.mounted_under(self.root):
            force_fuse_umount(mnt)
            if mnt in system.mount_points():
                with contextlib.suppress(JobError):
                    system.run_cmd(["umount", "-l", mnt], timeout=UMOUNT_TIMEOUT)
        return system.mounted_under(self.root)
