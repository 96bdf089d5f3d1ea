"""Load the mypyc-compiled core, but only while it matches the sources.

``scripts/setup.sh`` compiles the modules that ``[tool.ubcfs.compiled]`` of pyproject.toml
lists (the VM core, genfs, the pagers, part of the vfs) into ``$VIRTUAL_ENV/ubcfs-core``,
outside the source tree, with a ``manifest.json``: for each compiled module its extension
file and the SHA-256 of the source it was built from, plus the hashes of the in-repo modules
the compiled ones import (mypyc inlines their ``Final`` constants).

Rules:

1. A compiled module never shadows an edited source.  The first import of any module the
   manifest names checks every hash; only if all match (and the extension files exist and
   fit this interpreter) does a meta-path finder serve the extensions, for all of them.
2. All or nothing: mypyc modules share one runtime library and call each other natively,
   so a mixed set cannot work.  If anything is off, every module runs from its source, and
   one line on stderr says why (``compiled core is stale ..., run scripts/setup.sh``).
3. ``UBCFS_PURE=1`` runs the sources on purpose (no warning).  ``UBCFS_CORE_DIR`` names
   another build directory (tests use it).

``install()`` runs from the ``__init__`` of ``ubcfs``, ``genfs`` and ``pagers``, so it is in
place before any of their modules is looked up; it costs nothing until the first core
import (a CLI process that imports only ``ubcfs.ctl.client`` never checks).  ``status()``
tells which build runs, for ``ubcfs ctl MNT ping`` and the benchmark headers.

This module imports only the standard library and is never compiled itself.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from collections.abc import Sequence
    from types import ModuleType

TOP: Final = Path(__file__).resolve().parents[1]  # the checkout: ubcfs/, genfs/, pagers/
MANIFEST_VERSION: Final = 1
PURE_ON_PURPOSE: Final = "UBCFS_PURE is set"  # the reason status() gives for UBCFS_PURE=1


def core_dir() -> Path:
    """Where setup.sh puts the compiled core: ``$UBCFS_CORE_DIR`` or ``sys.prefix/ubcfs-core``."""
    env = os.environ.get("UBCFS_CORE_DIR")
    return Path(env) if env else Path(sys.prefix) / "ubcfs-core"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class CoreFinder(importlib.abc.MetaPathFinder):
    """Decides once, on the first lookup of a manifest module, which build runs; then serves
    every compiled module (and their shared runtime library) from the build directory, or
    nothing at all.

    Attributes:
        core: "compiled" or "pure"; "undecided" until the first core import.
        reason: why, in a few words.
        names: module name -> extension file, for the modules the manifest names.
    """

    def __init__(self, directory: Path, pure: str = "") -> None:
        self.directory = directory
        self.core = "undecided"
        self.reason = ""
        self.names: dict[str, Path] = {}
        self._manifest: dict[str, Any] = {}
        self._shared = ""
        if pure:
            self._decide("pure", pure)
            return
        try:
            manifest = json.loads((directory / "manifest.json").read_text())
        except FileNotFoundError:
            self._decide("pure", f"no compiled core in {directory}")
            return
        except (OSError, ValueError) as e:
            self._decide("pure", f"unreadable manifest in {directory}: {e}", warn=True)
            return
        if manifest.get("version") != MANIFEST_VERSION:
            self._decide("pure", f"manifest version {manifest.get('version')}", warn=True)
            return
        self._manifest = manifest
        self._shared = manifest["shared_lib_module"]
        for name, ent in manifest["modules"].items():
            self.names[name] = directory / ent["ext"]
        self.names[self._shared] = directory / manifest["shared_lib"]

    def _decide(self, core: str, reason: str, warn: bool = False) -> None:
        self.core, self.reason = core, reason
        if warn:
            print(
                f"ubcfs: warning: compiled core is stale ({reason}); running the pure sources;"
                " run scripts/setup.sh",
                file=sys.stderr,
            )

    def _check(self) -> None:
        """Compare the manifest with the checkout and this interpreter; decide."""
        m = self._manifest
        suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
        if m["ext_suffix"] != suffix:
            self._decide("pure", f"built for {m['ext_suffix']}, this Python wants {suffix}", True)
            return
        for table in ("modules", "deps"):
            for ent in m[table].values():
                src = TOP / ent["source"]
                try:
                    same = _sha256(src) == ent["sha256"]
                except OSError:
                    same = False
                if not same:
                    self._decide("pure", f"{ent['source']} changed since the build", True)
                    return
        for name, path in self.names.items():
            if not path.is_file():
                self._decide("pure", f"{name}: {path} is missing", True)
                return
        self._decide("compiled", f"{len(m['modules'])} modules from {self.directory}")

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        ext = self.names.get(fullname)
        if ext is None:
            return None
        if self.core == "undecided":
            self._check()
        if self.core != "compiled":
            return None
        loader = importlib.machinery.ExtensionFileLoader(fullname, str(ext))
        return importlib.util.spec_from_file_location(fullname, ext, loader=loader)


_finder: CoreFinder | None = None


def install() -> None:
    """Put the finder in front of ``sys.meta_path`` (once; later calls do nothing).

    => before any module of the compiled set is imported (the package ``__init__``s).
    """
    global _finder
    if _finder is not None:
        return
    pure = os.environ.get("UBCFS_PURE", "") not in ("", "0")
    _finder = CoreFinder(core_dir(), PURE_ON_PURPOSE if pure else "")
    sys.meta_path.insert(0, _finder)


def status() -> dict[str, str]:
    """``{"core": "compiled"|"pure", "why": ...}``: which build this process runs.

    Decides now if no core module has been imported yet.
    """
    install()
    assert _finder is not None
    if _finder.core == "undecided":
        _finder._check()
    return {"core": _finder.core, "why": _finder.reason}
