"""Exports of a selection read back by the trainers' own loaders (verl 0.9.1 RL and SFT datasets)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from omegaconf import OmegaConf
from PIL import Image
from support.annotated import annotated_rows, write_annotated
from test_select import _cfg

from curate import schema as S

MID_HARD = {r[S.ID]: r for r in annotated_rows() if r["pism_bucket"] in ("medium", "hard")}


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    from curate.select import select

    root = tmp_path_factory.mktemp("export")
    run = write_annotated(root / "run")
    out = root / "out"
    select(
        _cfg(
            run,
            out,
            "mid_hard_pism.yaml",
            "subsets.grpo.split.val_fraction=0.25",
            "subsets.grpo.formats=[verl,verl_sft,swift_grpo,sft_jsonl]",
        )
    )
    return out


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory) -> Path:
    model = pytest.importorskip("curate.toy.model")
    m, processor = model.build_model(model.ToyArchitecture())
    return model.save_toy_model(m, processor, tmp_path_factory.mktemp("toy"))


def _pixels(data: bytes) -> list:
    return list(Image.open(io.BytesIO(data)).convert("RGB").getdata())


def test_verl_rl_parquet_loads_in_verl_rlhf_dataset_text_only(tmp_path, toy_dir):
    """verl's own RLHFDataset (its multimodal path needs qwen_vl_utils, so text-only rows here)."""
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer.tokenizer import hf_tokenizer

    from curate.select import select

    rows = [
        {**r, S.QUESTION: r[S.QUESTION].replace("<image>", ""), S.IMAGES: [], S.IMAGE_PATHS: []}
        for r in annotated_rows()
    ]
    by_id = {r[S.ID]: r for r in rows}
    run = write_annotated(tmp_path / "run", rows)
    select(_cfg(run, tmp_path / "out", "mid_hard_pism.yaml", "subsets.grpo.split.val_fraction=0.25"))
    config = OmegaConf.create({"max_prompt_length": 512, "prompt_key": "prompt", "image_key": "images"})
    seen = {}
    for split in ("train", "val"):
        path = tmp_path / "out" / "grpo" / "verl" / f"{split}.parquet"
        dataset = RLHFDataset(str(path), hf_tokenizer(str(toy_dir)), config)
        for i in range(len(dataset)):
            row = dataset[i]
            info = row["extra_info"]
            src = by_id[info["id"]]
            assert info["split"] == split and info["pism_bucket"] == src["pism_bucket"]
            assert info["pism_lambda_star"] == src["pism_lambda_star"]
            assert row["reward_model"]["ground_truth"] == src[S.GROUND_TRUTH]
            assert row["raw_prompt"] == [
                {"role": "system", "content": "Think, then answer."},
                {"role": "user", "content": src[S.QUESTION]},
            ]
            seen[info["id"]] = split
    assert set(seen) == set(MID_HARD) and list(seen.values()).count("val") == 9


def test_verl_rl_parquet_images_through_the_projects_cpu_dataset(exported, toy_dir):
    import asyncio

    from verl.utils.tokenizer.tokenizer import hf_processor, hf_tokenizer

    from rl.cpu.dataset import TorchvisionFreeRLHFDataset

    processor = hf_processor(str(toy_dir), trust_remote_code=True)
    config = OmegaConf.create(
        {
            "max_prompt_length": 512,
            "image_key": "images",
            "trust_remote_code": True,
            "filter_overlong_prompts": True,
        }
    )
    dataset = TorchvisionFreeRLHFDataset(
        str(exported / "grpo" / "verl" / "train.parquet"), hf_tokenizer(str(toy_dir)), config, processor
    )
    assert len(dataset) == 27  # no row dropped by verl's length filter
    for i in range(len(dataset)):
        row = dataset[i]
        images, _, _ = asyncio.run(dataset.process_multi_modal_info(row["raw_prompt"], 14, config))
        src = MID_HARD[row["extra_info"]["id"]]
        assert [list(im.getdata()) for im in images] == [_pixels(b) for b in src[S.IMAGES]]


def test_verl_sft_parquet_through_verl_multiturn_sft_dataset(exported, toy_dir, monkeypatch):
    """verl's SFT dataset tokenizes our rows; the loss covers exactly the assistant turn (= the answer)."""
    import verl.utils.dataset.multiturn_sft_dataset as sft
    from verl.utils.tokenizer.tokenizer import hf_processor, hf_tokenizer

    from rl.cpu.dataset import load_image

    # qwen_vl_utils.fetch_image (behind verl's process_image) needs torchvision, a CUDA build on PyPI:
    # the project's torchvision-free loader decodes the same {"bytes": ...} item instead.
    monkeypatch.setattr(
        sft,
        "process_image",
        lambda image, image_patch_size=14: load_image(
            {"image": Image.open(io.BytesIO(image["bytes"]))}, image_patch_size
        ),
    )
    tokenizer = hf_tokenizer(str(toy_dir))
    processor = hf_processor(str(toy_dir), trust_remote_code=True)
    config = OmegaConf.create(
        {
            "max_length": 512,
            "truncation": "error",
            "pad_mode": "no_padding",
            "messages_key": "messages",
            "image_key": "images",
        }
    )
    dataset = sft.MultiTurnSFTDataset(
        str(exported / "grpo" / "verl_sft" / "train.parquet"), tokenizer, config, processor
    )
    table = pq.read_table(exported / "grpo" / "verl_sft" / "train.parquet").to_pylist()
    assert len(dataset) == len(table) == 27
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    for i in (0, 13, 26):
        item = dataset[i]
        src = MID_HARD[table[i]["extra_info"]["id"]]
        target = tokenizer.decode(item["input_ids"][item["loss_mask"].bool()])
        assert target.startswith(src[S.GROUND_TRUTH]) and src[S.QUESTION].split(">")[1] not in target
        assert int((item["input_ids"] == image_token).sum()) > 0
        assert "pixel_values" in item["multi_modal_inputs"]


def test_jsonl_exports_reference_written_images(exported):
    for fmt, has_answer in (("swift_grpo", False), ("sft_jsonl", True)):
        lines = (exported / "grpo" / fmt / "train.jsonl").read_text().splitlines()
        assert len(lines) == 27
        for line in lines[:5]:
            rec = json.loads(line)
            src = MID_HARD[rec["id"]]
            assert rec["pism_bucket"] == src["pism_bucket"]
            image = exported / "grpo" / fmt / rec["images"][0]
            assert _pixels(image.read_bytes()) == _pixels(src[S.IMAGES][0])
            assert (rec["messages"][-1]["content"] == src[S.GROUND_TRUTH]) == has_answer
