"""What every recipe shares: networks, optimizers, linear lr decay, DDP wrapping, state.

A recipe owns the networks of one family and knows one training step. The trainer
(train.py) owns the loop, data, logging and checkpoints.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import RunConfig
from ..precision import Precision, TrainingDiverged, non_finite


@dataclass
class ExportSpec:
    """How to trace one generator role to ONNX and describe it in the card (see docs/model-card.md)."""
    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    input_names: list[str]
    dynamic_axes: dict[str, dict[int, str]]  # input name -> {axis: symbolic name}; "output" too
    card: dict[str, Any]  # endpoint-specific card fields: input/output/latent_dim/classes/tiling


class Recipe:
    ModelConfig: type
    LossConfig: type
    family: str = ""
    endpoint: str = ""
    generator_nets: tuple[str, ...] = ()  # the nets `init_from` fills, in the order of its files
    channels_last: bool = True  # NHWC under bf16 / fp16 (measured: bench section training)
    fp32_nets: tuple[str, ...] = ()  # nets that compute in fp32 at any precision (measured slower in bf16)

    def __init__(self, cfg: RunConfig, device: torch.device, distributed: bool = False,
                 precision: Precision | None = None):
        self.cfg = cfg
        self.device = device
        self.distributed = distributed
        self.precision = precision or Precision("fp32", device.type)
        if self.precision.channels_last is None:
            self.precision.channels_last = self.precision.low and self.channels_last
        self.nets: dict[str, nn.Module] = {}
        self.opts: dict[str, torch.optim.Optimizer] = {}
        self.scheds: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.build()
        for net in self.nets.values():
            net.to(device)
            if self.precision.channels_last:
                net.to(memory_format=torch.channels_last)
        # DDP-wrapped views for the passes whose gradients must be averaged across processes;
        # passes that do not update a network (D inside the G step) call `bare`. Both run under the
        # run's autocast and return float32 (training/precision.py); in fp32 they are the modules.
        self.ddp = {k: self._forward(k, self._wrap(v)) for k, v in self.nets.items()}
        self.bare = {k: self._forward(k, v) for k, v in self.nets.items()}

    @classmethod
    def from_checkpoint(cls, payload: dict[str, Any], device: torch.device | str = "cpu",
                        init_only: bool = False) -> "Recipe":
        """Rebuild a recipe, networks and all, from a loaded checkpoint (training.checkpoint.load).

        init_only: the networks as the run initialised them (same seed), without the trained weights.
        """
        from ..config import load_config
        from ..registry import get_recipe_class

        cfg = load_config(None, raw=payload["config"])
        if init_only:
            from ..train import init_seed
            torch.manual_seed(init_seed(cfg.seed))
        recipe = get_recipe_class(cfg.family)(cfg, torch.device(device))
        if not init_only:
            recipe.load_state_dict(payload)
        return recipe

    # -- to implement ---------------------------------------------------------------------
    def build(self) -> None:
        raise NotImplementedError

    def train_step(self, batch: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        raise NotImplementedError

    def sample_grid(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Images in [-1, 1] (N x C x H x W) and the grid's row length, for a progress sheet."""
        raise NotImplementedError

    def export_specs(self) -> dict[str, ExportSpec]:
        raise NotImplementedError

    # -- what export writes into the card beyond the export specs (family-specific) ----------------
    batch_norm_note: str = ""  # appended to the card's eval-mode batch norm note

    def card_fields(self) -> dict[str, Any]:
        """Family-specific card blocks: `classes` (generate), `domains` (two-domain translate)."""
        return {}

    def description_extra(self) -> str:
        """Words after the family in the card's default description (e.g. " x4")."""
        return ""

    # -- shared -----------------------------------------------------------------------------
    def _forward(self, name: str, net: nn.Module):
        return net if name in self.fp32_nets else self.precision.forward(net)

    def _wrap(self, net: nn.Module) -> nn.Module:
        if not self.distributed or not any(p.requires_grad for p in net.parameters()):
            return net
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DDP(net, device_ids=ids)

    def adam(self, name: str, nets: list[nn.Module], lr: float) -> None:
        params = itertools.chain(*(n.parameters() for n in nets))
        opt = torch.optim.Adam(params, lr=lr, betas=tuple(self.cfg.train.betas))
        self.opts[name] = opt
        self.scheds[name] = torch.optim.lr_scheduler.LambdaLR(opt, self._lr_lambda)

    def _lr_lambda(self, step: int) -> float:
        """Constant, then linear decay to zero over the last (1 - lr_decay_start) of the run."""
        total = self.cfg.train.steps
        start = int(total * self.cfg.train.lr_decay_start)
        if step < start or total <= start:
            return 1.0
        return max(0.0, 1.0 - (step - start) / float(total - start))

    def optimize(self, name: str, loss: torch.Tensor) -> None:
        """Backward and step; under fp16 through the optimizer's GradScaler (which skips inf/NaN steps)."""
        opt = self.opts[name]
        scaler = self.precision.scaler(name)
        opt.zero_grad(set_to_none=True)
        (scaler.scale(loss) if scaler else loss).backward()
        if self.cfg.train.max_grad_norm > 0:
            if scaler:
                scaler.unscale_(opt)
            params = [p for g in opt.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(params, self.cfg.train.max_grad_norm)
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def end_step(self) -> None:
        for s in self.scheds.values():
            s.step()

    @staticmethod
    def set_requires_grad(nets: list[nn.Module], flag: bool) -> None:
        for n in nets:
            for p in n.parameters():
                p.requires_grad_(flag)

    @staticmethod
    def check_finite(losses: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        values = {k: float(v.detach()) for k, v in losses.items()}
        bad = {k: v for k, v in values.items() if not math.isfinite(v)}
        if bad:
            raise TrainingDiverged(f"non-finite loss at step {step}: {bad}; stopping (last good checkpoint kept)")
        return values

    def non_finite_weights(self) -> list[str]:
        """`net.param` names of the parameters and buffers holding NaN or inf (a checkpoint must not)."""
        return non_finite((f"{k}.{n}", t) for k, net in self.nets.items()
                          for n, t in itertools.chain(net.named_parameters(), net.named_buffers()))

    def lr(self) -> float:
        first = next(iter(self.opts.values()))
        return first.param_groups[0]["lr"]

    def state_dict(self) -> dict[str, Any]:
        return {
            "nets": {k: v.state_dict() for k, v in self.nets.items()},
            "opts": {k: v.state_dict() for k, v in self.opts.items()},
            "scheds": {k: v.state_dict() for k, v in self.scheds.items()},
            "extra": self.extra_state(),
            "precision": self.precision.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any], strict_opts: bool = True) -> None:
        for k, net in self.nets.items():
            net.load_state_dict(state["nets"][k])
        if strict_opts:
            for k, opt in self.opts.items():
                opt.load_state_dict(state["opts"][k])
            for k, s in self.scheds.items():
                s.load_state_dict(state["scheds"][k])
            self.load_extra_state(state.get("extra") or {})
            self.precision.load_state_dict(state.get("precision") or {})

    def on_fresh_start(self) -> None:
        """Called once when a run starts from scratch (not on resume): the config's `init_from` weights
        (imported files, training/recipes/init_from.py) go into the generator(s)."""
        if self.cfg.init_from:
            from .init_from import load_init
            load_init(self, self.cfg.init_from)

    def generator_range(self) -> tuple[float, float]:
        """The value range the generator(s) compute in (data batches are always [-1, 1])."""
        return (-1.0, 1.0)

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {k: self.precision.layout(v.to(self.device, non_blocking=True)) for k, v in batch.items()}


def image_io(channels: int, **extra) -> dict[str, Any]:
    """Card block for an image tensor in [-1, 1] (pixel 0 -> -1.0, pixel 255 -> 1.0)."""
    return {"channels": channels, "range": [-1.0, 1.0], **extra}


IMAGE_AXES = {"image": {0: "N", 2: "H", 3: "W"}, "output": {0: "N", 2: "H_out", 3: "W_out"}}

