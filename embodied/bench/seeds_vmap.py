"""Several IQL seeds in one process: K separate agents updated one after another against
one vectorised update of all K (``embodied.algos.seeds.VmappedIQL``, torch.func), on one
torch thread, the same dataset, networks and batch size as ``embodied.bench.iql_speed``.

    python -m embodied.bench.seeds_vmap --seeds 1 3 5 --updates 100 --rounds 3

Reported: IQL updates per second *per seed* (K × steps / seconds), median of interleaved
rounds, and the ratio. K separate agents in one process is what K processes would get on
one core (each seed's updates, one at a time), without the processes' overhead.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import sys
import time
from pathlib import Path

import torch


def main(argv: list[str] | None = None) -> None:
    import embodied
    from embodied.algos.iql import IQL, IQLConfig
    from embodied.algos.seeds import VmappedIQL
    from embodied.data import dataset_path, load_dataset
    from embodied.data.collect import collect

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 3, 5])
    parser.add_argument("--updates", type=int, default=100, help="updates per variant and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=Path("results/seeds_vmap.md"))
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.seeds_vmap " + " ".join(argv if argv is not None else sys.argv[1:])
    torch.set_num_threads(1)

    name = "bench-push-mixed-100"
    if not (dataset_path(name) / "data" / "metadata.json").exists():
        collect("metaworld/push-v3", 100, name=name, quality="mixed", workers=2)
    dataset = load_dataset(name, device=args.device)
    env = embodied.make("metaworld/push-v3")
    rates: dict[tuple[int, str], list[float]] = {}
    for k in args.seeds:
        agents = []
        for seed in range(k):
            torch.manual_seed(seed)
            agents.append(IQL(IQLConfig(), env.observation_space, env.action_space, args.device))
            agents[-1].prepare(dataset, args.updates * args.rounds)
        together = VmappedIQL([copy.deepcopy(a) for a in agents])
        together.prepare(dataset, args.updates * args.rounds)
        generators = [torch.Generator(device=args.device).manual_seed(s) for s in range(k)]
        together.update(together.sample(dataset, args.batch_size, generators))  # warm-up
        for _ in range(args.rounds):
            start = time.perf_counter()
            for step in range(args.updates):
                for agent, generator in zip(agents, generators):
                    agent.update(dataset.sample(args.batch_size, generator=generator), step + 1)
            rates.setdefault((k, "separate"), []).append(k * args.updates / (time.perf_counter() - start))
            start = time.perf_counter()
            for _ in range(args.updates):
                together.update(together.sample(dataset, args.batch_size, generators))
            rates.setdefault((k, "vmapped"), []).append(k * args.updates / (time.perf_counter() - start))
        print(f"K={k}: separate {statistics.median(rates[(k, 'separate')]):.1f}, vmapped "
              f"{statistics.median(rates[(k, 'vmapped')]):.1f} updates/s per seed", flush=True)
    lines = [
        "# Several IQL seeds in one process: separate agents against one vectorised update",
        "",
        f"Made by `{command.strip()}` on {platform.machine()} CPU, 1 torch thread, torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d')}. Dataset {name} (Meta-World push, mixed, 100 episodes), IQL with 256x256 "
        f"MLPs, batch {args.batch_size} per seed, each seed drawing its own batches. Updates per second per seed, "
        f"median of {args.rounds} interleaved rounds of {args.updates} steps. tests/test_seeds.py checks that the "
        "vectorised update gives each seed the weights its own agent would have.",
        "",
        "| seeds K | separate agents | vmapped (torch.func) | ratio |",
        "|---:|---:|---:|---:|",
    ]
    for k in args.seeds:
        separate, vmapped = statistics.median(rates[(k, "separate")]), statistics.median(rates[(k, "vmapped")])
        lines.append(f"| {k} | {separate:.1f} | {vmapped:.1f} | ×{vmapped / separate:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
