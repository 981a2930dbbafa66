"""PEARL: cross-task preference transfer (Liu et al. 2023, "PEARL: Zero-shot Cross-task
Preference Alignment and Robust Reward Learning for Robotic Manipulation").

Two parts, used one after the other:

1. **Cross-task Preference Alignment (CPA).** Segments of a source task (which has
   preference labels) and of a target task (which has none) are matched by
   Gromov-Wasserstein optimal transport: GW compares the *intra-task* distance matrices
   C_s (between source segments) and C_t (between target segments), so the two tasks may
   differ in any way that keeps their geometry. With the coupling T (n_s × n_t), a
   target pair gets the transport-weighted source label

       z(y_i, y_j) = Σ_kl T_ki T_lj M_kl z(x_k, x_l) / Σ_kl T_ki T_lj M_kl,

   where M_kl = 1 where the source pair (k, l) is labelled. With every source pair
   labelled this is the paper's label normalised by the columns' masses (without it the
   labels shrink as 1/n²). Entropic GW from POT is the solver, on NumPy on the CPU or on
   torch tensors (POT's torch backend) on a GPU.
2. **Robust Reward Learning (RRL).** Rewards are Gaussians N(μ, σ²) learned from the
   transferred (soft, partly wrong) labels: :class:`embodied.rewards.models.RewardModel`
   with ``gaussian=True``. The target dataset is relabelled with μ and IQL learns the
   policy, with no human label on the target task.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from embodied.data.preferences import Preferences, gather_segments, sample_queries


@dataclass
class PEARLConfig:
    """Cross-task alignment settings. The paper uses POT's entropic GW with a square loss
    on Euclidean distances between segments; ε, segment counts and lengths here are ours
    (the paper's scripted Meta-World labels use B-Pref's 50-step segments)."""

    target_segments: int = 1000  # n_t: segments drawn from the target dataset (the source side is the caller's)
    target_pairs: int = 2000  # labelled target pairs produced
    gw_epsilon: float = 5e-3  # entropic regularisation of GW (on distances scaled to [0, 1])
    gw_max_iter: int = 100  # outer iterations of entropic GW
    features: str = "state_action"  # what a segment is compared by: "state_action" or "state"
    device: str = "cpu"  # "cuda": solve GW with POT's torch backend on the GPU


def segment_features(dataset, episodes: np.ndarray, starts: np.ndarray, segment_len: int, features: str) -> np.ndarray:
    """Flattened, per-feature standardised segments (n, L·d): what distances are taken over."""
    segments = gather_segments(dataset, episodes, starts, segment_len)
    parts = [segments["observations"][:, :-1]]
    if features == "state_action":
        parts.append(segments["actions"])
    elif features != "state":
        raise ValueError(f"features must be 'state_action' or 'state', got {features!r}")
    x = torch.cat(parts, dim=-1).double()
    if torch.isnan(x).any():
        raise ValueError(f"{dataset.name}: segments without actions; use features='state'")
    flat = x.reshape(-1, x.shape[-1])
    x = (x - flat.mean(0)) / flat.std(0).clamp_min(1e-6)
    return x.reshape(len(x), -1).cpu().numpy()


def distance_matrix(features: np.ndarray) -> np.ndarray:
    """Euclidean distances between rows, scaled to a maximum of 1 (so ε means the same
    for any task)."""
    squared = (features**2).sum(1)
    distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * features @ features.T, 0.0))
    return distances / max(distances.max(), 1e-12)


def gromov_wasserstein(source_cost: np.ndarray, target_cost: np.ndarray, epsilon: float, max_iter: int = 100,
                       device: str = "cpu") -> np.ndarray:  # fmt: skip
    """Entropic GW coupling (n_s, n_t) with uniform marginals (square loss)."""
    import ot

    n_s, n_t = len(source_cost), len(target_cost)
    p, q = np.full(n_s, 1.0 / n_s), np.full(n_t, 1.0 / n_t)
    if device != "cpu":
        as_tensor = lambda a: torch.as_tensor(a, device=device)  # noqa: E731
        coupling = ot.gromov.entropic_gromov_wasserstein(
            as_tensor(source_cost), as_tensor(target_cost), as_tensor(p), as_tensor(q),
            "square_loss", epsilon=epsilon, max_iter=max_iter,
        )  # fmt: skip
        return coupling.cpu().numpy()
    return ot.gromov.entropic_gromov_wasserstein(source_cost, target_cost, p, q, "square_loss", epsilon=epsilon,
                                                 max_iter=max_iter)  # fmt: skip


def transport_labels(coupling: np.ndarray, source_labels: np.ndarray, source_mask: np.ndarray,
                     pairs: np.ndarray) -> np.ndarray:  # fmt: skip
    """Transferred P(y_i ≻ y_j) for target ``pairs`` (N, 2): the coupling-weighted average
    of the labelled source pairs' P(x_k ≻ x_l). Pairs with no labelled mass get 0.5."""
    numerator = coupling.T @ (source_mask * source_labels) @ coupling
    denominator = coupling.T @ source_mask @ coupling
    i, j = pairs[:, 0], pairs[:, 1]
    weight = denominator[i, j]
    safe = weight > 1e-300
    return np.where(safe, numerator[i, j] / np.where(safe, weight, 1.0), 0.5).clip(0.0, 1.0)


def source_label_matrix(source: Preferences) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The distinct segments of a source label set and its labels as (n_s × n_s) matrices
    (label P(k ≻ l), and 1 where labelled): returns (episodes, starts, labels, mask)."""
    pairs = source.pairs()
    keys = np.stack([pairs.episodes.ravel(), pairs.starts.ravel()], 1)
    unique, inverse = np.unique(keys, axis=0, return_inverse=True)
    index = inverse.reshape(-1, 2)
    labels = np.zeros((len(unique), len(unique)))
    mask = np.zeros_like(labels)
    np.add.at(labels, (index[:, 0], index[:, 1]), pairs.preference)
    np.add.at(labels, (index[:, 1], index[:, 0]), 1.0 - pairs.preference)
    np.add.at(mask, (index[:, 0], index[:, 1]), 1.0)
    np.add.at(mask, (index[:, 1], index[:, 0]), 1.0)
    labels = np.divide(labels, mask, out=np.full_like(labels, 0.5), where=mask > 0)
    return unique[:, 0], unique[:, 1], labels, (mask > 0).astype(np.float64)


def transfer(source_dataset, source: Preferences | np.ndarray, target_dataset, config: PEARLConfig | None = None,
             seed: int = 0, source_segments: tuple[np.ndarray, np.ndarray] | None = None,
             segment_len: int | None = None) -> Preferences:  # fmt: skip
    """Label pairs of ``target_dataset`` segments from a labelled source task.

    ``source`` is either a label set over ``source_dataset`` (its distinct segments are
    the source side of the transport), or a dense (n_s × n_s) matrix of P(k ≻ l) over
    ``source_segments`` = (episodes, starts) of ``segment_len`` steps, e.g. a scripted
    teacher's answers to every pair. Both datasets are loaded :class:`~embodied.data.Dataset` objects."""
    config = config or PEARLConfig()
    if isinstance(source, Preferences):
        if segment_len is not None and segment_len != source.segment_len:
            raise ValueError(f"segment_len={segment_len} disagrees with the source label set's {source.segment_len}")
        episodes_s, starts_s, labels, mask = source_label_matrix(source)
        segment_len = source.segment_len
    else:
        if source_segments is None or segment_len is None:
            raise ValueError("a dense source label matrix needs source_segments=(episodes, starts) and segment_len")
        episodes_s, starts_s = (np.asarray(a) for a in source_segments)
        labels, mask = np.asarray(source, np.float64), np.ones_like(source, np.float64)
        if labels.shape != (len(episodes_s), len(episodes_s)):
            raise ValueError(f"source labels must be ({len(episodes_s)}, {len(episodes_s)}), got {labels.shape}")
    episodes_t, starts_t = sample_queries(target_dataset.episode_lengths, config.target_segments, segment_len, 1,
                                          seed)  # fmt: skip
    episodes_t, starts_t = episodes_t[:, 0], starts_t[:, 0]
    started = time.perf_counter()
    source_cost = distance_matrix(segment_features(source_dataset, episodes_s, starts_s, segment_len, config.features))
    target_cost = distance_matrix(segment_features(target_dataset, episodes_t, starts_t, segment_len, config.features))
    coupling = gromov_wasserstein(source_cost, target_cost, config.gw_epsilon, config.gw_max_iter, config.device)
    solve_seconds = time.perf_counter() - started
    rng = np.random.default_rng([seed, 2])
    pairs = rng.integers(0, len(episodes_t), size=(config.target_pairs, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    preference = transport_labels(coupling, labels, mask, pairs).astype(np.float32)
    info = {"method": "pearl-cpa", "source_dataset": getattr(source_dataset, "name", ""),
            "source_segments": len(episodes_s), "target_segments": len(episodes_t), "config": asdict(config),
            "seed": seed, "gw_seconds": solve_seconds}  # fmt: skip
    return Preferences(target_dataset.name, segment_len, episodes_t[pairs], starts_t[pairs], preference, info=info)



def teacher_matrix(teacher, scores, episodes: np.ndarray, starts: np.ndarray, segment_len: int,
                   seed: int = 0) -> np.ndarray:  # fmt: skip
    """A scripted teacher's answer P(k ≻ l) to every pair of the given segments (n × n):
    the dense source labels of the paper's scripted experiments. ``scores`` is the source
    dataset's :class:`~embodied.data.preferences.StepScores`."""
    segment_scores = teacher.segment_scores(scores.segments(teacher.score, episodes[:, None], starts[:, None],
                                                            segment_len))[:, 0]  # fmt: skip
    n = len(segment_scores)
    k, l = np.triu_indices(n, 1)
    from embodied.rewards.teachers import threshold_scale

    scale = threshold_scale(scores, teacher.score, segment_len)  # as label_dataset's thresholds
    answer, kept = teacher.label(np.stack([segment_scores[k], segment_scores[l]], 1), scale=scale,
                                 rng=np.random.default_rng([seed, 3]))  # fmt: skip
    if not kept.all():
        raise ValueError("a skipping teacher cannot give dense source labels")
    matrix = np.full((n, n), 0.5)
    matrix[k, l] = answer
    matrix[l, k] = 1.0 - answer
    return matrix
