"""An agent for tests of snapshot trials through framework callbacks (Lightning, the HF Trainer)."""

from __future__ import annotations

import agentloss as al


class KeepingTrialAgent(al.agents.base.BaseAgent):
    """Keeps the weights; with ``trials`` it first tries the current weights and a half-L1 weighting
    for 3 steps, and keeps what the trials measured in ``measured``."""

    name = "trial-probe"

    def __init__(self, trials: int):
        self.trials = trials
        self.measured: list[list[dict]] = []

    def propose(self, context):
        if self.trials and context.trial is not None:
            half = {**context.current_weights, "l1": context.current_weights["l1"] / 2}
            self.measured.append(context.trial([dict(context.current_weights), half], 3))
        return al.Decision(weights=dict(context.current_weights))
