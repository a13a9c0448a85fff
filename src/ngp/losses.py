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


def relative_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 divided by the prediction's magnitude (+0.01), not differentiated through (tiny-cuda-nn's)."""
    return ((pred - target).abs() / (pred.detach().abs() + 0.01)).mean()


def smape(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Symmetric MAPE, ``|pred - target| / (mean of |pred|, |target| + 0.01)``, the scale not
    differentiated through (tiny-cuda-nn's)."""
    return ((pred - target).abs() / (0.5 * (target.abs() + pred.detach().abs()) + 0.01)).mean()


def relative_l2_luminance(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L2 divided by the predicted luminance squared (+0.01), not differentiated through: channels
    ``[..., 0:3]`` are RGB (plus ``[..., 3:6]`` when there are 6 or more, as tiny-cuda-nn's NRC)."""
    if pred.shape[-1] < 3:
        raise ValueError(f"RelativeL2Luminance needs RGB predictions (>= 3 channels), got {pred.shape[-1]}")
    rgb = pred.detach()[..., :3] + (pred.detach()[..., 3:6] if pred.shape[-1] >= 6 else 0.0)
    luminance = rgb @ torch.tensor([0.299, 0.587, 0.114], dtype=pred.dtype, device=pred.device)
    return ((pred - target).square() / (luminance.square()[..., None] + 0.01)).mean()


LOSSES: dict[str, Loss] = {
    "L2": l2, "L1": l1, "Huber": huber, "RelativeL2": relative_l2, "MAPE": mape, "RelativeL1": relative_l1,
    "SMAPE": smape, "RelativeL2Luminance": relative_l2_luminance,
}
#: tiny-cuda-nn losses that need a probability density as the prediction (refused, named in the error).
UNSUPPORTED_LOSSES = ("CrossEntropy", "Variance")


def build_loss(config: Mapping[str, Any] | None) -> Loss:
    """``{"otype": "L2"}`` -> a loss function ``(pred, target) -> scalar``."""
    config = config or {"otype": "L2"}
    otype = otype_of(config, "loss")
    if otype.lower() in (name.lower() for name in UNSUPPORTED_LOSSES):
        raise ConfigError(f"loss otype {otype!r} is not supported (it scores probability densities, which no ngp "
                          f"primitive predicts); use one of {sorted(LOSSES)}")
    otype = require_choice(otype, LOSSES, "otype", "loss")
    if otype == "Huber":
        config = with_defaults(config, {"delta": 0.1}, "loss 'Huber'")
        delta = require_float(config["delta"], "delta", "loss 'Huber'", 1e-12)
        return lambda pred, target: huber(pred, target, delta)
    with_defaults(config, {}, f"loss {otype!r}")
    return LOSSES[otype]


__all__ = ["ConfigError", "LOSSES", "build_loss", "huber", "l1", "l2", "mape", "relative_l1", "relative_l2",
           "relative_l2_luminance", "smape"]
