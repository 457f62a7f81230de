"""Writers: canonical tables → verl / ms-swift / SFT files, checked by reading them back with the readers,
with ``datasets`` (what verl loads parquet with) and with verl's own ``RLHFDataset``."""

from __future__ import annotations

import io
import json
import os

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image

from curate import schema as S
from curate.config import DataConfig, PromptConfig
from curate.images import encode_png
from curate.io import ExportError, open_corpus, write_sft_jsonl, write_swift_grpo_jsonl, write_verl_parquet


def png(color) -> bytes:
    return encode_png(Image.new("RGB", (8, 6), color))


def jpeg(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


ANNOTATIONS = pa.schema([pa.field("pism_bucket", pa.string()), pa.field("pism_lambda_star", pa.float64())])
SCHEMA = pa.schema(list(S.CANONICAL_SCHEMA) + list(ANNOTATIONS))


def sample(id, question, images, gt, task="counting", verifier=None, status="ok", error=None, bucket="hard"):
    return {
        S.ID: id,
        S.DATA_SOURCE: "toy",
        S.TASK: task,
        S.QUESTION: question,
        S.IMAGES: images,
        S.IMAGE_PATHS: [None] * len(images),
        S.GROUND_TRUTH: gt,
        S.VERIFIER: verifier,
        S.STATUS: status,
        S.ERROR: error,
        "pism_bucket": bucket,
        "pism_lambda_star": 0.3,
    }


def corpus_table() -> pa.Table:
    return pa.Table.from_pylist(
        [
            sample("a", "How many squares?", [png((255, 0, 0))], "3"),  # no placeholder: image goes first
            sample(
                "b",
                "Left <image> right <image> where?",
                [jpeg((0, 0, 255)), png((0, 255, 0))],
                "[[1, 2, 5, 6]]",
                task="grounding",
                verifier="grounding",
            ),
            sample("c", "What is 2+3?", [], "5", task="math", bucket="easy"),
        ],
        schema=SCHEMA,
    )


def read_back(path, **data) -> list[dict]:
    corpus = open_corpus(DataConfig(path=str(path), **data))
    return [r for t in corpus.iter_tables() for r in t.to_pylist()]


# Questions as written: one <image> per image, placeholders added in front where there were none.
WRITTEN_QUESTIONS = ["<image>How many squares?", "Left<image>right<image>where?", "What is 2+3?"]


def test_verl_parquet_round_trip(tmp_path):
    table = corpus_table()
    summary = write_verl_parquet(
        [table.slice(0, 2), table.slice(2)],
        tmp_path / "train.parquet",
        extra_info_columns=["pism_bucket", "pism_lambda_star"],
    )
    assert (summary.rows, summary.skipped_errors) == (3, 0)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]

    got = read_back(tmp_path / "train.parquet")
    assert [
        (
            r["id"],
            r["question"],
            r["images"],
            r["ground_truth"],
            r["task"],
            r["verifier"],
            r["data_source"],
            r["status"],
        )
        for r in got
    ] == [
        (s["id"], q, s["images"], s["ground_truth"], s["task"], s["verifier"], "toy", "ok")
        for s, q in zip(table.to_pylist(), WRITTEN_QUESTIONS)
    ]
    assert [r["extra_info"] for r in got] == [
        {
            "index": i,
            "id": s["id"],
            "task": s["task"],
            "verifier": s["verifier"],
            "split": "train",
            # (width, height) of the first image as PIL reads it; none without an image
            "image_size": list(Image.open(io.BytesIO(s["images"][0])).size) if s["images"] else None,
            "pism_bucket": s["pism_bucket"],
            "pism_lambda_star": 0.3,
        }
        for i, s in enumerate(table.to_pylist())
    ]
    assert got[0]["reward_model"] == {"style": "rule", "ground_truth": "3"}

    # What verl loads it with: the HF feature metadata turns `images` into PIL images.
    hf = datasets.load_dataset("parquet", data_files=str(tmp_path / "train.parquet"))["train"]
    assert isinstance(hf[1]["images"][0], Image.Image) and hf[1]["images"][0].size == (8, 8)
    assert hf[0]["prompt"] == [{"role": "user", "content": "<image>How many squares?"}]


def test_verl_parquet_loads_in_verl_rlhf_dataset(tmp_path):
    from verl.utils.dataset.rl_dataset import RLHFDataset

    from curate.toy.tokenizer import build_tokenizer

    text_only = pa.Table.from_pylist(
        [
            sample("t1", "What is 2+3?", [], "5", task="math"),
            sample("t2", "What is 1+1?", [], "2", task="math"),
        ],
        schema=SCHEMA,
    )
    write_verl_parquet(
        text_only,
        tmp_path / "text.parquet",
        extra_info_columns=["pism_bucket"],
        prompt=PromptConfig(system_prompt="Answer in <answer> tags.", template="Q: {question}"),
    )
    tokenizer = build_tokenizer(1024)  # Qwen2.5-VL's special tokens and chat template
    config = OmegaConf.create(
        {
            "max_prompt_length": 256,
            "filter_overlong_prompts": True,
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    dataset = RLHFDataset(str(tmp_path / "text.parquet"), tokenizer, config)
    assert len(dataset) == 2  # the length filter tokenised both prompts through the chat template
    item = dataset[1]
    assert item["raw_prompt"] == [
        {"role": "system", "content": "Answer in <answer> tags."},
        {"role": "user", "content": "Q: What is 1+1?"},
    ]
    assert item["index"] == 1 and item["data_source"] == "toy" and item["reward_model"]["ground_truth"] == "2"
    assert item["extra_info"]["id"] == "t2" and item["extra_info"]["pism_bucket"] == "hard"


def test_multimodal_verl_parquet_through_the_projects_rl_dataset(tmp_path):
    """Images reach the model in placeholder order, pixel for pixel, through verl's dataset code
    (the CPU subclass the RL side uses; on GPU machines verl's own extraction does the same)."""
    from curate.images import decode_image
    from curate.toy.model import ToyArchitecture, build_processor
    from curate.toy.tokenizer import build_tokenizer
    from rl.cpu.dataset import TorchvisionFreeRLHFDataset

    arch = ToyArchitecture()
    tokenizer = build_tokenizer(arch.bpe_vocab_size)
    processor = build_processor(arch, tokenizer)
    table = corpus_table()
    write_verl_parquet(table, tmp_path / "mm.parquet")
    config = OmegaConf.create(
        {
            "max_prompt_length": 512,
            "filter_overlong_prompts": True,  # runs the processor on every row: none may be dropped
            "filter_overlong_prompts_workers": 1,
            "cache_dir": str(tmp_path / "cache"),
        }
    )
    dataset = TorchvisionFreeRLHFDataset(str(tmp_path / "mm.parquet"), tokenizer, config, processor)
    assert len(dataset) == table.num_rows
    for i, row in enumerate(table.to_pylist()):
        messages = dataset[i]["raw_prompt"]
        images, _, _ = dataset._process_multi_modal_info(messages, 14, config)
        expected = [decode_image(b) for b in row["images"]]
        assert [im.tobytes() for im in images or []] == [im.tobytes() for im in expected]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        assert text.count("<|vision_start|><|image_pad|><|vision_end|>") == len(expected)


@pytest.mark.parametrize("writer", [write_swift_grpo_jsonl, write_sft_jsonl])
def test_jsonl_exports_round_trip_with_image_files(tmp_path, writer):
    table = corpus_table()
    summary = writer(table, tmp_path / "out" / "train.jsonl", extra_columns=["pism_bucket"])
    assert (summary.rows, summary.image_files) == (3, 3)
    records = [json.loads(line) for line in open(tmp_path / "out" / "train.jsonl")]
    # Images are files next to the JSONL, with the original encoding kept (JPEG stays JPEG).
    assert [[os.path.splitext(p)[1] for p in r["images"]] for r in records] == [
        [".png"],
        [".jpg", ".png"],
        [],
    ]
    assert all(not os.path.isabs(p) and p.startswith("images/") for r in records for p in r["images"])
    assert records[1]["pism_bucket"] == "hard" and records[1]["task"] == "grounding"
    if writer is write_sft_jsonl:
        assert [r["messages"][-1] for r in records] == [
            {"role": "assistant", "content": gt} for gt in ("3", "[[1, 2, 5, 6]]", "5")
        ]
    else:
        assert [r["solution"] for r in records] == ["3", "[[1, 2, 5, 6]]", "5"]

    got = read_back(tmp_path / "out" / "train.jsonl")  # auto-detected as ms-swift, images under its dir
    assert [
        (r["id"], r["question"], r["images"], r["ground_truth"], r["task"], r["verifier"], r["status"])
        for r in got
    ] == [
        (s["id"], q, s["images"], s["ground_truth"], s["task"], s["verifier"], "ok")
        for s, q in zip(table.to_pylist(), WRITTEN_QUESTIONS)
    ]
    # Exported scores come back as source columns, renamed: never mistaken for a new run's scores.
    assert [r["orig_pism_bucket"] for r in got] == ["hard", "hard", "easy"]


def test_error_rows_are_refused_unless_skipped(tmp_path):
    table = pa.Table.from_pylist(
        [
            sample("ok", "q1", [png((1, 2, 3))], "1"),
            sample("bad", "q2", [], "2", status="error", error="read: f:1: boom"),
        ],
        schema=SCHEMA,
    )
    with pytest.raises(ExportError, match=r"1 row\(s\) have status=error \(first: 'bad': read: f:1: boom\)"):
        # The ok row's image is written before the error row arrives, then removed again.
        write_swift_grpo_jsonl([table.slice(0, 1), table.slice(1)], tmp_path / "g" / "x.jsonl")
    assert [files for _, _, files in os.walk(tmp_path / "g")] == [[], []]  # g/ and g/images/, both empty
    with pytest.raises(ExportError, match="status=error"):
        write_verl_parquet(table, tmp_path / "x.parquet")
    assert os.listdir(tmp_path) == ["g"]  # nothing left behind

    summary = write_verl_parquet(table, tmp_path / "x.parquet", skip_errors=True)
    assert (summary.rows, summary.skipped_errors) == (1, 1)
    assert pq.read_table(tmp_path / "x.parquet").column("extra_info").to_pylist()[0]["id"] == "ok"


def test_writer_contract_errors(tmp_path):
    mismatch = pa.Table.from_pylist(
        [sample("m", "<image><image> two?", [png((0, 0, 0))], "1")], schema=SCHEMA
    )
    with pytest.raises(ExportError, match="sample 'm': question has 2 <image> placeholders but 1 images"):
        write_verl_parquet(mismatch, tmp_path / "m.parquet")
    with pytest.raises(ExportError, match=r"no column\(s\) \['cmab_rho'\]"):
        write_verl_parquet(corpus_table(), tmp_path / "m.parquet", extra_info_columns=["cmab_rho"])
    with pytest.raises(ExportError, match="clash"):
        write_verl_parquet(corpus_table(), tmp_path / "m.parquet", extra_info_columns=["index"])
    assert not os.listdir(tmp_path)
