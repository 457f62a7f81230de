"""A Ray Data datasource over a corpus' read units (raw rows with provenance; see ``curate.io``).

Ray's own ``read_parquet``/``read_json`` cannot be used as the first stage: they drop the row index
(needed for error messages and fallback ids) and ``read_json`` fails a whole file on one bad line.
This datasource runs the very same container readers as the local path, one read task per unit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Sequence

from ray.data.block import BlockMetadata
from ray.data.datasource import Datasource, ReadTask

from curate.io.containers import CONTAINERS, ReadUnit

if TYPE_CHECKING:
    from ray.data.context import DataContext


class CorpusDatasource(Datasource):
    """Raw batches of a corpus' read units. Holds only the units: each read task ships one unit and
    the (stateless) container reader, not the corpus, so planning stays linear in the corpus size."""

    def __init__(self, name: str, container: str, units: Sequence[ReadUnit], batch_rows: int):
        super().__init__()
        self._name = name
        self._container = container
        self._units = tuple(units)
        self._batch_rows = batch_rows

    def get_name(self) -> str:
        return f"Corpus[{self._name}]"

    def estimate_inmemory_data_size(self) -> Optional[int]:
        return None  # image bytes dominate and are unknown before reading

    def get_read_tasks(
        self,
        parallelism: int,
        per_task_row_limit: Optional[int] = None,
        data_context: Optional[DataContext] = None,
    ) -> list[ReadTask]:
        # One task per unit regardless of ``parallelism``: units are already sized by
        # ``open_corpus(rows_per_unit=...)`` and must not be merged across files.
        reader, batch_rows = CONTAINERS[self._container], self._batch_rows
        return [
            ReadTask(
                lambda unit=unit: reader.read(unit, batch_rows),
                BlockMetadata(
                    num_rows=unit.num_rows, size_bytes=None, exec_stats=None, input_files=(unit.file.path,)
                ),
                per_task_row_limit=per_task_row_limit,
            )
            for unit in self._units
        ]
