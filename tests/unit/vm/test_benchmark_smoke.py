"""The VM core benchmark still runs against the current API (a smoke test: tiny iteration
counts, no timing claims)."""

from __future__ import annotations

import importlib.util
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
