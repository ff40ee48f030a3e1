"""LLM backends behind one protocol, chosen by config.

=============  ==========================================  =========  ==========================
``type``       runs                                        grammar    needs
=============  ==========================================  =========  ==========================
``llama_cpp``  a GGUF file in-process (default: SmolLM2)   yes        llama-cpp-python
``openai``     any OpenAI-compatible HTTP endpoint         optional   openai
``transformers`` a Hugging Face causal LM in-process       no         transformers, torch
=============  ==========================================  =========  ==========================

Importing this package is cheap: ``openai``, ``transformers`` and ``llama_cpp`` are imported by a
backend on its first use.

Example:
    >>> from agentloss.backends import create_backend
    >>> backend = create_backend({"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"})
    >>> backend.describe()["type"], backend.supports_grammar
    ('openai', False)
    >>> create_backend({"type": "gpt"})
    Traceback (most recent call last):
    ...
    ValueError: unknown backend type 'gpt'; allowed: llama_cpp, openai, transformers
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .base import (
    BACKEND_REGISTRY,
    BackendConfig,
    BackendError,
    ChatBackend,
    ChatResult,
    ContextOverflowError,
    Message,
    register_backend,
    validate_config,
)
from .defaults import GGUF_ENV_VAR, default_backend_config, find_default_gguf
from .llama_cpp_backend import LlamaCppBackend, LlamaCppConfig
from .openai_backend import OpenAIBackend, OpenAIConfig
from .transformers_backend import TransformersBackend, TransformersConfig

__all__ = [
    "BACKEND_REGISTRY",
    "GGUF_ENV_VAR",
    "BackendConfig",
    "BackendError",
    "ChatBackend",
    "ChatResult",
    "ContextOverflowError",
    "LlamaCppBackend",
    "LlamaCppConfig",
    "Message",
    "OpenAIBackend",
    "OpenAIConfig",
    "TransformersBackend",
    "TransformersConfig",
    "create_backend",
    "default_backend_config",
    "find_default_gguf",
    "load_backend_config",
    "register_backend",
    "validate_config",
]


def load_backend_config(config: Mapping[str, Any] | str | os.PathLike[str] | None) -> dict[str, Any]:
    """The backend config as a plain dict: ``config`` itself, a YAML file's content, or the default.

    A YAML file may hold the backend mapping at top level or under a ``backend:`` key (so a
    whole run config can be passed). ``None`` gives ``default_backend_config()``.
    """
    if config is None:
        return default_backend_config()
    if isinstance(config, (str, os.PathLike)):
        import yaml

        path = Path(config)
        if not path.is_file():
            raise ValueError(f"backend config file not found: {path}")
        with path.open(encoding="utf-8") as f:
            data = yaml.safe_load(f)
        if isinstance(data, Mapping) and "type" not in data and isinstance(data.get("backend"), Mapping):
            data = data["backend"]
        if not isinstance(data, Mapping):
            raise ValueError(f"backend config file {path} must hold a mapping with a 'type' field")  # noqa: TRY004
        return dict(data)
    if not isinstance(config, Mapping):
        raise TypeError(f"backend config must be a dict, a YAML file path or None, not {type(config).__name__}")
    return dict(config)


def create_backend(config: Mapping[str, Any] | str | os.PathLike[str] | None = None) -> ChatBackend:
    """Build the backend a config names by its ``type`` (see the table in the module docstring).

    ``config`` is a dict, a path to a YAML file, or ``None`` for the embedded default model
    (SmolLM2-135M-Instruct through llama.cpp). Unknown ``type``, unknown or missing fields raise
    ``ValueError`` naming the field and what is allowed; a default model that is not installed
    raises ``BackendError`` saying what to install.
    """
    data = load_backend_config(config)
    kind = data.get("type")
    if kind is None:
        raise ValueError(f"backend config needs a 'type' field; allowed: {', '.join(sorted(BACKEND_REGISTRY))}")
    factory = BACKEND_REGISTRY.get(str(kind))
    if factory is None:
        raise ValueError(f"unknown backend type {kind!r}; allowed: {', '.join(sorted(BACKEND_REGISTRY))}")
    fields = {k: v for k, v in data.items() if k != "type"}
    model = getattr(factory, "config_model", None)
    if isinstance(model, type) and issubclass(model, BackendConfig):
        return factory(validate_config(model, fields, backend=str(kind)))
    return factory(**fields)
