"""Extracting a triangle mesh from a NeRF's density by marching cubes.

The density ``sigma`` is sampled on a ``resolution^3`` lattice spanning the field's aabb and the
iso-surface ``sigma = threshold`` is extracted by marching cubes (both from :mod:`ngp.geometry.grids`). The default
threshold, 2.5, is instant-ngp's (its densities are in the same units as ours: per unit of the
normalised scene, where NeRF-synthetic objects span about 1). Vertices are mapped back to the
data set's own coordinates (undoing the scale/offset/axis cycle of
:func:`ngp.nerf.datasets.nerf_to_ngp_matrix`) and coloured by the field seen from outside (view
direction against the normal).

Example::

    >>> mesh = extract_mesh(field, resolution=256, scale=0.33, offset=(0.5, 0.5, 0.5))
    >>> write_mesh(mesh, "lego.ply")
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ngp.geometry.grids import evaluate_grid, marching_cubes
from ngp.io.files import atomic_path
from ngp.nerf.field import NerfField

__all__ = ["DEFAULT_THRESHOLD", "density_grid", "extract_mesh", "ngp_to_dataset", "vertex_colors", "write_mesh"]

#: instant-ngp's marching-cubes density threshold.
DEFAULT_THRESHOLD = 2.5


def density_grid(field: NerfField, resolution: int, chunk: int = 1 << 18, progress: bool = True) -> np.ndarray:
    """``[R, R, R]`` float32 densities at the lattice points ``lo + (hi - lo) * i / (R - 1)`` of the
    field's aabb, indexed ``[ix, iy, iz]`` (evaluated on the field's device)."""
    lo, hi = field.aabb[0].tolist(), field.aabb[1].tolist()
    with torch.inference_mode():
        return evaluate_grid(field.density, lo, hi, (resolution,) * 3, chunk=chunk, device=field.aabb.device,
                             progress=progress, desc="density")


def ngp_to_dataset(points: np.ndarray, scale: float, offset) -> np.ndarray:
    """Inverse of the data set loader's world mapping: ngp frame ``[N, 3]`` -> the transforms' frame."""
    return (points[:, [2, 0, 1]] - np.asarray(offset, dtype=np.float64)) / scale


def extract_mesh(field: NerfField, resolution: int = 256, threshold: float = DEFAULT_THRESHOLD,
                 scale: float = 1.0, offset=(0.0, 0.0, 0.0), ngp_frame: bool = False,
                 progress: bool = True):
    """Marching cubes on the density -> ``trimesh.Trimesh`` with vertex colours.

    Args:
        field: the trained field.
        resolution: lattice points per axis (memory ``4 R^3`` bytes).
        threshold: iso-value of the density (see :data:`DEFAULT_THRESHOLD`).
        scale, offset: the data set's mapping into the ngp frame (``NerfDataset.scale``/``offset``);
            vertices are returned in the data set's frame unless ``ngp_frame``.

    Raises:
        ValueError: ``resolution < 2``, or no surface at this threshold (density everywhere above or
            below it).
    """
    import trimesh

    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    sigma = density_grid(field, resolution, progress=progress)
    if not (sigma.min() < threshold < sigma.max()):
        raise ValueError(f"no surface at density threshold {threshold}: the density ranges over "
                         f"[{sigma.min():.3g}, {sigma.max():.3g}] (train longer or pick another --threshold)")
    lo, hi = field.aabb[0].double().cpu().numpy(), field.aabb[1].double().cpu().numpy()
    verts, faces, normals = marching_cubes(sigma, lo, hi, level=threshold, inside="above")
    colors = vertex_colors(field, verts, normals)
    if not ngp_frame:
        verts = ngp_to_dataset(verts, scale, offset)
    rgba = np.concatenate([np.round(colors * 255), np.full((len(verts), 1), 255)], axis=1)
    return trimesh.Trimesh(vertices=verts, faces=faces, vertex_colors=rgba.astype(np.uint8), process=False)


@torch.inference_mode()
def vertex_colors(field: NerfField, vertices: np.ndarray, normals: np.ndarray, chunk: int = 1 << 16) -> np.ndarray:
    """``[V, 3]`` colours in ``[0, 1]`` of the field at ``vertices [V, 3]`` (ngp frame), seen from
    outside: looking against the outward ``normals [V, 3]``."""
    device = field.aabb.device
    positions = torch.as_tensor(np.ascontiguousarray(vertices), dtype=torch.float32, device=device)
    directions = -torch.nn.functional.normalize(
        torch.as_tensor(np.ascontiguousarray(normals), dtype=torch.float32, device=device), dim=-1)
    colors = [field(p, d)[1] for p, d in zip(positions.split(chunk), directions.split(chunk))]
    return torch.cat(colors).cpu().numpy()


def write_mesh(mesh, path: str | Path) -> Path:
    """Write a mesh (format from the suffix: .ply, .obj, .stl, ...) atomically."""
    path = Path(path)
    with atomic_path(path) as tmp:
        mesh.export(tmp)
    return path
