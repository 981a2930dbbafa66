"""CORL's single-file IQL: gradient updates/s on a D4RL-layout HDF5 file, in a subprocess.

    python embodied/bench/corl_iql.py CORL_IQL.py FILE.hdf5 --updates 300 [--device cuda] [--threads 1]

CORL (tinkoff-ai/CORL, ``algorithms/offline/iql.py``) is a script, not a package, and it
imports D4RL, gym, pyrallis and wandb at the top. We do not ship its code: pass the path of
a local copy. Only its training pieces are used (``ReplayBuffer``, ``TwinQ``,
``ValueFunction``, ``GaussianPolicy``, ``ImplicitQLearning``, ``compute_mean_std``,
``normalize_states``), built as its ``train()`` builds them with its defaults (256×256 MLPs,
batch 256, Adam 3e-4, expectile 0.7, β 3.0, standardised states). The four imports it
needs only for its entry point get inert stand-ins while it loads, when they are not
installed. Each timed update is one turn of CORL's loop without wandb:
``replay_buffer.sample``, ``.to``, ``trainer.train``. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import types
from pathlib import Path

#: What CORL's iql.py imports for its entry point (dataset download, env, CLI, logging).
ENTRY_POINT_IMPORTS = ("d4rl", "gym", "pyrallis", "wandb")


class _Inert:
    """Stands in for any attribute or call of a module CORL imports but training never uses."""

    def __call__(self, *args, **kwargs):
        return args[0] if len(args) == 1 and callable(args[0]) and not kwargs else self

    def __getattr__(self, name):
        return self


def _inert_attribute(name: str):
    if name.startswith("__"):  # module machinery (__file__, __path__, ...) looks these up
        raise AttributeError(name)
    return _Inert()


def load_corl(path: Path) -> types.ModuleType:
    """Import the CORL script at ``path``; a clear error if it is not CORL's IQL."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file (a local copy of CORL's algorithms/offline/iql.py)")
    stand_ins = [name for name in ENTRY_POINT_IMPORTS
                 if name not in sys.modules and importlib.util.find_spec(name) is None]  # fmt: skip
    for name in stand_ins:
        sys.modules[name] = types.ModuleType(name)
        sys.modules[name].__getattr__ = _inert_attribute
    try:
        spec = importlib.util.spec_from_file_location("corl_iql", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:  # the stand-ins live on only inside the loaded script
        for name in stand_ins:
            sys.modules.pop(name, None)
    missing = [name for name in ("ReplayBuffer", "TwinQ", "ValueFunction", "GaussianPolicy", "ImplicitQLearning",
                                 "compute_mean_std", "normalize_states") if not hasattr(module, name)]  # fmt: skip
    if missing:
        raise ValueError(f"{path} is not CORL's IQL script: it has no {', '.join(missing)}")
    return module


def build(module: types.ModuleType, data: dict, device: str):
    """CORL's ``train()`` set-up with its defaults: a replay buffer of standardised states and
    the IQL trainer (returns the buffer and the trainer)."""
    import torch

    mean, std = module.compute_mean_std(data["observations"], eps=1e-3)
    data = {**data, "observations": module.normalize_states(data["observations"], mean, std),
            "next_observations": module.normalize_states(data["next_observations"], mean, std)}  # fmt: skip
    state_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
    buffer = module.ReplayBuffer(state_dim, action_dim, len(data["observations"]), device)
    buffer.load_d4rl_dataset(data)
    q_network = module.TwinQ(state_dim, action_dim).to(device)
    v_network = module.ValueFunction(state_dim).to(device)
    actor = module.GaussianPolicy(state_dim, action_dim, 1.0).to(device)
    trainer = module.ImplicitQLearning(
        max_action=1.0, actor=actor, actor_optimizer=torch.optim.Adam(actor.parameters(), lr=3e-4),
        q_network=q_network, q_optimizer=torch.optim.Adam(q_network.parameters(), lr=3e-4),
        v_network=v_network, v_optimizer=torch.optim.Adam(v_network.parameters(), lr=3e-4),
        discount=0.99, tau=0.005, device=device, beta=3.0, iql_tau=0.7, max_steps=1_000_000,
    )  # fmt: skip
    return buffer, trainer


def main(argv: list[str] | None = None) -> None:
    import contextlib
    import io

    import h5py
    import numpy as np
    import torch

    from embodied.bench import calls_per_second

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("corl", type=Path, help="a local copy of CORL's algorithms/offline/iql.py")
    parser.add_argument("path", type=Path, help="D4RL-layout HDF5 (embodied.data.hdf5io.export_d4rl)")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    module = load_corl(args.corl)
    with h5py.File(args.path, "r") as file:
        data = {key: np.asarray(file[key][()], np.float32)
                for key in ("observations", "next_observations", "actions", "rewards", "terminals")}  # fmt: skip
    np.random.seed(0)
    torch.manual_seed(0)
    with contextlib.redirect_stdout(io.StringIO()):  # CORL prints the dataset size
        buffer, trainer = build(module, data, args.device)

    def step():
        trainer.train([b.to(args.device) for b in buffer.sample(args.batch_size)])

    calls_per_second(step, 20, args.device)  # warm up
    print(json.dumps({"updates_per_second": calls_per_second(step, args.updates, args.device),
                      "torch_threads": torch.get_num_threads(), "device": args.device}))  # fmt: skip


if __name__ == "__main__":
    main()
