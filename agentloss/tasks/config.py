"""Run configs for the bundled tasks: one table of task defaults, pydantic validation, clear errors.

A config names a task (``cisr``, ``risr`` or ``air``); every field it leaves out comes from
:data:`TASK_DEFAULTS`, which holds the paper's settings (stage length, total iterations, initial
weights, Adam at a constant 1e-4). Errors name the field and what is allowed:

>>> load_config({"task": "cisr", "backbone": {"name": "swinr"}, "train": {"lr": -1}})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
agentloss.tasks.config.ConfigError: invalid run config:
  backbone.name: unknown backbone 'swinr' (did you mean 'swinir'?); allowed: hat, hat_s, ...
  train.lr: Input should be greater than 0
>>> cfg = load_config({"task": "cisr"})
>>> cfg.train.stage_length, cfg.train.total_iters, cfg.losses
(5000, 100000, {'l1': 1.0, 'perceptual': 0.1, 'gan': 0.01})
>>> load_config({"task": "air"}).losses
{'l1': 1.0, 'perceptual': 0.1, 'lpips': 1.0}
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..agents.factory import agent_options
from .agentopts import option_problems
from .defaults import TASK_DEFAULTS, apply_overrides, deep_merge
from .identity import looks_like_key, redact_config

TaskName = Literal["cisr", "risr", "air"]
Degradation = Literal["auto", "sr", "realsr", "denoise", "derain", "dehaze", "none"]


class ConfigError(ValueError):
    """A run config that cannot be used; the message lists every bad field with what is allowed."""


class _Strict(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default. inf and nan are no
    # setting (lr: inf trains a NaN model to the end).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class BackboneConfig(_Strict):
    """The network: a registry name (``agentloss.backbones.list_backbones()``), its scale, an optional
    official checkpoint (loaded strictly) and overrides of the registry config (new networks only)."""

    name: str = "swinir"
    scale: int | None = None
    checkpoint: str | None = None
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from ..backbones import list_backbones

        names = list_backbones(include_demo=True)
        if v not in names:
            close = difflib.get_close_matches(v, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown backbone {v!r}{hint}; allowed: {', '.join(names)}")
        return v


class SourceConfig(_Strict):
    """One training source. ``builtin``: scikit-image photos (``photos``: names, default the built-in
    training photos); ``hr_folder``: HR images in ``path`` (LQ synthesised by ``degradation``);
    ``paired``: matched ``lq``/``gt`` folders. ``degradation: auto`` is the task's (bicubic for
    cisr, real-world for risr, Gaussian noise for air); ``sigmas`` are the noise levels (8-bit)."""

    kind: Literal["builtin", "hr_folder", "paired"] = "builtin"
    path: str | None = None
    lq: str | None = None
    gt: str | None = None
    photos: list[str] | None = Field(None, min_length=1)
    degradation: Degradation = "auto"
    sigmas: list[float] = Field(default_factory=lambda: [15.0, 25.0, 50.0])

    @model_validator(mode="after")
    def _paths(self) -> SourceConfig:
        if self.kind == "hr_folder" and not self.path:
            raise ValueError("kind 'hr_folder' needs path: a folder of HR images")
        if self.kind == "paired" and not (self.lq and self.gt):
            raise ValueError("kind 'paired' needs lq: and gt: folders")
        return self


class DataConfig(_Strict):
    """Training data: sources are drawn in turn, one batch each; ``patch`` is the GT patch side."""

    sources: list[SourceConfig] = Field(default_factory=lambda: [SourceConfig()], min_length=1)
    patch: int = Field(128, ge=8)
    batch: int = Field(16, ge=1)


class ProbeConfig(_Strict):
    """The probe set the agent's objectives score at each stage end (never the evaluation images).

    ``builtin``: ``count`` crops of ``size`` px from ``photos`` (default the right view of
    scikit-image's stereo motorcycle, a photo neither trained on nor evaluated);
    ``hr_folder``/``paired``: the first ``count`` images of ``path`` / ``lq``+``gt``, centre-cropped."""

    kind: Literal["builtin", "hr_folder", "paired"] = "builtin"
    path: str | None = None
    lq: str | None = None
    gt: str | None = None
    photos: list[str] = Field(default_factory=lambda: ["motorcycle_right"], min_length=1)
    count: int = Field(10, ge=1)
    size: int = Field(256, ge=16)

    @model_validator(mode="after")
    def _paths(self) -> ProbeConfig:
        if self.kind == "hr_folder" and not self.path:
            raise ValueError("probe kind 'hr_folder' needs path: a folder of HR images")
        if self.kind == "paired" and not (self.lq and self.gt):
            raise ValueError("probe kind 'paired' needs lq: and gt: folders")
        return self


class EvalConfig(_Strict):
    """Evaluation after training: benchmark folders under ``root`` (those found; a missing one is
    reported and skipped) and, with ``builtin``, scikit-image photos kept out of training and probe.
    ``metrics`` default to PSNR and SSIM plus the no-reference objectives; ``size`` centre-crops the
    built-in photos; ``max_images`` caps each set; ``tile`` restores large images in tiles. ``ema`` > 0
    scores an exponential moving average of the weights with that decay (e.g. 0.99; the agent still
    sees the last iterate, which is scored too); 0 scores the last iterate."""

    root: str | None = None
    datasets: list[str] = Field(default_factory=list)
    builtin: bool = True
    metrics: list[str] | None = None
    size: int | None = Field(None, ge=16)
    max_images: int | None = Field(None, ge=1)
    tile: int | None = Field(None, ge=16)
    noise_sigma: float = 25.0
    ema: float = Field(0.0, ge=0.0, lt=1.0)

    @field_validator("metrics")
    @classmethod
    def _known(cls, v: list[str] | None) -> list[str] | None:
        from ..objectives import pyiqa_configs

        unknown = [m for m in v or [] if m.lower() not in pyiqa_configs()]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}: not pyiqa metrics (see pyiqa.list_models())")
        return v


class ObjectiveConfig(_Strict):
    """An objective for the agent: ``psnr``/``ssim`` (Y channel) or any pyiqa metric name, with options."""

    name: str
    options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _known(cls, v: str) -> str:
        from ..objectives import pyiqa_configs

        known = pyiqa_configs()
        if v.lower() not in known:
            close = difflib.get_close_matches(v.lower(), list(known), n=3)
            raise ValueError(f"unknown objective {v!r}: not a pyiqa metric"
                             + (f" (close: {', '.join(close)})" if close else "; see pyiqa.list_models()"))
        return v.lower()


class VisionFeedbackConfig(_Strict):
    """``type: vision``: a multimodal model at an OpenAI-compatible ``base_url`` describes the restored
    probe images (:class:`agentloss.feedback.VisionFeedback`); ``timeout`` bounds each stage's call."""

    type: Literal["vision"]
    name: str = "vision"
    base_url: str
    model: str = "default"
    prompt: str | None = None
    api_key_env: str | None = None
    max_images: int = Field(2, ge=1)
    image_size: int = Field(256, ge=8)
    max_tokens: int = Field(200, ge=1)
    timeout: float = Field(60.0, gt=0)

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL such as http://127.0.0.1:8080/v1")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _a_name(cls, v: str | None) -> str | None:
        if v is not None and looks_like_key(v):  # never echoed: most likely the key itself
            raise ValueError("must name an environment variable (e.g. OPENAI_API_KEY), and this value looks like "
                             "an API key (not shown): put the key in the variable, not here")
        return v


class CriticFeedbackConfig(_Strict):
    """``type: critic``: the deterministic high-frequency critic (:class:`agentloss.feedback.HighFrequencyCritic`)
    comparing the restored probe with its references."""

    type: Literal["critic"]
    name: str = "critic"
    low: float = Field(0.9, gt=0)
    high: float = Field(1.1, gt=0)

    @model_validator(mode="after")
    def _order(self) -> CriticFeedbackConfig:
        if self.low >= self.high:
            raise ValueError(f"critic needs low < high, got low={self.low}, high={self.high}")
        return self


class TerminalFeedbackConfig(_Strict):
    """``type: terminal``: a person types a line at each stage end (:class:`agentloss.feedback.TerminalFeedback`,
    what ``agentloss run --ask`` adds); after ``timeout`` seconds the run goes on without one."""

    type: Literal["terminal"]
    name: str = "person"
    timeout: float = Field(60.0, gt=0)
    prompt: str | None = None


FeedbackConfig = Annotated[VisionFeedbackConfig | CriticFeedbackConfig | TerminalFeedbackConfig,
                           Field(discriminator="type")]


class TrainConfig(_Strict):
    """Stages and the optimiser (the paper: Adam, constant lr 1e-4). ``pretrain_iters`` L1 iterations
    make a PSNR-oriented start when no checkpoint is given (the paper starts from such checkpoints)."""

    stage_length: int = Field(5000, ge=1)
    total_iters: int = Field(100_000, ge=1)
    lr: float = Field(1e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    pretrain_iters: int = Field(0, ge=0)
    pretrain_lr: float = Field(2e-4, gt=0)
    log_every: int = Field(10, ge=1)
    # Ask the agent in the background while training goes on (see StageScheduler); apply_at "asap"
    # or "next_stage" (exact, reproducible whatever the model's latency).
    asynchronous: bool = False
    apply_at: Literal["asap", "next_stage"] = "next_stage"

    @model_validator(mode="after")
    def _stages(self) -> TrainConfig:
        if self.total_iters < self.stage_length:
            raise ValueError(f"total_iters ({self.total_iters}) is shorter than one stage ({self.stage_length})")
        return self

    @property
    def stages(self) -> int:
        return -(-self.total_iters // self.stage_length)


BUILTIN_METHODS = ("fixed", "random", "agent")  # compare's own names; agents: adds more


class RunConfig(_Strict):
    """A whole run (see the module docstring); ``agent`` is an ``agentloss.create_agent`` config."""

    task: TaskName
    name: str = "run"
    seed: int = 0
    device: str = "auto"
    threads: int | None = Field(None, ge=1)
    out: str | None = None
    niqe_params: str | None = None
    backbone: BackboneConfig = Field(default_factory=BackboneConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    losses: dict[str, float]
    loss_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    constraints: dict[str, Any] = Field(default_factory=dict)
    objectives: list[ObjectiveConfig] = Field(min_length=1)
    # Text feedback sources, described at each stage end and shown to language-model agents.
    feedback: list[FeedbackConfig] = Field(default_factory=list)
    agent: dict[str, Any] = Field(default_factory=lambda: {"type": "llm"})
    train: TrainConfig = Field(default_factory=TrainConfig)
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    # More agents for ``compare``, by name (each validated like ``agent``): e.g. the paper's prompt beside a guided agent.
    agents: dict[str, dict[str, Any]] = Field(default_factory=dict)
    compare: list[str] = Field(default_factory=lambda: ["fixed", "random", "agent"])

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v != "auto":
            import torch

            try:
                torch.device(v)
            except (RuntimeError, ValueError):
                raise ValueError(f"{v!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
        return v

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: dict[str, Any]) -> dict[str, Any]:
        from ..constraints import WeightConstraints

        try:
            WeightConstraints(**v)
        except (TypeError, ValueError, AttributeError) as e:  # per_loss: [1] fails on .items()
            raise ValueError(str(e) if not isinstance(e, AttributeError) else
                             "per_loss must map loss names to [low, high] bounds") from None
        return v

    @field_validator("losses")
    @classmethod
    def _losses(cls, v: dict[str, float]) -> dict[str, float]:
        from ..losses import list_losses

        known = list_losses()
        unknown = [k for k in v if k not in known]
        if unknown:
            raise ValueError(f"unknown loss(es) {unknown}; allowed: {', '.join(known)}")
        if not v or all(w == 0 for w in v.values()) or any(w < 0 for w in v.values()):
            raise ValueError("weights must be non-negative and not all zero")
        return v

    @field_validator("agents")
    @classmethod
    def _agents(cls, v: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, cfg in v.items():
            if name in BUILTIN_METHODS or name == "start" or not name.replace("-", "_").isidentifier():
                raise ValueError(f"agents: {name!r} cannot name an agent (not fixed, random, agent or start; letters, "
                                 "digits, - and _)")
            try:
                cls._agent(cfg)
            except ValueError as e:
                raise ValueError(f"agents.{name}: {e}") from None
        return v

    @field_validator("agent")
    @classmethod
    def _agent(cls, v: dict[str, Any]) -> dict[str, Any]:
        from ..agents.factory import AGENT_REGISTRY

        kind = v.get("type")
        if kind not in AGENT_REGISTRY:
            raise ValueError(f"type must be one of {sorted(AGENT_REGISTRY)}, got {kind!r}")
        allowed = agent_options(kind)
        unknown = [k for k in v if k != "type" and k not in allowed]
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for agent type {kind!r}; allowed: {allowed}")
        bad = option_problems(kind, v)
        if bad:
            raise ValueError("; ".join(bad))
        backend = v.get("backend")
        if isinstance(backend, Mapping) and "api_key_env" in backend and looks_like_key(backend["api_key_env"]):
            # Never echo it: it is most likely the key itself, pasted into the variable's name.
            raise ValueError("backend.api_key_env must name an environment variable (e.g. OPENAI_API_KEY), and "
                             "this value looks like an API key (not shown): put the key in the variable, not here")
        return v

    @model_validator(mode="after")
    def _feedback_names(self) -> RunConfig:
        fb = [f.name for f in self.feedback]
        scored = {o.name for o in self.objectives}
        twice = sorted({n for n in fb if fb.count(n) > 1 or n in scored})
        if twice:
            raise ValueError(f"feedback: each source needs its own name (name:), unlike the other sources' and "
                             f"the objectives'; {', '.join(twice)} used twice")
        return self

    @model_validator(mode="after")
    def _methods(self) -> RunConfig:
        known = [*BUILTIN_METHODS, *self.agents]
        bad = [m for m in self.compare if m not in known]
        if bad or not self.compare or len(set(self.compare)) != len(self.compare):
            raise ValueError(f"compare: methods must be distinct, among {', '.join(known)} (agents: adds more); "
                             f"got {self.compare}")
        return self

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        from ..backbones import BACKBONES

        spec = BACKBONES[self.backbone.name]
        if self.task == "air" and spec.task != "restoration":
            raise ValueError(f"backbone.name: task air needs a same-size restoration backbone (promptir, "
                             f"promptir_tiny), got {self.backbone.name}")
        if self.task in ("cisr", "risr") and spec.task != "sr":
            raise ValueError(f"backbone.name: task {self.task} needs an SR backbone, got {self.backbone.name}")
        scale = self.scale
        if scale not in spec.scales:
            raise ValueError(f"backbone.scale: {self.backbone.name} is published for scales {list(spec.scales)}, "
                             f"got {scale}")
        if self.data.patch % scale:
            raise ValueError(f"data.patch ({self.data.patch}) must be a multiple of the scale ({scale})")
        return self

    @property
    def scale(self) -> int:
        from ..backbones import BACKBONES

        spec = BACKBONES[self.backbone.name]
        return int(self.backbone.scale or spec.default_scale)

    @property
    def degradation(self) -> str:
        """The task's degradation for HR-only sources."""
        return {"cisr": "sr", "risr": "realsr", "air": "denoise"}[self.task]

    @property
    def out_dir(self) -> Path:
        return Path(self.out or os.path.join("runs", self.name))


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown field (a typo?)"
        # Checks across fields name their field in the message; a "(top level)" prefix would only add noise.
        lines.append(f"  {msg}" if not e["loc"] else f"  {loc}: {msg}")
    return "invalid run config:\n" + "\n".join(lines)


def load_config(source: str | os.PathLike[str] | Mapping[str, Any], overrides: list[str] | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from a YAML/JSON file or a mapping, task defaults filled in.

    Raises :class:`ConfigError` listing each bad field (path, what is wrong, what is allowed).
    """
    if isinstance(source, Mapping):
        data = dict(source)
        where = "config"
    else:
        import yaml

        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        where = str(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    if overrides:
        try:
            data = apply_overrides(data, overrides)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    task = data.get("task")
    if task not in TASK_DEFAULTS:
        raise ConfigError(f"invalid run config:\n  task: must be one of {', '.join(TASK_DEFAULTS)}, got {task!r}")
    merged = deep_merge(TASK_DEFAULTS[task], data)
    try:
        return RunConfig.model_validate(merged)
    except ValidationError as e:
        text = _format_errors(e)
        if where != "config":
            text = text.replace("invalid run config", f"invalid run config ({where})", 1)
        raise ConfigError(text) from None


def dump_config(cfg: RunConfig) -> str:
    """The full config (defaults included) as JSON for the run's record, secrets redacted."""
    return json.dumps(redact_config(cfg.model_dump(mode="json")), indent=2)
