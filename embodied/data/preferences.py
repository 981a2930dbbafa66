"""Preference data: queries over fixed-length segments of a dataset, and their labels.

A *query* is a pair (or a K-wise set) of segments, each named by its episode and the
step it starts at, so labels stay valid however the dataset is loaded. A label set is
stored beside the Minari dataset it refers to::

    <dataset dir>/preferences/<label name>.npz

holding ``episodes`` and ``starts`` (N, K), and either ``preference`` (N,), the
probability that the first segment is preferred (1, 0, 0.5 for "equal", or anything
between for soft labels such as PEARL's transferred ones), or ``ranking`` (N, K), the
segment positions best first (K-wise). ``info`` records who labelled it and how.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embodied.data.episodes import DatasetError, _existing, read_episodes

_LABEL_NAME = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."


@dataclass
class Preferences:
    """Labelled queries over ``segment_len``-step segments of ``dataset``."""

    dataset: str
    segment_len: int
    episodes: np.ndarray  # (N, K) episode index of each segment
    starts: np.ndarray  # (N, K) first step of each segment within its episode
    preference: np.ndarray | None = None  # (N,) P(first segment preferred); pairs only
    ranking: np.ndarray | None = None  # (N, K) positions 0..K-1, best first; K-wise
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.episodes = np.asarray(self.episodes, dtype=np.int64)
        self.starts = np.asarray(self.starts, dtype=np.int64)
        if self.episodes.ndim != 2 or self.episodes.shape != self.starts.shape or self.episodes.shape[1] < 2:
            raise DatasetError(f"preferences: episodes and starts must both be (N, K>=2), got "
                               f"{self.episodes.shape} and {self.starts.shape}")  # fmt: skip
        if (self.preference is None) == (self.ranking is None):
            raise DatasetError("preferences: give exactly one of preference (pairs) and ranking (K-wise)")
        if self.preference is not None:
            self.preference = np.asarray(self.preference, dtype=np.float32)
            if self.k != 2 or self.preference.shape != (len(self),):
                raise DatasetError(f"preferences: 'preference' needs pairs and shape ({len(self)},), got K={self.k} "
                                   f"and {self.preference.shape}")  # fmt: skip
            if not np.all((self.preference >= 0) & (self.preference <= 1)):
                raise DatasetError("preferences: 'preference' values must lie in [0, 1]")
        if self.ranking is not None:
            self.ranking = np.asarray(self.ranking, dtype=np.int64)
            if self.ranking.shape != self.episodes.shape or not np.all(
                np.sort(self.ranking, axis=1) == np.arange(self.k)[None]
            ):
                raise DatasetError(f"preferences: 'ranking' must be a permutation of 0..{self.k - 1} per query")

    def __len__(self) -> int:
        return len(self.episodes)

    @property
    def k(self) -> int:
        return self.episodes.shape[1]

    def subset(self, index) -> "Preferences":
        return Preferences(
            self.dataset, self.segment_len, self.episodes[index], self.starts[index],
            None if self.preference is None else self.preference[index],
            None if self.ranking is None else self.ranking[index], dict(self.info),
        )  # fmt: skip

    def split(self, held_out: float, seed: int = 0) -> tuple["Preferences", "Preferences"]:
        """(train, held-out) by a seeded shuffle of the queries."""
        order = np.random.default_rng(seed).permutation(len(self))
        cut = len(self) - int(round(held_out * len(self)))
        return self.subset(order[:cut]), self.subset(order[cut:])

    def pairs(self) -> "Preferences":
        """K-wise rankings as the K(K−1)/2 pairwise preferences they imply (pairs unchanged)."""
        if self.ranking is None:
            return self
        episodes, starts, preference = [], [], []
        for better_rank in range(self.k):
            for worse_rank in range(better_rank + 1, self.k):
                better = np.take_along_axis(self.ranking, np.full((len(self), 1), better_rank), 1)[:, 0]
                worse = np.take_along_axis(self.ranking, np.full((len(self), 1), worse_rank), 1)[:, 0]
                rows = np.arange(len(self))
                episodes.append(np.stack([self.episodes[rows, better], self.episodes[rows, worse]], 1))
                starts.append(np.stack([self.starts[rows, better], self.starts[rows, worse]], 1))
                preference.append(np.ones(len(self), np.float32))
        return Preferences(self.dataset, self.segment_len, np.concatenate(episodes), np.concatenate(starts),
                           np.concatenate(preference), info=dict(self.info))  # fmt: skip


# --- drawing queries ---------------------------------------------------------------------
def sample_queries(
    episode_lengths: np.ndarray, count: int, segment_len: int, k: int = 2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` queries of ``k`` segments drawn uniformly over every place a segment fits
    (the B-Pref / PEBBLE uniform sampler); returns (episodes, starts), each (count, k)."""
    lengths = np.asarray(episode_lengths, dtype=np.int64)
    if len(lengths) == 0:
        raise DatasetError("no episodes to draw segments from")
    if segment_len < 1 or k < 1 or count < 1:
        raise ValueError(f"need segment_len >= 1, k >= 1 and count >= 1, got {segment_len}, {k}, {count}")
    places = np.maximum(lengths - segment_len + 1, 0)
    if places.sum() == 0:
        raise DatasetError(f"no episode is {segment_len} steps long (longest: {lengths.max()})")
    rng = np.random.default_rng(seed)
    flat = rng.integers(0, places.sum(), size=(count, k))
    offsets = np.concatenate([[0], np.cumsum(places)])
    episodes = np.searchsorted(offsets, flat, side="right") - 1
    return episodes, flat - offsets[episodes]


@dataclass
class StepScores:
    """Per-step quantities of every episode that teachers score segments by."""

    reward: list[np.ndarray]
    success: list[np.ndarray] | None  # per step: success after that step

    @classmethod
    def read(cls, dataset: str) -> "StepScores":
        rewards, successes = [], []
        for episode in read_episodes(dataset):
            rewards.append(np.asarray(episode.rewards, dtype=np.float64))
            flag = episode.infos.get("success")
            # infos hold T+1 entries (the reset's first); a step's success is the info after it.
            successes.append(None if flag is None else np.asarray(flag, dtype=np.float64)[-len(episode):])
        return cls(rewards, None if any(s is None for s in successes) else successes)

    def get(self, score: str) -> list[np.ndarray]:
        if score == "reward":
            return self.reward
        if score == "success":
            if self.success is None:
                raise DatasetError("this dataset records no 'success' info: score segments by 'reward'")
            return self.success
        raise ValueError(f"score must be 'reward' or 'success', got {score!r}")

    def segments(self, score: str, episodes: np.ndarray, starts: np.ndarray, segment_len: int) -> np.ndarray:
        """(N, K, L) per-step scores of the segments."""
        per_episode = self.get(score)
        out = np.empty((*episodes.shape, segment_len))
        for index in np.ndindex(episodes.shape):
            values = per_episode[episodes[index]][starts[index] : starts[index] + segment_len]
            if len(values) != segment_len:
                raise DatasetError(f"segment at episode {episodes[index]}, step {starts[index]} runs past its episode")
            out[index] = values
        return out


def segment_rows(dataset, episodes: np.ndarray, starts: np.ndarray) -> torch.Tensor:
    """Rows of a loaded :class:`~embodied.data.Dataset` where the segments start."""
    episodes_t = torch.as_tensor(episodes, device=dataset.device)
    return dataset.episode_starts[episodes_t] + torch.as_tensor(starts, device=dataset.device)


def gather_segments(dataset, episodes: np.ndarray, starts: np.ndarray, segment_len: int) -> dict[str, torch.Tensor]:
    """Observations (..., L+1, obs), actions and rewards (..., L) of segments of a loaded dataset."""
    return segments_at(dataset, segment_rows(dataset, episodes, starts), segment_len)


def segments_at(dataset, rows: torch.Tensor, segment_len: int) -> dict[str, torch.Tensor]:
    """Like :func:`gather_segments`, from start rows (any shape) already on the device."""
    rows = rows[..., None] + torch.arange(segment_len + 1, device=rows.device)
    steps = rows[..., :-1]
    return {
        "observations": dataset.observations[rows],
        "actions": dataset.actions[steps],
        "rewards": dataset.rewards[steps],
    }


# --- storage -----------------------------------------------------------------------------
def preferences_path(dataset: str, label_name: str) -> Path:
    if not label_name or any(c not in _LABEL_NAME for c in label_name) or label_name.startswith("."):
        raise DatasetError(f"bad label set name {label_name!r}: use letters, digits, '-', '_' and '.'")
    return _existing(dataset) / "preferences" / f"{label_name}.npz"


def save_preferences(preferences: Preferences, label_name: str, overwrite: bool = False) -> Path:
    """Write a label set beside its dataset, atomically (temporary file, then rename)."""
    path = preferences_path(preferences.dataset, label_name)
    if path.exists() and not overwrite:
        raise DatasetError(f"label set {label_name!r} of {preferences.dataset!r} exists at {path}; choose another "
                           "name or overwrite")  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {"episodes": preferences.episodes, "starts": preferences.starts}
    if preferences.preference is not None:
        arrays["preference"] = preferences.preference
    else:
        arrays["ranking"] = preferences.ranking
    meta = {"dataset": preferences.dataset, "segment_len": preferences.segment_len, "info": preferences.info}
    tmp = path.with_name(f".{path.stem}.tmp-{uuid.uuid4().hex[:8]}.npz")
    try:
        np.savez(tmp, meta=np.array(json.dumps(meta, default=_jsonable)), **arrays)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def load_preferences(dataset: str, label_name: str) -> Preferences:
    path = preferences_path(dataset, label_name)
    if not path.exists():
        known = ", ".join(list_preferences(dataset)) or "none"
        raise DatasetError(f"dataset {dataset!r} has no label set {label_name!r} (has: {known})")
    try:
        with np.load(path, allow_pickle=False) as file:
            meta = json.loads(str(file["meta"]))
            arrays = {key: file[key] for key in file.files if key != "meta"}
        return Preferences(meta["dataset"], int(meta["segment_len"]), info=meta.get("info", {}), **arrays)
    except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:  # BadZipFile: truncated
        raise DatasetError(f"{path}: not a readable label set ({type(error).__name__}: {error})") from None


def list_preferences(dataset: str) -> list[str]:
    folder = _existing(dataset) / "preferences"
    return sorted(p.stem for p in folder.glob("*.npz") if not p.name.startswith(".")) if folder.exists() else []
