"""Checkpoints that carry their config: ``embodied.load(path)`` rebuilds the agent with no user code.

A checkpoint is one ``torch.save`` file, written to a temporary name and renamed, so a
run killed mid-write keeps its previous checkpoint intact.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = "embodied-checkpoint-v1"


def save(path: str | os.PathLike, agent, run_config: dict, step: int, extra: dict | None = None) -> Path:
    from minari.serialization import serialize_space

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "algo": agent.name,
        "config": run_config,
        "observation_space": serialize_space(agent.observation_space),
        "action_space": serialize_space(agent.action_space),
        "step": step,
        "agent": agent.state_dict(),
        **(extra or {}),
    }
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    return path


def read(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():  # a run directory: its latest checkpoint
        path = latest(path)
    if not path.exists():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # truncated or not a torch file
        raise ValueError(f"{path} is not a readable checkpoint: {error}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not an embodied checkpoint (format {FORMAT})")
    payload["path"] = str(path)
    return payload


def latest(run_dir: str | os.PathLike) -> Path:
    checkpoints = sorted(Path(run_dir, "checkpoints").glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoints in {Path(run_dir, 'checkpoints')}")
    return checkpoints[-1]


def upgraded_config(raw: dict, payload: dict) -> dict:
    """``raw`` (a run's config as saved with ``payload``, a checkpoint read by :func:`read`) with the
    fields its agent's config gained since the checkpoint was written filled in from its weights
    (``Agent.upgrade_config``), so the networks are rebuilt as they were saved."""
    from embodied.algos import agent_class

    cls = agent_class(payload["algo"])
    state = payload["agent"]
    weights = state["modules"] if isinstance(state, dict) and "modules" in state else state
    algo = raw.get("algo")
    if not isinstance(algo, dict):
        return raw
    return {**raw, "algo": cls.upgrade_config(dict(algo), weights)}


def load_weights(agent, payload: dict) -> None:
    """Load a checkpoint's weights and optimizer states into ``agent``; a checkpoint whose networks
    are not the ones this version builds from its config is a clear error."""
    try:
        agent.load_state_dict(payload["agent"])
    except RuntimeError as error:  # missing / unexpected keys, shape mismatches
        raise ValueError(
            f"{payload.get('path', 'the checkpoint')} holds {payload['algo']} networks other than the ones this "
            f"version of embodied builds from its config (written by an older version whose networks changed?): "
            f"{str(error).strip()}"
        ) from None


def load(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """The agent saved at ``path`` (a checkpoint file or a run directory), ready to act on
    ``device`` (``"auto"``: CUDA when present)."""
    from minari.serialization import deserialize_space

    from embodied.algos import agent_class
    from embodied.data.dataset import resolve_device
    from embodied.run.config import parse

    device = resolve_device(device)  # "auto", or a clear error for a device this machine lacks
    payload = read(path)
    config = parse(upgraded_config(payload["config"], payload))
    agent = agent_class(payload["algo"])(
        config.algo,
        deserialize_space(payload["observation_space"]),
        deserialize_space(payload["action_space"]),
        device,
    )
    load_weights(agent, payload)
    agent.to(device)
    agent.checkpoint_step = payload["step"]
    agent.run_config = config
    return agent


def rng_state(generator: torch.Generator) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "sampler": generator.get_state(),
    }


def restore_rng(state: dict, generator: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["sampler"])
