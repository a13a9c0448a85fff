"""One sweep run, from its plan (new, resumed or restarted) to its results row; the same code runs in this
process and in a Ray task.

A run folder under ``DIR/runs/`` is in one of four states when a sweep (re)starts:

* ``metrics.json`` says ``budget`` or ``diverged``: finished; its row is read, it is not rerun;
* a checkpoint (and no such ``metrics.json``: killed, or Ctrl-C'd, which writes ``stopped: SIGINT``):
  resumed with what is left of its budget, so that it ends where an uninterrupted run would;
  restarted from scratch when nothing is left (killed while writing its outputs) or the checkpoint
  cannot be read;
* anything else (absent, empty): a new run.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ngp.io.checkpoints import META_FILE, find_checkpoint
from ngp.io.runs import METRICS_FILE, RunFolder
from ngp.sweep.results import run_row

#: ``metrics.json``'s ``stopped`` values of a run that is over (an interrupted run says SIGINT/SIGTERM).
FINISHED = ("budget", "diverged")


@dataclass
class Job:
    """Everything one run needs (plain data: it travels to Ray workers).

    ``config``: the combination's settings as a config dict; ``budget``: the run's whole training budget,
    ``{"seconds": s | None, "steps": n | None}``, as resolved from the config and the sweep's options.
    """

    primitive: str
    data: str
    name: str
    settings: dict[str, Any]
    repeat: int
    run_dir: str
    sweep_dir: str
    config: dict[str, Any]
    budget: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)
    device: str = "auto"
    precision: str = "auto"


def finished(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run that is over (its row can be read)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("stopped") in FINISHED
    except (OSError, ValueError):
        return False


def row_of(job: Job) -> dict[str, Any]:
    """The results row of a finished job."""
    return run_row(job.primitive, job.settings, job.repeat, job.name, job.run_dir, job.sweep_dir)


def execute(job: Job) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train ``job`` (new, resumed or restarted; see the module doc) -> ``(row, metrics)``.

    A diverged run is a result (its row says so); an interrupted one raises
    :class:`ngp.train.loop.Interrupted` after saving, and resumes on the sweep's next start.
    """
    from ngp.train.loop import Diverged
    from ngp.train.session import silent, train_run

    build_task, ignored = task_builder(job.primitive)
    try:
        train_run(job.primitive, build_task, request_for(job), log=silent, ignored_sections=ignored)
    except Diverged:
        pass  # metrics.json says "diverged"
    metrics = json.loads((Path(job.run_dir) / METRICS_FILE).read_text())
    return row_of(job), metrics


def task_builder(primitive: str):
    """``(build_task, ignored_sections)`` of a primitive, as its ``train`` command uses them (quiet)."""
    from ngp.train.session import silent

    if primitive == "image":
        from ngp.image.trainer import build_image_task

        return build_image_task, ()
    if primitive == "sdf":
        from ngp.sdf.trainer import build_sdf_task

        return build_sdf_task, ()
    from ngp.nerf.field import IGNORED_KEYS
    from ngp.nerf.trainer import build_nerf_task

    return functools.partial(build_nerf_task, log=silent), IGNORED_KEYS


def request_for(job: Job):
    """The :class:`~ngp.train.session.TrainRequest` that brings ``job``'s folder to a finished run."""
    from ngp.train.session import TrainRequest

    common = {"out": job.run_dir, "device": job.device, "precision": job.precision, "progress": False}
    run = RunFolder(job.run_dir)
    if run.has_checkpoint():
        left = budget_left(job)
        if left is not None:
            return TrainRequest(resume=True, overrides=left, **common)
    return TrainRequest(config=job.config, overrides={"data": job.data, **job.overrides}, force=run.is_run(), **common)


def budget_left(job: Job) -> dict[str, Any] | None:
    """What is left of ``job``'s budget after its checkpoint (``{"seconds", "steps"}``), or None when
    nothing is (or the checkpoint cannot be read): then the run starts again."""
    try:
        meta = json.loads((find_checkpoint(job.run_dir) / META_FILE).read_text())
        step, seconds = int(meta["loop"]["step"]), float(meta["loop"]["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    left: dict[str, Any] = {"seconds": None, "steps": None}
    if job.budget.get("steps") is not None:
        left["steps"] = job.budget["steps"] - step
    if job.budget.get("seconds") is not None:
        left["seconds"] = job.budget["seconds"] - seconds
    if any(v is not None and v <= 0 for v in left.values()):
        return None
    return left
