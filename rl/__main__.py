"""``python -m rl``: the training command line (one module per subcommand, see curate.cli)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from curate import cli

# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "train": "rl.train",
    "sft": "rl.sft",
    "eval": "rl.eval",
    "study": "rl.study",
    "mpo": "rl.mpo",
    "iterate": "rl.iterate",
}
DESCRIPTION = "Train vision-language models with verl (GRPO, SFT) on the samples curation selected."


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run("python -m rl", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
