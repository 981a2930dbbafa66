"""Behaviour cloning: regress the dataset's actions from its observations.

The baseline every offline RL result is read against. Same network and optimiser as
IQL's actor, so the comparison isolates what the value functions add. With a
deterministic MSE head by default (the CORL baseline); ``gaussian=True`` maximises
likelihood under IQL's Gaussian policy instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from embodied.algos.base import Agent
from embodied.nets import MLP, GaussianPolicy, Normalizer


@dataclass
class BCConfig:
    """Behaviour cloning. Loss: ||π(s) − a||² (or −log π(a|s) with ``gaussian``)."""

    algo = "bc"
    hidden_dims: tuple = (256, 256)  # MLP widths (IQL's actor, Kostrikov et al. 2021)
    learning_rate: float = 3e-4  # Adam, as IQL's actor
    gaussian: bool = False  # maximum likelihood under a Gaussian policy instead of MSE
    dropout: float | None = None  # dropout in the policy MLP
    normalize_observations: bool = True  # standardise observations with dataset statistics


class BC(Agent):
    Config = BCConfig
    name = "bc"

    def __init__(self, config: BCConfig, observation_space, action_space, device):
        super().__init__(config, observation_space, action_space, device)
        self.normalizer = Normalizer(self.obs_dim)
        if config.gaussian:
            self.actor = GaussianPolicy(self.obs_dim, self.action_dim, config.hidden_dims, config.dropout)
        else:
            self.actor = MLP(self.obs_dim, config.hidden_dims, self.action_dim, dropout=config.dropout)
        self.to(device)
        self.optimizer = torch.optim.Adam(self.actor.parameters(), lr=config.learning_rate)

    def optimizers(self):
        return {"actor": self.optimizer}

    def prepare(self, dataset, total_steps: int) -> None:
        if self.config.normalize_observations:
            self.normalizer.fit(dataset.observations)

    def update(self, batch, step: int) -> dict[str, torch.Tensor]:
        obs = self.normalizer(batch.observations)
        if self.config.gaussian:
            loss = -self.actor.log_prob(obs, batch.actions).mean()
        else:
            loss = F.mse_loss(torch.tanh(self.actor(obs)), batch.actions)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"actor_loss": loss.detach()}

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        obs = self.normalizer(obs)
        return self.actor(obs) if self.config.gaussian else torch.tanh(self.actor(obs))
