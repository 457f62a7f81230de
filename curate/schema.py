"""The canonical sample schema: the one Arrow layout every reader produces and every stage consumes.

A reader turns any supported corpus format into rows with these columns; every column a source has
beyond them is passed through unchanged (renamed ``orig_<name>`` where it would clash), so users can
join annotations back to their data. Scoring stages add the PISM/CMAB/RAP columns below. ``status`` and
``error`` travel with every row: a row that fails anywhere (unreadable image, unparseable answer,
prompt too long) keeps flowing with ``status="error"`` and a message, so every input row appears in
the output exactly once.

Columns
-------
id            string, unique per corpus (taken from the source, else ``<file stem>:<row index>``)
data_source   string, where the sample comes from (verl's ``data_source``)
task          string, the task type that picks the grader (math, counting, ocr, grounding, ...)
question      string, the user text; ``<image>`` marks where each image goes (else images come first)
images        list<binary>, encoded image files (PNG/JPEG bytes), in placeholder order
image_paths   list<string>, where each image was read from (null for inline bytes); provenance only
ground_truth  string, the reference answer (structured answers such as boxes are JSON text)
verifier      string or null, an explicit grader name that overrides ``task`` (Orsta's per-sample routing)
status        string, ``ok`` or ``error``
error         string or null, what went wrong, prefixed by the stage (``read:``, ``pism:``, ``cmab:``, ``rap:``)
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

ID = "id"
DATA_SOURCE = "data_source"
TASK = "task"
QUESTION = "question"
IMAGES = "images"
IMAGE_PATHS = "image_paths"
GROUND_TRUTH = "ground_truth"
VERIFIER = "verifier"
STATUS = "status"
ERROR = "error"

STATUS_OK = "ok"
STATUS_ERROR = "error"

IMAGE_PLACEHOLDER = "<image>"

CANONICAL_SCHEMA = pa.schema(
    [
        pa.field(ID, pa.string(), nullable=False),
        pa.field(DATA_SOURCE, pa.string()),
        pa.field(TASK, pa.string()),
        pa.field(QUESTION, pa.string()),
        pa.field(IMAGES, pa.list_(pa.binary())),
        pa.field(IMAGE_PATHS, pa.list_(pa.string())),
        pa.field(GROUND_TRUTH, pa.string()),
        pa.field(VERIFIER, pa.string()),
        pa.field(STATUS, pa.string()),
        pa.field(ERROR, pa.string()),
    ]
)
CANONICAL_COLUMNS = tuple(CANONICAL_SCHEMA.names)

# Added by the reader after the canonical columns: what reading did to a usable row ("3-frame image:
# the first frame is used"); null when nothing. A canonical file without it still reads.
READ_NOTES = "read_notes"
READ_NOTES_FIELD = pa.field(READ_NOTES, pa.string())

# Added by every scoring run: which grader judged the row's answers and why (the task, a verifier hint
# it overruled or followed, and for the reasoning tasks the truth's shape).
GRADING_SCHEMA = pa.schema([pa.field("grader", pa.string())])

# Columns added by PISM (method.md §1). One list entry per mask ratio, in ratio order.
PISM_SCHEMA = pa.schema(
    [
        pa.field("pism_pc", pa.list_(pa.float64())),  # Pc(λ); null where the level was not fully evaluated
        pa.field("pism_attempts", pa.list_(pa.int32())),  # generations issued per level
        pa.field("pism_correct", pa.list_(pa.int32())),  # correct answers per level among the attempts
        pa.field("pism_generations", pa.int64()),  # total generations for this sample
        pa.field("pism_tokens", pa.int64()),  # total generated tokens for this sample
        pa.field("pism_lambda_star", pa.float64()),  # first failing ratio; null when no level fails
        pa.field("pism_bucket", pa.string()),  # easy | medium | hard | unsolved
        pa.field("pism_answers", pa.list_(pa.string())),  # kept answers (optional, config)
    ]
)

# Columns added by CMAB (method.md §2).
CMAB_SCHEMA = pa.schema(
    [
        pa.field("cmab_rho", pa.float64()),  # ρ̄; null when unsolved (no correct response to probe)
        pa.field("cmab_bucket", pa.string()),  # easy | medium | hard | unsolved
        pa.field("cmab_variant", pa.string()),  # code | paper
        pa.field("cmab_layers", pa.list_(pa.int32())),  # decoder layers the ratio was taken over
        pa.field("cmab_correct", pa.int32()),  # correct responses among the K generated
        pa.field("cmab_generations", pa.int32()),  # K
    ]
)

# Columns added by RAP's estimators (method.md §4). CDE: M rollouts with the image (PISM's λ = 0
# attempts where that ran, ``rap_img_reused`` of them) and M without it. ACE: the final layer's
# attention among the response tokens of one image rollout; ψ in natural log.
RAP_SCHEMA = pa.schema(
    [
        pa.field("rap_img_correct", pa.int32()),  # correct answers with the image
        pa.field("rap_img_attempts", pa.int32()),  # M
        pa.field("rap_img_reused", pa.int32()),  # of those, PISM's λ = 0 attempts (not generated again)
        pa.field("rap_txt_correct", pa.int32()),  # correct answers with the image removed from the prompt
        pa.field("rap_txt_attempts", pa.int32()),  # M
        pa.field("rap_cde", pa.float64()),  # D = acc_img - acc_txt
        pa.field("rap_generations", pa.int64()),  # generations RAP made itself (reused ones not counted)
        pa.field("rap_tokens", pa.int64()),  # tokens of those generations
        pa.field("rap_ace_log_psi", pa.float64()),  # max_j log ψ_j (raw product); null without ACE
        pa.field("rap_ace_log_psi_norm", pa.float64()),  # max_j of log ψ_j / (factors in ψ_j)
        pa.field("rap_ace_token", pa.int32()),  # the response token j whose ψ decides the flag
        pa.field("rap_ace_flag", pa.bool_()),  # ψ (configured form) > λ_a: one token soaks up attention
    ]
)

BUCKETS = ("easy", "medium", "hard", "unsolved")

# Column names hardmode writes: a source column named like one is passed through renamed
# (``orig_<name>``), never read as a score (``curate select`` trusts only what a run produced).
RESERVED_COLUMNS = frozenset(
    [*CANONICAL_COLUMNS, READ_NOTES, *GRADING_SCHEMA.names, *PISM_SCHEMA.names, *CMAB_SCHEMA.names,
     *RAP_SCHEMA.names]
)


def empty_like(schema: pa.Schema, num_rows: int) -> pa.Table:
    """A table of ``num_rows`` nulls with ``schema``; used to fill score columns on error rows."""
    return pa.table({f.name: pa.nulls(num_rows, f.type) for f in schema}, schema=schema)


def content_keys(table: pa.Table) -> list[bytes]:
    """Per row, a digest of what the model is shown: the question and every image's bytes. Two rows
    with one key are one sample under two ids (a corpus that repeats an image and question, a
    generator that draws a short code twice): a held-out split must not share it with training data.
    Byte-identical images only: a re-encoded copy is another key."""
    images = table.column(IMAGES).to_pylist() if IMAGES in table.column_names else [None] * table.num_rows
    keys = []
    for question, row_images in zip(table.column(QUESTION).to_pylist(), images):
        digest = hashlib.blake2b(digest_size=16)
        for part in [(question or "").encode(), *(image or b"" for image in row_images or ())]:
            digest.update(len(part).to_bytes(8, "little") + part)  # length-prefixed: no ambiguous joins
        keys.append(digest.digest())
    return keys
