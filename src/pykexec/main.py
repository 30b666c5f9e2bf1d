"""The ``pykexec`` command: subcommands first, else kexec-tools' command line.

Kept tiny so that ``pykexec vmcore ...`` does not pay for the kexec CLI's imports.
"""

from __future__ import annotations

import sys
TYPE_CHECKING = False  # typing costs an import; this name is all type checkers need
if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["doctor"]:
        from pykexec.doctor import main as doctor_main

        return doctor_main(args[1:])
    if args[:1] == ["vmcore"]:
        from pykexec.vmcore.cli import main as vmcore_main

        return vmcore_main(args[1:])
    if args[:1] == ["kdump"]:
        from pykexec.kdump.cli import main as kdump_main

        return kdump_main(args[1:])
    from pykexec.cli import main as kexec_main

    return kexec_main(args)
