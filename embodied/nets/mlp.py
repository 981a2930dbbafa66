"""Multi-layer perceptrons, critic ensembles computed as one batched matmul, policies."""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


def _activation(name: str) -> nn.Module:
    return {"relu": nn.ReLU(), "gelu": nn.GELU(), "tanh": nn.Tanh(), "elu": nn.ELU()}[name]


class MLP(nn.Sequential):
    """Linear layers with activations between them (none after the last)."""

    def __init__(
        self,
        in_dim: int,
        hidden_dims: Sequence[int],
        out_dim: int,
        activation: str = "relu",
        dropout: float | None = None,
        layer_norm: bool = False,
    ):
        layers: list[nn.Module] = []
        last = in_dim
        for width in hidden_dims:
            layers.append(nn.Linear(last, width))
            if layer_norm:
                layers.append(nn.LayerNorm(width))
            layers.append(_activation(activation))
            if dropout:
                layers.append(nn.Dropout(dropout))
            last = width
        layers.append(nn.Linear(last, out_dim))
        super().__init__(*layers)


class EnsembleLinear(nn.Module):
    """``members`` independent linear layers applied as one batched matmul."""

    def __init__(self, members: int, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(members, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(members, 1, out_dim))
        bound = 1.0 / math.sqrt(in_dim)  # nn.Linear's default initialisation, per member
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (members, batch, in) or (batch, in)
        if x.dim() == 2:
            x = x.expand(self.weight.shape[0], *x.shape)
        return torch.baddbmm(self.bias, x, self.weight)


class EnsembleMLP(nn.Module):
    """An ensemble of MLPs (twin critics, reward ensembles) evaluated in one pass.

    Output: (members, batch, out_dim). One batched matmul per layer instead of one
    small matmul per member: on CPU and GPU alike this is what makes twin critics cheap.
    """

    def __init__(self, members: int, in_dim: int, hidden_dims: Sequence[int], out_dim: int, activation: str = "relu"):
        super().__init__()
        dims = [in_dim, *hidden_dims, out_dim]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.activation = _activation(activation)
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index < len(self.layers) - 1:
                x = self.activation(x)
        return x


class GaussianPolicy(nn.Module):
    """A Gaussian policy with tanh-bounded mean and a state-independent log-std, as IQL's
    authors use for advantage-weighted regression (actions in [-1, 1])."""

    def __init__(
        self,
        obs_dim: int,
        action_dim: int,
        hidden_dims: Sequence[int],
        dropout: float | None = None,
        log_std_min: float = -5.0,
        log_std_max: float = 2.0,
    ):
        super().__init__()
        self.mean = MLP(obs_dim, hidden_dims, action_dim, dropout=dropout)
        self.log_std = nn.Parameter(torch.zeros(action_dim))
        self.log_std_min, self.log_std_max = log_std_min, log_std_max

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        mean = torch.tanh(self.mean(obs))
        std = self.log_std.clamp(self.log_std_min, self.log_std_max).exp()
        return torch.distributions.Normal(mean, std)

    def log_prob(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        # Written out rather than through torch.distributions, whose argument checks cost
        # more than the arithmetic in a training step.
        mean = torch.tanh(self.mean(obs))
        log_std = self.log_std.clamp(self.log_std_min, self.log_std_max)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        """The deterministic action (the mean)."""
        return torch.tanh(self.mean(obs))


class Normalizer(nn.Module):
    """Fixed per-feature standardisation, fitted once from a dataset; saved with the agent."""

    def __init__(self, dim: int, eps: float = 1e-3):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.eps = eps

    @torch.no_grad()
    def fit(self, data: torch.Tensor) -> None:
        data = data.reshape(-1, data.shape[-1]).float()
        self.mean.copy_(data.mean(0))
        self.std.copy_(data.std(0).clamp_min(self.eps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
