"""A small verl RL parquet (curate's writer) whose rows carry a PISM bucket in extra_info, and verl's
RLHFDataset over it: what the dataloader-side samplers (rl.sampler, rl.signal.curriculum) see."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pyarrow as pa
from omegaconf import OmegaConf

from curate import schema as S
from curate.io import write_verl_parquet

# The bucket of row i is BUCKETS[i % 5] (None: a row scored by nothing).
BUCKETS: tuple[Optional[str], ...] = ("easy", "medium", "hard", "unsolved", None)


def bucket(i: int) -> Optional[str]:
    return BUCKETS[i % len(BUCKETS)]


def bucketed_verl_parquet(path: Path, n: int = 40) -> Path:
    """``n`` text-only rows with ids ``r00``…; row i is bucket(i)."""
    rows = [
        {
            S.ID: f"r{i:02d}",
            S.DATA_SOURCE: "hand",
            S.TASK: "counting",
            S.QUESTION: f"How many? {i}",
            S.IMAGES: [],
            S.IMAGE_PATHS: [],
            S.GROUND_TRUTH: str(i % 4),
            S.VERIFIER: None,
            S.STATUS: "ok",
            S.ERROR: None,
            "pism_bucket": bucket(i),
        }
        for i in range(n)
    ]
    schema = pa.schema([*S.CANONICAL_SCHEMA, S.PISM_SCHEMA.field("pism_bucket")])
    write_verl_parquet(pa.Table.from_pylist(rows, schema=schema), path, extra_info_columns=["pism_bucket"])
    return path


def rlhf_dataset(path: Path):
    """verl's RLHFDataset over ``path`` with the toy tokenizer."""
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from curate.toy.tokenizer import build_tokenizer

    config = OmegaConf.create({"max_prompt_length": 256, "prompt_key": "prompt", "image_key": "images"})
    return RLHFDataset(str(path), build_tokenizer(512), config)
