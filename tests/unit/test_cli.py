"""ubcfs.cli helpers that need no daemon: argument parsing and report formatting."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from ubcfs import cli
from ubcfs.options import UsageError

SNAP: dict[str, Any] = {
    "page_size": 4096,
    "pages": {"total": 256, "free": 10, "active": 200, "inactive": 46, "wired": 0, "dirty": 7},
    "counters": {"faults": 5, "pageins": 3, "pageouts": 9, "ubc_hits": 4},
    "swap": {"total": 512, "used": 40, "bad": 3},
    "vnodes": {"total": 3, "active": 1, "inactive": 2, "max": 64},
    "fds": {"limit": 1024, "open": 20, "hits": 30, "misses": 10},
}


def test_errno_and_count() -> None:
    assert cli._parse_errno("EIO") == errno.EIO
    assert cli._parse_errno("enospc") == errno.ENOSPC
    assert cli._parse_errno("5") == 5
    for bad in ("EFOO", "99999", "-5", "", "errorcode", "E2BIGGER"):
        with pytest.raises(UsageError, match="ERRNO"):
            cli._parse_errno(bad)
    assert cli._parse_count("0") == 0
    for bad in ("-1", "x", "1.0", str(1 << 40)):
        with pytest.raises(UsageError, match="COUNT"):
            cli._parse_count(bad)


def test_interval() -> None:
    assert cli._parse_interval("0.5") == 0.5
    for bad in ("0", "-1", "nan", "inf", "soon", "1e9"):
        with pytest.raises(UsageError, match="--watch"):
            cli._parse_interval(bad)


def test_report() -> None:
    text = cli.format_report("/mnt", SNAP)
    lines = text.splitlines()
    assert lines[0] == "/mnt:"
    assert "        4096 bytes per page" in lines
    assert "          10 pages free" in lines
    assert "           9 pageouts" in lines
    assert "          64 vnodes max" in lines
    assert "          40 swap slots used" in lines
    assert "           3 swap slots bad" in lines
    assert "        1024 descriptors limit" in lines
    assert "       75.0% descriptor cache hit rate" in lines
    # A malformed snapshot is shown as far as it goes, never a crash.
    assert cli.format_report("/mnt", {"pages": [], "counters": {"x": "y"}}).startswith("/mnt:")


def test_report_shows_the_write_back_failure_state() -> None:
    wb = {
        "waiting_pages": 2032,
        "failed_pages": 1317,
        "files": 1,
        "failing_files": 1,
        "last_error": "EIO",
        "stuck_seconds": 13.447,
        "next_retry_seconds": 2.084,
        "timeout": 30.0,
    }
    lines = cli.format_report("/mnt", {**SNAP, "writeback": wb}).splitlines()
    assert "        2032 pages waiting for a successful write" in lines
    assert "        1317 pages whose last write failed" in lines
    assert "           1 files with pages waiting" in lines
    assert "         EIO last write-back error" in lines
    assert "        13.4 seconds since pages began waiting" in lines
    assert "        30.0 seconds a writer waits for memory (--writeback-timeout)" in lines
    calm = {**wb, "waiting_pages": 0, "failed_pages": 0, "files": 0, "last_error": None}
    assert "           - last write-back error" in cli.format_report("/mnt", {"writeback": calm})
    # Malformed parts are left out, never a crash.
    text = cli.format_report("/mnt", {"writeback": {"files": "x", "timeout": True}})
    assert "files with" not in text
    assert "--writeback-timeout" not in text


def test_watch_rows_show_growth() -> None:
    later = {**SNAP, "counters": {**SNAP["counters"], "pageouts": 19}}
    assert len(cli.format_watch_row(SNAP, None).split()) == len(cli.WATCH_HEADER.split())
    row = cli.format_watch_row(later, SNAP)
    left, right = row.split("|")
    assert left.split()[0] == "10"
    assert right.split() == ["0", "0", "10", "0", "0", "0", "0", "0"]


def test_main_reports_usage_errors_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mount", "/x", "--memory", "lots"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("ubcfs: error: --memory: invalid size 'lots'")


@pytest.mark.parametrize("flag", ["--kernel-cache=yes", "--kernel-cache=0"])
def test_kernel_cache_is_a_plain_flag(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["mount", "/x", flag]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("ubcfs: error: ")
    assert "--kernel-cache" in err
