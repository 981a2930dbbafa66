"""RePo / Dreamer updates/s against SheepRL's DreamerV1, same run, same machine.

    python -m embodied.bench.repo_speed --batches 16x32 50x50 --updates 5 --rounds 5 --threads 2 --out results/repo_speed.md

One update is what each library's training loop runs per gradient step: draw a batch of
sequences from its own replay, one world-model step, then one actor and one value step from
``horizon`` (15) imagined steps out of every posterior state. Both at Dreamer v1's sizes
(64x64 RGB frames, which SheepRL's DreamerV1 fixes; embedding 1024, h 200, z 30, CNN depth
32) with MLPs 200 wide (ours by default, SheepRL's ``algo.dense_units=200``; its default
is 400) and the same depths (reward 2, as Dreamer v1 and SheepRL; value 3; actor 4 hidden layers). Ours runs both
objectives: ``dreamer`` (reconstruction, as SheepRL's) and ``repo`` (reward + KL budget,
with the decoder as a probe on detached latents, as RePo's code trains it).

The variants take turns for ``--rounds`` rounds; the table reports the median round.
SheepRL runs in its own virtual environment (``.venv-sheeprl``: ``make setup-sheeprl``),
a fresh process per round, warmed up by two updates (compiling with ``--compile``).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import torch  # noqa: E402

from embodied.bench import calls_per_second, device_arg  # noqa: E402
from embodied.bench.iql_speed import script_result  # noqa: E402
from embodied.bench.repo import speed_agent  # noqa: E402

SHEEPRL = "SheepRL 0.8.4 DreamerV1"
ENV = "mujoco/Reacher-v5"  # frames and a 2-D action; the update never sees the env again


def sheeprl(python: Path, batch_size: int, seq_len: int, updates: int, device: str, threads: int, compiled: bool,
            action_dim: int) -> dict:  # fmt: skip
    return script_result(python, "sheeprl_dreamer.py", "--updates", updates, "--batch-size", batch_size,
                         "--seq-len", seq_len, "--dense-units", 200, "--action-dim", action_dim, "--device", device,
                         "--threads", threads, *(["--compile"] if compiled else []))  # fmt: skip


def parameters(agent) -> dict[str, int]:
    def count(*modules) -> int:
        return sum(p.numel() for m in modules for p in m.parameters())

    return {"world_model": count(agent.encoder, agent.rssm, agent.decoder, agent.reward_head),
            "actor": count(agent.actor), "critic": count(agent.value), "inverse_dynamics": count(agent.inverse)}  # fmt: skip


def batch_shape(text: str) -> tuple[int, int]:
    """``"16x32"`` → (16 sequences, 32 steps)."""
    try:
        batch_size, seq_len = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a batch is SEQUENCESxSTEPS, e.g. 16x32, not {text!r}") from None
    if batch_size < 1 or seq_len < 2:
        raise argparse.ArgumentTypeError(f"a batch needs >= 1 sequence of >= 2 steps, not {text!r}")
    return batch_size, seq_len


def measure(args, batch_size: int, seq_len: int, threads: int) -> tuple[dict, dict, dict]:
    """Updates/s of every variant per round, parameter counts and warm-up seconds, at one batch shape."""
    # Dreamer v1's reward head (2 hidden layers, as SheepRL's; RePo's code has 3)
    sizes = {"batch_size": batch_size, "seq_len": seq_len, "buffer_size": 4 * seq_len + 10, "reward_layers": 2}
    modes = [False, True] if args.compile else [False]
    variants, counts, warmups = {}, {}, {}
    for objective in args.objectives:
        for compiled in modes:
            label = f"embodied {objective} ({'torch.compile' if compiled else 'eager'})"
            agent, update = speed_agent(ENV, objective, args.device, compiled, sizes=sizes, image_size=64)
            start = time.perf_counter()
            update()
            update()  # warm up (and compile)
            warmups[label] = time.perf_counter() - start
            variants[label] = update
            counts[label] = parameters(agent)
    theirs = [f"{SHEEPRL} ({'torch.compile' if c else 'eager'})" for c in modes] if args.sheeprl_python.exists() else []
    samples: dict[str, list[float]] = {label: [] for label in [*variants, *theirs]}
    for round_index in range(args.rounds):
        for label, update in variants.items():
            samples[label].append(calls_per_second(update, args.updates, args.device))
        for label in theirs:
            result = sheeprl(args.sheeprl_python, batch_size, seq_len, args.updates, args.device, threads,
                             "compile" in label, agent.action_dim)  # fmt: skip
            samples[label].append(result["updates_per_second"])
            warmups[label], counts[label] = result["warmup_seconds"], result["parameters"]
        print(f"{batch_size}x{seq_len} round {round_index + 1}: "
              + ", ".join(f"{k} {v[-1]:.3f}" for k, v in samples.items()), flush=True)  # fmt: skip
    return samples, counts, warmups


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", nargs="+", type=batch_shape, default=[(16, 32), (50, 50)],
                        help="batch shapes, SEQUENCESxSTEPS (Dreamer v1's: 50x50)")
    parser.add_argument("--updates", type=int, default=5, help="timed updates per round and variant")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--device", type=device_arg, default="cpu")
    parser.add_argument("--compile", action="store_true", help="also torch.compile variants of both libraries")
    parser.add_argument("--objectives", nargs="+", default=["dreamer", "repo"], choices=["dreamer", "repo"])
    parser.add_argument("--sheeprl-python", type=Path, default=Path(".venv-sheeprl/bin/python"))
    parser.add_argument("--out", type=Path, default=Path("results/repo_speed.md"))
    args = parser.parse_args(argv)
    if args.updates < 1 or args.rounds < 1:
        parser.error("--updates and --rounds must be >= 1")
    command = "python -m embodied.bench.repo_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    baseline_label = f"{SHEEPRL} (eager)"
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {threads} torch threads")  # fmt: skip
    lines = [
        "# RePo / Dreamer training speed against SheepRL's DreamerV1: updates per second",
        "",
        f"Made by `{command.strip()}` on {device_name}, torch {torch.__version__}, {time.strftime('%Y-%m-%d')}. "
        "One update: a batch of sequences drawn from the library's own replay, one world-model step, one actor "
        "and one value step over 15 imagined steps from every posterior state. 64x64 RGB, Dreamer v1's sizes "
        "(embedding 1024, h 200, z 30, CNN depth 32), MLPs 200 wide in both (SheepRL's `algo.dense_units=200`). "
        f"Median of {args.rounds} interleaved rounds of {args.updates} updates.",
        "",
        f"| batch (sequences x steps) | variant | updates/s | rounds | vs {baseline_label} |",
        "|---|---|---:|---|---:|",
    ]
    all_counts, all_warmups = {}, {}
    for batch_size, seq_len in args.batches:
        samples, counts, warmups = measure(args, batch_size, seq_len, threads)
        all_counts.update(counts)
        all_warmups.update({f"{label} at {batch_size}x{seq_len}": s for label, s in warmups.items()})
        medians = {label: statistics.median(values) for label, values in samples.items()}
        baseline = medians.get(baseline_label)
        for label, value in medians.items():
            ratio = f"×{value / baseline:.2f}" if baseline else "—"
            lines.append(f"| {batch_size}x{seq_len} | {label} | {value:.3f} | "
                         f"{', '.join(f'{v:.3f}' for v in samples[label])} | {ratio} |")  # fmt: skip
    if not args.sheeprl_python.exists():
        lines += ["", f"SheepRL was not measured: no `{args.sheeprl_python}` (`make setup-sheeprl` installs it)."]
    lines += ["", "Parameters: the same networks (Dreamer v1's at 64x64); ours also trains an inverse-dynamics "
              "head on detached latents, for test-time alignment (other):", "",
              "| variant | world model | actor | critic | other |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for label, count in all_counts.items():
        lines.append(f"| {label} | {count['world_model']:,} | {count['actor']:,} | {count['critic']:,} | "
                     f"{count.get('inverse_dynamics', 0):,} |")  # fmt: skip
    lines += ["", "Warm-up (two updates; with torch.compile, compiling): " +
              ", ".join(f"{label} {seconds:.1f} s" for label, seconds in all_warmups.items()) + "."]  # fmt: skip
    lines.append("")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
