"""Library-level CLI subcommands (theory tools and the spectrum); see :mod:`ntkdyn.cli`.

:func:`deprecated_alias` keeps a renamed flag working, hidden from ``--help``, with a note on
stderr naming its new spelling.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["deprecated_alias"]


class _Deprecated(argparse.Action):
    def __init__(self, option_strings, dest, new: str, **kwargs: Any):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(
            f"{parser.prog}: note: {option_string} is deprecated; use {self.new}",
            file=sys.stderr,
        )
        setattr(namespace, self.dest, values)


def deprecated_alias(
    parser: argparse.ArgumentParser, old: str, new: str, dest: str, **kwargs: Any
) -> None:
    """Accept ``old`` as a hidden alias of the flag ``new`` (same destination ``dest``).

    Args:
        parser: the command's parser.
        old: the former flag, e.g. ``--sd-lam``.
        new: the flag to use instead, e.g. ``--lam-sd`` (named in the note on stderr).
        dest: the destination both set.
        **kwargs: ``type``, ``nargs``, … as for ``new``.
    """
    parser.add_argument(
        old,
        dest=dest,
        action=_Deprecated,
        new=new,
        default=argparse.SUPPRESS,
        help=argparse.SUPPRESS,
        **kwargs,
    )
