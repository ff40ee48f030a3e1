"""The guided agent's numeric half: measured effects, ranked moves, a fidelity guard and snapshot trials.

1. **Facts** — :func:`~agentloss.agents.effects.estimate_effects` fits, from the whole history, how
   the primary objective and each guarded one moved per e-fold change of each tunable weight, with
   standard errors, plus the drift at constant weights.
2. **Moves** — keep, or move one tunable weight one step up or down (guarded coordinate search over
   log-weights). Each move's effect is predicted from the facts; a move never tried gets a wide
   uncertainty, an optimism bonus, and for the guarded objectives the direction its loss's role
   (the loss repository's table) implies: texture terms cost fidelity. Among equally promising
   untried moves the one safest for the guards goes first, then the measurements lead.
3. **Guard** — each guarded objective (PSNR/SSIM by default, ``budget`` below its S0 value) must
   stay above its floor in a pessimistic prediction; moves that would break it are vetoed (never a
   move towards fidelity: lowering a texture term or raising a fidelity one), within one noise unit
   of the floor the moves that help the guard rank first, and while the floor is broken only moves
   back towards the initial weights (or towards more fidelity) are offered.
4. **Trials** — with ``SnapshotTrials`` in the scheduler, "keep" and the best moves are trained for
   a few iterations from a snapshot and re-ranked by the measured, paired improvement; a move
   measured worse than keeping is never offered. With ``noise_trials``, "keep" is trained again on
   fresh batches; the spread of those repeats (pooled over the run's stage ends, read back from the
   recorded decisions) is the trial noise, and a move must beat keeping by ``min_gain`` times it:
   a gain at the noise level is a coin flip, not a measurement.

Everything here is arithmetic (< 1 ms without trials) and deterministic. The limits come from the
constraints object (``effective_step``, ``within_bounds``); nothing is re-derived.

Example:
    >>> from agentloss.prompts.sample import sample_context
    >>> opts = GuidedProposer().options(sample_context())  # psnr 24.9 is near its floor 24.8: repair leads
    >>> [(c.label, c.action) for c in opts.shown], [c.vetoed is not None for c in opts.ranked]
    ([('A', 'lower gan /1.6'), ('B', 'keep the current weights')], [False, False, True])
    >>> [c.action for c in GuidedProposer(guards={}).options(sample_context()).shown]
    ['raise gan x1.6', 'lower gan /1.6', 'keep the current weights']
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from ..losses.registry import loss_spec
from ..types import DecisionContext, ObjectiveInfo, StageRecord
from .effects import Effects, estimate_effects

__all__ = ["Candidate", "GuidedProposer", "Options", "is_fidelity_metric", "switch_on_value"]

_FIDELITY_METRICS = ("psnr", "ssim", "ms_ssim", "psnr_y", "ssim_y")


@dataclass
class Candidate:
    """One proposal: a label, new weights, the log-change per weight and predicted score changes."""

    label: str
    action: str
    weights: dict[str, float]
    log_change: dict[str, float]
    predicted: dict[str, float] = field(default_factory=dict)  # objective -> expected change
    uncertainty: dict[str, float] = field(default_factory=dict)  # objective -> standard error
    gain: float = 0.0  # expected improvement of the primary objective, in its noise units
    vetoed: str | None = None
    trial: dict[str, float | None] | None = None  # probe scores after a snapshot trial, if one ran


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def is_fidelity_metric(name: str) -> bool:
    """Whether an objective measures pixel fidelity to the reference (PSNR/SSIM and their variants)."""
    return name.lower() in _FIDELITY_METRICS or name.lower().startswith(("psnr", "ssim"))


def switch_on_value(ctx: DecisionContext, name: str, step: float) -> float:
    """What a term that is off (weight 0) is switched on at: one ``step`` above the constraints'
    ``step_floor``, as far as its bounds and the move limit allow (0: it may not be switched on)."""
    lo, hi = ctx.constraints.allowed_range(name, 0.0)
    return max(lo, min(ctx.constraints.step_floor * ctx.constraints.effective_step(step), hi))


def _changes(history: list[StageRecord], name: str) -> int:
    """How many stages changed weight ``name`` (a move measured that often has a fitted effect)."""
    return sum(1 for a, b in pairwise(history)
               if abs(math.log(max(b.weights.get(name, 0), 1e-12)) - math.log(max(a.weights.get(name, 0), 1e-12)))
               > 1e-9)


def _recorded_noise(record: StageRecord) -> list[float]:
    """The trial-noise samples a guided decision recorded at this stage end (none if it ran no repeats)."""
    info = record.decision.info if record.decision is not None else {}
    trials = info.get("trials") if isinstance(info, Mapping) else None
    noise = trials.get("noise") if isinstance(trials, Mapping) else None
    samples = noise.get("samples") if isinstance(noise, Mapping) else None
    return list(samples) if isinstance(samples, list) else []


@dataclass
class Options:
    """What the proposer offers: ``shown`` (labelled A, B, ...), the full ``ranked`` list, the ``facts``
    behind them, and ``trials`` (what snapshot trials measured; ``None`` when none ran)."""

    shown: list[Candidate]
    ranked: list[Candidate]
    facts: dict[str, Any]
    trials: dict[str, Any] | None = None


@dataclass
class GuidedProposer:
    """Ranked weight moves for the next stage (see the module docstring).

    Args:
        primary: the objective to improve (default: the first that is not a fidelity metric).
        guards: ``{objective: budget}`` — how far below (or above, for lower-is-better) its S0
            value it may go (default: 0.2 for each PSNR-like objective, 0.01 for SSIM-like).
        tune: the weights that may move (default: all but the largest initial weight, which
            anchors the loss scale).
        step: the multiplicative move per stage (clipped further by the constraints' ``max_step``).
        noise: the primary objective's stage-to-stage noise (its units); gains are measured in it.
            Default: estimated from the history, at least 2 % of the S0 value.
        prior: for guarded objectives, the expected change (in noise units) of a move never tried,
            in its loss role's direction: adding texture terms costs PSNR at any scale.
        goal_prior: the same for the primary objective; 0 by default because whether a GAN or
            perceptual term helps NIQE depends on the scale (at toy scale a GAN term *raises* NIQE).
        explore: optimism per unit of standard error for little-tried moves.
        max_candidates: options shown (the best ranked, always including "keep").
        roles: loss name -> role, overriding the loss repository's table.
        trials: how many of the best moves to try from a snapshot besides "keep" (0 = no trials).
        trial_steps: iterations per trial (``None``: the ``SnapshotTrials`` default).
        noise_trials: extra trials of "keep" on fresh batches per stage end, measuring the trial
            noise (0 = none: any measured gain over keeping counts).
        min_gain: with a measured trial noise, how many times it a move's gain over keeping must
            exceed to be chosen.
    """

    primary: str | None = None
    guards: Mapping[str, float] | None = None
    tune: list[str] | None = None
    step: float = 1.6
    noise: float | None = None
    prior: float = 0.5
    goal_prior: float = 0.0
    explore: float = 0.3
    max_candidates: int = 3
    roles: Mapping[str, str] | None = None
    trials: int = 0
    trial_steps: int | None = None
    noise_trials: int = 0
    min_gain: float = 1.0

    def __post_init__(self) -> None:
        if self.step <= 1.0:
            raise ValueError(f"step must be > 1 (a multiplicative move), got {self.step}")
        if self.max_candidates < 2:
            raise ValueError(f"max_candidates must be >= 2, got {self.max_candidates}")
        if self.trials < 0 or self.noise_trials < 0:
            raise ValueError(f"trials and noise_trials must be >= 0, got {self.trials}, {self.noise_trials}")
        if self.noise_trials and not self.trials:
            raise ValueError("noise_trials measures the noise of snapshot trials: set trials >= 1 as well")
        if not (math.isfinite(self.min_gain) and self.min_gain >= 0):
            raise ValueError(f"min_gain must be a finite number >= 0, got {self.min_gain}")
        self.guards = None if self.guards is None else {str(k): float(v) for k, v in self.guards.items()}
        self.tune = None if self.tune is None else list(self.tune)
        self.step, self.prior, self.goal_prior = float(self.step), float(self.prior), float(self.goal_prior)
        self.explore, self.max_candidates, self.trials = float(self.explore), int(self.max_candidates), int(self.trials)
        self.noise_trials, self.min_gain = int(self.noise_trials), float(self.min_gain)
        self.roles = dict(self.roles or {})

    # -- what to improve, what to guard, what to move ----------------------------------------
    def objectives(self, ctx: DecisionContext) -> tuple[ObjectiveInfo, dict[str, float]]:
        """The primary objective and the guarded ones with their budgets."""
        infos = {o.name: o for o in ctx.objectives}
        if self.primary is not None:
            if self.primary not in infos:
                raise ValueError(f"primary objective {self.primary!r} is not scored; objectives: {sorted(infos)}")
            primary = infos[self.primary]
        else:
            primary = next((o for o in ctx.objectives if not is_fidelity_metric(o.name)), ctx.objectives[0])
        if self.guards is not None:
            guards = {k: v for k, v in self.guards.items() if k in infos and k != primary.name}
        else:
            guards = {o.name: (0.01 if "ssim" in o.name.lower() else 0.2) for o in ctx.objectives
                      if o.name != primary.name and is_fidelity_metric(o.name)}
        return primary, guards

    def tunable(self, ctx: DecisionContext) -> list[str]:
        """The weights that may move: ``tune``, or every term but the anchor (the largest initial weight)
        that is on or may be switched on (a zero weight the constraints let rise; pin a term off with
        per-loss bounds ``(0, 0)``)."""
        if self.tune is not None:
            return [n for n in self.tune if n in ctx.current_weights]
        anchor = max(ctx.initial_weights, key=lambda n: ctx.initial_weights[n])
        return [n for n in ctx.loss_names if n != anchor
                and (ctx.current_weights.get(n, 0.0) > 0 or switch_on_value(ctx, n, self.step) > 0)]

    def _noise(self, history: list[StageRecord], name: str, eff: Effects, budget: float | None) -> float:
        """Stage-to-stage noise assumed for an objective: at least a quarter of a guard's budget, or
        2 % of the primary's S0 value (NIQE 6 -> 0.12), or what the fit's residuals show if larger."""
        if budget is not None:
            floor = budget / 4
        elif self.noise is not None:
            return float(self.noise)
        else:
            s0 = history[0].scores.get(name)
            floor = 0.02 * abs(s0) if _finite(s0) and s0 != 0 else 1e-6
        return max(floor, eff.residual_sd if eff.n > 2 else 0.0)

    def expected_sign(self, loss: str, objective: ObjectiveInfo) -> int:
        """+1 if raising ``loss`` is expected to improve ``objective``, -1 if to worsen it, 0 unknown."""
        role = (self.roles or {}).get(loss) or getattr(loss_spec(loss), "role", None)
        if role is None or role == "statistics":  # statistics terms: no direction assumed before measuring
            return 0
        fidelity_metric = is_fidelity_metric(objective.name) or objective.needs_reference
        if role == "fidelity":
            return 1 if fidelity_metric else -1
        return -1 if fidelity_metric else 1

    @staticmethod
    def _guard_state(history: list[StageRecord], guards: Mapping[str, float],
                     infos: Mapping[str, ObjectiveInfo]) -> dict[str, dict[str, Any]]:
        """Each guard's S0 value, newest value, floor and headroom (guards never scored are left out)."""
        s0 = history[0]
        state = {}
        for g, budget in guards.items():
            hib = infos[g].higher_is_better
            ref = s0.scores.get(g)
            # The newest finite score (a failed objective at this stage keeps the last known level).
            now = next((r.scores[g] for r in reversed(history) if _finite(r.scores.get(g))), None)
            if not _finite(ref) or now is None:
                continue
            floor = ref - budget if hib else ref + budget
            headroom = (now - floor) if hib else (floor - now)
            state[g] = {"s0": ref, "now": now, "floor": floor, "headroom": headroom, "broken": headroom < 0}
        return state

    # -- ranking ------------------------------------------------------------------------------
    def candidates(self, ctx: DecisionContext) -> tuple[list[Candidate], dict[str, Any]]:
        """All proposals, ranked best first (vetoed ones last), and the facts behind them."""
        history = list(ctx.history)
        primary, guards = self.objectives(ctx)
        tune = self.tunable(ctx)
        cur = dict(ctx.current_weights)
        step = ctx.constraints.effective_step(self.step)
        ls = math.log(step)
        names = [primary.name, *guards]
        floor = ctx.constraints.step_floor
        effects = {n: estimate_effects(history, n, tune, ridge=0.5, noise_floor=0.0, weight_floor=floor) for n in names}
        noise = {n: self._noise(history, n, effects[n], guards.get(n)) for n in names}
        infos = {o.name: o for o in ctx.objectives}
        moves: list[tuple[str, dict[str, float], dict[str, float]]] = [("keep the current weights", {}, {})]
        for t in tune:
            if cur.get(t, 0.0) > 0:
                moves.append((f"raise {t} x{step:.3g}", {t: ls}, {t: cur[t] * step}))
                moves.append((f"lower {t} /{step:.3g}", {t: -ls}, {t: cur[t] / step}))
            elif (on := switch_on_value(ctx, t, self.step)) > 0:  # off: the one move is on, from the floor
                moves.append((f"switch on {t} at {on:.3g}", {t: math.log(on / floor)}, {t: on}))
        guard_state = self._guard_state(history, guards, infos)
        broken = any(v["broken"] for v in guard_state.values())
        # Repair starts before the floor: within one noise unit of it, moves that help the guards lead.
        near = any(st["headroom"] < noise[g] for g, st in guard_state.items())
        tried = {t: _changes(history, t) for t in tune}
        out: list[Candidate] = []
        for action, dx, new_w in moves:
            c = Candidate("", action, {**cur, **new_w}, dict(dx))
            for n in names:
                c.predicted[n], c.uncertainty[n] = self._predict(effects[n], dx, n in guards, infos[n], noise[n],
                                                                 tried, len(tune), ls)
            keep = out[0] if out else c
            d = c.predicted[primary.name] - keep.predicted[primary.name]
            improvement = d if primary.higher_is_better else -d
            c.gain = improvement / noise[primary.name] + self.explore * sum(1.0 / (1 + tried.get(t, 0)) for t in dx)
            c.vetoed = self._veto(c, guard_state, infos, ctx)
            out.append(c)
        if broken and all(c.vetoed for c in out[1:]):
            out[0].vetoed = None  # nothing leads back: keeping is the least harm

        def guard_margin(c: Candidate) -> float:  # ties (nothing measured yet): the move safest for the guards
            return sum((c.predicted[g] if infos[g].higher_is_better else -c.predicted[g]) / noise[g] for g in guards)

        if broken or near:  # repair first: the move expected to bring the guards back the most
            ranked = sorted(out, key=lambda c: (c.vetoed is not None, -guard_margin(c), -c.gain))
        else:
            ranked = sorted(out, key=lambda c: (c.vetoed is not None, -round(c.gain, 6), -guard_margin(c)))
        for i, c in enumerate(ranked):
            c.label = chr(ord("A") + i)
        facts = {
            "primary": primary.name, "primary_higher_is_better": primary.higher_is_better, "tunable": tune,
            "step": step, "guards": guard_state, "noise": noise, "tried": tried,
            "effects": {n: {"drift": e.drift, "drift_se": e.drift_se, "slopes": e.slopes, "slope_se": e.slope_se,
                            "n": e.n} for n, e in effects.items()},
        }
        return ranked, facts

    def _predict(self, eff: Effects, dx: Mapping[str, float], guarded: bool, info: ObjectiveInfo, noise: float,
                 tried: Mapping[str, int], n_tune: int, ls: float) -> tuple[float, float]:
        """Expected change of one objective for a move, and its standard error."""
        pred = eff.predict(dx)
        se = eff.predict_se(dx) if eff.n > n_tune + 1 else noise
        for t, v in dx.items():  # little-tried weights: wide error, and for guards the role's direction
            if tried.get(t, 0) < 2:
                prior = self.prior if guarded else self.goal_prior
                sign = self.expected_sign(t, info) * (1 if info.higher_is_better else -1)
                pred += sign * prior * noise * (v / ls) * (1 - tried.get(t, 0) / 2)
                se = math.hypot(se, noise)
        return pred, se

    def _veto(self, c: Candidate, guard_state: Mapping[str, Mapping[str, Any]], infos: Mapping[str, ObjectiveInfo],
              ctx: DecisionContext) -> str | None:
        """Why a move may not be offered (a guard it would break or cannot mend, the bounds), or ``None``."""
        vetoed = None
        for g, st in guard_state.items():
            hib = infos[g].higher_is_better
            worst = c.predicted[g] - c.uncertainty[g] if hib else c.predicted[g] + c.uncertainty[g]
            after = st["now"] + worst
            breaks = (after < st["floor"]) if hib else (after > st["floor"])
            if st["broken"]:
                if not c.log_change or not all(self._mends(t, v, ctx, infos[g]) for t, v in c.log_change.items()):
                    vetoed = f"{g} is below its floor ({st['now']:.4g} < {st['floor']:.4g}): move back first"
            elif breaks and c.log_change and not self._helps(c, ctx, infos[g]):
                vetoed = (f"predicted {g} {st['now'] + c.predicted[g]:.4g} (at worst {after:.4g}) would cross "
                          f"its floor {st['floor']:.4g}")
        if not ctx.constraints.within_bounds(c.weights):
            vetoed = "outside the weight bounds"
        return vetoed

    def _helps(self, c: Candidate, ctx: DecisionContext, guard: ObjectiveInfo) -> bool:
        """Whether every part of a move goes in the direction its loss's role says helps ``guard`` (lower a
        texture term, raise a fidelity term): a fidelity guard never vetoes a move towards fidelity, which
        near the floor would block the guard's own repair."""
        return bool(c.log_change) and all(self.expected_sign(t, guard) * v > 0 for t, v in c.log_change.items())

    def _mends(self, t: str, v: float, ctx: DecisionContext, guard: ObjectiveInfo) -> bool:
        """Until a guard's floor holds again, only moves back towards the initial weights, or moves the
        loss's role says help that objective (more fidelity, less texture)."""
        cur = ctx.current_weights[t]
        init = ctx.initial_weights.get(t, cur)
        towards_start = abs(math.log(max(cur, 1e-12) / max(init, 1e-12))) > 1e-9 and (v < 0) == (cur > init)
        return towards_start or self.expected_sign(t, guard) * v > 0

    # -- trials and the options shown -----------------------------------------------------------
    def options(self, ctx: DecisionContext) -> Options:
        """The labelled options to choose from (best first, "keep" always among them), with the full
        ranking, the facts and what the snapshot trials measured."""
        ranked, facts = self.candidates(ctx)
        allowed = [c for c in ranked if c.vetoed is None]
        if not allowed:  # cannot happen (keep is re-allowed), but never propose a vetoed move
            allowed = [next(c for c in ranked if not c.log_change)]
        trial_info = None
        if self.trials and ctx.trial is not None:
            allowed, trial_info = self.run_trials(ctx, ranked, allowed, facts)
        keep = next((c for c in allowed if not c.log_change), None)
        if trial_info is not None and "results" in trial_info:
            # After trials only moves measured better than keeping are offered, beside keeping itself.
            improving = [c for c in allowed if c.log_change and c.trial is not None
                         and (trial_info["improvement"].get(c.action) or 0.0) > trial_info["threshold"]]
            allowed = [*improving, *([keep] if keep is not None else [])] or allowed
        shown = allowed[: self.max_candidates]
        if keep is not None and keep not in shown:
            shown = [*shown[: self.max_candidates - 1], keep]
        for i, c in enumerate(shown):
            c.label = chr(ord("A") + i)
        return Options(shown, ranked, facts, trial_info)

    def run_trials(self, ctx: DecisionContext, ranked: list[Candidate], allowed: list[Candidate],
                   facts: dict[str, Any]) -> tuple[list[Candidate], dict[str, Any]]:
        """Try "keep" and the best ``trials`` moves from a snapshot; re-rank the allowed moves by what was measured."""
        assert ctx.trial is not None
        keep = next(c for c in ranked if not c.log_change)
        moves = [c for c in allowed if c.log_change][: self.trials]
        tried = [keep, *moves]
        t = time.perf_counter()
        try:
            scores = ctx.trial([dict(c.weights) for c in tried], self.trial_steps)
        except Exception as e:  # noqa: BLE001 - a failed trial leaves the numeric ranking in place
            return allowed, {"error": f"{type(e).__name__}: {e}"}
        for c, sc in zip(tried, scores):
            c.trial = dict(sc)
        p = facts["primary"]
        hib = facts["primary_higher_is_better"]
        base = keep.trial.get(p) if keep.trial else None

        def measured(c: Candidate) -> float | None:
            v = c.trial.get(p) if c.trial else None
            if not (_finite(v) and _finite(base)):
                return None
            return (v - base) if hib else (base - v)  # improvement over keeping, in the primary's units

        noise = self._trial_noise(ctx, keep, base if moves else None, p)  # nothing to judge: no repeats
        threshold = self.min_gain * noise["sd"] if noise["sd"] is not None else 0.0
        infos = {o.name: o for o in ctx.objectives}
        for c in moves:
            for g, st in facts["guards"].items():
                v = c.trial.get(g) if c.trial else None
                if _finite(v) and not st["broken"]:  # measured, not predicted: any move that crossed is out
                    crossed = v < st["floor"] if infos[g].higher_is_better else v > st["floor"]
                    if crossed:
                        c.vetoed = f"in the trial {g} reached {v:.4g}, beyond its floor {st['floor']:.4g}"
        measured_moves = [c for c in moves if c.vetoed is None and (measured(c) or 0.0) > threshold]
        measured_moves.sort(key=lambda c: -(measured(c) or 0.0))
        rest = [c for c in allowed if c not in measured_moves and c.vetoed is None]
        out = [*measured_moves, *[c for c in rest if not c.log_change], *[c for c in rest if c.log_change]]
        below = [c.action for c in moves if c.vetoed is None and 0.0 < (measured(c) or 0.0) <= threshold]
        return out, {"steps": self.trial_steps, "seconds": time.perf_counter() - t,
                     "results": [{"action": c.action, "scores": c.trial, "improvement": measured(c)} for c in tried],
                     "improvement": {c.action: measured(c) for c in tried},
                     "noise": noise, "threshold": threshold, "below_noise": below}

    def _trial_noise(self, ctx: DecisionContext, keep: Candidate, base: float | None, primary: str) -> dict[str, Any]:
        """Train "keep" again on fresh batches ``noise_trials`` times; the trial noise is the root mean
        square of (repeat - first keep) over every repeat of the run so far (this stage's and those
        recorded at earlier stage ends), so one lucky pair of batches does not set the bar alone."""
        samples: list[float] = []
        errors: list[str] = []
        for _ in range(self.noise_trials if _finite(base) else 0):
            try:
                again = ctx.trial([dict(keep.weights)], self.trial_steps)[0].get(primary)  # type: ignore[misc]
            except Exception as e:  # noqa: BLE001 - a failed repeat leaves the estimate to the others
                errors.append(f"{type(e).__name__}: {e}")
                break
            if _finite(again):
                samples.append(float(again) - float(base))  # type: ignore[arg-type]
        earlier = [x for r in ctx.history for x in _recorded_noise(r) if _finite(x)]
        pooled = [*earlier, *samples]
        sd = math.sqrt(sum(x * x for x in pooled) / len(pooled)) if pooled else None
        out: dict[str, Any] = {"samples": samples, "n": len(pooled), "sd": sd}
        if errors:
            out["errors"] = errors
        return out

    @staticmethod
    def explain(c: Candidate, facts: Mapping[str, Any]) -> str:
        """A template sentence for a choice (what a numbers-only agent records as its thoughts)."""
        p = facts["primary"]
        parts = [f"{c.action}: expected {p} change {c.predicted[p]:+.3g} (±{c.uncertainty[p]:.2g})"]
        if c.trial and _finite(c.trial.get(p)):
            parts.append(f"{p} {c.trial[p]:.4g} after the trial")
        parts += [f"{g} {c.predicted[g]:+.3g} (±{c.uncertainty[g]:.2g}, floor {st['floor']:.4g})"
                  for g, st in facts["guards"].items() if g in c.predicted]
        return "; ".join(parts)
