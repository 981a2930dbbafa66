"""Test-time encoder alignment of a trained RePo / Dreamer run to a visually shifted env.

``embodied align RUN_DIR --option distractors=colors --steps 2000`` loads the run's latest
checkpoint and its replay buffer (the source domain's observations), makes the run's env
with the options changed (the target domain), evaluates the policy there, adapts the
encoder with no reward (:meth:`embodied.algos.repo.RePo.align`), evaluates again, and
writes ``RUN_DIR/align/<name>/``: ``checkpoints/step_N.pt`` (a checkpoint whose config
names the target env, so ``embodied eval RUN_DIR/align/<name>`` runs it there), ``align.csv`` (alignment losses) and
``summary.json`` (return and success before and after, on the target and the source).
``--calibration-steps N`` first pairs N steps of the source and target envs (the same
states seen in both domains) to anchor the encoder, as RePo's released adaptation does;
``--set KEY=VALUE`` changes another alignment setting of the run's algo config (e.g.
``align_coef=0``), ``--updates-per-step R`` the encoder updates per target env step.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from embodied.run import checkpoint


def align_name(options: dict[str, Any]) -> str:
    """A directory name for a set of option changes (``distractors=colors`` → ``distractors-colors``)."""
    text = "_".join(f"{key}-{value}" for key, value in sorted(options.items())) or "same"
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)


#: The run's algo settings an alignment may change (``--set``); the rest make the trained model.
ALIGN_SETTINGS = ("alignment", "align_lr", "align_coef", "dynamics_coef", "disc_lr", "disc_hidden", "tau_lr", "u_lr",
                  "init_u", "calibration_steps", "calibration_coef")  # fmt: skip


def align_run(run_dir: str | Path, options: dict[str, Any], steps: int, episodes: int = 10, seed: int = 0,
              name: str | None = None, device: str = "cpu", calibration_steps: int | None = None,
              settings: dict[str, Any] | None = None, updates_per_step: float | None = None) -> dict[str, Any]:  # fmt: skip
    """Align the run's agent to its env with ``options`` changed; returns the summary.
    ``calibration_steps`` (default: the run's ``algo.calibration_steps``) paired source and
    target steps anchor the encoder too (:meth:`embodied.algos.repo.RePo.calibration_pairs`);
    ``settings`` change other alignment settings of the run's algo config (ALIGN_SETTINGS),
    ``updates_per_step`` the encoder updates per target env step (default: training's ratio)."""
    import embodied
    from embodied.run.config import algo_name
    from embodied.run.fit import evaluate, evaluation_options, seed_everything

    if steps < 1:
        raise ValueError(f"--steps must be >= 1, got {steps}")
    if calibration_steps is not None and calibration_steps < 0:
        raise ValueError(f"--calibration-steps must be >= 0, got {calibration_steps}")
    settings = dict(settings or {})
    unknown = sorted(set(settings) - set(ALIGN_SETTINGS))
    if unknown:
        raise ValueError(f"--set {', '.join(unknown)}: an alignment may change only {', '.join(ALIGN_SETTINGS)}")
    changes = {**settings, **({} if calibration_steps is None else {"calibration_steps": calibration_steps})}
    if updates_per_step is not None and not updates_per_step > 0:
        raise ValueError(f"--updates-per-step must be > 0, got {updates_per_step}")
    if not options:
        raise ValueError("give the target domain as --option KEY=VALUE (e.g. distractors=colors): "
                         "with no change there is nothing to align to")  # fmt: skip
    run_dir = Path(run_dir)
    path = checkpoint.latest(run_dir)
    payload = checkpoint.read(path)
    agent = checkpoint.load(path, device=device)
    if not hasattr(agent, "align"):
        raise ValueError(f"{path}: {payload['algo']} has no test-time alignment (RePo and Dreamer do)")
    if not payload.get("replay_buffer"):
        raise ValueError(f"{path} carries no replay buffer: alignment needs the source domain's observations")
    from embodied.run.online import load_replay_buffer

    if changes:  # a fresh config, so its checks run on the new values
        from dataclasses import asdict

        agent.config = type(agent.config)(**{**asdict(agent.config), **changes})

    agent.load_replay_buffer_arrays(load_replay_buffer(path.parent / payload["replay_buffer"]))
    config = agent.run_config
    source_options = evaluation_options(config.env.options)
    target_options = {**source_options, **options}
    out = run_dir / "align" / (name or align_name(options))
    out.mkdir(parents=True, exist_ok=True)

    seed_everything(seed)
    agent.seed(seed)
    source_env = embodied.make(config.env.id, **source_options)
    target_env = embodied.make(config.env.id, **target_options)
    eval_seed = seed + 10_000
    rows: list[dict[str, float]] = []
    try:
        summary: dict[str, Any] = {"run": str(run_dir), "checkpoint": str(path), "algo": algo_name(config.algo),
                                   "env": config.env.id, "target_options": options, "steps": steps,
                                   "calibration_steps": agent.config.calibration_steps, "settings": settings,
                                   "updates_per_step": updates_per_step}  # fmt: skip
        summary["source_before"] = evaluate(agent, source_env, episodes, eval_seed)
        summary["target_before"] = evaluate(agent, target_env, episodes, eval_seed)
        agent.align(target_env, steps, on_log=lambda step, metrics: rows.append({"step": step, **metrics}),
                    paired_env=source_env, updates_per_step=updates_per_step)  # fmt: skip
        summary["target_after"] = evaluate(agent, target_env, episodes, eval_seed)
        summary["source_after"] = evaluate(agent, source_env, episodes, eval_seed)
    finally:
        source_env.close()
        target_env.close()
    raw = config.to_dict()
    raw["env"]["options"] = {**raw["env"].get("options", {}), **options}
    checkpoint.save(out / "checkpoints" / f"step_{payload['step']}.pt", agent, raw, payload["step"])
    if rows:
        with open(out / "align.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[-1]))
            writer.writeheader()
            writer.writerows(rows)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["out"] = str(out)
    return summary
