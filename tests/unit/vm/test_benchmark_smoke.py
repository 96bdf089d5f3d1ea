"""The VM core benchmark still runs against the current API (a smoke test: tiny iteration
counts, no timing claims)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "benchmarks" / "vm_core.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("vm_core_bench", BENCH)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize(
    "loop",
    ["alloc_free_pairs", "page_life_cycles", "enter_remove_pairs", "page_stores", "page_loads"],
)
def test_benchmark_loops_run(bench: ModuleType, loop: str) -> None:
    rate = bench.best_rate(getattr(bench, loop), 20, 1)
    assert rate > 0


def test_rss_is_read_from_proc(bench: ModuleType) -> None:
    assert bench.rss_bytes() > 1 << 20


def _load(name: str) -> ModuleType:
    path = BENCH.parent / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    assert spec is not None
    assert spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_page_costs_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _load("page_costs")
    out = tmp_path / "costs.json"
    assert mod.main(["--quick", "--pages", "32", "--dir", str(tmp_path), "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    ops = [r["op"] for r in doc["rows"]]
    assert ops == [key for key, _ in mod.STEPS]
    assert all(r["ns_per_page"] > 0 and r["pages"] == 32 for r in doc["rows"])
    assert "| alloc: pagealloc |" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["costs.json"]  # the backing file is gone


def test_mount_fio_acceptance_rows() -> None:
    """The summary and the acceptance rows of mount_fio.py on made-up figures (no mount)."""
    mod = _load("mount_fio")
    jobs = mod.fio_jobs(32, 3, 256 << 20)
    rows = [j.name for j in jobs] + ["create (meta)", "stat (meta)", "unlink (meta)"]
    factor = {"ubcfs": 2.0, "no-ubc": 1.0, "passthrough": 1.0, "null": 8.0, "backing": 4.0}
    targets = list(mod.TARGETS)
    per_round = [{t: dict.fromkeys(rows, factor[t] * (k + 1)) for t in targets} for k in range(3)]
    medians, ratios, _checks = mod.summarize(per_round, rows, targets)
    assert ratios["ubcfs/null"]["rand read 4K"]["median"] == 0.25
    assert ratios["ubcfs/passthrough"]["seq write 1M+fsync"]["median"] == 2.0
    base = mod.vs_baseline(medians, {"results": {"ubcfs": dict.fromkeys(rows, 2.0)}})
    assert base["rand read 4K 2xmem cold"] == 2.0
    accept = mod.acceptance(3, ratios, base, True)
    assert {(a["job"], a["against"]) for a in accept} >= {
        ("seq read 1M cold", "ubcfs/passthrough"),
        ("rand write 4K 2xmem cold", "ubcfs/baseline"),
        ("append 1K", "ubcfs/no-ubc"),
    }
    verdicts = {(a["job"], a["against"]): a["verdict"] for a in accept}
    assert verdicts[("append 1K", "ubcfs/no-ubc")] == "PASS"  # 2.0 >= 1.95
    assert all(a["verdict"] == "MISS" for a in mod.acceptance(3, ratios, {}, False)[-2:])
    # --baseline-tree: the earlier checkout ran in the same rounds, and is judged so.
    targets.insert(1, mod.BASELINE_TARGET)
    for k, rd in enumerate(per_round):
        rd[mod.BASELINE_TARGET] = dict.fromkeys(rows, 1.25 * (k + 1))
    _m, ratios, _c = mod.summarize(per_round, rows, targets)
    same = {a["job"]: a for a in mod.acceptance(3, ratios, {}, False)}
    assert same["rand read 4K 2xmem cold"]["against"] == "ubcfs/baseline-tree"
    assert same["rand read 4K 2xmem cold"]["value"] == 1.6
    assert same["rand read 4K 2xmem cold"]["verdict"] == "PASS"
    mod.print_table(3, rows, dict.fromkeys(rows, "ops/s"), _m, ratios, _c, {}, targets)


def test_engine_page_cpu_targets() -> None:
    mod = _load("engine")
    mib = 1 << 20
    write = mod.Row("seq write 256 MiB, mem 64 MiB, +sync", "1 MiB", 256 * mib, 256, 1.0, 1.0)
    write.thread_s = 256 * mib // 4096 * 2e-6  # 2 µs per page
    cold = mod.Row("seq read cold 128 MiB, mem 256 MiB", "1 MiB", 128 * mib, 128, 1.0, 1.0)
    cold.thread_s = 128 * mib // 4096 * 5e-6
    warm = mod.Row("seq read warm 128 MiB, mem 256 MiB", "1 MiB", 128 * mib, 128, 1.0, 1.0)
    checks = mod.page_cpu_checks([write, cold, warm])
    assert [(c["target"], c["verdict"]) for c in checks] == [(3.0, "PASS"), (2.0, "MISS")]
    assert abs(checks[0]["us_per_page"] - 2.0) < 1e-9


def test_swap_io_quick(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mod = _load("swap_io")
    assert mod.main(["--quick", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.strip().startswith(("1x", "8x"))]
    assert len(rows) == 2
    assert all("pages per read" in r for r in rows)
    assert list(tmp_path.iterdir()) == []  # the swap file and its directory are gone
