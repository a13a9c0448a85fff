"""One settings shape for every primitive: a config with the same sections, defaults in one file.

Each primitive's defaults live in ``ngp/configs/<primitive>/base.json`` and nowhere else. A user config
(a file, instant-ngp's ``"parent"`` honoured, or a dict) is deep-merged over them with
:func:`ngp.config.merge_configs`, the one merge rule. Sections:

``loss``, ``optimizer``, ``encoding``, ``network`` (+ NeRF's ``dir_encoding``, ``rgb_network``)
    tiny-cuda-nn component configs, validated by the components that are built from them.
``training``
    the loop's settings (:class:`LoopSettings`: ``seconds``, ``steps``, ``seed``,
    ``checkpoint_every``, ``eval_at``, ``max_skipped_steps``) and the primitive's own (batch sizes,
    sample pools, occupancy grid, ...). ``training.cuda`` holds overrides used when training on a
    CUDA device (GPU-sized batches). Command-line options override single keys.

An unknown key, at the top or in ``training``, is a :class:`~ngp.config.ConfigError` naming it.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import torch

from ngp.config import ConfigError, load_config, merge_configs

PRIMITIVES = ("image", "sdf", "nerf")
CONFIG_ROOT = Path(__file__).resolve().parent.parent / "configs"
#: The ``training`` sub-section applied on CUDA devices.
CUDA_OVERRIDES = "cuda"
#: ``training`` keys that belong to one session of a run, and may change when it is resumed.
SESSION_KEYS = ("seconds", "steps", "checkpoint_every", "eval_at", "max_skipped_steps")


def default_config(primitive: str) -> dict[str, Any]:
    """The primitive's defaults: ``ngp/configs/<primitive>/base.json``."""
    if primitive not in PRIMITIVES:
        raise ValueError(f"unknown primitive {primitive!r}; expected one of {', '.join(PRIMITIVES)}")
    return load_config(CONFIG_ROOT / primitive / "base.json")


def build_config(primitive: str, source: str | Path | Mapping[str, Any] | None = None,
                 training: Mapping[str, Any] | None = None, device: torch.device | str | None = None,
                 ignored_sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """The full config of a run: defaults <- ``source`` <- ``training`` (command-line values).

    ``device``: on CUDA, ``training.cuda`` is merged into ``training``; the result has no ``cuda`` key.
    ``ignored_sections``: top-level keys accepted (e.g. instant-ngp sections a primitive handles itself).

    Example:
        >>> build_config("image", {"encoding": {"log2_hashmap_size": 16}}, {"seconds": 30})["training"]["seconds"]
        30
    """
    defaults = default_config(primitive)
    user = load_config(source) if source is not None else {}
    unknown = sorted(set(user) - set(defaults) - set(ignored_sections))
    if unknown:
        raise ConfigError(f"{primitive} config: unknown key(s) {', '.join(map(repr, unknown))}; known keys: "
                          f"{', '.join(sorted(defaults))}")
    for key, value in user.items():
        if key in defaults and isinstance(defaults[key], Mapping) and not isinstance(value, Mapping):
            raise ConfigError(f"{primitive} config: {key!r} must be a JSON object, got {value!r}")
    config = merge_configs(defaults, user)
    config["training"] = _training_section(primitive, defaults["training"], config["training"], training or {},
                                           device)
    return config


def _training_section(primitive: str, defaults: Mapping[str, Any], given: Mapping[str, Any],
                      overrides: Mapping[str, Any], device) -> dict[str, Any]:
    known = set(defaults)
    for what, values in (("config", given), ("option", overrides)):
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{primitive} training {what}: unknown key(s) {', '.join(map(repr, unknown))}; known: "
                              f"{', '.join(sorted(known - {CUDA_OVERRIDES}))}")
    section = copy.deepcopy(dict(given))
    cuda = section.pop(CUDA_OVERRIDES, {}) or {}
    unknown = sorted(set(cuda) - known)
    if unknown:
        raise ConfigError(f"{primitive} training.cuda: unknown key(s) {', '.join(map(repr, unknown))}")
    if device is not None and torch.device(device).type == "cuda":
        section.update(cuda)
    section.update({k: v for k, v in overrides.items() if v is not None})
    LoopSettings.from_training(section)  # validates the loop's keys now, before any work
    return section


def check_resume_overrides(saved: Mapping[str, Any], overrides: Mapping[str, Any]) -> None:
    """A resumed run keeps its settings: a command-line value that differs from the run's is an error
    (``seed``, batch sizes, ...), except the session's own (budget, checkpoint interval, eval times)."""
    for key, value in overrides.items():
        if value is None or key in SESSION_KEYS:
            continue
        if key not in saved:
            raise ConfigError(f"cannot resume with {key}={value!r}: the run has no such setting")
        if saved[key] != value:
            raise ConfigError(f"cannot resume with {key.replace('_', '-')} {value!r}: the run was trained with "
                              f"{saved[key]!r}, and a resumed run keeps its settings (start a new run to change it)")


@dataclass
class LoopSettings:
    """What :func:`ngp.train.loop.train` needs, taken from a config's ``training`` section.

    Attributes:
        seconds, steps: this session's budget: training stops at whichever comes first (at least one).
            Seconds count training steps only, not evaluations or checkpoint writes.
        seed: seeds the model's initialisation and every sampler.
        checkpoint_every: seconds (wall clock) between periodic checkpoints; 0 = only at the end.
        eval_at: training times (seconds, counted over all sessions of a run) at which to evaluate.
        max_skipped_steps: this many non-finite steps in a row stop the run as diverged.
    """

    seconds: float | None = None
    steps: int | None = None
    seed: int = 0
    checkpoint_every: float = 60.0
    eval_at: tuple[float, ...] = field(default_factory=tuple)
    max_skipped_steps: int = 20

    @classmethod
    def from_training(cls, section: Mapping[str, Any]) -> "LoopSettings":
        names = {f.name for f in fields(cls)}
        settings = cls(**{k: v for k, v in section.items() if k in names})
        settings.check()
        return settings

    def check(self) -> None:
        if self.seconds is None and self.steps is None:
            raise ConfigError("give a training budget: seconds and/or steps")
        if self.seconds is not None and not (_is_number(self.seconds) and math.isfinite(self.seconds)
                                             and self.seconds > 0):
            raise ConfigError(f"seconds must be a positive number, got {self.seconds!r}")
        if self.steps is not None and not (_is_int(self.steps) and self.steps >= 1):
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")
        if not _is_int(self.seed):
            raise ConfigError(f"seed must be an integer, got {self.seed!r}")
        if not (_is_number(self.checkpoint_every) and self.checkpoint_every >= 0):
            raise ConfigError(f"checkpoint-every must be a number of seconds >= 0, got {self.checkpoint_every!r}")
        if not all(_is_number(t) and t > 0 for t in self.eval_at):
            raise ConfigError(f"eval-at must be positive training times in seconds, got {list(self.eval_at)!r}")
        if not (_is_int(self.max_skipped_steps) and self.max_skipped_steps >= 1):
            raise ConfigError(f"max_skipped_steps must be a positive integer, got {self.max_skipped_steps!r}")
        self.eval_at = tuple(sorted(float(t) for t in self.eval_at))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
