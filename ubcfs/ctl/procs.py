"""The control channel's simulated-process commands (design.md section 4): proc-new, mmap,
munmap, mlock, munlock, load, store, ptrace-write, fork, exit, vslock, vsunlock, procs.

Every argument is checked here (types and ranges by the ``protocol`` helpers, addresses and
lengths by ``ubcfs.vm.proc``), and every failure is a one-line error reply that names the
errno and what it means for the process: the daemon keeps serving.  Processes live in the
daemon and die with the mount (``ProcCommands.close``, before the final write-back, so
that their mappings' vnode uses are gone when the vnodes are reclaimed).

Addresses travel as integers; the CLI prints them as ``0x...``, which it accepts back.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

import trio

from ubcfs.ctl.protocol import ProtocolError, arg_int, arg_str, check_keys
from ubcfs.ctl.server import CommandError, ControlServer, Handler
from ubcfs.vm.map import VM_MAX_ADDRESS, VmMapEntry
from ubcfs.vm.param import Prot
from ubcfs.vm.pmap import pmap_resident_in
from ubcfs.vm.proc import (
    Proc,
    ProcTable,
    proc_load,
    proc_store,
    sys_mlock,
    sys_mmap,
    sys_munlock,
    sys_munmap,
    vslock,
    vsunlock,
)

if TYPE_CHECKING:
    from ubcfs.fuse import Operations

RangeCall = Callable[[Proc, int, int], Awaitable[int]]

MAX_LOAD: Final = 1 << 20  # bytes one load may return
MAX_PROCS: Final = 4096  # live simulated processes per mount
_ADDR_MAX: Final = VM_MAX_ADDRESS

# What an errno means for the simulated process (its signal, or the call's failure).
_MEANING: Final = {
    errno.EFAULT: "no mapping there (SIGSEGV)",
    errno.EACCES: "the mapping does not allow that access (SIGSEGV)",
    errno.EINVAL: "invalid argument (or past the end of the mapped file: SIGBUS)",
    errno.ENOMEM: "the range is not all mapped, or no room in the address space",
    errno.ENOSPC: "no space left to fill a hole of the file (SIGBUS)",
    errno.EIO: "the page could not be read",
    errno.ENODEV: "not a regular file of this mount with a page cache",
}


def _errtext(err: int, what: str, meaning: dict[int, str] | None = None) -> str:
    name = errno.errorcode.get(err, str(err))
    text = (meaning or {}).get(err) or _MEANING.get(err) or os.strerror(err)
    return f"{what}: {name}: {text}"


def _arg_bool(args: dict[str, Any], name: str, default: bool) -> bool:
    value = args.get(name, default)
    if not isinstance(value, bool):
        raise ProtocolError(f"argument {name!r} must be true or false")
    return value


def _arg_hex(args: dict[str, Any], name: str) -> bytes:
    text = arg_str(args, name, 2 * MAX_LOAD)
    try:
        data = bytes.fromhex(text)
    except ValueError:
        raise ProtocolError(f"argument {name!r} is not hex digits") from None
    if not data:
        raise ProtocolError(f"argument {name!r} is empty")
    return data


class ProcCommands:
    """The simulated processes of one mount and the commands that drive them."""

    def __init__(self, ops: Operations) -> None:
        self.ops = ops
        self.table = ProcTable(ops.engine.uvm)
        # One process command at a time: a command that sleeps (a fault's I/O, the wiring
        # of a range) must not see its map changed under it by another (kernel: the map
        # is marked busy across uvm_map_pageable's second pass).  File operations through
        # the mount go on meanwhile; that is what the VM's own rules are for.
        self.lock = trio.Lock()
        self.closed = False

    def register(self, server: ControlServer) -> None:
        for name, handler in (
            ("proc-new", self._proc_new),
            ("mmap", self._mmap),
            ("munmap", self._range_command("munmap", sys_munmap)),
            ("mlock", self._range_command("mlock", sys_mlock)),
            ("munlock", self._range_command("munlock", sys_munlock)),
            ("vslock", self._range_command("vslock", vslock)),
            (
                "vsunlock",
                self._range_command(
                    "vsunlock", _vsunlock, {errno.EINVAL: "that range is not vslocked"}
                ),
            ),
            ("load", self._load),
            ("store", self._store),
            ("ptrace-write", self._ptrace_write),
            ("fork", self._fork),
            ("exit", self._exit),
            ("procs", self._procs),
        ):
            server.register(name, self._serialised(handler))

    def _serialised(self, handler: Handler) -> Handler:
        async def run(args: dict[str, Any]) -> Any:
            async with self.lock:
                if self.closed:
                    raise CommandError("the mount is being unmounted: its processes are gone")
                return await handler(args)

        return run

    async def close(self) -> None:
        """Every process exits (the mount goes).  => may sleep."""
        async with self.lock:
            if not self.closed:
                self.closed = True
                await self.table.exit_all()

    # --- helpers ------------------------------------------------------------------------

    def _proc(self, args: dict[str, Any]) -> Proc:
        pid = arg_int(args, "pid", 1, 1 << 62)
        proc = self.table.get(pid)
        if proc is None:
            raise CommandError(f"no process {pid} (see 'procs')")
        return proc

    def _range(self, args: dict[str, Any]) -> tuple[int, int]:
        return arg_int(args, "addr", 0, _ADDR_MAX), arg_int(args, "length", 1, _ADDR_MAX)

    def _range_command(
        self, name: str, call: RangeCall, meaning: dict[int, str] | None = None
    ) -> Handler:
        """The handler of a command on a range of a process (munmap, mlock, munlock,
        vslock, vsunlock): arguments pid, addr, length; the call's errno is the error,
        explained by ``meaning`` where it has the errno."""

        async def run(args: dict[str, Any]) -> dict[str, Any]:
            check_keys(args, ("pid", "addr", "length"))
            proc = self._proc(args)
            va, length = self._range(args)
            err = await call(proc, va, length)
            if err:
                raise CommandError(_errtext(err, f"{name} {va:#x}", meaning))
            return {}

        return run

    def _new_pid_ok(self) -> None:
        if len(self.table.procs) >= MAX_PROCS:
            raise CommandError(f"too many processes ({MAX_PROCS}); exit some first")

    # --- commands -----------------------------------------------------------------------

    async def _proc_new(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ())
        self._new_pid_ok()
        return {"pid": self.table.proc_new().pid}

    async def _mmap(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ("pid", "path", "offset", "length"), ("private", "prot"))
        proc = self._proc(args)
        path = arg_str(args, "path")
        offset = arg_int(args, "offset", 0, _ADDR_MAX)
        length = arg_int(args, "length", 1, _ADDR_MAX)
        private = _arg_bool(args, "private", False)
        prot_text = arg_str(args, "prot", 8) if "prot" in args else "rw"
        if prot_text not in ("r", "rw"):
            raise ProtocolError("argument 'prot' must be 'r' or 'rw'")
        prot = Prot.READ.value if prot_text == "r" else Prot.RW.value
        if "\0" in path:
            raise ProtocolError("argument 'path' contains a NUL byte")
        try:
            vp, ref = await self.ops.map_file(path)
        except OSError as e:
            raise CommandError(_errtext(e.errno or errno.EIO, f"mmap {path}")) from None
        try:
            err, va = sys_mmap(proc, length, vp.uobj, offset, prot, private, ref)
        finally:
            self.ops.unmap_use(vp)
        if err:
            raise CommandError(_errtext(err, f"mmap {path}"))
        return {"addr": va, "length": length}

    async def _load(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ("pid", "addr", "length"))
        proc = self._proc(args)
        va = arg_int(args, "addr", 0, _ADDR_MAX)
        length = arg_int(args, "length", 1, MAX_LOAD)
        err, data = await proc_load(proc, va, length)
        if err:
            raise CommandError(_errtext(err, f"load at {va:#x}"))
        return {"hex": data.hex()}

    async def _store(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ("pid", "addr", "hex"))
        proc = self._proc(args)
        va = arg_int(args, "addr", 0, _ADDR_MAX)
        err = await proc_store(proc, va, _arg_hex(args, "hex"))
        if err:
            raise CommandError(_errtext(err, f"store at {va:#x}"))
        return {}

    async def _ptrace_write(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ("pid", "addr", "hex"))
        proc = self._proc(args)
        va = arg_int(args, "addr", 0, _ADDR_MAX)
        err = await self.table.ptrace_write(proc, va, _arg_hex(args, "hex"))
        if err:
            raise CommandError(_errtext(err, f"ptrace-write at {va:#x}"))
        return {}

    async def _fork(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ("pid",))
        proc = self._proc(args)
        self._new_pid_ok()
        err, child = await self.table.fork(proc)
        if err or child is None:
            raise CommandError(_errtext(err or errno.EAGAIN, f"fork of {proc.pid}"))
        return {"pid": child.pid}

    async def _exit(self, args: dict[str, Any]) -> dict[str, Any]:
        check_keys(args, ("pid",))
        proc = self._proc(args)
        await self.table.exit(proc)
        return {}

    async def _procs(self, args: dict[str, Any]) -> list[dict[str, Any]]:
        check_keys(args, ())
        return [self.describe(p) for p in sorted(self.table.procs.values(), key=_pid)]

    def statistics(self) -> dict[str, int]:
        """The processes' part of ``stat``: how many, their map entries (wired ones too),
        the pages their pmaps map and wire, and the files their mappings hold."""
        procs = list(self.table.procs.values())
        entries = [e for p in procs for e in p.vm.entries]
        return {
            "processes": len(procs),
            "map_entries": len(entries),
            "wired_entries": sum(1 for e in entries if e.wired_count),
            "resident": sum(p.vm.pmap.resident_count for p in procs),
            "wired": sum(p.vm.pmap.wired_count for p in procs),
            "mapped_files": len(self.ops.mapped),
        }

    def describe(self, proc: Proc) -> dict[str, Any]:
        """A process and its map, as ``procs`` shows them."""
        vm = proc.vm
        return {
            "pid": proc.pid,
            "resident": vm.pmap.resident_count,
            "wired": vm.pmap.wired_count,
            "maps": [self._entry(proc, e) for e in vm.entries],
        }

    def _entry(self, proc: Proc, e: VmMapEntry) -> dict[str, Any]:
        shift = proc.vm.uvm.page_shift
        npages = (e.end - e.start) >> shift
        anons = 0
        if e.amap is not None:
            lo = e.amap_off
            anons = sum(1 for i in e.amap.anons if lo <= i < lo + npages)
        return {
            "start": e.start,
            "end": e.end,
            "object": e.obj.name if e.obj is not None else None,
            "offset": e.offset,
            "prot": str(Prot(e.prot)),
            "maxprot": str(Prot(e.maxprot)),
            "private": e.copy_on_write,
            "wired": e.wired_count,
            "needs_copy": e.needs_copy,
            "anons": anons,
            "mapped_pages": pmap_resident_in(proc.vm.pmap, e.start, e.end),
        }


async def _vsunlock(proc: Proc, va: int, length: int) -> int:
    return vsunlock(proc, va, length)  # never sleeps; async to serve as a RangeCall


def _pid(p: Proc) -> int:
    return p.pid
