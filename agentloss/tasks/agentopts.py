"""Whether a config's agent options fit the agent's type hints (for the run config's checks).

>>> option_problems("fixed", {"weights": [1, 2]})
['weights: Input should be a valid dictionary']
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import ConfigDict, ValidationError

__all__ = ["option_problems"]


def option_problems(kind: str, options: Mapping[str, Any]) -> list[str]:
    """Options whose value does not fit the agent's type hints (``weights: [1, 2]`` for a mapping)."""
    import typing
    from dataclasses import is_dataclass

    from pydantic import TypeAdapter

    from ..agents import factory

    owners = [factory.AGENT_REGISTRY[kind]]
    if kind == "guided":  # its proposer's settings arrive as **options
        from ..agents.proposer import GuidedProposer

        owners.append(GuidedProposer)
    hints: dict[str, Any] = {}
    for owner in owners:
        try:
            hints.update(typing.get_type_hints(owner if is_dataclass(owner) else owner.__init__))
        except Exception:  # noqa: BLE001, S112 - hints that cannot be resolved: the agent checks its options itself
            continue
    problems = []
    for name, value in options.items():
        if name in hints:
            try:
                TypeAdapter(hints[name], config=ConfigDict(arbitrary_types_allowed=True)).validate_python(value)
            except ValidationError as e:
                problems.append(f"{name}: {e.errors()[0]['msg']}")
            except Exception:  # noqa: BLE001, S112 - a hint pydantic cannot check (a protocol, a class)
                continue
    return problems
