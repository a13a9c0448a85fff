"""``ngp collisions RUN``: how many of the grid vertices a run's data occupies share a table row, per level;
``ngp hash-search RUN``: hash factors that make fewer of them share (and, if asked, what they give in training)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import numpy as np
import torch
import typer

from ngp.cli.common import Run, Seed, log, reporting

Points = Annotated[int, typer.Option("--points", help="Data points to look up (image: pixels, thinned at random "
                                     "beyond this; SDF: points on the mesh; NeRF: points in occupied cells).")]
Json = Annotated[Optional[Path], typer.Option("--json", help="Also write the table here (JSON).")]


def collisions(run: Run, points: Points = 2**20, seed: Seed = None, json_path: Json = None) -> None:
    """Count the hash collisions of RUN's grid on RUN's data: per level, the occupied grid vertices (corners
    of cells holding data), how many share a table row with another, and what an ideal random hash
    would give.

    Example: ngp collisions runs/armadillo --points 1000000
    """
    from ngp.encodings.collisions import collision_statistics, format_collisions
    from ngp.io.checkpoints import load_checkpoint

    with reporting():
        if points < 1:
            raise ValueError(f"--points must be at least 1, got {points}")
        primitive = load_checkpoint(run)[1].get("primitive")
        rng = np.random.default_rng(0 if seed is None else seed)
        layout, data = {"image": _image_points, "sdf": _sdf_points, "nerf": _nerf_points}[primitive](run, points, rng)
        levels = collision_statistics(layout, data)
        log(f"{run}: {primitive} run, {len(data)} data points\n{format_collisions(levels)}")
        if json_path is not None:
            from ngp.io.files import atomic_path

            with atomic_path(json_path) as tmp:
                Path(tmp).write_text(json.dumps({"run": str(run), "points": len(data),
                                                 "levels": [s.to_dict() for s in levels]}, indent=1))
            log(f"wrote {json_path}")


Generations = Annotated[int, typer.Option("--generations", help="Rounds of selection of the evolutionary search.")]
Population = Annotated[int, typer.Option("--population", help="Candidate hash functions per generation.")]
TrainSeconds = Annotated[Optional[float], typer.Option("--train-seconds", help="Then train RUN's setup with the "
                                                       "found hash and with RUN's own for this long each (a sweep "
                                                       "into --out), to compare their quality.")]
TrainSteps = Annotated[Optional[int], typer.Option("--train-steps", help="As --train-seconds, for this many steps.")]
SweepOut = Annotated[Optional[Path], typer.Option("--out", "-o", help="Sweep folder of --train-seconds/--train-steps "
                                                  "(default: RUN/hash_search).")]


def hash_search(run: Run, generations: Generations = 30, population: Population = 24, points: Points = 2**20,
                seed: Seed = None, json_path: Json = None, train_seconds: TrainSeconds = None,
                train_steps: TrainSteps = None, out: SweepOut = None) -> None:
    """Search for hash factors (the hash_primes config key) under which fewer of the grid vertices RUN's
    data occupies share a table row, on the levels where a hash can still keep them apart; compare with
    tiny-cuda-nn's five hash functions. With --train-seconds or --train-steps, train RUN's setup with
    RUN's hash and with the one found (an ngp sweep) and report both qualities.

    Example: ngp hash-search runs/albert --generations 30 --train-steps 900
    """
    from ngp.encodings.hash_search import format_search, search_hash_primes
    from ngp.io.checkpoints import load_checkpoint

    with reporting():
        if points < 1:
            raise ValueError(f"--points must be at least 1, got {points}")
        if train_seconds is not None and train_seconds <= 0 or train_steps is not None and train_steps < 1:
            raise ValueError("--train-seconds and --train-steps must be positive")
        meta = load_checkpoint(run)[1]
        primitive = meta.get("primitive")
        rng = np.random.default_rng(0 if seed is None else seed)
        layout, data = {"image": _image_points, "sdf": _sdf_points, "nerf": _nerf_points}[primitive](run, points, rng)
        result = search_hash_primes(layout, data, generations, population, 0 if seed is None else seed,
                                    progress=lambda g, best: log(f"generation {g}: best {best:.2%}"))
        log(f"{run}: {primitive} run, {len(data)} data points\n{format_search(result)}")
        if json_path is not None:
            from ngp.io.files import atomic_path

            with atomic_path(json_path) as tmp:
                Path(tmp).write_text(json.dumps({"run": str(run), "points": len(data), **result.to_dict()}, indent=1))
            log(f"wrote {json_path}")
        if train_seconds is not None or train_steps is not None:
            _train_both(run, meta, primitive, result.primes, out or Path(run) / "hash_search", train_seconds,
                        train_steps)


def _train_both(run: Path, meta: dict, primitive: str, primes, out: Path, seconds, steps) -> None:
    """Train RUN's setup (its config but the training section) with its own hash and with ``primes``."""
    from ngp.sweep import run_sweep
    from ngp.sweep.results import quality_of
    from ngp.train.settings import default_config

    sets = [f"{key}={json.dumps(value)}" for key, value in _differences(meta["config"], default_config(primitive))
            if not key.startswith("training.") and key != "encoding.hash_primes"]
    sets.append(f"encoding.hash_primes=null,{json.dumps(list(primes))}")
    rows = run_sweep(primitive, meta["config"]["training"]["data"], out, sets, seconds=seconds, steps=steps, log=log)
    for row in rows:
        quality = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in quality_of(primitive, row).items())
        log(f"hash_primes {row.get('encoding.hash_primes') or 'of the run'}: {quality}, {row.get('steps')} steps")


def _differences(config: dict, default: dict, prefix: str = "") -> list[tuple[str, object]]:
    """Dotted keys of ``config`` whose value differs from ``default``'s (recursing into sections)."""
    found = []
    for key, value in config.items():
        base = default.get(key) if isinstance(default, dict) else None
        if isinstance(value, dict) and isinstance(base, dict):
            found += _differences(value, base, f"{prefix}{key}.")
        elif value != base:
            found.append((f"{prefix}{key}", value))
    return found


def _grid_of(module: torch.nn.Module, run: Path):
    from ngp.encodings import Grid

    for sub in module.modules():
        if isinstance(sub, Grid):
            return sub
    raise ValueError(f"{run}: the model has no grid encoding, so nothing is hashed")


def _image_points(run: Path, n: int, rng: np.random.Generator):
    from ngp.image.data import pixel_centres
    from ngp.image.render import load_image_model

    model, image = load_image_model(run)
    width, height = int(image["width"]), int(image["height"])
    if width * height <= n:
        return _grid_of(model, run).layout, pixel_centres(width, height)
    flat = torch.from_numpy(rng.choice(width * height, n, replace=False))
    return _grid_of(model, run).layout, torch.stack([(flat % width + 0.5) / width, (flat // width + 0.5) / height], -1)


def _sdf_points(run: Path, n: int, rng: np.random.Generator):
    from ngp.io.checkpoints import load_checkpoint
    from ngp.io.meshes import load_mesh
    from ngp.sdf.model import NeuralSDF
    from ngp.sdf.sampling import SurfaceSampler

    model = NeuralSDF.from_checkpoint(run)
    mesh = load_mesh(load_checkpoint(run)[1]["config"]["training"]["data"])  # the mesh the run learned
    unit = model.normalization.to_unit(mesh.vertices)
    return _grid_of(model, run).layout, torch.from_numpy(SurfaceSampler(unit, mesh.faces).sample(n, rng))


def _nerf_points(run: Path, n: int, rng: np.random.Generator):
    from ngp.nerf.runs import load_nerf_run

    loaded = load_nerf_run(run, "cpu")
    occupied = torch.nonzero(loaded.grid.occupied.reshape(-1)).squeeze(1)
    if not len(occupied):
        raise ValueError(f"{run}: the occupancy grid has no occupied cell")
    flat = occupied[torch.from_numpy(rng.integers(0, len(occupied), n))]
    jitter = torch.from_numpy(rng.random((n, 3)))
    positions = loaded.grid.cell_positions(flat, jitter)
    return _grid_of(loaded.field, run).layout, loaded.field.normalize(positions).clamp(0.0, 1.0)
