"""RePo against its Dreamer baseline, with and without visual distractors, then test-time
alignment to a shifted domain, and what the latent keeps of action-independent noise.

    python -m embodied.bench.repo --envs nav/open-v0 mujoco/Reacher-v5 \
        --distractors none video,noisy_tv --seeds 0 1 2 --steps 6000 --workers 2

Three parts, each written to ``--out`` (Markdown), a CSV and a plot:

1. **Control**: every (env, distractors, objective, seed) is one ``embodied train`` run of
   ``configs/repo/<env>-distracted.yaml`` with the distractors replaced and the CPU sizes
   below (``--set KEY=VALUE`` overrides them, ``--set ENV:KEY=VALUE`` in ENV's runs only);
   evaluation return against env steps, and the world model at the end of each run
   (reward loss, KL, RePo's β, decoder loss).
2. **Alignment**: each RePo run trained without distractors is aligned
   (``embodied align``, no reward) to ``--align-to`` (default: new colours); return in
   the shifted domain before and after, and in the source domain after. With
   ``--align-calibration N``, also aligned with N calibration pairs (``--calibration-steps``).
3. **Latent probe** (``--probe-updates``, state observations, quick): the navigation
   state with ``--noise-dims`` dims of fresh Gaussian noise appended each step (an
   action-independent "noisy TV" in state space). World models train on random-policy
   data; a decoder on detached latents (RePo's probe; Dreamer's own decoder) says how
   much of each part the latent holds: R² of the agent's position and of the noise on
   held-out episodes. RePo should keep the position and drop the noise; Dreamer keeps both.

World-model speed (updates/s at the benchmark's size, one torch thread) is timed in this
process after the runs, for both objectives.

``--distractors`` entries are kinds (``video,noisy_tv``) or, with parameters, a YAML flow
mapping of :mod:`embodied.envs.distractors`' kinds to their parameters, e.g. stronger ones:
``"{video: {waves: 16, max_frequency: 6}, noisy_tv: {size: 0.5}}"`` (runs named
``...-video-waves16-max_frequency6+noisy_tv-size0.5-seed0``); a bad one is refused before any run.

``--obs state`` runs the same agents on the env's state vector instead of pixels, at the
same budget, without alignment (new colours do not change a state). Its distractors are
``none`` or ``noise``: ``--noise-dims`` fresh N(0, 1) numbers appended to the state each step
(the env option ``state_noise``), the "noisy TV" of the latent probe, now in control runs.

``--steps``, ``--evals`` and ``--eval-episodes`` take one number for every env and, as
``ENV=N``, an env's own, so envs that learn at different paces share one page:
``--steps 10000 metaworld/drawer-close-v3=6000 --evals 10 metaworld/drawer-close-v3=3``.

A rerun reuses what an earlier one finished under ``--run-dir``: control runs, alignments
and probes with the same settings. A control run that finished fewer ``--steps`` with the
same evaluation interval (``--steps / --evals``) is continued from its last checkpoint, so
a longer budget builds on a shorter one (its alignment is then redone).

``--records DIR`` also keeps each finished control run's outcome (its evaluations, world-model
metrics and alignments) as a small JSON record in DIR, beside the exact settings it ran with,
the date and the git commit it was recorded at; a later bench with the same settings reads the record instead of
training, even on a machine without the run's directory. A page too long for one sitting can
so be built over several (the page says which runs came from records, when and at which commit);
a record whose settings differ in anything but where the runs were saved is trained again, and
its record is kept beside the other (``NAME-<hash>.json``), so a bench with other ``--set`` overrides
sharing the records' folder loses none of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402

from embodied.bench import cached, calls_per_second, mean_std, plot_mean_std, run_trials, save_figure  # noqa: E402
from embodied.bench.offline_rl import read_evals, train_once  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIGS = {
    "nav/open-v0": "nav-open-distracted.yaml",
    "mujoco/Reacher-v5": "mujoco-reacher-distracted.yaml",
    "mujoco/Walker2d-v5": "mujoco-walker-distracted.yaml",
    "metaworld/drawer-close-v3": "metaworld-drawer-close-distracted.yaml",
    "metaworld/button-press-topdown-v3": "metaworld-button-press-topdown-distracted.yaml",
    "metaworld/drawer-open-v3": "metaworld-drawer-open-distracted.yaml",
}
#: Sizes that train here in minutes (RePo's are Dreamer v1's: 64x64 images, embedding 1024,
#: h 200, z 30, batch 50 x 50); the update-to-data ratio stays RePo's 100 per 500 env steps.
#: The reward head keeps the 2 hidden layers the recorded runs had (RePo's code has 3).
CPU_SIZES = {
    "embedding_dim": 256, "deter_dim": 100, "stoch_dim": 16, "hidden_dim": 100, "cnn_depth": 16,
    "batch_size": 16, "seq_len": 32, "prefill": 1000, "train_every": 100, "train_steps": 20,
    "inverse_hidden": 128, "disc_hidden": 128, "reward_layers": 2,
}  # fmt: skip
IMAGE_SIZE = 32
#: An alignment's returns, in the table's order.
ALIGN_COLUMNS = ("source_before", "target_before", "target_after", "source_after")
#: What the world-model table shows of each run's last logged training window.
MODEL_METRICS = ("reward_loss", "kl", "beta", "obs_loss")


def env_config(env_id: str) -> dict:
    """The shipped config the bench's runs of ``env_id`` start from, as raw YAML data."""
    import yaml

    return yaml.safe_load((ROOT / "configs" / "repo" / CONFIGS[env_id]).read_text())


def trial_config(env_id: str, distractors: str, objective: str, seed: int, args) -> dict:
    from embodied.run.config import apply_overrides

    raw = env_config(env_id)
    raw["algo"] = {"name": objective, **CPU_SIZES}
    options = dict(raw["env"]["options"])
    options["obs"] = args.obs
    if args.obs == "pixels":
        options["image_size"] = IMAGE_SIZE
    else:
        options.pop("image_size", None)
    options.pop("distractors", None)
    if distractors == "noise":
        options["state_noise"] = args.noise_dims
    elif distractors != "none":
        options["distractors"] = distractor_spec(distractors)
    raw["env"]["options"] = options
    tag = distractor_tag(distractors) + ("-state" if args.obs == "state" else "")  # pixel runs keep their names
    steps, evals = for_env(args.steps, env_id), for_env(args.evals, env_id)
    raw["train"] = {
        "steps": steps, "seed": seed, "eval_every": steps // evals, "eval_episodes": for_env(args.eval_episodes, env_id),
        "log_every": max(1, steps // 20), "checkpoint_every": steps, "run_dir": str(args.run_dir),
        "name": f"{objective}-{env_id.replace('/', '-')}-{tag}-seed{seed}", "progress": False, "device": "cpu",
    }  # fmt: skip
    return apply_overrides(raw, env_overrides(env_id, args.set))


def for_env(value: int | dict[str, int], env_id: str) -> int:
    """A budget (``--steps``, ``--evals``, ``--eval-episodes``) as ``env_id``'s runs have it."""
    return value[env_id] if isinstance(value, dict) else value


def budgets(entries: list[str], option: str, envs: list[str], minimum: int = 0) -> dict[str, int]:
    """``--steps 10000 metaworld/drawer-close-v3=6000``: each env's value, the plain one unless the
    env has its own (``ENV=N``), so envs that learn at different paces share one table."""
    plain, own = None, {}
    for entry in entries:
        env_id, _, number = entry.rpartition("=")
        env_id = env_id.strip()
        try:
            value = int(number)
        except ValueError:
            raise SystemExit(f"{option} takes N or ENV=N (a whole number), got {entry!r}") from None
        if value < minimum:
            raise SystemExit(f"{option} {entry}: must be >= {minimum}")
        if env_id:
            refuse_other_env(f"{option} {entry}", env_id, envs)
        if (own.get(env_id) if env_id else plain) is not None:
            raise SystemExit(f"{option} {entry}: {env_id or 'the plain value'} is given twice")
        if env_id:
            own[env_id] = value
        else:
            plain = value
    missing = [env_id for env_id in envs if env_id not in own]
    if missing and plain is None:
        raise SystemExit(f"{option} has no value for {' '.join(missing)}: give N for every env, or ENV=N for each")
    return {env_id: own.get(env_id, plain) for env_id in envs}


def refuse_other_env(what: str, env_id: str, envs: list[str]) -> None:
    """A per-env setting (``--set ENV:...``, ``--steps ENV=N``) for an env the bench does not run is refused."""
    if env_id not in envs:
        raise SystemExit(f"{what}: {env_id} is not one of the runs' envs ({' '.join(envs)})")


def budget_text(values: dict[str, int]) -> str:
    """``10000`` where every env has it, else the most common and the others':
    ``10000 (6000 in metaworld/drawer-close-v3's runs)``."""
    counts = list(values.values())
    common = max(counts, key=counts.count)
    others = [f"{value} in {env_id}'s runs" for env_id, value in values.items() if value != common]
    return f"{common}" + (f" ({'; '.join(others)})" if others else "")


def distractor_spec(text: str):
    """A ``--distractors`` entry as the env option: kinds (``video,noisy_tv``) or, in YAML's flow
    form, kinds with parameters (``{video: {}, noisy_tv: {size: 0.5}}``)."""
    import yaml

    return yaml.safe_load(text)


def distractor_tag(text: str) -> str:
    """A ``--distractors`` entry as part of a run's name: ``video+noisy_tv``, and with parameters
    ``video+noisy_tv-size0.5``."""
    spec = distractor_spec(text)
    if isinstance(spec, dict):
        return "+".join(str(kind) + "".join(f"-{key}{value}" for key, value in (params or {}).items())
                        for kind, params in spec.items())  # fmt: skip
    return str(spec).replace(",", "+").replace(" ", "")


def override_scope(override: str) -> str:
    """The env a ``--set`` override is limited to (``ENV:KEY=VALUE``), or "" (every env)."""
    return override.partition("=")[0].rpartition(":")[0].strip()


def env_overrides(env_id: str, overrides: list[str] | None) -> list[str]:
    """The ``--set`` overrides of ``env_id``'s runs: ``KEY=VALUE`` applies to every env,
    ``ENV:KEY=VALUE`` only to ENV's (its prefix dropped)."""
    chosen = []
    for override in overrides or []:
        key = override.partition("=")[0]
        if override_scope(override) in ("", env_id):
            chosen.append(key.rpartition(":")[2].strip() + override[len(key):])
    return chosen


def record_settings(trial: dict) -> dict:
    """What a control run's record must match: the trial without where its runs are saved
    (``train.run_dir``), the record's own path, and alignment settings it does not use (a run
    that is not aligned, or aligned unpaired only, matches whatever the other runs' are)."""
    unused = {"record"}
    if not trial.get("align_to"):
        unused |= {"align_steps", "align_calibration", "calibrated_settings", "calibrated_ratio"}
    elif not trial.get("align_calibration"):
        unused |= {"calibrated_settings", "calibrated_ratio"}
    settings = {k: v for k, v in trial.items() if k not in unused}
    settings["config"] = {**trial["config"], "train": {k: v for k, v in trial["config"]["train"].items()
                                                       if k != "run_dir"}}  # fmt: skip
    return json.loads(json.dumps(settings))  # as a record reads back (tuples are lists)


def record_path(records: Path, name: str, settings: dict) -> Path:
    """Where the record of a run named ``name`` with these settings is, or goes: ``name.json``
    unless that holds a record of other settings (another ``--set``, or older code's), which is
    kept; then the one of ``name-<hash>.json`` that holds these, or a new one."""
    import hashlib

    plain = records / f"{name}.json"
    try:
        taken = json.loads(plain.read_text())["settings"] != settings
    except (OSError, ValueError, KeyError, TypeError):
        taken = False  # no record there, or a damaged one: this run's goes in its place
    if not taken:
        return plain
    digest = hashlib.sha1(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    return records / f"{name}-{digest}.json"


def recorded_trial(trial: dict) -> dict:
    """``run_trial(trial)``, or its record at ``trial['record']`` when it holds these settings."""
    if not trial.get("record"):
        return run_trial(trial)

    def run_and_stamp() -> dict:
        import subprocess

        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        return run_trial(trial) | {"recorded": time.strftime("%Y-%m-%d"), "commit": commit.stdout.strip() or None}

    return cached(trial["record"], record_settings(trial), run_and_stamp) | {"record": trial["record"]}


def run_trial(trial: dict) -> dict:
    import torch

    torch.set_num_threads(1)
    run_dir, evals = train_once(trial["config"], extend=True)  # RePo has no schedule over the total steps
    result = {key: trial[key] for key in ("env", "distractors", "objective", "seed")} | {
        "run_dir": str(run_dir), "evals": evals}  # fmt: skip
    # the world model's last logged window up to the final evaluation (a continued run logs on past it)
    logged = [row for row in read_evals(run_dir / "train.csv")
              if "train/reward_loss" in row and row["step"] <= evals[-1]["step"]]  # fmt: skip
    result["model"] = {k: logged[-1][f"train/{k}"] for k in MODEL_METRICS if f"train/{k}" in logged[-1]} if logged else {}
    if trial.get("align_to"):
        from embodied.run.align import align_run

        final = f"step_{int(evals[-1]['step'])}.pt"  # an alignment of a shorter run's checkpoint is redone
        # unpaired; then, if asked, calibrated by paired steps (with its own settings and update ratio)
        alignments = {"align": ("bench", 0, {}, None)}
        if trial.get("align_calibration"):
            alignments["align_calibrated"] = ("bench-calibrated", trial["align_calibration"],
                                              trial.get("calibrated_settings", {}), trial.get("calibrated_ratio"))  # fmt: skip
        for key, (name, pairs, settings, ratio) in alignments.items():
            saved = run_dir / "align" / name / "summary.json"
            summary = json.loads(saved.read_text()) if saved.exists() else {}
            done = (summary.get("target_options"), summary.get("steps"), Path(summary.get("checkpoint", "")).name,
                    summary.get("calibration_steps", 0), summary.get("settings", {}), summary.get("updates_per_step"))
            if done != (trial["align_to"], trial["align_steps"], final, pairs, settings, ratio):
                summary = align_run(run_dir, trial["align_to"], trial["align_steps"], episodes=trial["eval_episodes"],
                                    seed=trial["seed"], name=name, calibration_steps=pairs, settings=settings,
                                    updates_per_step=ratio)  # fmt: skip
            result[key] = {k: summary[k]["eval/return"] for k in ALIGN_COLUMNS}
    return result


# --- the latent probe ----------------------------------------------------------------------
def probe_trial(trial: dict) -> dict:
    """Train a world model on random-policy data and measure what its latent holds (a result
    saved under ``trial['cache']`` for the same settings is read instead)."""
    settings = {**{k: v for k, v in trial.items() if k != "cache"}, "sizes": probe_sizes()}  # other sizes: rerun
    return cached(trial["cache"], settings, lambda: _probe(trial)) if trial.get("cache") else _probe(trial)


def probe_sizes() -> dict:
    """The probe's world-model sizes: the benchmark's, without its online schedule."""
    return {k: v for k, v in CPU_SIZES.items() if k not in ("prefill", "train_every", "train_steps")}


def _probe(trial: dict) -> dict:
    import torch

    from embodied.algos.repo import Dreamer, RePo, RePoConfig
    from embodied.data.replay import SequenceReplay

    torch.set_num_threads(1)
    torch.manual_seed(trial["seed"])
    import embodied

    env = embodied.make("nav/open-v0", terminate_on_success=False, state_noise=trial["noise_dims"])
    env.reset(seed=trial["seed"])  # seeds the scenes and the noise; the agent's resets continue both streams
    config = RePoConfig(objective=trial["objective"], **probe_sizes(), prefill=10**9)  # random actions only, no updates
    agent = (RePo if trial["objective"] == "repo" else Dreamer)(config, env.observation_space, env.action_space, "cpu")
    agent.seed(trial["seed"])
    agent.attach(env)
    agent.learn(trial["data_steps"], lambda *step: None)
    start = time.perf_counter()
    for _ in range(trial["updates"]):
        agent.update_world_model(agent.replay.sample(config.batch_size, config.seq_len, agent.rng))
    seconds = time.perf_counter() - start

    held_out = SequenceReplay(trial["data_steps"] + 2, env.observation_space.shape, np.float32, agent.action_dim)
    agent.replay, agent.env_steps = held_out, 0
    env.reset(seed=trial["seed"] + 100_000)
    agent.attach(env)
    agent.learn(2000, lambda *step: None)
    with torch.no_grad():
        batch = held_out.sample(64, config.seq_len, np.random.default_rng(1))
        posterior, prior = agent.rssm.observe(agent.embed(batch["obs"]), batch["action"], batch["is_first"])
        decoded = agent.decoder(posterior.features)
        from embodied.nets.rssm import gaussian_kl

        kl = gaussian_kl(posterior, prior).mean().item()
    target, decoded = batch["obs"][1:].flatten(0, 1).numpy(), decoded[1:].flatten(0, 1).numpy()
    r2 = 1 - ((decoded - target) ** 2).mean(0) / target.var(0).clip(min=1e-8)
    env.close()
    return {key: trial[key] for key in ("objective", "seed")} | {
        "position_r2": float(r2[:2].mean()), "noise_r2": float(r2[-trial["noise_dims"]:].mean()), "kl": kl,
        "updates_per_second": trial["updates"] / seconds,
    }  # fmt: skip


def task_options(env_id: str) -> dict:
    """The env options of the env's config other than the observation and the distractors,
    which the bench sets itself."""
    options = env_config(env_id)["env"]["options"]
    return {k: v for k, v in options.items() if k not in ("obs", "image_size", "distractors")}


#: Action spaces up to this many dims get the best constant action among the references (3^d − 1 candidates).
MAX_CONSTANT_DIMS = 4


def best_constant_action(env, episodes: int, screen_episodes: int = 3) -> tuple[np.ndarray, dict]:
    """The best action held all episode among every one whose dims are each at their low, 0 or
    high (3^d − 1 of them, zero excluded): each is screened on ``screen_episodes`` episodes, the
    best then scored on ``episodes`` (the same seeds as the other references): the action, its score."""
    import itertools

    from embodied.run.rollout import rollout

    low, high = env.action_space.low, env.action_space.high
    candidates = [np.array([{-1: lo, 0: 0.0, 1: hi}[sign] for sign, lo, hi in zip(signs, low, high)], np.float32)
                  for signs in itertools.product((-1, 0, 1), repeat=len(low)) if any(signs)]  # fmt: skip
    screened = [rollout(env, lambda _obs, a=action: a, screen_episodes, seed=10_000).mean_return for action in candidates]
    action = candidates[int(np.argmax(screened))]
    result = rollout(env, lambda _obs: action, episodes, seed=10_000)
    return action, {"return": result.mean_return, "success_rate": result.success_rate}


def reference_returns(env_id: str, episodes: int) -> dict[str, dict[str, float]]:
    """Return (and success rate, where the env reports one) of fixed policies in the control
    runs' env, for scale: uniform random actions, zero actions, and the suite's scripted
    policy where it has one; and the best single action held all episode
    (:func:`best_constant_action`), what an agent that ignores its view can reach. The state
    is observed (the policies ignore it), the other options are the runs' own."""
    import embodied
    from embodied.envs import scripted_policy
    from embodied.run.rollout import random_policy, rollout

    env = embodied.make(env_id, **task_options(env_id))
    policies = {"uniform random": random_policy(env), "zero action": lambda _obs: np.zeros(env.action_space.shape, np.float32)}
    try:
        policies["scripted"] = scripted_policy(env)
    except ValueError:  # the suite has no scripted policy
        pass
    env.action_space.seed(0)
    references = {}
    for name, policy in policies.items():
        result = rollout(env, policy, episodes, seed=10_000)
        references[name] = {"return": result.mean_return, "success_rate": result.success_rate}
    if env.action_space.shape[0] <= MAX_CONSTANT_DIMS:
        action, result = best_constant_action(env, episodes)
        references[f"best constant action (of {3 ** len(action) - 1}, {np.round(action, 2).tolist()})"] = result
    env.close()
    return references


def speed_agent(env_id: str, objective: str, device: str = "cpu", compiled: bool = False, obs: str = "pixels",
                sizes: dict | None = None, image_size: int = IMAGE_SIZE):  # fmt: skip
    """A RePo or Dreamer agent at the benchmark's size (``obs``: pixels or state; ``sizes``:
    config fields, :data:`CPU_SIZES` unless given) with a filled replay, and a function that
    runs one world-model + behaviour update on a fresh batch."""
    import embodied
    from embodied.algos.repo import Dreamer, RePo, RePoConfig

    env = embodied.make(env_id, obs=obs, **({"image_size": image_size} if obs == "pixels" else {}))
    config = RePoConfig(objective=objective, **{**(CPU_SIZES if sizes is None else sizes), "prefill": 10**9})
    agent = (RePo if objective == "repo" else Dreamer)(config, env.observation_space, env.action_space, device)
    agent.seed(0)
    agent.attach(env)
    agent.learn(config.seq_len * 4, lambda *step: None)
    env.close()
    if compiled:
        agent.compile()

    def update() -> None:
        agent.update(agent.replay.sample(config.batch_size, config.seq_len, agent.rng, agent.device))

    return agent, update


def update_speed(env_id: str, objective: str, updates: int = 20, obs: str = "pixels") -> float:
    """World-model + behaviour updates/s at the benchmark's size, one torch thread."""
    import torch

    torch.set_num_threads(1)
    _, update = speed_agent(env_id, objective, obs=obs)
    update()  # warm-up
    return calls_per_second(update, updates)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--envs", nargs="+", default=["nav/open-v0", "mujoco/Reacher-v5"], choices=list(CONFIGS))
    parser.add_argument("--distractors", nargs="+", default=["none", "video,noisy_tv"])
    parser.add_argument("--objectives", nargs="+", default=["repo", "dreamer"], choices=["repo", "dreamer"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--obs", choices=["pixels", "state"], default="pixels",
                        help="what the agents see (state: no distractors, no alignment)")
    parser.add_argument("--steps", nargs="+", default=["6000"], metavar="[ENV=]N",
                        help="env steps per control run (0: skip the runs); ENV=N: that env's own")
    parser.add_argument("--evals", nargs="+", default=["6"], metavar="[ENV=]N", help="evaluations per run")
    parser.add_argument("--eval-episodes", nargs="+", default=["10"], metavar="[ENV=]N")
    parser.add_argument("--align-to", default="distractors=colors", help="KEY=VALUE[;KEY=VALUE]: the shifted domain")
    parser.add_argument("--align-steps", type=int, default=1000, help="target-domain env steps of alignment (0: skip)")
    parser.add_argument("--align-calibration", type=int, default=0, metavar="N",
                        help="also align with N calibration pairs (the same states seen in both domains first, as "
                             "RePo's released code does with 5000); 0: only the unpaired alignment")
    parser.add_argument("--calibrated-set", action="append", metavar="KEY=VALUE",
                        help="an alignment setting of the calibrated alignment (embodied align --set)")
    parser.add_argument("--calibrated-updates-per-step", type=float, metavar="R",
                        help="encoder updates per env step of the calibrated alignment (default: training's ratio)")
    parser.add_argument("--probe-updates", type=int, default=1500, help="world-model updates of the probe (0: skip)")
    parser.add_argument("--probe-data", type=int, default=5000, help="random-policy env steps the probe learns from")
    parser.add_argument("--noise-dims", type=int, default=8)
    parser.add_argument("--set", action="append", metavar="[ENV:]KEY=VALUE",
                        help="override in every control run's config (with ENV: only in that env's runs)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/bench-repo"))
    parser.add_argument("--out", type=Path, default=Path("results/repo.md"))
    parser.add_argument("--records", type=Path, metavar="DIR",
                        help="keep each finished control run's outcome as a JSON record in DIR, and read a record "
                             "with the same settings instead of training (default: no records)")
    args = parser.parse_args(argv)
    command = "python -m embodied.bench.repo " + shlex.join(argv if argv is not None else sys.argv[1:])
    for override in args.set or []:
        scope = override_scope(override)
        if scope:
            refuse_other_env(f"--set {override}", scope, args.envs)
    args.steps = budgets(args.steps, "--steps", args.envs)
    args.evals = budgets(args.evals, "--evals", args.envs, minimum=1)
    args.eval_episodes = budgets(args.eval_episodes, "--eval-episodes", args.envs, minimum=1)
    for env_id, steps in args.steps.items():
        if steps % args.evals[env_id]:
            where = f" ({env_id}'s)" if len(args.envs) > 1 else ""
            raise SystemExit(f"--steps {steps} must be a multiple of --evals {args.evals[env_id]}{where}")
    if 0 in args.steps.values() and any(args.steps.values()):
        raise SystemExit("--steps 0 skips the runs: give it every env or none")
    if args.obs == "state" and not set(args.distractors) <= {"none", "noise"}:
        raise SystemExit(f"--obs state: distractors are drawn in pixels; a state's are none or noise (--noise-dims "
                         f"N(0, 1) dims appended), got {' '.join(args.distractors)}")
    if args.obs == "pixels" and "noise" in args.distractors:
        raise SystemExit("--distractors noise appends noise to a state (--obs state); in frames, noisy_tv draws it")
    import yaml

    from embodied.envs.distractors import parse_spec

    for distractors in sorted(set(args.distractors) - {"none", "noise"}):
        try:
            parse_spec(distractor_spec(distractors))
        except (ValueError, yaml.YAMLError) as error:  # EnvOptionError is a ValueError
            raise SystemExit(f"--distractors {distractors}: {error}") from None

    align_to = dict((k.strip(), yaml.safe_load(v)) for k, v in (item.split("=", 1) for item in args.align_to.split(";")))
    if any("=" not in item for item in args.calibrated_set or []):
        raise SystemExit(f"--calibrated-set takes KEY=VALUE, got {' '.join(args.calibrated_set)}")
    calibrated_settings = {k.strip(): yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.calibrated_set or [])}

    probes = [{"objective": objective, "seed": seed, "noise_dims": args.noise_dims, "updates": args.probe_updates,
               "data_steps": args.probe_data, "cache": str(args.run_dir / "probes" / f"{objective}-seed{seed}.json")}
              for objective in args.objectives for seed in args.seeds]  # fmt: skip
    probe_results = run_trials(probe_trial, probes, args.workers, lambda r: (
        f"probe {r['objective']} seed {r['seed']}: position R² {r['position_r2']:.2f}, noise R² {r['noise_r2']:.2f}, "
        f"KL {r['kl']:.2f}")) if args.probe_updates else []  # fmt: skip

    trials = []
    for env_id in args.envs:
        for distractors in args.distractors:
            for objective in args.objectives:
                for seed in args.seeds:
                    aligned = (objective == "repo" and distractors == "none" and args.align_steps > 0
                               and args.obs == "pixels")  # fmt: skip
                    trials.append({"env": env_id, "distractors": distractors, "objective": objective, "seed": seed,
                                   "config": trial_config(env_id, distractors, objective, seed, args),
                                   "align_to": align_to if aligned else None, "align_steps": args.align_steps,
                                   "align_calibration": args.align_calibration,
                                   "calibrated_settings": calibrated_settings,
                                   "calibrated_ratio": args.calibrated_updates_per_step,
                                   "eval_episodes": args.eval_episodes[env_id]})  # fmt: skip
                    if args.records:
                        trials[-1]["record"] = str(record_path(args.records, trials[-1]["config"]["train"]["name"],
                                                               record_settings(trials[-1])))
    results = run_trials(recorded_trial, trials, args.workers, lambda r: (
        f"{r['env']} {r['distractors']} {r['objective']} seed {r['seed']}: return {r['evals'][-1]['eval/return']:.2f}"
        + (f", aligned {r['align']['target_before']:.2f} -> {r['align']['target_after']:.2f}" if "align" in r else "")
        + (f", calibrated -> {r['align_calibrated']['target_after']:.2f}" if "align_calibrated" in r else "")
    )) if any(args.steps.values()) else []  # fmt: skip
    references = {env_id: reference_returns(env_id, max(args.eval_episodes[env_id], 30)) for env_id in args.envs}
    speeds = {(env_id, objective): update_speed(env_id, objective, obs=args.obs)
              for env_id in args.envs for objective in args.objectives}  # fmt: skip
    write(results, probe_results, references, speeds, align_to, args, command.strip())
    print(args.out.read_text())


def env_settings(env_id: str) -> str:
    return ", ".join(f"{k} {v}" for k, v in task_options(env_id).items()) or "none"


def final_cell(runs: list[dict]) -> str:
    """Mean ± std of the runs' last evaluation return, and their mean success rate where the env has one."""
    cell = mean_std([r["evals"][-1]["eval/return"] for r in runs])
    successes = [r["evals"][-1].get("eval/success_rate") for r in runs]
    if runs and all(s is not None and s == s for s in successes):  # s == s: not NaN
        cell += f" (success {np.mean(successes):.2f})"
    return cell


def write(results, probes, references, speeds, align_to, args, command: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from embodied.run.config import apply_overrides

    def shown(overrides: list[str]) -> dict:
        """CPU_SIZES with ``overrides`` applied, as the runs saw them (in CPU_SIZES' order)."""
        return {**CPU_SIZES, **apply_overrides({"algo": dict(CPU_SIZES)}, overrides)["algo"]}

    common = shown(env_overrides("", args.set))
    sizes = ", ".join(f"{k} {v}" for k, v in common.items())
    for env_id in args.envs:  # what an env's own --set changed
        own = {k: v for k, v in shown(env_overrides(env_id, args.set)).items() if common.get(k, object()) != v}
        if own:
            sizes += f"; in {env_id}'s runs " + ", ".join(f"{k} {v}" for k, v in own.items())
    seen = f"{IMAGE_SIZE}x{IMAGE_SIZE} pixels" if args.obs == "pixels" else "state observations (no pixels)"
    noise = (f" (distractors `noise`: {args.noise_dims} fresh N(0, 1) numbers appended to the state each step)"
             if "noise" in args.distractors else "")  # fmt: skip
    aligned = [r for r in results if "align" in r]
    title = "RePo against Dreamer, with and without " + ("distractors" if args.obs == "pixels" else
                                                         "noise, from the state")  # fmt: skip
    title = "; ".join([title] + ["test-time alignment"] * bool(aligned) + ["what the latent keeps"] * bool(probes))
    lines = [
        f"# {title}",
        "",
        f"Made by `{command}` ({time.strftime('%Y-%m-%d')}, CPU, one torch thread per run, {args.workers} runs at a "
        f"time). {seen[0].upper() + seen[1:]}{noise}, sizes shrunk for the CPU ({sizes}; RePo's are Dreamer v1's), "
        f"{budget_text(args.steps)} env steps per run, evaluation return of the deterministic policy over "
        f"{budget_text(args.eval_episodes)} episodes, mean ± std over seeds {', '.join(map(str, args.seeds))}. Env options from "
        + "; ".join(f"`configs/repo/{CONFIGS[env_id]}` ({env_settings(env_id)})" for env_id in args.envs) + ".",
    ]
    recorded = [r for r in results if r.get("record")]
    if recorded:
        days = sorted({r["recorded"] for r in recorded})
        commits = sorted({r["commit"] for r in recorded if r.get("commit")})
        lines[-1] += (f" Each run's outcome is kept in `{Path(recorded[0]['record']).parent}/` (`--records`), read back "
                      "where a run with the same settings finished before: these runs were recorded "
                      + (f"on {days[0]}" if len(days) == 1 else f"between {days[0]} and {days[-1]}")
                      + (f", by the code at commit{'s' * (len(commits) > 1)} {', '.join(commits)}" if commits else "")
                      + ".")  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for result in results:
        groups.setdefault((result["env"], result["distractors"], result["objective"]), []).append(result)

    def objective_table(cell: Callable[[list[dict]], str]) -> list[str]:
        """One row per (env, distractors), one column per objective: ``cell`` of that group's runs."""
        rows = ["| env | distractors | " + " | ".join(args.objectives) + " |", "|---|---|" + "---:|" * len(args.objectives)]
        for env_id in args.envs:
            for distractors in args.distractors:
                cells = [cell(groups.get((env_id, distractors, o), [])) for o in args.objectives]
                rows.append(f"| {env_id} | {distractors} | " + " | ".join(cells) + " |")
        return rows

    if results:
        lines += ["", "## Control: final return", "", *objective_table(final_cell)]
        lines += ["", f"Over the whole run: the mean of each run's {budget_text(args.evals)} evaluation returns (the area under its "
                  "learning curve, per evaluation), mean ± std over seeds.", "",
                  *objective_table(lambda runs: mean_std([np.mean([row["eval/return"] for row in r["evals"]])
                                                          for r in runs]))]  # fmt: skip
        lines += ["", f"![return against env steps]({args.out.with_suffix('.png').name})"]
        lines += ["", "The world model at the end (each run's last logged window of updates, on replayed batches; mean "
                  "± std over seeds): the reward head's loss (half the squared error), KL(q ‖ p) per step, RePo's "
                  "Lagrange multiplier β (its budget is 3 nats) and the decoder's loss (Dreamer's objective; for RePo "
                  "a probe on detached latents).", "",
                  "| env | distractors | objective | reward loss | KL (nats) | β | decoder loss |",
                  "|---|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for env_id, distractors, objective in [(e, d, o) for e in args.envs for d in args.distractors
                                               for o in args.objectives]:  # fmt: skip
            runs, cells = groups.get((env_id, distractors, objective), []), []
            for key in MODEL_METRICS:
                values = [r["model"][key] for r in runs if key in r["model"]]
                if key in ("beta", "reward_loss"):  # small numbers: 1.11e-05, 2.10e-04 ± 3.1e-05
                    spread = f" ± {np.std(values):.1e}" if key == "reward_loss" else ""
                    cells.append(f"{np.mean(values):.2e}{spread}" if values else "—")
                else:
                    cells.append(mean_std(values))
            lines.append(f"| {env_id} | {distractors} | {objective} | " + " | ".join(cells) + " |")
    if references:
        lines += ["", "For scale, fixed policies in the same envs (no distractors change a return), mean over "
                  f"{budget_text({e: max(n, 30) for e, n in args.eval_episodes.items()})} episodes:", "",
                  "| env | policy | return | success rate |", "|---|---|---:|---:|"]  # fmt: skip
        for env_id, policies in references.items():
            for name, reference in policies.items():
                success = reference["success_rate"]
                lines.append(f"| {env_id} | {name} | {reference['return']:.2f} | "
                             f"{'n/a' if success is None else f'{success:.2f}'} |")  # fmt: skip
    if aligned:
        target = ", ".join(f"{k}={v}" for k, v in align_to.items())
        calibrated = ""
        if args.align_calibration:
            own = [*(args.calibrated_set or []), *([f"{args.calibrated_updates_per_step} encoder updates per env step"]
                                                   if args.calibrated_updates_per_step else [])]  # fmt: skip
            calibrated = (f" Calibrated: first {args.align_calibration} steps of the frozen policy in the source env, "
                          "replayed in the target env from the same seeds (the same states in both domains), and each "
                          "target frame's embedding is also pulled onto its source pair's, as RePo's released code "
                          "does (calibration_mode simple_pair)" + (f"; {', '.join(own)}" if own else "") + ".")
        lines += ["", f"## Test-time alignment to `{target}` (RePo runs trained without distractors)", "",
                  f"{args.align_steps} reward-free env steps in the shifted domain; only the encoder learns, by "
                  "training's update ratio unless said otherwise. Unpaired: support matching and dynamics "
                  "consistency, as the paper describes it." + calibrated, "",
                  "| env | alignment | source before | target before | target after | source after |",
                  "|---|---|---:|---:|---:|---:|"]  # fmt: skip
        for env_id in args.envs:
            for key, label in (("align", "unpaired"), ("align_calibrated", f"calibrated ({args.align_calibration} pairs)")):
                runs = [r[key] for r in aligned if r["env"] == env_id and key in r]
                if runs:
                    lines.append(f"| {env_id} | {label} | " + " | ".join(
                        mean_std([run[k] for run in runs]) for k in ALIGN_COLUMNS) + " |")  # fmt: skip
    if probes:
        lines += ["", "## What the latent keeps: position and action-independent noise", "",
                  f"nav/open-v0 state with {args.noise_dims} N(0, 1) noise dims appended per step; world model only, "
                  f"{args.probe_updates} updates on {args.probe_data} random-policy steps; R² of a decoder on the "
                  "posterior's features on held-out episodes (1: all of it, 0: none of it); KL(q ‖ p) per step.", "",
                  "| objective | position R² | noise R² | KL (nats) | world-model updates/s (state) |",
                  "|---|---:|---:|---:|---:|"]  # fmt: skip
        for objective in args.objectives:
            runs = [p for p in probes if p["objective"] == objective]
            lines.append(f"| {objective} | {mean_std([p['position_r2'] for p in runs])} | "
                         f"{mean_std([p['noise_r2'] for p in runs])} | {mean_std([p['kl'] for p in runs])} | "
                         f"{np.median([p['updates_per_second'] for p in runs]):.1f} |")  # fmt: skip
    if speeds:
        lines += ["", "## Speed", "",
                  f"Updates/s (world model and actor-critic, batch {CPU_SIZES['batch_size']} x {CPU_SIZES['seq_len']}, "
                  f"{seen}, horizon 15) in this process with one torch thread, after the runs. "
                  "No GPU was lent to this task.", "",
                  "| env | " + " | ".join(args.objectives) + " |", "|---|" + "---:|" * len(args.objectives)]  # fmt: skip
        for env_id in args.envs:
            lines.append(f"| {env_id} | " + " | ".join(f"{speeds[(env_id, o)]:.2f}" for o in args.objectives) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")

    with open(args.out.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["part", "env", "distractors", "objective", "seed", "step", "return", "extra"])
        for r in sorted(results, key=lambda r: (r["env"], r["distractors"], r["objective"], r["seed"])):
            for row in r["evals"]:
                writer.writerow(["control", r["env"], r["distractors"], r["objective"], r["seed"], int(row["step"]),
                                 row.get("eval/return", ""), ""])  # fmt: skip
            for key in ("align", "align_calibrated"):
                if key in r:
                    writer.writerow([key.replace("_", "-"), r["env"], r["distractors"], r["objective"], r["seed"], "",
                                     "", json.dumps(r[key])])  # fmt: skip
        for p in probes:
            writer.writerow(["probe", "nav/open-v0+noise", "", p["objective"], p["seed"], "", "", json.dumps(p)])
    if results:
        figure, axes = plt.subplots(1, len(args.envs) * len(args.distractors), squeeze=False,
                                    figsize=(3.4 * len(args.envs) * len(args.distractors), 3))  # fmt: skip
        for axis, (env_id, distractors) in zip(axes[0], [(e, d) for e in args.envs for d in args.distractors]):
            for objective in args.objectives:
                runs = groups.get((env_id, distractors, objective), [])
                if runs:
                    plot_mean_std(axis, runs, lambda row: row.get("eval/return", np.nan), objective, markersize=3)
            axis.set_title(f"{env_id}\n{distractors}", fontsize=8)
            axis.set_xlabel("env steps")
        axes[0][0].set_ylabel("return")
        axes[0][-1].legend(fontsize=8)
        figure.tight_layout()
        save_figure(figure, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
