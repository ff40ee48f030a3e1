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
    FixedAgent,
    GuidedAgent,
    LLMAgent,
    RandomAgent,
    create_agent,
)
from .backbones import list_backbones
from .backends import BackendError, create_backend
from .constraints import WeightConstraints, WeightError
from .losses import create_loss, list_losses, register_loss
from .feedback import CallableFeedback, HighFrequencyCritic, TerminalFeedback, TextFeedback, VisionFeedback
from .loggers import TensorBoardLogger, WandbLogger
from .objectives import (
    CallableObjective,
    Objective,
    ObjectiveError,
    ObjectiveResult,
    PSNRObjective,
    PyiqaObjective,
    SSIMObjective,
)
from .plotting import plot_run
from .proposal import ProposalError, parse_proposal
from .records import read_meta, read_records
from .scheduler import ProbeError, StageScheduler
from .tasks import ConfigError, compare
from .trials import SnapshotTrials
from .types import Decision, DecisionContext, DecisionRecord, ObjectiveInfo, StageRecord
from .weighted_loss import AgentWeightedLoss

__version__ = "0.1.0"

__all__ = [
    "Agent", "AgentWeightedLoss", "BackendError", "BaseAgent", "CallableFeedback", "CallableObjective", "HighFrequencyCritic", "ConfigError", "Decision",
    "DecisionContext", "DecisionRecord", "FixedAgent", "GuidedAgent", "LLMAgent", "Objective", "ObjectiveError",
    "ObjectiveInfo", "ObjectiveResult", "PSNRObjective", "ProbeError", "ProposalError", "PyiqaObjective",
    "RandomAgent", "SSIMObjective", "SnapshotTrials", "StageRecord", "StageScheduler", "TensorBoardLogger", "TerminalFeedback", "TextFeedback", "VisionFeedback",
    "WandbLogger", "WeightConstraints",
    "WeightError", "compare", "create_agent", "create_backend", "create_loss", "list_backbones", "list_losses", "parse_proposal",
    "plot_run", "read_meta", "read_records", "register_loss",
]
