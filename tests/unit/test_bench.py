"""``ubcfs bench`` without mounts: argument validation (exit 2, one line), the statistics,
the results document, the table, ``--compare``, the charts (decoded again) and the C tree."""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ubcfs import cli, options
from ubcfs.bench import compare, config, ctree, jobs, report, stats
from ubcfs.bench.config import Config
from ubcfs.bench.run import Bench, Progress
from ubcfs.options import SetupError, UsageError

# --- the command line -------------------------------------------------------------------


def _one_line_error(capsys: pytest.CaptureFixture[str], argv: list[str], code: int) -> str:
    assert cli.main(argv) == code
    err = capsys.readouterr().err
    assert err.startswith("ubcfs: error: "), err
    assert len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("args", "word"),
    [
        (["--size", "0"], "--size"),
        (["--size", "1.5M"], "--size"),
        (["--size", "512K"], "--size"),
        (["--size", "3000000"], "--size"),
        (["--size", "huge"], "--size"),
        (["--memory", "1K"], "--memory"),
        (["--memory", "-4M"], "--memory"),
        (["--page-size", "3000"], "--page-size"),
        (["--page-size", "128K"], "--page-size"),
        (["--jobs", "seqwrite,nosuch"], "nosuch"),
        (["--jobs", ","], "--jobs"),
        (["--targets", "zfs"], "zfs"),
        (["--policies", "lru"], "lru"),
        (["--rounds", "0"], "--rounds"),
        (["--rounds", "x"], "--rounds"),
        (["--rounds", "101"], "--rounds"),
        (["--bogus"], "unrecognized"),
    ],
)
def test_bad_arguments_are_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], word: str
) -> None:
    err = _one_line_error(capsys, ["bench", *args, "--out", str(tmp_path / "o")], 2)
    assert word in err
    assert not (tmp_path / "o").exists()  # nothing was started


def test_out_must_be_new_or_empty(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert "not a directory" in _one_line_error(
        capsys, ["bench", "--out", str(tmp_path / "file")], 2
    )
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.json").write_text("{}")
    assert "not empty" in _one_line_error(capsys, ["bench", "--out", str(tmp_path / "full")], 2)
    assert "does not exist" in _one_line_error(
        capsys, ["bench", "--out", str(tmp_path / "no" / "such")], 2
    )
    (tmp_path / "empty").mkdir()
    assert config.check_out(str(tmp_path / "empty")) == str(tmp_path / "empty")


def test_lists_keep_the_canonical_order() -> None:
    assert config.parse_list("randread, seqwrite", "--jobs", config.JOBS) == (
        "seqwrite",
        "randread",
    )
    assert config.parse_list("all", "--targets", config.TARGETS) == config.TARGETS
    assert config.parse_list("ubcfs,ubcfs", "--targets", config.TARGETS) == ("ubcfs",)


def _ns(**kw: Any) -> Any:
    import argparse

    base = dict.fromkeys(
        ("size", "memory", "page_size", "jobs", "targets", "policies", "rounds", "out", "compare")
    )
    return argparse.Namespace(**(base | kw))


def test_defaults_and_values(tmp_path: Path) -> None:
    cfg = config.from_args(_ns(out=str(tmp_path / "o")))
    assert cfg.size == config.DEFAULT_SIZE
    assert cfg.memory == options.DEFAULT_MEMORY
    assert cfg.jobs == config.JOBS
    assert cfg.targets == config.TARGETS
    assert cfg.policies == options.PDPOLICIES
    assert cfg.rounds == 3
    cfg = config.from_args(
        _ns(size="8M", memory="2M", page_size="8K", rounds="2", out=str(tmp_path / "o"))
    )
    assert (cfg.size, cfg.memory, cfg.page_size, cfg.rounds) == (8 << 20, 2 << 20, 8192, 2)
    assert config.default_out(0).startswith(os.path.abspath("bench-19700101-"))


def test_missing_tools_say_how_to_get_them(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config(out="/nonexistent")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(SetupError, match="apt-get install fio"):
        config.check_prerequisites(cfg)
    with pytest.raises(SetupError, match="apt-get install gcc make tar"):
        config.check_prerequisites(Config(jobs=("build",), targets=("backing",)))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SetupError, match=r"pip install matplotlib.*ubcfs\[bench\]"):
        config.check_prerequisites(cfg)


def test_missing_fio_from_the_cli_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    err = _one_line_error(capsys, ["bench", "--out", str(tmp_path / "o")], 1)
    assert "apt-get install fio" in err


def test_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        cli.main(["bench", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "ubcfs bench --size" in out
    assert "--compare" in out
    assert "apt-get install" in out


# --- statistics ----------------------------------------------------------------------------


def test_rotation_runs_every_target_in_every_position() -> None:
    t = ["a", "b", "c"]
    assert stats.rotate(t, 0) == ["a", "b", "c"]
    assert stats.rotate(t, 1) == ["b", "c", "a"]
    assert stats.rotate(t, 4) == ["b", "c", "a"]
    assert stats.rotate([], 3) == []
    for i in range(3):
        assert {stats.rotate(t, r)[i] for r in range(3)} == set(t)


def test_summary_median_spread_and_missing_rounds() -> None:
    s = stats.summary([4.0, None, 1.0, 3.0, 2.0])
    assert s["n"] == 4
    assert s["median"] == 2.5
    assert (s["min"], s["max"]) == (1.0, 4.0)
    assert (s["q1"], s["q3"]) == (1.75, 3.25)
    assert s["per_round"] == [4.0, None, 1.0, 3.0, 2.0]
    empty = stats.summary([None, None])
    assert empty["n"] == 0
    assert empty["median"] is None
    assert stats.summary([math.nan, 5.0])["median"] == 5.0


def test_ratios_are_taken_within_rounds() -> None:
    per_round: stats.PerRound = {
        "seqwrite": {
            "ubcfs": {"throughput": [100.0, 300.0, None]},
            "no-ubc": {"throughput": [50.0, 100.0, 80.0]},
            "backing": {"throughput": [200.0, 0.0, 100.0]},
        },
        "loop": {"clock": {"hit_ratio": [0.1]}},
    }
    r = stats.ratios_to(per_round, "no-ubc")
    assert set(r) == {"seqwrite"}
    got = r["seqwrite"]["ubcfs"]["throughput"]
    assert got["per_round"] == [2.0, 3.0, None]
    assert got["median"] == 2.5
    assert r["seqwrite"]["backing"]["throughput"]["per_round"] == [4.0, 0.0, 1.25]
    to_backing = stats.ratios_to(per_round, "backing")["seqwrite"]["ubcfs"]["throughput"]
    assert to_backing["per_round"] == [0.5, None, None]  # a zero reference is no ratio
    assert stats.ratio(1.0, None) is None


def test_hit_ratio() -> None:
    assert stats.hit_ratio(0, 4096, 1 << 20) == 1.0
    assert stats.hit_ratio(256, 4096, 1 << 20) == 0.0
    assert stats.hit_ratio(64, 4096, 1 << 20) == 0.75
    assert stats.hit_ratio(5, 4096, 0) is None


def test_job_sizes_follow_the_options() -> None:
    cfg = Config(size=8 << 20, memory=2 << 20, page_size=4096)
    assert jobs.loop_size(cfg) == 3 << 20
    assert jobs.scan_sizes(cfg) == (512 << 10, (5 << 20) // 2)
    assert jobs.metadata_count(8 << 20) == 512
    assert jobs.metadata_count(1 << 40) == 4096
    assert jobs.truncate_ops(1 << 20) == 100
    assert [v for v, _ in jobs.variants("loop", cfg)] == list(cfg.policies)
    assert dict(jobs.variants("fastpath", cfg))["fastpath-off"] == ("--no-extend-fastpath",)
    assert jobs.skip_reason("seqread-cold", "tmpfs") is not None
    assert jobs.skip_reason("truncate", "no-ubc") is not None
    assert jobs.skip_reason("truncate", "kernel-cache") is None
    assert jobs.skip_reason("seqwrite", "linux-tmpfs") is None


# --- the results document, the table, the charts --------------------------------------------


def _bench(tmp_path: Path, rounds: int = 2) -> Bench:
    cfg = Config(
        size=8 << 20,
        memory=2 << 20,
        jobs=("seqwrite", "build", "loop"),
        targets=("ubcfs", "no-ubc", "backing"),
        policies=("clock", "clockpro"),
        rounds=rounds,
        out=str(tmp_path / "out"),
    )
    b = Bench(cfg, Progress(rounds, io.StringIO()))
    b.started = 1_700_000_000.0
    b.load_before = [0.5, 0.4, 0.3]
    b.targets = list(cfg.targets)
    figures = {"ubcfs": (300.0, 330.0), "no-ubc": (150.0, 110.0), "backing": (600.0, 660.0)}
    for r in range(rounds):
        for t, vals in figures.items():
            samples = [{"t": 0.0, "free": 500.0}, {"t": 0.2, "free": 400.0, "pageouts": 10.0}]
            b._record(r, "seqwrite", t, {"throughput": vals[r]}, {"pageins": 3}, samples, "")
            b._record(r, "build", t, {"seconds": 2.0 + r, "extract": 0.1}, None, [], "")
        b._record(r, "loop", "clock", {"hit_ratio": 0.0, "throughput": 200.0}, None, [], "")
        b._record(r, "loop", "clockpro", {"hit_ratio": 0.25, "throughput": 220.0}, None, [], "")
        b.orders.append(stats.rotate(b.targets, r))
    b.rounds_done = rounds
    b.skipped = {"build": {"linux-tmpfs": "needs root"}}
    return b


def test_results_document_has_every_part(tmp_path: Path) -> None:
    doc = report.build_doc(_bench(tmp_path))
    for key in (
        "schema",
        "partial",
        "machine",
        "ubcfs",
        "options",
        "per_round",
        "results",
        "ratios",
        "counters",
        "samples",
        "cold",
        "skipped",
        "errors",
        "order",
    ):
        assert key in doc, key
    assert doc["schema"] == report.SCHEMA
    assert doc["partial"] is False
    m = doc["machine"]
    assert m["cores"] >= 1
    assert m["memory_bytes"] > 0
    assert m["kernel"]
    assert m["cpu_model"]
    assert len(m["load_before"]) == 3
    assert len(m["load_after"]) == 3
    assert doc["ubcfs"]["commit"] == "unknown" or len(doc["ubcfs"]["commit"]) == 40
    assert doc["results"]["seqwrite"]["ubcfs"]["throughput"]["median"] == 315.0
    # per-round ratios 2.0 and 3.0, not 315 / 130
    assert doc["ratios"]["no-ubc"]["seqwrite"]["ubcfs"]["throughput"]["median"] == 2.5
    assert doc["ratios"]["backing"]["seqwrite"]["ubcfs"]["throughput"]["median"] == 0.5
    assert doc["ratios"]["variants"]["loop"]["clockpro"]["throughput"]["median"] == 1.1
    assert doc["counters"]["seqwrite"]["ubcfs"] == [{"pageins": 3}, {"pageins": 3}]
    path = tmp_path / "r.json"
    report.write_json(str(path), doc | {"x": math.nan})
    again = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert again["x"] is None


def test_partial_run_is_marked(tmp_path: Path) -> None:
    b = _bench(tmp_path)
    b.rounds_done = 1
    assert report.build_doc(b)["partial"] is True
    b.rounds_done, b.interrupted = 2, True
    assert report.build_doc(b)["partial"] is True


def test_table_shows_medians_spreads_and_ratios(tmp_path: Path) -> None:
    text = report.format_table(report.build_doc(_bench(tmp_path)))
    row = next(ln for ln in text.splitlines() if ln.startswith("seqwrite") and "±" in ln)
    assert row.split()[3:] == ["315", "±5%", "130", "±15%", "630", "±5%"]
    assert "ratio to no-ubc" in text
    assert "ratio to backing" in text
    assert "clockpro/clock" in text
    assert "s (lower)" in text
    assert "skipped: build on linux-tmpfs: needs root" in text


def test_charts_decode(tmp_path: Path) -> None:
    from matplotlib import image

    from ubcfs.bench import charts

    doc = report.build_doc(_bench(tmp_path))
    out = tmp_path / "charts"
    out.mkdir()
    made = charts.write_all(doc, str(out))
    assert set(made) == {
        "throughput.png",
        "timeline-ubcfs.png",
        "timeline-no-ubc.png",
        "timeline-backing.png",
        "policies.png",
    }
    for name in made:
        pixels = image.imread(str(out / name))
        assert pixels.ndim == 3, name
        assert min(pixels.shape[:2]) > 100, name
        assert pixels.std() > 0, name  # not a blank image
    charts.write_index(doc | {"charts": made}, str(out))
    page = (out / "index.html").read_text()
    assert all(f"src='{n}'" in page for n in made)
    assert "seqwrite" in page


# --- compare ---------------------------------------------------------------------------------


def test_compare_sets_runs_side_by_side(tmp_path: Path) -> None:
    a = report.build_doc(_bench(tmp_path))
    b = json.loads(json.dumps(a))
    b["results"]["seqwrite"]["ubcfs"]["throughput"]["median"] = 630.0
    del b["results"]["build"]
    b["options"]["memory"] = 4 << 20
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    report.write_json(str(pa), a)
    report.write_json(str(pb), b)
    text = compare.compare_files(str(pa), str(pb))
    lines = text.splitlines()
    row = next(ln for ln in lines if ln.split()[:3] == ["seqwrite", "ubcfs", "throughput"])
    assert row.split()[-3:] == ["315", "630", "2.00"]
    build = next(ln for ln in lines if ln.split()[:3] == ["build", "ubcfs", "seconds"])
    assert build.split()[-2:] == ["-", "-"]  # only in A
    assert any(ln.startswith("warning:") and "memory" in ln for ln in lines)


def test_compare_bad_files_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    good = tmp_path / "good.json"
    report.write_json(str(good), report.build_doc(_bench(tmp_path)))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{not json")
    other = tmp_path / "other.json"
    other.write_text('{"schema": "something-else"}')
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps({"schema": report.SCHEMA, "results": [1]}))
    for path, word in (
        (tmp_path / "missing.json", "does not exist"),
        (bad_json, "not JSON"),
        (other, "not a ubcfs bench"),
        (broken, "results"),
        (tmp_path, "directory"),
    ):
        err = _one_line_error(capsys, ["bench", "--compare", str(good), str(path)], 2)
        assert word in err, err
    err = _one_line_error(capsys, ["bench", "--compare", str(good), str(good), "--size", "8M"], 2)
    assert "--compare takes no other options" in err
    assert cli.main(["bench", "--compare", str(good), str(good)]) == 0
    assert "1.00" in capsys.readouterr().out
    with pytest.raises(UsageError):
        compare.load(str(other))


# --- the C tree ------------------------------------------------------------------------------


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("cc", "make", "tar")), reason="needs cc, make and tar"
)
def test_c_tree_builds_and_prints_the_expected_checksum(tmp_path: Path) -> None:
    tar = tmp_path / "t.tar"
    tar.write_bytes(ctree.tarball())
    assert ctree.tarball() == tar.read_bytes()  # the same bytes every time
    subprocess.run(["tar", "-xf", str(tar), "-C", str(tmp_path)], check=True)
    tree = tmp_path / ctree.TOP
    assert len(list(tree.glob("*.c"))) == ctree.NFILES + 1
    subprocess.run(["make", "-s", "-j2", "-C", str(tree)], check=True, capture_output=True)
    out = subprocess.run([str(tree / "prog")], check=True, capture_output=True, text=True).stdout
    assert out == ctree.expected_output()
