"""Checkpoints: a folder with ``model.safetensors`` (tensors) and ``checkpoint.json`` (everything else).

Never pickle: loading a checkpoint reads numbers and JSON, and cannot execute code from the file.

The folder is written as one unit (:func:`ngp.io.files.atomic_folder`): both files go into a fresh
sibling folder, which then replaces the old checkpoint. A crash can therefore never leave new tensors
beside an old JSON; a crash between the swap's two renames leaves ``<name>.old``, which
:func:`load_checkpoint` falls back to.

``checkpoint.json`` carries ``format_version`` (checked on load: an older or newer file is refused
with both versions named) and ``primitive`` (``image``, ``sdf`` or ``nerf``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ngp.io.files import OLD_SUFFIX, atomic_folder

TENSORS_FILE = "model.safetensors"
META_FILE = "checkpoint.json"
#: 2: one folder written as a unit, ``checkpoint.json`` (1 had ``config.json``, written file by file).
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, of another version or primitive."""


def save_checkpoint(folder: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    """Write ``tensors`` and the JSON-serialisable ``meta`` as the checkpoint folder ``folder``, as one unit.

    ``meta`` should say what to rebuild (e.g. ``{"primitive": "image", "config": {...}}``);
    ``format_version`` is added.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tensors = {name: t.detach().contiguous().cpu() for name, t in tensors.items()}
    text = json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=1)  # fails before any file is touched
    with atomic_folder(folder) as staging:
        save_file(tensors, str(staging / TENSORS_FILE))
        (staging / META_FILE).write_text(text)
    return folder


def find_checkpoint(path: str | Path) -> Path:
    """The checkpoint folder of ``path``: a run folder (holding ``checkpoint/``), a checkpoint folder,
    or a file inside one. Falls back to ``checkpoint.old`` left by a crash during a save."""
    path = Path(path)
    if path.is_file() and path.name in (TENSORS_FILE, META_FILE):
        path = path.parent
    if not path.exists():
        raise FileNotFoundError(f"run or checkpoint folder not found: {path}")
    for candidate in (path / "checkpoint", path, path / ("checkpoint" + OLD_SUFFIX)):
        if (candidate / META_FILE).is_file() or (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{path} holds no checkpoint (no checkpoint/{META_FILE})")


def load_checkpoint(path: str | Path, primitive: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a checkpoint written by :func:`save_checkpoint` -> ``(tensors, meta)``.

    ``path`` may be a run folder, a checkpoint folder or a file in one. With ``primitive``, a
    checkpoint of another primitive is refused. Every problem is a :class:`CheckpointError` (or
    FileNotFoundError) that names the folder.
    """
    folder = find_checkpoint(path)
    if not (folder / META_FILE).is_file():  # version 1 wrote config.json
        raise CheckpointError(f"checkpoint {folder} has format version 1 (written by an older ngp); this ngp "
                              f"reads version {FORMAT_VERSION}: train it again")
    try:
        meta = json.loads((folder / META_FILE).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"checkpoint {folder / META_FILE} is not valid JSON: {error}") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {folder / META_FILE} must hold a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        age = "newer" if isinstance(version, int) and version > FORMAT_VERSION else "older"
        raise CheckpointError(f"checkpoint {folder} has format version {version!r} ({age} than this ngp's); this "
                              f"ngp reads version {FORMAT_VERSION}")
    if primitive is not None and meta.get("primitive") != primitive:
        raise CheckpointError(f"{folder} is a checkpoint of {meta.get('primitive')!r}, not of {primitive!r}")
    if not (folder / TENSORS_FILE).is_file():
        raise CheckpointError(f"checkpoint {folder} has no {TENSORS_FILE}")
    try:
        tensors = load_file(str(folder / TENSORS_FILE))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"checkpoint tensors {folder / TENSORS_FILE} cannot be read: {error}") from None
    return tensors, meta


def subset(tensors: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors whose names start with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_module_state(module: torch.nn.Module, tensors: Mapping[str, torch.Tensor], prefix: str, where) -> None:
    """``module.load_state_dict`` from the ``prefix``-ed tensors, with a clear error on a mismatch."""
    try:
        module.load_state_dict(subset(tensors, prefix))
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"checkpoint {where} does not match its config: {error}") from None


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
