"""``embodied reward check``: is a reward program safe to train with, and does it make sense?

    report = check_program("metaworld/push-v3", source, steps=300)
    print(report.summary())          # or report.ok / report.message

First the sandbox's static check; then ``steps`` env steps in the program's sandbox —
for Meta-World half with random actions and half with the task's scripted expert, for
other suites all random — with every call's failure fatal. A report that passes carries
statistics of the program's reward: mean, min, max, its correlation with the env's own
reward, and its mean under each policy (a program that rewards the expert no more than
random actions is suspicious). Those are hints, reported as warnings, never failures.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np


@dataclass
class CheckReport:
    """The outcome of :func:`check_program`: ``ok``, and why not (``message``, ``rule``, ``line``)."""

    ok: bool
    env_id: str
    message: str  # the reason a program failed, or a one-line summary
    rule: str | None = None  # the static rule that refused it, or the kind of run-time failure
    line: int | None = None  # the program line at fault, when known
    steps: int = 0  # env steps run
    reward_mean: float | None = None
    reward_min: float | None = None
    reward_max: float | None = None
    reward_std: float | None = None
    env_reward_correlation: float | None = None  # Pearson, against the env's own reward
    by_policy: dict[str, dict[str, float]] = field(default_factory=dict)  # policy -> mean reward, env reward, success
    call_us: float | None = None  # mean wall time of one program call, µs
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        if not self.ok:
            where = f" (line {self.line})" if self.line else ""
            return f"FAILED {self.env_id}{where}: {self.message}"
        lines = [f"OK {self.env_id}: {self.message}"]
        for policy, stats in self.by_policy.items():
            shown = ", ".join(f"{k} {v:.4g}" for k, v in stats.items())
            lines.append(f"  {policy}: {shown}")
        if self.call_us is not None:
            lines.append(f"  program call: {self.call_us:.0f} µs on average (sandboxed)")
        lines += [f"  warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_program(env_id: str, source: str, steps: int = 300, *, seed: int = 0, timeout_s: float = 1.0,
                  filename: str | None = None) -> CheckReport:  # fmt: skip
    """Statically check ``source``, then run it for ``steps`` env steps of ``env_id`` (see the module docstring).

    Bad input (an unknown env id, a suite without descriptions) raises; a bad program
    gives a report with ``ok=False``.
    """
    import embodied
    from embodied.envs import resolve, scripted_policy
    from embodied.envs.reward import RewardCode
    from embodied.rewards.text2reward.sandbox import ProgramRejected, RewardProgramError, check_source
    from embodied.rewards.text2reward.state import MetaWorldState

    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    resolve(env_id)  # an unknown id is the caller's error, not the program's
    suite = env_id.split("/", 1)[0] if not env_id.startswith("embodied/") else env_id.split("/", 1)[1].split("-", 1)[0]
    if suite not in ("metaworld", "mujoco"):
        raise ValueError(f"reward programs need a state description, which exists for metaworld and mujoco envs, not {suite}")
    name = filename or "<reward program>"
    allowed_private = MetaWorldState.allowed_private if suite == "metaworld" else ()
    try:
        check_source(source, name, allowed_private)
    except ProgramRejected as rejected:
        return CheckReport(False, env_id, str(rejected), rule=rejected.rule, line=rejected.line or None)

    env = wrapper = RewardCode(embodied.make(env_id, render_mode=None), source, on_error="raise", timeout_s=timeout_s,
                               filename=name)  # fmt: skip
    phases = [("random", steps)]
    if suite == "metaworld":
        phases = [("random", steps - steps // 2), ("scripted", steps // 2)]
    rewards, env_rewards = [], []
    by_policy: dict[str, dict[str, float]] = {}
    done = 0  # steps run, the failing one included
    try:
        for index, (policy, count) in enumerate(phases):
            if count == 0:
                continue
            act = scripted_policy(env) if policy == "scripted" else None
            env.action_space.seed(seed + index)
            obs, _ = env.reset(seed=seed + index)
            phase_rewards, phase_env, successes, succeeded = [], [], 0, False
            for _ in range(count):
                action = act(obs) if act is not None else env.action_space.sample()
                obs, reward, terminated, truncated, info = env.step(action)
                done += 1
                phase_rewards.append(float(reward))
                phase_env.append(float(info.get("env_reward", 0.0)))
                succeeded = succeeded or bool(info.get("success", False))
                if terminated or truncated:
                    successes += succeeded
                    succeeded = False
                    obs, _ = env.reset()
            successes += succeeded
            rewards += phase_rewards
            env_rewards += phase_env
            stats = {"mean reward": float(np.mean(phase_rewards)), "mean env reward": float(np.mean(phase_env))}
            if suite == "metaworld":
                stats["successful episodes"] = float(successes)
            by_policy[policy] = stats
    except RewardProgramError as error:
        return CheckReport(False, env_id, str(error), rule=error.kind, line=error.line or None, steps=done)
    finally:
        call_us = 1e6 * wrapper.call_seconds / max(1, wrapper.calls)
        env.close()
    return _passed(env_id, np.array(rewards), np.array(env_rewards), by_policy, call_us)


def _passed(env_id: str, rewards: np.ndarray, env_rewards: np.ndarray, by_policy: dict, call_us: float) -> CheckReport:
    warnings = []
    correlation = None
    if rewards.std() > 0 and env_rewards.std() > 0:
        correlation = float(np.corrcoef(rewards, env_rewards)[0, 1])
    if rewards.std() == 0:
        warnings.append(f"the program returned {rewards[0]:g} on every step: a constant reward teaches nothing")
    if np.abs(rewards).max() > 1e4:
        warnings.append(f"rewards reach {np.abs(rewards).max():.3g} in magnitude; large scales can destabilise training")
    if correlation is not None and correlation < 0:
        warnings.append(f"the program's reward correlates negatively ({correlation:.2f}) with the env's own reward")
    if "scripted" in by_policy and by_policy["scripted"]["mean reward"] <= by_policy["random"]["mean reward"]:
        warnings.append("the scripted expert earns no more reward on average than random actions")
    shown = "n/a" if correlation is None else f"{correlation:.2f}"
    message = (f"{len(rewards)} steps; reward mean {rewards.mean():.4g}, min {rewards.min():.4g}, max {rewards.max():.4g}; "
               f"correlation with the env's reward {shown}")  # fmt: skip
    return CheckReport(
        True, env_id, message, steps=len(rewards), reward_mean=float(rewards.mean()), reward_min=float(rewards.min()),
        reward_max=float(rewards.max()), reward_std=float(rewards.std()),
        env_reward_correlation=None if correlation is None or math.isnan(correlation) else correlation,
        by_policy=by_policy, call_us=call_us, warnings=warnings,
    )  # fmt: skip


def read_program(path: str | Path) -> str:
    """A program file's text, with a clear error when it is missing."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no reward program at {path}")
    return path.read_text(encoding="utf-8")


def measure_overhead(env_id: str, program: str | Path, steps: int = 2000, repeats: int = 3, seed: int = 0) -> dict[str, float]:
    """Env steps per second without and with a reward program plugged in (same actions,
    best of ``repeats``), and the difference per step in µs: the plug's cost."""
    import time

    import embodied

    rates = {}
    for label, reward_code in (("env reward", None), ("reward code", str(program))):
        env = embodied.make(env_id, render_mode=None, reward_code=reward_code)
        actions = np.random.default_rng(seed).uniform(-1, 1, size=(steps, *env.action_space.shape)).astype(np.float32)
        env.reset(seed=seed)
        env.step(actions[0])  # starts the sandbox process, outside the timing
        best = math.inf
        for _ in range(repeats):
            env.reset(seed=seed)
            started = time.perf_counter()
            for action in actions:
                _, _, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    env.reset()
            best = min(best, time.perf_counter() - started)
        env.close()
        rates[label] = steps / best
    overhead_us = 1e6 * (1 / rates["reward code"] - 1 / rates["env reward"])
    return {"steps_per_s_env_reward": rates["env reward"], "steps_per_s_reward_code": rates["reward code"],
            "overhead_us_per_step": overhead_us}  # fmt: skip


if __name__ == "__main__":
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m embodied.rewards.text2reward.check",
                                     description="Env steps/s with and without a reward program (the plug's overhead).")  # fmt: skip
    parser.add_argument("env_id")
    parser.add_argument("program")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = measure_overhead(args.env_id, args.program, args.steps, args.repeats)
    print(f"{args.env_id}: {result['steps_per_s_env_reward']:.0f} steps/s with the env's reward, "
          f"{result['steps_per_s_reward_code']:.0f} with {args.program}: +{result['overhead_us_per_step']:.0f} µs per step")  # fmt: skip
    sys.exit(0)
