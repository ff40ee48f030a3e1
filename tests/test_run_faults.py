"""Runs that must resume exactly, never lose a checkpoint, never write a secret, never load code, and
fail before training (not hours later, not silently) when a part cannot work."""

from __future__ import annotations

import logging
import os
import threading
import urllib.error
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

import agentloss as al
from agentloss.backends.base import BackendError
from agentloss.objectives import ObjectiveError, PyiqaObjective
from agentloss.records import read_records
from agentloss.tasks import runner
from agentloss.tasks.config import ConfigError, load_config

SWIN = {
    "task": "cisr",
    "backbone": {"name": "swinir_light_tiny", "scale": 2, "options": {"drop_path_rate": 0.5}},
    "losses": {"l1": 1.0, "fft": 0.1, "gan": 0.01},
    "loss_options": {"gan": {"width": 8, "depth": 1}},
    "objectives": [{"name": "psnr"}],
    "agent": {"type": "random", "seed": 1},
    "train": {"stage_length": 2, "total_iters": 6, "lr": 1e-2},
    "data": {"patch": 32, "batch": 2},
    "probe": {"count": 1, "size": 64},
    "eval": {"size": 64, "max_images": 1},
}
SMALL = {**SWIN, "backbone": {"name": "small_sr", "scale": 2, "options": {"width": 8, "depth": 1}},
         "train": {"stage_length": 2, "total_iters": 4, "pretrain_iters": 2}}


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ----------------------------------------------------------------------------- 1. exact resume


def test_resume_is_exact_with_drop_path(tmp_path, crash_and_resume):
    # SwinIR's DropPath draws from the global torch RNG: without its state in the checkpoint the
    # resumed run drops other paths than the uninterrupted one.
    whole, resumed = crash_and_resume({**SWIN, "out": str(tmp_path)})
    assert _same_weights(whole.model, resumed.model)
    assert [r.scores for r in resumed.history] == [r.scores for r in whole.history]
    assert [r.next_weights for r in resumed.history] == [r.next_weights for r in whole.history]
    assert resumed.evaluation == whole.evaluation
    assert [r.scores for r in read_records(tmp_path / "crash")] == [r.scores for r in read_records(tmp_path / "whole")]


def test_rng_states_are_restored(tmp_path):
    import random

    import numpy as np

    from agentloss.tasks.checkpoint import rng_state, set_rng_state

    state = rng_state()
    draws = (torch.rand(3), random.random(), np.random.rand())
    torch.rand(5), random.random(), np.random.rand()
    set_rng_state(state)
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(draws[0], again[0]) and draws[1:] == again[1:]


# ----------------------------------------------------------------------------- 2. what counts as the same run


def test_resume_with_the_out_dir_spelled_differently(tmp_path, monkeypatch, caplog, crash_run):
    monkeypatch.chdir(tmp_path)
    base = {**SWIN, "train": {**SWIN["train"], "total_iters": 6}}
    crash_run(load_config({**base, "out": "runs/x"}))
    Path("runs/moved").parent.mkdir(exist_ok=True)
    os.replace("runs/x", "runs/moved")  # a moved run directory, spelled with ./ and a trailing slash
    caplog.set_level(logging.INFO, logger="agentloss")
    other = {**base, "out": "./runs/moved/", "threads": 1, "train": {**base["train"], "log_every": 3}}
    resumed = runner.run(load_config(other), progress=False)
    assert "resumed at iteration 2" in caplog.text and "another config" not in caplog.text
    assert not list(Path("runs/moved").glob("checkpoint.*.pt"))
    whole = runner.run(load_config({**base, "out": "runs/whole"}), progress=False)
    # (another thread count sums in another order: the same run, not the same last bits)
    assert [r.next_weights for r in resumed.history] == [r.next_weights for r in whole.history]
    assert resumed.evaluation["photos"]["psnr"] == pytest.approx(whole.evaluation["photos"]["psnr"], abs=1e-3)


@pytest.mark.parametrize("fresh", [False, True])
def test_a_checkpoint_is_never_overwritten_silently(tmp_path, monkeypatch, caplog, fresh, crash_run):
    cfg = load_config({**SWIN, "out": str(tmp_path / "run")})
    crash_run(cfg)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    saved = ckpt.read_bytes()
    if fresh:
        runner.run(cfg, progress=False, resume=False)
    else:  # another learning rate: another run
        runner.run(load_config({**SWIN, "out": str(tmp_path / "run"), "train": {**SWIN["train"], "lr": 2e-2}}),
                   progress=False)
    moved = list((tmp_path / "run").glob("checkpoint.*.pt"))
    assert len(moved) == 1 and moved[0].read_bytes() == saved
    assert str(moved[0]) in caplog.text
    if not fresh:
        assert "train.lr" in caplog.text  # the warning says what differs


# ----------------------------------------------------------------------------- 3. secrets and pickles


SECRETS = ("sk-test-0123456789abcdefSECRET", "PWSECRET42", "EXTRASECRET42")


def test_no_secret_is_written_to_the_run_directory(tmp_path):
    key, password, extra = SECRETS
    backend = {"type": "openai", "model": "m", "base_url": f"http://user:{password}@127.0.0.1:9/v1", "api_key": key,
               "extra_body": {"api_key": extra}}
    cfg = load_config({**SMALL, "agent": {"type": "llm", "backend": backend}, "out": str(tmp_path / "out")})
    runner.compare(cfg, progress=False, methods=["fixed"])  # the agent is not run: its config is still written
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert any(p.name == "checkpoint.pt" for p in files) and any(p.name == "config.json" for p in files)
    for p in files:
        data = p.read_bytes()
        assert not any(s.encode() in data for s in SECRETS), p


@pytest.mark.parametrize("value", ["sk-proj-abcdefghijklmnop0123456789", "sk_live_abcdefghijklmnop", "OPENAI API KEY"])
def test_a_key_in_api_key_env_is_refused(value):
    with pytest.raises(ConfigError, match="api_key_env") as e:
        load_config({**SMALL, "agent": {"type": "llm", "backend": {"type": "openai", "model": "m",
                                                                   "api_key_env": value}}})
    assert value not in str(e.value)


class _Payload:
    marker = ""

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_pickle_payload_in_a_checkpoint_is_not_executed(tmp_path):
    cfg = load_config({**SMALL, "out": str(tmp_path / "run")})
    payload = _Payload()
    payload.marker = str(tmp_path / "pwned")
    (tmp_path / "run").mkdir()
    torch.save({"config": "x", "model": payload}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="checkpoint"):
        runner.run(cfg, progress=False)
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------- 4. fail before training


def _no_training(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("trained before the failing part was checked")

    from agentloss.tasks import harness

    monkeypatch.setattr(harness, "train_method", boom)
    monkeypatch.setattr(harness, "warm_start", boom)
    monkeypatch.setattr(runner, "warm_start", boom)


def test_a_missing_gguf_fails_before_fixed_and_random_train(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    cfg = load_config({**SMALL, "out": str(tmp_path / "out"),
                       "agent": {"type": "llm", "backend": {"type": "llama_cpp", "model_path": str(tmp_path / "no.gguf")}}})
    with pytest.raises(BackendError, match="no.gguf"):
        runner.compare(cfg, progress=False)


def test_an_openai_endpoint_that_does_not_answer_fails_before_training(tmp_path, monkeypatch):
    _no_training(monkeypatch)
    cfg = load_config({**SMALL, "out": str(tmp_path / "out"), "agent": {"type": "llm", "backend": {
        "type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}}})
    with pytest.raises(BackendError, match="127.0.0.1:9"):
        runner.run(cfg, progress=False)


def test_an_openai_endpoint_that_answers_passes(monkeypatch):
    from agentloss.backends import create_backend
    from agentloss.tasks.preflight import check_backend

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401 if "nokey" in self.path else 404)
            self.end_headers()

        def log_message(self, *a):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        check_backend(create_backend({"type": "openai", "model": "m",
                                      "base_url": f"http://127.0.0.1:{server.server_port}/v1"}))
    finally:
        server.shutdown()


def _offline_niqe(monkeypatch):
    from pyiqa.archs import niqe_arch

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(niqe_arch, "load_file_from_url", offline)
    monkeypatch.delenv("AGENTLOSS_NIQE_PARAMS", raising=False)


def test_niqe_without_its_parameter_file_fails_before_training(tmp_path, monkeypatch):
    _offline_niqe(monkeypatch)
    _no_training(monkeypatch)
    cfg = load_config({**SMALL, "objectives": [{"name": "niqe"}], "out": str(tmp_path / "out")})
    with pytest.raises((ConfigError, ObjectiveError), match="niqe_params"):
        runner.run(cfg, progress=False)


def test_a_final_metric_that_cannot_be_built_fails_before_training(tmp_path, monkeypatch):
    _offline_niqe(monkeypatch)
    _no_training(monkeypatch)
    cfg = load_config({**SMALL, "eval": {**SMALL["eval"], "metrics": ["psnr", "niqe"]}, "out": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="eval.metrics.*niqe_params"):
        runner.compare(cfg, progress=False)
    with pytest.raises(ConfigError, match="eval.metrics"):
        load_config({**SMALL, "eval": {"metrics": ["psnr", "niqee"]}})


def test_an_objective_that_cannot_be_built_fails_at_s0_and_is_built_once(monkeypatch):
    _offline_niqe(monkeypatch)
    import pyiqa

    calls = []
    real = pyiqa.create_metric
    monkeypatch.setattr(pyiqa, "create_metric", lambda *a, **k: calls.append(1) or real(*a, **k))
    niqe = PyiqaObjective("niqe", device="cpu")
    result = niqe.score([torch.rand(1, 3, 32, 32)] * 3)
    assert result.mean is None and len(calls) == 1  # not rebuilt (and re-downloaded) per image
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    sched = al.StageScheduler(al.AgentWeightedLoss({"l1": 1.0}), al.FixedAgent(), [niqe], model,
                              torch.rand(1, 3, 16, 16), stage_length=1)
    with pytest.raises(ObjectiveError, match="pretrained_model_path"):
        sched.start()


@pytest.mark.parametrize("agent,match", [
    (lambda: al.FixedAgent({"l1": 1.0, "bogus": 2.0}), "bogus"),
    (lambda: al.GuidedAgent(backend="none", primary="musiq"), "musiq"),
    (lambda: al.GuidedAgent(backend="none", guards={"psnr": 0.2}), "psnr"),
])
def test_an_agent_that_cannot_work_with_the_run_fails_at_construction(agent, match):
    contrast = al.CallableObjective(lambda x: x.std().item(), name="contrast", higher_is_better=True)
    with pytest.raises(ValueError, match=match):
        al.StageScheduler(al.AgentWeightedLoss({"l1": 1.0, "mse": 0.5}), agent(), [contrast],
                          torch.nn.Conv2d(3, 3, 3, padding=1), torch.rand(1, 3, 8, 8), stage_length=1)


@pytest.mark.parametrize("agent", [{"type": "guided", "backend": "none", "primary": "musiq"},
                                   {"type": "fixed", "weights": {"l1": 1.0, "bogus": 2.0}}])
def test_an_agent_that_cannot_work_with_the_config_fails_before_training(tmp_path, monkeypatch, agent):
    _no_training(monkeypatch)
    with pytest.raises(ConfigError, match="agent"):
        runner.compare(load_config({**SMALL, "agent": agent, "out": str(tmp_path / "out")}), progress=False)


def test_vgg_offline_fails_before_training(tmp_path, monkeypatch):
    _no_training(monkeypatch)

    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    cfg = load_config({**SMALL, "losses": {"l1": 1.0, "perceptual": 0.1}, "loss_options": {},
                       "out": str(tmp_path / "out")})
    with pytest.raises(ConfigError, match="VGG19"):
        runner.run(cfg, progress=False)


@pytest.mark.parametrize("over,field", [({"train": {"lr": float("inf")}}, "train.lr"),
                                        ({"constraints": {"max_weight": True}}, "constraints"),
                                        ({"losses": {"l1": float("nan")}}, "losses")])
def test_non_numbers_are_config_errors(over, field):
    with pytest.raises(ConfigError, match=field):
        load_config({**SMALL, **over})


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_uninterrupted_run(tmp_path):
    """A real SIGKILL (it can land mid-write) of `agentloss run` on SwinIR with DropPath, then a resume."""
    import json
    import signal
    import subprocess
    import sys
    import time

    cfg = {**SWIN, "train": {"stage_length": 20, "total_iters": 60, "lr": 1e-2}}

    def command(out: Path) -> list[str]:
        path = tmp_path / f"{out.name}.yaml"
        path.write_text(json.dumps({**cfg, "out": str(out)}))
        return [sys.executable, "-m", "agentloss.cli", "run", str(path), "--no-progress"]

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    subprocess.run(command(whole), check=True, env=env, capture_output=True, timeout=300)
    proc = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t = time.monotonic()
    while not (killed / "checkpoint.pt").exists() and proc.poll() is None and time.monotonic() - t < 120:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (killed / "final.pt").exists()  # killed before the end
    subprocess.run(command(killed), check=True, env=env, capture_output=True, timeout=300)
    a = torch.load(whole / "final.pt", weights_only=True)
    b = torch.load(killed / "final.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ra, rb = read_records(whole), read_records(killed)
    assert [(r.stage, r.weights, r.next_weights, r.scores) for r in ra] == \
        [(r.stage, r.weights, r.next_weights, r.scores) for r in rb]
