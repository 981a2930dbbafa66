"""Ask an LLM for a reward program, check it, and feed failures back until one passes.

    from embodied.llm import LLMConfig, make_client
    from embodied.rewards.text2reward.generate import generate_program, write_program

    result = generate_program("metaworld/drawer-open-v3", "Open the drawer by its handle.",
                              make_client(LLMConfig()), few_shot=2)
    write_program("drawer.py", result.source, header=result.header())

Each answer's code is taken from its ```python block (:func:`extract_code`) and validated:
the sandbox's static check, then a short run in the env (``check_program``). A failure —
no code block, a forbidden import, an exception, a NaN — goes back to the LLM as the next
user turn of the same conversation, up to ``retries`` times. Text2Reward (Xie et al. 2023)
finds that generated programs fail mostly on execution errors (hallucinated attributes,
wrong packages, shapes, syntax) and proposes feeding such errors back; the checks here
catch exactly those before any training. Every answer and error is kept in the result.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from embodied.llm.client import ChatBackend, LLMError, Message, assistant_message, user_message
from embodied.rewards.text2reward import prompt

# A validator returns None when a program is fine, else the reason it is not (sent to the LLM).
Validator = Callable[[str], "str | None"]

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


class CodeExtractionError(ValueError):
    """An LLM answer without a usable code block."""


class RewardGenerationError(LLMError):
    """No answer passed the checks within the allowed attempts."""

    def __init__(self, message: str, answers: list[str], errors: list[str]):
        super().__init__(message)
        self.answers = answers
        self.errors = errors


@dataclass
class GenerationResult:
    """A program that passed the checks, with the conversation that led to it."""

    source: str  # the program, as extracted from the accepted answer
    env_id: str
    instruction: str
    model: str
    answers: list[str] = field(default_factory=list)  # every answer, the accepted one last
    errors: list[str] = field(default_factory=list)  # why each earlier answer was refused
    examples: list[str] = field(default_factory=list)  # env ids of the few-shot examples shown
    warnings: list[str] = field(default_factory=list)  # the accepted program's check warnings

    @property
    def attempts(self) -> int:
        return len(self.answers)

    def header(self, command: str = "embodied reward generate") -> str:
        """Comment lines recording where the program came from (the instruction is read back by refine)."""
        lines = [
            f"# Reward program for {self.env_id} (Text2Reward), written by {self.model} via `{command}`",
            f"# on {datetime.now(timezone.utc).isoformat(timespec='seconds')} after {self.attempts} attempt(s).",
            f"# Instruction: {' '.join(self.instruction.split())}",
        ]
        if self.examples:
            lines.append(f"# Few-shot examples: {', '.join(self.examples)}")
        return "\n".join(lines) + "\n"


def extract_code(answer: str) -> str:
    """The program in an LLM answer: the last fenced block that defines ``compute_dense_reward``.

    Models often show a draft and then the final version, so the last defining block wins;
    a block tagged with another language (```json, ```bash) is never taken. Without fences,
    an answer that is itself a program is accepted.
    """
    blocks = [(lang.lower(), code) for lang, code in _FENCE.findall(answer)]
    code_blocks = [code for lang, code in blocks if lang in ("", "python", "py", "python3")]
    defining = [code for code in code_blocks if "def compute_dense_reward" in code]
    if defining:
        code = defining[-1]
    elif not blocks and "def compute_dense_reward" in answer and _parses(answer):
        code = answer
    elif code_blocks:
        raise CodeExtractionError(
            "the answer's ```python block does not define `def compute_dense_reward(self, action, obs)`; "
            "write the whole function, not only its body"
        )
    else:
        raise CodeExtractionError(
            "the answer has no ```python code block; put the whole function "
            "`def compute_dense_reward(self, action, obs) -> float` in one ```python block"
        )
    if answer.count("```") % 2 == 1 and answer.rstrip().endswith(code.rstrip()):
        raise CodeExtractionError("the answer ends inside a code block (cut off? the server's max_tokens may be too small)")
    return code.strip() + "\n"


def _parses(source: str) -> bool:
    import ast

    try:
        ast.parse(source)
    except SyntaxError:
        return False
    return True


class ProgramValidator:
    """The sandbox's static check, then ``steps`` env steps (``check_program``); keeps the
    last report, whose warnings (a constant reward, ...) are worth showing a person."""

    def __init__(self, env_id: str, steps: int = 300):
        self.env_id = env_id
        self.steps = steps
        self.last_report = None

    def __call__(self, source: str) -> str | None:
        from embodied.rewards.text2reward import check_program

        self.last_report = check_program(self.env_id, source, steps=self.steps, filename="reward program")
        return None if self.last_report.ok else report_text(self.last_report)


def program_validator(env_id: str, steps: int = 300) -> Validator:
    """The default check of a generated program (see :class:`ProgramValidator`)."""
    return ProgramValidator(env_id, steps)


def report_text(report) -> str:
    """A failed check's reason, as the LLM and the person should read it (it names the line)."""
    return report.message


def converse(client: ChatBackend, messages: list[Message], validate: Validator, retries: int,
             answers: list[str], errors: list[str]) -> str:  # fmt: skip
    """Ask, validate, and feed each failure back, until a program passes; returns its source.

    ``messages`` grows by each answer and feedback turn; ``answers`` and ``errors`` collect
    what happened. Raises :class:`RewardGenerationError` after ``1 + retries`` failures.
    """
    for _ in range(1 + max(0, retries)):
        answer = client.chat(messages)
        answers.append(answer)
        try:
            source = extract_code(answer)
            error = validate(source)
        except CodeExtractionError as extraction_error:
            error = str(extraction_error)
        if error is None:
            return source
        errors.append(error)
        messages += [assistant_message(answer), user_message(prompt.error_feedback(error))]
    raise RewardGenerationError(
        f"no program passed the checks in {len(answers)} attempt(s); the last error:\n{errors[-1]}", answers, errors
    )


def generate_program(env_id: str, instruction: str, client: ChatBackend, *, few_shot: int = 0, retries: int = 2,
                     check_steps: int = 300, validate: Validator | None = None) -> GenerationResult:  # fmt: skip
    """A checked reward program for ``instruction`` in ``env_id``, zero-shot or with
    ``few_shot`` library programs as examples (see :mod:`.prompt`)."""
    if not instruction.strip():
        raise ValueError("the instruction is empty: say what the robot should do, e.g. 'Open the drawer.'")
    examples = prompt.nearest_programs(env_id, instruction, few_shot)
    if few_shot and not examples:
        raise FileNotFoundError(
            f"--few-shot {few_shot}: no library programs for {env_id.split('/')[0]} under {prompt.library_root()}"
        )
    messages = prompt.generation_messages(env_id, instruction, examples)
    result = GenerationResult("", env_id, instruction, client.model, examples=[e.env_id for e in examples])
    validate = validate or program_validator(env_id, check_steps)
    result.source = converse(client, messages, validate, retries, result.answers, result.errors)
    result.warnings = list(getattr(getattr(validate, "last_report", None), "warnings", []))
    return result


def write_program(path: str | Path, source: str, header: str = "", overwrite: bool = False) -> Path:
    """Write a program atomically (temporary file, then rename); an existing file is kept
    unless ``overwrite``."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; choose another --out or pass --overwrite")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(header + source)
        os.chmod(temporary, 0o644)  # mkstemp makes 0600 files; programs are ordinary files
        if overwrite:
            os.replace(temporary, path)
        else:
            os.link(temporary, path)  # fails if the name appeared meanwhile: never clobber
            os.unlink(temporary)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return path
