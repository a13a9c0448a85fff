"""The run folder: what every training command writes, the same for every primitive.

::

    RUN/checkpoint/      model.safetensors + checkpoint.json, written as a unit (see ngp.io.checkpoints);
                         rewritten periodically during training, at the end, and on Ctrl-C
    RUN/metrics.json     what was measured (written last: its presence means the outputs are complete)
    RUN/training.png     loss / PSNR curves
    RUN/...              the primitive's pictures, meshes, videos

A folder that already holds a run is never overwritten by accident: training into it needs
``resume=True`` (continue from its checkpoint) or ``force=True`` (delete it and start again).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping

import torch

from ngp.io.checkpoints import META_FILE, OLD_SUFFIX, CheckpointError, find_checkpoint, load_checkpoint, save_checkpoint
from ngp.io.files import prepare_output_dir, write_json

CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.json"
#: Names that mark a folder as a run folder (what ``force`` may delete).
RUN_MARKERS = (CHECKPOINT_DIR, CHECKPOINT_DIR + OLD_SUFFIX, METRICS_FILE)


class RunFolder:
    """One run's folder. Build it with :meth:`create` (training) or :meth:`open` (reading a run)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    # -- opening ------------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | Path, resume: bool = False, force: bool = False) -> "RunFolder":
        """Check ``path`` for a new or resumed training run; changes nothing on disk (see :meth:`start`).

        * a new run needs ``path`` absent or empty, or ``force`` (an earlier run's folder is replaced);
        * ``resume`` needs a checkpoint in it.
        """
        if resume and force:
            raise ValueError("--resume and --force contradict each other: continue the run, or replace it")
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise NotADirectoryError(f"run folder {run.path} exists and is not a folder")
        if resume:
            if not run.has_checkpoint():
                raise FileNotFoundError(f"nothing to resume: {run.path} holds no checkpoint")
            return run
        if run.path.is_dir() and any(run.path.iterdir()):
            if not force:
                what = "a run" if run.is_run() else "files"
                raise FileExistsError(f"{run.path} already holds {what}; pass --resume to continue it or --force "
                                      "to replace it, or choose another --out")
            if not run.is_run():
                raise FileExistsError(f"{run.path} is not empty and is not an ngp run folder: --force only replaces "
                                      "run folders; choose another --out")
            run._replace = True
        return run

    _replace = False

    def start(self) -> "RunFolder":
        """Make the folder ready for training (replacing an earlier run if :meth:`create` was forced);
        called once every input has been checked and loaded."""
        if self._replace:
            shutil.rmtree(self.path)
            self._replace = False
        prepare_output_dir(self.path)
        return self

    @classmethod
    def open(cls, path: str | Path) -> "RunFolder":
        """An existing run (for eval/render/mesh/view): ``path`` or, given a checkpoint folder, its parent."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"run folder not found: {path}")
        if path.name in (CHECKPOINT_DIR, CHECKPOINT_DIR + OLD_SUFFIX) and not (path / CHECKPOINT_DIR).exists():
            path = path.parent
        run = cls(path)
        if not run.has_checkpoint():
            raise FileNotFoundError(f"{path} holds no checkpoint: is it a run folder written by ngp?")
        return run

    def primitive(self) -> str:
        """Which primitive trained this run (``image``, ``sdf`` or ``nerf``), from its checkpoint's metadata."""
        meta_file = find_checkpoint(self.path) / META_FILE
        try:
            primitive = json.loads(meta_file.read_text()).get("primitive")
        except (OSError, ValueError) as error:
            raise CheckpointError(f"{meta_file} is unreadable: {error}") from None
        if primitive not in ("image", "sdf", "nerf"):
            raise CheckpointError(f"{meta_file} names no known primitive (got {primitive!r})")
        return primitive

    def is_run(self) -> bool:
        return any((self.path / name).exists() for name in RUN_MARKERS)

    def has_checkpoint(self) -> bool:
        return any((self.path / name / "checkpoint.json").is_file() for name in (CHECKPOINT_DIR,
                                                                                 CHECKPOINT_DIR + OLD_SUFFIX))

    # -- files --------------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def file(self, name: str) -> Path:
        return self.path / name

    def save_checkpoint(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
        return save_checkpoint(self.checkpoint_dir, tensors, meta)

    def load_checkpoint(self, primitive: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return load_checkpoint(self.path, primitive)

    def write_json(self, name: str, data: Mapping[str, Any]) -> Path:
        return write_json(self.file(name), data)

    def read_json(self, name: str) -> dict[str, Any]:
        return json.loads(self.file(name).read_text())

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

