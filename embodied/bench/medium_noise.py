"""Calibrate the ``medium`` quality level: the action noise at which Meta-World's scripted
expert succeeds on about half of its episodes, per task.

    python -m embodied.bench.medium_noise --episodes 12 --out results/medium_noise.md

Noise hurts tasks very unequally (a drawer opens under almost any noise, a puck push
fails early), so one sigma for all tasks would make ``medium`` mean different things.
For each task this measures the success rate over a grid of sigmas and picks, by linear
interpolation, the sigma where it crosses 0.5. ``embodied.data.collect.MEDIUM_NOISE``
holds the result.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

TASKS = (
    "push-v3", "drawer-open-v3", "button-press-v3", "pick-place-v3", "door-open-v3",
    "reach-v3", "drawer-close-v3", "window-open-v3", "peg-insert-side-v3", "sweep-into-v3",
)  # fmt: skip
SIGMAS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0)


def crossing(sigmas: np.ndarray, rates: np.ndarray, target: float = 0.5) -> float:
    """First sigma where the success rate falls to ``target`` (linear interpolation)."""
    for i in range(1, len(sigmas)):
        if rates[i - 1] >= target >= rates[i] and rates[i - 1] != rates[i]:
            t = (rates[i - 1] - target) / (rates[i - 1] - rates[i])
            return float(sigmas[i - 1] + t * (sigmas[i] - sigmas[i - 1]))
    return float(sigmas[-1] if rates[-1] > target else sigmas[0])


def main(argv: list[str] | None = None) -> None:
    from embodied.data.collect import collect

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="*", default=list(TASKS))
    parser.add_argument("--episodes", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("results/medium_noise.md"))
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.medium_noise " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = []
    for task in args.tasks:
        rates = []
        for sigma in SIGMAS:
            episodes = collect(
                f"metaworld/{task}", args.episodes, policy="scripted", noise=sigma, seed=1000,
                workers=args.workers, progress=False,
            )  # fmt: skip
            rates.append(np.mean([e.success for e in episodes]))
        sigma_half = crossing(np.array(SIGMAS), np.array(rates))
        rows.append((task, rates, sigma_half))
        print(task, " ".join(f"{s}:{r:.2f}" for s, r in zip(SIGMAS, rates)), f"-> {sigma_half:.2f}", flush=True)
    lines = [
        "# Medium quality: action noise for half success (Meta-World scripted experts)",
        "",
        f"Made by `{command.strip()}` on {time.strftime('%Y-%m-%d')}: success rate of the scripted expert "
        f"with Gaussian action noise sigma, {args.episodes} episodes per cell (seeds 1000..), and the "
        "interpolated sigma where it crosses 0.5.",
        "",
        "| task | " + " | ".join(f"σ={s}" for s in SIGMAS) + " | σ for 0.5 |",
        "|---|" + "---:|" * (len(SIGMAS) + 1),
    ]
    for task, rates, sigma_half in rows:
        lines.append(f"| {task} | " + " | ".join(f"{r:.2f}" for r in rates) + f" | {sigma_half:.2f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["task", *[f"sigma_{s}" for s in SIGMAS], "sigma_half"])
        for task, rates, sigma_half in rows:
            writer.writerow([task, *[f"{r:.3f}" for r in rates], f"{sigma_half:.3f}"])
    print(args.out.read_text())


if __name__ == "__main__":
    main()
