"""Offline RL: BC, IQL and MTM on Meta-World (and MuJoCo) datasets, several seeds, one command.

    python -m embodied.bench.offline_rl --tasks push-v3 drawer-open-v3 button-press-v3 \
        --qualities medium mixed --algos bc iql mtm --seeds 0 1 2 --steps 10000 --workers 2

For every task and quality the dataset ``<suite>-<task>-<quality>`` is used (Meta-World
ones are collected once if missing, ``--episodes`` episodes, seeds from 0; others, such
as a MuJoCo dataset made with ``embodied collect --policy CHECKPOINT``, must exist).
Every (task, quality, algorithm, seed) is one ``embodied.run.fit.train`` run under
``--run-dir``, evaluated ``--evals`` times on ``--eval-episodes`` episodes. Finished
runs are skipped on a rerun. Meta-World is scored by success rate; other suites by
normalised return, 100·(R − R_random)/(R_expert − R_random) with D4RL's reference
returns (``REFERENCE_RETURNS``).

``--action-free F`` adds the semi-supervised setting (Zheng et al. 2023, "Semi-Supervised
Offline RL with Action-Free Trajectories") to every dataset: a fraction F of its
episodes lose their actions (chosen with seed 0), and two more columns appear:
``iql-af`` (IQL on the episodes that kept their actions) and ``iql-mtm`` (an MTM
trained on all episodes labels the missing actions by inverse dynamics, then IQL trains
on the labelled dataset), to compare with ``iql`` on the full dataset.

``--merge`` keeps the rows of earlier invocations from the CSV beside ``--out`` for the
(task, quality, algorithm, seed) this invocation does not run, and lists every command
that made the table; with the same ``--episodes``, ``--steps`` and ``--evals`` the runs
are comparable (the datasets are collected with fixed seeds).

Writes a Markdown table (final score, mean ± std over seeds, and the dataset's own
score), a CSV of every evaluation, and a plot of score against updates.
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from embodied.bench import earlier_commands, mean_std, plot_mean_std, run_trials, save_figure  # noqa: E402
from embodied.envs.metaworld import ROBOT_FEATURES  # noqa: E402

#: MTM sized for one CPU thread. At the paper's size (width 512, batches of 2048
#: segments) one update takes seconds here (width 512: 0.3 updates/s at 256 segments);
#: the benchmark keeps the paper's depth (2 encoder + 1 decoder layers), masks, optimiser
#: and schedule, narrows the transformer, and draws batch_size / L segments, so that an
#: MTM update sees as many timesteps as a BC or IQL update sees transitions. The narrow
#: model takes a larger learning rate than the paper's 1e-4 for width 512. It needs more
#: updates than BC does: on push medium (seed 0) its actions' correlation with the scripted
#: expert's was 0.15–0.84 per action dimension after a 5k-update run (success 0.00) and
#: 0.63–0.87 after 10k updates of a 20k-update run (success 0.70; BC at 10k: 0.80–0.84),
#: so push's MTM rows use ``--mtm-steps 20000``.
CPU_SIZES: dict[str, dict] = {"mtm": {"width": 64, "heads": 2, "latent_dim": 16, "learning_rate": 3e-4}}
#: The MTM that labels action-free episodes (its own ``--labeller-steps``) also learns
#: inverse dynamics from whole segments of states, sees state differences and draws half of
#: each batch from the episodes with actions (see ``MTMConfig``): at 5k updates without
#: the last two its labels correlated 0.2 with the true actions on drawer-open, with them
#: 0.5, and at 10k updates 0.74.
LABELLER = {"mask_patterns": ["autoregressive", "inverse_dynamics"], "state_differences": True, "acted_share": 0.5}
#: On Meta-World the labeller also sees only the robot's own features and segments of 8
#: states (3 before the transition, 4 after). The 10 acted episodes hold few object and
#: goal positions, which a model that sees them learns by heart (push mixed, seed 0, 10k
#: updates: labels correlate 0.60 with the true actions from all features and 4 states,
#: 0.62 from all features and 8, 0.78 from the robot's and 4, 0.85 from the robot's and 8,
#: in a probe that zeroed the other features; this setting in the benchmark, seeds 0–2:
#: 0.75, 0.84, 0.84, and IQL on the labels scores as IQL on the true actions);
#: the hand trails its mocap target, so the states before a transition tell what the
#: action added (see ``label_actions``).
METAWORLD_LABELLER = {"trajectory_length": 8, "state_features": list(ROBOT_FEATURES)}
ACTION_FREE = ("iql-af", "iql-mtm")
#: D4RL's reference returns (random policy, expert policy), d4rl/infos.py, for normalised scores.
REFERENCE_RETURNS: dict[str, tuple[float, float]] = {
    "mujoco/HalfCheetah-v5": (-280.178953, 12135.0),
    "mujoco/Hopper-v5": (-20.272305, 3234.3),
    "mujoco/Walker2d-v5": (1.629008, 4592.3),
}
#: How the datasets that are not collected here were made (written under the table).
DATASET_RECIPES: dict[str, str] = {
    "mujoco-halfcheetah-medium": "`embodied train configs/sac/mujoco-halfcheetah.yaml --set train.steps=30000` "
    "(SAC, seed 0, return 1,492 at 30k env steps), then `embodied collect mujoco/HalfCheetah-v5 --policy "
    "runs/sac-mujoco-HalfCheetah-v5-seed0 --noise 0.2 --episodes 100 --name mujoco-halfcheetah-medium --workers 2`",
}
COLUMN_TITLES = {"iql-af": "iql, 10 % actions", "iql-mtm": "iql + mtm labels"}
#: What a panel's rows need said, each with the commands that measured it (written under
#: the tables when the panel is in them).
FINDINGS: dict[tuple[str, str], str] = {
    ("push-v3", "medium"): (
        "push: MTM's rows come from 20k updates (the command with `--mtm-steps 20000`); after the earlier "
        "commands' 5k it scored 0.00 on both datasets. A narrow MTM learns push's actions late: on 3,000 "
        "states of push medium (seed 0) its actions correlated with the scripted expert's 0.38, 0.39, 0.15, "
        "0.84 (per action dimension) after 5k updates and 0.85, 0.87, 0.63, 0.87 after 10k (BC after 10k: "
        "0.84, 0.82, 0.80, 0.84). On mixed, a fifth of whose episodes are the expert's, MTM's return-conditioned policy "
        "(asking for the dataset's best return-to-go) then scores far above IQL and BC."
    ),
    ("button-press-v3", "mixed"): (
        "button-press mixed: IQL's return beats BC's (612 against 500) but not its success (0.91 against "
        "1.00), because button-press-v3's shaped reward pays more for hovering by the button than for "
        "pressing it. Its pressing term counts only with the hand within 5 cm of the button's reported "
        "position, which the scripted expert's hand never is while its fingers press the button, and its "
        "approach term grows with the gripper's opening, which the expert narrows to 0.70 as it presses. "
        "The dataset's 20 expert episodes (all pressing) return 531 to 562; a hand held next to the button "
        "with the gripper wide open earns more, and IQL, maximising the reward, does that in about a tenth "
        "of its episodes: `embodied eval runs/bench-offline-rl/iql-metaworld-button-press-mixed-seed0 "
        "--episodes 50` gives success 0.92, a mean return of 572.82 over the 46 successful episodes and "
        "619.87 over the 4 failed ones."
    ),
}


def env_id_of(task: str) -> str:
    """``push-v3`` is Meta-World's; other suites are named in full (``mujoco/HalfCheetah-v5``)."""
    return task if "/" in task else f"metaworld/{task}"


def dataset_name(task: str, quality: str) -> str:
    suite, name = env_id_of(task).split("/", 1)
    stem = re.sub(r"-v\d+$", "", name).lower()
    return f"{suite}-{stem}-{quality}"


def score(task: str, evaluation: dict) -> float:
    """Success rate on Meta-World; normalised return (0 random, 100 expert) elsewhere."""
    env_id = env_id_of(task)
    if env_id.startswith("metaworld/"):
        return evaluation.get("eval/success_rate", np.nan)
    low, high = REFERENCE_RETURNS.get(env_id, (np.nan, np.nan))
    return 100.0 * (evaluation.get("eval/return", np.nan) - low) / (high - low)


def file_times(directory: Path) -> list[float]:
    """Modification times of the files under ``directory`` (none if it is missing)."""
    return [path.stat().st_mtime for path in directory.rglob("*") if path.is_file()]


def input_times(config) -> list[float]:
    """Modification times of what a run reads: its dataset's files and its own label set
    (``data.preferences``). Other label sets stored beside the dataset are not its input:
    writing one must not send every finished run on the dataset back to training."""
    from embodied.data import dataset_path

    root = dataset_path(config.data.name)
    labels = root / "preferences"
    own = labels / f"{config.data.preferences}.npz" if config.data.preferences else None
    return [path.stat().st_mtime for path in root.rglob("*")
            if path.is_file() and (path.parent != labels or path == own)]  # fmt: skip


#: Settings a run may differ in and still be continued to more steps (see :func:`train_once`).
EXTENDABLE_KEYS = ("steps", "log_every", "checkpoint_every")


def train_once(config_dict: dict, extend: bool = False) -> tuple[Path, list[dict]]:
    """One run, or the finished run already on disk if it ran with this very config on the
    data as it is now; its evaluations. A run left unfinished, made with other settings
    (more evaluation episodes, say), or older than its dataset (MTM's labelled copy,
    rewritten by a retrained labeller under the same name), is started again in its place.

    With ``extend``, a run that finished fewer steps of the same config (only ``train.steps``,
    ``log_every`` or ``checkpoint_every`` differ) and checkpointed there is continued from
    that checkpoint to the new step count, as ``embodied train --resume`` would, instead of
    being started again: for agents whose training does not depend on the total step count
    (no schedules over it), so budgets can grow across sessions."""
    import yaml

    from embodied.run.config import parse
    from embodied.run.fit import run_name, train

    config = parse(config_dict)
    run_dir = Path(config.train.run_dir) / run_name(config)
    eval_csv, saved = run_dir / "eval.csv", run_dir / "config.yaml"
    evals = read_evals(eval_csv) if eval_csv.exists() else []
    last_step = int(evals[-1]["step"]) if evals else None
    wanted = _plain(config)
    previous = _saved_config(saved)
    finished = previous is not None and last_step == previous["train"]["steps"]
    if finished and previous == wanted:
        if not config.data.name or all(written <= eval_csv.stat().st_mtime for written in input_times(config)):
            return run_dir, evals
    elif extend and finished and last_step < config.train.steps and _same_but_length(previous, wanted) and (
            run_dir / "checkpoints" / f"step_{last_step}.pt").exists():  # fmt: skip
        temporary = saved.with_suffix(".yaml.tmp")
        temporary.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
        temporary.replace(saved)
        train(resume=run_dir)
        return run_dir, read_evals(eval_csv)
    if run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    train(config)
    return run_dir, read_evals(eval_csv)


def _plain(config) -> dict:
    """A parsed config as plain YAML data, the form saved beside a run."""
    import yaml

    return yaml.safe_load(yaml.safe_dump(config.to_dict()))


def _saved_config(saved: Path) -> dict | None:
    """A run's saved config with today's defaults filled in (a key added since, at its default,
    keeps the old behaviour, so it does not make a finished run stale); None if it is missing or
    no longer parses."""
    import yaml

    from embodied.run.config import ConfigError, parse

    if not saved.exists():
        return None
    try:
        return _plain(parse(yaml.safe_load(saved.read_text())))
    except (ConfigError, ValueError, TypeError, KeyError):
        return None


def _same_but_length(previous: dict, wanted: dict) -> bool:
    """Whether two saved configs differ at most in how long the run is (EXTENDABLE_KEYS)."""

    def without_length(config: dict) -> dict:
        return {**config, "train": {k: v for k, v in config["train"].items() if k not in EXTENDABLE_KEYS}}

    return without_length(previous) == without_length(wanted)


def label_with_mtm(labeller_dir: Path, source: str, name: str) -> None:
    """Write dataset ``name``: ``source`` with its action-free episodes labelled by the MTM,
    unless a copy written after the labeller's last checkpoint is there (the labeller may
    have been retrained with other settings since an older copy)."""
    import embodied
    from embodied.algos.mtm import label_actions
    from embodied.data import dataset_path
    from embodied.data.episodes import dataset_spaces, read_episodes, write_dataset

    written, trained = file_times(dataset_path(name)), file_times(Path(labeller_dir))
    if written and trained and min(written) > max(trained):
        return

    episodes = label_actions(embodied.load(labeller_dir), list(read_episodes(source)))
    write_dataset(name, episodes, **dataset_spaces(source), algorithm_name="label-actions", overwrite=True,
                  description=f"{source}, action-free episodes labelled by MTM ({labeller_dir})")  # fmt: skip


def label_quality(source: str, labelled: str) -> float:
    """Correlation of MTM's labels with the true actions of the episodes it labelled,
    averaged over action dimensions (nan when the datasets are not on this machine)."""
    from embodied.data.episodes import read_episodes

    try:
        pairs = [(true.actions, guess.actions) for true, guess in zip(read_episodes(source), read_episodes(labelled))
                 if guess.metadata.get("actions_labelled_by") == "mtm"]  # fmt: skip
    except Exception:  # noqa: BLE001 - a merged row whose datasets are elsewhere
        return float("nan")
    true, guess = (np.concatenate(a).reshape(-1, pairs[0][0].shape[-1]) for a in zip(*pairs))
    return float(np.mean([np.corrcoef(true[:, i], guess[:, i])[0, 1] for i in range(true.shape[1])]))


def run_trial(trial: dict) -> dict:
    """One trial (in a worker process with one torch thread)."""
    import torch

    torch.set_num_threads(1)
    if "labeller" in trial:
        labeller_dir, _ = train_once(trial["labeller"])
        label_with_mtm(labeller_dir, trial["labeller"]["data"]["name"], trial["config"]["data"]["name"])
    run_dir, evals = train_once(trial["config"])
    return {key: trial[key] for key in ("task", "quality", "algo", "seed")} | {"run_dir": str(run_dir), "evals": evals}


def read_evals(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(handle)]


def trial_config(task: str, algo: str, seed: int, data: str, args, name: str = "") -> dict:
    mtm = algo == "mtm"
    algo_section = {"name": algo, **CPU_SIZES.get(algo, {})}
    steps = args.mtm_steps or args.steps if mtm else args.steps
    return {
        "algo": algo_section,
        "env": {"id": env_id_of(task)},
        "data": {"name": data},
        "train": {
            "steps": steps, "batch_size": args.batch_size // 4 if mtm else args.batch_size, "seed": seed,
            "eval_every": max(1, steps // args.evals), "eval_episodes": args.eval_episodes,
            "log_every": max(1, steps // 20), "checkpoint_every": steps,
            "run_dir": str(args.run_dir), "progress": False, "device": "cpu", "name": name,
        },
    }  # fmt: skip


def make_trials(args, datasets: dict) -> list[dict]:
    trials = []
    for task in args.tasks:
        for quality in args.qualities:
            data = dataset_name(task, quality)
            for seed in args.seeds:
                for algo in args.algos:
                    if algo in ACTION_FREE:
                        continue
                    config = trial_config(task, algo, seed, data, args)
                    trials.append({"task": task, "quality": quality, "algo": algo, "seed": seed, "config": config})
                if not args.action_free:
                    continue
                # --action-free runs both columns unless --algos names one of them.
                action_free = [a for a in ACTION_FREE if a in args.algos] or ACTION_FREE
                stripped = datasets[(task, quality, "stripped")]
                common = {"task": task, "quality": quality, "seed": seed}
                if "iql-af" in action_free:
                    trials.append(common | {"algo": "iql-af", "config": trial_config(
                        task, "iql", seed, stripped, args, name=f"iql-{stripped}-seed{seed}")})  # fmt: skip
                if "iql-mtm" in action_free:
                    labeller = trial_config(task, "mtm", seed, stripped, args, name=f"mtm-labeller-{stripped}-seed{seed}")
                    labeller["algo"].update(LABELLER)
                    if env_id_of(task).startswith("metaworld/"):
                        labeller["algo"].update(METAWORLD_LABELLER)
                    # It is not a policy: one evaluation episode at the end (the loop's minimum).
                    labeller["train"].update(steps=args.labeller_steps, checkpoint_every=args.labeller_steps,
                                             log_every=max(1, args.labeller_steps // 20), eval_every=0,
                                             eval_episodes=1)  # fmt: skip
                    labelled = f"{stripped}-mtm-seed{seed}"
                    trials.append(common | {"algo": "iql-mtm", "labeller": labeller, "config": trial_config(
                        task, "iql", seed, labelled, args, name=f"iql-{labelled}")})  # fmt: skip
    return trials


def prepare_datasets(args) -> dict:
    """Collect missing Meta-World datasets; make the action-free copies; their summaries."""
    from embodied.data import DatasetError, dataset_path
    from embodied.data.collect import collect
    from embodied.data.episodes import dataset_info, dataset_spaces, read_episodes, strip_actions, write_dataset

    datasets = {}
    for task in args.tasks:
        for quality in args.qualities:
            name = dataset_name(task, quality)
            if not (dataset_path(name) / "data" / "metadata.json").exists():
                if not env_id_of(task).startswith("metaworld/"):
                    raise DatasetError(f"dataset {name!r} is missing: collect it first (embodied collect "
                                       f"{env_id_of(task)} --policy CHECKPOINT --name {name})")  # fmt: skip
                collect(env_id_of(task), args.episodes, name=name, quality=quality, workers=args.workers)
            datasets[(task, quality)] = dataset_info(name)
            if args.action_free:
                stripped = f"{name}-actionfree{round(100 * args.action_free)}"
                if not (dataset_path(stripped) / "data" / "metadata.json").exists():
                    episodes = strip_actions(list(read_episodes(name)), args.action_free, seed=0)
                    write_dataset(stripped, episodes, **dataset_spaces(name), algorithm_name="strip-actions",
                                  description=f"{name} with {args.action_free:.0%} of episodes action-free")  # fmt: skip
                datasets[(task, quality, "stripped")] = stripped
    return datasets


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=["push-v3", "drawer-open-v3", "button-press-v3"],
                        help="Meta-World task names, or env ids of other suites (mujoco/HalfCheetah-v5)")
    parser.add_argument("--qualities", nargs="+", default=["medium", "mixed"])
    parser.add_argument("--algos", nargs="+", default=["bc", "iql", "mtm"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--episodes", type=int, default=100, help="episodes per collected dataset")
    parser.add_argument("--steps", type=int, default=10_000, help="gradient updates per run")
    parser.add_argument("--mtm-steps", type=int, default=0, help="MTM's gradient updates (default: --steps)")
    parser.add_argument("--batch-size", type=int, default=256, help="transitions per update (MTM: / 4 segments)")
    parser.add_argument("--evals", type=int, default=4, help="evaluations per run")
    parser.add_argument("--eval-episodes", type=int, default=10)
    parser.add_argument("--action-free", type=float, default=0.0,
                        help="also run the action-free setting (iql-af and iql-mtm; --algos may name one)")
    parser.add_argument("--labeller-steps", type=int, default=10_000, help="gradient updates of the labelling MTM")
    parser.add_argument("--merge", action="store_true", help="keep earlier invocations' rows from the CSV")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-offline-rl"))
    parser.add_argument("--out", type=Path, default=Path("results/offline_rl.md"))
    args = parser.parse_args(argv)
    if any(a in ACTION_FREE for a in args.algos) and not args.action_free:
        parser.error(f"--algos {' '.join(a for a in args.algos if a in ACTION_FREE)} needs --action-free F")
    if not 0.0 <= args.action_free < 1.0:
        parser.error(f"--action-free must be in [0, 1), got {args.action_free}")
    command = ("python -m embodied.bench.offline_rl " + " ".join(argv if argv is not None else sys.argv[1:])).strip()

    datasets = prepare_datasets(args)
    trials = make_trials(args, datasets)
    results = run_trials(run_trial, trials, args.workers, lambda r: (
        f"{r['task']} {r['quality']} {r['algo']} seed {r['seed']}: score {score(r['task'], r['evals'][-1]):.2f}"))
    commands = [command]
    if args.merge:
        earlier, earlier_commands = read_earlier(args.out)
        ran = {(r["task"], r["quality"], r["algo"], r["seed"]) for r in results}
        results += [r for r in earlier if (r["task"], r["quality"], r["algo"], r["seed"]) not in ran]
        commands = [c for c in earlier_commands if c != command] + commands
    write(results, args, commands)
    print(args.out.read_text())


def read_earlier(out: Path) -> tuple[list[dict], list[str]]:
    """The results and commands of earlier invocations, from the CSV and Markdown at ``out``."""
    results: dict[tuple, dict] = {}
    csv_path = out.with_suffix(".csv")
    if csv_path.exists():
        with open(csv_path, newline="") as handle:
            for row in csv.DictReader(handle):
                key = (row["task"], row["quality"], row["algo"], int(row["seed"]))
                entry = results.setdefault(key, dict(zip(("task", "quality", "algo", "seed"), key), evals=[]))
                evaluation = {"step": float(row["step"])}
                for column, metric in (("success_rate", "eval/success_rate"), ("return", "eval/return")):
                    if row.get(column, "") != "":
                        evaluation[metric] = float(row[column])
                entry["evals"].append(evaluation)
    return list(results.values()), earlier_commands(out, "offline_rl")


def write(results: list[dict], args, commands: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embodied.data.episodes import dataset_info

    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault((result["task"], result["quality"], result["algo"]), []).append(result)
    tasks = sorted({r["task"] for r in results} | set(args.tasks), key=lambda t: ("/" in t, t))  # Meta-World first
    qualities = sorted({r["quality"] for r in results} | set(args.qualities))
    order = ["bc", "iql", "mtm", "iql-af", "iql-mtm"]
    algos = sorted({r["algo"] for r in results} | set(args.algos), key=lambda a: (a not in order, order.index(a) if a in order else a))
    panels = [(t, q) for t in tasks for q in qualities if any((t, q, a) in groups for a in algos)]

    # A merged row's dataset may not be on this machine: its score as the earlier table gave it.
    earlier, earlier_return = {}, {}
    if args.out.exists():
        for line in args.out.read_text().splitlines():
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            if len(cells) > 3 and cells[0] in tasks and cells[1] in qualities and ("±" in line or "—" in line):
                value = float(cells[2]) if cells[2] not in ("", "nan") else float("nan")
                # The first table gives data scores; the return table, which comes second, data returns.
                (earlier_return if (cells[0], cells[1]) in earlier else earlier)[(cells[0], cells[1])] = value

    def data_score(task: str, quality: str) -> float:
        try:
            info = dataset_info(dataset_name(task, quality))
        except Exception:  # noqa: BLE001 - a merged row whose dataset is not on this machine
            return earlier.get((task, quality), float("nan"))
        if env_id_of(task).startswith("metaworld/"):
            return info.get("success_rate", float("nan"))
        return score(task, {"eval/return": info["return_mean"]})

    def data_return(task: str, quality: str) -> float:
        try:
            return dataset_info(dataset_name(task, quality))["return_mean"]
        except Exception:  # noqa: BLE001 - as data_score
            return earlier_return.get((task, quality), float("nan"))

    seeds = sorted({r["seed"] for r in results})
    lines = [
        "# Offline RL: BC, IQL and MTM",
        "",
        "Made by (each invocation runs its trials; later ones keep the earlier rows, `--merge`):",
        "",
        *[f"- `{c}`" for c in commands],
        "",
        f"{time.strftime('%Y-%m-%d')}, CPU, one torch thread per run. Meta-World datasets of {args.episodes} "
        f"episodes (quality levels: see `embodied.data.collect`); each command's `--steps` gradient updates (MTM: `--mtm-steps`) of "
        f"{args.batch_size} transitions (MTM: a quarter as many segments of 4 steps, and narrowed to width 64 for the CPU, see "
        "`CPU_SIZES` in `embodied/bench/offline_rl.py`). Score of the final policy over each command's "
        f"`--eval-episodes` evaluation episodes, mean ± std over seeds {', '.join(map(str, seeds))}: "
        "success rate on Meta-World, D4RL-normalised return (0 random, 100 expert) elsewhere. "
        "`iql-af`: IQL on the dataset with 90 % of its episodes action-free (it learns from the rest); "
        "`iql-mtm`: the same, after an MTM trained on the whole action-free dataset (`--labeller-steps` "
        "updates, with `LABELLER`'s settings: inverse-dynamics masks, state differences, half of each batch "
        "from episodes with actions; on Meta-World `METAWORLD_LABELLER`'s too: the robot's own features only, "
        "segments of 8 states) labelled the missing actions by inverse dynamics.",
        "",
        "| task | data | data score | " + " | ".join(COLUMN_TITLES.get(a, a) for a in algos) + " |",
        "|---|---|---:|" + "---:|" * len(algos),
    ]
    for task, quality in panels:
        cells = []
        for algo in algos:
            finals = [score(task, r["evals"][-1]) for r in groups.get((task, quality, algo), [])]
            cells.append(mean_std(finals))
        lines.append(f"| {task} | {quality} | {data_score(task, quality):.2f} | " + " | ".join(cells) + " |")
    metaworld = [(t, q) for t, q in panels if env_id_of(t).startswith("metaworld/")]
    if metaworld:
        lines += ["", "Meta-World return of the same final policies: the env's shaped reward summed over the "
                  "500-step episode, mean ± std over seeds. Success saturates (a policy that presses the button "
                  "late and one that presses it at once both score 1); the return tells them apart.", "",
                  "| task | data | data return | " + " | ".join(COLUMN_TITLES.get(a, a) for a in algos) + " |",
                  "|---|---|---:|" + "---:|" * len(algos)]  # fmt: skip
        for task, quality in metaworld:
            cells = [mean_std([r["evals"][-1].get("eval/return", float("nan"))
                               for r in groups.get((task, quality, algo), [])], digits=0) for algo in algos]  # fmt: skip
            lines.append(f"| {task} | {quality} | {data_return(task, quality):.0f} | " + " | ".join(cells) + " |")
    labelled = [(t, q, r["seed"]) for t, q in panels for r in groups.get((t, q, "iql-mtm"), [])]
    if labelled:
        lines += ["", "MTM's labels: correlation with the true actions of the episodes it labelled (mean over "
                  "action dimensions):", "", "| task | data | seed | correlation |", "|---|---|---:|---:|"]
        from embodied.data import dataset_path

        for task, quality, seed in sorted(labelled):
            name = dataset_name(task, quality)
            # The labelled copy's name holds the action-free share its run used (make_trials).
            for found in sorted(dataset_path(name).parent.glob(f"{name}-actionfree*-mtm-seed{seed}-v0")):
                value = label_quality(name, found.name.removesuffix("-v0"))
                lines.append(f"| {task} | {quality} | {seed} | {value:.2f} |")
    findings = [f"- {FINDINGS[panel]}" for panel in panels if panel in FINDINGS]
    if findings:
        lines += ["", "What the rows show:", "", *findings]
    recipes = [f"- `{dataset_name(t, q)}`: {DATASET_RECIPES[dataset_name(t, q)]}" for t, q in panels
               if dataset_name(t, q) in DATASET_RECIPES]  # fmt: skip
    if recipes:
        lines += ["", "Datasets made outside this command:", "", *recipes]
    lines += ["", f"![score against updates]({args.out.with_suffix('.png').name})", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))

    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", "quality", "algo", "seed", "step", "success_rate", "return"])
        for result in sorted(results, key=lambda r: (r["task"], r["quality"], r["algo"], r["seed"])):
            for row in result["evals"]:
                writer.writerow([result["task"], result["quality"], result["algo"], result["seed"], int(row["step"]),
                                 row.get("eval/success_rate", ""), row.get("eval/return", "")])  # fmt: skip

    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3), squeeze=False)
    for axis, (task, quality) in zip(axes[0], panels):
        for algo in algos:
            runs = groups.get((task, quality, algo), [])
            if not runs:
                continue
            plot_mean_std(axis, runs, lambda row, task=task: score(task, row), COLUMN_TITLES.get(algo, algo))
        axis.set_title(f"{task} / {quality}", fontsize=9)
        axis.set_xlabel("updates")
        axis.set_ylabel("success rate" if env_id_of(task).startswith("metaworld/") else "normalised return")
    axes[0][-1].legend(fontsize=8)
    figure.tight_layout()
    save_figure(figure, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
