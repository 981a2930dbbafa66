"""LC-RL against a language-conditioned policy cloned from the same demonstrations, on
held-out instructions and held-out layouts: section (b) of results/language_vlm_bilevel.md.

    python -m embodied.bench.lcrl --seeds 0 1 2
    python -m embodied.bench.lcrl --family metaworld --seeds 0 1 2

Per seed: ``--train-tasks`` (instruction, layout) pairs with their shortest-path
demonstrations (training instruction templates), LC-RL's reward by MaxEnt IRL and a cloned
policy (the same steps, and 4x as many), then the success rate in the continuous env on
fresh episodes of three kinds, beside the shortest path itself followed by the same
controller (the ceiling the controller sets):

- nav (nav/rooms-v0 and nav/open-v0): ``seen`` (training templates and goals, new object
  placements and starts); ``new instructions`` (paraphrases never seen, and object goals
  never the target in training: ``held_out_objects`` of ``envs/instructions/nav.yaml``);
  ``new layout`` (nav/corridor-v0, a map never seen in training).
- metaworld ("move the gripper to the {thing}" in the scenes of
  ``envs/instructions/metaworld.yaml``): ``seen`` (training scenes and templates, new
  positions); ``new instructions`` (paraphrases never seen); ``new layout`` (the held-out
  scenes, pick-place-v3 and reach-v3, whose target hangs in mid-air).
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

from embodied.bench import cached, mean_std, save_figure, write_section
from embodied.bench.vlm_feedback import TITLE

SPLITS = {"seen": "train", "new instructions": "new-instructions", "new layout": "new-layouts"}
METHODS = ("LC-RL (IRL reward + value iteration)", "cloned policy", "cloned policy, 4x steps",
           "shortest path (the controller's ceiling)")  # fmt: skip
#: T of the soft value iteration: every demo fits (Meta-World's paths are at most about 15 moves).
HORIZONS = {"nav": 40, "metaworld": 24}
HEADINGS = {"nav": "(b) LC-RL: language-conditioned reward by IRL, on new instructions and layouts",
            "metaworld": "(b) LC-RL on Meta-World: reaching named things by new instructions and in new scenes"}  # fmt: skip


def family_envs(family: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The training envs and the new-layout envs of a task family."""
    if family == "nav":
        return ("nav/rooms-v0", "nav/open-v0"), ("nav/corridor-v0",)
    from embodied.algos.lcrl import instruction_templates

    texts = instruction_templates("metaworld")
    held_out = texts["held_out_scenes"]
    return (tuple(f"metaworld/{name}" for name in texts["scenes"] if name not in held_out),
            tuple(f"metaworld/{name}" for name in held_out))  # fmt: skip


def run_seed(seed: int, args, encoder) -> dict:
    import dataclasses

    import torch

    from embodied.algos import lcrl

    torch.set_num_threads(1)
    config = lcrl.LCRLConfig(steps=args.steps, seed=seed, horizon=HORIZONS[args.family])
    train_envs, new_layout_envs = family_envs(args.family)
    train = lcrl.make_tasks(train_envs, args.train_tasks, "train", seed, config.horizon)
    embed = lambda tasks: encoder.encode([t.instruction for t in tasks])  # noqa: E731
    start = time.perf_counter()
    reward, losses = lcrl.fit_reward(train, embed(train), config)
    irl_seconds = time.perf_counter() - start
    policy, _ = lcrl.fit_policy(train, embed(train), config)
    longer, _ = lcrl.fit_policy(train, embed(train), dataclasses.replace(config, steps=4 * args.steps))
    success: dict[str, dict[str, float]] = {method: {} for method in METHODS}
    for i, (split, kind) in enumerate(SPLITS.items()):
        envs = new_layout_envs if kind == "new-layouts" else train_envs
        tasks = lcrl.make_tasks(envs, args.test_tasks, kind, 10_000 + 100 * seed + 3 * (i + 1), config.horizon)
        embeddings = embed(tasks)
        success[METHODS[0]][split] = lcrl.success_rate_lcrl(reward, tasks, embeddings, config)
        success[METHODS[1]][split] = lcrl.success_rate_policy(policy, tasks, embeddings)
        success[METHODS[2]][split] = lcrl.success_rate_policy(longer, tasks, embeddings)
        success[METHODS[3]][split] = lcrl.success_rate_shortest_path(tasks, config)
    return {"seed": seed, "irl_seconds": irl_seconds, "final_nll": float(np.mean(losses[-50:])), "success": success}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", choices=list(HEADINGS), default="nav")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--train-tasks", type=int, default=300)
    parser.add_argument("--test-tasks", type=int, default=60, help="episodes per split and seed")
    parser.add_argument("--steps", type=int, default=1000, help="gradient steps of the reward and of the cloned policy")
    parser.add_argument("--out", type=Path, default=Path("results/language_vlm_bilevel.md"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-lcrl"),
                        help="each finished seed is saved here; a rerun with the same settings reads it")
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.lcrl " + " ".join(argv if argv is not None else sys.argv[1:])
    from embodied.nets.text import SentenceEncoder

    encoder = SentenceEncoder()
    results = []
    for seed in args.seeds:
        settings = {"family": args.family, "seed": seed, "train_tasks": args.train_tasks, "test_tasks": args.test_tasks,
                    "steps": args.steps, "horizon": HORIZONS[args.family]}  # fmt: skip
        results.append(cached(args.run_dir / f"{args.family}-seed{seed}.json", settings,
                              lambda: run_seed(seed, args, encoder)))  # noqa: B023 (called at once)
        print(f"seed {seed}: " + ", ".join(f"{m.split(' (')[0]} {s} {results[-1]['success'][m][s]:.2f}"
                                           for m in METHODS for s in SPLITS), flush=True)  # fmt: skip
    write(results, args, command.strip())
    print(args.out.read_text())


def write(results: list[dict], args, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embodied.algos.lcrl import MW_CELL, MW_MOVES, MW_SHAPE, LCRLConfig

    config = LCRLConfig(horizon=HORIZONS[args.family])
    stem = args.out.stem + ("_lcrl" if args.family == "nav" else f"_lcrl_{args.family}")
    plot = args.out.with_name(stem + ".png")
    train_envs, new_layout_envs = family_envs(args.family)
    splits = ("seen (training templates and goals, new placements), new instructions (unseen paraphrases and object "
              "goals never targeted in training), new layout (nav/corridor-v0, never seen)") if args.family == "nav" else (
        "seen (training scenes and templates, new positions), new instructions (unseen paraphrases), new layout "
        f"({' and '.join(new_layout_envs)}, scenes never seen, targets in mid-air). The hand's workspace is a "
        f"{' × '.join(map(str, MW_SHAPE))} grid of {' × '.join(f'{100 * c:g}' for c in MW_CELL)} cm cells with "
        f"{len(MW_MOVES)} moves; a cell's features say which kinds of thing lie in it; success is the hand entering "
        "the named thing's cell")  # fmt: skip
    lines = [
        f"Made by `{command.strip()}`",
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU, one torch thread, seeds {', '.join(str(r['seed']) for r in results)} "
        f"(mean ± std over seeds; {args.test_tasks} episodes per split and seed). Training: {args.train_tasks} "
        f"(instruction, layout) pairs from {', '.join(train_envs)} with shortest-path demonstrations, "
        f"instructions embedded by all-MiniLM-L6-v2. LC-RL: MaxEnt IRL (exact soft value iteration, horizon "
        f"{config.horizon}) for {args.steps} steps, then value iteration on the learned reward in each test layout. "
        "Cloned policy: the same demonstrations, features and instruction fusion, an egocentric crop and a small CNN, "
        f"{args.steps} (and {4 * args.steps}) steps. All act through the same controller in the continuous env"
        + ("; success is the env's own" if args.family == "nav" else "") + f". Splits: {splits}.",
        "",
        "| method | " + " | ".join(SPLITS) + " |",
        "|---|" + "---:|" * len(SPLITS),
    ]
    for method in METHODS:
        lines.append(f"| {method} | " + " | ".join(mean_std([r["success"][method][s] for r in results]) for s in SPLITS) + " |")
    lines += ["", f"MaxEnt IRL took {np.mean([r['irl_seconds'] for r in results]):.0f} s per seed "
              f"(final demo NLL per step {mean_std([r['final_nll'] for r in results])}).", "",
              f"![LC-RL against cloned policies]({plot.name})"]  # fmt: skip
    write_section(args.out, TITLE, HEADINGS[args.family], lines)
    with open(args.out.with_name(stem + ".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "split", "seed", "success_rate"])
        for r in results:
            for method in METHODS:
                for split in SPLITS:
                    writer.writerow([method, split, r["seed"], f"{r['success'][method][split]:.4f}"])
    figure, axis = plt.subplots(figsize=(6.5, 3))
    width = 0.8 / len(METHODS)
    for i, method in enumerate(METHODS):
        values = np.array([[r["success"][method][s] for s in SPLITS] for r in results])
        axis.bar(np.arange(len(SPLITS)) + i * width, values.mean(0), width, yerr=values.std(0), label=method, capsize=3)
    axis.set_xticks(np.arange(len(SPLITS)) + width * (len(METHODS) - 1) / 2, list(SPLITS))
    axis.set_ylabel("success rate")
    axis.set_ylim(0, 1.05)
    axis.legend(fontsize=7)
    figure.tight_layout()
    save_figure(figure, plot)


if __name__ == "__main__":
    main()
