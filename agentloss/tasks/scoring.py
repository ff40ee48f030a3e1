"""Final scoring: restore each evaluation set with a model and score it (``agentloss.datasets.evaluate``).

>>> import torch
>>> spec = EvalSpec([EvalSet("noise", [(torch.rand(3, 8, 8), torch.rand(3, 16, 16))])], metrics=("psnr",))
>>> sorted(score(torch.nn.Upsample(scale_factor=2), spec, scale=2).mean["noise"])
['psnr']
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..datasets import ImagePair, evaluate
from ..datasets.evaluation import EvaluationResult


@dataclass
class EvalSet:
    """One evaluation set: its pairs and how to score them (``evaluate`` keyword arguments)."""

    name: str
    pairs: list[ImagePair]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class EvalSpec:
    """The final scoring: sets, metrics, pyiqa options per metric; ``ema`` > 0 scores an EMA of the weights
    with that decay (0: the last iterate); ``quiet`` silences per-image warnings (failures are recorded)."""

    sets: list[EvalSet] = field(default_factory=list)
    metrics: Sequence[str] = ("psnr", "ssim")
    metric_kwargs: dict[str, dict[str, Any]] = field(default_factory=dict)
    ema: float = 0.0
    tile: int | None = None
    pad_multiple: int = 1
    quiet: bool = False
    skipped: list[str] = field(default_factory=list)  # configured sets that were not found, with why


@dataclass
class Scores:
    """One model's final scores: each set's :class:`EvaluationResult` and the time they took."""

    sets: dict[str, EvaluationResult]
    seconds: float

    @property
    def mean(self) -> dict[str, dict[str, float]]:
        return {name: res.mean for name, res in self.sets.items()}

    @property
    def per_image(self) -> dict[str, dict[str, dict[str, float]]]:
        return {name: res.per_image for name, res in self.sets.items()}


def score(model: nn.Module, spec: EvalSpec, scale: int, device: torch.device | str = "cpu") -> Scores:
    """Restore and score each evaluation set with ``agentloss.datasets.evaluate``."""
    t = time.perf_counter()
    out = {}
    with warnings.catch_warnings():
        if spec.quiet:
            warnings.simplefilter("ignore")  # a failed metric is in each result's settings["failures"]
        for s in spec.sets:
            out[s.name] = evaluate(model, s.pairs, scale, metrics=spec.metrics, tile=spec.tile,
                                   pad_multiple=spec.pad_multiple, metric_kwargs=spec.metric_kwargs, device=device,
                                   **s.kwargs)
    return Scores(out, time.perf_counter() - t)
