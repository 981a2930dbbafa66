"""Text2Reward (Xie et al. 2023): dense reward programs written by an LLM from a task's
description, checked and run in a sandbox.

* :mod:`.describe` — the per-task descriptions the LLM reads (``envs/text2reward/``);
* :mod:`.state` — the names a program's ``self`` exposes, read from the simulator;
* :mod:`.sandbox` — the static check and the limited process programs run in;
* :mod:`.check` — :func:`check_program`, behind ``embodied reward check``;
* :mod:`embodied.envs.reward` — the env wrapper (``embodied.make(..., reward_code=...)``);
* :mod:`.prompt`, :mod:`.generate`, :mod:`.refine` — asking an LLM for programs.

The names below load their modules on first use, so that ``python -m`` on a submodule
(``sandbox --bench``, ``describe``, ``check``) does not import it twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "CheckReport": "check",
    "check_program": "check",
    "describe_env": "describe",
    "envs_root": "describe",
    "ProgramRejected": "sandbox",
    "RewardProgramError": "sandbox",
    "check_source": "sandbox",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
