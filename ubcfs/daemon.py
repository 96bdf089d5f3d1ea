"""The mount daemon, ``python -m ubcfs.daemon`` (~ uvm_init.c + vfs_mount): the composition
root that builds the engine, the backing namespace, the FUSE operations and the control
server, mounts, serves, and unmounts.

``ubcfs mount`` spawns it (after validating the command line itself) with ``--ready-fd N``, a
pipe on which the daemon writes ``ready`` once the mount serves requests, or ``error
<reason>`` when it cannot mount; its stdout/stderr are then the mount's log file.  With
``--foreground`` the CLI execs it instead and it logs to the terminal.

Life cycle (fuse-notes 1.2/1.3): everything that can fail is done before the mount so that
errors reach the caller (engine, backing dir, control socket), then ``pyfuse3.init`` mounts
in the foreground; only then does trio start -- the daemon never forks.  Inside trio one
nursery holds the engine's daemons (``Engine.running``: pagedaemon, aiodone), the control
server and a signal receiver, and the task that runs ``pyfuse3.main()``.

Unmounting, in every case, is: ``pyfuse3.main()`` returns (``pyfuse3.terminate()`` from the
ctl ``umount`` command or SIGINT/SIGTERM/SIGHUP, or an external ``fusermount3 -u``); then
``Operations.final_writeback`` writes every dirty page back while the control server still
answers; then the nursery is cancelled and ``pyfuse3.close(unmount=True)`` unmounts in a
``finally``.  The exit status is 0 iff the final write-back succeeded.  The ctl ``umount``
first syncs and refuses to unmount if that fails (the data stays in memory, dirty, and a
later ``umount`` retries); otherwise it replies only after the final write-back, with its
result, so that ``ubcfs umount`` can report lost data.
"""

from __future__ import annotations

import argparse
import faulthandler
import logging
import os
import signal
import sys
import tempfile
import time
from typing import Any, Final, NoReturn

import pyfuse3
import trio

from genfs.node import GenfsParams
from pagers.backing_io import IOKind, parse_errno
from ubcfs import __version__, native, options
from ubcfs.ctl.procs import ProcCommands
from ubcfs.ctl.protocol import ProtocolError, arg_int, arg_str, check_keys, socket_path
from ubcfs.ctl.server import CommandError, ControlServer
from ubcfs.fuse import Operations, fallocate_wired, fuse_options
from ubcfs.options import MountOptions, SetupError, UsageError
from ubcfs.vfs.backing import BackingNamespace, raise_nofile_limit
from ubcfs.vfs.engine import Engine, errname, tune_gc
from ubcfs.vfs.namespace import Namespace
from ubcfs.vfs.tmpfs import TmpfsNamespace
from ubcfs.vfs.tmpfs_vnops import TmpfsFiles
from ubcfs.vm.audit import audit
from ubcfs.vm.hist import KINDS as HIST_KINDS
from ubcfs.vm.hist import UvmHist
from ubcfs.vm.stat import snapshot

log = logging.getLogger("ubcfs.daemon")  # not __main__ under -m

MAX_FILES_LISTED: Final = 1000  # the most objects one 'files' request lists
MAX_HIST_REPLY: Final = 5000  # the most events one 'hist' reply carries
REPLY_GRACE: Final = 5.0  # seconds to let pending ctl replies go out after the write-back
STOP_SIGNALS: Final = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m ubcfs.daemon", description="the ubcfs mount daemon")
    options.add_mount_arguments(parser)
    parser.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--log-file", default=None, help=argparse.SUPPRESS)
    return parser


class ReadyPipe:
    """The write end of the CLI's readiness pipe (or nothing, in the foreground)."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        if fd is not None:
            os.fstat(fd)  # OSError (EBADF) if the CLI did not pass it
            # Not into fusermount3, which libfuse may spawn and keep running (auto_unmount):
            # the CLI must see EOF when we die.
            os.set_inheritable(fd, False)

    def _say(self, text: str) -> None:
        if self.fd is None:
            return
        try:
            os.write(self.fd, text.encode("utf-8", "replace") + b"\n")
        except OSError as e:  # the CLI went away: nothing to tell
            log.debug("ready pipe: %s", e)
        finally:
            os.close(self.fd)
            self.fd = None

    def ok(self) -> None:
        self._say("ready")

    def fail(self, message: str, code: int = 1) -> int:
        """Report a failure to start; returns ``code`` for the exit status."""
        message = " ".join(message.split())
        print(f"ubcfs: error: {message}", file=sys.stderr, flush=True)
        self._say(f"error {message}")
        return code


def _os_text(e: OSError) -> str:
    return e.strerror or str(e)


class Daemon:
    """One mount: its engine, namespace, FUSE operations and control server."""

    def __init__(self, opts: MountOptions, ready: ReadyPipe, log_file: str | None) -> None:
        self.opts = opts
        self.ready = ready
        self.log_file = log_file
        self.engine: Engine
        self.ops: Operations
        self.tmpfs: TmpfsFiles | None = None
        self.server: ControlServer
        self.procs: ProcCommands
        self.stopping = False
        self.early_signal = 0
        self.final_err = 0
        self.final_done = trio.Event()

    # --- start and stop ---------------------------------------------------------------

    def main(self) -> int:
        """Build, mount, serve until unmounted; return the exit status."""
        opts = self.opts
        raise_nofile_limit()  # before the engine sizes its vnode cache from the limit
        swap_file = opts.swap_file or options.default_swap_file(opts.mountpoint)
        try:
            if opts.tmpfs and opts.swap:
                os.makedirs(os.path.dirname(swap_file), mode=0o700, exist_ok=True)
            self.engine = Engine(
                memory=opts.memory,
                page_size=opts.page_size,
                params=GenfsParams(fastpath=opts.extend_fastpath),
                populate=True,
                maxvnodes=opts.maxvnodes,
                writeback_timeout=opts.writeback_timeout,
                swap_size=opts.swap if opts.tmpfs else 0,
                swap_file=swap_file,
                keep_swap_file=opts.swap_file is not None,
                pdpolicy=opts.pdpolicy,
            )
        except OSError as e:
            return self.ready.fail(f"cannot create the swap file {swap_file}: {_os_text(e)}")
        except (ValueError, MemoryError) as e:
            return self.ready.fail(f"cannot build the engine: {e}")
        self.engine.uvm.hist = UvmHist(opts.hist) if opts.hist else None
        tune_gc()  # the machine's records are built: out of the collector's sight
        namespace: Namespace[Any]
        if opts.tmpfs:
            self.tmpfs = TmpfsFiles(self.engine)
            namespace = TmpfsNamespace(
                self.tmpfs.capacity,
                block_size=opts.page_size,
                on_destroy=self.tmpfs.destroyed,
            )
            fsname = "tmpfs"
        else:
            assert opts.backing is not None
            try:
                namespace = BackingNamespace(opts.backing)
            except OSError as e:
                self._close_swap()
                return self.ready.fail(
                    f"cannot open the backing directory {opts.backing}: {_os_text(e)}"
                )
            fsname = opts.backing
        try:
            self.server = ControlServer.bind(socket_path(opts.mountpoint))
        except OSError as e:
            namespace.close()
            self._close_swap()
            return self.ready.fail(f"cannot create the control socket: {_os_text(e)}")
        self._register_commands()
        self.ops = Operations(
            self.engine,
            namespace,
            ubc=opts.ubc,
            kernel_cache=opts.kernel_cache,
            tmpfs=self.tmpfs,
        )
        self.procs = ProcCommands(self.ops)
        self.procs.register(self.server)
        self._catch_early_signals()
        try:
            reason = _mount(self.ops, opts.mountpoint, fuse_options(fsname, opts.allow_other))
            if reason is not None:
                return self.ready.fail(f"cannot mount on {opts.mountpoint}: {reason}")
            try:
                return trio.run(self._run)
            except Exception as e:
                log.exception("the daemon failed; unmounting")
                if self.ready.fd is not None:
                    self.ready.fail(f"the daemon failed: {type(e).__name__}: {e}")
                return 1
            finally:
                pyfuse3.close(unmount=True)
                log.info("unmounted %s", opts.mountpoint)
        finally:
            self.server.close()
            namespace.close()
            self._close_swap()

    def _close_swap(self) -> None:
        """Close (and remove, unless given) the swap file; the engine does it when it
        stops, this is for the paths where it never ran."""
        if self.engine.swap is not None:
            self.engine.swap.close()

    def _catch_early_signals(self) -> None:
        """Until trio's receiver takes over (and after it stops), a stop signal is only
        remembered: it must not interrupt the mount half-way with KeyboardInterrupt."""

        def remember(signum: int, _frame: object) -> None:
            self.early_signal = signum

        for sig in STOP_SIGNALS:
            signal.signal(sig, remember)

    async def _run(self) -> int:
        async with self.engine.running(), trio.open_nursery() as nursery:
            if self.tmpfs is not None:
                await nursery.start(self.tmpfs.run)
            await nursery.start(self.server.serve)
            await nursery.start(self._watch_signals)
            self.ready.ok()
            log.info("ubcfs %s serving %s (pid %d)", __version__, self.opts.mountpoint, os.getpid())
            core = native.status()
            slow = core["core"] == "pure" and core["why"] != native.PURE_ON_PURPOSE
            log.log(logging.WARNING if slow else logging.INFO, "core: %s (%s)", *core.values())
            if not fallocate_wired():
                log.warning(
                    "pyfuse3 %s has no fallocate handler: fallocate(2) on the mount fails"
                    " with EOPNOTSUPP (scripts/setup.sh builds one that has it)",
                    pyfuse3.__version__,
                )
            await pyfuse3.main()
            log.info("FUSE loop ended; final write-back")
            await self.procs.close()  # the simulated processes die with the mount
            self.final_err = await self.ops.final_writeback()
            if self.final_err:
                log.error("final write-back failed: %s; data may be lost", errname(self.final_err))
            else:
                log.info("final write-back done")
            self.final_done.set()
            # Let the umount command(s) waiting for this answer before everything stops.
            with trio.move_on_after(REPLY_GRACE):
                await self.server.wait_idle()
            nursery.cancel_scope.cancel()
        return 1 if self.final_err else 0

    async def _watch_signals(self, *, task_status: trio.TaskStatus[None]) -> None:
        with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
            task_status.started()
            if self.early_signal:
                self.stop(f"signal {signal.Signals(self.early_signal).name}")
            async for signum in signals:
                self.stop(f"signal {signal.Signals(signum).name}")

    def stop(self, why: str) -> None:
        """Make ``pyfuse3.main()`` return (after the running requests); idempotent."""
        if self.stopping:
            log.info("%s: already unmounting", why)
            return
        log.info("%s: unmounting", why)
        self.stopping = True
        pyfuse3.terminate()

    # --- control commands -------------------------------------------------------------

    def _register_commands(self) -> None:
        for name, handler in (
            ("ping", self._ctl_ping),
            ("stat", self._ctl_stat),
            ("check", self._ctl_check),
            ("sync", self._ctl_sync),
            ("umount", self._ctl_umount),
            ("inject", self._ctl_inject),
            ("files", self._ctl_files),
            ("hist", self._ctl_hist),
        ):
            self.server.register(name, handler)

    async def _ctl_ping(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ())
        o = self.opts
        return {
            "pid": os.getpid(),
            "uid": os.getuid(),
            "version": __version__,
            "mountpoint": o.mountpoint,
            "backing": o.backing,
            "tmpfs": o.tmpfs,
            "swap_file": self.engine.swap.path if self.engine.swap is not None else None,
            "log": self.log_file,
            "stopping": self.stopping,
            "pyfuse3": pyfuse3.__version__,
            "fallocate": fallocate_wired(),
            # Which build of the core serves: "compiled" (mypyc) or "pure", and why.
            "core": native.status()["core"],
            "core_why": native.status()["why"],
            "options": {
                "memory": o.memory,
                "page_size": o.page_size,
                "swap": o.swap,
                "swap_file": o.swap_file,
                "ubc": o.ubc,
                "extend_fastpath": o.extend_fastpath,
                "kernel_cache": o.kernel_cache,
                "allow_other": o.allow_other,
                "default_store": o.default_store,
                "maxvnodes": self.engine.vcache.maxvnodes,
                "writeback_timeout": o.writeback_timeout,
            },
            "injected": {
                kind: {"errno": errname(err), "count": n}
                for kind, (err, n) in self.engine.injector.armed().items()
            },
        }

    async def _ctl_stat(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ())
        snap = snapshot(self.engine.uvm)
        snap["vnodes"] = self.engine.vcache.statistics()
        if self.ops.backing is not None:
            snap["fds"] = self.ops.backing.descriptors()
        if self.tmpfs is not None:
            snap["tmpfs"] = self.tmpfs.statistics()
        snap["procs"] = self.procs.statistics()
        return snap

    async def _ctl_files(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        """The objects with the most resident pages (``limit`` of them, default 10): name,
        resident, dirty (pages tagged dirty: modified or writably mapped), wired, and
        whether the object is anonymous memory (a tmpfs file's aobj)."""
        check_keys(args, (), ("limit",))
        limit = arg_int(args, "limit", 1, MAX_FILES_LISTED) if "limit" in args else 10
        objs = sorted(self.engine.uvm.objects, key=lambda o: o.npages, reverse=True)
        out: list[dict[str, Any]] = []
        for o in objs[:limit]:
            if not o.npages:
                break
            out.append(
                {
                    "name": o.name,
                    "resident": o.npages,
                    "dirty": len(o.dirtyoffs),
                    "wired": sum(1 for pg in o.pages.values() if pg.wire_count),
                    "anon": o.is_aobj,
                }
            )
        return out

    async def _ctl_hist(self, args: dict[str, Any]) -> dict[str, Any]:
        """The event history from sequence number ``since`` (default: the oldest kept), at
        most ``limit`` events (default and most ``MAX_HIST_REPLY``): ``next`` to ask for
        next time, ``seq`` the events logged so far, ``lost`` events from ``since`` that
        the ring no longer holds, and the events with wall-clock times and their two
        numbers named (``ubcfs.vm.hist.KINDS``)."""
        check_keys(args, (), ("since", "limit"))
        h = self.engine.uvm.hist
        if h is None:
            raise CommandError("the event history is off (mounted with --hist 0)")
        since = arg_int(args, "since", 0, 1 << 62) if "since" in args else 0
        limit = arg_int(args, "limit", 1, MAX_HIST_REPLY) if "limit" in args else MAX_HIST_REPLY
        if since > h.seq:
            raise CommandError(f"since {since} is in the future: {h.seq} events so far")
        nxt, lost, events = h.since(since, limit)
        wall = time.time() - time.monotonic()
        out = []
        for seq, (t, kind, what, a, b) in events:
            la, lb = HIST_KINDS.get(kind, ("a", "b"))
            out.append({"seq": seq, "time": t + wall, "kind": kind, "what": what, la: a, lb: b})
        return {"next": nxt, "seq": h.seq, "lost": lost, "size": h.size, "events": out}

    async def _ctl_check(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ())
        return {"violations": audit(self.engine.uvm) + self.ops.audit()}

    async def _ctl_sync(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ())
        err = await self.engine.sync()
        if err:
            raise CommandError(
                f"write-back failed: {errname(err)} ({os.strerror(err)}); the data stays"
                " dirty in memory and is retried"
            )
        return {}

    async def _ctl_umount(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ())
        if not self.stopping:
            err = await self.engine.sync()
            if err:
                raise CommandError(
                    f"write-back failed: {errname(err)} ({os.strerror(err)}); still mounted,"
                    " nothing was lost: fix the backing store and run umount again"
                )
            self.stop("umount command")
        await self.final_done.wait()
        if self.final_err:
            raise CommandError(
                f"unmounted, but the final write-back failed: {errname(self.final_err)}"
                f" ({os.strerror(self.final_err)}); data may be lost"
                + (f" (see {self.log_file})" if self.log_file else "")
            )
        return {"pid": os.getpid()}

    async def _ctl_inject(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ("kind", "errno", "count"))
        kind_name = arg_str(args, "kind", 64)
        count = arg_int(args, "count", 0, 1 << 31)
        err_arg = args["errno"]
        try:
            kind = IOKind.parse(kind_name)
            if isinstance(err_arg, str) and len(err_arg) <= 64:
                err = parse_errno(err_arg)
            elif isinstance(err_arg, int) and not isinstance(err_arg, bool):
                err = err_arg
            else:
                raise ProtocolError("argument 'errno' must be an errno name or number")
            self.engine.injector.arm(kind, err, count)
        except ValueError as e:  # ProtocolError is one too
            raise ProtocolError(str(e)) from None
        if count:
            log.info("inject: next %d %s I/Os fail with %s", count, kind.value, errname(err))
        else:
            log.info("inject: %s disarmed", kind.value)
        return {"kind": kind.value, "errno": errname(err), "count": count}


def _mount(ops: Operations, mountpoint: str, fuse_opts: set[str]) -> str | None:
    """``pyfuse3.init``: mount now.  Returns None on success, else the reason, taken from
    what libfuse or fusermount3 printed on stderr (captured here, then copied to our
    stderr) when there is something."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        failure = None
        try:
            pyfuse3.init(ops, mountpoint, fuse_opts)
        except RuntimeError as e:
            failure = str(e)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        captured.seek(0)
        said = captured.read().decode("utf-8", "replace").strip()
    if said:
        print(said, file=sys.stderr, flush=True)
    if failure is None:
        return None
    lines = [line for line in said.splitlines() if line.strip()]
    return lines[-1] if lines else failure


def _setup_logging(debug: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        logging.getLogger("pyfuse3").setLevel(logging.WARNING)
    faulthandler.enable()
    faulthandler.register(signal.SIGUSR1)  # a stack dump on demand for a hung mount


def main(argv: list[str] | None = None) -> int:
    """Run the daemon; returns the exit status (2: bad arguments, 1: failure)."""
    try:
        ns = build_parser().parse_args(argv)
    except UsageError as e:
        print(f"ubcfs: error: {e}", file=sys.stderr)
        return 2
    try:
        ready = ReadyPipe(ns.ready_fd)
    except OSError:
        print(f"ubcfs: error: --ready-fd {ns.ready_fd} is not an open file", file=sys.stderr)
        return 2
    try:
        opts = options.with_store(options.from_args(ns))
        options.check_paths(opts)
    except UsageError as e:
        return ready.fail(str(e), 2)
    except SetupError as e:
        return ready.fail(str(e), 1)
    _setup_logging(opts.debug)
    # New files get exactly the mode the caller asked for, less the caller's umask (which
    # the kernel applies, or ubcfs.vfs.backing does): never the daemon's own umask.
    os.umask(0)
    try:
        os.chdir("/")  # do not keep the caller's cwd busy
    except OSError as e:
        log.warning("chdir /: %s", e)
    return Daemon(opts, ready, ns.log_file).main()


if __name__ == "__main__":
    sys.exit(main())
