"""``ngp sweep``: the paper's trade-off curves — the cross product of settings, one run folder each.

::

    DIR/sweep.json        what the sweep is (primitive, data, budget): a rerun must match it
    DIR/runs/<name>/      one run folder per combination (``encoding.log2_hashmap_size=14__repeat=0``)
    DIR/results.csv       one row per run (see :mod:`ngp.sweep.results`), rewritten after every run
    DIR/quality_vs_size.png, DIR/quality_vs_time.png

Every combination's config is built and checked before the first run. Runs go one after another in
this process (timings on a small machine must not share cores), or one per Ray task with
``ray_address``. Starting the same sweep again resumes it: finished runs are read, an interrupted run
continues with what is left of its budget (see :mod:`ngp.sweep.runner`). Each run trains through
:func:`ngp.train.session.train_run`, like ``ngp image fit`` and friends; repeat ``k`` trains with seed
``training.seed + k`` (unless ``training.seed`` is swept), so repeats measure the spread over seeds.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from ngp.config import ConfigError
from ngp.io.files import prepare_output_dir, write_json
from ngp.io.runs import METRICS_FILE
from ngp.sweep.check import checked_config
from ngp.sweep.grid import Combination, SweepSet, expand, parse_set
from ngp.sweep.results import RESULTS_FILE, write_csv, write_plots
from ngp.sweep.runner import Job, execute, finished, row_of
from ngp.train.settings import PRIMITIVES

__all__ = ["run_sweep", "plan_sweep", "parse_set", "expand", "SweepSet", "Job"]

SWEEP_FILE = "sweep.json"
RUNS_DIR = "runs"
_BUDGET_KEYS = ("training.seconds", "training.steps")


def run_sweep(primitive: str, data: str | Path, out: str | Path, sets: Sequence[str | SweepSet],
              seconds: float | None = None, steps: int | None = None, repeats: int = 1,
              ray_address: str | None = None, log: Callable[[str], None] = print, progress: bool = False,
              device: str = "auto", precision: str = "auto") -> list[dict[str, Any]]:
    """Run (or resume) a sweep into ``out``; returns the results rows in combination order.

    ``sets``: ``"KEY=V1,V2,..."`` texts (or parsed :class:`SweepSet`); ``seconds``/``steps``: each run's
    budget (default: the config's); ``log`` gets one line per run; ``progress`` shows an overall bar.

    Example:
        >>> rows = run_sweep("image", "builtin:astronaut", "sweeps/t", ["encoding.log2_hashmap_size=14,16"], steps=200)
        >>> [(r["encoding.log2_hashmap_size"], r["psnr"]) for r in rows]
    """
    jobs = plan_sweep(primitive, data, out, sets, seconds, steps, repeats, device, precision)
    out = Path(out)
    rows: dict[str, dict[str, Any]] = {job.name: row_of(job) for job in jobs if finished(job.run_dir)}
    todo = [job for job in jobs if job.name not in rows]
    tracker = _Progress(len(jobs), len(rows), log, progress)
    for job in jobs:
        if job.name in rows:
            tracker.line(job, rows[job.name], "done before")

    def collect(job: Job, row: dict[str, Any], metrics: dict[str, Any]) -> None:
        metrics_file = Path(job.run_dir) / METRICS_FILE
        if not metrics_file.exists():  # a Ray worker without a shared file system: keep what resuming reads
            prepare_output_dir(job.run_dir)
            write_json(metrics_file, metrics)
        rows[job.name] = row
        write_csv(out / RESULTS_FILE, _ordered(jobs, rows))
        tracker.line(job, row)

    try:
        if ray_address:
            from ngp.sweep.ray_backend import run_on_ray

            run_on_ray(ray_address, todo, collect)
        else:
            for job in todo:
                collect(job, *execute(job))
    finally:
        tracker.close()
        if rows:
            write_csv(out / RESULTS_FILE, _ordered(jobs, rows))
    result = _ordered(jobs, rows)
    write_plots(out, result, [s.key for s in _parsed(sets)], primitive)
    return result


def plan_sweep(primitive: str, data: str | Path, out: str | Path, sets: Sequence[str | SweepSet],
               seconds: float | None = None, steps: int | None = None, repeats: int = 1, device: str = "auto",
               precision: str = "auto") -> list[Job]:
    """Parse, expand and check every combination (raises before anything is written), then prepare
    ``out`` (recording the sweep in ``sweep.json``, or checking a rerun matches it) -> one Job per run."""
    if primitive not in PRIMITIVES:
        raise ValueError(f"unknown primitive {primitive!r}; expected one of {', '.join(PRIMITIVES)}")
    parsed = _parsed(sets)
    given = {k: v for k, v in (("seconds", seconds), ("steps", steps)) if v is not None}
    for key in _BUDGET_KEYS:
        if key.split(".")[1] in given and any(s.key == key for s in parsed):
            raise ValueError(f"--set {key} and --{key.split('.')[1]} both give the runs' budget: give one")
    combos = expand(parsed, repeats)
    data = resolve_data(primitive, data)
    out = Path(out)
    jobs = [_job(primitive, data, out, combo, given, device, precision) for combo in combos]
    _record_sweep(out, {"primitive": primitive, "data": data, "seconds": seconds, "steps": steps})
    return jobs


def _parsed(sets: Sequence[str | SweepSet]) -> list[SweepSet]:
    return [s if isinstance(s, SweepSet) else parse_set(s) for s in sets]


def _job(primitive: str, data: str, out: Path, combo: Combination, given: dict, device: str, precision: str) -> Job:
    from ngp.sweep.runner import task_builder

    training = checked_config(primitive, combo, given, task_builder(primitive)[1])["training"]
    config = combo.config
    if combo.repeat and "training.seed" not in combo.settings:  # repeats differ in seed, not only in timing
        config = {**config, "training": {**config.get("training", {}), "seed": training["seed"] + combo.repeat}}
    budget = {"seconds": training.get("seconds"), "steps": training.get("steps")}
    if len(given) == 1:  # as train_run does: one budget given on the command line replaces the config's whole
        budget["steps" if "seconds" in given else "seconds"] = None
    return Job(primitive, data, combo.name, dict(combo.settings), combo.repeat, str(out / RUNS_DIR / combo.name),
               str(out), config, budget, dict(given), device, precision)


def resolve_data(primitive: str, data: str | Path) -> str:
    """DATA as the primitive's training command records it; a missing file is an error now, before any run."""
    from ngp.train.session import input_path

    if primitive == "nerf":
        from ngp.nerf.trainer import resolve_data as nerf_data

        resolved = nerf_data(data)
    else:
        resolved = input_path(data)
    if not str(data).startswith("builtin") and not Path(resolved).exists():
        raise FileNotFoundError(f"{primitive} sweep: data {str(data)!r} not found")
    return resolved


def _record_sweep(out: Path, spec: dict[str, Any]) -> None:
    """Write ``sweep.json``, or check that the sweep already in ``out`` is this one (same primitive, data
    and budget: a finished run's row must mean the same as a new one's)."""
    path = out / SWEEP_FILE
    if path.exists():
        try:
            earlier = json.loads(path.read_text())
        except ValueError as error:
            raise ValueError(f"{path}: unreadable ({error}); choose another --out") from None
        changed = [k for k in spec if earlier.get(k) != spec[k]]
        if changed:
            raise ConfigError(f"{out} holds a sweep made with {', '.join(f'{k}={earlier.get(k)!r}' for k in changed)} "
                              f"(this one: {', '.join(f'{k}={spec[k]!r}' for k in changed)}); choose another --out")
        return
    if out.is_dir() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty and holds no sweep ({SWEEP_FILE}); choose another --out")
    prepare_output_dir(out)
    write_json(path, spec)


def _ordered(jobs: Sequence[Job], rows: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [rows[job.name] for job in jobs if job.name in rows]


class _Progress:
    """One line per run (``[k/N] name: quality, seconds``) and an overall bar with an ETA."""

    def __init__(self, total: int, done: int, log: Callable[[str], None], enabled: bool):
        from tqdm.auto import tqdm

        self.total, self.count, self.log = total, 0, log
        self.bar = tqdm(total=total, initial=done, desc="sweep", unit="run", disable=not enabled, leave=False)

    def line(self, job: Job, row: dict[str, Any], note: str = "") -> None:
        from ngp.sweep.results import QUALITY, quality_of

        self.count += 1
        figures = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in quality_of(job.primitive, row).items() if k in QUALITY[job.primitive])
        text = f"[{self.count}/{self.total}] {job.name}: {figures}, {row.get('seconds')} s, {row.get('steps')} steps"
        text += f" ({note})" if note else (f" ({row['stopped']})" if row.get("stopped") != "budget" else "")
        with self.bar.external_write_mode():
            self.log(text)
        if not note:
            self.bar.update(1)

    def close(self) -> None:
        self.bar.close()
