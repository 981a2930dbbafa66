"""Replace an env's reward with one computed by a reward program (Text2Reward).

    env = embodied.make("metaworld/push-v3", reward_code="envs/text2reward/library/metaworld/push-v3.py")
    env = embodied.make("metaworld/push-v3", reward_code=SOURCE, reward_code_options={"fallback": -1.0})

:class:`RewardCode` sits right on the bare simulator env (before action repeat, pixels
and frame stacking, so action repeat sums program rewards and the program always reads
the simulator's own state). After every step it reads the state the env's description
names (:mod:`embodied.rewards.text2reward.state`), calls the program's
``compute_dense_reward(self, action, obs)`` in its sandbox process
(:mod:`embodied.rewards.text2reward.sandbox`), and returns that as the reward.

The env's own reward stays in ``info["env_reward"]``; ``success`` and termination are
untouched. The program's reward is used alone, with no success bonus added: that is how
the paper trained (the authors' ``run_metaworld/sac.py`` sets the step reward to the
program's value and nothing else).

A failing call — an exception, NaN/inf, a non-number, a timeout, a crashed sandbox —
never stops training: the step gets the ``fallback`` reward, ``info["reward_code_errors"]``
counts the failures so far, and the first failure is logged and warned about with the
program's line (``on_error="raise"`` raises instead; ``embodied reward check`` uses that).
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

logger = logging.getLogger("embodied.reward_code")

#: ``reward_code_options`` keys and their defaults.
REWARD_CODE_DEFAULTS: dict[str, Any] = {
    "fallback": 0.0,  # reward of a step whose program call failed
    "timeout_s": 1.0,  # time limit of one call
    "memory_mb": 512,  # memory the program may allocate
    "on_error": "fallback",  # "fallback": use `fallback` and count; "raise": raise RewardProgramError
}


class RewardCodeWarning(UserWarning):
    """A reward program failed during a step (the first failure of each env)."""


def load_program(program: str | Path) -> tuple[str, str]:
    """``(source, filename)`` from a path or from program text.

    Text is recognised by a newline or by ``def compute_dense_reward``; anything else is
    a path, and a missing file is an error that says so.
    """
    if not isinstance(program, (str, Path)):
        raise TypeError(f"reward_code must be a path or program text, got {type(program).__name__}")
    if isinstance(program, Path) or ("\n" not in program and "compute_dense_reward" not in program):
        path = Path(program).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"reward_code: no such file {str(path)!r} (pass a path to a .py program, or its text)")
        return path.read_text(encoding="utf-8"), str(path)
    return program, "<reward program>"


def check_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """``reward_code_options`` filled with defaults; an unknown key or bad value is an error."""
    from embodied.envs.wrappers import EnvOptionError

    options = dict(options or {})
    unknown = sorted(set(options) - set(REWARD_CODE_DEFAULTS))
    if unknown:
        raise EnvOptionError(f"unknown reward_code_options {', '.join(map(repr, unknown))}; valid: {', '.join(REWARD_CODE_DEFAULTS)}")
    merged = {**REWARD_CODE_DEFAULTS, **options}
    if merged["on_error"] not in ("fallback", "raise"):
        raise EnvOptionError(f"reward_code_options on_error must be 'fallback' or 'raise', got {merged['on_error']!r}")
    try:
        merged["fallback"] = float(merged["fallback"])
    except (TypeError, ValueError):
        raise EnvOptionError(f"reward_code_options fallback must be a number, got {merged['fallback']!r}") from None
    if not math.isfinite(merged["fallback"]):
        raise EnvOptionError("reward_code_options fallback must be finite")
    if not (isinstance(merged["timeout_s"], (int, float)) and merged["timeout_s"] > 0):
        raise EnvOptionError(f"reward_code_options timeout_s must be a positive number, got {merged['timeout_s']!r}")
    if not (isinstance(merged["memory_mb"], int) and merged["memory_mb"] >= 16):
        raise EnvOptionError(f"reward_code_options memory_mb must be an integer >= 16, got {merged['memory_mb']!r}")
    return merged


class RewardCode(gym.Wrapper):
    """The env's reward replaced by ``compute_dense_reward(self, action, obs)`` from ``program``.

    Args:
        env: a bare Meta-World or MuJoCo env (as :func:`embodied.make` builds it).
        program: a path to the program, or its text.
        filename: how messages name a program given as text (a path names itself).
        fallback, timeout_s, memory_mb, on_error: see :data:`REWARD_CODE_DEFAULTS`.

    Attributes:
        errors: failed calls so far (also ``info["reward_code_errors"]``).
        first_error / last_error: the failures' messages.
        calls / call_seconds: calls timed and their total wall time (reading the state, the
            sandbox round trip and the program itself: the plug's cost per step), leaving
            out the calls that started the sandbox process.
    """

    def __init__(self, env: gym.Env, program: str | Path, *, fallback: float = 0.0, timeout_s: float = 1.0,
                 memory_mb: int = 512, on_error: str = "fallback", filename: str | None = None):  # fmt: skip
        super().__init__(env)
        from embodied.rewards.text2reward.sandbox import Sandbox
        from embodied.rewards.text2reward.state import state_source

        source, self.filename = load_program(program)
        self.filename = filename if filename and self.filename == "<reward program>" else self.filename
        self.state = state_source(env)
        obs_shape = env.observation_space.shape
        action_shape = env.action_space.shape
        self.sandbox = Sandbox(source, self.state.fields, action_shape, obs_shape, filename=self.filename,
                               timeout_s=timeout_s, memory_mb=memory_mb, allowed_private=self.state.allowed_private)  # fmt: skip
        self.state.restrict(self.sandbox.info.attributes)
        self.fallback = float(fallback)
        self.on_error = on_error
        size = self.state.size
        self._state_values = self.sandbox.values[:size]
        self._action = self.sandbox.field("action")
        self._obs = self.sandbox.field("obs")
        self.errors = 0
        self.calls = 0
        self.call_seconds = 0.0
        self.first_error: str | None = None
        self.last_error: str | None = None

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "env_reward": 0.0, "reward_code_errors": self.errors}

    def step(self, action):
        obs, env_reward, terminated, truncated, info = self.env.step(action)
        reward = self.reward(action, obs)
        return obs, reward, terminated, truncated, {**info, "env_reward": float(env_reward), "reward_code_errors": self.errors}

    def reward(self, action, obs) -> float:
        """The program's reward for the state the env is in now (after ``action`` led to ``obs``)."""
        from embodied.rewards.text2reward.sandbox import RewardProgramError

        started = time.perf_counter()
        starts = self.sandbox.starts
        self.state.fill(self._state_values)
        self._action[...] = np.asarray(action, dtype=np.float64).reshape(self._action.shape)
        self._obs[...] = np.asarray(self.state.observation(obs), dtype=np.float64).reshape(self._obs.shape)
        try:
            value = self.sandbox.call()
        except RewardProgramError as error:
            value = self._failed(error)
        finally:
            if self.sandbox.starts == starts:  # starting the sandbox process is not the plug's per-step cost
                self.calls += 1
                self.call_seconds += time.perf_counter() - started
        return value

    def _failed(self, error: Exception) -> float:
        self.errors += 1
        self.last_error = str(error)
        if self.on_error == "raise":
            raise error
        if self.first_error is None:
            self.first_error = self.last_error
            message = (f"reward program failed ({self.last_error}); this step gets the fallback reward "
                       f"{self.fallback:g}, and info['reward_code_errors'] counts the failures")  # fmt: skip
            logger.warning(message)
            warnings.warn(message, RewardCodeWarning, stacklevel=3)
        else:
            logger.debug("reward program failed again: %s", self.last_error)
        return self.fallback

    def close(self):
        self.sandbox.close()
        return super().close()


def wrap_reward_code(env: gym.Env, program: str | Path, options: Mapping[str, Any] | None = None) -> gym.Env:
    """Apply the ``reward_code`` / ``reward_code_options`` options of :func:`embodied.make`."""
    from embodied.envs.wrappers import EnvOptionError
    from embodied.rewards.text2reward.state import UnsupportedEnvError

    try:
        return RewardCode(env, program, **check_options(options))
    except UnsupportedEnvError as error:
        env.close()
        raise EnvOptionError(f"reward_code: {error}") from None
    except BaseException:  # a refused program, a missing file, a bad option: do not leak the simulator
        env.close()
        raise
