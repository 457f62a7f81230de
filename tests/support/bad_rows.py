"""A toy corpus with one row of every kind of bad input the scorers must survive."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from curate.toy.corpus import generate_corpus

BAD_IDS = ("bad-corrupt", "bad-empty-image", "bad-no-image", "bad-question", "bad-task", "bad-counting-truth",
           "bad-huge-prompt")


def corpus_with_bad_rows(path: Path, good_rows: int = 16) -> Path:
    """``good_rows`` toy rows, then one row per kind of bad input, as a canonical Parquet corpus."""
    table = generate_corpus(good_rows, seed=7)
    good = table.to_pylist()
    template = dict(good[0])
    bad = [
        {**template, "id": "bad-corrupt", "images": [b"\x89PNG\r\n\x1a\n not really"]},
        {**template, "id": "bad-empty-image", "images": [b""]},
        {**template, "id": "bad-no-image", "images": []},
        {**template, "id": "bad-question", "question": "   "},
        {**template, "id": "bad-task", "task": "astrology"},
        {**template, "id": "bad-counting-truth", "task": "counting", "ground_truth": "many"},
        {**template, "id": "bad-huge-prompt", "question": "How many? " + "very " * 3000},
    ]
    pq.write_table(pa.Table.from_pylist(good + bad, schema=table.schema), path)
    return path
