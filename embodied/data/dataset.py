"""The training view of a dataset: flat arrays, moved to the device once, sampled in batches.

Layout: the episodes' observations are concatenated, T+1 rows per episode, and every
per-step array (actions, rewards, terminals, timeouts) is stored at the row of the
observation it follows from, with one padding row at each episode's last observation.
So a transition at row ``i`` has next observation ``i + 1`` and no observation is stored
twice: memory is about the raw arrays' size, not twice it as with separate
``next_observations``.

Samplers draw indices with ``torch.randint`` on the dataset's device and gather whole
batches with tensor indexing: no Python loop per sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import torch

from embodied.data.episodes import LEARNED_REWARDS, DatasetError, Episode, Observation, StoredArray


class LazyImages:
    """Image observations of many episodes left on disk; a batch of rows is read on demand.

    Rows are grouped by episode and each episode's frames are read with one sorted HDF5
    selection, so a batch costs one read per episode it touches, not one per frame.
    """

    def __init__(self, parts: list[StoredArray], device: torch.device):
        self.parts = parts
        self.device = device
        self.offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])])
        self.shape = (int(self.offsets[-1]), *parts[0].shape[1:])
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: torch.Tensor) -> torch.Tensor:
        import h5py

        flat = rows.reshape(-1).cpu().numpy()
        out = np.empty((len(flat), *self.shape[1:]), dtype=self.dtype)
        episode_of = np.searchsorted(self.offsets, flat, side="right") - 1
        files: dict[str, h5py.File] = {}
        try:
            for episode in np.unique(episode_of):
                where = np.flatnonzero(episode_of == episode)
                local = flat[where] - self.offsets[episode]
                unique, inverse = np.unique(local, return_inverse=True)  # h5py wants sorted, unique rows
                part = self.parts[episode]
                file = files.get(part.file_path) or files.setdefault(part.file_path, h5py.File(part.file_path, "r"))
                out[where] = file[part.key][unique][inverse]
        finally:
            for file in files.values():
                file.close()
        return torch.from_numpy(out).to(self.device).reshape(*rows.shape, *self.shape[1:])

    def materialize(self) -> torch.Tensor:
        return self[torch.arange(len(self))]


def _leaves_by_path(tree, prefix: str = ""):
    """(path, array) for every leaf of an observation; a flat array's path is ""."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            yield from _leaves_by_path(value, f"{prefix}/{key}" if prefix else key)
    else:
        yield prefix, tree


def _leaf_specs(tree) -> dict[str, tuple[tuple, np.dtype, bool]]:
    """Per leaf: (shape of one row, dtype, left on disk?)."""
    return {
        path: (tuple(value.shape[1:]), np.dtype(value.dtype), isinstance(value, StoredArray))
        for path, value in _leaves_by_path(tree)
    }


def _unflatten(flat: dict[str, object]) -> dict:
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split("/")
        for parent in parents:
            node = node.setdefault(parent, {})
        node[leaf] = value
    return tree


def _take(tree, index):
    if isinstance(tree, Mapping):
        return {key: _take(value, index) for key, value in tree.items()}
    return tree[index]


def _to_torch(tree, device):
    if isinstance(tree, Mapping):
        return {key: _to_torch(value, device) for key, value in tree.items()}
    if isinstance(tree, LazyImages):
        return tree
    array = np.ascontiguousarray(tree)
    if array.dtype == np.float64:
        array = array.astype(np.float32)  # float32 is what the networks take
    return torch.from_numpy(array).to(device)  # shares memory on CPU: no copy


def _nbytes(tree) -> int:
    if isinstance(tree, Mapping):
        return sum(_nbytes(v) for v in tree.values())
    if isinstance(tree, LazyImages):
        return 0  # on disk
    return tree.element_size() * tree.nelement() if isinstance(tree, torch.Tensor) else tree.nbytes


@dataclass
class Batch:
    """A batch of transitions (tensors on the dataset's device)."""

    observations: torch.Tensor | dict
    actions: torch.Tensor
    rewards: torch.Tensor
    next_observations: torch.Tensor | dict
    terminals: torch.Tensor  # 1.0 where the episode terminated (not merely truncated)
    discounts: torch.Tensor | None = None  # gamma**k of the bootstrap, for n-step batches


class Dataset:
    """Episodes as flat tensors on one device, with transition, n-step and segment samplers."""

    def __init__(self, episodes: Iterable[Episode], device: str | torch.device = "cpu", name: str = ""):
        episodes = list(episodes)
        if not episodes:
            raise DatasetError(f"{name or 'dataset'}: no episodes")
        self._build(
            name, device,
            lengths=np.array([len(e) for e in episodes]),
            has_actions=np.array([e.has_actions for e in episodes]),
            observation_leaves=_leaf_specs(episodes[0].observations),
            action_shape=next((e.actions.shape[1:] for e in episodes if e.has_actions), None),
            read=lambda i: episodes[i],
            metadata=[e.metadata for e in episodes],
        )  # fmt: skip

    @classmethod
    def load(cls, name: str, device: str | torch.device = "cpu", lazy_images: bool = False) -> "Dataset":
        """Read a local dataset straight into preallocated arrays, one episode at a time, so
        loading needs little more memory than the result (no list of episodes, no concatenation)."""
        from embodied.data.episodes import EpisodeFile

        with EpisodeFile(name) as source:
            if source.count == 0:
                raise DatasetError(f"{source.path}: no episodes")
            # First pass: shapes and attributes only, no data read.
            lengths, has_actions, metadata, action_shape = [], [], [], None
            for index in range(source.count):
                group = source.group(index)
                for required in ("observations", "rewards"):
                    if required not in group:
                        raise DatasetError(f"{source.path}: episode_{index} has no '{required}'")
                lengths.append(group["rewards"].shape[0])
                has_actions.append(bool(group.attrs.get("has_actions", True)))
                metadata.append(dict(group.attrs))
                if action_shape is None and has_actions[-1]:
                    action_shape = group["actions"].shape[1:]
            first = source.read(0, lazy_images=lazy_images)
            dataset = cls.__new__(cls)
            dataset._build(
                name, device, lengths=np.array(lengths), has_actions=np.array(has_actions),
                observation_leaves=_leaf_specs(first.observations), action_shape=action_shape,
                read=lambda i: source.read(i, lazy_images=lazy_images), metadata=metadata,
            )  # fmt: skip
            dataset.learned_rewards = source.metadata().get("algorithm_name") == LEARNED_REWARDS
        return dataset

    def _build(self, name, device, lengths, has_actions, observation_leaves, action_shape, read, metadata) -> None:
        self.name = name
        # Rewards from a preference reward model, not the env (a relabelled copy, or relabelled in memory).
        self.learned_rewards = False
        self.device = torch.device(resolve_device(device))
        if action_shape is None:
            raise DatasetError(f"{name or 'dataset'}: no episode has actions")
        self.num_episodes = len(lengths)
        self.num_transitions = int(lengths.sum())
        self.episode_lengths = lengths
        self.episode_metadata = metadata
        rows = lengths + 1
        total = int(rows.sum())
        starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
        ends = starts + lengths  # row of each episode's last observation
        # Per-step arrays sit at the row of the observation they follow; last rows are padding.
        observations = {
            path: [] if lazy else np.zeros((total, *shape), dtype=np.float32 if dtype == np.float64 else dtype)
            for path, (shape, dtype, lazy) in observation_leaves.items()
        }
        actions = np.full((total, *action_shape), np.nan, np.float32)
        rewards = np.zeros(total, np.float32)
        terminals = np.zeros(total, np.float32)
        timeouts = np.zeros(total, np.float32)
        for index, (start, length) in enumerate(zip(starts, lengths)):
            episode = read(index)
            if len(episode) != length:
                raise DatasetError(f"{name}: episode {index} changed length while loading")
            for path, value in _leaves_by_path(episode.observations):
                if isinstance(observations[path], list):
                    observations[path].append(value)
                else:
                    observations[path][start : start + length + 1] = value
            if has_actions[index]:
                actions[start : start + length] = episode.actions
            rewards[start : start + length] = episode.rewards
            terminals[start : start + length] = episode.terminations
            timeouts[start : start + length] = episode.truncations
        tree = {path: LazyImages(v, self.device) if isinstance(v, list) else v for path, v in observations.items()}
        self.observations = _to_torch(tree[""] if "" in tree else _unflatten(tree), self.device)
        self.actions = _to_torch(actions, self.device)
        self.rewards = _to_torch(rewards, self.device)
        self.terminals = _to_torch(terminals, self.device)
        self.timeouts = _to_torch(timeouts, self.device)
        self.episode_starts = torch.as_tensor(starts, device=self.device)
        self.episode_ends = torch.as_tensor(ends, device=self.device)
        self._end_of_row = torch.as_tensor(np.repeat(ends, rows), device=self.device)
        is_step = np.ones(total, bool)
        is_step[ends] = False
        acted_rows = np.repeat(has_actions, rows) & is_step
        self.has_actions = torch.as_tensor(acted_rows, device=self.device)
        self._all_steps = torch.as_tensor(np.flatnonzero(is_step), device=self.device)
        self._acted_steps = torch.as_tensor(np.flatnonzero(acted_rows), device=self.device)
        self._segment_starts: dict[tuple[int, bool], torch.Tensor] = {}
        self.preferences = None  # a label set over this dataset (embodied.data.preferences), when loaded with one

    # --- facts -------------------------------------------------------------------------
    @property
    def nbytes(self) -> int:
        """Bytes held by the dataset's arrays (on its device)."""
        arrays = [self.observations, self.actions, self.rewards, self.terminals, self.timeouts]
        index = [self.episode_starts, self.episode_ends, self._end_of_row, self.has_actions, self._all_steps]
        return sum(_nbytes(a) for a in arrays + index + [self._acted_steps])

    @property
    def action_free_fraction(self) -> float:
        return 1.0 - len(self._acted_steps) / max(1, len(self._all_steps))

    def observation_view(self, key: str) -> "Dataset":
        """The same dataset (arrays shared, not copied) seeing one entry of its dict
        observations, e.g. the ``state`` of a ``state+pixels`` dataset."""
        import copy

        if not isinstance(self.observations, Mapping):
            raise DatasetError(f"{self.name or 'dataset'}: observations are one array; there is no {key!r} entry")
        if key not in self.observations:
            raise DatasetError(f"{self.name or 'dataset'}: no observation entry {key!r} (has: "
                               f"{', '.join(self.observations)})")  # fmt: skip
        view = copy.copy(self)
        view.observations = self.observations[key]
        return view

    def episode_returns(self) -> np.ndarray:
        rewards = self.rewards.cpu().numpy()
        return np.array([rewards[s:e].sum() for s, e in zip(self.episode_starts.tolist(), self.episode_ends.tolist())])

    # --- samplers ------------------------------------------------------------------------
    def _steps(self, require_actions: bool) -> torch.Tensor:
        steps = self._acted_steps if require_actions else self._all_steps
        if len(steps) == 0:
            raise DatasetError(f"{self.name or 'dataset'}: no transitions with actions to sample")
        return steps

    def sample_rows(self, batch_size: int, generator: torch.Generator | None = None, require_actions: bool = True):
        steps = self._steps(require_actions)
        pick = torch.randint(len(steps), (batch_size,), device=self.device, generator=generator)
        return steps[pick]

    def sample(
        self, batch_size: int, generator: torch.Generator | None = None, require_actions: bool = True
    ) -> Batch:
        """Uniform one-step transitions ``(s, a, r, s', terminal)``."""
        rows = self.sample_rows(batch_size, generator, require_actions)
        return Batch(
            observations=_take(self.observations, rows),
            actions=self.actions[rows],
            rewards=self.rewards[rows],
            next_observations=_take(self.observations, rows + 1),
            terminals=self.terminals[rows],
        )

    def sample_nstep(
        self,
        batch_size: int,
        n: int,
        gamma: float,
        generator: torch.Generator | None = None,
        require_actions: bool = True,
    ) -> Batch:
        """n-step transitions: ``rewards`` is the discounted sum over up to ``n`` steps (cut at
        the episode's end), ``next_observations`` the bootstrap state and ``discounts`` its
        ``gamma**k``; ``terminals`` is 1 if the episode terminated within those steps."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        rows = self.sample_rows(batch_size, generator, require_actions)
        offsets = torch.arange(n, device=self.device)
        steps_left = self._end_of_row[rows] - rows  # transitions left in the episode from each row
        within = offsets[None, :] < steps_left[:, None]
        lookup = torch.minimum(rows[:, None] + offsets[None, :], self._end_of_row[rows][:, None])
        terminal_seen = torch.cumsum(self.terminals[lookup] * within, dim=1)
        # A reward counts if it comes at or before the first terminal: shift the cumulative count right.
        alive = torch.cat([torch.ones_like(terminal_seen[:, :1]), (terminal_seen[:, :-1] == 0).float()], dim=1)
        weights = within.float() * alive * gamma ** offsets.float()[None, :]
        taken = (within.float() * alive).sum(dim=1).long()
        return Batch(
            observations=_take(self.observations, rows),
            actions=self.actions[rows],
            rewards=(self.rewards[lookup] * weights).sum(dim=1),
            next_observations=_take(self.observations, rows + taken),
            terminals=(terminal_seen[:, -1] > 0).float(),
            discounts=gamma ** taken.float(),
        )

    def segment_starts(self, length: int, require_actions: bool = True) -> torch.Tensor:
        """Rows where a segment of ``length`` transitions fits inside one episode."""
        key = (length, require_actions)
        if key not in self._segment_starts:
            steps = self._steps(require_actions)
            fits = self._end_of_row[steps] - steps >= length
            if require_actions:  # every step of the segment must have an action
                acted = self.has_actions.long()
                cumulative = torch.cat([torch.zeros(1, device=self.device, dtype=torch.long), acted.cumsum(0)])
                stop = torch.clamp(steps + length, max=len(cumulative) - 1)  # clamped ones don't fit anyway
                fits &= cumulative[stop] - cumulative[steps] == length
            starts = steps[fits]
            if len(starts) == 0:
                raise DatasetError(
                    f"{self.name or 'dataset'}: no episode has {length} consecutive steps"
                    f"{' with actions' if require_actions else ''} (longest: {self.episode_lengths.max()})"
                )
            self._segment_starts[key] = starts
        return self._segment_starts[key]

    def sample_segments(
        self, batch_size: int, length: int, generator: torch.Generator | None = None, require_actions: bool = True
    ) -> dict:
        """Fixed-length segments: observations (B, L+1, ...), actions/rewards/terminals/timeouts (B, L)."""
        starts = self.segment_starts(length, require_actions)
        pick = torch.randint(len(starts), (batch_size,), device=self.device, generator=generator)
        rows = starts[pick][:, None] + torch.arange(length + 1, device=self.device)[None, :]
        steps = rows[:, :-1]
        return {
            "observations": _take(self.observations, rows),
            "actions": self.actions[steps],
            "rewards": self.rewards[steps],
            "terminals": self.terminals[steps],
            "timeouts": self.timeouts[steps],
            "rows": starts[pick],
        }


def resolve_device(device: str | torch.device) -> str:
    """``"auto"`` picks CUDA when present. Any other device must exist on this machine: a
    ValueError says so, rather than a traceback from deep in torch or (SB3) a silent fall
    back to the CPU."""
    if str(device) == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {str(device)!r} is not a torch device (e.g. 'auto', 'cpu', 'cuda', 'cuda:1'): "
                         f"{error}") from None  # fmt: skip
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ValueError(f"device {str(device)!r}: no CUDA device on this machine (torch {torch.__version__}, "
                             f"{build}); use 'auto' or 'cpu'")  # fmt: skip
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                             f"numbered from 0")  # fmt: skip
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {str(device)!r}: MPS is not available on this machine; use 'auto' or 'cpu'")
    return str(device)


def load_dataset(name: str, device: str | torch.device = "cpu", lazy_images: bool = False,
                 preferences: str | None = None) -> Dataset:  # fmt: skip
    """Load a local dataset for training, moved to ``device`` once.

    ``lazy_images`` leaves image observations on disk and reads each batch's frames
    when it is sampled (for image datasets larger than memory). ``preferences`` names a
    label set stored beside the dataset (``embodied prefs label``) to attach as
    ``dataset.preferences``."""
    dataset = Dataset.load(name, device=device, lazy_images=lazy_images)
    if preferences:
        from embodied.data.preferences import load_preferences

        dataset.preferences = load_preferences(name, preferences)
    return dataset
