"""Readers: every supported format read back into the canonical rows a reader must produce.

Each test writes a small corpus in the source format with the format's own conventions (or the
library that defines it: ``datasets`` for HF), then compares what ``open_corpus`` returns with the
canonical rows written down by hand.
"""

from __future__ import annotations

import io
import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from curate import schema as S
from curate.config import ConfigError, DataConfig
from curate.images import encode_png
from curate.io import CorpusError, open_corpus

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def png(color, size=(8, 6)) -> bytes:
    return encode_png(Image.new("RGB", size, color))


def jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


def read_rows(path, batch_rows: int = 2, **data) -> list[dict]:
    corpus = open_corpus(DataConfig(path=str(path), **data))
    tables = list(corpus.iter_tables(batch_rows=batch_rows))
    assert all(t.num_rows <= batch_rows and t.schema == corpus.schema for t in tables)
    return [r for t in tables for r in t.to_pylist()]


def canonical(row: dict) -> dict:
    return {k: row[k] for k in S.CANONICAL_COLUMNS}


def expect(id, question, images, ground_truth, task, data_source, image_paths=None, verifier=None):
    return {
        S.ID: id,
        S.DATA_SOURCE: data_source,
        S.TASK: task,
        S.QUESTION: question,
        S.IMAGES: images,
        S.IMAGE_PATHS: image_paths if image_paths is not None else [None] * len(images),
        S.GROUND_TRUTH: ground_truth,
        S.VERIFIER: verifier,
        S.STATUS: "ok",
        S.ERROR: None,
    }


def write_jsonl(path, records) -> None:
    with open(path, "w") as f:
        for rec in records:
            f.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")


def verl_row(question, images, task, answer, extra_info, data_source="geo3k"):
    return {
        "data_source": data_source,
        "prompt": [{"role": "user", "content": question}],
        "images": images,
        "ability": task,
        "reward_model": {"style": "rule", "ground_truth": answer},
        "extra_info": extra_info,
    }


# ----------------------------------------------------------------------------- verl / Orsta


def test_verl_parquet_with_inline_bytes_relative_paths_and_text_only(tmp_path):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.png").write_bytes(png(RED))
    rows = [
        verl_row(
            "<image>How many circles?",
            [{"bytes": png(BLUE), "path": "orig/blue.png"}],
            "counting",
            "3",
            {"index": 0, "split": "train"},
        ),
        verl_row(
            "What colour is it?",
            [{"bytes": None, "path": "img/a.png"}],
            "ocr",
            "red",
            {"index": 1, "split": "train"},
        ),
        verl_row("Compute 2+2.", [], "math", "4", {"index": 2, "split": "train"}),
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "train.parquet")
    # A second file stores images as plain path strings (another verl convention) and real ids.
    pq.write_table(
        pa.Table.from_pylist(
            [
                verl_row(
                    "Where is the dog? <image>",
                    ["img/a.png"],
                    "grounding",
                    [[1, 2, 30, 40]],
                    {"id": "val-7", "index": 0},
                )
            ]
        ),
        tmp_path / "val.parquet",
    )

    got = read_rows(tmp_path)
    real_a = os.path.realpath(tmp_path / "img" / "a.png")
    assert [canonical(r) for r in got] == [
        expect("train:0", "<image>How many circles?", [png(BLUE)], "3", "counting", "geo3k"),
        expect("train:1", "What colour is it?", [png(RED)], "red", "ocr", "geo3k", image_paths=[real_a]),
        expect("train:2", "Compute 2+2.", [], "4", "math", "geo3k"),
        expect(
            "val-7",
            "Where is the dog? <image>",
            [png(RED)],
            "[[1, 2, 30, 40]]",
            "grounding",
            "geo3k",
            image_paths=[real_a],
        ),
    ]
    # Columns the canonical row does not carry pass through: unchanged where the files agree on the
    # type (struct fields are merged), as JSON text where they do not (a string vs a list answer).
    assert got[3]["extra_info"] == {"id": "val-7", "index": 0, "split": None}
    assert json.loads(got[0]["reward_model"]) == {"style": "rule", "ground_truth": "3"}
    assert json.loads(got[3]["reward_model"]) == {"style": "rule", "ground_truth": [[1, 2, 30, 40]]}


def test_orsta_parquet_task_from_file_name_and_per_sample_verifier(tmp_path):
    def orsta_row(sample_id, verifier, gt, data_source):
        return {
            "data_source": data_source,
            "prompt": [{"role": "user", "content": "<image>Detect all cats."}],
            "images": [{"bytes": jpeg(GREEN), "path": None}],
            "ability": "perception",
            "reward_model": {
                "answer": "cat",
                "ground_truth": gt,
                "accuracy_ratio": 1.0,
                "format_ratio": 0.1,
                "verifier": verifier,
                "verifier_parm": {"det_verifier_normalized": True},
            },
            "extra_info": {"id": sample_id, "image_path": f"/data/{sample_id}.jpg"},
        }

    gt = '<answer>[{"bbox_2d": [1, 2, 3, 4], "label": "cat"}]</answer>'
    pq.write_table(
        pa.Table.from_pylist(
            [orsta_row("v3det_1", "detection", gt, "v3det"), orsta_row("v3det_2", "detection", gt, None)]
        ),
        tmp_path / "train_detection_v3det_4000.parquet",
    )
    got = read_rows(tmp_path / "train_detection_v3det_4000.parquet")  # format=auto finds the verifier field
    assert open_corpus(DataConfig(path=str(tmp_path))).format == "orsta"
    assert [canonical(r) for r in got] == [
        expect(
            "v3det_1",
            "<image>Detect all cats.",
            [jpeg(GREEN)],
            gt,
            "detection",
            "v3det",
            verifier="detection",
        ),
        expect(
            "v3det_2",
            "<image>Detect all cats.",
            [jpeg(GREEN)],
            gt,
            "detection",
            "v3det",
            verifier="detection",
        ),
    ]
    assert got[0]["reward_model"]["accuracy_ratio"] == 1.0 and got[0]["reward_model"]["answer"] == "cat"
    assert got[0]["extra_info"]["image_path"] == "/data/v3det_1.jpg"


# ----------------------------------------------------------------------------- JSONL layouts


def test_difficulty_sampling_jsonl(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "1.png").write_bytes(png(RED))
    (tmp_path / "images" / "2.jpg").write_bytes(jpeg(BLUE))
    boxes = [{"bbox_2d": [10, 20, 30, 40], "label": "car"}]
    write_jsonl(
        tmp_path / "vpt.jsonl",
        [
            {
                "id": "ds-1",
                "ability": "counting",
                "prompt": "How many red squares?",
                "ground_truth": "2",
                "image_paths": ["images/1.png"],
                "difficulty": "hard",
            },
            {
                "id": "ds-2",
                "ability": "cv_detection",
                "prompt": "Locate the car.",
                "ground_truth": boxes,
                "image_paths": [str(tmp_path / "images" / "2.jpg")],
            },  # absolute, inside the root: allowed
        ],
    )
    got = read_rows(tmp_path / "vpt.jsonl")
    assert [canonical(r) for r in got] == [
        expect(
            "ds-1",
            "How many red squares?",
            [png(RED)],
            "2",
            "counting",
            "vpt",
            image_paths=[os.path.realpath(tmp_path / "images" / "1.png")],
        ),
        expect(
            "ds-2",
            "Locate the car.",
            [jpeg(BLUE)],
            json.dumps(boxes),
            "cv_detection",
            "vpt",
            image_paths=[os.path.realpath(tmp_path / "images" / "2.jpg")],
        ),
    ]
    assert [r["difficulty"] for r in got] == ["hard", None]  # extra JSONL keys pass through as text


def test_swift_grpo_and_sft_jsonl(tmp_path):
    (tmp_path / "a.png").write_bytes(png(GREEN))
    write_jsonl(
        tmp_path / "grpo.jsonl",
        [
            {
                "images": ["a.png"],
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "<image>\nHow many?"},
                ],
                "solution": "<answer>5</answer>",
                "task_type": "counting",
            },
        ],
    )
    write_jsonl(
        tmp_path / "sft.jsonl",
        [
            {
                "id": "s1",
                "task": "ocr",
                "images": ["a.png"],
                "messages": [
                    {"role": "user", "content": "Read it."},
                    {"role": "assistant", "content": "HELLO"},
                ],
            },
        ],
    )
    path_a = [os.path.realpath(tmp_path / "a.png")]
    grpo = read_rows(tmp_path / "grpo.jsonl", format="swift")
    assert [canonical(r) for r in grpo] == [
        expect(
            "grpo:0",
            "<image>\nHow many?",
            [png(GREEN)],
            "<answer>5</answer>",
            "counting",
            "grpo",
            image_paths=path_a,
        )
    ]
    assert grpo[0]["task_type"] == "counting"
    sft = read_rows(tmp_path / "sft.jsonl")
    assert [canonical(r) for r in sft] == [
        expect("s1", "Read it.", [png(GREEN)], "HELLO", "ocr", "sft", image_paths=path_a)
    ]


# ----------------------------------------------------------------------------- HF datasets

HF_FEATURES = datasets.Features(
    {
        "data_source": datasets.Value("string"),
        "prompt": datasets.List({"role": datasets.Value("string"), "content": datasets.Value("string")}),
        "images": datasets.List(datasets.Image()),
        "ability": datasets.Value("string"),
        "reward_model": {"style": datasets.Value("string"), "ground_truth": datasets.Value("string")},
        "extra_info": {"index": datasets.Value("int64"), "split": datasets.Value("string")},
    }
)


def _hf_dataset(tmp_path) -> datasets.Dataset:
    (tmp_path / "pic.png").write_bytes(png(BLUE))
    rows = [
        verl_row(
            "<image>Count.", [Image.open(tmp_path / "pic.png")], "counting", "1", {"index": 0, "split": "a"}
        ),
        verl_row("<image>Read.", [{"bytes": png(RED), "path": None}], "ocr", "x", {"index": 1, "split": "a"}),
    ]
    return datasets.Dataset.from_list(rows, features=HF_FEATURES)


def test_hf_save_to_disk_and_dataset_dict(tmp_path):
    ds = _hf_dataset(tmp_path)
    ds.save_to_disk(str(tmp_path / "single"))
    expected = [
        expect("data-00000-of-00001:0", "<image>Count.", [png(BLUE)], "1", "counting", "geo3k"),
        expect("data-00000-of-00001:1", "<image>Read.", [png(RED)], "x", "ocr", "geo3k"),
    ]
    got = read_rows(tmp_path / "single", format="hf_disk")
    assert [canonical(r) for r in got] == expected
    assert open_corpus(DataConfig(path=str(tmp_path / "single"))).container == "arrow"  # auto finds it too

    datasets.DatasetDict({"train": ds, "test": ds}).save_to_disk(str(tmp_path / "dict"))
    got = read_rows(tmp_path / "dict")
    # Fallback ids carry the split directory, so equal row numbers in two splits stay distinct.
    assert [r["id"] for r in got] == [
        "train/data-00000-of-00001:0",
        "train/data-00000-of-00001:1",
        "test/data-00000-of-00001:0",
        "test/data-00000-of-00001:1",
    ]
    assert all(r["status"] == "ok" for r in got)


def test_parquet_with_hf_image_column(tmp_path):
    _hf_dataset(tmp_path).to_parquet(str(tmp_path / "hf.parquet"))
    assert "huggingface" in pq.read_schema(tmp_path / "hf.parquet").metadata.keys().__repr__()
    got = read_rows(tmp_path / "hf.parquet")
    # to_parquet keeps a file-backed image as {"bytes": None, "path": <absolute path>}: read from there.
    assert [canonical(r) for r in got] == [
        expect(
            "hf:0",
            "<image>Count.",
            [png(BLUE)],
            "1",
            "counting",
            "geo3k",
            image_paths=[os.path.realpath(tmp_path / "pic.png")],
        ),
        expect("hf:1", "<image>Read.", [png(RED)], "x", "ocr", "geo3k"),
    ]


# ----------------------------------------------------------------------------- canonical (resume / annotated)


def test_canonical_round_trip_keeps_errors_and_annotations(tmp_path):
    corpus_rows = [
        expect("a", "<image>Q1", [png(RED)], "1", "counting", "toy"),
        {**expect("b", "Q2", [], "2", "math", "toy"), "status": "error", "error": "pism: engine died"},
    ]
    schema = pa.schema(list(S.CANONICAL_SCHEMA) + [pa.field("pism_bucket", pa.string())])
    table = pa.Table.from_pylist(
        [{**corpus_rows[0], "pism_bucket": "hard"}, {**corpus_rows[1], "pism_bucket": None}], schema=schema
    )
    pq.write_table(table, tmp_path / "scored.parquet")
    corpus = open_corpus(DataConfig(path=str(tmp_path / "scored.parquet")))
    # An earlier run's scores pass through renamed: this run's scorers write their own.
    assert corpus.format == "canonical" and corpus.schema == pa.schema(
        [*S.CANONICAL_SCHEMA, S.READ_NOTES_FIELD, pa.field("orig_pism_bucket", pa.string())]
    )
    got = [r for t in corpus.iter_tables() for r in t.to_pylist()]
    want = [{**{k: v for k, v in r.items() if k != "pism_bucket"}, "read_notes": None, "orig_pism_bucket": r["pism_bucket"]}
            for r in table.to_pylist()]
    assert got == want  # identical, including the earlier stage's error message


# ----------------------------------------------------------------------------- bad rows


def test_bad_rows_become_error_rows_naming_file_and_row(tmp_path):
    (tmp_path / "ok.png").write_bytes(png(RED))
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (tmp_path.parent / "outside.png").write_bytes(png(RED))

    def rec(i, **kw):
        base = {
            "id": f"r{i}",
            "ability": "counting",
            "prompt": "How many?",
            "ground_truth": "1",
            "image_paths": ["ok.png"],
        }
        base.update(kw)
        return {k: v for k, v in base.items() if v is not ...}

    lines = [
        rec(0),  # 0 ok
        '{"id": "r1", "prompt": ',  # 1 unparseable
        "[1, 2]",  # 2 not an object
        rec(3, image_paths=["missing.png"]),  # 3 missing file
        rec(4, image_paths=["empty.png"]),  # 4 zero bytes
        rec(5, image_paths=["corrupt.png"]),  # 5 corrupt
        rec(6, prompt=...),  # 6 missing key
        rec(7, ground_truth=None),  # 7 null answer
        rec(8, prompt=42),  # 8 wrong type
        "   ",  # 9 blank: not a row
        rec(10, image_paths=["../outside.png"]),  # 10 escapes the root
        rec(0, prompt="dup"),  # 11 duplicate id
        rec(12, prompt="<image> and <image>?"),  # 12 two placeholders, one image
        rec(13, image_paths="ok.png", ground_truth=3),  # 13 ok: one path as a string, numeric answer
        rec(14, ability=None),  # 14 no task
        rec(15, ability="astrology"),  # 15 no grader for the task
        rec(16, ground_truth="many"),  # 16 a counting answer without a number
    ]
    write_jsonl(tmp_path / "bad.jsonl", lines)
    got = read_rows(tmp_path / "bad.jsonl", format="difficulty_sampling", batch_rows=4)
    path = str(tmp_path / "bad.jsonl")
    reasons = {
        1: "invalid JSON",
        2: "JSON line is a list, not an object",
        3: "image 0: image file not found: 'missing.png'",
        4: "image 0: empty image (zero bytes)",
        5: "image 0: cannot decode image",
        6: "missing key(s) ['prompt']",
        7: "missing 'ground_truth'",
        8: "question must be a string, got int",
        10: "image 0: image path '../outside.png'",
        11: "duplicate id 'r0' (first used at",
        12: "question has 2 <image> placeholders but 1 images",
        14: "missing task",
        15: "no grader for task 'astrology'",
        16: "counting ground truth has no single non-negative integer",
    }
    assert len(got) == 16  # every non-blank line exactly once, in order
    rows_by_line = dict(zip([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 15, 16], got))
    for line, row in rows_by_line.items():
        if line in reasons:
            assert row["status"] == "error", line
            assert row["error"].startswith(f"read: {path}:{line}: "), row["error"]
            assert reasons[line] in row["error"], row["error"]
        else:
            assert row["status"] == "ok" and row["error"] is None and row["images"] == [png(RED)], row
    assert rows_by_line[13]["ground_truth"] == "3"
    assert rows_by_line[1]["id"] == "bad:1"  # unparseable: positional id
    ids = [r["id"] for r in got]
    assert len(set(ids)) == len(ids) and rows_by_line[11]["id"] == "r0#bad:11"  # duplicates get a unique id


def test_bad_parquet_values_are_row_errors(tmp_path):
    rows = [
        verl_row("<image>ok", [{"bytes": png(RED), "path": None}], "counting", "1", {"index": 0}),
        verl_row("<image>empty", [{"bytes": b"", "path": None}], "counting", "1", {"index": 1}),
        verl_row("<image>junk", [{"bytes": b"GIF89a-nope", "path": None}], "counting", "1", {"index": 2}),
        {**verl_row("no answer", [], "math", None, {"index": 3})},
        {
            **verl_row("two turns", [], "math", "1", {"index": 4}),
            "prompt": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}],
        },
        verl_row("<image>dup", [{"bytes": png(RED), "path": None}], "counting", "1", {"index": 0}),
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    got = read_rows(tmp_path / "t.parquet")
    assert [r["status"] for r in got] == ["ok", "error", "error", "error", "error", "error"]
    assert "empty image (zero bytes)" in got[1]["error"] and "cannot decode image" in got[2]["error"]
    assert "missing ground truth" in got[3]["error"] and "one user turn" in got[4]["error"]
    assert (
        got[5]["error"]
        == f"read: {tmp_path / 't.parquet'}:5: duplicate id 't:0' (first used at {tmp_path / 't.parquet'}:0)"
    )


# ----------------------------------------------------------------------------- paths stay inside the root


def test_paths_escaping_the_root_are_refused_per_row(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir(), outside.mkdir()
    (outside / "secret.png").write_bytes(png(RED))
    (root / "sub").mkdir()
    (root / "sub" / "in.png").write_bytes(png(GREEN))
    os.symlink(outside / "secret.png", root / "escape.png")
    os.symlink(outside, root / "escape_dir")
    os.symlink(root / "sub" / "in.png", root / "inside_link.png")
    cases = {
        "../outside/secret.png": "contains '..'",
        "sub/../../outside/secret.png": "contains '..'",
        str(outside / "secret.png"): "is outside the image root",
        "escape.png": "leaves the image root",
        "escape_dir/secret.png": "leaves the image root",
        "http://example.com/a.png": "not supported",
        "inside_link.png": None,  # a symlink that stays inside is fine
        str(root / "sub" / "in.png"): None,  # absolute inside the root is fine
    }
    write_jsonl(
        root / "d.jsonl",
        [
            {"id": str(i), "ability": "ocr", "prompt": "q", "ground_truth": "a", "image_paths": [p]}
            for i, p in enumerate(cases)
        ],
    )
    got = read_rows(root / "d.jsonl", batch_rows=16)
    for (path, reason), row in zip(cases.items(), got):
        if reason is None:
            assert row["status"] == "ok" and row["images"] == [png(GREEN)], row["error"]
        else:
            assert row["status"] == "error" and reason in row["error"] and row["images"] is None, (
                path,
                row["error"],
            )
    # The root is the allow-list: widening it admits the absolute path outside; '..' stays refused.
    wide = read_rows(root / "d.jsonl", batch_rows=16, image_root=str(tmp_path))
    assert wide[2]["status"] == "ok" and wide[2]["images"] == [png(RED)]
    assert wide[0]["status"] == wide[1]["status"] == "error"


# ----------------------------------------------------------------------------- detection, planning


@pytest.mark.parametrize(
    "records, layout",
    [
        (
            [
                {
                    "prompt": [{"role": "user", "content": "q"}],
                    "reward_model": {"ground_truth": "a"},
                    "ability": "m",
                }
            ],
            "verl",
        ),
        (
            [
                {
                    "prompt": [{"role": "user", "content": "q"}],
                    "reward_model": {"ground_truth": "a", "verifier": "v"},
                    "ability": "m",
                }
            ],
            "orsta",
        ),
        (
            [{"id": "1", "ability": "ocr", "prompt": "q", "ground_truth": "a", "image_paths": []}],
            "difficulty_sampling",
        ),
        ([{"messages": [{"role": "user", "content": "q"}], "solution": "a", "images": []}], "swift"),
    ],
)
def test_auto_detects_the_layout(tmp_path, records, layout):
    write_jsonl(tmp_path / "x.jsonl", records)
    assert open_corpus(DataConfig(path=str(tmp_path / "x.jsonl"))).format == layout


def test_open_errors_are_clear(tmp_path):
    write_jsonl(tmp_path / "odd.jsonl", [{"text": "hello", "label": 1}])
    with pytest.raises(ConfigError, match=r"'data.format'.*cannot detect.*odd.jsonl.*\['label', 'text'\]"):
        open_corpus(DataConfig(path=str(tmp_path / "odd.jsonl")))
    with pytest.raises(ConfigError, match="'data.path'.*does not exist"):
        open_corpus(DataConfig(path=str(tmp_path / "nope.parquet")))
    pq.write_table(pa.table({"x": [1]}), tmp_path / "x.parquet")
    with pytest.raises(ConfigError, match="mixes"):
        open_corpus(DataConfig(path=str(tmp_path)))
    with pytest.raises(
        CorpusError, match=r"x.parquet: data.format=verl needs column\(s\) \['prompt', 'reward_model'\]"
    ):
        open_corpus(DataConfig(path=str(tmp_path / "x.parquet"), format="verl"))
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(CorpusError, match="cannot read Parquet file .*broken.parquet"):
        open_corpus(DataConfig(path=str(tmp_path / "broken.parquet"), format="verl"))
    with pytest.raises(ConfigError, match="'data.image_root'"):
        open_corpus(
            DataConfig(path=str(tmp_path / "odd.jsonl"), format="swift", image_root=str(tmp_path / "no"))
        )


def test_limit_units_and_batches_are_deterministic(tmp_path):
    for name, n in (("b", 5), ("a", 4)):
        write_jsonl(
            tmp_path / f"{name}.jsonl",
            [
                {"id": f"{name}{i}", "ability": "math", "prompt": "q", "ground_truth": "1", "image_paths": []}
                for i in range(n)
            ],
        )
    corpus = open_corpus(DataConfig(path=str(tmp_path / "*.jsonl"), limit=6), rows_per_unit=3)
    assert corpus.num_rows == 6 and [u.num_rows for u in corpus.units] == [3, 1, 2]
    ids = [r["id"] for t in corpus.iter_tables(batch_rows=2) for r in t.to_pylist()]
    assert ids == ["a0", "a1", "a2", "a3", "b0", "b1"]
    first_only = open_corpus(DataConfig(path=str(tmp_path / "*.jsonl"), limit=4))
    assert [os.path.basename(f.path) for f in first_only.files] == ["a.jsonl"]  # b.jsonl is never opened


# ----------------------------------------------------------------------------- corpus-level faults


def test_an_empty_corpus_is_refused_naming_the_key(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(ConfigError, match="config key 'data.path': the corpus at .* has no rows"):
        open_corpus(DataConfig(path=str(tmp_path / "empty.jsonl")))


def test_a_stray_json_beside_parquet_is_ignored_not_fatal(tmp_path):
    pq.write_table(pa.Table.from_pylist([expect("a", "<image>Q", [png(RED)], "1", "counting", "toy")],
                                        schema=S.CANONICAL_SCHEMA), tmp_path / "data.parquet")
    (tmp_path / "dataset_info.json").write_text('{"description": "metadata, not rows"}')
    assert [r["id"] for r in read_rows(tmp_path)] == ["a"]


def test_invalid_utf8_in_a_parquet_string_column_is_that_rows_error(tmp_path):
    good = expect("a", "<image>Q", [png(RED)], "1", "counting", "toy")
    table = pa.Table.from_pylist([good, {**good, "id": "b"}, {**good, "id": "c"}], schema=S.CANONICAL_SCHEMA)
    # Parquet does not validate UTF-8: write raw bytes under a string type, as a buggy producer can.
    bad_question = pa.Array.from_buffers(
        pa.string(), 3, [None, pa.array([0, 8, 17, 25], pa.int32()).buffers()[1],
                         pa.py_buffer(b"<image>Q\xff\xfe<image><image>Q")])
    table = table.set_column(table.schema.get_field_index("question"), "question", bad_question)
    table = table.append_column("note", bad_question)  # a pass-through column with the same bytes
    pq.write_table(table, tmp_path / "bad.parquet")
    rows = read_rows(tmp_path / "bad.parquet")
    assert [(r["id"], r["status"]) for r in rows] == [("a", "ok"), ("b", "error"), ("c", "ok")]
    assert "cannot decode column(s) question" in rows[1]["error"] and rows[1]["note"] is None
    assert rows[0]["note"] == "<image>Q" and rows[2]["note"] == "<image>Q"
