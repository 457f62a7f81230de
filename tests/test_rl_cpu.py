"""Unit tests of rl.cpu, the pieces that let verl 0.9.1's trainer run on CPU.

Each override is tested against the verl (or torch) code it works around: the unpatched behaviour is
shown to fail where the override succeeds. The "hf" rollout server is checked against an independent
teacher-forced forward pass of the same model. The end-to-end GRPO run is checked in tests/test_demo.py
(the demo runs verl's trainer).
"""

from __future__ import annotations

import base64
import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from PIL import Image

import rl.cpu
from rl.cpu import PINNED_VERSIONS, check_versions, cpu_env, cpu_overrides

REPO = Path(__file__).resolve().parents[1]


# ---- version pin ----------------------------------------------------------------------------------


def test_installed_versions_are_the_pinned_ones():
    check_versions()  # the environment bootstrap builds is the one rl.cpu was written for


def test_version_mismatch_names_the_package_and_both_versions():
    installed = dict(PINNED_VERSIONS, verl="0.9.2")
    with pytest.raises(RuntimeError, match=r"verl==0\.9\.1.*found verl==0\.9\.2"):
        check_versions(installed)


def test_plugin_refuses_to_load_against_another_verl(tmp_path):
    """The check runs where it matters: inside `import verl` of every process of a CPU run."""
    code = textwrap.dedent("""
        import importlib.metadata as md
        real = md.version
        md.version = lambda name: "0.10.0" if name == "verl" else real(name)
        import verl
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **cpu_env()},
        cwd=tmp_path,
    )
    assert proc.returncode != 0
    assert "supports exactly verl==0.9.1; found verl==0.10.0" in proc.stderr


# ---- the settings a CPU run gets ------------------------------------------------------------------


def test_cpu_env_selects_platform_plugin_and_engine():
    env = cpu_env()
    assert env["VERL_USE_EXTERNAL_MODULES"] == rl.cpu.PLUGIN_MODULE
    assert env["VERL_PLATFORM"] == rl.cpu.PLATFORM_NAME
    assert env["VERL_ENGINE_DEVICE"] == "cuda"


def test_cpu_overrides_declare_ray_resources_only_for_a_local_cluster():
    local, joined = cpu_overrides(local_cluster=True), cpu_overrides(local_cluster=False)
    assert local["+ray_kwargs.ray_init.num_gpus"] == "${trainer.n_gpus_per_node}"
    assert local["ray_kwargs.ray_init.num_cpus"] > 2
    # ray.init refuses num_cpus/num_gpus when it joins an existing cluster.
    assert not any(k.lstrip("+").startswith("ray_kwargs.") for k in joined)
    assert joined["actor_rollout_ref.rollout.name"] == rl.cpu.ROLLOUT_NAME


# ---- platform ---------------------------------------------------------------------------------------


def test_cpu_platform_is_registered_and_answers_for_cpu():
    from verl.plugin.platform import PlatformRegistry

    import rl.cpu.plugin  # noqa: F401

    platform = PlatformRegistry.get("cpu")()
    assert platform.device_name == "cpu"
    assert platform.communication_backend_name() == "gloo"
    assert platform.ray_resource_options(1) == {"num_gpus": 1}
    # never picked by auto-detection: only VERL_PLATFORM=cpu selects it
    assert platform.is_platform_available(use_smi_check=True) is False
    assert torch.zeros(2).to(platform.current_device()).device.type == "cpu"


def test_device_module_memory_and_rng_calls():
    from rl.cpu import torch_cpu

    free, total = torch_cpu.mem_get_info()
    assert 0 < free <= total
    assert (
        torch_cpu.memory_allocated() > 0 and torch_cpu.max_memory_allocated() >= torch_cpu.memory_allocated()
    )
    state = torch_cpu.get_rng_state()
    first = torch.rand(3)
    torch_cpu.set_rng_state(state)
    assert torch.equal(torch.rand(3), first)
    torch_cpu.empty_cache()
    torch_cpu.synchronize()


# ---- overrides: process group and FSDP2 offload -------------------------------------------------------

_CPU_PROCESS_CHECK = textwrap.dedent("""
    import os, sys, torch
    os.environ.update(RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1])
    from verl.utils.device import get_device_name, get_nccl_backend, get_torch_device
    from verl.workers.engine.base import EngineRegistry
    print("device:", get_device_name(), get_nccl_backend(), get_torch_device().__name__,
          EngineRegistry.get_engine_cls("language_model", "fsdp2").__name__)
    import verl.utils.distributed as d
    import verl.utils.fsdp_utils as f
    from verl.utils.distributed import initialize_global_process_group_ray
    import rl.cpu.overrides as o
    assert d.initialize_global_process_group_ray is o.initialize_global_process_group_ray
    assert f.CPUOffloadPolicy is o.UnpinnedCPUOffloadPolicy

    # verl's own backend string on CPU
    try:
        o._init_process_group_ray(timeout_second=60)
    except ValueError as err:
        print("verl:", err)
    initialize_global_process_group_ray(timeout_second=60)
    t = torch.ones(3)
    torch.distributed.all_reduce(t)
    print("all_reduce:", t.tolist())

    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard
    mesh = init_device_mesh("cpu", (1,))
    try:
        fully_shard(torch.nn.Linear(4, 4), mesh=mesh, offload_policy=CPUOffloadPolicy(pin_memory=True))
        print("pinned: ok")
    except RuntimeError as err:
        print("pinned:", str(err).splitlines()[0])
    # what verl's FSDP engine builds for the reference model, with the override in place
    policy = f.CPUOffloadPolicy(pin_memory=True)
    model = fully_shard(torch.nn.Linear(4, 4), mesh=mesh, offload_policy=policy)
    print("unpinned:", policy.pin_memory, tuple(model(torch.ones(2, 4)).shape))
    torch.distributed.destroy_process_group()
""")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_cpu_process_gets_the_platform_process_group_and_fsdp2_offload(tmp_path):
    """A fresh process with the CPU run's environment: what verl's workers see and do."""
    proc = subprocess.run(
        [sys.executable, "-c", _CPU_PROCESS_CHECK, str(_free_port())],
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, **cpu_env()},
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "device: cpu gloo rl.cpu.torch_cpu FSDPEngineWithLMHead" in out
    assert "verl: Duplicate device type cpu" in out  # what verl alone does on CPU
    assert "all_reduce: [1.0, 1.0, 1.0]" in out
    assert "pinned: ok" not in out  # pinning needs an accelerator
    assert "unpinned: False (2, 4)" in out


def test_overrides_are_not_applied_without_the_cpu_platform(tmp_path):
    code = textwrap.dedent("""
        import verl.utils.distributed as d
        import rl.cpu.overrides as o
        print(d.initialize_global_process_group_ray is o.initialize_global_process_group_ray)
    """)
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "False"


def test_position_ids_fix_reaches_verl_workers_on_any_platform(tmp_path):
    """No CPU platform selected (as on a GPU node): the module verl loads still replaces the function
    that verl's FSDP engine workers and engine base imported by name."""
    code = textwrap.dedent("""
        import verl
        import verl.workers.engine.base as base
        import verl.workers.engine_workers as workers
        import rl.verl_fixes as fixes
        print(base.maybe_fix_3d_position_ids is fixes.maybe_fix_3d_position_ids,
              workers.maybe_fix_3d_position_ids is fixes.maybe_fix_3d_position_ids)
    """)
    env = {k: v for k, v in os.environ.items() if k != "VERL_PLATFORM"}
    env["VERL_USE_EXTERNAL_MODULES"] = "rl.verl_fixes"
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=180, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "True True"


# ---- rl.verl_fixes (every platform): mrope position ids from TransferQueue -------------------------------------------------


def _packed_like_transfer_queue(lengths: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(4, seq) position ids per sample, packed the way TransferQueue packs a field."""
    rows = [torch.arange(4 * n).view(4, n) + 1000 * i for i, n in enumerate(lengths)]
    return torch.nested.as_nested_tensor(rows, layout=torch.jagged), rows


@pytest.mark.parametrize("lengths", [[5, 5, 5], [5, 7, 6], [9]])
def test_position_ids_survive_the_fix_and_verl_minibatch_selection(lengths):
    from tensordict import TensorDict
    from verl.utils.tensordict_utils import index_select_tensor_dict

    from rl.verl_fixes import maybe_fix_3d_position_ids

    packed, rows = _packed_like_transfer_queue(lengths)
    data = TensorDict({"position_ids": packed}, batch_size=[len(rows)])
    maybe_fix_3d_position_ids(data)
    assert [torch.equal(a, b) for a, b in zip(data["position_ids"].unbind(), rows, strict=True)] == [
        True
    ] * len(rows)
    last = index_select_tensor_dict(data, torch.tensor([len(rows) - 1]))  # how verl cuts mini-batches
    assert torch.equal(last["position_ids"].unbind()[0], rows[-1])


def test_verl_own_fix_breaks_equal_length_batches():
    """The bug the override fixes: verl forces ragged dim 2 onto a tensor packed ragged on dim 1."""
    from tensordict import TensorDict

    from rl.verl_fixes import _verl_fix_3d_position_ids as verl_fix

    packed, _ = _packed_like_transfer_queue([5, 5, 5])
    data = TensorDict({"position_ids": packed}, batch_size=[3])
    verl_fix(data)
    with pytest.raises(RuntimeError):  # "split_with_sizes expects split_sizes to sum exactly to 5" in a run
        data["position_ids"].unbind()


# ---- dataset without torchvision ---------------------------------------------------------------------


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_load_image_sources_and_sizes(tmp_path):
    from rl.cpu.dataset import load_image

    rgba = Image.new("RGBA", (60, 40), (255, 0, 0, 0))  # fully transparent red: white once flattened
    path = tmp_path / "a.png"
    rgba.save(path)
    data_url = "data:image/png;base64," + base64.b64encode(_png(rgba)).decode()
    for source in (rgba, str(path), f"file://{path}", data_url):
        image = load_image({"type": "image", "image": source})
        assert image.mode == "RGB" and image.size == (60, 40)
        assert image.getpixel((0, 0)) == (255, 255, 255)
    # sizes asked for by the message land on the 28-px grid of Qwen2.5-VL's merged patches
    assert load_image({"image": rgba, "resized_height": 50, "resized_width": 90}).size == (84, 56)
    capped = load_image({"image": Image.new("RGB", (280, 280)), "max_pixels": 112 * 112})
    assert capped.size == (112, 112)
    with pytest.raises(ValueError, match="URLs"):
        load_image({"image": "https://example.com/a.png"})


def test_dataset_extracts_images_for_the_processor(tiny_model_dir, tmp_path):
    """verl's own pipeline (parquet -> RLHFDataset row -> agent loop extraction -> processor)."""
    import asyncio

    import pandas as pd
    from omegaconf import OmegaConf
    from verl.utils.tokenizer.tokenizer import hf_processor, hf_tokenizer

    from rl.cpu.dataset import TorchvisionFreeRLHFDataset

    images = [Image.new("RGB", (112, 112), (200, 30, 30)), Image.new("RGB", (56, 84), (30, 30, 200))]
    pd.DataFrame(
        [
            {
                "data_source": "toy/counting",
                "prompt": [{"role": "user", "content": "<image>and<image>How many?"}],
                "images": [{"bytes": _png(im), "path": None} for im in images],
                "ability": "counting",
                "reward_model": {"style": "rule", "ground_truth": "1"},
                "extra_info": {"index": 0},
            }
        ]
    ).to_parquet(tmp_path / "d.parquet")
    processor = hf_processor(str(tiny_model_dir), trust_remote_code=True)
    config = OmegaConf.create({"max_prompt_length": 512, "image_key": "images", "trust_remote_code": True})
    dataset = TorchvisionFreeRLHFDataset(
        str(tmp_path / "d.parquet"), hf_tokenizer(str(tiny_model_dir)), config, processor
    )
    messages = dataset[0]["raw_prompt"]
    got, videos, _ = asyncio.run(
        dataset.process_multi_modal_info(messages, image_patch_size=14, config=config)
    )
    assert videos is None
    assert [im.size for im in got] == [(112, 112), (56, 84)]
    assert [im.getpixel((5, 5)) for im in got] == [(200, 30, 30), (30, 30, 200)]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    ids = processor(text=[text], images=got, return_tensors="pt")["input_ids"]
    image_token = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((ids == image_token).sum()) == 16 + 6  # 112x112 -> 4x4 tokens, 56x84 -> 2x3 tokens
    with pytest.raises(NotImplementedError, match="video"):
        dataset._process_multi_modal_info(
            [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}], 14, config
        )


# ---- the hf rollout server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A randomly initialised toy Qwen2.5-VL saved the way the project saves its toy model."""
    from curate.toy.model import ToyArchitecture, build_model, save_toy_model

    model, processor = build_model(ToyArchitecture())
    return save_toy_model(model, processor, tmp_path_factory.mktemp("tiny_qwen25vl"))


def _server(model_dir: Path, **rollout):
    from omegaconf import OmegaConf

    from rl.cpu.hf_rollout import HFRolloutServer

    config = OmegaConf.create(
        {
            "name": "hf",
            "prompt_length": 256,
            "response_length": 12,
            "dtype": "float32",
            "load_format": "auto",
            "calculate_log_probs": True,
            **rollout,
        }
    )
    model = OmegaConf.create(
        {
            "path": str(model_dir),
            "trust_remote_code": True,
            "override_config": {"attn_implementation": "sdpa"},
        }
    )
    return HFRolloutServer(config=config, model_config=model, replica_rank=0)


def _prompt(server) -> tuple[list[int], list[Image.Image]]:
    processor = server.model_config.processor
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "How many?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    images = [Image.new("RGB", (112, 112), (220, 40, 40))]
    return processor(text=[text], images=images, return_tensors="pt")["input_ids"][0].tolist(), images


def _teacher_forced_log_probs(server, prompt_ids, images, response_ids, temperature) -> torch.Tensor:
    """Log-probs of the response under one full forward pass, as the actor computes them."""
    processor = server.model_config.processor
    ids = torch.tensor([prompt_ids + response_ids])
    pixels = processor.image_processor(images=images, return_tensors="pt")
    mm_types = (ids == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")).long()
    with torch.no_grad():
        logits = (
            server.model(
                input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=mm_types, **pixels
            )
            .logits[0, len(prompt_ids) - 1 : -1]
            .float()
        )
    log_probs = torch.log_softmax(logits / temperature, dim=-1)
    return log_probs.gather(-1, torch.tensor(response_ids)[:, None])[:, 0]


def test_server_samples_with_log_probs_of_the_model(tiny_model_dir):
    import asyncio

    server = _server(tiny_model_dir)
    prompt_ids, images = _prompt(server)
    out = asyncio.run(
        server.generate(
            prompt_ids=prompt_ids,
            request_id="r",
            sampling_params={"temperature": 0.7, "top_p": 1.0, "top_k": -1, "logprobs": True},
            image_data=images,
        )
    )
    assert 1 <= len(out.token_ids) <= 12 and len(out.log_probs) == len(out.token_ids)
    reference = _teacher_forced_log_probs(server, prompt_ids, images, out.token_ids, temperature=0.7)
    torch.testing.assert_close(torch.tensor(out.log_probs), reference, atol=1e-4, rtol=0)
    no_log_probs = asyncio.run(
        server.generate(
            prompt_ids=prompt_ids,
            request_id="r2",
            image_data=images,
            sampling_params={"temperature": 1.0, "logprobs": False},
        )
    )
    assert no_log_probs.log_probs is None


def test_server_greedy_is_the_argmax_path(tiny_model_dir):
    import asyncio

    server = _server(tiny_model_dir)
    prompt_ids, images = _prompt(server)
    params = {"temperature": 0, "top_p": 1.0, "top_k": -1, "logprobs": True, "max_tokens": 6}
    first = asyncio.run(
        server.generate(
            prompt_ids=prompt_ids, sampling_params=dict(params), request_id="a", image_data=images
        )
    )
    again = asyncio.run(
        server.generate(
            prompt_ids=prompt_ids, sampling_params=dict(params), request_id="b", image_data=images
        )
    )
    assert first.token_ids == again.token_ids and len(first.token_ids) <= 6
    reference = _teacher_forced_log_probs(server, prompt_ids, images, first.token_ids, temperature=1.0)
    torch.testing.assert_close(torch.tensor(first.log_probs), reference, atol=1e-4, rtol=0)


def test_a_group_in_flight_is_one_batch_and_each_answer_its_own(tiny_model_dir):
    """verl sends a GRPO group's n requests at once: one generate call serves them; every response is
    cut at its own end and carries its own log-probs; another prompt in flight is not mixed in."""
    import asyncio

    server = _server(tiny_model_dir)
    prompt_ids, images = _prompt(server)
    other_images = [Image.new("RGB", (112, 112), (40, 40, 220))]  # same token ids, other pixels
    # A random model rarely samples its one EOS: with a third of the vocabulary ending a response,
    # rows of one batch end at different lengths.
    server.eos_token_ids = list(range(0, server.model.config.get_text_config().vocab_size, 3))
    batch_sizes = []
    generate = server.model.generate

    def counted(**inputs):
        batch_sizes.append(inputs["input_ids"].shape[0])
        return generate(**inputs)

    server.model.generate = counted
    params = {"temperature": 1.0, "top_p": 1.0, "top_k": -1, "logprobs": True}

    async def group():
        calls = [
            server.generate(prompt_ids=prompt_ids, sampling_params=dict(params), request_id=f"r{i}",
                            image_data=images)
            for i in range(6)
        ]
        calls += [
            server.generate(prompt_ids=prompt_ids, sampling_params=dict(params), request_id=f"o{i}",
                            image_data=other_images)
            for i in range(2)
        ]
        return await asyncio.gather(*calls)

    outputs = asyncio.run(group())
    assert sorted(batch_sizes) == [2, 6]  # every request in flight joins its prompt's batch
    stops = set(server.eos_token_ids)
    lengths = set()
    for i, out in enumerate(outputs):
        ids = out.token_ids
        assert 1 <= len(ids) <= 12 and not stops & set(ids[:-1]), ids  # nothing after an end
        assert ids[-1] in stops or len(ids) == 12
        lengths.add(len(ids))
        reference = _teacher_forced_log_probs(
            server, prompt_ids, images if i < 6 else other_images, ids, temperature=1.0
        )
        torch.testing.assert_close(torch.tensor(out.log_probs), reference, atol=1e-4, rtol=0)
    assert len(lengths) > 1, "every row had the same length: trimming was not exercised"

    async def one_cancelled():
        calls = [asyncio.ensure_future(server.generate(prompt_ids=prompt_ids, sampling_params=dict(params),
                                                       request_id=f"c{i}", image_data=images))
                 for i in range(3)]
        await asyncio.sleep(0)  # all three have joined the batch
        calls[0].cancel()
        return await asyncio.wait_for(asyncio.gather(*calls[1:]), timeout=60)

    batch_sizes.clear()
    answered = asyncio.run(one_cancelled())
    assert batch_sizes == [3] and all(out.token_ids for out in answered)  # the others keep their batch


def test_dummy_weights_until_synced(tiny_model_dir):
    """load_format=dummy (verl's default) serves random weights until the actor's arrive."""
    import asyncio

    from transformers import AutoModelForImageTextToText

    server = _server(tiny_model_dir, load_format="dummy")
    # The actor sends its module's state-dict names (transformers renames checkpoint keys on load).
    actor = AutoModelForImageTextToText.from_pretrained(tiny_model_dir).state_dict()
    state = server.model.state_dict()
    name = next(k for k in actor if k.endswith("q_proj.weight"))
    assert not torch.equal(state[name], actor[name])
    asyncio.run(server.load_weights(list(actor.items())))
    assert all(torch.equal(state[k], v) for k, v in actor.items())
    with pytest.raises(KeyError, match="not.a.weight"):
        asyncio.run(server.load_weights([("not.a.weight", torch.zeros(1))]))


def test_weight_buckets_keep_order_and_size():
    import asyncio

    from rl.cpu.hf_rollout import _buckets

    weights = [(f"w{i}", torch.zeros(256)) for i in range(5)]  # 1 KiB each

    async def collect(limit):
        return [[name for name, _ in bucket] async for bucket in _buckets(iter(weights), limit)]

    assert asyncio.run(collect(2048)) == [["w0", "w1"], ["w2", "w3"], ["w4"]]
    assert asyncio.run(collect(1 << 20)) == [["w0", "w1", "w2", "w3", "w4"]]
