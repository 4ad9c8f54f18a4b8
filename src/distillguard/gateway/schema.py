"""Validate OpenAI request bodies into ``GenerationRequest``s.

Hand-written rather than a model library: the checks are few, each error must name its
``param`` the way OpenAI does, and this runs on every request of a latency-bound proxy.

The contract: every field of the chat completions and completions APIs is either served
(``SERVED``) or refused with a 400 that names it (``REFUSED``, unless its value is one
that asks for nothing, e.g. ``logprobs: false``); a field neither API has is refused as
OpenAI does. Nothing is accepted and ignored.
"""

from __future__ import annotations

from typing import Any

from distillguard.backends.base import GenerationRequest
from distillguard.backends.sampling import MAX_LOGIT_BIAS_ENTRIES
from distillguard.gateway.errors import InvalidRequest

CHAT_ROLES = frozenset({"system", "developer", "user", "assistant", "tool", "function"})

# Parameters recorded in the event: the sampling set a detector compares across accounts.
RECORDED_PARAMS = (
    "temperature", "top_p", "max_tokens", "max_completion_tokens", "n", "stop", "seed",
    "stream", "user", "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
    "response_format", "safety_identifier",
)


_SAMPLING = ("temperature", "top_p", "n", "stop", "seed", "max_tokens", "presence_penalty",
             "frequency_penalty", "logit_bias", "stream", "stream_options", "user", "model")
SERVED = {
    "chat": frozenset(_SAMPLING + ("messages", "max_completion_tokens", "safety_identifier")),
    "completion": frozenset(_SAMPLING + ("prompt",)),
}
"""Fields each endpoint honours."""

_LOGPROBS = ("log-probabilities are not returned: they are the soft labels distillation "
             "wants most, and comparing them across contexts exposes the watermark")
_TOOLS = "tool and function calling are not supported by this server"
REFUSED: dict[str, dict[str, tuple[tuple[Any, ...], str]]] = {
    "chat": {
        "logprobs": ((False,), _LOGPROBS),
        "top_logprobs": ((0,), _LOGPROBS),
        "tools": (([],), _TOOLS),
        "tool_choice": (("none",), _TOOLS),
        "parallel_tool_calls": ((), _TOOLS),
        "functions": (([],), _TOOLS),
        "function_call": (("none",), _TOOLS),
        "response_format": (({"type": "text"},), "only text output is served; JSON modes "
                            "and schemas are not enforced"),
        "modalities": ((["text"],), "only the text modality is served"),
        "audio": ((), "audio output is not served"),
        "prediction": ((), "predicted outputs are not supported"),
        "web_search_options": ((), "web search is not available"),
        "reasoning_effort": ((), "the served model does not take a reasoning effort"),
        "verbosity": ((), "the served model does not take a verbosity"),
        "store": ((False,), "completions are not stored for later retrieval"),
        "metadata": (({},), "completions are not stored, so metadata has nowhere to go"),
        "service_tier": (("auto", "default"), "this server has one service tier"),
        "prompt_cache_key": ((), "prompt caching hints are not supported"),
    },
    "completion": {
        "logprobs": ((False, 0), _LOGPROBS),
        "echo": ((False,), "the prompt is not echoed back"),
        "best_of": ((1,), "best_of needs log-probabilities, which are not computed"),
        "suffix": (("",), "insertion with a suffix is not supported"),
    },
}
"""Fields each endpoint refuses: (values that ask for nothing and pass, why not)."""


def check_fields(body: dict[str, Any], kind: str) -> None:
    """Refuse, with a 400 naming it, every field ``kind`` does not honour."""
    served, refused = SERVED[kind], REFUSED[kind]
    for name, value in body.items():
        if name in served or value is None:
            continue
        rule = refused.get(name)
        if rule is None:
            raise InvalidRequest(f"Unrecognized request argument supplied: {name}",
                                 param=name, code="unknown_parameter")
        harmless, why = rule
        # Compared with their types: in Python `False == 0` and `True == 1`.
        if any(type(value) is type(h) and value == h for h in harmless):
            continue
        raise InvalidRequest(f"'{name}' is not supported here: {why}.", param=name,
                             code="unsupported_parameter")


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


def _logit_bias(body: dict[str, Any]) -> dict[int, float]:
    bias = body.get("logit_bias")
    if bias is None:
        return {}
    if not isinstance(bias, dict):
        raise InvalidRequest("'logit_bias' must be an object mapping token ids to biases",
                             param="logit_bias", code="invalid_type")
    if len(bias) > MAX_LOGIT_BIAS_ENTRIES:
        raise InvalidRequest(f"'logit_bias' takes at most {MAX_LOGIT_BIAS_ENTRIES} tokens, "
                             f"got {len(bias)}", param="logit_bias", code="invalid_value")
    out: dict[int, float] = {}
    for key, value in bias.items():
        token = str(key).strip()
        if not token.isascii() or not token.isdigit():
            raise InvalidRequest(f"'logit_bias' keys must be token ids, got {key!r}",
                                 param="logit_bias", code="invalid_value")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidRequest(f"'logit_bias' values must be numbers, got "
                                 f"{type(value).__name__}", param="logit_bias",
                                 code="invalid_type")
        if not -100 <= value <= 100:
            raise InvalidRequest(f"'logit_bias' values must lie between -100 and 100, got "
                                 f"{value}", param="logit_bias", code="invalid_value")
        out[int(token)] = float(value)
    return out


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
    safety = body.get("safety_identifier")
    if safety is not None and not isinstance(safety, str):
        raise InvalidRequest("'safety_identifier' must be a string",
                             param="safety_identifier", code="invalid_type")
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
    if isinstance(options, dict):
        extra = set(options) - {"include_usage"}
        if extra:
            name = sorted(extra)[0]
            raise InvalidRequest(f"'stream_options.{name}' is not supported here",
                                 param="stream_options", code="unsupported_parameter")
    return {
        "presence_penalty": _number(body, "presence_penalty", 0.0, -2.0, 2.0),
        "frequency_penalty": _number(body, "frequency_penalty", 0.0, -2.0, 2.0),
        "logit_bias": _logit_bias(body),
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
    """A chat completions body as a ``GenerationRequest``; ``InvalidRequest`` if not."""
    check_fields(body, "chat")
    model = _model(body)
    messages = _messages(body)
    return GenerationRequest(kind="chat", model=model, messages=messages, body=body,
                             **_common(body, limits))


def parse_completion(body: dict[str, Any], limits: Limits) -> GenerationRequest:
    """A completions body as a ``GenerationRequest``; ``InvalidRequest`` if not."""
    check_fields(body, "completion")
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
