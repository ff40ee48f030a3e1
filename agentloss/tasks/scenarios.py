"""Named scenarios for comparing weighting agents: where does an agent earn its keep?

One table (:data:`SCENARIOS`, read with :func:`get_scenario`), like pyiqa's one metric table: each
entry is plain data — the loss set and its initial weights, the weight constraints, the goal in
words (``needs``) and the objectives the agent is shown, the final evaluation metrics, and the
**primary endpoint** (the goal metric the paired statistics are computed on). The benchmark
``benchmarks/bench_scenarios.py`` runs them on the quality benchmark's ×2 SR set-up.

* ``paper-start``: the paper's L1:FFT:GAN 1:0.1:0.01 (the quality benchmark itself);
* ``gan-x10``: GAN ×10 (0.1), a mis-set start that costs NIQE and PSNR (+4.6 %, −0.47 dB);
* ``gan-div10-fft-x10``: GAN ÷10 and FFT ×10, mis-set the other way;
* ``mscn-off``: a useful term (``mscn``, L1 between the MSCN maps NIQE is built on) present but
  switched (nearly) off: it starts at the constraints' ``step_floor`` (see below);
* ``mscn-zero``: the same term listed at weight 0 (switched off); the guided and population agents
  may switch a zero weight on at ``step_floor x max_step`` (``agentloss.agents.proposer.switch_on_value``),
  and this scenario's ``step_floor`` (0.01) puts that at 0.02;
* ``text-goal``: the goal given only in words, the agent shown only a text critic
  (``agentloss.feedback.HighFrequencyCritic``), judged on a statistic it never sees
  (:func:`hf_gap`, the distance of the critic's high-frequency ratio from 1).

Why ``mscn-off`` starts at the floor and not at 0: it was defined (and run) before the guided and
population agents could switch a term on; at the default ``step_floor`` (1e-3, two orders below the
0.1 where MSCN helped in the scan) a ×2 move per stage can reach 0.128 by the last decision.
``mscn-zero`` is the same question with the term truly off.

Example:
    >>> s = get_scenario("gan-x10")
    >>> s.initial_weights["gan"], s.primary.metric, s.primary.lower_is_better
    (0.1, 'niqe', True)
    >>> s.weight_constraints().max_step
    2.0
    >>> get_scenario("mscn-off").initial_weights["mscn"] == get_scenario("mscn-off").weight_constraints().step_floor
    True
    >>> sorted(SCENARIOS)[:2]
    ['gan-div10-fft-x10', 'gan-x10']
"""

from __future__ import annotations

import difflib
import importlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import torch

from ..constraints import WeightConstraints

__all__ = ["PAPER_START", "SCENARIOS", "Endpoint", "Scenario", "get_scenario", "hf_gap"]

PAPER_START: Mapping[str, float] = MappingProxyType({"l1": 1.0, "fft": 0.1, "gan": 0.01})
# The quality benchmark's limits: weights in [0, 10], at most x2 per stage, zero grows from 1e-3.
BASE_CONSTRAINTS: Mapping[str, Any] = MappingProxyType({"max_weight": 10.0, "max_step": 2.0, "step_floor": 1e-3})
MSCN_ZERO_FLOOR = 0.01  # mscn-zero's step_floor: switched on at 0.02, two orders above the default's 0.002
NIQE_GOAL = "Lower NIQE (more natural-looking images) while losing at most 0.2 dB PSNR_Y."


@dataclass(frozen=True)
class Endpoint:
    """A metric of the final evaluation and its direction."""

    metric: str
    lower_is_better: bool


@dataclass(frozen=True)
class Scenario:
    """One entry of :data:`SCENARIOS` (see the module docstring).

    Attributes:
        initial_weights: the loss set and its start weights (what Fixed keeps).
        constraints: ``WeightConstraints`` keyword arguments (see :meth:`weight_constraints`).
        needs: the goal in words, given to agents that read text.
        objectives: the numeric objectives scored on the probe and shown to the agent.
        text_sources: text feedback shown to the agent (``agentloss.feedback`` class names).
        metrics: the final evaluation's metrics (the same for every method).
        primary: the goal metric: the paired statistics' primary endpoint.
        fidelity: the metric that must not fall (reported beside the primary), if any.
        hidden: evaluation statistics the agent never sees (the endpoint of a text-only goal).
        requires: ``"module:Name"`` a scenario needs and that may not exist yet.
    """

    name: str
    description: str
    initial_weights: Mapping[str, float]
    needs: str
    objectives: tuple[str, ...]
    primary: Endpoint
    fidelity: Endpoint | None = Endpoint("psnr_y", lower_is_better=False)
    constraints: Mapping[str, Any] = field(default_factory=lambda: BASE_CONSTRAINTS)
    text_sources: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ("niqe", "psnr_y")
    hidden: tuple[str, ...] = ()
    requires: str | None = None
    notes: str = ""

    def weight_constraints(self) -> WeightConstraints:
        """A fresh ``WeightConstraints`` (mutable: each run gets its own)."""
        return WeightConstraints(**{k: (dict(v) if isinstance(v, Mapping) else v) for k, v in self.constraints.items()})

    def missing(self) -> str | None:
        """Why this scenario cannot run in this installation (``requires`` absent), else ``None``."""
        if self.requires is None:
            return None
        module, _, attr = self.requires.partition(":")
        try:
            ok = hasattr(importlib.import_module(module), attr)
        except ImportError:
            ok = False
        return None if ok else f"scenario {self.name!r} needs {module}.{attr}, which this installation lacks"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "initial_weights": dict(self.initial_weights),
                "constraints": dict(self.constraints), "needs": self.needs, "objectives": list(self.objectives),
                "text_sources": list(self.text_sources), "metrics": list(self.metrics),
                "primary": {"metric": self.primary.metric, "lower_is_better": self.primary.lower_is_better},
                "fidelity": None if self.fidelity is None else {"metric": self.fidelity.metric,
                                                                 "lower_is_better": self.fidelity.lower_is_better},
                "hidden": list(self.hidden), "requires": self.requires, "notes": self.notes}


def hf_gap(restored: Sequence[torch.Tensor], references: Sequence[torch.Tensor]) -> float:
    """The ``text-goal`` scenario's hidden statistic: ``|log high_frequency_ratio(restored, references)|``.

    :func:`agentloss.feedback.high_frequency_ratio` is what ``HighFrequencyCritic`` puts into words
    (1.0 = as much fine detail as the reference; below = over-smoothed, what L1 training gives;
    above = grain or artefacts); its log distance from 1 is lower-is-better either way.

    >>> x = torch.rand(3, 32, 32)
    >>> y = 0.5 * x
    >>> hf_gap([x], [x]), round(hf_gap([y], [x]), 3), round(hf_gap([x], [y]), 3)  # a quarter, or 4x, the energy
    (0.0, 1.386, 1.386)
    """
    from ..feedback import high_frequency_ratio

    ratio = high_frequency_ratio(restored, references)
    if not ratio > 0:
        return math.inf  # a flat output: no fine detail at all
    return abs(math.log(ratio))


def _scenarios(entries: Sequence[Scenario]) -> Mapping[str, Scenario]:
    table = {s.name: s for s in entries}
    for s in entries:
        floor = s.weight_constraints()  # every entry builds: a typo fails at import, not mid-run
        floor.check_bounds(s.initial_weights)
        if not all(math.isfinite(w) and w >= 0 for w in s.initial_weights.values()):
            raise ValueError(f"scenario {s.name!r}: weights must be finite and >= 0")
    return MappingProxyType(table)


#: name -> :class:`Scenario` (read-only).
SCENARIOS: Mapping[str, Scenario] = _scenarios([
    Scenario("paper-start", "the paper's weighting L1:FFT:GAN 1:0.1:0.01 (the quality benchmark)",
             PAPER_START, NIQE_GOAL, ("niqe", "psnr_y"), Endpoint("niqe", True)),
    Scenario("gan-x10", "GAN weight x10 (0.1): a mis-set start that costs NIQE and PSNR_Y",
             {**PAPER_START, "gan": 0.1}, NIQE_GOAL, ("niqe", "psnr_y"), Endpoint("niqe", True),
             notes="headroom scan (one seed, last iterate): constant GAN x10 +4.6 % NIQE, -0.47 dB"),
    Scenario("gan-div10-fft-x10", "GAN /10 (0.001) and FFT x10 (1.0): mis-set the other way",
             {"l1": 1.0, "fft": 1.0, "gan": 0.001}, NIQE_GOAL, ("niqe", "psnr_y"), Endpoint("niqe", True),
             notes="headroom scan: FFT x10 +1.1 % NIQE; GAN lowered helps slightly"),
    Scenario("mscn-off", "a useful term (mscn) present but switched off: it starts at the constraints' step_floor",
             {**PAPER_START, "mscn": BASE_CONSTRAINTS["step_floor"]}, NIQE_GOAL, ("niqe", "psnr_y"),
             Endpoint("niqe", True),
             notes="mscn scan (seeds 40-41, replacing FFT): mscn 0.03-1.0 lowered NIQE 1.3-1.7 % at -0.06 to -0.36 dB; "
                   "at weight 0 no agent could switch it on (multiplicative moves), hence the floor"),
    Scenario("mscn-zero", "a useful term (mscn) listed at weight 0: agents may switch it on from the constraints' floor",
             {**PAPER_START, "mscn": 0.0}, NIQE_GOAL, ("niqe", "psnr_y"), Endpoint("niqe", True),
             constraints={**BASE_CONSTRAINTS, "step_floor": MSCN_ZERO_FLOOR},
             notes="step_floor 0.01: a term that is off may be switched on at 0.02 (floor x max_step), then move x2 "
                   "a stage (0.04, 0.08, ...) into the range where the mscn scan found it useful (0.03-1.0)"),
    Scenario("text-goal", "the goal only in words; the agent sees a text critic, never the statistic it is judged on",
             PAPER_START,
             "The restored images look too smooth and plasticky: bring back fine texture and sharp detail, as "
             "the critic describes, without adding noise, ringing or artefacts.",
             (), Endpoint("hf_gap", True), fidelity=Endpoint("psnr_y", lower_is_better=False),
             text_sources=("HighFrequencyCritic",), metrics=("niqe", "psnr_y", "hf_gap"), hidden=("hf_gap",),
             requires="agentloss.feedback:HighFrequencyCritic",
             notes="hf_gap = |log agentloss.feedback.high_frequency_ratio(output, reference)| per evaluation image, "
                   "averaged; only agents that read text (type llm) can run it: guided and population refuse "
                   "text-only runs"),
])


def get_scenario(name: str) -> Scenario:
    """The scenario called ``name``; an unknown name raises ``KeyError`` with the closest names."""
    try:
        return SCENARIOS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(SCENARIOS), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise KeyError(f"unknown scenario {name!r}{hint} (known: {', '.join(SCENARIOS)})") from None
