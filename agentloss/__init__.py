"""agentloss: loss weights chosen at stage ends by an agent, from scores on a probe set.

The public API in a few lines::

    import agentloss as al
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "perceptual": 0.1, "gan": 0.01})
    sched = al.StageScheduler(loss_fn, agent=al.RandomAgent(seed=0),
                              objectives=[al.PyiqaObjective("niqe")],
                              model=model, probe=probe_images, stage_length=5000, run_dir="runs/exp1")
    # in the loop: loss = loss_fn(sr, gt); ...; sched.step()
"""

from .agents import (
    Agent,
    BaseAgent,
    Decision,
    DecisionContext,
    FixedAgent,
    GuidedAgent,
    LLMAgent,
    ObjectiveInfo,
    RandomAgent,
    create_agent,
)
from .backends import create_backend
from .constraints import WeightConstraints, WeightError, validate_weights
from .losses import LOSS_REGISTRY, create_loss, list_losses, register_loss
from .objectives import (
    CallableObjective,
    Objective,
    ObjectiveError,
    ObjectiveResult,
    PSNRObjective,
    PyiqaObjective,
    SSIMObjective,
)
from .proposal import Proposal, ProposalError, parse_proposal
from .records import RecordWriter, StageRecord, read_meta, read_records
from .scheduler import ProbeError, StageScheduler
from .weighted_loss import AgentWeightedLoss

__version__ = "0.1.0"

__all__ = [
    "Agent", "AgentWeightedLoss", "BaseAgent", "CallableObjective", "Decision", "DecisionContext", "FixedAgent", "GuidedAgent",
    "LLMAgent", "LOSS_REGISTRY", "Proposal", "ProposalError", "create_agent", "create_backend", "parse_proposal", "Objective", "ObjectiveError", "ObjectiveInfo", "ObjectiveResult", "PSNRObjective",
    "ProbeError", "PyiqaObjective", "RandomAgent", "RecordWriter", "SSIMObjective", "StageRecord", "StageScheduler",
    "WeightConstraints", "WeightError", "create_loss", "list_losses", "read_meta", "read_records", "register_loss",
    "validate_weights",
]
