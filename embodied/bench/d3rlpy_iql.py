"""d3rlpy's IQL gradient updates/s on a D4RL-layout HDF5 file (run by d3rlpy's own venv).

    .venv-d3rlpy/bin/python embodied/bench/d3rlpy_iql.py FILE.hdf5 --updates 500 [--device cuda:0]

Same network sizes (256x256 MLPs for actor, critics and value), batch 256, d3rlpy's
paper defaults (expectile 0.7, temperature 3.0), observations standardised as ours are.
Each timed update includes drawing its batch from d3rlpy's replay buffer, as a training
loop does. Imports nothing from embodied (d3rlpy pins gymnasium 1.0). Prints one JSON line.
"""

import argparse
import json
import time

import h5py


def main() -> None:
    import d3rlpy
    import torch

    parser = argparse.ArgumentParser()
    parser.add_argument("path")
    parser.add_argument("--updates", type=int, default=500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu:0")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="d3rlpy's compile_graph (CUDA graphs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with h5py.File(args.path, "r") as file:
        data = {key: file[key][()] for key in ("observations", "actions", "rewards", "terminals", "timeouts")}
    dataset = d3rlpy.dataset.MDPDataset(**data)
    encoder = d3rlpy.models.VectorEncoderFactory([256, 256])
    iql = d3rlpy.algos.IQLConfig(
        batch_size=args.batch_size,
        actor_encoder_factory=encoder,
        critic_encoder_factory=encoder,
        value_encoder_factory=encoder,
        observation_scaler=d3rlpy.preprocessing.StandardObservationScaler(),
        compile_graph=args.compile,
    ).create(device=args.device)
    iql.build_with_dataset(dataset)
    iql.observation_scaler.fit_with_transition_picker(dataset.episodes, dataset.transition_picker)

    def step():
        iql.update(dataset.sample_transition_batch(args.batch_size))

    for _ in range(20):  # warm up (and compile)
        step()
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.updates):
        step()
    if torch.cuda.is_available() and args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    print(json.dumps({"d3rlpy_version": d3rlpy.__version__, "updates_per_second": args.updates / elapsed,
                      "torch_threads": torch.get_num_threads(), "device": args.device}))  # fmt: skip


if __name__ == "__main__":
    main()
