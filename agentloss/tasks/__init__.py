"""Bundled tasks: run configs, their builders, the comparison harness (``harness``) and its reports."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .config import TASK_DEFAULTS, ConfigError, RunConfig, load_config

if TYPE_CHECKING:
    from .harness import Comparison

__all__ = ["TASK_DEFAULTS", "ConfigError", "RunConfig", "compare", "load_config"]


def compare(config: RunConfig | Mapping[str, Any] | str | os.PathLike[str], methods: Sequence[str] | None = None,
            seeds: Sequence[int] | None = None, *, overrides: Sequence[str] = (), progress: bool = True,
            resume: bool = True) -> Comparison:
    """Train each method (``fixed``, ``random``, ``agent``) from the same start on each seed and score them.

    ``config`` is a run config, a dict or a YAML path (``overrides`` as ``agentloss compare --set``).
    What ``agentloss compare`` does: writes ``table.md``, ``results.json`` and the figures into the
    config's ``out`` directory and returns the ``Comparison`` (runs per method and seed, evaluations).

    Example:
        >>> import tempfile, agentloss as al
        >>> comp = al.compare({"task": "cisr", "backbone": {"name": "small_sr", "scale": 2},
        ...     "losses": {"l1": 1.0, "fft": 0.1}, "objectives": [{"name": "psnr"}],
        ...     "train": {"stage_length": 2, "total_iters": 4}, "data": {"patch": 32, "batch": 2},
        ...     "probe": {"count": 1, "size": 64}, "eval": {"size": 64, "max_images": 1},
        ...     "out": tempfile.mkdtemp()}, methods=["fixed", "random"], seeds=[0, 1], progress=False)
        >>> sorted(comp.results), len(comp.runs)
        (['fixed', 'random'], 4)
    """
    from .runner import compare as run_comparison  # lazily: the harness imports the datasets and plots

    cfg = config if isinstance(config, RunConfig) else load_config(config, list(overrides))
    return run_comparison(cfg, progress=progress, resume=resume, methods=methods, seeds=seeds)
