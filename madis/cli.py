"""The ``madis`` command.

Subcommand groups live next to the code they drive: each module in :data:`COMMAND_GROUPS`
exposes ``add_parser(subparsers)``, which adds its group (``madis data ...``) and sets
``func(args) -> int`` on every leaf parser. Adding a group is one line here. Keep those modules'
top-level imports light: every ``madis`` call imports all of them to build the parser.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Sequence

#: (group name, module exposing ``add_parser(subparsers)``)
COMMAND_GROUPS: list[tuple[str, str]] = [
    ("best", "madis.fleet.cli"),
    ("data", "madis.data.cli"),
    ("eval", "madis.metrics.cli"),
    ("generate", "madis.mdlm.cli"),
    ("render", "madis.viz.cli"),
    ("up/down", "madis.stack"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="madis",
        description="MaDiS: masked diffusion language models for sign language generation.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="group", required=True, metavar="GROUP")
    for _name, module in COMMAND_GROUPS:
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``madis``; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    from madis.config import ConfigError
    from madis.data.storage import StorageError

    try:
        return int(args.func(args) or 0)
    except StorageError as exn:
        if args.verbose:
            raise
        print(f"error: {exn}", file=sys.stderr)
        return 1
    except (ValueError, KeyError, FileNotFoundError, FileExistsError, NotADirectoryError,
            ConfigError) as exn:
        # bad input (a wrong split, path, value): the message says what to change; the
        # traceback only hides it (-v shows it)
        if args.verbose:
            raise
        msg = exn.args[0] if isinstance(exn, KeyError) and exn.args else exn
        print(f"error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
