"""Losses by tiny-cuda-nn name. Each maps (prediction, target) of equal shape to a scalar mean."""

from __future__ import annotations

from typing import Any, Callable, Mapping

import torch

from ngp.config import ConfigError, otype_of, require_choice, require_float, with_defaults

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).square().mean()


def l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def huber(pred: torch.Tensor, target: torch.Tensor, delta: float = 0.1) -> torch.Tensor:
    """Quadratic below ``delta``, linear above; scaled by ``1/delta`` so it equals L1 for large errors."""
    return torch.nn.functional.huber_loss(pred, target, delta=delta) / delta


def relative_l2(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L2 divided by the squared prediction (+0.01), not differentiated through: HDR-friendly."""
    return ((pred - target).square() / (pred.detach().square() + 0.01)).mean()


def mape(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute percentage error, ``|pred - target| / (|target| + 0.01)``: the SDF loss."""
    return ((pred - target).abs() / (target.abs() + 0.01)).mean()


LOSSES: dict[str, Loss] = {"L2": l2, "L1": l1, "Huber": huber, "RelativeL2": relative_l2, "MAPE": mape}


def build_loss(config: Mapping[str, Any] | None) -> Loss:
    """``{"otype": "L2"}`` -> a loss function ``(pred, target) -> scalar``."""
    config = config or {"otype": "L2"}
    otype = require_choice(otype_of(config, "loss"), LOSSES, "otype", "loss")
    if otype == "Huber":
        config = with_defaults(config, {"delta": 0.1}, "loss 'Huber'")
        delta = require_float(config["delta"], "delta", "loss 'Huber'", 1e-12)
        return lambda pred, target: huber(pred, target, delta)
    with_defaults(config, {}, f"loss {otype!r}")
    return LOSSES[otype]


__all__ = ["ConfigError", "LOSSES", "build_loss", "huber", "l1", "l2", "mape", "relative_l2"]
