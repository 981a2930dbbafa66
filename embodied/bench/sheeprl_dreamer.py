"""SheepRL's DreamerV1 world-model + behaviour updates/s (run by SheepRL's own venv).

    .venv-sheeprl/bin/python embodied/bench/sheeprl_dreamer.py --updates 10 --batch-size 50 --seq-len 50

One update is SheepRL's ``dreamer_v1.train``: the world model's step (reconstruction,
reward, KL with free nats), then the actor's and the critic's steps from ``horizon``
imagined steps out of every posterior state, exactly as its training loop calls it.
Each timed update first draws its batch from SheepRL's replay buffer
(``SequentialReplayBuffer.sample_tensors``), filled with random 64x64 frames (SheepRL's
DreamerV1 fixes the image size at 64). Sizes are SheepRL's Dreamer v1 defaults except
what the flags set: ``--dense-units`` (MLP width; ours is 200 by default, SheepRL's 400).
Imports nothing from embodied. Prints one JSON line.
"""

import argparse
import json
import time


def main() -> None:
    import gymnasium as gym
    import hydra
    import numpy as np
    import torch
    from hydra import compose, initialize_config_module
    from sheeprl.algos.dreamer_v1.agent import build_agent
    from sheeprl.algos.dreamer_v1.dreamer_v1 import train
    from sheeprl.data.buffers import SequentialReplayBuffer

    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--seq-len", type=int, default=50)
    parser.add_argument("--dense-units", type=int, default=200)
    parser.add_argument("--action-dim", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="SheepRL's algo.compile (torch.compile of the losses)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = [
        "exp=dreamer_v1", "env=dummy", "algo.cnn_keys.encoder=[rgb]", "algo.mlp_keys.encoder=[]",
        f"algo.per_rank_batch_size={args.batch_size}", f"algo.per_rank_sequence_length={args.seq_len}",
        f"algo.dense_units={args.dense_units}", "metric.log_level=0",
        f"fabric.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}",
        f"algo.compile.enabled={args.compile}", "algo.compile.mode=default",
    ]  # fmt: skip
    with initialize_config_module("sheeprl.configs", version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    fabric = hydra.utils.instantiate(cfg.fabric, callbacks=[], _convert_="all")
    fabric.launch()
    observation_space = gym.spaces.Dict({"rgb": gym.spaces.Box(0, 255, (3, 64, 64), np.uint8)})
    world_model, actor, critic, _ = build_agent(fabric, (args.action_dim,), True, cfg, observation_space)
    optimizers = [
        hydra.utils.instantiate(cfg.algo[key].optimizer, params=module.parameters(), _convert_="all")
        for key, module in (("world_model", world_model), ("actor", actor), ("critic", critic))
    ]
    world_optimizer, actor_optimizer, critic_optimizer = fabric.setup_optimizers(*optimizers)

    # A replay of random frames, as many steps as ours holds in its speed test (4 sequences).
    rng = np.random.default_rng(0)
    steps = 4 * args.seq_len
    buffer = SequentialReplayBuffer(steps, 1, obs_keys=("rgb",), seed=0)
    buffer.add({
        "rgb": rng.integers(0, 256, (steps, 1, 3, 64, 64), dtype=np.uint8),
        "actions": rng.uniform(-1, 1, (steps, 1, args.action_dim)).astype(np.float32),
        "rewards": rng.normal(size=(steps, 1, 1)).astype(np.float32),
        "terminated": np.zeros((steps, 1, 1), np.float32),
        "truncated": np.zeros((steps, 1, 1), np.float32),
        "is_first": np.zeros((steps, 1, 1), np.float32),
    })  # fmt: skip

    def update() -> None:
        sample = buffer.sample_tensors(batch_size=args.batch_size, sequence_length=args.seq_len, n_samples=1,
                                       dtype=None, device=fabric.device, from_numpy=cfg.buffer.from_numpy)  # fmt: skip
        batch = {k: v[0].float() for k, v in sample.items()}
        train(fabric, world_model, actor, critic, world_optimizer, actor_optimizer, critic_optimizer, batch, None, cfg)

    synchronize = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    start = time.perf_counter()
    for _ in range(2):  # warm up (and compile)
        update()
    synchronize()
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.updates):
        update()
    synchronize()
    elapsed = time.perf_counter() - start
    from importlib.metadata import version

    print(json.dumps({"sheeprl_version": version("sheeprl"), "updates_per_second": args.updates / elapsed,
                      "warmup_seconds": warmup, "torch_threads": torch.get_num_threads(),
                      "parameters": {name: sum(p.numel() for p in module.parameters()) for name, module in
                                     (("world_model", world_model), ("actor", actor), ("critic", critic))},
                      "device": str(fabric.device)}))  # fmt: skip


if __name__ == "__main__":
    main()
