"""Collect episodes with a scripted, random or noisy policy, in parallel worker processes.

Episode ``i`` of a collection is reset with seed ``seed + i`` and draws its action noise
from a generator seeded by ``(seed, i)``, so a dataset is the same whatever the number
of workers.

Ready-made quality levels, as D4RL has for locomotion (Meta-World's scripted experts):

- ``expert``: the scripted expert with small action noise (σ = 0.1) for coverage;
- ``medium``: the expert with Gaussian action noise of the σ at which it succeeds on
  about half of the episodes. Noise hurts tasks very unequally, so σ is calibrated per
  task (``MEDIUM_NOISE``, from ``results/medium_noise.md``; 1.0 for tasks not yet
  calibrated). Where even σ = 3 leaves most episodes successful (reach, drawer-close,
  door-open, window-open), ``medium`` succeeds more often than half: noise alone cannot
  make those experts worse;
- ``random``: uniform random actions;
- ``mixed``: per episode, 20 % expert, 40 % medium and 40 % random, drawn from the seed.
"""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

from embodied.data.episodes import DatasetError, Episode, write_dataset


@dataclass(frozen=True)
class Behaviour:
    """How one episode is acted: a base policy and Gaussian action noise."""

    policy: str  # "scripted", "random", or a checkpoint path (file or run directory)
    noise: float = 0.0
    quality: str = "custom"


#: Meta-World task -> σ at which the scripted expert succeeds about half the time
#: (``python -m embodied.bench.medium_noise``, results/medium_noise.md; capped at 3.0).
MEDIUM_NOISE: dict[str, float] = {
    "push-v3": 0.88, "drawer-open-v3": 2.5, "button-press-v3": 1.8, "pick-place-v3": 0.5,
    "door-open-v3": 3.0, "reach-v3": 3.0, "drawer-close-v3": 3.0, "window-open-v3": 2.9,
    "peg-insert-side-v3": 0.5, "sweep-into-v3": 0.67,
}  # fmt: skip
MEDIUM = "medium"  # stands for the task's calibrated σ in QUALITIES

QUALITIES: dict[str, list[tuple[float, Behaviour]]] = {
    "expert": [(1.0, Behaviour("scripted", 0.1, "expert"))],
    "medium": [(1.0, Behaviour("scripted", -1.0, MEDIUM))],
    "random": [(1.0, Behaviour("random", 0.0, "random"))],
    "mixed": [
        (0.2, Behaviour("scripted", 0.1, "expert")),
        (0.4, Behaviour("scripted", -1.0, MEDIUM)),
        (0.4, Behaviour("random", 0.0, "random")),
    ],
}


def medium_noise(env_id: str) -> float:
    return MEDIUM_NOISE.get(env_id.split("/", 1)[-1], 1.0)


def behaviours_for(
    episodes: int, seed: int, quality: str | None, policy: str, noise: float, env_id: str = ""
) -> list[Behaviour]:
    """The behaviour of each episode: from a quality level, or one policy and noise for all."""
    if quality is None:
        if policy not in ("scripted", "random") and not Path(policy).exists():
            raise DatasetError(
                f"policy must be 'scripted', 'random' or a checkpoint (file or run directory); "
                f"{policy!r} is none of these"
            )
        if noise < 0:
            raise DatasetError(f"noise must be >= 0, got {noise}")
        if policy not in ("scripted", "random"):
            policy = str(Path(policy).resolve())  # workers may run elsewhere
        return [Behaviour(policy, float(noise), "custom")] * episodes
    if quality not in QUALITIES:
        raise DatasetError(f"unknown quality {quality!r}; valid: {', '.join(QUALITIES)}")
    weights, choices = zip(*QUALITIES[quality])
    choices = tuple(
        Behaviour(b.policy, medium_noise(env_id), b.quality) if b.quality == MEDIUM else b for b in choices
    )
    picks = np.random.default_rng([seed, 7919]).choice(len(choices), size=episodes, p=weights)
    return [choices[i] for i in picks]


_WORKER_ENVS: dict[tuple, Any] = {}


def _worker_env(env_id: str, options: tuple):
    key = (env_id, options)
    if key not in _WORKER_ENVS:
        import embodied

        _WORKER_ENVS[key] = embodied.make(env_id, **dict(options))
    return _WORKER_ENVS[key]


_WORKER_AGENTS: dict[str, Any] = {}


def _policy(env, behaviour: Behaviour) -> Callable[[Any], np.ndarray]:
    if behaviour.policy == "random":
        return lambda _obs: env.action_space.sample()
    if behaviour.policy != "scripted":  # a trained agent's checkpoint
        if behaviour.policy not in _WORKER_AGENTS:
            import embodied

            _WORKER_AGENTS[behaviour.policy] = embodied.load(behaviour.policy)
        return _WORKER_AGENTS[behaviour.policy].act
    from embodied.envs import scripted_policy

    return scripted_policy(env)


def collect_episode(env_id: str, options: tuple, behaviour: Behaviour, seed: int, index: int) -> Episode:
    """Run one episode (in a worker process)."""
    env = _worker_env(env_id, options)
    rng = np.random.default_rng([seed, index])
    env.action_space.seed(int(rng.integers(2**31)))
    policy = _policy(env, behaviour)
    low, high = env.action_space.low, env.action_space.high
    obs, info = env.reset(seed=seed + index)
    if behaviour.policy in _WORKER_AGENTS:  # an agent with memory starts the episode afresh
        _WORKER_AGENTS[behaviour.policy].begin_episode()
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    successes = [bool(info.get("success", False))]
    done = False
    while not done:
        action = np.asarray(policy(obs), dtype=np.float32)
        if behaviour.noise > 0:
            action = np.clip(action + behaviour.noise * rng.standard_normal(action.shape), low, high).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        observations.append(obs)
        actions.append(action)
        rewards.append(reward)
        terminations.append(terminated)
        truncations.append(truncated)
        successes.append(bool(info.get("success", False)))
        done = terminated or truncated
    if isinstance(observations[0], dict):
        stacked = {key: np.stack([o[key] for o in observations]) for key in observations[0]}
    else:
        stacked = np.stack(observations)
    has_success = "success" in info
    return Episode(
        observations=stacked,
        actions=np.stack(actions),
        rewards=np.asarray(rewards),
        terminations=np.asarray(terminations),
        truncations=np.asarray(truncations),
        infos={"success": np.asarray(successes)} if has_success else {},
        metadata={
            **asdict(behaviour),
            "env_id": env_id,
            "seed": seed + index,
            "return": float(np.sum(rewards)),
            **({"success": bool(any(successes))} if has_success else {}),
        },
    )


def collect(
    env_id: str,
    episodes: int,
    *,
    name: str | None = None,
    policy: str = "scripted",
    noise: float = 0.0,
    quality: str | None = None,
    seed: int = 0,
    workers: int = 1,
    env_options: dict[str, Any] | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> list[Episode] | Any:
    """Collect ``episodes`` episodes; write them as dataset ``name`` if given (atomically).

    Returns the dataset's path when ``name`` is given, else the episodes.
    """
    from embodied.envs import resolve

    resolve(env_id)  # a bad id fails here, before any worker starts
    if episodes < 1:
        raise DatasetError(f"episodes must be >= 1, got {episodes}")
    if workers < 1:
        raise DatasetError(f"workers must be >= 1, got {workers}")
    behaviours = behaviours_for(episodes, seed, quality, policy, noise, env_id)
    options = tuple(sorted((env_options or {}).items()))
    results: list[Episode | None] = [None] * episodes
    bar = _progress(episodes, f"collect {env_id}", progress)
    if workers == 1:
        for index, behaviour in enumerate(behaviours):
            results[index] = collect_episode(env_id, options, behaviour, seed, index)
            bar.update(1)
    else:
        # spawn: a forked MuJoCo/EGL state is not safe to share.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {
                pool.submit(collect_episode, env_id, options, behaviour, seed, index): index
                for index, behaviour in enumerate(behaviours)
            }
            for future in as_completed(futures):
                results[futures[future]] = future.result()
                bar.update(1)
    bar.close()
    collected = [episode for episode in results if episode is not None]
    if name is None:
        return collected
    import embodied

    env = embodied.make(env_id, **dict(options))
    description = (
        f"{episodes} episodes of {env_id}, "
        + (f"quality {quality}" if quality else f"policy {policy} with Gaussian action noise sigma={noise}")
        + f", seeds {seed}..{seed + episodes - 1}"
    )
    path = write_dataset(
        name, collected, env, algorithm_name=quality or policy, description=description, overwrite=overwrite
    )
    env.close()
    return path


def _progress(total: int, description: str, enabled: bool):
    from tqdm.auto import tqdm

    # disable=None shows the bar only on a terminal.
    return tqdm(total=total, desc=description, unit="episode", disable=None if enabled else True)


def default_workers() -> int:
    return max(1, min(4, (os.cpu_count() or 1)))
