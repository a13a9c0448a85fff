"""instant-ngp's cascaded occupancy ("density") grid, used to skip empty space while marching rays.

Geometry
--------
``n_cascades`` grids of ``resolution^3`` cells, all centred at ``center``: cascade ``k`` is the cube of
side ``base_size * 2**k`` (in instant-ngp's normalised units the unit cube is cascade 0 and
``n_cascades = log2(aabb_scale) + 1``, so the coarsest cascade covers the whole box). Cells lying
entirely outside ``aabb`` are never occupied and never evaluated. A point is looked up in the finest
cascade that contains it. Flat cell index: ``(ix * res + iy) * res + iz`` within a cascade, so
``density.view(C, res, res, res)[k, ix, iy, iz]``.

What a cell stores (as instant-ngp)
-----------------------------------
``density`` holds an *optical thickness*: the density ``sigma`` times the smallest marching step
(``min_step_size = sqrt(3) / 1024 * base_size``, instant-ngp's ``MIN_CONE_STEPSIZE``), i.e. roughly the
alpha a sample there would get. It is a decaying running maximum over updates::

    density <- max(density * decay, max over this update's samples in the cell)

A cell is occupied when ``density > min(threshold, mean density of cascade 0)`` with ``threshold =
0.01`` (``NERF_MIN_OPTICAL_THICKNESS``): an alpha below 1% is invisible. Occupancy of a finer cascade
is also OR-ed into the coarser cascade cells covering it (instant-ngp's ``bitfield_max_pool``), so a
coarse lookup never hides fine detail. Cells marked *untrained* (never seen by a training camera, see
:meth:`OccupancyGrid.mark_untrained`) hold ``-1`` and stay empty.

Updates (instant-ngp's ``update_density_grid_nerf``)
---------------------------------------------------
Every ``update_interval`` (16) training steps: during the first ``warmup_steps`` (256) steps every cell
is evaluated once (at a random point inside it); afterwards ``sample_fraction`` (1/4) of all cells
chosen uniformly plus as many chosen among the cells whose density exceeds the threshold (instant-ngp
picks both sets the same way). instant-ngp also updates more often in its first few hundred steps (the
interval ramps from 1 to 16); here the interval is fixed, which costs fewer density evaluations on a
CPU.

Example::

    >>> grid = OccupancyGrid(aabb=torch.tensor([[-1.5, -1.5, -1.5], [2.5, 2.5, 2.5]]))  # aabb_scale 4
    >>> grid.n_cascades, grid.occupied.shape
    (3, torch.Size([3, 2097152]))
    >>> for step in range(n_steps):
    ...     grid.update(step, lambda x: field.density(x))     # no-op except every 16 steps
    ...     samples = march_rays(o, d, t_near, t_far, grid, jitter=True)
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ngp.ops.checks import all_finite
from ngp.ops.nerf import (
    DEFAULT_STEPS_PER_UNIT,
    decay_density_,
    grid_cell_index,
    grid_cell_positions,
    occupancy_from_density,
)

__all__ = ["OccupancyGrid", "NERF_MIN_OPTICAL_THICKNESS"]

#: instant-ngp: any alpha below this is invisible and culled.
NERF_MIN_OPTICAL_THICKNESS = 0.01

DensityFn = Callable[[torch.Tensor], torch.Tensor]


class OccupancyGrid(torch.nn.Module):
    """Cascaded occupancy grid (see the module docstring).

    Args:
        aabb: ``[2, 3]`` (min, max) box of the scene; or give ``aabb_scale`` (and ``center``) instead:
            ``aabb = center +- aabb_scale * base_size / 2`` (instant-ngp: center 0.5, base_size 1).
        resolution: cells per axis per cascade (instant-ngp: 128; a multiple of 4 with >1 cascade).
        n_cascades: default: just enough for the coarsest cascade to cover ``aabb``
            (``log2(aabb_scale) + 1``).
        threshold: optical-thickness threshold (0.01); the mean density of cascade 0 if lower.
        ema_decay: decay of the running maximum per update (0.95).
        center: centre of the cascades (default: the centre of ``aabb``; instant-ngp: 0.5).
        aabb_scale: see ``aabb``.
        base_size: side of cascade 0 (default 1.0, instant-ngp's unit cube; the box's largest side when
            that is smaller).
        update_interval, warmup_steps, sample_fraction: the update schedule (16, 256, 1/4).
        min_step_size: the step the optical thickness refers to, also the default marching step
            (default ``sqrt(3) / 1024 * base_size``).

    Buffers (all in ``state_dict``): ``density`` float32 ``[C, res^3]``, ``occupied`` bool ``[C, res^3]``,
    ``mean_density`` float32 ``[]``, ``n_updates`` int64 ``[]``, ``aabb`` float32 ``[2, 3]``.
    """

    def __init__(
        self,
        aabb: torch.Tensor | Sequence | None = None,
        resolution: int = 128,
        n_cascades: int | None = None,
        threshold: float = NERF_MIN_OPTICAL_THICKNESS,
        ema_decay: float = 0.95,
        *,
        center: Sequence[float] | None = None,
        aabb_scale: float | None = None,
        base_size: float | None = None,
        update_interval: int = 16,
        warmup_steps: int = 256,
        sample_fraction: float = 0.25,
        min_step_size: float | None = None,
    ) -> None:
        super().__init__()
        aabb_t = self._resolve_aabb(aabb, center, aabb_scale, base_size)
        sides = aabb_t[1] - aabb_t[0]
        largest = float(sides.max())
        if base_size is None:
            base_size = min(1.0, largest) if n_cascades is None else largest / 2 ** (n_cascades - 1)
        if not base_size > 0:
            raise ValueError(f"base_size must be > 0, got {base_size}")
        if n_cascades is None:
            n_cascades = max(1, math.ceil(math.log2(largest / base_size) - 1e-9) + 1)
        if n_cascades < 1:
            raise ValueError(f"n_cascades must be >= 1, got {n_cascades}")
        if resolution < 1 or (n_cascades > 1 and resolution % 4):
            raise ValueError(f"resolution must be >= 1 (and a multiple of 4 with several cascades), got {resolution}")
        if not 0.0 <= ema_decay <= 1.0:
            raise ValueError(f"ema_decay must be in [0, 1], got {ema_decay}")
        if update_interval < 1 or not 0.0 < sample_fraction <= 1.0:
            raise ValueError(f"need update_interval >= 1 and 0 < sample_fraction <= 1, got {update_interval}, "
                             f"{sample_fraction}")
        self.center = tuple(float(c) for c in (aabb_t[0] + aabb_t[1]) / 2) if center is None else \
            tuple(float(c) for c in center)
        self.base_size = float(base_size)
        self.resolution = int(resolution)
        self.threshold = float(threshold)
        self.ema_decay = float(ema_decay)
        self.update_interval = int(update_interval)
        self.warmup_steps = int(warmup_steps)
        self.sample_fraction = float(sample_fraction)
        self.min_step_size = float(min_step_size) if min_step_size is not None else \
            math.sqrt(3.0) / DEFAULT_STEPS_PER_UNIT * self.base_size
        cells = self.resolution**3
        self.register_buffer("aabb", aabb_t.to(torch.float32))
        self.register_buffer("density", torch.zeros(n_cascades, cells))
        self.register_buffer("valid", self._valid_cells(n_cascades), persistent=False)
        self.register_buffer("occupied", self.valid.clone())
        self.register_buffer("mean_density", torch.zeros(()))
        self.register_buffer("n_updates", torch.zeros((), dtype=torch.int64))
        self._candidates: tuple[tuple[int, int], torch.Tensor] | None = None  # see _trained_cells

    # ------------------------------------------------------------------------------------------------
    # Geometry
    # ------------------------------------------------------------------------------------------------

    @staticmethod
    def _resolve_aabb(aabb, center, aabb_scale, base_size) -> torch.Tensor:
        if aabb is None:
            if aabb_scale is None:
                raise ValueError("OccupancyGrid needs either aabb [2, 3] or aabb_scale (and center)")
            c = torch.tensor(center if center is not None else (0.5, 0.5, 0.5), dtype=torch.float64)
            half = 0.5 * float(aabb_scale) * (1.0 if base_size is None else float(base_size))
            aabb_t = torch.stack([c - half, c + half])
        else:
            aabb_t = torch.as_tensor(aabb, dtype=torch.float64).detach().cpu()
        if aabb_t.shape != (2, 3):
            raise ValueError(f"aabb must be [2, 3] (min, max), got {tuple(aabb_t.shape)}")
        if not torch.isfinite(aabb_t).all() or not (aabb_t[1] > aabb_t[0]).all():
            raise ValueError(f"aabb must be finite with max > min on every axis, got {aabb_t.tolist()}")
        return aabb_t

    @property
    def n_cascades(self) -> int:
        return int(self.density.shape[0])

    @property
    def max_step_size(self) -> float:
        """Largest marching step: the diagonal of a coarsest-cascade cell (instant-ngp's cap)."""
        return math.sqrt(3.0) * self.cell_size(self.n_cascades - 1)

    def cell_size(self, cascade: int) -> float:
        """Side of a cell of ``cascade`` in world units."""
        return self.base_size * 2.0**cascade / self.resolution

    def _axis_edges(self, cascade: int, device=None) -> torch.Tensor:
        """``[3, res + 1]`` world coordinates of the cell boundaries of ``cascade`` along x, y, z."""
        c = torch.tensor(self.center, dtype=torch.float64, device=device)
        u = torch.arange(self.resolution + 1, dtype=torch.float64, device=device) / self.resolution - 0.5
        return c[:, None] + u[None, :] * (self.base_size * 2.0**cascade)

    def _valid_cells(self, n_cascades: int) -> torch.Tensor:
        lo, hi = self.aabb.to(torch.float64)
        res = self.resolution
        masks = []
        for k in range(n_cascades):
            edges = self._axis_edges(k)
            axis_ok = (edges[:, :-1] < hi[:, None]) & (edges[:, 1:] > lo[:, None])  # [3, res]
            m = axis_ok[0][:, None, None] & axis_ok[1][None, :, None] & axis_ok[2][None, None, :]
            masks.append(m.reshape(res**3))
        return torch.stack(masks)

    def cell_positions(self, flat: torch.Tensor, jitter: torch.Tensor | None = None) -> torch.Tensor:
        """World positions ``[N, 3]`` float32 inside cells ``flat [N]`` (indices into ``occupied.view(-1)``):
        at ``jitter [N, 3]`` in ``[0, 1)^3`` within each cell (default: the centre), clamped to ``aabb``
        (:func:`ngp.ops.nerf.grid_cell_positions`)."""
        return grid_cell_positions(flat, self, jitter, self.aabb)

    # ------------------------------------------------------------------------------------------------
    # Queries
    # ------------------------------------------------------------------------------------------------

    def is_occupied(self, positions: torch.Tensor, dt: torch.Tensor | None = None) -> torch.Tensor:
        """``bool [N]``: whether each point ``[N, 3]`` lies in an occupied cell (of the finest cascade
        containing it, or the cascade matching a step ``dt [N]``); False outside every cascade."""
        idx = grid_cell_index(positions, self, dt)
        return self.occupied.reshape(-1)[idx.clamp_min(0)] & (idx >= 0)

    @property
    def occupancy_fraction(self) -> float:
        """Fraction of the valid cells that are occupied."""
        return float(self.occupied.sum()) / max(1, int(self.valid.sum()))

    # ------------------------------------------------------------------------------------------------
    # Updates
    # ------------------------------------------------------------------------------------------------

    def mark_all(self) -> None:
        """Mark every cell inside the box occupied (the initial state; disables skipping until the next
        update)."""
        self.occupied.copy_(self.valid)

    def should_update(self, step: int) -> bool:
        return step % self.update_interval == 0

    def _density_key(self) -> tuple[int, int]:
        """Changes whenever ``density`` is written in place or replaced: its storage and version counter
        (which every in-place torch operation on it, or on a view of it, bumps)."""
        return self.density.data_ptr(), self.density._version

    def _trained_cells(self) -> torch.Tensor:
        """Flat indices of the cells an update may evaluate (inside the box, not marked untrained).
        The set changes only where cells are marked untrained or a state is loaded (an update keeps a
        density's sign), so it is kept between updates (fox's 6.3M cells: a ``nonzero`` of 8 ms) and
        rebuilt when ``density`` was written since this grid's last update (:meth:`_density_key`).
        Counting the untrained cells to notice such writes cost fox 10 ms per update (measured)."""
        if self._candidates is None or self._candidates[0] != self._density_key():
            trained = self.valid.reshape(-1) & (self.density.reshape(-1) >= 0)
            self._candidates = (self._density_key(), torch.nonzero(trained).squeeze(1))
        return self._candidates[1]

    def _sample_cells(self, step: int, generator: torch.Generator | None) -> torch.Tensor:
        device = self.density.device
        density = self.density.reshape(-1)
        candidates = self._trained_cells()
        if step < self.warmup_steps or candidates.numel() == 0:
            return candidates
        n = max(1, int(self.sample_fraction * density.numel()))
        pick = torch.randint(candidates.numel(), (n,), generator=generator, device="cpu").to(device)
        uniform = candidates[pick]
        dense = torch.nonzero(self.valid.reshape(-1) & (density > self.threshold)).squeeze(1)
        if dense.numel() == 0:
            return uniform
        pick = torch.randint(dense.numel(), (n,), generator=generator, device="cpu").to(device)
        return torch.cat([uniform, dense[pick]])

    @torch.no_grad()
    def update(
        self,
        step: int,
        density_fn: DensityFn,
        *,
        force: bool = False,
        generator: torch.Generator | None = None,
        chunk_size: int = 1 << 18,
    ) -> bool:
        """Refresh the grid from ``density_fn`` if ``step`` is an update step (or ``force``).

        Args:
            step: the training step (updates happen when ``step % update_interval == 0``).
            density_fn: world positions ``[N, 3]`` float32 -> densities ``sigma [N]`` (or ``[N, 1]``), >= 0.
            force: update regardless of ``step``.
            generator: random source for the cell choice and the jitter (CPU generator).
            chunk_size: points per ``density_fn`` call.

        Returns:
            Whether the grid was updated.
        """
        if not (force or self.should_update(step)):
            return False
        cells = self._sample_cells(step, generator)
        flat = self.density.reshape(-1)
        # max(density * decay, this update's samples): decay first, then take the samples' maximum in
        # place. Untrained cells (-1) keep their value, cells outside the box stay 0, and neither is
        # ever sampled.
        decay_density_(flat, self.ema_decay)
        for chunk in cells.split(chunk_size):  # bounded memory: res^3 * n_cascades can be 10M cells
            jitter = torch.rand(chunk.numel(), 3, generator=generator).to(chunk.device)
            sigmas = self._evaluate(density_fn, self.cell_positions(chunk, jitter))
            flat.scatter_reduce_(0, chunk, sigmas.clamp_min(0.0) * self.min_step_size, reduce="amax")
        if self._candidates is not None:  # this update's writes keep every density's sign: the same cells
            self._candidates = (self._density_key(), self._candidates[1])
        self.n_updates += 1
        self.refresh_occupancy()
        return True

    @staticmethod
    def _evaluate(density_fn: DensityFn, positions: torch.Tensor) -> torch.Tensor:
        sigma = density_fn(positions)
        if sigma.ndim == 2 and sigma.shape[1] == 1:
            sigma = sigma[:, 0]
        if sigma.shape != (positions.shape[0],):
            raise ValueError(f"density_fn must map [N, 3] positions to [N] densities, got {tuple(sigma.shape)} "
                             f"for N = {positions.shape[0]}")
        sigma = sigma.detach().to(torch.float32)
        if not all_finite(sigma):
            raise ValueError("density_fn returned NaN or infinite densities")
        return sigma

    def refresh_occupancy(self) -> None:
        """Recompute ``occupied`` (and ``mean_density``) from ``density``: threshold, then OR each cascade
        into the centre of the next coarser one."""
        valid0 = self.valid[0]
        n_valid0 = int(valid0.sum())
        # a masked sum, not density[0][valid0] (a boolean index: a nonzero and a gather)
        mean = torch.where(valid0, self.density[0].clamp_min(0), 0.0).sum() / n_valid0 if n_valid0 else \
            self.density.new_zeros(())
        self.mean_density.copy_(mean)
        thresh = min(self.threshold, float(mean))
        self.occupied.copy_(occupancy_from_density(self.density, self.valid, thresh))

    @torch.no_grad()
    def mark_untrained(self, cameras, near: float = 0.0) -> int:
        """Mark the cells no training camera sees as untrained (density -1, never occupied), as
        instant-ngp's ``mark_untrained_density_grid``: a cell is seen when one of its 8 corners lies in
        front of a camera and projects inside its image (pinhole; lens distortion ignored).

        Args:
            cameras: an :class:`ngp.geometry.cameras.Cameras` (or anything with ``c2w [n, 3, 4]`` in the
                OpenGL camera convention, ``fx, fy, cx, cy, width, height [n]``).
            near: corners closer than this to a camera do not count.

        Returns:
            The number of valid cells marked untrained.
        """
        res = self.resolution
        device = self.density.device
        c2w = cameras.c2w.to(device=device, dtype=torch.float32)
        intr = [getattr(cameras, k).to(device=device, dtype=torch.float32) for k in ("fx", "fy", "cx", "cy",
                                                                                      "width", "height")]
        seen_cells = []
        for k in range(self.n_cascades):
            edges = self._axis_edges(k, device).to(torch.float32)
            corners = torch.stack(torch.meshgrid(edges[0], edges[1], edges[2], indexing="ij"), -1).reshape(-1, 3)
            seen = torch.zeros(corners.shape[0], dtype=torch.bool, device=device)
            unseen = torch.arange(corners.shape[0], device=device)
            for i in range(c2w.shape[0]):  # each camera only tests the corners no camera saw yet
                hit = self._corners_seen(corners[unseen], c2w[i], *(v[i] for v in intr), near)
                seen[unseen[hit]] = True
                unseen = unseen[~hit]
                if unseen.numel() == 0:
                    break
            s = seen.view(res + 1, res + 1, res + 1)
            cell_seen = torch.zeros(res, res, res, dtype=torch.bool, device=device)
            for dx in (0, 1):
                for dy in (0, 1):
                    for dz in (0, 1):
                        cell_seen |= s[dx:dx + res, dy:dy + res, dz:dz + res]
            seen_cells.append(cell_seen.reshape(-1))
        seen_all = torch.stack(seen_cells)
        density = self.density
        density.copy_(torch.where(seen_all, density.clamp_min(0), torch.full_like(density, -1.0)))
        density.masked_fill_(~self.valid, 0.0)
        self._candidates = None
        self.refresh_occupancy()
        return int((~seen_all & self.valid).sum())

    @staticmethod
    def _corners_seen(points, c2w, fx, fy, cx, cy, width, height, near):
        rel = points - c2w[:, 3]
        cam = rel @ c2w[:, :3]  # world -> camera axes (columns of R are the camera axes)
        depth = -cam[:, 2]  # OpenGL: the camera looks down -z
        dist = rel.norm(dim=-1)
        front = (depth > 1e-4 * dist) & (dist > near)
        safe = torch.where(front, depth, torch.ones_like(depth))
        u = cx + fx * cam[:, 0] / safe
        v = cy - fy * cam[:, 1] / safe  # image rows run down, camera y up
        return front & (u > 0) & (u < width) & (v > 0) & (v < height)

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._candidates = None  # the loaded densities may mark other cells untrained

    def extra_repr(self) -> str:
        return (f"center={self.center}, base_size={self.base_size}, resolution={self.resolution}, "
                f"n_cascades={self.n_cascades}, threshold={self.threshold}, ema_decay={self.ema_decay}")
