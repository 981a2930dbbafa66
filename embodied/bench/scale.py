"""Scale: gradient updates/s of the offline algorithms (eager and ``torch.compile``) against
d3rlpy, and the wall-clock speed-up of a sweep from 1 to N Ray workers, one command.

    python -m embodied.bench.scale --updates 200 --rounds 3 --sweep-workers 1 2 --out results/scale.md

Updates/s: IQL, IPL and MTM (MTM at the CPU size of ``embodied.bench.offline_rl``) on the
same Meta-World dataset as ``embodied.bench.iql_speed`` (push, mixed, 100 episodes), batch
256 (MTM: 64 segments of 4 steps; IPL: 256 transitions and 8 labelled pairs of 50-step
segments), every update drawing its own batch; RePo and its Dreamer baseline at the size
of ``embodied.bench.repo`` (32×32 pixels of ``nav/open-v0``, 16 sequences of 32 steps,
world model + imagined actor-critic per update, from a replay of random steps). Variants:
eager, ``torch.compile`` and (IQL, MTM) bf16 autocast; they take turns for ``--rounds``
rounds and the median is reported. d3rlpy's IQL runs in its own virtual environment
(``.venv-d3rlpy``) when present, and CORL's single-file IQL when ``--corl-iql`` names a local
copy of its script (``embodied/bench/corl_iql.py``); both with one torch thread, as ours.
On a GPU machine pass ``--device cuda``.

Sweep speed-up: one sweep of ``--sweep-trials`` BC trials (2 grid values × seeds) on local
Ray, run from scratch with each of ``--sweep-workers`` workers; the wall-clock time of the
whole ``embodied sweep`` (Ray's start included).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402
import yaml  # noqa: E402

from embodied.bench import calls_per_second, device_arg  # noqa: E402
from embodied.bench.iql_speed import corl, d3rlpy, ours  # noqa: E402


SWEEP_DATASET = "bench-reach-mixed-20"
#: What one update draws (as in the benchmarks): MTM samples 64 segments of 4 steps, as
#: many timesteps as IQL's 256 transitions.
BATCH_SIZES = {"MTM": 64}
#: A round runs --updates / UPDATE_SHARE updates of these slower models (a RePo update costs
#: about 40 IQL updates here), so that no variant dominates a round's time.
UPDATE_SHARE = {"MTM": 4, "RePo": 10, "Dreamer": 10}


def world_model_agents(device: str, compile_too: bool) -> dict:
    """RePo and Dreamer update functions at the RePo benchmark's size."""
    from embodied.bench.repo import speed_agent

    updates = {}
    for name, objective in (("RePo", "repo"), ("Dreamer", "dreamer")):
        for compiled in (False, True) if compile_too else (False,):
            updates[(name, "torch.compile" if compiled else "eager")] = speed_agent(
                "nav/open-v0", objective, device, compiled)[1]  # fmt: skip
    return updates


def build_agents(dataset, env, device: str, compile_too: bool) -> dict:
    from embodied.algos.ipl import IPL, IPLConfig
    from embodied.algos.iql import IQL, IQLConfig
    from embodied.algos.mtm import MTM, MTMConfig
    from embodied.bench.offline_rl import CPU_SIZES
    from embodied.bench.preferences import IPL_SIZES

    makers = {
        "IQL": lambda: IQL(IQLConfig(), env.observation_space, env.action_space, device),
        "IPL": lambda: IPL(IPLConfig(hidden_dims=tuple(IPL_SIZES["hidden_dims"]),
                                     preference_batch_size=IPL_SIZES["preference_batch_size"]),
                           env.observation_space, env.action_space, device),
        "MTM": lambda: MTM(MTMConfig(**CPU_SIZES["mtm"]), env.observation_space, env.action_space, device),
    }  # fmt: skip
    agents = {}
    for name, make in makers.items():
        for variant in ("eager", "torch.compile", "bf16") if compile_too else ("eager", "bf16"):
            if variant == "bf16" and name == "IPL":
                continue  # IPL's update is IQL's
            agent = make()
            agent.prepare(dataset, 10_000)
            if variant == "torch.compile":
                agent.compile()
            agents[(name, variant)] = agent
    return agents


def precision(key: tuple, device: str):
    """The autocast context of a variant (``train.precision=bf16`` for "bf16")."""
    from embodied.run.fit import update_precision

    return update_precision("bf16" if key[1] == "bf16" else "fp32", device)


def time_sweep(workers: int, trials: int, steps: int) -> float:
    from embodied.run.sweep import sweep

    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "bc.yaml"
        config.write_text(yaml.safe_dump({
            "algo": {"name": "bc"}, "env": {"id": "metaworld/reach-v3"},
            "data": {"name": SWEEP_DATASET},
            "train": {"steps": steps, "batch_size": 256, "eval_every": 0, "eval_episodes": 2, "log_every": steps,
                      "checkpoint_every": steps, "progress": False, "device": "cpu"},
        }))  # fmt: skip
        started = time.perf_counter()
        sweep(config, list(range(trials // 2)), {"algo.learning_rate": ["1e-3", "3e-4"]}, sweep_dir=Path(tmp) / "sweep",
              workers=workers, log=lambda message: None)  # fmt: skip
        seconds = time.perf_counter() - started
    import ray

    ray.shutdown()
    return seconds


def main(argv: list[str] | None = None) -> None:
    import embodied
    from embodied.data import dataset_path, hdf5io, load_dataset
    from embodied.data.collect import collect
    from embodied.rewards.teachers import ScriptedTeacher, label_dataset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", type=device_arg, default="cpu")
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--no-world-models", action="store_true", help="skip RePo and Dreamer")
    parser.add_argument("--d3rlpy-python", type=Path, default=Path(".venv-d3rlpy/bin/python"))
    parser.add_argument("--corl-iql", type=Path, default=None,
                        help="a local copy of CORL's algorithms/offline/iql.py (tinkoff-ai/CORL; not shipped)")
    parser.add_argument("--sweep-workers", type=int, nargs="*", default=[1, 2])
    parser.add_argument("--sweep-trials", type=int, default=4)
    parser.add_argument("--sweep-steps", type=int, default=2000, help="BC updates per sweep trial")
    parser.add_argument("--out", type=Path, default=Path("results/scale.md"))
    args = parser.parse_args(argv)
    command = ("python -m embodied.bench.scale " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    torch.set_num_threads(1)

    name = "bench-push-mixed-100"
    if not (dataset_path(name) / "data" / "metadata.json").exists():
        collect("metaworld/push-v3", 100, name=name, quality="mixed", workers=2)
    dataset = load_dataset(name, device=args.device)
    dataset.preferences = label_dataset(name, ScriptedTeacher(), 500, 50)
    env = embodied.make("metaworld/push-v3")
    generator = torch.Generator(device="cpu").manual_seed(0)
    agents = build_agents(dataset, env, args.device, not args.no_compile)
    world_models = {} if args.no_world_models else world_model_agents(args.device, not args.no_compile)
    compile_seconds = {}
    for key, agent in agents.items():  # warm up (and compile) before any timing
        started = time.perf_counter()
        with precision(key, args.device):
            ours(dataset, agent, 1, generator, BATCH_SIZES.get(key[0], 256))
        compile_seconds[key] = time.perf_counter() - started
    for key, update in world_models.items():
        started = time.perf_counter()
        calls_per_second(update, 2, args.device)
        compile_seconds[key] = time.perf_counter() - started
    samples: dict[tuple, list[float]] = {key: [] for key in [*agents, *world_models]}
    baselines: dict[str, list[float]] = {"d3rlpy 2.8.1": [], "CORL iql.py": []}
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "d4rl.hdf5"
        hdf5io.export_d4rl(name, export)
        for round_index in range(args.rounds):
            for key, agent in agents.items():
                updates = max(1, args.updates // UPDATE_SHARE.get(key[0], 1))
                with precision(key, args.device):
                    samples[key].append(ours(dataset, agent, updates, generator, BATCH_SIZES.get(key[0], 256)))
            for key, update in world_models.items():
                samples[key].append(calls_per_second(update, max(2, args.updates // UPDATE_SHARE[key[0]]), args.device))
            if args.d3rlpy_python.exists():
                device = "cuda:0" if args.device.startswith("cuda") else "cpu:0"
                baselines["d3rlpy 2.8.1"].append(d3rlpy(export, args.d3rlpy_python, args.updates, device, 1))
            if args.corl_iql:
                baselines["CORL iql.py"].append(corl(args.corl_iql, export, args.updates, args.device, 1))
            print(f"round {round_index + 1}: " + ", ".join(
                [f"{k[0]} {k[1]} {v[-1]:.1f}" for k, v in samples.items()] +
                [f"IQL {k} {v[-1]:.1f}" for k, v in baselines.items() if v]), flush=True)  # fmt: skip
    if not (dataset_path(SWEEP_DATASET) / "data" / "metadata.json").exists():  # not timed
        collect("metaworld/reach-v3", 20, name=SWEEP_DATASET, quality="mixed", workers=2)
    sweep_seconds = {workers: time_sweep(workers, args.sweep_trials, args.sweep_steps) for workers in args.sweep_workers}

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, 1 torch thread")  # fmt: skip
    lines = [
        "# Scale: updates/s and sweep speed-up",
        "",
        f"Made by `{command}` on {device_name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}.",
        "",
        f"## Gradient updates/s (median of {args.rounds} interleaved rounds)",
        "",
        "| algorithm | variant | updates/s | rounds | first update (s) |",
        "|---|---|---:|---|---:|",
    ]
    for key, values in samples.items():
        lines.append(f"| {key[0]} | {key[1]} | {statistics.median(values):.1f} | "
                     f"{', '.join(f'{v:.1f}' for v in values)} | {compile_seconds[key]:.1f} |")  # fmt: skip
    ratios = []
    for label, values in baselines.items():
        if values:
            lines.append(f"| IQL | {label} | {statistics.median(values):.1f} | {', '.join(f'{v:.1f}' for v in values)} "
                         f"| — |")  # fmt: skip
            ratios.append(f"×{statistics.median(samples[('IQL', 'eager')]) / statistics.median(values):.2f} {label}'s")
    lines += ["", f"Our eager IQL runs at {' and '.join(ratios)} IQL (same networks, batch, data, one thread)." if ratios
              else "No other library's IQL was measured in this run (no `.venv-d3rlpy`, no `--corl-iql`)."]  # fmt: skip
    lines += [
        "",
        "MTM: width 64, 2 heads (CPU size), 64 segments of 4 steps per update. IPL: 2×256 MLPs, 256 transitions "
        "plus 8 labelled pairs of 50-step segments per update (1,056 rows, about 4× an IQL batch). "
        "bf16: the update under bf16 autocast (`train.precision=bf16`), weights fp32. RePo, Dreamer: 32×32 "
        "pixels, RSSM h 100 / z 16, 16 sequences of 32 steps, world model and imagined actor-critic per update "
        "(the RePo benchmark's CPU size); `torch.compile` compiles the networks, the loops over time stay eager. "
        "CORL's IQL: the training classes of tinkoff-ai/CORL's `algorithms/offline/iql.py`, built as its `train()` "
        "builds them (a script, not a package: we do not ship it; `--corl-iql PATH` names a local copy). "
        + ("" if args.device.startswith("cuda") else
           "No GPU was lent to this task, so there are no CUDA numbers; `--device cuda` measures them."),
    ]
    if sweep_seconds:
        lines += ["", f"## Sweep wall-clock: {args.sweep_trials} BC trials of {args.sweep_steps} updates on local Ray",
                  "", "| workers | seconds | speed-up |", "|---:|---:|---:|"]  # fmt: skip
        base = sweep_seconds[min(sweep_seconds)]
        for workers, seconds in sweep_seconds.items():
            lines.append(f"| {workers} | {seconds:.1f} | ×{base / seconds:.2f} |")
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
