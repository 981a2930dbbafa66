"""IQL gradient updates/s: ours (eager and torch.compile) against d3rlpy's IQL, same run.

    python -m embodied.bench.iql_speed --updates 300 --rounds 3 --out results/offline_rl_speed.md

Same dataset (``metaworld/push-v3`` mixed, 100 episodes; d3rlpy reads our D4RL export),
same networks (256x256 MLPs for actor, twin critics and value), batch 256, standardised
observations, and every timed update draws its own batch from the library's buffer.
The variants take turns for ``--rounds`` rounds; the table reports the median round.
d3rlpy runs in its own virtual environment (``.venv-d3rlpy``; it pins gymnasium 1.0).
CORL's single-file IQL runs when ``--corl-iql`` names a local copy of its script
(``embodied/bench/corl_iql.py`` says what is used of it).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

from embodied.bench import calls_per_second, device_arg  # noqa: E402


def ours(dataset, agent, updates: int, generator, batch_size: int = 256) -> float:
    steps = itertools.count()

    def step() -> None:
        agent.update(agent.sample(dataset, batch_size, generator), next(steps))

    for _ in range(10):  # warm up
        step()
    return calls_per_second(step, updates, agent.device.type)


def script_result(python: Path, script: str, *args: str) -> dict:
    """The JSON line printed last by one of the benchmark scripts beside this file, run as
    ``python script args...`` in a fresh process (another library's virtual environment)."""
    out = subprocess.run([str(python), str(Path(__file__).with_name(script)), *map(str, args)],
                         capture_output=True, text=True)  # fmt: skip
    if out.returncode:
        raise RuntimeError(f"{script} failed ({out.returncode}):\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def script_rate(python: Path, script: str, *args: str) -> float:
    """Updates/s printed by one of the benchmark scripts beside this file (:func:`script_result`)."""
    return script_result(python, script, *args)["updates_per_second"]


def d3rlpy(path: Path, python: Path, updates: int, device: str, threads: int = 0) -> float:
    return script_rate(python, "d3rlpy_iql.py", path, "--updates", updates, "--device", device, "--threads", threads)


def corl(corl_script: Path, path: Path, updates: int, device: str, threads: int = 0) -> float:
    """CORL's single-file IQL (a local copy of its script; see ``corl_iql.py``) in our venv."""
    return script_rate(Path(sys.executable), "corl_iql.py", corl_script, path, "--updates", updates,
                       "--device", device, "--threads", threads)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    import embodied
    from embodied.algos.iql import IQL, IQLConfig
    from embodied.data import dataset_path, hdf5io, load_dataset
    from embodied.data.collect import collect

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", type=device_arg, default="cpu")
    parser.add_argument("--d3rlpy-python", type=Path, default=Path(".venv-d3rlpy/bin/python"))
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--corl-iql", type=Path, default=None,
                        help="a local copy of CORL's algorithms/offline/iql.py (tinkoff-ai/CORL; not shipped)")
    parser.add_argument("--out", type=Path, default=Path("results/offline_rl_speed.md"))
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.iql_speed " + " ".join(argv if argv is not None else sys.argv[1:])

    name = "bench-push-mixed-100"
    if not (dataset_path(name) / "data" / "metadata.json").exists():
        collect("metaworld/push-v3", 100, name=name, quality="mixed", workers=2)
    dataset = load_dataset(name, device=args.device)
    env = embodied.make("metaworld/push-v3")
    generator = torch.Generator(device="cpu").manual_seed(0)

    def build(compiled: bool) -> IQL:
        agent = IQL(IQLConfig(), env.observation_space, env.action_space, args.device)
        agent.prepare(dataset, 10_000)
        if compiled:
            agent.compile()
        return agent

    variants = {"embodied IQL (eager)": build(False)}
    if not args.no_compile:
        compiled = build(True)
        start = time.perf_counter()
        ours(dataset, compiled, 5, generator)
        compile_seconds = time.perf_counter() - start
        variants["embodied IQL (torch.compile)"] = compiled
    samples: dict[str, list[float]] = {name: [] for name in variants}
    samples["d3rlpy 2.8.1 IQL"] = []
    samples["CORL iql.py"] = []
    with tempfile.TemporaryDirectory() as tmp:
        export = Path(tmp) / "d4rl.hdf5"
        hdf5io.export_d4rl(name, export)
        for round_index in range(args.rounds):
            for label, agent in variants.items():
                samples[label].append(ours(dataset, agent, args.updates, generator))
            if args.d3rlpy_python.exists():
                device = "cuda:0" if args.device.startswith("cuda") else "cpu:0"
                samples["d3rlpy 2.8.1 IQL"].append(d3rlpy(export, args.d3rlpy_python, args.updates, device))
            if args.corl_iql:
                samples["CORL iql.py"].append(corl(args.corl_iql, export, args.updates, args.device))
            print(f"round {round_index + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in samples.items() if v),
                  flush=True)  # fmt: skip
    medians = {label: statistics.median(values) for label, values in samples.items() if values}
    baseline = medians.get("d3rlpy 2.8.1 IQL")
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    lines = [
        "# IQL training speed: gradient updates per second",
        "",
        f"Made by `{command.strip()}` on {device_name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
        "Same dataset, networks (256×256), batch 256 and observation standardisation; each update draws its "
        f"batch from the library's own buffer. Median of {args.rounds} interleaved rounds of {args.updates} updates.",
        "",
        "| variant | updates/s | rounds | vs d3rlpy |",
        "|---|---:|---|---:|",
    ]
    for label, value in medians.items():
        ratio = f"×{value / baseline:.2f}" if baseline else "—"
        lines.append(f"| {label} | {value:.1f} | {', '.join(f'{v:.1f}' for v in samples[label])} | {ratio} |")
    if not args.no_compile:
        lines += ["", f"torch.compile warm-up (first updates, compiling): {compile_seconds:.0f} s."]
    if samples["CORL iql.py"]:
        lines += ["", "CORL iql.py: the training classes of tinkoff-ai/CORL's `algorithms/offline/iql.py`, built and "
                  "stepped as its `train()` does (a local copy named by `--corl-iql`; CORL is a script, not a package, "
                  "and we do not ship its code). It runs in a fresh process, as d3rlpy does."]  # fmt: skip
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
