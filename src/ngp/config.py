"""Configs in tiny-cuda-nn's JSON shape: loading (comments allowed) and validation.

A component config is a dict with an ``otype`` and that type's keys, e.g.
``{"otype": "HashGrid", "n_levels": 16, "n_features_per_level": 2}``. Keys are the ones tiny-cuda-nn
and instant-ngp use, so configs port both ways. A key or value that is not understood raises
:class:`ConfigError` naming it, because a silently ignored typo costs a user a whole training run.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import json5


class ConfigError(ValueError):
    """A config names an unknown type, an unknown key, or a value out of range."""


#: instant-ngp's inheritance key: ``"parent": "base.json"`` (relative to the file) is loaded first and
#: this file is merged over it with :func:`merge_configs`.
PARENT_KEY = "parent"
#: How deep ``parent`` chains may go before we call it a cycle.
MAX_PARENT_DEPTH = 16


def load_config(source: str | Path | Mapping[str, Any], _depth: int = 0) -> dict[str, Any]:
    """Read a config from a JSON file (``//`` and ``/* */`` comments allowed, as instant-ngp's
    own ``configs/*.json``) or copy a dict. Returns a plain, deep-copied dict.

    A file's ``"parent"`` key (instant-ngp's inheritance) names another config file, relative to this
    one; it is loaded first (recursively) and this file is merged over it (:func:`merge_configs`).

    Example:
        >>> load_config("configs/nerf/small.json")   # {"parent": "base.json", "encoding": {...}}
    """
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = json5.loads(path.read_text())
    except ValueError as error:
        raise ConfigError(f"config file {path} is not valid JSON: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    parent = data.pop(PARENT_KEY, None)
    if parent is None:
        return data
    if not isinstance(parent, str) or not parent:
        raise ConfigError(f"config file {path}: 'parent' must be a file name, got {parent!r}")
    if _depth >= MAX_PARENT_DEPTH:
        raise ConfigError(f"config file {path}: 'parent' chain deeper than {MAX_PARENT_DEPTH} (a cycle?)")
    parent_path = path.parent / parent
    if not parent_path.is_file():
        raise FileNotFoundError(f"config file {path}: its parent {parent!r} not found at {parent_path}")
    return merge_configs(load_config(parent_path, _depth + 1), data)


def merge_configs(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """The one merge rule of every config: ``override`` deep-merged over ``base``.

    Objects merge key by key, recursively; any other value (numbers, strings, lists) replaces the
    base's. One exception: an object whose ``otype`` differs from the base's (case-insensitively)
    replaces it whole, because a new component type brings its own keys (``{"otype": "Frequency"}``
    over a ``HashGrid`` must not inherit ``n_levels``). Neither argument is modified.

    Example:
        >>> merge_configs({"encoding": {"otype": "HashGrid", "n_levels": 16}},
        ...               {"encoding": {"n_levels": 8}})
        {'encoding': {'otype': 'HashGrid', 'n_levels': 8}}
    """
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(value, Mapping) and isinstance(old, Mapping) and not _new_otype(old, value):
            merged[key] = merge_configs(old, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _new_otype(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return "otype" in new and str(new["otype"]).lower() != str(old.get("otype", "")).lower()


def with_defaults(
    config: Mapping[str, Any], defaults: Mapping[str, Any], what: str, allowed: set[str] = frozenset()
) -> dict[str, Any]:
    """Merge ``config`` over ``defaults``; any key not in ``defaults`` (or ``allowed``) is an error.

    ``what`` names the component in error messages, e.g. ``"encoding 'HashGrid'"``.
    """
    known = set(defaults) | set(allowed) | {"otype"}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ConfigError(
            f"{what}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: {', '.join(sorted(known))}"
        )
    merged = dict(defaults)
    merged.update(config)
    return merged


def require_choice(value: Any, choices: Mapping[str, Any] | set[str] | tuple, key: str, what: str) -> Any:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices`` (case-insensitive for strings)."""
    by_lower = {str(c).lower(): c for c in choices}
    if str(value).lower() not in by_lower:
        raise ConfigError(f"{what}: {key}={value!r} is not supported; expected one of {sorted(map(str, choices))}")
    return by_lower[str(value).lower()]


def require_int(value: Any, key: str, what: str, low: int | None = None, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ConfigError(f"{what}: {key} must be an integer, got {value!r}")
    value = int(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{what}: {key}={value} is out of range [{low}, {high}]")
    return value


def require_float(value: Any, key: str, what: str, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{what}: {key} must be a number, got {value!r}")
    value = float(value)
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"{what}: {key}={value} is out of range [{low}, {high}]")
    return value


def otype_of(config: Mapping[str, Any], what: str) -> str:
    if not isinstance(config, Mapping):
        raise ConfigError(f"{what} config must be a JSON object, got {type(config).__name__}")
    if "otype" not in config:
        raise ConfigError(f"{what} config has no 'otype' key: {dict(config)}")
    return str(config["otype"])
