#!/usr/bin/env bash
# Idempotent set-up of a ubcfs checkout on Debian, as root:
#   * Debian packages: fuse3, libfuse3-dev, pkg-config, patch, fio and make (for ubcfs
#     bench) (and a C compiler, Python headers and venv support, which building pyfuse3
#     from source needs), installed only when missing;
#   * .venv in the checkout with pyfuse3 built from its sdist with
#     scripts/pyfuse3-fallocate.patch (pyfuse3 3.5 does not wire FUSE fallocate), then the
#     package installed editable, with its dev extra;
#   * the core compiled with mypyc into .venv/ubcfs-core (scripts/build_core.py; the modules
#     are listed in pyproject.toml, [tool.ubcfs.compiled]), only when a source changed.
# Sourced or run by mount.sh, tests/run.sh and .ci/run.  Prints what it does, one line a step.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}

need_pkgs=()
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
pkg-config --exists fuse3 2>/dev/null || need_pkgs+=(libfuse3-dev)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
command -v patch >/dev/null 2>&1 || need_pkgs+=(patch)
command -v fio >/dev/null 2>&1 || need_pkgs+=(fio)  # ubcfs bench and benchmarks/mount_fio.py
command -v make >/dev/null 2>&1 || need_pkgs+=(make)  # the build job of ubcfs bench
command -v "$py" >/dev/null 2>&1 || need_pkgs+=(python3)
if command -v "$py" >/dev/null 2>&1; then
    inc=$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    [ -f "$inc/Python.h" ] || need_pkgs+=(python3-dev)
    "$py" -c 'import ensurepip, venv' >/dev/null 2>&1 || need_pkgs+=(python3-venv)
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup: missing Debian packages (${need_pkgs[*]}); run as root or install them" >&2
        exit 2
    fi
    echo "setup: installing ${need_pkgs[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

venv_py="$top/.venv/bin/python"
stamp="$top/.venv/.ubcfs-installed"
if [ ! -x "$venv_py" ]; then
    echo "setup: creating $top/.venv"
    "$py" -m venv "$top/.venv"
fi
pip_fresh=0
upgrade_pip() {
    if [ "$pip_fresh" -eq 0 ]; then
        "$venv_py" -m pip install -q --upgrade pip
        pip_fresh=1
    fi
}

# pyfuse3 with the fallocate handler.  The build's version carries a hash of the patch, the
# pinned sdist and the pinned build requirements (3.5.0+ubcfs.falloc<hash>), so it is
# rebuilt when one of them changes, or when something installed another pyfuse3 over it,
# and only then.  The plain-pyfuse3 dependency of pyproject.toml (pyfuse3>=3.2,<4) is
# satisfied by it, so the editable install below keeps it.
pf_files=("$top/scripts/pyfuse3-fallocate.patch" "$top/scripts/pyfuse3-sdist.txt"
    "$top/scripts/pyfuse3-build-constraints.txt")
pf_base=$(sed -n 's/^pyfuse3==\([^ ]*\) .*/\1/p' "$top/scripts/pyfuse3-sdist.txt")
pf_want="$pf_base+ubcfs.falloc$(cat "${pf_files[@]}" | sha256sum | cut -c1-12)"
pf_have=$("$venv_py" -c 'import importlib.metadata as m; print(m.version("pyfuse3"))' \
    2>/dev/null || true)
pf_built=0
if [ "$pf_have" != "$pf_want" ]; then
    echo "setup: building pyfuse3 $pf_want (pyfuse3 $pf_base with the fallocate patch)"
    pf_log="$top/.venv/pyfuse3-build.log"
    : >"$pf_log"
    pf_tmp=$(mktemp -d)
    pf_fail() {
        rm -rf "$pf_tmp"
        echo "setup: error: cannot build the patched pyfuse3: $1 failed (log: $pf_log)" >&2
        exit 1
    }
    upgrade_pip >>"$pf_log" 2>&1 || pf_fail "upgrading pip"
    pf_pip=("$venv_py" -m pip --disable-pip-version-check)
    pf_bc=(--build-constraint "$top/scripts/pyfuse3-build-constraints.txt")
    "${pf_pip[@]}" download --no-deps --no-binary :all: --require-hashes "${pf_bc[@]}" \
        -r "$top/scripts/pyfuse3-sdist.txt" -d "$pf_tmp" >>"$pf_log" 2>&1 \
        || pf_fail "downloading the pyfuse3 $pf_base sdist"
    tar -xzf "$pf_tmp/pyfuse3-$pf_base.tar.gz" -C "$pf_tmp" >>"$pf_log" 2>&1 \
        || pf_fail "unpacking the sdist"
    patch -d "$pf_tmp/pyfuse3-$pf_base" -p1 --forward --batch \
        <"$top/scripts/pyfuse3-fallocate.patch" >>"$pf_log" 2>&1 \
        || pf_fail "applying scripts/pyfuse3-fallocate.patch"
    SETUPTOOLS_SCM_PRETEND_VERSION_FOR_PYFUSE3="$pf_want" \
        "${pf_pip[@]}" install --no-deps --force-reinstall "${pf_bc[@]}" \
        "$pf_tmp/pyfuse3-$pf_base" >>"$pf_log" 2>&1 \
        || pf_fail "building pyfuse3 (Cython, libfuse3-dev)"
    rm -rf "$pf_tmp"
    pf_built=1
fi

# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$stamp" ] || [ "$top/pyproject.toml" -nt "$stamp" ]; then
    echo "setup: installing ubcfs and its dev extra into .venv"
    upgrade_pip
    "$venv_py" -m pip install -q -e "$top[dev]"
    touch "$stamp"
fi
pf_now=$("$venv_py" -c 'import importlib.metadata as m; print(m.version("pyfuse3"))')
if [ "$pf_now" != "$pf_want" ]; then
    echo "setup: error: pyfuse3 $pf_now replaced the patched $pf_want; run setup again" >&2
    exit 1
fi
# A new build must import (it needs trio, which the editable install brings) and have the
# handler.
if [ "$pf_built" -eq 1 ] &&
    ! "$venv_py" -c 'import sys, pyfuse3; sys.exit(not pyfuse3.FALLOCATE_HANDLER)' \
        >>"$pf_log" 2>&1; then
    echo "setup: error: the patched pyfuse3 does not import or lacks its fallocate handler" \
        "(log: $pf_log)" >&2
    exit 1
fi

# The compiled core.  build_core.py --check hashes the sources (fast); a build happens only
# when one changed, or mypy, Python or the module list did.  ubcfs.native loads the build
# only while it matches the sources, so an edit after this runs the pure code, never a stale
# extension.
# UBCFS_PURE=1 (the way round a compiler failure) leaves the core as it is.
if [ "${UBCFS_PURE:-0}" != 0 ]; then
    echo "setup: UBCFS_PURE is set: the compiled core is neither checked nor built"
elif ! "$venv_py" "$top/scripts/build_core.py" --check; then
    core_log="$top/.venv/ubcfs-core-build.log"
    echo "setup: compiling the core with mypyc (1-2 minutes; log: $core_log)"
    if ! "$venv_py" "$top/scripts/build_core.py" >"$core_log" 2>&1; then
        echo "setup: error: compiling the core failed (log: $core_log);" \
            "UBCFS_PURE=1 runs the sources without it" >&2
        exit 1
    fi
fi
