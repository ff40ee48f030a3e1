"""Prompt tokens a guided decision evaluates, with the prompt ordered for the KV cache and without.

A local runtime that keeps its KV cache between calls (llama.cpp in-process: one ``Llama`` object
per backend) evaluates only the part of a prompt that differs from the previous call's. The
guided prompt therefore puts what never changes first (the system part, the goal, the guards'
floors), then the history, which only grows, and only then what is new at each stage end (the
guards' state, the measured effects, the options). ``before`` is the order the guided prompt had
before that (commit f741958^: the stage, the guards' current values and the noise above the
history), rendered from the same variables through a replacement template; ``after`` is the
packaged template.

For each seed, one synthetic run of ``--stages`` stage ends is made with the numbers-only guided
agent (a toy training where raising ``gan`` lowers NIQE and costs PSNR, with noise); then the
decisions of that run are asked, in order, through one llama.cpp backend per layout, as training
would ask them. Printed: at stage 1, 10 and 20, the prompt's length and the tokens evaluated by
that decision's call (median over seeds), and the median over every call of a run that long.

Run (about 3 min on 2 busy cores with the embedded SmolLM2-135M):
    python benchmarks/bench_prompt_cache.py --seeds 3 --stages 20
    python benchmarks/bench_prompt_cache.py --model ~/.cache/agentloss-models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf

Example (the synthetic contexts alone, no model):
    >>> contexts = synthetic_contexts(stages=3, seed=0)
    >>> [c.stage for c in contexts], len(contexts[-1].history)
    ([1, 2, 3], 4)
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from typing import Any

from agentloss.agents import GuidedAgent
from agentloss.agents.base import DecisionContext, ObjectiveInfo
from agentloss.backends import create_backend
from agentloss.constraints import WeightConstraints
from agentloss.records import StageRecord

__all__ = ["BEFORE_USER_TEMPLATE", "evaluated_per_call", "main", "synthetic_contexts"]

# The guided user template before the prompt was ordered for the cache (git show f741958^:agentloss/templates/
# guided_user.j2): per-decision lines (stage, weights now, noise, each guard's current value) come before the
# history, so every call's prompt differs from the previous one a few lines into the user message.
BEFORE_USER_TEMPLATE = """Goal: {{ needs }}
Objective to improve: {{ primary }} ({{ "higher" if primary_higher else "lower" }} is better; stage-to-stage noise about {{ noise }}).
{% for g in guards -%}
Guard: {{ g.name }} must stay {{ "above" if g.higher else "below" }} {{ g.floor }} (it was {{ g.s0 }} at the start, now {{ g.now }}{% if g.broken %}: BROKEN, move back first{% endif %}).
{% endfor -%}
Stage {{ stage }}{% if total %} of {{ total }}{% endif %} has ended. Weights now: {{ weights }}.

History (stage: weights -> scores):
{% for row in history -%}
{{ row }}
{% endfor %}
Measured effects (fitted on {{ n_changes }} stage changes):
{% for e in effects -%}
- {{ e }}
{% endfor %}
Options (predicted change over the next stage):
{% for c in candidates -%}
{{ c }}
{% endfor %}
Which option? Answer with "Choice: <letter>" and "Thoughts: <why>".
"""
LAYOUTS: dict[str, dict[str, str] | None] = {"before": {"user": BEFORE_USER_TEMPLATE}, "after": None}
NEEDS = "Lower NIQE while losing at most 0.2 dB PSNR."
W0 = {"l1": 1.0, "perceptual": 0.1, "gan": 0.01}
OBJECTIVES = [ObjectiveInfo("niqe", False, "naturalness", (0.0, 100.0)),
              ObjectiveInfo("psnr_y", True, "fidelity (dB)", (0.0, 60.0), True)]


def synthetic_contexts(stages: int = 20, seed: int = 0, total: int | None = None) -> list[DecisionContext]:
    """The decision contexts of one toy run whose weights the numbers-only guided agent chose.

    Per stage NIQE drifts down and falls 0.2 per e-fold of ``gan`` above its start; PSNR rises a
    little and loses 0.1 dB per e-fold; both get Gaussian noise (``seed``). ``total`` (the run's
    planned stages, part of the prompt) defaults to ``stages + 1``.
    """
    rng = random.Random(seed)
    agent = GuidedAgent(backend="none", needs=NEEDS)
    hist = [StageRecord(0, 0, dict(W0), {"niqe": 6.0 + rng.uniform(-0.5, 0.5), "psnr_y": 30.0 + rng.uniform(-1, 1)})]
    weights, out = dict(W0), []
    for k in range(1, stages + 1):
        x = math.log(weights["gan"] / W0["gan"])
        niqe = hist[-1].scores["niqe"] - 0.03 - 0.2 * (x - math.log(hist[-1].weights["gan"] / W0["gan"])) \
            + rng.gauss(0, 0.05)
        psnr = hist[0].scores["psnr_y"] + 0.02 * k - 0.1 * x + rng.gauss(0, 0.02)
        hist.append(StageRecord(k, k * 100, dict(weights), {"niqe": niqe, "psnr_y": psnr}))
        ctx = DecisionContext(list(W0), dict(weights), dict(W0), list(hist), OBJECTIVES,
                              WeightConstraints(max_weight=10.0, max_step=2.0), k, total or stages + 1, 100)
        out.append(ctx)
        weights = agent.propose(ctx).weights
    return out


def evaluated_per_call(contexts: list[DecisionContext], backend: Any, templates: dict[str, str] | None,
                       max_tokens: int = 16) -> list[dict[str, Any]]:
    """Ask every decision of a run in order through ``backend`` (its cache kept between calls, as in
    training); per decision the first call's prompt tokens, tokens evaluated and seconds."""
    agent = GuidedAgent(backend=backend, needs=NEEDS, templates=templates, max_tokens=max_tokens)
    rows = []
    for ctx in contexts:
        d = agent.propose(ctx)
        calls = [m for m in d.exchange if m.get("role") == "assistant"]
        if not calls:  # only "keep" was offered: the model is not asked
            continue
        c = calls[0]
        rows.append({"stage": ctx.stage, "prompt_tokens": c["prompt_tokens"],
                     "prompt_eval_tokens": c["prompt_eval_tokens"], "seconds": c["seconds"]})
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="a GGUF file (default: the embedded SmolLM2-135M)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--stages", type=int, default=20)
    ap.add_argument("--at", default="1,10,20", help="stages to report")
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1 is fastest on busy shared cores)")
    ap.add_argument("--max-tokens", type=int, default=16)
    args = ap.parse_args(argv)
    config: dict[str, Any] = {"type": "llama_cpp", "n_ctx": 4096, "n_threads": args.threads}
    if args.model:
        config["model_path"] = args.model
    at = [int(s) for s in args.at.split(",") if int(s) <= args.stages]
    runs: dict[str, list[list[dict[str, Any]]]] = {name: [] for name in LAYOUTS}
    start = time.perf_counter()
    for seed in range(args.seeds):
        contexts = synthetic_contexts(args.stages, seed)
        for name, templates in LAYOUTS.items():
            backend = create_backend(config)  # a fresh Llama: no cache carried over between layouts
            try:
                runs[name].append(evaluated_per_call(contexts, backend, templates, args.max_tokens))
            finally:
                backend.close()

    def at_stage(name: str, stage: int, key: str) -> float | None:
        values = [r[key] for run in runs[name] for r in run if r["stage"] == stage]
        return statistics.median(values) if values else None

    def per_call(name: str, upto: int) -> float | None:
        values = [r["prompt_eval_tokens"] for run in runs[name] for r in run if r["stage"] <= upto]
        return statistics.median(values) if values else None

    def fmt(v: float | None) -> str:
        return "-" if v is None else f"{v:.0f}"

    print(f"Prompt tokens evaluated per guided decision (llama.cpp, {args.seeds} seed(s), median over seeds;"
          " 'run median': over every call of a run that long)")
    print(f"{'stage':>5} {'prompt':>7} | {'evaluated':>9} {'':>9} | {'run median':>10} {'':>9}")
    print(f"{'':>5} {'tokens':>7} | {'before':>9} {'after':>9} | {'before':>10} {'after':>9}")
    table = []
    for s in at:
        row = {"stage": s, "prompt_tokens": at_stage("after", s, "prompt_tokens"),
               "before": at_stage("before", s, "prompt_eval_tokens"), "after": at_stage("after", s, "prompt_eval_tokens"),
               "run_before": per_call("before", s), "run_after": per_call("after", s)}
        table.append(row)
        print(f"{s:>5} {fmt(row['prompt_tokens']):>7} | {fmt(row['before']):>9} {fmt(row['after']):>9} | "
              f"{fmt(row['run_before']):>10} {fmt(row['run_after']):>9}")
    secs = {name: statistics.median([r["seconds"] for run in runs[name] for r in run[1:]] or [0.0]) for name in LAYOUTS}
    print(f"median seconds per call after the first: before {secs['before']:.2f}, after {secs['after']:.2f}; "
          f"total {time.perf_counter() - start:.0f} s")
    return {"table": table, "seconds": secs, "runs": runs}


if __name__ == "__main__":
    main()
