"""Checkpoints: a folder with ``model.safetensors`` (tensors) and ``config.json`` (everything else).

Never pickle: loading a checkpoint reads numbers and JSON, and cannot execute code from the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ngp.io.files import atomic_path, prepare_output_dir

TENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT_VERSION = 1


def save_checkpoint(folder: str | Path, tensors: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and the JSON-serialisable ``config`` into ``folder`` (each file atomically).

    ``config`` should say what to rebuild (e.g. ``{"primitive": "image", "model": {...}}``).
    """
    folder = prepare_output_dir(folder)
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    with atomic_path(folder / TENSORS_FILE) as tmp:
        save_file(tensors, str(tmp))
    with atomic_path(folder / CONFIG_FILE) as tmp:
        tmp.write_text(json.dumps({"format_version": FORMAT_VERSION, **config}, indent=2))
    return folder


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint folder written by :func:`save_checkpoint` -> ``(tensors, config)``."""
    folder = Path(folder)
    if folder.is_file() and folder.name in (TENSORS_FILE, CONFIG_FILE):
        folder = folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {folder}")
    for name in (TENSORS_FILE, CONFIG_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"checkpoint {folder} has no {name}")
    try:
        config = json.loads((folder / CONFIG_FILE).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"checkpoint config {folder / CONFIG_FILE} is not valid JSON: {error}") from None
    try:
        tensors = load_file(str(folder / TENSORS_FILE))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"checkpoint tensors {folder / TENSORS_FILE} cannot be read: {error}") from None
    return tensors, config


def flatten_optimizer_state(state: Mapping[str, Any], prefix: str = "optimizer.") -> tuple[dict[str, torch.Tensor], dict]:
    """Split an :class:`ngp.optim.Optimizer` state dict into tensors (for safetensors) and JSON."""
    tensors, meta = {}, {"n_steps": state["n_steps"], "adam_state": {}}
    for index, entry in state["adam"]["state"].items():
        meta["adam_state"][str(index)] = {k: v for k, v in entry.items() if not isinstance(v, torch.Tensor)}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}{key}.{index}"] = value
    if "ema" in state:
        for i, avg in enumerate(state["ema"]["averages"]):
            tensors[f"{prefix}ema.{i}"] = avg
        meta["ema_updates"] = state["ema"]["n_updates"]
    return tensors, meta


def restore_optimizer(optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], prefix="optimizer.") -> None:
    """Inverse of :func:`flatten_optimizer_state`, into an already-built optimizer."""
    state = optimizer.state_dict()
    adam_state = {}
    for index, scalars in meta["adam_state"].items():
        suffix = f".{index}"
        entry = {k[len(prefix):-len(suffix)]: v for k, v in tensors.items() if k.startswith(prefix) and k.endswith(suffix)
                 and not k.startswith(f"{prefix}ema.")}
        adam_state[int(index)] = {**scalars, **entry}
    state["adam"]["state"] = adam_state
    state["n_steps"] = meta["n_steps"]
    if "ema_updates" in meta:
        n = len([k for k in tensors if k.startswith(f"{prefix}ema.")])
        state["ema"] = {"averages": [tensors[f"{prefix}ema.{i}"] for i in range(n)], "n_updates": meta["ema_updates"]}
    optimizer.load_state_dict(state)
