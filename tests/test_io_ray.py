"""The Ray Data read path gives exactly the rows of the local path (same readers, same normaliser)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate.config import DataConfig
from curate.images import encode_png
from curate.io import open_corpus


@pytest.fixture(scope="module")
def ray_local():
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def _rows_by_id(tables) -> dict[str, dict]:
    rows = [r for t in tables for r in t.to_pylist()]
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows)
    return by_id


def test_ray_dataset_equals_local_iteration(tmp_path, ray_local):
    (tmp_path / "a.png").write_bytes(encode_png(Image.new("RGB", (8, 8), (9, 9, 9))))
    lines = [
        json.dumps(
            {
                "id": f"r{i}",
                "ability": "counting",
                "prompt": f"q{i}",
                "ground_truth": str(i),
                "image_paths": ["a.png" if i % 4 else "missing.png"],
                "note": {"k": i},
            }
        )
        for i in range(23)
    ]
    lines[5] = "{broken"
    lines[9] = json.dumps(
        {"id": "r1", "ability": "ocr", "prompt": "dup", "ground_truth": "x", "image_paths": []}
    )
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n")
    pq.write_table(
        pa.table(
            {
                "prompt": [[{"role": "user", "content": f"<image>p{i}"}] for i in range(7)],
                "images": [
                    [{"bytes": encode_png(Image.new("RGB", (4, 4), (i, 0, 0))), "path": None}]
                    for i in range(7)
                ],
                "ability": ["counting"] * 7,
                "reward_model": [{"ground_truth": str(i)} for i in range(7)],
            }
        ),
        tmp_path / "v.parquet",
        row_group_size=3,
    )

    errors = {}
    for path in ("d.jsonl", "v.parquet"):
        corpus = open_corpus(DataConfig(path=str(tmp_path / path)), rows_per_unit=4)
        assert len(corpus.units) > 1  # several read tasks
        local = _rows_by_id(corpus.iter_tables(batch_rows=3))
        distributed = _rows_by_id(corpus.to_ray_dataset(batch_rows=3).iter_batches(batch_format="pyarrow"))
        assert distributed == local and len(local) == corpus.num_rows
        errors[path] = sum(r["status"] == "error" for r in local.values())
    # JSONL: 6 missing images, 1 broken line, 1 duplicate id, each an error row in both paths.
    assert errors == {"d.jsonl": 8, "v.parquet": 0}
