"""RePo (Zhu, Simchowitz, Gadipudi & Gupta 2023, "RePo: Resilient Model-Based
Reinforcement Learning by Regularizing Posterior Predictability") and its Dreamer
baseline (Hafner et al. 2020, Dreamer v1), one flag apart (``objective``).

World model: the RSSM of :mod:`embodied.nets.rssm` over an image (or state) encoder, a
reward head on the latent features ``[h_t, z_t]``. With ``objective: repo`` it learns

    L_model = E[-log p(r_t | h_t, z_t)] + β · (KL_bal − target_kl),
    KL_bal  = α KL(sg(q(z_t | h_t, e_t)) ‖ p(z_t | h_t)) + (1 − α) KL(q ‖ sg(p)),

with no pixel reconstruction: only what predicts reward and is predictable from the past
gets into the latent, so a noisy TV or a moving background carries no information worth
its KL. β ≥ 0 is a Lagrange multiplier enforcing KL_bal ≤ target_kl: gradient ascent on
log β with loss −log β · (KL_bal − target_kl). A decoder is still trained on *detached*
latents, as a probe of what the latent holds (it changes nothing upstream). With
``objective: dreamer`` the decoder's reconstruction joins the model loss and the KL term
is max(KL(q ‖ p), free_nats) per step, averaged, as RePo's Dreamer baseline has it
(dreamer.py, after dreamer-pytorch; Dreamer v1's TF code clamps the batch's mean instead).

Behaviour (Dreamer v1, both objectives): from every posterior state of a batch, the actor
imagines ``horizon`` steps in the frozen model; the λ-returns of predicted rewards and
values are maximised by backpropagating through the dynamics (plus an entropy bonus), and
the value regresses on them.

Test-time encoder alignment (:meth:`RePo.align`, ``embodied align``): in a visually
shifted env (other distractors or colours), the dynamics, reward, actor and value stay
frozen and only the encoder learns, with no reward: its embeddings of the new domain are
pushed into the *support* of the source embeddings by an adversarial discriminator
whose source side is reweighted by a learned density ratio τ (E[τ] = 1, a dual variable;
τ moves source mass towards where the target lies, so the target need only land inside
the source's support, not match its density; ``alignment: distribution`` drops τ), the
encoder taking the non-saturating generator loss,
and kept dynamically consistent by an inverse-dynamics head trained with the model on
source data (the actions taken must stay predictable from consecutive latents). With
``calibration_steps`` > 0, the same states seen in both domains, from paired rollouts of
the source and target envs, also pull each target embedding onto its source pair's: RePo's
released adaptation script (``adapt_repo.py``) does this by default, with 5,000 paired steps.

Defaults are RePo's (zchuning/repo ``experiments/train_repo.py`` and ``adapt_repo.py``,
which keep Dreamer v1's sizes); the CPU benchmarks shrink sizes and budgets with
``--set`` and say so beside their tables.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from embodied.algos.base import Agent
from embodied.data.replay import SequenceReplay
from embodied.nets.mlp import MLP
from embodied.nets.rssm import RSSM, ConvDecoder, ConvEncoder, Latent, gaussian_kl, image_target

OBJECTIVES = ("repo", "dreamer")
ALIGNMENTS = ("support", "distribution")


@dataclass
class RePoConfig:
    """RePo / Dreamer hyperparameters; defaults from RePo's code (Dreamer v1's sizes)."""

    algo = "repo"
    objective: str = "repo"  # "repo": reward + KL budget, no reconstruction; "dreamer": reconstruction + reward + KL
    # world model (Dreamer v1 / RePo: embedding 1024, belief 200, state 30, hidden 200)
    embedding_dim: int = 1024  # encoder output
    deter_dim: int = 200  # GRU state h
    stoch_dim: int = 30  # Gaussian state z
    hidden_dim: int = 200  # RSSM and head MLP width
    cnn_depth: int = 32  # channels of the first convolution (doubling per layer)
    min_std: float = 0.1  # floor of the latent Gaussians' std
    model_lr: float = 3e-4  # Adam, encoder + RSSM + heads
    grad_clip: float = 100.0  # global norm, every optimizer
    # RePo's information bottleneck
    target_kl: float = 3.0  # KL budget in nats per step
    init_beta: float = 1e-5  # initial Lagrange multiplier
    beta_lr: float = 1e-4  # Adam on log β
    kl_balance: float = 5 / 6  # weight on training the prior (RePo: prior_train_steps 5 → 5/6)
    # Dreamer baseline
    free_nats: float = 3.0  # KL below this is not penalised
    # behaviour learning in imagination
    horizon: int = 15  # imagined steps
    gamma: float = 0.99  # discount
    lam: float = 0.95  # λ of the λ-returns
    actor_lr: float = 8e-5  # Adam
    value_lr: float = 8e-5  # Adam
    actor_entropy: float = 3e-4  # entropy bonus of the actor
    actor_layers: int = 4  # hidden layers of the actor (RePo: 4; the value has 3)
    reward_layers: int = 3  # hidden layers of the reward head (RePo's RewardModel: 3; Dreamer v1's TF code: 2)
    actor_init_std: float = 0.0  # added to the std's pre-activation (RePo: 0, std ≈ 0.79 at first)
    actor_min_std: float = 0.1  # floor of the action std (RePo: 0.1)
    action_noise: float = 0.0  # extra Gaussian exploration noise on collected actions (RePo: 0)
    # data and schedule (env steps)
    batch_size: int = 50  # sequences per update
    seq_len: int = 50  # steps per sequence
    buffer_size: int = 500_000  # replay capacity in steps
    prefill: int = 5000  # uniform random actions before the first update
    train_every: int = 500  # env steps between rounds of updates
    train_steps: int = 100  # updates per round
    # world-model-only updates on the prefill data before the first round (not in RePo's code, which
    # starts the actor at once; Dreamer v1 runs 100 full updates first): on a small budget the actor
    # otherwise learns from a model that does not yet predict reward, and its actions saturate
    model_pretrain: int = 0
    # test-time alignment (RePo's adapt_repo.py)
    inverse_hidden: int = 512  # inverse-dynamics head width (trained with the model, on detached latents)
    alignment: str = "support"  # "support": τ-reweighted source side; "distribution": plain adversarial matching
    # (RePo's discriminator is a variational discriminator bottleneck; ours a plain MLP)
    align_lr: float = 3e-4  # Adam, the encoder during alignment
    align_coef: float = 1.0  # weight of the adversarial term
    dynamics_coef: float = 1.0  # weight of the inverse-dynamics consistency term
    disc_lr: float = 3e-4  # Adam, discriminator
    disc_hidden: int = 256  # discriminator and τ width (4 layers)
    tau_lr: float = 5e-5  # Adam, density ratio τ
    u_lr: float = 5e-3  # Adam, dual variable of E[τ] = 1
    init_u: float = 1e-4
    # calibration (RePo's released adapt_repo.py, calibration_mode simple_pair: 5,000 paired steps, calib_coef 1):
    # steps of the frozen policy in the source env while the target env, reset with the same seeds, replays its
    # actions, so each step shows one state in both domains; the target encoder's embedding of each target frame
    # is pulled onto the source encoder's embedding of its pair. Default 0 (unpaired: support matching and dynamics
    # only), as pairing needs a simulator that shows one state in both domains, which a real target domain is not
    calibration_steps: int = 0
    calibration_coef: float = 1.0  # weight of the calibration term

    def __post_init__(self):
        if self.objective not in OBJECTIVES:
            raise ValueError(f"algo.objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.alignment not in ALIGNMENTS:
            raise ValueError(f"algo.alignment must be one of {', '.join(ALIGNMENTS)}, got {self.alignment!r}")
        if self.actor_min_std <= 0:
            raise ValueError(f"algo.actor_min_std must be > 0, got {self.actor_min_std}")
        for key in ("batch_size", "seq_len", "buffer_size", "train_every", "train_steps", "horizon", "actor_layers",
                    "reward_layers"):
            if getattr(self, key) < 1:
                raise ValueError(f"algo.{key} must be >= 1, got {getattr(self, key)}")
        if self.calibration_steps < 0:
            raise ValueError(f"algo.calibration_steps must be >= 0, got {self.calibration_steps}")
        if self.model_pretrain < 0:
            raise ValueError(f"algo.model_pretrain must be >= 0, got {self.model_pretrain}")
        if self.seq_len < 2:
            raise ValueError(f"algo.seq_len must be >= 2 (the model learns from transitions), got {self.seq_len}")


class TanhGaussian:
    """The actor's action distribution: a Gaussian squashed by tanh, mean 5·tanh(μ/5) and std
    softplus(σ + init_std) + min_std. RePo's actor (zchuning/repo, models/actor_critic.py) uses
    init_std 0 and min_std 0.1, so an untrained actor's std is about 0.79; Dreamer v1's TF code
    starts at std 5 (init_std softplus⁻¹(5), min_std 1e-4), where tanh saturates and almost no
    gradient reaches the actor through its sampled actions."""

    def __init__(self, out: torch.Tensor, init_std: float = 0.0, min_std: float = 0.1):
        mean, std = out.chunk(2, -1)
        self.mean = 5 * torch.tanh(mean / 5)
        self.std = F.softplus(std + init_std) + min_std
        self.normal = torch.distributions.Normal(self.mean, self.std)

    def rsample(self) -> tuple[torch.Tensor, torch.Tensor]:
        """An action and its log-probability (summed over action dims)."""
        raw = self.normal.rsample()
        action = torch.tanh(raw)
        log_prob = self.normal.log_prob(raw) - 2 * (math.log(2) - raw - F.softplus(-2 * raw))
        return action, log_prob.sum(-1)

    def mode(self) -> torch.Tensor:
        return torch.tanh(self.mean)


def lambda_returns(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float) -> torch.Tensor:
    """λ-returns G_0..G_{H-1} for rewards r_1..r_H and values v_0..v_H (leading dim time):
    G_k = r_{k+1} + γ((1 − λ) v_{k+1} + λ G_{k+1}), G_H = v_H."""
    returns, last = [], values[-1]
    for k in reversed(range(rewards.shape[0])):
        last = rewards[k] + gamma * ((1 - lam) * values[k + 1] + lam * last)
        returns.append(last)
    return torch.stack(returns[::-1])


class frozen:  # noqa: N801 (a context manager used like a function)
    """Turn off gradients of some modules' parameters for a block (gradients still flow through them)."""

    def __init__(self, *modules: nn.Module):
        self.parameters = [p for m in modules for p in m.parameters()]

    def __enter__(self):
        self.flags = [p.requires_grad for p in self.parameters]
        for p in self.parameters:
            p.requires_grad_(False)

    def __exit__(self, *exc):
        for p, flag in zip(self.parameters, self.flags):
            p.requires_grad_(flag)


@dataclass
class DreamerConfig(RePoConfig):
    """RePo's Dreamer baseline: the same file with ``objective: dreamer``."""

    algo = "dreamer"
    objective: str = "dreamer"


class RePo(Agent):
    """RePo or Dreamer (``config.objective``), learning online (see the module docstring)."""

    Config = RePoConfig
    name = "repo"
    online: ClassVar[bool] = True
    iteration_key: ClassVar[str] = "algo.train_every"

    def __init__(self, config: RePoConfig, observation_space: gym.Space, action_space: gym.Space, device):
        super().__init__(config, observation_space, action_space, device)
        shape = observation_space.shape
        self.pixels = len(shape) == 3
        if not self.pixels and len(shape) != 1:
            raise TypeError(f"RePo reads images (H, W, C) or flat state vectors, not observations of shape {shape}")
        c = config
        if self.pixels:
            self.encoder = ConvEncoder(shape, c.embedding_dim, c.cnn_depth)
        else:
            self.encoder = MLP(self.obs_dim, (c.hidden_dim, c.hidden_dim), c.embedding_dim, "elu")
        self.rssm = RSSM(self.action_dim, c.embedding_dim, c.deter_dim, c.stoch_dim, c.hidden_dim, c.min_std)
        features = self.rssm.feature_dim
        self.decoder = ConvDecoder(features, shape, c.cnn_depth, c.embedding_dim) if self.pixels else MLP(
            features, (c.hidden_dim, c.hidden_dim), self.obs_dim, "elu")  # fmt: skip
        self.reward_head = MLP(features, (c.hidden_dim,) * c.reward_layers, 1, "elu")
        self.inverse = MLP(features + c.deter_dim, (c.inverse_hidden, c.inverse_hidden), 2 * self.action_dim, "elu")
        self.actor = MLP(features, (c.hidden_dim,) * c.actor_layers, 2 * self.action_dim, "elu")
        self.value = MLP(features, (c.hidden_dim,) * 3, 1, "elu")
        self.log_beta = nn.Parameter(torch.tensor(math.log(c.init_beta)))
        self.to(self.device)
        self.model_optimizer = torch.optim.Adam(self.world_model_parameters(), lr=c.model_lr)
        self.actor_optimizer = torch.optim.Adam(self.actor.parameters(), lr=c.actor_lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=c.value_lr)
        self.beta_optimizer = torch.optim.Adam([self.log_beta], lr=c.beta_lr)
        self.low = torch.as_tensor(action_space.low, dtype=torch.float32, device=self.device)
        self.high = torch.as_tensor(action_space.high, dtype=torch.float32, device=self.device)
        self.replay = SequenceReplay(c.buffer_size, shape, np.uint8 if self.pixels else np.float32, self.action_dim)
        self.rng = np.random.default_rng(0)
        self.env: gym.Env | None = None
        self.env_steps = 0  # env steps learned from (the loop's clock)
        self.updates = 0
        self._obs = None  # the collecting env's current observation (None: reset it first)
        self._collect_state: tuple[Latent, torch.Tensor] | None = None
        self._act_state: tuple[Latent, torch.Tensor] | None = None
        self._metric_sums: dict[str, torch.Tensor] = {}
        self._metric_count = 0

    @classmethod
    def upgrade_config(cls, algo: dict, weights: dict[str, torch.Tensor]) -> dict:
        """Checkpoints written before ``reward_layers`` existed have Dreamer v1's 2-layer reward
        head (the default is now RePo's 3): the depth is read off their weights."""
        if "reward_layers" not in algo:
            linear = [key for key in weights if key.startswith("reward_head.") and key.endswith(".weight")]
            algo["reward_layers"] = max(1, len(linear) - 1)
        return algo

    # --- the world model -----------------------------------------------------------------
    def world_model_parameters(self) -> list[nn.Parameter]:
        """Encoder, RSSM, reward head, and the decoder and inverse-dynamics probes (which read
        detached latents under ``objective: repo``, so they shape nothing upstream)."""
        modules = (self.encoder, self.rssm, self.decoder, self.reward_head, self.inverse)
        return [p for m in modules for p in m.parameters()]

    def embed(self, obs: torch.Tensor) -> torch.Tensor:
        return self.encoder(obs if self.pixels else obs.float())

    def model_loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, Latent, dict]:
        """The world model's loss (and KL_bal, for the dual step), the posteriors, metrics."""
        c = self.config
        posterior, prior = self.rssm.observe(self.embed(batch["obs"]), batch["action"], batch["is_first"])
        features = posterior.features
        mask = batch["has_reward"].float()
        reward_error = (self.reward_head(features).squeeze(-1) - batch["reward"]) ** 2
        reward_loss = 0.5 * (reward_error * mask).sum() / mask.sum().clamp(min=1)
        target = image_target(batch["obs"]) if self.pixels else batch["obs"]
        decoded = self.decoder(features if c.objective == "dreamer" else features.detach())
        obs_loss = 0.5 * ((decoded - target) ** 2).flatten(2).sum(-1).mean()  # unit-variance Gaussian NLL
        kl_steps = gaussian_kl(posterior, prior)  # (T, B)
        kl = kl_steps.mean()
        if c.objective == "repo":
            kl_balanced = (c.kl_balance * gaussian_kl(posterior.detach(), prior).mean()
                           + (1 - c.kl_balance) * gaussian_kl(posterior, prior.detach()).mean())  # fmt: skip
            loss = reward_loss + obs_loss + self.log_beta.exp().detach() * (kl_balanced - c.target_kl)
        else:
            kl_balanced = kl
            # free nats per step, then the mean (RePo's dreamer.py; Dreamer v1's TF code clamps the
            # mean): steps over the budget keep training the prior when the batch's mean KL is under it
            loss = reward_loss + obs_loss + torch.clamp(kl_steps, min=c.free_nats).mean()
        inverse_loss = self.inverse_dynamics_loss(posterior.detach(), batch)
        metrics = {"reward_loss": reward_loss, "obs_loss": obs_loss, "kl": kl, "inverse_loss": inverse_loss}
        return loss + inverse_loss, kl_balanced, posterior, metrics

    def inverse_dynamics_loss(self, posterior: Latent, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """−log p(a_t | h_t, z_t, h_{t+1}) over steps that stay in one episode (Gaussian on the
        [-1, 1] action, as RePo's inverse model)."""
        inputs = torch.cat([posterior.features[:-1], posterior.deter[1:]], -1)
        mean, std = self.inverse(inputs).chunk(2, -1)
        distribution = torch.distributions.Normal(torch.tanh(mean), F.softplus(std) + 0.01)
        log_prob = distribution.log_prob(batch["action"][1:]).sum(-1)
        same_episode = (~batch["is_first"][1:]).float()
        return -(log_prob * same_episode).sum() / same_episode.sum().clamp(min=1)

    # --- behaviour ---------------------------------------------------------------------
    def action_distribution(self, features: torch.Tensor) -> TanhGaussian:
        return TanhGaussian(self.actor(features), self.config.actor_init_std, self.config.actor_min_std)

    def behaviour_losses(self, start: Latent) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Actor and value losses from ``horizon`` imagined steps out of every start state."""
        c = self.config
        with frozen(self.rssm, self.reward_head, self.value):
            states, entropies = [start], []
            for _ in range(c.horizon):
                # the actor reads its state with gradients stopped (Dreamer v1, RePo's rssm.imagine): an action's
                # gradient reaches it only through the dynamics, reward and value it leads to
                action, log_prob = self.action_distribution(states[-1].features.detach()).rsample()
                entropies.append(-log_prob)
                states.append(self.rssm.img_step(states[-1], action))
            features = torch.stack([s.features for s in states])  # (H + 1, N, F)
            rewards = self.reward_head(features[1:]).squeeze(-1)
            values = self.value(features).squeeze(-1)
        returns = lambda_returns(rewards, values, c.gamma, c.lam)
        entropy = torch.stack(entropies).mean()
        actor_loss = -returns.mean() - c.actor_entropy * entropy
        value_loss = 0.5 * ((self.value(features[:-1].detach()).squeeze(-1) - returns.detach()) ** 2).mean()
        return actor_loss, value_loss, {"imagined_return": returns[0].mean().detach(), "entropy": entropy.detach()}

    def update(self, batch: dict[str, torch.Tensor], step: int = 0) -> dict[str, torch.Tensor]:
        """One world-model step, one dual step (RePo) and one actor and value step."""
        c = self.config
        posterior, metrics = self.update_world_model(batch)
        actor_loss, value_loss, behaviour = self.behaviour_losses(posterior.detach().flatten())
        self.actor_optimizer.zero_grad(set_to_none=True)
        actor_loss.backward()
        nn.utils.clip_grad_norm_(self.actor.parameters(), c.grad_clip)
        self.actor_optimizer.step()
        self.value_optimizer.zero_grad(set_to_none=True)
        value_loss.backward()
        nn.utils.clip_grad_norm_(self.value.parameters(), c.grad_clip)
        self.value_optimizer.step()
        self.updates += 1
        return {f"train/{k}": v.detach() for k, v in
                {**metrics, **behaviour, "actor_loss": actor_loss, "value_loss": value_loss}.items()}  # fmt: skip

    def update_world_model(self, batch: dict[str, torch.Tensor]) -> tuple[Latent, dict[str, torch.Tensor]]:
        """One step of the world model (and of β under RePo); returns the posteriors and metrics."""
        c = self.config
        loss, kl_balanced, posterior, metrics = self.model_loss(batch)
        self.model_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.world_model_parameters(), c.grad_clip)
        self.model_optimizer.step()
        if c.objective == "repo":
            beta_loss = -self.log_beta * (kl_balanced.detach() - c.target_kl)
            self.beta_optimizer.zero_grad(set_to_none=True)
            beta_loss.backward()
            self.beta_optimizer.step()
            metrics["beta"] = self.log_beta.exp().detach()
        return posterior, {**metrics, "model_loss": loss.detach()}

    def compile(self, mode: str = "default") -> None:
        """``torch.compile`` the networks the update runs many times per step (the RSSM's
        cells and heads, encoder, decoder); the Python loops over time stay eager."""
        for module in (self.encoder, self.decoder, self.reward_head, self.inverse, self.actor, self.value,
                       self.rssm.inp, self.rssm.gru, self.rssm.prior_net, self.rssm.posterior_net):  # fmt: skip
            module.compile(mode=mode)

    # --- acting --------------------------------------------------------------------------
    def _to_env(self, action: torch.Tensor) -> torch.Tensor:
        return self.low + (action + 1) * 0.5 * (self.high - self.low)

    def _step_latent(self, state: tuple[Latent, torch.Tensor] | None, obs: np.ndarray,
                     explore: bool) -> tuple[tuple[Latent, torch.Tensor], torch.Tensor]:  # fmt: skip
        """Filter one observation into the latent and choose an action in [-1, 1]."""
        obs_tensor = torch.as_tensor(np.asarray(obs), device=self.device)[None]
        first = state is None
        if first:
            state = (self.rssm.initial(1, self.device), torch.zeros(1, self.action_dim, device=self.device))
        latent, previous_action = state
        latent, _ = self.rssm.obs_step(latent, previous_action, self.embed(obs_tensor),
                                       torch.tensor([first], device=self.device))  # fmt: skip
        if not explore:  # acting for evaluation: the posterior's mean, so actions are reproducible
            latent = Latent(latent.deter, latent.mean, latent.mean, latent.std)
        distribution = self.action_distribution(latent.features)
        action = distribution.rsample()[0] if explore else distribution.mode()
        if explore and self.config.action_noise:
            action = (action + self.config.action_noise * torch.randn_like(action)).clamp(-1, 1)
        return (latent, action), action

    def begin_episode(self) -> None:
        """Forget the latent state :meth:`act` carries: the next observation starts an episode."""
        self._act_state = None

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The deterministic action for the next observation of the episode in progress
        (call :meth:`begin_episode` before each episode's first observation)."""
        was_training = self.training
        self.eval()
        self._act_state, action = self._step_latent(self._act_state, obs, explore=False)
        self.train(was_training)
        return self._to_env(action)[0].cpu().numpy().astype(np.float32)

    def policy(self, obs: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError("RePo acts from a latent state carried across steps: use act() per step")

    # --- learning online (embodied.run.online) -------------------------------------------
    @classmethod
    def iteration_steps(cls, config: RePoConfig) -> int:
        return 1  # can pause after any env step

    def seed(self, seed: int) -> None:
        """Seed warm-up actions and replay sampling (torch's global generator does the rest)."""
        self.rng = np.random.default_rng(seed)

    def attach(self, env: gym.Env) -> None:
        """Learn in ``env`` from now on; the next :meth:`learn` starts by resetting it."""
        self.env, self._obs, self._collect_state = env, None, None

    @property
    def awaiting_reset(self) -> bool:
        """Whether the last episode has ended and the next :meth:`learn` step starts a new one."""
        return self._obs is None

    def learn(self, env_steps: int, on_step: Callable[[float, bool, dict], None]) -> None:
        """Take ``env_steps`` env steps (warm-up actions first, then the actor's samples),
        and ``train_steps`` updates every ``train_every`` steps once past ``prefill``."""
        if self.env is None:
            raise RuntimeError("this agent has no env to learn in: call attach(env) first")
        c = self.config
        for _ in range(env_steps):
            if self._obs is None:
                self._obs, _ = self.env.reset()
                self._collect_state = None
                self.replay.add(self._obs, np.zeros(self.action_dim, np.float32), 0.0, True)
            if self.env_steps < c.prefill:
                action = self.rng.uniform(-1, 1, self.action_dim).astype(np.float32)
            else:
                with torch.no_grad():
                    self._collect_state, chosen = self._step_latent(self._collect_state, self._obs, explore=True)
                action = chosen[0].cpu().numpy()
            obs, reward, terminated, truncated, info = self.env.step(self._to_env(torch.as_tensor(action, device=self.device)).cpu().numpy())
            self.replay.add(obs, action, float(reward), False)
            self.env_steps += 1
            done = bool(terminated or truncated)
            on_step(float(reward), done, info)
            self._obs = None if done else obs
            if self.env_steps >= c.prefill and self.env_steps % c.train_every == 0:
                self.train_round()

    def train_round(self) -> None:
        c = self.config
        length = min(c.seq_len, len(self.replay))
        if self.updates == 0:  # the first round (also after resuming a checkpoint taken before it)
            for _ in range(c.model_pretrain):
                self.update_world_model(self.replay.sample(c.batch_size, length, self.rng, self.device))
        for _ in range(c.train_steps):
            metrics = self.update(self.replay.sample(c.batch_size, length, self.rng, self.device))
            for key, value in metrics.items():
                self._metric_sums[key] = self._metric_sums.get(key, 0.0) + value
            self._metric_count += 1

    def training_metrics(self) -> dict[str, float]:
        """Update metrics averaged since the last call, and the replay's size."""
        metrics = {key: float(total) / self._metric_count for key, total in self._metric_sums.items()}
        metrics["train/replay_steps"] = float(len(self.replay))
        self._metric_sums, self._metric_count = {}, 0
        return metrics

    # --- state -------------------------------------------------------------------------
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.model_optimizer, "actor": self.actor_optimizer,
                "value": self.value_optimizer, "beta": self.beta_optimizer}  # fmt: skip

    def loop_state(self) -> dict:
        return {"env_steps": self.env_steps, "updates": self.updates, "rng": self.rng.bit_generator.state}

    def load_loop_state(self, state: dict) -> None:
        self.env_steps, self.updates = state["env_steps"], state["updates"]
        self.rng.bit_generator.state = state["rng"]

    def replay_buffer_arrays(self) -> dict[str, np.ndarray]:
        return self.replay.arrays()

    def load_replay_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.replay.load_arrays(arrays)

    # --- test-time alignment -----------------------------------------------------------
    def align(self, env: gym.Env, steps: int, source: SequenceReplay | None = None, collect_steps: int | None = None,
              updates_per_step: float | None = None, on_log: Callable[[int, dict[str, float]], None] | None = None,
              paired_env: gym.Env | None = None) -> None:  # fmt: skip
        """Adapt the encoder to the visual domain of ``env`` with no reward (see the module
        docstring). Everything but the encoder stays as it is. ``source`` holds observations of
        the training domain (default: this agent's replay). The frozen policy collects
        ``collect_steps`` steps in ``env`` first (default: a tenth of ``steps``, at least one
        sequence), then collects and updates alternately until ``steps`` env steps were taken,
        ``updates_per_step`` encoder updates per env step (default: training's ratio,
        ``train_steps / train_every``; RePo's adaptation keeps its 100 per 500). With
        ``algo.calibration_steps`` > 0, ``paired_env`` is the source domain's env, and the
        calibration pairs are collected from it and ``env`` first (see the config)."""
        c = self.config
        updates_per_step = updates_per_step if updates_per_step is not None else c.train_steps / c.train_every
        source = source if source is not None else self.replay
        length = min(c.seq_len, len(source))
        if len(source) < 2:
            raise ValueError("alignment needs source-domain observations: this agent's replay buffer is empty "
                             "(load the checkpoint's replay, or pass source=)")  # fmt: skip
        if c.calibration_steps and paired_env is None:
            raise ValueError(f"algo.calibration_steps {c.calibration_steps}: calibration pairs each target frame with "
                             "a source frame of the same state, so alignment needs the source domain's env too "
                             "(paired_env=)")  # fmt: skip
        pairs = self.calibration_pairs(paired_env, env, c.calibration_steps) if c.calibration_steps else None
        target = SequenceReplay(steps + steps // 2 + 2, self.observation_space.shape, source.obs.dtype, self.action_dim)
        source_encoder = copy.deepcopy(self.encoder).requires_grad_(False)
        width = c.disc_hidden
        discriminator = MLP(c.embedding_dim, (width,) * 4, 1, "relu").to(self.device)
        log_tau = MLP(c.embedding_dim, (width,) * 4, 1, "relu").to(self.device)
        dual_u = torch.tensor(c.init_u, device=self.device, requires_grad=True)
        encoder_optimizer = torch.optim.Adam(self.encoder.parameters(), lr=c.align_lr)
        disc_optimizer = torch.optim.Adam(discriminator.parameters(), lr=c.disc_lr)
        tau_optimizer = torch.optim.Adam(log_tau.parameters(), lr=c.tau_lr)
        u_optimizer = torch.optim.Adam([dual_u], lr=c.u_lr)
        others = [self.rssm, self.decoder, self.reward_head, self.inverse, self.actor, self.value]

        obs, state, collected, updates = None, None, 0, 0
        warmup = collect_steps if collect_steps is not None else min(steps, max(length, steps // 10))
        while collected < steps:
            if obs is None:
                obs, _ = env.reset()
                state = None
                target.add(obs, np.zeros(self.action_dim, np.float32), 0.0, True)
            with torch.no_grad():
                state, action = self._step_latent(state, obs, explore=False)
            action = action[0].cpu().numpy()
            obs, _, terminated, truncated, _ = env.step(self._to_env(torch.as_tensor(action, device=self.device)).cpu().numpy())
            target.add(obs, action, 0.0, False)
            collected += 1
            obs = None if terminated or truncated else obs
            if collected < warmup or len(target) < length:
                continue
            while updates < (collected - warmup + 1) * updates_per_step:
                updates += 1
                source_batch = source.sample(c.batch_size, length, self.rng, self.device)
                target_batch = target.sample(c.batch_size, length, self.rng, self.device)
                with torch.no_grad():
                    source_embedding = source_encoder(source_batch["obs"]).flatten(0, 1)
                target_embedding = self.embed(target_batch["obs"])

                # the discriminator: source (τ-weighted in support mode) against target
                tau = log_tau(source_embedding).exp().squeeze(-1) if c.alignment == "support" else None
                real = discriminator(source_embedding).squeeze(-1)
                fake = discriminator(target_embedding.detach().flatten(0, 1)).squeeze(-1)
                real_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real), reduction="none")
                real_loss = (real_loss * tau.detach()).mean() if tau is not None else real_loss.mean()
                disc_loss = real_loss + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
                disc_optimizer.zero_grad(set_to_none=True)
                disc_loss.backward()
                disc_optimizer.step()

                # the encoder: fool the discriminator, keep the actions predictable
                with frozen(discriminator, *others):
                    logits = discriminator(target_embedding.flatten(0, 1)).squeeze(-1)
                    align_loss = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
                    posterior, _ = self.rssm.observe(target_embedding, target_batch["action"], target_batch["is_first"])
                    dynamics_loss = self.inverse_dynamics_loss(posterior, target_batch)
                encoder_loss = c.align_coef * align_loss + c.dynamics_coef * dynamics_loss
                metrics = {"align/disc_loss": disc_loss.item(), "align/align_loss": align_loss.item(),
                           "align/dynamics_loss": dynamics_loss.item()}  # fmt: skip
                if pairs is not None:  # each target frame's embedding onto the source encoder's of its pair
                    index = torch.as_tensor(self.rng.integers(len(pairs[0]), size=c.batch_size * length),
                                            device=self.device)  # fmt: skip
                    with torch.no_grad():
                        anchor = source_encoder(pairs[0][index])
                    calibration_loss = 0.5 * ((self.embed(pairs[1][index]) - anchor) ** 2).mean()
                    encoder_loss = encoder_loss + c.calibration_coef * calibration_loss
                    metrics["align/calibration_loss"] = calibration_loss.item()
                encoder_optimizer.zero_grad(set_to_none=True)
                encoder_loss.backward()
                nn.utils.clip_grad_norm_(self.encoder.parameters(), c.grad_clip)
                encoder_optimizer.step()

                if tau is not None:  # τ: put source mass where the target is; E[τ] = 1 by the dual u
                    with frozen(discriminator):
                        source_logits = discriminator(source_embedding).squeeze(-1)
                    tau = log_tau(source_embedding).exp().squeeze(-1)
                    tau_loss = (tau * source_logits).mean() + dual_u.detach() * (tau.mean() - 1)
                    tau_optimizer.zero_grad(set_to_none=True)
                    tau_loss.backward()
                    tau_optimizer.step()
                    u_loss = -dual_u * (tau.mean().detach() - 1)
                    u_optimizer.zero_grad(set_to_none=True)
                    u_loss.backward()
                    u_optimizer.step()
                    metrics["align/tau_mean"] = tau.mean().item()
                if on_log is not None:
                    on_log(collected, metrics)


    def calibration_pairs(self, source_env: gym.Env, target_env: gym.Env, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``steps`` frames of the same states in both domains: the frozen policy acts on
        ``source_env``'s frames while ``target_env``, reset with the same seeds, replays its
        actions (the visual domain must not change the dynamics; a reward or an episode end
        that differs between the two raises). Returns (source frames, target frames)."""
        pairs: tuple[list, list] = ([], [])
        while len(pairs[0]) < steps:
            seed = int(self.rng.integers(2**31))
            source_obs, _ = source_env.reset(seed=seed)
            target_obs, _ = target_env.reset(seed=seed)
            state, done = None, False
            while not done and len(pairs[0]) < steps:
                pairs[0].append(np.asarray(source_obs))
                pairs[1].append(np.asarray(target_obs))
                with torch.no_grad():
                    state, action = self._step_latent(state, source_obs, explore=False)
                action = self._to_env(action)[0].cpu().numpy()
                source_obs, source_reward, source_end, source_cut, _ = source_env.step(action)
                target_obs, target_reward, target_end, target_cut, _ = target_env.step(action)
                if not np.isclose(source_reward, target_reward) or (source_end, source_cut) != (target_end, target_cut):
                    raise ValueError(
                        f"calibration: after {len(pairs[0])} paired steps the target env no longer replays the source "
                        f"env's states (reward {target_reward} against {source_reward}, episode end "
                        f"{(target_end, target_cut)} against {(source_end, source_cut)}): pairing needs the same "
                        "dynamics in both domains, only the frames may differ")  # fmt: skip
                done = source_end or source_cut
        return tuple(torch.as_tensor(np.stack(frames), device=self.device) for frames in pairs)  # type: ignore[return-value]


class Dreamer(RePo):
    """Dreamer v1 (reconstruction, free-nats KL): RePo's baseline, named apart so runs do not collide."""

    Config = DreamerConfig
    name = "dreamer"
