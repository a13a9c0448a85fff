"""From a training command to a trained run folder: new or resumed, the same for every primitive.

Every check comes first (run folder, device, config, data), then the folder is prepared, then the
loop runs. A primitive provides one function, ``build_task(config, device, precision) -> Task``, that
loads its data and builds its model from a full config (new run: defaults <- ``--config`` <- options;
resumed run: the checkpoint's config).

Example::

    metrics = train_run("image", build_image_task, TrainRequest(out="runs/a", overrides={"seconds": 60}))
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ngp.config import ConfigError
from ngp.io.runs import RunFolder
from ngp.train.loop import Task, load_task_state, train
from ngp.train.precision import resolve_device, resolve_precision
from ngp.train.settings import SESSION_KEYS, LoopSettings, build_config, check_resume_overrides

BuildTask = Callable[[dict, torch.device, str], Task]


@dataclass
class TrainRequest:
    """What every training command is asked (its shared options).

    ``overrides``: ``training`` keys given on the command line (``seconds``, ``steps``, ``seed``,
    ``checkpoint_every``, ``eval_at`` and the primitive's own, e.g. ``batch_size``); None = not given.
    """

    out: str | Path
    config: str | Path | Mapping[str, Any] | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    resume: bool = False
    force: bool = False
    device: str = "auto"
    precision: str = "auto"
    progress: bool = True
    viewer: "ViewerAddress | None" = None


@dataclass(frozen=True)
class ViewerAddress:
    """Where ``--viewer`` serves the live viewer (see :mod:`ngp.viewer`): this machine only by default."""

    host: str = "127.0.0.1"
    port: int = 8080


def input_path(source: str | Path) -> str:
    """A command's input as the run records it (``training.data``): an existing file or folder by its
    absolute path, so that a resume started elsewhere finds it; anything else (``builtin:astronaut``,
    a missing file the task will report) unchanged."""
    path = Path(source)
    return str(path.resolve()) if path.exists() else str(source)


def silent(message: str) -> None:
    """A ``log`` that says nothing."""


def train_run(primitive: str, build_task: BuildTask, request: TrainRequest, log=None,
              ignored_sections: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check everything, build the task, then train into ``request.out``; returns the metrics.

    ``log`` takes the progress and summary lines: by default ``print``, or nothing when
    ``request.progress`` is off (the command line passes its own, which keeps them with --quiet).
    """
    log = log or (print if request.progress else silent)
    run = RunFolder.create(request.out, resume=request.resume, force=request.force)
    device = resolve_device(request.device)
    resolve_precision(request.precision, device)
    overrides = {k: v for k, v in request.overrides.items() if v is not None}
    if request.resume:
        tensors, meta = run.load_checkpoint(primitive)
        config = resumed_config(meta, request, overrides)
    else:
        config = build_config(primitive, request.config, overrides, device, ignored_sections)
        given = [k for k in ("seconds", "steps") if k in overrides]
        if len(given) == 1:  # a budget given on the command line replaces the config's whole
            config["training"]["steps" if given == ["seconds"] else "seconds"] = None
    settings = LoopSettings.from_training(config["training"])
    torch.manual_seed(settings.seed)
    task = build_task(config, device, request.precision)
    state = load_task_state(task, tensors, meta, run.checkpoint_dir) if request.resume else None
    if state is not None:
        log(f"resuming {run.path} at step {state.step} ({state.seconds:.0f} s trained)")
    viewer = _start_viewer(task, request.viewer, log) if request.viewer else None
    try:
        run.start()
        return train(task, run, settings, state, progress=request.progress, log=log, observer=viewer)
    finally:
        if viewer is not None:
            viewer.close()


def _start_viewer(task: Task, address: ViewerAddress, log):
    from ngp.viewer import Viewer, view_from_task

    return Viewer(view_from_task(task), address.host, address.port, training=True, log=log)


def resumed_config(meta: Mapping[str, Any], request: TrainRequest, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint's config with this session's budget; anything else given must match the run."""
    if request.config is not None:
        raise ConfigError("--config cannot be combined with --resume: a resumed run keeps its config")
    config = copy.deepcopy(dict(meta["config"]))
    training = config["training"]
    check_resume_overrides(training, overrides)
    session = {k: v for k, v in overrides.items() if k in SESSION_KEYS}
    if "seconds" in session or "steps" in session:  # a new budget replaces the old one whole
        training["seconds"], training["steps"] = session.pop("seconds", None), session.pop("steps", None)
    training.update(session)
    return config
