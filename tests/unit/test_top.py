"""``ubcfs.top``'s frame, from made-up samples: bars in proportion, rates from two samples,
every line within the width, the height respected."""

from __future__ import annotations

from typing import Any

from ubcfs.top import Sample, rates, render


def _sample(when: float, faults: int, free: int = 750) -> Sample:
    stat: dict[str, Any] = {
        "page_size": 4096,
        "pages": {"total": 1000, "free": free, "active": 200, "inactive": 50, "wired": 0},
        "counters": {"faults": faults, "pageouts": 7, "flag": True},
        "swap": {"total": 0, "used": 0, "bad": 0},
    }
    files = [{"name": "a/b", "resident": 120, "dirty": 3, "wired": 1, "anon": False}]
    procs = [{"pid": 4, "resident": 9, "wired": 2, "maps": [{}, {}]}]
    return Sample(when, stat, files, procs)


def test_rates_are_increments_per_second() -> None:
    a, b = _sample(10.0, 100), _sample(12.0, 300)
    assert rates(b, None) == {}
    r = rates(b, a)
    assert r["faults"] == 100.0
    assert r["pageouts"] == 0.0
    assert "flag" not in r  # booleans are not counters
    assert rates(a, b) == {}  # samples out of order
    assert rates(_sample(14.0, 50), b)["faults"] == 0.0  # never a negative rate


def test_frame_fits_and_shows_everything() -> None:
    a, b = _sample(0.0, 0), _sample(1.0, 50)
    lines = render("/mnt/x", b, a, 80, 100)
    assert all(len(line) <= 80 for line in lines)
    assert lines[0].startswith("ubcfs top  /mnt/x")
    free = next(line for line in lines if line.startswith("free"))
    bar = free[free.index("[") + 1 : free.index("]")]
    assert abs(bar.count("#") / len(bar) - 0.75) < 0.05
    assert any("faults" in line and " 50" in line for line in lines)
    assert any(line.split() == ["120", "3", "1", "a/b"] for line in lines)
    assert any(line.split() == ["4", "9", "2", "2"] for line in lines)
    assert not any(line.startswith("swap") for line in lines)  # no swap configured


def test_frame_is_cut_to_the_window() -> None:
    lines = render("/m", _sample(0.0, 0), None, 30, 8)
    assert len(lines) == 8
    assert lines[-1].startswith("(more")
    assert all(len(line) <= 30 for line in lines)
    first = render("/m", _sample(0, 0), None, 200, 99)
    assert any("after the next sample" in line for line in first)


def test_frame_names_the_replacement_policy_and_its_queues() -> None:
    s = _sample(0.0, 0)
    assert any(line.startswith("policy   ?") for line in render("/m", s, None, 100, 99))
    s.stat["pdpolicy"] = {"name": "clock", "active_pages": 200, "inactive_pages": 50,
                          "inactive_target": 83}  # fmt: skip
    line = next(x for x in render("/m", s, None, 100, 99) if x.startswith("policy"))
    assert line.split()[1:] == ["clock:", "active", "200,", "inactive", "50", "(target", "83)"]
    s.stat["pdpolicy"] = {"name": "clockpro", "hot": 230, "cold": 20, "cold_target": 25,
                          "nonresident": 7}  # fmt: skip
    line = next(x for x in render("/m", s, None, 100, 99) if x.startswith("policy"))
    assert "hot 230, cold 20 (target 25), remembered evictions 7" in line
