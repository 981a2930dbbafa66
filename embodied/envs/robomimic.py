"""robomimic's robosuite tasks as seedable Gymnasium envs: ``robomimic/<Task>``.

Ids: ``robomimic/Lift``, ``robomimic/PickPlaceCan``, ``robomimic/NutAssemblySquare``,
``robomimic/ToolHang`` (one Panda arm, action 7) and ``robomimic/TwoArmTransport`` (two
Panda arms facing each other, action 14 = robot0's 7 then robot1's 7). They are the
tasks of robomimic's datasets (lift, can, square, tool_hang, transport), built the way
robomimic builds them for robosuite 1.5: Panda with robosuite's ``BASIC`` composite
controller (OSC_POSE arm, delta end-effector pose in [-1, 1], last entry of each arm
opens/closes the gripper), 20 Hz control, sparse reward (1 on success, else 0; the
``reward_shaping=True`` option gives robosuite's dense reward), ``ignore_done`` so
that this module, not robosuite, ends episodes. Needs robosuite 1.5.2, installed
without its whole-body-IK dependencies (mink wants numpy<2): ``make setup-robomimic``,
or ``pip install 'embodied[robomimic]' && pip install --no-deps robosuite==1.5.2``.

Observation: robomimic's low-dimensional keys concatenated into one float32 vector, in
this order; ``env.unwrapped.obs_keys`` maps each key to its slice::

    key                   size
    robot0_eef_pos          3    end-effector position (world frame)
    robot0_eef_quat         4    end-effector orientation, quaternion (x, y, z, w)
    robot0_gripper_qpos     2    the two finger joints
    robot1_eef_pos          3    (TwoArmTransport only: the second arm's same three keys)
    robot1_eef_quat         4
    robot1_gripper_qpos     2
    object                  n    Lift 10, PickPlaceCan 14, NutAssemblySquare 14,
                                 ToolHang 44, TwoArmTransport 41

    total: Lift 19, PickPlaceCan 23, NutAssemblySquare 23, ToolHang 53, TwoArmTransport 59

``object`` is robosuite's ``object-state``, robomimic's ``object`` key: for Lift the cube's
position, quaternion and gripper-to-cube vector; for PickPlaceCan and NutAssemblySquare
the object's pose relative to the end effector (position, quaternion), then its position
and quaternion; for ToolHang the same 14 for the stand base, the frame and the tool,
then two flags (frame assembled, tool on frame); for TwoArmTransport the payload's,
trash's and lid handle's poses, both bins' positions, two flags and four gripper-to-object
vectors.

Success: ``info["success"]`` is a bool every step (and at reset), robosuite's
``_check_success()``. Episodes never terminate; they are truncated at
``max_episode_steps``: 500 for Lift, PickPlaceCan and NutAssemblySquare, 700 for ToolHang,
1100 for TwoArmTransport (robomimic's longest evaluation horizons for each task's
datasets; its proficient-human evaluations use 400, 400, 400, 700, 700). The bare env
raises :class:`RuntimeError` if stepped past its limit.

Cameras (``camera`` option, default ``agentview``): the task model's cameras, frontview,
birdview, agentview, sideview (not in PickPlaceCan), robot0_robotview and
robot0_eye_in_hand; TwoArmTransport adds shouldercamera0, shouldercamera1,
robot1_robotview and robot1_eye_in_hand. An unknown name raises an error
listing that task's cameras. Frames are rendered offscreen on demand (no renderer is
built until the first ``render()``); importing robosuite sets ``MUJOCO_GL=egl`` on Linux
when it is unset.

Seeding: robosuite draws object placement and the robot's initial joint noise from one
generator per env (``rng``, shared by reference with its placement samplers);
``reset(seed=s)`` reseeds that generator in place, so the same seed gives the same
initial state, in any env of the task and after any history, and different seeds
differ. Resets without a seed continue its stream (the first draws a seed from
Gymnasium's ``np_random``).

Resets: soft by default (milliseconds), re-sampling placements in the same MuJoCo model.
The model is built once, from a fixed seed, so what robosuite randomises at build time
(only Lift's cube size, 20-22 mm half-extent along each axis) is the same in every
episode and every env. ``hard_reset=True`` rebuilds the model every reset, as robosuite
and robomimic do by default (the cube size then varies per episode, and ``reset(seed=s)``
fixes it too), at 1-3 s a reset here.

Physics: ``lite_physics=False`` by default, robosuite <= 1.4.1 behaviour, under which
robomimic's datasets were recorded; ``lite_physics=True`` steps about 10% faster here.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator

import gymnasium as gym
import numpy as np

from embodied.envs.wrappers import EnvOptionError, apply_options, closest, image_hw, split_options

TASKS: tuple[str, ...] = ("Lift", "PickPlaceCan", "NutAssemblySquare", "ToolHang", "TwoArmTransport")

MAX_EPISODE_STEPS: dict[str, int] = {
    "Lift": 500,
    "PickPlaceCan": 500,
    "NutAssemblySquare": 500,
    "ToolHang": 700,
    "TwoArmTransport": 1100,
}

DEFAULT_CAMERA = "agentview"
CONTROL_FREQ = 20  # Hz, as in robomimic's datasets
SUITE_OPTIONS: dict[str, Any] = {
    "reward_shaping": False,
    "lite_physics": False,
    "hard_reset": False,
    "max_episode_steps": None,
    "render_quality": "full",  # "fast": no shadows, reflections or anti-aliasing (embodied.envs.mjrender)
}

#: Arguments that differ between tasks; the rest (below, in RobomimicEnv) are shared.
_TASK_KWARGS: dict[str, dict[str, Any]] = {
    "Lift": {"robots": ["Panda"]},
    "PickPlaceCan": {"robots": ["Panda"]},
    "NutAssemblySquare": {"robots": ["Panda"]},
    "ToolHang": {"robots": ["Panda"]},
    "TwoArmTransport": {"robots": ["Panda", "Panda"], "env_configuration": "single-arm-opposed"},
}

_ROBOT_KEYS = (("eef_pos", 3), ("eef_quat", 4), ("gripper_qpos", 2))
_INSTALL_HINT = (
    "install the robomimic extra: make setup-robomimic, or "
    "pip install 'embodied[robomimic]' && pip install --no-deps robosuite==1.5.2"
)


@contextlib.contextmanager
def _quiet_robosuite() -> Iterator[None]:
    """Hide robosuite's import- and build-time chatter (missing optional robot models,
    mink IK, private macro file; "loading controller configuration"), none of which
    concerns these tasks. Its errors, and warnings while stepping, still show."""
    logger = logging.getLogger("robosuite_logs")  # robosuite's logger; created here if not yet

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    logger.addFilter(keep)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def _import_robosuite():
    try:
        with _quiet_robosuite():
            import robosuite
    except ImportError as error:
        raise ImportError(f"robomimic envs need robosuite 1.5 ({error}); {_INSTALL_HINT}") from error
    return robosuite


def _controller_config(robosuite) -> dict[str, Any]:
    """robosuite's BASIC composite controller for a Panda: OSC_POSE on the arm.

    The BASIC file also configures torso, head, base and legs for humanoids; a Panda
    has only the arm robosuite calls "right", and would warn about the others on
    every reset.
    """
    config = robosuite.load_composite_controller_config(controller="BASIC", robot="Panda")
    config["body_parts"] = {"right": config["body_parts"]["right"]}
    return config


class RobomimicEnv(gym.Env):
    """One robomimic task with robomimic's settings (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(
        self,
        task: str,
        reward_shaping: bool = False,
        lite_physics: bool = False,
        hard_reset: bool = False,
        render_mode: str | None = "rgb_array",
        image_size: int | tuple[int, int] = 64,
        camera: str | None = None,
        max_episode_steps: int | None = None,
        render_quality: str = "full",
    ):
        from embodied.envs.mjrender import check_render_quality

        check_render_quality(render_quality, "robomimic")
        if task not in TASKS:
            near = closest(task, TASKS)
            raise EnvOptionError(
                f"unknown robomimic task {task!r}; closest: {', '.join(near) or 'none'}; valid: {', '.join(TASKS)}"
            )
        limit = MAX_EPISODE_STEPS[task] if max_episode_steps is None else max_episode_steps
        if not isinstance(limit, (int, np.integer)) or isinstance(limit, bool) or limit < 1:
            raise EnvOptionError(f"max_episode_steps must be a positive integer, got {max_episode_steps!r}")
        robosuite = _import_robosuite()
        with _quiet_robosuite():
            #: the wrapped robosuite env (its ``sim`` is the MuJoCo simulator)
            self.robosuite_env = robosuite.make(
                task,
                **_TASK_KWARGS[task],
                controller_configs=_controller_config(robosuite),
                control_freq=CONTROL_FREQ,
                reward_shaping=bool(reward_shaping),
                lite_physics=bool(lite_physics),
                use_object_obs=True,
                use_camera_obs=False,  # frames come from render(), at the size the agent asked for
                has_renderer=False,
                has_offscreen_renderer=False,  # the GL context is built on the first render()
                # Only the "mujoco" renderer makes a hard reset free the old simulator
                # (and its GL context) before building the new one.
                renderer="mujoco",
                ignore_done=True,  # we truncate, so robosuite never refuses a step
                horizon=int(limit),
                hard_reset=bool(hard_reset),
                # Fixes what the model draws at build time (Lift's cube size), so two envs
                # built alike are alike; per-episode draws are reseeded in reset().
                seed=0,
            )
        cameras = tuple(self.robosuite_env.sim.model.camera_id2name(i) for i in range(self.robosuite_env.sim.model.ncam))
        camera = camera or DEFAULT_CAMERA
        if camera not in cameras:
            self.robosuite_env.close()
            raise EnvOptionError(f"unknown camera {camera!r} for robomimic/{task}; valid: {', '.join(cameras)}")

        self.task = task
        self.render_quality = render_quality
        self._set_render_quality()
        self.cameras = cameras
        self.camera = camera
        self.render_mode = render_mode
        self.image_size = image_hw(image_size)
        self.max_episode_steps = int(limit)
        robots = [f"robot{i}" for i in range(len(_TASK_KWARGS[task]["robots"]))]
        sizes = [(f"{robot}_{key}", size) for robot in robots for key, size in _ROBOT_KEYS]
        self.robosuite_env_keys = [key for key, _ in sizes] + ["object-state"]
        sizes.append(("object", self.robosuite_env.observation_spec()["object-state"].shape[0]))
        #: observation key -> its slice of the flat observation, in order
        self.obs_keys: dict[str, slice] = {}
        start = 0
        for key, size in sizes:
            self.obs_keys[key] = slice(start, start + size)
            start += size
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (start,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (self.robosuite_env.action_dim,), dtype=np.float32)
        self._steps = 0
        self._done = True
        self._rng_seeded = False

    def _observation(self, sim_obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.concatenate([np.asarray(sim_obs[key], dtype=np.float32).ravel() for key in self.robosuite_env_keys])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None or not self._rng_seeded:
            # Unseeded, the first episode still differs between envs: draw from ours.
            seed = seed if seed is not None else int(self.np_random.integers(2**63))
            # In place: robosuite's placement samplers hold this same generator object.
            self.robosuite_env.rng.bit_generator.state = np.random.default_rng(seed).bit_generator.state
            self._rng_seeded = True
        if self.robosuite_env.hard_reset:
            self._use_gl_context()  # a hard reset frees it: free ours, not another env's
        self.robosuite_env.reset()
        if self.robosuite_env.hard_reset:
            self._set_render_quality()  # a new model
        # Observables that read others' values from robosuite's cache (an object's pose
        # relative to the gripper) are zeros on the first update after a reset; a second
        # update fills them in.
        sim_obs = self.robosuite_env._get_observations(force_update=True)
        self._steps = 0
        self._done = False
        return self._observation(sim_obs), {"success": bool(self.robosuite_env._check_success())}

    def step(self, action):
        if self._done:
            raise RuntimeError(
                f"robomimic/{self.task}: step() called after the episode ended "
                f"(truncated at {self.max_episode_steps} steps); call reset() first"
            )
        action = np.asarray(action, dtype=np.float64)
        if action.shape != self.action_space.shape:
            raise ValueError(f"robomimic/{self.task}: action must have shape {self.action_space.shape}, got {action.shape}")
        sim_obs, reward, _, sim_info = self.robosuite_env.step(action)
        self._steps += 1
        truncated = self._steps >= self.max_episode_steps
        self._done = truncated
        info = {**sim_info, "success": bool(self.robosuite_env._check_success())}
        # These tasks have no failure state, and success is not terminal in robomimic
        # either (its rollouts stop at success only if asked): only truncation ends one.
        return self._observation(sim_obs), float(reward), False, truncated, info

    def _set_render_quality(self) -> None:
        from embodied.envs.mjrender import set_render_quality

        set_render_quality(self.robosuite_env.sim.model._model, self.render_quality, "robomimic")

    def _use_gl_context(self) -> bool:
        """Make this env's GL context current, if it has one.

        Each env that has rendered owns a GL context, but robosuite makes a context
        current only when creating it: with several envs in one process, drawing or
        freeing would otherwise act on whichever context was created last.
        """
        context = self.robosuite_env.sim._render_context_offscreen
        if context is not None:
            context.gl_ctx.make_current()
        return context is not None

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        sim = self.robosuite_env.sim
        if not self._use_gl_context():
            from robosuite.utils.binding_utils import MjRenderContextOffscreen

            context = MjRenderContextOffscreen(sim, device_id=-1)  # registers itself with sim
            context.vopt.geomgroup[0] = 0  # collision meshes off, visual meshes on, as robosuite does
            context.vopt.geomgroup[1] = 1
        height, width = self.image_size
        frame = sim.render(camera_name=self.camera, width=width, height=height)
        return np.ascontiguousarray(frame[::-1])  # OpenGL rows start at the bottom

    def close(self):
        if getattr(self, "robosuite_env", None) is not None and self.robosuite_env.sim is not None:
            self._use_gl_context()
            self.robosuite_env.close()


def make_env(task: str, **options: Any) -> gym.Env:
    """Build ``robomimic/<task>``; options as in :func:`embodied.make`, plus
    ``reward_shaping`` (dense reward), ``lite_physics``, ``hard_reset``,
    ``max_episode_steps`` (see the module docstring) and ``render_quality``
    (:mod:`embodied.envs.mjrender`)."""
    common, specific = split_options("robomimic", options, SUITE_OPTIONS)
    if common["obs"] != "state" and common["render_mode"] is None:
        raise EnvOptionError(f"obs={common['obs']!r} renders frames, so render_mode must be 'rgb_array', not None")
    env = RobomimicEnv(
        task,
        reward_shaping=specific["reward_shaping"],
        lite_physics=specific["lite_physics"],
        hard_reset=specific["hard_reset"],
        render_mode=common["render_mode"],
        image_size=common["image_size"],
        camera=common["camera"],
        max_episode_steps=specific["max_episode_steps"],
        render_quality=specific["render_quality"],
    )
    return apply_options(env, common)
