"""A causal language model run in-process through Hugging Face ``transformers``.

``torch`` and ``transformers`` are imported on first use; the tokenizer loads on the first
``count_tokens``/``chat``, the weights on the first ``chat``. No grammar support: the agent
validates and repairs the answer instead.

Every call evaluates its whole prompt: ``generate`` starts from an empty KV cache, so nothing is
reused from the previous call (``ChatResult.prompt_eval_tokens`` is the prompt's length and
``cached_prompt_tokens`` 0).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any, Literal

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

# Used only when a tokenizer has no chat template (base models): plain role-prefixed turns.
_FALLBACK_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


class TransformersConfig(BackendConfig):
    """Config of ``type: transformers``. Only ``model`` (a local directory or hub id) is required.

    Example:
        >>> TransformersConfig(model="HuggingFaceTB/SmolLM2-135M-Instruct").dtype
        'auto'
    """

    model: str
    device: str = "auto"  # "auto": cuda if available else cpu; or any torch device string
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16/fp16 on cuda, fp32 on cpu
    top_p: float = Field(1.0, gt=0, le=1)  # used when temperature > 0
    repetition_penalty: float = Field(1.0, gt=0)
    context_size: int | None = Field(None, gt=0)  # overrides the model config's max_position_embeddings
    trust_remote_code: bool = False
    local_files_only: bool = False  # True: never try the hub (fails fast offline)


@register_backend("transformers")
class TransformersBackend:
    """Chat with a ``transformers`` causal LM using its tokenizer's chat template.

    Example:
        >>> backend = TransformersBackend(model="HuggingFaceTB/SmolLM2-135M-Instruct", device="cpu")
        >>> backend.supports_grammar
        False
        >>> backend.chat([{"role": "user", "content": "Hi"}], max_tokens=8, seed=0).text  # doctest: +SKIP
        'Hello! How can I help you today?'
    """

    config_model = TransformersConfig
    supports_grammar: bool = False

    def __init__(self, config: TransformersConfig | Mapping[str, Any] | None = None, **fields: Any) -> None:
        if config is not None and fields:
            config = {**(config.model_dump() if isinstance(config, TransformersConfig) else dict(config)), **fields}
        self.config: TransformersConfig = validate_config(
            TransformersConfig, config if config is not None else fields, backend="transformers"
        )
        self._tokenizer: Any = None
        self._model: Any = None
        self._hf_config: Any = None
        self._hf_config_error: BackendError | None = None
        self._device: Any = None
        self._dtype: Any = None
        self._template_fallback = False

    # -- lazy loading ------------------------------------------------------------------------
    def _fail(self, what: str, err: BaseException) -> BackendError:
        return BackendError(f"transformers backend: could not load {what} of {self.config.model!r}: "
                            f"{type(err).__name__}: {err}")

    def _load_tokenizer(self) -> Any:
        if self._tokenizer is None:
            try:
                from transformers import AutoTokenizer

                tok = AutoTokenizer.from_pretrained(self.config.model, trust_remote_code=self.config.trust_remote_code,
                                                    local_files_only=self.config.local_files_only)
            except ImportError as err:
                raise BackendError("the transformers backend needs: pip install 'transformers>=4.45' torch") from err
            except Exception as err:
                raise self._fail("the tokenizer", err) from err
            if not getattr(tok, "chat_template", None):
                self._template_fallback = True
            self._tokenizer = tok
        return self._tokenizer

    def _load_hf_config(self) -> Any:
        if self._hf_config is None:
            if self._hf_config_error is not None:  # don't retry (offline hub lookups are slow)
                raise self._hf_config_error
            try:
                from transformers import AutoConfig

                self._hf_config = AutoConfig.from_pretrained(
                    self.config.model, trust_remote_code=self.config.trust_remote_code,
                    local_files_only=self.config.local_files_only)
            except Exception as err:
                self._hf_config_error = self._fail("the config", err)
                raise self._hf_config_error from err
        return self._hf_config

    def _load_model(self) -> Any:
        if self._model is None:
            tok = self._load_tokenizer()
            try:
                import torch
                from transformers import AutoModelForCausalLM
            except ImportError as err:
                raise BackendError("the transformers backend needs: pip install 'transformers>=4.45' torch") from err
            device = self.config.device
            if device == "auto":
                device = "cuda" if torch.cuda.is_available() else "cpu"
            self._device = torch.device(device)
            if self.config.dtype == "auto":
                if self._device.type == "cuda":
                    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
                else:
                    dtype = torch.float32  # half precision on CPU is slow or unsupported for some ops
            else:
                dtype = getattr(torch, self.config.dtype)
            self._dtype = dtype
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    self.config.model, dtype=dtype, trust_remote_code=self.config.trust_remote_code,
                    local_files_only=self.config.local_files_only)
                model.to(self._device)
            except Exception as err:
                raise self._fail("the model", err) from err
            model.eval()
            self._model = model
            self._hf_config = model.config
            if tok.pad_token_id is None:
                # generate() wants a pad id; eos is the usual stand-in for single-sequence batches.
                tok.pad_token = tok.eos_token
        return self._model

    # -- protocol ----------------------------------------------------------------------------
    @property
    def context_size(self) -> int | None:
        """Config override, else the model config's maximum positions (loads only the config)."""
        if self.config.context_size is not None:
            return self.config.context_size
        try:
            cfg = self._load_hf_config()
        except BackendError:
            return None  # unknown; chat() will raise the loading error
        text_cfg = cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg
        for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(text_cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def _prompt_ids(self, messages: list[Message]) -> list[int]:
        tok = self._load_tokenizer()
        conversation = [{"role": m["role"], "content": m["content"]} for m in messages]
        try:
            text = tok.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True,
                chat_template=_FALLBACK_TEMPLATE if self._template_fallback else None)
        except Exception as err:
            raise BackendError(f"transformers backend: the chat template of {self.config.model!r} "
                               f"failed: {type(err).__name__}: {err}") from err
        # The template already writes any BOS/special tokens as text; don't add them twice.
        return list(tok(text, add_special_tokens=False)["input_ids"])

    def count_tokens(self, messages: list[Message]) -> int | None:
        """Exact: the length of the templated prompt (with the assistant generation prompt)."""
        return len(self._prompt_ids(messages))

    def describe(self) -> dict[str, Any]:
        return {
            "type": "transformers",
            "model": self.config.model,
            "device": str(self._device) if self._device is not None else self.config.device,
            "dtype": str(self._dtype).removeprefix("torch.") if self._dtype is not None else self.config.dtype,
            "loaded": self._model is not None,
            "top_p": self.config.top_p,
            "repetition_penalty": self.config.repetition_penalty,
            "chat_template": "fallback" if self._template_fallback else "tokenizer",
            "supports_grammar": False,
        }

    def close(self) -> None:
        """Drop the weights (and free GPU memory); the next ``chat`` loads them again."""
        self._model = None
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def chat(
        self,
        messages: list[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        seed: int | None = None,
        grammar: str | None = None,
    ) -> ChatResult:
        import torch
        from transformers import GenerationConfig

        model = self._load_model()
        tok = self._tokenizer
        ids = self._prompt_ids(messages)
        n_prompt = len(ids)
        limit = self.context_size
        info: dict[str, Any] = {"device": str(self._device), "dtype": str(self._dtype).removeprefix("torch.")}
        if limit is not None:
            if n_prompt >= limit:
                raise ContextOverflowError(f"transformers backend ({self.config.model!r}): prompt of {n_prompt} "
                                           f"tokens does not fit the context of {limit} tokens")
            if n_prompt + max_tokens > limit:
                info["max_tokens_clipped_to"] = limit - n_prompt
                max_tokens = limit - n_prompt
        if grammar is not None:
            info["grammar_ignored"] = True

        sample = temperature > 0
        eos = model.generation_config.eos_token_id
        if eos is None:
            eos = tok.eos_token_id
        # A fresh GenerationConfig: the checkpoint's defaults (e.g. sampling on) must not leak in.
        gen = GenerationConfig(
            max_new_tokens=max(1, max_tokens),
            do_sample=sample,
            temperature=temperature if sample else None,
            top_p=self.config.top_p if sample else None,
            top_k=None,
            repetition_penalty=self.config.repetition_penalty,
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id,
        )
        input_ids = torch.tensor([ids], dtype=torch.long, device=self._device)
        attention_mask = torch.ones_like(input_ids)
        devices = [self._device] if self._device.type == "cuda" else []
        start = time.perf_counter()
        try:
            # fork_rng: a seeded call must not reset the caller's (training) RNG streams.
            with torch.random.fork_rng(devices=devices, enabled=seed is not None), torch.inference_mode():
                if seed is not None:
                    torch.manual_seed(seed)
                out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=gen)
        except torch.cuda.OutOfMemoryError as err:
            raise BackendError(f"transformers backend ({self.config.model!r}): out of GPU memory") from err
        except Exception as err:
            raise BackendError(f"transformers backend ({self.config.model!r}): generation failed: "
                               f"{type(err).__name__}: {err}") from err
        seconds = time.perf_counter() - start
        new = out[0, n_prompt:].tolist()
        eos_ids = {eos} if isinstance(eos, int) else set(eos or ())
        stopped = bool(new) and new[-1] in eos_ids
        finish = "stop" if stopped or len(new) < max_tokens else "length"
        text = tok.decode(new, skip_special_tokens=True)
        return ChatResult(text=text, finish_reason=finish, prompt_tokens=n_prompt, completion_tokens=len(new),
                          seconds=seconds, info=info, prompt_eval_tokens=n_prompt, cached_prompt_tokens=0)
