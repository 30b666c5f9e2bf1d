"""The one argparse parser class of every pykexec command line.

Its errors are :class:`~pykexec.errors.UsageError`\\ s, which the commands' one error
boundary (:func:`pykexec.errors.report`) prints as a single line naming the ``--help``
to read, instead of argparse's usage block and ``exit(2)``.
"""

from __future__ import annotations

import argparse

from pykexec.errors import UsageError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any, NoReturn


class Parser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` that raises :class:`UsageError`.

    ``unknown_option``: how to word an unknown option or operand (``"unknown option {}"``,
    formatted with the first one); it also words a missing value as "X needs a value" and
    a value given to a flag as "X takes no value".  Empty: argparse's own words.
    """

    def __init__(self, *, unknown_option: str = "",
                 formatter_class: type[argparse.HelpFormatter] = argparse.HelpFormatter, **kwargs: Any) -> None:
        self.unknown_option = unknown_option
        self.help_formatter = formatter_class
        self._for_help = False
        super().__init__(formatter_class=self._formatter, **kwargs)

    def _formatter(self, prog: str) -> argparse.HelpFormatter:
        # argparse makes a formatter for every add_argument (to check its metavar), and
        # one that is not given a width finds the terminal's, importing shutil (with
        # bz2, lzma and zlib): milliseconds of every command's start-up.  Only help
        # text needs the width.
        return self.help_formatter(prog, width=None if self._for_help else 80)

    def format_usage(self) -> str:
        return self._fitted(super().format_usage)

    def format_help(self) -> str:
        return self._fitted(super().format_help)

    def _fitted(self, format_text: Callable[[], str]) -> str:
        """``format_text()``, its formatters fitting the text to the terminal's width."""
        self._for_help = True
        try:
            return format_text()
        finally:
            self._for_help = False

    def error(self, message: str) -> NoReturn:
        if self.unknown_option:
            message = self._reword(message)
        raise UsageError(message)

    def _reword(self, message: str) -> str:
        if message.startswith("unrecognized arguments: "):
            return self.unknown_option.format(message.split(" ")[2])
        head, sep, what = message.partition(": ")
        if sep and head.startswith("argument "):
            names = head[len("argument "):]
            if what == "expected one argument":
                return f"{names} needs a value"
            if what.startswith("ignored explicit argument "):
                return f"{names} takes no value"
        return message

    def parse_anywhere(self, argv: Sequence[str]) -> argparse.Namespace:
        """Options and operands in any order (``-d 31 SRC --force DST``), as
        ``parse_intermixed_args``; every argument after a ``--`` is an operand (3.11's
        ``parse_intermixed_args`` still reads options there).  The operands land in
        ``operands``: the parser's one positional must be ``operands``, ``nargs="*"``."""
        argv = list(argv)
        tail: list[str] = []
        if "--" in argv:
            at = argv.index("--")
            argv, tail = argv[:at], argv[at + 1:]
        namespace = self.parse_intermixed_args(argv)
        namespace.operands += tail
        return namespace
