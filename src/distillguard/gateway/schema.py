"""Validate OpenAI request bodies into ``GenerationRequest``s.

Hand-written rather than a model library: the checks are few, each error must name its
``param`` the way OpenAI does, and this runs on every request of a latency-bound proxy.
"""

from __future__ import annotations

from typing import Any

from distillguard.backends.base import GenerationRequest
from distillguard.gateway.errors import InvalidRequest

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Parameters recorded in the event: the sampling set a detector compares across accounts.
RECORDED_PARAMS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed",
    "stream", "user", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
    "response_format",
)


class Limits:
    """The request limits a gateway enforces, from settings."""

    __slots__ = ("max_tokens", "default_max_tokens", "max_n")

    def __init__(self, max_tokens: int, default_max_tokens: int, max_n: int) -> None:
        self.max_tokens = max_tokens
        self.default_max_tokens = default_max_tokens
        self.max_n = max_n


def _number(body: dict[str, Any], name: str, default: float, lo: float, hi: float) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidRequest(f"'{name}' must be a number, got {type(value).__name__}",
                             param=name, code="invalid_type")
    if not lo <= value <= hi:
        raise InvalidRequest(f"'{name}' must be between {lo:g} and {hi:g}, got {value}",
                             param=name, code="invalid_value")
    return float(value)


def _integer(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidRequest(f"'{name}' must be an integer, got {type(value).__name__}",
                             param=name, code="invalid_type")
    return value


def _max_tokens(body: dict[str, Any], limits: Limits) -> int:
    name = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    value = _integer(body, name)
    if value is None:
        return limits.default_max_tokens
    if value < 1:
        raise InvalidRequest(f"'{name}' must be at least 1, got {value}", param=name,
                             code="invalid_value")
    if value > limits.max_tokens:
        raise InvalidRequest(
            f"'{name}' is {value}, above this server's limit of {limits.max_tokens}",
            param=name, code="invalid_value")
    return value


def _stop(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    if isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("'stop' must be a string or a list of strings", param="stop",
                             code="invalid_type")
    if len(stop) > 4:
        raise InvalidRequest("'stop' takes at most 4 sequences", param="stop",
                             code="invalid_value")
    return [s for s in stop if s]


def _common(body: dict[str, Any], limits: Limits) -> dict[str, Any]:
    n = _integer(body, "n")
    if n is None:
        n = 1
    if not 1 <= n <= limits.max_n:
        raise InvalidRequest(f"'n' must be between 1 and {limits.max_n}, got {n}", param="n",
                             code="invalid_value")
    user = body.get("user")
    if user is not None and not isinstance(user, str):
        raise InvalidRequest("'user' must be a string", param="user", code="invalid_type")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise InvalidRequest("'stream' must be a boolean", param="stream", code="invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise InvalidRequest("'stream_options' must be an object", param="stream_options",
                                 code="invalid_type")
        if not stream:
            raise InvalidRequest("'stream_options' is only allowed when 'stream' is true",
                                 param="stream_options", code="invalid_value")
    return {
        "temperature": _number(body, "temperature", 1.0, 0.0, 2.0),
        "top_p": _number(body, "top_p", 1.0, 0.0, 1.0),
        "max_tokens": _max_tokens(body, limits),
        "stop": _stop(body),
        "seed": _integer(body, "seed"),
        "n": n,
        "user": user,
    }


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if model is None:
        raise InvalidRequest("you must provide a model parameter", param="model",
                             code="missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("'model' must be a non-empty string", param="model",
                             code="invalid_type")
    return model


def message_text(content: Any) -> str:
    """The text of a message's content: a string, or the text parts of a list."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.get("text", "") for part in content if part.get("type") == "text")


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    messages = body.get("messages")
    if messages is None:
        raise InvalidRequest("you must provide a messages parameter", param="messages",
                             code="missing_required_parameter")
    if not isinstance(messages, list) or not messages:
        raise InvalidRequest("'messages' must be a non-empty array", param="messages",
                             code="invalid_type")
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise InvalidRequest(f"'{where}' must be an object", param=where,
                                 code="invalid_type")
        role = message.get("role")
        if role not in CHAT_ROLES:
            raise InvalidRequest(
                f"'{where}.role' must be one of {', '.join(sorted(CHAT_ROLES))}, got {role!r}",
                param=f"{where}.role", code="invalid_value")
        content = message.get("content")
        if content is None and role != "assistant":
            raise InvalidRequest(f"'{where}.content' is required", param=f"{where}.content",
                                 code="missing_required_parameter")
        if isinstance(content, list):
            for j, part in enumerate(content):
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise InvalidRequest(f"'{where}.content[{j}]' must be a content part",
                                         param=f"{where}.content", code="invalid_type")
                if part["type"] == "text" and not isinstance(part.get("text"), str):
                    raise InvalidRequest(f"'{where}.content[{j}].text' must be a string",
                                         param=f"{where}.content", code="invalid_type")
        elif content is not None and not isinstance(content, str):
            raise InvalidRequest(f"'{where}.content' must be a string or an array of parts",
                                 param=f"{where}.content", code="invalid_type")
    return messages


def parse_chat(body: dict[str, Any], limits: Limits) -> GenerationRequest:
    model = _model(body)
    messages = _messages(body)
    return GenerationRequest(kind="chat", model=model, messages=messages, body=body,
                             **_common(body, limits))


def parse_completion(body: dict[str, Any], limits: Limits) -> GenerationRequest:
    model = _model(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if prompt is None:
        raise InvalidRequest("you must provide a prompt parameter", param="prompt",
                             code="missing_required_parameter")
    if not isinstance(prompt, str):
        raise InvalidRequest("'prompt' must be a string (batches of prompts are not served)",
                             param="prompt", code="invalid_type")
    return GenerationRequest(kind="completion", model=model, prompt=prompt, body=body,
                             **_common(body, limits))


def prompt_text(request: GenerationRequest) -> str:
    """The prompt as an analyst reads it: messages as `role: text` lines."""
    if request.messages is None:
        return request.prompt or ""
    return "\n".join(f"{m.get('role')}: {message_text(m.get('content'))}"
                     for m in request.messages)


def recorded_params(body: dict[str, Any]) -> dict[str, Any]:
    return {k: body[k] for k in RECORDED_PARAMS if k in body}
