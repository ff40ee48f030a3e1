"""benchmarks/decisions.py: decision statistics and one decision in full, from stage records."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

from agentloss.records import RecordWriter, StageRecord


@pytest.fixture(scope="module")
def dec(load_benchmark) -> ModuleType:
    return load_benchmark("decisions")


def _guided(chosen: str, calls: list[dict], labels: str = "AB") -> dict:
    shown = [{"label": x, "action": f"move {x}", "weights": {"l1": 1.0, "gan": 0.01},
              "trial": {"niqe": 6.0 + i / 100}} for i, x in enumerate(labels)]
    exchange = ([{"role": "system", "content": "sys"}, {"role": "user", "content": "Options: A) ... B) ..."}]
                + [{"role": "assistant", "content": f"Choice: {chosen}\nThoughts: because", **c} for c in calls])
    return {"weights": {"l1": 1.0, "gan": 0.01}, "exchange": exchange if calls else [],
            "info": {"chosen": {"label": chosen, "action": f"move {chosen}"}, "shown": shown,
                     "trials": {"steps": 5, "seconds": 2.0 if calls else 0.0}}}


def _write(run_dir: Path, decisions: list[dict], fallbacks: list[str | None]) -> None:
    w = RecordWriter(run_dir)
    w.append(StageRecord(0, 0, {"l1": 1.0, "gan": 0.01}))
    for i, (d, fb) in enumerate(zip(decisions, fallbacks), start=1):
        w.append(StageRecord(i, 10 * i, {"l1": 1.0, "gan": 0.01}, scores={"niqe": 6.0}, decision=d, fallback=fb,
                             next_weights={"l1": 1.0, "gan": 0.01}))
    final = len(decisions) + 1  # as the scheduler writes the final stage: no decision is made
    w.append(StageRecord(final, 10 * final, {"l1": 1.0, "gan": 0.01}, scores={"niqe": 6.0},
                         decision={"skipped": "final stage: no later stage would use new weights"}))


def test_stats_and_example(dec, tmp_path, capsys):
    call = {"seconds": 10.0, "prompt_tokens": 800, "prompt_eval_tokens": 300}
    _write(tmp_path / "guided" / "seed0", [_guided("B", [call]), _guided("A", [], labels="A"),
                                           _guided("A", [{**call, "seconds": 30.0}, call])], [None, None, None])
    _write(tmp_path / "guided" / "seed1", [_guided("A", [call])], ["answer unusable: fell back to A"])
    _write(tmp_path / "fixed" / "seed0", [{"weights": {"l1": 1.0}, "thoughts": "fixed weights"}], [None])
    runs = dec.method_runs(tmp_path)
    assert sorted(runs) == ["fixed", "guided"] and sorted(runs["guided"]) == [0, 1]
    s = dec.decision_stats(runs["guided"])
    assert (s["seeds"], s["decisions"], s["asked"], s["not_a"], s["retried"], s["fallbacks"]) == (2, 4, 3, 1, 1, 1)
    assert s["labels"] == {"A": 2, "B": 1}
    assert s["call_s_median"] == 10.0 and s["prompt_eval_tokens_median"] == 300
    assert s["llm_s_per_run"] == 30.0 and s["trials_s_per_run"] == 3.0  # (10 + 30 + 10 + 10) s, 2 x 3 s, over 2 seeds
    f = dec.decision_stats(runs["fixed"])
    assert (f["decisions"], f["asked"], f["not_a"]) == (1, 0, 0)
    assert dec.main([str(tmp_path), "--example", "guided/0/1"]) == 0
    out = capsys.readouterr().out
    assert "A:2 B:1" in out and "option B: move B" in out and "Choice: B" in out and "chosen: B" in out
    assert dec.main([str(tmp_path), "--methods", "nope"]) == 1
    assert dec.main([str(tmp_path / "empty")]) == 1
    with pytest.raises(ValueError, match="no stage 9"):
        dec.format_example(runs["guided"][0], 9)
