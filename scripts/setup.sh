#!/usr/bin/env bash
# Set up everything pykexec's demo and tests need on Debian 12: host packages (as root),
# a virtual environment with pykexec and its test dependencies, and the QEMU test bed
# (Debian kernels, busybox, Python for the guest). Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" = 0 ]; then
    sh .ci/install-deps.sh
else
    echo "setup: not root, skipping host packages (run: sudo .ci/install-deps.sh)" >&2
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (the guest runs 3.11)"'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
# The test support package (tests/support: synthetic builders, the QEMU test bed) for the
# benchmarks, scripts/demo.py and the test bed's command line; pytest finds it through
# pyproject.toml's pythonpath.
echo "$PWD/tests" > "$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/pykexec-test-support.pth"
.venv/bin/python -m support.testbed fetch
