"""Rewards from a VLM's eyes: VLM-labelled preferences -> reward model -> IQL, against IQL
on the true reward, with an oracle-backed fake VLM at several noise levels, one command.

    python -m embodied.bench.vlm_feedback --mistakes 0 0.2 0.4 --seeds 0 1 2 --workers 2

The dataset ``--dataset`` is collected from ``--env`` with frames (``obs=state+pixels``,
``--image-size``) by the scripted policy with ``--noise``. For each mistake rate the fake
VLM (:class:`embodied.rewards.vlm.OracleVLM`, answering from the true reward of the frame
it is shown, "cannot tell" within ``--margin``) labels ``--pairs`` pairs of segments
through the real two-stage prompt, client and cache; a reward model of the state learns
from the decided labels; the state-only copy of the dataset is relabelled with it and
IQL learns the policy. ``true reward``: IQL on the env's own reward. Writes part (a) of
``results/language_vlm_bilevel.md`` (table, CSV of every evaluation, plot).
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

from embodied.bench import mean_std, plot_mean_std, run_trials, save_figure, write_section  # noqa: E402
from embodied.bench.offline_rl import train_once  # noqa: E402

REWARD_MODEL = {"members": 3, "hidden_dims": (256, 256), "batch_size": 32, "inputs": "state"}


def policy_config(data: str, seed: int, args, name: str, reward_scale: str = "auto") -> dict:
    return {
        "algo": {"name": "iql", "hidden_dims": [256, 256], "reward_scale": reward_scale},
        "env": {"id": args.env},
        "data": {"name": data},
        "train": {"steps": args.steps, "batch_size": 256, "seed": seed, "eval_every": max(1, args.steps // args.evals),
                  "eval_episodes": args.eval_episodes, "log_every": max(1, args.steps // 20),
                  "checkpoint_every": args.steps, "run_dir": str(args.run_dir), "progress": False, "device": "cpu",
                  "name": name},
    }  # fmt: skip


def state_copy(dataset: str) -> str:
    """The dataset without its frames (what IQL on the true reward trains on)."""
    from embodied.data import dataset_path
    from embodied.data.episodes import dataset_spaces, read_episodes, write_dataset

    name = f"{dataset}-state"
    if not (dataset_path(name) / "data" / "metadata.json").exists():
        spaces = dataset_spaces(dataset)
        spaces["observation_space"] = spaces["observation_space"]["state"]

        def episodes():
            for episode in read_episodes(dataset):
                episode.observations = episode.observations["state"]
                yield episode

        write_dataset(name, episodes(), **spaces, algorithm_name="drop-frames", description=f"{dataset}, state only")
    return name


def run_trial(trial: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    from embodied.data import load_dataset
    from embodied.data.preferences import StepScores
    from embodied.rewards import vlm
    from embodied.rewards.models import RewardModelConfig, fit_reward_model, relabel_dataset
    from embodied.rewards.teachers import agreement

    args, seed, mistake = trial["args"], trial["seed"], trial["mistake"]
    out = {"variant": trial["variant"], "seed": seed}
    if mistake is None:
        data = state_copy(args.dataset)
        # The env's reward, scaled by returns as "auto" would (named, so earlier runs still count).
        run_dir, evals = train_once(policy_config(data, seed, args, f"iql-{data}-true-seed{seed}", "returns"))
        return out | {"evals": evals, "run_dir": str(run_dir)}
    oracle = vlm.OracleVLM(vlm.frame_rewards(args.dataset), mistake=mistake, margin=args.margin, seed=seed)
    cache = vlm.LabelCache(Path(args.run_dir) / "vlm-cache" / f"mistake{mistake}-seed{seed}.jsonl")
    teacher = vlm.VLMTeacher(oracle, args.task, cache)
    labels = vlm.label_with_vlm(args.dataset, teacher, args.pairs, args.segment_len, seed=seed)
    dataset = load_dataset(args.dataset).observation_view("state")
    model, _ = fit_reward_model(dataset, labels, RewardModelConfig(steps=args.reward_steps, **REWARD_MODEL), seed=seed)
    relabelled = f"{args.dataset}-vlm{mistake}-seed{seed}"
    relabel_dataset(args.dataset, model, relabelled, overwrite=True, observation_key="state")
    run_dir, evals = train_once(policy_config(relabelled, seed, args, f"iql-{relabelled}"))
    return out | {"evals": evals, "run_dir": str(run_dir), "labels": len(labels),
                  "cannot_tell": labels.info["cannot_tell"], "label_agreement": agreement(labels, StepScores.read(args.dataset))}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="nav/rooms-v0")
    parser.add_argument("--task", default="go to the goal marked by the magenta ring")
    parser.add_argument("--dataset", default="nav-rooms-frames")
    parser.add_argument("--episodes", type=int, default=100)
    parser.add_argument("--noise", type=float, default=5.0, help="scripted policy's action noise when collecting (5: about half succeed)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--mistakes", type=float, nargs="*", default=[0.0, 0.2, 0.4], help="fake VLM's error rates")
    parser.add_argument("--margin", type=float, default=0.01, help="fake VLM: 'cannot tell' below this reward gap")
    parser.add_argument("--pairs", type=int, default=500)
    parser.add_argument("--segment-len", type=int, default=10)
    parser.add_argument("--reward-steps", type=int, default=400)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=5000, help="IQL updates")
    parser.add_argument("--evals", type=int, default=4)
    parser.add_argument("--eval-episodes", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-vlm"))
    parser.add_argument("--out", type=Path, default=Path("results/language_vlm_bilevel.md"))
    args = parser.parse_args(argv)
    command = ("python -m embodied.bench.vlm_feedback " + " ".join(argv if argv is not None else sys.argv[1:])).strip()

    from embodied.data import dataset_path
    from embodied.data.collect import collect

    if not (dataset_path(args.dataset) / "data" / "metadata.json").exists():
        collect(args.env, args.episodes, name=args.dataset, policy="scripted", noise=args.noise, workers=args.workers,
                env_options={"obs": "state+pixels", "image_size": args.image_size})  # fmt: skip
    trials = [{"variant": "true reward", "mistake": None, "seed": s, "args": args} for s in args.seeds]
    trials += [{"variant": f"VLM, mistake {m:g}", "mistake": m, "seed": s, "args": args}
               for m in args.mistakes for s in args.seeds]  # fmt: skip
    results = run_trials(run_trial, trials, args.workers, lambda r: (
        f"{r['variant']} seed {r['seed']}: success {r['evals'][-1].get('eval/success_rate', float('nan')):.2f}"))
    write(results, args, command)
    print(args.out.read_text())


TITLE = "Rewards from language, a VLM's eyes, and bilevel alignment"


def write(results: list[dict], args, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(dict.fromkeys(r["variant"] for r in sorted(results, key=lambda r: r["variant"] != "true reward")))
    seeds = sorted({r["seed"] for r in results})
    lines = [
        f"Made by `{command}`",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU, one torch thread per run, seeds {', '.join(map(str, seeds))} (mean ± std). "
        f"Dataset `{args.dataset}`: {args.episodes} episodes of `{args.env}` by the scripted policy with action noise "
        f"{args.noise}, with {args.image_size}×{args.image_size} frames. The fake VLM sees the last frame of each "
        f"{args.segment_len}-step segment through the two-stage prompt and answers from the true reward of that frame, "
        f"wrong at the given rate and 'cannot tell' when the rewards differ by less than {args.margin}; {args.pairs} "
        f"queries per run. Reward model: {REWARD_MODEL['members']} MLPs {REWARD_MODEL['hidden_dims']} of the state, "
        f"{args.reward_steps} updates. IQL: {args.steps} updates, reading the reward model's rewards as they are "
        f"(`IQLConfig.reward_scale` \"auto\"; the true reward it scales to a return spread of 1000); success rate "
        f"of the final policy over {args.eval_episodes} episodes. Label agreement: decided labels against the true "
        "reward summed over the segments.",
        "",
        "| variant | labels (cannot tell) | label agreement | success rate | return |",
        "|---|---:|---:|---:|---:|",
    ]
    for variant in variants:
        rows = [r for r in results if r["variant"] == variant]
        labels = f"{np.mean([r['labels'] for r in rows]):.0f} ({np.mean([r['cannot_tell'] for r in rows]):.0f})" \
            if "labels" in rows[0] else "—"
        lines.append(f"| {variant} | {labels} | {mean_std([r.get('label_agreement', np.nan) for r in rows])} | "
                     f"{mean_std([r['evals'][-1].get('eval/success_rate', np.nan) for r in rows])} | "
                     f"{mean_std([r['evals'][-1].get('eval/return', np.nan) for r in rows])} |")  # fmt: skip
    lines += ["", f"![success against updates]({args.out.with_suffix('.png').name})"]
    write_section(args.out, TITLE, "(a) VLM-labelled preferences → reward model → IQL", lines)
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["variant", "seed", "step", "success_rate", "return", "label_agreement"])
        for r in sorted(results, key=lambda r: (r["variant"], r["seed"])):
            for row in r["evals"]:
                writer.writerow([r["variant"], r["seed"], int(row["step"]), row.get("eval/success_rate", ""),
                                 row.get("eval/return", ""), r.get("label_agreement", "")])  # fmt: skip
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for variant in variants:
        runs = [r for r in results if r["variant"] == variant]
        plot_mean_std(axis, runs, lambda row: row.get("eval/success_rate", np.nan), variant)
    axis.set_xlabel("IQL updates")
    axis.set_ylabel("success rate")
    axis.set_title(args.env, fontsize=9)
    axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
