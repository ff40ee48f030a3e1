"""``AgentWeightedLoss``: a weighted sum of named loss terms whose weights an agent may change.

The weights are explicit state: ``state_dict()`` saves them (with the term names) and
``load_state_dict()`` restores them, so a checkpoint taken mid-run resumes with the weights the
agent had set. Setting weights validates them and raises ``WeightError`` with the reason.

Example:
    >>> import torch
    >>> loss_fn = AgentWeightedLoss({"l1": 1.0, "mse": 0.5})
    >>> pred, target = torch.zeros(1, 3, 8, 8, requires_grad=True), torch.ones(1, 3, 8, 8)
    >>> loss_fn(pred, target).item()
    1.5
    >>> loss_fn.set_weights({"l1": 0.2, "mse": 1.0})
    >>> round(loss_fn(pred, target).item(), 4)
    1.2
    >>> loss_fn.last_values
    {'l1': 1.0, 'mse': 1.0}
    >>> loss_fn.weights["l1"] = 5.0
    Traceback (most recent call last):
    ...
    TypeError: loss weights are read-only here: use loss_fn.set_weights({...}) (or set_weights({...}, partial=True) for some of them)
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .constraints import WeightConstraints, WeightError, validate_weights
from .losses.registry import create_loss, resolve_loss_name

_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


def check_loss_names(names: list[str]) -> None:
    """Reject names the answer format (``Weights: l1:gan=1:0.01``) cannot carry, before any training.

    A name is a letter then letters, digits, ``_`` or ``-``, and names must differ in more than
    case (models write ``L1`` for ``l1``); otherwise every LLM decision would fall back.

    Example:
        >>> check_loss_names(["l1", "l1:fft"])
        Traceback (most recent call last):
        ...
        agentloss.constraints.WeightError: loss name 'l1:fft' cannot be written in an answer: use a letter, then letters, digits, '_' or '-'
    """
    for name in names:
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise WeightError(f"loss name {name!r} cannot be written in an answer: use a letter, then letters, "
                              "digits, '_' or '-'")
    lowered = [n.lower() for n in names]
    twins = sorted({n for n in names if lowered.count(n.lower()) > 1})
    if twins:
        raise WeightError(f"loss names {twins} differ only in case; a model's answer could not tell them apart")


class WeightsView(dict):
    """A snapshot of the weights that refuses item assignment, which would otherwise change a copy
    and silently do nothing. Compares, copies and serialises as the plain dict it is."""

    def _read_only(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("loss weights are read-only here: use loss_fn.set_weights({...}) "
                        "(or set_weights({...}, partial=True) for some of them)")

    __setitem__ = __delitem__ = update = pop = popitem = clear = setdefault = _read_only  # type: ignore[assignment]

    def copy(self) -> dict[str, float]:
        return dict(self)

    def __reduce__(self) -> Any:  # pickles and deep-copies as a plain dict
        return (dict, (dict(self),))


class AgentWeightedLoss(nn.Module):
    """Weighted sum ``sum_i w_i * term_i(pred, target)`` over terms from the loss repository.

    Args:
        weights: loss name -> initial weight. Names are looked up in the repository
            (``agentloss.list_losses()``) unless ``terms`` gives a module for them.
        terms: optional, per name, either an ``nn.Module`` to use as that term, or a dict of
            keyword arguments for the repository's factory (e.g. ``{"perceptual": {"layers": ...}}``).
        constraints: bounds every weight must respect, here and when an agent sets them.
        skip_zero: terms with weight 0 are not computed (their last value becomes ``nan``).

    Terms that own a discriminator (``gan``) update it automatically inside ``forward`` while the
    module is in training mode and gradients are enabled; pass ``{"gan": {"auto_update": False}}``
    and call ``loss_fn.update_discriminators(fake, real)`` yourself to control the schedule.
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        terms: Mapping[str, nn.Module | Mapping[str, Any]] | None = None,
        constraints: WeightConstraints | None = None,
        skip_zero: bool = True,
    ):
        super().__init__()
        if not weights:
            raise WeightError("AgentWeightedLoss needs at least one loss name with a weight")
        check_loss_names(list(weights))
        terms = dict(terms or {})
        unknown_terms = [k for k in terms if k not in weights]
        if unknown_terms:
            raise WeightError(f"terms given for {unknown_terms}, which have no weight; names: {list(weights)}")
        self.names: list[str] = list(weights)
        self.constraints = constraints or WeightConstraints()
        self.skip_zero = skip_zero
        self._weights: dict[str, float] = {}
        self.set_weights(weights)  # validates before any term is built
        self.terms = nn.ModuleDict()
        for name in self.names:
            spec = terms.get(name)
            if isinstance(spec, nn.Module):
                self.terms[name] = spec
            else:
                if spec is not None and not isinstance(spec, Mapping):
                    raise WeightError(f"terms[{name!r}] must be an nn.Module or a dict of options, got {type(spec).__name__}")
                try:
                    key = resolve_loss_name(name)
                except KeyError as e:
                    raise WeightError(str(e.args[0])) from None
                try:
                    self.terms[name] = create_loss(key, **dict(spec or {}))
                except TypeError as e:  # a wrong option name: say which term it was for
                    raise WeightError(f"bad options for loss {name!r}: {e}") from e
        self._last: dict[str, torch.Tensor | None] = {n: None for n in self.names}

    # -- weights -----------------------------------------------------------------------------
    @property
    def weights(self) -> WeightsView:
        """The current weights, by name, in the order given at construction (a read-only copy:
        ``loss_fn.weights["l1"] = 5`` raises and says to use ``set_weights``)."""
        return WeightsView(self._weights)

    @weights.setter
    def weights(self, value: Mapping[str, float]) -> None:
        self.set_weights(value)

    def set_weights(self, weights: Mapping[str, float], *, partial: bool = False) -> None:
        """Replace the weights (or some of them, with ``partial=True``) after validating them.

        Raises ``WeightError`` for unknown names, missing names, non-finite, negative or
        all-zero weights, or weights outside ``constraints``; the old weights are then kept.
        """
        checked = validate_weights(weights, self.names, require_all=not partial)
        merged = {**self._weights, **checked} if partial else checked
        validate_weights(merged, self.names)
        self.constraints.check_bounds(merged)
        self._weights = {n: merged[n] for n in self.names}

    # -- computation ---------------------------------------------------------------------------
    def forward(self, pred: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
        total: torch.Tensor | None = None
        train_discriminators = self.training and torch.is_grad_enabled()
        for name in self.names:
            w = self._weights[name]
            term = self.terms[name]
            if w == 0.0 and self.skip_zero:
                self._last[name] = None
                continue
            if train_discriminators and getattr(term, "auto_update", False):
                term.discriminator_step(pred.detach(), None if target is None else target.detach())
            value = term(pred, target)
            self._last[name] = value.detach()
            total = w * value if total is None else total + w * value
        assert total is not None  # validate_weights guarantees a positive weight
        return total

    def update_discriminators(self, fake: torch.Tensor, real: torch.Tensor | None) -> dict[str, float]:
        """One optimiser step of every discriminator-owning term; returns their losses by name."""
        out = {}
        for name, term in self.terms.items():
            step: Callable[..., Any] | None = getattr(term, "discriminator_step", None)
            if step is not None and self._weights[name] > 0:
                out[name] = float(step(fake.detach(), None if real is None else real.detach()))
        return out

    @property
    def last_values(self) -> dict[str, float]:
        """Unweighted value of each term at the last forward (``nan`` for skipped terms).

        Reading this synchronises with the device; it is meant for logging, not every step.
        """
        return {n: (float("nan") if v is None else float(v)) for n, v in self._last.items()}

    @property
    def diverged(self) -> bool:
        """Whether a term computed at the last forward was NaN or infinite (synchronises with the device)."""
        return any(v is not None and not bool(torch.isfinite(v)) for v in self._last.values())

    # -- state -----------------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"names": list(self.names), "weights": dict(self._weights)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if list(state.get("names", [])) != self.names:
            raise WeightError(f"checkpoint has loss names {state.get('names')}, this loss has {self.names}")
        self.set_weights(state["weights"])

    def extra_repr(self) -> str:
        return ", ".join(f"{n}={w:g}" for n, w in self._weights.items())
