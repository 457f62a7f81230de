"""CMAB attention: the probe vs the released code's generate(output_attentions=True).

Both sides score the same random-weight Qwen2.5-VL (28 decoder layers like the 7B model, narrower)
on the same prompt (text, then an image of N tokens, then text) and the same greedy response:

* released: ``generate(output_attentions=True)`` with eager attention, keeping every step's map for
  every layer, then the released code's loop over steps (layer 20, prefill skipped) for ρ̄;
* probe: one teacher-forced forward over prompt + response with ``curate.scoring.attention_probe`` (the
  response comes from any engine; CMAB's grading generations already exist), for the code variant
  (1 layer, the forward stops after it) and the paper variant (layers 2..L-1);
* ours end to end: a plain HF ``generate`` (sdpa, no attentions) plus the code-variant probe, for
  when no other engine produced the response.

Each side runs in a fresh subprocess. CPU peak memory is the kernel's high-water mark of the
process's resident set (``VmHWM``), reset through ``/proc/self/clear_refs`` right before the measured
call and read right after: every allocation counts (torch's CPU allocator hands large blocks
straight to the OS, so RSS tracks tensors), nothing is missed between samples, and the model, the
inputs and the imports are excluded by subtracting the resident set measured just before. On CUDA
it is ``torch.cuda.max_memory_allocated`` above the allocation before the call. Both sides' ρ̄ are
compared, so a fast wrong probe cannot pass.

    .venv/bin/python benchmarks/bench_cmab_probe.py            # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/bench_cmab_probe.py --quick    # one small point, a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
IMAGE, VIDEO, VSTART, VEND, PAD = 990, 991, 992, 993, 0
PATCH_DIM = 3 * 2 * 14 * 14


# ----------------------------------------------------------------------------------------------
# Worker side (one subprocess per measurement)


def build_model(layers: int, hidden: int, heads: int, kv_heads: int, attn: str, dtype: str, device: str):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    head_dim = hidden // heads
    quarter = head_dim // 8  # mrope_section sums to head_dim / 2, split 1:1.5:1.5 like the 7B's 16/24/24
    section = [head_dim // 2 - 2 * (3 * quarter // 2), 3 * quarter // 2, 3 * quarter // 2]
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=1000,
            hidden_size=hidden,
            intermediate_size=hidden * 2,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=32768,
            rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": section},
        ),
        vision_config=dict(
            depth=1,
            hidden_size=64,
            intermediate_size=128,
            num_heads=2,
            out_hidden_size=hidden,
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=112,
            fullatt_block_indexes=[0],
        ),
        image_token_id=IMAGE,
        video_token_id=VIDEO,
        vision_start_token_id=VSTART,
        vision_end_token_id=VEND,
    )
    config._attn_implementation = attn
    torch.manual_seed(0)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    return model.to(device=device, dtype=getattr(torch, dtype))


def build_prompt(image_tokens: int, text_before: int, text_after: int, device: str) -> dict[str, Any]:
    import torch

    side = 2 * math.isqrt(image_tokens)  # patches per side; 2×2 patches merge into one token
    if (side // 2) ** 2 != image_tokens:
        raise ValueError(f"image_tokens must be a square, got {image_tokens}")
    gen = torch.Generator().manual_seed(1)
    text = lambda n: torch.randint(10, 900, (n,), generator=gen).tolist()  # noqa: E731
    ids = text(text_before) + [VSTART] + [IMAGE] * image_tokens + [VEND] + text(text_after)
    input_ids = torch.tensor([ids])
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": torch.ones_like(input_ids).to(device),
        "mm_token_type_ids": (input_ids == IMAGE).long().to(device),
        "pixel_values": torch.randn(side * side, PATCH_DIM, generator=gen).to(device),
        "image_grid_thw": torch.tensor([[1, side, side]]).to(device),
    }


class PeakMemory:
    """Peak memory of one call above what was resident before it (see the module docstring)."""

    def __init__(self, device: str):
        self.device = device

    def __enter__(self) -> "PeakMemory":
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        else:
            self.base = _status_kib("VmRSS") * 1024
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS
        self.start, self.cpu_start = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: Any) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        else:
            peak = _status_kib("VmHWM") * 1024
        self.seconds = time.perf_counter() - self.start
        self.cpu_seconds = time.process_time() - self.cpu_start
        self.peak_mib = max(peak - self.base, 0) / 2**20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1))


def released_rho(attentions, input_ids, layer: int) -> float:
    """The released code's loop (CMAB/main/attention_com.py): steps 1.., one layer, means per token."""
    ids = input_ids[0]
    image_idx = (ids == IMAGE).nonzero().squeeze(1)
    text_idx = list(range(int(image_idx[0])))
    total_image = total_text = 0.0
    for step in attentions[1:]:
        row = step[layer].mean(dim=1)[0][0]
        image = row[image_idx].sum().item() / len(image_idx)
        text = row[text_idx].sum().item() / len(text_idx)
        if text == 0:
            continue
        total_image += image
        total_text += text
    return total_image / total_text


def worker(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    sys.path.insert(0, str(ROOT))
    from curate.scoring.attention_probe import pack_responses, probe_attention
    from curate.scoring.cmab import cmab_probe_options, cmab_rho

    device, layers = spec["device"], spec["layers"]
    attn = "eager" if spec["side"] == "released" else "sdpa"
    model = build_model(layers, spec["hidden"], spec["heads"], spec["kv_heads"], attn, spec["dtype"], device)
    prompt = build_prompt(spec["image_tokens"], spec["text_before"], spec["text_after"], device)
    warm = build_prompt(4, 4, 4, device)
    gen_kwargs = dict(do_sample=False, pad_token_id=PAD, eos_token_id=None)
    out: dict[str, Any] = {"prompt_tokens": int(prompt["input_ids"].shape[1])}

    def measure(name: str, fn: Callable[[], Any]) -> Any:
        with PeakMemory(device) as m:
            value = fn()
        out[f"{name}_s"], out[f"{name}_cpu_s"], out[f"{name}_peak_mib"] = m.seconds, m.cpu_seconds, m.peak_mib
        return value

    n = spec["new_tokens"]
    if spec["side"] == "released":
        code_layer = cmab_probe_options("code", layers)["layers"][0]
        model.generate(
            **warm, max_new_tokens=2, output_attentions=True, return_dict_in_generate=True, **gen_kwargs
        )

        def run_released() -> tuple[Any, float]:
            res = model.generate(
                **prompt,
                max_new_tokens=n,
                min_new_tokens=n,
                output_attentions=True,
                return_dict_in_generate=True,
                **gen_kwargs,
            )
            return res, released_rho(res.attentions, res.sequences, code_layer)

        res, rho = measure("released", run_released)
        out["response"] = res.sequences[0, prompt["input_ids"].shape[1] :].tolist()
        out["rho_code"] = rho
        return out

    model.generate(**warm, max_new_tokens=2, **gen_kwargs)
    measure("generate", lambda: model.generate(**prompt, max_new_tokens=n, min_new_tokens=n, **gen_kwargs))
    inputs, lengths = pack_responses(prompt, [spec["response"]], PAD)
    probe_attention(model, pack_responses(warm, [[5, 6]], PAD)[0], [2], layers=[0])
    for variant in ("code", "paper"):
        options = cmab_probe_options(variant, layers)
        result = measure(
            f"probe_{variant}",
            lambda options=options: probe_attention(model, inputs, lengths, chunk=spec["chunk"], **options)[
                0
            ],
        )
        out[f"rho_{variant}"] = cmab_rho(result, variant, num_layers=layers)
    return out


# ----------------------------------------------------------------------------------------------
# Driver


def run_worker(spec: dict[str, Any]) -> dict[str, Any]:
    # A fixed mmap threshold turns off glibc's adaptive one, so every block of 64 KiB or more is mapped
    # on allocation and unmapped on free: freed tensors never linger in the heap to be reused unseen,
    # and the resident-set high-water mark is the peak of live tensors.
    env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker failed ({spec['side']}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_point(base: dict[str, Any], image_tokens: int, layers: int) -> dict[str, Any]:
    spec = {**base, "image_tokens": image_tokens, "layers": layers}
    released = run_worker({**spec, "side": "released"})
    ours = run_worker({**spec, "side": "ours", "response": released["response"]})
    row = {
        "image_tokens": image_tokens,
        "layers": layers,
        "prompt_tokens": released["prompt_tokens"],
        "new_tokens": base["new_tokens"],
    }
    row.update({k: v for k, v in released.items() if k != "response"})
    row.update({k: v for k, v in ours.items() if k != "rho_code"})
    row["rho_code_probe"] = ours["rho_code"]
    row["rho_code_rel_diff"] = abs(ours["rho_code"] - released["rho_code"]) / abs(released["rho_code"])
    row["ours_total_s"] = ours["generate_s"] + ours["probe_code_s"]
    row["ours_total_cpu_s"] = ours["generate_cpu_s"] + ours["probe_code_cpu_s"]
    row["ours_total_peak_mib"] = max(ours["generate_peak_mib"], ours["probe_code_peak_mib"])
    print(
        f"  image {image_tokens:5d} tok, {layers:2d} layers: released {row['released_s']:6.2f} s "
        f"{row['released_peak_mib']:7.0f} MiB | probe(code) {row['probe_code_s']:5.2f} s "
        f"{row['probe_code_peak_mib']:6.0f} MiB | ρ̄ rel diff {row['rho_code_rel_diff']:.1e}",
        flush=True,
    )
    return row


def plot(rows: list[dict[str, Any]], main_layers: int, sweep_image: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = [
        ("released", "released: generate(output_attentions)"),
        ("probe_code", "probe, code variant (1 layer)"),
        ("probe_paper", "probe, paper variant (L-2 layers)"),
        ("ours_total", "HF generate (sdpa) + probe, code"),
    ]
    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    sweeps = [
        (
            sorted((r for r in rows if r["layers"] == main_layers), key=lambda r: r["image_tokens"]),
            "image_tokens",
            f"image tokens ({main_layers} layers)",
        ),
        (
            sorted((r for r in rows if r["image_tokens"] == sweep_image), key=lambda r: r["layers"]),
            "layers",
            f"decoder layers ({sweep_image} image tokens)",
        ),
    ]
    for col, (points, key, label) in enumerate(sweeps):
        xs = [r[key] for r in points]
        for metric, row_axis, unit in (
            ("s", 0, "wall time [s]"),
            ("peak_mib", 1, "peak memory above baseline [MiB]"),
        ):
            ax = axes[row_axis][col]
            for color, (name, legend) in enumerate(series):
                ax.plot(
                    xs, [r[f"{name}_{metric}"] for r in points], marker="o", color=f"C{color}", label=legend
                )
                if metric == "s":  # CPU time, dashed: steadier than wall time on a shared machine
                    ax.plot(
                        xs,
                        [r[f"{name}_cpu_s"] for r in points],
                        ls="--",
                        lw=1,
                        color=f"C{color}",
                        label="(dashed: CPU time)" if color == len(series) - 1 else None,
                    )
            ax.set_xlabel(label)
            ax.set_ylabel(unit)
            ax.set_yscale("log")
            if key == "image_tokens":
                ax.set_xscale("log", base=2)
            ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle("CMAB attention: probe vs generate(output_attentions=True), random Qwen2.5-VL, CPU")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def table(rows: list[dict[str, Any]]) -> str:
    """Wall time (and, in brackets, CPU time: steadier on a shared machine) and peak memory."""
    head = (
        f"{'img tok':>7} {'layers':>6} {'prompt':>6} | {'released s (cpu)':>16} {'MiB':>6} | "
        f"{'probe s (cpu)':>13} {'MiB':>4} {'speed× (cpu)':>12} {'mem×':>6} | {'paper s':>7} {'MiB':>4} | "
        f"{'gen+probe s':>11} {'MiB':>4} {'speed×':>6} | {'ρ̄ diff':>7}"
    )
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["layers"], r["image_tokens"])):
        speed = r["released_s"] / r["probe_code_s"]
        speed_cpu = r["released_cpu_s"] / r["probe_code_cpu_s"]
        memory = r["released_peak_mib"] / max(r["probe_code_peak_mib"], 1)
        lines.append(
            f"{r['image_tokens']:>7} {r['layers']:>6} {r['prompt_tokens']:>6} | "
            f"{r['released_s']:>8.2f} ({r['released_cpu_s']:>5.2f}) {r['released_peak_mib']:>6.0f} | "
            f"{r['probe_code_s']:>5.2f} ({r['probe_code_cpu_s']:>5.2f}) {r['probe_code_peak_mib']:>4.0f} "
            f"{speed:>5.1f} ({speed_cpu:>4.1f}) {memory:>6.0f} | "
            f"{r['probe_paper_s']:>7.2f} {r['probe_paper_peak_mib']:>4.0f} | {r['ours_total_s']:>11.2f} "
            f"{r['ours_total_peak_mib']:>4.0f} {r['released_s'] / r['ours_total_s']:>6.1f} | "
            f"{r['rho_code_rel_diff']:>7.1e}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--image-tokens", type=int, nargs="+", default=[64, 256, 1024, 1600])
    parser.add_argument(
        "--layer-sweep",
        type=int,
        nargs="+",
        default=[4, 12],
        help="extra layer counts measured at --sweep-image tokens",
    )
    parser.add_argument("--layers", type=int, default=28)
    parser.add_argument("--sweep-image", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--text-before", type=int, default=120)
    parser.add_argument("--text-after", type=int, default=60)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out-dir", default=str(ROOT / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="one small point (smoke test)")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.quick:
        args.image_tokens, args.layer_sweep, args.layers, args.sweep_image = [64], [], 8, 64
    base = {
        "hidden": args.hidden,
        "heads": args.heads,
        "kv_heads": args.kv_heads,
        "text_before": args.text_before,
        "text_after": args.text_after,
        "new_tokens": args.new_tokens,
        "chunk": args.chunk,
        "device": args.device,
        "dtype": args.dtype or ("float32" if args.device == "cpu" else "bfloat16"),
        "threads": args.threads,
    }
    points = [(n, args.layers) for n in args.image_tokens] + [(args.sweep_image, L) for L in args.layer_sweep]
    print(
        f"CMAB probe benchmark: {len(points)} points, {args.new_tokens} response tokens, device {args.device}"
    )
    rows = [measure_point(base, n, L) for n, L in points]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (out_dir / f"cmab_probe{suffix}.json").write_text(json.dumps({"config": base, "rows": rows}, indent=1))
    plot(rows, args.layers, args.sweep_image, out_dir / f"cmab_probe{suffix}.png")
    worst = max(r["rho_code_rel_diff"] for r in rows)
    print(f"\nresults: {out_dir / f'cmab_probe{suffix}.json'}, {out_dir / f'cmab_probe{suffix}.png'}")
    print(f"largest ρ̄ difference probe vs released: {worst:.1e} (relative)\n")
    print(table(rows))
    return 0 if worst < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
