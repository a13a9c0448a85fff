"""The image model, ``(x, y) in [0, 1]^2 -> colour``, and the image task's config.

The config has instant-ngp's shape (``ngp/configs/image/base.json``, where the defaults live and the
measurements behind them are noted): ``loss``, ``optimizer``, ``encoding``, ``network``, each a
tiny-cuda-nn component config, plus our ``training`` section; see :mod:`ngp.train.settings` for the
one merge rule.

One addition to tiny-cuda-nn's values: the grid's ``"n_levels": "auto"`` (the default here) picks the
number of levels from the image, so that the finest level has about twice as many cells as the
image has pixels along its longer side (see :func:`auto_levels`). Levels finer than that add
compute and hash collisions but no detail: on albert.exr (1024^2), 8 levels (16 to 2048 cells)
reached a higher PSNR than 16 levels (16 to 524288) for the same number of samples at less than half
the cost per sample. The resolved number is what checkpoints and metrics record.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any, Mapping

from ngp.config import ConfigError, require_float
from ngp.networks import NetworkWithInputEncoding
from ngp.train.settings import build_config

AUTO = "auto"
#: ``"n_levels": "auto"`` never exceeds tiny-cuda-nn's default level count.
MAX_AUTO_LEVELS = 16


def image_config(config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full image-task config: ``config`` (a file or dict, optional) merged over
    ``ngp/configs/image/base.json`` (see :func:`ngp.train.settings.build_config`)."""
    return build_config("image", config)


def auto_levels(width: int, height: int, base_resolution: float, per_level_scale: float) -> int:
    """Levels from ``base_resolution`` (times ``per_level_scale`` per level) until a level has at
    least ``2 * max(width, height)`` cells, capped at 16: 8 for 1024 x 1024 with 16 and 2.0."""
    finest = 2.0 * max(width, height)
    if finest <= base_resolution or per_level_scale <= 1.0:
        return 1 if finest <= base_resolution else MAX_AUTO_LEVELS
    return max(1, min(MAX_AUTO_LEVELS, math.ceil(math.log(finest / base_resolution, per_level_scale) - 1e-9) + 1))


def resolve_for_image(config: Mapping[str, Any], width: int, height: int) -> dict[str, Any]:
    """Replace ``"auto"`` values that depend on the image (the grid's ``n_levels``) by numbers."""
    config = copy.deepcopy(dict(config))
    encoding = config.get("encoding", {})
    if isinstance(encoding, dict) and str(encoding.get("n_levels", "")).lower() == AUTO:
        what = f"encoding {encoding.get('otype')!r}"
        if encoding.get("finest_resolution") is not None:
            raise ConfigError(f"{what}: n_levels='auto' needs per_level_scale, not finest_resolution")
        base = require_float(encoding.get("base_resolution", 16), "base_resolution", what, 1.0)
        scale = require_float(encoding.get("per_level_scale") or 2.0, "per_level_scale", what, 1.0)
        encoding["n_levels"] = auto_levels(width, height, base, scale)
    return config


def build_image_model(config: Mapping[str, Any], n_channels: int) -> NetworkWithInputEncoding:
    """``NetworkWithInputEncoding(2, n_channels, ...)``: ``[N, 2]`` positions -> ``[N, n_channels]``.

    ``config`` must be resolved for the image (:func:`resolve_for_image`) if it holds ``"auto"``.

    Example:
        >>> model = build_image_model(resolve_for_image(image_config(), 512, 512), 3)
        >>> model(torch.rand(8, 2)).shape
        torch.Size([8, 3])
    """
    if str(config["encoding"].get("n_levels", "")).lower() == AUTO:
        raise ConfigError("encoding: n_levels='auto' must be resolved for an image first (resolve_for_image)")
    return NetworkWithInputEncoding(2, n_channels, config["encoding"], config["network"])


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
