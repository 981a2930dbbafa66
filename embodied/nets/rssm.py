"""The recurrent state-space model of PlaNet / Dreamer (Hafner et al. 2019, 2020) and the
observation encoders and decoders around it.

A latent state is a deterministic part ``h`` (a GRU's state, "belief") and a stochastic
part ``z`` (a diagonal Gaussian). One step: ``h_t = GRU(h_{t-1}, [z_{t-1}, a_{t-1}])``;
the prior ``p(z_t | h_t)`` predicts without looking, the posterior ``q(z_t | h_t, e_t)``
also sees the observation's embedding ``e_t``. Sequences follow one convention: step
``t`` holds the observation ``o_t``, the action ``a_{t-1}`` that led to it and
``is_first_t``; on a first step the state and the previous action are zeroed, so a
sampled window may span episode boundaries.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from embodied.nets.mlp import MLP


@dataclass
class Latent:
    """A batch of latent states (any leading shape): ``deter`` h, ``stoch`` z and the
    Gaussian ``mean`` / ``std`` that z was drawn from."""

    deter: torch.Tensor
    stoch: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor

    @property
    def features(self) -> torch.Tensor:
        """``[h, z]``: what the heads (reward, actor, value, decoder) read."""
        return torch.cat([self.deter, self.stoch], -1)

    def detach(self) -> Latent:
        return Latent(self.deter.detach(), self.stoch.detach(), self.mean.detach(), self.std.detach())

    def distribution(self) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mean, self.std)

    @staticmethod
    def stack(latents: Sequence[Latent], dim: int = 0) -> Latent:
        return Latent(*(torch.stack([getattr(l, k) for l in latents], dim) for k in ("deter", "stoch", "mean", "std")))

    def flatten(self) -> Latent:
        """Leading (T, B) dims merged into one."""
        return Latent(*(getattr(self, k).flatten(0, 1) for k in ("deter", "stoch", "mean", "std")))


def gaussian_kl(left: Latent, right: Latent) -> torch.Tensor:
    """KL(left ‖ right) of the stochastic parts, summed over latent dims."""
    return torch.distributions.kl_divergence(left.distribution(), right.distribution()).sum(-1)


class RSSM(nn.Module):
    """Dreamer-v1's RSSM: deterministic GRU path, Gaussian stochastic path."""

    def __init__(self, action_dim: int, embedding_dim: int, deter_dim: int = 200, stoch_dim: int = 30,
                 hidden_dim: int = 200, min_std: float = 0.1, activation: str = "elu"):  # fmt: skip
        super().__init__()
        self.deter_dim, self.stoch_dim, self.min_std = deter_dim, stoch_dim, min_std
        self.inp = MLP(stoch_dim + action_dim, (), hidden_dim)
        self.act = nn.ELU() if activation == "elu" else nn.ReLU()
        self.gru = nn.GRUCell(hidden_dim, deter_dim)
        self.prior_net = MLP(deter_dim, (hidden_dim,), 2 * stoch_dim, activation)
        self.posterior_net = MLP(deter_dim + embedding_dim, (hidden_dim,), 2 * stoch_dim, activation)

    @property
    def feature_dim(self) -> int:
        return self.deter_dim + self.stoch_dim

    def initial(self, batch: int, device: torch.device | str) -> Latent:
        zeros = torch.zeros(batch, self.stoch_dim, device=device)
        return Latent(torch.zeros(batch, self.deter_dim, device=device), zeros, zeros, torch.ones_like(zeros))

    def _gaussian(self, deter: torch.Tensor, out: torch.Tensor) -> Latent:
        mean, std = out.chunk(2, -1)
        std = F.softplus(std) + self.min_std
        return Latent(deter, mean + std * torch.randn_like(std), mean, std)

    def img_step(self, previous: Latent, action: torch.Tensor) -> Latent:
        """The prior one step ahead: ``h_t`` from ``(h_{t-1}, z_{t-1}, a_{t-1})``, ``z_t ~ p(z_t | h_t)``."""
        x = self.act(self.inp(torch.cat([previous.stoch, action], -1)))
        deter = self.gru(x, previous.deter)
        return self._gaussian(deter, self.prior_net(deter))

    def obs_step(self, previous: Latent, action: torch.Tensor, embedding: torch.Tensor,
                 is_first: torch.Tensor) -> tuple[Latent, Latent]:  # fmt: skip
        """(posterior, prior) of step t; where ``is_first``, the previous state and action are zeroed."""
        keep = (~is_first).float().unsqueeze(-1)
        previous = Latent(previous.deter * keep, previous.stoch * keep, previous.mean, previous.std)
        prior = self.img_step(previous, action * keep)
        posterior = self._gaussian(prior.deter, self.posterior_net(torch.cat([prior.deter, embedding], -1)))
        return posterior, prior

    def observe(self, embeddings: torch.Tensor, actions: torch.Tensor, is_first: torch.Tensor,
                state: Latent | None = None) -> tuple[Latent, Latent]:  # fmt: skip
        """Filter a (T, B, ...) sequence; returns (posteriors, priors), each with (T, B) leading dims."""
        state = state if state is not None else self.initial(embeddings.shape[1], embeddings.device)
        posteriors, priors = [], []
        for t in range(embeddings.shape[0]):
            state, prior = self.obs_step(state, actions[t], embeddings[t], is_first[t])
            posteriors.append(state)
            priors.append(prior)
        return Latent.stack(posteriors), Latent.stack(priors)


#: The image size of Dreamer v1's own convolutional networks (and RePo's, which keeps them).
DREAMER_IMAGE_SIZE = 64


def conv_layers(image_size: int) -> int:
    """Stride-2 convolutions that take a square image of ``image_size`` down to 4x4."""
    layers = int(round(math.log2(image_size / 4)))
    if image_size < 8 or 4 * 2**layers != image_size:
        raise ValueError(f"image encoders need square images of 8, 16, 32, 64, ... pixels, got {image_size}")
    return layers


class ConvEncoder(nn.Module):
    """Images (..., H, W, C) uint8 → embeddings: stride-2 4x4 convolutions doubling the
    channels from ``depth``, ReLU after each, then a linear layer to ``embedding_dim``
    (none when the features are already that many).

    At 64x64 this is Dreamer v1's encoder exactly, as RePo's code has it (zchuning/repo,
    ``VisualEncoder``): four unpadded convolutions, 64 → 31 → 14 → 6 → 2, so depth 32 ends in
    2x2x256 = 1024 features, the embedding itself. Other power-of-two sizes (which Dreamer
    does not define) pad by one and stop at 4x4."""

    def __init__(self, image_shape: Sequence[int], embedding_dim: int, depth: int = 32):
        super().__init__()
        size, _, channels = image_shape
        dreamer = size == DREAMER_IMAGE_SIZE
        n = 4 if dreamer else conv_layers(size)
        layers: list[nn.Module] = []
        for i in range(n):
            layers += [nn.Conv2d(channels if i == 0 else depth * 2 ** (i - 1), depth * 2**i, 4, 2, 0 if dreamer else 1),
                       nn.ReLU()]  # fmt: skip
        self.convs = nn.Sequential(*layers)
        features = depth * 2 ** (n - 1) * (2 * 2 if dreamer else 4 * 4)
        self.out = nn.Identity() if features == embedding_dim else nn.Linear(features, embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        lead = images.shape[:-3]
        x = images.reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2).float() / 255.0 - 0.5
        return self.out(self.convs(x).flatten(1)).reshape(*lead, -1)


class ConvDecoder(nn.Module):
    """Latent features → the mean of each pixel (in [-0.5, 0.5] units), mirroring :class:`ConvEncoder`.

    At 64x64, Dreamer v1's decoder (RePo's ``VisualObservationModel``): a linear layer to
    ``embedding_dim`` read as a 1x1 image, then transposed convolutions of kernels 5, 5, 6, 6
    (1 → 5 → 13 → 30 → 64). Other sizes: a linear layer to 4x4 features, then padded 4x4
    transposed convolutions."""

    def __init__(self, feature_dim: int, image_shape: Sequence[int], depth: int = 32, embedding_dim: int = 1024):
        super().__init__()
        size, _, channels = image_shape
        self.image_shape = (size, size, channels)
        dreamer = size == DREAMER_IMAGE_SIZE
        n = 4 if dreamer else conv_layers(size)
        self.top, self.side = (embedding_dim, 1) if dreamer else (depth * 2 ** (n - 1), 4)
        self.inp = nn.Linear(feature_dim, self.top * self.side**2)
        layers: list[nn.Module] = []
        for i in reversed(range(n)):
            out = channels if i == 0 else depth * 2 ** (i - 1)
            if dreamer:
                layers.append(nn.ConvTranspose2d(self.top if i == n - 1 else depth * 2**i, out, 5 if i >= 2 else 6, 2))
            else:
                layers.append(nn.ConvTranspose2d(depth * 2**i, out, 4, 2, 1))
            if i:
                layers.append(nn.ReLU())
        self.deconvs = nn.Sequential(*layers)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        lead = features.shape[:-1]
        x = self.inp(features.reshape(-1, features.shape[-1])).reshape(-1, self.top, self.side, self.side)
        return self.deconvs(x).permute(0, 2, 3, 1).reshape(*lead, *self.image_shape)


def image_target(images: torch.Tensor) -> torch.Tensor:
    """uint8 images in the decoder's units (what :class:`ConvEncoder` feeds its convolutions)."""
    return images.float() / 255.0 - 0.5
