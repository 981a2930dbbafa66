"""Masked Trajectory Models (Wu, Majumdar, Stone, Lin, Mordatch, Abbeel & Rajeswaran, 2023,
"Masked Trajectory Models for Prediction, Representation, and Control", ICML; authors'
code: facebookresearch/mtm, ``research/mtm``).

One bidirectional transformer reconstructs trajectory segments from random subsets of
themselves. A segment of L timesteps has three tokens per step, in this order: state
s_t, return-to-go R_t, action a_t. Each token is embedded by its modality's linear
layer plus a learned modality embedding and a learned timestep embedding. As in MAE
(He et al. 2022) the encoder sees only the visible tokens; its outputs, projected to a
small latent, go to a shallower decoder with a learned mask token in every hidden
position, and per-modality heads predict every token.

Training masks, one per sample, of a pattern drawn uniformly from ``mask_patterns`` (the
authors draw one of their ``mask_patterns`` per batch, ``masks.py``):

- ``"random"`` (their ``FULL_RANDOM``): each modality keeps ⌊r·L⌋ of its L tokens
  visible, r drawn from ``visible_ratios``;
- ``"autoregressive"`` (their ``AUTO_MASK``, the paper's "random autoregressive mask",
  and their only pattern for D4RL): the random mask, then a cut hides the future: pick a
  time p and a modality m (weights ``mode_weights``); tokens after p are hidden, and at
  p the modalities from m on are hidden;
- ``"inverse_dynamics"`` (their ``ID``, which shows all L states): states s_0 … s_k
  visible for a random k in 1 … L−1, no action or return, so inverse dynamics from any
  context length is trained, one transition included (what :func:`label_actions` asks);
- ``"forward_dynamics"`` (their ``FD``, which shows every action): states and actions
  s_0, a_0 … s_k, a_k visible for a random k in 0 … L−2, no return, as
  :meth:`MTM.forward_dynamics` asks.

Action tokens of steps without actions (action-free episodes) are always hidden and carry
no loss, so MTM learns from action-free data too.

Loss (``MTM.forward_loss`` of the authors, whose masked-only branch is disabled): the sum
over modalities of the mean squared error on *every* token, visible or hidden, in
standardised units (``masked_loss_only`` restricts it to hidden tokens):

    L = Σ_m  Σ_{b,t} w_m(b,t) · ‖ŝ_m(b,t) − x_m(b,t)‖² / dim_m  /  Σ_{b,t} w_m(b,t)

with w = 1, except w_actions = 0 where a step has no action.

Inference is choosing a mask (see :func:`bc_mask`, :func:`inverse_dynamics_mask`,
:func:`forward_dynamics_mask`): behaviour cloning, return-conditioned behaviour cloning
(the paper's offline-RL mode, Chen et al. 2021), inverse and forward dynamics.
:func:`label_actions` fills the actions of action-free episodes by inverse dynamics.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import nn

from embodied.algos.base import Agent
from embodied.data.episodes import DatasetError, Episode
from embodied.nets import Normalizer

#: token order within a timestep (the authors' autoregressive mode order)
STATES, RETURNS, ACTIONS = 0, 1, 2
MODALITIES = ("states", "returns", "actions")
PATTERNS = ("autoregressive", "random", "inverse_dynamics", "forward_dynamics")  # training mask patterns


@dataclass
class MTMConfig:
    """MTM hyperparameters. Defaults are the authors' D4RL setting (Wu et al. 2023,
    Appendix; facebookresearch/mtm ``research/mtm/config.yaml`` and
    ``models/mtm_model.py``): 512 wide, 4 heads, 2 encoder + 1 decoder layers, latent 32,
    segments of 4 steps, AdamW lr 1e-4 (β 0.9, 0.999), weight decay 0.01 on weight
    matrices only, 40k linear warmup steps then cosine decay, no dropout, always the
    random autoregressive mask with visible ratios {0.7, …, 1.0} and cut modality
    weights (state 0.2, return 0.0, action 0.8). The batch, ``train.batch_size``, is 2048
    as reported for the paper (the released config uses 1024).

    To label action-free episodes, add the ``"inverse_dynamics"`` pattern: under the
    autoregressive mask alone a segment of states with every action hidden is rare, and
    inverse dynamics from it learns slowly. On Meta-World also set ``state_differences``
    and ``acted_share`` (0.5 in ``embodied.bench.offline_rl``): with 90 % of episodes
    action-free, 10k updates at the CPU size gave labels that correlate 0.74 with the true
    actions of drawer-open (0.19 with neither).

    The loss and the masks are described in the module docstring.
    """

    algo = "mtm"
    trajectory_length: int = 4  # L, timesteps per segment (authors' traj_length)
    width: int = 512  # transformer width (n_embd)
    heads: int = 4  # attention heads (n_head)
    encoder_layers: int = 2  # n_enc_layer
    decoder_layers: int = 1  # n_dec_layer
    latent_dim: int = 32  # encoder output projected to this before the decoder (latent_dim)
    dropout: float = 0.0  # in every transformer layer
    learning_rate: float = 1e-4  # AdamW peak learning rate
    weight_decay: float = 0.01  # AdamW, on linear and attention weight matrices only
    warmup_steps: int = 40_000  # linear warmup, capped at a tenth of the run; then cosine to 0
    # Share of a modality's tokens kept visible (before the cut): the authors' "mask_ratios",
    # which count kept tokens (their mask is 1 where a token is shown).
    visible_ratios: tuple = (0.7, 0.8, 0.85, 0.9, 0.95, 1.0)
    mask_patterns: tuple = ("autoregressive",)  # per sample: autoregressive, random, inverse_dynamics, forward_dynamics
    mode_weights: tuple = (0.2, 0.0, 0.8)  # chance the cut starts at the state / return / action token of step p
    masked_loss_only: bool = False  # loss on hidden tokens only (authors and paper: all tokens)
    return_to_go: str = "average"  # "average": Σ future rewards / steps left (authors' D4RL); "sum": undiscounted
    eval_mode: str = "rcbc"  # policy(): "rcbc" (return-conditioned, the paper's control mode) or "bc"
    # Features with a smaller std are centred, not scaled. The authors' tokenizer uses 0.1,
    # set for D4RL's scales; it leaves Meta-World's positions, which vary by centimetres,
    # almost constant to the network.
    min_std: float = 1e-3
    # Our addition, off in the paper: each visible state token whose predecessor is visible
    # too also embeds the standardised difference s_t − s_{t−1}, as dynamics models take
    # state differences (Nagabandi et al. 2018; Chua et al. 2018). Meta-World's per-step
    # motions are millimetres against centimetres of spread: in standardised state units the
    # network would have to subtract two tokens to a few per cent, and inverse dynamics from
    # them stays poor (drawer-open label correlation: 0.19 without, 0.30 with differences,
    # 0.74 with differences, acted_share 0.5 and twice the updates).
    state_differences: bool = False
    # Our addition: the share of each batch drawn from segments whose actions are all known
    # (0: uniform over all segments, the authors'). With 90 % of episodes action-free a
    # uniform batch holds few actions to learn inverse dynamics from.
    acted_share: float = 0.0
    # Our addition: the features of the flattened observation the model sees, as indices
    # (empty: all of them). An inverse-dynamics labeller that sees only the robot's own
    # features generalises from few acted episodes, where one that sees the objects and the
    # goal learns them by heart: on push mixed with 10 acted episodes, labels from the
    # robot's features correlated 0.78 with the true actions, from all 39 features 0.60
    # (``embodied.envs.metaworld.ROBOT_FEATURES``; a ridge fit from the robot's features
    # alone reaches 0.91, from all of them 0.35). States predicted (forward dynamics) are
    # these features only.
    state_features: tuple = ()
    target_return_fraction: float = 1.0  # RCBC target: min + fraction·(max − min) of the returns-to-go at episode starts


# --- masks: (L, 3) booleans, True = visible ---------------------------------------------------
def bc_mask(length: int, t: int, returns: bool = False) -> torch.Tensor:
    """Behaviour cloning of a_t: states up to t, actions before t (and returns up to t if
    ``returns``, for return-conditioned BC); the rest hidden."""
    time = torch.arange(length)
    visible = torch.zeros(length, 3, dtype=torch.bool)
    visible[:, STATES] = time <= t
    visible[:, ACTIONS] = time < t
    if returns:
        visible[:, RETURNS] = time <= t
    return visible


def inverse_dynamics_mask(length: int, steps: int = 1) -> torch.Tensor:
    """Inverse dynamics of a_0 … a_{steps−1}: states s_0 … s_steps visible, no action or return."""
    visible = torch.zeros(length, 3, dtype=torch.bool)
    visible[: steps + 1, STATES] = True
    return visible


def forward_dynamics_mask(length: int, t: int = 0) -> torch.Tensor:
    """Forward dynamics of s_{t+1}: states and actions up to t visible, no return."""
    visible = torch.zeros(length, 3, dtype=torch.bool)
    visible[: t + 1, STATES] = True
    visible[: t + 1, ACTIONS] = True
    return visible


# --- the network ------------------------------------------------------------------------------
def _transformer(width: int, heads: int, layers: int, dropout: float) -> nn.TransformerEncoder:
    """Pre-norm GELU layers with a final LayerNorm, as the authors' encoder and decoder."""
    layer = nn.TransformerEncoderLayer(
        width, heads, 4 * width, dropout, activation="gelu", batch_first=True, norm_first=True
    )
    return nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(width), enable_nested_tensor=False)


def _sinusoid(length: int, width: int) -> torch.Tensor:
    """The authors' fixed 1-D sin-cos position code (MAE's), used here to initialise learned ones."""
    omega = 1.0 / 10000 ** (torch.arange(width // 2, dtype=torch.float64) / (width / 2))
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None]
    code = torch.cat([angles.sin(), angles.cos()], dim=1)
    return torch.nn.functional.pad(code, (0, width - code.shape[1])).float()


class MaskedTrajectoryModel(nn.Module):
    """MAE-style encoder–decoder over (L timesteps × modalities) tokens.

    ``forward(tokens, visible)``: ``tokens[m]`` is (B, L, dim_m), ``visible`` (B, L, M)
    bool; returns one (B, L, dim_m) prediction per modality for every position.
    """

    def __init__(self, dims: Sequence[int], length: int, width: int, heads: int, encoder_layers: int,
                 decoder_layers: int, latent_dim: int, dropout: float = 0.0, state_differences: bool = False):  # fmt: skip
        super().__init__()
        modalities = len(dims)
        self.length = length
        self.embed = nn.ModuleList(nn.Linear(dim, width) for dim in dims)
        # Embeds s_t − s_{t−1} into the state token of step t (``MTMConfig.state_differences``).
        self.embed_difference = nn.Linear(dims[0], width) if state_differences else None
        # Modality codes start at zero as the authors' per-dim encodings; timestep codes start
        # as their fixed sinusoid (halved, as theirs) and are learned here.
        self.encoder_modality = nn.Parameter(torch.zeros(modalities, width))
        self.decoder_modality = nn.Parameter(torch.zeros(modalities, width))
        self.encoder_timestep = nn.Parameter(_sinusoid(length, width) / 2)
        self.decoder_timestep = nn.Parameter(_sinusoid(length, width) / 2)
        self.encoder = _transformer(width, heads, encoder_layers, dropout)
        self.to_latent = nn.Sequential(nn.GELU(), nn.Linear(width, latent_dim))
        self.mask_token = nn.Parameter(torch.zeros(modalities, latent_dim))
        self.from_latent = nn.ModuleList(nn.Linear(latent_dim, width) for _ in dims)
        self.decoder = _transformer(width, heads, decoder_layers, dropout)
        self.heads = nn.ModuleList(
            nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width), nn.GELU(), nn.Linear(width, dim))
            for dim in dims
        )

    def forward(
        self, tokens: Sequence[torch.Tensor], visible: torch.Tensor, differences: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """``differences`` (B, L, dim_0): standardised s_t − s_{t−1}, with the model's
        ``embed_difference`` only; embedded where states t and t−1 are both visible."""
        batch, length, modalities = visible.shape
        # Hidden inputs are zeroed so no hidden value (a NaN action of an action-free step
        # included) can reach any output, even through a zero attention weight (0·NaN = NaN).
        embedded = [embed(torch.where(visible[..., m, None], tokens[m], 0.0)) for m, embed in enumerate(self.embed)]
        if self.embed_difference is not None:
            if differences is None:
                raise ValueError("this model embeds state differences: pass differences")
            # Step t shows s_t − s_{t−1} when both states are visible (step 0: never).
            before = torch.cat([torch.zeros_like(visible[:, :1, 0]), visible[:, :-1, 0]], dim=1)
            shown = (visible[..., 0] & before)[..., None]
            embedded[0] = embedded[0] + shown * self.embed_difference(torch.where(shown, differences, 0.0))
        x = torch.stack(embedded, dim=2)
        x = x + self.encoder_modality + self.encoder_timestep[:length, None]
        flat_visible = visible.reshape(batch, length * modalities)
        # The encoder attends to visible tokens only: with hidden keys ignored, the outputs
        # at visible positions equal those of MAE's encoder run on the visible tokens alone,
        # with one fixed shape for the whole batch although every sample has its own mask.
        # A sample with nothing visible ignores nothing (its outputs are all replaced below),
        # so softmax never sees a row of only -inf.
        ignore = ~flat_visible & flat_visible.any(dim=1, keepdim=True)
        encoded = self.encoder(x.reshape(batch, length * modalities, -1), src_key_padding_mask=ignore)
        latent = self.to_latent(encoded).reshape(batch, length, modalities, -1)
        latent = torch.where(visible[..., None], latent, self.mask_token)
        y = torch.stack([project(latent[:, :, m]) for m, project in enumerate(self.from_latent)], dim=2)
        y = y + self.decoder_modality + self.decoder_timestep[:length, None]
        y = self.decoder(y.reshape(batch, length * modalities, -1)).reshape(batch, length, modalities, -1)
        return [head(y[:, :, m]) for m, head in enumerate(self.heads)]


class WarmupCosine:
    """Learning-rate factor: linear warmup, then cosine decay to 0 at the run's end (the
    authors' schedule). The first update already gets 1/warmup of the rate (theirs gets 0).
    A callable object, so ``LambdaLR`` checkpoints its fields."""

    def __init__(self, warmup: int = 1, total: int = 1):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = min(1.0, (step - self.warmup) / max(1, self.total - self.warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))


def _parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay linear and attention weight matrices only, as the authors (and minGPT): not
    biases, LayerNorms, embeddings or mask tokens."""
    decayed = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decayed |= {id(m.in_proj_weight) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    parameters = list(model.parameters())
    return [
        {"params": [p for p in parameters if id(p) in decayed], "weight_decay": weight_decay},
        {"params": [p for p in parameters if id(p) not in decayed], "weight_decay": 0.0},
    ]


def _fit_standardiser(normalizer: Normalizer, data: torch.Tensor, min_std: float) -> None:
    normalizer.fit(data)
    # Features whose std is below min_std are only centred: near-constant features would
    # otherwise be blown up into noise.
    normalizer.std[normalizer.std < min_std] = 1.0


@dataclass
class SegmentBatch:
    """Segments of L steps with their training mask (tensors on the dataset's device)."""

    states: torch.Tensor  # (B, L, obs)
    returns: torch.Tensor  # (B, L, 1) returns-to-go
    actions: torch.Tensor  # (B, L, act); NaN where has_actions is False
    has_actions: torch.Tensor  # (B, L) bool
    visible: torch.Tensor  # (B, L, 3) bool, modalities in STATES, RETURNS, ACTIONS order


class MTM(Agent):
    Config = MTMConfig
    name = "mtm"

    def __init__(self, config: MTMConfig, observation_space, action_space, device):
        super().__init__(config, observation_space, action_space, device)
        _validate(config)
        self.length = config.trajectory_length
        features = [int(i) for i in config.state_features]
        if any(not 0 <= i < self.obs_dim for i in features) or len(set(features)) != len(features):
            raise ValueError(f"state_features must be distinct indices in [0, {self.obs_dim}) of the flattened "
                             f"observation, got {list(config.state_features)}")  # fmt: skip
        #: the observation features the model sees (None: all); a buffer, so it moves with the
        #: agent's device, and not saved: the config holds it
        self.register_buffer("state_index", torch.tensor(features, dtype=torch.long) if features else None,
                             persistent=False)  # fmt: skip
        self.state_dim = len(features) or self.obs_dim
        self.model = MaskedTrajectoryModel(
            (self.state_dim, 1, self.action_dim), self.length, config.width, config.heads,
            config.encoder_layers, config.decoder_layers, config.latent_dim, config.dropout, config.state_differences,
        )  # fmt: skip
        self.state_normalizer = Normalizer(self.state_dim)
        self.difference_normalizer = Normalizer(self.state_dim) if config.state_differences else None
        self.return_normalizer = Normalizer(1)
        self.action_normalizer = Normalizer(self.action_dim)
        self.register_buffer("target_return", torch.zeros(()))  # RCBC target, set by prepare()
        self.to(device)
        # fused: one kernel for all parameters, about 7x faster than the default on CPU.
        self.optimizer = torch.optim.AdamW(
            _parameter_groups(self.model, config.weight_decay), lr=config.learning_rate, betas=(0.9, 0.999), fused=True
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, WarmupCosine())
        # Per-dataset-row returns-to-go, rebuilt by prepare() (not saved: it is the data's).
        self._returns_to_go: torch.Tensor | None = None
        self._visible_counts = torch.tensor([int(self.length * r + 1e-9) for r in config.visible_ratios])
        self._mode_weights = torch.tensor(config.mode_weights, dtype=torch.float)
        self._patterns = torch.tensor([PATTERNS.index(pattern) for pattern in config.mask_patterns])

    def optimizers(self):
        return {"model": self.optimizer, "schedule": self.schedule}

    # --- training ------------------------------------------------------------------------
    def prepare(self, dataset, total_steps: int) -> None:
        """Returns-to-go of every dataset row, the standardisers, the RCBC target, the schedule."""
        rows = torch.arange(len(dataset.rewards), device=dataset.device)
        end = dataset._end_of_row
        rewards = dataset.rewards.double()
        cumulative = rewards.cumsum(0)
        # Σ_{j=i}^{end-1} r_j: the padding row at an episode's end has reward 0.
        returns_to_go = cumulative[end] - cumulative + rewards
        if self.config.return_to_go == "average":
            returns_to_go = returns_to_go / (end - rows).clamp_min(1)
        self._returns_to_go = returns_to_go.float()[:, None]
        is_step = rows != end
        min_std = self.config.min_std
        observations = self._features(dataset.observations.reshape(len(rows), -1))
        _fit_standardiser(self.state_normalizer, observations[is_step], min_std)
        _fit_standardiser(self.return_normalizer, self._returns_to_go[is_step], min_std)
        _fit_standardiser(self.action_normalizer, dataset.actions[dataset.has_actions], min_std)
        if self.difference_normalizer is not None:
            steps = rows[is_step]
            # Per-step motions are far below the states' spread: near-constant differences
            # are only centred at a hundredth of the states' threshold.
            _fit_standardiser(self.difference_normalizer, observations[steps + 1] - observations[steps], min_std / 100)
        # The RCBC target is read at an episode's first step: the returns-to-go seen there
        # (later steps' are out of reach from a start state: near the goal the average
        # return-to-go is the goal's reward itself).
        start_returns = self._returns_to_go[dataset.episode_starts]
        low, high = start_returns.min(), start_returns.max()
        self.target_return.fill_(float(low + self.config.target_return_fraction * (high - low)))
        # A 40k-step warmup would leave a short run (a test, a quick look) at a tiny rate.
        schedule = self.schedule.lr_lambdas[0]
        schedule.warmup = max(1, min(self.config.warmup_steps, total_steps // 10))
        schedule.total = total_steps
        for group, base_lr in zip(self.optimizer.param_groups, self.schedule.base_lrs):
            group["lr"] = base_lr * schedule(self.schedule.last_epoch)

    def sample(self, dataset, batch_size: int, generator: torch.Generator) -> SegmentBatch:
        """Segments of L steps from anywhere, action-free episodes included, and their masks."""
        if self._returns_to_go is None:
            raise RuntimeError("MTM.sample: call prepare(dataset, total_steps) first")
        acted = round(self.config.acted_share * batch_size)
        if acted and 0.0 < dataset.action_free_fraction < 1.0:
            parts = [dataset.sample_segments(acted, self.length, generator, require_actions=True),
                     dataset.sample_segments(batch_size - acted, self.length, generator, require_actions=False)]  # fmt: skip
            segments = {key: torch.cat([part[key] for part in parts]) for key in ("observations", "actions", "rows")}
        else:  # every segment (or none) has actions: uniform is the same
            segments = dataset.sample_segments(batch_size, self.length, generator, require_actions=False)
        rows = segments["rows"][:, None] + torch.arange(self.length, device=dataset.device)
        has_actions = dataset.has_actions[rows]
        return SegmentBatch(
            states=self._features(segments["observations"][:, :-1].reshape(batch_size, self.length, -1)),
            returns=self._returns_to_go[rows],
            actions=segments["actions"].reshape(batch_size, self.length, -1),
            has_actions=has_actions,
            visible=self.training_mask(has_actions, generator),
        )

    def training_mask(self, has_actions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Training masks, one per sample, patterns from ``mask_patterns`` (module docstring): (B, L, 3) bool."""
        batch, length = has_actions.shape
        device = generator.device if generator is not None else torch.device("cpu")
        options = {"generator": generator, "device": device}
        # Keep ⌊r·L⌋ tokens of each modality, r drawn per sample and modality: the first
        # `keep` of a random ranking of the L positions.
        choice = torch.randint(len(self._visible_counts), (batch, 1, 3), **options)
        keep = self._visible_counts.to(device)[choice]
        rank = torch.rand(batch, length, 3, **options).argsort(dim=1).argsort(dim=1)
        kept = rank < keep
        # The autoregressive cut: from (time p, modality m) on, everything is hidden.
        time = torch.arange(length, device=device)[None, :, None]
        modality = torch.arange(3, device=device)[None, None, :]
        cut = torch.randint(length, (batch, 1, 1), **options)
        mode = torch.multinomial(self._mode_weights.to(device), batch, replacement=True, generator=generator)
        before_cut = (time < cut) | ((time == cut) & (modality < mode[:, None, None]))
        # Inverse dynamics: states s_0 … s_k (k ≥ 1), nothing else; forward: s_0, a_0 … s_k, a_k (k ≤ L−2).
        inverse = (time <= torch.randint(1, length, (batch, 1, 1), **options)) & (modality == STATES)
        forward = (time <= torch.randint(0, length - 1, (batch, 1, 1), **options)) & (modality != RETURNS)
        pattern = self._patterns.to(device)[torch.randint(len(self._patterns), (batch, 1, 1), **options)]
        visible = torch.where(pattern == PATTERNS.index("random"), kept, kept & before_cut)
        visible = torch.where(pattern == PATTERNS.index("inverse_dynamics"), inverse, visible)
        visible = torch.where(pattern == PATTERNS.index("forward_dynamics"), forward, visible)
        visible = visible.to(has_actions.device)
        visible[..., ACTIONS] &= has_actions
        return visible

    def _features(self, states: torch.Tensor) -> torch.Tensor:
        """The ``state_features`` of flattened observations (..., obs)."""
        return states if self.state_index is None else states[..., self.state_index]

    def _tokens(self, states: torch.Tensor, returns: torch.Tensor, actions: torch.Tensor, has_actions: torch.Tensor):
        actions = torch.where(has_actions[..., None], actions, 0.0)  # NaN rows of action-free steps
        return (self.state_normalizer(states), self.return_normalizer(returns), self.action_normalizer(actions))

    def _differences(self, states: torch.Tensor) -> torch.Tensor | None:
        """Standardised s_t − s_{t−1} (step 0: zeros), when the model embeds them."""
        if self.difference_normalizer is None:
            return None
        differences = torch.zeros_like(states)
        differences[:, 1:] = states[:, 1:] - states[:, :-1]
        return (differences - self.difference_normalizer.mean) / self.difference_normalizer.std

    def loss(self, batch: SegmentBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The reconstruction loss of a batch and its per-modality parts (detached)."""
        targets = self._tokens(batch.states, batch.returns, batch.actions, batch.has_actions)
        predictions = self.model(targets, batch.visible, self._differences(batch.states))
        weights = torch.ones_like(batch.visible, dtype=predictions[0].dtype)
        weights[..., ACTIONS] = batch.has_actions.to(weights.dtype)
        if self.config.masked_loss_only:
            weights = weights * ~batch.visible
        total = predictions[0].new_zeros(())
        metrics = {}
        for m, name in enumerate(MODALITIES):
            error = (predictions[m] - targets[m]).square().mean(dim=-1)
            part = (weights[..., m] * error).sum() / weights[..., m].sum().clamp_min(1.0)
            total = total + part
            metrics[f"{name}_loss"] = part.detach()
        return total, metrics

    def update(self, batch: SegmentBatch, step: int) -> dict[str, torch.Tensor]:
        loss, metrics = self.loss(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.schedule.step()
        return {"loss": loss.detach(), **metrics, "learning_rate": torch.tensor(self.schedule.get_last_lr()[0])}

    def compile(self, mode: str = "default") -> None:
        self.model.compile(mode=mode)

    # --- inference by choosing a mask ----------------------------------------------------------
    def reconstruct(
        self,
        visible: torch.Tensor,
        states: torch.Tensor | None = None,
        returns: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Every token predicted from the visible ones, in the data's units.

        Inputs are (B, k, dim) with k ≤ L (missing ones: hidden); states are whole
        observations. ``visible`` is (L, 3) or (B, L, 3) bool. Returns (B, L, dim) per
        modality name; predicted states hold the ``state_features`` only.
        """
        if states is not None:
            states = self._features(states.reshape(states.shape[0], states.shape[1], self.obs_dim))
        given = (states, returns, actions)
        batch = next(x.shape[0] for x in given if x is not None)
        dims = (self.state_dim, 1, self.action_dim)
        tokens = []
        for value, dim in zip(given, dims):
            padded = torch.zeros(batch, self.length, dim, device=self.device)
            if value is not None:
                padded[:, : value.shape[1]] = value.reshape(batch, value.shape[1], dim)
            tokens.append(padded)
        visible = visible.to(self.device).expand(batch, self.length, 3)
        normalised = self._tokens(*tokens, has_actions=visible[..., ACTIONS])
        predictions = self.model(normalised, visible, self._differences(tokens[STATES]))
        normalizers = (self.state_normalizer, self.return_normalizer, self.action_normalizer)
        return {
            name: prediction * normalizer.std + normalizer.mean
            for name, prediction, normalizer in zip(MODALITIES, predictions, normalizers)
        }

    @torch.no_grad()
    def behaviour_clone(
        self,
        states: torch.Tensor,
        actions: torch.Tensor | None = None,
        target_return: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """a_t from states s_0 … s_t (B, t+1, obs) and earlier actions (B, t, act), t < L;
        return-conditioned (RCBC) when ``target_return`` (the return-to-go asked for) is given."""
        steps = states.shape[1]
        self._check_context("behaviour_clone", "states", steps, 1, self.length)
        returns = None
        if target_return is not None:
            returns = torch.as_tensor(target_return, dtype=torch.float, device=self.device)
            returns = returns.reshape(-1, 1, 1).expand(states.shape[0], steps, 1)
        visible = bc_mask(self.length, steps - 1, returns=target_return is not None)
        return self.reconstruct(visible, states=states, returns=returns, actions=actions)["actions"][:, steps - 1]

    @torch.no_grad()
    def inverse_dynamics(self, states: torch.Tensor) -> torch.Tensor:
        """Actions a_0 … a_{k−1} (B, k, act) that lead through states s_0 … s_k (B, k+1, obs)."""
        steps = states.shape[1] - 1
        self._check_context("inverse_dynamics", "states", steps + 1, 2, self.length)
        return self.reconstruct(inverse_dynamics_mask(self.length, steps), states=states)["actions"][:, :steps]

    @torch.no_grad()
    def forward_dynamics(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        """The next state s_k (B, obs; the ``state_features`` only) after states s_0 … s_{k−1} and actions a_0 … a_{k−1}, k < L."""
        steps = states.shape[1]
        self._check_context("forward_dynamics", "states", steps, 1, self.length - 1)
        visible = forward_dynamics_mask(self.length, steps - 1)
        return self.reconstruct(visible, states=states, actions=actions)["states"][:, steps]

    def _check_context(self, what: str, name: str, count: int, low: int, high: int) -> None:
        if not low <= count <= high:
            raise ValueError(
                f"{what}: takes {low} to {high} {name} (trajectory_length is {self.length}), got {count}"
            )

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        """Stateless: the observation is the first step of a context whose other tokens are
        hidden (with RCBC, its return-to-go token shows the fixed target), as in the
        authors' evaluation samplers. The autoregressive training mask shows exactly this
        when it cuts at step 0, whereas the observation at the last position with earlier
        steps hidden never occurs with the default ratios (at least 70 % of a modality's
        tokens are kept). A fixed target suits the "average" return-to-go, which does not
        shrink over an episode as a sum does."""
        states = obs.reshape(obs.shape[0], 1, self.obs_dim)
        target = self.target_return if self.config.eval_mode == "rcbc" else None
        return self.behaviour_clone(states, target_return=target)


def _validate(config: MTMConfig) -> None:
    if config.eval_mode not in ("bc", "rcbc"):
        raise ValueError(f"eval_mode must be 'bc' or 'rcbc', got {config.eval_mode!r}")
    if config.return_to_go not in ("average", "sum"):
        raise ValueError(f"return_to_go must be 'average' or 'sum', got {config.return_to_go!r}")
    if not 0.0 <= config.acted_share <= 1.0:
        raise ValueError(f"acted_share must be in [0, 1], got {config.acted_share}")
    if config.trajectory_length < 2:
        raise ValueError(f"trajectory_length must be >= 2 (dynamics need two steps), got {config.trajectory_length}")
    if config.width % config.heads:
        raise ValueError(f"width {config.width} is not divisible by heads {config.heads}")
    if len(config.mode_weights) != 3 or sum(config.mode_weights) <= 0 or min(config.mode_weights) < 0:
        raise ValueError(f"mode_weights must be 3 non-negative weights (state, return, action): {config.mode_weights}")
    if not config.mask_patterns or any(pattern not in PATTERNS for pattern in config.mask_patterns):
        raise ValueError(f"mask_patterns must be some of {', '.join(PATTERNS)}, got {config.mask_patterns}")
    if not config.visible_ratios or not all(0.0 <= r <= 1.0 for r in config.visible_ratios):
        raise ValueError(f"visible_ratios must be in [0, 1], got {config.visible_ratios}")


# --- labelling action-free episodes --------------------------------------------------------------
@torch.no_grad()
def label_actions(agent: MTM, episodes: Sequence[Episode], batch_size: int = 8192) -> list[Episode]:
    """Fill the actions of action-free episodes by MTM's inverse dynamics; episodes with
    actions are returned as they are (the same objects).

    Each a_t is read from a whole segment of L visible states (the authors' ID mask) that
    holds s_t and s_{t+1} with as many states before as after allows: s_{t−b} … s_{t−b+L−1},
    b = ⌊(L−2)/2⌋, shifted inside the episode at its ends (an episode shorter than L−1 steps
    is one shorter context). The states around a transition say what one transition alone
    cannot: in Meta-World the hand trails its mocap target, so s_{t+1} − s_t mixes a_t with
    earlier actions (a linear fit of a_t on drawer-open: correlation 0.67 from (s_t, s_{t+1}),
    0.82 from s_{t−1} … s_{t+2}).

    Labelled episodes get ``has_actions`` True and ``metadata["actions_labelled_by"] = "mtm"``.
    Train the MTM with the ``"inverse_dynamics"`` mask pattern among its
    ``mask_patterns`` (the autoregressive mask alone rarely shows this context) and, on
    Meta-World-like data, ``state_differences``.
    """
    if not isinstance(agent, MTM):
        raise TypeError(f"label_actions needs an MTM agent, got {type(agent).__name__}")
    if "inverse_dynamics" not in agent.config.mask_patterns:
        warnings.warn(
            "label_actions: this MTM was trained without the 'inverse_dynamics' mask pattern; "
            "its labels are likely poor (set algo.mask_patterns=[autoregressive, inverse_dynamics])",
            stacklevel=2,
        )
    todo = [index for index, episode in enumerate(episodes) if not episode.has_actions]
    space = agent.action_space
    labelled = list(episodes)
    was_training = agent.training
    agent.eval()
    try:
        for index in todo:
            episode = episodes[index]
            if isinstance(episode.observations, dict):
                raise DatasetError(
                    f"episode {index}: label_actions needs array observations, not keys {list(episode.observations)}"
                )
            observations = np.asarray(episode.observations, dtype=np.float32).reshape(len(episode) + 1, -1)
            if observations.shape[1] != agent.obs_dim:
                raise DatasetError(
                    f"episode {index}: observations have {observations.shape[1]} features; the agent takes {agent.obs_dim}"
                )
            actions = _inverse_dynamics_labels(agent, torch.from_numpy(observations), batch_size)
            actions = np.clip(actions, space.low.reshape(-1), space.high.reshape(-1)).astype(space.dtype)
            labelled[index] = Episode(
                observations=episode.observations, actions=actions.reshape(len(episode), *space.shape),
                rewards=episode.rewards, terminations=episode.terminations, truncations=episode.truncations,
                infos=episode.infos, metadata={**episode.metadata, "has_actions": True, "actions_labelled_by": "mtm"},
            )  # fmt: skip
    finally:
        agent.train(was_training)
    return labelled


def _inverse_dynamics_labels(agent: MTM, observations: torch.Tensor, batch_size: int) -> np.ndarray:
    """a_0 … a_{T−1} of one episode's states (T+1, obs), each from its window (label_actions)."""
    steps, length = len(observations) - 1, agent.length
    if steps == 0:
        return np.zeros((0, agent.action_dim), dtype=np.float32)
    if steps + 1 < length:  # one shorter context: the whole episode
        return agent.inverse_dynamics(observations[None].to(agent.device))[0].cpu().numpy()
    start = (torch.arange(steps) - (length - 2) // 2).clamp(0, steps + 1 - length)
    position = torch.arange(steps) - start
    windows = observations[start[:, None] + torch.arange(length)]  # (T, L, obs)
    guesses = torch.cat([agent.inverse_dynamics(chunk.to(agent.device)).cpu() for chunk in windows.split(batch_size)])
    return guesses[torch.arange(steps), position].numpy()
