"""Read any supported corpus into the canonical schema, and write training formats back out.

Reading
-------
``open_corpus(cfg: DataConfig) -> Corpus`` lists the files at ``data.path`` (a file, a directory, a
glob, or a ``datasets.save_to_disk`` directory), picks the container (Parquet, JSON Lines, HF Arrow)
and the layout (``data.format``: canonical | verl | orsta | difficulty_sampling | swift, or ``auto``
/ ``hf_disk`` to detect it from column names), plans read units and runs a cheap id pre-pass. Then:

* ``Corpus.iter_tables(batch_rows)`` → canonical ``pa.Table`` batches, files sorted by path and rows
  in file order (the local CLI scorer; no Ray);
* ``Corpus.to_ray_dataset(batch_rows)`` → ``ray.data.read_datasource(CorpusDatasource)`` (one read
  task per unit, raw rows) ``.map_batches(corpus.normalize, batch_format="pyarrow")``.

Both paths run the same two functions: a container's ``read(unit)`` (raw rows plus the provenance
columns ``__hm_file``/``__hm_row``) and ``Normalizer.__call__`` (raw → canonical, pure, picklable),
so they give the same rows. Every table has exactly ``Corpus.schema``: the canonical columns, then
every source column the canonical row does not carry, renamed ``orig_<name>`` on a clash (JSONL
extra keys pass through as text). Batches never exceed ``batch_rows``; images are loaded per batch.

Row contract: every input row gives exactly one output row. A row that cannot be read, whatever the
reason (unparseable JSON line, missing question/answer/task, wrong type, image file missing or
unreadable, a path escaping the image root, an empty or corrupt image, a ``<image>`` placeholder
count that does not match the images, an id already used by an earlier row), has
``status="error"`` and ``error="read: <file>:<row>: <reason>"``; the other rows read normally.
Problems with the corpus as a whole (no files, unknown layout, a file that is not Parquet, a file
missing a required column) raise ``ConfigError``/``CorpusError`` at open time.

Values: ``question`` is kept verbatim with its ``<image>`` placeholders (``curate.scoring.prompts`` places
the images); a chat ``prompt``/``messages`` must be one user turn (system turns are dropped, the
curation prompt has its own). ``ground_truth`` is text; numbers, lists and dicts (box lists) become
JSON text. ``id`` comes from the source (``extra_info.id``, ``id``; verl's per-file
``extra_info.index`` as ``<file key>:<index>``), else ``<file key>:<row>`` where the file key is the
path relative to the corpus directory without suffix. Images are bytes, ``{"bytes", "path"}``
dicts (HF Image feature), ``data:`` URIs, or paths confined to the image root (``curate.io.paths``).

Writing
-------
``write_verl_parquet``, ``write_swift_grpo_jsonl`` and ``write_sft_jsonl`` (``curate.io.writers``)
take canonical, possibly annotated tables and refuse error rows unless ``skip_errors=True``.
"""

from curate.io.containers import CorpusError, ReadUnit
from curate.io.corpus import Corpus, Normalizer, open_corpus
from curate.io.paths import ImageRoot, PathError
from curate.io.readers import LAYOUTS, RowError, SourceFile
from curate.io.writers import (
    ExportError,
    ExportSummary,
    write_sft_jsonl,
    write_swift_grpo_jsonl,
    write_verl_parquet,
)

__all__ = [
    "LAYOUTS",
    "Corpus",
    "CorpusError",
    "ExportError",
    "ExportSummary",
    "ImageRoot",
    "Normalizer",
    "PathError",
    "ReadUnit",
    "RowError",
    "SourceFile",
    "open_corpus",
    "write_sft_jsonl",
    "write_swift_grpo_jsonl",
    "write_verl_parquet",
]
