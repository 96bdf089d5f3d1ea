#!/usr/bin/env bash
# The whole test suite: set-up (Debian packages and .venv, when missing), then ruff, mypy and
# pytest.  Extra arguments go to pytest.  This is the README's test command and what CI runs.
# UBCFS_TEST_DROP_CACHES=1 bash tests/run.sh tests/integration runs the mounted tests while a
# thread writes 2 to /proc/sys/vm/drop_caches every 0.2 s (root; tests/integration/conftest.py).
set -euo pipefail
top=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$top"
bash scripts/setup.sh
echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
# pytest exits 5 when it collected no test: never a pass.
if [ "$rc" -eq 5 ]; then
    echo "tests/run.sh: pytest ran no test" >&2
    exit 1
fi
exit "$rc"
