"""Algorithms, one readable file each, over the shared core (``nets``, ``data``, ``run``).

Each file defines a config dataclass (paper defaults, cited) and an :class:`Agent`.
"""

from __future__ import annotations

import importlib

from embodied.algos.base import Agent

#: algorithm name -> "module:Class" (imported on first use)
ALGOS: dict[str, str] = {
    "bc": "embodied.algos.bc:BC",
    "iql": "embodied.algos.iql:IQL",
    "mtm": "embodied.algos.mtm:MTM",
}


def agent_class(name: str) -> type[Agent]:
    if name not in ALGOS:
        from embodied.run.config import ConfigError

        raise ConfigError(f"unknown algorithm {name!r}; valid: {', '.join(sorted(ALGOS))}")
    module, cls = ALGOS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def config_class(name: str) -> type:
    return agent_class(name).Config


__all__ = ["ALGOS", "Agent", "agent_class", "config_class"]
