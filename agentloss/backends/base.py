"""The backend protocol: chat messages in, text out. One small surface for every LLM runtime.

Backends are chosen by config (``create_backend({"type": "llama_cpp", ...})``) so that moving from
a local GGUF to a hosted OpenAI-compatible model changes no code. A backend raises
``BackendError`` for any failure it can name (timeout, refused connection, HTTP error, context
overflow); the agent turns that into a recorded fallback instead of a crash.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict, ValidationError

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}


class BackendError(RuntimeError):
    """A backend could not produce an answer (timeout, connection, server error, bad config)."""


class ContextOverflowError(BackendError):
    """The prompt does not fit the model's context window."""


@dataclass
class ChatResult:
    """One answer. ``finish_reason`` is "stop", "length" (cut at max_tokens) or the runtime's word.

    ``prompt_tokens`` is the prompt's length; ``prompt_eval_tokens`` how many of them this call
    actually evaluated and ``cached_prompt_tokens`` how many it reused from the runtime's KV cache
    (a prompt that starts like the previous one is not evaluated again). Both are ``None`` where
    the backend cannot know (see each backend's docstring).
    """

    text: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    seconds: float | None = None
    info: dict[str, Any] = field(default_factory=dict)
    prompt_eval_tokens: int | None = None
    cached_prompt_tokens: int | None = None

    @classmethod
    def coerce(cls, result: Any) -> ChatResult:
        """A backend's answer as a ChatResult (a foreign object keeps its text and finish reason)."""
        if isinstance(result, cls):
            return result
        return cls(text=str(getattr(result, "text", result)), finish_reason=getattr(result, "finish_reason", None))

    def call_record(self, attempt: int, measured_seconds: float) -> dict[str, Any]:
        """What a decision record keeps of one call (the backend's own time when it gives one).

        >>> r = ChatResult("x", "stop", 700, 1, prompt_eval_tokens=90, cached_prompt_tokens=610)
        >>> {k: v for k, v in r.call_record(1, 0.25).items() if k != "finish_reason"}  # doctest: +NORMALIZE_WHITESPACE
        {'attempt': 1, 'seconds': 0.25, 'prompt_tokens': 700, 'completion_tokens': 1,
         'prompt_eval_tokens': 90, 'cached_prompt_tokens': 610}
        """
        seconds = self.seconds if self.seconds is not None else measured_seconds
        return {"attempt": attempt, "seconds": round(seconds, 4), "finish_reason": self.finish_reason,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "prompt_eval_tokens": self.prompt_eval_tokens, "cached_prompt_tokens": self.cached_prompt_tokens}


@runtime_checkable
class ChatBackend(Protocol):
    """What an agent needs of a language model.

    ``grammar`` is a GBNF grammar the backend should constrain decoding with when it can;
    ``supports_grammar`` says whether it does. ``context_size`` (tokens) and ``count_tokens``
    let the agent shorten a prompt that would not fit; both may be ``None``.
    """

    supports_grammar: bool
    context_size: int | None

    def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        grammar: str | None = None,
    ) -> ChatResult: ...

    def count_tokens(self, messages: list[Message]) -> int | None: ...

    def describe(self) -> dict[str, Any]: ...


BACKEND_REGISTRY: dict[str, Callable[..., ChatBackend]] = {}


def register_backend(name: str) -> Callable[[Callable[..., ChatBackend]], Callable[..., ChatBackend]]:
    """Register a backend factory under ``name`` (the config's ``type``).

    ``create_backend`` calls ``factory(config_dict_without_type)``; a factory that has a
    ``config_model`` attribute (a ``BackendConfig`` subclass) gets its config validated first, so
    unknown or missing fields fail with a message naming them.
    """

    def wrap(factory: Callable[..., ChatBackend]) -> Callable[..., ChatBackend]:
        BACKEND_REGISTRY[name] = factory
        return factory

    return wrap


class BackendConfig(BaseModel):
    """Base of the per-backend config models: unknown fields are errors, not silently ignored.

    Example:
        >>> class EchoConfig(BackendConfig):
        ...     prefix: str = ""
        >>> validate_config(EchoConfig, {"prefix": ">"}, backend="echo").prefix
        '>'
    """

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=BackendConfig)


def validate_config(model: type[ConfigT], data: Mapping[str, Any] | ConfigT | None, *, backend: str) -> ConfigT:
    """Validate ``data`` against ``model``; on failure raise ``ValueError`` naming each bad field.

    The message lists the allowed fields and never echoes the offending values (a config may hold
    an API key). A ``"type"`` entry in ``data`` is ignored: it selected the backend already.

    Example:
        >>> class EchoConfig(BackendConfig):
        ...     prefix: str = ""
        >>> validate_config(EchoConfig, {"prefx": ">"}, backend="echo")
        Traceback (most recent call last):
        ...
        ValueError: invalid config for backend 'echo': unknown field 'prefx'. Allowed fields: prefix
    """
    if isinstance(data, model):
        return data
    fields = dict(data or {})
    fields.pop("type", None)
    try:
        return model.model_validate(fields)
    except ValidationError as err:
        allowed = ", ".join(name for name in model.model_fields if name != "type")
        problems = []
        for e in err.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in e["loc"]) or "(config)"
            if e["type"] == "extra_forbidden":
                problems.append(f"unknown field {where!r}")
            elif e["type"] == "missing":
                problems.append(f"missing required field {where!r}")
            else:
                problems.append(f"field {where!r}: {e['msg']}")
        # ``from None``: pydantic's own message would print the rejected input, maybe a secret.
        raise ValueError(
            f"invalid config for backend {backend!r}: {'; '.join(problems)}. Allowed fields: {allowed}"
        ) from None


_KEY_PREFIXES = ("sk-", "sk_", "hf_", "gsk_", "xai-", "aiza", "ghp_", "github_pat_")


def looks_like_key(value: Any) -> bool:
    """Whether ``value``, given as an environment variable's name, is rather a pasted API key.

    >>> looks_like_key("OPENAI_API_KEY"), looks_like_key("sk-proj-abc"), looks_like_key("MY KEY")
    (False, True, True)
    """
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        return True
    long_mixed = len(value) >= 32 and not value.isupper() and any(c.isdigit() for c in value)
    return value.lower().startswith(_KEY_PREFIXES) or long_mixed
