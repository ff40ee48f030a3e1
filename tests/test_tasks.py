"""Bundled tasks: config defaults and errors, data/probe building, run/compare/report and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from agentloss.cli import main
from agentloss.datasets import write_image
from agentloss.tasks.build import build_probe, build_stream
from agentloss.tasks.config import TASK_DEFAULTS, ConfigError, load_config
from agentloss.tasks.runner import compare, run

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "examples/configs").glob("*.yaml"))

TINY = {
    "backbone": {"name": "swinir_light_tiny", "scale": 2},
    "losses": {"l1": 1.0, "fft": 0.1, "gan": 0.01},
    "loss_options": {"gan": {"width": 8, "depth": 1}},
    "objectives": [{"name": "psnr"}],
    "agent": {"type": "fixed"},
    "train": {"stage_length": 2, "total_iters": 4},
    "data": {"patch": 32, "batch": 2},
    "probe": {"count": 2, "size": 64},
    "eval": {"size": 64, "max_images": 2},
}


def tiny(tmp_path: Path, **over) -> dict:
    return {"task": "cisr", **TINY, "out": str(tmp_path / "out"), **over}


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("task,stage,total,losses", [
    ("cisr", 5000, 100_000, {"l1": 1.0, "perceptual": 0.1, "gan": 0.01}),
    ("risr", 5000, 200_000, {"l1": 1.0, "perceptual": 0.1, "gan": 0.01}),
    ("air", 2500, 100_000, {"l1": 1.0, "perceptual": 0.1, "lpips": 1.0}),
])
def test_task_defaults_are_the_papers(task, stage, total, losses):
    cfg = load_config({"task": task})
    assert (cfg.train.stage_length, cfg.train.total_iters, cfg.losses) == (stage, total, losses)
    assert cfg.train.lr == 1e-4 and cfg.train.stages == total // stage
    assert set(TASK_DEFAULTS) == {"cisr", "risr", "air"}


def test_user_losses_replace_the_task_defaults():
    cfg = load_config({"task": "cisr", "losses": {"l1": 1.0, "fft": 0.5}})
    assert cfg.losses == {"l1": 1.0, "fft": 0.5}  # not merged with perceptual/gan


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_bundled_configs_validate(path):
    cfg = load_config(path)
    assert cfg.objectives and cfg.train.stages >= 1


@pytest.mark.parametrize("data,field,allowed", [
    ({"task": "cisr", "backbone": {"name": "swinr"}}, "backbone.name", "did you mean 'swinir'"),
    ({"task": "sr"}, "task", "cisr, risr, air"),
    ({"task": "cisr", "trian": {}}, "trian", "unknown field"),
    ({"task": "cisr", "losses": {"l1": 1, "vgg": 1}}, "losses", "allowed:"),
    ({"task": "cisr", "agent": {"type": "gpt"}}, "agent", "fixed"),
    ({"task": "cisr", "agent": {"type": "random", "temperature": 1}}, "agent", "allowed: ['seed'"),
    ({"task": "cisr", "objectives": [{"name": "niqee"}]}, "objectives.0.name", "niqe"),
    ({"task": "cisr", "backbone": {"name": "swinir", "scale": 8}}, "backbone.scale", "[2, 3, 4]"),
    ({"task": "air", "backbone": {"name": "swinir"}}, "backbone.name: task air", "promptir"),
    ({"task": "cisr", "data": {"patch": 30}, "backbone": {"scale": 4}}, "data.patch", "multiple"),
    ({"task": "cisr", "data": {"sources": [{"kind": "paired", "lq": "x"}]}}, "data.sources.0", "gt:"),
    ({"task": "cisr", "train": {"stage_length": 10, "total_iters": 5}}, "train", "shorter than one stage"),
])
def test_config_errors_name_the_field_and_what_is_allowed(data, field, allowed):
    with pytest.raises(ConfigError) as e:
        load_config(data)
    assert field in str(e.value) and allowed in str(e.value)


def test_overrides_and_yaml_errors(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("task: cisr\ntrain: {stage_length: 10, total_iters: 100}\n")
    cfg = load_config(f, ["train.total_iters=40", "agent={type: random, seed: 3}"])
    assert cfg.train.stages == 4 and cfg.agent == {"type": "random", "seed": 3}
    f.write_text("task: [cisr\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


# ----------------------------------------------------------------------------- data


def _pairs(folder: Path, n: int = 2, size: int = 80) -> tuple[Path, Path]:
    g = torch.Generator().manual_seed(0)
    (folder / "lq").mkdir(parents=True)
    (folder / "gt").mkdir(parents=True)
    for i in range(n):
        gt = torch.rand(3, size, size, generator=g)
        write_image(gt, folder / "gt" / f"{i}.png")
        write_image((gt * 0.7 + 0.2).clamp(0, 1), folder / "lq" / f"{i}.png")
    return folder / "lq", folder / "gt"


def test_air_mixes_noisy_and_paired_sources_and_probes_pairs(tmp_path):
    lq, gt = _pairs(tmp_path / "rain")
    cfg = load_config({"task": "air", "backbone": {"name": "promptir_tiny"},
                       "data": {"patch": 32, "batch": 2, "sources": [
                           {"kind": "builtin", "degradation": "denoise", "sigmas": [50]},
                           {"kind": "paired", "lq": str(lq), "gt": str(gt)}]},
                       "probe": {"kind": "paired", "lq": str(lq), "gt": str(gt), "count": 2, "size": 48}})
    stream = build_stream(cfg, seed=0)
    (n_lq, n_gt), (p_lq, p_gt) = next(stream), next(stream)
    assert n_lq.shape == n_gt.shape == p_lq.shape == (2, 3, 32, 32)
    assert (n_lq - n_gt).std() > 0.1  # sigma 50 noise
    torch.testing.assert_close(p_lq, (p_gt * 0.7 + 0.2).clamp(0, 1), atol=2 / 255, rtol=0)  # the pair's own LQ
    state = stream.state_dict()
    nxt = next(stream)
    stream.load_state_dict(state)
    torch.testing.assert_close(next(stream)[1], nxt[1])
    probe_lq, probe_gt = build_probe(cfg)
    assert probe_lq[0].shape == probe_gt[0].shape == (3, 48, 48)
    torch.testing.assert_close(probe_lq[0], (probe_gt[0] * 0.7 + 0.2).clamp(0, 1), atol=2 / 255, rtol=0)


def test_risr_stream_uses_the_real_world_degradation():
    cfg = load_config({"task": "risr", "backbone": {"name": "swinir_real_tiny", "scale": 4},
                       "data": {"patch": 64, "batch": 2}})
    lq, gt = next(build_stream(cfg, seed=0))
    assert lq.shape == (2, 3, 16, 16) and gt.shape == (2, 3, 64, 64)
    bicubic = torch.nn.functional.interpolate(gt, size=16, mode="bicubic", antialias=True)
    assert (lq - bicubic).abs().mean() > 0.01  # blur/noise/JPEG, not plain bicubic


def test_missing_folder_is_a_config_error(tmp_path):
    cfg = load_config({"task": "cisr", "data": {"sources": [{"kind": "hr_folder", "path": str(tmp_path / "no")}]}})
    with pytest.raises(ConfigError, match="data.sources.0"):
        build_stream(cfg, seed=0)


# ----------------------------------------------------------------------------- run / compare / resume


def test_run_resumes_after_a_crash_exactly(tmp_path, crash_and_resume):
    whole, resumed = crash_and_resume(tiny(tmp_path, agent={"type": "random", "seed": 1},
                                           train={"stage_length": 2, "total_iters": 6}))
    assert [r.weights for r in resumed.history] == [r.weights for r in whole.history]
    assert [r.scores["psnr_y"] for r in resumed.history] == pytest.approx([r.scores["psnr_y"] for r in whole.history],
                                                                           abs=1e-4)
    assert resumed.evaluation["photos"]["psnr"] == pytest.approx(whole.evaluation["photos"]["psnr"], abs=1e-4)


def test_compare_cli_writes_table_crops_and_curves(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps(tiny(tmp_path, compare=["fixed", "random"], train={"stage_length": 2, "total_iters": 4,
                                                                              "pretrain_iters": 2})))
    assert main(["compare", str(f), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "| Start |" in text and "| Fixed |" in text and "| Random |" in text and "photos PSNR↑" in text
    out = tmp_path / "out"
    for name in ("table.md", "results.json", "crops.png", "compare.png", "start.pt", "fixed/curves.png",
                 "random/stages.jsonl"):
        assert (out / name).is_file(), name
    res = json.loads((out / "results.json").read_text())
    assert set(res["methods"]) == {"fixed", "random"} and res["directions"]["psnr"] is True
    assert res["methods"]["fixed"]["final_weights"] == {"l1": 1.0, "fft": 0.1, "gan": 0.01}
    assert main(["report", str(out)]) == 0
    assert "| Fixed |" in capsys.readouterr().out


def test_same_start_same_stream_for_every_method(tmp_path):
    comp = compare(load_config(tiny(tmp_path, compare=["fixed", "random"])), progress=False)
    s0 = [r.history[0].scores for r in comp.results.values()]
    assert s0[0] == s0[1]  # S0 scored on the identical start
    assert comp.results["fixed"].history[-1].weights != comp.results["random"].history[-1].weights


def test_named_agents_join_the_comparison_and_bad_names_fail_early(tmp_path):
    cfg = load_config(tiny(tmp_path, agent={"type": "guided", "backend": "none"},
                           agents={"paper": {"type": "llm"}, "rand2": {"type": "random", "max_factor": 2.0}},
                           compare=["fixed", "agent", "paper", "rand2"]))
    from agentloss.tasks.runner import agent_config

    assert agent_config(cfg, "paper")["type"] == "llm" and agent_config(cfg, "agent")["type"] == "guided"
    assert agent_config(cfg, "rand2", seed=7) == {"type": "random", "max_factor": 2.0, "seed": 7}
    for bad, msg in (({"compare": ["fixed", "paper"]}, "compare"),  # not defined
                     ({"agents": {"fixed": {"type": "llm"}}}, "cannot name"),
                     ({"agents": {"p": {"type": "llm", "colour": 1}}, "compare": ["p"]}, "agents.p"),
                     ({"compare": ["fixed", "fixed"]}, "distinct")):
        with pytest.raises(ConfigError, match=msg):
            load_config(tiny(tmp_path, **bad))


def test_a_model_from_the_command_line_serves_every_agent_that_uses_one(tmp_path):
    from agentloss.cli import _task_config, build_parser

    f = tmp_path / "c.yaml"
    f.write_text(json.dumps(tiny(tmp_path, agent={"type": "guided", "backend": "none"},
                                 agents={"paper": {"type": "llm"}, "guided": {"type": "guided"}},
                                 compare=["fixed", "agent", "paper", "guided"])))
    cfg = _task_config(build_parser().parse_args(["compare", str(f), "--gguf", "m.gguf"]))
    want = {"type": "llama_cpp", "model_path": "m.gguf"}
    assert cfg.agents["paper"]["backend"] == want and cfg.agents["guided"]["backend"] == want
    assert cfg.agent["backend"] == "none"  # numbers only, by the config's choice


def test_cli_config_error_exit_code_and_message(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text("task: cisr\nbackbone: {name: swinr}\n")
    assert main(["run", str(f)]) == 2
    err = capsys.readouterr().err
    assert "backbone.name" in err and "swinir" in err


def test_cli_backend_override_reaches_the_agent_config(tmp_path):
    from agentloss.cli import _task_config, build_parser

    f = tmp_path / "c.yaml"
    f.write_text("task: cisr\n")
    args = build_parser().parse_args(["run", str(f), "--gguf", "m.gguf", "--threads", "3"])
    cfg = _task_config(args)
    assert cfg.agent["backend"] == {"type": "llama_cpp", "model_path": "m.gguf", "n_threads": 3}
    args = build_parser().parse_args(["run", str(f), "--agent", "random", "--set", "seed=5"])
    cfg = _task_config(args)
    assert cfg.agent == {"type": "random"} and cfg.seed == 5


@pytest.mark.parametrize("task,backbone,scale", [("risr", "swinir_real_tiny", 2), ("cisr", "hat_s_tiny", 2),
                                                 ("cisr", "mambairv2_light_tiny", 2), ("air", "promptir_tiny", 1)])
def test_every_task_backbone_trains_a_stage(tmp_path, task, backbone, scale):
    cfg = load_config({**tiny(tmp_path), "task": task, "backbone": {"name": backbone, "scale": scale},
                       "train": {"stage_length": 1, "total_iters": 1}, "eval": {"size": 64, "max_images": 1},
                       "probe": {"count": 1, "size": 64}})
    result = run(cfg, progress=False)
    assert len(result.history) == 2 and result.history[1].scores["psnr_y" if task != "air" else "psnr"] is not None
    assert "psnr" in result.evaluation["photos"]


def test_guided_agent_with_trials_from_a_config(tmp_path):
    cfg = load_config(tiny(tmp_path, agent={"type": "guided", "backend": "none", "trials": 1, "trial_steps": 1},
                           objectives=[{"name": "psnr"}, {"name": "piqe"}],
                           train={"stage_length": 2, "total_iters": 4}, probe={"count": 1, "size": 96}))
    result = run(cfg, progress=False)
    info = result.history[1].decision.info
    assert info["facts"]["primary"] == "piqe" and "psnr_y" in info["facts"]["guards"]
    assert len(info["trials"]["results"]) == 2  # keep and the best move, tried from a snapshot
