"""The ``embodied`` command.

    embodied envs [--suite SUITE]
    embodied rollout ENV_ID --policy random|scripted --episodes N [--video PATH] [--seed S]
                     [--option KEY=VALUE ...]
    embodied collect ENV_ID (--quality expert|medium|random|mixed | --policy scripted|random|CHECKPOINT
                     --noise SIGMA) --episodes N --name NAME [--workers K] [--seed S]
    embodied dataset list | info NAME | import FORMAT SOURCE --name NAME
                     | export NAME FORMAT PATH | strip-actions NAME --fraction F --name-out NEW
                     | label-actions NAME --checkpoint RUN_DIR_OR_FILE --name-out NEW
    embodied train CONFIG.yaml [--set key=value ...] [--reward-code FILE] | --resume RUN_DIR
    embodied eval CHECKPOINT --episodes N [--video PATH] [--seed S] [--option KEY=VALUE ...]
    embodied align RUN_DIR --option KEY=VALUE [...] [--steps N] [--episodes N] [--calibration-steps N]
                     (RePo test-time alignment)
    embodied reward check ENV_ID FILE [--steps N] [--seed S] [--json]
    embodied reward generate ENV_ID "INSTRUCTION" [--model NAME] [--base-url URL] [--few-shot K]
                     [--out FILE] [--replay FILE | --record FILE]
    embodied reward refine RUN_DIR "FEEDBACK" [--instruction TEXT] [--model NAME] [...]
    embodied prefs label DATASET --teacher oracle|noisy|mistake|skip|equal|myopic [--eps E] [--beta B]
                     [--gamma G] --pairs N --segment-len L [--k K] [--name NAME]
                     | label DATASET --teacher vlm --model NAME "TASK" --pairs N [--frames F] [--base-url URL]
                     | list DATASET
                     | reward DATASET --labels NAME --out MODEL.pt [--gaussian] [--relabel NEW]
                     | relabel DATASET --model MODEL.pt --name-out NEW
                     | transfer --source DATASET_A --target DATASET_B [--source-labels NAME] [--name NAME]
    embodied sweep CONFIG.yaml --seeds 0-4 [--grid key=v1,v2 ...] [--address ray://HOST:PORT] [--workers N]
                     [--cpus-per-trial C] [--gpus-per-trial G] [--retries R] [--dir DIR] [--metric KEY]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
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
    for env_id in (i for s in suites for i in embodied.env_ids(s, benchmarks=True)):
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
    elif args.action == "label-actions":
        import embodied
        from embodied.algos.mtm import MTM, label_actions

        agent = embodied.load(args.checkpoint)
        if not isinstance(agent, MTM):
            raise ValueError(f"{args.checkpoint} holds a {agent.name} agent; label-actions needs an MTM checkpoint")
        source = list(store.read_episodes(args.name))
        labelled = label_actions(agent, source)
        count = sum(not episode.has_actions for episode in source)
        path = store.write_dataset(
            args.new_name, labelled, **store.dataset_spaces(args.name), algorithm_name="label-actions",
            description=f"{store.dataset_id(args.name)} with the actions of {count} action-free episodes "
                        f"labelled by MTM inverse dynamics ({args.checkpoint})",
            overwrite=args.overwrite,
        )  # fmt: skip
        print(f"labelled {count} of {len(source)} episodes; wrote {store.dataset_id(args.new_name)} at {path}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from embodied.algos import agent_class
    from embodied.run import config as run_config
    from embodied.run.fit import train

    if args.resume:
        if args.config or args.set or args.reward_code:
            raise run_config.ConfigError("--resume continues a run with its saved config (and reward program): "
                                         "give no CONFIG, --set or --reward-code")  # fmt: skip
        run_dir = train(resume=args.resume)
    else:
        if not args.config:
            raise run_config.ConfigError("give a CONFIG.yaml (see configs/) or --resume RUN_DIR")
        config = run_config.load(args.config, args.set or [])
        if args.reward_code:
            program = Path(args.reward_code)
            if not program.is_file():
                raise FileNotFoundError(f"--reward-code: no such file {args.reward_code!r}")
            if not agent_class(run_config.algo_name(config.algo)).online:
                raise run_config.ConfigError(f"--reward-code replaces the reward the agent learns from, but "
                                             f"{run_config.algo_name(config.algo)} learns from a dataset: use an "
                                             "online algorithm (sac, ppo)")  # fmt: skip
            config.env.options["reward_code"] = str(program.resolve())
        run_dir = train(config)
    print(f"run: {run_dir}")
    if (run_dir / "reward_code" / "v1.py").exists():
        print(f"reward program: {run_dir / 'reward_code' / 'v1.py'} "
              f"(refine it: embodied reward refine {run_dir} \"FEEDBACK\")")  # fmt: skip
    eval_csv = run_dir / "eval.csv"
    if eval_csv.exists():
        last = eval_csv.read_text().strip().splitlines()
        print("final evaluation: " + ", ".join(f"{k}={v}" for k, v in zip(last[0].split(","), last[-1].split(","))))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    import numpy as np

    from embodied.run.fit import evaluate_checkpoint

    summary = evaluate_checkpoint(args.checkpoint, args.episodes, seed=args.seed, video=args.video,
                                  env_options=dict(args.option or []))  # fmt: skip
    line = f"{summary['env']}: return {summary['return_mean']:.2f} ± {summary['return_std']:.2f}"
    if "success_rate" in summary:
        line += f", success rate {summary['success_rate']:.2f}"
    print(line + f" over {args.episodes} episodes")
    for task, rate in summary.get("success_rate_by_task", {}).items():
        print(f"  {task}: success rate {rate:.2f}")
    successes = summary.get("episode_successes", [])
    if 0 < sum(successes) < len(successes):  # both kinds: does the env's reward agree with its success?
        returns = np.array(summary["episode_returns"])
        won = np.array(successes)
        print(f"  return of the {won.sum()} successful episodes {returns[won].mean():.2f}, "
              f"of the {(~won).sum()} failed ones {returns[~won].mean():.2f}")
    if args.json:
        print(json.dumps(summary))
    return 0


def cmd_align(args: argparse.Namespace) -> int:
    from embodied.run.align import align_run

    summary = align_run(args.run_dir, dict(args.option), args.steps, episodes=args.episodes, seed=args.seed,
                        name=args.name, calibration_steps=args.calibration_steps, settings=dict(args.set or []),
                        updates_per_step=args.updates_per_step)  # fmt: skip
    for key in ("source_before", "target_before", "target_after", "source_after"):
        metrics = summary[key]
        line = f"{key.replace('_', ' ')}: return {metrics['eval/return']:.2f}"
        if "eval/success_rate" in metrics:
            line += f", success rate {metrics['eval/success_rate']:.2f}"
        print(line)
    print(f"aligned checkpoint: {summary['out']}")
    if args.json:
        print(json.dumps(summary))
    return 0


def _llm_client(args: argparse.Namespace):
    from embodied.llm import LLMConfig, make_client

    return make_client(LLMConfig(
        base_url=args.base_url, model=args.model, timeout_s=args.timeout, temperature=args.temperature,
        replay=args.replay, record=args.record,
    ))  # fmt: skip


def _default_program_path(env_id: str) -> Path:
    """runs/reward_code/<suite>/<task>.py, numbered (<task>-2.py, ...) so nothing is overwritten."""
    suite, _, task = env_id.partition("/")
    folder = Path("runs") / "reward_code" / suite
    path, number = folder / f"{task}.py", 1
    while path.exists():
        number += 1
        path = folder / f"{task}-{number}.py"
    return path


def _llm_failure(args: argparse.Namespace, error: Exception) -> int:
    from embodied.rewards.text2reward.generate import RewardGenerationError

    print(f"embodied reward {args.reward_command}: error: {error}", file=sys.stderr)
    if isinstance(error, RewardGenerationError):
        for attempt, reason in enumerate(error.errors[:-1], start=1):
            print(f"  attempt {attempt} was refused: {reason.splitlines()[0] if reason else ''}", file=sys.stderr)
    return 2


def cmd_reward_generate(args: argparse.Namespace) -> int:
    from embodied.llm import LLMError
    from embodied.rewards.text2reward.generate import generate_program, write_program

    if args.out and Path(args.out).exists() and not args.overwrite:  # say so before spending an LLM call
        raise FileExistsError(f"{args.out} exists; choose another --out or pass --overwrite")
    try:
        client = _llm_client(args)
        result = generate_program(
            args.env_id, args.instruction, client, few_shot=args.few_shot, retries=args.retries,
            check_steps=args.check_steps,
        )  # fmt: skip
    except LLMError as error:
        return _llm_failure(args, error)
    path = write_program(args.out or _default_program_path(args.env_id), result.source, header=result.header(),
                         overwrite=args.overwrite)  # fmt: skip
    shots = f", {len(result.examples)} few-shot example(s)" if result.examples else ", zero-shot"
    print(f"wrote {path} ({client.model}{shots}, {result.attempts} attempt(s); passed the sandbox check "
          f"and {args.check_steps} env steps)")  # fmt: skip
    for warning in result.warnings:
        print(f"  warning: {warning}")
    print(f"check it: embodied reward check {args.env_id} {path}")
    return 0


def cmd_reward_refine(args: argparse.Namespace) -> int:
    from embodied.llm import LLMError
    from embodied.rewards.text2reward.refine import refine_program

    try:
        client = _llm_client(args)
        result = refine_program(
            args.run_dir, args.feedback, client, instruction=args.instruction, retries=args.retries,
            check_steps=args.check_steps,
        )  # fmt: skip
    except LLMError as error:
        return _llm_failure(args, error)
    print(f"wrote {result.path} (v{result.version}, refined from v{result.parent} by {client.model}); "
          f"history in {result.path.parent / 'history.jsonl'}")  # fmt: skip
    for warning in result.generation.warnings:
        print(f"  warning: {warning}")
    print(f"train with it: embodied train CONFIG.yaml --reward-code {result.path}")
    return 0


def _add_llm_options(parser: argparse.ArgumentParser) -> None:
    llm = parser.add_argument_group("LLM endpoint (OpenAI-compatible; defaults from EMBODIED_LLM_* variables)")
    llm.add_argument("--model", help="model name (default: $EMBODIED_LLM_MODEL)")
    llm.add_argument("--base-url", help="API root, e.g. http://localhost:8000/v1 (default: $EMBODIED_LLM_BASE_URL, "
                                        "then $OPENAI_BASE_URL); the key comes from $EMBODIED_LLM_API_KEY or $OPENAI_API_KEY")  # fmt: skip
    llm.add_argument("--timeout", type=float, default=120.0, help="seconds per request (default 120)")
    llm.add_argument("--temperature", type=float, help="sampling temperature (default: the server's)")
    recorded = llm.add_mutually_exclusive_group()
    recorded.add_argument("--replay", metavar="FILE", help="answer from recorded responses in FILE (no network)")
    recorded.add_argument("--record", metavar="FILE", help="ask the endpoint and append every answer to FILE")
    parser.add_argument("--retries", type=int, default=2,
                        help="times a refused program's error is fed back to the LLM (default 2)")
    parser.add_argument("--check-steps", type=int, default=300,
                        help="env steps each program must survive before it is accepted (default 300)")


def cmd_reward_check(args: argparse.Namespace) -> int:
    from embodied.rewards.text2reward.check import check_program, read_program

    report = check_program(args.env_id, read_program(args.file), steps=args.steps, seed=args.seed,
                           timeout_s=args.timeout, filename=args.file)  # fmt: skip
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(report.summary(), file=sys.stdout if report.ok else sys.stderr)
    return 0 if report.ok else 1


def _add_reward_check_command(actions) -> None:
    """`reward check`: the sandbox's static check, then a short run (Text2Reward programs)."""
    check = actions.add_parser("check", help="validate a reward program: static check, then a few hundred env steps",
                               description="Check a reward program `compute_dense_reward(self, action, obs)` for ENV_ID: "
                                           "the sandbox's static rules, then STEPS env steps (random actions, and the "
                                           "scripted expert for Meta-World). Exits 0 with reward statistics, or 1 with "
                                           "the reason (rule or error, and the program line).")  # fmt: skip
    check.add_argument("env_id", metavar="ENV_ID", help="e.g. metaworld/push-v3 or mujoco/Hopper-v5")
    check.add_argument("file", metavar="FILE", help="the program, a .py file")
    check.add_argument("--steps", type=int, default=300, help="env steps to run (default 300)")
    check.add_argument("--seed", type=int, default=0)
    check.add_argument("--timeout", type=float, default=1.0, help="time limit of one program call, seconds (default 1)")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.set_defaults(run=cmd_reward_check)


def _add_reward_llm_commands(actions) -> None:
    """`reward generate` and `reward refine` (LLM-written reward programs, Text2Reward)."""
    gen = actions.add_parser("generate", help="ask an LLM for a reward program (Text2Reward)",
                             description="Ask an LLM for a dense reward program `compute_dense_reward(self, action, obs)` "
                                         "for ENV_ID, check it, and write it.")  # fmt: skip
    gen.add_argument("env_id", metavar="ENV_ID", help="e.g. metaworld/drawer-open-v3")
    gen.add_argument("instruction", metavar="INSTRUCTION", help='the goal in words, e.g. "Open the drawer by its handle."')
    gen.add_argument("--few-shot", type=int, default=0, metavar="K",
                     help="show K programs of similar tasks from the library (default 0: zero-shot)")
    gen.add_argument("--out", metavar="FILE", help="where to write (default runs/reward_code/<suite>/<task>.py, numbered)")
    gen.add_argument("--overwrite", action="store_true", help="replace FILE if it exists")
    _add_llm_options(gen)
    gen.set_defaults(run=cmd_reward_generate)

    ref = actions.add_parser("refine", help="next version of a run's reward program from feedback",
                             description="Feed a run's training statistics and your feedback to the LLM; write "
                                         "RUN_DIR/reward_code/v<N+1>.py and a history line (see "
                                         "embodied.rewards.text2reward.refine for the layout).")  # fmt: skip
    ref.add_argument("run_dir", metavar="RUN_DIR")
    ref.add_argument("feedback", metavar="FEEDBACK", help='what went wrong, e.g. "it pushes the drawer sideways"')
    ref.add_argument("--instruction", help="the task instruction (default: from the history or the program)")
    _add_llm_options(ref)
    ref.set_defaults(run=cmd_reward_refine)


def _teacher(args: argparse.Namespace):
    from embodied.rewards.teachers import ScriptedTeacher

    return ScriptedTeacher.preset(args.teacher, eps=args.eps, beta=args.beta, gamma=args.gamma, score=args.score)


def cmd_prefs(args: argparse.Namespace) -> int:
    import numpy as np

    from embodied.data import load_dataset
    from embodied.data import preferences as prefs
    from embodied.rewards import models, teachers

    if args.action == "label" and args.teacher == "vlm":
        return _label_with_vlm(args)
    if args.action == "label":
        if args.task:
            raise ValueError(f"a task description is read by the vlm teacher only, not by {args.teacher!r}")
        labels = teachers.label_dataset(args.dataset, _teacher(args), args.pairs, args.segment_len, k=args.k,
                                        seed=args.seed)  # fmt: skip
        name = args.name or f"{args.teacher}-{args.pairs}"
        path = prefs.save_preferences(labels, name, overwrite=args.overwrite)
        agree = teachers.agreement(labels, prefs.StepScores.read(args.dataset), args.score)
        print(f"labelled {len(labels)} queries of {args.k} x {args.segment_len} steps "
              f"({labels.info['skipped']} skipped); agreement with the oracle {agree:.3f}; wrote {path}")
    elif args.action == "list":
        for name in prefs.list_preferences(args.dataset):
            labels = prefs.load_preferences(args.dataset, name)
            who = labels.info.get("teacher") or labels.info.get("method", "?")
            print(f"{name}  queries={len(labels)} k={labels.k} segment_len={labels.segment_len}  {who}")
    elif args.action == "reward":
        config = models.RewardModelConfig(steps=args.steps, batch_size=args.batch_size, members=args.members,
                                          gaussian=args.gaussian, inputs=args.inputs)  # fmt: skip
        dataset = load_dataset(args.dataset)
        if args.observation_key:
            dataset = dataset.observation_view(args.observation_key)
        labels = prefs.load_preferences(args.dataset, args.labels)
        train, held_out = labels.split(args.held_out, seed=args.seed) if args.held_out > 0 else (labels, None)
        model, metrics = models.fit_reward_model(dataset, train, config, seed=args.seed, progress=True)
        if held_out is not None and len(held_out):
            metrics["held_out_accuracy"] = models.label_accuracy(model, dataset, held_out)
        models.save_reward_model(model, args.out, extra={"dataset": args.dataset, "labels": args.labels, **metrics})
        print(f"reward model: {', '.join(f'{k}={v:.4g}' for k, v in metrics.items())}; wrote {args.out}")
        if args.relabel:
            models.relabel_dataset(args.dataset, model, args.relabel, overwrite=args.overwrite,
                                   observation_key=args.observation_key)
            print(f"wrote {args.relabel}: {args.dataset} with the model's rewards")
    elif args.action == "relabel":
        model = models.load_reward_model(args.model)
        models.relabel_dataset(args.dataset, model, args.new_name, overwrite=args.overwrite)
        print(f"wrote {args.new_name}: {args.dataset} with rewards from {args.model}")
    elif args.action == "transfer":
        from embodied.algos import pearl
        from embodied.data.dataset import resolve_device

        device = resolve_device(args.device)  # before the datasets load and the transport starts
        config = pearl.PEARLConfig(target_segments=args.segments,
                                   target_pairs=args.pairs, gw_epsilon=args.epsilon, features=args.features,
                                   fused_alpha=args.fused_alpha, device=device)  # fmt: skip
        source, target = load_dataset(args.source), load_dataset(args.target)
        if args.source_labels:
            labels = pearl.transfer(source, prefs.load_preferences(args.source, args.source_labels), target, config,
                                    seed=args.seed)  # fmt: skip
        else:
            episodes, starts = prefs.sample_queries(source.episode_lengths, args.segments, args.segment_len, 1,
                                                    seed=args.seed)  # fmt: skip
            matrix = pearl.teacher_matrix(_teacher(args), prefs.StepScores.read(args.source), episodes[:, 0],
                                          starts[:, 0], args.segment_len, seed=args.seed)  # fmt: skip
            labels = pearl.transfer(source, matrix, target, config, seed=args.seed,
                                    source_segments=(episodes[:, 0], starts[:, 0]), segment_len=args.segment_len)
        name = args.name or f"pearl-from-{args.source.replace('/', '-')}"
        path = prefs.save_preferences(labels, name, overwrite=args.overwrite)
        # The target's own rewards are only a check of the transfer; PEARL never reads them.
        agree = teachers.agreement(labels, prefs.StepScores.read(args.target))
        print(f"transferred {len(labels)} pair labels in {labels.info['gw_seconds']:.1f} s of GW; agreement with the "
              f"target's own reward {agree:.3f}; mean |p - 0.5| {np.abs(labels.preference - 0.5).mean():.3f}; "
              f"wrote {path}")
    return 0


def _label_with_vlm(args: argparse.Namespace) -> int:
    from embodied.data import preferences as prefs
    from embodied.llm import LLMConfig, make_client
    from embodied.rewards import vlm

    if not args.task:
        raise ValueError('the vlm teacher needs the task in words: embodied prefs label DATASET --teacher vlm '
                         '--model NAME "open the drawer"')  # fmt: skip
    if args.k != 2:
        raise ValueError("the vlm teacher compares pairs (--k 2)")
    name = args.name or f"vlm-{args.pairs}"
    path = prefs.preferences_path(args.dataset, name)
    if path.exists() and not args.overwrite:
        raise ValueError(f"label set {name!r} of {args.dataset!r} exists at {path}; choose another --name or --overwrite")
    client = make_client(LLMConfig(base_url=args.base_url, model=args.model, timeout_s=args.timeout,
                                   replay=args.replay, record=args.record))  # fmt: skip
    cache = vlm.LabelCache(args.cache or path.with_name(f"{name}.vlm-cache.jsonl"))
    teacher = vlm.VLMTeacher(client, args.task, cache, frames=args.frames)
    from embodied.llm import LLMError

    try:
        labels = vlm.label_with_vlm(args.dataset, teacher, args.pairs, args.segment_len, seed=args.seed)
    except LLMError as error:
        raise ValueError(f"{error} ({len(cache.entries)} answers are kept in {cache.path}: run the same command again "
                         "to go on from there)") from None
    prefs.save_preferences(labels, name, overwrite=args.overwrite)
    info = labels.info
    print(f"asked {info['asked']} queries ({info['from_cache']} answered from {cache.path}): {len(labels)} labels, "
          f"{info['cannot_tell']} cannot tell (of which {info['unparsed']} replies did not parse); wrote {path}")
    return 0


def _add_teacher_options(parser: argparse.ArgumentParser, required: bool) -> None:
    from embodied.rewards.teachers import KINDS

    kinds = [*KINDS, "vlm"] if required else list(KINDS)  # the VLM labels pairs of one dataset, not transfers
    parser.add_argument("--teacher", choices=kinds, required=required, default=None if required else "oracle",
                        help="B-Pref scripted teacher, or vlm (a vision-language model; see the VLM options)")  # fmt: skip
    parser.add_argument("--eps", type=float, help="mistake: flip rate; skip/equal: threshold share (default 0.1)")
    parser.add_argument("--beta", type=float, help="noisy: Boltzmann rationality (default 1)")
    parser.add_argument("--gamma", type=float, help="myopic: discount of earlier steps (default 0.9)")
    parser.add_argument("--score", choices=("reward", "success"), default="reward", help="what segments are scored by")


def _add_prefs_commands(commands) -> None:
    prefs = commands.add_parser("prefs", help="preference labels, reward models, PEARL transfer")
    actions = prefs.add_subparsers(dest="action", required=True, metavar="ACTION")
    label = actions.add_parser("label", help="label segment pairs (or K-wise sets) with a scripted teacher")
    label.add_argument("dataset", metavar="DATASET")
    label.add_argument("task", nargs="?", metavar="TASK", help="vlm teacher: the task in words")
    _add_teacher_options(label, required=True)
    label.add_argument("--pairs", type=int, required=True, help="queries to draw")
    label.add_argument("--segment-len", type=int, default=50, help="steps per segment (B-Pref: 50)")
    label.add_argument("--k", type=int, default=2, help="segments per query (K > 2: rankings)")
    label.add_argument("--name", help="label set name (default TEACHER-PAIRS)")
    label.add_argument("--seed", type=int, default=0)
    label.add_argument("--overwrite", action="store_true")
    vlm = label.add_argument_group("VLM teacher (OpenAI-compatible endpoint; defaults from EMBODIED_LLM_* variables)")
    vlm.add_argument("--model", help="model name (default: $EMBODIED_LLM_MODEL)")
    vlm.add_argument("--base-url", help="API root, e.g. http://localhost:8000/v1 (default: $EMBODIED_LLM_BASE_URL)")
    vlm.add_argument("--timeout", type=float, default=120.0, help="seconds per request")
    vlm.add_argument("--frames", type=int, default=1, help="frames per segment shown (1: its last; more: a clip)")
    vlm.add_argument("--cache", metavar="FILE", help="answer cache (default: beside the label set)")
    recorded = vlm.add_mutually_exclusive_group()
    recorded.add_argument("--replay", metavar="FILE", help="answer from recorded responses in FILE (no network)")
    recorded.add_argument("--record", metavar="FILE", help="ask the endpoint and append every answer to FILE")
    listing = actions.add_parser("list", help="label sets stored beside a dataset")
    listing.add_argument("dataset", metavar="DATASET")
    reward = actions.add_parser("reward", help="train a reward model (Bradley-Terry / Plackett-Luce) on a label set")
    reward.add_argument("dataset", metavar="DATASET")
    reward.add_argument("--labels", required=True, help="label set name (`embodied prefs list DATASET`)")
    reward.add_argument("--out", required=True, metavar="MODEL.pt")
    reward.add_argument("--gaussian", action="store_true", help="PEARL's robust reward: r ~ N(mu, sigma^2)")
    reward.add_argument("--inputs", choices=("state_action", "state"), default="state_action")
    reward.add_argument("--steps", type=int, default=2000)
    reward.add_argument("--batch-size", type=int, default=128)
    reward.add_argument("--members", type=int, default=3)
    reward.add_argument("--held-out", type=float, default=0.1, help="share of labels kept out to measure accuracy")
    reward.add_argument("--relabel", metavar="NEW", help="also write DATASET with the model's rewards as NEW")
    reward.add_argument("--observation-key", metavar="KEY", help="dict observations: the entry the model reads "
                        "(e.g. state of a state+pixels dataset labelled by a VLM); NEW keeps only it")  # fmt: skip
    reward.add_argument("--seed", type=int, default=0)
    reward.add_argument("--overwrite", action="store_true")
    relabel = actions.add_parser("relabel", help="copy a dataset with rewards from a reward model")
    relabel.add_argument("dataset", metavar="DATASET")
    relabel.add_argument("--model", required=True, metavar="MODEL.pt")
    relabel.add_argument("--name-out", dest="new_name", required=True)
    relabel.add_argument("--overwrite", action="store_true")
    transfer = actions.add_parser("transfer", help="PEARL: label a target task's pairs from a source task by GW transport")
    transfer.add_argument("--source", required=True, metavar="DATASET_A")
    transfer.add_argument("--target", required=True, metavar="DATASET_B")
    transfer.add_argument("--source-labels", metavar="NAME", help="a label set of the source (default: the teacher "
                          "below answers every pair of --segments source segments)")  # fmt: skip
    _add_teacher_options(transfer, required=False)
    transfer.add_argument("--segments", type=int, default=1000, help="segments per task in the transport")
    transfer.add_argument("--segment-len", type=int, default=50)
    transfer.add_argument("--pairs", type=int, default=2000, help="target pairs to label")
    transfer.add_argument("--epsilon", type=float, default=5e-3, help="entropic regularisation of GW")
    transfer.add_argument("--features", choices=("state_action", "state", "distances"), default="state_action",
                          help="what segments are compared by; distances: Meta-World's hand-object and "
                          "object-goal distances per step")  # fmt: skip
    transfer.add_argument("--fused-alpha", type=float, default=1.0, metavar="ALPHA",
                          help="fused GW: weight of the structure term, 1 - ALPHA on the source-target feature "
                          "cost (default 1: plain GW, the paper's)")  # fmt: skip
    transfer.add_argument("--device", default="cpu",
                          help="cuda: POT's torch backend on the GPU (auto: when present)")  # fmt: skip
    transfer.add_argument("--name", help="label set name on the target (default pearl-from-SOURCE)")
    transfer.add_argument("--seed", type=int, default=0)
    transfer.add_argument("--overwrite", action="store_true")
    prefs.set_defaults(run=cmd_prefs)


def cmd_sweep(args: argparse.Namespace) -> int:
    from embodied.run.sweep import SweepError, parse_grid, parse_seeds, sweep

    try:
        directory = sweep(args.config, parse_seeds(args.seeds), parse_grid(args.grid or []), sweep_dir=args.dir,
                          address=args.address, workers=args.workers, cpus_per_trial=args.cpus_per_trial,
                          gpus_per_trial=args.gpus_per_trial, retries=args.retries, metric=args.metric)  # fmt: skip
    except SweepError as error:
        print(f"embodied sweep: {error}", file=sys.stderr)
        return 1
    print((directory / "summary.md").read_text())
    print(f"sweep: {directory}")
    return 0


def _add_sweep_command(commands) -> None:
    sw = commands.add_parser("sweep", help="run a grid of overrides x seeds as Ray tasks, with a summary table")
    sw.add_argument("config", metavar="CONFIG.yaml")
    sw.add_argument("--seeds", default="0", help="e.g. 0-4 or 0,1,2 (default 0)")
    sw.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="values of one config key, repeatable")
    sw.add_argument("--address", help="an existing Ray cluster (ray://HOST:PORT or auto); default: local Ray")
    sw.add_argument("--workers", type=int, help="local Ray: CPU slots (default: one per trial)")
    sw.add_argument("--cpus-per-trial", type=float, default=1.0)
    sw.add_argument("--gpus-per-trial", type=float, default=0.0, help="fractions share a GPU, e.g. 0.25")
    sw.add_argument("--retries", type=int, default=2, help="times a failed trial is retried (resuming)")
    sw.add_argument("--dir", help="sweep directory (default runs/sweeps/<config name>)")
    sw.add_argument("--metric", help="evaluation key the summary reports (default success rate, else return)")
    sw.set_defaults(run=cmd_sweep)


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
    label = actions.add_parser("label-actions", help="copy a dataset with its action-free episodes labelled by MTM")
    label.add_argument("name")
    label.add_argument("--checkpoint", required=True, metavar="RUN_DIR_OR_FILE", help="an MTM run or checkpoint")
    label.add_argument("--name-out", dest="new_name", required=True)
    label.add_argument("--overwrite", action="store_true")
    data.set_defaults(run=cmd_dataset)

    tr = commands.add_parser("train", help="train an agent from a config (configs/<algo>/...)")
    tr.add_argument("config", nargs="?", metavar="CONFIG.yaml")
    tr.add_argument("--set", action="append", metavar="KEY=VALUE", help="override, e.g. algo.expectile=0.8")
    tr.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    tr.add_argument("--reward-code", metavar="FILE",
                    help="online algorithms: learn from this reward program (Text2Reward; sets env.options.reward_code "
                         "and copies it to RUN_DIR/reward_code/v1.py)")  # fmt: skip
    tr.set_defaults(run=cmd_train)

    ev = commands.add_parser("eval", help="evaluate a checkpoint (file or run directory) in its env")
    ev.add_argument("checkpoint", metavar="CHECKPOINT")
    ev.add_argument("--episodes", type=int, default=10)
    ev.add_argument("--seed", type=int, default=0)
    ev.add_argument("--video", metavar="PATH")
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--option", "-o", action="append", type=_parse_option, metavar="KEY=VALUE",
                    help="change an env option for this evaluation, e.g. distractors=colors (a shifted domain)")
    ev.set_defaults(run=cmd_eval)

    al = commands.add_parser("align", help="RePo test-time alignment: adapt a run's encoder to a shifted visual domain")
    al.add_argument("run_dir", metavar="RUN_DIR")
    al.add_argument("--option", "-o", action="append", type=_parse_option, metavar="KEY=VALUE", required=True,
                    help="the target domain: env options changed from the run's, e.g. distractors=colors")
    al.add_argument("--steps", type=int, default=2000, help="env steps collected in the target domain (no reward used)")
    al.add_argument("--episodes", type=int, default=10, help="evaluation episodes before and after")
    al.add_argument("--seed", type=int, default=0)
    al.add_argument("--calibration-steps", type=int, metavar="N",
                    help="first pair N steps of the source and target envs (the same states in both domains) to "
                         "anchor the encoder, as RePo's released code does with 5000 (default: the run's "
                         "algo.calibration_steps, 0: unpaired)")
    al.add_argument("--set", action="append", type=_parse_option, metavar="KEY=VALUE",
                    help="change an alignment setting of the run's algo config, e.g. align_coef=0 (any other "
                         "key is refused with the list of those allowed)")
    al.add_argument("--updates-per-step", type=float, metavar="R",
                    help="encoder updates per target env step (default: training's train_steps / train_every)")
    al.add_argument("--name", help="output folder under RUN_DIR/align/ (default: from the options)")
    al.add_argument("--json", action="store_true")
    al.set_defaults(run=cmd_align)

    reward = commands.add_parser("reward", help="reward programs: generate with an LLM, check, refine")
    reward_actions = reward.add_subparsers(dest="reward_command", required=True, metavar="ACTION")
    _add_reward_check_command(reward_actions)
    _add_reward_llm_commands(reward_actions)
    _add_prefs_commands(commands)
    _add_sweep_command(commands)
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
