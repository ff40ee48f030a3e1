"""A BasicSR model whose loss weights an agent sets: ``model_type: AgentSRModel``.

It is BasicSR's ``SRModel`` (and, with ``gan_opt``, ``SRGANModel``'s training step) with the losses of the
yaml's ``train:`` block built as one ``agentloss.AgentWeightedLoss`` by
``agentloss.integrations.basicsr.loss_from_basicsr``, a ``StageScheduler`` stepped once per generator
step in ``optimize_parameters``, and ``AgentLossMixin`` keeping the agent's weights and history in
BasicSR's training states, so ``--auto_resume`` continues with the agent's weights, not the yaml's.

With BasicSR installed (``pip install basicsr``; not an agentloss dependency), copy this file into your
project and train exactly as with BasicSR::

    python examples/basicsr_model.py -opt options/train_agent_srgan.yml [--auto_resume]

(this registers ``AgentSRModel`` and runs ``basicsr.train.train_pipeline``; in a package of your own,
import this module before ``train_pipeline`` as Real-ESRGAN does). The yaml is BasicSR's, with
``model_type: AgentSRModel`` and one more top-level block::

    model_type: AgentSRModel
    network_g: {type: RRDBNet, num_in_ch: 3, num_out_ch: 3, num_feat: 64, num_block: 23, num_grow_ch: 32}
    network_d: {type: VGGStyleDiscriminator, num_in_ch: 3, num_feat: 64}   # only with gan_opt
    train:
      optim_g: {type: Adam, lr: !!float 1e-4, weight_decay: 0, betas: [0.9, 0.99]}
      optim_d: {type: Adam, lr: !!float 1e-4, weight_decay: 0, betas: [0.9, 0.99]}  # the gan term's Adam
      scheduler: {type: MultiStepLR, milestones: [50000, 100000], gamma: 0.5}
      total_iter: 400000
      pixel_opt: {type: L1Loss, loss_weight: !!float 1e-2, reduction: mean}
      perceptual_opt: {type: PerceptualLoss, layer_weights: {conv5_4: 1}, vgg_type: vgg19,
                       perceptual_weight: 1.0, style_weight: 0, criterion: l1}
      gan_opt: {type: GANLoss, gan_type: vanilla, real_label_val: 1.0, fake_label_val: 0.0,
                loss_weight: !!float 5e-3}
    agentloss:
      agent: {type: random, seed: 0}        # agentloss.create_agent's config (llm, guided, fixed, random)
      objectives: [piqe]                    # pyiqa metrics scored on the probe
      probe: datasets/probe/lq              # a few LQ images (sizes your network accepts)
      probe_gt: ~                           # their ground truths, for full-reference objectives (psnr...)
      stage_length: 5000                    # generator steps per stage
      constraints: {max_step: 4.0}          # agentloss.WeightConstraints
      run_dir: ~                            # default: experiments/<name>/agentloss (stages.jsonl, run.json)
      perceptual_options:                   # optional: where the perceptual term's VGG19 weights come from
        weights_path: experiments/pretrained_models/vgg19-dcbb9e9d.pth   # (default: torchvision's download)

What changes against BasicSR's models: the weighted sum is ``AgentWeightedLoss``'s; the discriminator
(``net_d``, saved and resumed by BasicSR as before) is updated by the ``gan`` term after the
generator's step, like ``SRGANModel`` does, with the Adam of ``optim_d`` (it is ``self.optimizer_d``,
in ``self.optimizers``, so BasicSR's LR schedulers and training state cover it); the log has
``l_g_<term>`` (weighted), ``l_d_gan`` and ``w_<term>`` (the agent's weights). Without BasicSR this
module still imports (``AgentSRModelLogic`` is the class body, ``AgentSRModel`` is ``None``);
``tests/test_basicsr.py`` runs it over a stand-in of BasicSR's ``SRModel``.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

import agentloss as al
from agentloss.datasets.io import list_images, read_image
from agentloss.integrations.basicsr import AgentLossMixin, discriminator_optimizers, loss_from_basicsr

log = logging.getLogger("basicsr")

_AGENTLOSS_KEYS = {"agent", "objectives", "probe", "probe_gt", "stage_length", "total_stages", "constraints", "run_dir",
                   "perceptual_options"}


class AgentSRModelLogic(AgentLossMixin):
    """What makes a BasicSR ``SRModel`` agent-weighted; combined with ``SRModel`` as ``AgentSRModel`` below.

    It uses only BasicSR's ``BaseModel``/``SRModel`` API (``self.opt``, ``self.device``, ``self.net_g``,
    ``self.optimizers``, ``model_to_device``, ``load_network``, ``save_network``, ``model_ema``,
    ``reduce_loss_dict``, ``setup_schedulers``, ``SRModel.setup_optimizers``).
    """

    net_d: nn.Module | None
    loss_fn: al.AgentWeightedLoss

    # -- hooks you may override ---------------------------------------------------------------------
    def build_net(self, net_opt: Mapping[str, Any]) -> nn.Module:
        """A network from its options (``network_d``, ``network_g``), as BasicSR builds them."""
        from basicsr.archs import build_network

        return build_network(dict(net_opt))

    def agentloss_objectives(self) -> list[al.Objective]:
        """The objectives of ``agentloss.objectives`` (pyiqa metric names)."""
        names = self._agentloss_opt().get("objectives") or []
        if not names:
            raise ValueError("agentloss.objectives is empty: name at least one pyiqa metric, e.g. [piqe]")
        return [al.PyiqaObjective(str(n), device=self.device) for n in names]

    def agentloss_probe(self) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """The probe images of ``agentloss.probe`` (and ``probe_gt``), as ``3xHxW`` tensors in [0, 1]."""
        cfg = self._agentloss_opt()
        if not cfg.get("probe"):
            raise ValueError("agentloss.probe is missing: a folder of a few LQ images the stage ends restore and score")
        lq = [read_image(p) for p in list_images(cfg["probe"])]
        gt = [read_image(p) for p in list_images(cfg["probe_gt"])] if cfg.get("probe_gt") else None
        return lq, gt

    def agentloss_restore(self, net: nn.Module, lq: torch.Tensor) -> torch.Tensor:
        """How a probe image is restored (override to pad to a window size, tile, ...)."""
        return net(lq)

    # -- BasicSR's methods ---------------------------------------------------------------------------
    def _agentloss_opt(self) -> Mapping[str, Any]:
        cfg = self.opt.get("agentloss")  # type: ignore[attr-defined]
        if cfg is None:
            raise ValueError(f"model_type AgentSRModel needs an agentloss: block in the yaml with {sorted(_AGENTLOSS_KEYS)}"
                             " (see examples/basicsr_model.py)")
        if not isinstance(cfg, Mapping):
            raise TypeError(f"the agentloss: block must be a mapping of options, got {type(cfg).__name__}")
        unknown = sorted(set(cfg) - _AGENTLOSS_KEYS)
        if unknown:
            raise ValueError(f"agentloss: unknown option(s) {unknown}; allowed: {sorted(_AGENTLOSS_KEYS)}")
        return cfg

    def init_training_settings(self) -> None:
        """``SRModel.init_training_settings`` with ``SRGANModel``'s ``net_d`` and the losses as one ``AgentWeightedLoss``."""
        opt: dict[str, Any] = self.opt  # type: ignore[attr-defined]
        train_opt, cfg = opt["train"], self._agentloss_opt()
        if not isinstance(cfg.get("stage_length"), int) or cfg["stage_length"] < 1:
            raise ValueError(f"agentloss.stage_length must be a positive integer, got {cfg.get('stage_length')!r}")
        # The probe and the objectives first: a wrong path or metric fails before any network is built.
        lq, gt = self.agentloss_probe()
        objectives = self.agentloss_objectives()
        self.net_g.train()  # type: ignore[attr-defined]
        self.ema_decay = train_opt.get("ema_decay", 0)
        if self.ema_decay > 0:  # as SRModel: net_g_ema is what BasicSR validates, so it is what is probed
            self.net_g_ema = self.build_net(opt["network_g"]).to(self.device)  # type: ignore[attr-defined]
            load_path = opt["path"].get("pretrain_network_g")
            if load_path is not None:
                self.load_network(self.net_g_ema, load_path, opt["path"].get("strict_load_g", True),  # type: ignore[attr-defined]
                                  "params_ema")
            else:
                self.model_ema(0)  # type: ignore[attr-defined]
            self.net_g_ema.eval()
        self.net_d = None
        if train_opt.get("gan_opt"):  # as SRGANModel: BasicSR saves it as net_d_{iter}.pth and resumes it
            self.net_d = self.model_to_device(self.build_net(opt["network_d"]))  # type: ignore[attr-defined]
            load_path = opt["path"].get("pretrain_network_d")
            if load_path is not None:
                self.load_network(self.net_d, load_path, opt["path"].get("strict_load_d", True),  # type: ignore[attr-defined]
                                  opt["path"].get("param_key_d", "params"))
            self.net_d.train()
        self.net_d_iters = train_opt.get("net_d_iters", 1)
        self.net_d_init_iters = train_opt.get("net_d_init_iters", 0)

        constraints = al.WeightConstraints(**dict(cfg.get("constraints") or {}))
        self.loss_fn = loss_from_basicsr(opt, discriminator=self.net_d, constraints=constraints,
                                         perceptual_options=cfg.get("perceptual_options")).to(self.device)  # type: ignore[attr-defined]
        self.setup_optimizers()
        self.setup_schedulers()  # type: ignore[attr-defined]

        stage_length = cfg["stage_length"]
        total_stages = cfg.get("total_stages") or (int(train_opt.get("total_iter", 0)) // stage_length or None)
        run_dir = cfg.get("run_dir") or os.path.join(opt["path"]["experiments_root"], "agentloss")
        self.stage_scheduler = al.StageScheduler(
            self.loss_fn, al.create_agent(cfg.get("agent")), objectives, model=self.net_g,  # type: ignore[attr-defined]
            probe=lq, probe_references=gt, probe_model=getattr(self, "net_g_ema", None), stage_length=stage_length,
            total_stages=total_stages, run_dir=run_dir, restore_fn=self.agentloss_restore)

    def setup_optimizers(self) -> None:
        """``SRModel``'s ``optimizer_g``, then the ``gan`` term's Adam (``optim_d``) as ``optimizer_d``."""
        super().setup_optimizers()  # type: ignore[misc]
        self.optimizer_d = None
        for optimizer in discriminator_optimizers(self.loss_fn):  # the loss is on its device already
            self.optimizer_d = optimizer
            self.optimizers.append(optimizer)  # type: ignore[attr-defined]

    def optimize_parameters(self, current_iter: int) -> None:
        """One iteration in ``SRGANModel``'s order: the generator's step, then the discriminator's, then the stage count."""
        self.optimizer_g.zero_grad()  # type: ignore[attr-defined]
        self.output = self.net_g(self.lq)  # type: ignore[attr-defined]
        loss_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
        # SRGANModel skips the generator's step during net_d_init_iters and between net_d_iters.
        step_g = self.net_d is None or (current_iter % self.net_d_iters == 0 and current_iter > self.net_d_init_iters)
        if step_g:
            l_total = self.loss_fn(self.output, self.gt)  # type: ignore[attr-defined]
            l_total.backward()
            self.optimizer_g.step()  # type: ignore[attr-defined]
            weights = self.loss_fn.weights
            for name, value in self.loss_fn.last_values.items():
                if not math.isnan(value):  # a term with weight 0 is not computed
                    loss_dict[f"l_g_{name}"] = torch.tensor(weights[name] * value, device=self.device)  # type: ignore[attr-defined]
                loss_dict[f"w_{name}"] = torch.tensor(weights[name], device=self.device)  # type: ignore[attr-defined]
        if self.net_d is not None:  # after the generator's step, on the same output, detached: as SRGANModel
            for name, value in self.loss_fn.update_discriminators(self.output, self.gt).items():  # type: ignore[attr-defined]
                loss_dict[f"l_d_{name}"] = torch.tensor(value, device=self.device)  # type: ignore[attr-defined]
        self.log_dict = self.reduce_loss_dict(loss_dict)  # type: ignore[attr-defined]
        if self.ema_decay > 0:
            self.model_ema(decay=self.ema_decay)  # type: ignore[attr-defined]
        if step_g:  # one count per generator step; a stage end scores the probe after this iteration's updates
            self.stage_scheduler.step()

    def save(self, epoch: int, current_iter: int) -> None:
        """``SRGANModel.save``: net_g (and its EMA), net_d, then the training state (with the agent's, by the mixin)."""
        if hasattr(self, "net_g_ema"):
            self.save_network([self.net_g, self.net_g_ema], "net_g", current_iter,  # type: ignore[attr-defined]
                              param_key=["params", "params_ema"])
        else:
            self.save_network(self.net_g, "net_g", current_iter)  # type: ignore[attr-defined]
        if self.net_d is not None:
            self.save_network(self.net_d, "net_d", current_iter)  # type: ignore[attr-defined]
        self.save_training_state(epoch, current_iter)


try:  # BasicSR is optional: without it this module still imports (AgentSRModel is None)
    from basicsr.models.sr_model import SRModel
    from basicsr.utils.registry import MODEL_REGISTRY
except ImportError as e:
    SRModel, MODEL_REGISTRY, BASICSR_IMPORT_ERROR = None, None, e
else:
    BASICSR_IMPORT_ERROR = None

AgentSRModel: type | None = None
if SRModel is not None:
    @MODEL_REGISTRY.register()
    class AgentSRModel(AgentSRModelLogic, SRModel):  # type: ignore[no-redef]
        """BasicSR's SRModel with agent-set loss weights (``model_type: AgentSRModel``)."""


def main() -> None:
    if AgentSRModel is None:
        sys.exit(f"examples/basicsr_model.py trains with BasicSR, which could not be imported ({BASICSR_IMPORT_ERROR}). "
                 "Install it (pip install basicsr) in an environment where it imports; agentloss does not depend on it.")
    from basicsr.train import train_pipeline

    train_pipeline(os.path.abspath(os.path.join(__file__, os.pardir, os.pardir)))


if __name__ == "__main__":
    main()
