"""What of a run config may be written, and which of its fields make a checkpoint another run's.

``redact_config`` hides secrets before a config reaches ``config.json`` or a checkpoint: values of
anything named like a key (``api_key``, ``hf_token``, ``Authorization``: ``agentloss.agents.asking.redact``)
and the ``user:password@`` part of URLs. ``config_differences`` compares two dumped configs on the
fields that change what a run computes: where it is written (``out``, ``name``), how fast and on what
(``threads``, ``device``), how it reports (``train.log_every``), what is scored after training
(``eval`` but ``eval.ema``), the other methods (``compare``) and a person answering at the terminal
(``feedback`` entries of type ``terminal``, added by ``--ask``) do not, and paths are compared
resolved (``./runs/x/`` is ``runs/x``).

>>> a = {"out": "runs/x", "threads": 2, "train": {"lr": 1e-4, "log_every": 10}, "data": {"sources": [{"path": "d/"}]}}
>>> b = {"out": "./elsewhere/", "threads": 1, "train": {"lr": 1e-4, "log_every": 5}, "data": {"sources": [{"path": "./d"}]}}
>>> config_differences(a, b), config_differences(a, {**a, "train": {"lr": 2e-4}})
([], ['train.lr'])
>>> redact_config({"agent": {"backend": {"api_key": "sk-1", "base_url": "https://u:pw@host/v1"}}})
{'agent': {'backend': {'api_key': '<redacted>', 'base_url': 'https://<redacted>@host/v1'}}}
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from typing import Any

from ..backends.base import looks_like_key

__all__ = ["config_differences", "looks_like_key", "redact_config", "run_fields"]

# Top-level fields and dotted sub-fields that change nothing a run computes (see the module docstring).
_NOT_THE_RUN = frozenset({"out", "name", "threads", "device", "compare", "niqe_params", "train.log_every"})
_SCORED_AFTER = "eval"  # only eval.ema changes the run: the checkpoint then holds the average
# Fields holding paths, compared resolved.
_PATHS = frozenset({"checkpoint", "path", "lq", "gt", "model_path"})
_URL_USER = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*://)[^/@\s]+@")




def redact_config(data: Any) -> Any:
    """``data`` with secret-named values and URL user-info replaced by ``<redacted>`` (a new object)."""
    from ..agents.asking import redact

    def urls(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            return {k: urls(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [urls(v) for v in obj]
        return _URL_USER.sub(r"\1<redacted>@", obj) if isinstance(obj, str) else obj

    return urls(redact(data))


def _resolved(path: Any) -> Any:
    return os.path.normpath(os.path.abspath(os.path.expanduser(path))) if isinstance(path, str) and path else path


def run_fields(config: str | Mapping[str, Any]) -> dict[str, Any]:
    """The fields of a dumped config (JSON text or mapping) that change the run, paths resolved."""
    data = json.loads(config) if isinstance(config, str) else dict(config)
    if not isinstance(data, Mapping):
        raise TypeError("a config is a mapping")

    def walk(obj: Any, where: str) -> Any:
        if isinstance(obj, Mapping):
            return {k: (_resolved(v) if k in _PATHS else walk(v, f"{where}.{k}" if where else str(k)))
                    for k, v in obj.items() if (f"{where}.{k}" if where else str(k)) not in _NOT_THE_RUN}
        if isinstance(obj, list):
            return [walk(v, where) for v in obj]
        return obj

    out = walk(data, "")
    if isinstance(out.get("feedback"), list):
        # A person at the terminal (--ask) joins or leaves a run without making it another run:
        # resuming with or without --ask continues the same checkpoint.
        out["feedback"] = [f for f in out["feedback"] if not (isinstance(f, Mapping) and f.get("type") == "terminal")]
    if isinstance(out.get(_SCORED_AFTER), Mapping):
        out[_SCORED_AFTER] = {"ema": out[_SCORED_AFTER].get("ema", 0.0)}
    return out


def _diff(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in dict.fromkeys([*a, *b]):
            _diff(a.get(k), b.get(k), f"{where}.{k}" if where else str(k), out)
    elif a != b:
        out.append(where or "(config)")


def config_differences(a: str | Mapping[str, Any], b: str | Mapping[str, Any]) -> list[str]:
    """Dotted names of the run-changing fields that differ between two dumped configs (``[]``: the same run).

    A config that cannot be read (not JSON, not a mapping) differs as a whole: ``["(config)"]``.
    """
    try:
        fa, fb = run_fields(a), run_fields(b)
    except (ValueError, TypeError):
        return [] if a == b else ["(config)"]
    out: list[str] = []
    _diff(fa, fb, "", out)
    return out
