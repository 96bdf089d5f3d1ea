"""The frame arena: one anonymous mmap, frames as memoryview slices (issue 2, "Physical
memory")."""

from __future__ import annotations

import pytest

from ubcfs.vm.page import POISON_BYTE
from ubcfs.vm.physmem import PhysMem

PS = 512


@pytest.fixture
def mem() -> PhysMem:
    return PhysMem(8 * PS, PS)


def test_a_fresh_arena_reads_as_zeroes(mem: PhysMem) -> None:
    assert mem.size == 8 * PS
    assert len(mem.view) == 8 * PS
    assert all(mem.is_zero(pa) for pa in range(0, mem.size, PS))


def test_frames_are_writable_views_into_the_arena(mem: PhysMem) -> None:
    f = mem.frame(2 * PS)
    assert isinstance(f, memoryview)
    assert len(f) == PS
    assert not f.readonly
    f[:4] = b"abcd"
    assert bytes(mem.view[2 * PS : 2 * PS + 4]) == b"abcd"
    assert not mem.is_zero(2 * PS)
    assert mem.is_zero(PS)
    assert mem.is_zero(3 * PS)


def test_zero_and_zero_range(mem: PhysMem) -> None:
    mem.frame(PS)[:] = b"\xff" * PS
    mem.zero_range(PS, 10, 20)
    f = bytes(mem.frame(PS))
    assert f[:10] == b"\xff" * 10
    assert f[10:20] == bytes(10)
    assert f[20:] == b"\xff" * (PS - 20)
    mem.zero(PS)
    assert mem.is_zero(PS)


def test_poison_and_copy(mem: PhysMem) -> None:
    mem.poison(0)
    assert bytes(mem.frame(0)) == bytes([POISON_BYTE]) * PS
    mem.frame(PS)[:] = bytes(range(256)) * 2
    mem.copy(PS, 3 * PS)
    assert bytes(mem.frame(3 * PS)) == bytes(range(256)) * 2
    assert bytes(mem.frame(PS)) == bytes(range(256)) * 2
    assert mem.is_zero(2 * PS)


def test_close_releases_the_arena() -> None:
    mem = PhysMem(4 * PS, PS)
    mem.close()
    with pytest.raises(ValueError, match="released"):
        mem.frame(0)


def test_iovecs_merge_adjacent_frames_and_cut_the_last() -> None:
    mem = PhysMem(8 * PS, PS)
    for i in range(8):
        mem.frame(i * PS)[:] = bytes([i]) * PS
    pas = [2 * PS, 3 * PS, 4 * PS, 0, 6 * PS, 7 * PS]
    vecs = mem.iovecs(pas, 5 * PS + 10)
    assert [len(v) for v in vecs] == [3 * PS, PS, PS + 10]
    assert (
        b"".join(bytes(v) for v in vecs)
        == b"".join(bytes([pa // PS]) * PS for pa in pas)[: 5 * PS + 10]
    )
    assert [len(v) for v in mem.iovecs([5 * PS], PS)] == [PS]
    assert [len(v) for v in mem.iovecs([PS, 0], 2 * PS)] == [PS, PS]  # descending: no merge
    for v in vecs:
        v.release()
    mem.close()
