"""LLMs and VLMs behind an OpenAI-compatible chat endpoint, live or replayed.

    from embodied.llm import LLMConfig, make_client, user_message

    client = make_client(LLMConfig(model="qwen2.5-coder"))      # base URL from EMBODIED_LLM_BASE_URL
    answer = client.chat([user_message("Write a reward function ...")])

    make_client(LLMConfig(replay="answers.jsonl"))                # no network: recorded answers
    make_client(LLMConfig(record="answers.jsonl", ...))           # live, and keep every answer

See :mod:`embodied.llm.client` for configuration and errors, :mod:`embodied.llm.replay`
for the recording format.
"""

from __future__ import annotations

from embodied.llm.client import (
    ChatBackend,
    ChatClient,
    LLMConfig,
    LLMConfigError,
    LLMConnectionError,
    LLMError,
    LLMHTTPError,
    LLMResponseError,
    Message,
    assistant_message,
    image_data_url,
    message_text,
    system_message,
    user_message,
)
from embodied.llm.replay import RecordingClient, ReplayClient, ReplayMissError, request_key


def make_client(config: LLMConfig | None = None) -> ChatBackend:
    """The backend ``config`` asks for: replay (no network), recording, or a live client."""
    config = (config or LLMConfig()).resolved()
    if config.replay and config.record:
        raise LLMConfigError("choose one of replay (answer from a file) and record (ask and keep the answers)")
    if config.replay:
        return ReplayClient(config.replay, model=config.model)
    client = ChatClient(config)
    return RecordingClient(client, config.record) if config.record else client


__all__ = [
    "ChatBackend",
    "ChatClient",
    "LLMConfig",
    "LLMConfigError",
    "LLMConnectionError",
    "LLMError",
    "LLMHTTPError",
    "LLMResponseError",
    "Message",
    "RecordingClient",
    "ReplayClient",
    "ReplayMissError",
    "assistant_message",
    "image_data_url",
    "make_client",
    "message_text",
    "request_key",
    "system_message",
    "user_message",
]
