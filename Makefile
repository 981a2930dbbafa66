# Two entry points (see README): `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export MUJOCO_GL ?= egl

.PHONY: setup setup-robomimic setup-sheeprl demo test throughput

$(BIN)/embodied: pyproject.toml
	@# Offscreen MuJoCo rendering needs EGL (Mesa's software renderer on CPU machines).
	@ldconfig -p | grep -q libEGL.so.1 || (apt-get update -qq && apt-get install -y -qq libegl1 libgl1-mesa-dri)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU build of torch (a plain `torch` would pull a multi-GB CUDA build).
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

setup: $(BIN)/embodied

# robomimic tasks: robosuite 1.5.2 without its declared mink/qpsolvers (whole-body IK
# only; mink pins numpy<2). Its real runtime needs are the `robomimic` extra.
$(VENV)/.robomimic: $(BIN)/embodied
	$(BIN)/pip install -q -e ".[dev,robomimic]"
	$(BIN)/pip install -q --no-deps robosuite==1.5.2
	touch $@

setup-robomimic: $(VENV)/.robomimic

# SheepRL's DreamerV1, only for results/repo_speed.md: its own venv (it brings Lightning and
# Hydra), the same CPU torch first.
.venv-sheeprl/bin/python:
	$(PYTHON) -m venv .venv-sheeprl
	.venv-sheeprl/bin/pip install -q --upgrade pip
	.venv-sheeprl/bin/python -c "import torch" 2>/dev/null || .venv-sheeprl/bin/pip install -q torch==2.13.0
	.venv-sheeprl/bin/pip install -q sheeprl==0.8.4

setup-sheeprl: .venv-sheeprl/bin/python

demo: setup
	$(BIN)/embodied rollout metaworld/push-v3 --policy scripted --episodes 3 --seed 0 --video runs/demo/push-v3.mp4

# The tests cover the robomimic suite too, so they install its extra.
test: setup-robomimic
	$(BIN)/python -m pytest

throughput: setup
	$(BIN)/python -m embodied.bench.env_throughput --rounds 20 --out results/env_throughput.md
