"""The image model, ``(x, y) in [0, 1]^2 -> colour``, and the image task's config.

The config has instant-ngp's shape (``configs/image/base.json``): ``loss``, ``optimizer``,
``encoding``, ``network``, each a tiny-cuda-nn component config. A user config is merged over
:data:`DEFAULT_CONFIG`: a component given with the same (or no) ``otype`` is merged key by key, one
with another ``otype`` replaces the default. An unknown top-level key is an error naming it; unknown
keys inside components are caught by the components themselves.

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

from ngp.config import ConfigError, load_config, require_float
from ngp.networks import NetworkWithInputEncoding

#: Chosen by measuring PSNR on albert.exr (1024^2) against samples seen and CPU time, on 2 CPU cores
#: (see ``benchmarks/bench_image.py``); differences from instant-ngp's GPU config (configs/image/base.json):
#: ``"n_levels": "auto"`` (8 levels for 1024^2 instead of 16: +1 dB for the same samples at less than
#: half the cost per sample), ``log2_hashmap_size`` 19 instead of 24 (the optimizer's per-step cost
#: grows with the table), and the ``Ema`` (decay 0.95) that instant-ngp's config has commented out
#: (+0.6 to +0.8 dB after 16M to 32M samples: the last steps' batch noise averages out), and a learning
#: rate of 5e-3 instead of 1e-2 (+0.3 to +0.6 dB from 500 steps of 2^15 samples on, on albert and
#: astronaut, with fewer loss spikes; 2e-2 was worse).
DEFAULT_CONFIG: dict[str, Any] = {
    "loss": {"otype": "L2"},
    "optimizer": {
        "otype": "Ema",
        "decay": 0.95,
        "nested": {
            "otype": "ExponentialDecay",
            "decay_start": 20000,
            "decay_interval": 10000,
            "decay_base": 0.33,
            "nested": {
                "otype": "Adam",
                "learning_rate": 5e-3,
                "beta1": 0.9,
                "beta2": 0.99,
                "epsilon": 1e-15,
                "l2_reg": 1e-6,
            },
        },
    },
    "encoding": {
        "otype": "HashGrid",
        "n_levels": "auto",
        "n_features_per_level": 2,
        "log2_hashmap_size": 19,
        "base_resolution": 16,
    },
    "network": {
        "otype": "FullyFusedMLP",
        "activation": "ReLU",
        "output_activation": "None",
        "n_neurons": 64,
        "n_hidden_layers": 2,
    },
}
CONFIG_KEYS = tuple(DEFAULT_CONFIG)
AUTO = "auto"
#: ``"n_levels": "auto"`` never exceeds tiny-cuda-nn's default level count.
MAX_AUTO_LEVELS = 16


def image_config(config: str | Path | Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The full image-task config: ``config`` (a file or dict, optional) merged over the defaults."""
    user = load_config(config) if config is not None else {}
    unknown = sorted(set(user) - set(CONFIG_KEYS))
    if unknown:
        raise ConfigError(
            f"image config: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(CONFIG_KEYS)}"
        )
    merged = copy.deepcopy(DEFAULT_CONFIG)
    for key, value in user.items():
        if not isinstance(value, Mapping):
            raise ConfigError(f"image config: {key!r} must be a JSON object, got {type(value).__name__}")
        merged[key] = _merge(merged[key], value)
    return merged


def _merge(default: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    if "otype" in given and str(given["otype"]).lower() != str(default.get("otype", "")).lower():
        return copy.deepcopy(dict(given))
    out = copy.deepcopy(dict(default))
    for key, value in given.items():
        both_objects = isinstance(value, Mapping) and isinstance(out.get(key), Mapping)
        out[key] = _merge(out[key], value) if both_objects else value
    return out


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
