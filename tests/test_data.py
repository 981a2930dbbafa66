"""Datasets: Minari storage, collection, action-free episodes, samplers and their errors."""

import h5py
import minari
import numpy as np
import pytest
import torch

from embodied.cli import main
from embodied.data import Dataset, DatasetError, Episode, load_dataset, read_episodes, write_dataset
from embodied.data import episodes as store
from embodied.data.collect import collect


@pytest.fixture(autouse=True)
def minari_root(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "datasets"))
    return tmp_path / "datasets"


def synthetic(lengths=(5, 3, 4), obs_dim=2, terminal_last=(True, False, True), seed=0):
    """Episodes whose observation rows encode (episode, step), so indexing errors show."""
    rng = np.random.default_rng(seed)
    episodes = []
    for index, (length, terminal) in enumerate(zip(lengths, terminal_last)):
        steps = np.arange(length + 1, dtype=np.float32)
        observations = np.stack([np.full(length + 1, index, np.float32), steps] + [steps * 0] * (obs_dim - 2), 1)
        terminations = np.zeros(length, bool)
        truncations = np.zeros(length, bool)
        (terminations if terminal else truncations)[-1] = True
        episodes.append(
            Episode(
                observations=observations,
                actions=rng.uniform(-1, 1, (length, 2)).astype(np.float32),
                rewards=np.arange(1, length + 1, dtype=np.float64) + 10 * index,
                terminations=terminations,
                truncations=truncations,
                metadata={"policy": "synthetic"},
            )
        )
    return episodes


def spaces(obs_dim=2):
    import gymnasium as gym

    return {
        "observation_space": gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32),
        "action_space": gym.spaces.Box(-1, 1, (2,), np.float32),
    }


# --- storage -------------------------------------------------------------------------------


def test_collect_writes_a_minari_dataset_minari_can_read():
    collect("metaworld/reach-v3", 2, name="reach-expert", quality="expert", env_options={"max_episode_steps": 30},
            progress=False)  # fmt: skip
    dataset = minari.load_dataset("embodied/reach-expert-v0")  # Minari's own code
    assert dataset.total_episodes == 2 and dataset.total_steps == 60
    ours = list(read_episodes("reach-expert"))
    for theirs, mine in zip(dataset.iterate_episodes(), ours):
        np.testing.assert_array_equal(theirs.observations, mine.observations)
        np.testing.assert_array_equal(theirs.actions, mine.actions)
        # Cut at the time limit: truncated, never terminal.
        assert not theirs.terminations.any() and theirs.truncations[-1] and theirs.truncations.sum() == 1
    metadata = list(dataset.storage.get_episode_metadata([0]))[0]
    assert metadata["policy"] == "scripted" and metadata["noise"] == pytest.approx(0.1)
    assert metadata["quality"] == "expert" and metadata["seed"] == 0
    env = dataset.recover_environment()  # the spec's string entry point rebuilds the env
    assert env.observation_space.shape == (39,)
    env.close()


def test_collection_is_the_same_with_any_number_of_workers():
    kwargs = dict(quality="mixed", seed=3, env_options={"max_episode_steps": 20}, progress=False)
    one = collect("metaworld/push-v3", 3, workers=1, **kwargs)
    two = collect("metaworld/push-v3", 3, workers=2, **kwargs)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a.observations, b.observations)
        np.testing.assert_array_equal(a.actions, b.actions)
        assert a.metadata == b.metadata


def test_quality_levels_and_bad_collection_arguments():
    from embodied.data.collect import behaviours_for

    mixed = behaviours_for(1000, 0, "mixed", "scripted", 0.0)
    shares = {q: sum(b.quality == q for b in mixed) / 1000 for q in ("expert", "medium", "random")}
    assert shares["expert"] == pytest.approx(0.2, abs=0.04) and shares["random"] == pytest.approx(0.4, abs=0.05)
    medium = behaviours_for(5, 0, "medium", "scripted", 0.0, "metaworld/push-v3")
    assert all(b.noise == pytest.approx(0.88) and b.quality == "medium" for b in medium)  # calibrated per task
    with pytest.raises(DatasetError, match="unknown quality"):
        behaviours_for(3, 0, "great", "scripted", 0.0)
    with pytest.raises(DatasetError, match="noise"):
        behaviours_for(3, 0, None, "scripted", -1.0)
    with pytest.raises(DatasetError, match="policy must be 'scripted', 'random' or a checkpoint"):
        behaviours_for(3, 0, None, "/no/such/checkpoint.pt", 0.0)


def test_a_failed_write_leaves_nothing_under_the_final_name(minari_root, monkeypatch):
    write_dataset("keep", synthetic(), **spaces())
    before = [e.rewards for e in read_episodes("keep")]
    calls = {"n": 0}
    original = store._to_buffer

    def failing(episode, index, action_space):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("disk full")
        return original(episode, index, action_space)

    monkeypatch.setattr(store, "_to_buffer", failing)
    with pytest.raises(RuntimeError, match="disk full"):
        write_dataset("fresh", synthetic(), **spaces())
    with pytest.raises(RuntimeError, match="disk full"):
        calls["n"] = 0
        write_dataset("keep", synthetic(seed=1), **spaces(), overwrite=True)
    assert "embodied/fresh-v0" not in store.list_datasets()
    assert not any(p.name.startswith(".") for p in (minari_root / "embodied").iterdir())  # no temporaries
    after = [e.rewards for e in read_episodes("keep")]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))  # the old dataset survived


def test_existing_dataset_is_not_overwritten_by_accident():
    write_dataset("once", synthetic(), **spaces())
    with pytest.raises(DatasetError, match="already exists"):
        write_dataset("once", synthetic(), **spaces())


def test_unknown_dataset_names_the_closest():
    write_dataset("metaworld-push-medium", synthetic(), **spaces())
    with pytest.raises(DatasetError, match="embodied/metaworld-push-medium-v0"):
        load_dataset("metaworld-psh-medium")


def test_lengths_that_disagree_name_the_key():
    good = synthetic()[0]
    with pytest.raises(DatasetError, match="'actions' has 4 entries but 'rewards' has 5"):
        Episode(good.observations, good.actions[:4], good.rewards, good.terminations, good.truncations)
    with pytest.raises(DatasetError, match="'observations' has 5 entries, expected 6"):
        Episode(good.observations[:5], good.actions, good.rewards, good.terminations, good.truncations)


def test_truncated_file_and_missing_key_are_clear_errors(minari_root):
    path = write_dataset("broken", synthetic(), **spaces())
    main_file = path / "data" / "main_data.hdf5"
    with h5py.File(main_file, "a") as file:
        del file["episode_1"]["rewards"]
    with pytest.raises(DatasetError, match=r"main_data.hdf5.*episode_1.*'rewards'"):
        list(read_episodes("broken"))
    data = main_file.read_bytes()
    main_file.write_bytes(data[: len(data) // 2])
    with pytest.raises(DatasetError, match=r"main_data.hdf5.*truncated or corrupt"):
        list(read_episodes("broken"))


def test_action_free_episodes_round_trip_and_are_flagged():
    episodes = store.strip_actions(synthetic((5, 3, 4, 6), terminal_last=(1, 0, 1, 0)), fraction=0.5, seed=0)
    assert sum(e.actions is None for e in episodes) == 2
    write_dataset("semi", episodes, **spaces())
    theirs = minari.load_dataset("embodied/semi-v0")  # Minari still reads them (NaN actions)
    assert theirs.total_episodes == 4
    back = list(read_episodes("semi"))
    assert [e.has_actions for e in back] == [e.has_actions for e in episodes]
    dataset = load_dataset("semi")
    assert 0.3 < dataset.action_free_fraction < 0.7
    batch = dataset.sample(256, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(batch.actions).all()  # action-free rows are never drawn for (s, a) batches
    free = dataset.sample(256, generator=torch.Generator().manual_seed(0), require_actions=False)
    assert torch.isnan(free.actions).any()


# --- samplers ------------------------------------------------------------------------------


def test_transitions_never_cross_episode_boundaries():
    dataset = Dataset(synthetic(lengths=(5, 3, 4)))
    assert dataset.num_transitions == 12
    batch = dataset.sample(2000, generator=torch.Generator().manual_seed(0))
    obs, nxt = batch.observations, batch.next_observations
    assert torch.equal(obs[:, 0], nxt[:, 0])  # same episode
    assert torch.equal(nxt[:, 1], obs[:, 1] + 1)  # the next step
    assert set(obs[:, 0].tolist()) == {0.0, 1.0, 2.0}
    # rewards are (step + 1) + 10 * episode; terminals only at the real terminal steps.
    assert torch.equal(batch.rewards, obs[:, 1] + 1 + 10 * obs[:, 0])
    is_last = obs[:, 1] + 1 == torch.tensor([5.0, 3.0, 4.0])[obs[:, 0].long()]
    expected_terminal = is_last & (obs[:, 0] != 1)  # episode 1 is truncated, not terminal
    assert torch.equal(batch.terminals.bool(), expected_terminal)


def test_seeded_batches_repeat():
    dataset = Dataset(synthetic())
    a = dataset.sample(64, generator=torch.Generator().manual_seed(5))
    b = dataset.sample(64, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.observations, b.observations)


def test_nstep_returns_match_hand_computation():
    dataset = Dataset(synthetic(lengths=(5, 3, 4)))
    gamma, n = 0.5, 3
    batch = dataset.sample_nstep(3000, n, gamma, generator=torch.Generator().manual_seed(1))
    lengths, terminal = [5, 3, 4], [True, False, True]
    for obs, ret, nxt, term, disc in zip(
        batch.observations, batch.rewards, batch.next_observations, batch.terminals, batch.discounts
    ):
        episode, step = int(obs[0]), int(obs[1])
        k = min(n, lengths[episode] - step)
        expected = sum(gamma**j * (step + j + 1 + 10 * episode) for j in range(k))
        assert ret.item() == pytest.approx(expected)
        assert int(nxt[1]) == step + k and int(nxt[0]) == episode
        assert disc.item() == pytest.approx(gamma**k)
        assert bool(term) == (terminal[episode] and step + k == lengths[episode])


def test_segments_stay_inside_one_episode():
    dataset = Dataset(synthetic(lengths=(5, 3, 4)))
    segments = dataset.sample_segments(500, 4, generator=torch.Generator().manual_seed(0))
    obs = segments["observations"]
    assert obs.shape == (500, 5, 2) and segments["actions"].shape == (500, 4, 2)
    assert (obs[:, :, 0] == obs[:, :1, 0]).all()  # one episode per segment
    assert (obs[:, 1:, 1] - obs[:, :-1, 1] == 1).all()
    assert set(obs[:, 0, 0].tolist()) == {0.0, 2.0}  # episode 1 (3 steps) is too short
    with pytest.raises(DatasetError, match="no episode has 6 consecutive steps"):
        dataset.sample_segments(4, 6)


def test_memory_is_close_to_the_raw_arrays():
    episodes = synthetic(lengths=[500] * 20, obs_dim=39, terminal_last=[False] * 20)
    # Raw: float32 observations (T+1 rows) and actions, float32 rewards, bool end flags.
    raw = sum(e.observations.nbytes + e.actions.nbytes + len(e) * (4 + 2) for e in episodes)
    dataset = Dataset(episodes)
    assert dataset.nbytes <= 1.5 * raw


# --- command line ---------------------------------------------------------------------------


def test_cli_collect_info_list_strip(capsys):
    assert main(["collect", "metaworld/reach-v3", "--quality", "random", "--episodes", "2", "--name", "r",
                 "-o", "max_episode_steps=10"]) == 0  # fmt: skip
    assert "episodes: 2" in capsys.readouterr().out
    assert main(["dataset", "list"]) == 0
    assert "embodied/r-v0" in capsys.readouterr().out
    assert main(["dataset", "strip-actions", "r", "--fraction", "0.5", "--name-out", "r-semi"]) == 0
    assert main(["dataset", "info", "r-semi"]) == 0
    assert "action_free_episodes: 1" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["dataset", "info", "nope"], "unknown dataset 'nope'"),
        (["collect", "metaworld/psh-v3", "--episodes", "1", "--name", "x"], "Closest valid ids"),
        (["collect", "metaworld/push-v3", "--episodes", "0", "--name", "x"], "episodes must be >= 1"),
        (["collect", "metaworld/push-v3", "--episodes", "1", "--name", "bad name!"], "bad dataset name"),
    ],
)
def test_cli_data_errors(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_image_datasets_are_uint8_on_disk_and_load_lazily():
    collect("nav/open-v0", 3, name="nav-pixels", policy="random", progress=False,
            env_options={"obs": "state+pixels", "image_size": 16, "max_episode_steps": 12})  # fmt: skip
    path = store.dataset_path("nav-pixels") / "data" / "main_data.hdf5"
    with h5py.File(path, "r") as file:
        assert file["episode_0/observations/pixels"].dtype == np.uint8
    eager = load_dataset("nav-pixels")
    lazy = load_dataset("nav-pixels", lazy_images=True)
    assert lazy.nbytes < eager.nbytes / 2  # the frames stayed on disk
    generator = torch.Generator().manual_seed(0)
    a = eager.sample_segments(8, 5, generator=generator)
    b = lazy.sample_segments(8, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a["observations"]["pixels"], b["observations"]["pixels"])
    assert b["observations"]["pixels"].shape == (8, 6, 16, 16, 3)
    assert torch.equal(lazy.observations["pixels"].materialize(), eager.observations["pixels"])
