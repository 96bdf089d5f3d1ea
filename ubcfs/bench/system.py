"""What ``ubcfs bench`` needs of the machine: child processes that never outlive an
interrupted run, Ctrl-C deferred while a mount is made or undone, the host's page cache,
the mount table, a process's CPU time, and the machine's description.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, Final

import ubcfs

DROP_CACHES: Final = "/proc/sys/vm/drop_caches"
KILL_WAIT: Final = 10.0
CODE: Final = ("ubcfs", "genfs", "pagers")  # the directories whose changes make "dirty"


class JobError(Exception):
    """A command or a job failed; the message is one line."""


def run_cmd(
    argv: Sequence[str],
    *,
    timeout: float,
    cwd: str | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in a session of its own, capturing its output.  The child and every
    process it started are killed (SIGKILL to its process group) when this is left by an
    exception -- Ctrl-C, the timeout -- so that nothing of an interrupted job runs on.

    Raises:
        JobError: the program does not exist or ran out of time.
    """
    try:
        proc = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
    except OSError as e:
        raise JobError(f"cannot run {argv[0]}: {e.strerror}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        raise JobError(f"{' '.join(argv[:3])} did not finish within {timeout:g} s") from None
    except BaseException:
        _kill_group(proc)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.communicate(timeout=KILL_WAIT)


def last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The last non-empty line of a failed command's output, for a one-line message."""
    for text in (proc.stderr, proc.stdout):
        lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
        if lines:
            return lines[-1]
    return f"exit status {proc.returncode}"


class Interrupts:
    """SIGINT and SIGTERM as ``KeyboardInterrupt``, except inside ``critical()``, where the
    signal is remembered and raised when the block ends: a mount being made or undone is
    never left half-way (a daemon that became ready after we gave up on it would be a
    mount nobody unmounts)."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending = False
        self.received = False
        self._old: dict[int, Any] = {}

    def install(self) -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old[sig] = signal.signal(sig, self._handler)

    def ignore(self) -> None:
        """From now on the signals are ignored (the clean-up runs to its end)."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)

    def restore(self) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = True
        if self.depth:
            self.pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def critical(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
        if not self.depth and self.pending:
            self.pending = False
            raise KeyboardInterrupt


def is_root() -> bool:
    return os.geteuid() == 0


def drop_host_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches`` (root only); whether it was done."""
    os.sync()
    try:
        with open(DROP_CACHES, "w") as f:
            f.write("3\n")
    except OSError:
        return False
    return True


def mount_points() -> list[str]:
    """Every mount point in /proc/mounts (octal escapes decoded)."""
    try:
        with open("/proc/mounts", "rb") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        parts = line.split()
        if len(parts) > 1:
            out.append(parts[1].decode("unicode_escape", "replace"))
    return out


def mounted_under(root: str) -> list[str]:
    prefix = os.path.realpath(root).rstrip("/") + "/"
    return [p for p in mount_points() if p.startswith(prefix)]


def cpu_seconds(pid: int, main_thread: bool = False) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads; with
    ``main_thread``, only the thread whose id is ``pid``), None if gone."""
    path = f"/proc/{pid}/task/{pid}/stat" if main_thread else f"/proc/{pid}/stat"
    try:
        with open(path, "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime: fields 14, 15


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


# --- the machine and the code ---------------------------------------------------------


def _read(path: str) -> str:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return ""


def cpu_model() -> str:
    for line in _read("/proc/cpuinfo").splitlines():
        if line.startswith(("model name", "Model", "Processor")) and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def memory_bytes() -> int:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return 0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def tool_version(argv: Sequence[str]) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    lines = (proc.stdout or proc.stderr).strip().splitlines()
    return lines[0].strip() if proc.returncode == 0 and lines else "unknown"


def machine() -> dict[str, Any]:
    return {
        "cores": os.cpu_count(),
        "memory_bytes": memory_bytes(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "python": sys.version.split()[0],
        "fio": tool_version(["fio", "--version"]),
        "cc": tool_version(["cc", "--version"]),
        "root": is_root(),
        "hostname": platform.node(),
    }


def checkout() -> str | None:
    """The git checkout this ``ubcfs`` package was imported from, if it is one."""
    top = Path(ubcfs.__file__).resolve().parent.parent
    return str(top) if (top / ".git").exists() else None


def git_commit() -> dict[str, Any]:
    """The commit of the checkout the code runs from (``unknown`` outside one) and whether
    ubcfs/, genfs/ or pagers/ have uncommitted changes."""
    top = checkout()
    if top is None:
        return {"commit": "unknown", "dirty": None}
    try:
        head = subprocess.run(
            ["git", "-C", top, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
        )
        status = subprocess.run(
            [*("git", "-C", top, "status", "--porcelain", "--untracked-files=no"), "--", *CODE],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}
    if head.returncode != 0:
        return {"commit": "unknown", "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}
