"""The attention probe against transformers' own eager attention maps (output_attentions=True).

Tiny random Qwen2.5-VL and Qwen2-VL models (4 decoder layers, 4 query heads over 2 KV heads, mRoPE)
are built here; their q/k weights are scaled up so attention is peaked rather than uniform, which
makes a wrong row, column or head mapping visible. The reference is the plain per-layer map
``attentions[l][b]`` of an eager forward over the same padded batch, reduced with boolean masks.
"""

from __future__ import annotations

import copy

import pytest
import torch
from support.devices import default_device_elsewhere
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

import curate.scoring.attention_probe as probe_module
from curate.scoring.attention_probe import (
    ProbeError,
    decoder_layers,
    pack_responses,
    probe_attention,
    save_heatmap,
)

IMAGE, VIDEO, VSTART, VEND, PAD = 290, 291, 292, 293, 0
PATCH_DIM = 3 * 2 * 14 * 14  # channels × temporal patch × patch²
LAYERS = 4
RTOL, ATOL = 1e-5, 1e-7  # fp32 probabilities carry ~6e-8 absolute rounding


def build_tiny_vlm(family: str, attn_implementation: str = "eager", seed: int = 0, layers: int = LAYERS):
    """A random Qwen2.5-VL / Qwen2-VL with GQA (4 heads, 2 KV heads) and mRoPE (head_dim 16)."""
    text = dict(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
    )
    tokens = dict(
        image_token_id=IMAGE, video_token_id=VIDEO, vision_start_token_id=VSTART, vision_end_token_id=VEND
    )
    if family == "qwen2_5_vl":
        vision = dict(
            depth=1,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=64,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[0],
        )
        config, cls = (
            Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens),
            Qwen2_5_VLForConditionalGeneration,
        )
    else:
        vision = dict(
            depth=1,
            embed_dim=32,
            hidden_size=64,
            num_heads=2,
            mlp_ratio=2,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
        )
        config, cls = (
            Qwen2VLConfig(text_config=text, vision_config=vision, **tokens),
            Qwen2VLForConditionalGeneration,
        )
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = cls(config).eval()
    with torch.no_grad():
        for layer in decoder_layers(model):
            layer.self_attn.q_proj.weight.normal_(0, 0.15)
            layer.self_attn.k_proj.weight.normal_(0, 0.15)
    return model


def same_weights(model, attn_implementation: str):
    config = copy.deepcopy(model.config)
    config._attn_implementation = attn_implementation
    other = type(model)(config).eval()
    other.load_state_dict(model.state_dict())
    return other


def make_prompts(seed: int = 0, text_first: bool = True):
    """Three prompts of different lengths and image sizes (4, 8, 16 image tokens), unpadded."""
    gen = torch.Generator().manual_seed(seed)
    grids = [(4, 4), (4, 8), (8, 8)]
    before, after = [5, 2, 9], [4, 7, 3]
    prompts, pixels = [], []
    for (h, w), nb, na in zip(grids, before, after):
        image = [VSTART] + [IMAGE] * (h * w // 4) + [VEND]
        t1 = torch.randint(10, 280, (nb,), generator=gen).tolist()
        t2 = torch.randint(10, 280, (na,), generator=gen).tolist()
        prompts.append(t1 + image + t2 if text_first else image + t1 + t2)
        pixels.append(torch.randn(h * w, PATCH_DIM, generator=gen))
    grid_thw = torch.tensor([[1, h, w] for h, w in grids])
    return prompts, torch.cat(pixels), grid_thw


def prompt_batch(prompts, pixel_values, grid_thw, padding_side: str = "left", with_types: bool = True):
    """What a processor returns for these prompts: padded ids, mask, modality types, pixels."""
    width = max(map(len, prompts))
    ids = torch.full((len(prompts), width), PAD)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        span = slice(width - len(p), width) if padding_side == "left" else slice(0, len(p))
        ids[b, span] = torch.tensor(p)
        mask[b, span] = 1
    batch = {
        "input_ids": ids,
        "attention_mask": mask,
        "pixel_values": pixel_values,
        "image_grid_thw": grid_thw,
    }
    if with_types:
        batch["mm_token_type_ids"] = (ids == IMAGE).long()
    return batch


def make_responses(lengths=(6, 3, 9), seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(10, 280, (n,), generator=gen).tolist() for n in lengths]


def batch_for(indices, padding_side: str, seed: int = 0, text_first: bool = True):
    prompts, pixels, grids = make_prompts(seed, text_first)
    responses = make_responses()
    offsets = [0]
    for h, w in grids[:, 1:].tolist():
        offsets.append(offsets[-1] + h * w)
    pixel_values = torch.cat([pixels[offsets[i] : offsets[i + 1]] for i in indices])
    prompt = prompt_batch([prompts[i] for i in indices], pixel_values, grids[list(indices)], padding_side)
    return pack_responses(prompt, [responses[i] for i in indices], PAD, padding_side)


def eager_reference(model, inputs, lengths):
    """Per sample: image, text(all), text(before image) masses [L, n] and the final-layer response block."""
    with torch.no_grad():
        out = model(**inputs, output_attentions=True, use_cache=False)
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    refs = []
    for b, n in enumerate(lengths):
        valid = mask[b].nonzero().squeeze(1)
        rows, resp = valid[-(n + 1) : -1], valid[-n:]
        image = ids[b] == IMAGE
        first_image = int(image.nonzero()[0])
        positions = torch.arange(ids.shape[1])
        maps = [out.attentions[layer][b].mean(dim=0)[rows] for layer in range(len(out.attentions))]
        visible = positions[None, :] <= rows[:, None]
        text_all = mask[b] & ~image
        text_before = mask[b] & (positions < first_image)
        refs.append(
            {
                "image": torch.stack([(a * image).sum(-1) for a in maps]),
                "all": torch.stack([(a * text_all).sum(-1) for a in maps]),
                "before_image": torch.stack([(a * text_before).sum(-1) for a in maps]),
                "text_tokens_all": (text_all[None, :] & visible).sum(-1),
                "text_tokens_before": int(text_before.sum()),
                "image_tokens": int(image.sum()),
                "ace_heads": out.attentions[-1][b][:, resp][:, :, resp],
                "prompt_length": int(mask[b].sum()) - n,
            }
        )
    return refs


FAMILIES = ["qwen2_5_vl", "qwen2_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def eager_model(request):
    return build_tiny_vlm(request.param)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("indices", [(1,), (0, 1, 2)], ids=["batch1", "batch3"])
@pytest.mark.parametrize("text_span", ["all", "before_image"])
def test_masses_equal_eager_attention_maps(eager_model, padding_side, indices, text_span):
    inputs, lengths = batch_for(indices, padding_side)
    refs = eager_reference(eager_model, inputs, lengths)
    results = probe_attention(
        eager_model, inputs, lengths, text_span=text_span, chunk=4, response_attention="heads"
    )
    for res, ref, n in zip(results, refs, lengths):
        assert res.layers == tuple(range(LAYERS))
        assert res.image_mass.shape == res.text_mass.shape == (LAYERS, n)
        torch.testing.assert_close(res.image_mass, ref["image"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(res.text_mass, ref[text_span], rtol=RTOL, atol=ATOL)
        assert res.image_tokens == ref["image_tokens"]
        assert res.prompt_length == ref["prompt_length"]
        expected_counts = (
            ref["text_tokens_all"] if text_span == "all" else torch.full((n,), ref["text_tokens_before"])
        )
        assert torch.equal(res.text_tokens, expected_counts)
        torch.testing.assert_close(res.image_mean, ref["image"] / ref["image_tokens"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(res.text_mean, ref[text_span] / expected_counts, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(res.response_attention, ref["ace_heads"], rtol=RTOL, atol=ATOL)
        if text_span == "all":  # every visible key is either visual or text
            torch.testing.assert_close(res.image_mass + res.text_mass, torch.ones(LAYERS, n))


def test_attention_is_peaked_so_the_equivalence_means_something(eager_model):
    inputs, lengths = batch_for((0,), "left")
    with torch.no_grad():
        maps = eager_model(**inputs, output_attentions=True).attentions
    context = int(inputs["attention_mask"].sum())
    top = torch.stack([a[0, :, -lengths[0] :].amax(dim=-1) for a in maps])
    assert top.mean() > 4 / context  # several times the uniform weight: peaked, per head
    ref = eager_reference(eager_model, inputs, lengths)[0]
    assert ref["image"].std() > 0.02  # image mass differs across layers and tokens


@pytest.mark.parametrize("attn_implementation", ["sdpa"])
def test_probe_ignores_the_attention_kernel(eager_model, attn_implementation):
    """The probe does its own math: a model loaded with another kernel gives the same masses."""
    other = same_weights(eager_model, attn_implementation)
    inputs, lengths = batch_for((0, 1, 2), "left")
    refs = eager_reference(eager_model, inputs, lengths)
    results = probe_attention(other, inputs, lengths, verify=True)
    for res, ref in zip(results, refs):
        torch.testing.assert_close(res.image_mass, ref["image"], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(res.text_mass, ref["all"], rtol=RTOL, atol=ATOL)


def test_padding_and_batching_do_not_change_results(eager_model):
    batched = probe_attention(eager_model, *batch_for((0, 1, 2), "left"))
    right = probe_attention(eager_model, *batch_for((0, 1, 2), "right"))
    for i in range(3):
        alone = probe_attention(eager_model, *batch_for((i,), "left"))[0]
        for other in (batched[i], right[i]):
            torch.testing.assert_close(other.image_mass, alone.image_mass, rtol=RTOL, atol=ATOL)
            torch.testing.assert_close(other.text_mass, alone.text_mass, rtol=RTOL, atol=ATOL)


def test_chunk_size_does_not_change_results(eager_model):
    inputs, lengths = batch_for((0, 1, 2), "right")
    one = probe_attention(eager_model, inputs, lengths, chunk=1, response_attention="mean")
    big = probe_attention(eager_model, inputs, lengths, chunk=1024, response_attention="mean")
    for a, b in zip(one, big):
        torch.testing.assert_close(a.image_mass, b.image_mass, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(a.response_attention, b.response_attention, rtol=RTOL, atol=ATOL)


def test_mm_token_types_are_built_when_missing(eager_model):
    """Without mm_token_type_ids transformers 5 silently uses 1-D positions; the probe rebuilds them."""
    inputs, lengths = batch_for((0, 1, 2), "left")
    refs = eager_reference(eager_model, inputs, lengths)
    stripped = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    for res, ref in zip(probe_attention(eager_model, stripped, lengths), refs):
        torch.testing.assert_close(res.image_mass, ref["image"], rtol=RTOL, atol=ATOL)


def test_selected_layers_stop_the_forward_early(eager_model):
    inputs, lengths = batch_for((0, 1), "left")
    full = probe_attention(eager_model, inputs, lengths)
    calls: list[int] = []
    blocks = decoder_layers(eager_model)
    handles = [
        blk.register_forward_pre_hook(lambda m, a, i=i: calls.append(i)) for i, blk in enumerate(blocks)
    ]
    handles.append(eager_model.lm_head.register_forward_pre_hook(lambda m, a: calls.append(-1)))
    try:
        part = probe_attention(eager_model, inputs, lengths, layers=[2, 1])
    finally:
        for h in handles:
            h.remove()
    assert calls == [0, 1, 2]  # layer 3 and the LM head never ran
    for p, f in zip(part, full):
        assert p.layers == (2, 1)
        torch.testing.assert_close(p.image_mass, f.image_mass[[2, 1]])
        torch.testing.assert_close(p.text_mass, f.text_mass[[2, 1]])


def test_response_attention_mean_is_head_mean_of_heads(eager_model):
    inputs, lengths = batch_for((0, 2), "right")
    heads = probe_attention(eager_model, inputs, lengths, layers=[], response_attention="heads")
    mean = probe_attention(eager_model, inputs, lengths, layers=[], response_attention="mean")
    for h, m, n in zip(heads, mean, lengths):
        assert h.image_mass.shape == (0, n)
        assert h.response_attention.shape == (4, n, n)
        torch.testing.assert_close(m.response_attention, h.response_attention.mean(0))
        assert torch.all(m.response_attention.triu(1) == 0)  # causal: no weight on later tokens


def hook_counts(model) -> list[int]:
    return [len(blk.self_attn._forward_hooks) for blk in decoder_layers(model)]


def test_probe_does_not_change_the_model_output(eager_model):
    inputs, lengths = batch_for((0, 1, 2), "left")
    hooks = hook_counts(eager_model)
    with torch.no_grad():
        before = eager_model(**inputs).logits
    probe_attention(eager_model, inputs, lengths, verify=True)
    with torch.no_grad():
        after = eager_model(**inputs).logits
    assert torch.equal(before, after)
    assert hook_counts(eager_model) == hooks


def test_verify_catches_a_probe_that_differs_from_the_model(eager_model, monkeypatch):
    """If the probe's q/k did not match the model's (here: RoPE left out), verify must fail."""
    monkeypatch.setattr(probe_module, "_rope_fn", lambda attn: lambda x, cos, sin: x)
    inputs, lengths = batch_for((0,), "left")
    hooks = hook_counts(eager_model)
    with pytest.raises(ProbeError, match="does not reproduce"):
        probe_attention(eager_model, inputs, lengths, verify=True)
    assert hook_counts(eager_model) == hooks


def test_pack_responses_keeps_prompts_and_marks_the_response_as_text():
    prompts, pixels, grids = make_prompts()
    responses = make_responses()
    for side in ("left", "right"):
        packed, lengths = pack_responses(prompt_batch(prompts, pixels, grids, side), responses, PAD, side)
        assert lengths == [len(r) for r in responses]
        assert packed["pixel_values"] is pixels and packed["image_grid_thw"] is grids
        for b, (p, r) in enumerate(zip(prompts, responses)):
            keep = packed["attention_mask"][b].bool()
            assert packed["input_ids"][b][keep].tolist() == p + r
            assert packed["mm_token_type_ids"][b][keep].tolist() == [int(t == IMAGE) for t in p] + [0] * len(
                r
            )
            assert keep.nonzero()[0 if side == "right" else -1].item() == (
                0 if side == "right" else keep.numel() - 1
            )
    with pytest.raises(ValueError, match="empty"):
        pack_responses(prompt_batch(prompts, pixels, grids), [[1], [], [2]], PAD)


@pytest.mark.parametrize("response_attention", ["none", "heads"])
def test_pack_and_probe_build_tensors_where_the_batch_lives(eager_model, response_attention):
    """A tensor built on the default device instead of the batch's fails on a GPU; here it lands on
    ``meta`` and fails the same way (tests/support/devices.py)."""
    prompts, pixels, grids = make_prompts()
    expected = probe_attention(eager_model, *pack_responses(prompt_batch(prompts, pixels, grids), make_responses(),
                                                            PAD), response_attention=response_attention)
    with default_device_elsewhere(packages=("curate.scoring.attention_probe",)):
        inputs, lengths = pack_responses(prompt_batch(prompts, pixels, grids), make_responses(), PAD)
        got = probe_attention(eager_model, inputs, lengths, response_attention=response_attention, verify=True)
    for a, b in zip(got, expected):
        assert torch.equal(a.image_mass, b.image_mass) and torch.equal(a.text_mass, b.text_mass)


def test_bad_arguments_fail_clearly(eager_model):
    inputs, lengths = batch_for((0,), "left")
    with pytest.raises(ValueError, match="text_span"):
        probe_attention(eager_model, inputs, lengths, text_span="prompt")
    with pytest.raises(ValueError, match="out of range"):
        probe_attention(eager_model, inputs, lengths, layers=[LAYERS])
    with pytest.raises(ValueError, match="response length"):
        probe_attention(eager_model, inputs, [int(inputs["attention_mask"].sum())])
    with pytest.raises(ValueError, match="response length"):
        probe_attention(eager_model, inputs, [0])
    with pytest.raises(ValueError, match="visual tokens inside the response"):
        probe_attention(eager_model, inputs, [lengths[0] + 8])


def test_heatmap_png(eager_model, tmp_path):
    from PIL import Image

    inputs, lengths = batch_for((2,), "left")
    result = probe_attention(eager_model, inputs, lengths)[0]
    path = save_heatmap(
        result, tmp_path / "sample.png", tokens=[f"t{i}" for i in range(lengths[0])], title="x"
    )
    with Image.open(path) as img:
        assert img.format == "PNG" and img.width > img.height > 100
        assert len(set(img.convert("RGB").getdata())) > 20  # a rendered map, not a blank canvas
    with pytest.raises(ValueError, match="token labels"):
        save_heatmap(result, tmp_path / "bad.png", tokens=["a"])
