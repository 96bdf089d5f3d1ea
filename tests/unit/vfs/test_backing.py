"""The backing namespace without FUSE: create's ownership rules (issue 4: "create")."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from ubcfs.vfs.backing import BackingNamespace

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown)")


def test_create_gives_a_new_file_to_the_caller(tmp_path: Path) -> None:
    ns = BackingNamespace(str(tmp_path))
    inode, st, fd = ns.create(ns.root_inode, b"new", 0o640, os.O_CREAT, 1234, 5678)
    try:
        assert (st.st_uid, st.st_gid) == (1234, 5678)
        assert os.stat(tmp_path / "new").st_mode & 0o777 == 0o640
        assert inode.key == (st.st_dev, st.st_ino)
    finally:
        os.close(fd)


def test_create_over_a_file_made_meanwhile_keeps_its_owner(tmp_path: Path) -> None:
    """The kernel sends CREATE after a negative lookup; if the backing directory got the
    name in between, the file is opened as it is, not handed to the caller."""
    ns = BackingNamespace(str(tmp_path))
    (tmp_path / "raced").write_bytes(b"theirs")
    os.chown(tmp_path / "raced", 42, 43)
    _, st, fd = ns.create(ns.root_inode, b"raced", 0o600, os.O_CREAT, 1234, 5678)
    try:
        assert (st.st_uid, st.st_gid) == (42, 43)
        assert os.pread(fd, 10, 0) == b"theirs"
    finally:
        os.close(fd)
    with pytest.raises(OSError) as exc:  # noqa: PT011 -- the errno is what matters
        ns.create(ns.root_inode, b"raced", 0o600, os.O_CREAT | os.O_EXCL, 1, 1)
    assert exc.value.errno == errno.EEXIST
