"""Session-wide test set-up: DIAGNOSTIC on, the invariant checker after every test that built a
machine, shared fixtures and the hypothesis profiles.

* Every ``Uvm`` built during a test (directly, in a fixture or in a hypothesis example) is
  recorded; when the test has passed, ``audit.check`` runs on each of them, so a test that
  leaves a machine inconsistent fails even if its own assertions passed.  A test that breaks
  a machine on purpose opts out with ``@pytest.mark.broken_vm``.
* After every test no ``SimpleLock`` may still be held (a leaked "lock" would make the next
  test's lock assertions lie).
* Hypothesis profiles: ``ci`` (default: fast, no shrinking), ``dev`` (``ci`` with
  shrinking) and ``nightly`` (thorough); choose with ``HYPOTHESIS_PROFILE=nightly``.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Generator, Iterator

import pytest
import trio
from hypothesis import HealthCheck, Phase, settings

from tests.vmtools import SMALL_PAGES, alloc, resident
from ubcfs.vm import audit, diag
from ubcfs.vm import uvm as uvm_module
from ubcfs.vm.diag import LockInstrument
from ubcfs.vm.object import UvmObject
from ubcfs.vm.page import VmPage
from ubcfs.vm.pmap import Pmap, pmap_create
from ubcfs.vm.uvm import Uvm

diag.set_diagnostic(True)

# "ci" (the default) is for a quick, bounded run: it does not shrink, because shrinking a
# failing 50-step state-machine run takes minutes; the failing steps are printed as found.
# "dev" is the same search with shrinking (to turn a CI failure into a minimal example);
# "nightly" searches much longer.
_NO_SHRINK = tuple(p for p in Phase if p is not Phase.shrink)
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=100,
    stateful_step_count=50,
    phases=_NO_SHRINK,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", settings.get_profile("ci"), phases=tuple(Phase))
settings.register_profile(
    "nightly",
    deadline=None,
    max_examples=2000,
    stateful_step_count=150,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config: pytest.Config) -> None:
    # The markers list lives in pyproject.toml; add ours here (--strict-markers is on).
    config.addinivalue_line(
        "markers",
        "broken_vm: the test breaks a machine on purpose; skip the after-test invariant check",
    )
    config.addinivalue_line(
        "markers",
        "slow: takes more than about a minute (deselect with -m 'not slow')",
    )
    diag.set_diagnostic(True)


_CALL_PASSED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # Remember whether the test body passed, for the after-test audit below.
    report = yield
    if report.when == "call":
        item.stash[_CALL_PASSED] = report.passed
    return report


@pytest.fixture(autouse=True)
def _audit_every_machine(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[list[Uvm]]:
    """Record every ``Uvm`` built during the test; after it, run the DIAGNOSTIC checker on
    each (kernel analogue: DEBUG's whole-structure checks; s3ql: fsck after every test)."""
    built: list[Uvm] = []
    monkeypatch.setattr(uvm_module, "machine_created", built.append)
    diag.HELD.count = 0
    yield built
    broken = request.node.get_closest_marker("broken_vm") is not None
    passed = request.node.stash.get(_CALL_PASSED, False)
    held = diag.HELD.count
    diag.HELD.count = 0
    if broken or not passed:
        return
    for uvm in built:
        audit.check(uvm)
    assert held == 0, f"{held} SimpleLock(s) still held after the test"


@pytest.fixture
def uvm() -> Uvm:
    """A small machine: 64 frames of 4096 bytes."""
    return Uvm(SMALL_PAGES * 4096)


@pytest.fixture
def obj(uvm: Uvm) -> UvmObject:
    """A vnode-like object of ``uvm``."""
    return UvmObject(uvm, "vn")


@pytest.fixture
def aobj(uvm: Uvm) -> UvmObject:
    """An anonymous object of ``uvm``."""
    return UvmObject(uvm, "aobj", is_aobj=True)


@pytest.fixture
def new_page(uvm: Uvm, obj: UvmObject) -> Callable[..., VmPage]:
    """``new_page(offset=None, flags=0, settled=True)``: a page of ``obj``.

    By default it is settled (valid, unbusy, active); ``settled=False`` returns it as
    pagealloc does (PG_BUSY|PG_CLEAN|PG_FAKE, on no queue).  Without an offset, the next
    unused page-aligned one is taken.
    """

    def make(offset: int | None = None, flags: int = 0, settled: bool = True) -> VmPage:
        if offset is None:
            offset = 0
            while offset in obj.pages:
                offset += uvm.page_size
        if settled:
            return resident(uvm, obj, offset, flags)
        return alloc(uvm, obj, offset, flags)

    return make


@pytest.fixture
def pmaps(uvm: Uvm) -> list[Pmap]:
    """Three user pmaps of ``uvm``."""
    return [pmap_create(uvm, f"proc{i}") for i in range(3)]


@pytest.fixture
async def lock_instrument() -> AsyncIterator[LockInstrument]:
    """A ``LockInstrument`` installed for the test's trio run; it must report nothing."""
    inst = LockInstrument()
    trio.lowlevel.add_instrument(inst)
    try:
        yield inst
    finally:
        trio.lowlevel.remove_instrument(inst)
    assert inst.violations == []
