"""The loss repository: one registry of named, differentiable loss terms and one factory.

A term is an ``nn.Module`` whose ``forward(pred, target)`` returns a scalar tensor. Register your
own with the decorator; ``AgentWeightedLoss`` then accepts its name like any built-in one.

Example:
    >>> import torch
    >>> @register_loss("l1_x2", description="twice the L1 distance")
    ... class TwiceL1(torch.nn.Module):
    ...     def forward(self, pred, target):
    ...         return 2 * (pred - target).abs().mean()
    >>> create_loss("l1_x2")(torch.zeros(1, 3, 4, 4), torch.ones(1, 3, 4, 4)).item()
    2.0
    >>> _ = LOSS_REGISTRY.pop("l1_x2")
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from torch import nn

T = TypeVar("T", bound=Callable[..., nn.Module])


Role = Literal["fidelity", "texture", "adversarial", "statistics"]
ROLES: tuple[str, ...] = ("fidelity", "texture", "adversarial", "statistics")


@dataclass(frozen=True)
class LossSpec:
    """A registered term: how to build it, and the one table of what is known about it.

    ``role`` says what the term pushes the result towards (fidelity to the reference, texture,
    adversarial realism, natural-image statistics): the guided agent reads it to expect a move's
    direction before it is measured. ``description`` says what it computes; ``effect`` how it changes
    the results, in words for the prompt (``description`` when not given). ``downloads`` names the
    weights it fetches on first use (``None``: it downloads nothing).
    """

    name: str
    factory: Callable[..., nn.Module]
    role: Role | None = None
    description: str = ""
    effect: str = ""
    downloads: str | None = None
    aliases: tuple[str, ...] = field(default_factory=tuple)

    @property
    def prompt_text(self) -> str:
        return self.effect or self.description


LOSS_REGISTRY: dict[str, LossSpec] = {}
_ALIASES: dict[str, str] = {}


def register_loss(
    name: str,
    *,
    role: Role | None = None,
    description: str = "",
    effect: str = "",
    downloads: str | None = None,
    aliases: tuple[str, ...] = (),
    overwrite: bool = False,
) -> Callable[[T], T]:
    """Class or factory decorator adding a term to the repository under ``name`` (and ``aliases``)."""
    key = name.lower()
    if role is not None and role not in ROLES:
        raise ValueError(f"role must be one of {ROLES} or None, got {role!r}")

    def wrap(factory: T) -> T:
        if not overwrite and (key in LOSS_REGISTRY or key in _ALIASES):
            raise ValueError(f"a loss named {name!r} is already registered; pass overwrite=True to replace it")
        LOSS_REGISTRY[key] = LossSpec(key, factory, role, description or (factory.__doc__ or "").strip().split("\n")[0],
                                      effect, downloads, tuple(a.lower() for a in aliases))
        for alias in aliases:
            _ALIASES[alias.lower()] = key
        return factory

    return wrap


def loss_spec(name: str) -> LossSpec | None:
    """The registered spec of ``name`` (or of the term it is an alias of); ``None`` when unknown.

    Example:
        >>> loss_spec("L2").name, loss_spec("gan").role, loss_spec("no_such_term")
        ('mse', 'adversarial', None)
    """
    key = _ALIASES.get(name.lower(), name.lower())
    return LOSS_REGISTRY.get(key)


def resolve_loss_name(name: str) -> str:
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in LOSS_REGISTRY:
        raise KeyError(f"no loss named {name!r} in the repository; available: {sorted(LOSS_REGISTRY)}")
    return key


def create_loss(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered term ``name`` with ``kwargs``."""
    return LOSS_REGISTRY[resolve_loss_name(name)].factory(**kwargs)


def list_losses() -> list[str]:
    return sorted(LOSS_REGISTRY)
