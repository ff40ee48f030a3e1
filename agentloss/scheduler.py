"""``StageScheduler``: cuts training into stages and lets an agent set the loss weights at each end.

Data flows one way: the training loop calls ``step()``; at a stage end the scheduler restores the
probe set (eval mode, no grad), scores it with the objectives, asks the agent, validates and clips
the answer, applies it to the ``AgentWeightedLoss`` and appends a ``StageRecord`` to the history
and to ``run_dir/stages.jsonl``. Any failure after set-up (an objective that raises or returns NaN,
an agent that raises or answers invalid weights) keeps the previous weights and is recorded: it
never stops training.

Example:
    >>> import torch, tempfile
    >>> import agentloss as al
    >>> model = torch.nn.Conv2d(3, 3, 3, padding=1)
    >>> loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    >>> contrast = al.CallableObjective(lambda x: x.std().item(), name="contrast", higher_is_better=True)
    >>> sched = al.StageScheduler(loss_fn, agent=al.RandomAgent(seed=0), objectives=[contrast],
    ...                           model=model, probe=torch.rand(2, 3, 16, 16), stage_length=2,
    ...                           run_dir=tempfile.mkdtemp())
    >>> opt = torch.optim.Adam(model.parameters(), 1e-3)
    >>> for _ in range(4):
    ...     x = torch.rand(1, 3, 16, 16)
    ...     loss = loss_fn(model(x), x)
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     _ = sched.step()
    >>> [r.stage for r in sched.history], sched.history[1].weights == {"l1": 1.0, "mse": 1.0}
    ([0, 1, 2], True)
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .agents.base import Agent, agent_state, check_agent, describe_agent, load_agent_state
from .background import AgentOutcome, BackgroundRequest, ask_agent, is_thread_safe
from .constraints import WeightError, validate_weights
from .distributed import rank_and_world, share_from_rank0, unwrap
from .feedback import TextFeedback, clean_text, is_text_objective
from .objectives import Objective
from .probe import DivergedError, ImageInput, ProbeError, as_image_list, restore
from .records import RecordWriter
from .trials import SnapshotTrials
from .types import Decision, DecisionContext, DecisionRecord, StageRecord
from .weighted_loss import AgentWeightedLoss

log = logging.getLogger("agentloss")


class StageScheduler:
    """Runs the stage-end loop around any training loop; see the module docstring for the flow.

    Args:
        loss_fn: the ``AgentWeightedLoss`` whose weights the agent sets; its ``constraints``
            (bounds and per-stage move limit) are applied to every answer.
        agent: proposes weights (``FixedAgent``, ``RandomAgent``, ``LLMAgent`` or your own).
        objectives: what is scored on the probe set; each keeps its direction. Text feedback sources
            (:class:`~agentloss.feedback.TextFeedback`) go here too: they describe the probe in words.
        model: the network; the probe is restored with ``restore_fn(model, lq)`` (default
            ``model(lq)``) in eval mode under ``no_grad``, then train mode is restored.
        probe_model: the module the probe is restored with instead of ``model`` (an EMA of the
            weights, e.g. ``torch.optim.swa_utils.AveragedModel``): what you evaluate is what is scored.
            With trials, ``SnapshotTrials`` must snapshot it (``state=[ema]``) and update it.
        asynchronous: ask the agent in a background thread while training goes on with the current
            weights (the probe is still restored and scored at the stage end: it needs the model).
            The agent must be ``thread_safe``. With trials, decisions stay synchronous (trials train
            the model). Never two decisions in flight: a stage end waits for the previous answer.
        apply_at: when an asynchronous answer is applied: ``"asap"`` (at the first ``step()`` after it
            arrives) or ``"next_stage"`` (exactly at the next stage end, whatever the latency: a run is
            then reproducible, and resumes exactly from a checkpoint taken while a decision was in flight).
        decision_timeout: seconds after which an asynchronous request is abandoned (recorded as a
            fallback; the worker is left to finish unheard). Default: the backend's ``deadline`` plus
            30 s when it has one, else 600 s.
        probe: a few low-quality inputs (``NxCxHxW`` or a list of ``CxHxW`` of any sizes) in [0, 1].
        probe_references: optional ground truths, one per probe image, for full-reference objectives.
        stage_length: iterations per stage.
        total_stages: if given, no decision is asked after the last stage (it would never be used).
        run_dir: where ``stages.jsonl`` and ``run.json`` are written (``None``: in memory only).
        clamp: clamp restored images to [0, 1] before scoring (objectives expect that range).
        callbacks: functions called with each new ``StageRecord`` (logging, plotting...).
        trials: a :class:`~agentloss.trials.SnapshotTrials` (your optimiser and a separate batch
            stream): agents may then try candidate weightings for a few steps before choosing.

    S0, the initial state, is scored before the first update: ``start()`` runs automatically on the
    first forward of ``loss_fn`` (or the first ``step()``), or call it yourself.
    """

    def __init__(
        self,
        loss_fn: AgentWeightedLoss,
        agent: Agent,
        objectives: Sequence[Objective | TextFeedback],
        model: nn.Module,
        probe: ImageInput,
        *,
        stage_length: int,
        probe_references: ImageInput | None = None,
        total_stages: int | None = None,
        run_dir: str | os.PathLike[str] | None = None,
        restore_fn: Callable[[nn.Module, torch.Tensor], torch.Tensor] | None = None,
        clamp: bool = True,
        callbacks: Sequence[Callable[[StageRecord], Any]] = (),
        trials: SnapshotTrials | None = None,
        probe_model: nn.Module | None = None,
        asynchronous: bool = False,
        apply_at: str = "asap",
        decision_timeout: float | None = None,
    ):
        if not isinstance(loss_fn, AgentWeightedLoss):
            raise TypeError(f"loss_fn must be an AgentWeightedLoss, got {type(loss_fn).__name__}")
        if not callable(getattr(agent, "propose", None)):
            raise TypeError(f"agent must have a propose(context) method, got {type(agent).__name__}")
        if not isinstance(stage_length, int) or stage_length < 1:
            raise ValueError(f"stage_length must be a positive integer, got {stage_length!r}")
        if total_stages is not None and (not isinstance(total_stages, int) or total_stages < 1):
            raise ValueError(f"total_stages must be a positive integer or None, got {total_stages!r}")
        objectives = list(objectives)
        if not objectives:
            raise ValueError("at least one objective is needed: the agent decides from their scores (or text)")
        names = [o.name for o in objectives]
        if len(set(names)) != len(names):
            raise ValueError(f"objective names must be unique, got {names}")
        self.probe = as_image_list(probe, "probe")
        self.probe_references = None if probe_references is None else as_image_list(probe_references, "probe_references")
        if self.probe_references is not None and len(self.probe_references) != len(self.probe):
            raise ProbeError(f"{len(self.probe)} probe images but {len(self.probe_references)} references")
        needing = [o.name for o in objectives if o.needs_reference]
        if needing and self.probe_references is None:
            raise ProbeError(f"objectives {needing} need references: pass probe_references=")
        check_agent(agent, list(loss_fn.names), [o.name for o in objectives if not is_text_objective(o)])
        _check_trials(agent, trials, model, probe_model)
        if apply_at not in ("asap", "next_stage"):
            raise ValueError(f"apply_at must be 'asap' or 'next_stage', got {apply_at!r}")
        if asynchronous and not is_thread_safe(agent):
            raise ValueError(
                f"asynchronous=True asks the agent in a background thread, but {type(agent).__name__} is not marked "
                "thread_safe. If its propose() reads only its context and its own state (no model, no loss, no "
                "shared objects), set thread_safe = True on the class; otherwise use asynchronous=False")
        if decision_timeout is not None and not decision_timeout > 0:
            raise ValueError(f"decision_timeout must be > 0 seconds, got {decision_timeout!r}")
        self.loss_fn = loss_fn
        self.agent = agent
        # Text feedback (kind "text") is described, not scored: kept apart so that every consumer of
        # ``objectives`` (agents, plots, the scores' checks) sees numbers only.
        self.objectives = [o for o in objectives if not is_text_objective(o)]
        self.text_objectives = [o for o in objectives if is_text_objective(o)]
        self.model = unwrap(model)
        self.probe_model = unwrap(probe_model) if probe_model is not None else self.model
        self.stage_length = stage_length
        self.total_stages = total_stages
        self.restore_fn = restore_fn or (lambda m, x: m(x))
        self.clamp = clamp
        self.callbacks = list(callbacks)
        self.trials = trials
        self.asynchronous = bool(asynchronous)
        self.apply_at = apply_at
        self.decision_timeout = float(decision_timeout) if decision_timeout is not None else _default_timeout(agent)
        self._pending: _Pending | None = None  # the decision in flight (asynchronous mode), at most one
        self.writer = RecordWriter(run_dir) if run_dir is not None else None
        self.rank, self.world_size = rank_and_world()
        self.iteration = 0
        self.stage = 0
        self.started = False
        self.history: list[StageRecord] = []
        self._unwritten: list[StageRecord] = []  # records a failed write left behind
        self._shared = 0  # decisions shared with the other ranks (names the store keys)
        self.feedback: list[str] = []
        self._warnings: list[str] = []  # collected during a decision (trials), moved into its record
        self._trial_s = 0.0
        self.initial_weights = loss_fn.weights
        self._t_stage_start = time.perf_counter()
        self._hook = loss_fn.register_forward_pre_hook(self._start_before_first_loss)

    # -- public loop API ------------------------------------------------------------------
    def start(self) -> StageRecord:
        """Score the initial state S0 (once). Called automatically before the first update."""
        if self.started:
            return self.history[0]
        self._remove_hook()
        if self.rank == 0:  # an objective that cannot be built (NIQE offline) fails now, not at every stage end
            for obj in [*self.objectives, *self.text_objectives]:
                if callable(getattr(obj, "prepare", None)):
                    obj.prepare()
        self.started = True
        if self.writer is not None and self.rank == 0:
            moved = self.writer.archive_existing()
            if moved is not None:
                log.warning("run_dir already held records of another run; moved them to %s", moved)
            self.writer.write_meta(self.meta())
        record = StageRecord(stage=0, iteration=self.iteration, weights=self.loss_fn.weights)
        if self.rank == 0:
            self._evaluate(record)
            record.next_weights = self.loss_fn.weights
        self._finish(record, self.loss_fn.weights)
        self._t_stage_start = time.perf_counter()
        return record

    def step(self) -> StageRecord | None:
        """Count one optimizer step; at a stage end run the decision and return its record.

        In asynchronous mode it also applies an answer that has arrived (``apply_at="asap"``)."""
        if not self.started:
            self.start()
        self.iteration += 1
        if self._pending is not None and self.apply_at == "asap" and self._answer_ready():
            self._settle()
        if self.iteration % self.stage_length == 0 and (self.total_stages is None or self.stage < self.total_stages):
            return self.end_stage()
        return None

    def end_stage(self) -> StageRecord:
        """Close the current stage now: score, decide, apply, record.

        Asynchronous: take the previous answer first (waiting for it if needed), score, then ask the
        agent in the background; the returned record gets its decision when the answer is applied."""
        t0 = time.perf_counter()
        train_s = t0 - self._t_stage_start
        trained = self.loss_fn.weights  # what this stage ended with, before a pending answer replaces it
        # The previous answer first: an interrupt while waiting for it leaves a consistent state.
        waited = self._settle(wait=True) if self._pending is not None else None
        self.stage += 1
        record = StageRecord(stage=self.stage, iteration=self.iteration, weights=trained)
        record.timings["train_s"] = train_s
        if waited is not None:
            record.timings["wait_s"] = waited
        new_weights = self.loss_fn.weights
        final = self.total_stages is not None and self.stage >= self.total_stages
        background = self.asynchronous and self.trials is None and not final
        if self.rank == 0:
            self._evaluate(record)
            if background:
                self._request(record)
            else:
                new_weights = self._decide(record)
        record.timings["stall_s"] = time.perf_counter() - t0
        if background:
            if self._pending is None:  # other ranks: rank 0's answer comes with the shared record
                self._pending = _Pending(record)
        else:
            self._finish(record, new_weights)
        self._t_stage_start = time.perf_counter()
        return record

    def close(self) -> None:
        """End of training: apply an answer that has arrived, or record the one still in flight as dropped.

        Only needed in asynchronous mode without ``total_stages`` (the last stage asks nothing);
        the integrations call it at the end of fit. It also removes the hook that scores S0 on the
        loss's first forward (a scheduler set up for a run that never started leaves no trace on the
        loss). Safe to call more than once."""
        self._remove_hook()
        if self._pending is not None:
            self._settle(drop_if_late=True)

    def __enter__(self) -> StageScheduler:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()

    def add_feedback(self, text: str) -> None:
        """A person's note for the agent; it is shown to the agent as data, with the next decision."""
        self.feedback.append(str(text))

    @property
    def last_scores(self) -> dict[str, float | None]:
        return dict(self.history[-1].scores) if self.history else {}

    # -- the stage-end steps ----------------------------------------------------------------
    def restore_probe(self) -> list[torch.Tensor]:
        """Restore every probe image (eval mode, no grad, autocast off, float32; see ``agentloss.probe``)."""
        return restore(self.probe_model, self.probe, self.restore_fn, clamp=self.clamp)

    def _evaluate(self, record: StageRecord) -> None:
        t0 = time.perf_counter()
        try:
            if record.stage > 0 and self.loss_fn.diverged:
                raise DivergedError(f"the loss is not finite ({self.loss_fn.last_values}): the model has diverged")
            restored = self.restore_probe()
        except Exception as e:
            if record.stage == 0:
                raise  # before training: a clear error beats a run that can never be scored
            record.scores = {o.name: None for o in self.objectives}
            record.texts = {o.name: None for o in self.text_objectives}
            record.timings["restore_s"] = time.perf_counter() - t0
            if isinstance(e, DivergedError):
                record.errors.append(str(e))
                record.fallback = f"{e}; previous weights kept, no agent asked"
                log.error("stage %d: %s", record.stage, record.fallback)
            else:
                record.errors.append(f"probe restore failed: {type(e).__name__}: {e}")
            return
        t1 = time.perf_counter()
        record.timings["restore_s"] = t1 - t0
        refs = self.probe_references
        if refs is not None:
            mismatched = [i for i, (o, r) in enumerate(zip(restored, refs)) if o.shape[-2:] != r.shape[-2:]]
            if mismatched:
                msg = (f"restored probe images {mismatched} have sizes "
                       f"{[tuple(restored[i].shape[-2:]) for i in mismatched]} but their references "
                       f"{[tuple(refs[i].shape[-2:]) for i in mismatched]}")
                if record.stage == 0:
                    raise ProbeError(msg)
                record.errors.append(msg)
        for obj in self.objectives:
            t = time.perf_counter()
            try:
                result = obj.score(restored, refs if obj.needs_reference else None)
                record.scores[obj.name] = result.mean
                record.per_image[obj.name] = result.per_image
                record.errors.extend(f"{obj.name}: {e}" for e in result.errors)
            except Exception as e:  # noqa: BLE001
                record.scores[obj.name] = None
                record.errors.append(f"{obj.name} failed: {type(e).__name__}: {e}")
            record.timings[f"score_{obj.name}_s"] = time.perf_counter() - t
        for src in self.text_objectives:
            t = time.perf_counter()
            try:
                record.texts[src.name] = clean_text(src.describe(restored, refs if src.needs_reference else None))
            except Exception as e:  # noqa: BLE001 - missing feedback is recorded; the decision goes on without it
                record.texts[src.name] = None
                record.errors.append(f"{src.name} failed: {type(e).__name__}: {e}")
            record.timings[f"score_{src.name}_s"] = time.perf_counter() - t
        record.timings["score_s"] = time.perf_counter() - t1

    def _decide(self, record: StageRecord) -> dict[str, float]:
        """Ask the agent now; return the weights for the next stage (the current ones on any failure)."""
        current = self.loss_fn.weights
        context = self._context(record)
        if context is None:
            return current
        self._warnings, self._trial_s = record.warnings, 0.0
        outcome = ask_agent(self.agent, context)
        if self.trials is not None:
            record.timings["trial_s"] = self._trial_s
        return self._weights_from(record, outcome, context, current)

    def _context(self, record: StageRecord) -> DecisionContext | None:
        """What the agent is asked with, or ``None`` when no agent is asked (the reason is recorded)."""
        if record.fallback:  # already decided to keep (a diverged model)
            return None
        failed = [name for name, v in record.scores.items() if v is None]
        if failed:
            record.fallback = f"objective(s) {failed} could not be scored; previous weights kept"
            return None
        if self.total_stages is not None and record.stage >= self.total_stages:
            record.decision = DecisionRecord(skipped="final stage: no later stage would use new weights")
            return None
        return DecisionContext(
            loss_names=list(self.loss_fn.names),
            current_weights=dict(self.loss_fn.weights),
            initial_weights=dict(self.initial_weights),
            # A copy of the record being decided: a background worker reads it while this thread may not.
            history=[*self.history, copy.deepcopy(record)],
            objectives=[o.info() for o in self.objectives],
            constraints=copy.deepcopy(self.loss_fn.constraints),  # an agent's edits cannot loosen the limits
            stage=record.stage,
            total_stages=self.total_stages,
            stage_length=self.stage_length,
            feedback=list(self.feedback),
            text_sources=[o.info() for o in self.text_objectives],
            trial=self._trial if self.trials is not None else None,
        )

    def _weights_from(self, record: StageRecord, outcome: AgentOutcome, context: DecisionContext,
                      current: dict[str, float]) -> dict[str, float]:
        """The one place where a proposal is validated and constrained: agents propose raw weights, and
        what the constraints made of them goes into ``record.decision``."""
        record.timings["agent_s"] = outcome.seconds
        seen = [r.stage for r in context.history]
        if outcome.decision is None:
            record.fallback = outcome.error or "the agent gave no answer"
            record.decision = DecisionRecord(traceback=outcome.traceback, feedback=list(context.feedback),
                                             seen_stages=seen)
            return current
        decision = outcome.decision
        record.decision = DecisionRecord.from_decision(decision, context.feedback)
        record.decision.seen_stages = seen
        if decision.fallback:
            record.fallback = decision.fallback
            return current
        try:
            if not isinstance(decision.weights, dict):
                raise WeightError(f"weights must be a dict of name -> number, got {type(decision.weights).__name__}")
            proposed = validate_weights(decision.weights, self.loss_fn.names)
        except (WeightError, TypeError, OverflowError) as e:
            record.fallback = f"agent proposed invalid weights: {e}"
            return current
        result = self.loss_fn.constraints.apply(proposed, previous=current)
        record.decision.clipped = list(result.clipped)
        record.decision.kept_previous = result.kept_previous
        if result.kept_previous:
            record.fallback = result.reason
        return result.weights

    # -- asynchronous decisions ------------------------------------------------------------------
    def _request(self, record: StageRecord) -> None:
        """Rank 0: ask the agent in the background (or note why no agent is asked)."""
        agent_before = agent_state(self.agent)  # what a checkpoint taken while it runs must hold
        context = self._context(record)
        request = BackgroundRequest(self.agent, context) if context is not None else None
        self._pending = _Pending(record, request, context, agent_before)

    def _answer_ready(self) -> bool:
        """Whether the pending answer can be applied now; with several ranks, rank 0 says (all ranks ask
        at the same steps, so the weights change at the same optimizer step everywhere)."""
        pending = self._pending
        assert pending is not None
        ready = pending.request is None or pending.request.ready()
        if self.world_size == 1:
            return ready
        if self.iteration % max(1, self.stage_length // 10):
            return False  # ranks agree only every tenth of a stage: a store exchange per step would cost
        data = share_from_rank0({"ready": ready if self.rank == 0 else False}, self.rank, self._shared)
        self._shared += 1
        return bool(data["ready"])

    def _settle(self, wait: bool = False, drop_if_late: bool = False) -> float:
        """Apply the pending decision (rank 0 computes it; ``_finish`` shares it); returns the seconds waited."""
        pending = self._pending
        assert pending is not None
        record, current, waited = pending.record, self.loss_fn.weights, 0.0
        new_weights = current
        if self.rank == 0:
            request = pending.request
            if request is not None and not request.ready() and wait:
                t = time.perf_counter()
                request.wait(self.decision_timeout - request.elapsed())
                waited = time.perf_counter() - t
            if pending.context is None:
                pass  # no agent was asked (a fallback or a skip, already in the record)
            elif request is not None and request.ready():
                assert request.outcome is not None
                new_weights = self._weights_from(record, request.outcome, pending.context, current)
            else:
                assert request is not None
                why = ("training ended before the agent answered" if drop_if_late
                       else f"the agent did not answer within decision_timeout={self.decision_timeout:g} s")
                record.fallback = f"{why}; request abandoned, previous weights kept"
                record.decision = DecisionRecord(feedback=list(pending.context.feedback),
                                                 seen_stages=[r.stage for r in pending.context.history])
                record.timings["agent_s"] = request.elapsed()
                log.warning("stage %d: %s", record.stage, record.fallback)
            record.timings["waited_s"] = waited
        record.applied_iteration = self.iteration
        self._pending = None
        self._finish(record, new_weights)
        return waited

    def _pending_state(self) -> dict[str, Any] | None:
        p = self._pending
        if p is None:
            return None
        return {"record": p.record.to_dict(), "agent": p.agent_before}

    def _trial(self, candidates: list[dict[str, float]], steps: int | None = None) -> list[dict[str, float | None]]:
        """Probe scores of each weighting after a few steps from the current state (see ``trials``)."""
        assert self.trials is not None
        for w in candidates:
            self.loss_fn.constraints.check_bounds(validate_weights(w, self.loss_fn.names))

        def score() -> dict[str, float | None]:
            rec = StageRecord(stage=-1, iteration=self.iteration, weights=self.loss_fn.weights)
            self._evaluate(rec)
            return dict(rec.scores)

        t = time.perf_counter()
        try:
            results = self.trials.run(candidates, self.model, self.loss_fn, score, steps)
        finally:
            self._trial_s += time.perf_counter() - t
        if len(results) > 1 and all(r == results[0] for r in results[1:]):
            # Different weightings trained for several steps cannot all score the same unless what
            # the probe reads is not what the trials train (an EMA not updated by the trial step).
            self._warnings.append(f"trials: all {len(results)} candidates scored exactly the same ({results[0]}): "
                                  "the probe may read a model the trial steps do not update (an EMA?); "
                                  "pass SnapshotTrials(..., state=[ema]) and update it in step_fn")
            log.warning("stage %d: %s", self.stage, self._warnings[-1])
        return results

    def _finish(self, record: StageRecord, new_weights: dict[str, float]) -> None:
        """Share the decision with every rank, apply it, record it, start timing the next stage."""
        if self.world_size > 1:
            data = share_from_rank0({"record": record.to_dict(), "weights": new_weights}, self.rank, self._shared)
            self._shared += 1
            record, new_weights = StageRecord.from_dict(data["record"]), data["weights"]
        try:
            self.loss_fn.set_weights(new_weights)
        except WeightError as e:  # bounds changed under us: keep what we have, say so
            record.fallback = f"could not apply weights {new_weights}: {e}"
        record.next_weights = self.loss_fn.weights
        self.history.append(record)
        if record.stage > 0:
            self._log(record)
        if self.writer is not None and self.rank == 0:
            self._write(record)
        for cb in self.callbacks:
            try:
                cb(record)
            except Exception as e:  # noqa: BLE001 - a plotting callback must not stop training
                log.warning("stage callback %r failed: %s", cb, e)

    def _write(self, record: StageRecord) -> None:
        """Append the record, and any a failed write left behind; a write error never stops training."""
        self._unwritten.append(record)
        try:
            while self._unwritten:
                self.writer.append(self._unwritten[0])  # type: ignore[union-attr]
                self._unwritten.pop(0)
        except OSError as e:  # disk full, the file replaced by a directory...: kept in memory, retried next stage
            log.error("could not write %d stage record(s) to %s (%s); they are kept and written at the next "
                      "stage end", len(self._unwritten), self.writer.path, e)  # type: ignore[union-attr]

    def _log(self, record: StageRecord) -> None:
        scores = " ".join(f"{k}={'n/a' if v is None else f'{v:.4g}'}" for k, v in record.scores.items())
        weights = ":".join(f"{w:.3g}" for w in (record.next_weights or {}).values())
        extra = f" (fallback: {record.fallback})" if record.fallback else ""
        log.info("stage %d @ iter %d: %s -> weights %s%s", record.stage, record.iteration, scores, weights, extra)

    # -- start-up hook ------------------------------------------------------------------------
    def _start_before_first_loss(self, module: nn.Module, args: Any) -> None:
        if not self.started and module.training and torch.is_grad_enabled():
            self.start()

    def _remove_hook(self) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    # -- state ----------------------------------------------------------------------------------
    def meta(self) -> dict[str, Any]:
        """The run's fixed description, written to ``run.json`` (the agent's prompt can be rebuilt from it)."""
        return {
            "loss_names": list(self.loss_fn.names),
            "initial_weights": dict(self.initial_weights),
            "objectives": [vars(o.info()) for o in self.objectives],
            "text_sources": [vars(o.info()) for o in self.text_objectives],
            "constraints": self.loss_fn.constraints.to_dict(),
            "stage_length": self.stage_length,
            "total_stages": self.total_stages,
            "agent": describe_agent(self.agent),
            "probe": {"count": len(self.probe), "shapes": [list(p.shape) for p in self.probe],
                      "references": self.probe_references is not None},
            "world_size": self.world_size,
            "versions": {"torch": torch.__version__, "python": platform.python_version()},
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume exactly: counters, history, weights, the agent's state."""
        return {
            "version": 1,
            "iteration": self.iteration,
            "stage": self.stage,
            "started": self.started,
            "history": [r.to_dict() for r in self.history],  # the current weights are the last next_weights
            "initial_weights": dict(self.initial_weights),
            "feedback": list(self.feedback),
            # While a decision is in flight the agent may be changing its state: save it as it was when
            # asked, with the stage's record, so that a resume re-issues the same request.
            "agent": self._pending.agent_before if self._pending is not None else agent_state(self.agent),
            "pending": self._pending_state(),
            "trials": self.trials.state_dict() if self.trials is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a run; records in ``run_dir`` after the restored stage are dropped (they are re-run)."""
        if state.get("version") != 1:
            raise ValueError(f"unsupported scheduler state version {state.get('version')!r}")
        self.iteration = int(state["iteration"])
        self.stage = int(state["stage"])
        self.started = bool(state["started"])
        if self.started:
            self._remove_hook()
        self.history = [StageRecord.from_dict(r) for r in state["history"]]
        self.initial_weights = dict(state["initial_weights"])
        self.feedback = list(state.get("feedback", []))
        last = self.history[-1].next_weights if self.history else None
        weights = state.get("weights") or last or self.initial_weights  # "weights": states of earlier versions
        self.loss_fn.set_weights(weights)
        load_agent_state(self.agent, state.get("agent", {}))
        if self.trials is not None and state.get("trials"):
            self.trials.load_state_dict(state["trials"])
        self._pending = None  # a request of the run being replaced is dropped unheard
        if state.get("pending"):
            record = StageRecord.from_dict(state["pending"]["record"])
            if self.rank == 0:
                self._request(record)  # the same history and agent state: the same request again
            else:
                self._pending = _Pending(record)
        if self.writer is not None and self.rank == 0:
            self.writer.rewrite(self.history)
        self._t_stage_start = time.perf_counter()


@dataclass
class _Pending:
    """The asynchronous decision in flight: its stage's record (scored), the request (rank 0; ``None``
    when no agent was asked), what it was asked with, and the agent's state before it was asked."""

    record: StageRecord
    request: BackgroundRequest | None = None
    context: DecisionContext | None = None
    agent_before: dict[str, Any] | None = None


def _default_timeout(agent: Agent) -> float:
    """The backend's own deadline plus a margin (it reports a timeout first), else 10 minutes."""
    deadline = getattr(getattr(getattr(agent, "backend", None), "config", None), "deadline", None)
    return float(deadline) + 30.0 if isinstance(deadline, (int, float)) else 600.0


def requested_trials(agent: Agent) -> int:
    """How many snapshot trials an agent asks for per stage end (its ``trials`` attribute; 0 if none)."""
    try:
        return int(getattr(agent, "trials", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _check_trials(agent: Agent, trials: SnapshotTrials | None, model: nn.Module, probe_model: nn.Module | None) -> None:
    """Refuse, before training, set-ups where trials would silently do nothing or compare nothing."""
    wanted = requested_trials(agent)
    if wanted > 0 and trials is None:
        raise ValueError(
            f"the agent asks for {wanted} snapshot trial(s) per stage end but the scheduler has no SnapshotTrials, "
            "so they would never run. Add:\n"
            "    trial_batches = iter(my_trial_loader)  # a stream of (lq, gt) batches of its own\n"
            "    trials = agentloss.SnapshotTrials(optimizer, trial_batches, steps=20)\n"
            "    StageScheduler(..., trials=trials)\n"
            "or set trials: 0 in the agent's config.")
    if trials is not None and probe_model is not None and unwrap(probe_model) is not unwrap(model):
        registered = [unwrap(m) for m in getattr(trials, "state", ()) if isinstance(m, nn.Module)]
        if not any(m is unwrap(probe_model) for m in registered):
            raise ValueError(
                "the probe is restored with probe_model (an EMA?) but the SnapshotTrials do not snapshot it, so every "
                "trial would score the same model: pass SnapshotTrials(optimizer, batches, state=[probe_model], "
                "step_fn=...) with a step_fn that also updates it")
