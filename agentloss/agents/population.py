"""``PopulationAgent``: random explore, measured exploit — the equal-compute baseline of the guided agent.

Population-based training (PBT) in its smallest form: at every stage end "keep" and ``trials``
random multiplicative perturbations of the current weights (a log-uniform factor in
``[1/step, step]`` for each tunable weight) are trained for ``trial_steps`` iterations from the same
snapshot on the same batches (``context.trial``, the scheduler's ``SnapshotTrials``), and the best
of them by the primary objective becomes the next stage's weights. It spends exactly the guided
agent's trial budget (``trials: 2, trial_steps: 60, step: 2.0`` = keep + 2 candidates of 60
iterations each per stage end) but proposes without looking at the history, so comparing the two
measures what the guided agent's measured effects and ranking add over blind search.

Choices, the same as the guided agent's where it has one:

* **primary objective and guards**: :meth:`GuidedProposer.objectives` — the first objective that is
  not a fidelity metric (or ``primary``); PSNR-like objectives guarded 0.2 below S0, SSIM-like 0.01
  (or ``guards``; ``{}`` switches the guard off);
* **tunable weights**: :meth:`GuidedProposer.tunable` — every non-zero weight except the largest
  initial one (the anchor that sets the loss scale; scaling every weight together is, under Adam,
  almost no change) — or ``tune``. A term that is off (weight 0) counts as sitting at the
  constraints' ``step_floor``: a factor above 1 switches it on at ``step_floor x factor``, one below
  leaves it off (so about half the candidates try it);
* **fidelity guard**: a candidate whose trial ends beyond a guard's floor, and worse on that guard
  than "keep" in the same trial, is not chosen (so while a floor is broken, only candidates that
  mend it may win);
* **ties**: "keep" wins ties and wins when no candidate measured strictly better; among equal
  candidates the first drawn.

Candidates lie within the constraints: each perturbed weight is clipped into
``constraints.allowed_range`` (its bounds and the per-stage move limit from the current weight).
The RNG (numpy ``default_rng(seed)``) is in ``state_dict``, so a resumed run draws what the
uninterrupted one would. No language model; the arithmetic takes microseconds beside the trials.

Example (a fake trial function in place of the scheduler's):
    >>> from agentloss.prompts import sample_context
    >>> ctx = sample_context()
    >>> ctx.trial = lambda cands, steps: [{"niqe": 5.0 - 0.1 * i, "psnr": 30.0} for i in range(len(cands))]
    >>> d = PopulationAgent(seed=0, guards={}).propose(ctx)
    >>> d.info["chosen"], d.weights == d.info["candidates"][2]["weights"]
    (2, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .base import BaseAgent, Decision, DecisionContext
from .proposer import GuidedProposer

__all__ = ["PopulationAgent"]


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class PopulationAgent(BaseAgent):
    """See the module docstring.

    Args:
        trials: random candidates tried besides "keep" at each stage end (>= 1).
        trial_steps: iterations per trial (``None``: the ``SnapshotTrials`` default).
        step: the largest multiplicative perturbation per weight (> 1; the constraints' ``max_step``
            limits it further).
        seed: the RNG seed (runs with the same seed draw the same factors).
        primary: the objective to improve (default: the first that is not a fidelity metric).
        guards: ``{objective: budget}`` below S0 (default: 0.2 for PSNR-like, 0.01 for SSIM-like
            objectives; ``{}``: no guard).
        tune: the weights to perturb (default: every non-zero weight but the largest initial one).
    """

    name = "population"
    thread_safe = True  # reads only its context and its own RNG; with trials the scheduler asks synchronously

    def __init__(self, trials: int = 2, trial_steps: int | None = 60, step: float = 2.0, seed: int | None = 0,
                 primary: str | None = None, guards: Mapping[str, float] | None = None,
                 tune: list[str] | None = None):
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ValueError(f"trials must be an integer >= 1 (random candidates besides 'keep'), got {trials!r}")
        if trial_steps is not None and (isinstance(trial_steps, bool) or not isinstance(trial_steps, int)
                                        or trial_steps < 1):
            raise ValueError(f"trial_steps must be an integer >= 1 or None, got {trial_steps!r}")
        if not (isinstance(step, (int, float)) and math.isfinite(step) and step > 1.0):
            raise ValueError(f"step must be a finite factor > 1, got {step!r}")
        self.trials = trials
        self.trial_steps = trial_steps
        self.step = float(step)
        self.seed = seed
        # The guided agent's choice of primary, guards and tunable weights, reused rather than re-derived.
        self.proposer = GuidedProposer(primary=primary, guards=guards, tune=tune)
        self._rng = np.random.default_rng(seed)
        self.decisions = 0

    # -- candidates ----------------------------------------------------------------------------
    def draw(self, ctx: DecisionContext) -> list[dict[str, float]]:
        """``trials`` perturbations of the current weights, each inside ``constraints.allowed_range``.

        Always draws ``trials x len(tunable)`` numbers, so the RNG's position depends only on how
        many decisions were made.
        """
        cur = dict(ctx.current_weights)
        tune = self.proposer.tunable(ctx)
        span = math.log(ctx.constraints.effective_step(self.step))
        factors = self._rng.uniform(-span, span, size=(self.trials, len(tune)))
        floor = ctx.constraints.step_floor
        out = []
        for row in factors:
            w = dict(cur)
            for name, f in zip(tune, row):
                lo, hi = ctx.constraints.allowed_range(name, cur[name])
                if cur[name] > 0:
                    w[name] = min(max(cur[name] * math.exp(float(f)), lo), hi)
                elif f > 0:  # a term that is off sits at the floor: a factor above 1 switches it on
                    w[name] = min(max(floor * math.exp(float(f)), lo), hi)
            out.append(w)
        return out

    def propose(self, context: DecisionContext) -> Decision:
        self.decisions += 1
        current = dict(context.current_weights)
        candidates = self.draw(context)  # drawn before anything can fail: the RNG advances the same way
        if context.trial is None:
            return Decision(weights=current, fallback=(
                "the population agent compares candidates by snapshot trials, and this scheduler has none "
                "(StageScheduler(..., trials=SnapshotTrials(optimizer, batches))): previous weights kept"))
        primary, guards = self.proposer.objectives(context)
        tried = [current, *candidates]
        try:
            scores = context.trial([dict(w) for w in tried], self.trial_steps)
        except Exception as e:  # noqa: BLE001 - a failed trial keeps the weights; the scheduler records why
            return Decision(weights=current, fallback=f"snapshot trials failed ({type(e).__name__}: {e}): weights kept",
                            info={"candidates": [{"weights": w} for w in tried]})
        if len(scores) != len(tried):
            return Decision(weights=current, fallback=f"trials returned {len(scores)} results for {len(tried)} candidates")
        floors = self._floors(context, guards)
        p, hib = primary.name, primary.higher_is_better
        base = scores[0].get(p)
        rows: list[dict[str, Any]] = []
        for i, (w, sc) in enumerate(zip(tried, scores)):
            v = sc.get(p)
            improvement = ((v - base) if hib else (base - v)) if _finite(v) and _finite(base) else None
            rows.append({"weights": dict(w), "scores": dict(sc), "improvement": improvement,
                         "vetoed": self._veto(sc, scores[0], floors, context) if i else None})
        eligible = [i for i, r in enumerate(rows) if i and r["vetoed"] is None and r["improvement"] is not None
                    and r["improvement"] > 0.0]
        # Strictly better than keeping, first drawn on ties (max returns the first maximum).
        chosen = max(eligible, key=lambda i: rows[i]["improvement"]) if eligible else 0
        action = "keep the current weights" if chosen == 0 else f"candidate {chosen}: " + self._moves(current, tried[chosen])
        if chosen:
            thoughts = (f"{action}; in the trial {p} {rows[chosen]['scores'][p]:.4g} vs {base:.4g} keeping "
                        f"(best of {len(candidates)} random candidates)")
        else:
            thoughts = f"no random candidate beat keeping on {p} in the trial ({base if _finite(base) else 'n/a'})"
        info = {"primary": p, "primary_higher_is_better": hib, "floors": floors, "chosen": chosen,
                "candidates": rows, "steps": self.trial_steps}
        return Decision(weights=dict(tried[chosen]), thoughts=thoughts, info=info, action=action)

    @staticmethod
    def _floors(ctx: DecisionContext, guards: Mapping[str, float]) -> dict[str, float]:
        """Each guard's floor (S0 value minus its budget, in the objective's direction)."""
        infos = {o.name: o for o in ctx.objectives}
        s0 = ctx.history[0].scores if ctx.history else {}
        out = {}
        for g, budget in guards.items():
            ref = s0.get(g)
            if _finite(ref):
                out[g] = ref - budget if infos[g].higher_is_better else ref + budget
        return out

    @staticmethod
    def _veto(sc: Mapping[str, Any], keep: Mapping[str, Any], floors: Mapping[str, float],
              ctx: DecisionContext) -> str | None:
        infos = {o.name: o for o in ctx.objectives}
        for g, floor in floors.items():
            v, k = sc.get(g), keep.get(g)
            if not _finite(v):
                return f"{g} could not be scored in the trial"
            hib = infos[g].higher_is_better
            beyond = v < floor if hib else v > floor
            worse_than_keep = _finite(k) and ((v < k) if hib else (v > k))
            if beyond and (worse_than_keep or not _finite(k)):
                return f"in the trial {g} reached {v:.4g}, beyond its floor {floor:.4g}"
        return None

    @staticmethod
    def _moves(cur: Mapping[str, float], new: Mapping[str, float]) -> str:
        parts = []
        for k, v in new.items():
            if cur[k] == 0 and v > 0:
                parts.append(f"{k} on at {v:.3g}")
            elif cur[k] > 0 and abs(math.log(v / cur[k])) > 1e-9:
                f = v / cur[k]
                parts.append(f"{k} x{f:.3g}" if f >= 1 else f"{k} /{1 / f:.3g}")
        return ", ".join(parts) or "no change"

    def check(self, loss_names: list[str], objective_names: list[str]) -> None:
        p = self.proposer
        if not objective_names:
            raise ValueError("the population agent picks candidates by measured scores, and this run has only text "
                             "feedback: add a numeric objective, or use the paper's agent (type: llm), which reads text")
        missing = [f"objective {n!r}" for n in [p.primary, *(p.guards or {})] if n and n not in objective_names]
        missing += [f"loss {n!r}" for n in p.tune or [] if n not in loss_names]
        if missing:
            raise ValueError(f"the population agent names {', '.join(missing)}, which this run does not have "
                             f"(objectives: {objective_names}; losses: {loss_names})")

    # -- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "decisions": self.decisions, "rng": self._rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = state.get("seed", self.seed)
        self.decisions = int(state.get("decisions", 0))
        self._rng.bit_generator.state = state["rng"]

    def describe(self) -> dict[str, Any]:
        p = self.proposer
        return {**super().describe(), "trials": self.trials, "trial_steps": self.trial_steps, "step": self.step,
                "seed": self.seed, "primary": p.primary, "guards": p.guards, "tune": p.tune}
