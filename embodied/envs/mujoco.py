"""Gymnasium's MuJoCo locomotion tasks: ``mujoco/<Name>-v5``.

The env is Gymnasium's own class, built from its registered entry point with our
rendering settings (``image_size``, ``camera``); every other keyword of the
Gymnasium env (``frame_skip``, ``ctrl_cost_weight``, ...) passes through unchanged.
No success signal exists for these tasks, so ``info`` has no ``success``.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from embodied.envs.wrappers import COMMON_OPTIONS, EnvOptionError, apply_options, image_hw, split_options

TASKS: tuple[str, ...] = (
    "Ant-v5", "HalfCheetah-v5", "Hopper-v5", "Humanoid-v5", "HumanoidStandup-v5",
    "InvertedDoublePendulum-v5", "InvertedPendulum-v5", "Pusher-v5", "Reacher-v5",
    "Swimmer-v5", "Walker2d-v5",
)  # fmt: skip

MAX_EPISODE_STEPS = {task: 100 if task == "Pusher-v5" else 50 if task == "Reacher-v5" else 1000 for task in TASKS}


def make_env(task: str, **options: Any) -> gym.Env:
    """Build ``mujoco/<task>``; Gymnasium's own env kwargs are accepted too."""
    spec = gym.spec(task)
    env_kwargs = {k: v for k, v in options.items() if k not in COMMON_OPTIONS}
    common, _ = split_options("mujoco", {k: v for k, v in options.items() if k in COMMON_OPTIONS}, {})
    height, width = image_hw(common["image_size"])
    render_kwargs: dict[str, Any] = {"render_mode": common["render_mode"], "width": width, "height": height}
    if common["camera"] is not None:
        key = "camera_id" if isinstance(common["camera"], int) else "camera_name"
        render_kwargs[key] = common["camera"]
    env_class = gym.envs.registration.load_env_creator(spec.entry_point)
    try:
        env = env_class(**{**spec.kwargs, **env_kwargs, **render_kwargs})
    except TypeError as error:  # an unknown keyword: say which env and what it accepts
        raise EnvOptionError(f"mujoco/{task}: {error}. Common options: {', '.join(COMMON_OPTIONS)}") from None
    # Offscreen only (no display on the machines this runs on), like every other suite.
    env.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
    return apply_options(env, common)
