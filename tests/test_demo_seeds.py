"""benchmarks/demo_seeds.py: the demo's per-seed count against Fixed, from agentloss compare's results.json."""

from __future__ import annotations

import json

import pytest


def _results(path, seeds, scores):
    """A results.json as agentloss compare writes it (one seed: the run itself; several: runs by seed)."""
    def run(m, s):
        return {"evaluation": {"photos": scores[m][s]}, "timings": {}}
    methods = {m: run(m, seeds[0]) if len(seeds) == 1 else {"mean": {}, "runs": {str(s): run(m, s) for s in seeds}}
               for m in scores}
    path.write_text(json.dumps({"seeds": seeds, "methods": methods}))
    return str(path)


def test_counts_wins_within_the_psnr_budget_over_files(load_benchmark, tmp_path, capsys):
    ds = load_benchmark("demo_seeds")
    a = _results(tmp_path / "a.json", [1, 2], {
        "fixed": {1: {"niqe": 5.0, "psnr": 30.0}, 2: {"niqe": 5.0, "psnr": 30.0}},
        "agent": {1: {"niqe": 4.9, "psnr": 29.9}, 2: {"niqe": 4.8, "psnr": 29.7}},   # seed 2 loses 0.3 dB
        "paper": {1: {"niqe": 5.1, "psnr": 30.0}, 2: {"niqe": 4.9, "psnr": 30.1}}})
    b = _results(tmp_path / "b.json", [3], {
        "fixed": {3: {"niqe": 5.0, "psnr": 30.0}}, "agent": {3: {"niqe": 4.95, "psnr": 29.85}},
        "paper": {3: {"niqe": 5.2, "psnr": 30.0}}})
    res = ds.main([a, b])
    assert res["agent"]["seeds"] == [1, 2, 3] and res["agent"]["wins"] == [1, 3]
    assert res["paper"]["wins"] == [2]
    assert res["agent"]["d_goal"] == pytest.approx([-0.1, -0.2, -0.05])
    out = capsys.readouterr().out
    assert "| agent | 3 | 2 of 3 |" in out and "| paper | 3 | 1 of 3 |" in out
    with pytest.raises(ValueError, match="twice"):
        ds.main([a, a])
