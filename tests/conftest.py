"""Shared fixtures: NIQE's parameter file, photos, benchmark scripts, and the test configuration."""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# CI lays shared/ beside the clone; a developer's checkout has it one level up too.
NIQE_CANDIDATES = [os.environ.get("AGENTLOSS_NIQE_PARAMS", ""), ROOT.parent / "shared/data/niqe_modelparameters.mat",
                   Path(os.environ.get("TORCH_HOME", Path.home() / ".cache/torch")) / "hub/pyiqa/niqe_modelparameters.mat"]


@pytest.fixture(scope="session")
def niqe_params() -> str:
    for c in NIQE_CANDIDATES:
        if c and Path(c).is_file():
            return str(c)
    pytest.skip("NIQE parameter file absent (set AGENTLOSS_NIQE_PARAMS or place shared/data beside the checkout)")


def _load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` (a script, not a package module) imported as module ``<name>``."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """Loads a benchmark script by name: ``load_benchmark("bench_quality")``."""
    return _load_benchmark


@pytest.fixture(scope="session")
def niqe_kwargs(niqe_params) -> dict:
    return {"pretrained_model_path": niqe_params, "device": "cpu"}


@pytest.fixture(scope="session")
def photo() -> torch.Tensor:
    from agentloss.data import builtin_photos

    return builtin_photos(["astronaut"])[0].unsqueeze(0)


@pytest.fixture(autouse=True)
def _few_threads():
    # Two cores shared by everything: keep torch from oversubscribing them.
    torch.set_num_threads(2)
    yield


@pytest.fixture
def crash_run(monkeypatch) -> Callable[[Any], None]:
    """Runs a task config with a KeyboardInterrupt in stage 2 (after stage 1's checkpoint)."""
    from agentloss.tasks import runner

    def go(cfg: Any) -> None:
        real = runner.build_stream

        def crashing(c, seed):
            stream = real(c, seed)
            nxt = type(stream).__next__

            class Crash(type(stream)):
                def __next__(self):
                    if self.index == 3:
                        raise KeyboardInterrupt
                    return nxt(self)

            stream.__class__ = Crash
            return stream

        monkeypatch.setattr(runner, "build_stream", crashing)
        with pytest.raises(KeyboardInterrupt):
            runner.run(cfg, progress=False)
        monkeypatch.setattr(runner, "build_stream", real)

    return go


@pytest.fixture
def crash_and_resume(crash_run) -> Callable[[dict], tuple]:
    """Runs a task config to the end, then again with a crash in stage 2 and a resume: returns
    ``(uninterrupted, resumed)`` results."""
    from agentloss.tasks import runner
    from agentloss.tasks.config import load_config

    def go(base: dict) -> tuple:
        out = Path(base["out"])
        whole = runner.run(load_config({**base, "out": str(out / "whole")}), progress=False)
        cfg = load_config({**base, "out": str(out / "crash")})
        crash_run(cfg)
        return whole, runner.run(cfg, progress=False)

    return go
