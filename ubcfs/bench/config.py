"""The ``ubcfs bench`` command line, validated.

Every bad value raises ``UsageError`` with one line naming the option (exit status 2); a
missing tool or module raises ``SetupError`` (exit status 1) saying how to get it.  Nothing
is installed here.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import shutil
import time
from collections.abc import Sequence
from typing import Final

from ubcfs import options
from ubcfs.options import SetupError, UsageError, format_size, parse_size

# The jobs, in the order they run within a round.  "variant" jobs make their own mounts
# (per page-replacement policy, or fast path on/off) instead of running on the targets.
JOBS: Final = (
    "seqwrite",
    "seqread-cold",
    "seqread-warm",
    "randread",
    "randwrite",
    "append",
    "metadata",
    "build",
    "truncate",
    "fastpath",
    "loop",
    "scan",
)
FIO_JOBS: Final = frozenset(
    ("seqwrite", "seqread-cold", "seqread-warm", "randread", "randwrite", "append")
)
VARIANT_JOBS: Final = frozenset(("fastpath", "loop", "scan"))
POLICY_JOBS: Final = frozenset(("loop", "scan"))
TARGETS: Final = ("ubcfs", "tmpfs", "no-ubc", "kernel-cache", "backing", "linux-tmpfs")
DAEMON_TARGETS: Final = frozenset(("ubcfs", "tmpfs", "no-ubc", "kernel-cache"))
DEFAULT_SIZE: Final = 64 << 20
MIN_SIZE: Final = 1 << 20
MAX_SIZE: Final = 64 << 30
MAX_ROUNDS: Final = 100
DEFAULT_ROUNDS: Final = 3
BUILD_TOOLS: Final = ("cc", "make", "tar")


@dataclasses.dataclass(frozen=True, slots=True)
class Config:
    """A validated ``ubcfs bench`` run.

    Attributes:
        size: bytes of the sequential file; the other jobs scale with it.
        memory: the ubcfs mounts' ``--memory`` (the policy jobs scale with it).
        page_size: the ubcfs mounts' ``--page-size``.
        jobs: the jobs to run, in ``JOBS`` order.
        targets: the targets, in the order of round 0.
        policies: the page-replacement policies of the loop and scan jobs.
        rounds: how many rounds.
        out: the output directory (created; must not hold anything yet).
    """

    size: int = DEFAULT_SIZE
    memory: int = options.DEFAULT_MEMORY
    page_size: int = options.DEFAULT_PAGE_SIZE
    jobs: tuple[str, ...] = JOBS
    targets: tuple[str, ...] = TARGETS
    policies: tuple[str, ...] = options.PDPOLICIES
    rounds: int = DEFAULT_ROUNDS
    out: str = ""

    def as_json(self) -> dict[str, object]:
        return {
            "size": self.size,
            "size_text": format_size(self.size),
            "memory": self.memory,
            "memory_text": format_size(self.memory),
            "page_size": self.page_size,
            "jobs": list(self.jobs),
            "targets": list(self.targets),
            "policies": list(self.policies),
            "rounds": self.rounds,
            "out": self.out,
        }


def parse_list(text: str, what: str, choices: Sequence[str]) -> tuple[str, ...]:
    """A comma-separated subset of ``choices`` (``all``: every one), in ``choices`` order.

    Raises:
        UsageError: an empty list or an unknown name.
    """
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UsageError(f"{what}: expected a comma-separated list of {', '.join(choices)}")
    if names == ["all"]:
        return tuple(choices)
    unknown = [n for n in names if n not in choices]
    if unknown:
        raise UsageError(f"{what}: unknown {unknown[0]!r} (choose from {', '.join(choices)})")
    return tuple(c for c in choices if c in names)


def parse_rounds(text: str) -> int:
    return options.parse_count(text, "--rounds", 1, MAX_ROUNDS)


def parse_page_size(text: str) -> int:
    page_size = parse_size(text, "--page-size")
    lo, hi = options.MIN_PAGE_SIZE, options.MAX_PAGE_SIZE
    if not lo <= page_size <= hi or page_size & (page_size - 1):
        raise UsageError(
            f"--page-size: {format_size(page_size)} is not a power of two from {lo} to"
            f" {format_size(hi)}"
        )
    return page_size


def parse_bench_size(text: str) -> int:
    size = parse_size(text, "--size")
    if size < MIN_SIZE or size > MAX_SIZE or size % MIN_SIZE:
        raise UsageError(
            f"--size: {text} is not a whole number of MiB from {format_size(MIN_SIZE)} to"
            f" {format_size(MAX_SIZE)} (the sequential jobs use 1 MiB blocks)"
        )
    return size


def default_out(now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return os.path.abspath(f"bench-{stamp}")


def check_out(path: str) -> str:
    """``--out``: absolute; must not exist, or be an empty directory."""
    if not path:
        raise UsageError("--out must not be empty")
    out = os.path.abspath(path)
    if os.path.lexists(out):
        if not os.path.isdir(out):
            raise UsageError(f"--out: {out} exists and is not a directory")
        if os.listdir(out):
            raise UsageError(f"--out: {out} is not empty (results are never overwritten)")
    elif not os.path.isdir(os.path.dirname(out)):
        raise UsageError(f"--out: the directory {os.path.dirname(out)} does not exist")
    return out


def from_args(ns: argparse.Namespace) -> Config:
    """Validate the parsed ``bench`` arguments (not ``--compare``).

    Raises:
        UsageError: a bad value.
    """
    page_size = options.DEFAULT_PAGE_SIZE if ns.page_size is None else parse_page_size(ns.page_size)
    memory = options.DEFAULT_MEMORY if ns.memory is None else parse_size(ns.memory, "--memory")
    options.check_memory(memory, page_size)
    size = DEFAULT_SIZE if ns.size is None else parse_bench_size(ns.size)
    jobs = JOBS if ns.jobs is None else parse_list(ns.jobs, "--jobs", JOBS)
    targets = TARGETS if ns.targets is None else parse_list(ns.targets, "--targets", TARGETS)
    policies: tuple[str, ...] = options.PDPOLICIES
    if ns.policies is not None:
        policies = parse_list(ns.policies, "--policies", options.PDPOLICIES)
    rounds = DEFAULT_ROUNDS if ns.rounds is None else parse_rounds(ns.rounds)
    out = check_out(default_out() if ns.out is None else ns.out)
    return Config(size, memory, page_size, jobs, targets, policies, rounds, out)


def check_prerequisites(cfg: Config, fuse_device: str = options.FUSE_DEVICE) -> None:
    """What the run needs and this machine must have; nothing is installed.

    Raises:
        SetupError: one line saying what is missing and how to get it.
    """
    if importlib.util.find_spec("matplotlib") is None:
        raise SetupError(
            "ubcfs bench needs matplotlib for its charts: pip install matplotlib"
            " (or install ubcfs with its 'bench' extra: pip install 'ubcfs[bench]')"
        )
    if FIO_JOBS & set(cfg.jobs) and shutil.which("fio") is None:
        raise SetupError("fio is not installed: apt-get install fio (or run without fio jobs)")
    if "build" in cfg.jobs:
        missing = [t for t in BUILD_TOOLS if shutil.which(t) is None]
        if missing:
            raise SetupError(
                f"the build job needs {', '.join(missing)}: apt-get install gcc make tar"
                " (or leave 'build' out of --jobs)"
            )
    fuse_used = bool(DAEMON_TARGETS & set(cfg.targets)) or bool(VARIANT_JOBS & set(cfg.jobs))
    if fuse_used and not os.path.exists(fuse_device):
        raise SetupError(f"{fuse_device} does not exist (is the fuse kernel module loaded?)")
    if fuse_used and os.geteuid() != 0 and shutil.which("fusermount3") is None:
        raise SetupError("fusermount3 not found (install the fuse3 package)")
