"""Text2Reward: env descriptions, the reward-code wrapper, `reward check`, and the sandbox
against hostile and broken programs (each refused or contained, with a clear message)."""

import re
import textwrap
import time
import warnings

import numpy as np
import pytest

import embodied
from embodied.cli import main
from embodied.envs import EnvOptionError
from embodied.envs.reward import RewardCode, RewardCodeWarning
from embodied.rewards.text2reward import check_program, describe_env, envs_root
from embodied.rewards.text2reward.describe import described_names, generate_description
from embodied.rewards.text2reward.sandbox import (
    ProgramRejected,
    RewardProgramError,
    Sandbox,
    build_views,
    check_source,
)
from embodied.rewards.text2reward.state import MetaWorldState, state_source

METAWORLD = embodied.env_ids("metaworld")
MUJOCO = embodied.env_ids("mujoco")
LIBRARY = sorted((envs_root() / "text2reward" / "library").glob("*/*.py"))
META_PRIVATE = MetaWorldState.allowed_private


def program(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


# ----------------------------------------------------------------------------- descriptions


def _view_names(view, prefix=""):
    """Every name reachable from a state view, as dotted paths (methods end in "()")."""
    names = {}
    for name in (n for n in dir(type(view)) if not n.startswith("_") or n in META_PRIVATE):
        value = getattr(view, name)
        path = f"{prefix}{name}"
        if isinstance(value, np.ndarray):
            names[path] = value.shape
        elif isinstance(value, float):
            names[path] = ()
        elif callable(value) and not isinstance(value, type):
            names[path + "()"] = np.asarray(value()).shape
        else:
            names.update(_view_names(value, path + "."))
    return names


@pytest.mark.parametrize("env_id", METAWORLD + MUJOCO)
def test_description_names_exist_at_run_time_with_their_shapes(env_id):
    env = embodied.make(env_id, render_mode=None)
    text = describe_env(env_id)
    assert text + "\n" == generate_description(env_id, env), f"{env_id}: description is stale; regenerate it"
    assert "# obj1 = " in text and "obj2 = " in text  # each says what its objects are
    env.action_space.seed(0)
    for _ in range(3):
        env.step(env.action_space.sample())
    source = state_source(env)
    values = source.values()
    view = build_views(source.fields, values)
    described = described_names(text)
    exposed = _view_names(view)
    # Exactly the described names, with the documented shapes: nothing more is reachable.
    assert exposed == {name: tuple(shape) for name, shape in described.items()}
    assert np.isfinite(values).all()
    if env_id.startswith("metaworld/"):
        sim = env.unwrapped.sim
        np.testing.assert_allclose(view.goal_position, sim._get_pos_goal())
        np.testing.assert_allclose(view.env._get_pos_goal(), sim._get_pos_goal())
        np.testing.assert_allclose(view.env._get_pos_objects(), sim._get_pos_objects(), atol=1e-9)
        np.testing.assert_allclose(view.env._get_quat_objects(), sim._get_quat_objects(), atol=1e-9)
        np.testing.assert_allclose(view.env.tcp_center, sim.tcp_center)
        np.testing.assert_allclose(view.robot.ee_position, env.unwrapped.state[:3])
        assert view.robot.gripper_openness == env.unwrapped.state[3]
    else:
        np.testing.assert_allclose(view.robot.qpos, env.unwrapped.data.qpos)
    env.close()


def test_state_views_are_read_only_and_name_what_exists():
    env = embodied.make("metaworld/push-v3", render_mode=None)
    env.reset(seed=0)
    source = state_source(env)
    view = build_views(source.fields, source.values())
    with pytest.raises(AttributeError, match="read-only"):
        view.robot.ee_position = np.zeros(3)
    with pytest.raises(AttributeError, match="has no attribute `sim`; it has: _get_pos_goal"):
        view.env.sim  # noqa: B018
    env.close()


# ----------------------------------------------------------------------------- the wrapper


def test_reward_code_replaces_the_reward_keeps_env_reward_and_success():
    push = envs_root() / "text2reward" / "library" / "metaworld" / "push-v3.py"
    plain = embodied.make("metaworld/push-v3", render_mode=None)
    coded = embodied.make("metaworld/push-v3", render_mode=None, reward_code=str(push))
    repeated = embodied.make("metaworld/push-v3", render_mode=None, reward_code=push.read_text(), action_repeat=2)
    obs_a, _ = plain.reset(seed=3)
    obs_b, info = coded.reset(seed=3)
    repeated.reset(seed=3)
    np.testing.assert_array_equal(obs_a, obs_b)
    assert info["env_reward"] == 0.0 and info["reward_code_errors"] == 0
    act = embodied.envs.scripted_policy(plain)
    rewards = []
    for _ in range(40):
        action = act(obs_a)
        obs_a, reward_a, _, _, info_a = plain.step(action)
        obs_b, reward_b, _, _, info_b = coded.step(action)
        np.testing.assert_array_equal(obs_a, obs_b)
        assert info_b["env_reward"] == reward_a and info_b["success"] == info_a["success"]
        assert info_b["reward_code_errors"] == 0
        rewards.append(reward_b)
    assert len(set(rewards)) > 1 and rewards[-1] > rewards[0]  # the expert approaches the puck
    # Action repeat sums the program's rewards (and the env's own) over the repeated steps.
    single = embodied.make("metaworld/push-v3", render_mode=None, reward_code=str(push))
    single.reset(seed=3)
    action = np.array([0.5, 0.2, -0.3, 1.0], np.float32)
    _, summed, _, _, info_r = repeated.step(action)
    parts = [single.step(action) for _ in range(2)]
    assert summed == pytest.approx(parts[0][1] + parts[1][1])
    assert info_r["env_reward"] == pytest.approx(parts[0][4]["env_reward"] + parts[1][4]["env_reward"])
    for env in (plain, coded, repeated, single):
        env.close()


def test_a_failing_program_gets_the_fallback_counted_and_warned_once():
    source = program(
        """
        def compute_dense_reward(self, action, obs):
            if action[0] > 0:
                return 1.0 / 0.0
            return 2.0
        """
    )
    env = embodied.make("mujoco/Hopper-v5", render_mode=None, reward_code=source, reward_code_options={"fallback": -5.0})
    env.reset(seed=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rewards = [env.step(np.full(3, sign, np.float32))[1:5:3] for sign in (-0.5, 0.5, 0.5, -0.5)]
    assert [r for r, _ in rewards] == [2.0, -5.0, -5.0, 2.0]
    assert [info["reward_code_errors"] for _, info in rewards] == [0, 1, 2, 2]
    messages = [str(w.message) for w in caught if issubclass(w.category, RewardCodeWarning)]
    assert len(messages) == 1 and "ZeroDivisionError" in messages[0] and "line 3" in messages[0]
    env.close()


def test_reward_code_options_are_checked():
    with pytest.raises(EnvOptionError, match="unknown reward_code_options 'fallbak'"):
        embodied.make("mujoco/Hopper-v5", reward_code="x.py", reward_code_options={"fallbak": 0})
    with pytest.raises(FileNotFoundError, match="no such file"):
        embodied.make("mujoco/Hopper-v5", reward_code="missing-program.py")
    with pytest.raises(EnvOptionError, match="state description"):
        embodied.make("nav/empty-5x5-v0" if "nav/empty-5x5-v0" in embodied.env_ids() else embodied.env_ids("nav")[0],
                      reward_code="def compute_dense_reward(self, action, obs):\n    return 0.0\n")  # fmt: skip
    with pytest.raises(ProgramRejected, match="rule: import"):
        embodied.make("mujoco/Hopper-v5", reward_code="import os\ndef compute_dense_reward(self, action, obs):\n    return 0.0\n")


# ----------------------------------------------------------------------------- reward check


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_library_programs_pass_the_check(path):
    report = check_program(f"{path.parent.name}/{path.stem}", path.read_text(), steps=100)
    assert report.ok, report.message
    assert report.steps == 100 and report.reward_std > 0
    if path.parent.name == "metaworld":  # shaped: the expert earns more than random actions
        assert report.by_policy["scripted"]["mean reward"] > report.by_policy["random"]["mean reward"]


def test_library_covers_the_tasks_the_issue_names():
    names = {f"{p.parent.name}/{p.stem}" for p in LIBRARY}
    for task in ("reach", "push", "drawer-open", "button-press", "pick-place", "door-open", "window-open"):
        assert f"metaworld/{task}-v3" in names
    assert any(name.startswith("mujoco/") for name in names)


# Written in the style of the published Text2Reward Meta-World programs (numpy, parts of
# scipy.spatial, `self.env._get_pos_goal()`, obs slices, `np` used without an import).
PUBLISHED_STYLE = {
    "general": """
        import numpy as np
        from scipy.spatial.distance import cdist

        def compute_dense_reward(self, action, obs) -> float:
            reach = np.linalg.norm(self.robot.ee_position - self.obj1.position)
            goal_gap = np.linalg.norm(self.obj1.position - self.goal_position)
            aligned = cdist(self.obj1.position.reshape(1, -1), self.goal_position.reshape(1, -1), 'cosine') < 0.01
            reward = -reach - goal_gap - 0.1 * np.square(action).sum()
            if aligned:
                reward += 10.0
            return reward
        """,
    "specific": """
        import numpy as np
        from scipy.spatial.transform import Rotation as R
        from scipy.spatial import distance

        def compute_dense_reward(self, action: np.ndarray, obs) -> float:
            \"\"\"Slices of obs and the env's own goal accessor.\"\"\"
            gap = np.linalg.norm(obs[:3] - obs[4:7])
            goal_gap = np.linalg.norm(obs[4:7] - self.env._get_pos_goal())
            squeeze = -abs(obs[3] + 1)
            return -gap - goal_gap + 0.5 * squeeze - 0.01 * np.linalg.norm(action)
        """,
    "no-import": """
        def compute_dense_reward(self, action, obs) -> float:
            w1, w2 = 1.0, 0.5
            gap = np.clip(np.linalg.norm(self.robot.ee_position - self.obj1.position), -1, 1)
            closed = 1.0 if self.robot.gripper_openness < 0.5 else 0.0
            return -w1 * gap + w2 * closed - 0.001 * np.sum(np.square(action))
        """,
    "meta-world-accessors": """
        import math
        import numpy as np

        def compute_dense_reward(self, action, obs):
            tcp = self.env.tcp_center
            objects = self.env._get_pos_objects()
            moved = np.linalg.norm(tcp - self.env.init_tcp)
            quaternion = self.env._get_quat_objects()
            return -math.dist(tcp, objects[:3]) + 0.1 * moved + 0.0 * quaternion.sum()
        """,
    "rotation": """
        import numpy as np
        from scipy.spatial.transform import Rotation as R
        from scipy.spatial import distance

        def tilt(quaternion_wxyz):
            w, x, y, z = quaternion_wxyz
            return R.from_quat([x, y, z, w]).magnitude()

        def compute_dense_reward(self, action, obs) -> float:
            reach = distance.euclidean(self.robot.ee_position, self.obj1.position)
            return -reach - 0.1 * tilt(self.obj1.quaternion)
        """,
}


@pytest.mark.parametrize("name", sorted(PUBLISHED_STYLE))
def test_published_style_programs_run_unmodified(name):
    report = check_program("metaworld/drawer-open-v3", program(PUBLISHED_STYLE[name]), steps=20)
    assert report.ok, report.message


def test_the_papers_locomotion_signature_runs_and_only_named_bodies_are_computed():
    source = program(
        """
        def compute_dense_reward(self, action) -> float:
            return self.robot.torso.velocity_x - 1e-3 * np.square(action).sum()
        """
    )
    report = check_program("mujoco/Hopper-v5", source, steps=20)
    assert report.ok, report.message
    env = embodied.make("mujoco/Hopper-v5", render_mode=None, reward_code=source)
    wrapper = env
    while not isinstance(wrapper, RewardCode):
        wrapper = wrapper.env
    env.reset(seed=0)
    env.step(env.action_space.sample())
    view = build_views(wrapper.state.fields, wrapper.sandbox.values)
    assert np.isfinite(view.robot.torso.position).all() and np.isfinite(view.robot.qpos).all()
    assert np.isnan(view.robot.thigh.position).all()  # never named by the program: not computed
    env.close()


def test_cli_reward_check(tmp_path, capsys):
    good = envs_root() / "text2reward" / "library" / "mujoco" / "Hopper-v5.py"
    assert main(["reward", "check", "mujoco/Hopper-v5", str(good), "--steps", "30"]) == 0
    assert "OK mujoco/Hopper-v5: 30 steps; reward mean" in capsys.readouterr().out
    bad = tmp_path / "bad.py"
    bad.write_text("def compute_dense_reward(self, action, obs):\n    x = self.robot.torso.position_z\n    return x / 0.0\n")
    assert main(["reward", "check", "mujoco/Hopper-v5", str(bad), "--steps", "30"]) == 1
    error = capsys.readouterr().err
    assert "FAILED mujoco/Hopper-v5 (line 3)" in error and "ZeroDivisionError" in error and str(bad) in error
    assert main(["reward", "check", "mujoco/Hopper-v5", str(tmp_path / "missing.py")]) == 2


# ----------------------------------------------------------------------------- hostile programs

BODY = "def compute_dense_reward(self, action, obs):\n"

# (name, program, the rule that refuses it, the line it names)
REFUSED = [
    ("import os", "import os\n" + BODY + "    return 0.0\n", "import", 1),
    ("import subprocess", BODY + "    import subprocess\n    return 0.0\n", "import", 2),
    ("from socket", "from socket import socket\n" + BODY + "    return 0.0\n", "import", 1),
    ("import numpy internals", "import numpy.lib.format\n" + BODY + "    return 0.0\n", "import", 1),
    ("scipy beyond spatial", "from scipy import io\n" + BODY + "    return 0.0\n", "import", 1),
    ("star import", "from numpy import *\n" + BODY + "    return 0.0\n", "import", 1),
    ("relative import", "from . import x\n" + BODY + "    return 0.0\n", "import", 1),
    ("open", BODY + "    return float(open('/etc/passwd').read(1))\n", "builtin", 2),
    ("__import__", BODY + "    return __import__('os').system('true')\n", "dunder", 2),
    ("eval", BODY + "    return eval('1')\n", "builtin", 2),
    ("exec", BODY + "    exec('x = 1')\n    return 0.0\n", "builtin", 2),
    ("compile", BODY + "    compile('1', 'f', 'eval')\n    return 0.0\n", "builtin", 2),
    ("globals", BODY + "    return len(globals())\n", "builtin", 2),
    ("getattr np.load", BODY + "    getattr(np, 'load')\n    return 0.0\n", "builtin", 2),
    ("type", BODY + "    return type(action)\n", "builtin", 2),
    ("dunder walk", BODY + "    return ().__class__.__bases__[0].__subclasses__()\n", "dunder", 2),
    ("action.__class__", BODY + "    return action.__class__\n", "dunder", 2),
    ("np.__dict__", BODY + "    return np.__dict__\n", "dunder", 2),
    ("np.load", BODY + "    np.load('x.npy')\n    return 0.0\n", "attribute", 2),
    ("np.save", BODY + "    np.save('x.npy', obs)\n    return 0.0\n", "attribute", 2),
    ("np.fromfile", BODY + "    np.fromfile('/etc/passwd')\n    return 0.0\n", "attribute", 2),
    ("array.tofile", BODY + "    obs.tofile('/tmp/leak')\n    return 0.0\n", "attribute", 2),
    ("np.ctypeslib", BODY + "    return np.ctypeslib\n", "attribute", 2),
    ("np.lib", "import numpy\n" + BODY + "    return numpy.lib\n", "attribute", 3),
    ("np.memmap", BODY + "    return np.memmap\n", "attribute", 2),
    ("np.random is not offered", BODY + "    return np.random.rand()\n", "module-attribute", 2),
    ("linalg beyond the list", BODY + "    return np.linalg.matrix_power(obs, 2)\n", "module-attribute", 2),
    ("frame walk", BODY + "    g = (x for x in [])\n    return g.gi_frame.f_back.f_globals\n", "attribute", 3),
    ("str.format", BODY + "    return '{0.real}'.format(1.0)\n", "attribute", 2),
    ("private simulator", BODY + "    return self.env._last_stable_obs[0]\n", "private-attribute", 2),
    ("private attribute", BODY + "    return obs._data\n", "private-attribute", 2),
    ("class", "class Reward:\n    pass\n" + BODY + "    return 0.0\n", "class", 1),
    ("global", "total = 0\n" + BODY + "    global total\n    return 0.0\n", "global", 3),
    ("generator", "def steps():\n    yield 1\n" + BODY + "    return 0.0\n", "generator", 2),
    ("decorator", "@staticmethod\n" + BODY + "    return 0.0\n", "decorator", 1),
    ("bare except", BODY + "    try:\n        return 1.0\n    except:\n        return 0.0\n", "except", 4),
    ("except BaseException", BODY + "    try:\n        return 1.0\n    except (ValueError, BaseException):\n"
     "        return 0.0\n", "except", 4),  # fmt: skip
    ("top-level code", BODY + "    return 0.0\nprint('hi')\n", "top-level", 3),
    ("main guard", BODY + "    return 0.0\nif __name__ == '__main__':\n    pass\n", "top-level", 3),
    ("no entry point", "def reward(self, action, obs):\n    return 0.0\n", "entry-point", 0),
    ("two entry points", BODY + "    return 0.0\n" + BODY + "    return 1.0\n", "entry-point", 3),
    ("wrong signature: one argument", "def compute_dense_reward(obs):\n    return 0.0\n", "entry-point", 1),
    ("wrong signature: four arguments", "def compute_dense_reward(self, action, obs, info):\n    return 0.0\n", "entry-point", 1),
    ("async", "async def compute_dense_reward(self, action, obs):\n    return 0.0\n", "generator", 1),
    ("syntax error", BODY + "    return (1 +\n", "syntax", 2),
    ("compile error", BODY + "    break\n", "syntax", 2),
    ("not text", None, "source", 0),
]


@pytest.mark.parametrize("name,source,rule,line", REFUSED, ids=[case[0] for case in REFUSED])
def test_hostile_and_broken_programs_are_refused_statically(name, source, rule, line):
    with pytest.raises(ProgramRejected) as refused:
        check_source(source, "prog.py", META_PRIVATE)
    assert refused.value.rule == rule, str(refused.value)
    if line:
        assert refused.value.line == line and f"prog.py:{line}:" in str(refused.value)
    assert f"[rule: {rule}]" in str(refused.value)


FIELDS = [("robot.ee_position", (3,)), ("robot.gripper_openness", ()), ("goal_position", (3,)), ("env._get_pos_goal()", (3,))]


def run_once(source, timeout_s=1.0, memory_mb=256):
    sandbox = Sandbox(source, FIELDS, (4,), (39,), filename="prog.py", timeout_s=timeout_s, memory_mb=memory_mb,
                      allowed_private=["_get_pos_goal"])  # fmt: skip
    sandbox.values[:] = np.linspace(-1, 1, sandbox.values.size)
    try:
        return sandbox.call(), sandbox
    except RewardProgramError as error:
        return error, sandbox


# (name, program, error kind, words the message must contain, the line it names)
CONTAINED = [
    ("infinite loop", BODY + "    while True:\n        pass\n", "timeout", "time limit", 2),
    ("slow loop", BODY + "    total = 0\n    for i in range(10**12):\n        total += i\n    return total\n",
     "timeout", "time limit", 4),  # fmt: skip
    ("list bomb", BODY + "    x = [0] * 10**10\n    return 0.0\n", "exception", "MemoryError", 2),
    ("array bomb", BODY + "    x = np.ones((10**6, 10**6))\n    return 0.0\n", "exception", "MemoryError", 2),
    ("array under the limit of the machine, over the sandbox's", BODY + "    x = np.ones(10**9)\n    return 0.0\n",
     "exception", "MemoryError", 2),  # fmt: skip
    ("deep recursion", "def down(n):\n    return down(n + 1)\n" + BODY + "    return down(0)\n", "exception",
     "RecursionError", 2),  # fmt: skip
    ("nan", BODY + "    gap = self.robot.gripper_openness * 0.0\n    ratio = np.log(gap) * 0.0\n    return ratio\n",
     "non-finite", "returned nan", 4),  # fmt: skip
    ("inf", BODY + "    return float('inf')\n", "non-finite", "returned inf", 2),
    ("string", BODY + "    return 'high'\n", "bad-return", "returned str", 2),
    ("None", BODY + "    reward = 1.0\n", "bad-return", "returned NoneType", 2),
    ("array of three", BODY + "    return obs[:3]\n", "bad-return", "shape (3,)", 2),
    ("exception", BODY + "    return self.robot.sim\n", "exception", "has no attribute `sim`", 2),
    ("failing top level", BODY + "    return 0.0\nx = [1][5]\n", "load", "IndexError", 3),
]


@pytest.mark.parametrize("name,source,kind,words,line", CONTAINED, ids=[c[0] for c in CONTAINED])
def test_hostile_and_broken_programs_are_contained_at_run_time(name, source, kind, words, line):
    started = time.monotonic()
    error, sandbox = run_once(source, timeout_s=0.5)
    assert isinstance(error, RewardProgramError), f"{name}: returned {error!r}"
    assert error.kind == kind and words in error.message, error.message
    assert error.line == line and error.filename == "prog.py"
    if line:
        assert f"line {line}" in error.message
    assert time.monotonic() - started < 15
    sandbox.close()


def test_a_runaway_top_level_is_refused_when_loaded_and_never_retried():
    error, sandbox = run_once("TABLE = sum(i for i in range(10**12))\n" + BODY + "    return 0.0\n", timeout_s=0.3)
    assert error.kind == "load" and "time limit" in error.message and error.line == 1, error.message
    with pytest.raises(RewardProgramError, match="time limit"):
        sandbox.call()
    assert sandbox.starts == 1


def test_a_call_stuck_in_c_code_is_killed_and_the_sandbox_restarts():
    # A big matrix product runs inside one C call (BLAS), where the child's alarm cannot
    # interrupt it: the parent gets no answer in time and kills the child.
    source = BODY + "    if action[0] < 0:\n        big = np.empty((5000, 5000))\n        return float((big @ big)[0, 0])\n    return 1.0\n"
    sandbox = Sandbox(source, FIELDS, (4,), (39,), filename="prog.py", timeout_s=0.3, memory_mb=700)
    sandbox.field("action")[:] = -1.0
    started = time.monotonic()
    with pytest.raises(RewardProgramError, match="killed and will be restarted") as stuck:
        sandbox.call()
    assert stuck.value.kind == "timeout" and time.monotonic() - started < 10
    sandbox.field("action")[:] = 1.0
    assert sandbox.call() == 1.0 and sandbox.starts == 2
    sandbox.close()


def test_a_crashed_sandbox_is_reported_restarted_and_given_up_on():
    sandbox = Sandbox(BODY + "    return 3.0\n", FIELDS, (4,), (39,), max_restarts=2)
    assert sandbox.call() == 3.0
    sandbox._process.kill()  # as if the program had crashed the interpreter
    with pytest.raises(RewardProgramError, match="died during the call") as crashed:
        sandbox.call()
    assert crashed.value.kind == "crash" and "SIGKILL" in crashed.value.message
    assert sandbox.call() == 3.0 and sandbox.starts == 2  # restarted
    start = sandbox._start

    def start_and_crash():  # a child that dies at every call
        start()
        sandbox._process.kill()
        sandbox._process.wait()

    sandbox._start = start_and_crash
    sandbox._stop()
    for _ in range(2):
        with pytest.raises(RewardProgramError, match="died"):
            sandbox.call()
    with pytest.raises(RewardProgramError, match="given up after 2 failures in a row"):
        sandbox.call()
    sandbox.close()


def test_the_sandbox_cannot_write_files_or_reach_the_environment(tmp_path, monkeypatch):
    # Even with the static check out of the way, the child's limits hold: the process
    # has no file descriptors to spare and no environment variables to read.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    sandbox = Sandbox(BODY + "    return 0.0\n", FIELDS, (4,), (39,))
    sandbox.call()
    pid = sandbox._process.pid
    with open(f"/proc/{pid}/environ", "rb") as environ:
        assert b"sk-secret" not in environ.read()
    with open(f"/proc/{pid}/limits") as limits:
        text = limits.read()
    assert re.search(r"Max file size\s+0\s+0", text) and re.search(r"Max open files\s+5\s+5", text), text
    sandbox.close()
