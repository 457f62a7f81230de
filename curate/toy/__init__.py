"""The offline toy world: a synthetic multimodal corpus and a tiny Qwen2.5-VL trained on it on a CPU.

- ``generate_corpus(num_samples, seed, tasks)`` → the demo corpus in the canonical schema.
- ``toy_model_path(cache_dir)`` → the trained toy model's directory (trained once per machine, cached).

Nothing here needs a network, a GPU or torchvision.
"""

from curate.toy.cache import toy_model_path
from curate.toy.corpus import TASKS, generate_corpus

__all__ = ["TASKS", "generate_corpus", "toy_model_path"]
