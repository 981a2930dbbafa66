"""Algorithms, one readable file each, over the shared core (``nets``, ``data``, ``run``).

Each file defines a config dataclass (paper defaults, cited) and an :class:`Agent`.
"""

from __future__ import annotations

import importlib

from embodied.algos.base import Agent

#: offline algorithms (learn from a dataset): name -> "module:Class" (imported on first use)
ALGOS: dict[str, str] = {
    "bc": "embodied.algos.bc:BC",
    "iql": "embodied.algos.iql:IQL",
    "ipl": "embodied.algos.ipl:IPL",
    "mtm": "embodied.algos.mtm:MTM",
}

#: online algorithms (learn from their own env steps; no dataset): name -> "module:Class"
ONLINE_ALGOS: dict[str, str] = {
    "sac": "embodied.algos.sb3:SAC",
    "ppo": "embodied.algos.sb3:PPO",
    "repo": "embodied.algos.repo:RePo",
    "dreamer": "embodied.algos.repo:Dreamer",
}


def agent_class(name: str) -> type[Agent]:
    known = {**ALGOS, **ONLINE_ALGOS}
    if name not in known:
        from embodied.run.config import ConfigError

        raise ConfigError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(known))}")
    module, cls = known[name].split(":")
    return getattr(importlib.import_module(module), cls)


def config_class(name: str) -> type:
    return agent_class(name).Config


__all__ = ["ALGOS", "ONLINE_ALGOS", "Agent", "agent_class", "config_class"]
