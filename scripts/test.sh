#!/usr/bin/env bash
# Set up, then run the whole test suite: unit tests, the kexec-tools differential tests,
# and the QEMU end-to-end tests (which fail, never skip, when CI is set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CI=${CI:-1}
# Two workers (one per core) and two guests at once: the QEMU tests are most of the time,
# each guest runs on one core under TCG. Tests are handed out one at a time, longest first
# (tests/conftest.py).
export PYKEXEC_QEMU_SLOTS=${PYKEXEC_QEMU_SLOTS:-2}
exec .venv/bin/pytest -q -ra --durations=25 -n "${PYKEXEC_TEST_WORKERS:-2}" --dist load --maxschedchunk 1 "$@"
