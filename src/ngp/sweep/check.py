"""Every combination's config checked before the first run: a typo in run 17 must not surface hours in.

:func:`ngp.train.settings.build_config` checks the top-level and ``training`` keys; the component
sections (``encoding``, ``network``, ``loss``, ...) are checked by the components built from them, so the
sections a sweep touches are built here on PyTorch's ``meta`` device: the same key checks, no memory
(a 2^24-entry table costs nothing).
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import torch

from ngp.config import ConfigError
from ngp.sweep.grid import Combination, check_paths
from ngp.train.settings import build_config, default_config

#: Input dimensions of the position encoding per primitive (the direction encoding is 3D).
_POSITION_DIMS = {"image": 2, "sdf": 3, "nerf": 3}
#: The value checked in place of the image's ``n_levels: "auto"`` (resolved per image at run time).
_AUTO_LEVELS_STANDIN = 8


def checked_config(primitive: str, combo: Combination, overrides: Mapping[str, Any],
                   ignored_sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """The full config ``combo`` would train with (defaults <- its settings <- ``overrides``); raises
    ConfigError naming the combination and the key when any setting is not understood.

    Example:
        >>> checked_config("image", expand([parse_set("encoding.log2_hashmap_size=14")])[0], {"steps": 5})
    """
    try:
        config = build_config(primitive, combo.config, overrides, None, ignored_sections)
        check_paths(combo.settings, default_config(primitive), primitive)
        check_components(primitive, config, {key.split(".")[0] for key in combo.settings})
    except ConfigError as error:
        raise ConfigError(f"sweep run {combo.name}: {error}") from None
    return config


def check_components(primitive: str, config: Mapping[str, Any], sections: set[str]) -> None:
    """Build the named component sections of ``config`` on the meta device (their key and value checks)."""
    from ngp import Encoding, Network
    from ngp.losses import build_loss
    from ngp.optim import parse_optimizer_config

    with torch.device("meta"):
        for name in sections & {"encoding", "dir_encoding"}:
            dims = _POSITION_DIMS[primitive] if name == "encoding" else 3
            Encoding(dims, _without_auto(config[name]))
        for name in sections & {"network", "rgb_network"}:
            Network(16, 1, config[name])
    if "loss" in sections:
        build_loss(config["loss"])
    if "optimizer" in sections:
        parse_optimizer_config(config["optimizer"])


def _without_auto(encoding: Mapping[str, Any]) -> dict[str, Any]:
    encoding = copy.deepcopy(dict(encoding))
    if str(encoding.get("n_levels", "")).lower() == "auto":
        encoding["n_levels"] = _AUTO_LEVELS_STANDIN
    return encoding
