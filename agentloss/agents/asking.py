"""Asking a language model, shared by every agent that uses one: the backend factory and the retry loop.

``make_backend`` turns an agent's ``backend`` option into a backend object: ``None`` is the embedded
default model, ``"none"`` (``NO_MODEL``) is no model at all, a dict or YAML path is a backend config
and an object with ``chat`` is used as it is. ``ask`` sends the messages, reads the answer with the
caller's ``read`` function and, on a problem, asks again with the first messages, the model's last
answer and a correction (never every failed round, so a retry's size is known). It never raises for
a backend failure: the outcome then carries ``failure`` and the agent records a fallback.

Example:
    >>> from agentloss.backends.base import ChatResult
    >>> class Echo:
    ...     supports_grammar = False
    ...     def __init__(self): self.answers = iter(["maybe", "Choice: B"])
    ...     def chat(self, messages, **kw): return ChatResult(next(self.answers), "stop")
    >>> def read(result):
    ...     if not result.text.startswith("Choice: "):
    ...         raise ValueError("start with 'Choice: '")
    ...     return result.text[-1]
    >>> out = ask(Echo(), [{"role": "user", "content": "A or B?"}], read, correction=lambda p: f"Fix: {p}")
    >>> out.value, out.attempts, out.failure, [m["role"] for m in out.exchange]
    ('B', 2, None, ['user', 'assistant', 'user', 'assistant'])
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from ..backends.base import BackendError, ChatResult, ContextOverflowError

__all__ = ["NO_MODEL", "AskOutcome", "ask", "describe_backend", "make_backend", "redact"]

T = TypeVar("T")
MAX_STORED_CHARS = 20_000  # of one answer, in the record: a runaway 20 MB answer must not bloat stages.jsonl
NO_MODEL = "none"  # the one spelling of "no language model" in every agent's ``backend`` option

_SECRET_KEY = re.compile(
    r"(?:.*[_-])?(?:api[_-]?key|secret|password|passwd|token|access[_-]?key|authorization|bearer|credentials?|cookie)"
)


def redact(obj: Any) -> Any:
    """Hide values of anything named like a secret (api_key, hf_token, Authorization ...).

    Example:
        >>> redact({"model": "m", "api_key": "sk-1", "api_key_env": "OPENAI_API_KEY", "max_tokens": 9,
        ...         "headers": {"Authorization": "x"}, "hf_token": "h"})  # doctest: +NORMALIZE_WHITESPACE
        {'model': 'm', 'api_key': '<redacted>', 'api_key_env': 'OPENAI_API_KEY', 'max_tokens': 9,
         'headers': {'Authorization': '<redacted>'}, 'hf_token': '<redacted>'}
    """
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            if _SECRET_KEY.fullmatch(str(k).lower()):
                out[k] = "<redacted>" if v else v
            else:
                out[k] = redact(v)
        return out
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def make_backend(spec: Any, *, optional: bool = False) -> Any:
    """The backend an agent's ``backend`` option names (see the module docstring).

    ``"none"`` gives ``None`` where the agent can work without a model (``optional``) and is an
    error where it cannot.
    """
    if isinstance(spec, str) and spec.strip().lower() == NO_MODEL:
        if optional:
            return None
        raise ValueError(f"backend {spec!r}: this agent needs a language model; omit backend for the embedded "
                         "default, or give a backend config")
    if spec is None or isinstance(spec, (Mapping, str, os.PathLike)):
        from ..backends import create_backend  # lazily: backends may import heavy runtimes

        return create_backend(spec)
    if not callable(getattr(spec, "chat", None)):
        raise TypeError(f"backend must be a ChatBackend, a config dict, a YAML path, None (the default model) or "
                        f"{NO_MODEL!r}, got {type(spec).__name__}")
    return spec


def describe_backend(backend: Any) -> dict[str, Any] | None:
    """The backend's ``describe()`` with secrets redacted, for the run's metadata (never raises)."""
    if backend is None:
        return None
    describe = getattr(backend, "describe", None)
    try:
        return redact(describe()) if callable(describe) else {"class": type(backend).__name__}
    except Exception as exc:  # noqa: BLE001
        return {"class": type(backend).__name__, "describe_error": str(exc)}


@dataclass
class AskOutcome(Generic[T]):
    """What came of asking: the value ``read`` returned (``None`` if none), the exchange for the record,
    the calls made (the backend's timings), the attempts, every problem seen, and ``failure`` (why no
    value came, or ``None``)."""

    value: T | None = None
    exchange: list[dict[str, Any]] = field(default_factory=list)
    calls: list[dict[str, Any]] = field(default_factory=list)
    attempts: int = 0
    problems: list[str] = field(default_factory=list)
    failure: str | None = None


def ask(backend: Any, messages: Sequence[Mapping[str, str]], read: Callable[[ChatResult], T], *,
        correction: Callable[[str], str], max_tries: int = 2, max_tokens: int = 200, temperature: float = 0.0,
        seed: int | None = None, grammar: str | None = None) -> AskOutcome[T]:
    """Ask up to ``max_tries`` times until ``read(result)`` returns without raising ``ValueError``.

    ``read`` raises ``ValueError`` (its message is the problem, sent back through ``correction``).
    Backend failures end the asking at once: timeouts and refused connections are retried by the
    backend itself, not again here.
    """
    out: AskOutcome[T] = AskOutcome(exchange=[{"role": m["role"], "content": m["content"]} for m in messages])
    first = [dict(m) for m in messages]
    sent = list(first)
    for attempt in range(1, max_tries + 1):
        out.attempts = attempt
        t0 = time.perf_counter()
        try:
            raw = backend.chat(sent, max_tokens=max_tokens, temperature=temperature, seed=seed, grammar=grammar)
        except ContextOverflowError as exc:
            out.failure = f"context overflow: {exc}"
            return out
        except BackendError as exc:
            out.failure = f"backend error: {type(exc).__name__}: {exc}"
            return out
        except Exception as exc:  # noqa: BLE001 - a misbehaving backend is still not a crash
            out.failure = f"backend failed: {type(exc).__name__}: {exc}"
            return out
        result = ChatResult.coerce(raw)
        text = result.text if isinstance(result.text, str) else str(result.text)
        # The backend's own numbers (prompt tokens actually evaluated, not reused from its KV cache;
        # llama.cpp's prompt/eval ms) show where a decision's time went. Its extra info fills in what
        # the result's fields leave unknown, never overrides them.
        call = result.call_record(attempt, time.perf_counter() - t0)
        for k, v in (result.info or {}).items():
            if (isinstance(v, (int, float, str, bool)) or v is None) and call.get(k) is None:
                call[k] = v
        out.calls.append(call)
        stored = text if len(text) <= MAX_STORED_CHARS else (
            text[:MAX_STORED_CHARS] + f"\n[... {len(text) - MAX_STORED_CHARS} more characters not stored]")
        out.exchange.append({"role": "assistant", "content": stored, **call})
        try:
            out.value = read(result)
            return out
        except ValueError as exc:
            problem = str(exc)
        out.problems.append(problem)
        if attempt < max_tries:
            fix = {"role": "user", "content": correction(problem)}
            sent = [*first, {"role": "assistant", "content": text}, fix]
            out.exchange.append({**fix, "attempt": attempt + 1})
    out.failure = f"no usable answer after {max_tries} tries; last problem: {out.problems[-1]}"
    return out
