"""End to end: a tiny x2 SR network trained for three short stages on patches of scikit-image photos."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import agentloss as al
from agentloss.data import PatchPairStream, bicubic_downsample, builtin_photos, crop_to_multiple

STAGE = 4
LOSSES = {"l1": 1.0, "perceptual": 0.1, "gan": 0.01}


class TinySR(nn.Module):
    """x2: bicubic upsampling plus a learned residual."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.Conv2d(width, 12, 3, padding=1),
                                  nn.PixelShuffle(2))

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False) + self.body(x)


@pytest.fixture(scope="module")
def photos():
    return builtin_photos(["astronaut", "coffee", "chelsea", "rocket"])


def _probe(photos):
    hr = [crop_to_multiple(p[:, 100:228, 100:228], 2) for p in photos[:3]]
    return [bicubic_downsample(h.unsqueeze(0), 2)[0] for h in hr], hr


def build(photos, agent, run_dir):
    torch.manual_seed(0)
    model = TinySR()
    loss_fn = al.AgentWeightedLoss(LOSSES, terms={"perceptual": {"weights": None}, "gan": {"width": 8, "depth": 2}})
    lq, hr = _probe(photos)
    sched = al.StageScheduler(
        loss_fn, agent, [al.PSNRObjective(device="cpu"), al.PyiqaObjective("piqe", device="cpu")], model, lq,
        probe_references=hr, stage_length=STAGE, total_stages=3, run_dir=run_dir)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    stream = PatchPairStream(photos, scale=2, patch=32, batch=4, seed=1)
    return {"model": model, "loss_fn": loss_fn, "sched": sched, "opt": opt, "stream": stream}


def train(parts, iterations):
    for _ in range(iterations):
        lq, hr = next(parts["stream"])
        loss = parts["loss_fn"](parts["model"](lq), hr)
        parts["opt"].zero_grad()
        loss.backward()
        parts["opt"].step()
        parts["sched"].step()


def state(parts):
    return copy.deepcopy({k: v.state_dict() for k, v in parts.items()})


@pytest.mark.slow
@pytest.mark.parametrize("agent_cls", [al.FixedAgent, al.RandomAgent])
def test_three_stages_and_exact_resume(photos, tmp_path, agent_cls):
    full = build(photos, agent_cls(), tmp_path / "full")
    train(full, 3 * STAGE)
    hist = full["sched"].history
    assert [r.stage for r in hist] == [0, 1, 2, 3]
    weights = [r.weights for r in hist]
    if agent_cls is al.FixedAgent:
        assert all(w == LOSSES for w in weights)
    else:
        assert weights[1] == LOSSES and weights[2] != LOSSES and weights[3] != weights[2]
    for r in hist:
        assert r.fallback is None and all(v is not None for v in r.scores.values()), r
    on_disk = al.read_records(tmp_path / "full")
    assert [r.weights for r in on_disk] == weights
    assert on_disk[3].scores["psnr_y"] == pytest.approx(hist[3].scores["psnr_y"])

    # stop after stage 2, save everything, resume in fresh objects: the later stages must match
    part = build(photos, agent_cls(), tmp_path / "resumed")
    train(part, 2 * STAGE)
    saved = state(part)
    resumed = build(photos, agent_cls(), tmp_path / "resumed")
    for k, v in resumed.items():
        v.load_state_dict(saved[k])
    train(resumed, STAGE)
    again = resumed["sched"].history
    assert [r.weights for r in again] == weights
    assert [r.next_weights for r in again] == [r.next_weights for r in hist]
    assert again[3].scores == pytest.approx(hist[3].scores, rel=1e-5)
    # the records file reads as one history even though two processes wrote it
    assert [r.stage for r in al.read_records(tmp_path / "resumed")] == [0, 1, 2, 3]


def test_plot_command_writes_png(photos, tmp_path):
    parts = build(photos, al.RandomAgent(seed=3), tmp_path)
    train(parts, 2 * STAGE)
    from agentloss.cli import main

    assert main(["plot", str(tmp_path), "-o", str(tmp_path / "c.png")]) == 0
    png = (tmp_path / "c.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert main(["show", str(tmp_path)]) == 0


@pytest.mark.slow
def test_llm_agent_end_to_end_on_tiny_gguf(photos, tmp_path):
    """The whole path: prompt, llama.cpp backend with a grammar, parse, clipped weights, records."""
    pytest.importorskip("llama_cpp", reason="the LLM end-to-end test needs llama-cpp-python")
    pytest.importorskip("gguf", reason="writing the test GGUF needs the gguf package")
    from tests.tiny_models import write_tiny_gguf

    gguf = write_tiny_gguf(tmp_path / "tiny.gguf", n_ctx_train=8192)
    agent = al.create_agent({"type": "llm", "needs": "Lower PIQE without losing PSNR.", "max_tries": 2,
                             "backend": {"type": "llama_cpp", "model_path": str(gguf), "n_ctx": 8192,
                                         "n_threads": 1, "seed": 0}})
    parts = build(photos, agent, tmp_path / "run")
    parts["loss_fn"].constraints.max_step = 2.0  # enforced in code, whatever the model says
    train(parts, 3 * STAGE)
    hist = parts["sched"].history
    decided = hist[1:3]  # stage 3 is final: no decision asked
    for prev, rec in zip(hist[:2], decided):
        assert rec.fallback is None, rec.fallback  # the grammar makes every answer parseable
        assert rec.decision.info["grammar"] is True
        exchange = rec.decision.exchange
        assert exchange[0]["role"] == "system" and "piqe" in exchange[0]["content"]
        assert any(m["role"] == "assistant" and "Weights:" in m["content"] for m in exchange)
        for name, w in rec.next_weights.items():  # move limit held
            assert rec.weights[name] / 2 - 1e-12 <= w <= max(rec.weights[name], 1e-3) * 2 + 1e-12
    assert hist[2].weights == hist[1].next_weights
    on_disk = al.read_records(tmp_path / "run")
    assert on_disk[1].decision.exchange == hist[1].decision.exchange
    assert "Weights:" in str(on_disk[2].decision)
