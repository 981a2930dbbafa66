"""What every agent is: a torch module with a config, an update step and an act method."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn


class Agent(nn.Module):
    """Base class of every algorithm.

    Subclasses set ``Config`` (a dataclass) and ``name``, build their networks and
    optimizers in ``__init__``, and implement :meth:`update` and :meth:`policy`.
    ``state_dict()`` carries the networks *and* the optimizers (and any schedule), so a
    checkpoint resumes training exactly.
    """

    Config: ClassVar[type]
    name: ClassVar[str]
    online: ClassVar[bool] = False  # learns from its own env steps (embodied.run.online), not a dataset

    def __init__(self, config: Any, observation_space: gym.Space, action_space: gym.Space, device: str | torch.device):
        super().__init__()
        if not isinstance(observation_space, gym.spaces.Box) or not isinstance(action_space, gym.spaces.Box):
            raise TypeError(
                f"{type(self).__name__} needs flat Box observations and actions, got "
                f"{observation_space} and {action_space}"
            )
        self.config = config
        self.observation_space = observation_space
        self.action_space = action_space
        self.obs_dim = int(np.prod(observation_space.shape))
        self.action_dim = int(np.prod(action_space.shape))
        self.device = torch.device(device)

    # --- training ------------------------------------------------------------------------
    def prepare(self, dataset, total_steps: int) -> None:
        """Fit what depends on the data (normalisers, reward scale) and on the run's length
        (learning-rate schedules) before the first update."""

    def sample(self, dataset, batch_size: int, generator: torch.Generator):
        """The batch this agent learns from (default: one-step transitions with actions)."""
        return dataset.sample(batch_size, generator=generator)

    def compile(self, mode: str = "default") -> None:
        """Compile the hot path with ``torch.compile`` in ``mode`` (``train.compile``,
        ``train.compile_mode``); default: nothing."""

    def update(self, batch, step: int) -> dict[str, torch.Tensor]:
        """One gradient step; returns detached scalar tensors (logged without a sync each step)."""
        raise NotImplementedError

    # --- acting --------------------------------------------------------------------------
    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Deterministic actions for a batch of observations (tensors on the device)."""
        raise NotImplementedError

    def begin_episode(self) -> None:
        """Called before each episode's first :meth:`act`: agents that carry state across
        steps (recurrent world models) forget it here. Default: nothing."""

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Action(s) for one observation or a batch, as float32 NumPy within the action space."""
        obs_tensor = torch.as_tensor(np.asarray(obs, dtype=np.float32), device=self.device)
        single = obs_tensor.dim() == 1
        if single:
            obs_tensor = obs_tensor[None]
        was_training = self.training
        self.eval()
        action = self.policy(obs_tensor).float().cpu().numpy()
        self.train(was_training)
        action = np.clip(action, self.action_space.low, self.action_space.high)
        return action[0] if single else action

    # --- checkpoints written by older versions --------------------------------------------
    @classmethod
    def upgrade_config(cls, algo: dict, weights: dict[str, torch.Tensor]) -> dict:
        """A checkpoint's ``algo`` config with the fields added to this agent's config since it
        was written set to what its saved ``weights`` (the module state) are, so a later version
        rebuilds the networks the checkpoint holds; by default unchanged."""
        return algo

    # --- optimizers in the state dict ------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer | Any]:
        """Optimizers and schedulers to checkpoint with the weights (by name)."""
        return {}

    def state_dict(self, *args, **kwargs):
        state = super().state_dict(*args, **kwargs)
        if args or kwargs:  # a parent module collecting sub-states: weights only
            return state
        return {"modules": state, "optimizers": {k: o.state_dict() for k, o in self.optimizers().items()}}

    def load_state_dict(self, state, strict: bool = True):
        if "modules" not in state:
            return super().load_state_dict(state, strict)
        result = super().load_state_dict(state["modules"], strict)
        for key, optimizer in self.optimizers().items():
            optimizer.load_state_dict(state["optimizers"][key])
        return result
