"""The compact Pythonic environment descriptions an LLM reads (Text2Reward's abstraction).

One text file per task, ``envs/text2reward/<suite>/<task>.txt``: a few comment lines (the
task, what ``obj1``/``obj2``/the goal are, the action space, what ``obs`` holds), then
class-like declarations in the paper's style::

    class BaseEnv(gym.Env):
        self.robot : Robot # the Sawyer arm with a two-finger gripper
        self.obj1 : RigidObject # the puck
        self.goal_position : np.ndarray[(3,)] # where the puck should end up
    ...

The files are generated, from the env's own state source (:mod:`.state`: the names and
shapes a reward program sees at run time) and, for Meta-World, a hand-written line per
task saying what its objects and goal are (:data:`METAWORLD_TASKS`). They parse as Python
(``self.x : T`` is an annotated assignment), which is how :func:`described_names` reads
them back for the test that every described name exists with its documented shape.

    python -m embodied.rewards.text2reward.describe            # (re)write every file
    python -m embodied.rewards.text2reward.describe --check    # exit 1 if any file is stale
    python -m embodied.rewards.text2reward.describe mujoco/Hopper-v5   # print one

Where the files live: ``envs/`` at the top of the repository (the DESIGN layout). A
wheel carries them as ``embodied/_envs/`` (``setup.py`` copies them at build time);
:func:`envs_root` finds whichever exists.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

#: What each Meta-World task is, in one line each: (the task, obj1, obj2 or None, the goal).
#: Written from the Meta-World v3 sources (each env's ``_get_pos_objects`` and ``_target_pos``).
METAWORLD_TASKS: dict[str, tuple[str, str, str | None, str]] = {
    "assembly-v3": ("pick up the round nut by its handle and put it down over the peg",
                    "a point on the round nut's handle", None, "where the nut's handle point is when the nut sits on the peg"),
    "basketball-v3": ("pick up the ball and drop it into the basket", "the ball", None, "a point in the basket's hoop"),
    "bin-picking-v3": ("pick the cube out of the left bin and place it in the right bin", "the cube", None,
                       "the target position in the right bin"),
    "box-close-v3": ("pick up the box's lid and put it on the box", "the lid (by its handle)", None,
                     "where the lid sits when the box is closed"),
    "button-press-topdown-v3": ("press the button down from above", "the top of the button", None,
                                "where the top of the button is when fully pressed"),
    "button-press-topdown-wall-v3": ("press the button down from above, with a short wall in front of it",
                                     "the top of the button", None, "where the top of the button is when fully pressed"),
    "button-press-v3": ("press the button in (along y, away from the robot)", "the front of the button", None,
                        "where the front of the button is when fully pressed"),
    "button-press-wall-v3": ("press the button in (along y), reaching around a short wall", "the front of the button",
                             None, "where the front of the button is when fully pressed"),
    "coffee-button-v3": ("press the button on the coffee machine", "the button on the coffee machine", None,
                         "where the button is when fully pressed"),
    "coffee-pull-v3": ("pull the mug out from under the coffee machine", "the mug", None, "where the mug should end up"),
    "coffee-push-v3": ("push the mug under the coffee machine's spout", "the mug", None, "the spot under the spout"),
    "dial-turn-v3": ("rotate the dial by a quarter turn", "a point on the dial's rim (it moves as the dial turns)", None,
                     "where that rim point is when the dial has turned"),
    "disassemble-v3": ("pick the round nut up off the peg", "a point on the round nut's handle", None,
                       "a point above the peg, clear of it"),
    "door-close-v3": ("close the open door by pushing its handle", "the door handle", None,
                      "where the handle is when the door is closed"),
    "door-lock-v3": ("lock the door by turning the lock's lever down", "the lock's lever", None,
                     "where the lever is when the door is locked"),
    "door-open-v3": ("open the door (on a revolving joint) by pulling its handle", "the door handle", None,
                     "where the handle is when the door is open"),
    "door-unlock-v3": ("unlock the door by turning the lock's lever", "the lock's lever", None,
                       "where the lever is when the door is unlocked"),
    "hand-insert-v3": ("push the block into the hole in the table", "the block", None, "the hole"),
    "drawer-close-v3": ("push the open drawer closed", "the drawer handle", None, "where the handle is when the drawer is closed"),
    "drawer-open-v3": ("pull the drawer open by its handle", "the drawer handle", None, "where the handle is when the drawer is open"),
    "faucet-open-v3": ("turn the faucet handle to open it (rotating it to the left)", "the end of the faucet handle", None,
                       "where the handle's end is when the faucet is open"),
    "faucet-close-v3": ("turn the faucet handle to close it (rotating it to the right)", "the end of the faucet handle",
                        None, "where the handle's end is when the faucet is closed"),
    "hammer-v3": ("pick up the hammer and drive the nail into the wall with it", "the hammer", "the nail",
                  "where the hammer's head should strike: the nail fully driven in"),
    "handle-press-side-v3": ("press the handle down, approaching from the side", "the end of the handle", None,
                             "where the handle's end is when pressed down"),
    "handle-press-v3": ("press the handle down", "the end of the handle", None, "where the handle's end is when pressed down"),
    "handle-pull-side-v3": ("pull the handle up, approaching from the side", "the middle of the handle", None,
                            "where the handle is when pulled up"),
    "handle-pull-v3": ("pull the handle up", "the end of the handle", None, "where the handle's end is when pulled up"),
    "lever-pull-v3": ("pull the lever up", "the end of the lever", None, "where the lever's end is when pulled up"),
    "pick-place-wall-v3": ("pick up the puck and place it at the goal behind a wall", "the puck", None,
                           "where the puck should be placed (behind the wall, above the table)"),
    "pick-out-of-hole-v3": ("pick the peg up out of the hole", "the peg", None, "a point above the hole"),
    "pick-place-v3": ("pick up the puck and place it at the goal", "the puck", None,
                      "where the puck should be placed (it may be in the air)"),
    "plate-slide-v3": ("slide the plate into the goal cage, away from the robot", "the plate", None, "inside the cage"),
    "plate-slide-side-v3": ("slide the plate sideways into the goal cage", "the plate", None, "inside the cage"),
    "plate-slide-back-v3": ("slide the plate out of the cage, back towards the robot", "the plate", None,
                            "where the plate should end up"),
    "plate-slide-back-side-v3": ("slide the plate sideways out of the cage", "the plate", None, "where the plate should end up"),
    "peg-insert-side-v3": ("pick up the peg and insert it sideways into the hole in the box", "the peg (where to grasp it)",
                           None, "the hole in the box"),
    "peg-unplug-side-v3": ("pull the peg sideways out of its socket", "the end of the peg", None,
                           "where the peg's end is once unplugged"),
    "soccer-v3": ("kick or push the ball into the goal", "the ball", None, "a point inside the goal"),
    "stick-push-v3": ("grasp the stick and use it to push the container to the goal", "the stick",
                      "the container (at the point the stick pushes)", "where the container should end up"),
    "stick-pull-v3": ("grasp the stick and use it to pull the container to the goal", "the stick",
                      "the container's handle (where the stick hooks in)", "where the container should end up"),
    "push-v3": ("push the puck to the goal", "the puck", None, "where the puck should end up, on the table"),
    "push-wall-v3": ("push the puck around a wall to the goal", "the puck", None, "where the puck should end up, behind the wall"),
    "push-back-v3": ("push the puck back towards the robot to the goal", "the puck", None, "where the puck should end up"),
    "reach-v3": ("move the end-effector to the goal position", "a puck on the table (not part of the task)", None,
                 "where the end-effector should go"),
    "reach-wall-v3": ("move the end-effector to the goal position, over a wall", "a puck on the table (not part of the task)",
                      None, "where the end-effector should go"),
    "shelf-place-v3": ("pick up the block and place it on the shelf", "the block", None, "the spot on the shelf"),
    "sweep-into-v3": ("sweep the puck across the table into the hole", "the puck", None, "the hole"),
    "sweep-v3": ("sweep the puck off the table's edge", "the puck", None, "a point past the table's edge"),
    "window-open-v3": ("slide the window open by its handle", "the window handle", None, "where the handle is when the window is open"),
    "window-close-v3": ("slide the window closed by its handle", "the window handle", None,
                        "where the handle is when the window is closed"),
}  # fmt: skip

#: One line per MuJoCo task: the robot, and which way is forward.
MUJOCO_TASKS: dict[str, str] = {
    "Ant-v5": "a 3D quadruped: a torso (a free body) with four legs of two links each. Positive x is forward; z is up.",
    "HalfCheetah-v5": "a 2D running robot (torso, back leg and front leg of three links each), moving in the x-z plane. "
                      "Positive x is forward; z is up.",
    "Hopper-v5": "a 2D one-legged robot (torso, thigh, leg, foot) moving in the x-z plane. Positive x is forward; z is up.",
    "Humanoid-v5": "a 3D bipedal humanoid (torso, waist, pelvis, two legs, two arms). Positive x is forward; z is up.",
    "HumanoidStandup-v5": "a 3D bipedal humanoid that starts lying on the ground. z is up.",
    "InvertedDoublePendulum-v5": "a cart on a rail (slide joint along x) carrying a pole with a second pole hinged on top. "
                                 "z is up; the poles are upright when their hinge angles are 0.",
    "InvertedPendulum-v5": "a cart on a rail (slide joint along x) carrying a pole on a hinge. z is up; "
                           "the pole is upright when the hinge angle is 0.",
    "Pusher-v5": "a 7-joint arm on a table, next to an object to be pushed to a target. "
                 "The arm's fingertip is body `tips_arm`. z is up.",
    "Reacher-v5": "a 2-link planar arm on a table, with a target its fingertip (body `fingertip`) can reach. z is up.",
    "Swimmer-v5": "a 2D three-segment swimmer in a viscous fluid, moving in the x-y plane. Positive x is forward.",
    "Walker2d-v5": "a 2D biped (torso, two legs of thigh, leg and foot) moving in the x-z plane. Positive x is forward; z is up.",
}  # fmt: skip

_AXES = "Units are meters; x runs across the table, y away from the robot's base, z up."


def envs_root() -> Path:
    """The ``envs/`` data directory: ``embodied/_envs`` in a wheel, else the checkout's ``envs/``."""
    package = Path(__file__).resolve().parents[2]  # .../embodied
    packaged = package / "_envs"
    return packaged if packaged.is_dir() else package.parent / "envs"


def description_path(env_id: str) -> Path:
    suite, _, task = env_id.partition("/")
    return envs_root() / "text2reward" / suite / f"{task}.txt"


def describe_env(env_id: str) -> str:
    """The description of ``env_id`` the LLM reads (the committed file's text)."""
    path = description_path(env_id)
    if not path.is_file():
        raise FileNotFoundError(
            f"no Text2Reward description for {env_id!r} (expected {path}); descriptions exist for metaworld "
            "and mujoco tasks; regenerate them with `python -m embodied.rewards.text2reward.describe`"
        )
    return path.read_text(encoding="utf-8").strip()


# ----------------------------------------------------------------------------- generation


def _line(name: str, kind: str, comment: str) -> str:
    return f"    self.{name} : {kind} # {comment}"


def _array(shape: tuple[int, ...]) -> str:
    return "float" if not shape else f"np.ndarray[({', '.join(str(n) for n in shape)},)]"


def _action_space(space: Any) -> str:
    low, high = float(space.low.min()), float(space.high.max())
    return f"`Box({low:g}, {high:g}, {tuple(space.shape)}, {space.dtype})`"


def generate_description(env_id: str, env: Any = None) -> str:
    """Build the description of ``env_id`` from the env itself (``env``: an already-made one)."""
    import embodied
    from embodied.rewards.text2reward.state import state_source

    own = env is None
    env = embodied.make(env_id, render_mode=None) if own else env
    try:
        env.reset(seed=0)
        source = state_source(env)
        suite, _, task = env_id.partition("/")
        if suite == "metaworld":
            return _metaworld(task, env, source)
        if suite == "mujoco":
            return _mujoco(task, env, source)
        raise ValueError(f"no Text2Reward description for {suite} envs; metaworld and mujoco have them")
    finally:
        if own:
            env.close()


def _metaworld(task: str, env: Any, source: Any) -> str:
    summary, obj1, obj2, goal = METAWORLD_TASKS[task]
    shapes = dict(source.fields)
    order = {"xyzw": "ordered (x, y, z, w)", "wxyz": "ordered (w, x, y, z)",
             "zeros": "all zeros: this task gives no orientation for it"}  # fmt: skip
    from embodied.rewards.text2reward.state import quaternion_order

    obj1_quaternion = order[quaternion_order(env.unwrapped.sim)]
    obj2_line = f"{obj2}; its quaternion is all zeros" if obj2 else "none in this task: its position and quaternion are all zeros"
    two = obj2 is not None
    lines = [
        f"# Meta-World {task}: {summary}.",
        f"# obj1 = {obj1}; obj2 = {obj2 or 'none'}; goal_position = {goal}.",
        f"# The action space is a normalized {_action_space(env.action_space)}: action[0:3] moves the end-effector "
        "by (dx, dy, dz) and action[3] drives the gripper (-1 opens it, +1 closes it).",
        "# compute_dense_reward(self, action, obs) receives that action and `obs`, the 39-float observation after it: "
        "obs[0:3] = self.robot.ee_position, obs[3] = self.robot.gripper_openness, obs[4:7] and obs[7:11] = "
        "self.obj1.position and .quaternion, obs[11:14] and obs[14:18] = self.obj2.position and .quaternion, "
        "obs[18:36] = the same 18 numbers one step earlier, obs[36:39] = the goal position (zeros if the goal is hidden).",
        f"# {_AXES}",
        "",
        "class BaseEnv(gym.Env):",
        _line("robot", "Robot", "the Sawyer arm with a two-finger gripper"),
        _line("obj1", "RigidObject", f"{obj1}; its quaternion is {obj1_quaternion}"),
        _line("obj2", "RigidObject", obj2_line),
        _line("goal_position", _array(shapes["goal_position"]), goal),
        _line("env", "MetaWorldEnv", "a few read-only accessors of the Meta-World simulator"),
        "",
        "class Robot:",
        _line("ee_position", _array(shapes["robot.ee_position"]), "the 3D position of the end-effector"),
        _line("gripper_openness", "float", "how far apart the two fingers are, normalized to [0, 1]: 0 = closed, 1 = fully open"),
        "",
        "class RigidObject:",
        _line("position", "np.ndarray[(3,)]", "the 3D position of the object"),
        _line("quaternion", "np.ndarray[(4,)]", "the orientation of the object (see obj1 and obj2 above for the order)"),
        "",
        "class MetaWorldEnv:",
        _line("tcp_center", _array(shapes["env.tcp_center"]), "the point midway between the two fingertips"),
        _line("init_tcp", _array(shapes["env.init_tcp"]), "tcp_center at the start of the episode"),
        f"    def _get_pos_goal(self) -> {_array(shapes['env._get_pos_goal()'])}: ... # the goal position, the same as self.goal_position",
        f"    def _get_pos_objects(self) -> {_array(shapes['env._get_pos_objects()'])}: ... # obj1's position"
        + (", then obj2's" if two else ""),
        f"    def _get_quat_objects(self) -> {_array(shapes['env._get_quat_objects()'])}: ... # obj1's quaternion"
        + (", then obj2's" if two else ""),
    ]  # fmt: skip
    return "\n".join(lines) + "\n"


def _mujoco(task: str, env: Any, source: Any) -> str:
    robot = task.split("-")[0]
    shapes = dict(source.fields)
    bare = env.unwrapped
    actions = ", ".join(f"action[{i}] -> {name}" for i, name in enumerate(source.actuated))
    scene = dict(source.scene)  # "goal_position" | "obj1" -> body
    lines = [
        f"# MuJoCo {task}: {MUJOCO_TASKS[task]}",
        f"# obj1 = {'the ' + scene['obj1'] + ' body' if 'obj1' in scene else 'none'}; obj2 = none; "
        f"goal_position = {'body ' + repr(scene['goal_position']) + ' (the target)' if 'goal_position' in scene else 'none'}.",
        f"# The action space is {_action_space(env.action_space)}: torques (scaled controls) on the joints: {actions}.",
        f"# compute_dense_reward(self, action, obs) receives that action and `obs`, Gymnasium's {tuple(env.observation_space.shape)} "
        "observation after it; `self` holds the same state by name.",
        "# Angles are in radians, lengths in meters, velocities per second; positions and velocities are in the world frame.",
        "",
        "class BaseEnv(gym.Env):",
        _line("robot", f"{robot}Robot", f"the {robot} robot"),
        _line("dt", "float", f"the time between two actions, in seconds ({bare.dt:g} s)"),
    ]  # fmt: skip
    if "obj1" in scene:
        lines.append(_line("obj1", "RigidObject", f"the {scene['obj1']} to move"))
    if "goal_position" in scene:
        lines.append(_line("goal_position", "np.ndarray[(3,)]", f"the 3D position of the target (body `{scene['goal_position']}`)"))
    lines += [
        "",
        f"class {robot}Robot:",
        _line("qpos", _array(shapes["robot.qpos"]), "all joint positions (generalized coordinates), in MuJoCo's order"),
        _line("qvel", _array(shapes["robot.qvel"]), "all joint velocities, in MuJoCo's order"),
    ]
    root = source.bodies[0] if source.bodies else None
    for name in source.bodies:
        lines.append(_line(name, "Body", f"body `{name}`" + (" (the root of the robot)" if name == root else "")))
    for attribute, name, kind, moved in source.joints:
        joint_class = "HingeJoint" if kind == "hinge" else "SlideJoint"
        lines.append(_line(attribute, joint_class, f"the {kind} joint `{name}`, which moves body `{moved}`"))
    lines += [
        "",
        "class Body:",
        _line("position", "np.ndarray[(3,)]", "the 3D position of the body's origin"),
        _line("quaternion", "np.ndarray[(4,)]", "its orientation, a quaternion ordered (w, x, y, z)"),
        _line("velocity", "np.ndarray[(3,)]", "its linear velocity"),
        _line("angular_velocity", "np.ndarray[(3,)]", "its angular velocity"),
        *[_line(f"position_{axis}", "float", f"position[{i}]") for i, axis in enumerate("xyz")],
        *[_line(f"velocity_{axis}", "float", f"velocity[{i}]") for i, axis in enumerate("xyz")],
    ]
    kinds = {kind for _, _, kind, _ in source.joints}
    if "hinge" in kinds:
        lines += ["", "class HingeJoint:", _line("angle", "float", "the joint angle"),
                  _line("angular_velocity", "float", "the joint's angular velocity")]  # fmt: skip
    if "slide" in kinds:
        lines += ["", "class SlideJoint:", _line("position", "float", "the joint's position along its axis"),
                  _line("velocity", "float", "the joint's velocity along its axis")]  # fmt: skip
    if "obj1" in scene:
        lines += ["", "class RigidObject:", _line("position", "np.ndarray[(3,)]", "the 3D position of the object"),
                  _line("quaternion", "np.ndarray[(4,)]", "its orientation, a quaternion ordered (w, x, y, z)")]  # fmt: skip
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- reading back


def described_names(text: str) -> dict[str, tuple[int, ...]]:
    """Every name a description declares, as the program reaches it from ``self``, with its
    shape: ``{"robot.ee_position": (3,), "robot.gripper_openness": (), "env._get_pos_goal()": (3,), ...}``."""
    tree = ast.parse(text)
    classes: dict[str, list[tuple[str, Any]]] = {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        members: list[tuple[str, Any]] = []
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Attribute):
                members.append((item.target.attr, item.annotation))
            elif isinstance(item, ast.FunctionDef):
                members.append((item.name + "()", item.returns))
        classes[node.name] = members
    if "BaseEnv" not in classes:
        raise ValueError("a description must declare `class BaseEnv`")
    names: dict[str, tuple[int, ...]] = {}

    def walk(prefix: str, class_name: str, depth: int) -> None:
        if depth > 5:
            raise ValueError(f"classes nest too deeply at {prefix!r}")
        for name, annotation in classes[class_name]:
            path = f"{prefix}{name}"
            kind = ast.unparse(annotation)
            if kind == "float":
                names[path] = ()
            elif kind.startswith("np.ndarray["):
                names[path] = tuple(ast.literal_eval(kind[len("np.ndarray[") : -1]))
            elif kind in classes:
                walk(path + ".", kind, depth + 1)
            else:
                raise ValueError(f"{path}: unknown type {kind!r}")

    walk("", "BaseEnv", 0)
    return names


# ----------------------------------------------------------------------------- command line


def all_env_ids() -> list[str]:
    import embodied

    return embodied.env_ids("metaworld") + embodied.env_ids("mujoco")


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m embodied.rewards.text2reward.describe", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    parser.add_argument("env_ids", nargs="*", metavar="ENV_ID", help="print these descriptions instead of writing all")
    parser.add_argument("--check", action="store_true", help="exit 1 if a committed description differs from the env")
    args = parser.parse_args(argv)
    if args.env_ids and not args.check:
        for env_id in args.env_ids:
            print(generate_description(env_id))
        return 0
    stale = []
    for env_id in args.env_ids or all_env_ids():
        text = generate_description(env_id)
        path = description_path(env_id)
        if path.is_file() and path.read_text(encoding="utf-8") == text:
            continue
        if args.check:
            stale.append(str(path))
        else:
            _write(path, text)
            print(f"wrote {path}")
    if stale:
        print("stale descriptions (regenerate them):\n  " + "\n  ".join(stale), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
