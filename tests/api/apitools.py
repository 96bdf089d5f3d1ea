"""Helpers for driving ``ubcfs.fuse.Operations`` without a kernel mount."""

from __future__ import annotations

from dataclasses import dataclass
from typing import cast

import pyfuse3

CTX = pyfuse3.RequestContext()  # uid 0, gid 0, pid 0, umask 0


@dataclass
class Fields:
    """Stands in for ``pyfuse3.SetattrFields``, whose attributes Python cannot set."""

    update_size: bool = False
    update_mode: bool = False
    update_uid: bool = False
    update_gid: bool = False
    update_atime: bool = False
    update_mtime: bool = False
    update_ctime: bool = False


def setattr_fields(**changed: bool) -> pyfuse3.SetattrFields:
    """SetattrFields with the given ``update_*`` flags set, e.g. ``update_size=True``."""
    return cast("pyfuse3.SetattrFields", Fields(**changed))
