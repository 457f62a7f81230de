"""``python -m rl``: the training command line.

Each subcommand lives in the module that implements it; that module provides ``add_arguments(parser)``
and ``main(args) -> int`` and keeps heavy imports (torch, ray, verl) inside its functions, so
``--help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "train": "rl.train",
    "sft": "rl.sft",
    "eval": "rl.eval",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m rl",
        description="Train vision-language models with verl (GRPO, SFT) on the samples curation selected.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
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


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._main(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
