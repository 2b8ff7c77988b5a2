"""The ``trainkit`` command: start, inspect and stop a cluster (API.md, "Cluster").

A placeholder until the cluster work lands (issue 3): every subcommand says so and exits 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

_NOT_IMPLEMENTED = "not implemented yet: see issue 3"


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trainkit", description="Manage a trainkit cluster.")
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    subcommands.add_parser("start", help="start a head or worker node on this machine")
    subcommands.add_parser("status", help="show nodes, resources and placement groups")
    subcommands.add_parser("stop", help="stop what `trainkit start` started on this machine")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``trainkit`` command.

    Args:
        argv: the arguments after the program name; ``sys.argv[1:]`` when None.

    Returns:
        The process exit code.
    """
    # parse_known_args: `trainkit start --head --port 6380` gets the same clear message.
    _build_parser().parse_known_args(argv)
    print(_NOT_IMPLEMENTED, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
