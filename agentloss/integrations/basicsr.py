"""BasicSR: a ``train:`` block's losses as an ``AgentWeightedLoss``, and a resume that keeps the agent's weights.

BasicSR itself is not a dependency: this module only reads its option dicts and overrides two of its
model methods by name, so it imports without BasicSR.

* :func:`terms_from_basicsr` maps the ``pixel_opt``, ``perceptual_opt`` and ``gan_opt`` entries of a
  BasicSR ``train:`` block (or of the whole options dict) to agentloss terms and initial weights;
  :func:`loss_from_basicsr` builds the ``AgentWeightedLoss`` from them. The agent-visible weight of a
  term is the factor BasicSR multiplies it by: ``loss_weight`` for ``L1Loss``/``MSELoss``/
  ``CharbonnierLoss``/``GANLoss``, ``perceptual_weight`` for ``PerceptualLoss`` (which has no
  ``loss_weight``). Anything without a faithful equivalent (``style_weight > 0``, ``gan_type: wgan``,
  label smoothing, ``reduction: sum``, another VGG, an unknown ``*_opt``...) raises
  :class:`BasicSRConfigError` naming the option, before anything is built.
* :class:`AgentLossMixin` fixes BasicSR's resume: ``save_training_state`` saves only
  ``{'epoch', 'iter', 'optimizers', 'schedulers'}`` and ``resume_training`` restores only optimizers and
  LR schedulers, so a resumed run would restart from the yaml's weights with a new agent history. The
  mixin adds the stage scheduler's state (weights, history, the agent's RNG) to the same
  ``training_states/{iter}.state`` file under ``"agentloss"`` and restores it.

The adversarial term: BasicSR's ``SRGANModel`` builds ``net_d`` from ``network_d`` and an ``optimizer_d``
from ``optim_d``, and updates the discriminator *after* the generator's step. The ``gan`` term here
owns its discriminator's Adam optimiser; pass ``discriminator=self.net_d`` (so BasicSR still saves and
resumes ``net_d_{iter}.pth``), ``optim_d`` (Adam only) becomes that optimiser's settings, the term is
built with ``auto_update=False`` and the model calls ``loss_fn.update_discriminators(output, gt)``
after ``optimizer_g.step()``; :func:`discriminator_optimizers` gives the optimiser to append to
``self.optimizers`` so BasicSR's LR schedulers and training state cover it, as they cover
``optimizer_d``. ``examples/basicsr_model.py`` is a complete model class; ``docs/basicsr.md`` has the table.

Example:
    >>> train = {"pixel_opt": {"type": "CharbonnierLoss", "loss_weight": 1.0, "eps": 1e-12},
    ...          "perceptual_opt": {"type": "PerceptualLoss", "layer_weights": {"conv5_4": 1.0},
    ...                             "perceptual_weight": 0.1, "style_weight": 0, "criterion": "l1"}}
    >>> spec = terms_from_basicsr(train)
    >>> spec.weights, spec.sources["perceptual"]
    ({'charbonnier': 1.0, 'perceptual': 0.1}, 'train.perceptual_opt')
    >>> spec.terms["charbonnier"], spec.terms["perceptual"]["layers"]
    ({'eps': 1e-06}, {'conv5_4': 1.0})
    >>> loss_fn = loss_from_basicsr({"pixel_opt": {"type": "L1Loss", "loss_weight": 0.5}})
    >>> loss_fn.weights
    {'l1': 0.5}
    >>> terms_from_basicsr({"perceptual_opt": {"type": "PerceptualLoss", "layer_weights": {"conv5_4": 1.0},
    ...                                        "style_weight": 1.0}})
    Traceback (most recent call last):
    ...
    agentloss.integrations.basicsr.BasicSRConfigError: train.perceptual_opt.style_weight = 1.0: agentloss's perceptual term has no style (Gram matrix) loss; set style_weight: 0 or remove it
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from ..constraints import WeightConstraints
from ..distributed import rank_and_world
from ..losses.gan import GANLoss
from ..losses.perceptual import VGG19_LAYER_NAMES
from ..scheduler import StageScheduler
from ..weighted_loss import AgentWeightedLoss

__all__ = [
    "STATE_KEY",
    "AgentLossMixin",
    "BasicSRConfigError",
    "BasicSRTerms",
    "discriminator_optimizers",
    "loss_from_basicsr",
    "terms_from_basicsr",
]

log = logging.getLogger("agentloss")

#: The key of the agentloss entry in BasicSR's ``training_states/{iter}.state``.
STATE_KEY = "agentloss"
_STATE_VERSION = 1


class BasicSRConfigError(ValueError):
    """A BasicSR option that has no faithful agentloss equivalent (the message names it and says what to do)."""


# Which loss types each option BasicSR's SRModel/SRGANModel reads may hold, and the agentloss term of each.
_SLOTS: dict[str, dict[str, str]] = {
    "pixel_opt": {"L1Loss": "l1", "MSELoss": "mse", "CharbonnierLoss": "charbonnier"},
    "perceptual_opt": {"PerceptualLoss": "perceptual"},
    "gan_opt": {"GANLoss": "gan"},
}
# The constructor arguments of each BasicSR loss class (BasicSR itself raises TypeError on any other).
_OPTIONS: dict[str, frozenset[str]] = {
    "L1Loss": frozenset({"loss_weight", "reduction"}),
    "MSELoss": frozenset({"loss_weight", "reduction"}),
    "CharbonnierLoss": frozenset({"loss_weight", "reduction", "eps"}),
    "PerceptualLoss": frozenset({"layer_weights", "vgg_type", "use_input_norm", "range_norm", "perceptual_weight",
                                 "style_weight", "criterion"}),
    "GANLoss": frozenset({"gan_type", "real_label_val", "fake_label_val", "loss_weight"}),
}
_GAN_TYPES = ("vanilla", "lsgan", "hinge")  # BasicSR's wgan and wgan_softplus have no agentloss equivalent
_PERCEPTUAL_PASSTHROUGH = frozenset({"weights", "weights_path", "progress"})  # where the VGG19 weights come from


@dataclass
class BasicSRTerms:
    """A BasicSR loss block in agentloss terms: what :class:`AgentWeightedLoss` is built from.

    Attributes:
        weights: term name -> initial, agent-visible weight (``loss_weight``, or ``perceptual_weight``).
        terms: term name -> options for the repository's term (or the module), as ``AgentWeightedLoss(terms=)``.
        sources: term name -> the BasicSR option it came from (``"train.pixel_opt"``).

    The dicts are plain: add a term of your own to ``weights``/``terms`` before :meth:`build`.
    """

    weights: dict[str, float] = field(default_factory=dict)
    terms: dict[str, dict[str, Any] | nn.Module] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)

    def build(self, constraints: WeightConstraints | None = None) -> AgentWeightedLoss:
        """The ``AgentWeightedLoss`` of these terms (the perceptual term loads its VGG19 weights here)."""
        return AgentWeightedLoss(self.weights, terms=self.terms, constraints=constraints)


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = (" (YAML reads a number like 1e-4 without a dot as text: write !!float 1e-4 or 1.0e-4)"
                if isinstance(value, str) else "")
        raise BasicSRConfigError(f"{where} = {value!r} is not a number{hint}")
    number = float(value)
    if not math.isfinite(number):
        raise BasicSRConfigError(f"{where} = {value!r} is not finite")
    return number


def _split_options(opt: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    """(the train block, the model type) from either the whole options dict or its ``train:`` block."""
    if not isinstance(opt, Mapping):
        raise BasicSRConfigError(f"expected BasicSR's options (a dict), got {type(opt).__name__}")
    if isinstance(opt.get("train"), Mapping):
        return opt["train"], opt.get("model_type")
    return opt, None


def _pixel(kind: str, cfg: Mapping[str, Any], where: str) -> tuple[float, dict[str, Any]]:
    reduction = cfg.get("reduction", "mean")
    if reduction != "mean":
        raise BasicSRConfigError(f"{where}.reduction = {reduction!r}: agentloss's pixel terms are means over all "
                                 "pixels; only reduction: mean maps to them (a sum grows with batch and patch size)")
    weight = _number(cfg.get("loss_weight", 1.0), f"{where}.loss_weight")
    if kind != "CharbonnierLoss":
        return weight, {}
    eps = _number(cfg.get("eps", 1e-12), f"{where}.eps")
    if not eps > 0:
        raise BasicSRConfigError(f"{where}.eps = {eps!r}: must be > 0 (with eps 0 the Charbonnier loss is L1Loss)")
    # BasicSR computes sqrt(d^2 + eps); agentloss computes sqrt(d^2 + eps^2): the same loss with eps' = sqrt(eps).
    return weight, {"eps": math.sqrt(eps)}


def _perceptual(cfg: Mapping[str, Any], where: str, passthrough: Mapping[str, Any]) -> tuple[float, dict[str, Any]]:
    if "layer_weights" not in cfg:
        raise BasicSRConfigError(f"{where}.layer_weights is missing (BasicSR requires it), e.g. {{conv5_4: 1.0}}")
    layers = cfg["layer_weights"]
    if not isinstance(layers, Mapping) or not layers:
        raise BasicSRConfigError(f"{where}.layer_weights must be a non-empty dict of VGG19 layer -> weight, "
                                 f"got {layers!r}")
    unknown = [k for k in layers if k not in VGG19_LAYER_NAMES]
    if unknown:
        raise BasicSRConfigError(f"{where}.layer_weights: unknown VGG19 layer(s) {unknown}; names are "
                                 f"{list(VGG19_LAYER_NAMES)} (BasicSR's and agentloss's are the same)")
    vgg_type = cfg.get("vgg_type", "vgg19")
    if vgg_type != "vgg19":
        raise BasicSRConfigError(f"{where}.vgg_type = {vgg_type!r}: agentloss's perceptual term is VGG19 (torchvision's "
                                 "ImageNet weights, as BasicSR's vgg19); use vgg_type: vgg19")
    if cfg.get("range_norm", False):
        raise BasicSRConfigError(f"{where}.range_norm = true: agentloss's perceptual term expects images in [0, 1] "
                                 "and has no [-1, 1] input mapping; remove range_norm")
    style = _number(cfg.get("style_weight", 0.0), f"{where}.style_weight")
    if style != 0:
        raise BasicSRConfigError(f"{where}.style_weight = {cfg['style_weight']!r}: agentloss's perceptual term has no "
                                 "style (Gram matrix) loss; set style_weight: 0 or remove it")
    criterion = cfg.get("criterion", "l1")
    if criterion not in ("l1", "l2"):
        raise BasicSRConfigError(f"{where}.criterion = {criterion!r}: agentloss's perceptual term supports l1 and l2 "
                                 "(not fro)")
    use_input_norm = cfg.get("use_input_norm", True)
    if not isinstance(use_input_norm, bool):
        raise BasicSRConfigError(f"{where}.use_input_norm = {use_input_norm!r}: must be true or false")
    weight = _number(cfg.get("perceptual_weight", 1.0), f"{where}.perceptual_weight")
    options: dict[str, Any] = {"layers": {k: _number(v, f"{where}.layer_weights.{k}") for k, v in layers.items()},
                               "criterion": criterion, "normalize_input": use_input_norm}
    return weight, {**options, **passthrough}


def _adam_options(train: Mapping[str, Any]) -> dict[str, Any]:
    """``optim_d`` as the gan term's Adam settings (BasicSR builds ``torch.optim.Adam(params, lr, **rest)``)."""
    cfg = train.get("optim_d")
    if not isinstance(cfg, Mapping):
        raise BasicSRConfigError("train.optim_d is missing: gan_opt needs the discriminator's optimiser, e.g. "
                                 "optim_d: {type: Adam, lr: !!float 1e-4, weight_decay: 0, betas: [0.9, 0.99]}")
    if "type" not in cfg:
        raise BasicSRConfigError("train.optim_d.type is missing; if BasicSR's setup_optimizers already ran, it popped "
                                 "it: call loss_from_basicsr before setup_optimizers")
    if cfg["type"] != "Adam":
        raise BasicSRConfigError(f"train.optim_d.type = {cfg['type']!r}: the gan term's discriminator optimiser is Adam")
    unknown = sorted(set(cfg) - {"type", "lr", "betas", "weight_decay"})
    if unknown:
        raise BasicSRConfigError(f"train.optim_d: option(s) {unknown} cannot be given to the gan term's Adam, which "
                                 "takes lr, betas and weight_decay")
    if "lr" not in cfg:
        raise BasicSRConfigError("train.optim_d.lr is missing (BasicSR requires it)")
    betas = cfg.get("betas", (0.9, 0.999))  # torch.optim.Adam's default, which BasicSR then uses
    if not isinstance(betas, Sequence) or isinstance(betas, str) or len(betas) != 2:
        raise BasicSRConfigError(f"train.optim_d.betas = {betas!r}: must be two numbers, e.g. [0.9, 0.99]")
    return {"lr": _number(cfg["lr"], "train.optim_d.lr"),
            "betas": tuple(_number(b, "train.optim_d.betas") for b in betas),
            "weight_decay": _number(cfg.get("weight_decay", 0.0), "train.optim_d.weight_decay")}


def _gan(cfg: Mapping[str, Any], where: str, train: Mapping[str, Any], model_type: str | None,
         discriminator: nn.Module | None) -> tuple[float, dict[str, Any]]:
    if model_type == "ESRGANModel":
        raise BasicSRConfigError(f"{where}: model_type ESRGANModel trains a relativistic GAN; agentloss's gan term is "
                                 "a standard one (as SRGANModel's), so the mapping would change the method")
    if "gan_type" not in cfg:
        raise BasicSRConfigError(f"{where}.gan_type is missing (BasicSR requires it); one of {list(_GAN_TYPES)}")
    mode = cfg["gan_type"]
    if mode not in _GAN_TYPES:
        raise BasicSRConfigError(f"{where}.gan_type = {mode!r}: agentloss's gan term supports {list(_GAN_TYPES)}")
    if mode != "hinge":  # BasicSR's hinge loss ignores the labels; the others compare logits with them
        for key, default in (("real_label_val", 1.0), ("fake_label_val", 0.0)):
            value = _number(cfg.get(key, default), f"{where}.{key}")
            if value != default:
                raise BasicSRConfigError(f"{where}.{key} = {value!r}: agentloss's gan term uses labels 1 (real) and "
                                         f"0 (fake), no label smoothing; set {key}: {default} or remove it")
    if discriminator is None:
        raise BasicSRConfigError(f"{where}: the gan term needs BasicSR's discriminator: pass "
                                 "discriminator=self.net_d (built from network_d) so BasicSR keeps saving and resuming it")
    if not isinstance(discriminator, nn.Module):
        raise BasicSRConfigError(f"discriminator must be an nn.Module (self.net_d), got {type(discriminator).__name__}")
    weight = _number(cfg.get("loss_weight", 1.0), f"{where}.loss_weight")
    # auto_update=False: SRGANModel updates the discriminator after the generator's step, not before its loss.
    return weight, {"mode": mode, "discriminator": discriminator, "auto_update": False, **_adam_options(train)}


def terms_from_basicsr(
    opt: Mapping[str, Any],
    *,
    discriminator: nn.Module | None = None,
    perceptual_options: Mapping[str, Any] | None = None,
    ignore: Sequence[str] = (),
) -> BasicSRTerms:
    """Map a BasicSR ``train:`` block (or the whole options dict) to agentloss terms and initial weights.

    Args:
        opt: BasicSR's options (``self.opt``) or its ``train`` entry. With the whole dict, ``model_type``
            is checked too (``ESRGANModel``'s relativistic GAN has no equivalent).
        discriminator: the discriminator of ``gan_opt`` (``self.net_d``); required with ``gan_opt``.
        perceptual_options: where the perceptual term's VGG19 weights come from (``weights_path=``,
            ``weights=``, ``progress=``); the rest of its options come from ``perceptual_opt``.
        ignore: ``*_opt`` entries your model computes itself (e.g. ``("ldl_opt",)``): left out, not weighted.

    Raises:
        BasicSRConfigError: naming the option that cannot be mapped faithfully, and what to do.
    """
    train, model_type = _split_options(opt)
    passthrough = dict(perceptual_options or {})
    bad = sorted(set(passthrough) - _PERCEPTUAL_PASSTHROUGH)
    if bad:
        raise BasicSRConfigError(f"perceptual_options {bad}: only {sorted(_PERCEPTUAL_PASSTHROUGH)} may be given here; "
                                 "the other perceptual options come from train.perceptual_opt")
    out = BasicSRTerms()
    for key, cfg in train.items():
        if not (isinstance(key, str) and key.endswith("_opt")) or key in ignore or not cfg:
            continue  # not a loss (optim_g, scheduler, ...), left to the user's code, or switched off (~ / {})
        where = f"train.{key}"
        if key not in _SLOTS:
            raise BasicSRConfigError(f"{where}: not a loss this adapter maps (it maps {list(_SLOTS)}): what a model does "
                                     f"with {key} is in its own optimize_parameters. Pass ignore=({key!r},) and compute "
                                     "it in your code (it is then not agent-weighted), or add your own term to "
                                     "BasicSRTerms.weights/terms")
        if not isinstance(cfg, Mapping) or "type" not in cfg:
            raise BasicSRConfigError(f"{where} must be a dict with a type, got {cfg!r}")
        kind = cfg["type"]
        if kind not in _SLOTS[key]:
            raise BasicSRConfigError(f"{where}.type = {kind!r}: agentloss maps {list(_SLOTS[key])} here")
        unknown = sorted(set(cfg) - {"type"} - _OPTIONS[kind])
        if unknown:
            raise BasicSRConfigError(f"{where}: unknown option(s) {unknown} for BasicSR's {kind}; it takes "
                                     f"{sorted(_OPTIONS[kind])}")
        if key == "pixel_opt":
            weight, options = _pixel(kind, cfg, where)
        elif key == "perceptual_opt":
            weight, options = _perceptual(cfg, where, passthrough)
        else:
            weight, options = _gan(cfg, where, train, model_type, discriminator)
        name = _SLOTS[key][kind]
        out.weights[name], out.terms[name], out.sources[name] = weight, options, where
    if discriminator is not None and "gan" not in out.weights:
        raise BasicSRConfigError("a discriminator was given but the train block has no gan_opt: add gan_opt or pass "
                                 "discriminator=None")
    if not out.weights:
        raise BasicSRConfigError(f"the train block has no loss: none of {list(_SLOTS)} is set")
    if not any(w > 0 for w in out.weights.values()):
        raise BasicSRConfigError(f"every loss weight is 0 ({out.weights}): the model would train nothing")
    return out


def loss_from_basicsr(
    opt: Mapping[str, Any],
    *,
    discriminator: nn.Module | None = None,
    perceptual_options: Mapping[str, Any] | None = None,
    ignore: Sequence[str] = (),
    constraints: WeightConstraints | None = None,
) -> AgentWeightedLoss:
    """The ``AgentWeightedLoss`` of a BasicSR ``train:`` block; see :func:`terms_from_basicsr` for the arguments.

    ``constraints`` bound the weights the agent may set (the yaml's weights must lie within them).
    Move the loss to the model's device before :func:`discriminator_optimizers`.
    """
    spec = terms_from_basicsr(opt, discriminator=discriminator, perceptual_options=perceptual_options, ignore=ignore)
    return spec.build(constraints)


def discriminator_optimizers(loss_fn: AgentWeightedLoss) -> list[torch.optim.Optimizer]:
    """The optimisers of the loss's discriminator-owning terms, to append to BasicSR's ``self.optimizers``.

    They are created here, around the parameters as they are now: move the loss to its device first
    (``.to()`` rebuilds them, and the ones BasicSR holds would then be stale; :class:`AgentLossMixin`
    checks this at every save and resume).
    """
    return [term.optimizer for term in loss_fn.terms.values() if isinstance(term, GANLoss)]


def _bare(module: nn.Module | None) -> nn.Module | None:
    if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        return module.module
    return module


class AgentLossMixin:
    """Keeps a BasicSR run's agent state in its training states: put it first, ``class M(AgentLossMixin, SRModel)``.

    The model sets ``self.stage_scheduler`` (a :class:`~agentloss.scheduler.StageScheduler`) in
    ``init_training_settings`` and calls ``self.stage_scheduler.step()`` once per generator step. Then

    * ``save_training_state(epoch, current_iter)`` lets BasicSR write ``training_states/{iter}.state`` and
      adds ``{"version": 1, "scheduler": stage_scheduler.state_dict()}`` under ``"agentloss"`` (rank 0,
      which is the rank BasicSR writes from; the file is read back and replaced atomically);
    * ``resume_training(resume_state)`` lets BasicSR restore the optimizers and LR schedulers, then
      restores the stage scheduler: the loss weights, the history (``stages.jsonl`` is rewritten to
      match) and the agent's state. A state without the entry raises, unless the class sets
      ``agentloss_require_state = False`` (the run then continues from the yaml's weights).

    Both check that a ``gan`` term's discriminator is ``self.net_d`` and its optimiser is in
    ``self.optimizers``: otherwise BasicSR would not save them and the resume would not be exact.
    """

    agentloss_state_key: ClassVar[str] = STATE_KEY
    agentloss_require_state: ClassVar[bool] = True
    stage_scheduler: StageScheduler

    def _agentloss_scheduler(self) -> StageScheduler:
        sched = getattr(self, "stage_scheduler", None)
        if sched is None:
            raise AttributeError(f"{type(self).__name__} has no stage_scheduler: set self.stage_scheduler = "
                                 "agentloss.StageScheduler(...) in init_training_settings (AgentLossMixin saves and "
                                 "restores it)")
        if not isinstance(sched, StageScheduler):
            raise TypeError(f"self.stage_scheduler must be an agentloss.StageScheduler, got {type(sched).__name__}")
        return sched

    def _agentloss_check_discriminators(self, loss_fn: AgentWeightedLoss) -> None:
        optimizers = getattr(self, "optimizers", [])
        for name, term in loss_fn.terms.items():
            if not isinstance(term, GANLoss):
                continue
            if _bare(getattr(self, "net_d", None)) is not _bare(term.discriminator):
                raise RuntimeError(f"the {name!r} term's discriminator is not self.net_d, so BasicSR neither saves it "
                                   "(net_d_{iter}.pth) nor resumes it: build net_d from network_d and pass "
                                   "discriminator=self.net_d to loss_from_basicsr")
            if not any(o is term.optimizer for o in optimizers):
                raise RuntimeError(f"the {name!r} term's discriminator optimiser is not in self.optimizers, so BasicSR's "
                                   "training state does not hold it (nor do its LR schedulers schedule it): in "
                                   "setup_optimizers, after moving the loss to its device, add "
                                   "self.optimizers.extend(discriminator_optimizers(self.loss_fn))")

    def agentloss_state(self) -> dict[str, Any]:
        """What is added to BasicSR's training state."""
        return {"version": _STATE_VERSION, "scheduler": self._agentloss_scheduler().state_dict()}

    def save_training_state(self, epoch: int, current_iter: int) -> None:
        """BasicSR's ``save_training_state``, then the agent's state added to the file it wrote."""
        self._agentloss_check_discriminators(self._agentloss_scheduler().loss_fn)
        state = self.agentloss_state()  # taken before the write: what is saved is this iteration's
        super().save_training_state(epoch, current_iter)  # type: ignore[misc]
        if current_iter == -1 or rank_and_world()[0] != 0:  # BasicSR writes no state for -1, and only on rank 0
            return
        opt: Mapping[str, Any] = self.opt  # type: ignore[attr-defined]
        path = os.path.join(opt["path"]["training_states"], f"{current_iter}.state")
        if not os.path.isfile(path):  # BasicSR logs its own failure to write and carries on; so do we
            log.error("BasicSR wrote no training state at %s: the agent's state was not saved either", path)
            return
        # Read back what BasicSR wrote (our own file, just written: a full unpickle is safe; its LR
        # schedulers hold a Counter, which weights_only refuses), add our entry, replace it atomically.
        saved = torch.load(path, map_location="cpu", weights_only=False)
        saved[self.agentloss_state_key] = state
        tmp = f"{path}.agentloss-tmp"  # not *.state: BasicSR's auto_resume lists *.state files
        torch.save(saved, tmp)
        os.replace(tmp, path)

    def resume_training(self, resume_state: Mapping[str, Any]) -> None:
        """BasicSR's ``resume_training`` (optimizers, LR schedulers), then the agent's weights, history and state."""
        sched = self._agentloss_scheduler()
        self._agentloss_check_discriminators(sched.loss_fn)
        super().resume_training(resume_state)  # type: ignore[misc]
        state = resume_state.get(self.agentloss_state_key)
        if state is None:
            msg = (f"the resume state of iter {resume_state.get('iter')} has no {self.agentloss_state_key!r} entry (it "
                   "was saved without AgentLossMixin), so the agent's weights and history are not in it")
            if self.agentloss_require_state:
                raise RuntimeError(f"{msg}. Set agentloss_require_state = False on {type(self).__name__} to continue "
                                   "from the yaml's weights with a new agent history")
            log.warning("%s: continuing from the yaml's weights %s with a new agent history", msg, sched.loss_fn.weights)
            return
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"unsupported agentloss state version {state.get('version')!r} in the resume state")
        sched.load_state_dict(state["scheduler"])
