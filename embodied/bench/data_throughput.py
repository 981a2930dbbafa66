"""Sampling speed of our dataset samplers against Minari's and d3rlpy's, and dataset memory.

    python -m embodied.bench.data_throughput --episodes 100 --out results/data_throughput.md

One Meta-World dataset (``metaworld/push-v3``, quality ``mixed``) is collected once and
read by all three: ours through ``embodied.load_dataset``; Minari through
``minari.load_dataset`` and its ``sample_episodes`` (which draws episodes without
replacement, so a batch samples min(256, episodes) of them and cuts its 256 transitions
or segments from those: what Minari offers); d3rlpy through its
replay buffer, fed our D4RL-layout export, in its own virtual environment
(``.venv-d3rlpy``: d3rlpy 2.8 pins gymnasium 1.0, which Meta-World refuses).

Memory: a dataset of 1M transitions with Meta-World's shapes (2,000 episodes of 500
steps, 39 float32 observations, 4 actions) is written, then loaded for training in a
fresh process; the table gives the resident memory it added against the raw size of
its arrays.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from embodied.bench.d3rlpy_sampler import rate  # noqa: E402  (that file imports d3rlpy only when run)

BATCH = 256
SEGMENT = 50


def ours(name: str, seconds: float) -> dict[str, float]:
    import torch

    from embodied.data import load_dataset

    dataset = load_dataset(name)
    generator = torch.Generator().manual_seed(0)
    return {
        "transitions": rate(lambda: dataset.sample(BATCH, generator=generator), seconds),
        "n-step (n=3)": rate(lambda: dataset.sample_nstep(BATCH, 3, 0.99, generator=generator), seconds),
        "segments": rate(lambda: dataset.sample_segments(BATCH, SEGMENT, generator=generator), seconds),
    }


def minari_sampling(name: str, seconds: float) -> dict[str, float]:
    import minari

    from embodied.data import dataset_id

    dataset = minari.load_dataset(dataset_id(name))
    rng = np.random.default_rng(0)
    # sample_episodes draws without replacement: at most one draw of every episode.
    per_draw = min(BATCH, dataset.total_episodes)

    def draw():
        episodes = dataset.sample_episodes(per_draw)
        return [episodes[i] for i in rng.integers(len(episodes), size=BATCH)]

    def transitions():
        episodes = draw()
        steps = [rng.integers(len(e.rewards)) for e in episodes]
        return (
            np.stack([e.observations[t] for e, t in zip(episodes, steps)]),
            np.stack([e.actions[t] for e, t in zip(episodes, steps)]),
            np.stack([e.observations[t + 1] for e, t in zip(episodes, steps)]),
        )

    def segments():
        episodes = draw()
        starts = [rng.integers(len(e.rewards) - SEGMENT + 1) for e in episodes]
        return np.stack([e.observations[s : s + SEGMENT + 1] for e, s in zip(episodes, starts)])

    return {"transitions": rate(transitions, seconds), "segments": rate(segments, seconds)}


def d3rlpy_sampling(name: str, python: Path, seconds: float) -> dict[str, float] | str:
    from embodied.data import hdf5io

    if not python.exists():
        return f"skipped: {python} not found (see the module docstring)"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d4rl.hdf5"
        hdf5io.export_d4rl(name, path)
        script = Path(__file__).with_name("d3rlpy_sampler.py")
        out = subprocess.run(
            [str(python), str(script), str(path), "--batch-size", str(BATCH), "--segment-len", str(SEGMENT),
             "--seconds", str(seconds)],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


_MEMORY_PROBE = """
import json, sys
def status(key):
    for line in open('/proc/self/status'):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
import torch, embodied.data as data
before = status('VmRSS:')
dataset = data.load_dataset(sys.argv[1])
dataset.sample(256)
print(json.dumps({'added_rss': status('VmRSS:') - before, 'peak_rss': status('VmHWM:') - before,
                  'dataset_nbytes': dataset.nbytes, 'transitions': dataset.num_transitions}))
"""


def memory(episodes: int = 2000, steps: int = 500) -> dict[str, float]:
    """Write a 1M-transition dataset with Meta-World's shapes; load it in a fresh process."""
    import gymnasium as gym

    from embodied.data import Episode, write_dataset

    rng = np.random.default_rng(0)

    def make():
        for _ in range(episodes):
            truncations = np.zeros(steps, bool)
            truncations[-1] = True
            yield Episode(
                observations=rng.standard_normal((steps + 1, 39), dtype=np.float32),
                actions=rng.uniform(-1, 1, (steps, 4)).astype(np.float32),
                rewards=rng.standard_normal(steps).astype(np.float32),
                terminations=np.zeros(steps, bool),
                truncations=truncations,
            )

    raw = episodes * ((steps + 1) * 39 * 4 + steps * (4 * 4 + 4 + 2))  # float32 obs/actions/rewards, bool flags
    with tempfile.TemporaryDirectory() as root:
        env = dict(os.environ, MINARI_DATASETS_PATH=root)
        os.environ["MINARI_DATASETS_PATH"], previous = root, os.environ.get("MINARI_DATASETS_PATH")
        try:
            write_dataset(
                "memory-1m", make(),
                observation_space=gym.spaces.Box(-np.inf, np.inf, (39,), np.float32),
                action_space=gym.spaces.Box(-1, 1, (4,), np.float32),
            )  # fmt: skip
        finally:
            if previous is None:
                os.environ.pop("MINARI_DATASETS_PATH")
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous
        out = subprocess.run(
            [sys.executable, "-c", _MEMORY_PROBE, "memory-1m"], env=env, capture_output=True, text=True, check=True
        )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return {"raw_bytes": raw, **result}


def main(argv: list[str] | None = None) -> None:
    from embodied.data import dataset_path
    from embodied.data.collect import collect

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=100, help="episodes of 500 steps to collect")
    parser.add_argument("--seconds", type=float, default=5.0, help="timing window per sampler")
    parser.add_argument("--d3rlpy-python", type=Path, default=Path(".venv-d3rlpy/bin/python"))
    parser.add_argument("--out", type=Path, default=Path("results/data_throughput.md"))
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.data_throughput " + " ".join(argv if argv is not None else sys.argv[1:])
    name = f"bench-push-mixed-{args.episodes}"
    if not (dataset_path(name) / "data" / "metadata.json").exists():
        collect("metaworld/push-v3", args.episodes, name=name, quality="mixed", workers=2)
    results = {
        "embodied": ours(name, args.seconds),
        "minari sample_episodes": minari_sampling(name, args.seconds),
        "d3rlpy replay buffer": d3rlpy_sampling(name, args.d3rlpy_python, args.seconds),
    }
    print(json.dumps(results), flush=True)
    mem = memory()
    print(json.dumps(mem), flush=True)
    write(results, mem, args, command.strip())
    print(args.out.read_text())


def write(results: dict, mem: dict, args, command: str) -> None:
    ours_rates = results["embodied"]
    lines = [
        "# Dataset sampling throughput and memory",
        "",
        f"Made by `{command}` on {os.cpu_count()} CPU cores (CPU tensors), {time.strftime('%Y-%m-%d')}. "
        f"Dataset: `metaworld/push-v3`, quality `mixed`, {args.episodes} episodes × 500 steps. "
        f"Batches of {BATCH}; segments of {SEGMENT} steps.",
        "",
        "| sampler | transitions batches/s | segments batches/s | n-step batches/s |",
        "|---|---:|---:|---:|",
    ]
    csv_rows = []
    for sampler, value in results.items():
        if isinstance(value, str):
            lines.append(f"| {sampler} | {value} | | |")
            continue
        cells = [value.get("transitions"), value.get("segments"), value.get("n-step (n=3)")]
        lines.append(f"| {sampler} | " + " | ".join(f"{c:,.0f}" if c else "—" for c in cells) + " |")
        csv_rows.append([sampler, *[f"{c:.1f}" if c else "" for c in cells]])
    lines.append("")
    for other in ("minari sample_episodes", "d3rlpy replay buffer"):
        theirs = results[other]
        if isinstance(theirs, dict):
            lines.append(
                f"- ours / {other}: transitions ×{ours_rates['transitions'] / theirs['transitions']:.1f}, "
                f"segments ×{ours_rates['segments'] / theirs['segments']:.1f}"
            )
    mib = 1024**2
    ratio = mem["added_rss"] / mem["raw_bytes"]
    lines += [
        "",
        "## Memory of a 1M-transition dataset loaded for training",
        "",
        f"{mem['transitions']:,} transitions with Meta-World's shapes. Raw arrays (float32 observations, actions "
        f"and rewards, bool end flags): {mem['raw_bytes'] / mib:.0f} MiB. Loaded with `embodied.load_dataset` "
        f"in a fresh process: resident memory added {mem['added_rss'] / mib:.0f} MiB (**{ratio:.2f}×** raw; the "
        f"dataset's tensors hold {mem['dataset_nbytes'] / mib:.0f} MiB), peak during loading "
        f"{mem['peak_rss'] / mib:.0f} MiB ({mem['peak_rss'] / mem['raw_bytes']:.2f}×).",
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines))
    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sampler", "transitions_per_s", "segments_per_s", "nstep_per_s"])
        writer.writerows(csv_rows)
        writer.writerow(["memory_added_over_raw", f"{ratio:.3f}", "", ""])


if __name__ == "__main__":
    main()
