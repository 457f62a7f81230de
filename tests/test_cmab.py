"""CMAB ρ̄ and buckets against straightforward reimplementations.

The references work on what ``generate(output_attentions=True)`` returns (the released code's
source of attention) and on eager teacher-forced maps: a list of generation steps, each step's query
row per layer as an [heads, context] map. They follow method.md §2 literally, loop by loop.
"""

from __future__ import annotations

import math

import pytest
import torch
from test_attention_probe import (
    IMAGE,
    LAYERS,
    PAD,
    batch_for,
    build_tiny_vlm,
    make_prompts,
    prompt_batch,
)

from curate.config import CmabThresholds
from curate.scoring.attention_probe import ProbeResult, pack_responses, probe_attention
from curate.scoring.cmab import CmabError, cmab_bucket, cmab_layers, cmab_probe_options, cmab_rho

RTOL = 1e-5


def released_code_rho(steps, image_idx, text_idx, layer):
    """The released code's loop: steps 1.. (prefill skipped), one layer, head mean, means per token."""
    total_image = total_text = 0.0
    for step in steps[1:]:
        row = step[layer].mean(dim=0)
        image = row[image_idx].sum().item() / len(image_idx)
        text = row[text_idx].sum().item() / len(text_idx)
        if text == 0:
            continue
        total_image += image
        total_text += text
    return total_image / total_text


def paper_rho(steps, image_mask, context_mask, num_layers):
    """method.md §2 paper variant: every generated token, layers 2..L-1 (1-based), sums, geo-mean."""
    per_token = []
    for step in steps:
        logs = []
        for layer in range(1, num_layers - 1):
            row = step[layer].mean(dim=0)
            n = row.shape[0]
            s_img = row[image_mask[:n]].sum().item()
            s_txt = row[context_mask[:n] & ~image_mask[:n]].sum().item()
            logs.append(math.log(s_img / s_txt + 1e-8))
        per_token.append(math.exp(sum(logs) / len(logs)))
    return sum(per_token) / len(per_token)


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen2_vl"])
def test_rho_matches_generate_output_attentions(family):
    """Generate greedily with output_attentions=True (released code), then probe the same response."""
    model = build_tiny_vlm(family)
    prompts, pixels, grids = make_prompts(text_first=True)  # the released code puts text before the image
    prompt = prompt_batch(prompts[2:], pixels[48:], grids[2:])
    out = model.generate(
        **prompt,
        max_new_tokens=7,
        min_new_tokens=7,
        do_sample=False,
        output_attentions=True,
        return_dict_in_generate=True,
        pad_token_id=PAD,
        eos_token_id=None,
    )
    steps = [[layer[0, :, -1, :] for layer in step] for step in out.attentions]  # [heads, context] rows
    ids = out.sequences[0]
    image_idx = (ids == IMAGE).nonzero().squeeze(1).tolist()
    text_idx = list(range(image_idx[0]))
    response = ids[prompt["input_ids"].shape[1] :].tolist()
    assert len(response) == len(steps) == 7

    inputs, lengths = pack_responses(prompt, [response], PAD)
    for layer in (None, 1):
        options = cmab_probe_options("code", LAYERS, layer)
        result = probe_attention(model, inputs, lengths, **options)[0]
        expected = released_code_rho(steps, image_idx, text_idx, options["layers"][0])
        assert cmab_rho(result, "code", num_layers=LAYERS, layer=layer) == pytest.approx(expected, rel=RTOL)

    result = probe_attention(model, inputs, lengths, **cmab_probe_options("paper", LAYERS))[0]
    image_mask = ids == IMAGE
    expected = paper_rho(steps, image_mask, torch.ones_like(image_mask), LAYERS)
    assert cmab_rho(result, "paper", num_layers=LAYERS) == pytest.approx(expected, rel=RTOL)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_rho_matches_eager_maps_on_a_padded_batch(padding_side):
    model = build_tiny_vlm("qwen2_5_vl")
    inputs, lengths = batch_for((0, 1, 2), padding_side)
    with torch.no_grad():
        maps = model(**inputs, output_attentions=True).attentions
    code = probe_attention(model, inputs, lengths, **cmab_probe_options("code", LAYERS))
    paper = probe_attention(model, inputs, lengths, **cmab_probe_options("paper", LAYERS))
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    for b, n in enumerate(lengths):
        valid = mask[b].nonzero().squeeze(1)
        # Step t of a generate() call = the query at position P-1+t, over the keys up to it.
        steps = [[m[b][:, int(pos), : int(pos) + 1] for m in maps] for pos in valid[-(n + 1) : -1]]
        image_mask = ids[b] == IMAGE
        image_idx = image_mask.nonzero().squeeze(1).tolist()
        text_idx = [i for i in range(image_idx[0]) if mask[b, i]]
        layer = cmab_layers("code", LAYERS)[0]
        assert cmab_rho(code[b], "code", num_layers=LAYERS) == pytest.approx(
            released_code_rho(steps, image_idx, text_idx, layer), rel=RTOL
        )
        assert cmab_rho(paper[b], "paper", num_layers=LAYERS) == pytest.approx(
            paper_rho(steps, image_mask, mask[b], LAYERS), rel=RTOL
        )


def test_layer_selection():
    assert cmab_layers("code", 28) == [20]  # Qwen2.5-VL-7B: index 20 of 28
    assert cmab_layers("code", 36) == [26]  # Qwen2.5-VL-3B
    assert cmab_layers("code", 28, layer=5) == [5]
    assert cmab_layers("paper", 28) == list(range(1, 27))  # 1-based 2..27 = 2..L-1
    assert cmab_layers("paper", 3) == [1]
    assert cmab_probe_options("code", 28) == {"layers": [20], "text_span": "before_image"}
    assert cmab_probe_options("paper", 4) == {"layers": [1, 2], "text_span": "all"}
    with pytest.raises(ValueError, match="out of range"):
        cmab_layers("code", 28, layer=28)
    with pytest.raises(ValueError, match="at least 3"):
        cmab_layers("paper", 2)
    with pytest.raises(ValueError, match="code variant only"):
        cmab_layers("paper", 28, layer=3)
    with pytest.raises(ValueError, match="variant"):
        cmab_layers("both", 28)


def synthetic(image, text, layers, span, image_tokens=4, text_tokens=2):
    image, text = torch.tensor(image, dtype=torch.float64), torch.tensor(text, dtype=torch.float64)
    return ProbeResult(
        layers=tuple(layers),
        image_mass=image,
        text_mass=text,
        image_tokens=image_tokens,
        text_tokens=torch.full((image.shape[1],), text_tokens),
        text_span=span,
        prompt_length=10,
    )


def test_code_variant_by_hand():
    # One layer (20 of 28), 4 columns; image mass / 4 tokens, text mass / 2 tokens; column 0 skipped.
    r = synthetic([[0.8, 0.4, 0.2, 0.6]], [[0.2, 0.2, 0.0, 0.4]], [20], "before_image")
    # columns 1..3: image means 0.1, 0.05, 0.15; text means 0.1, 0 (dropped), 0.2
    assert cmab_rho(r, "code", num_layers=28) == pytest.approx((0.1 + 0.15) / (0.1 + 0.2))
    assert cmab_rho(r, "code", num_layers=28, skip_prefill=False) == pytest.approx((0.2 + 0.1 + 0.15) / 0.4)
    with pytest.raises(ValueError, match="did not compute layers"):
        cmab_rho(r, "code", num_layers=28, layer=3)
    with pytest.raises(ValueError, match="text_span"):
        cmab_rho(r, "paper", num_layers=28)


def test_paper_variant_by_hand():
    r = synthetic([[0.5, 0.2], [0.1, 0.2]], [[0.5, 0.4], [0.4, 0.8]], [1, 2], "all")
    rho_t = [
        math.exp((math.log(1.0 + 1e-8) + math.log(0.25 + 1e-8)) / 2),
        math.exp((math.log(0.5 + 1e-8) + math.log(0.25 + 1e-8)) / 2),
    ]
    assert cmab_rho(r, "paper", num_layers=4) == pytest.approx(sum(rho_t) / 2, rel=1e-12)


def test_undefined_rho_is_an_error():
    with pytest.raises(CmabError, match="no image tokens"):
        cmab_rho(
            synthetic([[0.0, 0.0]], [[1.0, 1.0]], [20], "before_image", image_tokens=0), "code", num_layers=28
        )
    with pytest.raises(CmabError, match="leaves no token"):
        cmab_rho(synthetic([[0.5]], [[0.5]], [20], "before_image"), "code", num_layers=28)
    with pytest.raises(CmabError, match="no attention on text"):
        cmab_rho(synthetic([[0.5, 0.5]], [[0.5, 0.0]], [20], "before_image"), "code", num_layers=28)


@pytest.mark.parametrize(
    ("rho", "bucket"),
    [
        (0.0, "easy"),
        (0.0999, "easy"),
        (0.1, "medium"),
        (0.3999, "medium"),
        (0.4, "hard"),
        (1.0, "hard"),
        (1.6, "hard"),
        (1.6001, "medium"),
        (1.9, "medium"),
        (1.9001, "easy"),
        (25.0, "easy"),
    ],
)
def test_buckets_follow_the_published_bands(rho, bucket):
    assert cmab_bucket(rho, True, CmabThresholds()) == bucket
    assert cmab_bucket(rho, False, CmabThresholds()) == "unsolved"


def test_buckets_use_the_given_thresholds():
    wide = CmabThresholds(easy_low=1.0, hard_low=2.0, hard_high=3.0, easy_high=4.0)
    assert [cmab_bucket(x, True, wide) for x in (0.5, 1.5, 2.5, 3.5, 4.5)] == [
        "easy",
        "medium",
        "hard",
        "medium",
        "easy",
    ]
    assert cmab_bucket(None, False, wide) == "unsolved"
    with pytest.raises(ValueError, match="needs a ρ̄"):
        cmab_bucket(None, True, wide)
