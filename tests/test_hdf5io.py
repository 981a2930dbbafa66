"""robomimic and D4RL HDF5 import/export: exact round trips (directly and through Minari),
the layouts on disk, hand-built files, and clear errors that leave nothing half-written.

Meta-World data is collected once per module (3 episodes of 500 steps, about 6 s);
the error cases use small synthetic episodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import minari
import numpy as np
import pytest

from embodied.data import DatasetError, Episode, dataset_id, list_datasets, write_dataset
from embodied.data.collect import collect
from embodied.data.hdf5io import export_d4rl, export_robomimic, import_d4rl, import_robomimic

EXPORTS = {"robomimic": export_robomimic, "d4rl": export_d4rl}
IMPORTS = {"robomimic": import_robomimic, "d4rl": import_d4rl}


@pytest.fixture
def datasets(monkeypatch, tmp_path) -> Path:
    root = tmp_path / "datasets"
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(root))
    return root


@pytest.fixture(scope="module")
def collected() -> list[Episode]:
    return collect("metaworld/reach-v3", 3, quality="mixed", progress=False, name=None)


def synthetic_episodes(count: int = 4, steps: int = 10, width: int = 5) -> list[Episode]:
    rng = np.random.default_rng(0)
    episodes = []
    for index in range(count):
        terminated = index == count - 1  # the last one terminates, the others time out
        episodes.append(
            Episode(
                observations=rng.standard_normal((steps + 1, width)).astype(np.float32),
                actions=rng.uniform(-1, 1, (steps, 2)).astype(np.float32),
                rewards=rng.standard_normal(steps),
                terminations=np.arange(steps) == steps - 1 if terminated else np.zeros(steps, bool),
                truncations=np.zeros(steps, bool) if terminated else np.arange(steps) == steps - 1,
                metadata={"index": index},
            )
        )
    return episodes


def assert_same_episodes(actual, expected) -> None:
    actual, expected = list(actual), list(expected)
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        for key in ("observations", "actions", "rewards", "terminations", "truncations"):
            got_value, want_value = np.asarray(getattr(got, key)), np.asarray(getattr(want, key))
            np.testing.assert_array_equal(got_value, want_value, err_msg=key)
            assert got_value.dtype == want_value.dtype, key


# --- round trips ---------------------------------------------------------------------


def test_robomimic_round_trip_is_exact_and_has_robomimic_layout(collected, tmp_path):
    path = export_robomimic(collected, tmp_path / "reach.hdf5")

    assert_same_episodes(import_robomimic(path), collected)
    with h5py.File(path, "r") as file:
        data = file["data"]
        assert data.attrs["total"] == 1500
        env_args = json.loads(data.attrs["env_args"])
        assert env_args == {"env_name": "embodied/metaworld-reach-v3", "type": 2, "env_kwargs": {}}
        demo = data["demo_2"]
        assert demo.attrs["num_samples"] == 500
        assert demo["obs/state"].shape == demo["next_obs/state"].shape == (500, 39)
        np.testing.assert_array_equal(demo["next_obs/state"][:-1], demo["obs/state"][1:])
        assert demo["actions"].shape == (500, 4)
        assert demo["dones"].dtype == np.int64 and not demo["dones"][()].any()  # truncated, not done
        assert "states" not in demo  # Meta-World collections carry no sim states
    imported = import_robomimic(path)
    assert [e.metadata["quality"] for e in imported] == [e.metadata["quality"] for e in collected]


def test_d4rl_round_trip_is_exact_and_has_d4rl_layout(collected, tmp_path):
    path = export_d4rl(collected, tmp_path / "reach.hdf5")

    assert_same_episodes(import_d4rl(path), collected)
    with h5py.File(path, "r") as file:
        assert file["observations"].shape == file["next_observations"].shape == (1500, 39)
        assert file["timeouts"][()].sum() == 3 and not file["terminals"][()].any()
        np.testing.assert_array_equal(file["infos/success"][:500], collected[0].infos["success"][:500])


def test_d4rl_without_next_observations_drops_each_final_transition(collected, tmp_path):
    path = export_d4rl(collected, tmp_path / "reach.hdf5")
    with h5py.File(path, "a") as file:
        del file["next_observations"]

    imported = import_d4rl(path)

    assert [len(e) for e in imported] == [499] * 3
    for got, want in zip(imported, collected):
        np.testing.assert_array_equal(got.observations, want.observations[:500])
        np.testing.assert_array_equal(got.actions, want.actions[:499])
        assert got.truncations[-1] and got.truncations.sum() == 1 and not got.terminations.any()
        assert len(got.infos["success"]) == 500  # infos stay with their observations


def test_minari_round_trips(collected, datasets, tmp_path):
    # episodes -> Minari dataset -> Minari's own reader
    write_dataset("reach", collected, "metaworld/reach-v3")
    assert_same_episodes(minari.load_dataset(dataset_id("reach")).iterate_episodes(), collected)

    # a dataset by name -> robomimic (env_args from the dataset's env spec) -> a dataset again
    path = export_robomimic("reach", tmp_path / "reach.hdf5")
    with h5py.File(path, "r") as file:
        assert json.loads(file["data"].attrs["env_args"])["env_name"] == "embodied/metaworld-reach-v3"
    import_robomimic(path, name="reach-from-robomimic", env="metaworld/reach-v3")
    loaded = minari.load_dataset(dataset_id("reach-from-robomimic"))
    assert_same_episodes(loaded.iterate_episodes(), collected)
    assert loaded.recover_environment().spec.id == "embodied/metaworld-reach-v3"

    # D4RL -> a dataset with spaces inferred from the data
    import_d4rl(export_d4rl(collected, tmp_path / "reach-d4rl.hdf5"), name="reach-from-d4rl")
    loaded = minari.load_dataset(dataset_id("reach-from-d4rl"))
    assert_same_episodes(loaded.iterate_episodes(), collected)
    assert loaded.observation_space.shape == (39,) and loaded.observation_space.dtype == np.float32
    assert np.isinf(loaded.observation_space.low).all() and loaded.action_space.shape == (4,)


def test_robomimic_obs_keys_split_flat_observations_and_come_back_in_order(tmp_path):
    episodes = synthetic_episodes()
    obs_keys = {"object": slice(3, 5), "robot0_eef_pos": slice(0, 3)}  # not in column order
    path = export_robomimic(episodes, tmp_path / "split.hdf5", obs_keys=obs_keys)

    with h5py.File(path, "r") as file:
        assert set(file["data/demo_0/obs"]) == {"object", "robot0_eef_pos"}
        np.testing.assert_array_equal(file["data/demo_0/obs/object"][()], episodes[0].observations[:-1, 3:5])
    assert_same_episodes(import_robomimic(path), episodes)  # recorded order, not alphabetical
    as_dict = import_robomimic(path, keep_dict=True)[0].observations
    np.testing.assert_array_equal(as_dict["robot0_eef_pos"], episodes[0].observations[:, :3])

    with pytest.raises(DatasetError, match="cover each column once"):
        export_robomimic(episodes, tmp_path / "gap.hdf5", obs_keys={"a": slice(0, 2), "b": slice(3, 5)})


def test_robomimic_env_args_for_a_robomimic_task(tmp_path):
    path = export_robomimic(synthetic_episodes(1), tmp_path / "lift.hdf5", env="robomimic/Lift")
    with h5py.File(path, "r") as file:
        assert json.loads(file["data"].attrs["env_args"]) == {"env_name": "Lift", "type": 1, "env_kwargs": {}}


def test_import_hand_built_robomimic_file(tmp_path):
    path = tmp_path / "hand.hdf5"
    steps = 4
    with h5py.File(path, "w") as file:
        for number, done_at_end in ((10, False), (0, True), (2, True)):  # numbered out of order
            demo = file.create_group(f"data/demo_{number}")
            for group, offset in (("obs", 0), ("next_obs", 1)):
                rows = np.arange(offset, steps + offset, dtype=np.float32)[:, None] + number
                demo[f"{group}/robot0_eef_pos"] = np.repeat(rows, 3, axis=1)
                demo[f"{group}/object"] = -np.repeat(rows, 2, axis=1)
            demo["actions"] = np.zeros((steps, 7))
            demo["rewards"] = np.full(steps, float(number))
            demo["dones"] = np.array([0, 0, 0, int(done_at_end)])
            demo["states"] = np.ones((steps, 6))
            demo.attrs["num_samples"] = steps
        file["mask/train"] = np.array([b"demo_0", b"demo_2"])  # filter keys: ignored

    episodes = import_robomimic(path)

    assert [e.rewards[0] for e in episodes] == [0.0, 2.0, 10.0]  # numeric demo order
    first = episodes[0]
    assert first.observations.shape == (steps + 1, 5)
    np.testing.assert_array_equal(first.observations[:, :2], -np.arange(5.0)[:, None].repeat(2, 1))  # sorted: object
    np.testing.assert_array_equal(first.observations[:, 2:], np.arange(5.0)[:, None].repeat(3, 1))
    assert first.terminations.tolist() == [False, False, False, True] and not first.truncations.any()
    assert episodes[2].truncations.tolist() == [False, False, False, True] and not episodes[2].terminations.any()
    assert first.infos["states"].shape == (steps, 6)

    ordered = import_robomimic(path, obs_keys=["robot0_eef_pos", "object"])[0].observations
    np.testing.assert_array_equal(ordered[:, :3], np.arange(5.0)[:, None].repeat(3, 1))
    only_object = import_robomimic(path, obs_keys=["object"])[0].observations
    assert only_object.shape == (steps + 1, 2)
    as_dict = import_robomimic(path, keep_dict=True)[0].observations
    assert set(as_dict) == {"object", "robot0_eef_pos"} and as_dict["object"].shape == (steps + 1, 2)


def test_image_keys_need_keep_dict(tmp_path):
    path = tmp_path / "images.hdf5"
    episode = synthetic_episodes(1, steps=3)[0]
    episode.observations = {"image": np.zeros((4, 8, 8, 3), np.uint8), "state": episode.observations}
    export_robomimic([episode], path)

    with pytest.raises(DatasetError, match=r"demo_0.*'image'.*keep_dict=True"):
        import_robomimic(path)
    assert import_robomimic(path, keep_dict=True)[0].observations["image"].shape == (4, 8, 8, 3)
    assert import_robomimic(path, obs_keys=["state"])[0].observations.shape == (4, 5)


def test_d4rl_splits_at_terminals_and_timeouts_and_keeps_a_trailing_episode(tmp_path):
    path = tmp_path / "flags.hdf5"
    rows = 7
    with h5py.File(path, "w") as file:
        file["observations"] = np.arange(rows, dtype=np.float32)[:, None]
        file["next_observations"] = np.arange(1, rows + 1, dtype=np.float32)[:, None]
        file["actions"] = np.zeros((rows, 1), np.float32)
        file["rewards"] = np.arange(rows, dtype=np.float32)
        file["terminals"] = np.arange(rows) == 2
        file["timeouts"] = np.arange(rows) == 4

    episodes = import_d4rl(path)

    assert [len(e) for e in episodes] == [3, 2, 2]
    assert [e.terminations[-1] for e in episodes] == [True, False, False]
    assert [e.truncations[-1] for e in episodes] == [False, True, True]  # the trailing one: truncated
    np.testing.assert_array_equal(episodes[1].observations[:, 0], [3, 4, 5])

    with h5py.File(path, "a") as file:
        del file["next_observations"], file["timeouts"]
        file["terminals"][...] = np.isin(np.arange(rows), [2, 3])  # rows 3..3: a one-row episode
    with pytest.warns(UserWarning, match="dropped 1 one-row"):
        episodes = import_d4rl(path)
    assert [len(e) for e in episodes] == [2, 2]


# --- action-free episodes and atomic exports -----------------------------------------


@pytest.mark.parametrize("layout", ["robomimic", "d4rl"])
def test_action_free_episodes_are_refused_unless_skipped(layout, tmp_path):
    episodes = synthetic_episodes(3)
    episodes[1].actions = None
    path = tmp_path / f"{layout}.hdf5"

    with pytest.raises(DatasetError, match="episode 1 has no actions.*skip_action_free=True"):
        EXPORTS[layout](episodes, path)
    assert not path.exists() and list(tmp_path.iterdir()) == []  # no file, no temporary

    EXPORTS[layout](episodes, path, skip_action_free=True)
    assert_same_episodes(IMPORTS[layout](path), [episodes[0], episodes[2]])


def test_export_never_replaces_a_file_unless_asked(tmp_path):
    path = export_robomimic(synthetic_episodes(2), tmp_path / "data.hdf5")
    before = path.read_bytes()

    with pytest.raises(DatasetError, match="already exists"):
        export_robomimic(synthetic_episodes(3), path)
    assert path.read_bytes() == before

    export_robomimic(synthetic_episodes(3), path, overwrite=True)
    assert len(import_robomimic(path)) == 3
    assert [p.name for p in tmp_path.iterdir()] == ["data.hdf5"]


# --- errors --------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["robomimic", "d4rl"])
def test_truncated_file(layout, tmp_path, datasets):
    path = EXPORTS[layout](synthetic_episodes(), tmp_path / "cut.hdf5")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    with pytest.raises(DatasetError, match=r"cut\.hdf5.*truncated or corrupt"):
        IMPORTS[layout](path)
    with pytest.raises(DatasetError):
        IMPORTS[layout](path, name="cut")
    assert list_datasets() == {}


@pytest.mark.parametrize("layout", ["robomimic", "d4rl"])
def test_not_hdf5_and_missing_files(layout, tmp_path):
    text = tmp_path / "notes.hdf5"
    text.write_text("not an HDF5 file\n" * 100)
    with pytest.raises(DatasetError, match=r"notes\.hdf5: not an HDF5 file"):
        IMPORTS[layout](text)
    with pytest.raises(DatasetError, match=r"missing\.hdf5: no such file"):
        IMPORTS[layout](tmp_path / "missing.hdf5")


def test_wrong_layout_says_which_reader_to_use(tmp_path):
    robomimic_file = export_robomimic(synthetic_episodes(), tmp_path / "r.hdf5")
    d4rl_file = export_d4rl(synthetic_episodes(), tmp_path / "d.hdf5")
    with pytest.raises(DatasetError, match="use import_robomimic"):
        import_d4rl(robomimic_file)
    with pytest.raises(DatasetError, match="use import_d4rl"):
        import_robomimic(d4rl_file)


def test_robomimic_missing_key_names_file_demo_and_key(tmp_path, datasets):
    path = export_robomimic(synthetic_episodes(), tmp_path / "demos.hdf5")
    with h5py.File(path, "a") as file:
        del file["data/demo_3/actions"]

    with pytest.raises(DatasetError, match=r"demos\.hdf5: data/demo_3: no 'actions'"):
        import_robomimic(path)
    # demos 0-2 are written before demo_3 fails: the dataset must still not appear
    with pytest.raises(DatasetError, match="demo_3"):
        import_robomimic(path, name="broken")
    assert list_datasets() == {}
    assert list(datasets.glob("**/*broken*")) == []  # no hidden temporary left either


def test_robomimic_missing_obs_key_names_it(tmp_path):
    path = export_robomimic(synthetic_episodes(), tmp_path / "demos.hdf5")
    with pytest.raises(DatasetError, match=r"data/demo_0: no 'obs/gripper' \(next to it: state\)"):
        import_robomimic(path, obs_keys=["gripper"])


def test_robomimic_lengths_that_disagree(tmp_path):
    path = export_robomimic(synthetic_episodes(), tmp_path / "demos.hdf5")
    with h5py.File(path, "a") as file:
        actions = file["data/demo_1/actions"][()]
        del file["data/demo_1/actions"]
        file["data/demo_1/actions"] = actions[:9]  # obs/state keeps 10 rows

    with pytest.raises(DatasetError, match=r"demos\.hdf5: data/demo_1: .*actions 9.*obs/state 10"):
        import_robomimic(path)


def test_d4rl_missing_key_and_rows_that_disagree(tmp_path):
    path = export_d4rl(synthetic_episodes(), tmp_path / "flat.hdf5")
    with h5py.File(path, "a") as file:
        actions = file["actions"][()]
        del file["actions"]
    with pytest.raises(DatasetError, match=r"flat\.hdf5: no 'actions'"):
        import_d4rl(path)

    with h5py.File(path, "a") as file:
        file["actions"] = actions[:-1]
    with pytest.raises(DatasetError, match=r"flat\.hdf5: keys disagree in rows: observations 40, actions 39"):
        import_d4rl(path)
