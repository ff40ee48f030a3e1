"""Text feedback sources: a multimodal model over HTTP, a person at the terminal, a deterministic critic;
the config's ``feedback:`` list and ``agentloss run --ask``."""

from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

import agentloss as al
from agentloss.backends import BackendError
from agentloss.cli import main
from agentloss.data import builtin_photos
from agentloss.feedback import HighFrequencyCritic, TerminalFeedback, VisionFeedback, high_frequency_ratio
from agentloss.objectives import ObjectiveError
from agentloss.records import read_meta, read_records
from agentloss.tasks.build import build_feedback, build_objectives
from agentloss.tasks.config import ConfigError, load_config
from tests.faults.fault_server import FaultServer, completion

needs_openai = pytest.mark.skipif(importlib.util.find_spec("openai") is None,
                                  reason="VisionFeedback talks through the openai package")

TINY = {
    "task": "cisr",
    "backbone": {"name": "small_sr", "scale": 2, "options": {"width": 8, "depth": 1}},
    "losses": {"l1": 1.0, "fft": 0.1},
    "objectives": [{"name": "psnr"}],
    "agent": {"type": "random"},
    "train": {"stage_length": 2, "total_iters": 4},
    "data": {"patch": 32, "batch": 2},
    "probe": {"count": 1, "size": 64},
    "eval": {"size": 64, "max_images": 1},
}
ANSWER = "Edges are soft and fine textures look smeared."


class VisionStub:
    """An OpenAI-compatible server on 127.0.0.1 that keeps every request it gets (path, headers, JSON)."""

    def __init__(self, answer: str = ANSWER) -> None:
        self.requests: list[dict[str, Any]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, body: bytes) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                stub.requests.append({"method": "GET", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}})
                self._send(json.dumps({"object": "list", "data": [{"id": "vlm", "object": "model"}]}).encode())

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                stub.requests.append({"method": "POST", "path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()},
                                      "json": json.loads(body)})
                self._send(completion(answer))

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def posts(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["method"] == "POST"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub():
    s = VisionStub()
    yield s
    s.close()


def _decode(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    img = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1], validate=True)))
    assert img.format == "PNG"
    return img


@needs_openai
def test_vision_sends_the_prompt_and_the_probe_images_as_pngs_in_one_request(stub, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-the-users-real-key-0123456789")  # must not go to a local server
    flat = torch.tensor([1.0, 0.5, 0.0]).view(1, 3, 1, 1).expand(1, 3, 32, 32)  # orange: channel order shows
    restored = [flat, torch.rand(3, 20, 40), torch.rand(1, 3, 16, 16)]
    vision = VisionFeedback(stub.base_url, model="smolvlm", prompt="judge the textures", max_images=2, image_size=16)
    vision.prepare()  # a server answers
    assert vision.describe(restored) == ANSWER
    posts = stub.posts()
    assert len(posts) == 1 and posts[0]["path"] == "/v1/chat/completions"
    body = posts[0]["json"]
    assert body["model"] == "smolvlm" and len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
    content = body["messages"][0]["content"]
    assert content[0] == {"type": "text", "text": "judge the textures"}
    assert [p["type"] for p in content[1:]] == ["image_url", "image_url"]  # max_images: the third is not sent
    first, second = (_decode(p["image_url"]["url"]) for p in content[1:])
    assert first.size == (16, 16) and second.size == (16, 8)  # shrunk to image_size, aspect kept (W x H)
    assert first.convert("RGB").getextrema() == ((255, 255), (128, 128), (0, 0))  # rounded, in R, G, B order
    assert posts[0]["headers"]["authorization"] == "Bearer sk-no-key-required"
    assert [r["path"] for r in stub.requests if r["method"] == "GET"] == ["/v1/models"]


@needs_openai
@pytest.mark.parametrize("mode,timeout,match", [("refuse", 5.0, "connection failed"), ("500", 5.0, "HTTP 500"),
                                                ("silent", 0.5, "deadline of 0.5 s")])
def test_vision_server_failures_are_clear_bounded_errors(mode, timeout, match):
    server = FaultServer(mode)
    try:
        vision = VisionFeedback(server.base_url, timeout=timeout)
        t0 = time.perf_counter()
        with pytest.raises(BackendError, match=match):
            vision.describe([torch.rand(3, 16, 16)])
        assert time.perf_counter() - t0 < timeout + 1.0
        if mode == "refuse":
            with pytest.raises(ObjectiveError, match="no OpenAI-compatible server answers at .*llama-server"):
                vision.prepare()
    finally:
        server.close()


@needs_openai
def test_vision_refuses_bad_settings_early(monkeypatch):
    with pytest.raises(ValueError, match="looks like an API key") as err:
        VisionFeedback("http://127.0.0.1:1/v1", api_key_env="sk-proj-abcdef0123456789")
    assert "sk-proj" not in str(err.value)
    with pytest.raises(ValueError, match="http"):
        VisionFeedback("127.0.0.1:8080")
    monkeypatch.delenv("VISION_KEY", raising=False)
    with pytest.raises(ObjectiveError, match="VISION_KEY .* not set"):
        VisionFeedback("http://127.0.0.1:1/v1", api_key_env="VISION_KEY").prepare()


def _train(objectives, tmp_path, steps=4, between=None, refs=None):
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 3, padding=1)
    loss_fn = al.AgentWeightedLoss({"l1": 1.0, "mse": 1.0})
    opt = torch.optim.SGD(model.parameters(), 0.1)
    sched = al.StageScheduler(loss_fn, al.RandomAgent(seed=0), objectives, model, torch.rand(2, 3, 16, 16),
                              probe_references=refs, stage_length=2, run_dir=tmp_path)
    for i in range(steps):
        x = torch.rand(2, 3, 16, 16)
        loss = loss_fn(model(x), x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if between is not None:
            between(i)
    return sched


@needs_openai
def test_a_vision_server_going_down_mid_run_is_a_recorded_error_and_training_goes_on(stub, tmp_path):
    vision = VisionFeedback(stub.base_url, timeout=3.0)
    mean = al.CallableObjective(lambda x: float(x.mean()), name="mean", higher_is_better=True)
    sched = _train([mean, vision], tmp_path, between=lambda i: stub.close() if i == 0 else None)
    assert sched.iteration == 4 and [r.stage for r in sched.history] == [0, 1, 2]
    assert sched.history[0].texts == {"vision": ANSWER}
    for r in sched.history[1:]:
        assert r.texts == {"vision": None}
        assert any(e.startswith("vision failed: BackendError") and "connection failed" in e for e in r.errors)
        assert r.fallback is None and r.next_weights != r.weights  # the agent decided without the text
    assert [r.texts for r in read_records(tmp_path)] == [r.texts for r in sched.history]


def test_terminal_reads_lines_from_a_pipe_and_times_out_without_one():
    r, w = os.pipe()
    out = io.StringIO()
    with os.fdopen(r, "r") as stream:
        ask = TerminalFeedback(timeout=0.2, stream=stream, out=out)
        img = [torch.rand(3, 8, 8)]
        os.write(w, b"too blurry\nmore texture\n")  # the second line is typed ahead: it waits for the next stage
        assert ask.describe(img, scores={"psnr": 30.12345, "niqe": None}) == "too blurry"
        assert "psnr=30.12  niqe=n/a" in out.getvalue() and "Enter to skip" in out.getvalue()
        assert ask.describe(img) == "more texture"
        t0 = time.perf_counter()
        assert ask.describe(img) == ""
        assert 0.2 <= time.perf_counter() - t0 < 1.0
        assert "no answer within 0.2 s" in out.getvalue()
        os.write(w, b"half ")  # begun as the time runs out: kept and completed for the next stage
        assert ask.describe(img) == ""
        os.write(w, b"typed\n")
        assert ask.describe(img) == "half typed"
        os.close(w)  # input closed: no more waiting
        t0 = time.perf_counter()
        assert ask.describe(img) == "" and ask.describe(img) == ""
        assert time.perf_counter() - t0 < 0.1


def test_terminal_without_a_file_descriptor_and_saving_the_probe(tmp_path):
    out = io.StringIO()
    ask = TerminalFeedback(timeout=0.2, stream=io.StringIO("halos on edges\n"), out=out, save_dir=tmp_path / "look")
    assert ask.describe([torch.rand(1, 3, 12, 20), torch.rand(3, 8, 8)]) == "halos on edges"
    assert Image.open(tmp_path / "look" / "probe_0.png").size == (20, 12)
    assert str(tmp_path / "look" / "probe_1.png") in out.getvalue()
    assert ask.describe([torch.rand(3, 8, 8)]) == ""  # the end of the input


def test_terminal_feedback_through_the_scheduler_records_an_empty_text_not_an_error(tmp_path):
    r, w = os.pipe()
    os.write(w, b"sharper please\n")
    with os.fdopen(r, "r") as stream:
        ask = TerminalFeedback(timeout=0.2, stream=stream, out=io.StringIO())
        mean = al.CallableObjective(lambda x: float(x.mean()), name="mean", higher_is_better=True)
        sched = _train([mean, ask], tmp_path)
    os.close(w)
    assert [r.texts for r in sched.history] == [{"person": "sharper please"}, {"person": ""}, {"person": ""}]
    assert all(not r.errors for r in sched.history)
    assert sched.history[1].timings["score_person_s"] >= 0.2  # it waited, then went on


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    return builtin_photos(["astronaut"])[0][:, 100:164, 180:244]  # 64x64 of face and cloth texture


def test_critic_hears_blur_noise_and_the_reference_itself(photo):
    torch.manual_seed(0)
    blurred = gaussian_blur(photo, [5, 5], [1.0, 1.0])
    noisy = (photo + 0.05 * torch.randn_like(photo)).clamp(0, 1)
    critic = HighFrequencyCritic()
    assert high_frequency_ratio([photo], [photo]) == 1.0
    smooth, grainy = high_frequency_ratio([blurred], [photo]), high_frequency_ratio([noisy], [photo])
    assert smooth < critic.low and grainy > critic.high
    assert critic.describe([blurred], [photo]) == "textures look too smooth and blurry"
    assert critic.describe([noisy], [photo]) == "noisy, grainy artefacts"
    assert critic.describe([photo[None]], [photo]) == "textures look natural"  # 1xCxHxW as the probe gives it
    grey = photo.mean(0, keepdim=True)
    assert high_frequency_ratio([grey], [grey]) == 1.0
    with pytest.raises(ValueError, match="size"):
        high_frequency_ratio([photo], [photo[:, :32]])
    with pytest.raises(ValueError, match="references"):
        critic.describe([photo])
    with pytest.raises(ValueError, match="low < high"):
        HighFrequencyCritic(low=1.2, high=1.1)


def test_feedback_config_is_validated_with_clear_errors(tmp_path):
    def error(feedback) -> str:
        with pytest.raises(ConfigError) as err:
            load_config({**TINY, "feedback": feedback})
        return str(err.value)

    assert "base_url" in error([{"type": "vision"}]) and "Field required" in error([{"type": "vision"}])
    assert "'vision', 'critic', 'terminal'" in error([{"type": "vlm"}])
    assert "unknown field" in error([{"type": "terminal", "timout": 3}])
    assert "low < high" in error([{"type": "critic", "low": 2.0}])
    assert "critic used twice" in error([{"type": "critic"}, {"type": "critic"}])
    assert "psnr used twice" in error([{"type": "critic", "name": "psnr"}])
    key = error([{"type": "vision", "base_url": "http://h/v1", "api_key_env": "sk-proj-abcdef0123456789"}])
    assert "looks like an API key" in key and "sk-proj" not in key
    cfg = load_config({**TINY, "out": str(tmp_path), "feedback": [
        {"type": "vision", "base_url": "http://127.0.0.1:9/v1", "model": "qwen2-vl", "max_images": 3},
        {"type": "critic", "low": 0.8}, {"type": "terminal", "timeout": 5}]})
    vision, critic, person = build_feedback(cfg)
    assert (vision.name, vision.model, vision.max_images, vision.timeout) == ("vision", "qwen2-vl", 3, 60.0)
    assert (critic.name, critic.low, critic.high, critic.needs_reference) == ("critic", 0.8, 1.1, True)
    assert (person.name, person.timeout, person.save_dir) == ("person", 5.0, tmp_path / "feedback_probe")
    assert [o.name for o in build_objectives(cfg, torch.device("cpu"))][1:] == ["vision", "critic", "person"]


@pytest.mark.slow
def test_run_ask_records_the_persons_lines_and_the_critic_in_stages_jsonl(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps({**TINY, "out": str(out), "feedback": [{"type": "critic"}]}))
    assert main(["run", str(f), "--ask-timeout", "1"]) == 2
    assert "--ask-timeout goes with --ask" in capsys.readouterr().err
    r, w = os.pipe()
    os.write(w, b"textures look plastic, push perceptual\n")
    with os.fdopen(r, "r") as stdin:
        monkeypatch.setattr(sys, "stdin", stdin)
        assert main(["run", str(f), "--ask", "--ask-timeout", "0.2", "--no-progress"]) == 0
    os.close(w)
    records = read_records(out)
    assert [r.texts.get("person") for r in records] == ["textures look plastic, push perceptual", "", ""]
    critic = {"textures look too smooth and blurry", "noisy, grainy artefacts", "textures look natural"}
    assert all(r.texts["critic"] in critic for r in records)
    assert [s["name"] for s in read_meta(out)["text_sources"]] == ["critic", "person"]
    assert (out / "feedback_probe" / "probe_0.png").is_file()
    err = capsys.readouterr().err
    assert err.count("feedback for the agent (Enter to skip)>") == 3
