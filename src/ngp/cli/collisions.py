"""``ngp collisions RUN``: how many of the grid vertices a run's data occupies share a table row, per level."""

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
