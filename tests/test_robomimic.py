"""robomimic/<Task> envs: Gymnasium API, observation layout, success, seeding, truncation,
pixels, and the error when the extra is missing.

Building a robosuite env takes about a second here, so each task's env is built once
per module and shared.
"""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest

pytest.importorskip("robosuite", reason="needs the robomimic extra: make setup-robomimic")

import gymnasium as gym  # noqa: E402
from gymnasium.utils.env_checker import check_env  # noqa: E402

import embodied  # noqa: E402
from embodied.envs import robomimic  # noqa: E402
from embodied.envs.wrappers import EnvOptionError  # noqa: E402

OBJECT_SIZE = {"Lift": 10, "PickPlaceCan": 14, "NutAssemblySquare": 14, "ToolHang": 44, "TwoArmTransport": 41}
ARMS = {"Lift": 1, "PickPlaceCan": 1, "NutAssemblySquare": 1, "ToolHang": 1, "TwoArmTransport": 2}


@pytest.fixture(scope="module")
def envs():
    built: dict[str, gym.Env] = {}

    def get(task: str) -> gym.Env:
        if task not in built:
            built[task] = embodied.make(f"robomimic/{task}")
        return built[task]

    yield get
    for env in built.values():
        env.close()


def test_tasks_are_registered():
    assert set(robomimic.TASKS) >= {"Lift", "PickPlaceCan", "NutAssemblySquare"}
    assert embodied.env_ids("robomimic") == [f"robomimic/{task}" for task in robomimic.TASKS]


@pytest.mark.parametrize("task", robomimic.TASKS)
def test_gymnasium_api(envs, task):
    env = envs(task)
    with warnings.catch_warnings():
        # Positions and velocities are unbounded, so the observation Box is infinite.
        warnings.filterwarnings("ignore", message=".*infinity.*")
        check_env(env.unwrapped, skip_render_check=True, skip_close_check=True)


@pytest.mark.parametrize("task", robomimic.TASKS)
def test_observation_layout_and_success_flag(envs, task):
    env = envs(task)
    arms = ARMS[task]
    expected = [
        (f"robot{arm}_{key}", size)
        for arm in range(arms)
        for key, size in (("eef_pos", 3), ("eef_quat", 4), ("gripper_qpos", 2))
    ] + [("object", OBJECT_SIZE[task])]
    layout = env.unwrapped.obs_keys
    assert [(key, s.stop - s.start) for key, s in layout.items()] == expected
    total = sum(size for _, size in expected)
    assert env.observation_space.shape == (total,) and env.observation_space.dtype == np.float32
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (7 * arms,), np.float32)

    obs, info = env.reset(seed=0)
    assert obs.shape == (total,) and obs.dtype == np.float32
    assert type(info["success"]) is bool
    sim_obs = env.unwrapped.robosuite_env._get_observations(force_update=True)
    np.testing.assert_allclose(obs[layout["robot0_eef_pos"]], sim_obs["robot0_eef_pos"], rtol=1e-6)
    np.testing.assert_allclose(obs[layout["object"]], sim_obs["object-state"], rtol=1e-6)
    for _ in range(2):
        obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        assert type(info["success"]) is bool and not terminated and not truncated
        assert reward == 0.0  # sparse reward: nothing is solved by two random actions


def test_success_and_sparse_reward_when_cube_is_lifted(envs):
    env = envs("Lift")
    env.reset(seed=0)
    suite = env.unwrapped.robosuite_env
    joint = suite.cube.joints[0]
    qpos = suite.sim.data.get_joint_qpos(joint).copy()
    qpos[2] += 0.15  # well above robosuite's 4 cm success height; one 50 ms step won't drop it
    suite.sim.data.set_joint_qpos(joint, qpos)
    suite.sim.forward()
    _, reward, terminated, _, info = env.step(np.zeros(7, np.float32))
    assert info["success"] is True and reward == 1.0 and not terminated


@pytest.mark.parametrize("task", ["Lift", "NutAssemblySquare"])
def test_reset_seed_fixes_initial_placement(envs, task):
    env = envs(task)
    first, _ = env.reset(seed=7)
    actions = [env.action_space.sample() for _ in range(3)]
    trajectory = [env.step(a)[0] for a in actions]
    again, _ = env.reset(seed=7)  # after an episode, not just from a fresh env
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(trajectory, [env.step(a)[0] for a in actions])
    other, _ = env.reset(seed=8)
    object_slice = env.unwrapped.obs_keys["object"]
    assert not np.allclose(first[object_slice], other[object_slice])
    unseeded, _ = env.reset()  # continues the stream rather than repeating seed 8
    assert not np.allclose(other[object_slice], unseeded[object_slice])


def test_seeding_across_envs(envs):
    first, second = robomimic.make_env("Lift"), robomimic.make_env("Lift")
    try:
        # Unseeded, two new envs start differently ...
        assert not np.allclose(first.reset()[0], second.reset()[0])
        # ... and seeded, any two start alike, whatever they ran before.
        np.testing.assert_array_equal(envs("Lift").reset(seed=11)[0], first.reset(seed=11)[0])
    finally:
        first.close()
        second.close()


def test_hard_reset_reseeds_the_model_too():
    env = robomimic.make_env("Lift", hard_reset=True, obs="state+pixels", image_size=16)
    try:
        obs, _ = env.reset(seed=1)
        cube_size = list(env.unwrapped.robosuite_env.cube.size)
        env.reset(seed=2)
        assert list(env.unwrapped.robosuite_env.cube.size) != cube_size  # rebuilt: a new cube
        again, _ = env.reset(seed=1)
        assert list(env.unwrapped.robosuite_env.cube.size) == cube_size
        np.testing.assert_array_equal(obs["state"], again["state"])
        # The rebuilt simulator gets a new GL context and still renders the scene.
        np.testing.assert_array_equal(obs["pixels"], again["pixels"])
        assert again["pixels"].std() > 0
    finally:
        env.close()


def test_truncation_and_step_after_end():
    env = robomimic.make_env("Lift", max_episode_steps=5)
    try:
        env.reset(seed=0)
        flags = [env.step(np.zeros(7, np.float32))[2:4] for _ in range(5)]
        assert flags == [(False, False)] * 4 + [(False, True)]
        with pytest.raises(RuntimeError, match="reset"):
            env.step(np.zeros(7, np.float32))
        env.reset()
        env.step(np.zeros(7, np.float32))  # a reset starts a new episode
    finally:
        env.close()
        env.close()  # closing twice is allowed


def test_registered_env_truncates_at_max_episode_steps():
    env = embodied.make("robomimic/Lift", max_episode_steps=5)
    try:
        env.reset(seed=0)
        truncated = [env.step(env.action_space.sample())[3] for _ in range(5)]
        assert truncated == [False] * 4 + [True]
    finally:
        env.close()


def test_pixel_observations():
    env = embodied.make("robomimic/Lift", obs="state+pixels", image_size=32)
    try:
        obs, _ = env.reset(seed=0)
        assert obs["pixels"].shape == (32, 32, 3) and obs["pixels"].dtype == np.uint8
        assert obs["state"].shape == (19,)
        assert obs["pixels"].std() > 0  # a rendered scene, not a blank buffer
        assert env.observation_space.contains(obs)
    finally:
        env.close()


def test_fast_rendering_keeps_the_physics_and_survives_hard_resets():
    fast = robomimic.make_env("Lift", hard_reset=True, obs="state+pixels", image_size=32, render_quality="fast")
    full = robomimic.make_env("Lift", hard_reset=True, obs="state+pixels", image_size=32)
    try:
        for seed in (1, 2):  # the second reset rebuilds the model: it is drawn fast too
            obs = {"fast": fast.reset(seed=seed)[0], "full": full.reset(seed=seed)[0]}
            assert fast.unwrapped.robosuite_env.sim.model._model.vis.quality.offsamples == 0
            assert full.unwrapped.robosuite_env.sim.model._model.vis.quality.offsamples > 0
            np.testing.assert_array_equal(obs["fast"]["state"], obs["full"]["state"])
            assert not np.array_equal(obs["fast"]["pixels"], obs["full"]["pixels"]) and obs["fast"]["pixels"].std() > 5
            action = np.full(7, 0.3, np.float32)
            np.testing.assert_array_equal(fast.step(action)[0]["state"], full.step(action)[0]["state"])
    finally:
        fast.close(), full.close()


def test_bad_options_are_clear_errors():
    with pytest.raises(EnvOptionError, match="agentview"):  # lists the valid cameras
        robomimic.make_env("Lift", camera="nope")
    with pytest.raises(EnvOptionError, match="reward_shaping"):
        robomimic.make_env("Lift", reward_shaping_typo=True)
    with pytest.raises(EnvOptionError, match="PickPlaceCan"):
        robomimic.make_env("PickPlaceCam")
    with pytest.raises(EnvOptionError, match="max_episode_steps"):
        robomimic.make_env("Lift", max_episode_steps=0)
    with pytest.raises(EnvOptionError, match="render_quality for robomimic envs must be one of full, fast"):
        robomimic.make_env("Lift", render_quality="best")


def test_missing_extra_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "robosuite", None)  # `import robosuite` now fails
    with pytest.raises(ImportError, match=r"make setup-robomimic.*pip install 'embodied\[robomimic\]'"):
        robomimic.make_env("Lift")


def test_module_imports_without_robosuite():
    code = (
        "import sys; sys.modules['robosuite'] = None\n"
        "import embodied\n"
        "from embodied.envs import robomimic\n"
        "assert 'robomimic/Lift' in embodied.env_ids('robomimic'), robomimic.TASKS\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
