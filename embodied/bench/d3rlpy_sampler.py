"""d3rlpy's replay-buffer sampling speed on a D4RL-layout HDF5 file (run by d3rlpy's own venv).

    .venv-d3rlpy/bin/python embodied/bench/d3rlpy_sampler.py FILE.hdf5 --batch-size 256 --segment-len 50

d3rlpy 2.8 pins gymnasium 1.0, which Meta-World refuses, so it lives in its own virtual
environment and this file imports nothing from embodied. Prints one JSON line.
"""

import argparse
import json
import time

import h5py


def rate(fn, seconds: float) -> float:
    fn()  # warm up
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    import d3rlpy

    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--segment-len", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    with h5py.File(args.path, "r") as file:
        data = {key: file[key][()] for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"],
        actions=data["actions"],
        rewards=data["rewards"],
        terminals=data["terminals"],
        timeouts=data["timeouts"],
    )
    buffer = dataset  # MDPDataset is a ReplayBuffer over an InfiniteBuffer
    print(json.dumps({
        "d3rlpy_version": d3rlpy.__version__,
        "transitions": rate(lambda: buffer.sample_transition_batch(args.batch_size), args.seconds),
        "segments": rate(lambda: buffer.sample_trajectory_batch(args.batch_size, args.segment_len), args.seconds),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
