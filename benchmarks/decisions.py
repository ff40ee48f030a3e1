"""How did the language model decide? Decision statistics of guided-agent runs, from their stage records.

Reads ``RUN_DIR/<method>/seed<k>/stages.jsonl`` (what ``bench_quality.py --run-dir`` writes) and
prints, per method: stage-end decisions, how often the model was asked (more than one option
left after the guard and the trials), how often it took another option than the recommended A,
answers that needed a retry or fell back, and the backend's time per call (prompt tokens
evaluated vs reused from llama.cpp's cache). ``--example METHOD/SEED/STAGE`` prints one whole
decision: the options the model saw, what it chose and its explanation.

    python benchmarks/decisions.py runs/bench_quality
    python benchmarks/decisions.py runs/bench_quality --example guided-trials-qwen1.5b/15/1
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agentloss.records import read_records
from agentloss.types import DecisionRecord, StageRecord


def method_runs(root: Path) -> dict[str, dict[int, list[StageRecord]]]:
    """``{method: {seed: records}}`` for every ``<method>/seed<k>`` under ``root`` with stage records."""
    runs: dict[str, dict[int, list[StageRecord]]] = {}
    for path in sorted(root.glob("*/seed*/stages.jsonl")):
        seed_dir = path.parent
        try:
            seed = int(seed_dir.name.removeprefix("seed"))
        except ValueError:
            continue
        runs.setdefault(seed_dir.parent.name, {})[seed] = read_records(seed_dir)
    return runs


def _calls(decision: DecisionRecord) -> list[dict[str, Any]]:
    return [m for m in decision.exchange if m.get("role") == "assistant"]


def decision_stats(records_by_seed: dict[int, list[StageRecord]]) -> dict[str, Any]:
    """Counts and call timings over every stage-end decision of one method (stage 0 has none)."""
    labels: Counter[str] = Counter()
    decided = asked = retried = fallbacks = 0
    seconds: list[float] = []
    trial_s = 0.0
    prompt: list[int] = []
    evaluated: list[int] = []
    for records in records_by_seed.values():
        for rec in records:
            d = rec.decision
            if rec.stage == 0 or d is None or d.skipped:
                continue  # S0 has no decision; the final stage's is skipped (no later stage would use it)
            decided += 1
            fallbacks += rec.fallback is not None
            info = d.info
            trials = info.get("trials")
            if isinstance(trials, dict):
                trial_s += float(trials.get("seconds") or 0.0)
            calls = _calls(d)
            if not calls:
                continue  # one option left (or no model): nothing to ask
            asked += 1
            retried += len(calls) > 1
            if "shown" in info:  # a guided decision: which of the ranked options the model took
                labels[((info.get("chosen") or {}).get("label")) or "fallback"] += 1
            for c in calls:
                if "seconds" in c:
                    seconds.append(float(c["seconds"]))
                if "prompt_tokens" in c:
                    prompt.append(int(c["prompt_tokens"]))
                if "prompt_eval_tokens" in c:
                    evaluated.append(int(c["prompt_eval_tokens"]))

    def med(xs: list[float] | list[int]) -> float:
        return statistics.median(xs) if xs else float("nan")

    return {"seeds": len(records_by_seed), "decisions": decided, "asked": asked, "labels": dict(labels),
            "not_a": sum(labels.values()) - labels.get("A", 0), "retried": retried, "fallbacks": fallbacks,
            "call_s_median": med(seconds),
            "trials_s_per_run": trial_s / max(1, len(records_by_seed)),
            "llm_s_per_run": sum(seconds) / max(1, len(records_by_seed)), "prompt_tokens_median": med(prompt),
            "prompt_eval_tokens_median": med(evaluated)}


def format_stats(stats: dict[str, dict[str, Any]]) -> str:
    head = (f"{'method':<28} {'seeds':>5} {'decisions':>9} {'asked':>6} {'not A':>6} {'choices':<18} "
            f"{'retried':>7} {'fallback':>8} {'s/call':>7} {'prompt tok':>10} {'evaluated':>9} {'LLM s/run':>9} "
            f"{'trials s/run':>12}")
    lines = [head]
    for method, s in stats.items():
        choices = " ".join(f"{k}:{v}" for k, v in sorted(s["labels"].items())) or "-"
        lines.append(f"{method:<28} {s['seeds']:>5} {s['decisions']:>9} {s['asked']:>6} {s['not_a']:>6} "
                     f"{choices:<18} {s['retried']:>7} {s['fallbacks']:>8} {s['call_s_median']:>7.1f} "
                     f"{s['prompt_tokens_median']:>10.0f} {s['prompt_eval_tokens_median']:>9.0f} {s['llm_s_per_run']:>9.1f} "
                     f"{s['trials_s_per_run']:>12.1f}")
    lines.append("asked: decisions the model was asked (a guided agent with one option left keeps it unasked); "
                 "not A, choices: which of a guided agent's ranked options the model took; s/call, prompt tok, evaluated: medians "
                 "per call (evaluated = prompt tokens not reused from the backend's cache); LLM s/run, trials s/run: the "
                 "agent time of a run spent in model calls and in snapshot trials")
    return "\n".join(lines)


def format_example(records: list[StageRecord], stage: int) -> str:
    """One decision in full: the user prompt's options, the answer, the weights it led to."""
    rec = next((r for r in records if r.stage == stage), None)
    if rec is None:
        raise ValueError(f"no stage {stage} in these records (stages {[r.stage for r in records]})")
    d = rec.decision or DecisionRecord()
    info = d.info
    out = [f"stage {rec.stage}: weights {rec.weights} -> {rec.next_weights}; probe scores {rec.scores}"]
    for opt in info.get("shown") or []:
        trial = opt.get("trial") or {}
        tried = f"; tried: {', '.join(f'{k} {v:.4f}' for k, v in trial.items())}" if trial else ""
        out.append(f"  option {opt['label']}: {opt['action']} -> {opt['weights']}{tried}")
    for msg in d.exchange:
        if msg.get("role") == "user":
            out.append("--- prompt (user part) ---\n" + str(msg.get("content", "")))
        if msg.get("role") == "assistant":
            timing = {k: msg[k] for k in ("seconds", "prompt_tokens", "prompt_eval_tokens", "completion_tokens")
                      if k in msg}
            out.append(f"--- answer {timing} ---\n" + str(msg.get("content", "")))
    out.append(f"chosen: {(info.get('chosen') or {}).get('label')} "
               f"({(info.get('chosen') or {}).get('action')}); fallback: {rec.fallback}")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("run_dir", help="the benchmark's --run-dir (RUN_DIR/<method>/seed<k>/stages.jsonl)")
    ap.add_argument("--methods", default="", help="comma-separated methods to show (default: all with records)")
    ap.add_argument("--example", metavar="METHOD/SEED/STAGE", help="print one decision in full")
    args = ap.parse_args(argv)
    runs = method_runs(Path(args.run_dir))
    if not runs:
        print(f"no stage records under {args.run_dir}", file=sys.stderr)
        return 1
    wanted = [m.strip() for m in args.methods.split(",") if m.strip()] or list(runs)
    missing = [m for m in wanted if m not in runs]
    if missing:
        print(f"no records for {missing}; found {sorted(runs)}", file=sys.stderr)
        return 1
    print(format_stats({m: decision_stats(runs[m]) for m in wanted}))
    if args.example:
        method, seed, stage = args.example.rsplit("/", 2)
        if method not in runs or int(seed) not in runs[method]:
            print(f"no records for {method} seed {seed}", file=sys.stderr)
            return 1
        print("\n" + format_example(runs[method][int(seed)], int(stage)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
