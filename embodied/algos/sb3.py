"""SAC and PPO from stable-baselines3, wrapped (not rewritten) as embodied agents.

- SAC (Haarnoja et al., 2018, "Soft Actor-Critic: Off-Policy Maximum Entropy Deep RL
  with a Stochastic Actor"; learned temperature from Haarnoja et al., 2018b, "Soft
  Actor-Critic Algorithms and Applications"): twin soft Q-functions regress on
  r + γ (min Q̄(s′, a′) − α log π(a′|s′)), a′ ~ π; the tanh-Gaussian actor minimises
  E[α log π(a|s) − min Q(s, a)]; α is tuned so the policy's entropy stays near −dim(A).
- PPO (Schulman et al., 2017, "Proximal Policy Optimization Algorithms"): several epochs
  of minibatch ascent on the clipped surrogate E[min(ρ Â, clip(ρ, 1 ± ε) Â)] over each
  rollout, ρ = π(a|s) / π_old(a|s), Â from GAE(λ), plus a value loss.

SB3 does the learning; this file maps our config dataclasses onto SB3's arguments and
gives the model our agent interface: ``act(obs)`` (deterministic, for evaluation,
``embodied eval`` and ``embodied collect --policy``), ``state_dict()`` (the bytes of
``model.save``, so checkpoints carry everything SB3 saves: weights, optimizers, the
entropy temperature, step counters) and, for the online loop
(:mod:`embodied.run.online`), ``attach(env)`` and ``learn(env_steps, on_step)``.
SB3's own logger is silenced: the online loop logs through :class:`embodied.run.logger.Logger`.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import gymnasium as gym
import numpy as np
import torch

from embodied.algos.base import Agent

try:
    import stable_baselines3
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import Logger as SB3Logger
    from stable_baselines3.common.vec_env import DummyVecEnv
except ImportError as error:  # a dependency of embodied, but an env may have lost it
    raise ImportError(
        "SAC and PPO wrap stable-baselines3, which is not importable here "
        f"({error}); install it with: pip install 'stable-baselines3>=2.9,<3'"
    ) from error


@dataclass
class SACConfig:
    """SAC hyperparameters. Defaults are SB3's, which are Haarnoja et al. 2018's (Table 1:
    Adam 3e-4, two hidden layers of 256, batch 256, buffer 1e6, γ 0.99, τ 0.005, one
    update per env step) with the learned temperature of Haarnoja et al. 2018b. The
    Meta-World configs (configs/sac/metaworld-*.yaml) use Text2Reward's settings instead
    (xlang-ai/text2reward run_metaworld/sac.py)."""

    algo = "sac"
    hidden_dims: tuple = (256, 256)  # actor and critic MLPs (Text2Reward: 256, 256, 256)
    learning_rate: float = 3e-4  # Adam, actor, critics and temperature
    buffer_size: int = 1_000_000  # replay buffer, transitions
    learning_starts: int = 100  # uniform random actions for the first steps, no updates (Text2Reward: 4000)
    batch_size: int = 256  # transitions per update (Text2Reward: 512)
    tau: float = 0.005  # Polyak rate of the target critics
    gamma: float = 0.99  # discount
    train_freq: int = 1  # env steps between rounds of updates (Text2Reward: 8 envs per round, i.e. 8)
    gradient_steps: int = 1  # updates per round
    ent_coef: str | float = "auto"  # α: "auto" learns it from 1.0, "auto_0.1" from 0.1 (Text2Reward), a number fixes it
    target_entropy: str | float = "auto"  # entropy α aims for; "auto" is −dim(A)
    # SB3 counts this within one round of updates, so with gradient_steps=1 the target is
    # updated every round whatever it says (Text2Reward's 2 acted as 1).
    target_update_interval: int = 1


@dataclass
class PPOConfig:
    """PPO hyperparameters. Defaults are SB3's, which are Schulman et al. 2017's MuJoCo
    settings (Table 3: horizon 2048, Adam 3e-4, 10 epochs, minibatch 64, γ 0.99, GAE
    λ 0.95, clip 0.2; two tanh layers of 64)."""

    algo = "ppo"
    hidden_dims: tuple = (64, 64)  # policy and value MLPs (separate networks)
    learning_rate: float = 3e-4  # Adam
    n_steps: int = 2048  # env steps per rollout; the policy is updated after each
    batch_size: int = 64  # minibatch
    n_epochs: int = 10  # passes over each rollout
    gamma: float = 0.99  # discount
    gae_lambda: float = 0.95  # GAE λ
    clip_range: float = 0.2  # ε of the clipped surrogate
    normalize_advantage: bool = True  # standardise Â per minibatch
    ent_coef: float = 0.0  # entropy bonus
    vf_coef: float = 0.5  # value-loss weight
    max_grad_norm: float = 0.5  # gradient clipping
    target_kl: float | None = None  # stop a rollout's epochs early past this KL (None: never)


#: SB3 metrics that are counters or schedules, not per-update values to average.
_LATEST_VALUE = {"train/n_updates", "train/learning_rate", "train/clip_range"}


class _SpacesOnly(gym.Env):
    """Stands in for the env while a model is built from spaces alone (to load a
    checkpoint, or before :meth:`SB3Agent.attach`); it is never stepped."""

    metadata: dict = {"render_modes": []}

    def __init__(self, observation_space: gym.Space, action_space: gym.Space):
        self.observation_space = observation_space
        self.action_space = action_space

    def reset(self, *, seed=None, options=None):
        raise RuntimeError("this agent has no env to learn in: call attach(env) first")

    def step(self, action):
        raise RuntimeError("this agent has no env to learn in: call attach(env) first")


class _StepHook(BaseCallback):
    """Hands every env step to the online loop and averages SB3's training metrics."""

    def __init__(self, agent: SB3Agent, on_step: Callable[[float, bool, dict], None]):
        super().__init__()
        self.agent = agent
        self.on_step_fn = on_step

    def _on_step(self) -> bool:
        self.agent._accumulate(self.model.logger.name_to_value)  # first: on_step may log this step
        for reward, done, info in zip(self.locals["rewards"], self.locals["dones"], self.locals["infos"]):
            self.on_step_fn(float(reward), bool(done), info)
        return True


class SB3Agent(Agent):
    """A stable-baselines3 model as an agent (see the module docstring)."""

    online: ClassVar[bool] = True
    algorithm: ClassVar[type]  # the stable_baselines3 class
    iteration_key: ClassVar[str]  # the config key of steps_per_iteration ("algo.<field>")

    def __init__(self, config: Any, observation_space: gym.Space, action_space: gym.Space, device):
        super().__init__(config, observation_space, action_space, device)
        # Own copies: seeding the model's action space must not touch the caller's env.
        spaces_only = DummyVecEnv([lambda: _SpacesOnly(copy.deepcopy(observation_space), copy.deepcopy(action_space))])
        self.model = self.algorithm("MlpPolicy", spaces_only, device=self.device, **self.sb3_arguments())
        self._quiet_logger()
        self._metric_sums: dict[str, float] = {}
        self._metric_counts: dict[str, int] = {}

    def sb3_arguments(self) -> dict[str, Any]:
        """Our config as SB3 keyword arguments."""
        arguments = dataclasses.asdict(self.config)
        arguments["policy_kwargs"] = {"net_arch": list(arguments.pop("hidden_dims"))}
        return arguments

    def _quiet_logger(self) -> None:
        # No output formats: SB3 records metrics (we read them) but writes nothing itself.
        self.model.set_logger(SB3Logger(folder=None, output_formats=[]))

    # --- acting --------------------------------------------------------------------------
    def act(self, obs: np.ndarray) -> np.ndarray:
        """Deterministic action(s) for one observation or a batch, float32 within the action space."""
        action, _ = self.model.predict(np.asarray(obs, dtype=np.float32), deterministic=True)
        return np.clip(action, self.action_space.low, self.action_space.high).astype(np.float32)

    def update(self, batch, step: int):
        raise NotImplementedError(f"{self.name} learns from its own env steps: train it with `embodied train` "
                                  "(embodied.run.online), not from a dataset")  # fmt: skip

    # --- learning online -----------------------------------------------------------------
    @classmethod
    def iteration_steps(cls, config: Any) -> int:
        """Env steps SB3 collects before it can stop: training runs in multiples of it."""
        return getattr(config, cls.iteration_key.removeprefix("algo."))

    @property
    def steps_per_iteration(self) -> int:
        return self.iteration_steps(self.config)

    def seed(self, seed: int) -> None:
        """Seed what SB3 draws from besides the global generators: warm-up actions."""
        self.model.action_space.seed(seed)

    def attach(self, env: gym.Env) -> None:
        """Learn in ``env`` from now on; the next :meth:`learn` starts by resetting it."""
        self.model.set_env(DummyVecEnv([lambda: env]), force_reset=True)

    def learn(self, env_steps: int, on_step: Callable[[float, bool, dict], None]) -> None:
        """Continue training for ``env_steps`` steps (a multiple of :attr:`steps_per_iteration`);
        ``on_step(reward, done, info)`` sees every step."""
        if env_steps % self.steps_per_iteration:
            raise ValueError(f"{self.name} trains in multiples of {self.steps_per_iteration} env steps, not {env_steps}")
        self.model.learn(env_steps, callback=_StepHook(self, on_step), log_interval=None, reset_num_timesteps=False)

    def _accumulate(self, recorded: dict[str, float]) -> None:
        for key, value in recorded.items():
            if key.startswith("train/"):
                self._metric_sums[key] = self._metric_sums.get(key, 0.0) + float(value)
                self._metric_counts[key] = self._metric_counts.get(key, 0) + 1

    def training_metrics(self) -> dict[str, float]:
        """SB3's ``train/...`` metrics (losses, entropy coefficient, ...) averaged over the
        env steps since the last call; counters and schedules are their latest value."""
        metrics = {key: total / self._metric_counts[key] for key, total in self._metric_sums.items()}
        for key in _LATEST_VALUE & metrics.keys():
            metrics[key] = float(self.model.logger.name_to_value[key])
        self._metric_sums, self._metric_counts = {}, {}
        return metrics

    # --- state ---------------------------------------------------------------------------
    def state_dict(self, *args, **kwargs) -> dict[str, Any]:
        """Everything ``model.save`` writes (weights, optimizers, temperature, counters), as bytes."""
        buffer = io.BytesIO()
        self.model.save(buffer)
        return {"sb3_zip": buffer.getvalue(), "sb3_version": stable_baselines3.__version__}

    def load_state_dict(self, state: dict[str, Any], strict: bool = True):
        if "sb3_zip" not in state:
            raise ValueError(f"not a {self.name} state: expected the bytes of an SB3 model ('sb3_zip')")
        self.model = self.algorithm.load(io.BytesIO(state["sb3_zip"]), device=self.device)
        self._quiet_logger()
        return None

    def to(self, device: str | torch.device):
        device = torch.device(device)
        if device != self.model.device:
            self.device = device
            self.load_state_dict(self.state_dict())
        return self

    def loop_state(self) -> dict:
        """What a resumed run needs beyond ``state_dict``: the warm-up action sampler's
        generator, and SB3's last recorded metrics (PPO logs them until its next update)."""
        return {"action_space_rng": self.model.action_space.np_random.bit_generator.state,
                "recorded": dict(self.model.logger.name_to_value)}  # fmt: skip

    def load_loop_state(self, state: dict) -> None:
        self.model.action_space.np_random.bit_generator.state = state["action_space_rng"]
        self.model.logger.name_to_value.update(state["recorded"])

    def replay_buffer_arrays(self) -> dict[str, np.ndarray] | None:
        """The filled part of the replay buffer (None for on-policy algorithms)."""
        return None

    def load_replay_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        raise ValueError(f"{self.name} has no replay buffer")


REPLAY_FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class SAC(SB3Agent):
    Config = SACConfig
    name = "sac"
    algorithm = stable_baselines3.SAC
    iteration_key = "algo.train_freq"

    def replay_buffer_arrays(self) -> dict[str, np.ndarray]:
        buffer = self.model.replay_buffer
        filled = buffer.buffer_size if buffer.full else buffer.pos
        # Only the filled part: a fresh 1e6-transition buffer is mostly zeros.
        arrays = {name: getattr(buffer, name)[:filled] for name in REPLAY_FIELDS if getattr(buffer, name, None) is not None}
        arrays["position"] = np.array([buffer.pos, int(buffer.full)])
        return arrays

    def load_replay_buffer_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        buffer = self.model.replay_buffer
        for name in REPLAY_FIELDS:
            if name in arrays:
                stored = arrays[name]
                if stored.shape[0] > buffer.buffer_size or stored.shape[1:] != getattr(buffer, name).shape[1:]:
                    raise ValueError(f"replay buffer {name} of shape {stored.shape} does not fit this SAC's "
                                     f"buffer {getattr(buffer, name).shape}")  # fmt: skip
                getattr(buffer, name)[: len(stored)] = stored
        buffer.pos, buffer.full = int(arrays["position"][0]), bool(arrays["position"][1])


class PPO(SB3Agent):
    Config = PPOConfig
    name = "ppo"
    algorithm = stable_baselines3.PPO
    iteration_key = "algo.n_steps"
