"""Several seeds of IQL trained in one process, as one vectorised update (``torch.func``).

K agents built with different seeds keep their own parameters, optimiser moments, target
critics, normalisers and batches; their parameters are stacked along a leading seed
dimension and one ``vmap``-ed function takes the whole IQL step for all of them at once:
the expectile value step, then the critic and advantage-weighted actor steps with the new
value, each followed by Adam (the same update as ``torch.optim.Adam``), and the Polyak
average of the target critics. Per seed the arithmetic is :meth:`embodied.algos.iql.IQL.update`'s;
what changes is that K small matrix products become one batched product, which is what
makes it faster than K processes on one device when the networks are small.

    seeds = VmappedIQL([IQL(config, obs_space, act_space, "cpu") for _ in range(3)])  # after seeding each
    seeds.prepare(dataset, total_steps)
    for step in range(total_steps):
        seeds.update(seeds.sample(dataset, 256, generators))
    agents = seeds.unstack()  # K ordinary IQL agents, for checkpoints and evaluation
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn
from torch.func import functional_call, grad_and_value, vmap

from embodied.algos.iql import IQL

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, which IQL uses


class _Method(nn.Module):
    """Calls ``module.<method>`` as ``forward``, so ``functional_call`` can swap its parameters."""

    def __init__(self, module: nn.Module, method: str):
        super().__init__()
        self.module, self.method = module, method

    def forward(self, *args):
        return getattr(self.module, self.method)(*args)


def _sub(params: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {name[len(prefix):]: value for name, value in params.items() if name.startswith(prefix)}


def _adam(params, grads, first, second, step: torch.Tensor, lr) -> tuple[dict, dict, dict]:
    """One Adam step on dicts of tensors (bias-corrected; as torch.optim.Adam computes it).
    ``step`` and ``lr`` may be 0-d tensors."""
    beta1, beta2 = BETAS
    correction1, correction2 = 1 - beta1**step, 1 - beta2**step
    new_params, new_first, new_second = {}, {}, {}
    for name, g in grads.items():
        m = beta1 * first[name] + (1 - beta1) * g
        v = beta2 * second[name] + (1 - beta2) * g * g
        denominator = v.sqrt() / correction2**0.5 + EPS
        new_params[name] = params[name] - (lr / correction1) * m / denominator
        new_first[name], new_second[name] = m, v
    return new_params, new_first, new_second


class VmappedIQL:
    """K IQL agents (same config, different seeds) updated together; see the module docstring."""

    def __init__(self, agents: Sequence[IQL]):
        if len(agents) < 1 or len({type(a) for a in agents}) != 1 or type(agents[0]) is not IQL:
            raise TypeError("VmappedIQL takes one or more IQL agents (subclasses change the update)")
        config = agents[0].config
        if any(a.config != config for a in agents):
            raise ValueError("every agent must share one config (only their seeds differ)")
        if config.dropout:
            raise ValueError("VmappedIQL does not vectorise dropout; use IQL agents one by one")
        self.template = agents[0]
        self.config = config
        self.device = agents[0].device
        trained = ("value.", "critic.", "actor.")
        stack = lambda name, source: torch.stack([dict(source(a))[name].detach().clone() for a in agents])  # noqa: E731
        self.params = {n: stack(n, lambda a: a.named_parameters()) for n, _ in agents[0].named_parameters()
                       if n.startswith(trained)}  # fmt: skip
        self.targets = {n: stack(n, lambda a: a.target_critic.named_parameters())
                        for n, _ in agents[0].target_critic.named_parameters()}  # fmt: skip
        self.buffers = {n: stack(n, lambda a: a.named_buffers()) for n, _ in agents[0].named_buffers()}
        self.first = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.second = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.steps = 0
        self.total_steps = 1
        self._log_prob = _Method(self.template.actor, "log_prob")
        self._step = vmap(self._one_seed, in_dims=(0, 0, 0, 0, 0, 0, None, None))

    @property
    def seeds(self) -> int:
        return next(iter(self.params.values())).shape[0]

    def prepare(self, datasets, total_steps: int) -> None:
        """Each agent's normaliser and reward scale (one dataset for all, or one each)."""
        datasets = datasets if isinstance(datasets, (list, tuple)) else [datasets] * self.seeds
        for k, dataset in enumerate(datasets):
            agent = copy.deepcopy(self.template)
            agent.prepare(dataset, total_steps)
            for name, buffer in agent.named_buffers():
                self.buffers[name][k] = buffer
        self.total_steps = total_steps

    def sample(self, dataset, batch_size: int, generators: Sequence[torch.Generator]):
        """One batch per seed, each from its own generator, stacked along a leading seed dim."""
        batches = [dataset.sample(batch_size, generator=g) for g in generators]
        return {field: torch.stack([getattr(b, field) for b in batches])
                for field in ("observations", "actions", "rewards", "next_observations", "terminals")}  # fmt: skip

    # --- the step of one seed (vmapped) -------------------------------------------------
    def _one_seed(self, params, first, second, targets, buffers, batch, step, actor_lr):
        c = self.config
        template = self.template
        normalize = lambda x: functional_call(template.normalizer, _sub(buffers, "normalizer."), (x,))  # noqa: E731
        obs, next_obs = normalize(batch["observations"]), normalize(batch["next_observations"])
        obs_actions = torch.cat([obs, batch["actions"]], -1)
        target_q = functional_call(template.critic, targets, (obs_actions,)).min(0).values.squeeze(-1)

        def value_loss(value_params):
            difference = target_q - functional_call(template.value, value_params, (obs,)).squeeze(-1)
            return (torch.abs(c.expectile - (difference < 0).float()) * difference.square()).mean()

        value_params = _sub(params, "value.")
        value_grads, value_loss_value = grad_and_value(value_loss)(value_params)
        new_value, value_first, value_second = _adam(
            value_params, value_grads, _sub(first, "value."), _sub(second, "value."), step, c.value_lr)

        new_v, next_v = functional_call(template.value, new_value, (torch.cat([obs, next_obs]),)).squeeze(-1).chunk(2)
        advantage = target_q - new_v
        weights = torch.exp(c.temperature * advantage).clamp(max=c.max_weight)
        target = batch["rewards"] * buffers["reward_multiplier"] + c.discount * (1 - batch["terminals"]) * next_v

        def critic_actor_loss(trained):
            q = functional_call(template.critic, _sub(trained, "critic."), (obs_actions,)).squeeze(-1)
            critic_loss = (q - target).square().mean(1).sum()
            log_prob = functional_call(self._log_prob, {f"module.{k}": v for k, v in _sub(trained, "actor.").items()},
                                       (obs, batch["actions"]))  # fmt: skip
            actor_loss = -(weights * log_prob).mean()
            return critic_loss + actor_loss, (critic_loss, actor_loss)

        trained = {k: v for k, v in params.items() if not k.startswith("value.")}
        grads, (_, (critic_loss, actor_loss)) = grad_and_value(critic_actor_loss, has_aux=True)(trained)
        new_params = {f"value.{k}": v for k, v in new_value.items()}
        new_first = {f"value.{k}": v for k, v in value_first.items()}
        new_second = {f"value.{k}": v for k, v in value_second.items()}
        for prefix, lr in (("critic.", c.critic_lr), ("actor.", actor_lr)):
            p, m, v = _adam(_sub(trained, prefix), _sub(grads, prefix), _sub(first, prefix), _sub(second, prefix), step, lr)
            new_params.update({prefix + k: t for k, t in p.items()})
            new_first.update({prefix + k: t for k, t in m.items()})
            new_second.update({prefix + k: t for k, t in v.items()})
        new_targets = {k: torch.lerp(targets[k], new_params[f"critic.{k}"], c.tau) for k in targets}
        metrics = torch.stack([value_loss_value, critic_loss, actor_loss, advantage.mean()])
        return new_params, new_first, new_second, new_targets, metrics

    @torch.no_grad()
    def update(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One IQL step for every seed; returns per-seed metrics (tensors of shape (K,))."""
        self.steps += 1
        c = self.config
        # the actor's cosine schedule as IQL steps it (after each update), as a plain number
        actor_lr = c.actor_lr * (0.5 * (1 + math.cos(math.pi * (self.steps - 1) / self.total_steps))
                                 if c.actor_cosine_decay else 1.0)  # fmt: skip
        step = torch.tensor(float(self.steps), dtype=torch.float64, device=self.device)
        lr = torch.tensor(actor_lr, dtype=torch.float64, device=self.device)
        with torch.enable_grad():
            self.params, self.first, self.second, self.targets, metrics = self._step(
                self.params, self.first, self.second, self.targets, self.buffers, batch, step, lr)
        return dict(zip(("value_loss", "critic_loss", "actor_loss", "advantage"), metrics.unbind(1)))

    def unstack(self) -> list[IQL]:
        """K ordinary IQL agents holding the current weights (optimiser moments not included)."""
        agents = []
        for k in range(self.seeds):
            agent = copy.deepcopy(self.template)
            state = dict(agent.named_parameters())
            with torch.no_grad():
                for name, value in self.params.items():
                    state[name].copy_(value[k])
                for name, value in self.targets.items():
                    dict(agent.target_critic.named_parameters())[name].copy_(value[k])
                for name, value in self.buffers.items():
                    dict(agent.named_buffers())[name].copy_(value[k])
            agents.append(agent)
        return agents
