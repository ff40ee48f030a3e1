"""``AgentLossCallback``: the stage scheduler as a PyTorch Lightning ``Callback``.

The LightningModule keeps its ``AgentWeightedLoss`` as an attribute and calls it in ``training_step``;
the callback does everything else. It builds a :class:`~agentloss.scheduler.StageScheduler` with the
LightningModule as the model when fitting starts and then:

* counts **optimizer steps** (``trainer.global_step``), not batches: with ``accumulate_grad_batches=k``
  a stage of ``N`` steps is ``N * k`` batches;
* scores S0 in ``on_train_start``, before the first optimizer step and outside any autocast (the probe
  is restored in float32 with autocast off, so ``precision="bf16-mixed"`` gives the scores of fp32);
* restores the probe with ``pl_module(lq)`` (or ``restore_fn(pl_module, lq)``), the probe moved to the
  module's device;
* keeps its state in Lightning's checkpoints (``state_dict``/``load_state_dict`` under a
  ``state_key`` naming the loss attribute and the objectives), so ``trainer.fit(..., ckpt_path=...)``
  resumes the run exactly; the weights are also in the module's ``state_dict`` and both must agree;
* logs ``agentloss/weight/<name>``, ``agentloss/<objective>``, ``agentloss/fallback`` and
  ``agentloss/agent_s`` to every Lightning logger at ``step=trainer.global_step`` after each stage;
* under DDP lets rank 0 score and decide and shares the decision (``agentloss.distributed``);
* with ``trial_batches`` runs the guided agent's snapshot trials (:class:`~agentloss.trials.SnapshotTrials`
  on the trainer's optimizer): each trial step is your ``training_step`` on a trial batch under the
  trainer's precision (autocast, ``GradScaler``), gradient clipping and one optimizer step, with
  ``self.log`` silenced; the global step, the logged metrics and the training state are left as they were.

Set-up errors (no ``AgentWeightedLoss`` on the module, a probe/reference mismatch, ``max_steps`` shorter
than a stage...) are raised by ``trainer.fit`` before any training step.

Example:
    >>> import tempfile, torch, lightning.pytorch as pl
    >>> import agentloss as al
    >>> from agentloss.integrations.lightning import AgentLossCallback
    >>> class Net(pl.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Conv2d(3, 3, 3, padding=1)
    ...         self.loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    ...     def forward(self, x):
    ...         return self.net(x)
    ...     def training_step(self, batch, batch_idx):
    ...         return self.loss_fn(self(batch[0]), batch[0])
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.01)
    >>> contrast = al.CallableObjective(lambda x: x.std().item(), name="contrast", higher_is_better=True)
    >>> cb = AgentLossCallback(al.RandomAgent(seed=0), [contrast], probe=torch.rand(2, 3, 8, 8), stage_length=2)
    >>> data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.rand(8, 3, 8, 8)), batch_size=2)
    >>> trainer = pl.Trainer(max_steps=4, callbacks=[cb], logger=False, enable_checkpointing=False,
    ...                      enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    ...                      default_root_dir=tempfile.mkdtemp())
    >>> trainer.fit(Net(), data)
    >>> [(r.stage, r.iteration) for r in cb.history]
    [(0, 0), (1, 2), (2, 4)]
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy
except ImportError as e:  # an optional dependency: say how to get it
    raise ImportError("agentloss.integrations.lightning needs PyTorch Lightning: pip install 'agentloss[lightning]' "
                      "(or pip install lightning)") from e

from ..agents.base import Agent
from ..objectives import Objective
from ..probe import ImageInput, as_image_list
from ..scheduler import StageScheduler, requested_trials
from ..trials import SnapshotTrials, check_trial_args, endless, optimizer_step
from ..types import StageRecord
from ..weighted_loss import AgentWeightedLoss

__all__ = ["AgentLossCallback", "find_weighted_loss", "lightning_trial_step", "stage_metrics"]

log = logging.getLogger("agentloss")

_STATE_VERSION = 1
# StageScheduler arguments the callback fills in itself.
_SET_BY_CALLBACK = {"loss_fn", "agent", "objectives", "model", "probe", "stage_length", "probe_references",
                    "total_stages", "run_dir", "restore_fn", "callbacks", "trials"}


def find_weighted_loss(module: nn.Module, loss_attr: str | None = None) -> tuple[str, AgentWeightedLoss]:
    """The ``(attribute name, loss)`` of the module's ``AgentWeightedLoss``: the named one, or the only one.

    Only direct attributes count (``self.loss_fn = AgentWeightedLoss(...)``): a loss nested in a
    sub-network is named with a dotted path (``loss_attr="criterion.pixel"``).

    Example:
        >>> import agentloss as al
        >>> m = torch.nn.Module(); m.crit = al.AgentWeightedLoss({"l1": 1.0})
        >>> find_weighted_loss(m)[0]
        'crit'
    """
    kind = type(module).__name__
    if loss_attr is not None:
        try:
            found = module.get_submodule(loss_attr)
        except AttributeError:
            found = getattr(module, loss_attr, None)
        if not isinstance(found, AgentWeightedLoss):
            got = "nothing" if found is None else f"a {type(found).__name__}"
            raise TypeError(f"loss_attr={loss_attr!r}: {kind}.{loss_attr} is {got}, not an AgentWeightedLoss; "
                            "assign the loss as a module attribute (self.loss_fn = al.AgentWeightedLoss({...}))")
        return loss_attr, found
    found_all = [(name, m) for name, m in module.named_children() if isinstance(m, AgentWeightedLoss)]
    if not found_all:
        raise TypeError(f"{kind} has no AgentWeightedLoss attribute: assign it in __init__ (or configure_model), "
                        "e.g. self.loss_fn = al.AgentWeightedLoss({'l1': 1.0, 'gan': 0.01}), and call it in "
                        "training_step, or name it with AgentLossCallback(..., loss_attr='...')")
    if len(found_all) > 1:
        raise TypeError(f"{kind} has several AgentWeightedLoss attributes {[n for n, _ in found_all]}: say which "
                        "one the agent sets with AgentLossCallback(..., loss_attr='...')")
    return found_all[0]


def stage_metrics(record: StageRecord) -> dict[str, float]:
    """A stage record as flat logger metrics: the weights in force from now on, scores, fallback, agent time.

    Example:
        >>> r = StageRecord(stage=1, iteration=4, weights={"l1": 1.0}, next_weights={"l1": 0.5},
        ...                 scores={"psnr": 30.0, "niqe": None}, timings={"agent_s": 0.25})
        >>> stage_metrics(r)
        {'agentloss/stage': 1.0, 'agentloss/weight/l1': 0.5, 'agentloss/psnr': 30.0, 'agentloss/fallback': 0.0, 'agentloss/agent_s': 0.25}
    """
    out = {"agentloss/stage": float(record.stage)}
    out.update({f"agentloss/weight/{k}": float(v) for k, v in (record.next_weights or record.weights).items()})
    # A score that could not be computed is left out rather than logged as NaN (loggers chart NaN as 0 or break).
    out.update({f"agentloss/{k}": float(v) for k, v in record.scores.items() if v is not None})
    out["agentloss/fallback"] = float(record.fallback is not None)
    out["agentloss/agent_s"] = float(record.timings.get("agent_s", 0.0))
    return out


def _silenced(*args: Any, **kwargs: Any) -> None:
    """``self.log`` during a trial step: a trial's losses are not the run's."""


def lightning_trial_step(trainer: pl.Trainer, module: pl.LightningModule) -> Callable[..., None]:
    """A :class:`~agentloss.trials.SnapshotTrials` ``step_fn`` that trains as the trainer's automatic
    optimization does: ``training_step`` under the precision plugin's context, backward (through the
    ``GradScaler`` of ``precision="16-mixed"``), the trainer's gradient clipping, one optimizer step."""

    def step(model: nn.Module, loss_fn: AgentWeightedLoss, optimizer: torch.optim.Optimizer, batch: Any) -> None:
        plugin = trainer.precision_plugin
        module.log, module.log_dict = _silenced, _silenced  # instance attributes shadow the methods
        try:
            with plugin.train_step_context():
                out = module.training_step(batch, 0)
        finally:
            del module.log, module.log_dict
        loss = out.get("loss") if isinstance(out, Mapping) else out
        if loss is None:  # training_step skipped the batch, as Lightning lets it
            return
        optimizer_step(optimizer, loss, getattr(plugin, "scaler", None), _clipper(trainer, optimizer))
    return step


def _clipper(trainer: pl.Trainer, optimizer: torch.optim.Optimizer) -> Callable[[], Any] | None:
    """The trainer's gradient clipping (``gradient_clip_val``/``gradient_clip_algorithm``), or None."""
    value = trainer.gradient_clip_val
    if not value:
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if trainer.gradient_clip_algorithm == "value":
        return lambda: torch.nn.utils.clip_grad_value_(params, float(value))
    return lambda: torch.nn.utils.clip_grad_norm_(params, float(value))


def _default_restore(module: nn.Module, lq: torch.Tensor) -> torch.Tensor:
    # Under precision="bf16-true"/"16-true" the module's parameters are half precision: feed it its dtype
    # (restore() turns the output back into float32).
    dtype = next((p.dtype for p in module.parameters() if p.is_floating_point()), lq.dtype)
    return module(lq.to(dtype))


class AgentLossCallback(Callback):
    """Runs a :class:`~agentloss.scheduler.StageScheduler` inside ``trainer.fit``; see the module docstring.

    Args:
        agent: proposes the weights (``al.RandomAgent(seed=0)``, ``al.GuidedAgent(backend="none")``...).
        objectives: what is scored on the probe at each stage end.
        probe: a few low-quality inputs (``NxCxHxW`` or a list of ``CxHxW``) in [0, 1]; moved to the
            module's device.
        stage_length: optimizer steps per stage (not batches).
        total_stages: if given, no decision is asked after the last stage.
        probe_references: ground truths, one per probe image, for full-reference objectives (PSNR).
        run_dir: where ``stages.jsonl`` and ``run.json`` go (``None``: in memory only).
        restore_fn: ``restore_fn(pl_module, lq) -> sr`` (default ``pl_module(lq)``).
        loss_attr: the attribute holding the ``AgentWeightedLoss`` (default: the module's only one).
        callbacks: functions called with each new ``StageRecord``.
        log_to_lightning: log each stage to ``trainer.loggers``.
        trial_batches: batches for the agent's snapshot trials, in the form ``training_step`` takes (a
            DataLoader of its own, not the training one; it is started again when it ends). Needed
            when the agent asks for trials (``GuidedAgent(trials=2)``); automatic optimization with
            one optimizer, one device.
        trial_steps: optimizer steps per trial, when the agent does not say (``trial_steps``).
        trial_state: further objects a training step changes and a trial must put back (each with
            ``state_dict``/``load_state_dict``); the module, its loss, the optimizer and the
            ``GradScaler`` are always snapshotted.
        **scheduler_options: further ``StageScheduler`` keywords (``clamp``; in versions that have them
            ``probe_model``, ``asynchronous``, ``apply_at``, ``decision_timeout``).

    ``scheduler`` is the scheduler once fitting started; ``history`` its records.
    """

    def __init__(
        self,
        agent: Agent,
        objectives: Sequence[Objective],
        probe: ImageInput,
        *,
        stage_length: int,
        total_stages: int | None = None,
        probe_references: ImageInput | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        restore_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        loss_attr: str | None = None,
        callbacks: Sequence[Callable[[StageRecord], Any]] = (),
        log_to_lightning: bool = True,
        trial_batches: Iterable[Any] | None = None,
        trial_steps: int = 20,
        trial_state: Sequence[Any] = (),
        **scheduler_options: Any,
    ):
        super().__init__()
        if not isinstance(stage_length, int) or isinstance(stage_length, bool) or stage_length < 1:
            raise ValueError(f"stage_length must be a positive integer (optimizer steps), got {stage_length!r}")
        if "trials" in scheduler_options:
            raise TypeError("AgentLossCallback builds the SnapshotTrials itself, on the trainer's optimizer: pass "
                            "trial_batches=<a DataLoader of its own> (and trial_steps=, trial_state=) instead of trials=")
        check_trial_args(requested_trials(agent), trial_batches, trial_steps, "AgentLossCallback",
                         "training_step takes them")
        taken = sorted(set(scheduler_options) & _SET_BY_CALLBACK)
        if taken:
            raise TypeError(f"AgentLossCallback sets {taken} itself (the model is the LightningModule, the loss its "
                            "AgentWeightedLoss attribute); leave them out")
        unknown = sorted(set(scheduler_options) - set(inspect.signature(StageScheduler).parameters))
        if unknown:
            raise TypeError(f"unknown StageScheduler option(s) {unknown}")
        self.agent = agent
        self.objectives = list(objectives)
        self.probe = probe
        self.probe_references = probe_references
        self.stage_length = stage_length
        self.total_stages = total_stages
        self.run_dir = run_dir
        self.restore_fn = restore_fn or _default_restore
        self.loss_attr = loss_attr
        self.callbacks = list(callbacks)
        self.log_to_lightning = log_to_lightning
        self.trial_batches = trial_batches
        self.trial_steps = trial_steps
        self.trial_state = list(trial_state)
        self.scheduler_options = scheduler_options
        self.scheduler: StageScheduler | None = None
        self._module: nn.Module | None = None  # the module the scheduler was built for
        self._pending: dict[str, Any] | None = None  # checkpoint state not applied yet
        self._restored_step: int | None = None  # the global_step a checkpoint's state had counted up to
        self._seen_step = 0  # the trainer.global_step counted so far
        self._trainer: pl.Trainer | None = None  # for the loggers and global_step when a stage ends

    # -- identity in checkpoints ---------------------------------------------------------------
    @property
    def state_key(self) -> str:
        # Stable across runs (no ids or paths), different for two callbacks on different losses or objectives.
        return self._generate_state_key(loss_attr=self.loss_attr, objectives=[o.name for o in self.objectives])

    @property
    def history(self) -> list[StageRecord]:
        """The stage records so far (empty before fitting starts)."""
        return self.scheduler.history if self.scheduler is not None else []

    # -- set-up: everything that can be wrong fails here, before any training step ------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # DDP wraps the whole LightningModule, the loss with it. A term that trains its own parameters inside
        # the loss forward (the GAN discriminator, with its own Adam) then meets DDP's gradient reducer: "unused
        # parameters", or with find_unused_parameters "gradient which is undefined, but still allreduced".
        # Leaving the loss's parameters and buffers out of DDP (before the strategy wraps the module, which
        # happens after this hook) makes them rank-local, as they are in a plain DDP loop where the loss is
        # not wrapped.
        if stage != "fit" or not isinstance(trainer.strategy, DDPStrategy):
            return
        try:
            _, loss_fn = find_weighted_loss(pl_module, self.loss_attr)
        except TypeError:
            return  # no loss yet (built in configure_model?): on_fit_start says what is wrong
        own = {id(t) for t in (*loss_fn.parameters(), *loss_fn.buffers())}
        names = [n for n, t in (*pl_module.named_parameters(), *pl_module.named_buffers()) if id(t) in own]
        if names:
            ignored = set(getattr(pl_module, "_ddp_params_and_buffers_to_ignore", ()))
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(pl_module, sorted(ignored | set(names)))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_fit_start, not setup: the module is on its device by now, a loss built in configure_model
        # exists, and the process group of a DDP strategy is up.
        self._check_max_steps(trainer)
        self._trainer = trainer
        if self.scheduler is None or self._module is not pl_module:  # a second fit() of one module continues
            self._build(pl_module)
        elif self.trial_batches is not None:  # a later fit() has a new trainer (optimizer, precision)
            self.scheduler.trials = self._make_trials(trainer, pl_module, self.scheduler.trials)
        if self._pending is not None:
            self._apply_state(self._pending)

    def _build(self, pl_module: pl.LightningModule) -> None:
        _, loss_fn = find_weighted_loss(pl_module, self.loss_attr)
        device = pl_module.device
        probe = [p.to(device) for p in as_image_list(self.probe, "probe")]
        refs = None
        if self.probe_references is not None:
            refs = [r.to(device) for r in as_image_list(self.probe_references, "probe_references")]
        trials = self._make_trials(self._trainer, pl_module) if self.trial_batches is not None else None
        self.scheduler = StageScheduler(
            loss_fn, self.agent, self.objectives, pl_module, probe, stage_length=self.stage_length,
            probe_references=refs, total_stages=self.total_stages, run_dir=self.run_dir,
            restore_fn=self.restore_fn, callbacks=[*self.callbacks, self._log_record], trials=trials,
            **self.scheduler_options)
        self._module = pl_module

    def _make_trials(self, trainer: pl.Trainer | None, pl_module: pl.LightningModule,
                     previous: SnapshotTrials | None = None) -> SnapshotTrials:
        """Snapshot trials on the trainer's optimizer, training as its automatic optimization does."""
        if trainer is None:
            raise RuntimeError("AgentLossCallback: trials are built when fitting starts")
        if not pl_module.automatic_optimization:
            raise ValueError("snapshot trials through AgentLossCallback need automatic optimization: with manual "
                             "optimization training_step steps the optimizers itself (and counts global steps)")
        if len(trainer.optimizers) != 1:
            raise ValueError(f"snapshot trials need exactly one optimizer; configure_optimizers gave "
                             f"{len(trainer.optimizers)}")
        if trainer.world_size > 1:
            raise ValueError("snapshot trials run on one process: under DDP rank 0 alone would train, and the ranks' "
                             "models would part; run the trials on one device (or without trials)")
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        batches = endless(self.trial_batches)  # type: ignore[arg-type]
        trials = SnapshotTrials(trainer.optimizers[0], batches, steps=self.trial_steps,
                                step_fn=lightning_trial_step(trainer, pl_module),
                                state=[*self.trial_state, *([scaler] if scaler is not None else [])])
        if previous is not None:
            trials.iterations = previous.iterations
        return trials

    def _check_max_steps(self, trainer: pl.Trainer) -> None:
        if trainer.fast_dev_run:
            return  # a smoke test of the wiring: a stage end is not expected
        if trainer.max_steps is not None and 0 < trainer.max_steps < self.stage_length:
            raise ValueError(f"Trainer(max_steps={trainer.max_steps}) ends before the first stage end "
                             f"(stage_length={self.stage_length} optimizer steps): the agent would never be asked; "
                             "raise max_steps or lower stage_length")

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sched = self._require_scheduler()
        if self._pending is not None:  # strategies that restore checkpoints after set-up (after on_fit_start)
            self._apply_state(self._pending)
        if not trainer.fast_dev_run:
            # Training data is set up by now: a run bounded by max_epochs is checked too.
            total = trainer.estimated_stepping_batches
            if 0 < total < self.stage_length and math.isfinite(total):
                raise ValueError(f"this fit takes {int(total)} optimizer steps (max_epochs={trainer.max_epochs}, "
                                 f"{trainer.num_training_batches} batches per epoch, accumulate_grad_batches="
                                 f"{trainer.accumulate_grad_batches}), fewer than one stage ({self.stage_length} "
                                 "steps): raise max_epochs or lower stage_length")
        # S0: before the first optimizer step and outside the precision plugin's autocast (the scheduler's
        # restore also switches autocast off). Nothing happens on a resumed run: S0 is in its history.
        sched.start()
        if self._restored_step is None:
            self._seen_step = trainer.global_step  # a new run, or a later fit() continuing this one
        else:
            # Steps a checkpoint holds but its callback state had not counted: it was written by a hook that
            # ran before this callback's at a stage-ending step. Counting them now runs that stage end.
            self._seen_step = self._restored_step
            self._restored_step = None
            self._count_steps(trainer.global_step)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        # global_step has already moved when the optimizer stepped in this batch; with gradient accumulation
        # it stays put for k-1 of every k batches, and moves twice with two optimizers (manual optimization).
        self._count_steps(trainer.global_step)

    def _count_steps(self, global_step: int) -> None:
        sched = self._require_scheduler()
        while self._seen_step < global_step:
            self._seen_step += 1
            sched.step()

    def _require_scheduler(self) -> StageScheduler:
        if self.scheduler is None:
            raise RuntimeError("AgentLossCallback: the scheduler is built in on_fit_start; pass the callback to "
                               "Trainer(callbacks=[...]) and call trainer.fit")
        return self.scheduler

    # -- the end of fit ---------------------------------------------------------------------------
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._close()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()  # a fit that failed (in set-up, too) leaves no S0 hook on the user's loss

    def _close(self) -> None:
        # StageScheduler.close() (where it exists) applies or drops an asynchronous answer still in flight
        # and removes the S0 hook; a later fit() of the same module still continues the run.
        close = getattr(self.scheduler, "close", None)
        if callable(close):
            close()

    # -- logging -----------------------------------------------------------------------------------
    def _log_record(self, record: StageRecord) -> None:
        trainer = self._trainer
        if not self.log_to_lightning or trainer is None:
            return
        metrics = stage_metrics(record)
        for logger in trainer.loggers:  # loggers write on global rank 0 only
            logger.log_metrics(metrics, step=trainer.global_step)

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        if self.scheduler is None or self._pending is not None:
            return dict(self._pending or {})  # a loaded state not applied yet is passed on as it is
        state = self.scheduler.state_dict()
        try:
            # JSON text: checkpoints then load with torch.load(weights_only=True), Lightning's default for local
            # files, whatever an agent keeps in its state (numpy RNG states are dicts of big ints).
            payload: Any = json.dumps(state)
        except (TypeError, ValueError):
            payload = state  # not JSON-able: kept as is (loading then needs weights_only=False)
        return {"version": _STATE_VERSION, "scheduler": payload, "global_step": self._seen_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported AgentLossCallback state version {state_dict.get('version')!r}")
        # Applied in on_fit_start, once the scheduler is built for this module (Lightning restores callbacks
        # before it), or in on_train_start under strategies that restore checkpoints after set-up.
        self._pending = dict(state_dict)

    def _apply_state(self, state: dict[str, Any]) -> None:
        sched = self._require_scheduler()
        payload = state["scheduler"]
        sched_state = json.loads(payload) if isinstance(payload, str) else payload
        # The module's state_dict (restored before the callbacks) holds the loss weights too: both were written
        # by the same checkpoint, so they must agree; a difference means a mixed-up checkpoint or an edit.
        module_weights = dict(sched.loss_fn.weights)
        sched.load_state_dict(sched_state)
        # (Equal to the initial weights: the module's checkpoint did not hold them, strict_loading=False.)
        if module_weights != dict(sched.loss_fn.weights) and module_weights != dict(sched.initial_weights):
            raise ValueError(f"the checkpoint's loss weights {module_weights} (module state_dict) differ from the "
                             f"agent's last decision {dict(sched.loss_fn.weights)} (AgentLossCallback state): "
                             "resume from a checkpoint written by one run, with its callback state")
        self._restored_step = int(state.get("global_step") or 0)
        self._pending = None
