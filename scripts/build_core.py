"""Compile the VM core with mypyc into the venv, outside the source tree.

    .venv/bin/python scripts/build_core.py [--force] [--check]

The modules to compile are listed in one place, ``[tool.ubcfs.compiled]`` of pyproject.toml
(globs relative to the checkout; ``__init__.py`` files are never compiled).  The build goes
to ``$VIRTUAL_ENV/ubcfs-core`` (``sys.prefix`` of the Python running this), with a
``manifest.json`` that names each compiled module, its extension file and the SHA-256 of the
source it was compiled from, and the hashes of the in-repo modules those import (mypyc
inlines their ``Final`` constants).  ``ubcfs.native`` loads the compiled modules only while
every one of those hashes still matches the checkout; otherwise it runs the pure sources.

The build is skipped when the manifest's stamp (the source hashes, this script, the module
list, the Python and mypy versions) matches: re-running set-up is fast.  ``--check`` only
reports (exit 0: up to date, 1: a build is due); ``--force`` rebuilds anyway.  The work
(C files, objects, mypy's cache) goes to ``$VIRTUAL_ENV/ubcfs-core-build``; the new build
replaces the old one by renaming, so a running daemon keeps the files it has loaded.
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import importlib.machinery
import importlib.metadata
import json
import os
import shutil
import sys
import time
import tomllib
from pathlib import Path

TOP = Path(__file__).resolve().parents[1]
PACKAGES = ("ubcfs", "genfs", "pagers")
GROUP = "ubcfs_core"
MANIFEST_VERSION = 1


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def module_name(rel: str) -> str:
    """``ubcfs/vm/page.py`` -> ``ubcfs.vm.page`` (``__init__.py`` -> the package)."""
    parts = rel.removesuffix(".py").split("/")
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_of(mod: str) -> str | None:
    """The checkout-relative source of an in-repo module, or None."""
    base = mod.replace(".", "/")
    for rel in (base + ".py", base + "/__init__.py"):
        if (TOP / rel).is_file():
            return rel
    return None


def compiled_sources() -> list[str]:
    """The checkout-relative paths that pyproject.toml asks to compile, sorted."""
    with open(TOP / "pyproject.toml", "rb") as f:
        cfg = tomllib.load(f)["tool"]["ubcfs"]["compiled"]
    excluded: set[str] = set()
    for pattern in cfg.get("exclude", []):
        excluded.update(glob.glob(pattern, root_dir=TOP))
    paths: set[str] = set()
    for pattern in cfg["modules"]:
        found = glob.glob(pattern, root_dir=TOP)
        if not found:
            sys.exit(f"build_core: [tool.ubcfs.compiled] {pattern!r} matches no file")
        paths.update(p for p in found if not p.endswith("__init__.py"))
    return sorted(paths - excluded)


def imports_of(rel: str) -> set[str]:
    """In-repo modules (and their parent packages) that ``rel`` imports, at any level."""
    tree = ast.parse((TOP / rel).read_bytes(), rel)
    pkg = module_name(rel).rsplit(".", 1)[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    out: set[str] = set()
    for name in names:
        if name.split(".")[0] not in PACKAGES:
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):
            if source_of(".".join(parts[:i])) is not None:
                out.add(".".join(parts[:i]))
    return out


def dependencies(sources: list[str]) -> dict[str, str]:
    """module -> source of every in-repo module the compiled ones import, transitively,
    that is not compiled itself (but the loader, which the package ``__init__``s import for
    its side effect and which no compiled code uses)."""
    compiled = {module_name(s) for s in sources} | {"ubcfs.native"}
    seen: dict[str, str] = {}
    todo = list(sources)
    while todo:
        for mod in imports_of(todo.pop()):
            rel = source_of(mod)
            if rel is None or mod in compiled or mod in seen:
                continue
            seen[mod] = rel
            todo.append(rel)
    return dict(sorted(seen.items()))


def wanted_manifest(sources: list[str]) -> dict[str, object]:
    """The manifest a build of ``sources`` from the checkout as it is now would write."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    modules = {
        module_name(rel): {
            "source": rel,
            "sha256": sha256(TOP / rel),
            "ext": rel.removesuffix(".py") + suffix,
        }
        for rel in sources
    }
    deps = {
        mod: {"source": rel, "sha256": sha256(TOP / rel)}
        for mod, rel in dependencies(sources).items()
    }
    inputs = {
        "python": sys.version,
        "ext_suffix": suffix,
        "mypy": importlib.metadata.version("mypy"),
        "builder": sha256(Path(__file__).resolve()),
        "modules": modules,
        "deps": deps,
    }
    stamp = hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()
    return {
        "version": MANIFEST_VERSION,
        "stamp": stamp,
        "ext_suffix": suffix,
        "shared_lib": f"{GROUP}__mypyc{suffix}",
        "shared_lib_module": f"{GROUP}__mypyc",
        "modules": modules,
        "deps": deps,
    }


def current(core: Path, want: dict[str, object]) -> bool:
    try:
        have = json.loads((core / "manifest.json").read_text())
    except (OSError, ValueError):
        return False
    if have.get("stamp") != want["stamp"]:
        return False
    modules = have.get("modules", {})
    files = [have.get("shared_lib", "")] + [m["ext"] for m in modules.values()]
    return all((core / f).is_file() for f in files)


def build(core: Path, sources: list[str], want: dict[str, object]) -> None:
    # Imported only when building: the check above needs neither.
    from mypyc.build import mypycify
    from setuptools import setup  # type: ignore[import-untyped]

    work = core.with_name("ubcfs-core-build")
    shutil.rmtree(work, ignore_errors=True)
    lib = work / "lib"
    os.makedirs(lib)
    os.environ["MYPY_CACHE_DIR"] = str(work / "mypy_cache")
    os.chdir(TOP)  # mypy names the modules after their paths from here
    exts = mypycify(
        sources, group_name=GROUP, target_dir=str(work / "c"), multi_file=True, opt_level="3"
    )
    jobs = str(max(1, min(4, os.cpu_count() or 1)))
    # setup() reads the pyproject.toml of its working directory: not the checkout's.
    os.chdir(work)
    setup(
        name="ubcfs-core",
        packages=[],
        py_modules=[],
        ext_modules=exts,
        script_args=[
            "build_ext",
            "--build-lib",
            str(lib),
            "--build-temp",
            str(work / "temp"),
            "--parallel",
            jobs,
        ],
    )
    if wanted_manifest(sources)["stamp"] != want["stamp"]:
        sys.exit("build_core: a source changed during the build; run it again")
    (lib / "manifest.json").write_text(json.dumps(want, indent=1, sort_keys=True) + "\n")
    old = core.with_name("ubcfs-core.old")
    shutil.rmtree(old, ignore_errors=True)
    if core.exists():
        core.rename(old)
    lib.rename(core)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)  # C files and objects: 30 MB, not needed again


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if a build is due")
    ap.add_argument("--force", action="store_true", help="rebuild even if up to date")
    ns = ap.parse_args()
    core = Path(sys.prefix) / "ubcfs-core"
    sources = compiled_sources()
    want = wanted_manifest(sources)
    if not ns.force and current(core, want):
        return 0
    if ns.check:
        return 1
    t0 = time.monotonic()
    build(core, sources, want)
    print(f"build_core: {len(sources)} modules compiled in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
