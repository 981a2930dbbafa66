"""Run a policy in an env for whole episodes and report return and success."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

import gymnasium as gym
import numpy as np

Policy = Callable[[Any], np.ndarray]


@dataclass
class RolloutResult:
    """Per-episode returns, lengths and successes (``None`` where the env has no success),
    and tasks where a multi-task env names them in its reset info (``info["task"]``)."""

    returns: list[float] = field(default_factory=list)
    lengths: list[int] = field(default_factory=list)
    successes: list[bool] = field(default_factory=list)
    tasks: list[str] = field(default_factory=list)
    has_success: bool = False
    seconds: float = 0.0
    frames: list[np.ndarray] = field(default_factory=list)

    @property
    def success_rate(self) -> float | None:
        return float(np.mean(self.successes)) if self.has_success and self.successes else None

    def success_by_task(self) -> dict[str, float]:
        """Success rate of each task, in a multi-task env (empty otherwise)."""
        by_task: dict[str, list[bool]] = {}
        if self.has_success:
            for task, success in zip(self.tasks, self.successes):
                by_task.setdefault(task, []).append(success)
        return {task: float(np.mean(successes)) for task, successes in by_task.items()}

    @property
    def mean_return(self) -> float:
        return float(np.mean(self.returns)) if self.returns else float("nan")

    def summary(self) -> dict[str, float]:
        steps = sum(self.lengths)
        out = {
            "episodes": len(self.returns),
            "return_mean": self.mean_return,
            "return_std": float(np.std(self.returns)) if self.returns else float("nan"),
            "length_mean": float(np.mean(self.lengths)) if self.lengths else float("nan"),
            "steps_per_second": steps / self.seconds if self.seconds > 0 else float("nan"),
        }
        if self.has_success:
            out["success_rate"] = self.success_rate
        if self.tasks and self.has_success:
            out["success_rate_by_task"] = self.success_by_task()
        return out


def random_policy(env: gym.Env) -> Policy:
    """Uniform random actions from the env's (seeded) action space."""
    return lambda _obs: env.action_space.sample()


def rollout(
    env: gym.Env,
    policy: Policy,
    episodes: int,
    seed: int | None = None,
    video_episodes: int = 0,
    video_every: int = 1,
    begin_episode: Callable[[], None] | None = None,
) -> RolloutResult:
    """Run ``episodes`` episodes; the first is reset with ``seed``, the rest continue its stream.

    An episode succeeded if ``info["success"]`` was ever true. ``begin_episode()`` (an
    agent's, for policies with memory) is called after each reset. Frames from
    ``env.render()`` are kept for the first ``video_episodes`` episodes, one every
    ``video_every`` steps (software rendering is slow; a video need not show all).
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    result = RolloutResult()
    if seed is not None:
        env.action_space.seed(seed)
    start = time.perf_counter()
    for episode in range(episodes):
        obs, info = env.reset(seed=seed if episode == 0 else None)
        if begin_episode is not None:
            begin_episode()
        if "task" in info:
            result.tasks.append(str(info["task"]))
        record = episode < video_episodes
        if record:
            result.frames.append(env.render())
        total, length, success, done = 0.0, 0, False, False
        while not done:
            obs, reward, terminated, truncated, info = env.step(policy(obs))
            total += float(reward)
            length += 1
            if "success" in info:
                result.has_success = True
                success = success or bool(info["success"])
            done = terminated or truncated
            if record and (length % video_every == 0 or done):
                result.frames.append(env.render())
        result.returns.append(total)
        result.lengths.append(length)
        result.successes.append(success)
    result.seconds = time.perf_counter() - start
    return result
