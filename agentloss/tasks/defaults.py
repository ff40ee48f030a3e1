"""The paper's settings per task (stage length, iterations, losses, backbone, data, benchmarks), one table,
and how a user's config is laid over them.

A run config names a task; every field it leaves out comes from here (``agentloss.tasks.config``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

__all__ = ["TASK_DEFAULTS", "apply_overrides", "deep_merge"]

# One table of defaults (like pyiqa's DEFAULT_CONFIGS): the paper's settings per task.
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "cisr": {  # classical (bicubic) SR: SwinIR, HAT-S, MambaIRv2-light
        "backbone": {"name": "swinir", "scale": 4},
        "losses": {"l1": 1.0, "perceptual": 0.1, "gan": 0.01},
        "objectives": [{"name": "niqe"}],
        "agent": {"type": "llm", "needs": "Lower NIQE (more natural-looking images)."},
        "train": {"stage_length": 5000, "total_iters": 100_000, "lr": 1e-4},
        "data": {"patch": 192, "batch": 16},  # 48 px LR at x4, as in SwinIR's training
        "eval": {"datasets": ["Set5", "Set14", "B100", "Urban100", "Manga109"]},
    },
    "risr": {  # real-world SR: SwinIR with the second-order degradation made on the fly
        "backbone": {"name": "swinir_real", "scale": 4},
        "losses": {"l1": 1.0, "perceptual": 0.1, "gan": 0.01},
        "objectives": [{"name": "niqe"}],
        "agent": {"type": "llm", "needs": "Lower NIQE (more natural-looking images)."},
        "train": {"stage_length": 5000, "total_iters": 200_000, "lr": 1e-4},
        "data": {"patch": 256, "batch": 16},
        "eval": {"datasets": ["RealSRSet", "OST300"]},
    },
    "air": {  # all-in-one restoration on PromptIR: denoising (sigma 15/25/50), deraining, dehazing
        "backbone": {"name": "promptir", "scale": 1},
        "losses": {"l1": 1.0, "perceptual": 0.1, "lpips": 1.0},
        "objectives": [{"name": "niqe"}],
        "agent": {"type": "llm", "needs": "Lower NIQE (more natural-looking images)."},
        "train": {"stage_length": 2500, "total_iters": 100_000, "lr": 1e-4},
        "data": {"patch": 128, "batch": 8},
        "eval": {"datasets": ["CBSD68", "Rain100L", "SOTS"]},
    },
}


# Mappings that a config replaces as a whole: a user's losses are the repository, not additions to it.
# (An agent section replaces the default agent when it names a type; otherwise it adds options to it.)
_REPLACED = frozenset({"losses", "loss_options", "constraints"})


def deep_merge(base: Mapping[str, Any], over: Mapping[str, Any], top: bool = True) -> dict[str, Any]:
    """``over`` laid over ``base`` (mappings merged, except those in ``_REPLACED``), as a new dict."""
    out = copy.deepcopy(dict(base))
    for k, v in over.items():
        replaced = top and (k in _REPLACED or (k == "agent" and isinstance(v, Mapping) and "type" in v))
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) and not replaced:
            out[k] = deep_merge(out[k], v, top=False)
        else:
            out[k] = copy.deepcopy(v)
    return out


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` strings (values parsed as YAML: numbers, lists, mappings); ``ValueError``
    names an override that is not one."""
    import yaml

    out = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r}: expected key.path=value")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not valid YAML ({str(e).splitlines()[0]})") from None
    return out
