"""robomimic and D4RL HDF5 files: import them as episodes (or a dataset), export episodes to them.

Both formats predate Minari and are what other offline-RL and imitation code reads
(robomimic's trainers, d3rlpy, CORL). Reading and writing them needs only h5py.

robomimic layout (as we read and write it)
------------------------------------------
::

    data/                      attrs: total (sum of num_samples), env_args (JSON, below)
      demo_0/                  attrs: num_samples (T), plus the episode's metadata
        obs/<key>              (T, ...)  observation before each step
        next_obs/<key>         (T, ...)  observation after each step
        actions                (T, A)
        rewards                (T,)
        dones                  (T,)      int64, 1 where the episode terminated
        states                 (T, S)    MuJoCo sim states; only if the episode has them
      demo_1/ ...
    mask/<filter_key>          demo names (train/valid splits): accepted and ignored

- ``env_args`` is robomimic's ``{"env_name", "type", "env_kwargs"}``. For an
  ``robomimic/<Task>`` env we write ``type`` 1 (robomimic's ROBOSUITE_TYPE) with
  ``env_name`` the task (``Lift``); for every other env ``type`` 2 (GYM_TYPE) with
  ``env_name`` its Gymnasium id (``embodied/metaworld-reach-v3``, which ``embodied.make``
  and ``gymnasium.make`` accept). ``env_kwargs`` are the options the env was made with
  (its spec's kwargs less the registered ``task``). The env comes from ``env=``, else the
  episodes' ``env_id`` metadata, else the source dataset's env spec; unknown, it is
  ``{"env_name": "", "type": 2, "env_kwargs": {}}`` (robomimic requires the attribute).
- Observations: flat array observations are written as one key, ``obs/state``, or split
  into named keys by ``obs_keys={"robot0_eef_pos": slice(0, 3), ...}`` (default: the
  env's ``unwrapped.obs_keys`` when a robomimic env object is passed); dict observations
  are written key by key. Because HDF5 lists a group's keys alphabetically, we record the
  export's key order in ``data`` attribute ``embodied_obs_key_order`` (robomimic ignores
  it) so that a flat observation comes back column for column.
- ``dones``: robomimic's datasets set it to 1 at a demo's last step and, depending on how
  they were made (``done_mode``), at every step where the task is solved. We write our
  ``terminations``; Meta-World episodes, cut at 500 steps, are truncated and so have all
  zeros. On import ``terminations = dones != 0`` verbatim (a mid-demo 1 marks a success
  state as absorbing, which is what robomimic means by it) and ``truncations`` is True
  only at the last step, when ``dones`` is 0 there. An episode both terminated and
  truncated at its last step comes back terminated only.
- ``states``: written only when an episode carries ``infos["states"]`` (its first T rows,
  the state before each action). Episodes without sim states (Meta-World collections)
  get no ``states`` dataset rather than an empty (T, 0) one: absence says "unknown"
  plainly, while an empty array would reach robomimic's ``reset_to`` as a zero-size
  state. On import ``states`` become ``infos["states"]`` (T rows). Other infos are not
  written (robomimic has no place for them); D4RL and Minari keep them.
- Episode metadata goes into the demo's attributes and comes back as metadata.
- Import: the T+1 observations are ``obs`` plus the last row of ``next_obs``. Keys are
  concatenated into one flat array in the order of ``obs_keys=[...]`` if given (which
  also selects keys), else the recorded export order, else sorted by name; per-step
  scalars count as one column and keys with more dimensions (images) need
  ``keep_dict=True``, which returns a dict of arrays instead. Demos are read in numeric
  order (``demo_2`` before ``demo_10``), as robomimic does.

D4RL layout (as we read and write it)
-------------------------------------
::

    observations           (N, ...)  one row per transition, all episodes end to end
    actions                (N, A)
    rewards                (N,)
    terminals              (N,)      bool
    timeouts               (N,)      bool (absent in old D4RL files: read as all False)
    next_observations      (N, ...)  always written; optional on import
    infos/<key>            (N, ...)  belongs to ``observations`` of the same row

- Export: each episode's T transitions; ``terminals`` are its terminations, ``timeouts``
  its truncations, and an episode that ends neither terminated nor truncated gets
  ``timeouts`` 1 at its last step so the boundary survives. Dict observations are
  concatenated in sorted key order (D4RL readers expect one array). Infos present in
  every episode are written, their first T rows (the last entry of a T+1 info is lost).
  Episode metadata is not written.
- Import: episodes end after every row with ``terminals | timeouts``; rows after the
  last such row form one more episode, marked truncated. With ``next_observations`` an
  episode's T+1 observations are its rows' observations plus the last row's next
  observation, exactly. Without them an episode of n rows keeps n observations and
  n - 1 steps: its final transition (action, reward, terminal flag) is dropped and it
  ends truncated; one-row episodes are dropped with a warning. ``next_observations`` is
  therefore preferred, and always written. D4RL marks ends only by flags, so an
  episode terminated or truncated before its last step comes back as several episodes.

Both formats: export refuses action-free episodes (neither format can hold them) and
names the episode, unless ``skip_action_free=True`` leaves them out. Exports write a
temporary file beside ``path`` and rename it into place, so a failed export leaves no
file and never replaces an existing one (``overwrite=True`` replaces it only on success).
Imports return episodes, or with ``name=`` write a dataset through
:func:`~embodied.data.episodes.write_dataset` (atomic: a failed import leaves no dataset),
with spaces from ``env=`` or else unbounded Boxes of the data's shapes and dtypes. Bad
files raise :class:`~embodied.data.episodes.DatasetError` naming the file, the demo and
the key.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import uuid
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np

from embodied.data.episodes import (
    Array,
    DatasetError,
    Episode,
    Observation,
    _flat_metadata,
    dataset_id,
    list_datasets,
    read_episodes,
    write_dataset,
)

if TYPE_CHECKING:
    import h5py

EpisodeSource = str | Iterable[Episode]  # a dataset name or episodes
ROBOSUITE_TYPE, GYM_TYPE = 1, 2  # robomimic's EnvType values
KEY_ORDER_ATTR = "embodied_obs_key_order"
_DEMO = re.compile(r"^demo_(\d+)$")


# --- robomimic -----------------------------------------------------------------------


def export_robomimic(
    name_or_episodes: EpisodeSource,
    path: str | os.PathLike,
    *,
    env: gym.Env | str | None = None,
    obs_keys: Mapping[str, slice] | None = None,
    skip_action_free: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a dataset (by name) or episodes as a robomimic HDF5 file; returns the path.

    ``env`` (an env or id) fills ``env_args``; ``obs_keys`` names column slices of flat
    observations (``{"robot0_eef_pos": slice(0, 3), ...}``). See the module docstring.
    """
    path = Path(path)
    if obs_keys is None and isinstance(env, gym.Env):
        obs_keys = getattr(env.unwrapped, "obs_keys", None)
    with _atomic_hdf5(path, overwrite) as file:
        data = file.create_group("data")
        total_steps = 0
        env_args: dict[str, Any] | None = None
        key_order: list[str] = []
        demo_count = 0
        for index, episode in _exportable(name_or_episodes, skip_action_free, path):
            where = f"{path}: episode {index}"
            if env_args is None:
                env_args = _env_args(env, episode, name_or_episodes)
            columns = _observation_keys(episode.observations, obs_keys, where)
            key_order = list(columns)
            steps = len(episode)
            demo = data.create_group(f"demo_{demo_count}")
            for key, column in columns.items():
                demo.create_dataset(f"obs/{key}", data=column[:-1])
                demo.create_dataset(f"next_obs/{key}", data=column[1:])
            demo.create_dataset("actions", data=episode.actions)
            demo.create_dataset("rewards", data=episode.rewards)
            demo.create_dataset("dones", data=episode.terminations.astype(np.int64))
            if "states" in episode.infos:
                demo.create_dataset("states", data=np.asarray(episode.infos["states"])[:steps])
            demo.attrs.update(_flat_metadata(episode.metadata))
            demo.attrs["num_samples"] = steps
            total_steps += steps
            demo_count += 1
        if demo_count == 0:
            raise DatasetError(f"{path}: no episodes to export")
        data.attrs["total"] = total_steps
        data.attrs["env_args"] = json.dumps(env_args, default=str)
        data.attrs[KEY_ORDER_ATTR] = json.dumps(key_order)
    return path


def import_robomimic(
    path: str | os.PathLike,
    name: str | None = None,
    *,
    env: gym.Env | str | None = None,
    obs_keys: Sequence[str] | None = None,
    keep_dict: bool = False,
    overwrite: bool = False,
) -> list[Episode] | Path:
    """Read a robomimic HDF5 file: its episodes, or with ``name`` the written dataset's path.

    ``obs_keys`` selects and orders the observation keys; ``keep_dict=True`` keeps them as
    a dict instead of concatenating them. See the module docstring for the conventions.
    """
    path = Path(path)
    with _open(path) as file:
        if "data" not in file:
            hint = " (a D4RL file? use import_d4rl)" if "observations" in file else ""
            raise DatasetError(f"{path}: no 'data' group, so not a robomimic file{hint}")
        data = file["data"]
        # robomimic sorts demos by number; a lexicographic sort would put demo_10 before demo_2
        demos = sorted((key for key in data if _DEMO.match(key)), key=lambda key: int(key[5:]))
        if not demos:
            raise DatasetError(f"{path}: 'data' has no demo_N groups")
        recorded_order = json.loads(data.attrs[KEY_ORDER_ATTR]) if KEY_ORDER_ATTR in data.attrs else None
        key_order = obs_keys or recorded_order
        episodes = (_read_demo(data[demo], f"{path}: data/{demo}", key_order, keep_dict) for demo in demos)
        if name is None:
            return list(episodes)
        # streamed while the file is open: a large file never sits in memory whole
        return _write_imported(name, episodes, env, path, overwrite)


def _read_demo(demo: h5py.Group, where: str, key_order: Sequence[str] | None, keep_dict: bool) -> Episode:
    for group in ("obs", "next_obs"):
        if group not in demo or not hasattr(demo[group], "keys"):
            raise DatasetError(f"{where}: no '{group}' group (it has: {', '.join(demo) or 'nothing'})")
    keys = list(key_order) if key_order is not None else sorted(demo["obs"])
    per_step = ["actions", "rewards", "dones", *(f"{g}/{k}" for g in ("obs", "next_obs") for k in keys)]
    if "states" in demo:
        per_step.append("states")
    lengths = {key: _rows(_dataset(demo, key, where)) for key in per_step}
    if "num_samples" in demo.attrs:
        lengths["num_samples (attribute)"] = int(demo.attrs["num_samples"])
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{key} {length}" for key, length in lengths.items())
        raise DatasetError(f"{where}: per-step keys disagree in length: {listed}")
    steps = lengths["actions"]
    if steps == 0:
        raise DatasetError(f"{where}: empty demo (0 steps), so no observation to start from")
    columns = {
        key: np.concatenate([_read(demo, f"obs/{key}", where), _read(demo, f"next_obs/{key}", where, steps - 1)])
        for key in keys
    }
    dones = _read(demo, "dones", where)
    terminations = dones != 0
    truncations = np.zeros(steps, dtype=bool)
    truncations[-1] = not terminations[-1]
    metadata = {key: _python_value(value) for key, value in demo.attrs.items() if key != "num_samples"}
    return Episode(
        observations=columns if keep_dict else _concatenate_keys(columns, where),
        actions=_read(demo, "actions", where),
        rewards=_read(demo, "rewards", where),
        terminations=terminations,
        truncations=truncations,
        infos={"states": _read(demo, "states", where)} if "states" in demo else {},
        metadata=metadata,
    )


def _observation_keys(observations: Observation, obs_keys: Mapping[str, slice] | None, where: str) -> dict[str, Array]:
    """Named T+1-row observation columns, in the order a flat array is rebuilt from."""
    if isinstance(observations, Mapping):
        nested = [key for key, value in observations.items() if isinstance(value, Mapping)]
        if nested:
            raise DatasetError(f"{where}: nested observation dicts ({', '.join(nested)}) have no robomimic form")
        return dict(observations)
    if obs_keys is None:
        return {"state": observations}
    width = observations.shape[-1]
    by_start = sorted(obs_keys.items(), key=lambda item: item[1].indices(width)[0])
    covered = np.concatenate([np.arange(width)[index] for _, index in by_start])
    # a gap or overlap would lose or duplicate columns, and the import could not undo it
    if observations.ndim != 2 or not np.array_equal(covered, np.arange(width)):
        raise DatasetError(
            f"{where}: obs_keys must split the observation's {width} columns into contiguous slices "
            f"that cover each column once; got {dict(obs_keys)}"
        )
    return {key: observations[:, index] for key, index in by_start}


def _concatenate_keys(columns: Mapping[str, Array], where: str) -> Array:
    """One flat (T+1, D) array from named columns, in the mapping's order."""
    flat = []
    for key, column in columns.items():
        if column.ndim > 2:
            raise DatasetError(
                f"{where}: obs key '{key}' has per-step shape {column.shape[1:]}, which cannot be "
                "concatenated into a flat observation; pass keep_dict=True, or obs_keys=[...] naming 1-D keys"
            )
        flat.append(column.reshape(len(column), -1))
    return np.concatenate(flat, axis=1)


# --- D4RL ----------------------------------------------------------------------------


def export_d4rl(
    name_or_episodes: EpisodeSource,
    path: str | os.PathLike,
    *,
    skip_action_free: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write a dataset (by name) or episodes as a D4RL HDF5 file; returns the path."""
    path = Path(path)
    columns: dict[str, list[Array]] = {
        key: [] for key in ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")
    }
    infos: dict[str, list[Array]] = {}
    episode_count = 0
    for index, episode in _exportable(name_or_episodes, skip_action_free, path):
        observations = _flat_observations(episode.observations, f"{path}: episode {index}")
        steps = len(episode)
        timeouts = episode.truncations.copy()
        # without a flag at its last step the episode would run into the next one on import
        timeouts[-1] |= not episode.terminations[-1]
        columns["observations"].append(observations[:-1])
        columns["next_observations"].append(observations[1:])
        columns["actions"].append(np.asarray(episode.actions))
        columns["rewards"].append(episode.rewards)
        columns["terminals"].append(episode.terminations)
        columns["timeouts"].append(timeouts)
        for key, value in episode.infos.items():
            infos.setdefault(key, []).append(np.asarray(value)[:steps])
        episode_count += 1
    if episode_count == 0:
        raise DatasetError(f"{path}: no episodes to export")
    with _atomic_hdf5(path, overwrite) as file:
        for key, parts in columns.items():
            file.create_dataset(key, data=np.concatenate(parts))
        for key, parts in infos.items():
            if len(parts) == episode_count:  # a flat column needs the key in every episode
                file.create_dataset(f"infos/{key}", data=np.concatenate(parts))
    return path


def import_d4rl(
    path: str | os.PathLike,
    name: str | None = None,
    *,
    env: gym.Env | str | None = None,
    overwrite: bool = False,
) -> list[Episode] | Path:
    """Read a D4RL HDF5 file: its episodes, or with ``name`` the written dataset's path."""
    path = Path(path)
    where = str(path)
    with _open(path) as file:
        if "observations" not in file and "data" in file:
            raise DatasetError(f"{path}: no 'observations', so not a D4RL file (robomimic? use import_robomimic)")
        arrays = {key: _read(file, key, where) for key in ("observations", "actions", "rewards", "terminals")}
        for optional in ("timeouts", "next_observations"):
            if optional in file:
                arrays[optional] = _read(file, optional, where)
        infos = {}
        if "infos" in file:
            info_keys = [key for key in file["infos"] if hasattr(file["infos"][key], "shape")]
            infos = {key: _read(file, f"infos/{key}", where) for key in info_keys}
    rows = {key: _rows(value) for key, value in arrays.items()}
    rows |= {f"infos/{key}": _rows(value) for key, value in infos.items()}
    if len(set(rows.values())) > 1:
        listed = ", ".join(f"{key} {count}" for key, count in rows.items())
        raise DatasetError(f"{path}: keys disagree in rows: {listed}")
    episodes = _split_d4rl(arrays, infos, path)
    if not episodes:
        raise DatasetError(f"{path}: no episodes (no rows, or only one-row episodes without next_observations)")
    if name is None:
        return episodes
    return _write_imported(name, episodes, env, path, overwrite)


def _split_d4rl(arrays: dict[str, Array], infos: dict[str, Array], path: Path) -> list[Episode]:
    count = len(arrays["rewards"])
    terminals = arrays["terminals"].astype(bool)
    timeouts = arrays["timeouts"].astype(bool) if "timeouts" in arrays else np.zeros(count, dtype=bool)
    ends = np.flatnonzero(terminals | timeouts) + 1
    if count and (not len(ends) or ends[-1] != count):
        ends = np.append(ends, count)  # the trailing unfinished episode, kept as truncated
    starts = np.concatenate([[0], ends[:-1]]).astype(int)
    next_observations = arrays.get("next_observations")
    episodes, dropped = [], 0
    for start, end in zip(starts, ends):
        if next_observations is not None:
            observations = np.concatenate([arrays["observations"][start:end], next_observations[end - 1 : end]])
            step_end = end
        else:
            # no next observation for the last row: keep its observation, drop its transition
            if end - start < 2:
                dropped += 1
                continue
            observations = arrays["observations"][start:end]
            step_end = end - 1
        episode_terminals = terminals[start:step_end]
        truncations = timeouts[start:step_end].copy()
        truncations[-1] |= not episode_terminals[-1]
        episodes.append(
            Episode(
                observations=observations,
                actions=arrays["actions"][start:step_end],
                rewards=arrays["rewards"][start:step_end],
                terminations=episode_terminals,
                truncations=truncations,
                # infos belong to observations: T rows with next_observations, T+1 without
                infos={key: value[start:end] for key, value in infos.items()},
            )
        )
    if dropped:
        warnings.warn(f"{path}: dropped {dropped} one-row episodes (no next_observations to end them)", stacklevel=3)
    return episodes


def _flat_observations(observations: Observation, where: str) -> Array:
    if not isinstance(observations, Mapping):
        return observations
    return _concatenate_keys({key: observations[key] for key in sorted(observations)}, where)


# --- shared --------------------------------------------------------------------------


def _exportable(source: EpisodeSource, skip_action_free: bool, path: Path) -> Iterator[tuple[int, Episode]]:
    """(index in the source, episode) for every episode a robomimic or D4RL file can hold."""
    episodes = read_episodes(source) if isinstance(source, str) else source
    for index, episode in enumerate(episodes):
        if not episode.has_actions:
            if skip_action_free:
                continue
            raise DatasetError(
                f"{path}: episode {index} has no actions, and robomimic and D4RL files have no "
                "action-free episodes; pass skip_action_free=True to leave such episodes out"
            )
        yield index, episode


def _env_args(env: gym.Env | str | None, first_episode: Episode, source: EpisodeSource) -> dict[str, Any]:
    """robomimic's env_args from an env, an env id in the metadata, or the dataset's env spec."""
    spec_id, kwargs = None, {}
    if isinstance(env, gym.Env) and env.spec is not None:
        spec_id, kwargs = env.spec.id, dict(env.spec.kwargs)
    else:
        env_id = env if isinstance(env, str) else first_episode.metadata.get("env_id")
        if isinstance(env_id, str):
            from embodied.envs import resolve

            try:
                spec = gym.spec(resolve(env_id))
            except KeyError:
                if env is not None:
                    raise  # the caller's own id: say it is unknown
                # a stale id in old metadata should not stop an export
                return {"env_name": env_id, "type": GYM_TYPE, "env_kwargs": {}}
            spec_id, kwargs = spec.id, dict(spec.kwargs)
        elif isinstance(source, str):
            spec_json = list_datasets().get(dataset_id(source), {}).get("env_spec")
            if spec_json:
                spec = json.loads(spec_json)
                spec_id, kwargs = spec["id"], dict(spec.get("kwargs") or {})
    if spec_id is None:
        return {"env_name": "", "type": GYM_TYPE, "env_kwargs": {}}
    task = kwargs.pop("task", None)
    if spec_id.startswith("embodied/robomimic-") and task:
        return {"env_name": task, "type": ROBOSUITE_TYPE, "env_kwargs": kwargs}
    if task is not None and not spec_id.startswith("embodied/"):
        kwargs["task"] = task  # someone else's env: its kwargs are all options
    return {"env_name": spec_id, "type": GYM_TYPE, "env_kwargs": kwargs}


def _write_imported(
    name: str, episodes: Iterable[Episode], env: gym.Env | str | None, path: Path, overwrite: bool
) -> Path:
    iterator = iter(episodes)
    first = next(iterator)
    observation_space = action_space = None
    if env is None:
        observation_space = _unbounded_space(first.observations)
        action_space = _unbounded_space(first.actions)
    return write_dataset(
        name,
        itertools.chain([first], iterator),
        env,
        observation_space=observation_space,
        action_space=action_space,
        algorithm_name="imported",
        description=f"imported from {path}",
        overwrite=overwrite,
    )


def _unbounded_space(sample: Observation) -> gym.Space:
    """A Box as wide as the dtype allows, of one step's shape (a Dict of them for dicts)."""
    if isinstance(sample, Mapping):
        return gym.spaces.Dict({key: _unbounded_space(value) for key, value in sample.items()})
    dtype = sample.dtype
    if np.issubdtype(dtype, np.floating):
        low, high = -np.inf, np.inf
    elif np.issubdtype(dtype, np.integer):
        low, high = np.iinfo(dtype).min, np.iinfo(dtype).max
    else:
        low, high = 0, 1
    return gym.spaces.Box(low, high, shape=sample.shape[1:], dtype=dtype)


@contextmanager
def _atomic_hdf5(path: Path, overwrite: bool) -> Iterator[h5py.File]:
    """An HDF5 file written under a temporary name beside ``path``, renamed on success."""
    import h5py

    if path.exists() and not overwrite:
        raise DatasetError(f"{path} already exists; pass overwrite=True or another path")
    path.parent.mkdir(parents=True, exist_ok=True)
    # same directory, so os.replace is a rename within one file system: atomic
    temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with h5py.File(temporary, "w") as file:
            yield file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _open(path: Path) -> h5py.File:
    import h5py

    if not path.exists():
        raise DatasetError(f"{path}: no such file")
    if path.is_dir():
        raise DatasetError(f"{path}: is a directory, not an HDF5 file")
    if not h5py.is_hdf5(path):
        raise DatasetError(f"{path}: not an HDF5 file (no HDF5 signature)")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DatasetError(f"{path}: cannot open ({error}); is the file truncated or corrupt?") from None


def _dataset(group: h5py.Group, key: str, where: str) -> h5py.Dataset:
    try:
        node = group[key] if key in group else None
    except (OSError, KeyError) as error:  # a damaged file can fail on lookup itself
        raise DatasetError(f"{where}: cannot read '{key}': {error}") from None
    if node is None:
        parent_key = key.rpartition("/")[0]
        parent = group[parent_key] if parent_key and parent_key in group else group
        listed = ", ".join(parent) if hasattr(parent, "keys") else "nothing"
        raise DatasetError(f"{where}: no '{key}' (next to it: {listed or 'nothing'})")
    if not hasattr(node, "shape"):
        raise DatasetError(f"{where}: '{key}' is a group, expected an array")
    return node


def _rows(node: h5py.Dataset | Array) -> int:
    return node.shape[0] if node.shape else 0  # a scalar has no rows


def _read(group: h5py.Group, key: str, where: str, start: int = 0) -> Array:
    """``group[key][start:]`` as an array, errors naming where and which key."""
    node = _dataset(group, key, where)
    try:
        return node[start:] if start else node[()]
    except OSError as error:  # h5py's error for unreadable (truncated) blocks
        raise DatasetError(f"{where}: cannot read '{key}': {error}") from None


def _python_value(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, bytes):
        return value.decode()
    return value
