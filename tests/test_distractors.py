"""Visual distractors (embodied.envs.distractors): behaviour on a cheap fake pixel env,
plus a few checks on real Meta-World and MuJoCo envs rendered at tiny sizes."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import embodied
from embodied.envs.distractors import KINDS, Distractors
from embodied.envs.wrappers import COMMON_OPTIONS, EnvOptionError, apply_options

SIZE = 32
ALL_KINDS = list(KINDS)  # colors, video, shapes, noisy_tv


class PatternEnv(gym.Env):
    """A fixed gradient background with a grey square (the 'agent') that moves with the action."""

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(self, size: int = SIZE):
        self.size = size
        self.render_mode = "rgb_array"
        self.observation_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
        rows, cols = np.mgrid[0:size, 0:size]
        gradient = [rows * 255 // size, cols * 255 // size, np.full_like(rows, 90)]
        self.background = np.stack(gradient, axis=-1).astype(np.uint8)
        self.agent_color = np.array([200, 200, 200], np.uint8)
        self.position = np.zeros(2, np.float32)
        self._mask = np.ones((size, size), bool)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-0.5, 0.5, 2).astype(np.float32)
        return self.position.copy(), {}

    def step(self, action):
        self.position = np.clip(self.position + 0.2 * np.asarray(action, np.float32), -1.0, 1.0)
        return self.position.copy(), 0.0, False, False, {}

    def render(self) -> np.ndarray:
        frame = self.background.copy()
        center = ((self.position + 1) / 2 * (self.size - 8)).astype(int) + 4
        self._mask = np.ones((self.size, self.size), bool)
        self._mask[center[0] - 4 : center[0] + 4, center[1] - 4 : center[1] + 4] = False
        frame[~self._mask] = self.agent_color
        return frame


class MaskedPatternEnv(PatternEnv):
    def background_mask(self) -> np.ndarray:
        return self._mask


class RecolorPatternEnv(MaskedPatternEnv):
    """Offers the navigation env's colour protocol: recolor(rng) / reset_colors()."""

    def recolor(self, rng: np.random.Generator) -> None:
        self.agent_color = rng.integers(0, 256, 3, dtype=np.uint8)

    def reset_colors(self) -> None:
        self.agent_color = np.array([200, 200, 200], np.uint8)


def make_fake(spec: Any, obs: str = "pixels", env_class: type[PatternEnv] = MaskedPatternEnv) -> gym.Env:
    return apply_options(env_class(), {**COMMON_OPTIONS, "obs": obs, "image_size": SIZE, "distractors": spec})


def find_distractors(env: gym.Env) -> Distractors:
    while not isinstance(env, Distractors):
        env = env.env
    return env


def rollout(env: gym.Env, seed: int | None, steps: int = 3, action: float = 0.5) -> list[Any]:
    obs, _ = env.reset(seed=seed)
    observations = [obs]
    for _ in range(steps):
        observations.append(env.step(np.full(env.action_space.shape, action, np.float32))[0])
    return observations


def same_frames(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("kind", ALL_KINDS)
@pytest.mark.parametrize("env_class", [MaskedPatternEnv, PatternEnv])
def test_same_seed_same_frames_other_seed_other_frames(kind: str, env_class: type[PatternEnv]) -> None:
    first, second = make_fake(kind, env_class=env_class), make_fake(kind, env_class=env_class)
    assert same_frames(rollout(first, seed=3), rollout(second, seed=3))
    assert not same_frames(rollout(first, seed=3), rollout(second, seed=4))


@pytest.mark.parametrize("kind", [*ALL_KINDS, "colors,video,shapes,noisy_tv"])
def test_frames_differ_from_undistracted_and_stay_in_space(kind: str) -> None:
    distracted, clean = make_fake(kind), make_fake(None)
    for frame, clean_frame in zip(rollout(distracted, seed=0), rollout(clean, seed=0), strict=True):
        assert distracted.observation_space.contains(frame)
        assert frame.dtype == np.uint8 and frame.shape == (SIZE, SIZE, 3)
        assert not np.array_equal(frame, clean_frame)
    assert distracted.observation_space == clean.observation_space


def test_spec_forms_are_equivalent_and_order_free() -> None:
    specs = ["shapes,noisy_tv", " noisy_tv , shapes", ["noisy_tv", "shapes"], {"shapes": {}, "noisy_tv": None}]
    runs = [rollout(make_fake(spec), seed=5) for spec in specs]
    assert all(same_frames(runs[0], run) for run in runs[1:])
    wrapper = find_distractors(make_fake({"shapes": {"count": 5, "max_speed": 0.1}, "video": {"alpha": 0.3}}))
    assert wrapper.kinds == ["video", "shapes"]
    assert wrapper.distractors[1].count == 5 and wrapper.distractors[0].alpha == 0.3


def test_unseeded_reset_continues_the_stream() -> None:
    first, second = make_fake("noisy_tv,shapes"), make_fake("noisy_tv,shapes")
    seeded = rollout(first, seed=0, steps=0)[0]
    continued = rollout(first, seed=None, steps=0)[0]
    assert not np.array_equal(seeded, continued)
    rollout(second, seed=0, steps=0)
    assert np.array_equal(rollout(second, seed=None, steps=0)[0], continued)


def test_shapes_move_between_steps() -> None:
    distracted, clean = make_fake({"shapes": {"count": 3}}), make_fake(None)
    frames = rollout(distracted, seed=1, steps=4, action=0.0)  # the agent stands still
    clean_frames = rollout(clean, seed=1, steps=4, action=0.0)
    assert same_frames(clean_frames[:-1], clean_frames[1:])
    assert all(not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:]))


def test_video_replaces_only_background_where_env_has_a_mask() -> None:
    distracted, clean = make_fake("video"), make_fake(None)
    frame, _ = distracted.reset(seed=2)
    clean_frame, _ = clean.reset(seed=2)
    previous_background = None
    for _ in range(3):
        background = clean.unwrapped.background_mask()  # both envs move the agent identically
        np.testing.assert_array_equal(frame[~background], clean_frame[~background])
        assert (frame[background] != clean_frame[background]).any(axis=-1).mean() > 0.9
        if previous_background is not None:  # the video moves every step
            assert not np.array_equal(frame[background], previous_background)
        previous_background = frame[background]
        action = np.full(2, 0.5, np.float32)
        frame, clean_frame = distracted.step(action)[0], clean.step(action)[0]


def test_video_blends_over_whole_frame_without_a_mask() -> None:
    distracted, clean = make_fake({"video": {"alpha": 0.5}}, env_class=PatternEnv), make_fake(None)
    frame, clean_frame = rollout(distracted, seed=2, steps=0)[0], rollout(clean, seed=2, steps=0)[0]
    foreground = ~clean.unwrapped._mask
    assert (frame[foreground] != clean_frame[foreground]).any()
    # Half the weight stays on the original frame.
    difference = np.abs(frame.astype(int) - clean_frame.astype(int))
    assert difference.max() <= 128


def test_noisy_tv_changes_every_step_inside_its_patch_only() -> None:
    distracted, clean = make_fake({"noisy_tv": {"size": 0.25}}), make_fake(None)
    frames, clean_frames = rollout(distracted, seed=0, action=0.0), rollout(clean, seed=0, action=0.0)
    changed = np.zeros((SIZE, SIZE), bool)
    for frame, clean_frame in zip(frames, clean_frames, strict=True):
        changed |= (frame != clean_frame).any(axis=-1)
    rows, cols = np.nonzero(changed)
    assert np.ptp(rows) + 1 == np.ptp(cols) + 1 == SIZE // 4
    assert all(not np.array_equal(a, b) for a, b in zip(frames[:-1], frames[1:]))


def test_state_plus_pixels_only_alters_pixels() -> None:
    distracted, clean = make_fake("shapes,video", obs="state+pixels"), make_fake(None, obs="state+pixels")
    for obs, clean_obs in zip(rollout(distracted, seed=0), rollout(clean, seed=0), strict=True):
        assert distracted.observation_space.contains(obs)
        np.testing.assert_array_equal(obs["state"], clean_obs["state"])
        assert not np.array_equal(obs["pixels"], clean_obs["pixels"])


def test_render_shows_the_agents_view_and_disabling_passes_frames_through() -> None:
    distracted, clean = make_fake("shapes,noisy_tv"), make_fake(None)
    frame = rollout(distracted, seed=0, steps=1)[-1]
    np.testing.assert_array_equal(distracted.render(), frame)
    find_distractors(distracted).enabled = False
    np.testing.assert_array_equal(rollout(distracted, seed=0)[-1], rollout(clean, seed=0)[-1])
    find_distractors(distracted).enabled = True  # mid-episode: distracted again from the next frame
    action = np.zeros(2, np.float32)
    assert not np.array_equal(distracted.step(action)[0], clean.step(action)[0])


def test_colors_use_the_envs_recolor_protocol() -> None:
    env, clean = make_fake("colors", env_class=RecolorPatternEnv), make_fake(None, env_class=RecolorPatternEnv)
    bare = env.unwrapped
    frame = rollout(env, seed=0, steps=0)[0]
    assert not np.array_equal(bare.agent_color, [200, 200, 200])
    assert np.array_equal(frame[~bare._mask][0], bare.agent_color)  # recoloured before the first frame
    assert np.array_equal(frame[bare._mask], rollout(clean, seed=0, steps=0)[0][bare._mask])  # no image transform
    find_distractors(env).enabled = False
    assert np.array_equal(bare.agent_color, [200, 200, 200])  # reset_colors() called


@pytest.mark.parametrize(
    "spec, words",
    [
        ("lasers", ["lasers", "colors", "noisy_tv"]),
        ("shapes,noisy-tv", ["noisy-tv", "noisy_tv"]),
        ({"shapes": {"count": 0}}, ["shapes", "count"]),
        ({"shapes": {"colour": (1, 2, 3)}}, ["colour", "count", "max_speed"]),
        ({"video": {"alpha": 1.5}}, ["video", "alpha"]),
        ({"noisy_tv": {"size": "big"}}, ["noisy_tv", "size"]),
        ({"colors": 0.5}, ["colors"]),
        (["shapes", "shapes"], ["shapes", "twice"]),
        ("", ["colors", "video"]),
        (7, ["colors", "video"]),
    ],
)
def test_bad_spec_raises_a_clear_error(spec: Any, words: list[str]) -> None:
    with pytest.raises(EnvOptionError) as error:
        Distractors(make_fake(None), spec)  # directly: make() treats an empty spec as none
    for word in words:
        assert word in str(error.value)


def test_distractors_need_pixel_observations() -> None:
    with pytest.raises(EnvOptionError, match="pixel"):
        embodied.make("metaworld/push-v3", obs="state", distractors="noisy_tv")


def test_metaworld_noisy_tv() -> None:
    envs = [embodied.make("metaworld/push-v3", obs="pixels", image_size=16, distractors="noisy_tv") for _ in range(2)]
    try:
        frames = rollout(envs[0], seed=0, steps=1)
        assert all(envs[0].observation_space.contains(frame) for frame in frames)
        assert same_frames(rollout(envs[1], seed=0, steps=1), frames)
        assert not np.array_equal(rollout(envs[1], seed=1, steps=0)[0], frames[0])
        envs[0].set_wrapper_attr("enabled", False)
        assert not np.array_equal(rollout(envs[0], seed=0, steps=0)[0], frames[0])
    finally:
        for env in envs:
            env.close()


def test_metaworld_colors_recolor_the_model_and_restore_it() -> None:
    env = embodied.make("metaworld/push-v3", obs="pixels", image_size=16, distractors="colors")
    model = env.unwrapped.sim.model
    original_rgba = model.geom_rgba.copy()
    try:
        first = rollout(env, seed=0, steps=0)[0]
        rgba = model.geom_rgba.copy()
        assert not np.allclose(rgba[:, :3], original_rgba[:, :3])
        np.testing.assert_array_equal(rgba[:, 3][original_rgba[:, 3] == 0], 0)  # invisible geoms stay so
        assert np.array_equal(rollout(env, seed=0, steps=0)[0], first)
        assert not np.array_equal(rollout(env, seed=1, steps=0)[0], first)
        env.set_wrapper_attr("enabled", False)
        np.testing.assert_array_equal(model.geom_rgba, original_rgba)
        assert not np.array_equal(rollout(env, seed=0, steps=0)[0], first)
        env.set_wrapper_attr("enabled", True)
        rollout(env, seed=0, steps=0)  # recoloured again; close() must restore
    finally:
        env.close()
    np.testing.assert_array_equal(model.geom_rgba, original_rgba)


def test_mujoco_colors_and_video() -> None:
    env = embodied.make("mujoco/HalfCheetah-v5", obs="pixels", image_size=16, distractors="colors,video")
    model = env.unwrapped.model
    original_rgba = model.geom_rgba.copy()
    try:
        first = rollout(env, seed=0, steps=1)
        assert not np.allclose(model.geom_rgba, original_rgba)
        assert same_frames(rollout(env, seed=0, steps=1), first)
    finally:
        env.close()
    np.testing.assert_array_equal(model.geom_rgba, original_rgba)
