#!/usr/bin/env bash
# Set up, then run the whole test suite: unit tests, the kexec-tools differential tests,
# and the QEMU end-to-end tests (which fail, never skip, when CI is set).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CI=${CI:-1}
exec .venv/bin/pytest -q -ra --durations=25 "$@"
