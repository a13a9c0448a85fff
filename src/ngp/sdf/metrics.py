"""How close a learned SDF is to its mesh: IoU of the insides, and Chamfer distance of the surfaces.

* **IoU** (as instant-ngp's ``calculate_iou``): ``|inside_model AND inside_mesh| / |inside_model OR
  inside_mesh|`` with ``inside = distance <= 0``, counted (a) on the cell centres of a regular grid over
  the mesh's bounding box and (b) on near-surface samples (the training distribution's 3/8 kind, drawn
  afresh), where errors concentrate.
* **Chamfer distance**: ``mean_{a in A} d(a, B) + mean_{b in B} d(b, A)`` with ``A``, ``B`` points sampled
  uniformly on the extracted and the ground-truth surface and ``d`` the exact distance from a point to
  the *other mesh's triangles* (not to its samples, which would add sampling noise). Reported in the
  unit cube and in mesh units (unit value times the normalisation scale).

Example:
    >>> iou = grid_iou(sdf, gt, resolution=128)
    >>> chamfer = chamfer_distance(vertices, faces, gt_vertices, gt_faces, n_samples=100_000)
"""

from __future__ import annotations

import numpy as np
import torch

from ngp.geometry.grids import evaluate_chunked, grid_shape
from ngp.sdf.sampling import MeshSDF, SampleGenerator, SurfaceSampler


def iou(inside_a: np.ndarray, inside_b: np.ndarray) -> float:
    """Intersection over union of two boolean masks of equal shape (1.0 when both are empty)."""
    inside_a, inside_b = np.asarray(inside_a, bool), np.asarray(inside_b, bool)
    if inside_a.shape != inside_b.shape:
        raise ValueError(f"masks differ in shape: {inside_a.shape} vs {inside_b.shape}")
    union = np.logical_or(inside_a, inside_b).sum()
    return 1.0 if union == 0 else float(np.logical_and(inside_a, inside_b).sum() / union)


def cell_centres(lo: np.ndarray, hi: np.ndarray, resolution: int) -> np.ndarray:
    """``[X*Y*Z, 3]`` centres of a grid of (nearly) cubic cells over ``[lo, hi]``, longest side ``resolution``."""
    shape = grid_shape(lo, hi, resolution)
    axes = [lo[i] + (np.arange(shape[i]) + 0.5) * (hi[i] - lo[i]) / shape[i] for i in range(3)]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def model_inside(sdf, points_unit: np.ndarray) -> np.ndarray:
    """``[N, 3]`` unit-cube points -> ``[N]`` bool, the learned ``distance <= 0``."""
    return (evaluate_chunked(sdf.unit_sdf, torch.as_tensor(points_unit, dtype=torch.float32)) <= 0).numpy()


def grid_iou(sdf, gt: MeshSDF, resolution: int = 128, aabb: np.ndarray | None = None) -> float:
    """IoU on the cell centres of a ``resolution``-grid over ``aabb`` (default the model's)."""
    box = (sdf.aabb.cpu().numpy() if aabb is None else np.asarray(aabb)).astype(np.float64)
    points = cell_centres(box[0], box[1], resolution)
    return iou(model_inside(sdf, points), gt.inside(points))


def near_surface_agreement(sdf, generator: SampleGenerator, n: int = 2**17) -> dict[str, float]:
    """IoU and sign accuracy on ``n`` fresh near-surface samples."""
    points = generator.near_points(n)
    truth, learned = generator.gt.inside(points), model_inside(sdf, points)
    return {"iou": iou(learned, truth), "sign_accuracy": float((learned == truth).mean())}


def point_mesh_distance(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``[N, 3]`` -> ``[N]`` exact distance from each point to the nearest triangle of a mesh."""
    import igl

    squared, _, _ = igl.point_mesh_squared_distance(
        np.ascontiguousarray(points, np.float64), np.ascontiguousarray(vertices, np.float64),
        np.ascontiguousarray(faces, np.int64),
    )
    return np.sqrt(squared)


def chamfer_distance(
    vertices_a: np.ndarray, faces_a: np.ndarray, vertices_b: np.ndarray, faces_b: np.ndarray,
    n_samples: int = 100_000, rng: np.random.Generator | None = None,
) -> float:
    """Symmetric point-to-mesh Chamfer distance (see module doc), in the meshes' units.

    Returns ``inf`` if either mesh has no faces (e.g. marching cubes found no surface).
    """
    if len(faces_a) == 0 or len(faces_b) == 0:
        return float("inf")
    rng = rng or np.random.default_rng(0)
    samples_a = SurfaceSampler(vertices_a, faces_a).sample(n_samples, rng)
    samples_b = SurfaceSampler(vertices_b, faces_b).sample(n_samples, rng)
    a_to_b = point_mesh_distance(samples_a, vertices_b, faces_b).mean()
    b_to_a = point_mesh_distance(samples_b, vertices_a, faces_a).mean()
    return float(a_to_b + b_to_a)


__all__ = [
    "cell_centres", "chamfer_distance", "grid_iou", "iou", "model_inside", "near_surface_agreement",
    "point_mesh_distance",
]
