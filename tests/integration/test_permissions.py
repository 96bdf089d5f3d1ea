"""Permissions are the kernel's job (``default_permissions``), also for other users.

With ``--allow-other`` a second, unprivileged user reaches the mount; what that user may not
read or write in the backing directory, they may not read or write on the mount either.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.integration.conftest import Mounter

pytestmark = pytest.mark.fuse

NOBODY = 65534


def as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    """Run a system command as uid/gid 65534 with no supplementary groups."""
    setpriv = shutil.which("setpriv")
    assert setpriv is not None, "setpriv (util-linux) is needed"
    cmd = [setpriv, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def test_other_user_gets_what_the_backing_dir_allows(world_mounter: Mounter) -> None:
    m = world_mounter("p", "--allow-other")
    for p in (m.mnt.parent, m.mnt, m.backing):
        p.chmod(0o755)
    (m.mnt / "public").write_text("everyone\n")
    (m.mnt / "public").chmod(0o644)
    (m.mnt / "private").write_text("root only\n")
    (m.mnt / "private").chmod(0o600)
    (m.mnt / "ro-dir").mkdir(mode=0o755)
    # The modes are the backing files' own.
    assert (m.backing / "private").stat().st_mode & 0o777 == 0o600

    r = as_nobody("cat", str(m.mnt / "public"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == "everyone\n"
    r = as_nobody("cat", str(m.mnt / "private"))
    assert r.returncode != 0
    assert "Permission denied" in r.stderr
    r = as_nobody("touch", str(m.mnt / "ro-dir" / "new"))
    assert r.returncode != 0
    assert "Permission denied" in r.stderr
    r = as_nobody("sh", "-c", f"echo x >> {m.mnt / 'public'}")
    assert r.returncode != 0
    assert (m.mnt / "public").read_text() == "everyone\n"

    # A directory the user owns: files they create there are theirs, on the backing dir too.
    (m.mnt / "home").mkdir()
    os.chown(m.mnt / "home", NOBODY, NOBODY)
    r = as_nobody("sh", "-c", f"echo mine > {m.mnt / 'home' / 'f'}")
    assert r.returncode == 0, r.stderr
    st = (m.backing / "home" / "f").stat()
    assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    assert (m.mnt / "home" / "f").read_text() == "mine\n"


def test_without_allow_other_other_users_are_refused(world_mounter: Mounter) -> None:
    m = world_mounter("q")
    for p in (m.mnt.parent, m.mnt, m.backing):
        p.chmod(0o755)
    (m.mnt / "public").write_text("everyone\n")
    (m.mnt / "public").chmod(0o644)
    r = as_nobody("cat", str(m.mnt / "public"))
    assert r.returncode != 0
    assert "Permission denied" in r.stderr
