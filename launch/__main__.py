"""``python -m launch``: run curate/rl commands on Ray clusters.

Starting and stopping clusters is shell (``launch/local.sh``, ``launch/slurm.sbatch``,
``launch/ssh_cluster.sh``); see launch/README.md for the order of operations.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from curate import cli

# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "submit": "launch.submit",
    "wait": "launch.wait",
}


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run("python -m launch", "Run curate/rl commands on Ray clusters.", COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
