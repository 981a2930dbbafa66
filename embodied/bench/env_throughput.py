"""Env steps/s of our wrapped Meta-World against the raw ``metaworld`` env, same task, same run.

    python -m embodied.bench.env_throughput --task push-v3 --rounds 20 --out results/env_throughput.md

Raw baselines: the bare Meta-World env class set to an MT1 task (Meta-World's
documented low-level use, no wrappers at all), and Meta-World's own Gymnasium entry
``gym.make("Meta-World/MT1")``. Every variant steps the same pre-drawn random actions
and resets at truncation; rounds are interleaved so machine noise hits all alike, and
the median round is reported. The overhead of our wrapper is against the bare class.
"""

from __future__ import annotations

import argparse
import csv
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402


def bare_metaworld(task: str) -> gym.Env:
    """Meta-World's documented low-level use: the env class set to an MT1 task."""
    import metaworld

    benchmark = metaworld.MT1(task, seed=0)
    env = benchmark.train_classes[task]()
    env.set_task(benchmark.train_tasks[0])
    return env


def bare_metaworld_seeded(task: str) -> gym.Env:
    """The bare env class drawing positions exactly as ours does, so both simulate the
    same states and the difference is our wrapper alone (contacts change sim cost)."""
    from embodied.envs.metaworld import MetaWorldEnv

    return MetaWorldEnv(task, render_mode=None).sim


def metaworld_gym(task: str) -> gym.Env:
    return gym.make("Meta-World/MT1", env_name=task, disable_env_checker=True)


def ours(task: str) -> gym.Env:
    import embodied

    return embodied.make(f"metaworld/{task}")


def _episode(env: gym.Env, actions: np.ndarray, seed: int) -> float:
    """Seconds to step one episode of ``actions`` (reset not timed)."""
    if getattr(env, "seeded_rand_vec", False):
        env.seed(seed)  # the bare class ignores reset(seed=)
    env.reset(seed=seed)
    start = time.perf_counter()
    for action in actions:
        env.step(action)
    return time.perf_counter() - start


def _vector_chunk(envs: gym.vector.VectorEnv, actions: np.ndarray) -> float:
    start = time.perf_counter()
    for action in actions:
        envs.step(action)  # vector envs reset finished copies themselves
    return time.perf_counter() - start


def run(task: str, rounds: int, num_envs: int) -> list[dict]:
    """Interleave the variants one episode (500 steps) at a time, ``rounds`` times."""
    import embodied

    rng = np.random.default_rng(0)
    steps = 500
    singles: dict[str, gym.Env] = {
        "raw env class, same seeded positions as ours": bare_metaworld_seeded(task),
        "raw env class, MT1 task": bare_metaworld(task),
        'raw gym.make("Meta-World/MT1")': metaworld_gym(task),
        f"embodied.make(metaworld/{task})": ours(task),
    }
    vectors: dict[str, gym.vector.VectorEnv] = {
        f"raw env class, AsyncVectorEnv x{num_envs}": gym.vector.AsyncVectorEnv(
            [lambda: bare_metaworld_seeded(task)] * num_envs
        ),
        f'raw gym.make_vec("Meta-World/MT1") async x{num_envs}': gym.make_vec(
            "Meta-World/MT1", env_name=task, num_envs=num_envs, vector_strategy="async"
        ),
        f"embodied.make_vec async x{num_envs}": embodied.make_vec(f"metaworld/{task}", num_envs, "async"),
    }
    seconds = {name: [] for name in [*singles, *vectors]}
    for envs in vectors.values():
        envs.reset(seed=0)
    for round_index in range(rounds):
        actions = rng.uniform(-1, 1, (steps, 4)).astype(np.float32)
        vector_actions = rng.uniform(-1, 1, (steps, num_envs, 4)).astype(np.float32)
        for name, env in singles.items():
            seconds[name].append(_episode(env, actions, seed=round_index))
        for name, envs in vectors.items():
            seconds[name].append(_vector_chunk(envs, vector_actions))
        print(f"round {round_index + 1}/{rounds}", flush=True)
    for env in [*singles.values(), *vectors.values()]:
        env.close()
    rows = []
    for name, values in seconds.items():
        per_round = steps * (num_envs if name in vectors else 1)
        rates = [per_round / v for v in values]
        rows.append({"variant": name, "steps_per_s": per_round * len(values) / sum(values), "rounds": rates})
    return rows


def write_table(rows: list[dict], out: Path, command: str, task: str, num_envs: int) -> None:
    by_name = {row["variant"]: row["steps_per_s"] for row in rows}
    single_raw = by_name["raw env class, same seeded positions as ours"]
    vector_raw = by_name[f"raw env class, AsyncVectorEnv x{num_envs}"]
    single_ours = by_name[f"embodied.make(metaworld/{task})"]
    vector_ours = by_name[f"embodied.make_vec async x{num_envs}"]
    lines = [
        "# Env throughput: wrapped Meta-World against raw Meta-World",
        "",
        f"Made by `{command}` on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
        f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}. Random actions, reset at truncation "
        "(500 steps); the variants take turns, one 500-step episode each per round, so drift in "
        "machine speed hits all alike.",
        "",
        "| variant | env steps/s (all rounds) | slowest and fastest round |",
        "|---|---:|---|",
    ]
    for row in rows:
        rounds = f"{min(row['rounds']):.0f} – {max(row['rounds']):.0f}"
        lines.append(f"| {row['variant']} | {row['steps_per_s']:.0f} | {rounds} |")
    lines += [
        "",
        f"Overhead of our wrapper over the raw env class: single env "
        f"{100 * (single_raw / single_ours - 1):+.1f} %, {num_envs}-process vector env "
        f"{100 * (vector_raw / vector_ours - 1):+.1f} % (time per step; target under 5 %).",
        "",
    ]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "steps_per_s", "per_round"])
        for row in rows:
            writer.writerow([row["variant"], f"{row['steps_per_s']:.1f}", " ".join(f"{v:.1f}" for v in row["rounds"])])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="push-v3")
    parser.add_argument("--rounds", type=int, default=20, help="episodes of 500 steps per variant")
    parser.add_argument("--num-envs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/env_throughput.md"))
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.env_throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = run(args.task, args.rounds, args.num_envs)
    write_table(rows, args.out, command.strip(), args.task, args.num_envs)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
