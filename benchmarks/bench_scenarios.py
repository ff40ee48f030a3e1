"""Scenario suite: where does the agent earn its keep? Scenarios x methods x seeds on the quality benchmark.

Each scenario (``agentloss.tasks.scenarios``: a named start, constraints, goal and primary endpoint)
runs on ``bench_quality.py``'s set-up — its data split, cached L1 warm start of SmallSR, NIQE +
PSNR_Y probe objectives, EMA final scoring on six unseen images, 8 stages x 125 iterations —
with only the loss's start weights (and the goal's words) changed. For seed ``k`` every method of
every scenario starts from the same warm start, gets the same patch stream and the same
discriminator initialisation (``torch.manual_seed(k)``); only the agent differs. Seeds run in the
outer loop, then scenarios, then methods, so a partial result file holds complete pairs.

Methods (agent configs, ``--method NAME=JSON`` adds more):

* ``fixed``: keeps the scenario's start weights;
* ``guided-trials60-numbers``: the kept design (``GuidedAgent`` with snapshot trials: keep + the two
  best x2 moves, 60 iterations each, per stage end) without a language model (``backend: none``);
* ``population``: the equal-compute baseline (``PopulationAgent``): keep + 2 random log-uniform
  perturbations in [/2, x2], 60 iterations each from the same snapshot, the best by NIQE kept,
  with the same PSNR guard;
* ``random``, and ``llm-paper`` (the paper's prompt on the embedded SmolLM2; for ``text-goal``, whose
  agent sees only ``HighFrequencyCritic``'s words and is judged on the hidden ``hf_gap``, scored here
  on the evaluation images beside NIQE and PSNR_Y).

Report, per scenario: mean +- sd of the goal metric and PSNR_Y; paired differences against Fixed
(mean, 95 % Student-t interval, exact two-sided sign-flip p; ``agentloss.tasks.stats``); the kept
design against the population baseline; and the pre-registered endpoints (kept design better than
Fixed on the goal, or on PSNR_Y at equal goal; never worse on the goal nor by more than 0.2 dB).
As markdown tables, and everything in ``--out`` (JSON, written after every run).

Commands::

    python benchmarks/bench_scenarios.py --quick                          # smoke test, a few minutes
    python benchmarks/bench_scenarios.py --seeds 5 --first-seed 50        # the pre-registered run
    python benchmarks/bench_scenarios.py --scenarios gan-x10 --methods fixed,population --seeds 1
    python benchmarks/bench_scenarios.py --scenarios text-goal --methods fixed,llm-paper   # a text-only goal
    python benchmarks/bench_scenarios.py --merge a.json b.json --out all.json   # seeds run in two processes
    python benchmarks/bench_scenarios.py --backbone swinir_light_tiny --quick   # another network, CPU size

``--backbone NAME`` swaps SmallSR for a registered backbone (``agentloss.backbones``; ``*_tiny`` are
CPU-sized), warm-started with the same L1 recipe and cached under its own key.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_quality is a script beside this one

import bench_quality as bq  # noqa: E402

from agentloss.backbones import BACKBONES, create_backbone  # noqa: E402
from agentloss.tasks.config import agent_options  # noqa: E402
from agentloss.tasks.harness import Setup, make_start, score_method, train_method  # noqa: E402
from agentloss.tasks.preflight import check_setup  # noqa: E402
from agentloss.tasks.scenarios import SCENARIOS, Scenario, get_scenario, hf_gap  # noqa: E402
from agentloss.tasks.stats import finite, mean_std, paired_interval  # noqa: E402

KEPT = "guided-trials60-numbers"
POPULATION = "population"
# A benchmark-level key of a method config (not the agent's): the numeric objectives this method's agent is
# shown instead of the scenario's. For text-only goals, what a numbers-only agent can be given instead of words.
PROBE_KEY = "probe"
BUILTIN_METHODS: dict[str, dict[str, Any]] = {
    "fixed": {"type": "fixed"},
    KEPT: {"type": "guided", "trials": 2, "trial_steps": 60, "step": 2.0, "backend": "none"},
    # The kept design with the trial-noise gate: keep trained once more on fresh batches per stage end, and a
    # move must beat keeping by more than the pooled trial noise (GuidedProposer's noise_trials, min_gain).
    f"{KEPT}-gated": {"type": "guided", "trials": 2, "trial_steps": 60, "step": 2.0, "backend": "none",
                      "noise_trials": 1, "min_gain": 1.0},
    # The kept design shown NIQE + PSNR_Y (the closest numbers to "natural texture") in place of the critic's words.
    f"{KEPT}-proxy": {"type": "guided", "trials": 2, "trial_steps": 60, "step": 2.0, "backend": "none",
                      PROBE_KEY: ["niqe", "psnr_y"]},
    POPULATION: {"type": "population", "trials": 2, "trial_steps": 60, "step": 2.0},
    "random": {"type": "random"},
    # The paper's prompt with the embedded SmolLM2 (backend null): the agent that reads text (text-goal).
    "llm-paper": {"type": "llm", "backend": None},
}
DEFAULT_SCENARIOS = "gan-x10,gan-div10-fft-x10,mscn-off"
DEFAULT_METHODS = f"fixed,{KEPT},{POPULATION}"
PSNR_BUDGET_DB = 0.2  # the "never worse than Fixed by more than 0.2 dB"
# What a run's result depends on: files differing here never merge.
SETTING_KEYS = ("stages", "stage_iters", "batch", "patch", "pretrain_iters", "eval_ema", "backbone", "lr", "probe_psnr")


# --------------------------------------------------------------------------------------------
# Set-up


def resolve_methods(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Method name -> agent config template; validated before any work (``needs`` is filled per scenario)."""
    extra = dict(bq.parse_method_spec(s) for s in args.method or [])
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    names += [n for n in extra if n not in names]
    methods: dict[str, dict[str, Any]] = {}
    for name in names:
        if name not in extra and name not in BUILTIN_METHODS:
            raise ValueError(f"unknown method {name!r}: built-in {sorted(BUILTIN_METHODS)}, or add --method {name}=...")
        config = dict(extra.get(name) or BUILTIN_METHODS[name])
        probe = config.get(PROBE_KEY)
        if probe is not None and (not isinstance(probe, list) or not probe
                                  or any(o not in NUMERIC_OBJECTIVES for o in probe)):
            raise ValueError(f"method {name!r}: {PROBE_KEY!r} must list objectives from {NUMERIC_OBJECTIVES}, got {probe!r}")
        unknown = [k for k in config if k not in ("type", PROBE_KEY) and k not in agent_options(config["type"])]
        if unknown:
            raise ValueError(f"method {name!r}: unknown option(s) {unknown} for agent type {config['type']!r}")
        if "backend" in agent_options(config["type"]) and "backend" not in config:
            raise ValueError(f"method {name!r}: name its backend ('none' for numbers only, null for the embedded "
                             "model); this suite loads no language model unless a method's config asks for one")
        if args.quick and "trial_steps" in config:
            config["trial_steps"] = 2  # a smoke test: the trial mechanics, not their length
        methods[name] = config
    return methods


def scenario_methods(methods: Mapping[str, Mapping[str, Any]], scenario: Scenario) -> dict[str, dict[str, Any]]:
    """The method configs with the scenario's goal (``needs``) where the agent type takes one."""
    out = {}
    for name, cfg in methods.items():
        c = {k: v for k, v in cfg.items() if k != PROBE_KEY}
        if "needs" in agent_options(c["type"]):
            c.setdefault("needs", scenario.needs)
        out[name] = c
    return out


NUMERIC_OBJECTIVES = ("niqe", "psnr_y")  # what bench_quality's probe scores
TEXT_SOURCES = ("HighFrequencyCritic",)  # agentloss.feedback classes this suite builds (no server, no person)
HIDDEN_METRICS = {"hf_gap": hf_gap}  # scored on the evaluation set beside NIQE and PSNR_Y, never shown


def check_scenario(scenario: Scenario) -> None:
    """Refuse, before any training, a scenario this benchmark cannot run as it defines it."""
    why = scenario.missing()
    if why:
        raise ValueError(f"{why}; its data is defined (agentloss.tasks.scenarios) but it cannot run yet")
    unknown = [*(o for o in scenario.objectives if o not in NUMERIC_OBJECTIVES),
               *(t for t in scenario.text_sources if t not in TEXT_SOURCES),
               *(m for m in scenario.metrics if m not in (*bq.METRICS, *HIDDEN_METRICS))]
    if unknown:
        raise ValueError(f"scenario {scenario.name!r} names {unknown}; this benchmark builds the objectives "
                         f"{NUMERIC_OBJECTIVES}, the text sources {TEXT_SOURCES} and the metrics "
                         f"{(*bq.METRICS, *HIDDEN_METRICS)}")
    from agentloss.losses import LOSS_REGISTRY, resolve_loss_name

    for name in scenario.initial_weights:
        if LOSS_REGISTRY[resolve_loss_name(name)].downloads:
            raise ValueError(f"scenario {scenario.name!r}: term {name!r} downloads weights; the suite runs offline")


def scenario_objectives(objectives: Sequence[str], text_sources: Sequence[str], niqe_kwargs: Mapping[str, Any]):
    """The probe objectives an agent is shown: numeric ones by name, then text sources (``agentloss.feedback``)."""
    import agentloss as al
    import agentloss.feedback as feedback

    def build(device: torch.device) -> list[Any]:
        numeric = {"niqe": lambda: al.PyiqaObjective("niqe", device="cpu", **niqe_kwargs),
                   "psnr_y": bq.probe_psnr}
        return [*(numeric[o]() for o in objectives), *(getattr(feedback, t)() for t in text_sources)]
    return build


def method_setups(setup: Setup, methods: Mapping[str, Mapping[str, Any]],
                  niqe_kwargs: Mapping[str, Any]) -> dict[str, Setup]:
    """Method -> the set-up it trains in: the scenario's, or with the method's own ``probe`` objectives."""
    return {m: setup if cfg.get(PROBE_KEY) is None else
            dataclasses.replace(setup, objectives=scenario_objectives(cfg[PROBE_KEY], (), niqe_kwargs))
            for m, cfg in methods.items()}


def hidden_scores(model: torch.nn.Module, pairs: Sequence[Any], restore: Any = None) -> dict[str, Any]:
    """The hidden statistics of ``model`` on the evaluation pairs: per image and their mean (8-bit output, as scored)."""
    was = model.training
    model.eval()
    per_image: dict[str, dict[str, float]] = {}
    try:
        with torch.no_grad():
            for pair in pairs:
                lq = pair.lq.unsqueeze(0).float()
                out = (restore(model, lq) if restore is not None else model(lq)).clamp(0, 1)
                out = torch.round(out * 255) / 255  # the 8-bit image the other metrics score
                per_image[pair.name] = {m: fn([out[0]], [pair.gt]) for m, fn in HIDDEN_METRICS.items()}
    finally:
        model.train(was)
    mean = {m: sum(v[m] for v in per_image.values()) / len(per_image) for m in HIDDEN_METRICS}
    return {"per_image": per_image, "mean": mean}


def add_hidden(record: dict[str, Any], hidden: Mapping[str, Any]) -> None:
    """Merge :func:`hidden_scores` into a ``bench_quality.eval_record``."""
    record["mean"].update(hidden["mean"])
    for name, scores in hidden["per_image"].items():
        record["per_image"].setdefault(name, {}).update(scores)


def backbone_model(name: str):
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; registered: {', '.join(sorted(BACKBONES))}")
    if bq.SCALE not in BACKBONES[name].scales:
        raise ValueError(f"backbone {name!r} does not take scale {bq.SCALE} (scales {BACKBONES[name].scales})")
    return lambda: create_backbone(name, bq.SCALE)


def make_scenario_setup(args: argparse.Namespace, split: bq.Split, scenario: Scenario,
                        methods: Mapping[str, Mapping[str, Any]], niqe_kwargs: Mapping[str, Any]) -> Setup:
    """``bench_quality.make_setup`` with the scenario's start weights, constraints and goal (and ``--backbone``)."""
    sargs = argparse.Namespace(**vars(args))
    sargs.initial_weights = dict(scenario.initial_weights)
    sargs.constraints = scenario.weight_constraints()
    # Per network too: two processes running one scenario on two networks must not write one set of records.
    sargs.run_dir = str(Path(args.run_dir) / (f"{scenario.name}-{args.backbone}" if args.backbone else scenario.name))
    setup = bq.make_setup(sargs, split, scenario_methods(methods, scenario), niqe_kwargs)
    if tuple(scenario.objectives) != NUMERIC_OBJECTIVES or scenario.text_sources:
        setup = dataclasses.replace(setup, objectives=scenario_objectives(scenario.objectives, scenario.text_sources,
                                                                          niqe_kwargs))
    if args.backbone:
        settings = {**bq.pretrain_settings(args), "net": args.backbone}
        warm = bq.warm_spec(split.train, settings, args.cache_dir or None)
        if warm.cache is not None:
            warm = dataclasses.replace(warm, cache=Path(warm.cache).with_name(f"{args.backbone}_l1_{warm.key}.pt"))
        setup = dataclasses.replace(setup, model=backbone_model(args.backbone), warm=warm)
    return setup


# --------------------------------------------------------------------------------------------
# Report


def _runs(results: Mapping[str, Any], scenario: str, method: str) -> dict[int, dict[str, Any]]:
    return {r["seed"]: r for r in results["scenarios"][scenario]["methods"].get(method, {}).get("runs", [])}


def paired(results: Mapping[str, Any], scenario: str, method: str, baseline: str, metric: str,
           lower_is_better: bool) -> dict[str, Any] | None:
    """Paired ``method - baseline`` statistics of ``metric`` over the seeds both ran (None if either is absent)."""
    a, b = _runs(results, scenario, method), _runs(results, scenario, baseline)
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    s = paired_interval([a[k]["eval"]["mean"][metric] for k in seeds], [b[k]["eval"]["mean"][metric] for k in seeds],
                        lower_is_better)
    return {**dataclasses.asdict(s), "seeds": seeds}


def switched_on(sc: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """For each term that starts at 0: in how many runs an agent switched it on, and its final weights."""
    off = [k for k, w in sc["scenario"]["initial_weights"].items() if w == 0]
    return {k: {"runs_on": sum(any(st["weights"].get(k, 0.0) > 0 for st in r["stages"]) for r in runs),
                "runs": len(runs), "final": [r["final_weights"].get(k, 0.0) for r in runs]} for k in off}


def scatter(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """How much a method moved and where it ended across seeds: weight changes per run (stage ends whose
    next weights differ) and each term's final weight range (weights chosen on noise scatter widely)."""
    moves = [sum(1 for st in r["stages"] if st.get("next_weights") not in (None, st["weights"])) for r in runs]
    terms = sorted({t for r in runs for t in r["final_weights"]})
    return {"moves": moves, "final_range": {t: [min(r["final_weights"].get(t, 0.0) for r in runs),
                                                max(r["final_weights"].get(t, 0.0) for r in runs)] for t in terms}}


def summarize(results: Mapping[str, Any], kept: str = KEPT, population: str = POPULATION,
              compare: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """Per scenario: per-method means, paired differences vs Fixed, kept vs population (and each ``compare``
    pair ``(a, b)``: ``a - b``), endpoint verdicts for ``kept``, and which off terms agents switched on."""
    out: dict[str, Any] = {}
    for name, sc in results["scenarios"].items():
        goal, lower = sc["scenario"]["primary"]["metric"], sc["scenario"]["primary"]["lower_is_better"]
        entry: dict[str, Any] = {"goal": goal, "methods": {}, "vs_fixed": {}, "kept_vs_population": None,
                                 "pairs": []}
        for method, data in sc["methods"].items():
            runs = data["runs"]
            entry["methods"][method] = {
                "seeds": [r["seed"] for r in runs],
                **{m: dict(zip(("mean", "std", "n"), mean_std([r["eval"]["mean"][m] for r in runs])))
                   for m in dict.fromkeys([goal, "psnr_y"])},
                "wall_s": sum(r["wall_s"] for r in runs), "switched_on": switched_on(sc, runs),
                "scatter": scatter(runs) if runs else None}
            if method != "fixed":
                g = paired(results, name, method, "fixed", goal, lower)
                if g is not None:
                    entry["vs_fixed"][method] = {"goal": g, "psnr_y": paired(results, name, method, "fixed", "psnr_y", False)}
        if kept in sc["methods"] and population in sc["methods"]:
            g = paired(results, name, kept, population, goal, lower)
            if g is not None:
                entry["kept_vs_population"] = {"goal": g, "psnr_y": paired(results, name, kept, population, "psnr_y", False)}
        for a, b in compare:
            if a in sc["methods"] and b in sc["methods"]:
                g = paired(results, name, a, b, goal, lower)
                if g is not None:
                    entry["pairs"].append({"a": a, "b": b, "goal": g, "psnr_y": paired(results, name, a, b, "psnr_y", False)})
        entry["endpoints"] = endpoints(entry, kept)
        out[name] = entry
    return out


def endpoints(entry: Mapping[str, Any], kept: str) -> dict[str, Any] | None:
    """The pre-registered verdicts for the kept design in one scenario (None when it has no pairs with Fixed)."""
    v = entry["vs_fixed"].get(kept)
    if v is None or v["goal"]["n"] < 2:
        return None
    g, p = v["goal"], v["psnr_y"]
    goal_better, goal_worse = g["verdict"] == "better", g["verdict"] == "worse"
    psnr_better_equal_goal = p["verdict"] == "better" and g["verdict"] == "within noise"
    return {"n": g["n"], "enough_seeds": g["n"] >= 5, "goal_better": goal_better,
            "psnr_better_at_equal_goal": psnr_better_equal_goal, "target_met": (goal_better or psnr_better_equal_goal)
            and g["n"] >= 5, "goal_worse": goal_worse, "psnr_loss_over_budget": p["mean"] < -PSNR_BUDGET_DB,
            "safe": not goal_worse and not p["mean"] < -PSNR_BUDGET_DB}


def _ci(s: Mapping[str, Any] | None, digits: int = 3) -> str:
    if s is None or not finite(s["mean"]):
        return "n/a"
    if not finite(s["lo"]):
        return f"{s['mean']:+.{digits}f} [n/a]"
    return f"{s['mean']:+.{digits}f} [{s['lo']:+.{digits}f}, {s['hi']:+.{digits}f}]"


def _p(s: Mapping[str, Any] | None) -> str:
    return f"{s['p_sign_flip']:.3f}" if s is not None and finite(s.get("p_sign_flip")) else "n/a"


def _pm(e: Mapping[str, Any]) -> str:
    if not finite(e["mean"]):
        return "n/a"
    return f"{e['mean']:.3f} ± {e['std']:.3f}" if finite(e["std"]) else f"{e['mean']:.3f} (1 seed)"


def format_report(results: Mapping[str, Any], summary: Mapping[str, Any], kept: str = KEPT,
                  population: str = POPULATION) -> str:
    """Markdown tables, one section per scenario."""
    lines: list[str] = []
    s0 = results["start"]["eval"]["mean"] if results.get("start") else {}
    for name, e in summary.items():
        sc = results["scenarios"][name]["scenario"]
        goal = e["goal"]
        arrow = "↓" if sc["primary"]["lower_is_better"] else "↑"
        lines += [f"\n### {name}: {sc['description']}", "",
                  f"Start weights {sc['initial_weights']}; goal metric {goal} {arrow}; "
                  f"S0 (warm start) {goal} {s0.get(goal, math.nan):.3f}, PSNR_Y {s0.get('psnr_y', math.nan):.3f} dB.", "",
                  f"| method | seeds | {goal} {arrow} | PSNR_Y ↑ dB | Δ{goal} vs fixed [95 % CI] | p | ΔPSNR_Y dB vs fixed [95 % CI] | p | s/run |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for method, m in e["methods"].items():
            v = e["vs_fixed"].get(method)
            per_run = m["wall_s"] / max(1, len(m["seeds"]))
            lines.append(f"| {method} | {len(m['seeds'])} | {_pm(m[goal])} | {_pm(m['psnr_y'])} | "
                         f"{_ci(v['goal']) if v else '—'} | {_p(v['goal']) if v else '—'} | "
                         f"{_ci(v['psnr_y']) if v else '—'} | {_p(v['psnr_y']) if v else '—'} | {per_run:.0f} |")
        pairs = [{"a": kept, "b": population, **e["kept_vs_population"]}] if e["kept_vs_population"] else []
        for pr in [*pairs, *e.get("pairs", [])]:
            lines += ["", f"{pr['a']} − {pr['b']} (paired, n = {pr['goal']['n']}): Δ{goal} {_ci(pr['goal'])} "
                          f"(p {_p(pr['goal'])}, {pr['goal']['verdict']}); ΔPSNR_Y {_ci(pr['psnr_y'])} dB "
                          f"(p {_p(pr['psnr_y'])}, {pr['psnr_y']['verdict']})."]
        for method, m in e["methods"].items():
            for term, on in m.get("switched_on", {}).items():
                if method != "fixed":
                    lines += ["", f"{method} switched {term} on (from 0) in {on['runs_on']} of {on['runs']} runs; "
                                  f"final {term} weights: " + ", ".join(f"{w:.3g}" for w in on["final"]) + "."]
        spread = []
        for method, m in e["methods"].items():
            v, sc_ = e["vs_fixed"].get(method), m.get("scatter")
            if method == "fixed" or not sc_ or not sc_["moves"]:
                continue
            sd = mean_std(v["goal"]["diffs"])[1] if v and len(v["goal"]["diffs"]) > 1 else math.nan
            ranges = ", ".join(f"{t} {lo:.3g}–{hi:.3g}" for t, (lo, hi) in sc_["final_range"].items() if lo != hi)
            spread.append(f"{method}: {statistics.mean(sc_['moves']):.1f} moves a run ({min(sc_['moves'])}–"
                          f"{max(sc_['moves'])}), sd of per-seed Δ{goal} vs fixed {sd:.3f}"
                          + (f", final weights over seeds {ranges}" if ranges else ", the same final weights every seed"))
        if spread:
            lines += ["", "Scatter: " + "; ".join(spread) + "."]
        ep = e["endpoints"]
        if ep is not None:
            met = ("met (goal better)" if ep["goal_better"] else "met (PSNR_Y better at equal goal)"
                   if ep["psnr_better_at_equal_goal"] else "not met")
            if not ep["enough_seeds"] and (ep["goal_better"] or ep["psnr_better_at_equal_goal"]):
                met = f"not met (interval excludes 0 but only {ep['n']} seeds; >= 5 needed)"
            safe = "yes" if ep["safe"] else ("no: significantly worse on the goal" if ep["goal_worse"]
                                             else f"no: PSNR_Y {-PSNR_BUDGET_DB} dB budget exceeded")
            lines += ["", f"Endpoints for {kept} vs fixed (n = {ep['n']}): target {met}; safe {safe}."]
        lines.append("")
        lines.append("Per seed, Δ" + goal + " / ΔPSNR_Y dB vs fixed: " + "; ".join(
            f"{method} " + ", ".join(f"s{k} {d:+.3f}/{q:+.3f}" for k, d, q in zip(
                v["goal"]["seeds"], v["goal"]["diffs"], v["psnr_y"]["diffs"]))
            for method, v in e["vs_fixed"].items() if len(v["goal"]["diffs"]) == len(v["goal"]["seeds"])))
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merge", nargs="+", metavar="JSON", help="combine result files of the same settings and report")
    ap.add_argument("--scenarios", default=DEFAULT_SCENARIOS, help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    ap.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated; built-in: {', '.join(BUILTIN_METHODS)}")
    ap.add_argument("--method", action="append", metavar="NAME=PATH_OR_JSON", help="add a method from an agent config")
    for flag, help_ in (("--seeds", "number of seeds"), ("--stages", "stages per run"),
                        ("--stage-iters", "iterations per stage"), ("--batch", "patches per batch"),
                        ("--patch", "HR patch size (px)"), ("--pretrain-iters", "L1 pretraining iterations")):
        key = flag[2:].replace("-", "_")
        ap.add_argument(flag, type=int, default=None, help=f"{help_} (default {bq.DEFAULTS[key]}, --quick {bq.QUICK[key]})")
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST..FIRST+N-1")
    ap.add_argument("--quick", action="store_true", help="tiny settings for a smoke test (trials of 2 iterations)")
    ap.add_argument("--eval-ema", type=float, default=0.99, help="EMA decay of the scored weights (0 = last iterate)")
    ap.add_argument("--backbone", default=None, help="a registered backbone instead of SmallSR (e.g. swinir_light_tiny)")
    ap.add_argument("--kept", default=KEPT, help="the method tested against Fixed and the population baseline")
    ap.add_argument("--population", default=POPULATION, help="the equal-compute baseline")
    ap.add_argument("--compare", action="append", default=[], metavar="A:B",
                    help="also report the paired difference A - B of two methods (repeatable)")
    ap.add_argument("--out", default="benchmarks/results/scenarios.json")
    ap.add_argument("--run-dir", default="runs/bench_scenarios",
                    help="records go to RUN_DIR/<scenario>[-<backbone>]/<method>/seed<k>")
    ap.add_argument("--niqe-params", default=None)
    ap.add_argument("--cache-dir", default="~/.cache/agentloss-bench", help="pretrained start cache ('' = none)")
    ap.add_argument("--torch-threads", type=int, default=1)
    args = ap.parse_args(argv)
    preset = bq.QUICK if args.quick else bq.DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if min(args.seeds, args.stages, args.stage_iters, args.batch) < 1 or args.pretrain_iters < 0:
        ap.error("--seeds, --stages, --stage-iters and --batch must be positive")
    if not 0.0 <= args.eval_ema < 1.0:
        ap.error("--eval-ema must be in [0, 1)")
    if args.patch % bq.SCALE:
        ap.error(f"--patch must be a multiple of {bq.SCALE}")
    try:
        args.scenario_list = [get_scenario(n.strip()) for n in args.scenarios.split(",") if n.strip()]
        if args.backbone:
            backbone_model(args.backbone)
    except (KeyError, ValueError) as e:
        ap.error(str(e.args[0]))
    if not args.scenario_list:
        ap.error("--scenarios: name at least one")
    pairs = [tuple(c.split(":")) for c in args.compare]
    if any(len(p) != 2 or not all(p) for p in pairs):
        ap.error("--compare takes A:B, two method names")
    args.compare_pairs = pairs
    return args


def merge_results(paths: Sequence[str]) -> dict[str, Any]:
    """One result set from files of the same settings (more seeds, or other scenarios/methods)."""
    def add(merged: dict[str, Any], data: dict[str, Any], path: str) -> None:
        for name, sc in data["scenarios"].items():
            mine = merged["scenarios"].setdefault(name, {"scenario": sc["scenario"], "methods": {}})
            if mine["scenario"] != sc["scenario"]:
                raise ValueError(f"{path}: scenario {name!r} is defined differently from {merged['merged_from'][0]}")
            bq.add_method_runs(mine["methods"], sc["methods"], f"{path}: scenario {name!r}, method",
                               merged["merged_from"])
    return bq.merge_files(paths, SETTING_KEYS, add)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    out = Path(args.out)
    if args.merge:
        results = merge_results(args.merge)
        results["summary"] = summarize(results, args.kept, args.population, args.compare_pairs)
        bq.write_json(out, results)
        log(format_report(results, results["summary"], args.kept, args.population))
        log(f"\nresults: {out}")
        return results
    torch.set_num_threads(args.torch_threads)
    methods = resolve_methods(args)
    for scenario in args.scenario_list:
        check_scenario(scenario)
    niqe_kwargs = bq.niqe_kwargs_for(args)
    split = bq.build_split()
    setups = {s.name: make_scenario_setup(args, split, s, methods, niqe_kwargs) for s in args.scenario_list}
    per_method = {name: method_setups(setup, methods, niqe_kwargs) for name, setup in setups.items()}
    for name, by_method in per_method.items():
        for method, setup in by_method.items():  # every agent, loss and objective is built before any training
            check_setup(setup, [method])
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    settings = {k: getattr(args, k) for k in ("seeds", "first_seed", "stages", "stage_iters", "batch", "patch",
                                                "pretrain_iters", "quick", "torch_threads", "run_dir", "eval_ema",
                                                "backbone", "kept", "population")}
    settings.update(terms=bq.TERM_OPTIONS, lr=bq.TRAIN_LR, niqe_params=niqe_kwargs.get("pretrained_model_path"),
                    probe_psnr=bq.PROBE_PSNR,
                    argv=list(sys.argv[1:] if argv is None else argv))
    results: dict[str, Any] = {
        "settings": settings, "split": split.description, "start": None,
        "scenarios": {s.name: {"scenario": s.to_dict(),
                               "methods": {m: {"config": cfg, "runs": [], "probe": methods[m].get(PROBE_KEY)}
                                           for m, cfg in scenario_methods(methods, s).items()}}
                      for s in args.scenario_list}}
    first = next(iter(setups.values()))
    net = args.backbone or "SmallSR"
    log(f"warm start: {net} with L1 ({args.pretrain_iters} iterations, or from the cache) ...")
    start = make_start(first, say=log)
    assert start.scores is not None
    results["start"] = {"pretrain": {**start.info, "settings": bq.pretrain_settings(args), "net": net},
                        "eval": bq.eval_record(start.scores)}
    assert start.model is not None
    add_hidden(results["start"]["eval"], hidden_scores(start.model, split.eval_pairs, first.restore))
    total = len(seeds) * len(setups) * len(methods)
    done, t0 = 0, time.perf_counter()
    for seed in seeds:  # seeds outside: a partial file holds complete pairs
        for name, setup in setups.items():
            for method in methods:
                log(f"[{done + 1}/{total}] {name} / {method} / seed {seed} ...")
                msetup = per_method[name][method]
                res = train_method(msetup, method, seed, start.state, msetup.run_dir(method, seed), say=log)
                score_method(msetup, res, log)
                run = bq.run_json(res)
                # The hidden statistics are scored for every run (cheap), so any scenario's table can show them.
                assert res.scored_model is not None
                add_hidden(run["eval"], hidden_scores(res.scored_model, split.eval_pairs, setup.restore))
                if run["eval_last"] is not None and res.model is not None:
                    add_hidden(run["eval_last"], hidden_scores(res.model, split.eval_pairs, setup.restore))
                log(f"[{method} seed {seed}] hidden: " + ", ".join(f"{k}={v:.4f}" for k, v in
                                                                   run["eval"]["mean"].items() if k in HIDDEN_METRICS))
                results["scenarios"][name]["methods"][method]["runs"].append(run)
                bq.write_json(out, results)
                done += 1
                elapsed = time.perf_counter() - t0
                log(f"[{done}/{total}] {name} / {method} / seed {seed}: {res.wall_s:.0f} s; "
                    f"{elapsed / 60:.1f} min so far, about {elapsed / done * (total - done) / 60:.0f} min left")
    results["summary"] = summarize(results, args.kept, args.population, args.compare_pairs)
    bq.write_json(out, results)
    log(format_report(results, results["summary"], args.kept, args.population))
    log(f"\nresults: {out}; stage records: {args.run_dir}/<scenario>{'-' + args.backbone if args.backbone else ''}"
        "/<method>/seed<k>/")
    return results


if __name__ == "__main__":
    main()
