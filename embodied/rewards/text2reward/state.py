"""What a reward program's ``self`` holds, read from the simulator after every step.

A *state source* lists the names an env exposes to reward programs (``fields``: dotted
paths and shapes, e.g. ``("robot.ee_position", (3,))``) and writes their current values
into a flat float64 vector (``fill``). The sandbox turns that vector back into the
read-only ``self`` the program sees (:func:`embodied.rewards.text2reward.sandbox.build_views`),
so the program never holds a reference to the simulator. The descriptions the LLM reads
(``envs/text2reward/<suite>/<task>.txt``, :mod:`.describe`) are generated from the same
sources, and a test checks every described name against them.

Meta-World (:class:`MetaWorldState`) uses the names of the Text2Reward paper's Meta-World
prompt, with the meaning of the published programs' ``obs`` slices (the authors'
``metaworld_exp.py`` maps ``self.robot.ee_position`` to ``obs[:3]``, ``gripper_openness``
to ``obs[3]``, ``obj1.position``/``quaternion`` to ``obs[4:7]``/``obs[7:11]``, ``obj2`` to
``obs[11:14]``/``obs[14:18]`` and ``goal_position`` to ``self.env._get_pos_goal()``)::

    self.robot.ee_position (3,)   self.robot.gripper_openness ()   self.goal_position (3,)
    self.obj1.position (3,)   self.obj1.quaternion (4,)   self.obj2.position (3,)   self.obj2.quaternion (4,)
    self.env._get_pos_goal() (3,)   self.env._get_pos_objects() (3k,)   self.env._get_quat_objects() (4k,)
    self.env.tcp_center (3,)   self.env.init_tcp (3,)

``self.env`` is a narrow stand-in for the Meta-World env: the published task-specific
programs call ``self.env._get_pos_goal()``; the other accessors are the ones Meta-World's
own reward functions use, offered so that programs written against Meta-World's source run
too. Methods return copies; nothing else of the simulator is reachable.

MuJoCo (:class:`LocomotionState`) is generated from the model, in the style of the
paper's Hopper and Ant prompts: ``self.dt``, ``self.robot.qpos``/``qvel``, every named body
of the robot as ``self.robot.<body>`` (``position``, ``quaternion``, ``velocity``,
``angular_velocity`` in the world frame, plus their ``_x``/``_y``/``_z`` components), and
every hinge or slide joint as ``self.robot.<joint>`` (``angle``/``angular_velocity`` or
``position``/``velocity``). Pusher's object is ``self.obj1``; Reacher's and Pusher's
targets are ``self.goal_position``. Poses are MuJoCo's ``xpos``/``xquat``/``cvel`` as the
step leaves them, which is what Gymnasium's own rewards read.
"""

from __future__ import annotations

import inspect
import keyword
from typing import Any

import gymnasium as gym
import numpy as np

Field = tuple[str, tuple[int, ...]]


class StateSource:
    """Base class: ``fields`` the program may read; ``fill`` writes their current values."""

    fields: list[Field]
    allowed_private: tuple[str, ...] = ()  # the `_` names among the fields

    @property
    def size(self) -> int:
        return sum(int(np.prod(shape)) if shape else 1 for _, shape in self.fields)

    def fill(self, out: np.ndarray) -> None:
        raise NotImplementedError

    def observation(self, step_obs: np.ndarray) -> np.ndarray:
        """The program's ``obs`` argument, given what the bare env's step returned."""
        return step_obs

    def restrict(self, attributes: frozenset[str] | set[str]) -> None:
        """Compute only what a program that names ``attributes`` can read (a speed-up;
        what is skipped reads as NaN, so a mistake here shows up as an error, not a zero)."""

    def values(self) -> np.ndarray:
        """The current values as one new flat vector."""
        out = np.zeros(self.size)
        self.fill(out)
        return out


# ----------------------------------------------------------------------------- Meta-World


def quaternion_order(sim: Any) -> str:
    """How a task's ``_get_quat_objects`` gives obj1's orientation: ``"xyzw"``, ``"wxyz"``
    or ``"zeros"``. Meta-World mixes conventions: MuJoCo's ``xquat`` is (w, x, y, z),
    scipy's ``Rotation.as_quat()`` is (x, y, z, w), and some tasks return zeros."""
    try:
        source = inspect.getsource(type(sim)._get_quat_objects)
    except (OSError, TypeError):
        return "wxyz"
    if "as_quat" in source:
        return "xyzw"
    if "zeros" in source:
        return "zeros"
    return "wxyz"


class MetaWorldState(StateSource):
    """The Text2Reward Meta-World abstraction of a :class:`embodied.envs.metaworld.MetaWorldEnv`."""

    allowed_private = ("_get_pos_goal", "_get_pos_objects", "_get_quat_objects")

    def __init__(self, env: Any):
        self.env = env
        sim = env.sim
        #: 1, or 2 (hammer, stick-push, stick-pull); obj2 is all zeros in one-object tasks
        self.objects = len(sim._get_pos_objects()) // 3
        self._n = 3 * self.objects
        import mujoco

        self._fingertips = [mujoco.mj_name2id(sim.model, mujoco.mjtObj.mjOBJ_SITE, name)
                            for name in ("rightEndEffector", "leftEndEffector")]  # fmt: skip
        self.fields = [
            ("robot.ee_position", (3,)), ("robot.gripper_openness", ()),
            ("obj1.position", (3,)), ("obj1.quaternion", (4,)), ("obj2.position", (3,)), ("obj2.quaternion", (4,)),
            ("goal_position", (3,)),
            ("env._get_pos_goal()", (3,)), ("env._get_pos_objects()", (self._n,)),
            ("env._get_quat_objects()", (4 * self.objects,)), ("env.tcp_center", (3,)), ("env.init_tcp", (3,)),
        ]  # fmt: skip

    def fill(self, out: np.ndarray) -> None:
        # Everything but the goal and the fingertips comes from the observation the
        # simulator computed this step (positions and quaternions of up to two objects,
        # padded), which is what `_get_pos_objects()`/`_get_quat_objects()` return; reading
        # it back is much cheaper than calling them (some build a scipy Rotation).
        state = self.env.state
        sim = self.env.sim
        goal = sim._get_pos_goal()
        out[0:18] = state[0:18]  # ee (3), gripper (1), obj1 pos + quat (7), obj2 pos + quat (7)
        out[18:21] = goal
        out[21:24] = goal
        i = 24
        for k in range(self.objects):  # positions, then quaternions, as Meta-World concatenates them
            out[i : i + 3] = state[4 + 7 * k : 7 + 7 * k]
            i += 3
        for k in range(self.objects):
            out[i : i + 4] = state[7 + 7 * k : 11 + 7 * k]
            i += 4
        tcp = sim.data.site_xpos[self._fingertips].mean(axis=0)  # Meta-World's tcp_center
        out[i : i + 3] = tcp
        init_tcp = getattr(sim, "init_tcp", None)  # set by Meta-World's reset
        out[i + 3 : i + 6] = tcp if init_tcp is None else init_tcp

    def observation(self, step_obs: np.ndarray) -> np.ndarray:
        return self.env.state  # float64, as Meta-World computed it (the step returns float32)


# ----------------------------------------------------------------------------- MuJoCo

#: What each robot body exposes, in the order ``fill`` writes it.
BODY_FIELDS: tuple[Field, ...] = (
    ("position", (3,)), ("quaternion", (4,)), ("velocity", (3,)), ("angular_velocity", (3,)),
    ("position_x", ()), ("position_y", ()), ("position_z", ()), ("velocity_x", ()), ("velocity_y", ()), ("velocity_z", ()),
)  # fmt: skip
HINGE_FIELDS = ("angle", "angular_velocity")
SLIDE_FIELDS = ("position", "velocity")

#: Bodies that belong to the scene, not the robot, per task -> the name a program sees.
SCENE: dict[str, dict[str, str]] = {
    "Reacher-v5": {"target": "goal_position"},
    "Pusher-v5": {"object": "obj1", "goal": "goal_position"},
}


class LocomotionState(StateSource):
    """A generated abstraction of a Gymnasium MuJoCo env (see the module docstring)."""

    def __init__(self, env: Any, task: str | None = None):
        import mujoco

        self.env = env
        model = env.model
        self.task = task or task_of(env)
        scene = SCENE.get(self.task, {})
        body_name = {i: mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_BODY, i) for i in range(model.nbody)}
        scene_ids = {i for i, name in body_name.items() if name in scene}
        self._bodies = [i for i, name in body_name.items() if i > 0 and name and i not in scene_ids and _usable(name)]
        #: attribute names of the robot's bodies under ``self.robot``
        self.bodies = [body_name[i] for i in self._bodies]
        self.fields = [("dt", ()), ("robot.qpos", (model.nq,)), ("robot.qvel", (model.nv,))]
        for name in self.bodies:
            self.fields += [(f"robot.{name}.{attribute}", shape) for attribute, shape in BODY_FIELDS]
        kinds = {mujoco.mjtJoint.mjJNT_HINGE: "hinge", mujoco.mjtJoint.mjJNT_SLIDE: "slide"}
        #: (attribute under self.robot, joint name, "hinge" | "slide", the body it moves)
        self.joints: list[tuple[str, str, str, str]] = []
        self._joints: list[tuple[int, int]] = []  # (qpos address, dof address)
        used = set(self.bodies)
        for joint in range(model.njnt):
            kind = kinds.get(model.jnt_type[joint])
            name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, joint)
            if kind is None or not name or model.jnt_bodyid[joint] in scene_ids or not _usable(name):
                continue  # a free joint is its body's pose; scene joints move the scene
            attribute = f"{name}_joint" if name in used else name  # HalfCheetah names bodies and joints alike
            used.add(attribute)
            self.joints.append((attribute, name, kind, body_name[model.jnt_bodyid[joint]]))
            self.fields += [(f"robot.{attribute}.{a}", ()) for a in (HINGE_FIELDS if kind == "hinge" else SLIDE_FIELDS)]
            self._joints.append((int(model.jnt_qposadr[joint]), int(model.jnt_dofadr[joint])))
        #: (the name a program sees: "goal_position" | "obj1", body name), in field order
        self.scene = sorted((scene[body_name[i]], body_name[i]) for i in scene_ids)
        ids = {body_name[i]: i for i in scene_ids}
        self._scene = [(target, ids[name]) for target, name in self.scene]
        for target, _ in self.scene:
            if target == "goal_position":
                self.fields.append(("goal_position", (3,)))
            else:
                self.fields += [(f"{target}.position", (3,)), (f"{target}.quaternion", (4,))]
        #: the joint each action component drives
        self.actuated = [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, int(model.actuator_trnid[a, 0]))
                         for a in range(model.nu)]  # fmt: skip
        self._body_ids = np.array(self._bodies, dtype=int)
        self._mujoco, self._xbody = mujoco, mujoco.mjtObj.mjOBJ_XBODY
        self._qpos_index = np.array([q for q, _ in self._joints], dtype=int)
        self._qvel_index = np.array([v for _, v in self._joints], dtype=int)
        self._nq, self._nv = int(model.nq), int(model.nv)
        self._dt = float(env.dt)  # a property recomputed on every read
        self._rows = np.arange(len(self._bodies))  # the bodies whose state is computed
        self._skipped = np.zeros(0, dtype=int)

    def restrict(self, attributes: frozenset[str] | set[str]) -> None:
        # Body kinematics are most of the cost; a program reaches a body only by its name.
        keep = [k for k, name in enumerate(self.bodies) if name in attributes]
        self._rows = np.array(keep, dtype=int)
        self._skipped = np.array([k for k in range(len(self.bodies)) if k not in keep], dtype=int)

    def body_velocities(self, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(linear, angular) world-frame velocities of the robot's bodies (``rows`` of
        :attr:`bodies`, default all) at their origins: MuJoCo's ``mj_objectVelocity`` of
        each body's frame (``mjOBJ_XBODY``; ``mjOBJ_BODY`` would give its centre of mass)."""
        ids = self._body_ids if rows is None else self._body_ids[rows]
        velocities = np.empty((len(ids), 6))  # (angular, linear) per body
        for k, body in enumerate(ids):
            self._mujoco.mj_objectVelocity(self.env.model, self.env.data, self._xbody, int(body), velocities[k], 0)
        return velocities[:, 3:], velocities[:, :3]

    def fill(self, out: np.ndarray) -> None:
        data = self.env.data
        out[0] = self._dt
        i = 1 + self._nq + self._nv
        out[1 : 1 + self._nq] = data.qpos
        out[1 + self._nq : i] = data.qvel
        if self._bodies:
            block = out[i : i + 19 * len(self._bodies)].reshape(len(self._bodies), 19)
            if len(self._rows):
                ids = self._body_ids[self._rows]
                linear, angular = self.body_velocities(self._rows)
                positions = data.xpos[ids]
                # One row per body in BODY_FIELDS order: position, quaternion, velocity,
                # angular velocity, then the position and velocity components again.
                block[self._rows] = np.concatenate([positions, data.xquat[ids], linear, angular, positions, linear], axis=1)
            if len(self._skipped):
                block[self._skipped] = np.nan
            i += block.size
        joints = 2 * len(self._joints)
        out[i : i + joints : 2] = data.qpos[self._qpos_index]
        out[i + 1 : i + joints : 2] = data.qvel[self._qvel_index]
        i += joints
        for target, body in self._scene:
            out[i : i + 3] = data.xpos[body]
            i += 3
            if target != "goal_position":
                out[i : i + 4] = data.xquat[body]
                i += 4


def _usable(name: str) -> bool:
    return name.isidentifier() and not keyword.iskeyword(name) and not name.startswith("_")


def task_of(base: Any) -> str:
    """Gymnasium's id of a bare MuJoCo env from its class: ``HopperEnv`` -> ``Hopper-v5``."""
    name = type(base).__name__
    return f"{name[:-3] if name.endswith('Env') else name}-v5"


# ----------------------------------------------------------------------------- dispatch


class UnsupportedEnvError(TypeError):
    """Reward programs need a state description; this env has none."""


def state_source(env: gym.Env) -> StateSource:
    """The state source of a bare env made by :func:`embodied.make` (Meta-World or MuJoCo)."""
    base = env.unwrapped
    from embodied.envs.metaworld import MetaWorldEnv

    if isinstance(base, MetaWorldEnv):
        return MetaWorldState(base)
    try:
        from gymnasium.envs.mujoco.mujoco_env import MujocoEnv
    except ImportError:  # mujoco not installed
        MujocoEnv = None  # type: ignore[assignment,misc]
    if MujocoEnv is not None and isinstance(base, MujocoEnv):
        # The wrapper is built inside the suite's factory, before Gymnasium sets a spec.
        return LocomotionState(base, task=task_of(base))
    raise UnsupportedEnvError(
        f"reward programs need a state description, which exists for metaworld and mujoco envs; "
        f"got {type(base).__name__}"
    )
