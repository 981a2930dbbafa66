"""Text2Reward's Meta-World experiment: SAC with a reward program, with Meta-World's own
dense reward, and with the sparse success reward, several seeds, one command.

    python -m embodied.bench.text2reward --tasks reach-v3 push-v3 drawer-open-v3 \
        --rewards program env sparse --seeds 0 1 2 --steps 200000 --workers 2

Every (task, reward, seed) is one ``embodied train`` run of ``configs/sac/metaworld-<task>.yaml``
(Text2Reward's SAC settings) under ``--run-dir``, with the reward replaced:

- ``program``: the library's program for the task (``envs/text2reward/library/metaworld/<task>.py``),
  plugged in with ``env.options.reward_code`` (what ``embodied train --reward-code`` does);
- ``env``: Meta-World's own dense reward;
- ``sparse``: 1 on steps where the task is solved, else 0 (``env.options.reward: sparse``).

Each run is evaluated ``--evals`` times on ``--eval-episodes`` episodes (success rate: an
episode succeeds if ``info['success']`` was ever 1). A rerun skips finished runs and
resumes unfinished ones from their last checkpoint. ``--set KEY=VALUE`` overrides every
run's config (e.g. ``--set algo.learning_starts=100`` for a quick check).

Writes a Markdown table (final success rate, mean ± std over seeds), a CSV of every
evaluation, a plot of success rate against env steps, and the plug's cost: env steps/s of
training with the program against training with Meta-World's reward (same invocation,
same settings), and the program's own time per call, one call per env step (state read,
sandbox round trip, the program).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from embodied.bench import mean_std, plot_mean_std, run_trials, save_figure  # noqa: E402
from embodied.bench.offline_rl import read_evals  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
REWARDS = {
    "program": "Text2Reward library program",
    "env": "Meta-World's dense reward",
    "sparse": "sparse success reward",
}


def program_path(task: str) -> Path:
    from embodied.rewards.text2reward.prompt import library_root

    path = library_root() / "metaworld" / f"{task}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no library reward program for {task}: {path}")
    return path


def trial_config(task: str, reward: str, seed: int, args) -> dict:
    """The run's raw config: the task's SAC config, the reward choice, the benchmark's schedule."""
    from embodied.run.config import apply_overrides

    import yaml

    path = ROOT / "configs" / "sac" / f"metaworld-{task.removesuffix('-v3')}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no SAC config for {task}: {path}")
    raw = yaml.safe_load(path.read_text())
    options = dict(raw.get("env", {}).get("options") or {})
    if reward == "program":
        options["reward_code"] = str(program_path(task))
    elif reward == "sparse":
        options["reward"] = "sparse"
    raw.setdefault("env", {})["options"] = options
    raw["train"] = {
        **raw.get("train", {}),
        "steps": args.steps, "seed": seed, "eval_every": args.steps // args.evals,
        "eval_episodes": args.eval_episodes, "log_every": max(1, args.steps // 50),
        "checkpoint_every": args.steps // args.checkpoints, "run_dir": str(args.run_dir),
        "name": f"sac-{task}-{reward}-seed{seed}", "progress": False, "device": "cpu",
    }  # fmt: skip
    return apply_overrides(raw, args.set or [])  # last, so --set wins over everything above


def run_trial(trial: dict) -> dict:
    """One run (in a worker process with one torch thread): skipped if finished, resumed if started."""
    import shutil

    import torch

    from embodied.run.checkpoint import latest
    from embodied.run.config import parse
    from embodied.run.fit import run_name, train

    torch.set_num_threads(1)
    config = parse(trial["config"])
    run_dir = Path(config.train.run_dir) / run_name(config)
    eval_csv = run_dir / "eval.csv"
    finished = eval_csv.exists() and read_evals(eval_csv) and read_evals(eval_csv)[-1]["step"] == config.train.steps
    if not finished:
        try:
            checkpointed = latest(run_dir).exists()
        except FileNotFoundError:
            checkpointed = False
        if checkpointed:
            train(resume=run_dir)
        else:  # killed before its first checkpoint: start again
            shutil.rmtree(run_dir, ignore_errors=True)
            train(config)
    return {key: trial[key] for key in ("task", "reward", "seed")} | {
        "run_dir": str(run_dir), "evals": read_evals(eval_csv), **throughput(run_dir),
    }  # fmt: skip


def stale(saved: Path, config) -> bool:
    """Whether the run saved at ``saved`` was made with settings other than ``config``'s."""
    import yaml

    from embodied.run.config import ConfigError, parse

    try:
        return parse(yaml.safe_load(saved.read_text())).to_dict() != config.to_dict()
    except (ConfigError, yaml.YAMLError, TypeError, AttributeError):
        return True


def throughput(run_dir: Path) -> dict[str, float]:
    """Training env steps/s over the whole run (evaluation left out), and the program's ms per step."""
    rows = read_evals(run_dir / "time.csv")
    steps, seconds, program_ms = 0.0, 0.0, []
    previous = 0.0
    for row in rows:
        window = row["step"] - previous
        previous = row["step"]
        if row.get("time/env_steps_per_second", 0) > 0:
            steps += window
            seconds += window / row["time/env_steps_per_second"]
        if "time/reward_code_ms_per_call" in row:
            program_ms.append((window, row["time/reward_code_ms_per_call"]))
    out = {"steps_per_second": steps / seconds if seconds else float("nan")}
    if program_ms:
        weights, values = zip(*program_ms)
        out["program_ms_per_call"] = float(np.average(values, weights=weights))
    train_rows = read_evals(run_dir / "train.csv")
    if train_rows and "train/reward_code_errors" in train_rows[-1]:
        out["program_errors"] = train_rows[-1]["train/reward_code_errors"]
    return out


def env_loop_rate(task: str, reward: str, steps: int) -> float:
    """Env steps/s of the bare env (random actions, no learner) with ``reward``'s wrapper."""
    from embodied.envs import make

    options = {"reward_code": str(program_path(task))} if reward == "program" else {}
    env = make(f"metaworld/{task}", **options)
    try:
        env.reset(seed=0)
        env.action_space.seed(0)
        start = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = env.step(env.action_space.sample())
            if terminated or truncated:
                env.reset()
        return steps / (time.perf_counter() - start)
    finally:
        env.close()


def plug_speed(args) -> list[dict]:
    """The plug's cost measured in this one process, one torch thread, nothing else running
    from this benchmark: for each task, ``--speed-repeats`` rounds that each time the bare env
    loop and then a short SAC training run (``--speed-steps`` env steps, updates from step
    1,000) with Meta-World's reward and with the program, alternating so drift hits both."""
    import shutil
    import tempfile

    import torch

    from embodied.run.config import parse
    from embodied.run.fit import run_name, train

    torch.set_num_threads(1)
    rows = []
    schedule = argparse.Namespace(**{**vars(args), "steps": args.speed_steps, "evals": 1, "eval_episodes": 1, "checkpoints": 1})
    with tempfile.TemporaryDirectory(prefix="t2r-speed-") as scratch:
        schedule.run_dir = Path(scratch)
        for task in args.tasks:
            rates: dict[str, dict[str, list[float]]] = {"env": {"loop": [], "sac": []}, "program": {"loop": [], "sac": []}}
            for _ in range(args.speed_repeats):
                for reward in ("env", "program"):
                    rates[reward]["loop"].append(env_loop_rate(task, reward, args.speed_steps))
                    raw = trial_config(task, reward, 0, schedule)
                    raw["algo"]["learning_starts"] = min(1000, args.speed_steps // 2)
                    config = parse(raw)
                    train(config)
                    run_dir = Path(config.train.run_dir) / run_name(config)
                    rates[reward]["sac"].append(throughput(run_dir)["steps_per_second"])
                    shutil.rmtree(run_dir, ignore_errors=True)
            rows.append({"task": task, **{f"{reward}_{what}": float(np.median(values))
                                           for reward, whats in rates.items() for what, values in whats.items()}})
            print(f"plug speed {task}: {rows[-1]}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["reach-v3", "push-v3", "drawer-open-v3"])
    parser.add_argument("--rewards", nargs="+", default=list(REWARDS), choices=list(REWARDS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200_000, help="env steps per run")
    parser.add_argument("--evals", type=int, default=10, help="evaluations per run")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--checkpoints", type=int, default=2,
                        help="checkpoints per run, to resume a killed benchmark (each holds the policy; the latest also the replay buffer)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override in every run's config")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-text2reward"))
    parser.add_argument("--out", type=Path, default=Path("results/text2reward.md"))
    parser.add_argument("--speed-steps", type=int, default=5000,
                        help="env steps per timing run of the plug's cost (0: skip that measurement)")
    parser.add_argument("--speed-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.text2reward " + " ".join(argv if argv is not None else sys.argv[1:])
    for key in ("evals", "checkpoints"):
        if getattr(args, key) < 1 or args.steps % getattr(args, key):
            raise SystemExit(f"--steps {args.steps} must be a positive multiple of --{key} {getattr(args, key)}")

    trials = [
        {"task": task, "reward": reward, "seed": seed, "config": trial_config(task, reward, seed, args)}
        for task in args.tasks for reward in args.rewards for seed in args.seeds
    ]  # fmt: skip
    from embodied.run.config import ConfigError, parse

    from embodied.run.fit import run_name

    for trial in trials:  # a bad override or schedule, or an earlier run with other settings, fails here
        try:
            config = parse(trial["config"])
        except ConfigError as error:
            raise SystemExit(f"{trial['task']} {trial['reward']}: {error}") from None
        saved = Path(config.train.run_dir) / run_name(config) / "config.yaml"
        if saved.exists() and stale(saved, config):
            raise SystemExit(f"{saved.parent} holds a run made with other settings; it is not resumed or "
                             f"overwritten: give another --run-dir, or remove it")  # fmt: skip
    results = run_trials(run_trial, trials, args.workers, lambda r: (
        f"{r['task']} {r['reward']} seed {r['seed']}: success {r['evals'][-1].get('eval/success_rate', float('nan')):.2f}, "
        f"{r['steps_per_second']:.0f} env steps/s"))
    speed = plug_speed(args) if args.speed_steps > 0 and "program" in args.rewards and "env" in args.rewards else []
    write(results, speed, args, command.strip())
    print(args.out.read_text())


def write(results: list[dict], speed: list[dict], args, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault((result["task"], result["reward"]), []).append(result)
    lines = [
        "# Text2Reward on Meta-World: SAC with a reward program, Meta-World's reward, and the sparse reward",
        "",
        f"Made by `{command}` ({time.strftime('%Y-%m-%d')}, CPU, one torch thread per run, {args.workers} "
        f"runs at a time). SAC (stable-baselines3) with Text2Reward's settings (`configs/sac/metaworld-<task>.yaml`), "
        f"{args.steps} env steps; success rate of the deterministic policy over {args.eval_episodes} evaluation "
        f"episodes at the end, mean ± std over seeds {', '.join(map(str, args.seeds))}. Rewards: "
        + "; ".join(f"`{key}`: {REWARDS[key]}" for key in args.rewards) + ".",
        "",
        "| task | " + " | ".join(args.rewards) + " |",
        "|---|" + "---:|" * len(args.rewards),
    ]
    for task in args.tasks:
        cells = [mean_std([r["evals"][-1].get("eval/success_rate", np.nan) for r in groups.get((task, reward), [])])
                 for reward in args.rewards]  # fmt: skip
        lines.append(f"| {task} | " + " | ".join(cells) + " |")

    if speed:
        lines += [
            "",
            "## The plug's cost",
            "",
            f"Measured after the runs above, in one process with one torch thread and nothing else of this "
            f"benchmark running: per task, {args.speed_repeats} rounds alternating Meta-World's reward and the "
            f"program, each round timing the bare env loop (random actions) and a short SAC training run "
            f"({args.speed_steps} env steps, the same settings, updates from step "
            f"{min(1000, args.speed_steps // 2)}), median over rounds. Evaluation is left out. The program's "
            "cost per env step is reading the simulator's state, the sandbox round trip and the program.",
            "",
            "| task | env loop steps/s, Meta-World reward | env loop, program | SAC training steps/s, Meta-World reward "
            "| SAC training, program | training slowdown | program ms per env step |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in speed:
            cost_ms = 1000 * (1 / row["program_loop"] - 1 / row["env_loop"])
            lines.append(f"| {row['task']} | {row['env_loop']:.0f} | {row['program_loop']:.0f} | {row['env_sac']:.1f} "
                         f"| {row['program_sac']:.1f} | {100 * (row['env_sac'] / row['program_sac'] - 1):+.1f} % "
                         f"| {cost_ms:.3f} |")  # fmt: skip
        errors = sum(int(r.get("program_errors", 0)) for r in results if r["reward"] == "program")
        lines += ["", f"Reward-program errors over all the training runs above: {errors}."]
    lines += ["", f"![success rate against env steps]({args.out.with_suffix('.png').name})", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))

    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "reward", "seed", "step", "success_rate", "return", "train_steps_per_second"])
        for result in sorted(results, key=lambda r: (r["task"], r["reward"], r["seed"])):
            for row in result["evals"]:
                writer.writerow([result["task"], result["reward"], result["seed"], int(row["step"]),
                                 row.get("eval/success_rate", ""), row.get("eval/return", ""),
                                 f"{result['steps_per_second']:.2f}"])  # fmt: skip

    figure, axes = plt.subplots(1, len(args.tasks), figsize=(3.4 * len(args.tasks), 3), squeeze=False, sharey=True)
    for axis, task in zip(axes[0], args.tasks):
        for reward in args.rewards:
            runs = groups.get((task, reward), [])
            if not runs:
                continue
            plot_mean_std(axis, runs, lambda row: row.get("eval/success_rate", np.nan), reward, markersize=3)
        axis.set_title(task, fontsize=9)
        axis.set_xlabel("env steps")
        axis.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("success rate")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
