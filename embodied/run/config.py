"""Experiment configs: dataclasses are the schema, YAML fills them, ``--set`` overrides.

A run config has four sections::

    algo:  {name: iql, expectile: 0.7, ...}        # the algorithm's own config dataclass
    env:   {id: metaworld/push-v3, options: {}}    # where it is evaluated (online: also trained)
    data:  {name: metaworld-push-medium, collect: {quality: medium, episodes: 100}}   # offline only
           (+ preferences: LABEL_SET, label: {teacher: oracle, pairs: 500}  for IPL)
    train: {steps: 100000, batch_size: 256, seed: 0, ...}

Overrides use dotted keys: ``--set algo.expectile=0.8 --set train.steps=1000``. An
unknown key anywhere is a :class:`ConfigError` naming the key and the valid ones.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


@dataclass
class EnvConfig:
    """The env the agent is evaluated in (and data is collected from)."""

    id: str = "metaworld/push-v3"  # any id of `embodied envs`
    options: dict = field(default_factory=dict)  # embodied.make options (obs, image_size, ...)


@dataclass
class DataConfig:
    """The offline dataset; collected first when missing and ``collect`` is given."""

    name: str = ""  # dataset name (embodied.data.dataset_id form)
    collect: dict | None = None  # embodied.data.collect.collect kwargs: quality, episodes, workers, ...
    action_free_fraction: float = 0.0  # make this share of episodes action-free (semi-supervised setting)
    preferences: str = ""  # a label set stored beside the dataset (`embodied prefs label`); IPL learns from it
    label: dict | None = None  # how to make `preferences` when missing: teacher, pairs, segment_len, eps, beta, gamma, k, seed


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass
class TrainConfig:
    """The training loop. Offline algorithms count gradient updates; online ones (SAC,
    PPO) count env steps in ``steps``, ``eval_every``, ``log_every`` and ``checkpoint_every``,
    and take their batch size from the algo section."""

    steps: int = 100_000  # gradient updates (offline) or env steps (online)
    batch_size: int = 256  # transitions per update (offline only)
    seed: int = 0  # seeds python, numpy, torch, the sampler and evaluation envs
    device: str = "auto"  # "auto" picks CUDA when present
    eval_every: int = 10_000  # steps between evaluations (0: only at the end)
    eval_episodes: int = 10  # episodes per evaluation
    log_every: int = 1_000  # steps between logged training metrics
    checkpoint_every: int = 10_000  # steps between checkpoints (always one at the end)
    run_dir: str = "runs"  # runs are written to <run_dir>/<name>
    name: str = ""  # run name; default: <algo>-<dataset>-seed<seed>
    compile: bool = False  # torch.compile the update step (offline algorithms and RePo; CUDA; off on CPU by default)
    # torch.compile's mode: "default", "reduce-overhead" (CUDA graphs on a GPU), "max-autotune",
    # "max-autotune-no-cudagraphs"
    compile_mode: str = "default"
    # "bf16": the offline update's forward passes run under torch.autocast(bfloat16), for
    # GPUs with bf16 tensor cores; weights, optimiser state and the loop's metrics stay fp32
    precision: str = "fp32"
    wandb: bool = False  # also log to Weights & Biases
    progress: bool = True  # progress bar on a terminal

    def __post_init__(self):
        # Checked here, not when the loop first needs them: a run that trained for an hour
        # must not fail at its final evaluation (``eval_episodes: 0``) or first log.
        for key in ("steps", "batch_size", "eval_episodes", "log_every", "checkpoint_every", "eval_every"):
            least = 0 if key == "eval_every" else 1
            if getattr(self, key) < least:
                raise ValueError(f"train.{key} must be >= {least}, got {getattr(self, key)}")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"train.compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {self.precision!r}")


@dataclass
class RunConfig:
    algo: Any  # the algorithm's config dataclass (resolved from algo.name)
    env: EnvConfig = field(default_factory=EnvConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict:
        from embodied.algos import agent_class

        out = dataclasses.asdict(self)
        out["algo"] = {"name": algo_name(self.algo), **out["algo"]}
        if agent_class(out["algo"]["name"]).online:  # leave out what does not apply, so config.yaml reads true
            del out["data"]
            unused = unused_train_keys(agent_class(out["algo"]["name"]))
            out["train"] = {k: v for k, v in out["train"].items() if k not in unused}
        return out


#: TrainConfig keys that online algorithms do not use (``compile`` is used by those that
#: compile themselves, e.g. RePo; SB3's models are not compiled).
OFFLINE_TRAIN_KEYS = ("batch_size", "compile", "compile_mode", "precision")


def unused_train_keys(cls) -> tuple[str, ...]:
    from embodied.algos.base import Agent

    compiles = cls.compile is not Agent.compile
    return tuple(k for k in OFFLINE_TRAIN_KEYS if not (k in ("compile", "compile_mode") and compiles))


def algo_name(config: Any) -> str:
    return getattr(type(config), "algo", type(config).__name__.removesuffix("Config").lower())


def _hints(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check a YAML value against a field's type, converting where YAML is looser."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: {value!r} is not a {hint}")
    if hint is Any:
        return value
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
        return float(value)  # YAML 1.1 reads 1e-3 (no dot) as a string
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if origin in (tuple, list) or hint in (tuple, list):
        if isinstance(value, (list, tuple)):
            return tuple(value) if (origin or hint) is tuple else list(value)
    if (origin or hint) is dict and isinstance(value, dict):
        return value
    if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
        return build(hint, value, where)
    raise ConfigError(f"{where}: {value!r} ({type(value).__name__}) is not a {getattr(hint, '__name__', hint)}")


def build(cls, values: Mapping[str, Any], where: str = "config"):
    """Instantiate dataclass ``cls`` from a mapping, strictly."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {values!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    hints = _hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in names:
            from embodied.envs.wrappers import closest

            near = closest(key, names)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"unknown key '{where}.{key}'.{hint} Valid keys: {', '.join(sorted(names))}")
        kwargs[key] = _coerce(value, hints[key], f"{where}.{key}")
    try:
        return cls(**kwargs)
    except ValueError as error:  # a config's own check of its values (__post_init__)
        raise ConfigError(str(error)) from None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config dict."""
    raw = yaml.safe_load(yaml.safe_dump(raw))  # deep copy
    for override in overrides:
        if "=" not in override:
            raise ConfigError(f"override {override!r} must look like key.sub=value, e.g. algo.expectile=0.8")
        path, value = override.split("=", 1)
        keys = path.strip().split(".")
        node = raw
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: '{key}' is not a section")
        node[keys[-1]] = yaml.safe_load(value)
    return raw


def parse(raw: Mapping[str, Any]) -> RunConfig:
    """A RunConfig from a raw mapping (a YAML file's contents after overrides)."""
    from embodied.algos import agent_class, config_class

    sections = {"algo", "env", "data", "train"}
    for key in raw:
        if key not in sections:
            raise ConfigError(f"unknown top-level key '{key}'. Valid keys: {', '.join(sorted(sections))}")
    algo_values = dict(raw.get("algo") or {})
    if "name" not in algo_values:
        raise ConfigError("algo.name is missing (e.g. iql, bc, mtm, sac, ppo)")
    name = algo_values.pop("name")
    algo_config = build(config_class(name), algo_values, "algo")
    train_config = build(TrainConfig, raw.get("train") or {}, "train")
    if agent_class(name).online:
        check_online(agent_class(name), raw, algo_config, train_config)
    return RunConfig(
        algo=algo_config,
        env=build(EnvConfig, raw.get("env") or {}, "env"),
        data=build(DataConfig, raw.get("data") or {}, "data"),
        train=train_config,
    )


def check_online(cls, raw: Mapping[str, Any], algo: Any, train: TrainConfig) -> None:
    """What an online algorithm's config must also satisfy: no dataset keys (they would be
    silently ignored), and a schedule it can keep (it can pause to evaluate or save only
    between its rounds of env steps)."""
    defaults = {"train": TrainConfig(), "data": DataConfig()}
    unused = [f"{section}.{key}" for section in ("train", "data") for key, value in (raw.get(section) or {}).items()
              if (section == "data" or key in unused_train_keys(cls)) and value != getattr(defaults[section], key, None)]  # fmt: skip
    if unused:
        raise ConfigError(f"{', '.join(unused)}: not used by {cls.name}, which learns online from its own env steps "
                          f"(no dataset; its batch size is algo.batch_size)")  # fmt: skip
    unit = cls.iteration_steps(algo)
    if unit < 1:
        raise ConfigError(f"{cls.iteration_key} must be >= 1, got {unit}")
    for key in ("steps", "eval_every", "checkpoint_every"):
        value = getattr(train, key)
        if value % unit:
            raise ConfigError(f"train.{key}={value} is not a multiple of {unit}, the env steps {cls.name} takes "
                              f"between updates ({cls.iteration_key}); training can only pause there")  # fmt: skip


def load(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML config file and apply overrides."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from None
    try:
        return parse(apply_overrides(raw, overrides or []))
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
