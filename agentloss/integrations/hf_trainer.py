"""Hugging Face ``Trainer`` integration: an agent sets the ``AgentWeightedLoss`` weights at stage ends.

Two pieces, usable together or apart:

* :class:`AgentLossTrainerCallback` runs a :class:`~agentloss.StageScheduler` inside ``Trainer.train()``:
  it scores S0 in ``on_train_begin``, calls ``sched.step()`` once per optimizer step (``on_step_end``, which
  the Trainer fires once per ``gradient_accumulation_steps`` batches), saves the scheduler's state in every
  checkpoint's ``trainer_state.json`` and restores it on ``trainer.train(resume_from_checkpoint=...)``, and
  logs each stage's weights and scores through ``Trainer.log`` (so every ``report_to`` backend sees them);
  with ``trial_batches`` it runs the guided agent's snapshot trials, each trial step being the Trainer's
  ``compute_loss`` under its autocast, backward (through its ``GradScaler``), ``max_grad_norm`` clipping
  and one step of its optimizer, all put back afterwards.
* :class:`AgentLossTrainer` (or :class:`AgentLossTrainerMixin` for your own ``Trainer`` subclass) computes
  the loss as ``loss_fn(model(inputs["lq"]), inputs["gt"])`` for a plain ``nn.Module`` restoration model.

Example:
    >>> import contextlib, io, tempfile, torch
    >>> from transformers import TrainingArguments
    >>> import agentloss as al
    >>> from agentloss.integrations.hf_trainer import AgentLossTrainer, AgentLossTrainerCallback
    >>> data = [{"lq": torch.rand(3, 16, 16), "gt": torch.rand(3, 16, 16)} for _ in range(8)]
    >>> contrast = al.CallableObjective(lambda x: x.std().item(), name="contrast", higher_is_better=True)
    >>> callback = AgentLossTrainerCallback(agent=al.RandomAgent(seed=0), objectives=[contrast],
    ...                                     probe=torch.rand(2, 3, 16, 16), stage_length=2)
    >>> args = TrainingArguments(tempfile.mkdtemp(), max_steps=4, per_device_train_batch_size=2, use_cpu=True,
    ...                          report_to="none", save_strategy="no", remove_unused_columns=False)
    >>> trainer = AgentLossTrainer(model=torch.nn.Conv2d(3, 3, 3, padding=1), args=args, train_dataset=data,
    ...                            loss_fn=al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0}), callbacks=[callback])
    >>> with contextlib.redirect_stdout(io.StringIO()):  # the Trainer prints its logs
    ...     _ = trainer.train()
    >>> [(r.stage, r.iteration) for r in callback.scheduler.history]
    [(0, 0), (1, 2), (2, 4)]
    >>> sorted(k for k in trainer.state.log_history[1] if k.startswith("agentloss/weight/"))
    ['agentloss/weight/l1', 'agentloss/weight/mse']
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.data import default_collate
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments
from transformers.trainer_callback import ExportableState
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..agents.base import Agent
from ..distributed import unwrap
from ..objectives import Objective
from ..probe import ImageInput, ProbeError, as_image_list
from ..scheduler import StageScheduler, requested_trials
from ..trials import SnapshotTrials, check_trial_args, endless, optimizer_step
from ..types import StageRecord
from ..weighted_loss import AgentWeightedLoss

__all__ = ["AgentLossTrainer", "AgentLossTrainerCallback", "AgentLossTrainerMixin", "hf_trial_step"]

log = logging.getLogger("agentloss")

STATE_VERSION = 1
_CONFIG_NAMES = ("agent", "objectives", "probe", "stage_length")


def _trainable_loss_state(loss_fn: AgentWeightedLoss) -> dict[str, Any]:
    """The part of the loss's state that training changes: terms with trainable parameters (a GAN's
    discriminator, with its optimizer as extra state). Frozen networks (VGG, LPIPS) are left out:
    they never change, and saving them would add hundreds of MB to every checkpoint."""
    trainable = [n for n, t in loss_fn.terms.items() if any(p.requires_grad for p in t.parameters())]
    prefixes = tuple(f"terms.{n}." for n in trainable)
    return {k: v for k, v in loss_fn.state_dict().items() if k.startswith(prefixes)}


def hf_trial_step(trainer: Trainer) -> Callable[..., None]:
    """A :class:`~agentloss.trials.SnapshotTrials` ``step_fn`` that trains as ``trainer`` does for one batch:
    ``compute_loss`` under its autocast, backward (through the accelerator's ``GradScaler`` under fp16),
    ``max_grad_norm`` clipping, one step of the (unwrapped) optimizer. No loss scaling for accumulation:
    a trial step is one batch and one optimizer step."""

    def step(model: nn.Module, loss_fn: AgentWeightedLoss, optimizer: torch.optim.Optimizer, batch: Any) -> None:
        model.train()
        inputs = trainer._prepare_inputs(batch)  # the Trainer's own device placement (it has no public name)
        with trainer.compute_loss_context_manager():
            loss = trainer.compute_loss(model, inputs)
        norm = trainer.args.max_grad_norm
        clip = (lambda: torch.nn.utils.clip_grad_norm_(model.parameters(), float(norm))) if norm and norm > 0 else None
        optimizer_step(optimizer, loss, getattr(trainer.accelerator, "scaler", None), clip)
    return step


def _rebuild(base: type, attributes: dict[str, Any]) -> AgentLossTrainerCallback:
    obj = base.__new__(base)
    obj.__dict__.update(attributes)
    return obj


class AgentLossTrainerCallback(TrainerCallback, ExportableState):
    """Runs a :class:`~agentloss.StageScheduler` inside ``transformers.Trainer``; see the module docstring.

    Give either a ready ``scheduler`` or what to build one from (``agent``, ``objectives``, ``probe``,
    ``stage_length`` and the optional rest): the callback then builds it in ``on_train_begin`` with the
    Trainer's model and the ``AgentWeightedLoss`` (``loss_fn=``, or the ``loss_fn`` of an
    :class:`AgentLossTrainer`), ``total_stages = max_steps // stage_length`` and ``run_dir =
    <output_dir>/<name>``. Building it there is the recommended form: a resumed run rebuilds it from the
    same arguments, and a Trainer with ``model_init`` (a new model per ``train()``) gets the right model.

    Args:
        scheduler: a scheduler you built (its ``model`` must be the Trainer's model).
        agent, objectives, probe, stage_length, probe_references, total_stages, restore_fn, clamp,
            callbacks: as for :class:`~agentloss.StageScheduler`.
        loss_fn: the ``AgentWeightedLoss`` the Trainer trains with (found on an ``AgentLossTrainer`` if omitted).
        run_dir: where ``stages.jsonl`` and ``run.json`` go; ``"auto"`` is ``<output_dir>/<name>``, ``None`` none.
        log_stages: put each stage's weights, scores, fallback and timings into the Trainer's logs.
        name: prefix of the log keys (``agentloss/weight/l1``) and the key of this callback's state in a
            checkpoint (give two callbacks on one Trainer different names).
        trial_batches: batches for the agent's snapshot trials, as the Trainer's collator makes them (a
            DataLoader of its own; started again when it ends). Needed when the agent asks for trials
            (``GuidedAgent(trials=2)``); the callback must know the Trainer (``AgentLossTrainer``, or
            :meth:`attach`); one process.
        trial_steps: optimizer steps per trial, when the agent does not say (``trial_steps``).
        trial_state: further objects a training step changes and a trial must put back (an EMA); the
            model, the loss, the optimizer and the ``GradScaler`` are always snapshotted.

    Every check that needs the Trainer (``max_steps`` shorter than a stage, no ``AgentWeightedLoss``, a
    checkpoint without this callback's state) raises in ``on_train_begin``, before any training step.
    """

    scheduler: StageScheduler | None
    trainer: Trainer | None

    def __new__(cls, *args: Any, **kwargs: Any) -> AgentLossTrainerCallback:  # noqa: PYI034 (a subclass of cls)
        # With TrainingArguments(restore_callback_states_from_checkpoint=True) the Trainer replaces each
        # stateful callback by ``type(cb)(**saved_args)``: JSON arguments cannot carry an agent, a model or
        # a probe. So each instance gets a class of its own (same name, a subclass) whose constructor
        # returns that very instance; the callback then restores its state itself, as without the option.
        bound = cls.__dict__.get("_bound_instance")
        if bound is not None:
            return bound
        own = type(cls.__name__, (cls,), {"__module__": cls.__module__, "__qualname__": cls.__qualname__,
                                          "__doc__": cls.__doc__})
        self = super().__new__(own)
        own._bound_instance = self
        return self

    def __reduce_ex__(self, protocol: Any) -> Any:  # a per-instance class is not importable: pickle as the public one
        base = next(c for c in type(self).__mro__ if "_bound_instance" not in c.__dict__)
        return (_rebuild, (base, self.__dict__))

    def __init__(
        self,
        scheduler: StageScheduler | None = None,
        *,
        agent: Agent | None = None,
        objectives: Sequence[Objective] | None = None,
        probe: ImageInput | None = None,
        stage_length: int | None = None,
        loss_fn: AgentWeightedLoss | None = None,
        probe_references: ImageInput | None = None,
        total_stages: int | None = None,
        run_dir: str | os.PathLike[str] | None = "auto",
        restore_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        clamp: bool = True,
        callbacks: Sequence[Callable[[StageRecord], Any]] = (),
        log_stages: bool = True,
        name: str = "agentloss",
        asynchronous: bool = False,
        apply_at: str = "next_stage",
        trial_batches: Iterable[Any] | None = None,
        trial_steps: int = 20,
        trial_state: Sequence[Any] = (),
    ):
        if self.__dict__.get("_configured"):
            return  # the Trainer rebuilding this callback from a checkpoint (see __new__): it is already set up
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"name must be a non-empty string without '/', got {name!r}")
        given = {k: v for k, v in {"agent": agent, "objectives": objectives, "probe": probe,
                                   "stage_length": stage_length, "loss_fn": loss_fn,
                                   "probe_references": probe_references, "total_stages": total_stages,
                                   "restore_fn": restore_fn, "callbacks": callbacks or None}.items() if v is not None}
        if scheduler is not None:
            if not isinstance(scheduler, StageScheduler):
                raise TypeError(f"scheduler must be a StageScheduler, got {type(scheduler).__name__}")
            if trial_batches is not None:
                raise ValueError("trial_batches builds the trials of a scheduler the callback builds; a ready "
                                 "scheduler= brings its own (StageScheduler(..., trials=SnapshotTrials(...)))")
            if given:
                raise ValueError(f"pass either scheduler= or what to build one from, not both (got {sorted(given)} "
                                 "too); the scheduler already has them")
            self._config: dict[str, Any] | None = None
        else:
            missing = [k for k in _CONFIG_NAMES if k not in given]
            if missing:
                raise TypeError(f"AgentLossTrainerCallback needs scheduler= or all of {list(_CONFIG_NAMES)}; "
                                f"missing {missing}")
            if not isinstance(stage_length, int) or isinstance(stage_length, bool) or stage_length < 1:
                raise ValueError(f"stage_length must be a positive integer, got {stage_length!r}")
            if loss_fn is not None and not isinstance(loss_fn, AgentWeightedLoss):
                raise TypeError(f"loss_fn must be an AgentWeightedLoss, got {type(loss_fn).__name__}")
            objectives = list(objectives or [])
            if not objectives:
                raise ValueError("at least one objective is needed: the agent decides from their scores")
            # The checks the scheduler would make, made now: a bad probe fails here, not after the Trainer's set-up.
            n = len(as_image_list(probe, "probe"))  # type: ignore[arg-type]
            m = None if probe_references is None else len(as_image_list(probe_references, "probe_references"))
            if m is not None and m != n:
                raise ProbeError(f"{n} probe images but {m} probe_references (one ground truth per probe image)")
            needing = [o.name for o in objectives if o.needs_reference]
            if needing and probe_references is None:
                raise ProbeError(f"objectives {needing} need references: pass probe_references= (the ground "
                                 "truths of the probe images)")
            if apply_at not in ("asap", "next_stage"):
                raise ValueError(f"apply_at must be 'asap' or 'next_stage', got {apply_at!r}")
            check_trial_args(requested_trials(agent), trial_batches, trial_steps,  # type: ignore[arg-type]
                             "AgentLossTrainerCallback", "the Trainer's collator makes them")
            self._config = {**given, "objectives": objectives, "clamp": clamp, "callbacks": list(callbacks),
                            "asynchronous": bool(asynchronous), "apply_at": apply_at,
                            "trial_batches": trial_batches, "trial_steps": trial_steps,
                            "trial_state": list(trial_state)}
        self.scheduler = scheduler
        self.run_dir = run_dir
        self.log_stages = log_stages
        self.name = name
        self.trainer = None
        self._resume_dir: str | None = None  # set by AgentLossTrainer.train(resume_from_checkpoint=...)
        self._warned_unattached = False
        self._logged = 0  # records of the scheduler's history already logged
        self._configured = True

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> AgentLossTrainerCallback:
        raise TypeError("an AgentLossTrainerCallback cannot be rebuilt from a checkpoint's JSON alone (its agent, "
                        "objectives and model are objects): build it as for the first run and pass it to the "
                        "Trainer; it restores the scheduler's state from the checkpoint in on_train_begin")

    # -- wiring --------------------------------------------------------------------------------
    def attach(self, trainer: Trainer) -> AgentLossTrainerCallback:
        """Let this callback log through ``trainer.log`` (and add it to the trainer if it is not there yet).

        ``AgentLossTrainer`` does this for you; with another ``Trainer``, call it once after building
        the trainer, or stage logs only reach ``trainer.state.log_history``, not the ``report_to`` backends.
        """
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        self.trainer = trainer
        return self

    def state(self) -> dict[str, Any]:
        """Saved by the Trainer in ``trainer_state.json`` (``stateful_callbacks``) at every checkpoint."""
        sched = self.scheduler
        return {"args": {}, "attributes": {},
                "agentloss": {"version": STATE_VERSION, "name": self.name,
                              "scheduler": sched.state_dict() if sched is not None else None}}

    def _saved_state(self, state: TrainerState) -> dict[str, Any] | None:
        entries = state.stateful_callbacks.get(type(self).__name__)
        entries = entries if isinstance(entries, list) else [entries] if entries else []
        # The Trainer appends to a list when one class has several instances: the last entry is the newest.
        mine = [e["agentloss"] for e in entries if isinstance(e, Mapping) and isinstance(e.get("agentloss"), Mapping)
                and e["agentloss"].get("name") == self.name]
        return dict(mine[-1]) if mine else None

    def _find_loss_fn(self) -> AgentWeightedLoss:
        own = (self._config or {}).get("loss_fn")
        on_trainer = getattr(self.trainer, "loss_fn", None)
        if own is not None and isinstance(on_trainer, AgentWeightedLoss) and on_trainer is not own:
            raise ValueError("the callback's loss_fn and the trainer's loss_fn are two different AgentWeightedLoss "
                             "objects: the agent would set weights the Trainer never uses; pass the same one")
        found = own if own is not None else on_trainer
        if not isinstance(found, AgentWeightedLoss):
            raise TypeError("no AgentWeightedLoss found for AgentLossTrainerCallback: train with AgentLossTrainer("
                             "..., loss_fn=AgentWeightedLoss(...)), or pass loss_fn= (the loss your compute_loss "
                             "uses) or a ready scheduler= to the callback")
        return found

    def _build(self, args: TrainingArguments, state: TrainerState, model: nn.Module) -> StageScheduler:
        cfg = dict(self._config or {})
        run_dir = self.run_dir
        if run_dir == "auto":
            run_dir = os.path.join(args.output_dir, self.name)
        stage_length = cfg["stage_length"]
        total = cfg.get("total_stages")
        if total is None:
            total = max(state.max_steps // stage_length, 1)
        trials = self._make_trials(args, model, cfg) if cfg.get("trial_batches") is not None else None
        return StageScheduler(self._find_loss_fn(), cfg["agent"], cfg["objectives"], model, cfg["probe"],
                              stage_length=stage_length, probe_references=cfg.get("probe_references"),
                              total_stages=total, run_dir=run_dir, restore_fn=cfg.get("restore_fn"),
                              clamp=cfg["clamp"], callbacks=cfg["callbacks"],
                              asynchronous=cfg.get("asynchronous", False), apply_at=cfg.get("apply_at", "next_stage"),
                              trials=trials)

    def _make_trials(self, args: TrainingArguments, model: nn.Module, cfg: Mapping[str, Any]) -> SnapshotTrials:
        """Snapshot trials on the Trainer's optimizer, each step trained as the Trainer trains one batch."""
        trainer = self.trainer
        if trainer is None:
            raise ValueError("snapshot trials train with the Trainer's compute_loss: use AgentLossTrainer, or call "
                             "callback.attach(trainer) after building your Trainer")
        if args.world_size > 1:
            raise ValueError("snapshot trials run on one process: under distributed training one rank alone would "
                             "train, and the ranks' models would part; train on one device (or without trials)")
        if trainer.optimizer is None:
            raise ValueError("the Trainer has no optimizer yet at on_train_begin; snapshot trials need it")
        optimizer = getattr(trainer.optimizer, "optimizer", trainer.optimizer)  # accelerate's wrapper: the torch one
        scaler = getattr(trainer.accelerator, "scaler", None)
        return SnapshotTrials(optimizer, endless(cfg["trial_batches"]), steps=cfg["trial_steps"],
                              step_fn=hf_trial_step(trainer),
                              state=[*cfg["trial_state"], *([scaler] if scaler is not None else [])])

    # -- Trainer events ------------------------------------------------------------------------
    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                       model: nn.Module | None = None, **kwargs: Any) -> None:
        if model is None:
            raise ValueError("the Trainer passed no model to AgentLossTrainerCallback.on_train_begin")
        model = unwrap(model)
        stage_length = self._config["stage_length"] if self._config is not None else self.scheduler.stage_length
        if state.max_steps < stage_length:
            raise ValueError(f"max_steps={state.max_steps} is shorter than one stage (stage_length={stage_length} "
                             "optimizer steps): no stage would ever end; raise max_steps (or num_train_epochs) or "
                             "lower stage_length")
        if self._config is not None:
            self.scheduler = None
            self.scheduler = self._build(args, state, model)  # a new one per train(): a resume loads into it
        sched = self.scheduler
        assert sched is not None
        try:
            self._begin(args, state, sched, model)
        except BaseException:
            if self._config is not None:  # a scheduler we built must not stay hooked on the user's loss
                sched.close()
                self.scheduler = None
            raise

    def _begin(self, args: TrainingArguments, state: TrainerState, sched: StageScheduler, model: nn.Module) -> None:
        if sched.model is not model:
            raise ValueError("the scheduler restores the probe with another model than the one the Trainer trains "
                             "(with model_init the Trainer builds a new model per train()): pass agent=, "
                             "objectives=, probe=, stage_length= to the callback instead of a ready scheduler")
        on_trainer = getattr(self.trainer, "loss_fn", None)
        if isinstance(on_trainer, AgentWeightedLoss) and on_trainer is not sched.loss_fn:
            raise ValueError("the scheduler's loss_fn is not the trainer's loss_fn: the agent would set weights "
                             "the Trainer never uses; build the scheduler with the trainer's loss_fn")
        try:  # the Trainer writes this state as JSON at every checkpoint: fail now rather than at the first save
            json.dumps(self.state())
        except (TypeError, ValueError) as e:
            raise TypeError(f"the scheduler's state cannot be written to trainer_state.json ({e}): the agent's "
                            "state_dict() must return JSON data (numbers, strings, lists, dicts)") from e
        if state.global_step > 0:
            self._resume(args, state, sched)
            return
        if sched.iteration != 0:
            raise ValueError(f"this scheduler has already run {sched.iteration} iterations; a new training run "
                             "needs a new scheduler (or resume_from_checkpoint=... to continue one)")
        s0 = sched.start()  # S0 scored before the first update (returns the record if already scored)
        if self.log_stages:
            self._log(s0, args, state)
        self._logged = len(sched.history)

    def _resume(self, args: TrainingArguments, state: TrainerState, sched: StageScheduler) -> None:
        saved = self._saved_state(state)
        if saved is None or saved.get("scheduler") is None:
            raise ValueError(f"resuming at step {state.global_step}, but the checkpoint holds no state of the "
                             f"AgentLossTrainerCallback named {self.name!r} (was it trained without it, or under "
                             "another name?)")
        if saved.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported AgentLossTrainerCallback state version {saved.get('version')!r}")
        if _trainable_loss_state(sched.loss_fn):
            self._load_loss_state(args, state, sched.loss_fn)
        sched.load_state_dict(saved["scheduler"])
        self._logged = len(sched.history)
        if sched.iteration != state.global_step:
            raise ValueError(f"the checkpoint's scheduler is at iteration {sched.iteration} but the Trainer at "
                             f"global step {state.global_step}: the scheduler was stepped outside this callback")

    def _loss_state_path(self, folder: str) -> str:
        return os.path.join(folder, f"{self.name}_loss_state.pt")

    def _load_loss_state(self, args: TrainingArguments, state: TrainerState, loss_fn: AgentWeightedLoss) -> None:
        folders = [f for f in (self._resume_dir, os.path.join(args.output_dir,
                                                              f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")) if f]
        path = next((self._loss_state_path(f) for f in folders if os.path.isfile(self._loss_state_path(f))), None)
        if path is None:
            raise FileNotFoundError(
                f"the loss has trained state (a discriminator) but {self.name}_loss_state.pt is in none of {folders}: "
                "resume from a checkpoint this callback saved (with AgentLossTrainer, any path works; with another "
                "Trainer, a checkpoint in output_dir)")
        saved = torch.load(path, map_location="cpu", weights_only=True)
        full = loss_fn.state_dict()
        unknown = sorted(set(saved) - set(full))
        if unknown:
            raise ValueError(f"{path} holds loss state {unknown[:5]} this loss does not have")
        full.update(saved)
        loss_fn.load_state_dict(full)

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                    **kwargs: Any) -> None:
        sched = self.scheduler
        if sched is None:
            return
        sched.step()
        if sched.iteration != state.global_step:
            raise RuntimeError(f"AgentLossTrainerCallback: the scheduler is at iteration {sched.iteration} but the "
                               f"Trainer at global step {state.global_step}; call sched.step() only through this "
                               "callback")
        # Records join the history when their weights are applied: at the stage end, or later for an
        # asynchronous decision; each is logged then, at the step its weights took effect.
        if self.log_stages:
            for record in sched.history[self._logged:]:
                self._log(record, args, state)
        self._logged = len(sched.history)

    def on_train_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                     **kwargs: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.close()  # an asynchronous answer still in flight is recorded as dropped

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl,
                **kwargs: Any) -> None:
        sched = self.scheduler
        if sched is None or not state.is_world_process_zero:
            return
        extra = _trainable_loss_state(sched.loss_fn)
        if not extra:
            return
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(folder):
            log.warning("checkpoint folder %s not found: the loss's trained state (discriminator) was not saved", folder)
            return
        torch.save(extra, self._loss_state_path(folder))

    # -- logging -------------------------------------------------------------------------------
    def log_entries(self, record: StageRecord) -> dict[str, float]:
        """What is logged for one stage end: weights from now on, scores, stage, fallback and timings."""
        p = self.name
        out: dict[str, float] = {f"{p}/stage": float(record.stage)}
        out.update({f"{p}/weight/{k}": float(v) for k, v in (record.next_weights or record.weights).items()})
        out.update({f"{p}/score/{k}": float(v) for k, v in record.scores.items() if v is not None})
        out[f"{p}/fallback"] = float(record.fallback is not None)
        for key in ("agent_s", "restore_s", "score_s"):
            if key in record.timings:
                out[f"{p}/{key}"] = float(record.timings[key])
        return out

    def _log(self, record: StageRecord, args: TrainingArguments, state: TrainerState) -> None:
        entries = self.log_entries(record)
        if self.trainer is not None:
            self.trainer.log(entries)  # history, console and every report_to backend, at the global step
            return
        state.log_history.append({**entries, "step": state.global_step})
        if not self._warned_unattached:
            self._warned_unattached = True
            log.warning("AgentLossTrainerCallback is not attached to its Trainer: stage logs go to "
                        "trainer.state.log_history only; call callback.attach(trainer) so report_to backends get them")


class AgentLossTrainerMixin:
    """``compute_loss`` as ``loss_fn(model(inputs[input_key]), inputs[target_key])``, for a ``Trainer`` subclass.

    Put it first in the bases of your own subclass (``class MyTrainer(AgentLossTrainerMixin, MyTrainerBase)``)
    and pass ``loss_fn=``; :class:`AgentLossTrainer` is the mixin on the plain ``Trainer``. It also attaches
    every :class:`AgentLossTrainerCallback` to the trainer (stage logs go through ``Trainer.log``), moves
    ``loss_fn`` to the training device, and collates ``(lq, gt)`` tuples as well as dicts.

    Batches are dicts with ``input_key``/``target_key`` (default ``"lq"``/``"gt"``) or ``(lq, gt)`` pairs.
    The loss is a batch mean, which the Trainer divides by ``gradient_accumulation_steps``.
    """

    loss_is_scaled_for_ga = False  # a per-batch mean: the Trainer scales it for gradient accumulation

    def __init__(self, *args: Any, loss_fn: AgentWeightedLoss, input_key: str = "lq", target_key: str = "gt",
                 **kwargs: Any):
        if not isinstance(loss_fn, AgentWeightedLoss):
            raise TypeError(f"loss_fn must be an AgentWeightedLoss (the weights the agent sets), got "
                            f"{type(loss_fn).__name__}")
        if kwargs.get("data_collator") is None:
            kwargs["data_collator"] = default_collate  # dicts and (lq, gt) tuples alike
        super().__init__(*args, **kwargs)
        trainer: Trainer = self  # type: ignore[assignment]
        self.loss_fn = loss_fn.to(trainer.args.device)
        self.input_key, self.target_key = input_key, target_key
        model = trainer.model
        if trainer.args.remove_unused_columns and model is not None:
            accepted = set(inspect.signature(model.forward).parameters)
            dropped = [k for k in (input_key, target_key) if k not in accepted]
            if dropped:
                raise ValueError(f"remove_unused_columns=True would drop the batch keys {dropped} (they are not "
                                 f"arguments of {type(model).__name__}.forward) before compute_loss reads them: "
                                 "pass TrainingArguments(..., remove_unused_columns=False)")
        for cb in trainer.callback_handler.callbacks:
            if isinstance(cb, AgentLossTrainerCallback):
                cb.trainer = trainer

    def add_callback(self, callback: Any) -> None:
        super().add_callback(callback)  # type: ignore[misc]
        for cb in self.callback_handler.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, AgentLossTrainerCallback):
                cb.trainer = self

    def train(self, resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
        # The callback loads the loss's trained state (a discriminator) from the checkpoint folder; only the
        # trainer knows which folder that is.
        folder = resume_from_checkpoint
        if folder is True:
            folder = get_last_checkpoint(self.args.output_dir)  # type: ignore[attr-defined]
        for cb in self.callback_handler.callbacks:  # type: ignore[attr-defined]
            if isinstance(cb, AgentLossTrainerCallback):
                cb._resume_dir = folder if isinstance(folder, (str, os.PathLike)) else None
        return super().train(resume_from_checkpoint, *args, **kwargs)  # type: ignore[misc]

    def split_batch(self, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lq, gt)`` of a batch (a dict with the two keys, or a pair)."""
        if isinstance(inputs, Mapping):
            missing = [k for k in (self.input_key, self.target_key) if k not in inputs]
            if missing:
                raise KeyError(f"the batch has keys {sorted(inputs)}, not {missing}: set input_key=/target_key= "
                               "(or remove_unused_columns=False if the Trainer dropped them)")
            return inputs[self.input_key], inputs[self.target_key]
        if isinstance(inputs, (tuple, list)) and len(inputs) == 2:
            return inputs[0], inputs[1]
        raise TypeError(f"a batch must be a dict with {self.input_key!r} and {self.target_key!r} or an (lq, gt) "
                        f"pair, got {type(inputs).__name__}")

    def compute_loss(self, model: nn.Module, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        lq, gt = self.split_batch(inputs)
        pred = model(lq)
        loss = self.loss_fn(pred, gt)
        return (loss, {"pred": pred}) if return_outputs else loss

    def prediction_step(self, model: nn.Module, inputs: Any, prediction_loss_only: bool,
                        ignore_keys: list[str] | None = None) -> tuple[Any, Any, Any]:
        """Evaluation: the weighted loss (under the current weights), the restored batch and its targets."""
        # The Trainer's own prediction_step calls model(**inputs) unless the model names its labels.
        inputs = self._prepare_inputs(inputs)  # type: ignore[attr-defined]
        with torch.no_grad():
            loss, outputs = self.compute_loss(model, inputs, return_outputs=True)
        if prediction_loss_only:
            return loss.detach(), None, None
        return loss.detach(), outputs["pred"].detach(), self.split_batch(inputs)[1]


class AgentLossTrainer(AgentLossTrainerMixin, Trainer):
    """A ``transformers.Trainer`` whose loss is ``loss_fn(model(lq), gt)``; see :class:`AgentLossTrainerMixin`.

    ``AgentLossTrainer(model=net, args=args, train_dataset=pairs, loss_fn=loss_fn, callbacks=[callback])``
    """
