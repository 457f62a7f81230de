"""Layerwise image/text attention mass of response tokens, in one teacher-forced forward.

CMAB (method.md §2) needs, for every response token and decoder layer, how much of the token's
head-averaged attention lands on image tokens and on text tokens. The released code gets it from
``generate(output_attentions=True)``, which keeps every step's [heads × context] map for every layer
(quadratic memory, eager attention only). Here the response is scored after the fact: one forward
over prompt + response, and per decoder layer a hook recomputes the post-RoPE queries of the response
rows only and the keys of all positions, then takes softmax rows chunk by chunk in fp32 and reduces
them to a few numbers at once. No [S × S] map, and no map of more than one layer, ever exists.

Why recompute q/k in a forward hook instead of capturing them from the model's attention call: no
public hook sees post-rotary q/k (RoPE is applied inside ``forward``, and the attention kernel is
looked up in a process-global registry by name), and patching module globals or that registry would
leak into every other model in the process. The hook reuses the module's own ``q_proj``/``k_proj``,
its RoPE function (``apply_multimodal_rotary_pos_emb`` for Qwen2-VL/Qwen2.5-VL), its ``scaling`` and
the ``position_embeddings`` the model passed to it, so it does not depend on ``attn_implementation``
(eager, sdpa, flash-attn all work). ``verify=True`` closes the loop at run time: it rebuilds the
layer's output for the probed rows (softmax · V → ``o_proj``) and compares it with what the model
actually produced, so a model whose attention differs from these assumptions fails loudly.

Row convention (the one ``generate(output_attentions=True)`` uses). A sample has ``P`` prompt tokens
and ``n`` response tokens (after removing padding). Column ``t`` of every ``[layers, n]`` tensor is the
query at sequence position ``P - 1 + t``: the query that *produced* response token ``t``. Column 0 is
the last row of generate's prefill step, column ``t >= 1`` is generate's step ``t`` (its input is
response token ``t - 1``). The query at the last response token (which produces nothing) is not a
column; it only enters the optional response→response block for RAP's ACE (method.md §4).
"""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "ProbeError",
    "ProbeResult",
    "decoder_layers",
    "pack_responses",
    "probe_attention",
    "save_heatmap",
    "visual_token_ids",
]

TextSpan = Literal["all", "before_image"]
ResponseAttention = Literal["none", "mean", "heads"]

# Per-token tensors a Qwen2-VL-style processor returns; pack_responses rebuilds exactly these.
_TOKEN_KEYS = ("input_ids", "attention_mask", "mm_token_type_ids")
_MM_TEXT, _MM_IMAGE, _MM_VIDEO = 0, 1, 2


class ProbeError(RuntimeError):
    """The model or the inputs do not fit what the probe computes (the message says why)."""


@dataclass(frozen=True)
class ProbeResult:
    """One sample's attention masses; see the module docstring for the column convention.

    ``image_mass[i, t]``: over heads of layer ``layers[i]``, the mean of the summed softmax weight
    that query column ``t`` puts on visual tokens; ``text_mass`` the same on text tokens of
    ``text_span`` (``all``: every non-visual position in the query's causal context, the response so
    far included; ``before_image``: positions before the sample's first visual token, the released
    code's definition). With ``text_span="all"`` the two add up to 1.
    """

    layers: tuple[int, ...]
    image_mass: Tensor  # [len(layers), n]
    text_mass: Tensor  # [len(layers), n]
    image_tokens: int  # visual keys in the sample (all lie in the prompt, so every column sees them)
    text_tokens: Tensor  # [n] int64: text keys visible to each column (constant for before_image)
    text_span: str
    prompt_length: int  # P, unpadded
    # RAP's ACE: final layer, queries at response positions i, keys at response positions j (j <= i):
    # [n, n] head-mean or [heads, n, n]; None unless requested.
    response_attention: Optional[Tensor] = None

    @property
    def response_length(self) -> int:
        return int(self.image_mass.shape[1])

    @property
    def image_mean(self) -> Tensor:
        """Mean attention per visual token, [len(layers), n]."""
        return self.image_mass / max(self.image_tokens, 1)

    @property
    def text_mean(self) -> Tensor:
        """Mean attention per text token, [len(layers), n]."""
        return self.text_mass / self.text_tokens.clamp(min=1).to(self.text_mass.dtype)


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder layers of a transformers (VL) model."""
    for path in ("model.language_model.layers", "language_model.layers", "model.layers", "layers"):
        obj: Any = model
        for name in path.split("."):
            obj = getattr(obj, name, None)
            if obj is None:
                break
        if isinstance(obj, nn.ModuleList) and len(obj) > 0 and hasattr(obj[0], "self_attn"):
            return obj
    raise ProbeError(f"cannot find the decoder layers of {type(model).__name__}")


def visual_token_ids(model: nn.Module) -> tuple[int, ...]:
    """Token ids whose positions hold vision-encoder outputs (image and video placeholders)."""
    config = model.config
    ids = tuple(
        int(v)
        for v in (getattr(config, "image_token_id", None), getattr(config, "video_token_id", None))
        if v is not None
    )
    if not ids:
        raise ProbeError(f"{type(model).__name__}'s config names no image_token_id")
    return ids


def pack_responses(
    prompt_inputs: Mapping[str, Any],
    responses: Sequence[Sequence[int]],
    pad_token_id: int,
    padding_side: Literal["left", "right"] = "left",
) -> tuple[dict[str, Any], list[int]]:
    """Append response token ids to a processor's padded prompt batch, for ``probe_attention``.

    The response goes in as the generated ids (no re-tokenisation of text, which can split
    differently). ``mm_token_type_ids`` is extended with text (0) for the response: transformers 5
    Qwen2-VL models compute their 3-D mRoPE positions only when it is given. Vision tensors
    (``pixel_values``, ``image_grid_thw``, ...) pass through unchanged.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    input_ids = torch.as_tensor(prompt_inputs["input_ids"])
    if input_ids.ndim != 2 or input_ids.shape[0] != len(responses):
        raise ValueError(f"input_ids {tuple(input_ids.shape)} does not match {len(responses)} responses")
    # Everything is built where the prompt batch lives (a processor's batch moved to the model's GPU).
    device = input_ids.device
    mask = prompt_inputs.get("attention_mask")
    mask = torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask, device=device)
    type_ids = prompt_inputs.get("mm_token_type_ids")
    if type_ids is not None:
        type_ids = torch.as_tensor(type_ids, device=device)
    rows: dict[str, list[Tensor]] = {k: [] for k in _TOKEN_KEYS}
    lengths = []
    for b, response in enumerate(responses):
        if len(response) == 0:
            raise ValueError(f"response {b} is empty")
        resp = torch.as_tensor(list(response), dtype=input_ids.dtype, device=device)
        keep = mask[b].bool()
        rows["input_ids"].append(torch.cat([input_ids[b][keep], resp]))
        if type_ids is not None:
            prompt_types = type_ids[b][keep]
            rows["mm_token_type_ids"].append(torch.cat([prompt_types, torch.zeros_like(resp, dtype=prompt_types.dtype)]))
        lengths.append(len(response))
    width = max(len(r) for r in rows["input_ids"])

    def pad(seqs: list[Tensor], value: int) -> Tensor:
        out = torch.full((len(seqs), width), value, dtype=seqs[0].dtype, device=device)
        for b, s in enumerate(seqs):
            if padding_side == "left":
                out[b, width - len(s) :] = s
            else:
                out[b, : len(s)] = s
        return out

    packed = {k: v for k, v in prompt_inputs.items() if k not in _TOKEN_KEYS}
    packed["input_ids"] = pad(rows["input_ids"], pad_token_id)
    packed["attention_mask"] = pad([torch.ones_like(r) for r in rows["input_ids"]], 0).to(mask.dtype)
    if type_ids is not None:
        packed["mm_token_type_ids"] = pad(rows["mm_token_type_ids"], _MM_TEXT)
    return packed, lengths


class _Done(Exception):
    """Raised by the last needed layer's hook: the remaining layers and the LM head are not needed."""


@dataclass
class _Plan:
    """What the hooks compute for one batch, and where they put it."""

    rows: Tensor  # [B, R] padded-coordinate positions of the query columns (+1 for the ACE row)
    row_valid: Tensor  # [B, R] bool
    key_valid: Tensor  # [B, S] bool, padding excluded
    key_sets: Tensor  # [B, S, 2] float: (visual, text) indicator per key
    mass_layers: dict[int, int]  # decoder layer index -> row in the output buffers
    image_mass: Tensor  # [len(mass_layers), B, R]
    text_mass: Tensor  # [len(mass_layers), B, R]
    chunk: int
    compute_dtype: torch.dtype
    ace_layer: Optional[int]
    ace_heads: bool
    ace_cols: Optional[Tensor]  # [B, N] positions of the response keys
    ace: Optional[Tensor]  # [B, R, N] or [B, H, R, N]
    verify: bool
    last_layer: int


def _rope_fn(attn: nn.Module) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The module's own RoPE, as ``rotate(x [B, heads, R, D], cos, sin)`` (cos/sin gathered at R)."""
    modeling = sys.modules[type(attn).__module__]
    rope_parameters = getattr(attn.config, "rope_parameters", None) or {}
    section = rope_parameters.get("mrope_section")
    if section is not None and hasattr(modeling, "apply_multimodal_rotary_pos_emb"):
        fn = modeling.apply_multimodal_rotary_pos_emb
        return lambda x, cos, sin: fn(x, x, cos, sin, section)[0]
    if section is None and hasattr(modeling, "apply_rotary_pos_emb"):
        fn1 = modeling.apply_rotary_pos_emb
        return lambda x, cos, sin: fn1(x, x, cos, sin)[0]
    raise ProbeError(
        f"{type(attn).__name__}: no rotary embedding function the probe knows in {modeling.__name__}"
    )


def _check_supported(attn: nn.Module) -> None:
    for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "num_key_value_groups"):
        if not hasattr(attn, name):
            raise ProbeError(
                f"{type(attn).__name__} has no '{name}': not a Qwen2-style attention the probe supports"
            )
    for name in ("q_norm", "k_norm"):
        if hasattr(attn, name):
            raise ProbeError(
                f"{type(attn).__name__} normalises q/k ('{name}'), which the probe does not reproduce"
            )
    if getattr(attn, "sliding_window", None):
        raise ProbeError(
            f"layer {attn.layer_idx} uses sliding-window attention, which the probe does not support"
        )


def _gather_rows(x: Tensor, rows: Tensor) -> Tensor:
    """x[..., b, rows[b], :] for x of shape [..., B, S, D] (cos/sin are [B, S, D] or [3, B, S, D])."""
    lead = x.shape[:-3]
    index = rows.view(*([1] * len(lead)), *rows.shape, 1).expand(*lead, *rows.shape, x.shape[-1])
    return torch.gather(x, -2, index)


def _layer_hook(plan: _Plan, layer_idx: int, attn: nn.Module) -> Callable[..., None]:
    rotate = _rope_fn(attn)
    groups = int(attn.num_key_value_groups)
    head_dim = int(attn.head_dim)
    scaling = float(attn.scaling)

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Any) -> None:
        need_mass = layer_idx in plan.mass_layers
        need_ace = layer_idx == plan.ace_layer
        if not (need_mass or need_ace):
            return
        hidden = args[0] if args else kwargs["hidden_states"]
        cos, sin = kwargs["position_embeddings"]
        bsz, seq, _ = hidden.shape
        device = hidden.device  # differs from layer to layer when the model is split over devices
        rows, key_valid = plan.rows.to(device), plan.key_valid.to(device)
        n_rows = rows.shape[1]
        # The model's own projections and RoPE in the model's dtype, then fp32 (or wider) math.
        q = module.q_proj(_gather_rows(hidden, rows)).view(bsz, n_rows, -1, head_dim).transpose(1, 2)
        q = rotate(q, _gather_rows(cos, rows), _gather_rows(sin, rows)).to(plan.compute_dtype)
        k = module.k_proj(hidden).view(bsz, seq, -1, head_dim).transpose(1, 2)
        k = rotate(k, cos, sin).to(plan.compute_dtype)  # [B, KV, S, D]
        kv_heads = k.shape[1]
        q = q.view(bsz, kv_heads, groups, n_rows, head_dim)  # head h uses kv head h // groups
        v = None
        if plan.verify:
            v = module.v_proj(hidden).view(bsz, seq, -1, head_dim).transpose(1, 2).to(plan.compute_dtype)
            attn_rows = torch.empty(
                bsz, kv_heads, groups, n_rows, head_dim, dtype=plan.compute_dtype, device=device
            )
        positions = torch.arange(seq, device=device)
        for start in range(0, n_rows, plan.chunk):
            stop = min(start + plan.chunk, n_rows)
            width = stop - start
            qc = q[:, :, :, start:stop].reshape(bsz, kv_heads, groups * width, head_dim)
            # One [B, KV, G, C, S] buffer: scale, mask and softmax in place (the chunk's peak memory).
            probs = torch.matmul(qc, k.transpose(-1, -2)).view(bsz, kv_heads, groups, width, seq)
            allowed = key_valid[:, None, :] & (positions[None, None, :] <= rows[:, start:stop, None])
            probs.mul_(scaling).masked_fill_(~allowed[:, None, None], float("-inf"))
            probs.sub_(probs.amax(dim=-1, keepdim=True)).exp_()
            probs.div_(probs.sum(dim=-1, keepdim=True))
            if v is not None:
                attn_rows[:, :, :, start:stop] = torch.matmul(probs, v[:, :, None])
            head_mean = probs.mean(dim=(1, 2))  # [B, C, S]
            if need_mass:
                slot = plan.mass_layers[layer_idx]
                masses = torch.bmm(head_mean, plan.key_sets.to(device))  # [B, C, 2]
                plan.image_mass[slot, :, start:stop] = masses[..., 0]
                plan.text_mass[slot, :, start:stop] = masses[..., 1]
            if need_ace:
                cols = plan.ace_cols.to(device)
                if plan.ace_heads:
                    per_head = probs.reshape(bsz, kv_heads * groups, width, seq)
                    index = cols[:, None, None, :].expand(bsz, per_head.shape[1], width, cols.shape[1])
                    plan.ace[:, :, start:stop] = torch.gather(per_head, -1, index)
                else:
                    index = cols[:, None, :].expand(bsz, width, cols.shape[1])
                    plan.ace[:, start:stop] = torch.gather(head_mean, -1, index)
        if v is not None:
            _verify_layer(module, layer_idx, rows, plan.row_valid.to(device), attn_rows, output)
        if layer_idx == plan.last_layer:
            raise _Done

    return hook


def _verify_layer(
    module: nn.Module, layer_idx: int, rows: Tensor, row_valid: Tensor, attn_rows: Tensor, output: Any
) -> None:
    """Compare o_proj(softmax(qKᵀ)·V) on the probed rows with the layer's real output."""
    bsz, kv_heads, groups, n_rows, head_dim = attn_rows.shape
    merged = (
        attn_rows.reshape(bsz, kv_heads * groups, n_rows, head_dim).transpose(1, 2).reshape(bsz, n_rows, -1)
    )
    weight = module.o_proj.weight
    ours = module.o_proj(merged.to(weight.dtype)).to(attn_rows.dtype)
    real = output[0] if isinstance(output, tuple) else output
    theirs = _gather_rows(real, rows).to(attn_rows.dtype)
    valid = row_valid[..., None]
    diff = ((ours - theirs) * valid).norm() / (theirs * valid).norm().clamp(min=1e-30)
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-4}.get(weight.dtype, 3e-2)
    if not diff <= tolerance:
        raise ProbeError(
            f"layer {layer_idx}: the probe's attention does not reproduce the model's output "
            f"(relative error {float(diff):.2e} > {tolerance:g}); this attention module is not supported"
        )


@torch.inference_mode()
def probe_attention(
    model: nn.Module,
    inputs: Mapping[str, Any],
    response_lengths: Sequence[int],
    *,
    layers: Optional[Sequence[int]] = None,
    text_span: TextSpan = "all",
    chunk: int = 256,
    response_attention: ResponseAttention = "none",
    verify: bool = False,
) -> list[ProbeResult]:
    """Image/text attention masses of each sample's response columns, per requested decoder layer.

    ``inputs`` is a model-ready batch of prompt + response (e.g. ``pack_responses``' output), left or
    right padded; sample ``b``'s response is its last ``response_lengths[b]`` non-padding tokens.
    ``layers`` selects the decoder layers (default all); the forward stops after the last layer
    needed and never runs the LM head. ``chunk`` bounds the query rows per softmax block
    (memory ~ batch × heads × chunk × seq × 4 bytes). ``response_attention`` adds the final layer's
    response→response block for RAP's ACE. ``verify`` checks each probed layer against the model's
    own output (about doubles the probe's own cost).
    """
    if text_span not in ("all", "before_image"):
        raise ValueError(f"text_span must be 'all' or 'before_image', got {text_span!r}")
    if response_attention not in ("none", "mean", "heads"):
        raise ValueError(f"response_attention must be 'none', 'mean' or 'heads', got {response_attention!r}")
    if chunk <= 0:
        raise ValueError(f"chunk must be positive, got {chunk}")
    blocks = decoder_layers(model)
    num_layers = len(blocks)
    mass_layers = tuple(range(num_layers)) if layers is None else tuple(int(i) for i in layers)
    for i in mass_layers:
        if not 0 <= i < num_layers:
            raise ValueError(f"layer {i} out of range for a model with {num_layers} decoder layers")
    if len(set(mass_layers)) != len(mass_layers):
        raise ValueError(f"layers has duplicates: {list(mass_layers)}")

    input_ids = torch.as_tensor(inputs["input_ids"])
    device = model.get_input_embeddings().weight.device
    param_dtype = blocks[0].self_attn.q_proj.weight.dtype
    compute_dtype = torch.promote_types(param_dtype, torch.float32)
    bsz, seq = input_ids.shape
    if len(response_lengths) != bsz:
        raise ValueError(f"{len(response_lengths)} response lengths for a batch of {bsz}")
    mask = inputs.get("attention_mask")
    key_valid = (torch.ones_like(input_ids) if mask is None else torch.as_tensor(mask)).to(device).bool()
    ids = input_ids.to(device)

    visual = torch.isin(ids, torch.tensor(visual_token_ids(model), device=device)) & key_valid
    first_visual = torch.where(visual, torch.arange(seq, device=device), seq).min(dim=1).values
    text = key_valid & ~visual
    if text_span == "before_image":
        text &= torch.arange(seq, device=device)[None, :] < first_visual[:, None]
    key_sets = torch.stack([visual, text], dim=-1).to(compute_dtype)

    # Query columns: positions P-1 .. P+n-1 (the last one only feeds ACE).
    lengths = [int(n) for n in response_lengths]
    valid_counts = key_valid.sum(dim=1).tolist()
    n_rows = max(lengths) + 1
    rows = torch.zeros(bsz, n_rows, dtype=torch.long, device=device)
    row_valid = torch.zeros(bsz, n_rows, dtype=torch.bool, device=device)
    prompt_lengths = []
    for b, n in enumerate(lengths):
        if not 1 <= n < valid_counts[b]:
            raise ValueError(f"sample {b}: response length {n} must be in [1, {valid_counts[b] - 1}]")
        positions = key_valid[b].nonzero().squeeze(1)[-(n + 1) :]
        if not bool(visual[b, : positions[0] + 1].sum() == visual[b].sum()):
            raise ValueError(f"sample {b}: visual tokens inside the response")
        rows[b, : n + 1] = positions
        rows[b, n + 1 :] = positions[-1]  # padding rows repeat a real one; their results are dropped
        row_valid[b, : n + 1] = True
        prompt_lengths.append(valid_counts[b] - n)

    ace_layer = num_layers - 1 if response_attention != "none" else None
    ace_cols = ace = None
    if ace_layer is not None:
        ace_cols = rows[:, 1:]
        heads = int(blocks[-1].self_attn.config.num_attention_heads)
        shape = (
            (bsz, heads, n_rows, n_rows - 1) if response_attention == "heads" else (bsz, n_rows, n_rows - 1)
        )
        ace = torch.zeros(shape, dtype=compute_dtype, device=device)
    needed = set(mass_layers) | ({ace_layer} if ace_layer is not None else set())
    plan = _Plan(
        rows=rows,
        row_valid=row_valid,
        key_valid=key_valid,
        key_sets=key_sets,
        mass_layers={layer: slot for slot, layer in enumerate(mass_layers)},
        image_mass=torch.zeros(len(mass_layers), bsz, n_rows, dtype=compute_dtype, device=device),
        text_mass=torch.zeros(len(mass_layers), bsz, n_rows, dtype=compute_dtype, device=device),
        chunk=chunk,
        compute_dtype=compute_dtype,
        ace_layer=ace_layer,
        ace_heads=response_attention == "heads",
        ace_cols=ace_cols,
        ace=ace,
        verify=verify,
        last_layer=max(needed) if needed else -1,
    )

    handles = []
    try:
        for i in sorted(needed):
            attn = blocks[i].self_attn
            _check_supported(attn)
            handles.append(attn.register_forward_hook(_layer_hook(plan, i, attn), with_kwargs=True))
        base = model.model if hasattr(model, "lm_head") and hasattr(model, "model") else model
        forward_inputs = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in inputs.items()}
        forward_inputs.setdefault("attention_mask", key_valid.long())
        if "mm_token_type_ids" not in forward_inputs and _takes_mm_token_types(base):
            forward_inputs["mm_token_type_ids"] = _mm_token_types(ids, model)
        if needed:
            try:
                base(**forward_inputs, use_cache=False)
            except _Done:
                pass
    finally:
        for h in handles:
            h.remove()

    text_visible = text.long().cumsum(dim=1).gather(1, rows)
    results = []
    for b, n in enumerate(lengths):
        block = None
        if plan.ace is not None:
            block = _own(plan.ace[b, :, 1 : n + 1, :n] if plan.ace_heads else plan.ace[b, 1 : n + 1, :n])
        results.append(
            ProbeResult(
                layers=mass_layers,
                image_mass=_own(plan.image_mass[:, b, :n]),
                text_mass=_own(plan.text_mass[:, b, :n]),
                image_tokens=int(visual[b].sum()),
                text_tokens=_own(text_visible[b, :n]),
                text_span=text_span,
                prompt_length=prompt_lengths[b],
                response_attention=block,
            )
        )
    return results


def _own(x: Tensor) -> Tensor:
    """A CPU copy that does not keep the batch's buffer alive."""
    return x.to("cpu", copy=True)


def _takes_mm_token_types(base: nn.Module) -> bool:
    return "mm_token_type_ids" in inspect.signature(base.forward).parameters


def _mm_token_types(ids: Tensor, model: nn.Module) -> Tensor:
    """Modality per token (text 0, image 1, video 2), as the processor would have built it.

    Without it transformers 5's Qwen2-VL models silently fall back to 1-D positions instead of mRoPE.
    """
    types = torch.full_like(ids, _MM_TEXT)
    image_id = getattr(model.config, "image_token_id", None)
    video_id = getattr(model.config, "video_token_id", None)
    if image_id is not None:
        types[ids == image_id] = _MM_IMAGE
    if video_id is not None:
        types[ids == video_id] = _MM_VIDEO
    return types


def save_heatmap(
    result: ProbeResult, path: str | Path, tokens: Optional[Sequence[str]] = None, title: str = ""
) -> Path:
    """PNG of one sample's image and text attention mass, layers × response tokens, side by side.

    ``tokens`` labels the columns (the decoded response tokens); column ``t`` is the query that
    produced token ``t``. Useful to see which layers and which tokens look at the image.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = result.response_length
    if tokens is not None and len(tokens) != n:
        raise ValueError(f"{len(tokens)} token labels for {n} response tokens")
    width = min(4 + 0.25 * n, 40)
    fig, axes = plt.subplots(1, 2, figsize=(2 * width, 1.5 + 0.3 * len(result.layers)), squeeze=False)
    for ax, mass, name in ((axes[0][0], result.image_mass, "image"), (axes[0][1], result.text_mass, "text")):
        shown = ax.imshow(
            mass.float().numpy(), aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest"
        )
        ax.set_title(
            f"{name} attention mass ({result.image_tokens} image tokens, text={result.text_span})"
            if name == "image"
            else f"{name} attention mass (text={result.text_span})"
        )
        ax.set_ylabel("decoder layer")
        ax.set_yticks(range(len(result.layers)), [str(i) for i in result.layers])
        if tokens is not None:
            ax.set_xticks(range(n), list(tokens), rotation=90, fontsize=7)
        else:
            ax.set_xlabel("response token")
        fig.colorbar(shown, ax=ax, fraction=0.03)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
