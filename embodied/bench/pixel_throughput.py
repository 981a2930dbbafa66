"""Env steps/s from pixels: our MuJoCo and Meta-World envs, as authored and with
``render_quality="fast"``, against Gymnasium's own pixel observations, same run.

    python -m embodied.bench.pixel_throughput --image-size 32 --rounds 5 --out results/pixel_throughput.md

The baseline is what a user would otherwise write: the env made by ``gym.make`` (Meta-World's
own ``"Meta-World/MT1"`` entry) with ``render_mode="rgb_array"`` at the frame size, under
Gymnasium's ``AddRenderObservation(render_only=True)``. Every variant steps random actions,
one frame per step, resetting where an episode ends; rounds are interleaved so drift in
machine speed hits all alike. On a machine without a GPU, MuJoCo draws through Mesa's software
renderer, where shadows, reflections and anti-aliasing cost most of a frame
(:mod:`embodied.envs.mjrender`).
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

TASKS = ("mujoco/Walker2d-v5", "mujoco/HalfCheetah-v5", "mujoco/Reacher-v5", "metaworld/reach-v3")
VARIANTS = ("gymnasium", "embodied", "embodied fast")


def make(variant: str, env_id: str, image_size: int) -> gym.Env:
    import embodied

    suite, task = env_id.split("/", 1)
    if variant == "gymnasium":
        size = {"width": image_size, "height": image_size, "render_mode": "rgb_array"}
        if suite == "metaworld":
            import metaworld  # noqa: F401  (registers Meta-World/MT1)

            env = gym.make("Meta-World/MT1", env_name=task, camera_name="corner2", disable_env_checker=True, **size)
        else:
            env = gym.make(task, disable_env_checker=True, **size)
        return gym.wrappers.AddRenderObservation(env, render_only=True)
    quality = "fast" if variant == "embodied fast" else "full"
    return embodied.make(env_id, obs="pixels", image_size=image_size, render_quality=quality)


def steps_per_second(env: gym.Env, steps: int, seed: int) -> float:
    rng = np.random.default_rng(seed)
    env.reset(seed=seed)
    # Gymnasium's renderer never makes its GL context current again once another env has made
    # one (ours do, per frame: embodied.envs.mjrender); only this env draws until the next call.
    base = env.unwrapped
    renderer = base.sim.mujoco_renderer if hasattr(base, "sim") else base.mujoco_renderer  # ours wraps Meta-World's
    for viewer in renderer._viewers.values():
        viewer.make_context_current()
    low, high = env.action_space.low, env.action_space.high
    start = time.perf_counter()
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
        if terminated or truncated:
            env.reset()
    return steps / (time.perf_counter() - start)


def run(tasks: list[str], image_size: int, rounds: int, seconds: float) -> list[dict]:
    """Per task, each variant's steps/s in each round; a round gives every variant about
    ``seconds`` of stepping (sized from a first short probe)."""
    rows = []
    for env_id in tasks:
        envs = {variant: make(variant, env_id, image_size) for variant in VARIANTS}
        frames = {variant: env.reset(seed=0)[0] for variant, env in envs.items()}
        for variant, frame in frames.items():  # a sanity check that each draws a scene, not a blank
            if np.asarray(frame).shape != (image_size, image_size, 3) or np.asarray(frame).std() < 5:
                raise RuntimeError(f"{env_id} {variant}: frame of shape {np.shape(frame)} looks blank")
        steps = {variant: max(20, int(seconds * steps_per_second(env, 20, 0))) for variant, env in envs.items()}
        rates = {variant: [] for variant in VARIANTS}
        for round_index in range(rounds):
            for variant, env in envs.items():
                rates[variant].append(steps_per_second(env, steps[variant], seed=round_index))
            print(env_id, f"round {round_index + 1}/{rounds}",
                  ", ".join(f"{v} {r[-1]:.0f}/s" for v, r in rates.items()), flush=True)  # fmt: skip
        for env in envs.values():
            env.close()
        for variant, values in rates.items():
            rows.append({"env": env_id, "variant": variant, "median": float(np.median(values)), "rounds": values})
    return rows


def write_table(rows: list[dict], out: Path, command: str, image_size: int) -> None:
    median = {(row["env"], row["variant"]): row["median"] for row in rows}
    lines = [
        "# Env steps/s from pixels: ours, as authored and fast, against Gymnasium's pixel observations",
        "",
        f"Made by `{command}` on {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, no GPU "
        f"(MuJoCo draws through Mesa's software renderer, MUJOCO_GL={os.environ.get('MUJOCO_GL')}), "
        f"Python {sys.version.split()[0]}, {time.strftime('%Y-%m-%d')}. {image_size}x{image_size} RGB frames, one per "
        "step, random actions, reset where an episode ends; variants take turns each round. Gymnasium: "
        '`gym.make(task, render_mode="rgb_array", width, height)` (Meta-World\'s `"Meta-World/MT1"`) under '
        '`AddRenderObservation(render_only=True)`. Ours: `embodied.make(id, obs="pixels", image_size)`, '
        'and with `render_quality="fast"` (no shadows, reflections or anti-aliasing; same physics).',
        "",
        "| env | Gymnasium | ours | ours, fast | fast / Gymnasium |",
        "|---|---:|---:|---:|---:|",
    ]
    for env_id in dict.fromkeys(row["env"] for row in rows):
        raw, ours, fast = (median[env_id, v] for v in VARIANTS)
        lines.append(f"| {env_id} | {raw:.0f} | {ours:.0f} | {fast:.0f} | {fast / raw:.1f}x |")
    lines += ["", "Median over rounds, env steps/s; every round's rate is in the CSV beside this file.", ""]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    with open(out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["env", "variant", "median_steps_per_s", "per_round"])
        for row in rows:
            writer.writerow([row["env"], row["variant"], f"{row['median']:.1f}",
                             " ".join(f"{v:.1f}" for v in row["rounds"])])  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=list(TASKS))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=3.0, help="stepping per variant per round")
    parser.add_argument("--out", type=Path, default=Path("results/pixel_throughput.md"))
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.pixel_throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = run(args.envs, args.image_size, args.rounds, args.seconds)
    write_table(rows, args.out, command.strip(), args.image_size)
    print(args.out.read_text())


if __name__ == "__main__":
    main()
