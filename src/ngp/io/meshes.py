"""Triangle meshes: loading (OBJ, PLY, STL, OFF, glTF/GLB), normalising into the unit cube, saving.

Loading checks what would otherwise fail late and obscurely (a missing file, an unsupported format,
an empty mesh, a mesh without faces, NaN or infinite vertices) and raises :class:`MeshError` (or
``FileNotFoundError``) naming the file and the problem, before any expensive work.

Normalisation follows instant-ngp's ``Testbed::load_mesh``: the mesh's bounding box is inflated by
0.5% of its diagonal, scaled by its longest side into ``[0, 1]^3`` and centred at ``(0.5, 0.5, 0.5)``.
:class:`MeshNormalization` keeps that transform so results map back to the mesh's own units.

Example:
    >>> mesh = load_mesh("armadillo.obj")                    # vertices [V, 3], faces [F, 3]
    >>> norm = MeshNormalization.fit(mesh.vertices)
    >>> unit = norm.to_unit(mesh.vertices)                   # [V, 3] in [0, 1]^3
    >>> save_mesh("out.ply", norm.to_mesh(unit), mesh.faces)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ngp.io.files import atomic_path, check_writable_file

#: File suffixes we read, mapped to trimesh's file type.
MESH_FORMATS = {".obj": "obj", ".ply": "ply", ".stl": "stl", ".off": "off", ".glb": "glb", ".gltf": "gltf"}
#: File suffixes we write.
SAVE_FORMATS = (".ply", ".obj", ".stl", ".off", ".glb")
#: instant-ngp inflates the mesh's bounding box by this fraction of its diagonal ("wiggle room").
BOUNDS_INFLATION = 0.005


class MeshError(ValueError):
    """A mesh file cannot be used: unsupported format, unreadable, empty, no faces, NaN vertices."""


@dataclass(frozen=True)
class Mesh:
    """A triangle mesh: ``vertices`` ``[V, 3]`` float64, ``faces`` ``[F, 3]`` int64 (0-based)."""

    vertices: np.ndarray
    faces: np.ndarray

    @property
    def bounds(self) -> np.ndarray:
        """``[2, 3]``: the minimum and maximum corner."""
        return np.stack([self.vertices.min(0), self.vertices.max(0)])

    def to_trimesh(self):
        import trimesh

        return trimesh.Trimesh(self.vertices, self.faces, process=False)


def load_mesh(path: str | Path) -> Mesh:
    """Read a triangle mesh; scenes (glTF/GLB) are flattened with their node transforms applied.

    Duplicate vertices are merged (STL stores three per face) so that neighbouring faces share them.
    Raises ``FileNotFoundError`` or :class:`MeshError` with the reason.
    """
    import trimesh

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mesh file not found: {path}")
    if not path.is_file():
        raise MeshError(f"mesh path is not a file: {path}")
    suffix = path.suffix.lower()
    if suffix not in MESH_FORMATS:
        raise MeshError(
            f"unsupported mesh format {suffix or '(no suffix)'!r} for {path}; expected one of {sorted(MESH_FORMATS)}"
        )
    try:
        loaded = trimesh.load(str(path), file_type=MESH_FORMATS[suffix], process=False)
    except Exception as error:  # trimesh raises many types for a malformed file
        raise MeshError(f"cannot read mesh {path} as {suffix[1:].upper()}: {error}") from None
    if isinstance(loaded, trimesh.Scene):
        geometries = [g for g in loaded.dump() if isinstance(g, trimesh.Trimesh)] if loaded.geometry else []
        loaded = trimesh.util.concatenate(geometries) if geometries else trimesh.Trimesh()
    vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), dtype=np.int64).reshape(-1, 3)
    mesh = Mesh(vertices, faces)
    check_mesh(mesh, str(path))
    merged = trimesh.Trimesh(vertices, faces, process=False)
    merged.merge_vertices()
    return Mesh(np.asarray(merged.vertices, np.float64), np.asarray(merged.faces, np.int64))


def check_mesh(mesh: Mesh, name: str = "mesh") -> None:
    """Raise :class:`MeshError` for an empty mesh, no faces, non-finite vertices, bad indices, zero size."""
    v, f = mesh.vertices, mesh.faces
    if len(v) == 0:
        raise MeshError(f"{name}: the mesh is empty (no vertices)")
    if len(f) == 0:
        raise MeshError(f"{name}: the mesh has {len(v)} vertices but no faces; an SDF needs a surface of triangles")
    if not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).any(1).sum())
        raise MeshError(f"{name}: {bad} vertices have NaN or infinite coordinates")
    if f.min() < 0 or f.max() >= len(v):
        raise MeshError(f"{name}: face indices out of range [0, {len(v)})")
    extent = v[f.reshape(-1)].max(0) - v[f.reshape(-1)].min(0)
    if not extent.max() > 0:
        raise MeshError(f"{name}: all faces collapse to one point (zero size)")


@dataclass(frozen=True)
class MeshNormalization:
    """The similarity transform between mesh units and the unit cube: ``unit = (p - center) / scale + 0.5``.

    ``center`` ``[3]`` and ``scale`` (mesh units per unit-cube side) as instant-ngp computes them.
    """

    center: tuple[float, float, float]
    scale: float

    @staticmethod
    def fit(vertices: np.ndarray, inflation: float = BOUNDS_INFLATION) -> "MeshNormalization":
        """From ``[V, 3]`` vertices: inflate the bounding box by ``inflation * diagonal``, fit its longest side."""
        lo, hi = vertices.min(0), vertices.max(0)
        pad = inflation * float(np.linalg.norm(hi - lo))
        lo, hi = lo - pad, hi + pad
        return MeshNormalization(tuple(float(c) for c in (lo + hi) / 2), float((hi - lo).max()))

    def to_unit(self, points):
        """``[..., 3]`` mesh units -> unit cube (NumPy array or torch tensor)."""
        return (points - _like(self.center, points)) / self.scale + 0.5

    def to_mesh(self, points):
        """``[..., 3]`` unit cube -> mesh units (NumPy array or torch tensor)."""
        return (points - 0.5) * self.scale + _like(self.center, points)

    def to_dict(self) -> dict[str, Any]:
        return {"center": list(self.center), "scale": self.scale}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> "MeshNormalization":
        return MeshNormalization(tuple(float(c) for c in data["center"]), float(data["scale"]))


def _like(values, reference):
    if isinstance(reference, np.ndarray):
        return np.asarray(values, dtype=reference.dtype)
    import torch

    return torch.as_tensor(values, dtype=reference.dtype, device=reference.device)


def normalize_mesh(mesh: Mesh) -> tuple[Mesh, MeshNormalization]:
    """``mesh`` scaled into the unit cube, and the transform that did it."""
    norm = MeshNormalization.fit(mesh.vertices)
    return Mesh(norm.to_unit(mesh.vertices), mesh.faces), norm


def save_mesh(path: str | Path, vertices: np.ndarray, faces: np.ndarray, vertex_normals: np.ndarray | None = None) -> Path:
    """Write ``vertices`` ``[V, 3]`` and ``faces`` ``[F, 3]`` atomically; the format follows the suffix."""
    import trimesh

    path = Path(path)
    if path.suffix.lower() not in SAVE_FORMATS:
        raise MeshError(f"cannot write mesh format {path.suffix or '(no suffix)'!r}; expected one of {SAVE_FORMATS}")
    check_writable_file(path)
    mesh = trimesh.Trimesh(np.asarray(vertices), np.asarray(faces), vertex_normals=vertex_normals, process=False)
    with atomic_path(path) as tmp:
        mesh.export(str(tmp), file_type=path.suffix.lower()[1:])
    return path


__all__ = [
    "BOUNDS_INFLATION", "MESH_FORMATS", "Mesh", "MeshError", "MeshNormalization",
    "check_mesh", "load_mesh", "normalize_mesh", "save_mesh",
]
