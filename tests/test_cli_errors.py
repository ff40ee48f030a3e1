"""Every user error reaches the user as one ``agentloss: error`` line and exit status 2, never a traceback:
the known cases in-process, then invalid configs mutated from the demo config through the real command."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
import urllib.error
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml

from agentloss.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "task": "cisr",
    "backbone": {"name": "swinir_light_tiny", "scale": 2},
    "losses": {"l1": 1.0, "fft": 0.1},
    "objectives": [{"name": "psnr"}],
    "agent": {"type": "fixed"},
    "train": {"stage_length": 2, "total_iters": 4},
    "data": {"patch": 32, "batch": 2},
    "probe": {"count": 1, "size": 64},
    "eval": {"size": 64, "max_images": 1},
}


def _one_error_line(err: str) -> None:
    """The error is one ``agentloss: error`` line (a config error lists each field on an indented line after it)."""
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if x.strip()]
    assert lines and lines[0].startswith("agentloss: error"), err
    assert sum("agentloss: error" in x for x in lines) == 1 and all(x.startswith("  ") for x in lines[1:]), err


@pytest.mark.parametrize("sets", [
    ["device=banana"],
    ["device=cuda:99"],
    ["backbone.options={num_heads: [0]}"],
    ["constraints={per_loss: [1]}"],
    ["agent={type: fixed, weights: [1, 2]}"],
    ["agent={type: guided, backend: none, guards: [1, 2]}"],
    ["agent={type: llm, backend: {type: llama_cpp, model_path: /nonexistent/model.gguf}}"],
    ["probe={kind: hr_folder}"],
    ["probe.photos=[]"],
    ["eval.size=0"],
    ["train.lr=.inf"],
], ids=lambda s: s[0].split("=")[0] + ":" + s[0].split("=", 1)[1][:24])
def test_known_errors_are_one_line_and_exit_2(tmp_path, capsys, sets):
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps({**TINY, "out": str(tmp_path / "out")}))
    assert main(["run", str(f), "--no-progress", *[a for s in sets for a in ("--set", s)]]) == 2
    _one_error_line(capsys.readouterr().err)


def test_vgg_download_offline_is_one_line(tmp_path, capsys, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps({**TINY, "losses": {"l1": 1.0, "perceptual": 0.1}, "out": str(tmp_path / "out")}))
    assert main(["compare", str(f), "--no-progress"]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "VGG19" in err and "weights_path" in err  # the offline hint


@pytest.mark.parametrize("content", [b"not a checkpoint", b"", b"PK\x03\x04broken zip"])
def test_a_corrupt_checkpoint_is_one_line(tmp_path, capsys, content):
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps({**TINY, "out": str(tmp_path / "out")}))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "checkpoint.pt").write_bytes(content)
    assert main(["run", str(f), "--no-progress"]) == 2
    err = capsys.readouterr().err
    _one_error_line(err)
    assert "checkpoint.pt" in err and "--fresh" in err


@pytest.mark.parametrize("lines", [["{}"], ["42"], ["null"], ["{}", "42", "null"], []])
def test_show_with_unreadable_records_is_one_line(tmp_path, capsys, lines):
    (tmp_path / "stages.jsonl").write_text("".join(x + "\n" for x in lines))
    assert main(["show", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and sum(x.startswith("agentloss: error") for x in err.splitlines()) == 1
    assert main(["show", str(tmp_path / "missing")]) == 2


def test_check_passes_the_demo_config_without_training(tmp_path, capsys):
    f = tmp_path / "c.yaml"
    f.write_text(json.dumps({**TINY, "out": str(tmp_path / "out"), "train": {"stage_length": 2, "total_iters": 4,
                                                                          "pretrain_iters": 10**6}}))
    assert main(["compare", str(f), "--check"]) == 0
    assert "ok" in capsys.readouterr().out and not (tmp_path / "out" / "start.pt").exists()


# ----------------------------------------------------------------------------- the fuzz

# (dotted path, value) mutations of the demo config: each makes it invalid in its own way. Parts that
# download (NIQE's parameter file, VGG19) are left to the tests above: with a network they would work.
MUTATIONS: list[tuple[str, object]] = [
    # refused by the config's validation
    ("task", "sr"), ("device", "banana"), ("backbone.name", "swinr"), ("data.patch", 63),
    ("losses", {"l1": float("nan")}), ("constraints.per_loss", [1]), ("constraints.max_weight", True),
    ("objectives", [{"name": "niqee"}]), ("agent", {"type": "fixed", "weights": [1, 2]}),
    ("agent", {"type": "guided", "backend": "none", "guards": [1, 2]}),
    ("agent", {"type": "llm", "backend": {"type": "openai", "model": "m", "api_key_env": "sk-abcdef0123456789xyz"}}),
    ("train.lr", float("inf")), ("probe", {"kind": "hr_folder"}), ("probe.photos", []), ("eval.size", 0),
    ("eval.metrics", ["psnr", "niqee"]), ("compare", ["fixed", "nope"]), ("niqe_params", "/nonexistent.mat"),
    # refused when the run's parts are built and tried, before training
    ("device", "cuda:99"), ("backbone.options.num_heads", [0, 0]),
    ("data.sources", [{"kind": "hr_folder", "path": "/nonexistent"}]),
    ("objectives", [{"name": "piqe"}, {"name": "piqe"}]), ("agent", {"type": "fixed", "weights": {"l1": 1, "bogus": 2}}),
    ("agent", {"type": "guided", "backend": "none", "primary": "musiq"}),
    ("agent", {"type": "llm", "backend": {"type": "llama_cpp", "model_path": "/nonexistent.gguf"}}),
    ("agent", {"type": "llm", "backend": {"type": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1"}}),
]


def _mutate(base: dict, path: str, value: object) -> dict:
    out = copy.deepcopy(base)
    node = out
    *parents, last = path.split(".")
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value
    return out


def _command(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "AGENTLOSS_NIQE_PARAMS": ""}
    return subprocess.run([sys.executable, "-m", "agentloss.cli", *args], capture_output=True, text=True, env=env,
                          timeout=180, cwd=ROOT, check=False)


def test_config_fuzz_through_the_command(tmp_path):
    demo = yaml.safe_load((ROOT / "examples/configs/swinir_piqe.yaml").read_text())
    base = {**demo, "agent": {"type": "fixed"}}  # the demo's embedded model may be absent: not what is tested
    jobs = []
    for i, (path, value) in enumerate(MUTATIONS):
        f = tmp_path / f"m{i}.yaml"
        f.write_text(yaml.safe_dump(_mutate(base, path, value)))
        jobs.append(["run" if i % 2 else "compare", str(f), "--no-progress", "--out", str(tmp_path / f"out{i}")])
    f = tmp_path / "base.yaml"
    f.write_text(yaml.safe_dump(base))
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as pool:  # two cores: two commands at a time
        done = list(pool.map(_command, [["run", str(f), "--check", "--out", str(tmp_path / "base")], *jobs]))
    seconds = time.perf_counter() - t
    assert done[0].returncode == 0, done[0].stderr  # the unmutated config passes every check
    bad = []
    for (path, value), p in zip(MUTATIONS, done[1:]):
        try:
            assert p.returncode == 2
            _one_error_line(p.stderr)
        except AssertionError:
            bad.append(f"{path}={value!r}: rc {p.returncode}\n{p.stderr[-1500:]}")
    assert not bad, "\n\n".join(bad)
    print(f"{len(MUTATIONS)} invalid configs, each exit 2 with one error line, in {seconds:.0f} s")
