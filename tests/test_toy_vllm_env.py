"""The toy model directory where torchvision works (.venv-vllm: the GPU set's transformers 5.9.0, torchvision importable).

The main environment has no working torchvision; GPU machines and .venv-vllm do. There the plain
``AutoProcessor`` (no remote code) must build transformers' full Qwen2.5-VL processor from the saved
directory, videos included, and the shipped remote-code class must be that same full processor.
"""

from __future__ import annotations

import pytest
from PIL import Image

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def toy_dir():
    from curate.modeling import resolve_model_path

    return resolve_model_path("toy")


def _image_tokens(processor) -> int:
    from curate.toy.corpus import iter_samples

    image = Image.fromarray(next(iter_samples(1)).image)
    inputs = processor(text=["<|vision_start|><|image_pad|><|vision_end|>"], images=[image], return_tensors="pt")
    return int((inputs["input_ids"] == processor.image_token_id).sum())


def test_plain_and_remote_code_processors_are_the_full_processor(toy_dir):
    from transformers import AutoProcessor, Qwen2_5_VLProcessor

    from curate.modeling import load_processor
    from curate.toy.processing_hardmode import torchvision_works

    assert torchvision_works(), "this environment is meant to have a working torchvision"
    for processor in (AutoProcessor.from_pretrained(toy_dir),
                      AutoProcessor.from_pretrained(toy_dir, trust_remote_code=True),
                      load_processor(toy_dir)):
        assert isinstance(processor, Qwen2_5_VLProcessor)
        assert type(processor.video_processor).__name__ == "Qwen2VLVideoProcessor"
        assert processor.image_processor.size.longest_edge == 112 * 112
        assert _image_tokens(processor) == 16
