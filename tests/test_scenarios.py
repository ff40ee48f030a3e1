"""The scenario table (agentloss.tasks.scenarios) and the scenario benchmark (benchmarks/bench_scenarios.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import agentloss.feedback as feedback
from agentloss.agents.guided import GuidedAgent
from agentloss.agents.population import PopulationAgent
from agentloss.constraints import WeightConstraints
from agentloss.tasks.scenarios import PAPER_START, SCENARIOS, get_scenario, hf_gap
from agentloss.types import DecisionContext, ObjectiveInfo, StageRecord


@pytest.fixture(scope="module")
def bs(load_benchmark):
    load_benchmark("bench_quality")  # bench_scenarios imports it by name
    return load_benchmark("bench_scenarios")


def test_every_scenario_is_complete_and_consistent():
    assert {"paper-start", "gan-x10", "gan-div10-fft-x10", "mscn-off", "text-goal"} <= set(SCENARIOS)
    for s in SCENARIOS.values():
        c = s.weight_constraints()
        c.check_bounds(s.initial_weights)
        assert s.primary.metric in s.metrics and set(s.hidden) <= set(s.metrics) and s.needs
        assert not set(s.hidden) & set(s.objectives)  # a hidden statistic is never shown to the agent
        assert json.loads(json.dumps(s.to_dict()))["primary"]["metric"] == s.primary.metric
        assert s.weight_constraints() is not c  # each run gets its own (mutable) constraints
    assert get_scenario("paper-start").initial_weights == PAPER_START
    assert get_scenario("gan-x10").initial_weights == {"l1": 1.0, "fft": 0.1, "gan": 0.1}
    assert get_scenario("gan-div10-fft-x10").initial_weights == {"l1": 1.0, "fft": 1.0, "gan": 0.001}
    assert get_scenario("text-goal").objectives == () and get_scenario("text-goal").text_sources
    with pytest.raises(KeyError, match="did you mean gan-x10"):
        get_scenario("gan-x1O")


def _ctx(weights, stage_floor_scores=None):
    history = [StageRecord(0, 0, dict(weights), {"niqe": 6.0, "psnr_y": 30.0}),
               StageRecord(1, 125, dict(weights), stage_floor_scores or {"niqe": 5.9, "psnr_y": 30.1})]
    return DecisionContext(list(weights), dict(weights), dict(weights), history,
                           [ObjectiveInfo("niqe", False), ObjectiveInfo("psnr_y", True, needs_reference=True)],
                           get_scenario("mscn-off").weight_constraints(), 1, 8, 125)


def test_agents_switch_a_zero_weight_on_from_the_floor_unless_its_bounds_pin_it_off():
    s = get_scenario("mscn-zero")
    start = dict(s.initial_weights)
    c = s.weight_constraints()
    assert start["mscn"] == 0.0 and c.step_floor == 0.01
    assert c.allowed_range("mscn", 0.0) == (0.0, c.step_floor * c.max_step)
    ctx = _ctx(start)
    ctx.constraints = c
    guided = GuidedAgent(backend="none", step=2.0)  # the kept design's step
    assert "mscn" in guided.proposer.tunable(ctx)
    moves = {m.action: m for m in guided.candidates(ctx)[0]}
    on = moves["switch on mscn at 0.02"]
    assert on.weights == {**start, "mscn": 0.02} and on.vetoed is None
    assert on.log_change == {"mscn": pytest.approx(math.log(2.0))}  # one ordinary step from the floor
    assert not any(a.startswith(("raise mscn", "lower mscn")) for a in moves)  # off: no factor move
    calls = []
    ctx.trial = lambda ws, steps: calls.append(ws) or [{"niqe": 6.0 - w["mscn"], "psnr_y": 30.0} for w in ws]
    d = PopulationAgent(trials=8, seed=0).propose(ctx)
    switched = [w["mscn"] for w in calls[0][1:] if w["mscn"] > 0]
    assert 0 < len(switched) < 8  # a factor above 1 switches it on, below leaves it off
    assert all(c.step_floor < v <= c.step_floor * c.max_step for v in switched)
    assert d.weights["mscn"] == max(switched) and "mscn on at" in d.action
    # Pinned off by its bounds: neither agent touches it.
    pinned = WeightConstraints(max_weight=10.0, max_step=2.0, step_floor=0.01, per_loss={"mscn": (0.0, 0.0)})
    ctx = _ctx(start)
    ctx.constraints = pinned
    assert "mscn" not in guided.proposer.tunable(ctx)
    calls.clear()
    ctx.trial = lambda ws, steps: calls.append(ws) or [{"niqe": 6.0, "psnr_y": 30.0} for _ in ws]
    PopulationAgent(trials=8).propose(ctx)
    assert all(w["mscn"] == 0.0 for w in calls[0])


def test_switching_on_is_fitted_as_one_step_from_the_floor():
    from agentloss.agents.effects import estimate_effects

    # mscn off for two stages, then on at 0.02 (floor 0.01): NIQE drops 0.3 beyond the drift of -0.05.
    w = [0.0, 0.0, 0.0, 0.02, 0.02, 0.04]
    niqe = [6.0, 5.95, 5.90, 5.55, 5.50, 5.15]  # doubling again (0.02 -> 0.04): the same -0.3
    hist = [StageRecord(k, k, {"l1": 1.0, "mscn": m}, {"niqe": v}) for k, (m, v) in enumerate(zip(w, niqe))]
    eff = estimate_effects(hist, "niqe", ["mscn"], ridge=0.0, weight_floor=0.01)
    assert eff.slopes["mscn"] == pytest.approx(-0.3 / math.log(2), rel=1e-6) and eff.drift == pytest.approx(-0.05)
    # Without the floor, off would be log(1e-12): the switch-on looks like a 22-e-fold change.
    assert abs(estimate_effects(hist, "niqe", ["mscn"], ridge=0.0).slopes["mscn"]) < 0.05


def test_the_numbers_only_proxy_sees_numbers_in_the_text_goal(bs, niqe_params):
    args = bs.parse_args(["--quick", "--scenarios", "text-goal", "--methods",
                          "fixed,guided-trials60-numbers-proxy"])
    methods = bs.resolve_methods(args)
    assert methods["guided-trials60-numbers-proxy"]["probe"] == ["niqe", "psnr_y"]
    assert "probe" not in bs.scenario_methods(methods, get_scenario("text-goal"))["guided-trials60-numbers-proxy"]
    split = bs.bq.build_split()
    setup = bs.make_scenario_setup(args, split, get_scenario("text-goal"), methods,
                                   {"pretrained_model_path": niqe_params})
    per = bs.method_setups(setup, methods, {"pretrained_model_path": niqe_params})
    assert per["fixed"] is setup
    names = [getattr(o, "name", "") for o in per["guided-trials60-numbers-proxy"].objectives(torch.device("cpu"))]
    assert names == ["niqe", "psnr_y"]
    from agentloss.tasks.preflight import check_setup

    check_setup(per["guided-trials60-numbers-proxy"], ["guided-trials60-numbers-proxy"])  # no "only text" refusal
    with pytest.raises(ValueError, match="probe"):
        bs.resolve_methods(bs.parse_args(["--methods", "x", "--method", 'x={"type": "fixed", "probe": ["lpips"]}']))


def test_the_hidden_statistic_is_the_critics_ratio_as_a_distance():
    torch.manual_seed(0)
    ref = torch.rand(3, 32, 32)
    smooth = torch.nn.functional.avg_pool2d(ref[None], 3, 1, 1)[0]
    grainy = (ref + 0.3 * torch.randn_like(ref)).clamp(0, 1)
    ratio = feedback.high_frequency_ratio
    assert hf_gap([ref], [ref]) == 0.0
    assert hf_gap([smooth], [ref]) == pytest.approx(-math.log(ratio([smooth], [ref]))) and ratio([smooth], [ref]) < 1
    assert hf_gap([grainy], [ref]) == pytest.approx(math.log(ratio([grainy], [ref]))) and ratio([grainy], [ref]) > 1
    assert hf_gap([torch.full_like(ref, 0.5)], [ref]) == math.inf  # a flat output has no detail at all


def test_text_goal_runs_only_with_agents_that_read_text(bs, niqe_params):
    s = get_scenario("text-goal")
    assert s.missing() is None and s.objectives == () and s.hidden == ("hf_gap",)
    bs.check_scenario(s)
    args = bs.parse_args(["--quick", "--scenarios", "text-goal"])
    split = bs.bq.build_split()
    setup = bs.make_scenario_setup(args, split, s, bs.resolve_methods(args), {"pretrained_model_path": niqe_params})
    objectives = setup.objectives(torch.device("cpu"))
    assert [type(o).__name__ for o in objectives] == ["HighFrequencyCritic"]
    from agentloss.tasks.config import ConfigError
    from agentloss.tasks.preflight import check_setup

    for method in ("guided-trials60-numbers", "population"):  # they rank by scores and refuse text-only runs
        with pytest.raises(ConfigError, match="only text"):
            check_setup(setup, [method])


def test_benchmark_configs_fail_before_any_work(bs, tmp_path):
    args = bs.parse_args(["--quick"])
    assert [s.name for s in args.scenario_list] == ["gan-x10", "gan-div10-fft-x10", "mscn-off"]
    methods = bs.resolve_methods(args)
    assert list(methods) == ["fixed", "guided-trials60-numbers", "population"]
    assert methods["population"]["trial_steps"] == 2  # --quick shortens the trials, never the design's name
    full = bs.resolve_methods(bs.parse_args([]))
    assert full["guided-trials60-numbers"] == {"type": "guided", "trials": 2, "trial_steps": 60, "step": 2.0,
                                               "backend": "none"}
    assert full["population"] == {"type": "population", "trials": 2, "trial_steps": 60, "step": 2.0}
    with_goal = bs.scenario_methods(full, get_scenario("gan-x10"))
    assert with_goal["guided-trials60-numbers"]["needs"] == get_scenario("gan-x10").needs
    assert "needs" not in with_goal["population"] and "needs" not in with_goal["fixed"]
    assert bs.BUILTIN_METHODS["llm-paper"] == {"type": "llm", "backend": None}  # the embedded model, named explicitly
    for bad in (["--scenarios", "gan-x11"], ["--backbone", "swinir_huge"], ["--backbone", "promptir_tiny"]):
        with pytest.raises(SystemExit):
            bs.parse_args(bad)
    for bad in (["--methods", "nope"], ["--methods", "g", "--method", 'g={"type": "guided"}'],
                ["--methods", "p", "--method", 'p={"type": "population", "colour": 1}']):
        with pytest.raises(ValueError):
            bs.resolve_methods(bs.parse_args(bad))
    # --backbone swaps the network and caches its warm start under its own name.
    args = bs.parse_args(["--quick", "--backbone", "swinir_light_tiny", "--cache-dir", str(tmp_path)])
    split = bs.bq.build_split()
    setup = bs.make_scenario_setup(args, split, get_scenario("gan-x10"), bs.resolve_methods(args), {})
    assert type(setup.model()).__name__ == "SwinIR" and setup.warm.cache.name.startswith("swinir_light_tiny_l1_")
    assert setup.loss().weights == {"l1": 1.0, "fft": 0.1, "gan": 0.1}
    # Records per network: one scenario run on two networks side by side writes two sets of records.
    assert setup.run_dir("fixed", 3).parts[-3:] == ("gan-x10-swinir_light_tiny", "fixed", "seed3")


@pytest.mark.slow
def test_quick_run_pairs_every_method_and_merges(bs, tmp_path, niqe_params, capsys):
    torch.set_num_threads(1)
    common = ["--quick", "--scenarios", "gan-x10", "--stages", "2", "--stage-iters", "2", "--niqe-params", niqe_params,
              "--run-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")]
    results = bs.main([*common, "--seeds", "2", "--out", str(tmp_path / "all.json")])  # ~1 min on 2 idle cores
    printed = capsys.readouterr().out
    assert "### gan-x10" in printed and "| population | 2 |" in printed and "guided-trials60-numbers − population" in printed
    assert "[6/6] gan-x10 / population / seed 1" in printed
    sc = results["scenarios"]["gan-x10"]
    runs = {m: sc["methods"][m]["runs"] for m in sc["methods"]}
    assert all([r["seed"] for r in rs] == [0, 1] for rs in runs.values())
    for k in range(2):  # same start, stream and discriminator: identical until the agents differ
        s0 = {m: rs[k]["stages"][0]["scores"]["niqe"] for m, rs in runs.items()}
        assert len(set(s0.values())) == 1
    assert all(r["final_weights"] == {"l1": 1.0, "fft": 0.1, "gan": 0.1} for r in runs["fixed"])
    assert all(r["trial_iterations"] == 3 * 2 for r in runs["population"])  # 1 decision x (keep + 2) x 2 steps
    summary = results["summary"]["gan-x10"]
    d = summary["vs_fixed"]["population"]["goal"]
    want = [p["eval"]["mean"]["niqe"] - f["eval"]["mean"]["niqe"] for p, f in zip(runs["population"], runs["fixed"])]
    assert d["n"] == 2 and d["diffs"] == pytest.approx(want) and math.isfinite(d["p_sign_flip"])
    assert summary["kept_vs_population"]["goal"]["n"] == 2 and summary["endpoints"]["enough_seeds"] is False
    fixed_scatter = summary["methods"]["fixed"]["scatter"]
    assert fixed_scatter["moves"] == [0, 0] and fixed_scatter["final_range"]["gan"] == [0.1, 0.1]
    moved = [sum(st["next_weights"] not in (None, st["weights"]) for st in r["stages"]) for r in runs["population"]]
    assert summary["methods"]["population"]["scatter"]["moves"] == moved and "Scatter: " in printed
    assert results["settings"]["probe_psnr"] == "y, 2 px border, 8-bit"  # older files, without it, never merge
    assert (tmp_path / "runs" / "gan-x10" / "population" / "seed1" / "stages.jsonl").is_file()
    # Seeds run in two processes merge into the same paired report; a seed twice is refused.
    for k in range(2):
        part = {**results, "scenarios": {"gan-x10": {**sc, "methods": {
            m: {**v, "runs": [v["runs"][k]]} for m, v in sc["methods"].items()}}}}
        (tmp_path / f"s{k}.json").write_text(json.dumps(part))
    merged = bs.main(["--merge", str(tmp_path / "s0.json"), str(tmp_path / "s1.json"), "--out", str(tmp_path / "m.json")])
    assert json.loads(json.dumps(merged["summary"]["gan-x10"])) == json.loads(json.dumps(summary))
    with pytest.raises(ValueError, match="already in"):
        bs.merge_results([str(tmp_path / "s0.json"), str(tmp_path / "s0.json")])


@pytest.mark.slow
def test_text_goal_records_the_critic_and_scores_the_hidden_statistic(bs, tmp_path, niqe_params):
    torch.set_num_threads(1)
    results = bs.main(["--quick", "--scenarios", "text-goal", "--methods", "fixed,random", "--seeds", "1",
                       "--stages", "2", "--stage-iters", "2", "--niqe-params", niqe_params,
                       "--run-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache"),
                       "--out", str(tmp_path / "text.json")])
    assert math.isfinite(results["start"]["eval"]["mean"]["hf_gap"])
    runs = results["scenarios"]["text-goal"]["methods"]["random"]["runs"]
    for r in runs:
        per = [v["hf_gap"] for v in r["eval"]["per_image"].values()]
        assert r["eval"]["mean"]["hf_gap"] == pytest.approx(sum(per) / len(per)) and r["eval_last"]["mean"]["hf_gap"] > 0
        assert r["stages"][0]["scores"] == {}  # the agent is shown no number
    summary = results["summary"]["text-goal"]
    assert summary["goal"] == "hf_gap" and summary["vs_fixed"]["random"]["goal"]["n"] == 1
    from agentloss.records import read_records

    records = read_records(tmp_path / "runs" / "text-goal" / "random" / "seed0")
    assert all(r.texts["critic"] in (feedback.HighFrequencyCritic.SMOOTH, feedback.HighFrequencyCritic.NOISY,
                                     feedback.HighFrequencyCritic.NATURAL) for r in records)
