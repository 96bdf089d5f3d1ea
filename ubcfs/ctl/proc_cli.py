"""``ubcfs ctl MOUNTPOINT`` subcommands for simulated processes (design.md section 4).

::

    ubcfs ctl MNT proc-new                                   -> pid
    ubcfs ctl MNT mmap PID PATH OFFSET LENGTH [--private] [--prot r|rw]   -> address
    ubcfs ctl MNT munmap|mlock|munlock|vslock|vsunlock PID ADDR LENGTH
    ubcfs ctl MNT load PID ADDR LENGTH                       -> hex
    ubcfs ctl MNT store|ptrace-write PID ADDR HEX
    ubcfs ctl MNT fork PID                                   -> pid
    ubcfs ctl MNT exit PID
    ubcfs ctl MNT procs                                      -> JSON

A command that returns a value prints it alone on its last line (an address as ``0x...``,
which ADDR accepts back).  ADDR, OFFSET and LENGTH are numbers (``4096``, ``0x10000``) or
sizes (``64K``); a bad one is a usage error (exit status 2); a refused operation (no such
process, no mapping there, past EOF ...) is the daemon's one-line error (exit status 1).
Like the rest of the CLI this imports nothing of the VM or trio.
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from typing import Any, Final

from ubcfs.ctl.client import ControlClient
from ubcfs.options import UsageError

Connect = Callable[[str], ControlClient]

_NUM_RE: Final = re.compile(r"(0[xX][0-9a-fA-F]+|\d+)([kKmMgG]?)")
_SUFFIX: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_MAX: Final = 1 << 62


def parse_number(text: str, what: str, allow_zero: bool = False) -> int:
    """A number from the command line: decimal or 0x hex, with an optional K, M or G."""
    m = _NUM_RE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"{what}: expected a number like 4096, 0x10000 or 64K, got {text!r}")
    value = int(m.group(1), 0) * _SUFFIX[m.group(2).upper()]
    if value > _MAX or (value == 0 and not allow_zero):
        raise UsageError(f"{what}: {text!r} is out of range")
    return value


def parse_pid(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < _MAX:
        raise UsageError(f"PID: expected a process id from 'proc-new', got {text!r}")
    return int(text)


def parse_hex(text: str, what: str = "HEX") -> str:
    digits = text.strip()
    if digits.startswith(("0x", "0X")):
        digits = digits[2:]
    if not digits or len(digits) % 2 or re.fullmatch(r"[0-9a-fA-F]+", digits) is None:
        raise UsageError(f"{what}: expected an even number of hex digits, got {text!r}")
    return digits.lower()


def add_parsers(ctl: Any, connect: Connect) -> None:
    """Add the process subcommands to the ``ctl`` subparsers."""

    def run(cmd: str, make: Callable[[argparse.Namespace], dict[str, Any]], show: str = "") -> Any:
        def func(ns: argparse.Namespace) -> int:
            args = make(ns)
            result = connect(ns.mountpoint).request(cmd, args)
            if show == "pid":
                print(result["pid"])
            elif show == "addr":
                print(hex(result["addr"]))
            elif show == "hex":
                print(result["hex"])
            elif show == "json":
                print(json.dumps(result, indent=2))
            return 0

        return func

    q = ctl.add_parser(
        "proc-new",
        help="make a simulated process; prints its pid",
        epilog="example: ubcfs ctl /mnt/ubc proc-new   (prints 1)",
    )
    q.set_defaults(func=run("proc-new", lambda ns: {}, "pid"))

    q = ctl.add_parser(
        "mmap",
        help="map LENGTH bytes of PATH from OFFSET into process PID; prints the address",
        epilog="example: ubcfs ctl /mnt/ubc mmap 1 src/lib.so 0 64K --private --prot r",
    )
    q.add_argument("pid", metavar="PID")
    q.add_argument("path", metavar="PATH", help="a regular file of this mount, from its root")
    q.add_argument("offset", metavar="OFFSET")
    q.add_argument("length", metavar="LENGTH")
    q.add_argument("--private", action="store_true", help="MAP_PRIVATE (copy-on-write)")
    q.add_argument("--prot", choices=("r", "rw"), default="rw", help="protection (default rw)")
    q.set_defaults(
        func=run(
            "mmap",
            lambda ns: {
                "pid": parse_pid(ns.pid),
                "path": ns.path,
                "offset": parse_number(ns.offset, "OFFSET", allow_zero=True),
                "length": parse_number(ns.length, "LENGTH"),
                "private": ns.private,
                "prot": ns.prot,
            },
            "addr",
        )
    )

    for cmd, text in (
        ("munmap", "remove the mappings of a range"),
        ("mlock", "wire a range (mlock)"),
        ("munlock", "unwire a range (munlock)"),
        ("vslock", "wire a range for raw I/O (physio's uvm_vslock)"),
        ("vsunlock", "undo vslock of a range"),
        ("load", "read LENGTH bytes at ADDR as process PID; prints them as hex"),
    ):
        q = ctl.add_parser(cmd, help=text, epilog=f"example: ubcfs ctl /mnt/ubc {cmd} 1 0x10000 8K")
        q.add_argument("pid", metavar="PID")
        q.add_argument("addr", metavar="ADDR")
        q.add_argument("length", metavar="LENGTH")
        q.set_defaults(
            func=run(
                cmd,
                lambda ns: {
                    "pid": parse_pid(ns.pid),
                    "addr": parse_number(ns.addr, "ADDR", allow_zero=True),
                    "length": parse_number(ns.length, "LENGTH"),
                },
                "hex" if cmd == "load" else "",
            )
        )

    for cmd, text in (
        ("store", "write HEX bytes at ADDR as process PID"),
        ("ptrace-write", "write HEX bytes into process PID at ADDR as a debugger does"),
    ):
        q = ctl.add_parser(
            cmd, help=text, epilog=f"example: ubcfs ctl /mnt/ubc {cmd} 1 0x10004 deadbeef"
        )
        q.add_argument("pid", metavar="PID")
        q.add_argument("addr", metavar="ADDR")
        q.add_argument("hex", metavar="HEX")
        q.set_defaults(
            func=run(
                cmd,
                lambda ns: {
                    "pid": parse_pid(ns.pid),
                    "addr": parse_number(ns.addr, "ADDR", allow_zero=True),
                    "hex": parse_hex(ns.hex),
                },
            )
        )

    q = ctl.add_parser(
        "fork",
        help="fork process PID; prints the child's pid",
        epilog="example: ubcfs ctl /mnt/ubc fork 1   (prints 2)",
    )
    q.add_argument("pid", metavar="PID")
    q.set_defaults(func=run("fork", lambda ns: {"pid": parse_pid(ns.pid)}, "pid"))
    q = ctl.add_parser(
        "exit",
        help="process PID exits (its mappings go)",
        epilog="example: ubcfs ctl /mnt/ubc exit 2",
    )
    q.add_argument("pid", metavar="PID")
    q.set_defaults(func=run("exit", lambda ns: {"pid": parse_pid(ns.pid)}))
    q = ctl.add_parser(
        "procs",
        help="the simulated processes and their maps, as JSON",
        epilog="example: ubcfs ctl /mnt/ubc procs",
    )
    q.set_defaults(func=run("procs", lambda ns: {}, "json"))
