"""Gymnasium's MuJoCo locomotion tasks: ``mujoco/<Name>-v5``.

The env is Gymnasium's own class, built from its registered entry point with our
rendering settings (``image_size``, ``camera``, ``render_quality``: "fast" drops shadows,
reflections and anti-aliasing, which makes pixel observations of the locomotion tasks ~20x
cheaper on a machine without a GPU; :mod:`embodied.envs.mjrender`); every
other keyword of the Gymnasium env (``frame_skip``, ``ctrl_cost_weight``, ...) passes through
unchanged.
No success signal exists for these tasks, so ``info`` has no ``success``.

``scripted_policy(env)`` exists for Reacher-v5 only (a hand-written reference for scale;
other tasks raise ``ValueError``).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from embodied.envs.wrappers import COMMON_OPTIONS, EnvOptionError, apply_options, image_hw, split_options

TASKS: tuple[str, ...] = (
    "Ant-v5", "HalfCheetah-v5", "Hopper-v5", "Humanoid-v5", "HumanoidStandup-v5",
    "InvertedDoublePendulum-v5", "InvertedPendulum-v5", "Pusher-v5", "Reacher-v5",
    "Swimmer-v5", "Walker2d-v5",
)  # fmt: skip

MAX_EPISODE_STEPS = {task: 100 if task == "Pusher-v5" else 50 if task == "Reacher-v5" else 1000 for task in TASKS}


def make_env(task: str, **options: Any) -> gym.Env:
    """Build ``mujoco/<task>``; Gymnasium's own env kwargs are accepted too."""
    from embodied.envs.mjrender import check_render_quality, own_gl_context, set_render_quality

    spec = gym.spec(task)
    options = dict(options)
    render_quality = options.pop("render_quality", "full")
    check_render_quality(render_quality, "mujoco")  # before building the env
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
        raise EnvOptionError(
            f"mujoco/{task}: {error}. Common options: {', '.join(COMMON_OPTIONS)}; and render_quality"
        ) from None
    set_render_quality(env.unwrapped.model, render_quality, "mujoco")
    own_gl_context(env.unwrapped.mujoco_renderer)
    # Offscreen only (no display on the machines this runs on), like every other suite.
    env.metadata = {**env.metadata, "render_modes": ["rgb_array"]}
    return apply_options(env, common)


#: Reacher's PD gains: torque = clip(KP · Jᵀ (target − fingertip) − KD · joint velocities).
#: Tuned on 20 episodes of plain Reacher-v5 (a grid of KP 5..80, KD 0.02..0.2): return -5.6,
#: where zero torque gets about -25 (Gymnasium's reward: minus the distance, minus Σ a²).
REACHER_GAINS = (20.0, 0.1)


def scripted_policy(env: gym.Env) -> Callable[[Any], np.ndarray]:
    """A hand-written controller for ``mujoco/Reacher-v5``: a PD law through the arm's
    Jacobian transpose that pulls the fingertip to the target. It reads the simulator,
    not the observation, so it works whatever ``obs`` or wrappers the env has."""
    import mujoco
    from gymnasium.envs.mujoco.reacher_v5 import ReacherEnv

    base = env.unwrapped
    if not isinstance(base, ReacherEnv):
        task = env.spec.id.split("mujoco-", 1)[-1] if env.spec is not None else type(base).__name__
        raise ValueError(f"no scripted policy for mujoco/{task}; mujoco tasks with one: Reacher-v5")
    model, data = base.model, base.data
    fingertip, target = model.body("fingertip").id, model.body("target").id
    jacobian = np.zeros((3, model.nv))
    kp, kd = REACHER_GAINS

    def act(_obs: Any) -> np.ndarray:
        mujoco.mj_jacBody(model, data, jacobian, None, fingertip)
        error = data.xpos[target, :2] - data.xpos[fingertip, :2]
        torque = kp * jacobian[:2, :2].T @ error - kd * data.qvel[:2]
        return np.clip(torque, -1.0, 1.0).astype(np.float32)

    return act
