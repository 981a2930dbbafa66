"""Inverse Preference Learning on IQL (Hejna & Sadigh 2023, "Inverse Preference Learning:
Preference-based RL without a Reward Function"; authors' code: jhejna/inverse-preference-learning,
``research/algs/ipl_iql.py``).

No reward network: the reward a Q-function implies is read off the inverse Bellman
operator, r_Q(s, a) = Q(s, a) − γ(1 − terminal) V(s′), and the Q-function is fitted so
that these implicit rewards explain the preferences:

- value:  expectile regression of V toward min(Q̄₁, Q̄₂), as in IQL (τ);
- critic: L_Q = BCE(Σ_t r_Q(σ⁰) − Σ_t r_Q(σ¹), p) + λ · E[r_Q²]  (the χ² regulariser,
  on preference segments and unlabelled transitions, each half of the weight), with
  V(s′) held fixed and clipped to ±1/(λ(1 − γ)) (the authors' target clipping);
- actor: advantage-weighted regression, exp(β (Q̄ − V)) clipped at 100, as in IQL.

Each update draws ``preference_batch_size`` labelled pairs of segments and
``batch_size`` unlabelled transitions. Labels come from a label set stored beside the
dataset (``data.preferences`` in the run config); K-wise rankings count as the pairs they
imply. Dataset rewards are never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from embodied.algos.iql import IQL, IQLConfig
from embodied.data.preferences import Preferences, segment_rows, segments_at


@dataclass
class IPLConfig(IQLConfig):
    """IPL-IQL hyperparameters; defaults are the authors' Meta-World settings (Hejna & Sadigh
    2023, Appendix; configs for ``ipl_iql``): expectile 0.75, χ² weight λ = 3, AWR β = 1/3
    written as temperature 3, 3×256 MLPs, constant learning rates. Locomotion: expectile
    0.7, λ = 0.5; robomimic: expectile 0.7, λ = 4, temperature 0.5. The other fields are
    IQL's; ``reward_scale`` does not apply (no reward is read)."""

    algo = "ipl"
    expectile: float = 0.75  # τ of the value loss
    temperature: float = 3.0  # AWR inverse temperature (the authors' 1/β, β = 1/3)
    hidden_dims: tuple = (256, 256, 256)  # every MLP
    actor_cosine_decay: bool = False  # the authors keep the actor's learning rate constant
    reward_scale: str = "none"  # unused: IPL reads no reward
    chi2_coeff: float = 3.0  # λ of the χ² regulariser on implicit rewards
    preference_batch_size: int = 16  # labelled segment pairs per update
    unlabelled_weight: float = 0.5  # share of the value and χ² losses on unlabelled transitions
    target_clipping: bool = True  # clip V(s') to ±1/(λ(1−γ))


class IPL(IQL):
    """IQL's networks, optimisers and actor; the critic learns from preferences instead of rewards."""

    Config = IPLConfig
    name = "ipl"

    def prepare(self, dataset, total_steps: int) -> None:
        preferences: Preferences | None = getattr(dataset, "preferences", None)
        if preferences is None or len(preferences) == 0:
            raise ValueError("IPL learns from preferences: set data.preferences to a label set of the dataset "
                             "(`embodied prefs label DATASET ...`)")  # fmt: skip
        pairs = preferences.pairs()
        rows = segment_rows(dataset, pairs.episodes, pairs.starts)
        steps = rows[:, :, None] + torch.arange(pairs.segment_len, device=rows.device)
        if torch.isnan(dataset.actions[steps]).any():
            raise ValueError(f"{dataset.name}: labelled segments without actions cannot train IPL")
        self._query_rows = rows
        self._labels = torch.as_tensor(pairs.preference, device=dataset.device)
        self._segment_len = pairs.segment_len
        if self.config.normalize_observations:
            self.normalizer.fit(dataset.observations)
        if self.config.actor_cosine_decay:
            self.actor_schedule.T_max = total_steps

    def sample(self, dataset, batch_size: int, generator: torch.Generator):
        pick = torch.randint(len(self._labels), (self.config.preference_batch_size,), device=dataset.device,
                             generator=generator)  # fmt: skip
        rows = self._query_rows[pick]
        segments = segments_at(dataset, rows, self._segment_len)  # (B, 2, L+1, ·)
        terminals = dataset.terminals[rows[..., None] + torch.arange(self._segment_len, device=dataset.device)]
        return {"segments": segments, "terminals": terminals, "labels": self._labels[pick],
                "transitions": dataset.sample(batch_size, generator=generator)}  # fmt: skip

    def update(self, batch, step: int) -> dict[str, torch.Tensor]:
        config = self.config
        segments, transitions = batch["segments"], batch["transitions"]
        labelled = segments["actions"].shape[:3].numel()  # B·2·L steps, then the unlabelled batch
        obs = torch.cat([segments["observations"][:, :, :-1].reshape(labelled, -1), transitions.observations])
        next_obs = torch.cat([segments["observations"][:, :, 1:].reshape(labelled, -1), transitions.next_observations])
        actions = torch.cat([segments["actions"].reshape(labelled, -1), transitions.actions])
        terminals = torch.cat([batch["terminals"].reshape(labelled), transitions.terminals])
        obs, next_obs = self.normalizer(obs), self.normalizer(next_obs)
        obs_actions = torch.cat([obs, actions], dim=-1)
        weights = torch.cat([
            torch.full((labelled,), (1 - config.unlabelled_weight) / labelled, device=obs.device),
            torch.full((len(transitions.actions),), config.unlabelled_weight / len(transitions.actions), device=obs.device),
        ])  # fmt: skip
        with torch.no_grad():
            target_q = self.target_critic(obs_actions).min(dim=0).values.squeeze(-1)

        value_loss = self.update_value(obs, target_q, weights)  # as IQL, weighted between the two sources

        # Critic: implicit rewards must explain the labels; χ² keeps them small.
        with torch.no_grad():
            new_value, next_value = self.value(torch.cat([obs, next_obs])).squeeze(-1).chunk(2)
            if config.target_clipping:
                limit = 1.0 / (config.chi2_coeff * (1.0 - config.discount))
                next_value = next_value.clamp(-limit, limit)
            weights_actor = torch.exp(config.temperature * (target_q - new_value)).clamp(max=config.max_weight)
        q = self.critic(obs_actions).squeeze(-1)  # (2, N)
        rewards = q - config.discount * (1.0 - terminals) * next_value
        segment_returns = rewards[:, :labelled].reshape(2, *segments["actions"].shape[:3]).sum(-1)  # (2, B, 2)
        logits = segment_returns[..., 0] - segment_returns[..., 1]
        preference_loss = F.binary_cross_entropy_with_logits(logits, batch["labels"].expand_as(logits))
        chi2_loss = config.chi2_coeff * (weights * rewards.square()).sum(-1).mean()
        critic_loss = preference_loss + chi2_loss
        actor_loss = -(weights_actor * self.actor.log_prob(obs, actions)).mean()
        self.step_critic_and_actor(critic_loss, actor_loss)
        with torch.no_grad():
            accuracy = ((logits > 0) == (batch["labels"] > 0.5)).float().mean()
        return {
            "value_loss": value_loss.detach(),
            "preference_loss": preference_loss.detach(),
            "chi2_loss": chi2_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "label_accuracy": accuracy,
            "implicit_reward": rewards.detach().mean(),
        }
