"""``ubcfs mount --pdpolicy``: both page-replacement policies serve a real workload larger
than the mount's memory, ``ubcfs stat`` names the policy and shows its queues, the checker
passes, and a bad policy is a one-line usage error."""

from __future__ import annotations

import os

import pytest

from tests.integration.conftest import Mounter, run_ubcfs

pytestmark = pytest.mark.fuse

PAGE = 4096


@pytest.mark.parametrize("policy", ["clock", "clockpro"])
def test_a_workload_larger_than_memory_under_each_policy(mounter: Mounter, policy: str) -> None:
    m = mounter("m", "--pdpolicy", policy)
    data = [os.urandom(96 * PAGE) for _ in range(4)]  # 1.5 MiB through 1 MiB of memory
    for i, d in enumerate(data):
        (m.mnt / f"f{i}").write_bytes(d)
    for _ in range(3):
        for i, d in enumerate(data):
            assert (m.mnt / f"f{i}").read_bytes() == d
    snap = m.stat()
    assert snap["pdpolicy"]["name"] == policy
    assert snap["counters"]["pdfreed"] > 0, "memory was short: the daemon reclaimed"
    if policy == "clockpro":
        pro = snap["pdpolicy"]
        assert pro["hot"] + pro["cold"] == snap["pages"]["active"] + snap["pages"]["inactive"]
        assert pro["nres_recorded"] > 0
    text = m.ubcfs("stat", m.mnt)
    assert text.returncode == 0, text.stderr
    assert f"{policy} page-replacement policy" in text.stdout
    check = m.ubcfs("check", m.mnt)
    assert check.returncode == 0, check.stdout + check.stderr


def test_an_unknown_policy_is_a_usage_error(mounter: Mounter) -> None:
    mnt = mounter.base / "bad"
    mnt.mkdir()
    r = run_ubcfs("mount", mnt, "--backing", mounter.base, "--pdpolicy", "lru", env=mounter.env)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "--pdpolicy: 'lru' is not one of clock, clockpro" in r.stderr
