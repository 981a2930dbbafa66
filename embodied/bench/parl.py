"""PARL's samples-to-success against the two-stage preference-then-RL pipeline, and against
online preference learning that ignores the policy's dependence on the reward (the direct
term only): section (c) of results/language_vlm_bilevel.md.

    python -m embodied.bench.parl --env nav/open-v0 --seeds 0 1 2 --iterations 150 --workers 2

Each finished run is saved under ``--run-dir``, so a rerun redoes only what is missing.
Every variant asks the same scripted teacher (B-Pref's oracle on the env's true reward)
the same number of queries and uses the same policy learner; env steps of every rollout
count, the two-stage pipeline's query-collection rollouts included.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from embodied.bench import cached, mean_std, plot_mean_std, run_trials, save_figure, write_section
from embodied.bench.vlm_feedback import TITLE

VARIANTS = {"a-parl": "A-PARL (bilevel hypergradient)", "direct": "online, direct term only",
            "two-stage": "two-stage: preferences, then RL",
            "true-reward": "reference: the same RL on the true reward (no preferences)"}  # fmt: skip


def run_trial(trial: dict) -> dict:
    settings = {k: v for k, v in trial.items() if k != "cache"}
    return cached(trial["cache"], settings, lambda: _run(trial))


def _run(trial: dict) -> dict:
    import torch

    from embodied.algos import parl

    torch.set_num_threads(1)
    config = parl.PARLConfig(seed=trial["seed"], horizon=trial["horizon"],
                             hypergradient="a-parl" if trial["variant"] == "a-parl" else "direct")  # fmt: skip
    start = time.perf_counter()
    if trial["variant"] == "two-stage":
        rows = parl.two_stage(trial["env"], config, trial["iterations"], eval_every=trial["eval_every"])
    elif trial["variant"] == "true-reward":
        rows = parl.true_reward(trial["env"], config, trial["iterations"], eval_every=trial["eval_every"])
    else:
        rows = parl.train(trial["env"], config, trial["iterations"], eval_every=trial["eval_every"])
    for row in rows:
        row["step"] = row["env_steps"]
    return {**{k: trial[k] for k in ("variant", "seed")}, "evals": rows, "seconds": time.perf_counter() - start}


def slug(env_id: str) -> str:
    """``nav/open-v0`` → ``nav-open-v0``: each env gets its own section, files and saved runs."""
    return env_id.replace("/", "-")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="nav/open-v0")
    parser.add_argument("--horizon", type=int, default=60)
    parser.add_argument("--variants", nargs="+", default=["a-parl", "direct", "two-stage"], choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--iterations", type=int, default=150)
    parser.add_argument("--eval-every", type=int, default=10)
    parser.add_argument("--threshold", type=float, default=0.5, help="success rate that counts as solved")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/language_vlm_bilevel.md"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-parl"),
                        help="each finished run is saved here; a rerun with the same settings reads it")
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.parl " + " ".join(argv if argv is not None else sys.argv[1:])
    trials = [{"variant": v, "seed": s, "env": args.env, "horizon": args.horizon, "iterations": args.iterations,
               "eval_every": args.eval_every, "cache": str(args.run_dir / f"{slug(args.env)}-{v}-seed{s}.json")}
              for v in args.variants for s in args.seeds]  # fmt: skip
    results = run_trials(run_trial, trials, args.workers, lambda r: (
        f"{r['variant']} seed {r['seed']}: success {r['evals'][-1]['success_rate']:.2f} after "
        f"{r['evals'][-1]['env_steps']} env steps ({r['seconds']:.0f} s)"))  # fmt: skip
    write(results, args, command.strip())
    print(args.out.read_text())


def write(results: list[dict], args, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embodied.algos.parl import PARLConfig, samples_to_success

    config = PARLConfig()
    stem = f"{args.out.stem}_parl_{slug(args.env)}"
    plot = args.out.with_name(stem + ".png")
    lines = [
        f"Made by `{command}`",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU, one torch thread per run, seeds "
        f"{', '.join(map(str, sorted({r['seed'] for r in results})))} (mean ± std). `{args.env}` with fixed "
        f"{args.horizon}-step episodes; {config.envs} episodes per rollout; an on-policy policy gradient with a "
        f"learned baseline as the lower level ({config.inner_steps} step per rollout), {config.queries} oracle pairs "
        f"per iteration (whole episodes; the two episodes of a pair start from the same reset), {config.reward_steps} reward steps per iteration, {args.iterations} "
        "iterations. Samples to success: env steps at the first evaluation (16 episodes, mean action) with success "
        f"rate ≥ {args.threshold}; runs that never got there count as the last evaluation's steps and are "
        "shown as `n/3 solved`.",
        "",
        "| variant | solved | samples to success | final success rate | final return |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in args.variants:
        runs = [r for r in results if r["variant"] == variant]
        steps = [samples_to_success(r["evals"], args.threshold) for r in runs]
        solved = sum(np.isfinite(steps))
        capped = [s if np.isfinite(s) else r["evals"][-1]["env_steps"] for s, r in zip(steps, runs)]
        # Env steps are whole numbers; when no run got there the budget is only a lower bound.
        reached = mean_std(capped, digits=0) if solved else f"> {int(max(capped)):,} (none solved)"
        lines.append(f"| {VARIANTS[variant]} | {solved}/{len(runs)} | {reached} | "
                     f"{mean_std([r['evals'][-1]['success_rate'] for r in runs])} | "
                     f"{mean_std([r['evals'][-1]['return'] for r in runs])} |")  # fmt: skip
    lines += ["", f"![success rate against env steps]({plot.name})"]
    write_section(args.out, TITLE, f"(c) PARL on {args.env}: bilevel policy alignment against preference-then-RL", lines)
    with open(args.out.with_name(stem + ".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "seed", "iteration", "env_steps", "queries", "success_rate", "return"])
        for r in results:
            for row in r["evals"]:
                writer.writerow([r["variant"], r["seed"], row["iteration"], row["env_steps"], row["queries"],
                                 row["success_rate"], f"{row['return']:.3f}"])  # fmt: skip
    figure, axis = plt.subplots(figsize=(5, 3))
    for variant in args.variants:
        runs = [r for r in results if r["variant"] == variant]
        plot_mean_std(axis, runs, lambda row: row["success_rate"], VARIANTS[variant], markersize=3)
    axis.set_xlabel("env steps")
    axis.set_ylabel("success rate")
    axis.set_ylim(-0.05, 1.05)
    axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, plot)


if __name__ == "__main__":
    main()
