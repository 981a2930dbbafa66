"""Environment registry: every suite's tasks as Gymnasium ids with string entry points.

A short id ``<suite>/<task>`` (``metaworld/push-v3``) is registered with Gymnasium as
``embodied/<suite>-<task>`` (``embodied/metaworld-push-v3``), whose entry point is the
string ``embodied.envs.<suite>:make_env`` with ``task`` in its kwargs, so Minari and
``gymnasium.make(spec)`` can rebuild it without importing this module first.

Suite modules are imported here only for their task lists; simulators load on first
``make``.
"""

from __future__ import annotations

import importlib
from typing import Any

import gymnasium as gym

from embodied.envs.wrappers import COMMON_OPTIONS, EnvOptionError, closest

#: suite name -> module implementing it (``TASKS``, ``MAX_EPISODE_STEPS``, ``make_env``, and
#: optionally ``BENCHMARKS``: multi-task envs such as ``metaworld/mt10``, made by the same ``make_env``).
SUITES: dict[str, str] = {
    "metaworld": "embodied.envs.metaworld",
    "mujoco": "embodied.envs.mujoco",
    "robomimic": "embodied.envs.robomimic",
    "nav": "embodied.envs.nav",
}

NAMESPACE = "embodied"


class UnknownEnvError(KeyError):
    """An env id that is not registered; the message names the closest valid ids."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0])


def suite_module(suite: str):
    return importlib.import_module(SUITES[suite])


def gym_id(short_id: str) -> str:
    """``metaworld/push-v3`` -> ``embodied/metaworld-push-v3``."""
    suite, task = short_id.split("/", 1)
    return f"{NAMESPACE}/{suite}-{task}"


def _tasks(suite: str, benchmarks: bool) -> tuple[str, ...]:
    module = suite_module(suite)
    return (*module.TASKS, *(getattr(module, "BENCHMARKS", {}) if benchmarks else ()))


def env_ids(suite: str | None = None, benchmarks: bool = False) -> list[str]:
    """Every short env id, optionally of one suite, in registration order; with
    ``benchmarks``, the multi-task envs too (``metaworld/mt10``)."""
    suites = [suite] if suite else list(SUITES)
    return [f"{s}/{task}" for s in suites for task in _tasks(s, benchmarks)]


def register() -> None:
    """Register every suite's tasks and benchmarks with Gymnasium (idempotent)."""
    for suite in SUITES:
        module = suite_module(suite)
        for task in _tasks(suite, benchmarks=True):
            env_id = gym_id(f"{suite}/{task}")
            if env_id in gym.registry:
                continue
            steps = module.MAX_EPISODE_STEPS
            gym.register(
                id=env_id,
                entry_point=f"{SUITES[suite]}:make_env",
                kwargs={"task": task},
                max_episode_steps=steps.get(task) if isinstance(steps, dict) else steps,
                disable_env_checker=True,  # checked once, in the tests; not per step
            )


def resolve(env_id: str) -> str:
    """Map a short or Gymnasium id to the registered Gymnasium id, or raise a clear error."""
    if not isinstance(env_id, str):
        raise TypeError(f"env id must be a string like 'metaworld/push-v3', got {type(env_id).__name__}")
    register()
    candidate = env_id
    if not env_id.startswith(NAMESPACE + "/") and "/" in env_id:
        candidate = gym_id(env_id)
    if candidate in gym.registry:
        return candidate
    ids = env_ids(benchmarks=True)
    near = closest(env_id, ids, n=5)
    hint = f" Closest valid ids: {', '.join(near)}." if near else ""
    suites = ", ".join(SUITES)
    raise UnknownEnvError(
        f"unknown env id {env_id!r}.{hint} Ids look like '<suite>/<task>' with suite one of "
        f"{suites}; `embodied envs` lists them all."
    )


def make(env_id: str, **options: Any) -> gym.Env:
    """Make an env by short id (``metaworld/push-v3``) or Gymnasium id.

    Options every suite accepts: ``obs`` ("state" | "pixels" | "state+pixels"),
    ``image_size`` (int or (H, W)), ``camera``, ``distractors`` (see
    :mod:`embodied.envs.distractors`), ``state_noise`` (dims of fresh N(0, 1) noise
    appended to the state each step), ``frame_stack``, ``action_repeat``, and
    ``max_episode_steps``. Suites add their own (see each suite module).
    ``max_episode_steps`` (and each suite's default limit) counts the agent's steps: with
    ``action_repeat=k`` an episode runs k times as many simulator steps.
    """
    return gym.make(resolve(env_id), **options)


def suite_of(env: gym.Env) -> str:
    """The suite an env made by :func:`make` belongs to."""
    spec_id = env.spec.id if env.spec is not None else ""
    if not spec_id.startswith(NAMESPACE + "/"):
        raise ValueError(f"not an embodied env: {spec_id or type(env.unwrapped).__name__}")
    return spec_id.split("/", 1)[1].split("-", 1)[0]


def scripted_policy(env: gym.Env):
    """The suite's scripted expert for ``env`` (a callable obs -> action)."""
    suite = suite_of(env)
    module = suite_module(suite)
    if not hasattr(module, "scripted_policy"):
        with_scripted = [s for s in SUITES if hasattr(suite_module(s), "scripted_policy")]
        raise ValueError(f"no scripted policy for {suite} envs; suites with one: {', '.join(with_scripted)}")
    return module.scripted_policy(env)


def make_vec(
    env_id: str, num_envs: int, vectorization_mode: str = "sync", **options: Any
) -> gym.vector.VectorEnv:
    """A Gymnasium vector env of ``num_envs`` copies (``sync`` or ``async`` processes).

    ``reset(seed=s)`` seeds copy ``i`` with ``s + i``. Async workers are started with
    ``spawn``: a process forked after the parent rendered with EGL hangs.
    """
    if vectorization_mode not in ("sync", "async"):
        raise EnvOptionError(f"vectorization_mode must be 'sync' or 'async', got {vectorization_mode!r}")
    if not isinstance(num_envs, int) or num_envs < 1:
        raise EnvOptionError(f"num_envs must be a positive integer, got {num_envs!r}")
    vector_kwargs = {"context": "spawn"} if vectorization_mode == "async" else None
    return gym.make_vec(
        resolve(env_id), num_envs=num_envs, vectorization_mode=vectorization_mode, vector_kwargs=vector_kwargs, **options
    )


__all__ = [
    "COMMON_OPTIONS",
    "EnvOptionError",
    "SUITES",
    "UnknownEnvError",
    "env_ids",
    "gym_id",
    "make",
    "make_vec",
    "register",
    "resolve",
    "scripted_policy",
    "suite_of",
]
