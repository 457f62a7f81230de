"""Reading an annotated dataset for selection, and writing the chosen rows in trainers' formats.

Selection reads the score columns of every shard first (small), decides, then streams the shards once
more, batch by batch, keeping only the chosen rows: images are decoded and copied for those rows
only, and memory stays at one batch whatever the corpus size. The chosen rows are written once in the
canonical annotated schema (``<subset>/canonical/<split>.parquet``); every training format is then
written from those files with the writers of ``curate.io``.

verl's SFT trainer (0.9.1, ``verl.trainer.sft_trainer`` with ``MultiTurnSFTDataset``) reads Parquet
with a ``messages`` column (chat turns whose text holds one ``<image>`` marker per image) and an
``images`` column (``{"bytes", "path"}`` items, handed to ``qwen_vl_utils.fetch_image``): that layout
is written by :func:`write_verl_sft_parquet`.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from curate import run_record
from curate import schema as S
from curate.config import ConfigError, PromptConfig
from curate.io import ExportSummary, write_sft_jsonl, write_swift_grpo_jsonl, write_verl_parquet
from curate.io.writers import chat_messages
from curate.scoring import cmab_calibration
from curate.selection.rules import SCORE_COLUMNS
from curate.storage import Location

__all__ = ["AnnotatedDataset", "write_format", "write_verl_sft_parquet"]

log = logging.getLogger(__name__)

FORMAT_FILES = {"verl": "parquet", "verl_sft": "parquet", "swift_grpo": "jsonl", "sft_jsonl": "jsonl"}


class AnnotatedDataset:
    """The Parquet shards of an annotated dataset (``<run>/annotated`` or the run directory), local or
    at a URI (``s3://bucket/run``; ``curate.storage``)."""

    def __init__(self, path: str | os.PathLike[str] | Location):
        root = Location.parse(path, key="input")
        if not root.exists():
            raise ConfigError(f"config key 'input': {root} does not exist")
        self.path = run_record.locate(root)[0]
        fs = self.path.filesystem
        files = sorted(pads.dataset(self.path.path, filesystem=fs, format="parquet").files)
        if not files:
            raise ConfigError(f"config key 'input': no Parquet shards under {self.path}")
        self.schema = pa.unify_schemas([pq.read_schema(f, filesystem=fs) for f in files])
        self.dataset = pads.dataset(files, schema=self.schema, format="parquet", filesystem=fs)
        self.files = files

    def run_metadata(self) -> dict[str, Any]:
        """The scoring run's record: ``run.json`` beside the shards, else the shards' own metadata."""
        return run_record.read(self.path)

    def _trusted_score_columns(self) -> list[str]:
        """Of the score columns, only those of the methods the run record says ran (a column that
        merely has a score's name is no score)."""
        config = self.run_metadata().get("config")
        if config is None:
            log.warning("%s has no run record: its score columns are taken as they are", self.path)
        ran = {m for m in ("pism", "cmab") if config is None or (config.get(m) or {}).get("enabled")}
        return [c for c in SCORE_COLUMNS if c in self.schema.names
                and (c.split("_", 1)[0] not in ("pism", "cmab") or c.split("_", 1)[0] in ran)]

    @functools.cached_property
    def cmab_calibration(self) -> Optional[dict[str, Any]]:
        """The CMAB calibration of a calibrated-mode run (``curate.scoring.cmab_calibration.of_run``), else None."""
        return cmab_calibration.of_run(
            self.run_metadata(), lambda: self.dataset.to_table(columns=self._trusted_score_columns()))

    def read_scores(self) -> pa.Table:
        """The columns selection decides on, never the images (see ``_trusted_score_columns``); in a
        calibrated-CMAB run, ``cmab_bucket`` by the run's calibrated thresholds."""
        table = self.dataset.to_table(columns=self._trusted_score_columns())
        return cmab_calibration.apply(table, self.cmab_calibration)

    def content_keys(self, batch_rows: int) -> dict[str, bytes]:
        """Every row's :func:`curate.schema.content_keys` by id: one pass over questions and images."""
        keys: dict[str, bytes] = {}
        columns = [c for c in (S.ID, S.QUESTION, S.IMAGES) if c in self.schema.names]
        for batch in self.dataset.to_batches(columns=columns, batch_size=batch_rows):
            table = pa.Table.from_batches([batch])
            keys.update(zip(table.column(S.ID).to_pylist(), S.content_keys(table)))
        return keys

    def iter_rows(self, ids: Sequence[str], batch_rows: int) -> Iterator[pa.Table]:
        """Full rows whose id is in ``ids``, in shard order (files sorted by name, rows in file order);
        ``cmab_bucket`` as :meth:`read_scores` gives it, so the exports carry the bucket they were
        chosen by."""
        wanted = pa.array(sorted(ids), type=pa.string())
        for fragment in sorted(self.dataset.get_fragments(), key=lambda f: f.path):
            for batch in fragment.to_batches(schema=self.schema, batch_size=batch_rows):
                table = pa.Table.from_batches([batch], schema=self.schema)
                table = table.filter(pc.is_in(table.column(S.ID), value_set=wanted))
                if table.num_rows:
                    yield cmab_calibration.apply(table, self.cmab_calibration)


def prompt_of_run(metadata: Mapping[str, Any]) -> Optional[PromptConfig]:
    """The PromptConfig the scoring run used, when its record has one."""
    recorded = (metadata.get("config") or {}).get("prompt")
    if not isinstance(recorded, dict):
        return None
    known = PromptConfig.__dataclass_fields__
    return PromptConfig(**{k: v for k, v in recorded.items() if k in known})


def repeat_rows(tables: Iterator[pa.Table], copies: Mapping[str, int]) -> Iterator[pa.Table]:
    """Each row ``copies[id]`` times, copies adjacent (QuaDMix's expected copies, drawn)."""
    for table in tables:
        counts = np.array([copies.get(i, 1) for i in table.column(S.ID).to_pylist()], dtype=np.int64)
        yield table if (counts == 1).all() else table.take(np.repeat(np.arange(table.num_rows), counts))


# ---------------------------------------------------------------------------------------------
# verl SFT parquet
# ---------------------------------------------------------------------------------------------


def verl_sft_schema(extra_info: Sequence[pa.Field]) -> pa.Schema:
    """messages + images (HF ``List(Image())``, so ``datasets`` decodes them too) + provenance
    (``extra_info``'s fields). ``rl iterate`` writes its rounds' SFT sets in this layout too."""
    import datasets

    turn = {"role": datasets.Value("string"), "content": datasets.Value("string")}
    features = datasets.Features(
        {
            "messages": datasets.List(turn),
            "images": datasets.List(datasets.Image()),
            "data_source": datasets.Value("string"),
            "ability": datasets.Value("string"),
            "extra_info": dict(datasets.Features.from_arrow_schema(pa.schema(extra_info))),
        }
    )
    return features.arrow_schema


def write_verl_sft_parquet(
    tables: Iterator[pa.Table],
    path: str | os.PathLike[str],
    *,
    split: str = "train",
    extra_info_columns: Sequence[str] = (),
    prompt: Optional[PromptConfig] = None,
    row_group_rows: int = 128,
) -> ExportSummary:
    """verl SFT parquet: the scoring prompt's turns plus the assistant turn (= the ground truth).

    Rows must be usable (status ok): selection never passes error rows. The file is written under a
    temporary name and renamed when complete.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    writer: Optional[pq.ParquetWriter] = None
    written = 0
    try:
        for table in tables:
            if writer is None:
                provenance = [pa.field(name, pa.string()) for name in ("id", "task", "verifier", "split")]
                annotations = [table.schema.field(c) for c in extra_info_columns]
                writer = pq.ParquetWriter(tmp, verl_sft_schema([*provenance, *annotations]))
            out = []
            for r in table.to_pylist():
                if r[S.STATUS] != S.STATUS_OK:
                    raise ValueError(
                        f"row {r[S.ID]!r} has status={r[S.STATUS]!r}; only usable rows are exported"
                    )
                images = r[S.IMAGES] or []
                messages = chat_messages(r[S.QUESTION], len(images), prompt, r[S.ID])
                messages.append({"role": "assistant", "content": r[S.GROUND_TRUTH]})
                extra = {"id": r[S.ID], "task": r[S.TASK], "verifier": r[S.VERIFIER], "split": split}
                extra.update({c: r[c] for c in extra_info_columns})
                out.append(
                    {
                        "messages": messages,
                        "images": [{"bytes": b, "path": None} for b in images],
                        "data_source": r[S.DATA_SOURCE],
                        "ability": r[S.TASK],
                        "extra_info": extra,
                    }
                )
            writer.write_table(pa.Table.from_pylist(out, schema=writer.schema), row_group_size=row_group_rows)
            written += len(out)
        if writer is None:
            raise ValueError("nothing to export: no tables given")
        writer.close()
    except BaseException:
        if writer is not None:
            writer.close()
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    os.replace(tmp, path)
    return ExportSummary(path, written, 0)


def write_format(
    fmt: str,
    tables: Iterator[pa.Table],
    path: Path,
    *,
    split: str,
    annotations: Sequence[str],
    prompt: PromptConfig,
) -> ExportSummary:
    """One split of one subset in one training format (``curate.selection.config.FORMATS``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "verl":
        return write_verl_parquet(tables, path, split=split, extra_info_columns=annotations, prompt=prompt)
    if fmt == "verl_sft":
        return write_verl_sft_parquet(
            tables, path, split=split, extra_info_columns=annotations, prompt=prompt
        )
    if fmt == "swift_grpo":
        return write_swift_grpo_jsonl(tables, path, extra_columns=annotations, prompt=prompt)
    if fmt == "sft_jsonl":
        return write_sft_jsonl(tables, path, extra_columns=annotations, prompt=prompt)
    raise ValueError(f"unknown format {fmt!r}")
