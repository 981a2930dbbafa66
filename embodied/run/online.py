"""The training loop of online algorithms (SAC, PPO): env steps, logs, evaluation, checkpoints.

``embodied train`` (:func:`embodied.run.fit.train`) comes here when the config's algorithm
is online (``embodied.algos.ONLINE_ALGOS``). There is no dataset: ``train.steps``,
``eval_every``, ``log_every`` and ``checkpoint_every`` count env steps, and the agent
learns from one env made from ``env``. The run directory is the offline loop's
(``config.yaml``, ``train.csv``, ``eval.csv``, ``tensorboard/``, ``checkpoints/step_N.pt``,
which ``embodied eval`` and ``embodied.load`` read), plus:

- ``reward_code/v1.py``: the program trained with when ``env.options.reward_code`` is set
  (``embodied train --reward-code FILE``), copied at the start; training and resuming use
  this copy, and ``embodied reward refine RUN_DIR`` writes ``v2.py``, ... beside it;
- ``checkpoints/step_N.replay.npz``: SAC's replay buffer, kept for the latest checkpoint only.

Logged every ``log_every`` steps: ``train/episode_return`` (the reward the agent learns
from), ``train/episode_success``, ``train/env_return`` (the env's own reward, when a reward
program or ``reward: sparse`` replaces it), ``train/reward_code_errors`` (failed program
calls so far), SB3's ``train/...`` losses, ``time/env_steps_per_second`` (evaluation left
out) and ``time/reward_code_ms_per_call``. Evaluation (:func:`embodied.run.fit.evaluate`)
uses the env without the reward options, so ``eval/return`` is the env's own return and
``eval/success_rate`` the share of episodes where ``info['success']`` was ever true (per
task, too, in ``metaworld/mt10``).

Seeding and resume: training episode ``k`` is reset with seed ``seed * 1_000_000 + k``,
so episodes do not depend on what ran before them. A checkpoint holds the SB3 model
(weights, optimisers, temperature, counters), every random generator (Python, NumPy,
torch, SB3's warm-up action sampler), the episode counter and SAC's replay buffer.
``--resume`` continues from the latest checkpoint. Where the checkpoint fell at the end of
an episode (Meta-World: ``checkpoint_every`` a multiple of its 500-step episodes; PPO:
also of ``n_steps``) a resumed run on CPU ends with exactly the weights of an
uninterrupted one. Otherwise the episode in progress is cut there and run again from its
start: the same weights, buffer and generators, a different trajectory from then on.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from embodied.run import checkpoint
from embodied.run.config import RunConfig, algo_name
from embodied.run.logger import Logger

#: Episode seeds of run seed s are s * EPISODE_SEED_STRIDE + k: different seeds never share episodes.
EPISODE_SEED_STRIDE = 1_000_000
REWARD_DIR = "reward_code"  # as embodied.rewards.text2reward.refine expects


class SeededEpisodes(gym.Wrapper):
    """Resets episode ``k`` with seed ``base + k`` (whatever seed the caller passes), so a
    resumed run meets the same episodes as an uninterrupted one."""

    def __init__(self, env: gym.Env, seed: int, next_episode: int = 0):
        super().__init__(env)
        self.base = seed * EPISODE_SEED_STRIDE
        self.episode = next_episode - 1  # index of the episode in progress

    def reset(self, *, seed=None, options=None):
        self.episode += 1
        return self.env.reset(seed=self.base + self.episode, options=options)


class StepTracker:
    """Episode statistics, windowed metrics and the progress bar, fed one env step at a time."""

    def __init__(self, agent, env: gym.Env, logger: Logger, bar, log_every: int, step: int, reward_code_errors: int):
        self.agent, self.env, self.logger, self.bar = agent, env, logger, bar
        self.log_every = log_every
        self.step = step
        self.errors_before = reward_code_errors  # failures counted before a resume
        self.reward_code_errors = reward_code_errors
        self.uses_reward_code = _has_wrapper_attr(env, "call_seconds")
        self._episode = {"return": 0.0, "env_return": 0.0, "success": False}
        self._finished: list[dict[str, Any]] = []
        self._saw_success = self._saw_env_reward = False
        self._window_steps, self._window_seconds, self._timer = 0, 0.0, None
        self._calls, self._call_seconds = self._reward_code_time()

    def __call__(self, reward: float, done: bool, info: dict) -> None:
        self.step += 1
        self._window_steps += 1
        episode = self._episode
        episode["return"] += reward
        if "env_reward" in info:
            self._saw_env_reward = True
            episode["env_return"] += float(info["env_reward"])
        if "success" in info:
            self._saw_success = True
            episode["success"] = episode["success"] or bool(info["success"])
        if "reward_code_errors" in info:
            self.reward_code_errors = self.errors_before + int(info["reward_code_errors"])
        if done:
            self._finished.append(episode)
            self._episode = {"return": 0.0, "env_return": 0.0, "success": False}
        self.bar.update(1)
        if self.step % self.log_every == 0:
            self.flush()

    # The clock runs only while the agent learns, so evaluation is not counted as training time.
    def start_clock(self) -> None:
        self._timer = time.perf_counter()

    def stop_clock(self) -> None:
        self._window_seconds += time.perf_counter() - self._timer
        self._timer = None

    def flush(self) -> None:
        """Log the window's metrics at the current step (nothing if no step was taken)."""
        if not self._window_steps:
            return
        now = time.perf_counter()
        seconds = self._window_seconds + (now - self._timer if self._timer is not None else 0.0)
        metrics: dict[str, float] = {}
        if self._finished:
            metrics["train/episode_return"] = float(np.mean([e["return"] for e in self._finished]))
            if self._saw_success:
                metrics["train/episode_success"] = float(np.mean([e["success"] for e in self._finished]))
            if self._saw_env_reward:
                metrics["train/env_return"] = float(np.mean([e["env_return"] for e in self._finished]))
        metrics.update(self.agent.training_metrics())
        metrics["time/env_steps_per_second"] = self._window_steps / seconds if seconds > 0 else float("nan")
        if self.uses_reward_code:
            metrics["train/reward_code_errors"] = float(self.reward_code_errors)
            calls, call_seconds = self._reward_code_time()
            if calls > self._calls:
                metrics["time/reward_code_ms_per_call"] = 1000 * (call_seconds - self._call_seconds) / (calls - self._calls)
            self._calls, self._call_seconds = calls, call_seconds
        self.logger.log(metrics, self.step)
        self.bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in list(metrics.items())[:2]})
        self._finished = []
        self._window_steps, self._window_seconds = 0, 0.0
        if self._timer is not None:
            self._timer = now

    def _reward_code_time(self) -> tuple[int, float]:
        if not self.uses_reward_code:
            return 0, 0.0
        return self.env.get_wrapper_attr("calls"), self.env.get_wrapper_attr("call_seconds")


def _has_wrapper_attr(env: gym.Env, name: str) -> bool:
    try:
        env.get_wrapper_attr(name)
    except AttributeError:
        return False
    return True


def training_options(config: RunConfig, run_dir: Path, resuming: bool) -> dict[str, Any]:
    """The env options to train with: a reward program is copied into the run directory
    (``reward_code/v1.py``) and read from there, so the run keeps what it trained with."""
    options = dict(config.env.options)
    program = options.get("reward_code")
    if program is None:
        return options
    from embodied.envs.reward import load_program
    from embodied.rewards.text2reward.generate import write_program

    copy = run_dir / REWARD_DIR / "v1.py"
    if not (resuming and copy.exists()):
        write_program(copy, load_program(program)[0], overwrite=True)
    options["reward_code"] = str(copy)
    return options


def save_replay_buffer(path: Path, arrays: dict[str, np.ndarray]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:  # a handle: np.savez would append .npz to a name
        np.savez(handle, **arrays)
    tmp.replace(path)


def load_replay_buffer(path: Path) -> dict[str, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"cannot resume exactly: the replay buffer {path} of the latest checkpoint is missing")
    with np.load(path) as arrays:
        return dict(arrays)


def train(config: RunConfig | None = None, resume: str | Path | None = None) -> Path:
    """Train an online agent (or continue the run in ``resume``); returns its run directory."""
    from embodied.run.fit import open_run

    return run(*open_run(config, resume))


def run(config: RunConfig, run_dir: Path, payload: dict | None) -> Path:
    """The loop, for a run directory opened by :func:`embodied.run.fit.open_run`."""
    import embodied
    from embodied.algos import agent_class
    from embodied.data.dataset import resolve_device
    from embodied.run.fit import evaluate, evaluation_options, seed_everything

    train_config = config.train
    generator = seed_everything(train_config.seed)
    env = embodied.make(config.env.id, **training_options(config, run_dir, resuming=payload is not None))
    eval_env = embodied.make(config.env.id, **evaluation_options(config.env.options))
    logger = bar = None
    try:
        agent = agent_class(algo_name(config.algo))(
            config.algo, env.observation_space, env.action_space, resolve_device(train_config.device)
        )
        if train_config.compile:
            agent.compile(train_config.compile_mode)
        start, episode, errors = 0, 0, 0
        if payload is None:
            agent.seed(train_config.seed)
        else:
            checkpoint.load_weights(agent, payload)
            if payload.get("replay_buffer"):
                agent.load_replay_buffer_arrays(load_replay_buffer(run_dir / "checkpoints" / payload["replay_buffer"]))
            checkpoint.restore_rng(payload["rng"], generator)
            agent.load_loop_state(payload["loop"])
            start, episode, errors = payload["step"], payload["episode"], payload["reward_code_errors"]
        seeded = SeededEpisodes(env, train_config.seed, next_episode=episode)
        agent.attach(seeded)

        logger = Logger(run_dir, resume_step=start if payload is not None else None,
                        wandb_config=config.to_dict() if train_config.wandb else None)  # fmt: skip
        from tqdm.auto import tqdm

        bar = tqdm(total=train_config.steps, initial=start, desc=run_dir.name, unit="step",
                   disable=None if train_config.progress else True)  # fmt: skip
        tracker = StepTracker(agent, env, logger, bar, train_config.log_every, start, errors)
        raw_config = config.to_dict()
        eval_seed = train_config.seed + 10_000  # evaluation episodes never reuse training seeds

        def save(step: int) -> None:
            directory = run_dir / "checkpoints"
            directory.mkdir(parents=True, exist_ok=True)
            arrays = agent.replay_buffer_arrays()
            buffer_name = f"step_{step}.replay.npz" if arrays is not None else None
            if arrays is not None:
                save_replay_buffer(directory / buffer_name, arrays)
            # The episode a resumed run starts with: the one in progress, or the next where the
            # agent resets lazily and the last one has just ended.
            episode = seeded.episode + 1 if getattr(agent, "awaiting_reset", False) else max(seeded.episode, 0)
            extra = {"rng": checkpoint.rng_state(generator), "loop": agent.loop_state(),
                     "episode": episode, "reward_code_errors": tracker.reward_code_errors,
                     "replay_buffer": buffer_name}  # fmt: skip
            checkpoint.save(directory / f"step_{step}.pt", agent, raw_config, step, extra=extra)
            for old in directory.glob("step_*.replay.npz"):  # buffers are large: the latest is enough to resume
                if old.name != buffer_name:
                    old.unlink()

        # Training stops at every evaluation and checkpoint, and at the end.
        every = [n for n in (train_config.eval_every, train_config.checkpoint_every) if n > 0]
        stops = sorted({s for n in every for s in range(n, train_config.steps + 1, n)} | {train_config.steps})
        step = start
        for stop in (s for s in stops if s > start):
            tracker.start_clock()
            agent.learn(stop - step, tracker)
            tracker.stop_clock()
            step = stop
            if step == train_config.steps:
                tracker.flush()
            if (train_config.eval_every and step % train_config.eval_every == 0) or step == train_config.steps:
                logger.log(evaluate(agent, eval_env, train_config.eval_episodes, eval_seed), step)
            if step % train_config.checkpoint_every == 0 or step == train_config.steps:
                save(step)
    finally:
        if bar is not None:
            bar.close()
        if logger is not None:
            logger.close()
        env.close()
        eval_env.close()
    return run_dir
