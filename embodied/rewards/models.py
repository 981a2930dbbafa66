"""Reward models learned from preferences: MLP ensembles, point or Gaussian rewards, trained
with Bradley-Terry (pairs) or Plackett-Luce (K-wise rankings).

With per-step rewards r(s, a) and a segment's return R = Σ_t r(s_t, a_t):

- Bradley-Terry: P(σ⁰ ≻ σ¹) = exp R⁰ / (exp R⁰ + exp R¹); the loss is the cross-entropy
  against the label p (soft labels, e.g. 0.5 for "equal", are targets as they are).
- Plackett-Luce (Zhu, Jordan & Jiao 2023, "Principled RLHF from Pairwise or K-wise
  Comparisons"): for a ranking π (best first), P(π) = Π_i exp R^{π_i} / Σ_{j≥i} exp R^{π_j};
  the loss is −log P(π).

The ensemble and its shape follow PEBBLE / B-Pref (3 members, 3×256, tanh-bounded
reward, Adam 3e-4; rll-research/BPref ``reward_model.py``). Each member draws its own
minibatch of queries, so the members disagree where labels are scarce.

``gaussian=True`` is PEARL's Robust Reward Learning (Liu et al. 2023): each step's reward
is N(μ, σ²), segment returns are computed from reparameterised samples, and
KL(N(μ, σ²) ‖ N(μ, σ₀²)) pulls σ toward the preset σ₀. A transferred label that the
rewards cannot fit is absorbed by larger σ instead of bending μ; the policy uses μ.
"""

from __future__ import annotations

import math
import pickle
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embodied.data.preferences import Preferences, gather_segments, segment_rows, segments_at
from embodied.nets import EnsembleMLP, Normalizer


def bradley_terry_loss(returns: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of P(first ≻ second) = σ(R⁰ − R¹) against ``preference``.

    ``returns``: (..., B, 2); ``preference``: (B,) probability that the first is preferred."""
    logits = returns[..., 0] - returns[..., 1]
    return F.binary_cross_entropy_with_logits(logits, preference.expand_as(logits).to(logits.dtype))


def plackett_luce_loss(returns: torch.Tensor, ranking: torch.Tensor) -> torch.Tensor:
    """Mean −log P(ranking) under Plackett-Luce. ``returns``: (..., B, K); ``ranking``: (B, K)
    positions best first. For K = 2 it equals the Bradley-Terry loss with a hard label."""
    ordered = torch.gather(returns, -1, ranking.expand_as(returns))
    # log Σ_{j≥i} exp R^{π_j}: a reversed cumulative logsumexp.
    tail = torch.logcumsumexp(ordered.flip(-1), dim=-1).flip(-1)
    return -(ordered - tail)[..., :-1].sum(-1).mean()


@dataclass
class RewardModelConfig:
    """Preference reward model; defaults are PEBBLE's (Lee et al. 2021, rll-research/BPref)."""

    members: int = 3  # ensemble size
    hidden_dims: tuple = (256, 256, 256)  # every member's MLP
    lr: float = 3e-4  # Adam
    batch_size: int = 128  # queries per member per update
    steps: int = 2000  # gradient updates
    inputs: str = "state_action"  # "state_action": r(s, a); "state": r(s)
    output: str = "tanh"  # "tanh" (PEBBLE: rewards in [-1, 1]) or "linear"
    gaussian: bool = False  # PEARL's Robust Reward Learning: r ~ N(μ, σ²)
    sigma_prior: float = 1.0  # σ₀ that the KL term pulls σ toward (gaussian only)
    kl_coef: float = 0.1  # weight of KL(N(μ, σ²) ‖ N(μ, σ₀²)) (gaussian only)


class RewardModel(nn.Module):
    """An ensemble of per-step reward networks. ``forward`` gives every member's mean reward
    (members, ..., 1); :meth:`rewards` their ensemble average, which relabels datasets."""

    def __init__(self, config: RewardModelConfig, obs_dim: int, action_dim: int):
        super().__init__()
        if config.inputs not in ("state_action", "state") or config.output not in ("tanh", "linear"):
            raise ValueError(f"reward model: inputs must be state_action|state and output tanh|linear, got "
                             f"{config.inputs!r} and {config.output!r}")  # fmt: skip
        self.config = config
        self.obs_dim, self.action_dim = obs_dim, action_dim
        in_dim = obs_dim + (action_dim if config.inputs == "state_action" else 0)
        self.normalizer = Normalizer(obs_dim)
        self.net = EnsembleMLP(config.members, in_dim, config.hidden_dims, 2 if config.gaussian else 1)

    def _inputs(self, obs: torch.Tensor, actions: torch.Tensor | None) -> torch.Tensor:
        x = self.normalizer(obs)
        if self.config.inputs == "state_action":
            x = torch.cat([x, actions], dim=-1)
        return x

    def heads(self, obs: torch.Tensor, actions: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(μ, σ) per member: inputs (members, N, ·) or (N, ·) -> (members, N); σ is None
        unless gaussian."""
        out = self.net(self._inputs(obs, actions))
        mean = torch.tanh(out[..., 0]) if self.config.output == "tanh" else out[..., 0]
        std = F.softplus(out[..., 1]) + 1e-4 if self.config.gaussian else None
        return mean, std

    @torch.no_grad()
    def rewards(self, obs: torch.Tensor, actions: torch.Tensor | None, chunk: int = 65536) -> torch.Tensor:
        """Ensemble-mean reward per row of ``obs`` (N, obs_dim) -> (N,)."""
        parts = [self.heads(obs[i : i + chunk], None if actions is None else actions[i : i + chunk])[0].mean(0)
                 for i in range(0, len(obs), chunk)]  # fmt: skip
        return torch.cat(parts)

    def segment_returns(self, segments: dict[str, torch.Tensor], sample: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Segment returns (members, B, K) from segments of shape (members, B, K, L, ·), and
        the KL penalty (0 unless gaussian)."""
        obs = segments["observations"][..., :-1, :]
        members, *shape, dim = obs.shape
        flat_obs = obs.reshape(members, -1, dim)
        flat_actions = segments["actions"].reshape(members, -1, segments["actions"].shape[-1])
        mean, std = self.heads(flat_obs, flat_actions)
        kl = torch.zeros((), device=mean.device)
        step_rewards = mean
        if std is not None:
            prior = self.config.sigma_prior
            kl = (math.log(prior) - torch.log(std) + std.square() / (2 * prior**2) - 0.5).mean()
            if sample:
                step_rewards = mean + std * torch.randn_like(std)
        return step_rewards.reshape(members, *shape).sum(-1), kl


def preference_loss(returns: torch.Tensor, preferences: Preferences, index: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry for pairs, Plackett-Luce for rankings, on the queries ``index`` (members, B)."""
    if preferences.preference is not None:
        target = torch.as_tensor(preferences.preference, device=returns.device)[index]
        return F.binary_cross_entropy_with_logits(returns[..., 0] - returns[..., 1], target)
    ranking = torch.as_tensor(preferences.ranking, device=returns.device)[index]
    return plackett_luce_loss(returns, ranking)


def fit_reward_model(dataset, preferences: Preferences, config: RewardModelConfig | None = None, seed: int = 0,
                     progress: bool = False) -> tuple[RewardModel, dict[str, float]]:  # fmt: skip
    """Train a reward model on labelled queries over ``dataset`` (a loaded Dataset)."""
    from tqdm.auto import tqdm

    config = config or RewardModelConfig()
    if len(preferences) == 0:
        raise ValueError("no labelled queries to learn a reward from")
    if config.inputs == "state_action":
        rows = gather_segments(dataset, preferences.episodes, preferences.starts, preferences.segment_len)["actions"]
        if torch.isnan(rows).any():
            raise ValueError(f"{dataset.name}: some labelled segments have no actions; use inputs='state'")
    torch.manual_seed(seed)
    generator = torch.Generator(device=dataset.device).manual_seed(seed)
    model = RewardModel(config, int(dataset.observations.shape[-1]), int(dataset.actions.shape[-1]))
    model.normalizer.fit(dataset.observations)
    model.to(dataset.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    query_rows = segment_rows(dataset, preferences.episodes, preferences.starts)  # (N, K), once
    bar = tqdm(range(config.steps), desc="reward model", disable=None if progress else True)
    loss_sum, kl_sum = torch.zeros(()), torch.zeros(())
    for _ in bar:
        index = torch.randint(len(preferences), (config.members, config.batch_size), device=dataset.device,
                              generator=generator)  # fmt: skip
        segments = segments_at(dataset, query_rows[index], preferences.segment_len)
        returns, kl = model.segment_returns(segments, sample=True)
        loss = preference_loss(returns, preferences, index) + config.kl_coef * kl
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum, kl_sum = loss_sum + loss.detach().cpu(), kl_sum + kl.detach().cpu()
    model.eval()
    metrics = {"loss": float(loss_sum) / config.steps, "kl": float(kl_sum) / config.steps,
               "train_accuracy": label_accuracy(model, dataset, preferences)}  # fmt: skip
    return model, metrics


@torch.no_grad()
def predicted_returns(model: RewardModel, dataset, preferences: Preferences) -> np.ndarray:
    """Ensemble-mean (μ) segment returns of every query, (N, K)."""
    segments = gather_segments(dataset, preferences.episodes, preferences.starts, preferences.segment_len)
    obs = segments["observations"][..., :-1, :]
    flat = model.rewards(obs.reshape(-1, obs.shape[-1]), segments["actions"].reshape(-1, model.action_dim))
    return flat.reshape(*obs.shape[:-1]).sum(-1).cpu().numpy()


def label_accuracy(model: RewardModel, dataset, preferences: Preferences) -> float:
    """Share of hard pairwise labels (ties excluded) the model's returns order the same way."""
    pairs = preferences.pairs()
    decided = pairs.preference != 0.5
    if not decided.any():
        return float("nan")
    returns = predicted_returns(model, dataset, pairs.subset(decided))
    return float(((returns[:, 0] > returns[:, 1]) == (pairs.preference[decided] > 0.5)).mean())


@torch.no_grad()
def relabel(dataset, model: RewardModel) -> None:
    """Replace a loaded dataset's rewards with the model's, in place (every step with an
    action, or every step for a state-only model; padding rows stay 0)."""
    steps = dataset._all_steps if model.config.inputs == "state" else dataset._acted_steps
    if model.config.inputs == "state_action" and len(steps) < len(dataset._all_steps):
        raise ValueError(f"{dataset.name}: action-free steps cannot be relabelled by an r(s, a) model")
    obs = dataset.observations[steps]
    actions = None if model.config.inputs == "state" else dataset.actions[steps]
    dataset.rewards[steps] = model.rewards(obs, actions).to(dataset.rewards.dtype)
    dataset.learned_rewards = True


def relabel_dataset(name: str, model: RewardModel, name_out: str, overwrite: bool = False,
                    observation_key: str | None = None) -> str:  # fmt: skip
    """Copy dataset ``name`` to ``name_out`` with rewards from ``model`` (the original
    rewards kept under ``infos/true_reward``), marked as learned rewards
    (``Dataset.learned_rewards``: IQL reads them unscaled by default). With
    ``observation_key`` the model reads that entry of dict observations and the copy keeps
    only it (e.g. ``state`` of a ``state+pixels`` dataset labelled from its frames: the copy
    is what IQL trains on)."""
    from embodied.data.episodes import LEARNED_REWARDS, DatasetError, dataset_spaces, read_episodes, write_dataset

    device = next(model.parameters()).device
    spaces = dataset_spaces(name)
    if observation_key is not None:
        space = spaces["observation_space"]
        if not hasattr(space, "spaces") or observation_key not in space.spaces:
            raise DatasetError(f"{name}: no observation entry {observation_key!r} ({space})")
        spaces["observation_space"] = space[observation_key]

    def episodes():
        for episode in read_episodes(name):
            if observation_key is not None:
                episode.observations = episode.observations[observation_key]
            obs = torch.as_tensor(np.asarray(episode.observations[:-1], np.float32), device=device)
            actions = None
            if model.config.inputs == "state_action":
                if episode.actions is None:
                    raise ValueError(f"{name}: an action-free episode cannot be relabelled by an r(s, a) model")
                actions = torch.as_tensor(np.asarray(episode.actions, np.float32), device=device)
            episode.infos = {**episode.infos, "true_reward": np.asarray(episode.rewards)}
            episode.rewards = model.rewards(obs, actions).double().cpu().numpy()
            yield episode

    write_dataset(name_out, episodes(), **spaces, algorithm_name=LEARNED_REWARDS,
                  description=f"{name} with rewards from a preference reward model", overwrite=overwrite)  # fmt: skip
    return name_out


def save_reward_model(model: RewardModel, path, extra: dict[str, Any] | None = None) -> None:
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"config": asdict(model.config), "obs_dim": model.obs_dim, "action_dim": model.action_dim,
               "state_dict": model.state_dict(), "extra": extra or {}}  # fmt: skip
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        torch.save(payload, tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def load_reward_model(path, device: str | torch.device = "cpu") -> RewardModel:
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"reward model {path} does not exist")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
        config = RewardModelConfig(**{**payload["config"], "hidden_dims": tuple(payload["config"]["hidden_dims"])})
        model = RewardModel(config, payload["obs_dim"], payload["action_dim"])
        model.load_state_dict(payload["state_dict"])
    except (KeyError, RuntimeError, TypeError, EOFError, pickle.UnpicklingError) as error:  # garbage, shapes
        raise ValueError(f"{path}: not a reward model saved by embodied ({error})") from None
    return model.to(device).eval()
