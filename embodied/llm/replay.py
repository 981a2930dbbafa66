"""Recorded LLM answers: replay them with no network, or record them from a live client.

A recording is a JSON-lines file, one answer a line::

    {"key": "<sha256>", "model": "qwen2.5-coder", "prompt": "<start of the last user turn>",
     "response": "<the assistant's text>", "recorded_at": "2025-01-01T12:00:00+00:00"}

``key`` is :func:`request_key` of (model, messages), so a replayed request must match the
recorded one exactly: same model name, same messages (images included). ``prompt`` is only
for people reading the file. A JSON array of the same records is read too.

When the same request was recorded several times (sampling the same prompt again), replay
answers them in the recorded order and then keeps repeating the last one, so a replayed
session reproduces the recorded one.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from embodied.llm.client import ChatBackend, LLMError, Message, message_text

PROMPT_PREVIEW_CHARS = 120


class ReplayMissError(LLMError, KeyError):
    """A replayed request that the recording does not hold."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def request_key(model: str, messages: Sequence[Message]) -> str:
    """sha256 of the canonical JSON of (model, messages): the identity of a request."""
    canonical = json.dumps({"model": model, "messages": list(messages)}, sort_keys=True, separators=(",", ":"),
                           ensure_ascii=False)  # fmt: skip
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def prompt_preview(messages: Sequence[Message], limit: int = PROMPT_PREVIEW_CHARS) -> str:
    """The start of the last user turn, on one line: what tells one request from another."""
    users = [m for m in messages if m.get("role") == "user"] or list(messages)
    text = " ".join(message_text(users[-1]).split()) if users else ""
    return text if len(text) <= limit else text[:limit] + "..."


def read_recording(path: str | Path) -> list[dict[str, Any]]:
    """The records of a recording file (JSON lines, or one JSON array)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no LLM recording at {path} (record one with --record {path})")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        records = json.loads(text)
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON record ({error.msg})") from error
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict) or "key" not in record or "response" not in record:
            raise ValueError(f"{path}: record {number} lacks 'key' or 'response'")
    return records


class ReplayClient:
    """Answers from a recording; any request it does not hold is a :class:`ReplayMissError`."""

    def __init__(self, path: str | Path, model: str | None = None):
        self.path = Path(path)
        records = read_recording(self.path)
        self._answers: dict[str, list[str]] = defaultdict(list)
        for record in records:
            self._answers[record["key"]].append(record["response"])
        self._served: dict[str, int] = defaultdict(int)
        if model is None:
            # The model is part of each key; when the file holds one model, that is the one.
            models = sorted({record.get("model") for record in records if record.get("model")})
            if len(models) != 1:
                raise LLMError(
                    f"{self.path} holds answers from {len(models)} models ({', '.join(models) or 'none named'}): "
                    "pass --model NAME (or EMBODIED_LLM_MODEL) to choose"
                )
            model = models[0]
        self._model = model

    @property
    def model(self) -> str:
        return self._model

    def chat(self, messages: Sequence[Message], **options: Any) -> str:
        key = request_key(self.model, messages)
        answers = self._answers.get(key)
        if not answers:
            raise ReplayMissError(
                f"no recorded answer in {self.path} (which holds {sum(map(len, self._answers.values()))}) for "
                f"model {self.model!r} and this prompt (key {key[:12]}): {prompt_preview(messages)!r} — record it "
                f"with --record {self.path} against a live endpoint"
            )
        index = min(self._served[key], len(answers) - 1)
        self._served[key] += 1
        return answers[index]


class RecordingClient:
    """Asks a live client and appends every answer to a recording file."""

    def __init__(self, client: ChatBackend, path: str | Path):
        self.client = client
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @property
    def model(self) -> str:
        return self.client.model

    def chat(self, messages: Sequence[Message], **options: Any) -> str:
        response = self.client.chat(messages, **options)
        record = {
            "key": request_key(self.model, messages),
            "model": self.model,
            "prompt": prompt_preview(messages),
            "response": response,
            "recorded_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        line = json.dumps(record, ensure_ascii=False) + "\n"
        # One write of one line in append mode: earlier records are never rewritten, and a
        # crash loses at most the line being written.
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        return response
