"""Stage loggers: each stage end's decision in TensorBoard or Weights & Biases, beside your own metrics.

Pass them as scheduler callbacks (``StageScheduler(..., callbacks=[TensorBoardLogger("runs/exp1")])``).
For every stage record they write, at the optimizer step where the new weights take effect
(``record.applied_iteration`` when the scheduler sets it, else ``record.iteration``):

- ``agentloss/weight/<name>``: each loss weight in force from that step on (``record.next_weights``);
- ``agentloss/score/<name>``: each objective's probe score (left out when it could not be scored);
- ``agentloss/fallback``: 1 when the previous weights were kept (``record.fallback``), else 0;
- ``agentloss/agent_s``: the agent's decision time (trials included), when an agent was asked;
- ``agentloss/stage_end_s``: the whole stage end (restoring, scoring, deciding);
- ``agentloss/warnings``: how many warnings the record has; ``agentloss/stage``: the stage number.

A logger that fails (a full disk, a finished W&B run) never stops training: the scheduler catches
callback errors and logs a warning. tensorboard and wandb are imported only when a logger is made.

Example:
    >>> import tempfile
    >>> from agentloss.types import StageRecord
    >>> rec = StageRecord(stage=1, iteration=100, weights={"l1": 1.0}, next_weights={"l1": 0.5},
    ...                   scores={"niqe": 4.2, "psnr": None}, timings={"restore_s": 0.5, "score_s": 0.25})
    >>> stage_metrics(rec)
    {'agentloss/stage': 1.0, 'agentloss/weight/l1': 0.5, 'agentloss/score/niqe': 4.2, 'agentloss/fallback': 0.0, 'agentloss/stage_end_s': 0.75, 'agentloss/warnings': 0.0}
    >>> logger = TensorBoardLogger(tempfile.mkdtemp())
    >>> logger(rec); logger.close()
"""

from __future__ import annotations

import math
import os
from typing import Any

from .types import StageRecord

__all__ = ["TensorBoardLogger", "WandbLogger", "applied_step", "stage_metrics"]

PREFIX = "agentloss"


def applied_step(record: StageRecord) -> int:
    """The optimizer step from which ``record.next_weights`` are in force."""
    return int(getattr(record, "applied_iteration", None) or record.iteration)


def stage_end_seconds(timings: dict[str, float]) -> float:
    """Time spent at the stage end: everything timed but the training (``train_s``) and the
    per-objective parts (``score_<name>_s``, already inside ``score_s``)."""
    return float(sum(v for k, v in timings.items()
                     if k != "train_s" and not (k.startswith("score_") and k != "score_s")))


def stage_metrics(record: StageRecord) -> dict[str, float]:
    """The scalars the loggers write for one stage record (see the module docstring)."""
    out: dict[str, float] = {f"{PREFIX}/stage": float(record.stage)}
    weights = record.next_weights if record.next_weights is not None else record.weights
    out.update({f"{PREFIX}/weight/{k}": float(v) for k, v in weights.items()})
    out.update({f"{PREFIX}/score/{k}": float(v) for k, v in record.scores.items()
                if v is not None and math.isfinite(v)})
    out[f"{PREFIX}/fallback"] = 1.0 if record.fallback else 0.0
    if "agent_s" in record.timings:
        out[f"{PREFIX}/agent_s"] = float(record.timings["agent_s"])
    if any(k != "train_s" for k in record.timings):
        out[f"{PREFIX}/stage_end_s"] = stage_end_seconds(record.timings)
    out[f"{PREFIX}/warnings"] = float(len(record.warnings))
    return out


class TensorBoardLogger:
    """Writes each stage record's scalars with ``add_scalar`` (see the module docstring).

    Args:
        log_dir_or_writer: a directory for a new ``torch.utils.tensorboard.SummaryWriter`` (closed by
            :meth:`close`), or a writer of yours (anything with ``add_scalar``; yours to close), e.g.
            Lightning's ``trainer.logger.experiment``, so the decisions sit beside your training curves.
    """

    def __init__(self, log_dir_or_writer: str | os.PathLike[str] | Any):
        if callable(getattr(log_dir_or_writer, "add_scalar", None)):
            self.writer = log_dir_or_writer
            self._owned = False
        else:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:  # torch's module needs the tensorboard package
                raise ImportError("TensorBoardLogger needs tensorboard: pip install tensorboard") from e
            self.writer = SummaryWriter(log_dir=os.fspath(log_dir_or_writer))
            self._owned = True

    def __call__(self, record: StageRecord) -> None:
        step = applied_step(record)
        for tag, value in stage_metrics(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        if callable(getattr(self.writer, "flush", None)):
            self.writer.flush()  # stage ends are rare: make each one visible at once

    def close(self) -> None:
        """Close the writer this logger made (a writer you passed stays open)."""
        if self._owned:
            self.writer.close()


class WandbLogger:
    """Logs each stage record's scalars to a W&B run (see the module docstring).

    W&B drops anything logged at a step lower than the run's current one, and merges what is logged
    at one step into one row (a second record there would overwrite the first). So each record is
    logged at its applied step, moved up to the run's current step and above the last step this
    logger used when needed; the true step is in ``agentloss/iteration``, and ``agentloss/*`` charts
    are drawn against it.

    Args:
        run: the run to log to (Lightning: ``trainer.logger.experiment``); default: ``wandb.run``,
            which must exist when the logger is made (call ``wandb.init`` first).
    """

    def __init__(self, run: Any | None = None):
        if run is None:
            try:
                import wandb
            except ImportError as e:
                raise ImportError("WandbLogger needs wandb: pip install wandb") from e
            run = wandb.run
            if run is None:
                raise RuntimeError("WandbLogger: no active W&B run; call wandb.init(...) before making the logger, "
                                   "or pass run=")
        self.run = run
        self.last_step: int | None = None
        self._defined = False

    def _current_step(self) -> int | None:
        try:
            return int(self.run.step)
        except Exception:  # noqa: BLE001 - a shared-mode run has no step; the logger's own last step still holds
            return None

    def __call__(self, record: StageRecord) -> None:
        if not self._defined:
            # Charts of agentloss/* use the true optimizer step, whatever W&B step the values land on.
            self.run.define_metric(f"{PREFIX}/iteration")
            self.run.define_metric(f"{PREFIX}/*", step_metric=f"{PREFIX}/iteration")
            self._defined = True
        true_step = applied_step(record)
        step = max(true_step, self._current_step() or 0)
        if self.last_step is not None and step <= self.last_step:
            step = self.last_step + 1  # never below W&B's step, never onto this logger's previous row
        self.run.log({**stage_metrics(record), f"{PREFIX}/iteration": true_step}, step=step)
        self.last_step = step
