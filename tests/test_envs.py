"""The env registry, the Meta-World and MuJoCo suites, the shared options and vector envs."""

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import embodied
from embodied.envs import EnvOptionError, UnknownEnvError

METAWORLD = embodied.env_ids("metaworld")
MUJOCO = embodied.env_ids("mujoco")


def test_registry_has_every_task_with_string_entry_points():
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert sorted(t.split("/")[1] for t in METAWORLD) == sorted(ALL_V3_ENVIRONMENTS)
    assert "mujoco/HalfCheetah-v5" in MUJOCO and len(MUJOCO) == 11
    for env_id in embodied.env_ids():
        spec = gym.spec(embodied.envs.gym_id(env_id))
        assert isinstance(spec.entry_point, str), env_id  # Minari can serialise it
    env = gym.make("embodied/metaworld-push-v3")  # the Gymnasium id works directly
    assert env.spec.max_episode_steps == 500
    env.close()


@pytest.mark.parametrize("env_id", METAWORLD + MUJOCO)
def test_check_env(env_id):
    env = embodied.make(env_id, image_size=16)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()


@pytest.mark.parametrize("env_id", ["metaworld/push-v3", "mujoco/Hopper-v5"])
def test_check_env_with_pixels_and_render(env_id):
    env = embodied.make(env_id, obs="state+pixels", image_size=16, frame_stack=2)
    check_env(env, skip_render_check=False)
    env.close()


@pytest.mark.parametrize("env_id", ["mujoco/Reacher-v5", "metaworld/push-v3", "nav/open-v0"])
def test_pixel_observations_are_contiguous_arrays(env_id):
    # gymnasium's MuJoCo renderer returns a flipped view; torch.as_tensor refuses negative strides
    env = embodied.make(env_id, obs="pixels", image_size=16)
    for obs in (env.reset(seed=0)[0], env.step(env.action_space.sample())[0]):
        assert obs.flags.c_contiguous and min(obs.strides) > 0
    env.close()


def _initial_positions(env, seed):
    obs, _ = env.reset(seed=seed)
    return np.concatenate([obs[4:7], obs[-3:]])  # first object's xyz and the goal's xyz


def test_metaworld_seeding_gives_same_positions_for_same_seed():
    env_a, env_b = embodied.make("metaworld/pick-place-v3"), embodied.make("metaworld/pick-place-v3")
    same = [np.array_equal(_initial_positions(env_a, s), _initial_positions(env_b, s)) for s in (0, 1, 7)]
    assert all(same)
    starts = {tuple(np.round(_initial_positions(env_a, s), 5)) for s in range(5)}
    assert len(starts) == 5  # different seeds, different object and goal positions
    # Unseeded resets continue the seeded stream: the same sequence in both envs.
    env_a.reset(seed=3), env_b.reset(seed=3)
    for _ in range(3):
        assert np.array_equal(env_a.reset()[0], env_b.reset()[0])
    # ... and a later episode differs from the first one.
    assert not np.array_equal(_initial_positions(env_a, 3), env_a.reset()[0][np.r_[4:7, 36:39]])


def test_metaworld_step_sequence_is_deterministic_under_seed():
    def run(seed):
        env = embodied.make("metaworld/push-v3")
        env.reset(seed=seed)
        env.action_space.seed(seed)
        return np.stack([env.step(env.action_space.sample())[0] for _ in range(20)])

    assert np.array_equal(run(4), run(4))


def test_metaworld_success_flag_and_scripted_expert():
    from embodied.envs.metaworld import scripted_policy
    from embodied.run.rollout import rollout

    env = embodied.make("metaworld/reach-v3")
    result = rollout(env, scripted_policy(env), episodes=2, seed=0)
    assert result.has_success and result.success_rate == 1.0
    obs, info = env.reset(seed=0)
    assert info["success"] is False
    _, _, _, _, info = env.step(env.action_space.sample())
    assert isinstance(info["success"], bool)


def test_reacher_scripted_controller_reaches_and_other_mujoco_tasks_have_none():
    from embodied.run.rollout import rollout

    env = embodied.make("mujoco/Reacher-v5", obs="pixels", image_size=16, action_repeat=2)  # reads the simulator
    scripted = rollout(env, embodied.envs.scripted_policy(env), episodes=10, seed=0).mean_return
    still = rollout(env, lambda _obs: np.zeros(2, np.float32), episodes=10, seed=0).mean_return
    assert scripted > -10 and scripted > still + 10  # zero torque leaves the fingertip where it starts
    with pytest.raises(ValueError, match="no scripted policy for mujoco/Hopper-v5; mujoco tasks with one: Reacher"):
        embodied.envs.scripted_policy(embodied.make("mujoco/Hopper-v5"))


def test_metaworld_truncates_at_500_and_never_steps_past():
    env = embodied.make("metaworld/reach-v3")
    env.reset(seed=0)
    action = np.zeros(4, dtype=np.float32)
    for step in range(1, 501):
        _, _, terminated, truncated, _ = env.step(action)
        assert not terminated
        assert truncated == (step == 500)
    with pytest.raises(RuntimeError, match="reset"):
        env.unwrapped.step(action)
    short = embodied.make("metaworld/reach-v3", max_episode_steps=7)
    short.reset(seed=0)
    flags = [short.step(action)[3] for _ in range(7)]
    assert flags == [False] * 6 + [True]


@pytest.mark.parametrize(
    "options, shape",
    [
        ({"obs": "pixels", "image_size": 16}, (16, 16, 3)),
        ({"obs": "pixels", "image_size": (12, 20)}, (12, 20, 3)),
        ({"obs": "pixels", "image_size": 16, "frame_stack": 3}, (3, 16, 16, 3)),
        ({"obs": "state", "frame_stack": 2}, (2, 39)),
    ],
)
def test_pixel_and_stacked_shapes(options, shape):
    env = embodied.make("metaworld/push-v3", **options)
    obs, _ = env.reset(seed=0)
    assert obs.shape == shape == env.observation_space.shape
    obs, *_ = env.step(env.action_space.sample())
    assert obs.shape == shape and obs in env.observation_space
    if options["obs"] == "pixels":
        assert obs.dtype == np.uint8 and obs.std() > 0  # a real picture, not a blank frame
    env.close()


def test_state_plus_pixels_is_a_dict_and_cameras_differ():
    env = embodied.make("metaworld/push-v3", obs="state+pixels", image_size=16)
    obs, _ = env.reset(seed=0)
    assert set(obs) == {"state", "pixels"} and obs["state"].shape == (39,) and obs["pixels"].shape == (16, 16, 3)
    other = embodied.make("metaworld/push-v3", obs="pixels", image_size=16, camera="topview")
    assert not np.array_equal(other.reset(seed=0)[0], obs["pixels"])
    mujoco_env = embodied.make("mujoco/HalfCheetah-v5", obs="pixels", image_size=16)
    assert mujoco_env.reset(seed=0)[0].shape == (16, 16, 3)
    for e in (env, other, mujoco_env):
        e.close()


def test_action_repeat_sums_rewards_and_keeps_success():
    plain, repeated = embodied.make("mujoco/Hopper-v5"), embodied.make("mujoco/Hopper-v5", action_repeat=3)
    plain.reset(seed=0), repeated.reset(seed=0)
    action = np.full(3, 0.1, dtype=np.float32)
    expected = sum(plain.step(action)[1] for _ in range(3))
    obs, reward, *_ = repeated.step(action)
    assert reward == pytest.approx(expected)
    assert np.allclose(obs, plain.unwrapped._get_obs())


def test_state_noise_appends_fresh_seeded_noise_and_leaves_the_state_alone():
    plain, noisy = embodied.make("nav/open-v0"), embodied.make("nav/open-v0", state_noise=5, action_repeat=2)
    assert noisy.observation_space.shape == (plain.observation_space.shape[0] + 5,)
    assert noisy.observation_space.dtype == plain.observation_space.dtype
    base, _ = plain.reset(seed=3)
    obs, _ = noisy.reset(seed=3)
    assert np.array_equal(obs[:-5], base) and obs.dtype == base.dtype
    action = np.array([0.5, -0.2], np.float32)
    noises = [obs[-5:]]
    for _ in range(20):
        plain.step(action)
        expected = plain.step(action)[0]  # action_repeat=2
        obs, *_ = noisy.step(action)
        assert np.allclose(obs[:-5], expected) and noisy.observation_space.contains(obs)
        noises.append(obs[-5:])
    noises = np.array(noises)
    assert len(np.unique(noises, axis=0)) == 21  # fresh every step, not a fixed offset
    assert abs(noises.mean()) < 0.5 and 0.5 < noises.std() < 1.5
    again = embodied.make("nav/open-v0", state_noise=5, action_repeat=2)
    assert np.array_equal(again.reset(seed=3)[0][-5:], noises[0])  # the same seed, the same noise
    assert not np.array_equal(again.reset(seed=4)[0][-5:], noises[0])
    # state+pixels: the noise goes into the state entry; the frame is the env's own
    both = embodied.make("nav/open-v0", obs="state+pixels", image_size=16, state_noise=3)
    obs, _ = both.reset(seed=0)
    assert obs["state"].shape == (plain.observation_space.shape[0] + 3,) and obs["pixels"].shape == (16, 16, 3)
    assert both.observation_space["state"].contains(obs["state"])
    check_env(noisy, skip_render_check=True)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"obs": "rgb"}, "obs must be one of"),
        ({"obss": "pixels"}, "Did you mean 'obs'"),
        ({"image_size": 0}, "image_size"),
        ({"image_size": "big"}, "image_size"),
        ({"frame_stack": 0}, "frame_stack"),
        ({"action_repeat": 1.5}, "action_repeat"),
        ({"camera": "ceiling"}, "valid: topview"),
        ({"distractors": "noisy_tv"}, "need pixel observations"),
        ({"state_noise": -1}, "state_noise must be an integer >= 0"),
        ({"state_noise": 2.5}, "state_noise must be an integer >= 0"),
        ({"state_noise": 4, "obs": "pixels"}, "obs='pixels' does not show"),
        ({"render_mode": "human"}, "render_mode"),
    ],
)
def test_bad_options_raise_clear_errors(options, message):
    with pytest.raises(EnvOptionError, match=message):
        embodied.make("metaworld/push-v3", **options)


@pytest.mark.parametrize(
    "env_id, model_of",
    [("mujoco/Walker2d-v5", lambda env: env.unwrapped.model), ("metaworld/reach-v3", lambda env: env.unwrapped.sim.model)],
)
def test_fast_rendering_changes_the_look_not_the_physics(env_id, model_of):
    envs = {q: embodied.make(env_id, obs="state+pixels", image_size=32, render_quality=q) for q in ("full", "fast")}
    full, fast = model_of(envs["full"]), model_of(envs["fast"])
    assert full.vis.quality.offsamples > 0 and full.light_castshadow.any()  # the default is the scene as authored
    assert fast.vis.quality.offsamples == 0 and not fast.light_castshadow.any() and not fast.mat_reflectance.any()
    rng = np.random.default_rng(0)
    obs = {q: env.reset(seed=3)[0] for q, env in envs.items()}
    frames = {q: [o["pixels"]] for q, o in obs.items()}
    for _ in range(20):
        action = rng.uniform(-1, 1, envs["full"].action_space.shape).astype(np.float32)
        steps = {q: env.step(action) for q, env in envs.items()}
        assert np.array_equal(steps["full"][0]["state"], steps["fast"][0]["state"])  # physics untouched
        assert steps["full"][1] == steps["fast"][1]
        for q in envs:
            frames[q].append(steps[q][0]["pixels"])
    full_frames, fast_frames = np.stack(frames["full"]).astype(float), np.stack(frames["fast"]).astype(float)
    assert not np.array_equal(full_frames, fast_frames)  # shadows, reflections and smoothed edges are gone...
    colours = full_frames.mean(axis=(0, 1, 2)), fast_frames.mean(axis=(0, 1, 2))
    assert np.abs(colours[0] - colours[1]).max() < 16, colours  # ...the scene's colours are the same
    # the frames still move with the body (not a frozen or blank render)
    assert np.abs(np.diff(fast_frames, axis=0)).mean() > 0.1 and fast_frames.std() > 10
    for env in envs.values():
        env.close()


def test_several_mujoco_envs_in_one_process_each_draw_their_own_scene():
    # Gymnasium's renderer makes its GL context current only when it makes it: without our fix
    # the first env drew with the second's meshes, and with none (black) once that was closed.
    def make(env_id, **options):
        return embodied.make(env_id, obs="pixels", image_size=24, **options)

    walker = make("mujoco/Walker2d-v5")
    alone = walker.reset(seed=0)[0]
    others = [make("mujoco/HalfCheetah-v5"), make("metaworld/reach-v3"), make("mujoco/Walker2d-v5", render_quality="fast")]
    for other in others:
        other.reset(seed=0)
        assert np.array_equal(walker.render(), alone)
    for other in others:  # closing another env frees its own GPU objects, not the walker's
        other.close()
        assert np.array_equal(walker.render(), alone)
    walker.close()
    mt10 = make("metaworld/mt10")
    frames = [mt10.reset(seed=k)[0] for k in range(10)]
    for k, task in enumerate(mt10.unwrapped.tasks):  # each task's frame is the scene it has alone
        single = make(f"metaworld/{task}")
        task_seed = int(gym.utils.seeding.np_random(k)[0].integers(2**31))  # what mt10.reset(seed=k) hands the task
        assert np.array_equal(single.reset(seed=task_seed)[0], frames[k]), task
        single.close()
    mt10.close()


def test_render_quality_is_checked_and_only_where_mujoco_renders():
    for env_id in ("mujoco/Reacher-v5", "metaworld/push-v3", "metaworld/mt10"):
        with pytest.raises(EnvOptionError, match="render_quality .*must be one of full, fast; got 'ultra'"):
            embodied.make(env_id, obs="pixels", render_quality="ultra")
    mt10 = embodied.make("metaworld/mt10", render_quality="fast")
    assert all(env.sim.model.vis.quality.offsamples == 0 for env in mt10.unwrapped.envs)
    with pytest.raises(EnvOptionError, match="unknown option 'render_quality' for nav"):
        embodied.make("nav/open-v0", render_quality="fast")  # nav draws its own frames


def test_unknown_env_id_names_closest():
    with pytest.raises(UnknownEnvError, match="metaworld/push-v3"):
        embodied.make("metaworld/psh-v3")
    with pytest.raises(UnknownEnvError, match="HalfCheetah-v5"):
        embodied.make("mujoco/HalfCheeta-v5")
    with pytest.raises(UnknownEnvError, match="embodied envs"):
        embodied.make("nonsense")


def test_spec_rebuilds_the_same_env_with_its_options():
    env = embodied.make("metaworld/push-v3", obs="pixels", image_size=16)
    rebuilt = gym.make(env.spec)  # what Minari does with a stored spec
    assert rebuilt.observation_space == env.observation_space
    assert np.array_equal(rebuilt.reset(seed=2)[0], env.reset(seed=2)[0])
    env.close(), rebuilt.close()


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_vector_envs(mode):
    envs = embodied.make_vec("metaworld/push-v3", num_envs=2, vectorization_mode=mode)
    obs, info = envs.reset(seed=5)
    assert obs.shape == (2, 39) and obs.dtype == np.float32
    assert not np.array_equal(obs[0], obs[1])  # env i is seeded with seed + i
    single = embodied.make("metaworld/push-v3")
    assert np.array_equal(single.reset(seed=6)[0], obs[1])
    actions = envs.action_space.sample()
    obs, rewards, terminated, truncated, info = envs.step(actions)
    assert rewards.shape == (2,) and info["success"].dtype == bool
    envs.close()


def test_vector_env_bad_arguments():
    with pytest.raises(EnvOptionError, match="vectorization_mode"):
        embodied.make_vec("metaworld/push-v3", 2, vectorization_mode="threads")
    with pytest.raises(EnvOptionError, match="num_envs"):
        embodied.make_vec("metaworld/push-v3", 0)


def test_async_vector_env_after_the_parent_rendered():
    # A forked worker inherits the parent's EGL state and hangs; ours are spawned.
    parent = embodied.make("mujoco/Hopper-v5", obs="pixels", image_size=16)
    parent.reset(seed=0)
    envs = embodied.make_vec("mujoco/Hopper-v5", num_envs=2, vectorization_mode="async", obs="pixels", image_size=16)
    obs, _ = envs.reset(seed=0)
    assert obs.shape == (2, 16, 16, 3)
    envs.close(), parent.close()
