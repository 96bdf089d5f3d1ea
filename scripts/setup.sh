#!/usr/bin/env bash
# Idempotent set-up of a ubcfs checkout on Debian, as root:
#   * Debian packages: fuse3, libfuse3-dev, pkg-config (and a C compiler, Python headers and
#     venv support, which building pyfuse3 from source needs), installed only when missing;
#   * .venv in the checkout with the package installed editable, with its dev extra.
# Sourced or run by mount.sh, tests/run.sh and .ci/run.  Prints what it does, one line a step.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
py=${PYTHON:-python3}

need_pkgs=()
command -v fusermount3 >/dev/null 2>&1 || need_pkgs+=(fuse3)
pkg-config --exists fuse3 2>/dev/null || need_pkgs+=(libfuse3-dev)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
command -v cc >/dev/null 2>&1 || need_pkgs+=(gcc)
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

stamp="$top/.venv/.ubcfs-installed"
if [ ! -x "$top/.venv/bin/python" ]; then
    echo "setup: creating $top/.venv"
    "$py" -m venv "$top/.venv"
fi
# Reinstall when pyproject.toml changed since the last install.
if [ ! -f "$stamp" ] || [ "$top/pyproject.toml" -nt "$stamp" ]; then
    echo "setup: installing ubcfs and its dev extra into .venv"
    "$top/.venv/bin/python" -m pip install -q --upgrade pip
    "$top/.venv/bin/python" -m pip install -q -e "$top[dev]"
    touch "$stamp"
fi
