"""Sweeps: every combination of a grid of config overrides and seeds, run as Ray tasks.

    embodied sweep configs/iql/metaworld-push-medium.yaml --seeds 0-4 \
        --grid algo.expectile=0.7,0.9 --grid algo.temperature=3,10 [--address ray://HOST:PORT]

Each trial is one ``embodied train`` run under ``<sweep dir>/runs/<trial name>``. Ray
runs them on a local Ray instance by default (``--workers`` CPU slots), or on an existing
cluster when given ``--address``; each trial asks Ray for ``--cpus-per-trial`` CPUs and
``--gpus-per-trial`` GPUs (fractions share a GPU). A trial that fails (a worker lost, an
exception) is retried ``--retries`` times, resuming from its last checkpoint. Rerunning
a sweep skips the trials whose final checkpoint exists and resumes the unfinished ones.

The sweep directory gets ``sweep.yaml`` (what was asked), and ``summary.md``,
``summary.csv`` and ``summary.png``: the final score of every combination, mean and
spread over seeds and each seed's value.
"""

from __future__ import annotations

import csv
import itertools
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from embodied.run.config import ConfigError


class SweepError(RuntimeError):
    """Some trials failed after their retries (the others finished and are summarised)."""


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,2,5"`` -> [0, 2, 5]; ranges and lists mix."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match:
            raise ConfigError(f"--seeds {text!r}: use e.g. 0-4 or 0,1,2")
        low, high = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if high < low:
            raise ConfigError(f"--seeds {text!r}: range {low}-{high} runs backwards")
        seeds.extend(range(low, high + 1))
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {text!r} repeats a seed")
    return seeds


def parse_grid(items: list[str]) -> dict[str, list[str]]:
    """``["algo.expectile=0.7,0.9"]`` -> {"algo.expectile": ["0.7", "0.9"]} (values stay YAML text)."""
    grid: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise ConfigError(f"--grid {item!r} must look like key.sub=v1,v2")
        if key in grid:
            raise ConfigError(f"--grid names {key!r} twice")
        if key in ("train.seed", "train.run_dir", "train.name"):
            raise ConfigError(f"--grid {key}: the sweep sets it (seeds with --seeds)")
        grid[key] = [v.strip() for v in values.split(",")]
    return grid


@dataclass
class Trial:
    name: str  # the run's name, unique in the sweep
    point: dict[str, str]  # the grid values of this trial
    seed: int
    overrides: list[str] = field(default_factory=list)


def _slug(value: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", value).strip("_") or "x"


def expand(grid: dict[str, list[str]], seeds: list[int], sweep_dir: Path) -> list[Trial]:
    trials = []
    for values in itertools.product(*grid.values()) if grid else [()]:
        point = dict(zip(grid, values))
        label = "-".join(f"{key.split('.')[-1]}={_slug(value)}" for key, value in point.items()) or "base"
        for seed in seeds:
            overrides = [f"{k}={v}" for k, v in point.items()]
            overrides += [f"train.seed={seed}", f"train.run_dir={sweep_dir / 'runs'}", f"train.name={label}-seed{seed}",
                          "train.progress=false"]  # fmt: skip
            trials.append(Trial(f"{label}-seed{seed}", point, seed, overrides))
    return trials


def final_step(run_dir: Path) -> int | None:
    """The step of the run's last checkpoint (None if it has none)."""
    steps = [int(m[1]) for p in (run_dir / "checkpoints").glob("step_*.pt") if (m := re.fullmatch(r"step_(\d+)\.pt", p.name))]
    return max(steps) if steps else None


def run_trial(config_path: str, overrides: list[str], run_dir: str) -> dict[str, Any]:
    """Train one trial (or resume it when it has checkpoints); its final evaluation."""
    from embodied.run.config import load
    from embodied.run.fit import train

    config = load(config_path, overrides)
    directory = Path(run_dir)
    started = time.perf_counter()
    if final_step(directory) is not None:
        train(resume=directory)
    else:
        train(config)
    return {**final_evaluation(directory), "seconds": time.perf_counter() - started}


def final_evaluation(run_dir: Path) -> dict[str, float]:
    eval_csv = run_dir / "eval.csv"
    if not eval_csv.exists():
        return {}
    with open(eval_csv, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {k: float(v) for k, v in rows[-1].items() if v != ""} if rows else {}


def metric_of(evaluation: dict[str, float], metric: str | None) -> tuple[str, float]:
    """The score a summary reports: ``metric`` if given, else success rate where there is
    one, else return."""
    if metric is None:
        metric = "eval/success_rate" if "eval/success_rate" in evaluation else "eval/return"
    return metric, evaluation.get(metric, float("nan"))


def ray_map(function, arguments: list[tuple], address: str | None = None, workers: int | None = None,
            cpus_per_task: float = 1.0, gpus_per_task: float = 0.0, retries: int = 2):  # fmt: skip
    """``function(*args)`` for every tuple in ``arguments``, each a Ray task (a local Ray
    instance with ``workers`` CPU slots, or the cluster at ``address``) with its CPU and GPU
    share, retried ``retries`` times on failure. Yields ``(index, result)`` as tasks finish;
    a task that still fails yields its exception instead, and the others go on."""
    import ray

    ray_options = {"address": address} if address else {"num_cpus": workers or len(arguments)}
    ray.init(ignore_reinit_error=True, include_dashboard=False, log_to_driver=False, **ray_options)
    remote = ray.remote(num_cpus=cpus_per_task, num_gpus=gpus_per_task, max_retries=retries,
                        retry_exceptions=True)(function)  # fmt: skip
    futures = {remote.remote(*args): index for index, args in enumerate(arguments)}
    remaining = list(futures)
    while remaining:
        done, remaining = ray.wait(remaining, num_returns=1)
        try:
            yield futures[done[0]], ray.get(done[0])
        except Exception as error:  # noqa: BLE001 - the caller reports it
            yield futures[done[0]], error


def sweep(config_path: str | Path, seeds: list[int], grid: dict[str, list[str]], sweep_dir: str | Path | None = None,
          address: str | None = None, workers: int | None = None, cpus_per_trial: float = 1.0,
          gpus_per_trial: float = 0.0, retries: int = 2, metric: str | None = None,
          log=print) -> Path:  # fmt: skip
    """Run (or finish) a sweep; returns its directory, which holds the summary."""
    from embodied.run.config import load

    config_path = Path(config_path)
    steps = load(config_path).train.steps  # a bad config fails here, before any worker starts
    sweep_dir = Path(sweep_dir or Path("runs") / "sweeps" / config_path.stem).resolve()
    trials = expand(grid, seeds, sweep_dir)
    for trial in trials:  # and so does a bad grid key or value
        load(config_path, trial.overrides)
    spec = {"config": str(config_path.resolve()), "seeds": seeds, "grid": grid, "steps": steps}
    spec_file = sweep_dir / "sweep.yaml"
    if spec_file.exists():
        earlier = yaml.safe_load(spec_file.read_text())
        if earlier != spec:
            raise ConfigError(f"{sweep_dir} holds another sweep ({earlier}); choose another --dir")
    sweep_dir.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(yaml.safe_dump(spec, sort_keys=False))

    results: dict[str, dict] = {}
    pending = []
    for trial in trials:
        run_dir = sweep_dir / "runs" / trial.name
        if final_step(run_dir) == steps:
            results[trial.name] = final_evaluation(run_dir)
        else:
            pending.append(trial)
    log(f"sweep {sweep_dir}: {len(trials)} trials, {len(trials) - len(pending)} already finished")
    started = time.perf_counter()
    if pending:
        failures = []
        arguments = [(str(config_path.resolve()), t.overrides, str(sweep_dir / "runs" / t.name)) for t in pending]
        for index, outcome in ray_map(run_trial, arguments, address, workers, cpus_per_trial, gpus_per_trial, retries):
            trial = pending[index]
            if isinstance(outcome, Exception):
                failures.append((trial.name, outcome))
                log(f"{trial.name} failed after {retries} retries: {type(outcome).__name__}: {outcome}")
                continue
            results[trial.name] = outcome
            _, value = metric_of(outcome, metric)
            log(f"[{len(results)}/{len(trials)} {time.perf_counter() - started:.0f}s] {trial.name}: {value:.4g}")
        if failures:
            write_summary(sweep_dir, trials, results, metric, time.perf_counter() - started)
            raise SweepError(f"{len(failures)} trial(s) failed: {', '.join(n for n, _ in failures)} (rerun the sweep "
                               "to retry them; finished trials are skipped)")  # fmt: skip
    write_summary(sweep_dir, trials, results, metric, time.perf_counter() - started)
    return sweep_dir


def write_summary(sweep_dir: Path, trials: list[Trial], results: dict[str, dict], metric: str | None,
                  seconds: float) -> None:  # fmt: skip
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points: dict[tuple, list[tuple[int, float]]] = {}
    name = metric
    for trial in trials:
        if trial.name in results:
            name, value = metric_of(results[trial.name], metric)
            points.setdefault(tuple(trial.point.items()), []).append((trial.seed, value))
    keys = list(trials[0].point) if trials else []
    spec = yaml.safe_load((sweep_dir / "sweep.yaml").read_text())
    lines = [f"# Sweep of `{Path(spec['config']).name}`", "",
             f"{len(results)} of {len(trials)} trials finished; score: `{name}` at the final step ({spec['steps']}); "
             f"this invocation took {seconds:.0f} s.", "",
             "| " + " | ".join(keys + ["mean", "std", "per seed"]) + " |",
             "|" + "---|" * len(keys) + "---:|---:|---|"]  # fmt: skip
    rows = []
    for point, values in points.items():
        scores = np.array([v for _, v in sorted(values)])
        per_seed = ", ".join(f"{seed}: {value:.4g}" for seed, value in sorted(values))
        lines.append("| " + " | ".join([v for _, v in point] + [f"{scores.mean():.4g}", f"{scores.std():.4g}",
                                                                   per_seed]) + " |")  # fmt: skip
        rows.extend([dict(point) | {"seed": seed, "score": value} for seed, value in sorted(values)])
    lines += ["", "![final score per combination](summary.png)", ""]
    (sweep_dir / "summary.md").write_text("\n".join(lines))
    with open(sweep_dir / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys + ["seed", "score"])
        writer.writeheader()
        writer.writerows(rows)
    figure, axis = plt.subplots(figsize=(max(4, 1.2 * len(points) + 2), 3.2))
    for index, (point, values) in enumerate(points.items()):
        scores = np.array([v for _, v in values])
        axis.bar(index, scores.mean(), yerr=scores.std(), color="tab:blue", alpha=0.6)
        axis.scatter(np.full(len(scores), index), scores, color="black", s=10, zorder=3)
    axis.set_xticks(range(len(points)), ["\n".join(f"{k.split('.')[-1]}={v}" for k, v in p) or "base" for p in points],
                    fontsize=7)  # fmt: skip
    axis.set_ylabel(name or "score")
    figure.tight_layout()
    figure.savefig(sweep_dir / "summary.png", dpi=100)
    plt.close(figure)
