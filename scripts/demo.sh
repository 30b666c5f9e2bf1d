#!/usr/bin/env bash
# Set up, then boot a QEMU guest that kexecs into a second kernel with pykexec and,
# in a second guest, loads a crash kernel with pykexec, panics, and reads /proc/vmcore.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
