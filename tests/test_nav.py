"""nav suite: PointMaze (gymnasium-robotics) and the NumPy grid worlds (rooms, open, corridor)."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import embodied
from embodied.envs import nav
from embodied.envs.wrappers import EnvOptionError

GRID_TASKS = list(nav.GRID_TASKS)
BASE_MAZES = ["PointMaze_UMaze-v3", "PointMaze_Open-v3", "PointMaze_Medium-v3", "PointMaze_Large-v3"]
TINY = 16  # pixels: MuJoCo renders in software here


def checked(env: gym.Env, skip_render_check: bool = False, allowed: tuple[str, ...] = ()) -> None:
    """check_env, failing on any warning it raises except the ``allowed`` ones."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env, skip_render_check=skip_render_check)
    unexpected = [str(w.message) for w in caught if not any(a in str(w.message) for a in allowed)]
    assert not unexpected, unexpected


def rollout(env: gym.Env, seed: int, actions: np.ndarray) -> list[np.ndarray]:
    obs, _ = env.reset(seed=seed)
    trace = [obs]
    for action in actions:
        obs, _, terminated, truncated, _ = env.step(action)
        trace.append(obs)
        if terminated or truncated:
            break
    return trace


def scripted_success_rate(env: gym.Env, episodes: int) -> float:
    policy = nav.scripted_policy(env)
    successes = 0
    for seed in range(episodes):
        obs, info = env.reset(seed=seed)
        done, success = False, False
        while not (done or success):
            obs, _, terminated, truncated, info = env.step(policy(obs))
            done, success = terminated or truncated, info["success"]
        successes += success
    return successes / episodes


def overlaps_wall(base: nav.GridNavEnv) -> bool:
    """Whether the agent's collision square overlaps a wall cell (by more than rounding)."""
    r, eps = base.agent_radius, 1e-6
    rows = range(math.floor(base.agent_y - r + eps), math.floor(base.agent_y + r - eps) + 1)
    cols = range(math.floor(base.agent_x - r + eps), math.floor(base.agent_x + r - eps) + 1)
    return any(base.walls[row, col] for row in rows for col in cols)


# ---- the Gymnasium API ------------------------------------------------------------------


def test_every_task_is_registered():
    ids = embodied.envs.env_ids("nav")
    assert {f"nav/{task}" for task in BASE_MAZES + GRID_TASKS} <= set(ids)
    assert set(nav.MAX_EPISODE_STEPS) == set(nav.TASKS)


def test_import_is_cheap():
    code = "import sys, embodied.envs.nav; print(any(m in sys.modules for m in ('gymnasium_robotics', 'mujoco')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


@pytest.mark.parametrize("task", GRID_TASKS)
def test_check_env_grid_state(task):
    checked(embodied.make(f"nav/{task}", image_size=TINY).unwrapped)


@pytest.mark.parametrize("obs,camera", [("pixels", "topdown"), ("state+pixels", "egocentric")])
def test_check_env_grid_pixels(obs, camera):
    env = embodied.make("nav/rooms-v0", obs=obs, camera=camera, image_size=TINY)
    checked(env, allowed=("different from the unwrapped version",))


@pytest.mark.parametrize("task", nav.POINTMAZE_TASKS)
def test_check_env_pointmaze(task):
    # Positions and velocities are unbounded in gymnasium-robotics too.
    checked(embodied.make(f"nav/{task}", image_size=TINY).unwrapped, allowed=("infinity",))


def test_pointmaze_observation_and_limit():
    env = embodied.make("nav/PointMaze_UMaze-v3")
    obs, info = env.reset(seed=0)
    sim = env.unwrapped.sim
    assert obs.shape == (6,) and obs.dtype == np.float32 and info == {"success": False}
    np.testing.assert_allclose(obs[:2], sim.point_env.data.qpos[:2], rtol=1e-6)
    np.testing.assert_allclose(obs[4:], sim.goal, rtol=1e-6)
    assert env.spec.max_episode_steps == 300
    _, _, _, _, info = env.step(env.action_space.sample())
    assert isinstance(info["success"], bool)


# ---- seeding ----------------------------------------------------------------------------


@pytest.mark.parametrize("task", GRID_TASKS + ["PointMaze_UMaze-v3"])
def test_same_seed_same_episode_different_seed_different_goal(task):
    env = embodied.make(f"nav/{task}")
    actions = np.random.default_rng(0).uniform(-1, 1, (30, 2)).astype(np.float32)
    first, second = rollout(env, 3, actions), rollout(env, 3, actions)
    assert len(first) == len(second)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
    goals = {tuple(env.reset(seed=seed)[0][-2:]) for seed in range(5)}  # goal x, y end both layouts
    assert len(goals) > 1


def test_grid_goal_text_is_seeded():
    env = embodied.make("nav/rooms-v0")
    texts = []
    for seed in (0, 0, 1, 2, 3, 4, 5):
        env.reset(seed=seed)
        texts.append(env.unwrapped.goal_text)
    assert texts[0] == texts[1]
    assert all(text.startswith("go to the ") for text in texts)
    assert len(set(texts)) > 1


# ---- pixels -----------------------------------------------------------------------------


@pytest.mark.parametrize("camera", nav.GRID_CAMERAS)
def test_grid_pixels(camera):
    env = embodied.make("nav/rooms-v0", obs="pixels", camera=camera, image_size=(24, 32))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (24, 32, 3) and obs.dtype == np.uint8 and env.observation_space.contains(obs)
    obs, *_ = env.step(np.array([1.0, 0.0], np.float32))
    assert obs.shape == (24, 32, 3) and obs.std() > 0  # not a blank frame


def test_grid_state_plus_pixels():
    env = embodied.make("nav/corridor-v0", obs="state+pixels", image_size=TINY)
    obs, _ = env.reset(seed=0)
    assert isinstance(env.observation_space, gym.spaces.Dict)
    assert obs["state"].shape == (8,) and obs["state"].dtype == np.float32
    assert obs["pixels"].shape == (TINY, TINY, 3) and obs["pixels"].dtype == np.uint8
    assert env.observation_space.contains(obs)


def test_egocentric_view_turns_with_the_agent():
    env = embodied.make("nav/open-v0", obs="pixels", camera="egocentric", image_size=32)
    env.reset(seed=0)
    base = env.unwrapped
    base.agent_x, base.agent_y = 5.5, 5.5  # centre of the room, walls out of a 7-cell view
    frames = []
    for heading in (0.0, math.pi / 2):
        base.heading = heading
        frames.append(base.render())
    assert not np.array_equal(frames[0], frames[1])  # the objects moved round the agent
    # The agent sits at the centre of its own view, whichever way it faces.
    centre = frames[0][15:17, 15:17].reshape(-1, 3)
    assert (centre == nav.AGENT_COLOR).all(axis=1).any()


def test_follow_view_slides_the_map_under_the_agent():
    env = embodied.make("nav/open-v0", obs="pixels", camera="follow", egocentric_cells=8, image_size=32)
    env.reset(seed=0)
    base = env.unwrapped  # 8 cells over 32 pixels: cell edges fall on pixel edges
    base.agent_x, base.agent_y, base.heading = 3.0, 5.5, 0.0
    before = base.render()
    base.agent_x = 4.0  # one cell east: the map moves 4 pixels west, north stays up
    after = base.render()
    wall = lambda frame: (frame == nav.DEFAULT_WALL).all(axis=-1)  # noqa: E731
    assert wall(before)[:, :8].all() and wall(before).any(axis=0).sum() == 8  # the west wall ends 2 cells west
    np.testing.assert_array_equal(wall(after)[:, :-4], wall(before)[:, 4:])
    for frame in (before, after):  # the (dark) agent at the centre of its view
        assert (frame[15:17, 15:17].max(axis=-1) < 128).any()
    base.heading = math.pi  # turning moves only the white dot on the agent
    turned = base.render()
    changed = np.argwhere((turned != after).any(axis=-1))
    assert len(changed) and (np.abs(changed - 15.5) < 2).all()


@pytest.mark.parametrize("image_size", [32, (24, 40), 96])
def test_small_frames_show_the_agent_wherever_it_stands(image_size):
    """Pixels average several samples, so the agent (0.5 cells across, ~1.5 pixels at
    32x32 in open-v0) never falls between pixel centres; and the top-down fast path,
    which samples again only around the agent, equals drawing the whole frame."""
    env = embodied.make("nav/open-v0", obs="pixels", image_size=image_size)
    env.reset(seed=0)
    base = env.unwrapped
    k = base.supersample
    assert k == {32: 3, (24, 40): 4, 96: 1}[image_size]  # 11 cells over 32 pixels: 0.34 cells a pixel, 3 samples
    rng = np.random.default_rng(0)
    for _ in range(25):
        base.agent_x, base.agent_y = rng.uniform(1.26, base.map_width - 1.26, size=2)
        base.heading = float(rng.uniform(-math.pi, math.pi))
        frame = base.render()
        fine, background = base._draw_scene(base._topdown_x, base._topdown_y)
        scene, _ = base._downsample(fine.copy(), background.copy())
        base._draw_agent(fine, background, base._topdown_x, base._topdown_y)
        whole, whole_background = base._downsample(fine, background)
        np.testing.assert_array_equal(frame, whole)
        np.testing.assert_array_equal(base.background_mask(), whole_background)
        # The agent darkens some pixel by a fifth of the floor's brightness or more (with one
        # sample a pixel, some positions left it no pixel at all).
        assert (scene.astype(int) - frame.astype(int)).max() >= 40


@pytest.mark.parametrize("camera", nav.POINTMAZE_CAMERAS)
def test_pointmaze_pixels(camera):
    env = embodied.make("nav/PointMaze_UMaze-v3", obs="state+pixels", camera=camera, image_size=TINY)
    obs, _ = env.reset(seed=0)
    assert obs["state"].shape == (6,) and obs["pixels"].shape == (TINY, TINY, 3) and obs["pixels"].dtype == np.uint8
    env.close()


@pytest.mark.parametrize("camera", nav.GRID_CAMERAS)
def test_background_mask(camera):
    env = embodied.make("nav/rooms-v0", obs="pixels", camera=camera, image_size=32)
    frame, _ = env.reset(seed=1)
    mask = env.unwrapped.background_mask()
    assert mask.shape == frame.shape[:2] and mask.dtype == bool
    assert 0 < mask.mean() < 1
    wall = (frame == nav.DEFAULT_WALL).all(axis=-1)
    assert wall.any() and not (mask & wall).any()
    assert not (mask & (frame == nav.AGENT_COLOR).all(axis=-1)).any()


def test_recolor_changes_frames_not_state():
    env = embodied.make("nav/rooms-v0", obs="state+pixels", image_size=32)
    obs, _ = env.reset(seed=0)
    base = env.unwrapped
    base.recolor(np.random.default_rng(7))
    recolored = base.render()
    assert not np.array_equal(recolored, obs["pixels"])
    obs2, *_ = env.step(np.zeros(2, np.float32))
    np.testing.assert_array_equal(obs2["state"][:2], obs["state"][:2])  # standing still: same place
    assert not np.array_equal(obs2["pixels"], obs["pixels"])
    base.reset_colors()
    np.testing.assert_array_equal(base.render(), obs["pixels"])


# ---- dynamics, reward, success ----------------------------------------------------------


def test_walls_block_the_agent():
    env = embodied.make("nav/open-v0")
    env.reset(seed=0)
    base = env.unwrapped
    right_wall = base.map_width - 1  # x where the east wall begins
    for _ in range(60):
        y = base.agent_y
        obs, *_ = env.step(np.array([1.0, 0.0], np.float32))
        assert base.agent_x + base.agent_radius <= right_wall + 1e-9
        assert base.agent_y == y
    assert base.agent_x + base.agent_radius == pytest.approx(right_wall)
    assert obs[2] == 0.0  # blocked: no velocity


def test_no_tunnelling_at_any_speed():
    env = embodied.make("nav/rooms-v0", terminate_on_success=False)
    base = env.unwrapped
    base.max_speed = 4.0  # several cells a step: wall slabs are one cell thick
    rng = np.random.default_rng(0)
    for seed in range(3):
        env.reset(seed=seed)
        assert not overlaps_wall(base)
        for _ in range(100):
            env.step(rng.choice([-1.0, 1.0], size=2).astype(np.float32))
            assert not overlaps_wall(base)


def test_sparse_reward_and_termination():
    env = embodied.make("nav/open-v0", reward_type="sparse")
    policy = nav.scripted_policy(env)
    obs, _ = env.reset(seed=0)
    rewards = []
    for _ in range(100):
        obs, reward, terminated, truncated, info = env.step(policy(obs))
        rewards.append(reward)
        if terminated:
            break
    assert terminated and info["success"] and rewards[-1] == 1.0 and set(rewards[:-1]) == {0.0}


def test_dense_reward_and_continuing():
    env = embodied.make("nav/open-v0", terminate_on_success=False)
    policy = nav.scripted_policy(env)
    obs, _ = env.reset(seed=0)
    rewards, successes = [], []
    for _ in range(60):
        obs, reward, terminated, _, info = env.step(policy(obs))
        assert not terminated
        rewards.append(reward)
        successes.append(info["success"])
    assert all(-1 < r <= 0 for r in rewards) and rewards[0] < rewards[5] and successes[-1] and rewards[-1] == 0.0


def test_room_goals():
    env = embodied.make("nav/rooms-v0", goal_kind="room")
    policy = nav.scripted_policy(env)
    base = env.unwrapped
    for seed in range(3):
        obs, info = env.reset(seed=seed)
        assert base.goal_text.endswith(" room") and not info["success"]
        while not info["success"]:
            obs, _, terminated, truncated, info = env.step(policy(obs))
            assert not truncated
        room_tile = 2 + base.room_names.index(base.goal_name)
        assert terminated and base.tile_class[int(base.agent_y), int(base.agent_x)] == room_tile


def test_scene_seed_fixes_objects_and_goal_not_the_start():
    def scene(env, seed):
        env.reset(seed=seed)
        base = env.unwrapped
        return [(o.name, o.x, o.y) for o in base.objects], base.goal_text, (base.agent_x, base.agent_y)

    fixed = embodied.make("nav/rooms-v0", scene_seed=7)
    episodes = [scene(fixed, seed) for seed in range(6)]
    assert all(objects == episodes[0][0] and goal == episodes[0][1] for objects, goal, _ in episodes)
    assert len({start for _, _, start in episodes}) == 6  # the start still varies
    # another scene seed, another scene; without one, scenes vary as before
    assert scene(embodied.make("nav/rooms-v0", scene_seed=8), 0)[0] != episodes[0][0]
    free = embodied.make("nav/rooms-v0")
    assert len({str(scene(free, seed)[0]) for seed in range(6)}) > 1
    # the scripted policy still reaches the fixed goal
    assert scripted_success_rate(embodied.make("nav/open-v0", scene_seed=0), 5) == 1.0


@pytest.mark.parametrize("task", GRID_TASKS)
def test_scripted_policy_grid(task):
    assert scripted_success_rate(embodied.make(f"nav/{task}", obs="pixels", image_size=TINY), 10) >= 0.8


def test_scripted_policy_pointmaze_umaze():
    assert scripted_success_rate(embodied.make("nav/PointMaze_UMaze-v3"), 5) >= 0.6


# ---- options ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "env_id,options,named",
    [
        ("nav/rooms-v0", {"colour": "red"}, "colour"),
        ("nav/rooms-v0", {"camera": "front"}, "camera"),
        ("nav/rooms-v0", {"reward_type": "shaped"}, "reward_type"),
        ("nav/open-v0", {"goal_kind": "room"}, "goal_kind"),
        ("nav/rooms-v0", {"egocentric_cells": 0}, "egocentric_cells"),
        ("nav/open-v0", {"scene_seed": -1}, "scene_seed"),
        ("nav/open-v0", {"scene_seed": 1.5}, "scene_seed"),
        ("nav/PointMaze_UMaze-v3", {"scene_seed": 0}, "scene_seed"),
        ("nav/rooms-v0", {"obs": "pixels", "render_mode": None}, "render_mode"),
        ("nav/PointMaze_UMaze-v3", {"camera": "egocentric"}, "camera"),
        ("nav/PointMaze_UMaze-v3", {"goal_kind": "room"}, "goal_kind"),
        ("nav/PointMaze_UMaze-v3", {"reward_type": "shaped"}, "reward_type"),
    ],
)
def test_bad_option_names_it(env_id, options, named):
    with pytest.raises(EnvOptionError, match=named):
        embodied.make(env_id, **options)
