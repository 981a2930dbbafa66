"""Implicit Q-Learning (Kostrikov, Nair & Levine, 2021, "Offline Reinforcement Learning
with Implicit Q-Learning"; authors' code: ikostrikov/implicit_q_learning).

IQL never queries the Q-function on actions outside the dataset:

- value:  L_V = E[ |τ − 1(u < 0)| · u² ],  u = min(Q̄₁, Q̄₂)(s, a) − V(s)   (expectile τ)
- critic: L_Q = E[ Σᵢ (Qᵢ(s, a) − r − γ(1 − terminal) V(s′))² ]            (timeouts are not terminal)
- actor:  L_π = −E[ min(exp(β (Q̄(s, a) − V(s))), 100) · log π(a | s) ]       (AWR, temperature β)

Q̄ is a Polyak-averaged target of the twin critics. As in the authors' code, each step
updates V first, then the actor and the critics with the new V; the actor's learning
rate follows a cosine decay over training. Twin critics run as one batched ensemble.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch

from embodied.algos.base import Agent
from embodied.nets import MLP, EnsembleMLP, GaussianPolicy, Normalizer


@dataclass
class IQLConfig:
    """IQL hyperparameters; defaults are the paper's for D4RL locomotion (Kostrikov et al.
    2021, Appendix; ikostrikov/implicit_q_learning configs/mujoco_config.py).
    AntMaze uses expectile 0.9, temperature 10; Kitchen/Adroit expectile 0.7,
    temperature 0.5, dropout 0.1."""

    algo = "iql"
    expectile: float = 0.7  # τ of the value loss (locomotion 0.7, AntMaze 0.9)
    temperature: float = 3.0  # β of the advantage weights (locomotion 3.0, AntMaze 10.0)
    discount: float = 0.99  # γ
    tau: float = 0.005  # Polyak rate of the target critics
    actor_lr: float = 3e-4  # Adam, cosine-decayed to 0 over training
    critic_lr: float = 3e-4  # Adam
    value_lr: float = 3e-4  # Adam
    hidden_dims: tuple = (256, 256)  # every MLP
    dropout: float | None = None  # in the actor (Kitchen/Adroit 0.1)
    max_weight: float = 100.0  # clip of exp(β·advantage)
    actor_cosine_decay: bool = True  # the authors' schedule
    # "returns": r·1000/(max−min episode return), the authors' locomotion scaling; "none": as
    # stored; "auto": "none" for rewards from a preference reward model (dataset.learned_rewards),
    # else "returns". A Bradley-Terry reward is in units of preference log-odds, so its scale
    # already says how sure the labels are; IPL's authors feed it to IQL unscaled (their MR
    # baseline, jhejna/inverse-preference-learning configs/metaworld/mr_iql.yaml). Stretched to
    # a return spread of 1000, its errors became advantages that exp(β·A) turned into the
    # policy. On drawer-open medium (3 seeds, results/preferences.md), IQL on a reward model
    # of 500 oracle labels succeeded 0.67 ± 0.34 scaled and 0.97 ± 0.05 unscaled; on PEARL's
    # labels from button-press (by distances) 0.00 and 0.97 ± 0.05; on random labels 0.00
    # and 0.43 ± 0.33 (behaviour cloning: 0.47): a reward model that learned nothing leaves
    # IQL near cloning instead of driving it off.
    reward_scale: str = "auto"
    normalize_observations: bool = True  # standardise observations with dataset statistics (CORL)


class IQL(Agent):
    Config = IQLConfig
    name = "iql"

    def __init__(self, config: IQLConfig, observation_space, action_space, device):
        super().__init__(config, observation_space, action_space, device)
        hidden = config.hidden_dims
        self.normalizer = Normalizer(self.obs_dim)
        self.critic = EnsembleMLP(2, self.obs_dim + self.action_dim, hidden, 1)
        self.target_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = MLP(self.obs_dim, hidden, 1)
        self.actor = GaussianPolicy(self.obs_dim, self.action_dim, hidden, config.dropout)
        self.register_buffer("reward_multiplier", torch.ones(()))
        self.to(device)
        options = {"fused": True}
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.value_lr, **options)
        self.critic_optimizer = torch.optim.Adam(self.critic.parameters(), lr=config.critic_lr, **options)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.actor_lr, **options)
        # Cosine over the run's length, set in prepare() (saved in the state dict with it).
        self.actor_schedule = (
            torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optimizer, T_max=1)
            if config.actor_cosine_decay
            else torch.optim.lr_scheduler.LambdaLR(self.actor_optimizer, lambda step: 1.0)
        )
        self._critic_params = list(self.critic.parameters())
        self._target_params = list(self.target_critic.parameters())

    def optimizers(self):
        return {
            "value": self.value_optimizer,
            "critic": self.critic_optimizer,
            "actor": self.actor_optimizer,
            "actor_schedule": self.actor_schedule,
        }

    def prepare(self, dataset, total_steps: int) -> None:
        if self.config.normalize_observations:
            self.normalizer.fit(dataset.observations)
        scale = self.config.reward_scale
        if scale not in ("auto", "returns", "none"):
            raise ValueError(f"reward_scale must be 'auto', 'returns' or 'none', got {scale!r}")
        if scale == "auto":
            scale = "none" if getattr(dataset, "learned_rewards", False) else "returns"
        if scale == "returns":
            returns = dataset.episode_returns()
            spread = float(returns.max() - returns.min())
            self.reward_multiplier.fill_(1000.0 / spread if spread > 0 else 1.0)
        else:
            self.reward_multiplier.fill_(1.0)
        if self.config.actor_cosine_decay:
            self.actor_schedule.T_max = total_steps

    def compile(self, mode: str = "default") -> None:
        self.critic.compile(mode=mode)
        self.target_critic.compile(mode=mode)
        self.value.compile(mode=mode)
        self.actor.compile(mode=mode)

    def update(self, batch, step: int) -> dict[str, torch.Tensor]:
        config = self.config
        obs = self.normalizer(batch.observations)
        next_obs = self.normalizer(batch.next_observations)
        obs_actions = torch.cat([obs, batch.actions], dim=-1)
        with torch.no_grad():
            target_q = self.target_critic(obs_actions).min(dim=0).values.squeeze(-1)

        value_loss = self.update_value(obs, target_q)

        # Actor and critics both read the updated V (one forward for s and s').
        with torch.no_grad():
            new_value, next_value = self.value(torch.cat([obs, next_obs])).squeeze(-1).chunk(2)
            advantage = target_q - new_value
            weights = torch.exp(config.temperature * advantage).clamp(max=config.max_weight)
            rewards = batch.rewards * self.reward_multiplier
            target = rewards + config.discount * (1.0 - batch.terminals) * next_value
        q = self.critic(obs_actions).squeeze(-1)  # (2, batch)
        critic_loss = (q - target).square().mean(dim=1).sum()
        actor_loss = -(weights * self.actor.log_prob(obs, batch.actions)).mean()
        self.step_critic_and_actor(critic_loss, actor_loss)
        return {
            "value_loss": value_loss.detach(),
            "critic_loss": critic_loss.detach(),
            "actor_loss": actor_loss.detach(),
            "advantage": advantage.mean(),
            "q": q.detach().mean(),
        }

    def update_value(self, obs: torch.Tensor, target_q: torch.Tensor, weights: torch.Tensor | None = None):
        """One step of expectile regression of V toward the target critics; ``weights``
        (summing to 1) replace the plain mean over the batch."""
        difference = target_q - self.value(obs).squeeze(-1)
        loss = torch.abs(self.config.expectile - (difference < 0).float()) * difference.square()
        value_loss = loss.mean() if weights is None else (weights * loss).sum()
        self.value_optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        self.value_optimizer.step()
        return value_loss

    def step_critic_and_actor(self, critic_loss: torch.Tensor, actor_loss: torch.Tensor) -> None:
        """Step critics and actor (disjoint parameters: one backward for both), the actor's
        schedule, and the Polyak-averaged target critics."""
        self.critic_optimizer.zero_grad(set_to_none=True)
        self.actor_optimizer.zero_grad(set_to_none=True)
        (critic_loss + actor_loss).backward()
        self.critic_optimizer.step()
        self.actor_optimizer.step()
        self.actor_schedule.step()
        with torch.no_grad():
            torch._foreach_lerp_(self._target_params, self._critic_params, self.config.tau)

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(self.normalizer(obs))
