"""How close a learned SDF is to its mesh: IoU of the insides, and Chamfer distance of the surfaces.

* **IoU** (as instant-ngp's ``calculate_iou``): ``|inside_model AND inside_mesh| / |inside_model OR
  inside_mesh|`` with ``inside = distance <= 0``, counted (a) on the cell centres of a regular grid over
  the mesh's bounding box and (b) on near-surface samples (the training distribution's 3/8 kind, drawn
  afresh), where errors concentrate.
* **Chamfer distance**: ``mean_{a in A} d(a, B) + mean_{b in B} d(b, A)`` with ``A``, ``B`` points sampled
  uniformly on the extracted and the ground-truth surface and ``d`` the exact distance from a point to
  the *other mesh's triangles* (not to its samples, which would add sampling noise). Reported in the
  unit cube and in mesh units (unit value times the normalisation scale).
* **Normal angles** (degrees; the surface's *shape*, which Chamfer barely sees: hash-collision
  microstructure is a fraction of a voxel high but tilts the surface): the mean angle between a normal
  and the ground-truth normal, that of the nearest ground-truth triangle. *Mesh*: at points sampled
  uniformly on the extracted mesh, that mesh's face normal (what a renderer of ``mesh.ply`` shades).
  *Field*: at points sampled on the ground-truth surface, the learned SDF's gradient (autograd through
  the encoding; what a sphere tracer of the SDF shades). Marching cubes of the *exact* SDF at the same
  resolution is the mesh figure's floor (:func:`exact_sdf_mesh`).

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


def nearest_faces(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``[N, 3]`` -> ``[N]`` index of each point's nearest triangle of a mesh."""
    import igl

    _, index, _ = igl.point_mesh_squared_distance(
        np.ascontiguousarray(points, np.float64), np.ascontiguousarray(vertices, np.float64),
        np.ascontiguousarray(faces, np.int64),
    )
    return np.asarray(index, np.int64).reshape(-1)


def angle_degrees(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[N, 3]``, ``[N, 3]`` -> ``[N]`` angle between each pair of vectors, in degrees (0..180; a zero
    vector counts as 90)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cosine = np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-300), 0.0)
    return np.degrees(np.arccos(np.clip(cosine, -1.0, 1.0)))


def mesh_normal_angle(vertices: np.ndarray, faces: np.ndarray, gt_vertices: np.ndarray, gt_faces: np.ndarray,
                      n_samples: int = 100_000, rng: np.random.Generator | None = None) -> float:
    """Mean angle (degrees) between a mesh's face normals, at ``n_samples`` points uniform on it, and the
    normals of the ground truth's nearest triangles (both meshes in one unit system, faces pointing
    outwards). ``nan`` when either mesh has no faces.

    Example:
        >>> mesh_normal_angle(vertices_unit, faces, gt.vertices, gt.faces)   # 0 for the mesh itself
    """
    if len(faces) == 0 or len(gt_faces) == 0:
        return float("nan")
    rng = rng or np.random.default_rng(0)
    sampler = SurfaceSampler(vertices, faces)
    points, on = sampler.sample_on_faces(n_samples, rng)
    truth = SurfaceSampler(gt_vertices, gt_faces).normals[nearest_faces(points, gt_vertices, gt_faces)]
    return float(angle_degrees(sampler.normals[on], truth).mean())


def field_normal_angle(sdf, gt_vertices: np.ndarray, gt_faces: np.ndarray, n_samples: int = 100_000,
                       rng: np.random.Generator | None = None, chunk: int = 2**16) -> float:
    """Mean angle (degrees) between a learned SDF's gradient and the true normal, at ``n_samples`` points
    uniform on the ground-truth surface (unit cube, as ``sdf.unit_sdf`` takes them).

    Example:
        >>> field_normal_angle(sdf, gt.vertices, gt.faces)
    """
    rng = rng or np.random.default_rng(0)
    sampler = SurfaceSampler(gt_vertices, gt_faces)
    points, on = sampler.sample_on_faces(n_samples, rng)
    points = torch.as_tensor(points, dtype=torch.float32)
    gradients = torch.cat([sdf.gradient(points[start:start + chunk], unit=True).detach().cpu()
                           for start in range(0, len(points), chunk)])
    return float(angle_degrees(gradients.double().numpy(), sampler.normals[on]).mean())


def exact_sdf_mesh(gt: MeshSDF, aabb: np.ndarray, resolution: int) -> tuple[np.ndarray, np.ndarray]:
    """Marching cubes of the ground-truth SDF on the grid :func:`ngp.sdf.extract.extract_mesh` uses for a
    model with box ``aabb`` -> ``(vertices [V, 3], faces [F, 3])`` in the unit cube: the best a mesh of
    that resolution can be, so its :func:`mesh_normal_angle` is the floor of a learned mesh's. Costs
    ``resolution^3`` ground-truth distances (about 80 s at 256 on two cores for the armadillo)."""
    from ngp.geometry.grids import evaluate_grid, marching_cubes

    box = np.asarray(aabb, np.float64)
    exact = lambda x: torch.as_tensor(gt(x.double().numpy()), dtype=torch.float32)  # noqa: E731
    values = evaluate_grid(exact, box[0], box[1], grid_shape(box[0], box[1], resolution))
    vertices, faces, _ = marching_cubes(values, box[0], box[1], level=0.0, inside="below")
    return vertices, faces


__all__ = [
    "angle_degrees", "cell_centres", "chamfer_distance", "exact_sdf_mesh", "field_normal_angle", "grid_iou", "iou",
    "mesh_normal_angle", "model_inside", "near_surface_agreement", "nearest_faces", "point_mesh_distance",
]
