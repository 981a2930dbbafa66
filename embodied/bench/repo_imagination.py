"""How far ahead do RePo's and Dreamer's world models predict reward from actions alone?

    python -m embodied.bench.repo_imagination runs/bench-repo-9/*Reacher* runs/bench-repo-strong/* \\
        --episodes 20 --out results/repo_imagination.md

The actor of both learns only from imagined rollouts: ``horizon`` steps of the prior from a
posterior state, rewards read off the reward head. This measures that rollout's reward on
held-out data. For each trained run (its latest checkpoint), fresh episodes are collected in
the run's own env (distractors included) by its deterministic policy with N(0, ``--noise``²)
added to each action (clipped), so the model sees the states its policy visits and a little
around them. From windows of ``--context`` + ``--horizon`` steps inside one episode, the model
filters the first ``--context`` frames, then rolls the prior forward on the actions actually
taken, frames unseen; the reward head's prediction k steps ahead is compared with the reward
received: R²_k = 1 − MSE_k / Var(reward) over all windows (k = 0: the filtered posterior of
the last context frame, what the reward head is trained on).

A run's R² falls with k as its imagination drifts from what happens; an actor improves on a
model only as far as the model's rollouts hold. The table groups runs by (env, distractors,
objective), mean ± std over seeds.
"""

from __future__ import annotations

import argparse
import csv
import os
import shlex
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from embodied.bench import mean_std, save_figure  # noqa: E402

SHOWN_STEPS = (0, 1, 3, 5, 10, 15)  # the table's columns (k), where the horizon reaches


def collect(agent, env, episodes: int, noise: float, seed: int):
    """``episodes`` episodes of the agent's deterministic policy plus Gaussian action noise,
    in a replay of the agent's kind (actions in [-1, 1], as the agent stores them)."""
    from embodied.data.replay import SequenceReplay

    rng = np.random.default_rng(seed)
    low, high = env.action_space.low, env.action_space.high
    steps = episodes * (env.spec.max_episode_steps or 1000) if env.spec else episodes * 1000
    replay = SequenceReplay(steps + episodes, env.observation_space.shape, agent.replay.obs.dtype, agent.action_dim)
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        agent.begin_episode()
        replay.add(obs, np.zeros(agent.action_dim, np.float32), 0.0, True)
        done = False
        while not done:
            action = 2 * (agent.act(obs) - low) / (high - low) - 1  # the agent's [-1, 1]
            action = np.clip(action + noise * rng.standard_normal(action.shape), -1, 1).astype(np.float32)
            obs, reward, terminated, truncated, _ = env.step(low + (action + 1) * 0.5 * (high - low))
            replay.add(obs, action, float(reward), False)
            done = terminated or truncated
    return replay


@torch.no_grad()
def open_loop_r2(agent, replay, context: int, horizon: int, windows: int,
                 seed: int) -> tuple[list[float], float, int]:  # fmt: skip
    """R² of the reward predicted k = 0..horizon steps past the context (see the module docstring),
    R² of the rollout's return (the sum of its ``horizon`` rewards), and how many windows."""
    from embodied.nets.rssm import Latent

    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)  # the latents are sampled, as the actor's rollouts sample them
    agent.eval()
    batch = replay.sample(windows, context + horizon, rng, agent.device)
    inside = batch["has_reward"][1:].all(0)  # no episode starts after the window's first step
    if not inside.any():
        raise ValueError(f"no window of {context + horizon} steps lies inside one episode: collect longer episodes "
                         f"or shorten --context / --horizon")  # fmt: skip
    batch = {key: value[:, inside] for key, value in batch.items()}
    posterior, _ = agent.rssm.observe(agent.embed(batch["obs"][:context]), batch["action"][:context],
                                      batch["is_first"][:context])  # fmt: skip
    state = Latent(posterior.deter[-1], posterior.stoch[-1], posterior.mean[-1], posterior.std[-1])  # last context step
    predicted = [agent.reward_head(state.features).squeeze(-1)]
    for k in range(horizon):
        state = agent.rssm.img_step(state, batch["action"][context + k])
        predicted.append(agent.reward_head(state.features).squeeze(-1))
    predicted = torch.stack(predicted)  # (horizon + 1, N)
    target = batch["reward"][context - 1:].float()
    r2 = [float(1 - ((p - t) ** 2).mean() / target.var().clamp(min=1e-12)) for p, t in zip(predicted, target)]
    imagined, received = predicted[1:].sum(0), target[1:].sum(0)  # the rollout's return (undiscounted)
    return r2, float(1 - ((imagined - received) ** 2).mean() / received.var().clamp(min=1e-12)), int(inside.sum())


def flow_yaml(value) -> str:
    """A distractor spec with parameters as ``--distractors`` takes it: ``{noisy_tv: {size: 0.5}}``,
    its kinds in the order they are drawn (a run's saved config sorts them)."""
    import yaml

    from embodied.envs.distractors import KINDS

    ordered = {kind: value[kind] for kind in KINDS if kind in value} | value
    return yaml.safe_dump(ordered, default_flow_style=True, sort_keys=False).strip()


def evaluate_run(run_dir: Path, args) -> dict:
    import embodied
    from embodied.run import checkpoint

    path = checkpoint.latest(run_dir)
    agent = checkpoint.load(path)
    config = agent.run_config
    env = embodied.make(config.env.id, **dict(config.env.options))
    try:
        replay = collect(agent, env, args.episodes, args.noise, seed=10_000 + config.train.seed)
    finally:
        env.close()
    r2, return_r2, windows = open_loop_r2(agent, replay, args.context, args.horizon, args.windows, config.train.seed)
    options = dict(config.env.options)
    distractors = options.get("distractors", "none")
    return {"run": str(run_dir), "env": config.env.id, "objective": config.algo.objective,
            "distractors": distractors if isinstance(distractors, str) else flow_yaml(distractors),
            "seed": config.train.seed, "step": agent.checkpoint_step, "windows": windows, "r2": r2,
            "return_r2": return_r2}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of repo / dreamer runs (with checkpoints)")
    parser.add_argument("--episodes", type=int, default=20, help="held-out episodes collected per run")
    parser.add_argument("--noise", type=float, default=0.3, help="std of the Gaussian noise on the policy's actions")
    parser.add_argument("--context", type=int, default=5, help="frames filtered before imagining")
    parser.add_argument("--horizon", type=int, default=15, help="imagined steps (the actor's horizon)")
    parser.add_argument("--windows", type=int, default=1000, help="windows drawn from the held-out episodes")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/repo_imagination.md"))
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.repo_imagination " + shlex.join(argv if argv is not None else sys.argv[1:])
    for value, name in ((args.episodes, "--episodes"), (args.context, "--context"), (args.horizon, "--horizon"),
                        (args.windows, "--windows")):  # fmt: skip
        if value < 1:
            raise SystemExit(f"{name} must be >= 1, got {value}")
    missing = [str(run) for run in args.runs if not any((run / "checkpoints").glob("step_*.pt"))]
    if missing:
        raise SystemExit(f"no checkpoint in {', '.join(missing)} (a run directory of `embodied train` holds one)")
    from embodied.run import checkpoint

    others = [f"{run} ({algo})" for run in args.runs if (algo := checkpoint.read(run)["algo"]) not in ("repo", "dreamer")]
    if others:
        raise SystemExit(f"not repo or dreamer runs: {', '.join(others)}")
    torch.set_num_threads(args.threads)
    results = []
    for run in args.runs:
        results.append(evaluate_run(run, args))
        r2 = results[-1]["r2"]
        print(f"{run}: R² k=0 {r2[0]:.3f}, k=1 {r2[1]:.3f}, k={args.horizon} {r2[-1]:.3f}, return "
              f"{results[-1]['return_r2']:.3f} ({results[-1]['windows']} windows)", flush=True)  # fmt: skip
    write(results, args, command)


def write(results: list[dict], args, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault((result["env"], result["distractors"], result["objective"]), []).append(result)
    shown = [k for k in SHOWN_STEPS if k <= args.horizon]
    rows = ["| env | distractors | objective | seeds | " + " | ".join(f"k={k}" for k in shown) + " | return |",
            "|---|---|---|---|" + "---:|" * (len(shown) + 1)]  # fmt: skip
    for (env, distractors, objective), runs in sorted(groups.items()):
        cells = [mean_std([run["r2"][k] for run in runs]) for k in shown] + [mean_std([r["return_r2"] for r in runs])]
        seeds = ", ".join(str(run["seed"]) for run in runs)
        rows.append(f"| {env} | {distractors} | {objective} | {seeds} | " + " | ".join(cells) + " |")
    steps = sorted({run["step"] for run in results})
    text = [
        "# How far ahead the world models predict reward from actions alone",
        "",
        f"Made by `{command}` (CPU). Each run's latest checkpoint (env step{'s' if len(steps) > 1 else ''} "
        f"{', '.join(str(s) for s in steps)}); {args.episodes} held-out episodes per run of its deterministic policy "
        f"with N(0, {args.noise}²) noise on each action, in the run's own env (its distractors included). From up to "
        f"{args.windows} windows inside one episode, the model filters {args.context} frames, then imagines "
        f"{args.horizon} steps on the actions taken, without frames; R² of the reward head's prediction k steps "
        "ahead against the reward received (k = 0: the last filtered posterior; 1 − MSE / Var(reward)), and "
        f"of the rollout's return (the sum of its {args.horizon} rewards, what the actor climbs), mean ± std over seeds.",
        "",
        *rows,
        "",
        f"![R² against imagined steps]({args.out.with_suffix('.png').name})",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(text))
    with args.out.with_suffix(".csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["run", "env", "distractors", "objective", "seed", "step", "windows", "k", "r2"])
        for run in results:
            common = [run["run"], run["env"], run["distractors"], run["objective"], run["seed"], run["step"], run["windows"]]
            for k, value in enumerate(run["r2"]):
                writer.writerow([*common, k, f"{value:.5f}"])
            writer.writerow([*common, "return", f"{run['return_r2']:.5f}"])
    panels = sorted({(env, distractors) for env, distractors, _ in groups})
    figure, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.2), squeeze=False)
    for axis, (env, distractors) in zip(axes[0], panels):
        for objective in ("repo", "dreamer"):
            runs = groups.get((env, distractors, objective))
            if runs:
                curves = np.array([run["r2"] for run in runs])
                k = np.arange(curves.shape[1])
                axis.plot(k, curves.mean(0), marker="o", markersize=3, label=objective)
                axis.fill_between(k, curves.mean(0) - curves.std(0), curves.mean(0) + curves.std(0), alpha=0.2)
        axis.set_title(f"{env}\n" + textwrap.fill(distractors, 40), fontsize=9)
        axis.set_xlabel("imagined steps k")
        axis.axhline(0, color="grey", linewidth=0.5)
    axes[0][0].set_ylabel("reward R²")
    axes[0][-1].legend()
    figure.tight_layout()
    save_figure(figure, args.out.with_suffix(".png"))
    print("\n".join(text))


if __name__ == "__main__":
    main()
