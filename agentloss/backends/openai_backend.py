"""Any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp / llama-cpp-python servers, ...).

``openai`` is imported on first use, so this module loads without it.

Retries are done here, not by the client (its own ``max_retries`` is set to 0): a request is tried
at most ``1 + max_retries`` times; a retry follows a timeout, a failed connection, HTTP 408/409/
429 or any 5xx, after ``min(backoff * 2**i, backoff_max)`` seconds (i = 0, 1, ...). Other 4xx
answers are final.

Time is bounded whatever the server does. The client's own ``timeout`` only bounds each read, so a
server that trickles its headers or body, or sends an endless chunked body, would hold it forever.
Here each attempt runs in a worker thread and the caller stops waiting after ``timeout`` seconds
(the attempt as a whole: connecting, sending, waiting, reading), and the whole call, retries and
backoff included, after ``deadline`` seconds; a late attempt's client is closed, which releases its
socket, and the worker stops at its next read. A late call raises ``BackendError`` naming the
timeout or the deadline, which the agent records as a fallback. The answer's body is read in
chunks and refused beyond ``MAX_ANSWER_BYTES``, so a fast endless body cannot fill the memory
before the deadline either.

The API key comes from the environment variable named by ``api_key_env`` (default
``OPENAI_API_KEY``) or, discouraged, from a literal ``api_key``. It is never part of
``describe()`` or of an error message.

How many prompt tokens the server evaluated, and how many it reused from its prompt cache
(``ChatResult.prompt_eval_tokens``, ``cached_prompt_tokens``), is read from the answer where the
server reports it (see ``_prompt_cache_use``), else left unknown.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator

from .base import (
    BackendConfig,
    BackendError,
    ChatResult,
    ContextOverflowError,
    Message,
    looks_like_key,
    register_backend,
    validate_config,
)

# Local servers (llama.cpp, vLLM without --api-key) ignore the key, but the client insists on one.
_PLACEHOLDER_KEY = "sk-no-key-required"

# How servers word "the prompt is too long": OpenAI and llama-cpp-python send the code
# context_length_exceeded; llama.cpp's C++ server sends exceed_context_size_error; vLLM writes
# "maximum context length".
_CONTEXT_CODES = {"context_length_exceeded", "exceed_context_size_error", "string_above_max_length"}
_CONTEXT_TEXT = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|exceeds? the available context|too many tokens", re.IGNORECASE
)
_RETRY_STATUS = {408, 409, 429}
# A chat completion of a few thousand tokens is tens of KB; a body this large is a broken or hostile
# server, and reading on would only cost memory.
MAX_ANSWER_BYTES = 4 * 2**20


class _Late(Exception):
    """An attempt ran out of its time (raised where the waiting stops)."""


class _BadAnswer(Exception):
    """The server answered 2xx with something that is not a usable chat completion."""


class OpenAIConfig(BackendConfig):
    """Config of ``type: openai``. Only ``model`` is required.

    Time limits, in seconds, both hard (see the module docstring for how they are kept):

    - ``timeout``: one attempt as a whole, from connecting to the last byte of the answer (not, as
      the openai client's own timeout, each read).
    - ``deadline``: the whole ``chat`` call, every attempt and backoff delay included. An attempt
      gets ``min(timeout, time left)``; no retry starts that could not begin before the deadline.

    Example:
        >>> OpenAIConfig(model="gpt-4o-mini", base_url="http://127.0.0.1:8080/v1").max_retries
        2
    """

    model: str
    base_url: str | None = None  # None: the client's default (OPENAI_BASE_URL or api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"
    api_key: SecretStr | None = None  # literal key; prefer api_key_env
    timeout: float = Field(60.0, gt=0)  # seconds, one attempt from connect to the last byte
    # Five minutes: the default attempts (3 x 60 s plus 1.5 s of backoff) fit with room to spare, and a
    # stage-end decision stalled for longer costs more training time than falling back to the current
    # weights for one stage does. Raise it with timeout for a slow local server.
    deadline: float = Field(300.0, gt=0)  # seconds, the whole call
    max_retries: int = Field(2, ge=0, le=10)
    backoff: float = Field(0.5, ge=0)  # first retry delay, seconds; doubles each retry
    backoff_max: float = Field(8.0, ge=0)
    extra_body: dict[str, Any] = Field(default_factory=dict)  # merged into every request's JSON
    grammar_mode: Literal["none", "llama_cpp"] = "none"  # "llama_cpp": send GBNF as extra_body.grammar

    @field_validator("api_key_env")
    @classmethod
    def _a_variable_name(cls, v: str) -> str:
        # A key pasted here would be written, as a "name", into the run's metadata.
        if looks_like_key(v):
            raise ValueError("must name an environment variable (e.g. OPENAI_API_KEY); this looks like a key "
                             "itself: put the key in the environment, or in api_key")
        return v
    context_size: int | None = Field(None, gt=0)  # tokens, if known
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    top_p: float | None = Field(None, gt=0, le=1)


@register_backend("openai")
class OpenAIBackend:
    """Chat through an OpenAI-compatible HTTP endpoint.

    Example (needs a server; a llama.cpp server accepts the grammar):
        >>> backend = OpenAIBackend({"model": "local", "base_url": "http://127.0.0.1:8080/v1",
        ...                          "grammar_mode": "llama_cpp", "max_retries": 0})
        >>> backend.supports_grammar
        True
        >>> backend.chat([{"role": "user", "content": "Hi"}], max_tokens=8).text  # doctest: +SKIP
        'Hello! How can I help?'
    """

    config_model = OpenAIConfig

    def __init__(self, config: OpenAIConfig | Mapping[str, Any] | None = None, **fields: Any) -> None:
        if config is not None and fields:
            config = {**(config.model_dump() if isinstance(config, OpenAIConfig) else dict(config)), **fields}
        self.config: OpenAIConfig = validate_config(OpenAIConfig, config if config is not None else fields,
                                                    backend="openai")
        self.supports_grammar: bool = self.config.grammar_mode == "llama_cpp"
        self.context_size: int | None = self.config.context_size
        self._client: Any = None

    # -- key handling: the key lives only in the client and in ``_secret()``, never in messages --
    def _key_source(self) -> tuple[str, str | None]:
        if self.config.api_key is not None:
            return "config", self.config.api_key.get_secret_value()
        value = os.environ.get(self.config.api_key_env)
        if value:
            return f"env:{self.config.api_key_env}", value
        return "none", None

    def _redact(self, text: str) -> str:
        key = self._key_source()[1]
        if key and len(key) >= 4:  # a 1-3 char "key" would blank out ordinary text
            text = text.replace(key, "***")
        return text

    def _url(self) -> str | None:
        """``base_url`` without any ``user:password@`` part (it would be a credential too)."""
        url = self.config.base_url
        if url and "@" in url:
            parts = urlsplit(url)
            url = urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
        return url

    def _where(self) -> str:
        return f"openai backend (model {self.config.model!r} at {self._url() or 'default OpenAI URL'})"

    def _get_client(self) -> Any:
        if self._client is None:
            try:
                import openai
            except ImportError as err:
                raise BackendError("the openai backend needs the openai package: pip install 'openai>=1.30'") from err
            key = self._key_source()[1]
            if key is None:
                if self.config.base_url is None:
                    raise BackendError(
                        f"{self._where()}: no API key; set the environment variable {self.config.api_key_env}"
                    )
                key = _PLACEHOLDER_KEY
            # max_retries=0: retries and their backoff are ours (see module docstring).
            self._client = openai.OpenAI(api_key=key, base_url=self.config.base_url,
                                         timeout=self.config.timeout, max_retries=0)
        return self._client

    def close(self) -> None:
        """Close the HTTP connection pool (a later ``chat`` opens a new one)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def count_tokens(self, messages: list[Message]) -> int | None:
        """Unknown: the server's tokenizer is not available here."""
        return None

    def describe(self) -> dict[str, Any]:
        source, _ = self._key_source()
        return {
            "type": "openai",
            "model": self.config.model,
            "base_url": self._url(),
            "api_key_env": self.config.api_key_env,
            "api_key_source": source,  # "config", "env:NAME" or "none"; never the key
            "timeout": self.config.timeout,
            "deadline": self.config.deadline,
            "max_retries": self.config.max_retries,
            "grammar_mode": self.config.grammar_mode,
            "supports_grammar": self.supports_grammar,
            "context_size": self.context_size,
        }

    def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        grammar: str | None = None,
    ) -> ChatResult:
        self._get_client()  # a missing key or package fails here, before any time is counted
        import openai

        cfg = self.config
        kwargs: dict[str, Any] = {
            "model": cfg.model,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages],
            "temperature": temperature,
            cfg.max_tokens_param: max_tokens,
        }
        if seed is not None:
            kwargs["seed"] = seed
        if cfg.top_p is not None:
            kwargs["top_p"] = cfg.top_p
        extra_body = dict(cfg.extra_body)
        if grammar is not None and self.supports_grammar:
            extra_body["grammar"] = grammar
        if extra_body:
            kwargs["extra_body"] = extra_body

        start = time.perf_counter()
        end = time.monotonic() + cfg.deadline
        attempt = 0
        while True:
            attempt += 1
            limit = min(cfg.timeout, end - time.monotonic())
            try:
                data = self._attempt(kwargs, limit)
                break
            except (_Late, openai.APITimeoutError):
                if limit < cfg.timeout:  # the deadline cut this attempt short
                    raise self._deadline_error(attempt, "no answer yet") from None
                retry, problem = True, f"no answer within the timeout of {cfg.timeout:g} s"
            except openai.APIStatusError as err:
                status = err.status_code
                detail = self._detail(err)
                if status in (400, 413, 422) and (err.code in _CONTEXT_CODES or _CONTEXT_TEXT.search(detail)):
                    raise ContextOverflowError(
                        self._redact(f"{self._where()}: prompt does not fit the context: {detail}")
                    ) from None
                retry = status >= 500 or status in _RETRY_STATUS
                problem = f"HTTP {status} from server: {detail}"
            except openai.APIConnectionError as err:
                cause = err.__cause__ or err
                retry, problem = True, f"connection failed ({type(cause).__name__}: {cause})"
            except _BadAnswer as err:
                retry, problem = False, str(err)
            except Exception as err:  # noqa: BLE001 - any other failure of the client is still a BackendError
                retry, problem = False, f"{type(err).__name__}: {err}"
            if not retry or attempt > cfg.max_retries:
                tries = f" after {attempt} attempts" if attempt > 1 else ""
                # ``from None``: the chained openai exception holds the request, headers included.
                raise BackendError(self._redact(f"{self._where()}: {problem}{tries}")) from None
            delay = min(cfg.backoff * 2 ** (attempt - 1), cfg.backoff_max)
            if time.monotonic() + delay >= end:
                raise self._deadline_error(attempt, problem) from None
            time.sleep(delay)

        seconds = time.perf_counter() - start
        info: dict[str, Any] = {"attempts": attempt, **data.pop("info")}
        if grammar is not None and not self.supports_grammar:
            info["grammar_ignored"] = True
        return ChatResult(seconds=seconds, info=info, **data)

    def _deadline_error(self, attempts: int, problem: str) -> BackendError:
        return BackendError(self._redact(
            f"{self._where()}: no answer within the deadline of {self.config.deadline:g} s "
            f"({attempts} attempt{'s' if attempts > 1 else ''}; last: {problem})"))

    def _attempt(self, kwargs: dict[str, Any], limit: float) -> dict[str, Any]:
        """One request in a worker thread; the caller stops waiting after ``limit`` seconds.

        A blocking read cannot be interrupted, so a late attempt is left behind: its client is closed
        (the socket goes, and the worker's next read fails) and a later attempt opens a new one.
        """
        if limit <= 0:
            raise _Late
        client = self._get_client()
        until = time.monotonic() + limit
        outcome: dict[str, Any] = {}
        done = threading.Event()

        def work() -> None:
            try:
                outcome["data"] = self._request(client, kwargs, limit, until)
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                outcome["error"] = exc
            finally:
                done.set()

        threading.Thread(target=work, name="agentloss-openai-request", daemon=True).start()
        if not done.wait(limit):
            self._drop_client(client)
            raise _Late
        if "error" in outcome:
            raise outcome["error"]
        return outcome["data"]

    @staticmethod
    def _request(client: Any, kwargs: dict[str, Any], limit: float, until: float) -> dict[str, Any]:
        """Send, then read the body in chunks, stopping at ``until`` or past ``MAX_ANSWER_BYTES``
        (leaving the ``with`` closes the response and its connection)."""
        chunks: list[bytes] = []
        size = 0
        with client.chat.completions.with_streaming_response.create(**kwargs, timeout=limit) as response:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    raise _BadAnswer(f"the answer is larger than {MAX_ANSWER_BYTES // 2**20} MiB; not read further")
                if time.monotonic() > until:
                    raise _Late
                chunks.append(chunk)
        return _completion(b"".join(chunks))

    def _drop_client(self, client: Any) -> None:
        if self._client is client:
            self._client = None
        try:
            client.close()
        except Exception:  # noqa: BLE001, S110 - closing a client another thread still uses may complain
            pass

    @staticmethod
    def _detail(err: Any) -> str:
        """The server's own error text, short: OpenAI-style ``{"error": {"message": ...}}`` or raw."""
        body = err.body
        if isinstance(body, Mapping):
            inner = body.get("error", body)
            if isinstance(inner, Mapping) and inner.get("message"):
                return str(inner["message"])[:500]
            if isinstance(inner, str):
                return inner[:500]
        text = getattr(err, "message", None) or str(err)
        return str(text)[:500]


def _completion(body: bytes) -> dict[str, Any]:
    """The ChatResult fields of a chat completion's JSON body, or ``_BadAnswer`` saying what is wrong."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _BadAnswer(f"the answer is not valid JSON ({type(exc).__name__}: {str(exc)[:200]})") from None
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list):
        raise _BadAnswer(f"the answer is not a chat completion (no 'choices' list): {body[:200]!r}")
    if not choices:
        raise _BadAnswer("the answer has no choices")
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    content = message.get("content")
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        content = "".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    if content is not None and not isinstance(content, str):
        raise _BadAnswer(f"the answer's message content is not text: {str(content)[:200]}")
    usage = data.get("usage") if isinstance(data.get("usage"), dict) else {}

    def integer(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    def text(value: Any) -> str | None:
        return value if isinstance(value, str) else None

    prompt_tokens = integer(usage.get("prompt_tokens"))
    evaluated, cached = _prompt_cache_use(usage, data.get("timings"), prompt_tokens)
    return {"text": content or "", "finish_reason": text(choice.get("finish_reason")),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": integer(usage.get("completion_tokens")),
            "prompt_eval_tokens": evaluated, "cached_prompt_tokens": cached,
            "info": {"model": text(data.get("model")), "id": text(data.get("id"))}}


def _prompt_cache_use(usage: Mapping[str, Any], timings: Any, prompt_tokens: int | None) -> tuple[int | None, int | None]:
    """Prompt tokens the server evaluated and reused from its cache, where its answer says.

    llama.cpp's C++ server sends ``timings.prompt_n`` (evaluated) and ``timings.cache_n`` (reused);
    OpenAI, vLLM (``--enable-prompt-tokens-details``) and newer llama.cpp servers send
    ``usage.prompt_tokens_details.cached_tokens``. Servers that say neither (llama-cpp-python's
    own server, most others) give ``(None, None)``: unknown, not "nothing cached".

    Example:
        >>> _prompt_cache_use({"prompt_tokens_details": {"cached_tokens": 600}}, None, 700)
        (100, 600)
        >>> _prompt_cache_use({}, {"prompt_n": 90, "cache_n": 610}, 700)
        (90, 610)
        >>> _prompt_cache_use({}, None, 700)
        (None, None)
    """
    def count(value: Any) -> int | None:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None

    details = usage.get("prompt_tokens_details")
    cached = count(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    evaluated = None
    if isinstance(timings, Mapping):
        evaluated = count(timings.get("prompt_n"))
        if cached is None:
            cached = count(timings.get("cache_n"))
    if evaluated is None and cached is not None and prompt_tokens is not None:
        evaluated = max(0, prompt_tokens - cached)
    if cached is None and evaluated is not None and prompt_tokens is not None:
        cached = max(0, prompt_tokens - evaluated)
    return evaluated, cached
