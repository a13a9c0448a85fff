"""Hash collisions of a grid on a data set: per level, how many of the grid vertices the data uses
share a table entry with another one.

The paper leaves collisions to the gradients and the MLP; this says how many there are to sort out.
A vertex is *occupied* when the data looks it up: it is a corner of a cell that holds a data point
(image: pixel centres; SDF: points on the surface; NeRF: points in the occupied cells). Two occupied
vertices *collide* when they map to the same table row. Dense (1:1) levels never collide; a hashed
level with ``M`` occupied vertices and ``T`` rows would, for an ideal random hash, leave a vertex alone
with probability ``(1 - 1/T)^(M - 1)``, which gives the ``random_hash_rate`` each level is compared with.

Example:
    >>> grid = Encoding(2, {"otype": "HashGrid", "log2_hashmap_size": 14})
    >>> for level in collision_statistics(grid.layout, pixel_centres):
    ...     print(level.level, level.occupied_vertices, level.collision_rate)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ngp.kernels.reference.hashgrid import GridLayout, corner_indices, corner_offsets, lower_corners


@dataclass(frozen=True)
class LevelCollisions:
    """One level's figures (see the module doc).

    Attributes:
        level: index, 0 = coarsest.
        resolution: cells per axis.
        hashed: whether the level is hashed (else 1:1, never colliding).
        table_rows: rows the level owns.
        occupied_vertices: distinct grid vertices the data looks up.
        rows_used: distinct table rows they map to.
        colliding_vertices: occupied vertices whose row another occupied vertex also uses.
        collision_rate: ``colliding_vertices / occupied_vertices``.
        random_hash_rate: the rate an ideal random hash would give (``1 - (1 - 1/T)^(M - 1)``).
        max_vertices_per_row: the most occupied vertices sharing one row.
    """

    level: int
    resolution: int
    hashed: bool
    table_rows: int
    occupied_vertices: int
    rows_used: int
    colliding_vertices: int
    collision_rate: float
    random_hash_rate: float
    max_vertices_per_row: int

    def to_dict(self) -> dict:
        return asdict(self)


def occupied_vertices(points: torch.Tensor, layout: GridLayout, level: int, chunk: int = 2**18) -> torch.Tensor:
    """``[N, d]`` points in ``[0, 1]^d`` -> ``[M, d]`` int64: the distinct vertices of the cells holding
    them at ``level`` (the ``2^d`` corners each lookup reads), in the order of their linear index."""
    d, res = layout.n_dims, layout.resolutions[level]
    corners = corner_offsets(d)
    strides = (res + 1) ** torch.arange(d, dtype=torch.int64)
    keys = []
    for start in range(0, len(points), chunk):
        x = points[start:start + chunk].detach().to("cpu", torch.float64).clamp(0.0, 1.0)
        cell = lower_corners(x * res, res)
        keys.append(torch.unique(((cell[:, None, :] + corners[None]) * strides).sum(-1)))
    keys = torch.unique(torch.cat(keys)) if keys else torch.zeros(0, dtype=torch.int64)
    return torch.stack([(keys // strides[i]) % (res + 1) for i in range(d)], dim=-1)


def collision_statistics(layout: GridLayout, points: torch.Tensor) -> list[LevelCollisions]:
    """Per level of ``layout``, the collisions among the vertices ``points`` ``[N, d]`` occupy.

    Raises ValueError for points of the wrong shape, none at all, or non-finite coordinates.
    """
    if points.dim() != 2 or points.shape[1] != layout.n_dims:
        raise ValueError(f"expected points of shape [N, {layout.n_dims}], got {list(points.shape)}")
    if len(points) == 0:
        raise ValueError("no points given: collisions are counted on the data's points")
    if not bool(torch.isfinite(points).all()):
        raise ValueError("points contain NaN or infinite coordinates")
    levels = []
    for level in range(layout.n_levels):
        vertices = occupied_vertices(points, layout, level)
        rows = corner_indices(vertices, level, layout)
        _, counts = torch.unique(rows, return_counts=True)
        size, m = layout.offsets[level + 1] - layout.offsets[level], len(vertices)
        colliding = int(counts[counts > 1].sum())
        levels.append(LevelCollisions(
            level=level, resolution=layout.resolutions[level], hashed=layout.hashed[level], table_rows=size,
            occupied_vertices=m, rows_used=len(counts), colliding_vertices=colliding, collision_rate=colliding / m,
            random_hash_rate=(1.0 - (1.0 - 1.0 / size) ** (m - 1)) if layout.hashed[level] else 0.0,
            max_vertices_per_row=int(counts.max())))
    return levels


def format_collisions(levels: list[LevelCollisions]) -> str:
    """A table of :func:`collision_statistics`, one line per level, and the totals."""
    lines = [f"{'level':>5} {'res':>6} {'hashed':>6} {'rows':>9} {'occupied':>10} {'colliding':>10} "
             f"{'rate':>7} {'random':>7} {'max/row':>7}"]
    for s in levels:
        lines.append(f"{s.level:>5} {s.resolution:>6} {'yes' if s.hashed else 'no':>6} {s.table_rows:>9} "
                     f"{s.occupied_vertices:>10} {s.colliding_vertices:>10} {s.collision_rate:>7.2%} "
                     f"{s.random_hash_rate:>7.2%} {s.max_vertices_per_row:>7}")
    occupied = sum(s.occupied_vertices for s in levels)
    colliding = sum(s.colliding_vertices for s in levels)
    lines.append(f"all levels: {colliding} of {occupied} occupied vertices share a row ({colliding / occupied:.2%})")
    return "\n".join(lines)


__all__ = ["LevelCollisions", "collision_statistics", "format_collisions", "occupied_vertices"]
