"""A learned SDF's zero level set as a triangle mesh: the SDF on a grid over its box, then marching
cubes, both from :mod:`ngp.geometry.grids`.

Example:
    >>> vertices, faces = extract_mesh(sdf, resolution=256)      # mesh units, [V, 3], [F, 3]
"""

from __future__ import annotations

import numpy as np

from ngp.geometry.grids import evaluate_grid, grid_shape, marching_cubes


def sdf_grid(sdf, resolution: int, aabb: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate a :class:`~ngp.sdf.model.NeuralSDF` on a grid over ``aabb`` (unit cube; default the
    model's) whose longest side has ``resolution`` samples. Returns ``(values [X, Y, Z] unit-cube
    distances, lo [3], hi [3])``.

    Every vertex is evaluated: a narrow band (coarse pass, then full blocks near the surface) was
    measured slower at 192^3 on the armadillo (15.6 s vs 11.3 s) because a band safe for a learned SDF
    (not quite 1-Lipschitz) covers most of the box, and it changed two signs on the bunny.
    """
    box = (sdf.aabb.cpu().numpy() if aabb is None else np.asarray(aabb)).astype(np.float64)
    values = evaluate_grid(sdf.unit_sdf, box[0], box[1], grid_shape(box[0], box[1], resolution))
    return values, box[0], box[1]


def extract_mesh(sdf, resolution: int = 256, unit: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes on a learned SDF -> ``(vertices [V, 3], faces [F, 3])`` in mesh units (or the unit
    cube if ``unit``), so the result overlays the mesh it was trained on. Faces point outwards; an SDF
    without a sign change in its box gives an empty mesh (``V = F = 0``)."""
    values, lo, hi = sdf_grid(sdf, resolution)
    vertices, faces, _ = marching_cubes(values, lo, hi, level=0.0, inside="below")
    if not unit:
        vertices = sdf.normalization.to_mesh(vertices)
    return vertices, faces


__all__ = ["extract_mesh", "sdf_grid"]
