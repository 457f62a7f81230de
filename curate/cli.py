"""The command lines' shared shape: ``python -m curate|rl|launch COMMAND ...``.

Each subcommand lives in the module that implements it; that module provides ``add_arguments(parser)``
and ``main(args) -> int`` and keeps heavy imports (torch, ray, vllm, verl) inside its functions, so
``--help`` stays instant. Its docstring is the subcommand's help (first line) and description.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Mapping, Sequence

__all__ = ["build_parser", "run"]


def build_parser(prog: str, description: str, commands: Mapping[str, str]) -> argparse.ArgumentParser:
    """A parser with one subcommand per ``name -> module`` of ``commands``."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in commands.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(
            name,
            help=doc.splitlines()[0] if doc else None,
            description=doc,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_main=module.main)
    return parser


def run(prog: str, description: str, commands: Mapping[str, str], argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand; its return value is the exit status."""
    from curate.config import ConfigError

    args = build_parser(prog, description, commands).parse_args(argv)
    try:
        return int(args._main(args) or 0)
    except ConfigError as err:  # the user's to fix: the message names the key, a traceback adds nothing
        print(f"{prog} {args.command}: error: {err}", file=sys.stderr)
        return 2
