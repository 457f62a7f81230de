"""``python -m launch``: run curate/rl commands on Ray clusters.

Each subcommand lives in the module that implements it; that module provides ``add_arguments(parser)``
and ``main(args) -> int`` and keeps heavy imports (ray) inside its functions, so ``--help`` stays instant.
Starting and stopping clusters is shell (``launch/local.sh``, ``launch/slurm.sbatch``,
``launch/ssh_cluster.sh``); see launch/README.md for the order of operations.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "submit": "launch.submit",
    "wait": "launch.wait",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m launch", description=__doc__.splitlines()[0])
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
