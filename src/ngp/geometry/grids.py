"""Functions sampled on regular grids over a box, and their iso-surfaces by marching cubes.

A grid of shape ``(X, Y, Z)`` over the box ``[lo, hi]`` has the vertices
``lo + (hi - lo) * (i, j, k) / (shape - 1)`` (``torch.linspace`` per axis), stored ``[X, Y, Z]`` (x
slowest, z fastest). :func:`evaluate_grid` evaluates a function on it a slab of x-slices at a time,
so a 512^3 grid never holds its 1.6 GB of coordinates at once; :func:`marching_cubes` extracts an
iso-surface with vertices back in the box's coordinates.

Marching cubes is scikit-image's (``skimage.measure.marching_cubes``, Lewiner's variant): already a
dependency, topologically consistent, and a 256^3 grid takes about a second; PyMCubes would add a
package for no gain here.

Example::

    >>> lo, hi = np.zeros(3), np.ones(3)
    >>> shape = grid_shape(lo, hi, 64)                                  # (64, 64, 64)
    >>> values = evaluate_grid(lambda x: (x - 0.5).norm(dim=-1) - 0.3, lo, hi, shape)
    >>> vertices, faces, normals = marching_cubes(values, lo, hi, level=0.0)   # a sphere
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

__all__ = ["CHUNK", "INSIDE", "IsoSurface", "evaluate_chunked", "evaluate_grid", "grid_points", "grid_shape",
           "marching_cubes"]

#: Points per function call when evaluating grids and rays: large enough for efficient matrix
#: products, small enough to bound memory (a 2^18 x 64 float32 activation is 64 MB).
CHUNK = 2**18

#: Which side of the level is the object: ``"below"`` (signed distances: negative inside) or
#: ``"above"`` (densities).
INSIDE = ("below", "above")


@torch.no_grad()
def evaluate_chunked(fn: Callable[[torch.Tensor], torch.Tensor], points: torch.Tensor,
                     chunk: int = CHUNK) -> torch.Tensor:
    """``fn`` over ``[N, 3]`` points in chunks of ``chunk`` -> ``[N]`` float32 on the CPU."""
    if points.dim() != 2 or points.shape[1] != 3:
        raise ValueError(f"expected points of shape [N, 3], got {list(points.shape)}")
    out = torch.empty(points.shape[0], dtype=torch.float32)
    for start in range(0, points.shape[0], chunk):
        out[start : start + chunk] = fn(points[start : start + chunk]).float()
    return out


def grid_shape(lo, hi, resolution: int) -> tuple[int, int, int]:
    """Samples per axis so that the longest side of ``[lo, hi]`` gets ``resolution`` and voxels are
    (nearly) cubic."""
    if resolution < 2:
        raise ValueError(f"resolution must be at least 2, got {resolution}")
    extent = np.asarray(hi, dtype=np.float64) - np.asarray(lo, dtype=np.float64)
    return tuple(max(2, int(round(resolution * e / extent.max()))) for e in extent)


def _axes(lo, hi, shape, device=None) -> list[torch.Tensor]:
    return [torch.linspace(float(lo[i]), float(hi[i]), shape[i], device=device) for i in range(3)]


def _cartesian(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    return torch.stack(torch.meshgrid(x, y, z, indexing="ij"), dim=-1).reshape(-1, 3)


def grid_points(lo, hi, shape: tuple[int, int, int], device=None) -> torch.Tensor:
    """``[X*Y*Z, 3]`` float32 vertices of the grid of ``shape`` over ``[lo, hi]`` (x slowest, z fastest)."""
    return _cartesian(*_axes(lo, hi, shape, device))


@torch.no_grad()
def evaluate_grid(fn: Callable[[torch.Tensor], torch.Tensor], lo, hi, shape: tuple[int, int, int],
                  chunk: int = CHUNK, device=None, progress: bool = False, desc: str = "grid") -> np.ndarray:
    """``fn`` (``[N, 3]`` points -> ``[N]``) on the grid of ``shape`` over ``[lo, hi]`` -> ``[X, Y, Z]`` float32.

    Points are made on ``device`` (default CPU), a slab of whole x-slices (about ``chunk`` points) at
    a time, and passed to ``fn`` in chunks of at most ``chunk``; ``progress`` shows a bar per slab.
    """
    if len(shape) != 3 or min(shape) < 2:
        raise ValueError(f"grid shape must be three sizes >= 2, got {tuple(shape)}")
    axes = _axes(lo, hi, shape, device)
    out = np.empty(tuple(shape), dtype=np.float32)
    slab = max(1, chunk // (shape[1] * shape[2]))
    for start in tqdm(range(0, shape[0], slab), desc=desc, unit="slab", disable=not progress, dynamic_ncols=True):
        points = _cartesian(axes[0][start : start + slab], axes[1], axes[2])
        values = torch.cat([fn(p).float() for p in points.split(chunk)])
        out[start : start + slab] = values.reshape(-1, shape[1], shape[2]).cpu().numpy()
    return out


class IsoSurface(NamedTuple):
    """A triangle mesh from :func:`marching_cubes`.

    Attributes:
        vertices: ``[V, 3]`` float64, in the box's coordinates.
        faces: ``[F, 3]`` int64, wound so that normals point out of the object.
        normals: ``[V, 3]`` float32 unit normals pointing out of the object (from the grid's gradient).
    """

    vertices: np.ndarray
    faces: np.ndarray
    normals: np.ndarray


def marching_cubes(values: np.ndarray, lo, hi, level: float = 0.0, inside: str = "below") -> IsoSurface:
    """The iso-surface ``values = level`` of a grid ``[X, Y, Z]`` spanning ``[lo, hi]``.

    ``inside`` says which side of ``level`` the object is (see :data:`INSIDE`); faces and normals point
    away from it. A grid without values on both sides of ``level`` (or with NaNs) gives an empty mesh
    (``V = F = 0``) rather than an error: callers decide whether that is one.
    """
    from skimage.measure import marching_cubes as skimage_marching_cubes

    if inside not in INSIDE:
        raise ValueError(f"inside must be one of {INSIDE}, got {inside!r}")
    values = np.asarray(values)
    if values.ndim != 3 or min(values.shape) < 2:
        raise ValueError(f"values must be a [X, Y, Z] grid with at least 2 samples per axis, got {list(values.shape)}")
    if not (values.min() < level < values.max()):
        return IsoSurface(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3), dtype=np.float32))
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    spacing = (hi - lo) / (np.asarray(values.shape) - 1)
    # skimage's "descent" winding makes face normals point towards higher values, "ascent" towards lower
    vertices, faces, normals, _ = skimage_marching_cubes(
        values, level=level, spacing=tuple(spacing), gradient_direction="descent" if inside == "below" else "ascent")
    # skimage's normals point down the gradient: out of a density, into a signed distance
    normals = -normals if inside == "below" else normals
    return IsoSurface(vertices + lo, np.ascontiguousarray(faces, dtype=np.int64), np.ascontiguousarray(normals))
