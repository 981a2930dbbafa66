"""Episodes, and their storage in Minari's on-disk format (HDF5 backend), local only.

A dataset written here is a Minari dataset: ``minari.load_dataset(id)`` reads it with
Minari's own code. On disk it lives at ``$MINARI_DATASETS_PATH/<id>/data`` (default
``~/.minari/datasets``). Writing goes to a hidden temporary directory beside it, renamed
into place only when complete, so a crash never leaves a half-written dataset under
the final name.

Conventions kept from Minari: ``observations`` and ``infos`` have T+1 entries (the reset
observation first), ``actions``, ``rewards``, ``terminations`` and ``truncations`` have T.
A Meta-World episode cut at 500 steps is truncated, not terminal. Episode metadata
(``policy``, ``noise``, ``quality``, ``has_actions``, ...) is stored in each episode's
HDF5 attributes, where Minari's ``get_episode_metadata`` finds it.

Action-free episodes (observations and rewards only, for semi-supervised offline RL)
store NaN actions, so Minari still reads them, and carry ``has_actions=False``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import gymnasium as gym
import numpy as np

Array = np.ndarray
Observation = Array | dict[str, Array]

DEFAULT_NAMESPACE = "embodied"
#: ``algorithm_name`` of a dataset whose rewards a preference reward model wrote
#: (:func:`embodied.rewards.models.relabel_dataset`); IQL reads them unscaled.
LEARNED_REWARDS = "reward-model-relabel"
_ID = re.compile(r"^(?:(?P<namespace>[\w-]+)/)?(?P<name>[\w.-]+?)(?:-v(?P<version>\d+))?$")


class DatasetError(ValueError):
    """A dataset is missing, malformed or inconsistent; the message says where."""


@dataclass
class Episode:
    """One episode: T+1 observations and infos, T actions, rewards and end flags."""

    observations: Observation
    actions: Array | None
    rewards: Array
    terminations: Array
    truncations: Array
    infos: dict[str, Array] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.rewards = np.asarray(self.rewards, dtype=np.float64)
        self.terminations = np.asarray(self.terminations, dtype=bool)
        self.truncations = np.asarray(self.truncations, dtype=bool)
        self.validate()

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def has_actions(self) -> bool:
        return self.actions is not None

    @property
    def success(self) -> bool | None:
        """True if ``success`` was ever true (Meta-World's definition), None if unrecorded."""
        if "success" not in self.infos:
            return None
        return bool(np.any(self.infos["success"]))

    def validate(self, where: str = "episode") -> None:
        """Raise :class:`DatasetError` naming the key whose length disagrees."""
        steps = len(self.rewards)
        expected = {"terminations": steps, "truncations": steps}
        if self.actions is not None:
            expected["actions"] = steps
        for key, length in expected.items():
            value = getattr(self, key)
            if len(value) != length:
                raise DatasetError(f"{where}: '{key}' has {len(value)} entries but 'rewards' has {steps}")
        for key, value in _leaves("observations", self.observations):
            if len(value) != steps + 1:
                raise DatasetError(f"{where}: '{key}' has {len(value)} entries, expected {steps + 1} (T+1 for T={steps})")
        for key, value in self.infos.items():
            if len(value) not in (steps, steps + 1):
                raise DatasetError(f"{where}: 'infos/{key}' has {len(value)} entries, expected {steps + 1}")


def _leaves(prefix: str, value: Observation) -> Iterator[tuple[str, Array]]:
    if isinstance(value, Mapping):
        for key, sub in value.items():
            yield from _leaves(f"{prefix}/{key}", sub)
    else:
        yield prefix, value


def dataset_id(name: str) -> str:
    """Normalise a dataset name to a Minari id: ``push-medium`` -> ``embodied/push-medium-v0``."""
    match = _ID.match(name or "")
    if not match:
        raise DatasetError(
            f"bad dataset name {name!r}: use letters, digits, '-', '_' and '.', optionally "
            "'namespace/name' and a '-vN' version"
        )
    namespace = match["namespace"] or DEFAULT_NAMESPACE
    return f"{namespace}/{match['name']}-v{match['version'] or 0}"


def datasets_root() -> Path:
    """Where Minari keeps local datasets (``MINARI_DATASETS_PATH`` or ``~/.minari/datasets``)."""
    root = Path(os.environ.get("MINARI_DATASETS_PATH") or Path.home() / ".minari" / "datasets")
    root.mkdir(parents=True, exist_ok=True)
    return root


def dataset_path(name: str) -> Path:
    return datasets_root() / dataset_id(name)


def list_datasets() -> dict[str, dict[str, Any]]:
    """Local datasets (id -> Minari metadata), hidden temporaries excluded."""
    found = {}
    for metadata_file in sorted(datasets_root().glob("**/data/metadata.json")):
        if any(part.startswith(".") for part in metadata_file.relative_to(datasets_root()).parts):
            continue
        metadata = json.loads(metadata_file.read_text())
        found[metadata.get("dataset_id", str(metadata_file.parent.parent))] = metadata
    return found


def write_dataset(
    name: str,
    episodes: Iterable[Episode],
    env: gym.Env | str | None = None,
    *,
    observation_space: gym.Space | None = None,
    action_space: gym.Space | None = None,
    algorithm_name: str = "unknown",
    description: str = "",
    overwrite: bool = False,
) -> Path:
    """Write episodes as a Minari dataset, atomically; returns the dataset's directory.

    ``env`` (an env made by ``embodied.make`` or a registered id) records the env spec so
    ``MinariDataset.recover_environment()`` rebuilds it; without it, pass both spaces.
    """
    import h5py
    import minari
    from minari.dataset.minari_storage import MinariStorage

    full_id = dataset_id(name)
    final = datasets_root() / full_id
    if final.exists() and not overwrite:
        raise DatasetError(f"dataset {full_id!r} already exists at {final}; pass overwrite=True or another name")
    env_spec = None
    if env is not None:
        if isinstance(env, str):
            from embodied.envs import resolve

            env = gym.make(resolve(env))
        env_spec = env.spec
        observation_space = observation_space or env.observation_space
        action_space = action_space or env.action_space
    if observation_space is None or action_space is None:
        raise DatasetError(f"{full_id}: pass env, or both observation_space and action_space")

    tmp = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "data").mkdir(parents=True)
        storage = MinariStorage.new(
            tmp / "data",
            observation_space=observation_space,
            action_space=action_space,
            env_spec=env_spec,
            data_format="hdf5",
            jpeg_encoding=False,  # images stay exact uint8
        )
        metadata = {
            "dataset_id": full_id,
            "minari_version": minari.__version__,
            "algorithm_name": algorithm_name,
            "description": description or f"{full_id}, written by embodied",
            "author": {"embodied"},
        }
        if env_spec is not None:
            metadata["eval_env_spec"] = env_spec.to_json()
        storage.update_metadata(metadata)
        count = 0
        metadatas = []
        for index, episode in enumerate(episodes):
            episode.validate(f"{full_id} episode {index}")
            storage.update_episodes([_to_buffer(episode, index, action_space)])
            metadatas.append({**_flat_metadata(episode.metadata), "has_actions": episode.has_actions})
            count += 1
        if count == 0:
            raise DatasetError(f"{full_id}: no episodes to write")
        with h5py.File(tmp / "data" / "main_data.hdf5", "a") as file:
            for index, attrs in enumerate(metadatas):
                file[f"episode_{index}"].attrs.update(attrs)
        storage.update_metadata({"dataset_size": storage.get_size()})
        if final.exists():
            shutil.rmtree(final)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _flat_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """HDF5 attributes hold scalars, strings and arrays; anything else goes in as JSON."""
    flat = {}
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, (bool, int, float, str, np.generic, np.ndarray)):
            flat[key] = value
        else:
            flat[key] = json.dumps(value)
    return flat


def _to_buffer(episode: Episode, index: int, action_space: gym.Space):
    from minari.data_collector import EpisodeBuffer

    actions = episode.actions
    if actions is None:
        actions = np.full((len(episode), *action_space.shape), np.nan, dtype=np.float32)
    infos = {key: np.asarray(value) for key, value in episode.infos.items()}
    return EpisodeBuffer(
        id=index,
        seed=episode.metadata.get("seed"),
        observations=episode.observations,
        actions=np.asarray(actions),
        rewards=episode.rewards,
        terminations=episode.terminations,
        truncations=episode.truncations,
        infos=infos or None,
    )


class EpisodeFile:
    """Reads episodes from a dataset's HDF5 file, reopening it every ``reopen_every``
    episodes: HDF5 keeps the metadata of every object it has read until the file closes,
    which on a 2,000-episode file costs more memory than the data of a small dataset."""

    def __init__(self, name: str, reopen_every: int = 64):
        import h5py

        self.path = _existing(name) / "data" / "main_data.hdf5"
        self.reopen_every = reopen_every
        self._reads = 0
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as error:
            raise DatasetError(f"cannot open {self.path}: {error} (is the file truncated or corrupt?)") from None
        self.count = len(self.file.keys())

    def _fresh(self):
        import h5py

        self._reads += 1
        if self._reads % self.reopen_every == 0:
            self.file.close()
            self.file = h5py.File(self.path, "r")
        return self.file

    def read(self, index: int, lazy_images: bool = False) -> Episode:
        return read_episode(self._fresh(), index, where=str(self.path), lazy_images=lazy_images)

    def group(self, index: int):
        """The HDF5 group of one episode (for its shapes and attributes)."""
        key = f"episode_{index}"
        file = self._fresh()
        if key not in file:
            raise DatasetError(f"{self.path}: no {key} (the file has {self.count} episodes)")
        return file[key]

    def metadata(self) -> dict[str, Any]:
        """The dataset's Minari metadata (``metadata.json`` beside the HDF5 file)."""
        path = self.path.with_name("metadata.json")
        return json.loads(path.read_text()) if path.exists() else {}

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> "EpisodeFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_episodes(name: str, indices: Iterable[int] | None = None, lazy_images: bool = False) -> Iterator[Episode]:
    """Read episodes of a local dataset (the training view is :func:`load_dataset`).

    With ``lazy_images``, image observations (uint8, 3 or more dimensions) are
    :class:`StoredArray` references read from disk only when indexed.
    """
    with EpisodeFile(name) as source:
        for index in range(source.count) if indices is None else indices:
            yield source.read(index, lazy_images=lazy_images)


def read_episode(file, index: int, where: str, lazy_images: bool = False) -> Episode:
    """One episode from an open Minari HDF5 file, with errors naming file, episode and key."""
    key = f"episode_{index}"
    if key not in file:
        raise DatasetError(f"{where}: no {key} (the file has {len(file.keys())} episodes)")
    group = file[key]
    for required in ("observations", "actions", "rewards", "terminations", "truncations"):
        if required not in group:
            raise DatasetError(f"{where}: {key} has no '{required}'")
    try:
        attrs = dict(group.attrs)
        metadata = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in attrs.items()}
        has_actions = bool(metadata.pop("has_actions", True))
        actions = group["actions"][()] if has_actions else None
        infos = {k: v[()] for k, v in group["infos"].items() if hasattr(v, "shape")} if "infos" in group else {}
        return Episode(
            observations=_read_tree(group["observations"], lazy_images),
            actions=actions,
            rewards=group["rewards"][()],
            terminations=group["terminations"][()],
            truncations=group["truncations"][()],
            infos=infos,
            metadata={**metadata, "has_actions": has_actions},
        )
    except DatasetError as error:
        raise DatasetError(f"{where}: {key}: {error}") from None
    except OSError as error:  # h5py's error for unreadable (truncated) blocks
        raise DatasetError(f"{where}: {key}: cannot read data: {error}") from None


def _read_tree(node, lazy_images: bool = False) -> Observation:
    if hasattr(node, "keys"):
        return {key: _read_tree(node[key], lazy_images) for key in node.keys()}
    if lazy_images and node.dtype == np.uint8 and node.ndim >= 3:
        return StoredArray(node.file.filename, node.name, node.shape, node.dtype)
    return node[()]


@dataclass(frozen=True)
class StoredArray:
    """An array left on disk in an HDF5 file (image observations), read when indexed."""

    file_path: str
    key: str
    shape: tuple
    dtype: np.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        import h5py

        with h5py.File(self.file_path, "r") as file:
            return file[self.key][index]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        array = self[()]
        return array if dtype is None else array.astype(dtype)


def _existing(name: str) -> Path:
    path = dataset_path(name)
    if not (path / "data" / "metadata.json").exists():
        known = list(list_datasets())
        from embodied.envs.wrappers import closest

        near = closest(dataset_id(name), known)
        hint = f" Closest: {', '.join(near)}." if near else f" Local datasets: {', '.join(known) or 'none'}."
        raise DatasetError(f"unknown dataset {name!r} (looked in {path}).{hint}")
    return path


def delete_dataset(name: str) -> None:
    shutil.rmtree(_existing(name))


def import_minari(source: str, name: str | None = None, overwrite: bool = False) -> list[Episode] | Path:
    """Read a Minari dataset written by anyone (any Minari format, JPEG frames included)
    through Minari's own loader; write it as our dataset ``name`` if given."""
    import minari

    try:
        dataset = minari.load_dataset(source) if not Path(source).exists() else minari.MinariDataset(Path(source))
    except (FileNotFoundError, ValueError) as error:
        raise DatasetError(f"cannot load Minari dataset {source!r}: {error}") from None
    metadata = list(dataset.storage.get_episode_metadata(range(dataset.total_episodes)))
    episodes = []
    for data, episode_metadata in zip(dataset.iterate_episodes(), metadata):
        has_actions = bool(episode_metadata.pop("has_actions", True))
        infos = {k: np.asarray(v) for k, v in (data.infos or {}).items() if not isinstance(v, dict)}
        episodes.append(
            Episode(
                observations=data.observations,
                actions=data.actions if has_actions else None,
                rewards=data.rewards,
                terminations=data.terminations,
                truncations=data.truncations,
                infos=infos,
                metadata={**episode_metadata, "has_actions": has_actions, "source": str(source)},
            )
        )
    if name is None:
        return episodes
    env_spec = dataset.spec.env_spec
    return write_dataset(
        name, episodes, observation_space=dataset.observation_space, action_space=dataset.action_space,
        env=gym.make(env_spec) if env_spec is not None and _can_make(env_spec) else None,
        algorithm_name=dataset.spec.algorithm_name or "unknown", description=f"imported from Minari {source}",
        overwrite=overwrite,
    )  # fmt: skip


def _can_make(env_spec) -> bool:
    try:
        gym.make(env_spec).close()
        return True
    except Exception:  # an env whose package is not installed: keep the data, drop the spec
        return False


def export_minari(name: str, path: str | os.PathLike) -> Path:
    """Copy a dataset's Minari directory to ``path`` (for sharing or another Minari root)."""
    source = _existing(name)
    target = Path(path)
    if target.exists():
        raise DatasetError(f"{target} already exists")
    tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        shutil.copytree(source, tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def strip_actions(episodes: list[Episode], fraction: float, seed: int = 0) -> list[Episode]:
    """Make ``fraction`` of the episodes action-free (chosen by ``seed``), for the
    semi-supervised offline RL setting (Zheng et al. 2023)."""
    if not 0.0 <= fraction <= 1.0:
        raise DatasetError(f"fraction must be in [0, 1], got {fraction}")
    count = int(round(fraction * len(episodes)))
    chosen = set(np.random.default_rng(seed).permutation(len(episodes))[:count].tolist())
    return [
        Episode(
            observations=e.observations, actions=None if i in chosen else e.actions, rewards=e.rewards,
            terminations=e.terminations, truncations=e.truncations, infos=e.infos,
            metadata={**e.metadata, "has_actions": i not in chosen},
        )  # fmt: skip
        for i, e in enumerate(episodes)
    ]


def dataset_info(name: str) -> dict[str, Any]:
    """Summary of a local dataset: size, episodes, steps, returns, success, qualities."""
    import h5py

    path = _existing(name)
    metadata = json.loads((path / "data" / "metadata.json").read_text())
    lengths, returns, successes, action_free, qualities = [], [], [], 0, {}
    with h5py.File(path / "data" / "main_data.hdf5", "r") as file:
        for key in file:
            group = file[key]
            rewards = group["rewards"][()]
            lengths.append(len(rewards))
            returns.append(float(rewards.sum()))
            if "infos" in group and "success" in group["infos"]:
                successes.append(bool(group["infos"]["success"][()].any()))
            action_free += not bool(group.attrs.get("has_actions", True))
            quality = group.attrs.get("quality")
            if quality is not None:
                qualities[str(quality)] = qualities.get(str(quality), 0) + 1
    info = {
        "id": metadata.get("dataset_id"),
        "path": str(path),
        "episodes": len(lengths),
        "steps": int(sum(lengths)),
        "return_mean": float(np.mean(returns)) if returns else float("nan"),
        "return_min": float(np.min(returns)) if returns else float("nan"),
        "return_max": float(np.max(returns)) if returns else float("nan"),
        "action_free_episodes": action_free,
        "size_mb": round(float(metadata.get("dataset_size", 0.0)), 3),
        "algorithm": metadata.get("algorithm_name"),
        "description": metadata.get("description"),
    }
    if successes:
        info["success_rate"] = float(np.mean(successes))
    if qualities:
        info["qualities"] = qualities
    return info


def dataset_spaces(name: str) -> dict[str, gym.Space]:
    """The observation and action spaces a dataset was written with."""
    from minari.serialization import deserialize_space

    metadata = json.loads((_existing(name) / "data" / "metadata.json").read_text())
    return {
        "observation_space": deserialize_space(metadata["observation_space"]),
        "action_space": deserialize_space(metadata["action_space"]),
    }
