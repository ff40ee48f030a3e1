"""Effects of weight changes on the objectives, estimated from a run's history (a functional core).

A small model cannot infer from a table of numbers how each objective responds to each weight;
this module does that arithmetic so the agent can hand it over as facts. For each objective it
fits, over the stages so far,

    score change during stage k  =  drift  +  sum_i  slope_i * (log w_i(k) - log w_i(k-1))

by ridge-regularised least squares (slopes shrink to 0 when the history says little), and reports
each slope with its standard error: how much the objective moved per e-fold change of a weight,
beyond the drift that training brings at constant weights. Stages whose score is missing (a failed
objective) are skipped.

Example:
    >>> from agentloss.records import StageRecord
    >>> w = [0.01, 0.01, 0.02, 0.02, 0.04, 0.02]
    >>> niqe = [6.0, 5.95, 5.75, 5.70, 5.50, 5.60]  # drift -0.05; doubling gan: -0.15 more, halving: +0.15
    >>> hist = [StageRecord(stage=k, iteration=k, weights={"l1": 1.0, "gan": g}, scores={"niqe": s})
    ...         for k, (g, s) in enumerate(zip(w, niqe))]
    >>> eff = estimate_effects(hist, "niqe", ["gan"], ridge=0.0)
    >>> round(eff.drift, 3), round(eff.slopes["gan"], 3), eff.n
    (-0.05, -0.216, 5)
    >>> round(eff.predict({"gan": math.log(2)}), 3)  # next stage with gan doubled
    -0.2
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise

import numpy as np

from ..records import StageRecord


@dataclass
class Effects:
    """Drift and per-weight slopes of one objective (units: score per stage / per e-fold of the weight)."""

    objective: str
    drift: float
    drift_se: float
    slopes: dict[str, float]
    slope_se: dict[str, float]
    n: int  # stage changes used
    residual_sd: float
    cov: np.ndarray | None = field(default=None, repr=False)
    names: list[str] = field(default_factory=list)

    def predict(self, log_change: Mapping[str, float]) -> float:
        """Expected score change over the next stage for the given log-weight changes."""
        return self.drift + sum(self.slopes.get(k, 0.0) * v for k, v in log_change.items())

    def predict_se(self, log_change: Mapping[str, float]) -> float:
        """Standard error of :meth:`predict` (parameter uncertainty plus one stage of noise)."""
        if self.cov is None:
            return self.residual_sd
        x = np.array([1.0] + [float(log_change.get(k, 0.0)) for k in self.names])
        return float(math.sqrt(max(0.0, float(x @ self.cov @ x)) + self.residual_sd ** 2))


def _log(w: float, floor: float = 1e-12) -> float:
    return math.log(w) if w > 0 else math.log(floor)  # "off" sits at the floor; small positive weights keep theirs


def stage_changes(history: Sequence[StageRecord], objective: str, names: Sequence[str],
                  floor: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[d log w_i ...]`` and score changes for stages k >= 1 with both scores known.

    A weight of 0 counts as ``floor``: with the constraints' ``step_floor`` there, a term switched on from
    0 is one ordinary step (0 -> floor x step), not an infinite change of its log.
    """
    xs, ys = [], []
    for prev, cur in pairwise(history):
        a, b = prev.scores.get(objective), cur.scores.get(objective)
        if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
            continue
        # cur.weights trained stage k; prev.weights trained stage k-1 (for S0: the initial weights).
        xs.append([_log(cur.weights.get(n, 0.0), floor) - _log(prev.weights.get(n, 0.0), floor) for n in names])
        ys.append(b - a)
    return np.array(xs, dtype=float).reshape(len(xs), len(names)), np.array(ys, dtype=float)


def estimate_effects(history: Sequence[StageRecord], objective: str, names: Sequence[str], ridge: float = 0.5,
                     noise_floor: float = 0.0, weight_floor: float = 1e-12) -> Effects:
    """Fit drift and slopes for ``objective`` over ``history`` (see the module docstring).

    ``ridge`` penalises the slopes (not the drift) so that a weight never moved has slope 0 with a
    wide error instead of an arbitrary value; ``noise_floor`` is the smallest residual standard
    deviation assumed (stage-to-stage noise the history may be too short to show); ``weight_floor``:
    see :func:`stage_changes`.
    """
    names = list(names)
    X, y = stage_changes(history, objective, names, weight_floor)
    n, p = len(y), len(names)
    if n == 0:
        inf = float("inf")
        return Effects(objective, 0.0, inf, {k: 0.0 for k in names}, {k: inf for k in names}, 0,
                       max(noise_floor, 0.0), None, names)
    A = np.hstack([np.ones((n, 1)), X])
    penalty = np.diag([1e-9] + [ridge] * p)
    gram = A.T @ A + penalty
    beta = np.linalg.solve(gram, A.T @ y)
    resid = y - A @ beta
    dof = max(1, n - 1 - p)
    sd = float(math.sqrt(float(resid @ resid) / dof)) if n > 1 + p else float(np.std(y)) if n > 1 else 0.0
    sd = max(sd, noise_floor)
    cov = np.linalg.inv(gram) * sd ** 2
    se = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    return Effects(objective, float(beta[0]), float(se[0]), {k: float(b) for k, b in zip(names, beta[1:])},
                   {k: float(s) for k, s in zip(names, se[1:])}, n, sd, cov, names)
