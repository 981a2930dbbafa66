"""The training loop every offline algorithm shares: data, updates, logs, evaluation, checkpoints.

``train`` hands online algorithms (``embodied.algos.ONLINE_ALGOS``: SAC, PPO) to
:mod:`embodied.run.online`, which shares the run directory, logs, evaluation and
checkpoint format.

``train(config)`` makes ``<train.run_dir>/<name>/`` holding ``config.yaml`` (the resolved
config), ``train.csv`` / ``eval.csv`` / ``tensorboard/`` and ``checkpoints/step_N.pt``.
``train(config, resume=run_dir)`` continues a killed run from its last checkpoint; on
CPU with the same seed it ends with the same weights as an uninterrupted run, because a
checkpoint holds the optimizers and every random generator the loop draws from.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from embodied.run import checkpoint
from embodied.run.config import RunConfig, parse
from embodied.run.logger import Logger


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return the generator the sampler draws batches from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def ensure_dataset(config: RunConfig) -> str:
    """The dataset to train on, collected (and made partly action-free) first if missing."""
    from embodied.data import DatasetError, dataset_path
    from embodied.data.collect import collect
    from embodied.data.episodes import dataset_spaces, read_episodes, strip_actions, write_dataset

    name = config.data.name
    if not name:
        raise DatasetError("data.name is empty: name the dataset to train on")
    if not (dataset_path(name) / "data" / "metadata.json").exists():
        if not config.data.collect:
            raise DatasetError(f"dataset {name!r} does not exist and data.collect is not set to collect it")
        collect(config.env.id, name=name, env_options=config.env.options, **config.data.collect)
    fraction = config.data.action_free_fraction
    if fraction > 0:
        derived = f"{name.removesuffix('-v0')}-actionfree{round(fraction * 100)}"
        if not (dataset_path(derived) / "data" / "metadata.json").exists():
            stripped = strip_actions(list(read_episodes(name)), fraction, seed=config.train.seed)
            write_dataset(derived, stripped, **dataset_spaces(name), algorithm_name="strip-actions",
                          description=f"{name} with {fraction:.0%} of episodes action-free")  # fmt: skip
        name = derived
    if config.data.preferences:
        ensure_preferences(name, config.data.preferences, config.data.label)
    return name


def ensure_preferences(dataset: str, label_name: str, label: dict | None) -> None:
    """Make label set ``label_name`` of ``dataset`` with a scripted teacher if it is missing
    and ``label`` (``data.label``) says how: ``{teacher: mistake, eps: 0.1, pairs: 500,
    segment_len: 50}`` (as ``embodied prefs label``)."""
    from embodied.data.preferences import list_preferences, save_preferences
    from embodied.rewards.teachers import ScriptedTeacher, label_dataset

    if label_name in list_preferences(dataset) or not label:
        return  # present, or load_dataset names the ones there are
    options = dict(label)
    known = {"teacher", "eps", "beta", "gamma", "score", "pairs", "segment_len", "k", "seed"}
    unknown = sorted(set(options) - known)
    if unknown or "pairs" not in options:
        from embodied.run.config import ConfigError

        raise ConfigError(f"data.label: {'unknown keys ' + ', '.join(unknown) if unknown else 'pairs is missing'}; "
                          f"valid keys: {', '.join(sorted(known))}")  # fmt: skip
    teacher = ScriptedTeacher.preset(options.pop("teacher", "oracle"), eps=options.pop("eps", None),
                                     beta=options.pop("beta", None), gamma=options.pop("gamma", None),
                                     score=options.pop("score", "reward"))  # fmt: skip
    labels = label_dataset(dataset, teacher, options.pop("pairs"), options.pop("segment_len", 50),
                           k=options.pop("k", 2), seed=options.pop("seed", 0))  # fmt: skip
    save_preferences(labels, label_name)


def evaluate(agent, env, episodes: int, seed: int) -> dict[str, float]:
    """Deterministic-policy episodes; success if ``info['success']`` was ever true.

    In a multi-task env (one whose reset info names the ``task``, e.g. ``metaworld/mt10``)
    also ``eval/success_rate/<task>`` per task, and ``eval/success_rate`` is their mean.
    """
    from embodied.run.rollout import rollout

    result = rollout(env, agent.act, episodes, seed=seed, begin_episode=getattr(agent, "begin_episode", None))
    metrics = {"eval/return": result.mean_return, "eval/length": float(np.mean(result.lengths))}
    if result.has_success:
        metrics["eval/success_rate"] = result.success_rate
        by_task = result.success_by_task()
        if by_task:
            metrics.update({f"eval/success_rate/{task}": rate for task, rate in by_task.items()})
            metrics["eval/success_rate"] = float(np.mean(list(by_task.values())))
    return metrics


#: Env options that change the reward the agent learns from. Evaluation leaves them out,
#: so ``eval/return`` is always the env's own return, comparable across reward choices.
REWARD_OPTIONS = ("reward", "reward_code", "reward_code_options")


def evaluation_options(options: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in options.items() if key not in REWARD_OPTIONS}


def run_name(config: RunConfig) -> str:
    from embodied.run.config import algo_name

    if config.train.name:
        return config.train.name
    data = config.data.name.replace("/", "-") or config.env.id.replace("/", "-")
    options = config.env.options
    # Runs of one config with different rewards must not collide.
    reward = ""
    if options.get("reward_code"):
        reward = "-reward_code"
    elif options.get("reward", "env") != "env":
        reward = f"-{options['reward']}"
    return f"{algo_name(config.algo)}-{data}{reward}-seed{config.train.seed}"


def open_run(config: RunConfig | None, resume: str | Path | None) -> tuple[RunConfig, Path, dict | None]:
    """The run's config, its directory and, when resuming, its latest checkpoint.

    A new run gets ``<train.run_dir>/<name>/config.yaml``; a directory that already holds
    checkpoints is refused (resume it instead), so no run is overwritten.
    """
    if resume is not None:
        run_dir = Path(resume)
        saved = run_dir / "config.yaml"
        if not saved.exists():
            raise FileNotFoundError(f"cannot resume: {saved} does not exist")
        payload = checkpoint.read(checkpoint.latest(run_dir))
        return parse(checkpoint.upgraded_config(yaml.safe_load(saved.read_text()), payload)), run_dir, payload
    if config is None:
        raise ValueError("give a config or a run directory to resume")
    from embodied.data.dataset import resolve_device

    resolve_device(config.train.device)  # a device this machine lacks fails before the run directory exists
    run_dir = Path(config.train.run_dir) / run_name(config)
    if (run_dir / "checkpoints").exists() and any((run_dir / "checkpoints").iterdir()):
        raise FileExistsError(f"{run_dir} already holds a run: resume it with --resume {run_dir}, or rename")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    return config, run_dir, None


def update_precision(precision: str, device: str | torch.device):
    """The context an update runs in: bf16 autocast for ``train.precision=bf16``."""
    return torch.autocast(torch.device(device).type, torch.bfloat16, enabled=precision == "bf16")


def train(config: RunConfig | None = None, resume: str | Path | None = None) -> Path:
    """Train an agent (offline, or online for SAC/PPO); returns its run directory."""
    import embodied
    from embodied.algos import agent_class
    from embodied.data import load_dataset
    from embodied.data.dataset import resolve_device
    from embodied.run.config import algo_name

    config, run_dir, payload = open_run(config, resume)
    if agent_class(algo_name(config.algo)).online:
        from embodied.run.online import run

        return run(config, run_dir, payload)
    train_config = config.train
    device = resolve_device(train_config.device)
    generator = seed_everything(train_config.seed)
    dataset = load_dataset(ensure_dataset(config), device=device, preferences=config.data.preferences or None)

    env = embodied.make(config.env.id, **config.env.options)
    agent = agent_class(algo_name(config.algo))(config.algo, env.observation_space, env.action_space, device)
    agent.to(device)
    agent.prepare(dataset, train_config.steps)
    if train_config.compile:
        agent.compile(train_config.compile_mode)

    start = 0
    if payload is not None:
        checkpoint.load_weights(agent, payload)
        checkpoint.restore_rng(payload["rng"], generator)
        start = payload["step"]

    logger = Logger(
        run_dir,
        resume_step=start if payload is not None else None,
        wandb_config=config.to_dict() if train_config.wandb else None,
    )
    raw_config = config.to_dict()
    eval_seed = train_config.seed + 10_000  # evaluation episodes never reuse training seeds

    def save(step: int) -> None:
        checkpoint.save(
            run_dir / "checkpoints" / f"step_{step}.pt", agent, raw_config, step,
            extra={"rng": checkpoint.rng_state(generator)},
        )  # fmt: skip

    from tqdm.auto import tqdm

    bar = tqdm(total=train_config.steps, initial=start, desc=run_dir.name, unit="update",
               disable=None if train_config.progress else True)  # fmt: skip
    sums: dict[str, torch.Tensor] = {}
    count, window_start = 0, time.perf_counter()
    agent.train()
    for step in range(start + 1, train_config.steps + 1):
        batch = agent.sample(dataset, train_config.batch_size, generator)
        with update_precision(train_config.precision, device):
            metrics = agent.update(batch, step)
        for key, value in metrics.items():
            sums[key] = sums[key] + value if key in sums else value.detach().clone()
        count += 1
        if step % train_config.log_every == 0 or step == train_config.steps:
            elapsed = time.perf_counter() - window_start
            logged = {f"train/{k}": (v / count).item() for k, v in sums.items()}
            logged["time/updates_per_second"] = count / elapsed
            logger.log(logged, step)
            bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in list(logged.items())[:3]})
            sums, count, window_start = {}, 0, time.perf_counter()
        evaluate_now = train_config.eval_every and step % train_config.eval_every == 0
        if evaluate_now or step == train_config.steps:
            logger.log(evaluate(agent, env, train_config.eval_episodes, eval_seed), step)
            window_start = time.perf_counter()  # evaluation time is not update time
        if step % train_config.checkpoint_every == 0 or step == train_config.steps:
            save(step)
        bar.update(1)
    bar.close()
    logger.close()
    env.close()
    return run_dir


def evaluate_checkpoint(path: str | Path, episodes: int, seed: int = 0, video: str | None = None,
                        env_options: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    """Load a checkpoint and run it in its env; optionally film the first episode.

    The env is the run's without its reward options (``reward_code``, ``reward``): the
    return reported is the env's own, whatever reward the agent learned from."""
    import embodied
    from embodied.run.rollout import rollout
    from embodied.run.video import write_video

    agent = checkpoint.load(path)
    config = agent.run_config
    env = embodied.make(config.env.id, **{**evaluation_options(config.env.options), **(env_options or {})})
    result = rollout(env, agent.act, episodes, seed=seed, video_episodes=1 if video else 0, video_every=5,
                     begin_episode=getattr(agent, "begin_episode", None))
    summary: dict[str, Any] = {"checkpoint": str(path), "env": config.env.id, **result.summary()}
    # Per episode, so a reward that pays for failing shows: failed episodes returning more.
    summary["episode_returns"] = [float(r) for r in result.returns]
    if result.has_success:
        summary["episode_successes"] = [bool(s) for s in result.successes]
    if video:
        summary["video"] = str(write_video(video, result.frames, fps=min(30, env.metadata.get("render_fps", 30) / 5)))
    env.close()
    return summary
