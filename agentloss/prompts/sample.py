"""A small complete decision context (two stages, a fallback, feedback): what templates are checked on.

Every prompt template is rendered once with it when an agent is built, so a broken or unsafe
template fails before training rather than at the first stage end; doctests use it too.
"""

from __future__ import annotations

from ..constraints import WeightConstraints
from ..types import DecisionContext, ObjectiveInfo, StageRecord

__all__ = ["sample_context"]


def sample_context() -> DecisionContext:
    """A small complete context (two stages, a fallback, feedback) for template checks and doctests."""
    w = {"l1": 1.0, "gan": 0.01}
    history = [
        StageRecord(0, 0, dict(w), {"niqe": 6.0, "psnr": 25.0}),
        StageRecord(1, 100, dict(w), {"niqe": 5.8, "psnr": 24.9}, fallback="sample fallback"),
        StageRecord(2, 200, dict(w), {"niqe": 5.7, "psnr": None}),
    ]
    return DecisionContext(
        loss_names=["l1", "gan"], current_weights=dict(w), initial_weights=dict(w), history=history,
        objectives=[ObjectiveInfo("niqe", False, "naturalness", (0.0, 100.0)),
                    ObjectiveInfo("psnr", True, "fidelity in dB", None, True)],
        constraints=WeightConstraints(max_step=2.0, per_loss={"gan": (0.0, 1.0)}), stage=2,
        total_stages=5, stage_length=100, feedback=["sample feedback"],
    )
