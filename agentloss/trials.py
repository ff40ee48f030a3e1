"""Try candidate weightings for a few steps from a snapshot of training, then put training back.

Stage-to-stage noise of a no-reference metric (NIQE: ±0.1–0.2) is larger than what one stage of a
different weighting changes, so an agent learning from the history alone learns slowly. A trial
compares candidates *paired*: each starts from the same snapshot (model, optimiser, loss weights
and GAN discriminator, gradients, RNG), trains the same batches for ``steps`` iterations with its weights,
and is scored on the probe set; afterwards the snapshot is restored exactly, so training goes on
as if no trial had run (the main data stream is not touched: trials draw from their own).

The scheduler owns the scoring; pass ``trials=SnapshotTrials(optimizer, batches)`` to
:class:`~agentloss.scheduler.StageScheduler` and agents that ask for trials (``GuidedAgent(trials=2)``)
get ``context.trial``. Cost: ``(candidates) x steps`` extra iterations per stage end.

Example:
    >>> import torch, agentloss as al
    >>> model = torch.nn.Conv2d(3, 3, 3, padding=1)
    >>> loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    >>> opt = torch.optim.Adam(model.parameters(), 1e-2)
    >>> batches = iter(lambda: (torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8)), None)
    >>> trials = SnapshotTrials(opt, batches, steps=3)
    >>> before = {k: v.clone() for k, v in model.state_dict().items()}
    >>> score = lambda: {"mean": model.weight.mean().item()}
    >>> a, b = trials.run([{"l1": 1.0, "mse": 0.0}, {"l1": 0.0, "mse": 1.0}], model, loss_fn, score)
    >>> a != b, all(torch.equal(before[k], v) for k, v in model.state_dict().items()), loss_fn.weights
    (True, True, {'l1': 1.0, 'mse': 1.0})
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .weighted_loss import AgentWeightedLoss

Batch = tuple[torch.Tensor, torch.Tensor]
StepFn = Callable[[nn.Module, AgentWeightedLoss, torch.optim.Optimizer, Batch], None]


def default_step(model: nn.Module, loss_fn: AgentWeightedLoss, optimizer: torch.optim.Optimizer, batch: Batch) -> None:
    lq, gt = batch
    loss = loss_fn(model(lq), gt)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def _to(batch: Any, device: torch.device) -> Any:
    """A batch on ``device``: tensors anywhere in tuples, lists and dicts (a ``step_fn`` may take any batch)."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        moved = {k: _to(v, device) for k, v in batch.items()}
        return type(batch)(moved) if isinstance(batch, dict) else moved  # an OrderedDict stays one
    if isinstance(batch, (tuple, list)):
        items = [_to(v, device) for v in batch]
        return type(batch)(*items) if hasattr(batch, "_fields") else type(batch)(items)  # namedtuples too
    return batch


def optimizer_step(optimizer: torch.optim.Optimizer, loss: torch.Tensor, scaler: Any = None,
                   clip: Callable[[], Any] | None = None) -> None:
    """One optimizer step from a loss, as framework loops take it: backward (through a ``GradScaler``
    when given), ``clip()`` on unscaled gradients when given, then the (scaler's) step."""
    optimizer.zero_grad(set_to_none=True)
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if clip is not None:
        if scaler is not None:
            scaler.unscale_(optimizer)
        clip()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()


class SnapshotTrials:
    """See the module docstring. ``batches`` yields ``(lq, gt)`` (its own stream, not the training
    one); ``step_fn(model, loss_fn, optimizer, batch)`` is one training iteration (default: plain
    forward/backward/step — pass yours for AMP, gradient clipping, EMA ...). ``state``: every other
    object a training step changes (an EMA model, a ``GradScaler``, an LR scheduler, other
    optimisers): each is snapshotted with ``state_dict()`` and put back after the trials.

    ``ema``: an EMA of the model (``torch.optim.swa_utils.AveragedModel``, or timm's ``ModelEma*``):
    it is snapshotted like ``state`` and updated after every trial step (``ema.update_parameters(model)``
    or ``ema.update(model)``), so a ``probe_model=ema`` sees what each candidate trained without a
    ``step_fn`` of your own. Do not update it in your ``step_fn`` as well.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, batches: Iterator[Batch], steps: int = 20,
                 step_fn: StepFn | None = None, state: Sequence[Any] = (), ema: nn.Module | None = None):
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        self.ema = ema
        self._update_ema: Callable[[nn.Module], Any] | None = None
        if ema is not None:
            # AveragedModel names it update_parameters; timm's ModelEma/ModelEmaV2/V3 name it update.
            self._update_ema = getattr(ema, "update_parameters", None) or getattr(ema, "update", None)
            if not callable(self._update_ema):
                raise TypeError(f"ema must have update_parameters(model) (torch AveragedModel) or update(model) "
                                f"(timm ModelEma); {type(ema).__name__} has neither: update it in step_fn and "
                                "pass it in state=[...] instead")
            if not any(obj is ema for obj in state):
                state = [*state, ema]
        for obj in state:
            if not (callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))):
                raise TypeError(f"state objects need state_dict() and load_state_dict(); {type(obj).__name__} has not")
        self.state = list(state)
        self.optimizer = optimizer
        self.batches = batches
        self.steps = int(steps)
        self.step_fn = step_fn or default_step
        self.iterations = 0  # extra training iterations spent on trials (the overhead)

    def run(self, candidates: Sequence[Mapping[str, float]], model: nn.Module, loss_fn: AgentWeightedLoss,
            score: Callable[[], dict[str, float | None]], steps: int | None = None) -> list[dict[str, float | None]]:
        """Scores of each candidate weighting after ``steps`` iterations from the current state."""
        steps = int(steps or self.steps)
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        batches = [_to(next(self.batches), device) for _ in range(steps)]  # the same batches for every candidate
        snapshot = {"model": copy.deepcopy(model.state_dict()), "optimizer": copy.deepcopy(self.optimizer.state_dict()),
                    "loss": copy.deepcopy(loss_fn.state_dict()), "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
                    "extra": [copy.deepcopy(obj.state_dict()) for obj in self.state],
                    # A loop that zeroes gradients after its step (HF Trainer) would add a trial's leftovers to
                    # the next batch's: the gradients are put back as they were, too.
                    "grads": [(p, None if p.grad is None else p.grad.detach().clone())
                              for p in _parameters(model, loss_fn)]}
        was_training = model.training
        results: list[dict[str, float | None]] = []
        try:
            for weights in candidates:
                self._restore(snapshot, model, loss_fn)
                loss_fn.set_weights(dict(weights))
                model.train()
                for batch in batches:
                    self.step_fn(model, loss_fn, self.optimizer, batch)
                    if self._update_ema is not None:
                        self._update_ema(model)
                self.iterations += steps
                results.append(score())
        finally:
            self._restore(snapshot, model, loss_fn)  # training resumes exactly where it was
            model.train(was_training)
        return results

    def state_dict(self) -> dict[str, Any]:
        """The overhead counter and the trial stream's position (when it has one), for exact resume."""
        state: dict[str, Any] = {"iterations": self.iterations}
        if callable(getattr(self.batches, "state_dict", None)):
            state["batches"] = self.batches.state_dict()  # type: ignore[attr-defined]
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.iterations = int(state.get("iterations", 0))
        if "batches" in state and callable(getattr(self.batches, "load_state_dict", None)):
            self.batches.load_state_dict(state["batches"])  # type: ignore[attr-defined]

    def _restore(self, snap: dict[str, Any], model: nn.Module, loss_fn: AgentWeightedLoss) -> None:
        model.load_state_dict(snap["model"])
        # Optimizers keep the loaded state tensors themselves (no copy) and update them in place:
        # loading the snapshot directly would let the next trial overwrite it.
        self.optimizer.load_state_dict(copy.deepcopy(snap["optimizer"]))
        loss_fn.load_state_dict(copy.deepcopy(snap["loss"]))
        for obj, st in zip(self.state, snap["extra"]):
            obj.load_state_dict(copy.deepcopy(st))  # a copy: the object may update loaded tensors in place
        for p, grad in snap["grads"]:
            p.grad = None if grad is None else grad.clone()
        torch.set_rng_state(snap["rng"])
        if snap["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(snap["cuda_rng"])


def _parameters(*modules: nn.Module) -> list[nn.Parameter]:
    """The parameters of the modules, each once (the loss may be a submodule of the model)."""
    seen: dict[int, nn.Parameter] = {}
    for m in modules:
        for p in m.parameters():
            seen.setdefault(id(p), p)
    return list(seen.values())


def endless(batches: Iterable[Any]) -> Iterator[Any]:
    """Batches from an iterable, started again when it ends (a DataLoader gives one epoch per ``iter``):
    the trial stream a framework callback builds from the loader it is given.

    >>> from itertools import islice
    >>> list(islice(endless([1, 2]), 5))
    [1, 2, 1, 2, 1]
    """
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise ValueError("trial_batches yielded no batch")
        if iter(batches) is batches:  # a one-shot iterator: nothing to start again
            return


def check_trial_args(wanted: int, trial_batches: Any, trial_steps: Any, owner: str, form: str) -> None:
    """The checks a framework callback makes on its trial arguments when it is built: an agent asking for
    ``wanted`` trials needs ``trial_batches`` (batches in ``form``), and batches with no trials would never run.

    >>> check_trial_args(2, None, 20, "MyCallback", "your step takes them")
    Traceback (most recent call last):
    ...
    ValueError: the agent asks for 2 snapshot trial(s) per stage end: pass MyCallback(..., trial_batches=<a DataLoader of its own, batches as your step takes them>), or set the agent's trials to 0
    """
    if wanted > 0 and trial_batches is None:
        raise ValueError(f"the agent asks for {wanted} snapshot trial(s) per stage end: pass {owner}(..., "
                         f"trial_batches=<a DataLoader of its own, batches as {form}>), or set the agent's trials to 0")
    if trial_batches is not None and wanted <= 0:
        raise ValueError("trial_batches is given but the agent asks for no trials, so they would never run: use an "
                         "agent with trials (GuidedAgent(trials=2)) or leave trial_batches out")
    if not isinstance(trial_steps, int) or isinstance(trial_steps, bool) or trial_steps < 1:
        raise ValueError(f"trial_steps must be a positive integer, got {trial_steps!r}")


def trials_for(agent_config: Mapping[str, Any], optimizer: torch.optim.Optimizer,
               make_batches: Callable[[], Iterator[Batch]]) -> SnapshotTrials | None:
    """The ``SnapshotTrials`` an agent config asks for (``trials: N`` > 0), else ``None``.

    ``make_batches`` is called only when trials are wanted; give it a stream of its own (another
    seed), so that the training stream stays the one a method without trials sees.

    >>> model = torch.nn.Conv2d(3, 3, 1)
    >>> opt = torch.optim.Adam(model.parameters())
    >>> trials_for({"type": "fixed"}, opt, lambda: iter([])) is None
    True
    >>> trials_for({"type": "guided", "trials": 2, "trial_steps": 15}, opt, lambda: iter([])).steps
    15
    """
    if int(agent_config.get("trials") or 0) <= 0:
        return None
    return SnapshotTrials(optimizer, make_batches(), steps=int(agent_config.get("trial_steps") or 20))
