"""How often does the demo's agent beat Fixed? Per-seed table and count from ``agentloss compare`` results.

Reads one or more ``results.json`` written by ``agentloss compare CONFIG --seeds ...`` (several
files: seeds run in separate processes), pairs every method with ``fixed`` per seed on the
evaluation set's goal metric (lower is better, e.g. NIQE) and PSNR, and counts the seeds where a
method is better on the goal while losing at most ``--budget`` dB PSNR (the README's claim).
Prints a markdown table and the paired means with 95 % Student-t intervals
(``agentloss.tasks.stats.paired_interval``).

    agentloss compare examples/configs/demo.yaml --seeds 1,2,3 --out runs/demo_a &
    agentloss compare examples/configs/demo.yaml --seeds 4,5 --out runs/demo_b &
    wait; python benchmarks/demo_seeds.py runs/demo_a/results.json runs/demo_b/results.json
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agentloss.tasks.stats import finite, paired_interval


def per_seed(paths: Sequence[str]) -> tuple[dict[str, dict[int, dict[str, float]]], str]:
    """method -> seed -> evaluation scores of the one evaluation set (its name is returned too)."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    sets: set[str] = set()
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        seeds = data["seeds"]
        for method, m in data["methods"].items():
            runs = m["runs"] if "runs" in m else {str(seeds[0]): m}  # one seed: the method's run itself
            for seed, run in runs.items():
                if int(seed) in out.setdefault(method, {}):
                    raise ValueError(f"{path}: {method} seed {seed} appears twice")
                (name, scores), = run["evaluation"].items()  # the demo evaluates one set
                sets.add(name)
                out[method][int(seed)] = dict(scores)
    if len(sets) != 1:
        raise ValueError(f"the files evaluate different sets: {sorted(sets)}")
    return out, sets.pop()


def count(scores: Mapping[str, Mapping[int, Mapping[str, float]]], goal: str = "niqe", fidelity: str = "psnr",
          budget: float = 0.2) -> dict[str, Any]:
    """Per method (not ``fixed``): per-seed differences, the count of wins, and paired statistics."""
    base = scores["fixed"]
    out: dict[str, Any] = {}
    for method, runs in scores.items():
        if method == "fixed":
            continue
        seeds = sorted(set(runs) & set(base))
        d_goal = [runs[s][goal] - base[s][goal] for s in seeds]
        d_fid = [runs[s][fidelity] - base[s][fidelity] for s in seeds]
        wins = [s for s, g, f in zip(seeds, d_goal, d_fid) if finite(g) and g < 0 and f >= -budget]
        out[method] = {"seeds": seeds, "d_goal": d_goal, "d_fidelity": d_fid, "wins": wins,
                       "goal": paired_interval([runs[s][goal] for s in seeds], [base[s][goal] for s in seeds], True),
                       "fidelity": paired_interval([runs[s][fidelity] for s in seeds],
                                                   [base[s][fidelity] for s in seeds], False)}
    return out


def _ci(s: Any) -> str:
    return f"{s.mean:+.3f} [{s.lo:+.3f}, {s.hi:+.3f}]" if finite(s.lo) else f"{s.mean:+.3f}"


def report(result: Mapping[str, Any], goal: str, fidelity: str, budget: float) -> str:
    lines = [f"| method | seeds | better on {goal} within {budget} dB | Δ{goal} vs fixed [95 % CI] | "
             f"Δ{fidelity} dB vs fixed [95 % CI] | per seed Δ{goal} / Δ{fidelity} |", "|---|---:|---:|---:|---:|---|"]
    for method, r in result.items():
        g, f = r["goal"], r["fidelity"]
        per = ", ".join(f"s{s} {a:+.3f}/{b:+.3f}" for s, a, b in zip(r["seeds"], r["d_goal"], r["d_fidelity"]))
        lines.append(f"| {method} | {len(r['seeds'])} | {len(r['wins'])} of {len(r['seeds'])} | {_ci(g)} | {_ci(f)} | {per} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("results", nargs="+", help="results.json of agentloss compare (one or more)")
    ap.add_argument("--goal", default="niqe", help="the goal metric (lower is better)")
    ap.add_argument("--fidelity", default="psnr")
    ap.add_argument("--budget", type=float, default=0.2, help="dB of fidelity a win may lose")
    args = ap.parse_args(argv)
    scores, name = per_seed(args.results)
    if "fixed" not in scores:
        ap.error("the results hold no 'fixed' method to pair with")
    result = count(scores, args.goal, args.fidelity, args.budget)
    print(f"evaluation set: {name}\n")
    print(report(result, args.goal, args.fidelity, args.budget))
    return result


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
