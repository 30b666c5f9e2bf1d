#!/bin/sh
# Prepare the QEMU end-to-end test bed: host packages (as root), then the
# cached kernels, guest packages and initramfs layers in .cache/testbed
# (or $PYKEXEC_TESTBED_CACHE).  Safe to run repeatedly; a second run does
# no downloads.
#   scripts/testbed-setup.sh            # Debian 6.1 + 6.12 cloud kernels
#   scripts/testbed-setup.sh --generic  # also the generic 6.1 kernel (Xen dom0)
set -eu
repo=$(cd "$(dirname "$0")/.." && pwd)
if [ "$(id -u)" = 0 ]; then
    "$repo/.ci/install-deps.sh"
else
    echo "testbed-setup.sh: not root, skipping .ci/install-deps.sh" >&2
fi
python=${PYTHON:-$repo/.venv/bin/python}
PYTHONPATH="$repo/tests${PYTHONPATH:+:$PYTHONPATH}" exec "$python" -m support.testbed fetch "$@"
