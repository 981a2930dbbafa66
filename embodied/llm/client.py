"""A chat client for any OpenAI-compatible endpoint (vLLM, Ollama, llama.cpp, hosted APIs).

    from embodied.llm import ChatClient, LLMConfig, user_message

    client = ChatClient(LLMConfig(base_url="http://localhost:8000/v1", model="qwen2.5-coder"))
    text = client.chat([user_message("Describe this frame.", images=[frame])])

Configuration comes from :class:`LLMConfig`; every field left at ``None`` is read from
the environment:

    EMBODIED_LLM_BASE_URL   (else OPENAI_BASE_URL)   e.g. http://localhost:8000/v1
    EMBODIED_LLM_MODEL                               the model name the server knows
    EMBODIED_LLM_API_KEY    (else OPENAI_API_KEY)    local servers usually need none

There is deliberately no default endpoint: a missing base URL is an error rather than a
silent request to some hosted service. Messages are OpenAI chat messages (dicts with
``role`` and ``content``); images travel as base64 ``data:`` URLs in OpenAI's content-part
format, which vLLM, Ollama and llama.cpp's server all accept.

Failures raise subclasses of :class:`LLMError` whose message names the endpoint and says
what went wrong: :class:`LLMConnectionError` (refused, unreachable, timed out, after the
retries), :class:`LLMHTTPError` (the server's status and its own error message) and
:class:`LLMResponseError` (a reply that is not a chat completion, or an empty one).
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

Message = dict[str, Any]  # {"role": "system" | "user" | "assistant", "content": str | list[part]}

# Statuses worth another try: the server is overloaded, restarting or rate limiting.
RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
# Local servers (vLLM, llama.cpp, Ollama) ignore the key, but the openai package needs one.
NO_KEY = "EMPTY"


class LLMError(RuntimeError):
    """A chat request that did not produce an answer."""


class LLMConfigError(LLMError, ValueError):
    """The client is not configured well enough to send a request."""


class LLMConnectionError(LLMError):
    """The endpoint could not be reached (refused, unreachable, timed out)."""


class LLMHTTPError(LLMError):
    """The endpoint answered with an HTTP error status."""

    def __init__(self, message: str, status: int, server_message: str):
        super().__init__(message)
        self.status = status
        self.server_message = server_message


class LLMResponseError(LLMError):
    """The endpoint answered, but not with a usable chat completion."""


@dataclass
class LLMConfig:
    """Where and how to ask; ``None`` fields are filled from the environment (see module doc)."""

    base_url: str | None = None  # OpenAI-compatible API root, e.g. http://localhost:8000/v1
    model: str | None = None  # model name as the server knows it
    api_key: str | None = None  # bearer token; local servers need none
    timeout_s: float = 120.0  # per request; code answers from large models can take a while
    max_retries: int = 3  # further attempts after a connection error, timeout, 429 or 5xx
    retry_backoff_s: float = 1.0  # wait before retry k is retry_backoff_s * 2**(k-1)
    temperature: float | None = None  # None: the server's default
    max_tokens: int | None = None  # None: the server's default
    replay: str | None = None  # answer from this file of recorded responses (no network)
    record: str | None = None  # ask the endpoint and append every answer to this file

    def resolved(self, environ: Mapping[str, str] | None = None) -> LLMConfig:
        """A copy with unset fields taken from the environment variables."""
        env = os.environ if environ is None else environ

        def first(*names: str) -> str | None:
            return next((env[name] for name in names if env.get(name)), None)

        return dataclasses.replace(
            self,
            base_url=self.base_url or first("EMBODIED_LLM_BASE_URL", "OPENAI_BASE_URL"),
            model=self.model or first("EMBODIED_LLM_MODEL"),
            api_key=self.api_key or first("EMBODIED_LLM_API_KEY", "OPENAI_API_KEY"),
        )


@runtime_checkable
class ChatBackend(Protocol):
    """What callers of an LLM need: a model name and one call. Live and replayed alike."""

    @property
    def model(self) -> str: ...

    def chat(self, messages: Sequence[Message], **options: Any) -> str:
        """The assistant's reply text to ``messages``."""
        ...


# ----------------------------------------------------------------------------- messages


def system_message(text: str) -> Message:
    return {"role": "system", "content": text}


def assistant_message(text: str) -> Message:
    return {"role": "assistant", "content": text}


def user_message(text: str, images: Iterable[Any] = (), detail: str | None = None) -> Message:
    """A user turn; with images, OpenAI's content parts: the text, then one part per image.

    ``images`` items may be uint8 arrays (H, W[, 3|4]), PIL images, encoded PNG/JPEG bytes,
    file paths, or ready ``data:`` URLs. ``detail`` ("low", "high", "auto") is passed on
    for servers that use it.
    """
    images = list(images)
    if not images:
        return {"role": "user", "content": text}
    parts: list[dict[str, Any]] = [{"type": "text", "text": text}]
    for image in images:
        image_url: dict[str, Any] = {"url": image_data_url(image)}
        if detail is not None:
            image_url["detail"] = detail
        parts.append({"type": "image_url", "image_url": image_url})
    return {"role": "user", "content": parts}


_MIME_BY_SUFFIX = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".gif": "image/gif",
                   ".webp": "image/webp"}  # fmt: skip


def image_data_url(image: Any) -> str:
    """``data:image/png;base64,...`` for an array, PIL image, encoded bytes or file path."""
    if isinstance(image, str) and image.startswith("data:"):
        return image
    if isinstance(image, (str, Path)):
        path = Path(image)
        mime = _MIME_BY_SUFFIX.get(path.suffix.lower())
        if mime is None:
            raise ValueError(f"image file {path} must end in one of {', '.join(_MIME_BY_SUFFIX)}")
        return _data_url(mime, path.read_bytes())
    if isinstance(image, (bytes, bytearray)):
        return _data_url(_sniff_mime(bytes(image)), bytes(image))
    if hasattr(image, "save") and hasattr(image, "mode"):  # a PIL image, without importing PIL
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return _data_url("image/png", buffer.getvalue())
    return _data_url("image/png", _png_bytes(image))


def _data_url(mime: str, data: bytes) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _sniff_mime(data: bytes) -> str:
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    raise ValueError("image bytes are not PNG, JPEG, GIF or WebP; pass an array or a file path instead")


def _png_bytes(image: Any) -> bytes:
    import imageio.v3 as iio
    import numpy as np

    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"an image array must be uint8 with shape (H, W), (H, W, 3) or (H, W, 4); got {array.dtype} {array.shape}"
        )
    return iio.imwrite("<bytes>", array, extension=".png")


def message_text(message: Message) -> str:
    """The text of a message, its text parts joined when it has content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    return "\n".join(part.get("text", "") for part in content or () if part.get("type") == "text")


# ----------------------------------------------------------------------------- client


class ChatClient:
    """Chat completions from an OpenAI-compatible endpoint, with retries and clear errors."""

    def __init__(self, config: LLMConfig | None = None, environ: Mapping[str, str] | None = None):
        self.config = (config or LLMConfig()).resolved(environ)
        if not self.config.base_url:
            raise LLMConfigError(
                "no LLM endpoint configured: pass --base-url URL or set EMBODIED_LLM_BASE_URL "
                "(or OPENAI_BASE_URL) to an OpenAI-compatible API root, e.g. http://localhost:8000/v1"
            )
        if not self.config.model:
            raise LLMConfigError("no LLM model configured: pass --model NAME or set EMBODIED_LLM_MODEL")
        try:
            import openai
        except ImportError as error:
            raise ImportError("the LLM client needs the `openai` package: pip install 'embodied[llm]'") from error
        self._openai_module = openai
        # Retries are ours (below), so that every failure ends in one clear message.
        self._openai = openai.OpenAI(
            base_url=self.config.base_url,
            api_key=self.config.api_key or NO_KEY,
            timeout=self.config.timeout_s,
            max_retries=0,
        )

    @property
    def model(self) -> str:
        return str(self.config.model)

    def chat(self, messages: Sequence[Message], **options: Any) -> str:
        """The assistant's reply to ``messages``.

        ``options`` go to ``chat.completions.create`` (``temperature``, ``max_tokens``,
        ``seed``, ...); the config's temperature and max_tokens are the defaults.
        """
        openai = self._openai_module
        where = f"LLM endpoint {self.config.base_url}"
        request = {"temperature": self.config.temperature, "max_tokens": self.config.max_tokens, **options}
        request = {key: value for key, value in request.items() if value is not None}
        attempts = 1 + max(0, self.config.max_retries)
        failure, last_status = "", (0, "")
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.config.retry_backoff_s * 2 ** (attempt - 1))
            try:
                completion = self._openai.chat.completions.create(model=self.model, messages=list(messages), **request)
            except openai.APITimeoutError:
                failure = f"timed out after {self.config.timeout_s:g} s"
            except openai.APIConnectionError as error:
                failure = f"could not connect ({_root_cause(error)})"
            except openai.APIStatusError as error:
                server_message = _server_message(error)
                if error.status_code not in RETRY_STATUSES:
                    raise LLMHTTPError(
                        f"{where} answered HTTP {error.status_code} for model {self.model!r}: {server_message}",
                        error.status_code, server_message,
                    ) from error  # fmt: skip
                failure = f"HTTP {error.status_code}: {server_message}"
                last_status = (error.status_code, server_message)
            except openai.APIResponseValidationError as error:
                raise LLMResponseError(f"{where} sent a reply that is not a chat completion: {error}") from error
            except (json.JSONDecodeError, ValueError, TypeError) as error:
                body = f" in {_preview(error.doc)}" if isinstance(error, json.JSONDecodeError) else ""
                raise LLMResponseError(
                    f"{where} sent a reply that is not valid JSON ({type(error).__name__}: {error}){body}"
                ) from error
            else:
                return self._answer_text(completion)
        message = f"{where} failed after {attempts} attempt(s): {failure}"
        if failure.startswith("HTTP"):
            raise LLMHTTPError(message, *last_status)
        if failure.startswith("could not connect"):
            message += " — is the server running at that address? (set --base-url or EMBODIED_LLM_BASE_URL)"
        raise LLMConnectionError(message)

    def _answer_text(self, completion: Any) -> str:
        where = f"LLM endpoint {self.config.base_url}"
        if isinstance(completion, (str, bytes)):  # a body that was not JSON at all
            raise LLMResponseError(f"{where} sent a reply that is not chat-completion JSON: {_preview(completion)}")
        choices = getattr(completion, "choices", None)
        if not isinstance(choices, list):
            raise LLMResponseError(f"{where} sent JSON that is not a chat completion (no 'choices' list)")
        if not choices:
            raise LLMResponseError(f"{where} sent a chat completion with no choices for model {self.model!r}")
        message = getattr(choices[0], "message", None)
        if message is None:
            raise LLMResponseError(f"{where} sent JSON that is not a chat completion (choices[0] has no 'message')")
        content = getattr(message, "content", None)
        if not isinstance(content, str) or not content.strip():
            reason = getattr(choices[0], "finish_reason", None)
            raise LLMResponseError(f"{where} sent an empty answer for model {self.model!r} (finish_reason={reason!r})")
        return content


def _root_cause(error: BaseException) -> str:
    """The innermost cause's text: 'Connection refused' rather than 'Connection error.'."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__  # type: ignore[assignment]
    return (str(error) or type(error).__name__)[:300]


def _server_message(error: Any) -> str:
    """The server's own words: OpenAI's {"error": {"message": ...}}, or whatever it sent."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if body.get("detail"):  # FastAPI-style servers
            return str(body["detail"])
        return json.dumps(body)[:500]
    response = getattr(error, "response", None)
    text = getattr(response, "text", None) if response is not None else None
    return _preview(text) if text else str(getattr(error, "message", error))


def _preview(text: Any, limit: int = 200) -> str:
    text = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "...")
