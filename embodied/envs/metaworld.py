"""Meta-World v3 tasks as seedable Gymnasium envs: ``metaworld/<task>-v3``.

The raw Meta-World env ignores ``reset(seed=)`` and draws object and goal positions
from NumPy's global generator (or, in its benchmarks, from a fixed list of 50 goals).
Here each env owns its generator: ``reset(seed=s)`` reseeds it, every reset draws new
positions from it, so the same seed gives the same initial object and goal positions
and different seeds differ.

Observation: Meta-World's 39 floats (hand xyz, gripper opening, two objects' position
and quaternion padded to 14, the same 18 from the previous step, goal xyz), as float32.
The goal is visible by default, as in the MT benchmarks (``goal_observable=False``
zeroes it, as in ML). ``info["success"]`` is a bool every step; an episode succeeded
if it was ever true. Episodes are truncated at 500 steps (``max_episode_steps``) and
the env refuses, with a clear error, to step past truncation.

Cameras: topview, corner, corner2, corner3, corner4, behindGripper, gripperPOV.

Multi-task: ``metaworld/mt10`` is Meta-World's MT10 (Yu et al. 2019) as one env for one
policy: each reset runs one of the 10 tasks and the observation ends with the task's
one-hot (:class:`MultiTaskEnv`).
"""

from __future__ import annotations

from typing import Any, Callable

import gymnasium as gym
import numpy as np

from embodied.envs.wrappers import EnvOptionError, apply_options, closest, image_hw, split_options

TASKS: tuple[str, ...] = (
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3",
    "button-press-topdown-v3", "button-press-topdown-wall-v3", "button-press-v3",
    "button-press-wall-v3", "coffee-button-v3", "coffee-pull-v3", "coffee-push-v3",
    "dial-turn-v3", "disassemble-v3", "door-close-v3", "door-lock-v3", "door-open-v3",
    "door-unlock-v3", "hand-insert-v3", "drawer-close-v3", "drawer-open-v3",
    "faucet-open-v3", "faucet-close-v3", "hammer-v3", "handle-press-side-v3",
    "handle-press-v3", "handle-pull-side-v3", "handle-pull-v3", "lever-pull-v3",
    "pick-place-wall-v3", "pick-out-of-hole-v3", "pick-place-v3", "plate-slide-v3",
    "plate-slide-side-v3", "plate-slide-back-v3", "plate-slide-back-side-v3",
    "peg-insert-side-v3", "peg-unplug-side-v3", "soccer-v3", "stick-push-v3",
    "stick-pull-v3", "push-v3", "push-wall-v3", "push-back-v3", "reach-v3",
    "reach-wall-v3", "shelf-place-v3", "sweep-into-v3", "sweep-v3", "window-open-v3",
    "window-close-v3",
)  # fmt: skip

#: Multi-task benchmarks: id -> tasks, in the order of their one-hot (Meta-World's MT10_V3).
BENCHMARKS: dict[str, tuple[str, ...]] = {
    "mt10": (
        "reach-v3", "push-v3", "pick-place-v3", "door-open-v3", "drawer-open-v3", "drawer-close-v3",
        "button-press-topdown-v3", "peg-insert-side-v3", "window-open-v3", "window-close-v3",
    ),
}  # fmt: skip

#: The robot's own features of the 39: hand xyz and gripper opening, now (0–3) and at the
#: previous step (18–21). What an inverse-dynamics model needs (MTMConfig.state_features).
ROBOT_FEATURES: tuple[int, ...] = (0, 1, 2, 3, 18, 19, 20, 21)
#: Where the hand, the first object and the goal sit in the 39 features (the goal: zeros
#: when an env hides it).
HAND, OBJECT, GOAL = slice(0, 3), slice(4, 7), slice(36, 39)
MAX_EPISODE_STEPS = 500  # Meta-World's own limit: its env raises if stepped past it
CAMERAS = ("topview", "corner", "corner2", "corner3", "corner4", "behindGripper", "gripperPOV")
DEFAULT_CAMERA = "corner2"
#: Options of this suite beyond the common ones (render_quality: see
#: :mod:`embodied.envs.mjrender`; "fast" renders ~10x faster without a GPU).
SUITE_OPTIONS: dict[str, Any] = {"goal_observable": True, "render_quality": "full"}

# Meta-World's corner cameras render upside down (the MuJoCo frame is flipped).
_FLIPPED_CAMERAS = {"corner", "corner2", "corner3", "corner4", "topview"}


def task_distances(observations):
    """Per step, the hand's distance to the first object and the object's to the goal, in
    metres: (..., 39) -> (..., 2), for NumPy arrays or torch tensors. Every Meta-World task
    is moving the hand to an object and the object to a goal, so these mean the same in
    any two tasks (PEARL's ``features="distances"`` compares segments of two tasks by them)."""
    if observations.shape[-1] != 39:
        raise ValueError(f"task_distances takes Meta-World's 39 observation features, got {observations.shape[-1]}")
    hand, item, goal = observations[..., HAND], observations[..., OBJECT], observations[..., GOAL]
    if isinstance(observations, np.ndarray):
        return np.stack([np.linalg.norm(hand - item, axis=-1), np.linalg.norm(item - goal, axis=-1)], -1)
    import torch

    return torch.stack([(hand - item).norm(dim=-1), (item - goal).norm(dim=-1)], -1)


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task with per-env seeding (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 80}

    def __init__(
        self,
        task: str,
        goal_observable: bool = True,
        render_mode: str | None = "rgb_array",
        image_size: int | tuple[int, int] = 64,
        camera: str | None = None,
        max_episode_steps: int = MAX_EPISODE_STEPS,
        render_quality: str = "full",
    ):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS, ML1_ARGS_KWARGS

        from embodied.envs.mjrender import own_gl_context, set_render_quality

        if task not in ALL_V3_ENVIRONMENTS:
            near = closest(task, ALL_V3_ENVIRONMENTS)
            raise EnvOptionError(f"unknown Meta-World task {task!r}; closest: {', '.join(near) or 'none'}")
        camera = camera or DEFAULT_CAMERA
        if camera not in CAMERAS:
            raise EnvOptionError(f"unknown Meta-World camera {camera!r}; valid: {', '.join(CAMERAS)}")
        if not 1 <= max_episode_steps <= MAX_EPISODE_STEPS:
            raise EnvOptionError(f"max_episode_steps must be in 1..{MAX_EPISODE_STEPS}, got {max_episode_steps}")
        height, width = image_hw(image_size)
        self.task = task
        self.camera = camera
        self.render_mode = render_mode
        self.max_episode_steps = int(max_episode_steps)
        self._flip = camera in _FLIPPED_CAMERAS
        sim = ALL_V3_ENVIRONMENTS[task](render_mode=render_mode, camera_name=camera, width=width, height=height)
        set_render_quality(sim.model, render_quality, "metaworld")
        own_gl_context(sim.mujoco_renderer)  # MT10 holds ten of these in one process
        # Free (not benchmark-frozen) task sampling, drawn from the env's own generator.
        sim._freeze_rand_vec = False
        sim.seeded_rand_vec = True
        sim._set_task_called = True
        task_kwargs = {k: v for k, v in ML1_ARGS_KWARGS[task]["kwargs"].items() if k != "task_id"}
        sim._set_task_inner(**task_kwargs)
        sim._partially_observable = not goal_observable
        # The space is a cached property computed at construction (goal hidden): recompute.
        sim.__dict__.pop("sawyer_observation_space", None)
        self.sim = sim
        space = sim.sawyer_observation_space
        self.observation_space = gym.spaces.Box(
            space.low.astype(np.float32), space.high.astype(np.float32), dtype=np.float32
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), dtype=np.float32)
        self._steps = 0
        self._done = True
        self._sim_seeded = False
        self.state = np.zeros(39, dtype=np.float64)  # last raw observation (scripted policies read it)
        self._info_keys: tuple[str, ...] = ()

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._sim_seeded:
            # Meta-World draws positions from the simulator's generator; seed it from ours.
            self.sim.seed(int(seed) if seed is not None else int(self.np_random.integers(2**31)))
            self._sim_seeded = True
        obs, _ = self.sim.reset()
        self._steps = 0
        self._done = False
        self.state = obs
        # Same keys at reset as at every step, so episode storage sees one info layout.
        info = {key: 0.0 for key in self._info_keys}
        info["success"] = False
        return obs.astype(np.float32), info

    def step(self, action):
        if self._done:
            raise RuntimeError(
                f"metaworld/{self.task}: step() called after the episode ended "
                f"(truncated at {self.max_episode_steps} steps); call reset() first"
            )
        obs, reward, terminated, truncated, info = self.sim.step(np.asarray(action, dtype=np.float32))
        self._steps += 1
        truncated = bool(truncated) or self._steps >= self.max_episode_steps
        self._done = truncated or bool(terminated)
        info["success"] = bool(info["success"])
        if not self._info_keys:
            self._info_keys = tuple(k for k in info if k != "success")
        self.state = obs
        return obs.astype(np.float32), float(reward), bool(terminated), truncated, info

    def render(self):
        frame = self.sim.render()
        return np.ascontiguousarray(frame[::-1]) if self._flip else frame

    def close(self):
        self.sim.close()


class MultiTaskEnv(gym.Env):
    """Several Meta-World tasks behind one env, for one policy (Meta-World's MT benchmarks).

    Each reset runs one task; the observation is that task's 39 floats followed by the
    task's one-hot. ``reset(seed=s)`` runs task ``s mod n`` with positions drawn from
    ``s``; ``reset()`` runs the next task in turn with positions from the env's own
    generator. So consecutive seeds, like unseeded resets, go round the tasks in turn
    (the online trainer seeds its episodes consecutively). ``info["task"]`` names the task,
    at reset and every step, and evaluation reports success per task from it.
    """

    metadata = MetaWorldEnv.metadata

    def __init__(self, tasks: tuple[str, ...], **task_options: Any):
        self.tasks = tuple(tasks)
        self.envs = [MetaWorldEnv(task, **task_options) for task in self.tasks]
        self.render_mode = task_options.get("render_mode")
        count = len(self.tasks)
        # Goal bounds differ between tasks: the space covers them all.
        low = np.min([env.observation_space.low for env in self.envs], axis=0)
        high = np.max([env.observation_space.high for env in self.envs], axis=0)
        self.observation_space = gym.spaces.Box(
            np.concatenate([low, np.zeros(count, np.float32)]),
            np.concatenate([high, np.ones(count, np.float32)]),
            dtype=np.float32,
        )
        self.action_space = self.envs[0].action_space
        self.one_hots = np.eye(count, dtype=np.float32)
        self.task_index = -1

    @property
    def current(self) -> MetaWorldEnv:
        return self.envs[max(self.task_index, 0)]

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.task_index = seed % len(self.tasks) if seed is not None else (self.task_index + 1) % len(self.tasks)
        obs, info = self.current.reset(seed=int(self.np_random.integers(2**31)))
        return self._observation(obs), {**info, "task": self.tasks[self.task_index]}

    def step(self, action):
        if self.task_index < 0:
            raise RuntimeError("metaworld multi-task env: call reset() before step()")
        obs, reward, terminated, truncated, info = self.current.step(action)
        return self._observation(obs), reward, terminated, truncated, {**info, "task": self.tasks[self.task_index]}

    def _observation(self, obs: np.ndarray) -> np.ndarray:
        return np.concatenate([obs, self.one_hots[self.task_index]])

    def render(self):
        return self.current.render()

    def close(self):
        for env in self.envs:
            env.close()


def make_env(task: str, **options: Any) -> gym.Env:
    """Build ``metaworld/<task>`` (or a benchmark of :data:`BENCHMARKS`, e.g. ``metaworld/mt10``);
    options as in :func:`embodied.make`, plus ``goal_observable`` and ``render_quality``."""
    common, specific = split_options("metaworld", options, {**SUITE_OPTIONS, "max_episode_steps": MAX_EPISODE_STEPS})
    task_options = dict(
        goal_observable=specific["goal_observable"],
        render_mode=common["render_mode"],
        image_size=common["image_size"],
        camera=common["camera"],
        max_episode_steps=specific["max_episode_steps"],
        render_quality=specific["render_quality"],
    )
    env = MultiTaskEnv(BENCHMARKS[task], **task_options) if task in BENCHMARKS else MetaWorldEnv(task, **task_options)
    return apply_options(env, common)


def scripted_policy(env: gym.Env) -> Callable[[Any], np.ndarray]:
    """Meta-World's hand-written expert for the env's task.

    It reads the simulator state, not the observation, so it works whatever ``obs``
    mode or wrappers the env has.
    """
    from metaworld.policies import ENV_POLICY_MAP

    base = env.unwrapped
    if not isinstance(base, MetaWorldEnv):
        raise TypeError("scripted_policy needs a metaworld/<task> env")
    expert = ENV_POLICY_MAP[base.task]()
    # The experts were written for goal-visible observations.
    goal = base.sim._get_pos_goal

    def act(_obs: Any) -> np.ndarray:
        state = base.state.copy()
        state[-3:] = goal()
        return np.clip(expert.get_action(state), -1.0, 1.0).astype(np.float32)

    return act
