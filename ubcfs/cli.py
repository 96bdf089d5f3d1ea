"""The ``ubcfs`` command line (design.md section 4).

::

    ubcfs mount MOUNTPOINT [--backing DIR | --tmpfs] [--memory SIZE] [--swap SIZE]
                [--swap-file PATH] [--page-size SIZE] [--hist N] [--no-ubc]
                [--no-extend-fastpath] [--kernel-cache] [--allow-other] [--foreground]
                [--debug]
    ubcfs umount MOUNTPOINT
    ubcfs sync MOUNTPOINT
    ubcfs stat MOUNTPOINT [--json] [--watch SECONDS]
    ubcfs check MOUNTPOINT
    ubcfs top MOUNTPOINT [--interval SECONDS] [--once]
    ubcfs stress truncate MOUNTPOINT [--seconds N] [--seed S] [--processes P] [--files F]
                [--ops N] [--json]
    ubcfs bench [--size SIZE] [--memory SIZE] [--page-size SIZE] [--jobs LIST]
                [--targets LIST] [--policies LIST] [--rounds N] [--out DIR]
    ubcfs bench --compare A.json B.json
    ubcfs ctl MOUNTPOINT ping
    ubcfs ctl MOUNTPOINT hist [--follow] [--json] [--limit N]
    ubcfs ctl MOUNTPOINT inject backing-write|backing-read|backing-fsync|backing-fallocate|
                swap-write|swap-read ERRNO COUNT
    ubcfs ctl MOUNTPOINT proc-new|mmap|munmap|mlock|munlock|vslock|vsunlock|load|store|
                ptrace-write|fork|exit|procs ...   (ubcfs.ctl.proc_cli)

This module talks to a running daemon only through the control channel
(``ubcfs.ctl.client``); it never imports pyfuse3, trio or the VM, so it starts fast and a
broken mount cannot break it.  ``mount`` validates everything, then spawns
``python -m ubcfs.daemon`` in a new session with a readiness pipe and returns when the
daemon reports that the mount serves requests (or with the daemon's one-line reason).

Errors are one line on stderr, ``ubcfs: error: ...``, never a traceback.  Exit status: 0 ok;
2 the command line is wrong (bad value, a path that does not exist or is not a directory, an
already mounted mountpoint, options that do not go together); 1 the command failed (no FUSE, not
a ubcfs mount, the daemon could not mount, data could not be written back, ``check`` found
violations); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, Final, NoReturn

import ubcfs
from ubcfs import __version__, options
from ubcfs.ctl import client, proc_cli
from ubcfs.ctl.client import CtlError
from ubcfs.options import MountOptions, SetupError, UsageError

MOUNT_TIMEOUT: Final = 60.0  # seconds for the daemon to report ready
EXIT_TIMEOUT: Final = 60.0  # seconds for the daemon to exit after unmounting
CHECK_TIMEOUT: Final = 600.0
LOG_ROTATE_SIZE: Final = 10 << 20
INJECT_KINDS: Final = (
    "backing-write",
    "backing-read",
    "backing-fsync",
    "backing-fallocate",
    "swap-write",
    "swap-read",
)
WATCH_HEADER_EVERY: Final = 20


class CommandFailedError(Exception):
    """The command failed (exit 1); the message is one line."""


class _Parser(argparse.ArgumentParser):
    """argparse with our one-line error instead of usage + message + exit."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ubcfs",
        description="A FUSE filesystem whose page cache is a model of NetBSD's UVM/UBC.",
    )
    parser.add_argument("--version", action="version", version=f"ubcfs {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser(
        "mount",
        help="mount (returns when the mount serves requests)",
        epilog="examples: ubcfs mount /mnt/ubc --backing /srv/data --memory 64M\n"
        "          ubcfs mount /mnt/t --tmpfs --memory 32M --swap 256M --pdpolicy clockpro",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    options.add_mount_arguments(p)
    p.set_defaults(func=cmd_mount)

    for name, func, text in (
        ("umount", cmd_umount, "write everything back, unmount, wait for the daemon to exit"),
        ("sync", cmd_sync, "write back every dirty page"),
        ("check", cmd_check, "run the invariant checker in the daemon; exit 0 iff clean"),
    ):
        p = sub.add_parser(name, help=text, epilog=f"example: ubcfs {name} /mnt/ubc")
        p.add_argument("mountpoint", metavar="MOUNTPOINT")
        p.set_defaults(func=func)

    p = sub.add_parser(
        "stat",
        help="vmstat-style report of page states and counters",
        epilog="examples: ubcfs stat /mnt/ubc; ubcfs stat /mnt/ubc --watch 1;"
        " ubcfs stat /mnt/ubc --json | jq .pdpolicy",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--watch", metavar="SECONDS", help="repeat every SECONDS until Ctrl-C")
    p.set_defaults(func=cmd_stat)

    p = sub.add_parser(
        "top",
        help="live full-screen view: page states, rates, the biggest files, processes",
        epilog="example: ubcfs top /mnt/ubc --interval 0.5   (q quits)",
    )
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    p.add_argument("--interval", default="1", help="seconds between samples (default 1)")
    p.add_argument(
        "--once", action="store_true", help="print one frame to stdout instead (no terminal)"
    )
    p.set_defaults(func=cmd_top)

    p = sub.add_parser("stress", help="stress tests of a mount, checked against a model")
    st = p.add_subparsers(dest="stress_command", required=True, metavar="TEST")
    q = st.add_parser(
        "truncate",
        help="random truncation, writes and reads mixed with mmap/mlock/store/ptrace-write/"
        "fork/exit of simulated processes; every result checked, 'check' every second",
        epilog="example: ubcfs stress truncate /mnt/ubc --seconds 60 --seed 7",
    )
    q.add_argument("mountpoint", metavar="MOUNTPOINT")
    q.add_argument("--seconds", default="30", help="how long to run (default 30)")
    q.add_argument("--seed", default=None, help="random seed (default: from the clock)")
    q.add_argument("--processes", default="4", help="simulated processes (default 4)")
    q.add_argument("--files", default="3", help="files (default 3)")
    q.add_argument(
        "--ops", default=None, help="run exactly OPS operations instead (a reproducible run)"
    )
    q.add_argument("--json", action="store_true", help="print the summary as JSON")
    q.set_defaults(func=cmd_stress)

    _add_bench_parser(sub)

    p = sub.add_parser("ctl", help="talk to the daemon: ping, fault injection, simulated processes")
    p.add_argument("mountpoint", metavar="MOUNTPOINT")
    ctl = p.add_subparsers(dest="ctl_command", required=True, metavar="CTL_COMMAND")
    q = ctl.add_parser(
        "ping",
        help="print the daemon's identity as JSON",
        epilog="example: ubcfs ctl /mnt/ubc ping",
    )
    q.set_defaults(func=cmd_ping)
    q = ctl.add_parser(
        "inject",
        help="make the next COUNT backing I/Os of KIND fail",
        epilog="example: ubcfs ctl /mnt/ubc inject backing-write ENOSPC 3",
    )
    q.add_argument("kind", metavar="KIND", choices=INJECT_KINDS, help=" | ".join(INJECT_KINDS))
    q.add_argument("errno", metavar="ERRNO", help="a name like EIO, or a number")
    q.add_argument("count", metavar="COUNT", help="how many I/Os fail (0 disarms)")
    q.set_defaults(func=cmd_inject)
    q = ctl.add_parser(
        "hist",
        help="the event history: recent faults, getpages/putpages, pageouts, swap I/O,"
        " wiring, truncation (NetBSD's UVMHIST)",
        epilog="example: ubcfs ctl /mnt/ubc hist --follow",
    )
    q.add_argument("--follow", action="store_true", help="keep printing new events (Ctrl-C)")
    q.add_argument("--json", action="store_true", help="one JSON object per event")
    q.add_argument("--limit", default=None, help="print at most the last N events first")
    q.set_defaults(func=cmd_hist)
    proc_cli.add_parsers(ctl, _connect)
    return parser


BENCH_EPILOG: Final = """\
examples:
  ubcfs bench --size 32M --rounds 3         every job on every target
  ubcfs bench --jobs seqwrite,randread --targets ubcfs,no-ubc,backing --rounds 5
  ubcfs bench --jobs loop,scan --memory 32M  the page-replacement policies alone
  ubcfs bench --compare bench-A/results.json bench-B/results.json

jobs: seqwrite seqread-cold seqread-warm randread randwrite append metadata build
  truncate fastpath loop scan (default all).  targets: ubcfs tmpfs no-ubc kernel-cache
  backing linux-tmpfs (default all; linux-tmpfs needs root).  Needs fio (apt-get install
  fio) and matplotlib (pip install 'ubcfs[bench]')."""


def _add_bench_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="benchmark jobs on ubcfs mounts and their baselines: a table, results.json,"
        " PNG charts, index.html",
        epilog=BENCH_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--size", metavar="SIZE", help="the sequential file; other jobs scale with it (default 64M)"
    )
    p.add_argument(
        "--memory",
        metavar="SIZE",
        help="--memory of the ubcfs mounts; the loop and scan files scale with it (default 128M)",
    )
    p.add_argument("--page-size", metavar="SIZE", help="--page-size of the mounts (default 4096)")
    p.add_argument("--jobs", metavar="LIST", help="comma-separated jobs (default all)")
    p.add_argument("--targets", metavar="LIST", help="comma-separated targets (default all)")
    p.add_argument(
        "--policies",
        metavar="LIST",
        help="page-replacement policies of the loop and scan jobs (default clock,clockpro)",
    )
    p.add_argument("--rounds", metavar="N", help="interleaved rounds (default 3)")
    p.add_argument(
        "--out", metavar="DIR", help="new or empty output directory (default ./bench-DATE-TIME)"
    )
    p.add_argument(
        "--compare",
        nargs=2,
        metavar=("A.json", "B.json"),
        help="print two runs' medians side by side with B/A, and run nothing",
    )
    p.set_defaults(func=cmd_bench)


def cmd_bench(ns: argparse.Namespace) -> int:
    from ubcfs.bench import run

    return run.main(ns)


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status."""
    try:
        ns = build_parser().parse_args(argv)
        func: Callable[[argparse.Namespace], int] = ns.func
        return func(ns)
    except UsageError as e:
        return _error(str(e), 2)
    except (SetupError, CommandFailedError, CtlError) as e:
        return _error(str(e), 1)
    except KeyboardInterrupt:
        return _error("interrupted", 130)
    except BrokenPipeError:
        # The reader of our output went away (``ubcfs stat | head``): not worth a word.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


def _error(message: str, code: int) -> int:
    print(f"ubcfs: error: {' '.join(message.split())}", file=sys.stderr)
    return code


# --- mount --------------------------------------------------------------------------------


def cmd_mount(ns: argparse.Namespace) -> int:
    opts = options.with_store(options.from_args(ns))
    options.check_paths(opts)
    argv = [sys.executable, "-P", "-m", "ubcfs.daemon", *opts.daemon_argv()]
    if opts.foreground:
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            os.execve(sys.executable, argv, _daemon_env())
        except OSError as e:
            raise CommandFailedError(f"cannot run {sys.executable}: {e.strerror}") from None
    return _spawn_daemon(opts, argv)


def _daemon_env() -> dict[str, str]:
    """Our environment, with the directory holding the ``ubcfs`` package first on
    PYTHONPATH: the daemon runs with -P from ``/`` and must import the same code as we do."""
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(ubcfs.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def _open_log(mountpoint: str) -> tuple[str, int]:
    path = options.log_path(mountpoint)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            if os.stat(path).st_size > LOG_ROTATE_SIZE:
                os.replace(path, path + ".1")
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise CommandFailedError(f"cannot open the log file {path}: {e.strerror}") from None
    stamp = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(fd, f"--- {stamp} ubcfs mount {mountpoint}\n".encode("utf-8", "replace"))
    return path, fd


def _spawn_daemon(opts: MountOptions, argv: list[str]) -> int:
    """Start the daemon in its own session with stdio on the log, and wait for it."""
    log_path, log_fd = _open_log(opts.mountpoint)
    r, w = os.pipe()
    try:
        os.set_inheritable(w, True)
        # Only 0-2 and the ready pipe reach the daemon: an inherited pipe of our caller
        # (say, a test capturing our output) must not be held open by it.
        actions: list[tuple[Any, ...]] = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, log_fd, 1),
            (os.POSIX_SPAWN_DUP2, log_fd, 2),
        ]
        actions += [(os.POSIX_SPAWN_CLOSE, fd) for fd in _inheritable_fds() if fd not in (w,)]
        try:
            pid = os.posix_spawn(
                sys.executable,
                [*argv, "--ready-fd", str(w), "--log-file", log_path],
                _daemon_env(),
                file_actions=actions,
                setsid=True,
            )
        except OSError as e:
            raise CommandFailedError(f"cannot start the daemon: {e.strerror}") from None
    finally:
        os.close(w)
        os.close(log_fd)
    try:
        message = _wait_ready(r, pid, log_path)
    except KeyboardInterrupt:
        # The user gave up: no mount should appear behind their back.  SIGTERM is the
        # daemon's clean unmount (remembered even before its trio loop runs).
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
        _reap(pid, EXIT_TIMEOUT)
        raise
    finally:
        os.close(r)
    if message == "ready":
        _verify_mounted(opts.mountpoint, pid, log_path)
        return 0
    status = _reap(pid)
    if message.startswith("error "):
        raise CommandFailedError(message[len("error ") :])
    raise CommandFailedError(
        f"the daemon {status} before the mount was ready: {_last_log_line(log_path)}"
        f" (log: {log_path})"
    )


def _inheritable_fds() -> list[int]:
    out = []
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            with contextlib.suppress(OSError):
                if fd > 2 and os.get_inheritable(fd):
                    out.append(fd)
    return out


def _wait_ready(r: int, pid: int, log_path: str) -> str:
    """The daemon's first line on the ready pipe ('' at EOF without one)."""
    deadline = time.monotonic() + MOUNT_TIMEOUT
    poller = select.poll()
    poller.register(r, select.POLLIN)
    buf = b""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            _kill(pid)
            raise CommandFailedError(
                f"the daemon did not become ready within {MOUNT_TIMEOUT:g} s; it was killed"
                f" (log: {log_path})"
            )
        if not poller.poll(int(min(left, 1.0) * 1000) + 1):
            continue
        chunk = os.read(r, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode("utf-8", "replace").strip()


def _verify_mounted(mountpoint: str, pid: int, log_path: str) -> None:
    """The daemon said ready: make sure that the mount is there and answers (a stat of its
    root goes through the daemon), without hanging forever if it does not."""
    result: list[bool] = []
    probe = threading.Thread(target=lambda: result.append(os.path.ismount(mountpoint)))
    probe.daemon = True
    probe.start()
    probe.join(MOUNT_TIMEOUT)
    if result == [True]:
        return
    why = "does not answer" if not result else "is not a mount point"
    _kill(pid)
    raise CommandFailedError(f"the daemon reported ready, but {mountpoint} {why} (log: {log_path})")


def _reap(pid: int, timeout: float = 10.0) -> str:
    """Wait for our child daemon to exit; describe how it did."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return "exited"
        if done:
            if os.WIFSIGNALED(status):
                return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
            return f"exited with status {os.waitstatus_to_exitcode(status)}"
        if time.monotonic() > deadline:
            _kill(pid)
            return "did not exit"
        time.sleep(0.05)


def _kill(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        os.waitpid(pid, 0)


def _last_log_line(path: str) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    return lines[-1].strip() if lines else "nothing logged"


# --- commands that talk to a daemon -------------------------------------------------------


def _connect(mountpoint: str) -> client.ControlClient:
    """The control client of the mount on ``mountpoint``; a path that does not exist is a
    usage error, a path without a daemon a failure (``CtlError``)."""
    if not os.path.lexists(mountpoint) and not options.is_mountpoint(mountpoint):
        raise UsageError(f"{mountpoint} does not exist")
    return client.connect(mountpoint)


def cmd_umount(ns: argparse.Namespace) -> int:
    mnt = ns.mountpoint
    ctl = _connect(mnt)
    info = ctl.request("ping")
    pid = info.get("pid") if isinstance(info, dict) else None
    if not isinstance(pid, int):
        raise CommandFailedError(f"{mnt}: the daemon did not say who it is")
    ctl.request("umount", timeout=None)  # replies after the final write-back
    _wait_gone(mnt, pid)
    return 0


def _wait_gone(mountpoint: str, pid: int) -> None:
    deadline = time.monotonic() + EXIT_TIMEOUT
    real = os.path.realpath(mountpoint)
    while _alive(pid) or options.is_mountpoint(real):
        if time.monotonic() > deadline:
            what = f"daemon (pid {pid}) did not exit" if _alive(pid) else "mount did not go away"
            raise CommandFailedError(f"{mountpoint}: data was written back, but the {what}")
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """``pid`` exists and is not a zombie (a daemon whose parent does not reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def cmd_sync(ns: argparse.Namespace) -> int:
    _connect(ns.mountpoint).request("sync", timeout=None)
    return 0


def cmd_check(ns: argparse.Namespace) -> int:
    result = _connect(ns.mountpoint).request("check", timeout=CHECK_TIMEOUT)
    violations = result.get("violations") if isinstance(result, dict) else None
    if not isinstance(violations, list):
        raise CommandFailedError(f"{ns.mountpoint}: malformed check result from the daemon")
    for v in violations:
        print(v)
    if violations:
        print(f"ubcfs: {ns.mountpoint}: {len(violations)} invariant violation(s)", file=sys.stderr)
        return 1
    print(f"{ns.mountpoint}: no invariant violations")
    return 0


def cmd_ping(ns: argparse.Namespace) -> int:
    print(json.dumps(_connect(ns.mountpoint).request("ping")))
    return 0


HIST_FOLLOW_INTERVAL: Final = 0.2  # seconds between the polls of 'hist --follow'
_HIST_HEX: Final = frozenset(("offset", "va", "start", "end", "old", "new"))


def cmd_hist(ns: argparse.Namespace) -> int:
    limit = None if ns.limit is None else options.parse_count(ns.limit, "--limit", 1, 1 << 20)
    ctl = _connect(ns.mountpoint)
    since = 0
    if limit is not None:
        head = _hist_reply(ctl.request("hist", {"limit": 1}), ctl.mountpoint)
        since = max(0, head["seq"] - limit)
    first = True
    stop_at = -1  # without --follow: the events logged when the dump began
    with contextlib.suppress(KeyboardInterrupt):
        while True:
            reply = _hist_reply(ctl.request("hist", {"since": since}), ctl.mountpoint)
            _print_hist(reply, ns.json, quiet_lost=first)  # older events: not news
            if first and not ns.follow:
                stop_at = reply["seq"]
            first = False
            since = reply["next"]
            if not ns.follow and since >= stop_at:
                break
            if not reply["events"]:
                time.sleep(HIST_FOLLOW_INTERVAL)
    return 0


def _hist_reply(reply: Any, mountpoint: str) -> dict[str, Any]:
    if (
        not isinstance(reply, dict)
        or not isinstance(reply.get("next"), int)
        or not isinstance(reply.get("seq"), int)
        or not isinstance(reply.get("events"), list)
    ):
        raise CommandFailedError(f"{mountpoint}: malformed hist reply from the daemon")
    return reply


def _print_hist(reply: dict[str, Any], as_json: bool, quiet_lost: bool) -> None:
    lost = reply.get("lost", 0)
    if lost and not quiet_lost:
        if as_json:
            print(json.dumps({"lost": lost}))
        else:
            print(
                f"... {lost} events lost (the ring keeps {reply.get('size')}: mount with a"
                " larger --hist, or follow more often)"
            )
    for ev in reply["events"]:
        if as_json:
            print(json.dumps(ev))
            continue
        t = ev.get("time", 0.0)
        stamp = time.strftime("%H:%M:%S", time.localtime(t)) + f".{int(t * 1e6) % 1000000:06d}"
        nums = " ".join(
            f"{k}={v:#x}" if k in _HIST_HEX else f"{k}={v}"
            for k, v in ev.items()
            if k not in ("seq", "time", "kind", "what") and isinstance(v, int)
        )
        print(f"{stamp} {ev.get('kind', '?'):<13} {ev.get('what', '?')}  {nums}")
    sys.stdout.flush()


def cmd_inject(ns: argparse.Namespace) -> int:
    err = _parse_errno(ns.errno)
    count = _parse_count(ns.count)
    _connect(ns.mountpoint).request("inject", {"kind": ns.kind, "errno": err, "count": count})
    return 0


def _parse_errno(text: str) -> int:
    """ERRNO: a name (``EIO``, ``eio``) or a number known to this system."""
    if text.isdigit():
        value = int(text)
        if value in errno.errorcode:
            return value
        raise UsageError(f"ERRNO: {text} is not an errno number known to this system")
    value_obj = getattr(errno, text.upper(), None)
    if text.upper().startswith("E") and isinstance(value_obj, int):
        return value_obj
    raise UsageError(f"ERRNO: unknown errno {text!r} (use a name like EIO or a number)")


def _parse_count(text: str) -> int:
    if not text.isdigit() or int(text) > 1 << 31:
        raise UsageError(f"COUNT: expected a whole number from 0 to {1 << 31}, got {text!r}")
    return int(text)


# --- stat -----------------------------------------------------------------------------------


def cmd_stat(ns: argparse.Namespace) -> int:
    interval = None if ns.watch is None else _parse_interval(ns.watch)
    ctl = _connect(ns.mountpoint)
    if interval is None:
        snap = _snapshot(ctl)
        print(json.dumps(snap) if ns.json else format_report(ns.mountpoint, snap))
        return 0
    try:
        prev: dict[str, Any] | None = None
        rows = 0
        while True:
            snap = _snapshot(ctl)
            if ns.json:
                print(json.dumps(snap), flush=True)
            else:
                if rows % WATCH_HEADER_EVERY == 0:
                    print(WATCH_HEADER)
                print(format_watch_row(snap, prev), flush=True)
                rows += 1
            prev = snap
            time.sleep(interval)
    except KeyboardInterrupt:
        return 0


def cmd_top(ns: argparse.Namespace) -> int:
    from ubcfs import top

    interval = _parse_interval(ns.interval, "--interval")
    ctl = _connect(ns.mountpoint)
    if ns.once:
        width = os.get_terminal_size().columns if sys.stdout.isatty() else 100
        top.run_once(ctl, ns.mountpoint, interval, width)
        return 0
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise UsageError("top needs a terminal on stdin and stdout; --once prints one frame")
    with contextlib.suppress(KeyboardInterrupt):
        top.run_screen(ctl, ns.mountpoint, interval)
    return 0


def cmd_stress(ns: argparse.Namespace) -> int:
    from ubcfs import stress

    try:
        seconds = float(ns.seconds)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds <= 7 * 86400:
        raise UsageError(f"--seconds: expected a positive number of seconds, got {ns.seconds!r}")
    seed = int(time.time()) % 1000000 if ns.seed is None else _parse_small(ns.seed, "--seed", 0)
    nprocs = _parse_small(ns.processes, "--processes", 1, 64)
    nfiles = _parse_small(ns.files, "--files", 1, 64)
    max_ops = 0 if ns.ops is None else _parse_small(ns.ops, "--ops", 1)
    ctl = _connect(ns.mountpoint)
    ctl.request("ping")
    run = stress.Stress(ns.mountpoint, ctl, seed, nprocs, nfiles)
    if run.dir.exists():
        raise UsageError(f"{run.dir} exists: another run with seed {seed}? remove it first")
    t0 = time.monotonic()
    try:
        run.setup()
        try:
            stats = run.run(seconds, progress=True, max_ops=max_ops)
        finally:
            run.teardown()
    except OSError as e:
        raise CommandFailedError(f"stress truncate: {e}") from None
    summary = stress.summary(stats, time.monotonic() - t0, seed)
    if ns.json:
        print(json.dumps(summary))
    else:
        stress.print_summary(summary)
    return 0 if summary["mismatches"] == 0 and summary["violations"] == 0 else 1


def _parse_small(text: str, what: str, lo: int, hi: int = 1 << 62) -> int:
    if not text.isdigit() or not lo <= int(text) <= hi:
        raise UsageError(f"{what}: expected a whole number from {lo} to {hi}, got {text!r}")
    return int(text)


def _parse_interval(text: str, option: str = "--watch") -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86400:  # also refuses nan and inf
        raise UsageError(f"{option}: expected a positive number of seconds, got {text!r}")
    return value


def _snapshot(ctl: client.ControlClient) -> dict[str, Any]:
    snap = ctl.request("stat")
    if not isinstance(snap, dict):
        raise CommandFailedError(f"{ctl.mountpoint}: malformed stat result from the daemon")
    return snap


def _section(snap: dict[str, Any], name: str) -> dict[str, int]:
    part = snap.get(name)
    if not isinstance(part, dict):
        return {}
    return {k: v for k, v in part.items() if isinstance(v, int) and not isinstance(v, bool)}


_PAGE_LABELS: Final = {
    "total": "pages managed",
    "free": "pages free",
    "active": "pages active",
    "inactive": "pages inactive",
    "wired": "pages wired",
    "dirty": "pages dirty",
    "file": "file pages",
    "anon": "anonymous pages",
    "paging": "pages being paged out",
    "kernel": "kernel pages",
    "zero": "free pages known zero",
}


_PROC_LABELS: Final = {
    "processes": "simulated processes",
    "map_entries": "process map entries",
    "wired_entries": "process map entries wired",
    "resident": "process pages mapped",
    "wired": "process pages wired",
    "mapped_files": "files held by process mappings",
}


def format_report(mountpoint: str, snap: dict[str, Any]) -> str:
    """The human ``stat`` report, in the style of ``vmstat -s``: one number per line."""
    lines = [f"{mountpoint}:"]
    page_size = snap.get("page_size")
    if isinstance(page_size, int):
        lines.append(f"{page_size:>12} bytes per page")
    for key, n in _section(snap, "pages").items():
        lines.append(f"{n:>12} {_PAGE_LABELS.get(key, key)}")
    for key, n in _section(snap, "targets").items():
        lines.append(f"{n:>12} target {key}")
    for key, n in _section(snap, "counters").items():
        lines.append(f"{n:>12} {key}")
    swap = _section(snap, "swap")
    lines.append(f"{swap.get('used', 0):>12} swap slots used")
    lines.append(f"{swap.get('total', 0):>12} swap slots total")
    lines.append(f"{swap.get('bad', 0):>12} swap slots bad")
    for key, n in _section(snap, "vnodes").items():
        lines.append(f"{n:>12} vnodes {key}")
    fds = _section(snap, "fds")
    for key, n in fds.items():
        lines.append(f"{n:>12} descriptors {key}")
    lookups = fds.get("hits", 0) + fds.get("misses", 0)
    if lookups:
        lines.append(f"{100 * fds.get('hits', 0) / lookups:>11.1f}% descriptor cache hit rate")
    for key, n in _section(snap, "procs").items():
        lines.append(f"{n:>12} {_PROC_LABELS.get(key, key)}")
    policy = snap.get("pdpolicy")
    if isinstance(policy, dict) and isinstance(policy.get("name"), str):
        lines.append(f"{policy['name']:>12} page-replacement policy")
        for key, n in _section(snap, "pdpolicy").items():
            lines.append(f"{n:>12} {policy['name']} {key}")
    lines += _writeback_lines(snap)
    return "\n".join(lines)


_WB_COUNTS: Final = {
    "waiting_pages": "pages waiting for a successful write",
    "failed_pages": "pages whose last write failed",
    "files": "files with pages waiting",
    "failing_files": "files whose write-back is failing",
}
_WB_SECONDS: Final = {
    "stuck_seconds": "seconds since pages began waiting",
    "next_retry_seconds": "seconds to the next background retry",
    "timeout": "seconds a writer waits for memory (--writeback-timeout)",
}


def _writeback_lines(snap: dict[str, Any]) -> list[str]:
    """The write-back failure state: what waits, the last error, for how long."""
    wb = snap.get("writeback")
    if not isinstance(wb, dict):
        return []
    lines = [
        f"{n:>12} {_WB_COUNTS[k]}"
        for k, n in _section(snap, "writeback").items()
        if k in _WB_COUNTS
    ]
    err = wb.get("last_error")
    lines.append(f"{err if isinstance(err, str) and err else '-':>12} last write-back error")
    for key, label in _WB_SECONDS.items():
        value = wb.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"{value:>12.1f} {label}")
    return lines


_WATCH_PAGES: Final = ("free", "active", "inactive", "wired", "dirty", "file")
_WATCH_COUNTERS: Final = (
    ("faults", "flt"),
    ("pageins", "pgin"),
    ("pageouts", "pgout"),
    ("pdscans", "scan"),
    ("pdfreed", "freed"),
    ("ubc_hits", "ubchit"),
    ("ubc_misses", "ubcmis"),
    ("zero_fills", "zfill"),
)
WATCH_HEADER: Final = (
    " ".join(f"{k[:5]:>7}" for k in _WATCH_PAGES)
    + " |"
    + " ".join(f"{label:>7}" for _, label in _WATCH_COUNTERS)
)


def format_watch_row(snap: dict[str, Any], prev: dict[str, Any] | None) -> str:
    """One ``stat --watch`` line, as vmstat prints: page counts now, and the counters'
    growth since the previous line (since the mount for the first one)."""
    pages = _section(snap, "pages")
    now = _section(snap, "counters")
    before = _section(prev, "counters") if prev is not None else {}
    left = " ".join(f"{pages.get(k, 0):>7}" for k in _WATCH_PAGES)
    right = " ".join(f"{now.get(k, 0) - before.get(k, 0):>7}" for k, _ in _WATCH_COUNTERS)
    return f"{left} |{right}"


if __name__ == "__main__":
    sys.exit(main())
