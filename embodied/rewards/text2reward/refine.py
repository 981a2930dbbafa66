"""Refine a run's reward program from its training statistics and a person's feedback.

Run-directory layout (the trainer writes the first three; ``embodied reward refine``
adds versions and history, and never rewrites an existing file)::

    RUN_DIR/
      config.yaml             resolved run config; ``reward_code`` (top level, or under ``env:``
                              or ``env.options:``) is the program the run trained with: a path
                              to a .py file (absolute, or relative to the working directory or
                              to RUN_DIR) or the program text itself; ``env.id`` is the env
      train.csv, eval.csv     the trainer's metrics (``step`` column, ``eval/success_rate``,
                              ``eval/return``, ``train/...``), summarised for the LLM
      reward_code/
        v1.py                 the program the run trained with, copied there by the trainer
        v2.py, v3.py, ...     versions written by ``embodied reward refine``, one per call
        history.jsonl         one JSON line per refinement: version, parent, env_id,
                              instruction, feedback, statistics, model, attempts, timestamp

The latest ``v<N>.py`` is the one refined. When the trainer has not copied the program
(no ``reward_code/``), the program named by ``config.yaml`` becomes ``v1.py`` first. The
instruction comes from ``--instruction``, else the history, else the ``# Instruction:``
line that ``embodied reward generate`` writes at the top of a program.

The prompt carries every earlier round from the history (code, statistics, feedback), then
the current program, its statistics and the new feedback: the paper's multi-round format.
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from embodied.llm.client import ChatBackend
from embodied.rewards.text2reward import prompt
from embodied.rewards.text2reward.generate import GenerationResult, Validator, converse, program_validator, write_program

REWARD_DIR = "reward_code"
HISTORY_FILE = "history.jsonl"
_VERSION = re.compile(r"^v(\d+)\.py$")
# Columns worth showing the LLM: how often the task is solved and what the agent earns.
_KEY_COLUMNS = re.compile(r"success|return|reward|length", re.IGNORECASE)
POINTS_SHOWN = 6  # values per curve in the summary: enough to see a trend, short enough to read


@dataclass
class RefineResult:
    version: int
    path: Path
    parent: int
    statistics: str
    history_line: dict[str, Any]
    generation: GenerationResult = field(repr=False)


def read_run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "config.yaml"
    if not path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run directory: no config.yaml")
    config = yaml.safe_load(path.read_text()) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a mapping")
    return config


def run_env_id(config: dict[str, Any], run_dir: Path) -> str:
    env = config.get("env") or {}
    env_id = env.get("id") if isinstance(env, dict) else None
    if not env_id:
        raise ValueError(f"{run_dir / 'config.yaml'} names no env (env.id)")
    return str(env_id)


def configured_program(config: dict[str, Any], run_dir: Path) -> str | None:
    """The program text that ``config.yaml``'s ``reward_code`` names (or holds), if any."""
    env = config.get("env") if isinstance(config.get("env"), dict) else {}
    options = env.get("options") if isinstance(env.get("options"), dict) else {}
    value = config.get("reward_code") or env.get("reward_code") or options.get("reward_code")
    if not value:
        return None
    from embodied.envs.reward import load_program  # path or text, read as the env reads it

    value = str(value)
    try:
        return load_program(value)[0]
    except FileNotFoundError:
        if (run_dir / value).is_file():  # a path relative to the run rather than the working directory
            return (run_dir / value).read_text(encoding="utf-8")
        raise FileNotFoundError(
            f"{run_dir / 'config.yaml'}: reward_code {value!r} is not a file (nor relative to {run_dir})"
        ) from None


def versions(run_dir: Path) -> dict[int, Path]:
    """``{N: RUN_DIR/reward_code/vN.py}`` for every version present."""
    folder = run_dir / REWARD_DIR
    found = {}
    if folder.is_dir():
        for path in folder.iterdir():
            match = _VERSION.match(path.name)
            if match:
                found[int(match.group(1))] = path
    return dict(sorted(found.items()))


def read_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / REWARD_DIR / HISTORY_FILE
    if not path.exists():
        return []
    lines = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error.msg})") from error
    return lines


def strip_header(source: str) -> str:
    """A program without the provenance comments that generate/refine put on top (the LLM
    needs the code, not our bookkeeping)."""
    lines = source.splitlines(keepends=True)
    if not lines or not lines[0].startswith("# Reward program for "):
        return source
    while lines and lines[0].startswith("#"):
        lines.pop(0)
    return "".join(lines)


# ----------------------------------------------------------------------------- statistics


def _read_csv(path: Path) -> list[dict[str, float]]:
    rows = []
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            parsed = {}
            for key, value in row.items():
                try:
                    parsed[key] = float(value)
                except (TypeError, ValueError):
                    continue  # empty cells: a metric not logged at that step
            rows.append(parsed)
    return rows


def _curve(rows: list[dict[str, float]], column: str) -> str:
    points = [(row["step"], row[column]) for row in rows if column in row and "step" in row and math.isfinite(row[column])]
    if not points:
        return ""
    # Evenly spaced points along the run, always with the last one.
    picks = sorted({round(i * (len(points) - 1) / max(1, POINTS_SHOWN - 1)) for i in range(POINTS_SHOWN)})
    shown = ", ".join(f"{value:.3g} at step {int(step)}" for step, value in (points[i] for i in picks))
    values = [value for _, value in points]
    return f"  {column}: {shown} (max {max(values):.3g}, last {values[-1]:.3g})"


def summarize_statistics(run_dir: Path) -> str:
    """Success rate, return and episode length over training, from ``eval.csv`` and ``train.csv``."""
    parts = []
    for name, title in (("eval.csv", "Evaluation"), ("train.csv", "Training")):
        path = run_dir / name
        if not path.exists():
            continue
        rows = _read_csv(path)
        columns = sorted({c for row in rows for c in row if c != "step" and _KEY_COLUMNS.search(c)})
        curves = [line for line in (_curve(rows, column) for column in columns) if line]
        if curves:
            last_step = int(max(row.get("step", 0) for row in rows))
            parts.append(f"{title} ({name}, {len(rows)} rows, up to step {last_step}):\n" + "\n".join(curves))
    return "\n".join(parts) if parts else f"No training statistics: {run_dir} has no eval.csv or train.csv with success or return."


# ----------------------------------------------------------------------------- refinement


def _instruction(explicit: str | None, history: list[dict[str, Any]], sources: list[str], run_dir: Path) -> str:
    if explicit:
        return explicit
    for line in reversed(history):
        if line.get("instruction"):
            return str(line["instruction"])
    for source in sources:
        found = prompt.program_instruction(source)
        if found:
            return found
    raise ValueError(
        f"no instruction for the reward program of {run_dir}: pass --instruction TEXT "
        "(programs from `embodied reward generate` record it in an '# Instruction:' line)"
    )


def _feedback_rounds(history: list[dict[str, Any]], known: dict[int, Path]) -> list[prompt.FeedbackRound]:
    rounds = []
    for line in history:
        parent = line.get("parent")
        if parent in known and line.get("feedback"):
            rounds.append(prompt.FeedbackRound(strip_header(known[parent].read_text(encoding="utf-8")),
                                               str(line.get("statistics", "")), str(line["feedback"])))  # fmt: skip
    return rounds


def refine_program(run_dir: str | Path, feedback: str, client: ChatBackend, *, instruction: str | None = None,
                   retries: int = 2, check_steps: int = 300, validate: Validator | None = None) -> RefineResult:  # fmt: skip
    """Write ``reward_code/v<N+1>.py`` for the run in ``run_dir`` and log it in the history."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory {run_dir}")
    if not feedback.strip():
        raise ValueError("the feedback is empty: say what went wrong or what to change")
    config = read_run_config(run_dir)
    env_id = run_env_id(config, run_dir)
    known = versions(run_dir)
    if not known:
        program = configured_program(config, run_dir)
        if program is None:
            raise FileNotFoundError(
                f"{run_dir} has no reward program: expected {REWARD_DIR}/v1.py or `reward_code` in config.yaml"
            )
        known = {1: write_program(run_dir / REWARD_DIR / "v1.py", program)}
    parent = max(known)
    current = known[parent].read_text(encoding="utf-8")
    history = read_history(run_dir)
    instruction = _instruction(instruction, history, [current, *(p.read_text() for p in known.values())], run_dir)
    statistics = summarize_statistics(run_dir)

    rounds = _feedback_rounds(history, known) + [prompt.FeedbackRound(strip_header(current), statistics, feedback)]
    messages = prompt.refine_messages(env_id, instruction, rounds)
    generation = GenerationResult("", env_id, instruction, client.model)
    validate = validate or program_validator(env_id, check_steps)
    generation.source = converse(client, messages, validate, retries, generation.answers, generation.errors)
    generation.warnings = list(getattr(getattr(validate, "last_report", None), "warnings", []))

    version = parent + 1
    while True:  # never overwrite: if vN appeared meanwhile, take the next number
        path = run_dir / REWARD_DIR / f"v{version}.py"
        try:
            write_program(path, generation.source, header=generation.header("embodied reward refine"))
            break
        except FileExistsError:
            version += 1
    line = {
        "version": version,
        "parent": parent,
        "file": f"{REWARD_DIR}/v{version}.py",
        "env_id": env_id,
        "instruction": instruction,
        "feedback": feedback,
        "statistics": statistics,
        "model": client.model,
        "attempts": generation.attempts,
        "errors": generation.errors,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    with open(run_dir / REWARD_DIR / HISTORY_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(line, ensure_ascii=False) + "\n")
    return RefineResult(version, path, parent, statistics, line, generation)
