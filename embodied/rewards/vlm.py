"""Preference labels from a vision-language model (RL-VLM-F, Wang et al. 2024; its offline
use in "Real-World Offline RL from Vision Language Model Feedback", Venkataraman et al. 2024).

For each query the VLM sees the final frame of each of two segments (or ``frames``
evenly spaced frames of each, a short clip) and the task in words, and answers in the
paper's two stages: first it describes the two images and compares them against the
goal, then, given its own analysis, it answers with one token: 0 (the first is closer
to the goal), 1 (the second) or -1 (cannot tell). "Cannot tell" is kept apart and never
becomes a label; a reply that does not parse counts as "cannot tell" and is reported
as unparsed, never silently guessed.

Every answer is appended to a JSON-lines cache (one line per query, flushed and synced)
keyed by the model, the task, the prompt version and the images, so a crashed or
repeated run never asks the same question twice.

:class:`OracleVLM` is a stand-in chat backend that answers from the true per-frame
reward (with set mistake and "cannot tell" rates): with it the whole path, data URLs
and parsing included, runs without a model.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from embodied.data.episodes import DatasetError, read_episodes
from embodied.data.preferences import Preferences, sample_queries
from embodied.llm import ChatBackend, image_data_url, user_message

PROMPT_VERSION = "rl-vlm-f-1"


def describe_prompt(task: str, frames: int) -> str:
    what = "image" if frames == 1 else f"clip of {frames} frames"
    return (
        f"You will see two observations of a robot or agent, each a {what}: first Observation 1, then "
        f"Observation 2.\nThe goal is: {task}\n"
        "1. Describe what Observation 1 shows.\n2. Describe what Observation 2 shows.\n"
        "3. Compare them: which one shows more progress toward the goal, or is there no clear difference?"
    )


def answer_prompt(task: str, analysis: str) -> str:
    return (
        f"The goal is: {task}\nAn analysis of two observations:\n{analysis}\n\n"
        "From this analysis, reply with a single line holding only a number: 0 if Observation 1 shows more "
        "progress toward the goal, 1 if Observation 2 does, -1 if the analysis is unsure or sees no difference."
    )


_ANSWER = re.compile(r"(?<![\w.\-])(-1|0|1)(?![\w.])")


def parse_answer(text: str) -> int | None:
    """0, 1 or -1 from a stage-two reply; None when it does not say one of them plainly
    (no number, or several different ones outside the last line)."""
    lines = [line.strip().strip("*`'\".") for line in str(text).strip().splitlines() if line.strip()]
    if not lines:
        return None
    for candidate in (lines[-1], " ".join(lines)):
        found = set(_ANSWER.findall(candidate))
        if len(found) == 1:
            return int(found.pop())
    return None


@dataclass
class VLMStats:
    asked: int = 0  # queries sent to the model in this run
    cached: int = 0  # queries answered from the cache
    decided: int = 0  # 0 or 1: labels
    cannot_tell: int = 0  # the model answered -1
    unparsed: int = 0  # replies that did not parse (also counted as cannot tell)


class LabelCache:
    """Answers by query key, appended one JSON line at a time (a killed run loses at most
    the query in flight; a torn last line is skipped on reading)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            for line in self.path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    self.entries[entry["key"]] = entry
                except (json.JSONDecodeError, KeyError, TypeError):
                    continue  # a line cut short by a kill
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def get(self, key: str) -> dict | None:
        return self.entries.get(key)

    def put(self, entry: dict) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.entries[entry["key"]] = entry


def query_key(model: str, task: str, first: Sequence[str], second: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for part in (model, task, PROMPT_VERSION, *first, "|", *second):
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


class VLMTeacher:
    """Labels queries over an image dataset by asking a VLM (two-stage prompt, cached)."""

    def __init__(self, client: ChatBackend, task: str, cache: LabelCache, frames: int = 1, image_key: str = "pixels"):
        if frames < 1:
            raise ValueError(f"frames must be >= 1, got {frames}")
        if not task.strip():
            raise ValueError("the VLM needs the task in words")
        self.client, self.task, self.cache, self.frames, self.image_key = client, task, cache, frames, image_key
        self.stats = VLMStats()

    def segment_images(self, episode_frames: np.ndarray, start: int, segment_len: int) -> list[str]:
        """Data URLs of the segment's frames: its last (the state it reached), or ``frames``
        evenly spaced ones ending there."""
        steps = np.linspace(start + 1, start + segment_len, self.frames).round().astype(int)
        return [image_data_url(np.asarray(episode_frames[step])) for step in steps]

    def ask(self, first: list[str], second: list[str]) -> int:
        """-1, 0 or 1 for one query (from the cache when it was asked before)."""
        key = query_key(self.client.model, self.task, first, second)
        entry = self.cache.get(key)
        if entry is not None:
            self.stats.cached += 1
        else:
            analysis = self.client.chat([user_message(describe_prompt(self.task, self.frames), images=first + second)])
            reply = self.client.chat([user_message(answer_prompt(self.task, analysis))])
            answer = parse_answer(reply)
            entry = {"key": key, "answer": -1 if answer is None else answer, "parsed": answer is not None,
                     "analysis": analysis, "reply": reply}  # fmt: skip
            self.cache.put(entry)
            self.stats.asked += 1
        if not entry["parsed"]:
            self.stats.unparsed += 1
        if entry["answer"] == -1:
            self.stats.cannot_tell += 1
        else:
            self.stats.decided += 1
        return entry["answer"]


def episode_frames(dataset: str, image_key: str = "pixels") -> list[np.ndarray]:
    frames = []
    for index, episode in enumerate(read_episodes(dataset, lazy_images=True)):
        observations = episode.observations
        if not isinstance(observations, dict) or image_key not in observations:
            raise DatasetError(f"{dataset}: episode {index} has no '{image_key}' observations; collect it with "
                               f"-o obs=state+pixels (or obs=pixels) for VLM labels")  # fmt: skip
        frames.append(observations[image_key])
    return frames


def label_with_vlm(dataset: str, teacher: VLMTeacher, queries: int, segment_len: int, seed: int = 0,
                   progress: Callable[[int, int], None] | None = None) -> Preferences:  # fmt: skip
    """Draw ``queries`` pairs of segments and ask the VLM; the label set holds the decided ones."""
    frames = episode_frames(dataset, teacher.image_key)
    episodes, starts = sample_queries(np.array([len(f) - 1 for f in frames]), queries, segment_len, 2, seed)
    answers = np.empty(queries, np.int64)
    for index in range(queries):
        first, second = (teacher.segment_images(frames[episodes[index, j]], starts[index, j], segment_len)
                         for j in (0, 1))  # fmt: skip
        answers[index] = teacher.ask(first, second)
        if progress:
            progress(index + 1, queries)
    decided = answers >= 0
    stats = teacher.stats
    info: dict[str, Any] = {"teacher": "vlm", "model": teacher.client.model, "task": teacher.task,
                            "frames": teacher.frames, "prompt": PROMPT_VERSION, "seed": seed, "asked": queries,
                            "cannot_tell": stats.cannot_tell, "unparsed": stats.unparsed,
                            "from_cache": stats.cached, "skipped": int((~decided).sum())}  # fmt: skip
    preference = (answers[decided] == 0).astype(np.float32)  # 0: the first observation is closer to the goal
    return Preferences(dataset, segment_len, episodes[decided], starts[decided], preference, info=info)


class OracleVLM:
    """A chat backend that plays a VLM from the true reward of each frame.

    ``frame_scores`` maps an image's data URL to the reward of the state it shows (the
    caller knows it; a real VLM would judge the picture). Stage one answers with a
    comparison in words, stage two with the number; the answer is wrong with probability
    ``mistake``, "cannot tell" when the scores differ by less than ``margin``, and
    unparseable with probability ``garble``."""

    def __init__(self, frame_scores: dict[str, float], mistake: float = 0.0, margin: float = 0.0,
                 garble: float = 0.0, seed: int = 0, name: str = "oracle-vlm"):  # fmt: skip
        self.frame_scores = frame_scores
        self.mistake, self.margin, self.garble = mistake, margin, garble
        self.rng = np.random.default_rng(seed)
        self.name = name
        self.calls = 0

    @property
    def model(self) -> str:
        return self.name

    def chat(self, messages: Sequence[dict], **options: Any) -> str:
        self.calls += 1
        content = messages[-1]["content"]
        if isinstance(content, list):  # stage one: the images
            urls = [part["image_url"]["url"] for part in content if part.get("type") == "image_url"]
            half = len(urls) // 2
            scores = [float(np.mean([self.frame_scores[u] for u in group])) for group in (urls[:half], urls[half:])]
            if abs(scores[0] - scores[1]) < self.margin:
                return "Both observations show about the same progress. Verdict: no difference."
            better = 1 if scores[0] > scores[1] else 2
            if self.rng.random() < self.mistake:
                better = 3 - better
            return f"Observation {better} is closer to the goal. Verdict: observation {better}."
        text = str(content)
        if self.rng.random() < self.garble:
            return "I would rather not say."
        verdict = re.search(r"Verdict: (no difference|observation 1|observation 2)", text)
        if verdict is None or verdict[1] == "no difference":
            return "-1"
        return "0" if verdict[1] == "observation 1" else "1"


def frame_rewards(dataset: str, image_key: str = "pixels") -> dict[str, float]:
    """Data URL of every frame after a step -> that step's reward (for :class:`OracleVLM`)."""
    scores = {}
    for frames, episode in zip(episode_frames(dataset, image_key), read_episodes(dataset)):
        for step, reward in enumerate(np.asarray(episode.rewards)):
            scores[image_data_url(np.asarray(frames[step + 1]))] = float(reward)
    return scores
