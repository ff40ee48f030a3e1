"""The paper's two baselines: keep the initial weights (Fixed) or change them at random (Random)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..constraints import WeightError, validate_weights
from .base import BaseAgent, Decision, DecisionContext


class FixedAgent(BaseAgent):
    """Keeps the current weights at every stage: plain training with a fixed weighted loss.

    With ``weights``, answers those at every stage end instead (a hand-picked constant weighting,
    e.g. to measure what a weighting does from a given start); the constraints still clip them.

    Example:
        >>> from agentloss.agents.base import DecisionContext
        >>> from agentloss.constraints import WeightConstraints
        >>> ctx = DecisionContext(["l1"], {"l1": 1.0}, {"l1": 1.0}, [], [], WeightConstraints(), 1)
        >>> FixedAgent().propose(ctx).weights, FixedAgent({"l1": 2.0}).propose(ctx).weights
        ({'l1': 1.0}, {'l1': 2.0})
    """

    name = "fixed"
    thread_safe = True

    def __init__(self, weights: dict[str, float] | None = None):
        self.weights = None if weights is None else {str(k): float(v) for k, v in weights.items()}

    def propose(self, context: DecisionContext) -> Decision:
        if self.weights is None:
            return Decision(weights=dict(context.current_weights), thoughts="fixed weights")
        return Decision(weights=dict(self.weights), thoughts="fixed weights (given)")

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "weights": self.weights}

    def check(self, loss_names: list[str], objective_names: list[str]) -> None:
        if self.weights is not None:
            try:
                validate_weights(self.weights, loss_names)
            except WeightError as e:
                raise ValueError(f"the fixed agent's weights: {e}") from None


class RandomAgent(BaseAgent):
    """Multiplies each non-zero weight by a random factor, log-uniform in ``[1/max_factor, max_factor]``.

    Seeded: two agents with the same seed propose the same sequence, and the RNG state is part of
    ``state_dict()`` so a resumed run proposes what the uninterrupted one would. Zero weights stay
    zero (zero means the user switched that term off). The scheduler then clips the result into
    the configured bounds.

    Example:
        >>> from agentloss.agents.base import DecisionContext
        >>> from agentloss.constraints import WeightConstraints
        >>> ctx = DecisionContext(["l1", "gan"], {"l1": 1.0, "gan": 0.01}, {}, [], [], WeightConstraints(), 1)
        >>> a, b = RandomAgent(seed=0), RandomAgent(seed=0)
        >>> a.propose(ctx).weights == b.propose(ctx).weights
        True
    """

    name = "random"
    thread_safe = True

    def __init__(self, seed: int | None = 0, max_factor: float = 3.0):
        if not (max_factor >= 1.0 and math.isfinite(max_factor)):
            raise ValueError(f"max_factor must be a finite number >= 1, got {max_factor}")
        self.seed = seed
        self.max_factor = float(max_factor)
        self._rng = np.random.default_rng(seed)

    def propose(self, context: DecisionContext) -> Decision:
        span = math.log(self.max_factor)
        weights = {}
        for name in context.loss_names:
            w = context.current_weights[name]
            factor = math.exp(self._rng.uniform(-span, span))
            weights[name] = w * factor if w > 0 else 0.0
        return Decision(weights=weights, thoughts="random log-uniform perturbation")

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "max_factor": self.max_factor, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state.get("seed", self.seed)
        self.max_factor = float(state.get("max_factor", self.max_factor))
        self._rng.bit_generator.state = state["rng"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "seed": self.seed, "max_factor": self.max_factor}
