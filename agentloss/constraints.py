"""Validation and limits for loss weights: the rules every weight answer passes through in code.

``validate_weights`` rejects what can never be used (unknown or missing names, NaN, negative,
all zero). ``WeightConstraints.apply`` then clips a valid proposal into the configured bounds and
per-stage move limits, and says what it changed, so that whatever an agent answers, the weights
that train the model stay within what the user allowed.

It is the one place where limits are computed: the scheduler applies them to every proposal, the
prompt states ``allowed_range`` for each term and the guided agent asks ``within_bounds`` and
``effective_step``; nobody re-derives them.

Example:
    >>> c = WeightConstraints(max_weight=2.0, max_step=2.0)
    >>> result = c.apply({"l1": 5.0, "gan": 0.0}, previous={"l1": 1.0, "gan": 0.01})
    >>> result.weights, result.kept_previous
    ({'l1': 2.0, 'gan': 0.005}, False)
    >>> c.allowed_range("gan", 0.01)
    (0.005, 0.02)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple


class WeightError(ValueError):
    """A set of loss weights that cannot be used."""


def validate_weights(
    weights: Mapping[str, float], names: Sequence[str], *, require_all: bool = True
) -> dict[str, float]:
    """Return ``weights`` as plain floats in ``names`` order, or raise ``WeightError``."""
    unknown = [k for k in weights if k not in names]
    if unknown:
        raise WeightError(f"unknown loss name(s) {unknown}; known: {list(names)}")
    missing = [n for n in names if n not in weights]
    if require_all and missing:
        raise WeightError(f"missing weight(s) for {missing}; every one of {list(names)} is needed")
    out: dict[str, float] = {}
    for name in names:
        if name not in weights:
            continue
        raw = weights[name]
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise WeightError(f"weight for {name!r} is not a number: {raw!r}") from None
        if not math.isfinite(value):
            raise WeightError(f"weight for {name!r} is not finite: {value}")
        if value < 0:
            raise WeightError(f"weight for {name!r} is negative: {value}")
        out[name] = value
    if require_all and not any(v > 0 for v in out.values()):
        raise WeightError("all weights are zero: the loss would train nothing")
    return out


class ConstrainedWeights(NamedTuple):
    """What the constraints made of a proposal: the weights to use, one note per clipped weight, and
    whether the previous weights were kept instead (``reason`` then says why)."""

    weights: dict[str, float]
    clipped: list[str]
    kept_previous: bool = False
    reason: str | None = None


@dataclass
class WeightConstraints:
    """Bounds on each weight and on how far one stage may move it.

    ``min_weight``/``max_weight`` bound every weight; ``per_loss`` overrides them by name with a
    ``(low, high)`` pair. ``max_step`` is a multiplicative limit per stage: a weight ``w`` may move
    to anything in ``[w / max_step, w * max_step]``. The default, ×4, keeps one bad or injected
    answer from moving a weight ×10,000 in one stage while leaving room for any sensible move;
    ``max_step=None`` is the paper's unlimited behaviour. Since a zero weight cannot grow by a
    factor, ``step_floor`` is the value a zero weight may grow from, and a weight at or below it may
    drop to zero.
    """

    min_weight: float = 0.0
    max_weight: float = 100.0
    per_loss: dict[str, tuple[float, float]] = field(default_factory=dict)
    max_step: float | None = 4.0
    step_floor: float = 1e-3

    def __post_init__(self) -> None:
        for name in ("min_weight", "max_weight", "max_step", "step_floor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not ((value is None and name == "max_step") or isinstance(value, (int, float))):
                raise ValueError(f"{name} must be a number, got {value!r}")
        if not (0 <= self.min_weight <= self.max_weight) or not math.isfinite(self.max_weight):
            raise ValueError(
                f"bounds must satisfy 0 <= min_weight <= max_weight < inf, "
                f"got min_weight={self.min_weight}, max_weight={self.max_weight}"
            )
        for name, pair in self.per_loss.items():
            lo, hi = pair
            if not (0 <= lo <= hi) or not math.isfinite(hi):
                raise ValueError(f"per_loss bounds for {name!r} must satisfy 0 <= low <= high < inf, got {pair}")
            self.per_loss[name] = (float(lo), float(hi))
        if self.max_step is not None and not (self.max_step >= 1.0 and math.isfinite(self.max_step)):
            raise ValueError(f"max_step must be a finite factor >= 1 or None, got {self.max_step}")
        if not self.step_floor > 0:
            raise ValueError(f"step_floor must be > 0, got {self.step_floor}")

    def bounds(self, name: str) -> tuple[float, float]:
        return self.per_loss.get(name, (self.min_weight, self.max_weight))

    def check_bounds(self, weights: Mapping[str, float]) -> None:
        """Raise ``WeightError`` when a weight lies outside its bounds (used for weights a person sets)."""
        for name, value in weights.items():
            lo, hi = self.bounds(name)
            if not lo <= value <= hi:
                raise WeightError(f"weight for {name!r} = {value} is outside its bounds [{lo}, {hi}]")

    def step_range(self, previous: float) -> tuple[float, float]:
        if self.max_step is None:
            return 0.0, math.inf
        base = max(previous, self.step_floor)
        low = 0.0 if previous <= self.step_floor else previous / self.max_step
        return low, base * self.max_step

    def allowed_range(self, name: str, previous: float | None) -> tuple[float, float]:
        """The range a weight may take next stage: its bounds intersected with the move limit from
        ``previous`` (where they do not meet, the bound nearest to ``previous``)."""
        lo, hi = self.bounds(name)
        if previous is None:
            return lo, hi
        s_lo, s_hi = self.step_range(previous)
        a, b = max(lo, s_lo), min(hi, s_hi)
        if a > b:  # the bounds and the step range do not meet: move as far as allowed
            a = b = min(max(previous, lo), hi)
        return a, b

    def within_bounds(self, weights: Mapping[str, float]) -> bool:
        """Whether every weight lies inside its bounds (the move limit is not checked)."""
        return all(self.bounds(k)[0] <= w <= self.bounds(k)[1] for k, w in weights.items())

    def effective_step(self, step: float) -> float:
        """A multiplicative move of ``step`` as far as the move limit lets one stage go."""
        return step if self.max_step is None else min(step, float(self.max_step))

    def apply(self, proposed: Mapping[str, float], previous: Mapping[str, float] | None = None) -> ConstrainedWeights:
        """Clip ``proposed`` into the bounds and the move limits from ``previous``.

        Returns the clipped weights and one note per change, for the record. If clipping would
        leave every weight at zero, the previous weights are kept (``kept_previous``, with the reason).
        """
        out: dict[str, float] = {}
        notes: list[str] = []
        for name, value in proposed.items():
            lo, hi = self.allowed_range(name, None if previous is None else previous.get(name))
            clipped = min(max(value, lo), hi)
            if clipped != value:
                notes.append(f"{name}: {value:g} clipped to {clipped:g} (allowed [{lo:g}, {hi:g}])")
            out[name] = clipped
        if not any(v > 0 for v in out.values()):
            reason = "clipping left every weight at zero; previous weights kept"
            return ConstrainedWeights(dict(previous or proposed), [*notes, reason], True, reason)
        return ConstrainedWeights(out, notes)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["per_loss"] = {k: list(v) for k, v in self.per_loss.items()}
        return d
