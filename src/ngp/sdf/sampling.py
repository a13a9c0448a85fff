"""Training samples and ground-truth signed distances for a mesh in the unit cube.

Ground truth (:class:`MeshSDF`) is libigl's, with both search structures built once per mesh:

* the *unsigned* distance is exact: the closest point on any triangle, found with ``igl.AABB``;
* the *sign* comes from the generalised winding number (``igl.FastWindingNumberBVH``, Barnes-Hut
  approximation), ``inside = w > 0.5``; points whose approximate ``w`` is within
  :data:`AMBIGUOUS_WINDING` of 0.5 are re-evaluated with the exact winding number.

The winding number is what makes the sign robust: it needs no watertight mesh, no consistent
ray parity, no pseudonormals. For a mesh with holes it acts as if each hole were closed by the
smoothest surface spanning it (a box with one face removed is "inside" like the closed box, except
close to the missing face, where the sign follows the plane of the hole). The *distance* is still
the distance to the triangles that exist, so near a hole it is larger than for the closed shape.

Samples follow instant-ngp's ``generate_training_samples_sdf``: of a batch of ``n``, 4/8 lie exactly
on the surface (area-weighted, distance 0), 3/8 on the surface offset per axis by logistic noise of
standard deviation ``bounding_radius / 1024 * surface_offset_scale`` (``bounding_radius = sqrt(3)/2``
in the unit cube, so 8.46e-4 at scale 1), and the rest uniform in the mesh's (inflated) bounding box.

Ground truth costs time (about 2e5 points/s on two cores for the armadillo), so, like instant-ngp's
precomputed training set, :class:`SamplePool` computes a pool of off-surface samples up front and
refreshes a slice of it every step; the surface samples are free and always new.

Example:
    >>> gt = MeshSDF(vertices_unit, faces)
    >>> gt(np.array([[0.5, 0.5, 0.5]]))          # [1] signed distance, negative inside
    >>> sampler = SampleGenerator(gt, aabb, rng=np.random.default_rng(0))
    >>> points, distances = sampler.generate(2**16)   # [n, 3], [n]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ngp.io.meshes import Mesh, check_mesh

#: instant-ngp's ``m_bounding_radius``: the half-diagonal of the unit cube.
BOUNDING_RADIUS = math.sqrt(3.0) / 2.0
#: Winding numbers this close to 0.5 get an exact (slow) second evaluation.
AMBIGUOUS_WINDING = 0.25
#: ``sqrt(3) / pi``: a logistic distribution with scale ``s`` has standard deviation ``s * pi / sqrt(3)``.
LOGISTIC_SCALE = math.sqrt(3.0) / math.pi


class MeshSDF:
    """Ground-truth signed distance to a triangle mesh: ``[N, 3]`` points -> ``[N]`` (negative inside).

    Distances are in the units of ``vertices``. Build once per mesh (about 0.1 s for 100k faces).
    """

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        import igl  # libigl: AABB tree and fast winding numbers

        check_mesh(Mesh(np.asarray(vertices), np.asarray(faces)))
        self.vertices = np.ascontiguousarray(vertices, dtype=np.float64)
        self.faces = np.ascontiguousarray(faces, dtype=np.int64)
        self._igl = igl
        self._tree = igl.AABB()
        self._tree.init(self.vertices, self.faces)
        self._winding = igl.FastWindingNumberBVH()
        self._winding.init(self.vertices, self.faces, 2)

    def unsigned_distance(self, points: np.ndarray) -> np.ndarray:
        """``[N, 3]`` -> ``[N]`` exact distance to the nearest triangle."""
        points = _as_points(points)
        if not len(points):
            return np.zeros(0)
        squared, _, _ = self._tree.squared_distance(self.vertices, self.faces, points)
        return np.sqrt(squared)

    def winding_number(self, points: np.ndarray) -> np.ndarray:
        """``[N, 3]`` -> ``[N]`` generalised winding number (1 inside, 0 outside a closed mesh)."""
        points = _as_points(points)
        if not len(points):
            return np.zeros(0)
        w = self._winding.winding_number(points)
        unsure = np.abs(w - 0.5) < AMBIGUOUS_WINDING
        if unsure.any():  # rare: near the surface or holes; the exact sum settles them
            w[unsure] = self._igl.winding_number(self.vertices, self.faces, points[unsure])
        return w

    def inside(self, points: np.ndarray) -> np.ndarray:
        """``[N, 3]`` -> ``[N]`` bool, ``winding_number > 0.5``."""
        return self.winding_number(points) > 0.5

    def __call__(self, points: np.ndarray) -> np.ndarray:
        """``[N, 3]`` -> ``[N]`` signed distance, negative inside."""
        points = _as_points(points)
        distance = self.unsigned_distance(points)
        return np.where(self.inside(points), -distance, distance)


def _as_points(points) -> np.ndarray:
    points = np.ascontiguousarray(np.asarray(points, dtype=np.float64))
    if points.ndim != 2 or points.shape[1] != 3:
        raise ValueError(f"expected points of shape [N, 3], got {list(points.shape)}")
    return points


class SurfaceSampler:
    """Uniform points on a triangle mesh's surface (triangles picked by area)."""

    def __init__(self, vertices: np.ndarray, faces: np.ndarray):
        self.triangles = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]  # [F, 3, 3]
        edges = np.cross(self.triangles[:, 1] - self.triangles[:, 0], self.triangles[:, 2] - self.triangles[:, 0])
        area = 0.5 * np.linalg.norm(edges, axis=1)
        if not area.sum() > 0:
            raise ValueError("the mesh has zero surface area; cannot sample its surface")
        self.cdf = np.cumsum(area) / area.sum()
        #: ``[F, 3]`` unit face normals (right-handed winding; zero for degenerate faces).
        self.normals = edges / np.maximum(2.0 * area, 1e-300)[:, None]

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` points ``[n, 3]``."""
        return self.sample_on_faces(n, rng)[0]

    def sample_on_faces(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points ``[n, 3]`` and the faces ``[n]`` they lie on (index into the mesh's faces)."""
        index = np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), len(self.cdf) - 1)
        u, v = rng.random(n), rng.random(n)
        root = np.sqrt(u)  # uniform barycentrics: (1 - sqrt u, sqrt u (1 - v), sqrt u v)
        a, b, c = self.triangles[index, 0], self.triangles[index, 1], self.triangles[index, 2]
        return (1 - root)[:, None] * a + (root * (1 - v))[:, None] * b + (root * v)[:, None] * c, index


@dataclass(frozen=True)
class SampleCounts:
    """How a batch of ``n`` splits: instant-ngp's 4/8 exact surface, 3/8 offset surface, rest uniform."""

    surface: int
    near: int
    uniform: int

    @staticmethod
    def of(n: int) -> "SampleCounts":
        base = n // 8
        return SampleCounts(4 * base, 3 * base, n - 7 * base)


class SampleGenerator:
    """Fresh training samples with ground truth, in the unit cube.

    ``aabb`` ``[2, 3]`` bounds the uniform samples; ``surface_offset_scale`` scales the surface noise.
    """

    def __init__(self, gt: MeshSDF, aabb: np.ndarray, rng: np.random.Generator, surface_offset_scale: float = 1.0):
        self.gt = gt
        self.surface = SurfaceSampler(gt.vertices, gt.faces)
        self.aabb = np.asarray(aabb, dtype=np.float64)
        self.rng = rng
        self.sigma = BOUNDING_RADIUS / 1024.0 * surface_offset_scale

    def surface_points(self, n: int) -> np.ndarray:
        return self.surface.sample(n, self.rng)

    def near_points(self, n: int) -> np.ndarray:
        """Surface points moved by logistic noise (std ``sigma`` per axis), as instant-ngp."""
        return self.surface_points(n) + self.rng.logistic(0.0, self.sigma * LOGISTIC_SCALE, (n, 3))

    def uniform_points(self, n: int) -> np.ndarray:
        return self.rng.uniform(self.aabb[0], self.aabb[1], (n, 3))

    def generate(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` points ``[n, 3]`` and signed distances ``[n]``, in the order surface, near, uniform."""
        counts = SampleCounts.of(n)
        off = np.concatenate([self.near_points(counts.near), self.uniform_points(counts.uniform)])
        points = np.concatenate([self.surface_points(counts.surface), off])
        distances = np.concatenate([np.zeros(counts.surface), self.gt(off)])
        return points, distances


class SamplePool:
    """Precomputed off-surface samples, partly renewed every step, plus fresh surface samples.

    Holds ``size`` near-surface and uniform samples (3:1) with ground truth; :meth:`batch` draws from
    it and recomputes ``refresh`` of its entries (oldest first), so that over a long run the network
    sees ever new points while ground truth costs only ``refresh`` evaluations per step.
    """

    def __init__(self, generator: SampleGenerator, size: int, refresh: int, fill: bool = True):
        if size < 8:
            raise ValueError(f"sample pool size must be at least 8, got {size}")
        self.generator = generator
        self.n_near = size * 3 // 4
        self.n_uniform = size - self.n_near
        self.refresh = max(0, min(refresh, size))
        self._next_near, self._next_uniform = 0, 0
        self.points = np.zeros((size, 3), np.float32)
        self.distances = np.zeros(size, np.float32)
        if fill:
            near = generator.near_points(self.n_near)
            uniform = generator.uniform_points(self.n_uniform)
            self.points[:] = np.concatenate([near, uniform])
            self.distances[:] = generator.gt(np.concatenate([near, uniform]))

    def state(self) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
        """The pool's contents ``{"points": [size, 3], "distances": [size]}`` (float32) and its cursors
        (JSON): with the generator's RNG state, what continues the same sequence of batches."""
        tensors = {"points": torch.from_numpy(self.points.copy()), "distances": torch.from_numpy(self.distances.copy())}
        return tensors, {"next_near": self._next_near, "next_uniform": self._next_uniform}

    @classmethod
    def from_state(cls, generator: SampleGenerator, refresh: int, tensors, cursors) -> "SamplePool":
        """A pool as :meth:`state` saved it (no ground truth is computed)."""
        points = np.ascontiguousarray(tensors["points"].numpy(), np.float32)
        distances = np.ascontiguousarray(tensors["distances"].numpy(), np.float32)
        if points.ndim != 2 or points.shape[1] != 3 or distances.shape != (len(points),):
            raise ValueError(f"saved sample pool has shapes {list(points.shape)} and {list(distances.shape)}; "
                             "expected [N, 3] and [N]")
        pool = cls(generator, len(points), refresh, fill=False)
        pool.points[:], pool.distances[:] = points, distances
        pool._next_near, pool._next_uniform = int(cursors["next_near"]), int(cursors["next_uniform"])
        return pool

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[n, 3]`` float32 points and ``[n]`` distances; surface points first, then near, then uniform."""
        counts, rng = SampleCounts.of(n), self.generator.rng
        near = rng.integers(0, self.n_near, counts.near)
        uniform = self.n_near + rng.integers(0, self.n_uniform, counts.uniform)
        index = np.concatenate([near, uniform])
        surface = self.generator.surface_points(counts.surface).astype(np.float32)
        points = np.concatenate([surface, self.points[index]])
        distances = np.concatenate([np.zeros(counts.surface, np.float32), self.distances[index]])
        self._renew()
        return torch.from_numpy(points), torch.from_numpy(distances)

    def _renew(self) -> None:
        n_near = self.refresh * 3 // 4
        n_uniform = self.refresh - n_near
        rows_near = (self._next_near + np.arange(n_near)) % self.n_near
        rows_uniform = self.n_near + (self._next_uniform + np.arange(n_uniform)) % self.n_uniform
        new = np.concatenate([self.generator.near_points(n_near), self.generator.uniform_points(n_uniform)])
        rows = np.concatenate([rows_near, rows_uniform])
        self.points[rows] = new
        self.distances[rows] = self.generator.gt(new)
        self._next_near = (self._next_near + n_near) % self.n_near
        self._next_uniform = (self._next_uniform + n_uniform) % self.n_uniform


def mesh_aabb(vertices_unit: np.ndarray, inflation: float = 0.005) -> np.ndarray:
    """instant-ngp's ``m_aabb``: the unit-cube mesh's bounds inflated by ``inflation`` of their
    diagonal, clipped to ``[0, 1]^3``. ``[2, 3]``."""
    lo, hi = vertices_unit.min(0), vertices_unit.max(0)
    pad = inflation * float(np.linalg.norm(hi - lo))
    return np.stack([np.clip(lo - pad, 0.0, 1.0), np.clip(hi + pad, 0.0, 1.0)])


__all__ = [
    "AMBIGUOUS_WINDING", "BOUNDING_RADIUS", "MeshSDF", "SampleCounts", "SampleGenerator", "SamplePool",
    "SurfaceSampler", "mesh_aabb",
]
