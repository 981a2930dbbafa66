"""PARL (Chakraborty, Bedi, Koppel, Wang, Huang & Manocha 2023, "PARL: A Unified Framework
for Policy Alignment in Reinforcement Learning"): policy alignment as a bilevel problem.

    upper:  min_ν  L(ν) = E_{(τ⁰, τ¹) ~ π*(ν)} [ −log P_ν(teacher's answer on τ⁰ vs τ¹) ]
    lower:  π*(ν) = argmax_π  E_π[Σ_t γ^t r_ν(s_t, a_t)] + α H(π)

The preferences are asked about trajectories of the *current* policy, so the upper
objective depends on ν twice: through the reward model in the Bradley-Terry likelihood
(the direct term) and through the policy that generates the compared trajectories. A-PARL
estimates the full gradient after K inner policy steps:

    dL/dν ≈ ∇_ν L  −  ∇²_νθ J · [∇²_θθ J]⁻¹ · ∇_θ L,

with ∇_θ L the score-function gradient of the upper loss under the policy's trajectory
distribution, E[(ℓ(τ⁰, τ¹) − b) ∇_θ (log π(τ⁰) + log π(τ¹))], the inverse-Hessian-vector
product by a few damped conjugate-gradient steps on Hessian-vector products of the inner
objective, and the mixed term by differentiating ∇_θ J · q with respect to ν.

The lower level here is an on-policy, entropy-regularised policy gradient (REINFORCE with
a per-step batch baseline) on r_ν, whose surrogate is differentiable in both θ and ν, so
every term above is an autograd product; the paper's experiments use SAC-style learners.
The two episodes of a query start from the same reset (start and goal), as two answers
to one prompt are compared in language-model alignment: with random pairs, most of a
return's spread on our navigation task is how far the goal happened to be, and a reward
that ranks episodes by that alone fits the labels and teaches the policy nothing
(``paired_starts: false`` restores random pairs). The implicit term, estimated from a
handful of pairs and a sampled Hessian, is clipped to the direct term's norm
(``max_implicit_ratio``) so that it corrects the direct step rather than replacing it.
``hypergradient: direct`` drops the implicit term (online preference learning that
ignores how the reward moves the policy); the two-stage baseline (:func:`two_stage`)
asks every query on the initial policy's trajectories, fits r_ν, then runs the same learner.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np
import torch
from torch import nn

from embodied.nets.mlp import MLP
from embodied.rewards.models import bradley_terry_loss
from embodied.rewards.teachers import ScriptedTeacher

HYPERGRADIENTS = ("a-parl", "direct")


@dataclass
class PARLConfig:
    """A-PARL's loop (K inner steps, then one reward step with the hypergradient)."""

    hidden_dims: tuple = (64, 64)  # policy and reward MLPs
    envs: int = 32  # episodes per rollout (rolled out together)
    horizon: int = 60  # steps per episode
    gamma: float = 0.99
    entropy: float = 0.01  # α of the lower level
    policy_lr: float = 1e-3  # Adam
    value_lr: float = 1e-3  # Adam, the baseline V(s) of the policy gradient
    value_steps: int = 20  # baseline regression steps per rollout
    reward_lr: float = 1e-3  # Adam
    reward_steps: int = 10  # upper-level steps per iteration, each on a fresh hypergradient
    inner_steps: int = 1  # K policy steps per reward step, each on a fresh rollout (on-policy)
    queries: int = 8  # pairs asked per iteration, of this iteration's trajectories
    label_window: int = 400  # the latest pairs the direct term averages over
    segment_len: int = 0  # compare whole episodes (0) or random segments of this length
    paired_starts: bool = True  # episodes come in pairs from the same reset (start and goal); queries compare a pair
    hypergradient: str = "a-parl"  # "a-parl" or "direct"
    cg_iterations: int = 5
    damping: float = 1.0  # λ in (−∇²_θθ J + λ I) q = ∇_θ L
    max_implicit_ratio: float = 1.0  # the implicit term's norm is clipped to this multiple of the direct term's
    init_log_std: float = -0.5
    seed: int = 0

    def __post_init__(self):
        if self.hypergradient not in HYPERGRADIENTS:
            raise ValueError(f"hypergradient must be one of {', '.join(HYPERGRADIENTS)}, got {self.hypergradient!r}")
        if self.paired_starts and (self.envs % 2 or self.queries > self.envs // 2):
            raise ValueError(f"paired_starts needs an even number of envs and queries <= envs / 2, got envs "
                             f"{self.envs} and queries {self.queries}")  # fmt: skip
        if self.segment_len > self.horizon:
            raise ValueError(f"segment_len {self.segment_len} is longer than an episode ({self.horizon} steps)")


class GaussianPolicy(nn.Module):
    def __init__(self, obs_dim: int, action_dim: int, hidden_dims, init_log_std: float):
        super().__init__()
        self.mean = MLP(obs_dim, hidden_dims, action_dim, "tanh")
        self.log_std = nn.Parameter(torch.full((action_dim,), init_log_std))

    def distribution(self, obs: torch.Tensor) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mean(obs), self.log_std.exp().expand(obs.shape[:-1] + self.log_std.shape))


class RewardNet(nn.Module):
    """r_ν(s, a)."""

    def __init__(self, obs_dim: int, action_dim: int, hidden_dims):
        super().__init__()
        self.net = MLP(obs_dim + action_dim, hidden_dims, 1, "tanh")

    def forward(self, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([obs, actions], -1)).squeeze(-1)


@dataclass
class Batch:
    obs: torch.Tensor  # (N, T, obs)
    actions: torch.Tensor  # (N, T, act)
    true_reward: np.ndarray  # (N, T)
    success: np.ndarray  # (N,) ever succeeded


def rollout(envs: list[gym.Env], policy: GaussianPolicy, horizon: int, seeds: list[int] | None,
            deterministic: bool = False) -> Batch:  # fmt: skip
    """One episode per env, ``horizon`` steps each (envs must not end earlier)."""
    obs = np.stack([env.reset(seed=None if seeds is None else seeds[i])[0] for i, env in enumerate(envs)])
    all_obs, all_actions, rewards = [], [], []
    success = np.zeros(len(envs), bool)
    low, high = envs[0].action_space.low, envs[0].action_space.high
    for t in range(horizon):
        obs_tensor = torch.as_tensor(obs, dtype=torch.float32)
        with torch.no_grad():
            distribution = policy.distribution(obs_tensor)
            action = distribution.mean if deterministic else distribution.sample()
        all_obs.append(obs_tensor)
        all_actions.append(action)
        steps = [env.step(np.clip(a, low, high)) for env, a in zip(envs, action.numpy())]
        for i, (_, _, terminated, truncated, info) in enumerate(steps):
            if (terminated or truncated) and t < horizon - 1:
                raise ValueError(f"PARL rolls out fixed-length episodes: an episode ended before its {horizon} steps "
                                 "(set the env's max_episode_steps >= horizon and no termination on success)")  # fmt: skip
            success[i] |= bool(info.get("success", False))
        obs = np.stack([s[0] for s in steps])
        rewards.append([s[1] for s in steps])
    return Batch(torch.stack(all_obs, 1), torch.stack(all_actions, 1), np.array(rewards, np.float64).T, success)


def rewards_to_go(rewards: torch.Tensor, gamma: float) -> torch.Tensor:
    """G_t = Σ_{k≥t} γ^{k−t} r_k along dim 1, by a reversed cumulative sum."""
    discounts = gamma ** torch.arange(rewards.shape[1], dtype=rewards.dtype)
    return torch.flip(torch.cumsum(torch.flip(rewards * discounts, [1]), 1), [1]) / discounts


def inner_objective(policy: GaussianPolicy, reward: RewardNet, batch: Batch, config: PARLConfig,
                    baseline: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
    """J(θ, ν): the policy-gradient surrogate of E[Σ γ^t r_ν] plus α times the entropy,
    differentiable in θ (through log π) and in ν (through the rewards-to-go). ``baseline``
    (N, T), a learned V(s) held constant, cuts the variance without biasing either gradient;
    the advantages are scaled by their (constant) standard deviation."""
    to_go = rewards_to_go(reward(batch.obs, batch.actions), config.gamma)  # (N, T)
    advantage = to_go - (baseline if baseline is not None else to_go.mean(0, keepdim=True))
    advantage = advantage / (advantage.detach().std() + 1e-6)
    distribution = policy.distribution(batch.obs)
    log_prob = distribution.log_prob(batch.actions).sum(-1)  # (N, T)
    return (log_prob * advantage).mean() + config.entropy * distribution.entropy().sum(-1).mean()


def conjugate_gradient(matrix_vector: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, iterations: int,
                       fallback_scale: float = 1.0) -> torch.Tensor:  # fmt: skip
    """Solve A x = b for a symmetric A given as ``matrix_vector``. A sampled Hessian need not be
    positive definite: CG stops at the first direction of non-positive curvature (then
    ``b * fallback_scale`` if it had not moved yet)."""
    x = torch.zeros_like(b)
    residual = b.clone()
    direction = residual.clone()
    norm = residual @ residual
    for _ in range(iterations):
        product = matrix_vector(direction)
        curvature = direction @ product
        if curvature <= 0:
            return x if x.abs().sum() > 0 else b * fallback_scale
        alpha = norm / curvature
        x = x + alpha * direction
        residual = residual - alpha * product
        new_norm = residual @ residual
        if new_norm < 1e-12:
            break
        direction = residual + (new_norm / norm) * direction
        norm = new_norm
    return x


class PARL:
    """The bilevel learner: :meth:`iteration` rolls out, asks, takes K policy steps and one reward step."""

    def __init__(self, config: PARLConfig, observation_space: gym.Space, action_space: gym.Space,
                 teacher: ScriptedTeacher | None = None):  # fmt: skip
        torch.manual_seed(config.seed)
        self.config = config
        obs_dim, action_dim = int(np.prod(observation_space.shape)), int(np.prod(action_space.shape))
        self.policy = GaussianPolicy(obs_dim, action_dim, config.hidden_dims, config.init_log_std)
        self.reward = RewardNet(obs_dim, action_dim, config.hidden_dims)
        self.value = MLP(obs_dim, config.hidden_dims, 1, "tanh")
        self.policy_optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.policy_lr)
        self.value_optimizer = torch.optim.Adam(self.value.parameters(), lr=config.value_lr)
        self.reward_optimizer = torch.optim.Adam(self.reward.parameters(), lr=config.reward_lr)
        self.teacher = teacher or ScriptedTeacher()
        self.rng = np.random.default_rng(config.seed)
        self.labels: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (obs, actions, P(first)) per pair
        self.env_steps = 0
        self.queries = 0

    # --- preferences -------------------------------------------------------------------
    def ask(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
        """Label ``queries`` pairs of this batch's episodes (or segments); returns their
        (obs (Q, 2, L, ·), actions, P(first)) and the episode indices (Q, 2)."""
        c = self.config
        n, horizon = batch.true_reward.shape
        if c.paired_starts:  # episodes 2k and 2k+1 share their reset: the comparison is about the behaviour
            pairs = 2 * self.rng.choice(n // 2, c.queries, replace=False)[:, None] + np.array([0, 1])
        else:
            pairs = np.stack([self.rng.choice(n, 2, replace=False) for _ in range(c.queries)])
        length = c.segment_len or horizon
        starts = self.rng.integers(0, horizon - length + 1, (c.queries, 2))
        window = starts[..., None] + np.arange(length)  # (Q, 2, L)
        scores = self.teacher.segment_scores(batch.true_reward[pairs[..., None], window])
        scale = float(np.abs(batch.true_reward).sum(1).mean() * length / horizon) or 1.0
        answer, kept = self.teacher.label(scores, scale, self.rng)
        pairs, window = pairs[kept], window[kept]
        obs = batch.obs[torch.as_tensor(pairs)[..., None], torch.as_tensor(window)]
        actions = batch.actions[torch.as_tensor(pairs)[..., None], torch.as_tensor(window)]
        preference = torch.as_tensor(answer, dtype=torch.float32)
        self.labels.extend(zip(obs, actions, preference))
        self.labels = self.labels[-c.label_window:]
        self.queries += len(pairs)
        return obs, actions, preference, pairs

    def preference_loss(self, obs: torch.Tensor, actions: torch.Tensor, preference: torch.Tensor) -> torch.Tensor:
        """Per-pair Bradley-Terry loss (Q,) of r_ν."""
        returns = self.reward(obs, actions).sum(-1)  # (Q, 2)
        logits = returns[:, 0] - returns[:, 1]
        return nn.functional.binary_cross_entropy_with_logits(logits, preference, reduction="none")

    def direct_loss(self) -> torch.Tensor:
        obs, actions, preference = (torch.stack(x) for x in zip(*self.labels))
        return bradley_terry_loss(self.reward(obs, actions).sum(-1), preference)

    # --- the two levels --------------------------------------------------------------------
    def baseline(self, batch: Batch) -> torch.Tensor:
        """Fit V(s) to this batch's rewards-to-go under r_ν; its values on the batch, held constant."""
        with torch.no_grad():
            targets = rewards_to_go(self.reward(batch.obs, batch.actions), self.config.gamma)
        for _ in range(self.config.value_steps):
            loss = ((self.value(batch.obs).squeeze(-1) - targets) ** 2).mean()
            self.value_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.value_optimizer.step()
        with torch.no_grad():
            return self.value(batch.obs).squeeze(-1)

    def policy_step(self, batch: Batch) -> tuple[float, torch.Tensor]:
        """One policy-gradient step on r_ν; returns J and the baseline used."""
        baseline = self.baseline(batch)
        objective = inner_objective(self.policy, self.reward, batch, self.config, baseline)
        self.policy_optimizer.zero_grad(set_to_none=True)
        (-objective).backward()
        nn.utils.clip_grad_norm_(self.policy.parameters(), 10.0)
        self.policy_optimizer.step()
        return float(objective.detach()), baseline

    def collect(self, envs: list[gym.Env]) -> Batch:
        seeds = [int(s) for s in self.rng.integers(2**31, size=len(envs))]
        if self.config.paired_starts:
            seeds = [seeds[i // 2 * 2] for i in range(len(envs))]
        batch = rollout(envs, self.policy, self.config.horizon, seeds)
        self.env_steps += len(envs) * self.config.horizon
        return batch

    def hypergradient(self, batch: Batch, asked, baseline: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, float]]:
        """dL/dν: the direct term, plus (A-PARL) the implicit term through the policy."""
        c = self.config
        nu = list(self.reward.parameters())
        theta = list(self.policy.parameters())
        direct = torch.autograd.grad(self.direct_loss(), nu)
        if c.hypergradient == "direct" or not len(asked[2]):
            return list(direct), {}
        obs, actions, preference, pairs = asked
        # ∇_θ L: score function of the asked pairs' losses under the policy's trajectory distribution
        with torch.no_grad():
            losses = self.preference_loss(obs, actions, preference)
        log_prob = self.policy.distribution(batch.obs).log_prob(batch.actions).sum(-1)  # (N, T)
        pair_log_prob = log_prob[torch.as_tensor(pairs)].sum((-1, -2))  # log π(τ⁰) + log π(τ¹), whole episodes
        surrogate = ((losses - losses.mean()) * pair_log_prob).mean()
        upper_theta = torch.autograd.grad(surrogate, theta)
        flat_upper = torch.cat([g.reshape(-1) for g in upper_theta])
        # q = (−∇²_θθ J + λI)⁻¹ ∇_θ L by conjugate gradient on Hessian-vector products
        inner = inner_objective(self.policy, self.reward, batch, c, baseline)
        inner_grad = torch.autograd.grad(inner, theta, create_graph=True)
        flat_inner = torch.cat([g.reshape(-1) for g in inner_grad])

        def matrix_vector(vector: torch.Tensor) -> torch.Tensor:
            hvp = torch.autograd.grad(flat_inner @ vector, theta, retain_graph=True)
            return -torch.cat([h.reshape(-1) for h in hvp]) + c.damping * vector

        q = conjugate_gradient(matrix_vector, flat_upper, c.cg_iterations, fallback_scale=1 / c.damping)
        implicit = torch.autograd.grad(flat_inner @ q.detach(), nu, allow_unused=True)
        implicit = [torch.zeros_like(p) if g is None else g for p, g in zip(nu, implicit)]
        norm = lambda gs: float(torch.sqrt(sum((g**2).sum() for g in gs)))  # noqa: E731
        implicit_norm, limit = norm(implicit), c.max_implicit_ratio * norm(direct)
        if implicit_norm > limit:  # a few sampled pairs and a sampled Hessian: the estimate is noisy, keep it a correction
            implicit = [g * (limit / implicit_norm) for g in implicit]
        total = [d + i for d, i in zip(direct, implicit)]
        return total, {"direct_norm": norm(direct), "implicit_norm": implicit_norm}

    def iteration(self, envs: list[gym.Env]) -> dict[str, float]:
        """K policy steps on r_ν (each on a fresh rollout), queries on the last rollout's
        episodes, one reward step on the hypergradient at the new policy."""
        for _ in range(self.config.inner_steps):
            batch = self.collect(envs)
            objective, _ = self.policy_step(batch)
        asked = self.ask(batch)
        with torch.no_grad():  # how often r_ν already ranked the new pairs as the teacher does
            logits = self.reward(asked[0], asked[1]).sum(-1)
            agree = ((logits[:, 0] > logits[:, 1]) == (asked[2] > 0.5)).float()[asked[2] != 0.5]
        baseline = self.baseline(batch)
        for _ in range(self.config.reward_steps):
            gradient, metrics = self.hypergradient(batch, asked, baseline)
            self.reward_optimizer.zero_grad(set_to_none=True)
            for parameter, g in zip(self.reward.parameters(), gradient):
                parameter.grad = g
            self.reward_optimizer.step()
        return {"inner_objective": objective, "train_success": float(batch.success.mean()),
                "true_return": float(batch.true_reward.sum(1).mean()),
                "reward_agreement": float(agree.mean()) if len(agree) else math.nan, **metrics}  # fmt: skip


def evaluate(policy: GaussianPolicy, envs: list[gym.Env], horizon: int, seed: int) -> tuple[float, float]:
    """Success rate and true return of the mean action over one episode per env."""
    batch = rollout(envs, policy, horizon, [seed + i for i in range(len(envs))], deterministic=True)
    return float(batch.success.mean()), float(batch.true_reward.sum(1).mean())


def make_envs(env_id: str, count: int, horizon: int, **options) -> list[gym.Env]:
    """``count`` copies of the env with fixed-length episodes of ``horizon`` steps."""
    import embodied

    if env_id.startswith("nav/") and env_id.split("/")[1] in ("rooms-v0", "open-v0", "corridor-v0"):
        options.setdefault("terminate_on_success", False)
    return [embodied.make(env_id, max_episode_steps=horizon, **options) for _ in range(count)]


class _Run:
    """Envs, a learner and the evaluation rows of one run (closes the envs on exit)."""

    def __init__(self, env_id: str, config: PARLConfig, eval_every: int, eval_episodes: int,
                 teacher: ScriptedTeacher | None, on_log: Callable[[dict], None] | None):  # fmt: skip
        self.config, self.eval_every, self.on_log = config, eval_every, on_log
        self.envs = make_envs(env_id, config.envs, config.horizon)
        self.eval_envs = make_envs(env_id, eval_episodes, config.horizon)
        self.learner = PARL(config, self.envs[0].observation_space, self.envs[0].action_space, teacher)
        self.rows: list[dict] = []

    def log(self, i: int, last: int, metrics: dict) -> None:
        if i % self.eval_every == 0 or i == last:
            success, ret = evaluate(self.learner.policy, self.eval_envs, self.config.horizon, seed=10_000 + i)
            self.rows.append({"iteration": i, "env_steps": self.learner.env_steps, "queries": self.learner.queries,
                              "success_rate": success, "return": ret, **metrics})  # fmt: skip
            if self.on_log:
                self.on_log(self.rows[-1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for env in self.envs + self.eval_envs:
            env.close()


def train(env_id: str, config: PARLConfig, iterations: int, eval_every: int = 5, eval_episodes: int = 16,
          teacher: ScriptedTeacher | None = None, on_log: Callable[[dict], None] | None = None) -> list[dict]:  # fmt: skip
    """A-PARL (or its direct-only ablation) for ``iterations``; evaluation rows with env steps and queries."""
    with _Run(env_id, config, eval_every, eval_episodes, teacher, on_log) as run:
        for i in range(1, iterations + 1):
            run.log(i, iterations, run.learner.iteration(run.envs))
    return run.rows


def two_stage(env_id: str, config: PARLConfig, iterations: int, reward_steps: int = 0, eval_every: int = 5,
              eval_episodes: int = 16, teacher: ScriptedTeacher | None = None,
              on_log: Callable[[dict], None] | None = None) -> list[dict]:  # fmt: skip
    """The standard pipeline with the same query budget: every query on rollouts of the
    initial policy, a Bradley-Terry reward fitted to them (``reward_steps``, default as many
    as PARL takes), then the same policy learner on that fixed reward. Env steps of both
    stages count."""
    with _Run(env_id, config, eval_every, eval_episodes, teacher, on_log) as run:
        learner = run.learner
        # the reward is fitted once, on every label
        learner.config = dataclasses.replace(config, label_window=max(config.label_window, iterations * config.queries))
        for _ in range(iterations):  # stage 1: the same number of queries, from the initial policy
            learner.ask(learner.collect(run.envs))
        for _ in range(reward_steps or iterations * config.reward_steps):
            loss = learner.direct_loss()
            learner.reward_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            learner.reward_optimizer.step()
        steps = iterations * config.inner_steps
        for i in range(1, steps + 1):  # stage 2: RL on the fixed reward
            batch = learner.collect(run.envs)
            objective, _ = learner.policy_step(batch)
            run.log(i, steps, {"inner_objective": objective, "train_success": float(batch.success.mean())})
    return run.rows


def true_reward(env_id: str, config: PARLConfig, iterations: int, eval_every: int = 5, eval_episodes: int = 16,
                on_log: Callable[[dict], None] | None = None) -> list[dict]:  # fmt: skip
    """A reference, not a preference method: the same policy learner on the env's own reward
    (no reward model, no queries) for as many policy steps as PARL takes. What the lower
    level reaches at this budget when the reward is right."""
    with _Run(env_id, config, eval_every, eval_episodes, None, on_log) as run:
        learner = run.learner
        steps = iterations * config.inner_steps
        for i in range(1, steps + 1):
            batch = learner.collect(run.envs)
            rewards = torch.as_tensor(batch.true_reward, dtype=torch.float32)
            learner.reward = lambda obs, actions, rewards=rewards: rewards  # this rollout's own rewards
            objective, _ = learner.policy_step(batch)
            run.log(i, steps, {"inner_objective": objective, "train_success": float(batch.success.mean())})
    return run.rows


def samples_to_success(rows: list[dict], threshold: float) -> float:
    """Env steps at the first evaluation with success rate ≥ threshold (inf if never)."""
    return next((row["env_steps"] for row in rows if row["success_rate"] >= threshold), math.inf)
