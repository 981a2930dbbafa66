"""A replay buffer of env steps sampled as fixed-length windows, for sequence models
(RePo / Dreamer's world models) that learn online.

Step ``i`` holds the observation ``o_i``, the action ``a_{i-1}`` that led to it (zeros on
an episode's first step), the reward received on arriving there (0 on a first step) and
``is_first``. Episodes are stored back to back, so a window may cross into the next
episode; the model resets its state where ``is_first`` is true. When full, the oldest
steps are overwritten and no window crosses the write position.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

FIELDS = ("obs", "action", "reward", "is_first")


class SequenceReplay:
    def __init__(self, capacity: int, obs_shape: Sequence[int], obs_dtype, action_dim: int):
        if capacity < 2:
            raise ValueError(f"a replay buffer needs room for at least 2 steps, got capacity {capacity}")
        self.capacity = capacity
        self.obs = np.zeros((capacity, *obs_shape), dtype=obs_dtype)
        self.action = np.zeros((capacity, action_dim), dtype=np.float32)
        self.reward = np.zeros(capacity, dtype=np.float32)
        self.is_first = np.zeros(capacity, dtype=bool)
        self.position = 0  # next write
        self.full = False

    def __len__(self) -> int:
        return self.capacity if self.full else self.position

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, is_first: bool) -> None:
        i = self.position
        self.obs[i], self.action[i], self.reward[i], self.is_first[i] = obs, action, reward, is_first
        self.position = (i + 1) % self.capacity
        self.full = self.full or self.position == 0

    def sample(self, batch_size: int, length: int, rng: np.random.Generator,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:  # fmt: skip
        """``batch_size`` windows of ``length`` consecutive steps, as (length, batch, ...) tensors:
        the fields, and ``has_reward`` (false on episodes' first steps)."""
        if len(self) < length:
            raise ValueError(f"the replay buffer holds {len(self)} steps, fewer than one window of {length}")
        if self.full:  # windows start after the write position, so none crosses it
            starts = (self.position + rng.integers(0, self.capacity - length + 1, batch_size)) % self.capacity
        else:
            starts = rng.integers(0, self.position - length + 1, batch_size)
        index = (starts[None, :] + np.arange(length)[:, None]) % self.capacity
        batch = {name: torch.as_tensor(getattr(self, name)[index], device=device) for name in FIELDS}
        batch["has_reward"] = ~batch["is_first"]  # an episode's first step carries no reward
        batch["is_first"][0] = True  # a window starts with no memory of what came before it
        return batch

    # --- checkpoints ---------------------------------------------------------------------
    def arrays(self) -> dict[str, np.ndarray]:
        """The filled part, in storage order, with the write position."""
        filled = len(self)
        return {**{name: getattr(self, name)[:filled] for name in FIELDS},
                "position": np.array([self.position, int(self.full)])}  # fmt: skip

    def load_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        for name in FIELDS:
            stored, mine = arrays[name], getattr(self, name)
            if len(stored) > self.capacity or stored.shape[1:] != mine.shape[1:]:
                raise ValueError(f"replay {name} of shape {stored.shape} does not fit this buffer {mine.shape}")
            mine[: len(stored)] = stored
        self.position, self.full = int(arrays["position"][0]), bool(arrays["position"][1])
