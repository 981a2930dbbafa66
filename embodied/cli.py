"""The ``embodied`` command.

    embodied envs [--suite SUITE]
    embodied rollout ENV_ID --policy random|scripted --episodes N [--video PATH] [--seed S]
                     [--option KEY=VALUE ...]
    embodied collect ENV_ID (--quality expert|medium|random|mixed | --policy scripted|random|CHECKPOINT
                     --noise SIGMA) --episodes N --name NAME [--workers K] [--seed S]
    embodied dataset list | info NAME | import FORMAT SOURCE --name NAME
                     | export NAME FORMAT PATH | strip-actions NAME --fraction F --name-out NEW
    embodied train CONFIG.yaml [--set key=value ...] | --resume RUN_DIR
    embodied eval CHECKPOINT --episodes N [--video PATH] [--seed S]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Sequence

os.environ.setdefault("MUJOCO_GL", "egl")  # offscreen rendering; no display on servers


def _parse_option(text: str) -> tuple[str, Any]:
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"option {text!r} must look like KEY=VALUE, e.g. obs=pixels")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def _space(space) -> str:
    import gymnasium as gym

    if isinstance(space, gym.spaces.Box):
        return f"Box{tuple(space.shape)} {space.dtype}"
    if isinstance(space, gym.spaces.Dict):
        return "Dict(" + ", ".join(f"{k}: {_space(v)}" for k, v in space.spaces.items()) + ")"
    return str(space)


def cmd_envs(args: argparse.Namespace) -> int:
    import embodied
    from embodied.envs import SUITES

    suites = [args.suite] if args.suite else list(SUITES)
    for suite in suites:
        if suite not in SUITES:
            raise embodied.EnvOptionError(f"unknown suite {suite!r}; valid: {', '.join(SUITES)}")
    rows = []
    for env_id in (i for s in suites for i in embodied.env_ids(s)):
        try:
            env = embodied.make(env_id, render_mode=None)
            rows.append((env_id, _space(env.observation_space), _space(env.action_space)))
            env.close()
        except ImportError as error:  # an optional extra that is not installed
            rows.append((env_id, f"unavailable: {error}", ""))
    width = max(len(r[0]) for r in rows)
    print(f"{'id':<{width}}  {'observation':<26}  action")
    for env_id, obs, act in rows:
        print(f"{env_id:<{width}}  {obs:<26}  {act}")
    print(f"\n{len(rows)} envs. Options for all: obs=state|pixels|state+pixels, image_size, camera, "
          "distractors, frame_stack, action_repeat (see `embodied rollout --help`).")
    return 0


def _policy(kind: str, env):
    from embodied.envs import scripted_policy
    from embodied.run.rollout import random_policy

    return random_policy(env) if kind == "random" else scripted_policy(env)


def cmd_rollout(args: argparse.Namespace) -> int:
    import embodied
    from embodied.run.rollout import rollout
    from embodied.run.video import VIDEO_SUFFIXES, write_video

    if args.episodes < 1:
        raise ValueError(f"--episodes must be >= 1, got {args.episodes}")
    if args.video and not args.video.lower().endswith(VIDEO_SUFFIXES):
        raise ValueError(f"--video {args.video!r} must end in one of {', '.join(VIDEO_SUFFIXES)}")
    options = dict(args.option or [])
    if args.video and "image_size" not in options and options.get("obs", "state") == "state":
        options["image_size"] = args.video_size
    env = embodied.make(args.env_id, **options)
    try:
        policy = _policy(args.policy, env)
        result = rollout(
            env, policy, args.episodes, seed=args.seed,
            video_episodes=args.video_episodes if args.video else 0, video_every=args.video_every,
        )  # fmt: skip
    finally:
        env.close()
    summary = {"env": args.env_id, "policy": args.policy, "seed": args.seed, **result.summary()}
    if args.video:
        fps = env.metadata.get("render_fps", 30) / args.video_every
        summary["video"] = str(write_video(args.video, result.frames, fps=min(fps, 30)))
    for episode, (ret, length) in enumerate(zip(result.returns, result.lengths)):
        extra = f"  success={result.successes[episode]}" if result.has_success else ""
        print(f"episode {episode}: return={ret:.2f} length={length}{extra}")
    line = f"{args.env_id} {args.policy}: return {summary['return_mean']:.2f} ± {summary['return_std']:.2f}"
    if result.has_success:
        line += f", success rate {summary['success_rate']:.2f}"
    print(line + f" over {args.episodes} episodes")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_collect(args: argparse.Namespace) -> int:
    from embodied.data.collect import collect
    from embodied.data.episodes import dataset_info

    path = collect(
        args.env_id, args.episodes, name=args.name, policy=args.policy, noise=args.noise,
        quality=args.quality, seed=args.seed, workers=args.workers,
        env_options=dict(args.option or []), overwrite=args.overwrite,
    )  # fmt: skip
    info = dataset_info(args.name)
    print(f"wrote {info['id']} at {path}")
    _print_info(info)
    return 0


def _print_info(info: dict) -> None:
    for key, value in info.items():
        print(f"  {key}: {value}")


def cmd_dataset(args: argparse.Namespace) -> int:
    from embodied.data import episodes as store

    if args.action == "list":
        found = store.list_datasets()
        for dataset_id, metadata in found.items():
            print(f"{dataset_id}  episodes={metadata.get('total_episodes')} steps={metadata.get('total_steps')}")
        print(f"{len(found)} datasets under {store.datasets_root()}")
    elif args.action == "info":
        _print_info(store.dataset_info(args.name))
    elif args.action == "import":
        from embodied.data import hdf5io

        if args.format == "minari":
            path = store.import_minari(args.source, name=args.name, overwrite=args.overwrite)
        else:
            importer = {"robomimic": hdf5io.import_robomimic, "d4rl": hdf5io.import_d4rl}[args.format]
            path = importer(args.source, name=args.name, env=args.env, overwrite=args.overwrite)
        print(f"imported {args.source} as {store.dataset_id(args.name)} at {path}")
    elif args.action == "export":
        from embodied.data import hdf5io

        if args.format == "minari":
            path = store.export_minari(args.name, args.path)
        else:
            exporter = {"robomimic": hdf5io.export_robomimic, "d4rl": hdf5io.export_d4rl}[args.format]
            path = exporter(args.name, args.path)
        print(f"exported {store.dataset_id(args.name)} to {path}")
    elif args.action == "strip-actions":
        source = store.read_episodes(args.name)
        stripped = store.strip_actions(list(source), args.fraction, seed=args.seed)
        spaces = store.dataset_spaces(args.name)
        path = store.write_dataset(
            args.new_name, stripped, **spaces, algorithm_name="strip-actions",
            description=f"{store.dataset_id(args.name)} with {args.fraction:.0%} of episodes action-free",
            overwrite=args.overwrite,
        )  # fmt: skip
        print(f"wrote {store.dataset_id(args.new_name)} at {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from embodied.run import config as run_config
    from embodied.run.fit import train

    if args.resume:
        if args.config or args.set:
            raise run_config.ConfigError("--resume continues a run with its saved config: give no CONFIG or --set")
        run_dir = train(resume=args.resume)
    else:
        if not args.config:
            raise run_config.ConfigError("give a CONFIG.yaml (see configs/) or --resume RUN_DIR")
        run_dir = train(run_config.load(args.config, args.set or []))
    print(f"run: {run_dir}")
    eval_csv = run_dir / "eval.csv"
    if eval_csv.exists():
        last = eval_csv.read_text().strip().splitlines()
        print("final evaluation: " + ", ".join(f"{k}={v}" for k, v in zip(last[0].split(","), last[-1].split(","))))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from embodied.run.fit import evaluate_checkpoint

    summary = evaluate_checkpoint(args.checkpoint, args.episodes, seed=args.seed, video=args.video)
    line = f"{summary['env']}: return {summary['return_mean']:.2f} ± {summary['return_std']:.2f}"
    if "success_rate" in summary:
        line += f", success rate {summary['success_rate']:.2f}"
    print(line + f" over {args.episodes} episodes")
    if args.json:
        print(json.dumps(summary))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embodied", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    envs = commands.add_parser("envs", help="list every env id with its spaces")
    envs.add_argument("--suite", help="only this suite (metaworld, mujoco, robomimic, nav)")
    envs.set_defaults(run=cmd_envs)

    roll = commands.add_parser("rollout", help="run episodes with a random or scripted policy")
    roll.add_argument("env_id", metavar="ENV_ID", help="e.g. metaworld/push-v3 (see `embodied envs`)")
    roll.add_argument("--policy", choices=("random", "scripted"), default="random")
    roll.add_argument("--episodes", type=int, default=5)
    roll.add_argument("--seed", type=int, default=0)
    roll.add_argument("--video", metavar="PATH", help="write a video (.mp4 or .gif) of the first episode(s)")
    roll.add_argument("--video-episodes", type=int, default=1, help="episodes to film (default 1)")
    roll.add_argument("--video-every", type=int, default=5, help="film one step in this many (default 5)")
    roll.add_argument("--video-size", type=int, default=128, help="frame size when obs=state (default 128)")
    roll.add_argument("--option", "-o", action="append", type=_parse_option, metavar="KEY=VALUE",
                      help="env option, repeatable: obs=pixels, image_size=64, distractors=noisy_tv, ...")
    roll.add_argument("--json", action="store_true", help="also print the summary as one JSON line")
    roll.set_defaults(run=cmd_rollout)

    col = commands.add_parser("collect", help="collect a dataset with a scripted, noisy or random policy")
    col.add_argument("env_id", metavar="ENV_ID")
    col.add_argument("--quality", choices=("expert", "medium", "random", "mixed"),
                     help="a ready-made level (Meta-World); overrides --policy/--noise")
    col.add_argument("--policy", default="scripted", help="scripted, random, or a checkpoint (file or run directory)")
    col.add_argument("--noise", type=float, default=0.0, help="Gaussian action noise sigma")
    col.add_argument("--episodes", type=int, required=True)
    col.add_argument("--name", required=True, help="dataset name, e.g. metaworld-push-medium")
    col.add_argument("--workers", type=int, default=1)
    col.add_argument("--seed", type=int, default=0)
    col.add_argument("--option", "-o", action="append", type=_parse_option, metavar="KEY=VALUE")
    col.add_argument("--overwrite", action="store_true")
    col.set_defaults(run=cmd_collect)

    data = commands.add_parser("dataset", help="list, inspect, import, export datasets")
    actions = data.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("list", help="local datasets")
    info = actions.add_parser("info", help="summary of one dataset")
    info.add_argument("name")
    imp = actions.add_parser("import", help="import robomimic / D4RL HDF5 or a Minari dataset")
    imp.add_argument("format", choices=("robomimic", "d4rl", "minari"))
    imp.add_argument("source", help="HDF5 file, or a Minari dataset id or directory")
    imp.add_argument("--name", required=True)
    imp.add_argument("--env", help="env id the data comes from (records spaces and spec)")
    imp.add_argument("--overwrite", action="store_true")
    exp = actions.add_parser("export", help="export to robomimic / D4RL HDF5 or a Minari directory")
    exp.add_argument("name")
    exp.add_argument("format", choices=("robomimic", "d4rl", "minari"))
    exp.add_argument("path")
    strip = actions.add_parser("strip-actions", help="copy a dataset with a fraction of episodes action-free")
    strip.add_argument("name")
    strip.add_argument("--fraction", type=float, required=True)
    strip.add_argument("--name-out", dest="new_name", required=True)
    strip.add_argument("--seed", type=int, default=0)
    strip.add_argument("--overwrite", action="store_true")
    data.set_defaults(run=cmd_dataset)

    tr = commands.add_parser("train", help="train an agent from a config (configs/<algo>/...)")
    tr.add_argument("config", nargs="?", metavar="CONFIG.yaml")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. algo.expectile=0.8")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    tr.set_defaults(run=cmd_train)

    ev = commands.add_parser("eval", help="evaluate a checkpoint (file or run directory) in its env")
    ev.add_argument("checkpoint", metavar="CHECKPOINT")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--video", metavar="PATH")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(run=cmd_eval)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from embodied.data.episodes import DatasetError
    from embodied.envs import EnvOptionError, UnknownEnvError

    try:
        return args.run(args)
    except (UnknownEnvError, EnvOptionError, DatasetError, ValueError, TypeError, ImportError,
            FileNotFoundError, FileExistsError) as error:  # fmt: skip
        print(f"embodied {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
