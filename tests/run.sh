#!/usr/bin/env bash
# The whole test suite: set-up (Debian packages, .venv and the compiled core, when missing or
# out of date), then ruff, mypy and pytest.  This is the README's test command and what CI runs.
#
# With no arguments: the whole suite on the compiled core; as root, the mounted tests then
# run a second time while a thread writes 2 to /proc/sys/vm/drop_caches every 0.2 s
# (UBCFS_TEST_DROP_CACHES=1, see tests/integration/conftest.py): the kernel evicts inodes and
# dentries whenever it likes, and the mount must not care; last, the unit, stateful and api
# tests on the pure sources (UBCFS_PURE=1).  UBCFS_TEST_EXPECT_CORE tells
# tests/unit/test_native.py which build each pass must be running.  Extra arguments go to a
# single pytest run instead, e.g. `bash tests/run.sh -k pmap` or
# `UBCFS_TEST_DROP_CACHES=1 bash tests/run.sh tests/integration`.
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy

# pytest exits 5 when it collected no test: never a pass.
run_pytest() {
    set +e
    .venv/bin/pytest "$@"
    local rc=$?
    set -e
    if [ "$rc" -eq 5 ]; then
        echo "tests/run.sh: pytest ran no test" >&2
        return 1
    fi
    return "$rc"
}

if [ $# -gt 0 ]; then
    echo "== pytest"
    run_pytest "$@"
    exit $?
fi
echo "== pytest, compiled core"
UBCFS_TEST_EXPECT_CORE=compiled run_pytest
if [ "$(id -u)" -eq 0 ] && [ -w /proc/sys/vm/drop_caches ]; then
    echo "== pytest tests/integration, while the kernel drops inodes and dentries every 0.2 s"
    UBCFS_TEST_EXPECT_CORE=compiled UBCFS_TEST_DROP_CACHES=1 run_pytest tests/integration \
        -m "not slow"
else
    echo "== (not root: the drop_caches pass of tests/integration is skipped)"
fi
echo "== pytest tests/unit tests/stateful tests/api, pure sources (UBCFS_PURE=1)"
UBCFS_PURE=1 UBCFS_TEST_EXPECT_CORE=pure run_pytest tests/unit tests/stateful tests/api
