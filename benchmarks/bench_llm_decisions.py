"""How well and how fast real local models answer the LossAgent prompt, side by side in one run.

For each GGUF model given, and with and without the GBNF grammar, ``--sequences`` training-like
runs of ``--stages`` decisions each are asked on synthetic but realistic histories (NIQE falling
with noise, PSNR drifting, weights L1:Perceptual:GAN moving within a x2 limit), the history growing
by one stage per decision as in training. Reported:

* the share of answers that parse on the first try, and after the agent's retries;
* the median seconds per decision at history lengths ``--lengths``;
* what reusing the prompt prefix between stages saves: llama.cpp keeps the KV cache of the
  previous prompt, so a decision evaluates only what changed; the same run with the cache reset
  before every decision shows the cost without that.

Run (models from ``../shared/scripts/fetch-llm.sh``):
    python benchmarks/bench_llm_decisions.py --model smollm2=~/.cache/agentloss-models/SmolLM2-135M-Instruct.Q4_1.gguf \
        --model qwen1.5b=~/.cache/agentloss-models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf --sequences 5 --stages 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

from agentloss.agents.base import DecisionContext, ObjectiveInfo
from agentloss.agents.llm import LLMAgent
from agentloss.backends import create_backend
from agentloss.constraints import WeightConstraints
from agentloss.records import StageRecord

NAMES = ["l1", "perceptual", "gan"]
OBJECTIVES = [
    ObjectiveInfo("niqe", False, "naturalness of image statistics, no reference needed", (0.0, 100.0)),
    ObjectiveInfo("psnr_y", True, "pixel fidelity to the reference (dB)", (0.0, 40.0), True),
]
NEEDS = "Lower NIQE as much as possible while losing at most 0.2 dB PSNR against the start."


def synthetic_history(stages: int, rng: random.Random) -> tuple[list[StageRecord], dict[str, float]]:
    w = {"l1": 1.0, "perceptual": 0.1, "gan": 0.01}
    niqe, psnr = 6.0 + rng.uniform(-0.5, 0.5), 30.0 + rng.uniform(-2, 2)
    hist = [StageRecord(0, 0, dict(w), {"niqe": niqe, "psnr_y": psnr})]
    for s in range(1, stages + 1):
        used = dict(w)
        niqe += -0.05 - 0.6 * (w["gan"] + 0.2 * w["perceptual"]) + rng.gauss(0, 0.12)
        psnr += 0.05 - 2.0 * w["gan"] - 0.3 * w["perceptual"] + rng.gauss(0, 0.05)
        w = {k: min(10.0, max(1e-3, v * rng.choice([0.5, 0.8, 1.0, 1.25, 2.0]))) for k, v in w.items()}
        hist.append(StageRecord(s, s * 5000, used, {"niqe": niqe, "psnr_y": psnr}, next_weights=dict(w)))
    return hist, w


def context(hist: list[StageRecord], current: dict[str, float], total: int) -> DecisionContext:
    # total_stages must stay fixed over a run, as in training: it is part of the system prompt.
    return DecisionContext(NAMES, current, dict(hist[0].weights), hist, OBJECTIVES,
                           WeightConstraints(max_weight=10.0, max_step=2.0), stage=hist[-1].stage,
                           total_stages=total, stage_length=5000)


def make_agent(path: str, grammar: bool, threads: int, max_tries: int = 3) -> tuple[LLMAgent, object]:
    backend = create_backend({"type": "llama_cpp", "model_path": path, "n_ctx": 8192, "n_threads": threads,
                              "seed": 0})
    return LLMAgent(backend, needs=NEEDS, use_grammar=grammar, max_tries=max_tries, max_tokens=160, seed=0), backend


def backend_reset(backend) -> None:
    """Forget llama.cpp's KV cache, so the next prompt is evaluated from its first token."""
    llm = getattr(backend, "_llm", None)
    if llm is not None:
        llm.reset()


def run_sequences(label: str, path: str, grammar: bool, sequences: int, stages: int, threads: int, seed: int,
                  reset: bool = False) -> dict:
    """``sequences`` training-like runs of ``stages`` decisions each, the history growing by a stage a time.

    As in training, one agent (and one llama.cpp context) serves the whole run, so each prompt
    shares its prefix with the previous one unless ``reset``.
    """
    agent, backend = make_agent(path, grammar, threads)
    first = final = 0
    times: dict[int, list[float]] = {}
    example = None
    for q in range(sequences):
        full, _ = synthetic_history(stages, random.Random(seed * 1000 + q))
        backend_reset(backend)  # a new training run starts cold
        for s in range(1, stages + 1):
            if reset:
                backend_reset(backend)
            t = time.perf_counter()
            d = agent.propose(context(full[: s + 1], dict(full[s].next_weights), stages + 1))
            times.setdefault(s, []).append(time.perf_counter() - t)
            if d.fallback is None:
                final += 1
                first += d.attempts == 1
                example = example or {"answer": d.exchange[-1]["content"], "weights": d.weights, "stage": s}
            print(f"  {label} grammar={grammar} reset={reset} run {q + 1}/{sequences} stage {s}/{stages} "
                  f"{'ok' if d.fallback is None else 'FALLBACK'} attempts={d.attempts} {times[s][-1]:.2f}s", flush=True)
    n = sequences * stages
    return {"model": label, "grammar": grammar, "reset": reset, "decisions": n, "first_try": first / n,
            "after_retries": final / n, "median_s": {s: statistics.median(v) for s, v in times.items()},
            "total_s": sum(sum(v) for v in times.values()), "example": example}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", action="append", required=True, help="LABEL=path/to/model.gguf (repeatable)")
    ap.add_argument("--sequences", type=int, default=5, help="training-like runs per model and grammar setting")
    ap.add_argument("--stages", type=int, default=20, help="decisions per run (history lengths 1..stages)")
    ap.add_argument("--lengths", default="1,10,20", help="history lengths to report times for")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-prefix", action="store_true", help="skip the cache-reset run")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    lengths = [int(x) for x in args.lengths.split(",")]
    models = [(m.split("=", 1)[0], os.path.expanduser(m.split("=", 1)[1])) for m in args.model]
    quality, prefix = [], []

    def dump() -> None:
        if args.json:
            Path(args.json).write_text(json.dumps({"quality": quality, "prefix": prefix}, indent=2, default=str))

    for label, path in models:
        for grammar in (True, False):
            quality.append(run_sequences(label, path, grammar, args.sequences, args.stages, args.threads, args.seed))
            dump()
        if not args.no_prefix:
            # The same first run with grammar, but the cache reset before every decision.
            prefix.append({"model": label, "cold": run_sequences(label, path, True, 1, args.stages, args.threads,
                                                                   args.seed, reset=True)})
            dump()

    print(f"\n## Answers that parse (LossAgent prompt, L1:Perceptual:GAN, NIQE + PSNR; "
          f"{args.sequences} runs x {args.stages} stages per row)")
    print(f"{'model':<10} {'grammar':<8} {'n':>4} {'1st try':>8} {'after retries':>14} "
          + " ".join(f"{'s @' + str(n) + ' stages':>13}" for n in lengths))
    for q in quality:
        print(f"{q['model']:<10} {str(q['grammar']):<8} {q['decisions']:>4} {q['first_try']:>8.0%} "
              f"{q['after_retries']:>14.0%} " + " ".join(f"{q['median_s'].get(n, float('nan')):>13.2f}"
                                                         for n in lengths))
    if prefix:
        print("\n## Prompt-prefix reuse: median s a decision, KV cache kept between stages vs reset before each")
        print(f"{'model':<10} " + " ".join(f"{'kept @' + str(n):>9} {'reset @' + str(n):>9}" for n in lengths)
              + f" {'run total kept/reset':>21}")
        for p, q in zip(prefix, [q for q in quality if q["grammar"]]):
            print(f"{p['model']:<10} " + " ".join(
                f"{q['median_s'].get(n, float('nan')):>9.2f} {p['cold']['median_s'].get(n, float('nan')):>9.2f}"
                for n in lengths) + f" {q['total_s'] / q['decisions'] * p['cold']['decisions']:>10.0f}/"
                f"{p['cold']['total_s']:<10.0f}")
    for q in quality:
        if q["example"]:
            print(f"\nexample answer ({q['model']}, grammar={q['grammar']}, stage {q['example']['stage']}): "
                  f"{q['example']['answer']!r}")
    dump()


if __name__ == "__main__":
    main()
