"""A hand-built annotated dataset (what ``curate run`` writes) for selection tests: 3 tasks x 24 rows
with known PISM/CMAB buckets, rollouts and RAP scores, plus 6 error rows, in shuffled Parquet shards
with a run record."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from curate import schema as S

# One row per (task, pism bucket, cmab bucket) pattern, repeated: 3 tasks x 24 rows + 6 error rows.
# PISM bucket cycles through easy, medium, hard, unsolved (6 of each per task);
# CMAB bucket cycles through easy, medium, hard (8 of each per task), unsolved where PISM is unsolved.
TASKS = ("counting", "ocr", "math")
PISM_CYCLE = ("easy", "medium", "hard", "unsolved")
CMAB_CYCLE = ("easy", "medium", "hard")
LAMBDA = {"easy": None, "medium": 0.5, "hard": 0.3, "unsolved": 0.0}
RHO = {"easy": 0.05, "medium": 0.3, "hard": 1.0, "unsolved": None}
# The scorers' rollouts of row i, by pattern i % 8 (so the PISM bucket is PISM_CYCLE[pattern % 4]):
# ((correct, attempted) at PISM's λ = 0 level, (cmab_correct, cmab_generations)).
ROLLOUTS = (
    ((1, 1), (4, 4)),  # 0 easy: right at once (early exit stops there); CMAB 4 of 4
    ((1, 2), (4, 4)),  # 1 medium: wrong, then right
    ((1, 3), (2, 4)),  # 2 hard
    ((0, 10), (0, 4)),  # 3 unsolved: never right
    ((1, 1), (3, 4)),  # 4 easy
    ((10, 10), (1, 4)),  # 5 medium: a full level, all right
    ((2, 2), (1, 4)),  # 6 hard: one wave of two, both right
    ((0, 2), (0, 1)),  # 7 unsolved: few rollouts (a run with pism.k=2, cmab.k=1)
)
# RAP's columns of row i, by pattern i % 6, M = 5: (correct with the image, correct without it, ACE flag).
RAP_M = 5
RAP_PATTERNS = (
    (5, 0, False),  # 0 D = 1.0, trivial (5 of 5 with the image)
    (4, 1, False),  # 1 D = 0.6
    (3, 0, True),  # 2 D = 0.6, flagged by ACE
    (1, 0, False),  # 3 D = 0.2, one right: the hardest solvable
    (2, 2, False),  # 4 D = 0.0: the image does not help
    (0, 0, None),  # 5 D = 0.0, never right (no correct response for ACE)
)
# PISM's second level: 5 of 10 where λ = 0 passed, never reached (0 of 0) where it failed; a reader
# that summed the levels would get other counts than λ = 0's.
LEVEL1 = {True: (5, 10), False: (0, 0)}
RAP_COLUMNS = (
    "rap_img_correct", "rap_img_attempts", "rap_txt_correct", "rap_txt_attempts", "rap_cde", "rap_ace_flag"
)


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (value % 256, (value * 7) % 256, 11)).save(buf, format="PNG")
    return buf.getvalue()


def annotated_rows() -> list[dict]:
    rows = []
    for t, task in enumerate(TASKS):
        for i in range(24):
            pism = PISM_CYCLE[i % 4]
            cmab = "unsolved" if pism == "unsolved" else CMAB_CYCLE[i % 3]
            n = t * 100 + i
            (pism_c, pism_a), (cmab_c, cmab_k) = ROLLOUTS[i % 8]
            level1 = LEVEL1[pism_c > 0]
            rap_img, rap_txt, rap_flag = RAP_PATTERNS[i % 6]
            rows.append(
                {
                    S.ID: f"{task}-{i:02d}",
                    S.DATA_SOURCE: "hand",
                    S.TASK: task,
                    S.QUESTION: f"<image>What is shown in picture {n}?",
                    S.IMAGES: [png(n)],
                    S.IMAGE_PATHS: [None],
                    S.GROUND_TRUTH: str(n),
                    S.VERIFIER: None,
                    S.STATUS: S.STATUS_OK,
                    S.ERROR: None,
                    "orig_note": f"note {n}",
                    "pism_bucket": pism,
                    "pism_lambda_star": LAMBDA[pism],
                    "pism_pc": [1.0, 0.5] if pism != "unsolved" else [0.0, None],
                    "cmab_bucket": cmab,
                    "cmab_rho": RHO[cmab],
                    "pism_attempts": [pism_a, level1[1]],
                    "pism_correct": [pism_c, level1[0]],
                    "cmab_correct": cmab_c,
                    "cmab_generations": cmab_k,
                    "rap_img_correct": rap_img,
                    "rap_img_attempts": RAP_M,
                    "rap_txt_correct": rap_txt,
                    "rap_txt_attempts": RAP_M,
                    "rap_cde": (rap_img - rap_txt) / RAP_M,
                    "rap_ace_flag": rap_flag,
                }
            )
    for i in range(6):
        stage = ("read", "pism", "cmab")[i % 3]
        rows.append(
            {
                S.ID: f"bad-{i}",
                S.DATA_SOURCE: "hand",
                S.TASK: TASKS[i % 3],
                S.QUESTION: "<image>?",
                S.IMAGES: [],
                S.IMAGE_PATHS: [],
                S.GROUND_TRUTH: "0",
                S.VERIFIER: None,
                S.STATUS: S.STATUS_ERROR,
                S.ERROR: f"{stage}: something failed",
                "orig_note": None,
                "pism_bucket": None,
                "pism_lambda_star": None,
                "pism_pc": None,
                "cmab_bucket": None,
                "cmab_rho": None,
                "pism_attempts": None,
                "pism_correct": None,
                "cmab_correct": None,
                "cmab_generations": None,
                **{name: None for name in RAP_COLUMNS},
            }
        )
    return rows


SCHEMA = pa.schema(
    [
        *S.CANONICAL_SCHEMA,
        pa.field("orig_note", pa.string()),
        S.PISM_SCHEMA.field("pism_bucket"),
        S.PISM_SCHEMA.field("pism_lambda_star"),
        S.PISM_SCHEMA.field("pism_pc"),
        S.CMAB_SCHEMA.field("cmab_bucket"),
        S.CMAB_SCHEMA.field("cmab_rho"),
        S.PISM_SCHEMA.field("pism_attempts"),
        S.PISM_SCHEMA.field("pism_correct"),
        S.CMAB_SCHEMA.field("cmab_correct"),
        S.CMAB_SCHEMA.field("cmab_generations"),
        *(S.RAP_SCHEMA.field(name) for name in RAP_COLUMNS),
    ]
)


def write_annotated(
    run: Path,
    rows: list[dict] | None = None,
    shards: int = 3,
    order_seed: int = 0,
    run_record: dict | None = None,
) -> Path:
    """``rows`` as Parquet shards under ``run/annotated`` in a shuffled order, plus run.json."""
    rows = list(rows if rows is not None else annotated_rows())
    np.random.default_rng(order_seed).shuffle(rows)
    annotated = run / "annotated"
    annotated.mkdir(parents=True)
    for k in range(shards):
        pq.write_table(
            pa.Table.from_pylist(rows[k::shards], schema=SCHEMA), annotated / f"shard-{k:03d}.parquet"
        )
    record = (
        run_record
        if run_record is not None
        else {
            "fingerprint": "abc123",
            "model": "toy",
            "config": {
                "prompt": {
                    "system_prompt": "Think, then answer.",
                    "template": "{question}",
                    "image_position": "first",
                },
                "pism": {"enabled": True},
                "cmab": {"enabled": True},
            },
        }
    )
    (run / "run.json").write_text(json.dumps(record))
    return run
