"""Options shared by every suite, and the wrappers that implement them.

Every suite's factory builds its bare simulator env (which must render ``image_size``
frames from ``camera`` through ``render()``) and hands it to :func:`apply_options`, so
``obs``, ``image_size``, ``camera``, ``distractors``, ``state_noise``, ``frame_stack``,
``action_repeat``, ``reward`` and ``reward_code`` mean the same thing everywhere. The
order is fixed: a reward program or the sparse reward innermost (a program reads the
simulator's state after each step, and action repeat then sums its rewards;
:mod:`embodied.envs.reward`), then action repeat (a frame is rendered once per agent
step, not per simulator step), then noise appended to the state, then pixel
observations, then distractors on those pixels, then frame stacking.
"""

from __future__ import annotations

import difflib
import zlib
from typing import Any, Iterable, Mapping

import gymnasium as gym
import numpy as np

OBS_MODES = ("state", "pixels", "state+pixels")
REWARDS = ("env", "sparse")

#: Options every suite accepts, with their defaults.
COMMON_OPTIONS: dict[str, Any] = {
    "obs": "state",
    "image_size": 64,
    "camera": None,
    "distractors": None,
    "state_noise": 0,  # fresh N(0, 1) numbers appended to the state each step (StateNoise)
    "frame_stack": 1,
    "action_repeat": 1,
    "render_mode": "rgb_array",
    "reward": "env",  # "env": the env's own reward; "sparse": 1.0 on steps where info["success"], else 0.0
    "reward_code": None,  # a Text2Reward program (path or text) replacing the env's reward
    "reward_code_options": None,  # its fallback, timeout_s, memory_mb, on_error (embodied.envs.reward)
}


class EnvOptionError(ValueError):
    """An option passed to ``embodied.make`` is unknown or has a bad value."""


def closest(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The valid names nearest to a mistyped one (for error messages)."""
    choices = list(choices)
    found = difflib.get_close_matches(word, choices, n=n, cutoff=0.5)
    if not found:  # fall back on substring matches: "push" -> "push-v3", "push-back-v3"
        found = [c for c in choices if word.lower() in c.lower()][:n]
    return found


def split_options(
    suite: str, options: Mapping[str, Any], suite_defaults: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split user options into (common, suite-specific), both filled with defaults.

    Raises :class:`EnvOptionError` naming an unknown option, its closest valid names
    and the full list of valid ones.
    """
    valid = {**COMMON_OPTIONS, **suite_defaults}
    for key in options:
        if key not in valid:
            near = closest(key, valid)
            hint = f" Did you mean {', '.join(repr(n) for n in near)}?" if near else ""
            raise EnvOptionError(
                f"unknown option {key!r} for {suite} envs.{hint} "
                f"Valid options: {', '.join(sorted(valid))}."
            )
    common = {k: options.get(k, v) for k, v in COMMON_OPTIONS.items()}
    specific = {k: options.get(k, v) for k, v in suite_defaults.items()}
    _check_common(common)
    return common, specific


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """``image_size`` as (height, width): an int is square."""
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        return int(image_size), int(image_size)
    if (
        isinstance(image_size, (tuple, list))
        and len(image_size) == 2
        and all(isinstance(v, (int, np.integer)) for v in image_size)
    ):
        return int(image_size[0]), int(image_size[1])
    raise EnvOptionError(f"image_size must be an int or (height, width), got {image_size!r}")


def _check_common(common: dict[str, Any]) -> None:
    if common["obs"] not in OBS_MODES:
        raise EnvOptionError(f"obs must be one of {', '.join(OBS_MODES)}; got {common['obs']!r}")
    height, width = image_hw(common["image_size"])
    if not (8 <= height <= 2048 and 8 <= width <= 2048):
        raise EnvOptionError(f"image_size must be between 8 and 2048 pixels, got {common['image_size']!r}")
    for key, least in (("frame_stack", 1), ("action_repeat", 1), ("state_noise", 0)):
        value = common[key]
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < least:
            raise EnvOptionError(f"{key} must be an integer >= {least}, got {value!r}")
    if common["render_mode"] not in (None, "rgb_array"):
        raise EnvOptionError(
            f"render_mode must be 'rgb_array' or None (these envs render offscreen), got {common['render_mode']!r}"
        )
    if common["obs"] != "state" and common["render_mode"] is None:
        raise EnvOptionError(f"obs={common['obs']!r} needs frames: leave render_mode as 'rgb_array', not None")
    if common["reward"] not in REWARDS:
        raise EnvOptionError(f"reward must be one of {', '.join(REWARDS)}; got {common['reward']!r}")
    if common["reward"] != "env" and common["reward_code"] is not None:
        raise EnvOptionError(f"reward={common['reward']!r} and reward_code both replace the env's reward: give one")
    if common["state_noise"] and common["obs"] == "pixels":
        raise EnvOptionError("state_noise appends to the state vector, which obs='pixels' does not show: "
                             "pass obs='state' or obs='state+pixels', or distractors= for noise in the frames")
    if common["distractors"] and common["obs"] == "state":
        raise EnvOptionError(
            "distractors change what the agent sees, so they need pixel observations: "
            "pass obs='pixels' or obs='state+pixels'"
        )


def stream_rng(seed: int, name: str) -> np.random.Generator:
    """A generator seeded from the user's ``seed`` on a stream of its own, named ``name``:
    independent of the env's stream, which Gymnasium derives from the same seed."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(zlib.crc32(name.encode()),)))


class StateNoise(gym.ObservationWrapper):
    """Append ``dims`` fresh N(0, 1) numbers to the state vector every step: an
    action-independent "noisy TV" in state space, the quick check of RePo's claim (its
    latent should keep almost none of the noise; a reconstructing model keeps it).

    ``reset(seed=s)`` reseeds the noise from ``s`` on a stream of its own (independent of
    the env's, as for :mod:`embodied.envs.distractors`); a reset without a seed continues it.
    """

    def __init__(self, env: gym.Env, dims: int):
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
            raise EnvOptionError(f"state_noise appends to a flat state vector; this env's state is {space}")
        self.dims = int(dims)
        dtype = space.dtype if np.issubdtype(space.dtype, np.floating) else np.float32
        unbounded = np.full(self.dims, np.inf, dtype)
        low = np.concatenate([space.low.astype(dtype), -unbounded])
        self.observation_space = gym.spaces.Box(low, np.concatenate([space.high.astype(dtype), unbounded]), dtype=dtype)
        self.noise_rng = np.random.default_rng()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if seed is not None:
            self.noise_rng = stream_rng(seed, "embodied.envs.wrappers.StateNoise")
        return super().reset(seed=seed, options=options)

    def observation(self, observation):
        noise = self.noise_rng.standard_normal(self.dims)
        return np.concatenate([observation, noise]).astype(self.observation_space.dtype, copy=False)


class ActionRepeat(gym.Wrapper):
    """Repeat each action ``repeat`` times, summing rewards.

    Stops early at termination or truncation. ``info["success"]``, where the env
    reports it, is true if any repeated step succeeded, so no success is lost, and
    ``info["env_reward"]`` (the env's own reward under a reward program) is summed too.
    """

    def __init__(self, env: gym.Env, repeat: int):
        super().__init__(env)
        self.repeat = int(repeat)

    def step(self, action):
        total = 0.0
        env_total = 0.0
        success = False
        for _ in range(self.repeat):
            obs, reward, terminated, truncated, info = self.env.step(action)
            total += float(reward)
            env_total += float(info.get("env_reward", 0.0))
            success = success or bool(info.get("success", False))
            if terminated or truncated:
                break
        if "success" in info:
            info = {**info, "success": success}
        if "env_reward" in info:
            info = {**info, "env_reward": env_total}
        return obs, total, terminated, truncated, info


class SparseReward(gym.Wrapper):
    """Reward 1.0 on the steps where ``info["success"]`` is true, else 0.0 (the ``reward="sparse"`` option).

    The env's own reward stays in ``info["env_reward"]``, as under a reward program.
    """

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        return obs, {**info, "env_reward": 0.0}

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        if "success" not in info:
            raise EnvOptionError(
                f"reward='sparse' is the success signal, but {type(self.env.unwrapped).__name__} reports no "
                "info['success'] (Meta-World, robomimic and nav envs do)"
            )
        return obs, float(bool(info["success"])), terminated, truncated, {**info, "env_reward": float(reward)}


class PixelObservation(gym.ObservationWrapper):
    """Replace (``pixels``) or extend (``state+pixels``) the observation with a frame.

    Frames come from the wrapped env's ``render()``, which each suite configures to
    the requested ``image_size`` and ``camera``; they are ``uint8`` (H, W, 3).
    """

    def __init__(self, env: gym.Env, mode: str, image_size: tuple[int, int]):
        super().__init__(env)
        self.mode = mode
        height, width = image_size
        pixel_space = gym.spaces.Box(0, 255, (height, width, 3), np.uint8)
        if mode == "pixels":
            self.observation_space = pixel_space
        else:
            self.observation_space = gym.spaces.Dict({"state": env.observation_space, "pixels": pixel_space})

    def observation(self, observation):
        frame = np.ascontiguousarray(self.env.render())  # gymnasium's MuJoCo renderer hands out a flipped view
        if self.mode == "pixels":
            return frame
        return {"state": observation, "pixels": frame}


def apply_options(env: gym.Env, common: dict[str, Any]) -> gym.Env:
    """Wrap a bare suite env according to the common options (see module docstring)."""
    if common["reward_code"] is not None:
        from embodied.envs.reward import wrap_reward_code

        env = wrap_reward_code(env, common["reward_code"], common["reward_code_options"])
    elif common["reward_code_options"] is not None:
        raise EnvOptionError("reward_code_options was given without reward_code")
    if common["reward"] == "sparse":
        env = SparseReward(env)
    if common["action_repeat"] > 1:
        env = ActionRepeat(env, common["action_repeat"])
    if common["state_noise"]:
        env = StateNoise(env, common["state_noise"])
    if common["obs"] != "state":
        env = PixelObservation(env, common["obs"], image_hw(common["image_size"]))
        if common["distractors"]:
            from embodied.envs.distractors import Distractors

            env = Distractors(env, common["distractors"])
    if common["frame_stack"] > 1:
        env = gym.wrappers.FrameStackObservation(env, common["frame_stack"])
    return env
