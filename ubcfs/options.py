"""Mount options: parsing and validation shared by ``ubcfs mount`` and ``ubcfs.daemon``
(design.md sections 3 and 4).

Pure Python and stdlib only: ``ubcfs.cli`` imports this module, and the CLI must never load
pyfuse3 or the VM.  The same argparse definitions serve both sides: the CLI validates
everything before it spawns the daemon, and the daemon validates again (it may also be run
by hand with ``--foreground``), so a bad value is always reported as one line.

Errors come in two kinds, matching the CLI's exit codes:

* ``UsageError`` (exit 2): the command line is wrong on its face -- a bad SIZE, a path
  argument that does not exist or is not a directory, a mountpoint that is already mounted,
  options that do not go together (``--tmpfs`` with ``--no-ubc``).
* ``SetupError`` (exit 1): the command line is fine but this machine cannot do it (no
  ``/dev/fuse``, the default store cannot be created).

SIZE values are bytes with an optional binary suffix: ``4096``, ``64K``, ``128M``, ``2G``
(``K`` = 1024; the suffix may be lower case).  Zero, negative and fractional values, and
anything else, are refused (``--swap 0``, no swap at all, is the one zero allowed).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shutil
import stat
from typing import Final

from ubcfs.ctl.protocol import mount_entry, mount_key

DEFAULT_MEMORY: Final = 128 << 20
DEFAULT_PAGE_SIZE: Final = 4096
MIN_PAGE_SIZE: Final = 512  # the VM core's limits (ubcfs.vm.param), repeated here because
MAX_PAGE_SIZE: Final = 65536  # the CLI must not import the VM
MIN_PAGES: Final = 64
MAX_SIZE: Final = 1 << 60
MIN_MAXVNODES: Final = 16  # ubcfs.vfs.vcache's floor, repeated (the CLI must not import it)
MAX_MAXVNODES: Final = 10_000_000
DEFAULT_WRITEBACK_TIMEOUT: Final = 30.0  # seconds (ubcfs.vm.wbfail.DEFAULT_TIMEOUT)
DEFAULT_HIST_SIZE: Final = 4096  # events (ubcfs.vm.hist.DEFAULT_HIST_SIZE)
MAX_HIST_SIZE: Final = 1 << 20  # events (ubcfs.vm.hist.MAX_HIST_SIZE)
PDPOLICIES: Final = ("clock", "clockpro")  # ubcfs.vm.pdpolicy.POLICIES, repeated
DEFAULT_PDPOLICY: Final = "clock"
MAX_WRITEBACK_TIMEOUT: Final = 86400.0
FUSE_DEVICE: Final = "/dev/fuse"

_SIZE_RE: Final = re.compile(r"([0-9]+)([KMGT]?)", re.IGNORECASE)
_SUFFIX: Final = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


class UsageError(ValueError):
    """The command line is wrong (exit 2); the message is one line."""


class SetupError(RuntimeError):
    """The command line is fine but this machine cannot do it (exit 1); one line."""


def parse_size(text: str, what: str = "SIZE") -> int:
    """Bytes from a SIZE string (``"4096"``, ``"64K"``, ``"128M"``, ``"2G"``).

    Raises:
        UsageError: naming ``what`` and the bad text.
    """
    m = _SIZE_RE.fullmatch(text)
    if m is None:
        raise UsageError(
            f"{what}: invalid size {text!r} (expected a positive number of bytes with an"
            " optional K, M, G or T suffix, e.g. 4096, 64K, 128M, 2G)"
        )
    value = int(m.group(1)) * _SUFFIX[m.group(2).upper()]
    if value <= 0:
        raise UsageError(f"{what}: size must be positive, got {text!r}")
    if value > MAX_SIZE:
        raise UsageError(f"{what}: size {text!r} is too large")
    return value


def format_size(n: int) -> str:
    """``128M`` for 134217728: the largest exact binary suffix, for messages and argv."""
    for suffix in ("T", "G", "M", "K"):
        unit = _SUFFIX[suffix]
        if n >= unit and n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


# --- well-known directories ------------------------------------------------------------


def _xdg_dir(var: str, fallback: str) -> str:
    """An XDG base directory; relative values are invalid per the spec and ignored."""
    value = os.environ.get(var, "")
    if value and os.path.isabs(value):
        return value
    return os.path.join(os.path.expanduser("~"), fallback)


def default_store() -> str:
    """The embedded default store: ``${XDG_DATA_HOME:-~/.local/share}/ubcfs/store``."""
    return os.path.join(_xdg_dir("XDG_DATA_HOME", ".local/share"), "ubcfs", "store")


def state_dir() -> str:
    """Where logs and swap files live: ``${XDG_STATE_HOME:-~/.local/state}/ubcfs``."""
    return os.path.join(_xdg_dir("XDG_STATE_HOME", ".local/state"), "ubcfs")


def default_swap_file(mountpoint: str) -> str:
    """The swap file of a mountpoint when ``--swap-file`` is not given (removed at
    unmount; a daemon that was killed leaves it, and the next mount reuses it)."""
    return os.path.join(state_dir(), f"swap-{mount_key(mountpoint)}")


def log_path(mountpoint: str) -> str:
    """The daemon log of a mountpoint (one file per mountpoint, appended to)."""
    return os.path.join(state_dir(), f"mount-{mount_key(mountpoint)}.log")


# --- the options ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class MountOptions:
    """A validated ``ubcfs mount`` command line.

    Attributes:
        mountpoint: absolute, symlinks resolved.
        backing: the backing directory (absolute, resolved), or None with ``tmpfs``.
        tmpfs: an in-memory file system (``ubcfs.vfs.tmpfs``): names in memory, file data
            in anonymous memory paged to swap.
        default_store: ``backing`` is the embedded default store.
        memory: simulated physical memory in bytes (a multiple of ``page_size``).
        swap: swap size in bytes, 0 for none (with ``tmpfs``: until simulated processes
            have anonymous memory, only a tmpfs has pages to swap).
        swap_file: the swap file, kept at unmount; None: one in the state dir, removed.
        page_size: bytes per page.
        ubc: False for ``--no-ubc`` (data bypasses the UBC).
        extend_fastpath: False for ``--no-extend-fastpath``.
        kernel_cache: True for ``--kernel-cache``: files are opened without FUSE
            ``direct_io``, so shared ``mmap`` works and the kernel's page cache sits in
            front of the UBC (see ``ubcfs.fuse``).
        allow_other: let other users in (``-o allow_other``).
        foreground: run the daemon in the foreground.
        debug: verbose logging.
        maxvnodes: vnode cache size, or None for the default (from memory and the
            descriptor limit).
        hist: events the event history keeps (0: no history).
        pdpolicy: the page-replacement policy (``ubcfs.vm.pdpolicy``): ``clock`` or
            ``clockpro``.
        writeback_timeout: seconds a writer waits for memory held by pages that cannot be
            written before it gets the backing store's error.
    """

    mountpoint: str
    backing: str | None
    tmpfs: bool = False
    default_store: bool = False
    memory: int = DEFAULT_MEMORY
    swap: int = 2 * DEFAULT_MEMORY
    swap_file: str | None = None
    page_size: int = DEFAULT_PAGE_SIZE
    ubc: bool = True
    extend_fastpath: bool = True
    kernel_cache: bool = False
    allow_other: bool = False
    foreground: bool = False
    debug: bool = False
    maxvnodes: int | None = None
    writeback_timeout: float = DEFAULT_WRITEBACK_TIMEOUT
    hist: int = DEFAULT_HIST_SIZE
    pdpolicy: str = DEFAULT_PDPOLICY

    def daemon_argv(self) -> list[str]:
        """The arguments that make ``python -m ubcfs.daemon`` run exactly these options
        (absolute paths, exact sizes; the store is always explicit)."""
        # The default store is left implicit so that the daemon knows it is the default.
        if self.tmpfs:
            store = ["--tmpfs"]
        elif self.backing is None:
            raise UsageError("neither --backing nor --tmpfs")
        else:
            store = [] if self.default_store else ["--backing", self.backing]
        argv = [
            self.mountpoint,
            *store,
            "--memory",
            str(self.memory),
            "--swap",
            str(self.swap),
            "--page-size",
            str(self.page_size),
            "--writeback-timeout",
            repr(self.writeback_timeout),
            "--hist",
            str(self.hist),
            "--pdpolicy",
            self.pdpolicy,
        ]
        if self.swap_file is not None:
            argv += ["--swap-file", self.swap_file]
        if self.maxvnodes is not None:
            argv += ["--maxvnodes", str(self.maxvnodes)]
        for flag, on in (
            ("--no-ubc", not self.ubc),
            ("--no-extend-fastpath", not self.extend_fastpath),
            ("--kernel-cache", self.kernel_cache),
            ("--allow-other", self.allow_other),
            ("--foreground", self.foreground),
            ("--debug", self.debug),
        ):
            if on:
                argv.append(flag)
        return argv


def add_mount_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``mount`` arguments (MOUNTPOINT and every option), for the CLI and the daemon.

    Sizes are kept as strings here and parsed by ``from_args``, so that a bad one gets our
    one-line message rather than argparse's.
    """
    parser.add_argument("mountpoint", metavar="MOUNTPOINT", help="an existing empty directory")
    store = parser.add_mutually_exclusive_group()
    store.add_argument(
        "--backing",
        metavar="DIR",
        help="pass names and data through to DIR (default: the embedded store "
        "${XDG_DATA_HOME:-~/.local/share}/ubcfs/store)",
    )
    store.add_argument(
        "--tmpfs",
        action="store_true",
        help="an in-memory file system: file data in anonymous memory, paged to swap",
    )
    parser.add_argument(
        "--memory", metavar="SIZE", default=None, help="simulated physical memory (default 128M)"
    )
    parser.add_argument(
        "--swap",
        metavar="SIZE",
        default=None,
        help="swap for --tmpfs data (default 2x memory; 0: none, the data must fit in memory)",
    )
    parser.add_argument(
        "--swap-file",
        metavar="PATH",
        default=None,
        help="swap file, created sparse and kept at unmount (default: one in the state dir,"
        " removed at unmount)",
    )
    parser.add_argument(
        "--page-size", metavar="SIZE", default=None, help="page size (default 4096)"
    )
    parser.add_argument(
        "--no-ubc", action="store_true", help="data bypasses the UBC (benchmark baseline)"
    )
    parser.add_argument(
        "--no-extend-fastpath",
        action="store_true",
        help="turn off the extending-write fast path",
    )
    parser.add_argument(
        "--maxvnodes",
        metavar="N",
        default=None,
        help=f"files the vnode cache keeps with their pages ({MIN_MAXVNODES} or more; default:"
        " one per 16K of memory, within the descriptor limit)",
    )
    parser.add_argument(
        "--kernel-cache",
        action="store_true",
        help="open files without direct_io: shared mmap works, and the kernel's page cache"
        " sits in front of the UBC (which then sees only the kernel's misses and writes)",
    )
    parser.add_argument(
        "--writeback-timeout",
        metavar="SECONDS",
        default=None,
        help="how long a writer waits for memory held by pages that cannot be written before"
        " it gets the backing store's error (default 30)",
    )
    parser.add_argument(
        "--hist",
        metavar="N",
        default=None,
        help=f"events the event history keeps ('ubcfs ctl MNT hist'; default {DEFAULT_HIST_SIZE},"
        f" at most {MAX_HIST_SIZE}; 0 turns it off)",
    )
    parser.add_argument(
        "--pdpolicy",
        metavar="POLICY",
        default=None,
        help="the pagedaemon's page-replacement policy: clock (two-queue clock, NetBSD's"
        " default) or clockpro (CLOCK-Pro: hot and cold pages, a test period, the history of"
        f" evicted pages); default {DEFAULT_PDPOLICY}",
    )
    parser.add_argument("--allow-other", action="store_true", help="let other users use the mount")
    parser.add_argument(
        "--foreground", action="store_true", help="run the daemon in the foreground"
    )
    parser.add_argument("--debug", action="store_true", help="verbose logging")


def from_args(ns: argparse.Namespace) -> MountOptions:
    """Validate parsed ``mount`` arguments (values only; ``check_paths`` checks the paths).

    Raises:
        UsageError: a bad value, or options that do not go together.
    """
    if ns.tmpfs and ns.no_ubc:
        raise UsageError("--no-ubc bypasses the UBC to a backing directory; a --tmpfs has none")
    page_size = DEFAULT_PAGE_SIZE
    if ns.page_size is not None:
        page_size = parse_size(ns.page_size, "--page-size")
    if page_size < MIN_PAGE_SIZE or page_size > MAX_PAGE_SIZE or page_size & (page_size - 1):
        raise UsageError(
            f"--page-size: {format_size(page_size)} is not a power of two from"
            f" {MIN_PAGE_SIZE} to {format_size(MAX_PAGE_SIZE)}"
        )
    memory = DEFAULT_MEMORY if ns.memory is None else parse_size(ns.memory, "--memory")
    check_memory(memory, page_size)
    swap = 2 * memory
    if ns.swap is not None:
        swap = 0 if re.fullmatch(r"0+[kKmMgGtT]?", ns.swap) else parse_size(ns.swap, "--swap")
    if swap % page_size:
        raise UsageError(f"--swap: {ns.swap} is not a multiple of the page size {page_size}")
    if not ns.mountpoint:
        raise UsageError("MOUNTPOINT must not be empty")
    swap_file = None
    if ns.swap_file is not None:
        if not ns.swap_file:
            raise UsageError("--swap-file must not be empty")
        swap_file = os.path.abspath(ns.swap_file)
    maxvnodes = None
    if ns.maxvnodes is not None:
        maxvnodes = parse_count(ns.maxvnodes, "--maxvnodes", MIN_MAXVNODES, MAX_MAXVNODES)
    hist = DEFAULT_HIST_SIZE
    if ns.hist is not None:
        hist = parse_count(ns.hist, "--hist", 0, MAX_HIST_SIZE)
    pdpolicy = DEFAULT_PDPOLICY if ns.pdpolicy is None else ns.pdpolicy
    if pdpolicy not in PDPOLICIES:
        raise UsageError(f"--pdpolicy: {pdpolicy!r} is not one of {', '.join(PDPOLICIES)}")
    writeback_timeout = DEFAULT_WRITEBACK_TIMEOUT
    if ns.writeback_timeout is not None:
        writeback_timeout = parse_seconds(ns.writeback_timeout, "--writeback-timeout")
    backing = None
    if ns.backing is not None:
        if not ns.backing:
            raise UsageError("--backing must not be empty")
        backing = os.path.realpath(ns.backing)
    return MountOptions(
        mountpoint=os.path.realpath(ns.mountpoint),
        backing=backing,
        tmpfs=bool(ns.tmpfs),
        memory=memory,
        swap=swap,
        swap_file=swap_file,
        page_size=page_size,
        ubc=not ns.no_ubc,
        extend_fastpath=not ns.no_extend_fastpath,
        kernel_cache=ns.kernel_cache,
        allow_other=ns.allow_other,
        foreground=ns.foreground,
        debug=ns.debug,
        maxvnodes=maxvnodes,
        writeback_timeout=writeback_timeout,
        hist=hist,
        pdpolicy=pdpolicy,
    )


def parse_count(text: str, what: str, lo: int, hi: int) -> int:
    """A whole number from ``lo`` to ``hi``.

    Raises:
        UsageError: naming ``what`` and the bad text.
    """
    if not re.fullmatch(r"[0-9]+", text) or not lo <= int(text) <= hi:
        raise UsageError(f"{what}: expected a whole number from {lo} to {hi}, got {text!r}")
    return int(text)


def parse_seconds(text: str, what: str) -> float:
    """A positive number of seconds (``"30"``, ``"0.5"``), at most a day.

    Raises:
        UsageError: naming ``what`` and the bad text (also for nan and inf).
    """
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= MAX_WRITEBACK_TIMEOUT:
        raise UsageError(
            f"{what}: expected a positive number of seconds up to"
            f" {MAX_WRITEBACK_TIMEOUT:g}, got {text!r}"
        )
    return value


def check_memory(memory: int, page_size: int) -> None:
    """``--memory`` must be whole pages, at least MIN_PAGES of them, and fit in RAM."""
    if memory % page_size:
        raise UsageError(
            f"--memory: {format_size(memory)} is not a multiple of the page size {page_size}"
        )
    if memory // page_size < MIN_PAGES:
        raise UsageError(
            f"--memory: {format_size(memory)} holds {memory // page_size} pages of"
            f" {page_size} bytes; at least {MIN_PAGES} are needed"
        )
    ram = _physical_memory()
    if ram and memory > ram:
        raise UsageError(
            f"--memory: {format_size(memory)} is more than this machine's RAM ({ram >> 20} MiB)"
        )


def _physical_memory() -> int:
    """Bytes of RAM, or 0 when unknown."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 0


def with_store(opts: MountOptions) -> MountOptions:
    """Fill in the embedded default store when neither --backing nor --tmpfs was given,
    creating it on first use.

    Raises:
        SetupError: the store cannot be created.
    """
    if opts.backing is not None or opts.tmpfs:
        return opts
    store = default_store()
    try:
        os.makedirs(store, mode=0o700, exist_ok=True)
    except OSError as e:
        raise SetupError(f"cannot create the default store {store}: {e.strerror}") from None
    return dataclasses.replace(opts, backing=os.path.realpath(store), default_store=True)


def check_paths(opts: MountOptions, fuse_device: str = FUSE_DEVICE) -> None:
    """Check the mountpoint, the backing directory and FUSE before mounting.

    Raises:
        UsageError: MOUNTPOINT or DIR missing, not a directory, already mounted, or one
            inside the other.
        SetupError: no FUSE device, or (for non-root) no fusermount3.
    """
    mnt = opts.mountpoint
    if is_mountpoint(mnt):
        raise UsageError(f"{mnt} is already a mount point; unmount it first")
    _check_dir(mnt, "mountpoint")
    if opts.swap_file is not None:
        if _inside(opts.swap_file, mnt):
            raise UsageError(f"swap file {opts.swap_file} is inside the mountpoint {mnt}")
        _check_dir(os.path.dirname(opts.swap_file), "swap file's directory")
        if os.path.isdir(opts.swap_file):
            raise UsageError(f"swap file {opts.swap_file} is a directory")
    if opts.backing is not None:
        _check_dir(opts.backing, "backing directory")
        if _inside(mnt, opts.backing) or _inside(opts.backing, mnt):
            raise UsageError(
                f"mountpoint {mnt} and backing directory {opts.backing} overlap"
                " (the mount would recurse into itself)"
            )
    if not os.path.exists(fuse_device):
        raise SetupError(f"{fuse_device} does not exist (is the fuse kernel module loaded?)")
    if os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise SetupError("fusermount3 not found (install the fuse3 package)")


def _check_dir(path: str, what: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UsageError(f"{what} {path} does not exist") from None
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"{what} {path} is not a directory")


def _inside(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it (both absolute, resolved)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def is_mountpoint(path: str) -> bool:
    """Something is mounted on ``path`` (a dead FUSE mount counts too)."""
    return mount_entry(path) is not None or os.path.ismount(path)
