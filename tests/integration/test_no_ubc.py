"""A ``--no-ubc`` mount (``ubcfs.vfs.direct``): data goes straight to the backing files, the
UBC sees none of it, and the file operations behave as on the UBC mount."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.conftest import Mounter

pytestmark = pytest.mark.fuse


def test_data_goes_straight_to_the_backing_files(mounter: Mounter) -> None:
    m = mounter("m", "--no-ubc")
    p = m.mnt / "f"
    data = os.urandom(300_000)
    p.write_bytes(data)
    assert (m.backing / "f").read_bytes() == data  # no sync needed: nothing is cached
    with open(p, "ab") as f:  # O_APPEND lands at the backing file's end
        f.write(b"tail")
    with open(p, "r+b") as f:
        f.seek(10)
        f.write(b"XY")
        f.flush()
        os.fsync(f.fileno())
        assert os.pread(f.fileno(), 4, 8) == data[8:10] + b"XY"
    want = data[:10] + b"XY" + data[12:] + b"tail"
    assert p.read_bytes() == want
    with open(p, "wb"):  # O_TRUNC in open()
        pass
    assert os.stat(m.backing / "f").st_size == 0
    os.truncate(p, 5000)  # setattr without a handle
    assert p.read_bytes() == bytes(5000)
    (m.mnt / "d").mkdir()
    dfd = os.open(m.mnt / "d", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)  # fsyncdir
    finally:
        os.close(dfd)
    counters = m.stat()["counters"]
    assert counters["pageins"] == counters["pageouts"] == 0  # the UBC saw nothing
