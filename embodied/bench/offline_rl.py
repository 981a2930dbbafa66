"""Offline RL on Meta-World datasets: BC, IQL and MTM, several seeds, one command.

    python -m embodied.bench.offline_rl --tasks push-v3 drawer-open-v3 button-press-v3 \
        --qualities medium mixed --algos bc iql mtm --seeds 0 1 2 --steps 10000 --workers 2

For every task and quality the dataset ``metaworld-<task>-<quality>`` is collected once
(``--episodes`` episodes, seeds from 0); every (task, quality, algorithm, seed) is one
``embodied.run.fit.train`` run under ``--run-dir``, evaluated ``--evals`` times on
``--eval-episodes`` episodes. Finished runs are skipped on a rerun. Writes a Markdown
table (final success rate, mean ± std over seeds, and the dataset's own success rate),
a CSV of every evaluation, and a plot of success rate against updates.
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402


def run_trial(trial: dict) -> dict:
    """One training run (in a worker process with one torch thread)."""
    import torch

    from embodied.run.config import parse
    from embodied.run.fit import run_name, train

    torch.set_num_threads(1)
    config = parse(trial["config"])
    run_dir = Path(config.train.run_dir) / run_name(config)
    eval_csv = run_dir / "eval.csv"
    finished = eval_csv.exists() and str(config.train.steps) in eval_csv.read_text().splitlines()[-1].split(",")[0]
    if not finished:
        if run_dir.exists():
            import shutil

            shutil.rmtree(run_dir)  # an unfinished run from an earlier attempt: start it again
        train(config)
    return {**trial, "run_dir": str(run_dir), "evals": read_evals(eval_csv)}


def read_evals(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def trial_config(task, quality, algo, seed, args) -> dict:
    algo_section = {"name": algo}
    return {
        "algo": algo_section,
        "env": {"id": f"metaworld/{task}"},
        "data": {"name": f"metaworld-{task.removesuffix('-v3')}-{quality}"},
        "train": {
            "steps": args.steps, "batch_size": args.batch_size, "seed": seed,
            "eval_every": max(1, args.steps // args.evals), "eval_episodes": args.eval_episodes,
            "log_every": max(1, args.steps // 20), "checkpoint_every": args.steps,
            "run_dir": str(args.run_dir), "progress": False, "device": "cpu",
        },
    }  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    from embodied.data import dataset_path
    from embodied.data.collect import collect
    from embodied.data.episodes import dataset_info

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["push-v3", "drawer-open-v3", "button-press-v3"])
    parser.add_argument("--qualities", nargs="+", default=["medium", "mixed"])
    parser.add_argument("--algos", nargs="+", default=["bc", "iql", "mtm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=100, help="episodes per dataset")
    parser.add_argument("--steps", type=int, default=10_000, help="gradient updates per run")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--evals", type=int, default=4, help="evaluations per run")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-offline-rl"))
    parser.add_argument("--out", type=Path, default=Path("results/offline_rl.md"))
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.offline_rl " + " ".join(argv if argv is not None else sys.argv[1:])

    datasets = {}
    for task in args.tasks:
        for quality in args.qualities:
            name = f"metaworld-{task.removesuffix('-v3')}-{quality}"
            if not (dataset_path(name) / "data" / "metadata.json").exists():
                collect(f"metaworld/{task}", args.episodes, name=name, quality=quality, workers=args.workers)
            datasets[(task, quality)] = dataset_info(name)
    trials = [
        {"task": t, "quality": q, "algo": a, "seed": s, "config": trial_config(t, q, a, s, args)}
        for t in args.tasks for q in args.qualities for a in args.algos for s in args.seeds
    ]  # fmt: skip
    results = []
    start = time.perf_counter()
    with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_trial, trial) for trial in trials]
        for future in as_completed(futures):
            result = future.result()
            results.append(result)
            final = result["evals"][-1]
            print(f"[{len(results)}/{len(trials)} {time.perf_counter() - start:.0f}s] {result['task']} "
                  f"{result['quality']} {result['algo']} seed {result['seed']}: "
                  f"success {final.get('eval/success_rate', float('nan')):.2f}", flush=True)  # fmt: skip
    write(results, datasets, args, command.strip())
    print(args.out.read_text())


def write(results: list[dict], datasets: dict, args, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault((result["task"], result["quality"], result["algo"]), []).append(result)
    lines = [
        "# Offline RL on Meta-World: BC, IQL and MTM",
        "",
        f"Made by `{command}` ({time.strftime('%Y-%m-%d')}, CPU, one torch thread per run). "
        f"Datasets of {args.episodes} episodes each (quality levels: see `embodied.data.collect`); "
        f"{args.steps} gradient updates, batch {args.batch_size}; success rate of the final policy over "
        f"{args.eval_episodes} evaluation episodes, mean ± std over seeds {', '.join(map(str, args.seeds))}.",
        "",
        "| task | data | data success | " + " | ".join(args.algos) + " |",
        "|---|---|---:|" + "---:|" * len(args.algos),
    ]
    for task in args.tasks:
        for quality in args.qualities:
            cells = []
            for algo in args.algos:
                finals = [r["evals"][-1].get("eval/success_rate", np.nan) for r in groups.get((task, quality, algo), [])]
                cells.append(f"{np.mean(finals):.2f} ± {np.std(finals):.2f}" if finals else "—")
            data_success = datasets[(task, quality)].get("success_rate", float("nan"))
            lines.append(f"| {task} | {quality} | {data_success:.2f} | " + " | ".join(cells) + " |")
    lines += ["", f"![success rate against updates]({args.out.with_suffix('.png').name})", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))

    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "quality", "algo", "seed", "step", "success_rate", "return"])
        for result in sorted(results, key=lambda r: (r["task"], r["quality"], r["algo"], r["seed"])):
            for row in result["evals"]:
                writer.writerow([result["task"], result["quality"], result["algo"], result["seed"], int(row["step"]),
                                 row.get("eval/success_rate", ""), row.get("eval/return", "")])  # fmt: skip

    panels = [(t, q) for t in args.tasks for q in args.qualities]
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False, sharey=True)
    for axis, (task, quality) in zip(axes[0], panels):
        for algo in args.algos:
            runs = groups.get((task, quality, algo), [])
            if not runs:
                continue
            steps = [row["step"] for row in runs[0]["evals"]]
            curves = np.array([[row.get("eval/success_rate", np.nan) for row in r["evals"]] for r in runs])
            mean, std = curves.mean(0), curves.std(0)
            axis.plot(steps, mean, marker="o", label=algo)
            axis.fill_between(steps, mean - std, mean + std, alpha=0.2)
        axis.set_title(f"{task} / {quality}", fontsize=9)
        axis.set_xlabel("updates")
        axis.set_ylim(-0.05, 1.05)
    axes[0][0].set_ylabel("success rate")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.out.with_suffix(".png"), dpi=110)


if __name__ == "__main__":
    main()
