"""``python -m curate``: the curation command line (one module per subcommand, see curate.cli)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from curate import cli

# subcommand -> module implementing it
COMMANDS: dict[str, str] = {
    "score": "curate.score",
    "run": "curate.pipeline",
    "report": "curate.report",
    "grade": "curate.grading.cli",
    "select": "curate.select",
    "toy": "curate.toy.cli",
}
DESCRIPTION = "Score multimodal samples' difficulty (PISM, CMAB), write an annotated dataset, select subsets."


def main(argv: Sequence[str] | None = None) -> int:
    return cli.run("python -m curate", DESCRIPTION, COMMANDS, argv)


if __name__ == "__main__":
    sys.exit(main())
