"""ubcfs.options: SIZE parsing, mount option validation, well-known paths."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import pytest

from ubcfs import options
from ubcfs.options import MountOptions, SetupError, UsageError


def parse(*argv: str) -> MountOptions:
    parser = argparse.ArgumentParser()
    options.add_mount_arguments(parser)
    return options.from_args(parser.parse_args(list(argv)))


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("4096", 4096),
        ("64K", 64 << 10),
        ("64k", 64 << 10),
        ("128M", 128 << 20),
        ("2G", 2 << 30),
        ("1T", 1 << 40),
        ("007", 7),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert options.parse_size(text) == value


@pytest.mark.parametrize(
    "text",
    ["", "0", "0K", "-1", "+1", "1.5M", "1e6", "12Q", "K", "1 M", " 1M", "1MB", "0x10", "١٢"],
)
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(UsageError, match="--memory") as e:
        options.parse_size(text, "--memory")
    assert "\n" not in str(e.value)


def test_format_size() -> None:
    assert [options.format_size(n) for n in (4096, 1 << 20, 3 << 30, 1000, 1536)] == [
        "4K",
        "1M",
        "3G",
        "1000",
        "1536",
    ]


def test_defaults() -> None:
    o = parse("/x")
    assert (o.memory, o.swap, o.page_size) == (128 << 20, 256 << 20, 4096)
    assert (o.ubc, o.extend_fastpath, o.allow_other, o.foreground, o.debug) == (
        True,
        True,
        False,
        False,
        False,
    )
    assert o.backing is None
    assert o.maxvnodes is None  # the engine's default
    assert o.mountpoint == "/x"
    assert o.kernel_cache is False  # direct_io by default: the UBC is the only cache


def test_swap_defaults_to_twice_memory() -> None:
    assert parse("/x", "--memory", "2M").swap == 4 << 20
    assert parse("/x", "--memory", "2M", "--swap", "1M").swap == 1 << 20


@pytest.mark.parametrize(
    ("argv", "why"),
    [
        (["--tmpfs", "--no-ubc"], "a --tmpfs has none"),
        (["--swap", "-0"], "--swap"),
        (["--swap", "0x"], "--swap"),
        (["--page-size", "1000"], "power of two"),
        (["--page-size", "256"], "power of two"),
        (["--page-size", "128K"], "power of two"),
        (["--memory", "100K"], "at least 64"),
        (["--memory", "4097"], "multiple of the page size"),
        (["--memory", "1024T"], "RAM"),
        (["--swap", "1000"], "multiple of the page size"),
        (["--backing", ""], "empty"),
        (["--swap-file", ""], "empty"),
        (["--maxvnodes", "15"], "whole number from 16"),
        (["--maxvnodes", "many"], "whole number"),
        (["--maxvnodes", "-1"], "whole number"),
        (["--maxvnodes", "1e3"], "whole number"),
        (["--maxvnodes", "99999999999"], "whole number"),
        (["--writeback-timeout", "0"], "--writeback-timeout: expected a positive number"),
        (["--writeback-timeout", "-1"], "--writeback-timeout"),
        (["--writeback-timeout", "soon"], "--writeback-timeout"),
        (["--writeback-timeout", "nan"], "--writeback-timeout"),
        (["--writeback-timeout", "inf"], "--writeback-timeout"),
        (["--writeback-timeout", "1e999"], "--writeback-timeout"),
        (["--writeback-timeout", "100000"], "--writeback-timeout"),
        (["--writeback-timeout", ""], "--writeback-timeout"),
        (["--pdpolicy", "lru"], "--pdpolicy: 'lru' is not one of clock, clockpro"),
        (["--pdpolicy", ""], "--pdpolicy"),
        (["--pdpolicy", "CLOCK"], "--pdpolicy"),
    ],
)
def test_bad_options(argv: list[str], why: str) -> None:
    with pytest.raises(UsageError, match=why) as e:
        parse("/x", *argv)
    assert "\n" not in str(e.value)


def test_writeback_timeout() -> None:
    assert parse("/x").writeback_timeout == 30.0
    assert parse("/x", "--writeback-timeout", "2").writeback_timeout == 2.0
    assert parse("/x", "--writeback-timeout", "0.25").writeback_timeout == 0.25
    assert parse("/x", "--writeback-timeout", "86400").writeback_timeout == 86400.0


def test_pdpolicy() -> None:
    assert parse("/x").pdpolicy == "clock"
    assert parse("/x", "--pdpolicy", "clockpro").pdpolicy == "clockpro"
    o = parse("/x", "--backing", "/", "--pdpolicy", "clockpro")
    assert parse(*o.daemon_argv()) == o


def test_daemon_argv_round_trip(tmp_path: Path) -> None:
    o = parse(
        str(tmp_path / "mnt"), "--backing", str(tmp_path), "--memory", "2M", "--swap", "8M",
        "--swap-file", "swap", "--page-size", "8K", "--no-ubc", "--no-extend-fastpath",
        "--kernel-cache", "--allow-other", "--debug", "--maxvnodes", "100",
        "--writeback-timeout", "0.1",
    )  # fmt: skip
    assert o.maxvnodes == 100
    assert parse(*o.daemon_argv()) == o
    assert o.writeback_timeout == 0.1


def test_tmpfs_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    o = parse("/x", "--tmpfs", "--memory", "2M", "--swap", "0")
    assert (o.tmpfs, o.backing, o.swap, o.swap_file) == (True, None, 0, None)
    assert parse(*o.daemon_argv()) == o
    assert options.with_store(o) is o  # no default store for a tmpfs
    assert parse("/x", "--tmpfs", "--swap", "0K").swap == 0
    given = parse("/x", "--tmpfs", "--swap-file", str(tmp_path / "sw"))
    assert given.swap_file == str(tmp_path / "sw")
    assert parse(*given.daemon_argv()) == given
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    default = options.default_swap_file("/some/mnt")
    assert default.startswith(str(tmp_path / "ubcfs" / "swap-"))
    assert default != options.default_swap_file("/other/mnt")


def test_check_paths_of_the_swap_file(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()

    def check(swap_file: Path) -> None:
        o = parse(str(mnt), "--tmpfs", "--swap-file", str(swap_file))
        options.check_paths(o, fuse_device="/dev/null")

    check(tmp_path / "swap")
    with pytest.raises(UsageError, match="inside the mountpoint"):
        check(mnt / "swap")
    with pytest.raises(UsageError, match="does not exist"):
        check(tmp_path / "nodir" / "swap")
    with pytest.raises(UsageError, match="is a directory"):
        check(tmp_path)


def test_kernel_cache(tmp_path: Path) -> None:
    backing = str(tmp_path)
    o = parse("/x", "--backing", backing, "--kernel-cache")
    assert o.kernel_cache is True
    assert (o.ubc, o.extend_fastpath) == (True, True)  # it changes nothing else
    assert "--kernel-cache" in o.daemon_argv()
    assert parse(*o.daemon_argv()).kernel_cache is True
    plain = parse("/x", "--backing", backing)
    assert plain.kernel_cache is False
    assert "--kernel-cache" not in plain.daemon_argv()
    # The kernel's cache over plain passthrough is a meaningful baseline: allowed.
    both = parse("/x", "--backing", backing, "--kernel-cache", "--no-ubc")
    assert (both.kernel_cache, both.ubc) == (True, False)
    assert parse(*both.daemon_argv()) == both


def test_default_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    o = options.with_store(parse(str(tmp_path)))
    assert o.backing == str(tmp_path / "data" / "ubcfs" / "store")
    assert o.default_store
    assert os.path.isdir(o.backing)
    assert "--backing" not in o.daemon_argv()  # the daemon finds the same store itself
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert options.default_store() == str(tmp_path / "home" / ".local/share/ubcfs/store")


def test_log_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    path = options.log_path("/some/mnt")
    assert path.startswith(str(tmp_path / "ubcfs" / "mount-"))
    assert path != options.log_path("/other/mnt")


def test_check_paths(tmp_path: Path) -> None:
    mnt, backing = tmp_path / "mnt", tmp_path / "backing"
    mnt.mkdir()
    backing.mkdir()
    o = parse(str(mnt), "--backing", str(backing))
    options.check_paths(o, fuse_device="/dev/null")
    with pytest.raises(SetupError, match="does not exist"):
        options.check_paths(o, fuse_device=str(tmp_path / "no-fuse"))
    with pytest.raises(UsageError, match="already a mount point"):
        options.check_paths(parse("/proc", "--backing", str(backing)), fuse_device="/dev/null")
    with pytest.raises(UsageError, match="overlap"):
        options.check_paths(parse(str(backing), "--backing", str(tmp_path)), "/dev/null")
