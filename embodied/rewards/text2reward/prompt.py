"""Text2Reward's prompts: environment abstraction + instruction → a dense reward program.

The formats follow Xie et al. 2023 (Text2Reward, ICLR 2024; xlang-ai/text2reward,
``code_generation/single_flow/classlike_prompt/``):

* **zero-shot** — the expert abstraction of the environment (a Pythonic, class-like
  description of ``self.robot.ee_position``, ``self.obj1.position``, ``self.goal_position``,
  ...; :func:`.describe.describe_env`), the user's instruction, "think step by step", and
  the required signature ``def compute_dense_reward(self, action, obs) -> float``;
* **few-shot** — the same, with K programs from the repo's library, each shown as "Tasks to
  be fulfilled: ... / Corresponding reward function: ```python ...```" (their
  ``few_shot_prompt.py``). The paper retrieves examples by embedding similarity of the
  instructions; we rank by word overlap (Jaccard) of task name + instruction, which is
  deterministic, needs no model, and picks e.g. drawer-close for drawer-open
  (:func:`nearest_programs`). The target task's own library program is left out, so the
  LLM cannot simply copy it;
* **error feedback** — a program that fails the sandbox's static check or a short run is
  sent back with the error, asking for a fixed program. The paper motivates this with its
  error analysis (generated programs fail mostly on hallucinated attributes, wrong
  packages, shapes and syntax) and execution feedback; its published code only re-asks
  when an answer has no code block;
* **human feedback** — the paper's multi-round refinement prompt (``feedback_prompt.py``):
  for each earlier round, the code, what training showed, and the person's feedback; then
  "Re-imagine which steps are missed or wrong" (:func:`refine_messages`).

Differences from the paper's wording, and why: we ask for the whole function with its
imports in one ```python block (the paper asked for "just the function body" and then
patched it), and we name the packages the sandbox allows instead of "any existing python
package", so that a first answer passes more often.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from embodied.llm.client import Message, system_message, user_message
from embodied.rewards.text2reward.describe import describe_env, envs_root

SIGNATURE = "def compute_dense_reward(self, action, obs) -> float"
# What the sandbox lets a program import (:data:`.sandbox.ALLOWED_MODULES`), in words.
ALLOWED_PACKAGES = "numpy (`np` is available even without an import), math, scipy.spatial.distance and scipy.spatial.transform"

SYSTEM_PROMPT = "You are an expert in robotics, reinforcement learning and code generation."

# What a dense reward is usually made of, per kind of task (the paper's wording for
# manipulation; for locomotion its Hopper/Ant prompts give guidance on weights instead).
_MANIPULATION_PARTS = """\
Typically, the reward function of a manipulation task consists of these parts (some are optional, so only include a part if it is really necessary):
1. the distance between the robot's gripper and the target object
2. the difference between the current state of the object and its goal state
3. regularization of the robot's action
..."""
_LOCOMOTION_PARTS = """\
I'll give you the attributes of the environment and the robot. You can use these class attributes to write the reward function."""

_SUITE_KIND = {"metaworld": "manipulation", "robomimic": "manipulation", "mujoco": "locomotion"}
_INTRO = {
    "manipulation": "We are going to use a robot arm to complete given tasks.",
    "locomotion": "We are going to control a simulated legged robot to complete given tasks.",
}

_STOPWORDS = frozenset(
    "a an the to of by its it in into on onto from with and or at for as is be this that then "
    "robot arm gripper object task v1 v2 v3 v4 v5".split()
)


@dataclass(frozen=True)
class LibraryProgram:
    """One reward program kept in the repo, usable as a few-shot example."""

    env_id: str  # e.g. metaworld/drawer-open-v3
    instruction: str  # the goal it was written for
    source: str  # the program text
    path: Path


@dataclass(frozen=True)
class FeedbackRound:
    """One round of human feedback: the program trained with, what training showed, what to change."""

    source: str
    statistics: str
    feedback: str


# ----------------------------------------------------------------------------- environment

def _action_space_line(env_id: str, description: str) -> str:
    """The action space, unless the description already states it (making the env costs time)."""
    if "action space" in description.lower() or "action_space" in description.lower():
        return ""
    import embodied

    env = embodied.make(env_id)
    try:
        space = env.action_space
        low, high = float(space.low.min()), float(space.high.max())
        return f"The action space of the robot is a normalized `Box({low:g}, {high:g}, {tuple(space.shape)}, {space.dtype})`."
    finally:
        env.close()


# ----------------------------------------------------------------------------- few-shot library


def library_root() -> Path:
    return envs_root() / "text2reward" / "library"


def library_programs(suite: str | None = None) -> list[LibraryProgram]:
    """Every program under ``envs/text2reward/library/<suite>/<task>.py``, sorted by env id."""
    root = library_root()
    suites = [suite] if suite else sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    programs = []
    for name in suites:
        for path in sorted((root / name).glob("*.py")):
            if path.name.startswith("_"):
                continue
            source = path.read_text(encoding="utf-8")
            env_id = f"{name}/{path.stem}"
            programs.append(LibraryProgram(env_id, program_instruction(source) or _task_words(env_id), source, path))
    return programs


def program_instruction(source: str) -> str | None:
    """The instruction a program records: its module docstring's ``Instruction:`` line or
    first paragraph, or a ``# Instruction:`` comment (as ``embodied reward generate`` writes)."""
    match = re.search(r"^#\s*Instruction:\s*(.+)$", source, re.MULTILINE)
    if match:
        return match.group(1).strip()
    try:
        docstring = ast.get_docstring(ast.parse(source))
    except SyntaxError:
        return None
    if not docstring:
        return None
    match = re.search(r"^\s*Instruction:\s*(.+)$", docstring, re.MULTILINE | re.IGNORECASE)
    return (match.group(1) if match else docstring.split("\n\n")[0]).strip() or None


def _task_words(env_id: str) -> str:
    return env_id.split("/")[-1].rsplit("-v", 1)[0].replace("-", " ").replace("_", " ")


def _tokens(text: str) -> set[str]:
    return {word for word in re.findall(r"[a-z]+", text.lower()) if word not in _STOPWORDS and len(word) > 1}


def nearest_programs(env_id: str, instruction: str, k: int, programs: Sequence[LibraryProgram] | None = None,
                     include_same_task: bool = False) -> list[LibraryProgram]:  # fmt: skip
    """The ``k`` library programs of ``env_id``'s suite most similar to the task.

    Similarity is the Jaccard overlap of the word sets of (task name + instruction), e.g.
    {drawer, open, handle} against {drawer, close, handle}; ties go to the env id in
    alphabetical order, so the choice is deterministic (and replayable).
    """
    if k <= 0:
        return []
    suite = env_id.split("/")[0]
    candidates = [p for p in (library_programs(suite) if programs is None else programs)
                  if p.env_id.split("/")[0] == suite and (include_same_task or p.env_id != env_id)]  # fmt: skip
    query = _tokens(_task_words(env_id) + " " + instruction)

    def similarity(program: LibraryProgram) -> float:
        words = _tokens(_task_words(program.env_id) + " " + program.instruction)
        return len(query & words) / max(1, len(query | words))

    return sorted(candidates, key=lambda p: (-similarity(p), p.env_id))[:k]


# ----------------------------------------------------------------------------- prompts


def task_prompt(env_id: str, instruction: str, examples: Sequence[LibraryProgram] = (),
                description: str | None = None) -> str:  # fmt: skip
    """The paper's class-like prompt for ``env_id`` and ``instruction`` (with few-shot examples)."""
    suite = env_id.split("/")[0]
    kind = _SUITE_KIND.get(suite, "manipulation")
    description = describe_env(env_id) if description is None else description
    sections = [
        "\n".join(filter(None, [_INTRO[kind], _action_space_line(env_id, description)])),
        "Now I want you to help me write a reward function of reinforcement learning.\n"
        + (_MANIPULATION_PARTS if kind == "manipulation" else _LOCOMOTION_PARTS),
        description,
        f"You may import only {ALLOWED_PACKAGES}, and only when really necessary: the function runs in a "
        "sandbox that rejects other imports and any file, network or process access.",
    ]
    if examples:
        shown = [
            f"An example:\nTasks to be fulfilled: {example.instruction}\nCorresponding reward function:\n"
            f"```python\n{example.source.strip()}\n```"
            for example in examples
        ]
        sections.append("Here are reward functions written for other tasks in this environment:\n\n" + "\n\n".join(shown))
    steps = [
        "Please think step by step and tell me what this task means;",
        f"Then write a function formatted as `{SIGNATURE}` that returns the reward. Give the whole "
        "function, with any imports it needs, in one ```python code block.",
        "Do not invent any variable or attribute that is not given.",
        "When you write code, you can also add some comments as your thought.",
    ]
    if kind == "locomotion":
        steps.append("Do not give too much weight to regularization or penalty terms, and weight each reward "
                     "term according to its measurement and importance.")  # fmt: skip
    sections.append(f"I want it to fulfill the following task: {instruction.strip()}\n"
                    + "\n".join(f"{number}. {step}" for number, step in enumerate(steps, start=1)))  # fmt: skip
    return "\n\n".join(section.strip() for section in sections if section.strip())


def generation_messages(env_id: str, instruction: str, examples: Sequence[LibraryProgram] = (),
                        description: str | None = None) -> list[Message]:  # fmt: skip
    """The opening chat messages for generating a program (zero-shot without ``examples``)."""
    return [system_message(SYSTEM_PROMPT), user_message(task_prompt(env_id, instruction, examples, description))]


def error_feedback(error: str) -> str:
    """The user turn that sends a failed program's error back to the LLM."""
    return (
        "I ran the reward function you wrote and it failed:\n"
        f"{error.strip()}\n\n"
        f"Please fix it. Keep the signature `{SIGNATURE}`, use only the attributes given above and the "
        "allowed packages, and give the whole corrected function in one ```python code block."
    )


def refine_messages(env_id: str, instruction: str, rounds: Sequence[FeedbackRound],
                    description: str | None = None) -> list[Message]:  # fmt: skip
    """The paper's human-feedback prompt: the task prompt, then each round's code, training
    outcome and feedback, then a request for the improved program."""
    if not rounds:
        raise ValueError("refining needs at least one round of feedback")
    shown = [
        "Generated code shown as below:\n"
        f"```python\n{r.source.strip()}\n```\n\n"
        "Feed this reward code into the environment, and use the RL algorithm to train the policy. "
        f"After training, the training statistics show:\n{r.statistics.strip()}\n\n"
        f"To make the code more accurate and train a better robot, the feedback for improvement is:\n{r.feedback.strip()}"
        for r in rounds
    ]
    text = (
        task_prompt(env_id, instruction, description=description)
        + "\n\n" + "\n\n".join(shown)
        + "\n\nRe-imagine which steps are missed or wrong. Show me the improved code, the whole function in one "
        "```python code block."
    )  # fmt: skip
    return [system_message(SYSTEM_PROMPT), user_message(text)]
