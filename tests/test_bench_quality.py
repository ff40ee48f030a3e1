"""benchmarks/bench_quality.py: its statistics (doctests and edge cases), method configs, and a --quick run."""

from __future__ import annotations

import doctest
import json
import math
import sys
import time
from types import ModuleType

import pytest
import torch


@pytest.fixture(scope="module")
def bq(load_benchmark) -> ModuleType:
    return load_benchmark("bench_quality")


def test_doctests(bq):
    from agentloss.tasks import stats  # the benchmark's statistics live in the library now

    results = [doctest.testmod(m, verbose=False) for m in (bq, stats)]
    assert sum(r.attempted for r in results) >= 4 and not any(r.failed for r in results)


def test_paired_interval_directions_and_edges(bq):
    worse = bq.paired_interval([31.0, 31.2, 30.9], [31.5, 31.6, 31.4], lower_is_better=False)
    assert worse.verdict == "worse" and worse.hi < 0 and worse.n == 3
    # Identical runs (a method equal to the baseline): zero-width interval at 0 is not a difference.
    same = bq.paired_interval([5.0, 5.1], [5.0, 5.1], lower_is_better=True)
    assert same.verdict == "within noise" and same.mean == 0
    # A constant non-zero shift is a difference even with a zero-width interval.
    assert bq.paired_interval([4.0, 5.0], [4.5, 5.5], lower_is_better=True).verdict == "better"
    one = bq.paired_interval([1.0], [2.0], lower_is_better=True)
    assert one.verdict == "n/a" and one.mean == -1.0 and math.isnan(one.lo)


def test_t_quantile_table_matches_scipy(bq, monkeypatch):
    with_scipy = [bq.t_quantile(df) for df in (1, 4, 9, 29)]
    monkeypatch.setitem(sys.modules, "scipy.stats", None)  # import then fails: the table is used
    table = [bq.t_quantile(df) for df in (1, 4, 9, 29)]
    assert table == pytest.approx(with_scipy, abs=2e-3)


def test_method_configs(bq, tmp_path):
    cfg = tmp_path / "agent.yaml"
    cfg.write_text("agent:\n  type: random\n  max_factor: 2.0\n")
    args = bq.parse_args(["--methods", "fixed,llm-paper", "--method", f"r2={cfg}",
                          "--method", 'r3={"type": "random", "seed": 7}', "--gguf", "m.gguf", "--threads", "2"])
    methods = bq.resolve_methods(args)
    assert list(methods) == ["fixed", "llm-paper", "r2", "r3"]
    assert methods["llm-paper"]["backend"] == {"type": "llama_cpp", "model_path": "m.gguf", "n_threads": 2}
    assert methods["llm-paper"]["needs"] == bq.NEEDS
    assert bq.agent_config_for_seed(methods["r2"], 3) == {"type": "random", "max_factor": 2.0, "seed": 3}
    assert bq.agent_config_for_seed(methods["r3"], 3)["seed"] == 7  # an explicit seed is kept
    assert bq.agent_config_for_seed(methods["fixed"], 3) == {"type": "fixed"}
    for bad in (["--methods", "nope"], ["--methods", "x", "--method", 'x={"type": "nope"}'],
                ["--methods", "x", "--method", 'x={"type": "random", "colour": 1}'], ["--method", "x"]):
        with pytest.raises(ValueError):
            bq.resolve_methods(bq.parse_args(bad))


def test_split_keeps_probe_and_eval_apart(bq):
    split = bq.build_split()
    assert len(split.probe_lq) == 6 and all(min(h.shape[-2:]) >= 192 for h in split.probe_hr)
    assert all(min(p.gt.shape[-2:]) >= 256 for p in split.eval_pairs)
    names = [p.name for p in split.eval_pairs]
    assert "motorcycle_right" not in names and not set(names) & set(split.description["train"])
    for hr in split.probe_hr:  # no probe crop is an evaluation image
        assert not any(p.gt.shape == hr.shape and torch.equal(p.gt, hr) for p in split.eval_pairs)


@pytest.mark.slow
def test_quick_run_end_to_end(bq, tmp_path, niqe_params, capsys):
    torch.set_num_threads(1)
    out = tmp_path / "res" / "quality.json"
    t = time.perf_counter()
    results = bq.main(["--quick", "--methods", "fixed,random", "--seeds", "2", "--stages", "2", "--stage-iters", "3",
                       "--torch-threads", "1", "--niqe-params", niqe_params, "--out", str(out),
                       "--run-dir", str(tmp_path / "runs"), "--cache-dir", str(tmp_path / "cache")])
    assert time.perf_counter() - t < 90
    printed = capsys.readouterr().out
    assert "[random seed 1] stage 2/2" in printed and "Paired difference vs fixed" in printed
    assert "within noise" in printed or "better" in printed or "worse" in printed
    data = json.loads(out.read_text())
    assert (out.parent / "quality.png").stat().st_size > 0
    assert list(data["methods"]) == ["fixed", "random"]
    fixed, rand = (data["methods"][m]["runs"] for m in ("fixed", "random"))
    assert [r["seed"] for r in fixed] == [0, 1] and len(fixed[0]["stages"]) == 3  # S0 + 2 stages
    assert set(fixed[0]["eval"]["per_image"]) == set(data["split"]["eval"])
    # Same start, same stream, same discriminator init: identical until the agents differ.
    for f, r in zip(fixed, rand):
        assert f["stages"][0]["scores"] == r["stages"][0]["scores"]
        assert f["stages"][1]["scores"] == pytest.approx(r["stages"][1]["scores"])
    assert all(r["final_weights"] == {"l1": 1.0, "fft": 0.1, "gan": 0.01} for r in fixed)
    # The final evaluation scores the EMA of the weights; the last iterate is kept beside it.
    assert data["settings"]["eval_ema"] == 0.99
    assert all(r["eval_last"]["mean"]["psnr_y"] != r["eval"]["mean"]["psnr_y"] for r in fixed)
    assert data["summary"]["random"]["vs_fixed"]["niqe"]["n"] == 2
    assert (tmp_path / "runs" / "random" / "seed1" / "stages.jsonl").is_file()
    assert list((tmp_path / "cache").glob("smallsr_l1_*.pt"))  # the start is cached ...
    again = bq.cached_pretrain([], results["start"]["pretrain"]["settings"], str(tmp_path / "cache"))
    assert again[1]["cached"]  # ... and reused without training (no photos needed)
    # Methods run in two processes merge into one paired report.
    for m in ("fixed", "random"):
        part = {**data, "methods": {m: data["methods"][m]}}
        (tmp_path / f"{m}.json").write_text(json.dumps(part))
    merged = bq.main(["--merge", str(tmp_path / "fixed.json"), str(tmp_path / "random.json"),
                      "--out", str(tmp_path / "merged.json")])
    assert merged["summary"]["random"]["vs_fixed"] == data["summary"]["random"]["vs_fixed"]
    bad = {**data, "settings": {**data["settings"], "stages": 5}, "methods": {"x": data["methods"]["random"]}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="stages"):
        bq.merge_results([str(tmp_path / "fixed.json"), str(tmp_path / "bad.json")])
    mis_set = {**data, "settings": {**data["settings"], "initial_weights": {"l1": 1.0, "fft": 0.1, "gan": 0.1}},
               "methods": {"x": data["methods"]["random"]}}
    (tmp_path / "mis_set.json").write_text(json.dumps(mis_set))
    with pytest.raises(ValueError, match="initial_weights"):  # another scenario never pairs with this one
        bq.merge_results([str(tmp_path / "fixed.json"), str(tmp_path / "mis_set.json")])
    # Seeds split over processes (--seeds 1 --first-seed 1 in the other) still merge.
    one = {**data, "settings": {**data["settings"], "seeds": 1},
           "methods": {"random": {**data["methods"]["random"], "runs": data["methods"]["random"]["runs"][1:]}}}
    (tmp_path / "one.json").write_text(json.dumps(one))
    assert bq.merge_results([str(tmp_path / "fixed.json"), str(tmp_path / "one.json")])["methods"]["random"]["runs"][0]["seed"] == 1


@pytest.mark.filterwarnings("ignore::UserWarning")  # pyiqa on a flat image: cov() of one sample
def test_eval_survives_niqe_failure(bq, niqe_params):
    torch.set_num_threads(1)

    class Flat(torch.nn.Module):  # a collapsed generator: NIQE raises LinAlgError on its output
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 3, 2 * x.shape[2], 2 * x.shape[3]), 0.5)

    pairs = bq.build_split().eval_pairs[:2]
    ev = bq.evaluate_model(Flat(), pairs, {"pretrained_model_path": niqe_params})
    assert set(ev["niqe_errors"]) == {p.name for p in pairs}
    assert math.isnan(ev["mean"]["niqe"]) and ev["mean"]["psnr_y"] > 5


def test_sign_flip_p_is_exact_and_robust_to_one_collapse(bq):
    assert bq.sign_flip_p([-1.0] * 10) == pytest.approx(2 / 1024)  # only all-negative and all-positive
    assert bq.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    # Nine small gains and one huge loss: the t-interval straddles 0, the sign-flip test sees the
    # mean dominated by the outlier and says so too (p large) - neither calls it "better".
    diffs = [-0.03] * 9 + [5.0]
    s = bq.paired_interval([6.0 + d for d in diffs], [6.0] * 10, lower_is_better=True)
    assert s.verdict == "within noise" and s.p_sign_flip > 0.5
    many = bq.sign_flip_p([-0.1] * 20)  # Monte-Carlo branch
    assert 0 < many < 0.001


def test_initial_weights_flag(bq):
    args = bq.parse_args(["--quick", "--initial-weights", "gan=0.1"])
    assert args.initial_weights == {"l1": 1.0, "fft": 0.1, "gan": 0.1}
    for bad in ("perceptual=1", "gan=abc", "gan=-1", "gan"):
        with pytest.raises(SystemExit):
            bq.parse_args(["--quick", "--initial-weights", bad])
    assert bq.parse_args(["--quick", "--eval-ema", "0"]).eval_ema == 0.0
    # --loss sets the repository; --initial-weights then changes some of its weights.
    args = bq.parse_args(["--quick", "--loss", "l1=1,mscn=0.1,gan=0.01", "--initial-weights", "mscn=0.3"])
    assert args.initial_weights == {"l1": 1.0, "mscn": 0.3, "gan": 0.01}
    for bad in ("nope=1", "perceptual=0.1", "lpips=1", "l1=x", ""):  # unknown, downloading, not a number, empty
        with pytest.raises(SystemExit):
            bq.parse_args(["--quick", "--loss", bad])
    with pytest.raises(SystemExit):  # fft is not in this repository
        bq.parse_args(["--quick", "--loss", "l1=1,mscn=0.1", "--initial-weights", "fft=0.1"])
    with pytest.raises(SystemExit):
        bq.parse_args(["--quick", "--eval-ema", "1"])
