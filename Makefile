# The two commands of the quick start. Each prepares its environment first (idempotent: the first
# run installs, later runs reuse .venv).
#   make demo   the main job on the embedded default: toy corpus + tiny model, offline, on CPU
#   make test   the test suite (CPU, offline)
SHELL := /bin/bash
PY := .venv/bin/python

.PHONY: demo test env env-vllm
demo: env
	$(PY) -m launch.demo $(ARGS)

test: env
	$(PY) -m pytest $(PYTEST_ARGS)

env:
	@bash launch/bootstrap.sh main

env-vllm:
	@bash launch/bootstrap.sh vllm
