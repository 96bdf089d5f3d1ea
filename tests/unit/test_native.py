"""The compiled core's loader (ubcfs.native): which build a run uses, and that an edited
source is never shadowed by a stale extension.

``tests/run.sh`` sets ``UBCFS_TEST_EXPECT_CORE`` (``compiled`` for the whole suite, ``pure``
for the ``UBCFS_PURE=1`` pass), so a CI run that silently fell back to the sources fails here.
The fall-back tests run the loader in a subprocess over a copy of the source tree (with the
real build) or over a made-up manifest (no build needed).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ubcfs import native

TOP = Path(__file__).resolve().parents[2]
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
STALE = "ubcfs: warning: compiled core is stale"

PROBE = """
import json
import genfs.io, pagers.vnode, ubcfs.vm.page, ubcfs.vm.uvm, ubcfs.native
mods = [genfs.io, pagers.vnode, ubcfs.vm.page, ubcfs.vm.uvm]
print(json.dumps({
    "status": ubcfs.native.status(),
    "files": [m.__file__ for m in mods],
    "native": ubcfs.native.__file__,
}))
"""


def compiled_module_names() -> list[str]:
    """The modules pyproject.toml asks to compile, by the build script's own reading."""
    spec = importlib.util.spec_from_file_location("build_core", TOP / "scripts/build_core.py")
    assert spec is not None
    assert spec.loader is not None
    build_core = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build_core)
    return [build_core.module_name(rel) for rel in build_core.compiled_sources()]


def probe(src: Path, **env: str) -> tuple[dict[str, Any], str]:
    """Import core modules in a fresh interpreter whose ``ubcfs``, ``genfs`` and ``pagers``
    come from ``src``; return what it reports and its stderr."""
    full = {k: v for k, v in os.environ.items() if k not in ("UBCFS_PURE", "UBCFS_CORE_DIR")}
    full.update(env, PYTHONPATH=str(src))
    r = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=src,
        env=full,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    out: dict[str, Any] = json.loads(r.stdout)
    assert Path(out["native"]).is_relative_to(src), "the probe imported another checkout"
    return out, r.stderr


def copy_tree(dst: Path) -> Path:
    for pkg in ("ubcfs", "genfs", "pagers"):
        shutil.copytree(TOP / pkg, dst / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def edit(path: Path) -> None:
    with open(path, "a") as f:
        f.write("# edited after the build\n")


def test_the_run_uses_the_build_it_expects() -> None:
    st = native.status()
    assert st["core"] in ("compiled", "pure"), st
    want = os.environ.get("UBCFS_TEST_EXPECT_CORE")
    if want:
        assert st["core"] == want, f"expected the {want} core: {st['why']}"
    names = compiled_module_names()
    assert "ubcfs.vm.page" in names
    assert "genfs.io" in names
    for name in names:
        mod = importlib.import_module(name)
        assert mod.__spec__ is not None
        is_ext = isinstance(mod.__spec__.loader, importlib.machinery.ExtensionFileLoader)
        assert is_ext == (st["core"] == "compiled"), f"{name} from {mod.__file__}, {st}"
        if is_ext:
            assert mod.__file__ is not None
            assert Path(mod.__file__).is_relative_to(native.core_dir())


def needs_build() -> Path:
    core = native.core_dir()
    if not (core / "manifest.json").is_file():
        if os.environ.get("UBCFS_TEST_EXPECT_CORE") == "compiled":
            pytest.fail(f"no compiled core in {core}")
        pytest.skip(f"no compiled core in {core} (scripts/setup.sh builds one)")
    return core


def test_an_edited_source_or_dependency_makes_the_loader_fall_back(tmp_path: Path) -> None:
    core = needs_build()
    src = copy_tree(tmp_path / "src")
    out, err = probe(src, UBCFS_CORE_DIR=str(core))
    assert (out["status"]["core"], err) == ("compiled", "")
    assert all(f.endswith(SUFFIX) and Path(f).is_relative_to(core) for f in out["files"])

    out, err = probe(src, UBCFS_CORE_DIR=str(core), UBCFS_PURE="1")
    assert (out["status"], err) == ({"core": "pure", "why": native.PURE_ON_PURPOSE}, "")
    assert all(Path(f).is_relative_to(src) and f.endswith(".py") for f in out["files"])

    edit(src / "ubcfs/vm/param.py")  # compiled, imported by everything
    out, err = probe(src, UBCFS_CORE_DIR=str(core))
    assert out["status"] == {"core": "pure", "why": "ubcfs/vm/param.py changed since the build"}
    assert all(Path(f).is_relative_to(src) and f.endswith(".py") for f in out["files"])
    assert len(err.splitlines()) == 1, err
    assert err.startswith(STALE)
    assert "run scripts/setup.sh" in err

    shutil.copy(TOP / "ubcfs/vm/param.py", src / "ubcfs/vm/param.py")
    edit(src / "ubcfs/vfs/backing.py")  # interpreted, but vnops imports it
    out, err = probe(src, UBCFS_CORE_DIR=str(core))
    assert out["status"]["why"] == "ubcfs/vfs/backing.py changed since the build"
    assert len(err.splitlines()) == 1
    assert err.startswith(STALE)


def fake_core(path: Path, sha: str) -> Path:
    """A build directory whose manifest names one module (and no extension file)."""
    path.mkdir()
    manifest = {
        "version": native.MANIFEST_VERSION,
        "ext_suffix": SUFFIX,
        "shared_lib": "ubcfs_core__mypyc" + SUFFIX,
        "shared_lib_module": "ubcfs_core__mypyc",
        "modules": {
            "ubcfs.vm.param": {
                "source": "ubcfs/vm/param.py",
                "sha256": sha,
                "ext": "ubcfs/vm/param" + SUFFIX,
            }
        },
        "deps": {},
    }
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def test_a_manifest_that_does_not_match_is_not_used(tmp_path: Path) -> None:
    """Without a real build: a wrong hash, then a right hash with the file missing."""
    out, err = probe(TOP, UBCFS_CORE_DIR=str(fake_core(tmp_path / "a", "0" * 64)))
    assert out["status"] == {"core": "pure", "why": "ubcfs/vm/param.py changed since the build"}
    assert len(err.splitlines()) == 1
    assert err.startswith(STALE)

    sha = hashlib.sha256((TOP / "ubcfs/vm/param.py").read_bytes()).hexdigest()
    out, err = probe(TOP, UBCFS_CORE_DIR=str(fake_core(tmp_path / "b", sha)))
    assert out["status"]["core"] == "pure"
    assert out["status"]["why"].startswith("ubcfs.vm.param: ")
    assert "missing" in err

    out, err = probe(TOP, UBCFS_CORE_DIR=str(tmp_path / "none"))
    assert (out["status"]["core"], err) == ("pure", "")
    assert all(f.endswith(".py") for f in out["files"])
