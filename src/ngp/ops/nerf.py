"""NeRF ray operations (a small nerfacc-style toolbox): box intersection, occupancy-grid marching,
volume compositing.

Samples are *packed* (nerfacc's layout): ``S`` samples of ``R`` rays stored flat, sorted by ray; the
samples of ray ``r`` are ``ray_offsets[r]:ray_offsets[r + 1]`` and ``ray_indices[s]`` is the ray of
sample ``s``. The exact definitions (stepping, cascades, compositing) are in
:mod:`ngp.kernels.reference.nerf`.

Typical use (one training step)::

    >>> t_near, t_far, hit = ray_aabb_intersect(origins, directions, aabb)
    >>> samples = march_rays(origins, directions, t_near, t_far, grid, jitter=generator)
    >>> sigmas, rgbs = field(samples.positions, samples.directions)          # [S], [S, 3]
    >>> out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends,
    ...                 samples.ray_indices, samples.ray_offsets, background=bg)
    >>> loss = ((out.color - target) ** 2).mean(); loss.backward()

Backends (``ngp.ops.backend.backend_for``): ``reference`` runs the plain-PyTorch definitions (composite
through autograd), ``numba`` / ``triton`` run the compiled kernels of :mod:`ngp.kernels.cpu.nerf` /
``ngp.kernels.triton.nerf`` (the composite as the custom op ``ngp::nerf_composite`` with a closed-form
backward). A compiled kernel module provides, on torch tensors of one device:

* ``march_rays(origins [R,3], directions [R,3], t_near [R], t_far [R], first_offsets [R],
  occupied uint8 [C, res^3], center (x, y, z), base_size, resolution, min_step, max_step, cone_angle,
  max_samples) -> (positions [S,3], ts [S], t_starts [S], t_ends [S], ray_indices [S] int64,
  ray_offsets [R+1] int64)``
* ``composite_forward(sigmas [S], rgbs [S,C], t_starts [S], t_ends [S], ray_indices [S],
  ray_offsets [R+1], background [R,C], threshold) -> (color [R,C], opacity [R], depth [R], weights [S])``
* ``composite_backward(grad_color [R,C], grad_opacity [R], grad_depth [R], grad_weights [S] or [0],
  sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, color, opacity, depth,
  threshold) -> (grad_sigmas [S], grad_rgbs [S,C], grad_background [R,C])``
* optionally ``render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, ray_offsets,
  threshold, transmittance_start [R] or None) -> weights [S]``, without gradients, and the occupancy
  grid's ``decay_density_(density, decay)`` and ``occupancy_from_density(density [C, res^3], valid,
  threshold) -> bool [C, res^3]`` (the reference runs where a family has none)

with exactly the semantics of the same-named functions of :mod:`ngp.kernels.reference.nerf`.
"""

from __future__ import annotations

import importlib
import math
from typing import NamedTuple, Protocol

import torch

from ngp.kernels.reference import nerf as reference
from ngp.ops.backend import backend_for
from ngp.ops.checks import all_finite

__all__ = [
    "RaySamples",
    "CompositeResult",
    "ray_aabb_intersect",
    "march_rays",
    "composite",
    "render_weight_from_density",
    "accumulate_along_rays",
    "grid_cell_index",
    "grid_cell_positions",
    "sort_by_ray",
    "samples_in_front",
    "decay_density_",
    "occupancy_from_density",
    "DEFAULT_STEPS_PER_UNIT",
]

#: instant-ngp's NERF_STEPS: the finest step is ``sqrt(3) / 1024`` of the unit cube (cascade 0).
DEFAULT_STEPS_PER_UNIT = 1024

#: Kernel module per backend; plugging in a new family is one line here.
_KERNEL_MODULES = {"reference": "ngp.kernels.reference.nerf", "numba": "ngp.kernels.cpu.nerf",
                   "triton": "ngp.kernels.triton.nerf"}


def _kernels(device: torch.device):
    return importlib.import_module(_KERNEL_MODULES[backend_for(device)])


class OccupancyGridLike(Protocol):
    """What :func:`march_rays` reads from a grid (:class:`ngp.nerf.occupancy.OccupancyGrid` has it)."""

    occupied: torch.Tensor  # bool [C, res^3]
    center: tuple[float, float, float]
    base_size: float
    resolution: int
    min_step_size: float
    max_step_size: float


class RaySamples(NamedTuple):
    """Packed samples along rays (sorted by ray, front to back within a ray); not differentiable.

    Attributes:
        positions: ``[S, 3]`` world positions ``origin + ts * direction``.
        directions: ``[S, 3]`` the ray direction of each sample.
        ts: ``[S]`` distance of the sample position along its ray.
        t_starts, t_ends: ``[S]`` the interval the sample stands for (``deltas = t_ends - t_starts``).
        ray_indices: ``int64 [S]`` ray of each sample.
        ray_offsets: ``int64 [R + 1]`` samples of ray ``r`` are ``ray_offsets[r]:ray_offsets[r + 1]``.
    """

    positions: torch.Tensor
    directions: torch.Tensor
    ts: torch.Tensor
    t_starts: torch.Tensor
    t_ends: torch.Tensor
    ray_indices: torch.Tensor
    ray_offsets: torch.Tensor

    @property
    def deltas(self) -> torch.Tensor:
        """``[S]`` interval lengths."""
        return self.t_ends - self.t_starts

    @property
    def n_samples(self) -> int:
        return int(self.ray_indices.shape[0])

    @property
    def n_rays(self) -> int:
        return int(self.ray_offsets.shape[0] - 1)

    @property
    def samples_per_ray(self) -> torch.Tensor:
        """``int64 [R]`` number of samples of each ray."""
        return self.ray_offsets[1:] - self.ray_offsets[:-1]


class CompositeResult(NamedTuple):
    """Output of :func:`composite`: ``color [R, C], opacity [R], depth [R], weights [S]``."""

    color: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    weights: torch.Tensor


# ----------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------


def _check_rays(origins: torch.Tensor, directions: torch.Tensor) -> None:
    if origins.ndim != 2 or origins.shape[-1] != 3:
        raise ValueError(f"origins must be [R, 3], got {tuple(origins.shape)}")
    if directions.shape != origins.shape:
        raise ValueError(f"directions must match origins {tuple(origins.shape)}, got {tuple(directions.shape)}")
    if not origins.is_floating_point() or not directions.is_floating_point():
        raise TypeError("origins and directions must be floating-point tensors")
    if not (all_finite(origins) and all_finite(directions)):
        raise ValueError("origins/directions contain NaN or infinite values")


def _check_packed(n_samples: int, ray_indices: torch.Tensor, ray_offsets: torch.Tensor, **per_sample) -> None:
    if ray_indices.shape != (n_samples,) or ray_indices.dtype != torch.int64:
        raise ValueError(f"ray_indices must be int64 [{n_samples}], got {ray_indices.dtype} {tuple(ray_indices.shape)}")
    _check_offsets(n_samples, ray_offsets, **per_sample)


def _check_offsets(n_samples: int, ray_offsets: torch.Tensor, **per_sample) -> None:
    if ray_offsets.ndim != 1 or ray_offsets.shape[0] < 1 or ray_offsets.dtype != torch.int64:
        raise ValueError(f"ray_offsets must be int64 [R + 1], got {ray_offsets.dtype} {tuple(ray_offsets.shape)}")
    for name, t in per_sample.items():
        if t.shape[0] != n_samples:
            raise ValueError(f"{name} must have {n_samples} samples (rows), got {tuple(t.shape)}")
    if ray_offsets.numel() and int(ray_offsets[-1]) != n_samples:
        raise ValueError(f"ray_offsets[-1] = {int(ray_offsets[-1])} but there are {n_samples} samples")


# ----------------------------------------------------------------------------------------------------
# Ray / box
# ----------------------------------------------------------------------------------------------------


def ray_aabb_intersect(
    origins: torch.Tensor, directions: torch.Tensor, aabb: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where rays enter and leave an axis-aligned box.

    Args:
        origins: ``[R, 3]`` ray origins.
        directions: ``[R, 3]`` ray directions (``t`` is measured in units of their length).
        aabb: ``[2, 3]`` (min corner, max corner).

    Returns:
        ``t_near [R]`` (clamped at 0 for rays starting inside), ``t_far [R]``, ``hit [R]`` bool
        (``t_far > t_near``; a zero-length graze is a miss). Misses have ``t_near = t_far = 0``.

    Example::

        >>> o = torch.tensor([[-1.0, 0.5, 0.5]]); d = torch.tensor([[1.0, 0.0, 0.0]])
        >>> ray_aabb_intersect(o, d, torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]))
        (tensor([1.]), tensor([2.]), tensor([True]))
    """
    _check_rays(origins, directions)
    aabb = torch.as_tensor(aabb, dtype=origins.dtype, device=origins.device)
    if aabb.shape != (2, 3):
        raise ValueError(f"aabb must be [2, 3] (min, max), got {tuple(aabb.shape)}")
    return reference.ray_aabb_intersect(origins, directions, aabb)


# ----------------------------------------------------------------------------------------------------
# Marching
# ----------------------------------------------------------------------------------------------------


def _first_offsets(n_rays: int, jitter, device, dtype) -> torch.Tensor:
    if jitter is False or jitter is None:
        return torch.full((n_rays,), 0.5, dtype=dtype, device=device)
    generator = jitter if isinstance(jitter, torch.Generator) else None
    if generator is not None and generator.device != device:
        return torch.rand(n_rays, generator=generator, dtype=dtype, device=generator.device).to(device)
    return torch.rand(n_rays, generator=generator, dtype=dtype, device=device)


def march_rays(
    origins: torch.Tensor,
    directions: torch.Tensor,
    t_near: torch.Tensor,
    t_far: torch.Tensor,
    grid: OccupancyGridLike | None,
    step_size: float | None = None,
    cone_angle: float = 0.0,
    max_samples_per_ray: int = 1024,
    jitter: bool | torch.Generator = False,
    max_step_size: float | None = None,
    sample_directions: bool = True,
) -> RaySamples:
    """Sample rays through the occupied cells of a cascaded occupancy grid, as instant-ngp marches.

    The step is ``dt = clamp(t * cone_angle, step_size, max_step_size)`` (constant when
    ``cone_angle == 0``; instant-ngp uses ``1/256`` for scenes larger than the unit cube). Empty cells
    are skipped by jumping to their exit along the ray (in the cascade the sample is looked up in),
    keeping the samples on the same lattice of steps. Without jitter the samples sit at
    ``t_near + (k + 0.5) dt`` (constant steps) and the intervals ``[t_starts, t_ends]`` tile the occupied
    part of ``[t_near, t_far]``; with jitter the first sample is at ``t_near + u dt``, ``u ~ U[0, 1)``
    per ray (training). See :mod:`ngp.kernels.reference.nerf` for the exact definition.

    Args:
        origins, directions: ``[R, 3]`` rays; directions must be unit length.
        t_near, t_far: ``[R]`` the segment to sample (e.g. from :func:`ray_aabb_intersect`).
        grid: an :class:`~ngp.nerf.occupancy.OccupancyGrid` (or anything with its ``occupied``,
            ``center``, ``base_size``, ``resolution``, ``min_step_size``, ``max_step_size``), or ``None``
            to sample the whole segment (then ``step_size`` is required).
        step_size: smallest step; default ``grid.min_step_size`` = ``sqrt(3) / 1024 * base_size``
            (instant-ngp's, where the unit cube is cascade 0).
        cone_angle: relative step growth with distance (0: constant steps).
        max_samples_per_ray: samples beyond this many per ray are dropped (instant-ngp: 1024).
        jitter: ``False`` (deterministic) or ``True`` / a ``torch.Generator`` for a random first offset.
        max_step_size: largest step; default ``grid.max_step_size`` (the diagonal of a coarsest cell).
        sample_directions: ``False`` leaves ``directions`` empty (``[0, 3]``), for callers that use
            the rays' own directions with ``ray_indices`` (an ``[S, 3]`` gather saved per call).

    Returns:
        :class:`RaySamples` (``positions [S, 3]``, ``directions [S, 3]``, ``ts, t_starts, t_ends [S]``,
        ``ray_indices [S]``, ``ray_offsets [R + 1]``), in the origins' dtype.

    Example::

        >>> grid = OccupancyGrid(aabb=torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]))   # all cells occupied
        >>> t0, t1, hit = ray_aabb_intersect(o, d, grid.aabb)
        >>> s = march_rays(o, d, t0, t1, grid)
        >>> s.positions.shape, s.ray_offsets.shape
        (torch.Size([S, 3]), torch.Size([R + 1]))
    """
    _check_rays(origins, directions)
    return march_checked_rays(origins, directions, t_near, t_far, grid, step_size, cone_angle, max_samples_per_ray,
                              jitter, max_step_size, sample_directions)


def march_checked_rays(origins: torch.Tensor, directions: torch.Tensor, t_near: torch.Tensor, t_far: torch.Tensor,
                       grid: OccupancyGridLike | None, step_size: float | None = None, cone_angle: float = 0.0,
                       max_samples_per_ray: int = 1024, jitter: bool | torch.Generator = False,
                       max_step_size: float | None = None, sample_directions: bool = True) -> RaySamples:
    """:func:`march_rays` for rays that the caller has already checked (shape, dtype, finite): the
    renderers march the same rays again and again, a segment at a time, and checking them for NaN
    every round took ~25 ms of a 1.8 s lego frame."""
    n_rays = origins.shape[0]
    for name, t in (("t_near", t_near), ("t_far", t_far)):
        if t.shape != (n_rays,):
            raise ValueError(f"{name} must be [{n_rays}], got {tuple(t.shape)}")
    if max_samples_per_ray < 1:
        raise ValueError(f"max_samples_per_ray must be >= 1, got {max_samples_per_ray}")
    if cone_angle < 0:
        raise ValueError(f"cone_angle must be >= 0, got {cone_angle}")
    if grid is None:
        if step_size is None:
            raise ValueError("march_rays without a grid needs an explicit step_size")
        # One always-occupied cell as big as any scene: plain stepping, no skipping.
        occupied = torch.ones(1, 1, dtype=torch.uint8, device=origins.device)
        center, base_size, resolution = (0.0, 0.0, 0.0), 1e30, 1
        default_max = step_size * 1e6
    else:
        occupied = grid.occupied.to(origins.device)
        center = tuple(float(c) for c in grid.center)
        base_size, resolution = float(grid.base_size), int(grid.resolution)
        default_max = float(grid.max_step_size)
        if step_size is None:
            step_size = float(grid.min_step_size)
    max_step = float(max_step_size) if max_step_size is not None else max(default_max, step_size)
    if not (step_size > 0 and math.isfinite(step_size)) or max_step < step_size:
        raise ValueError(f"need 0 < step_size <= max_step_size, got {step_size}, {max_step}")
    if occupied.dtype == torch.bool and backend_for(origins.device) != "numba":
        # the Numba kernels read a bool grid as bytes themselves and want the grid's own tensor, whose
        # identity and version tell them that their block summary of it is still valid
        occupied = occupied.view(torch.uint8)

    first = _first_offsets(n_rays, jitter, origins.device, torch.float64)
    args = (origins.contiguous(), directions.contiguous(), t_near.to(origins.dtype).contiguous(),
            t_far.to(origins.dtype).contiguous(), first, occupied.contiguous(), center, base_size, resolution,
            float(step_size), max_step, float(cone_angle), int(max_samples_per_ray))
    positions, ts, t_starts, t_ends, ray_indices, ray_offsets = _kernels(origins.device).march_rays(*args)
    per_sample = directions[ray_indices] if sample_directions else directions.new_empty(0, 3)
    return RaySamples(positions, per_sample, ts, t_starts, t_ends, ray_indices, ray_offsets)


def grid_cell_index(positions: torch.Tensor, grid: OccupancyGridLike, dt: torch.Tensor | None = None) -> torch.Tensor:
    """Flat index ``int64 [N]`` into ``grid.occupied.view(-1)`` of the cell each point is looked up in
    (finest cascade containing it; coarser for steps ``dt [N]`` longer than a cell), -1 outside all.

    Example::

        >>> idx = grid_cell_index(samples.positions, grid)
        >>> occupied = grid.occupied.view(-1)[idx.clamp_min(0)] & (idx >= 0)
    """
    if positions.ndim != 2 or positions.shape[-1] != 3:
        raise ValueError(f"positions must be [N, 3], got {tuple(positions.shape)}")
    c = torch.tensor(tuple(float(v) for v in grid.center), dtype=torch.float64, device=positions.device)
    rel = (positions.to(torch.float64) - c) / float(grid.base_size)
    n_cascades = grid.occupied.shape[0]
    if dt is None:
        mip = reference.mip_from_pos(rel, n_cascades)
    else:
        mip = reference.mip_from_dt(rel, dt.to(torch.float64), float(grid.base_size), int(grid.resolution), n_cascades)
    return reference.cell_index(rel, mip, int(grid.resolution))


def samples_in_front(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor, ray_offsets: torch.Tensor,
                     log_transmittance: torch.Tensor, transmittance_threshold: float = 1e-4
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of packed rays in front of the point where each ray becomes opaque, for a
    renderer that marches rays a segment at a time and evaluates densities without gradients first.

    Args:
        sigmas, t_starts, t_ends: ``[S]`` densities and intervals of the samples (packed by ray).
        ray_offsets: ``int64 [R + 1]``, the packed layout.
        log_transmittance: ``float64 [R]``, each ray's log-transmittance in front of its first sample
            (0 for a ray's first segment).
        transmittance_threshold: a sample is kept while the transmittance in front of it is above this.

    Returns:
        ``keep`` (``int64 [K]``, ascending indices of the kept samples) and each ray's log-transmittance
        behind its last sample (``float64 [R]``), for the next segment.

    Example::

        >>> keep, log_t = samples_in_front(sigmas, s.t_starts, s.t_ends, s.ray_offsets, log_t)
        >>> going = log_t > math.log(1e-4)  # the rays worth another segment
    """
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be [S], got {tuple(sigmas.shape)}")
    _check_offsets(sigmas.shape[0], ray_offsets, t_starts=t_starts, t_ends=t_ends)
    if log_transmittance.shape != (ray_offsets.shape[0] - 1,):
        raise ValueError(f"log_transmittance must be [{ray_offsets.shape[0] - 1}] (one per ray), got "
                         f"{tuple(log_transmittance.shape)}")
    log_threshold = math.log(transmittance_threshold)
    kernels = _kernels(sigmas.device)
    if not hasattr(kernels, "samples_in_front") or sigmas.dtype != t_starts.dtype:
        return reference.samples_in_front(sigmas, t_starts, t_ends, ray_offsets, log_transmittance, log_threshold)
    return kernels.samples_in_front(sigmas, t_starts, t_ends, ray_offsets, log_transmittance, log_threshold)


def sort_by_ray(ray_indices: torch.Tensor, n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pack samples gathered out of ray order (e.g. segments marched one after another) by ray:
    ``(order [S], ray_offsets [R + 1])``, where ``ray_indices[order]`` is non-decreasing, each ray's
    samples keep their relative order (a stable sort), and ``ray_offsets`` is the packed layout's.

    Example::

        >>> order, ray_offsets = sort_by_ray(ray_indices, n_rays)
        >>> positions, ray_indices = positions[order], ray_indices[order]
    """
    if ray_indices.ndim != 1:
        raise ValueError(f"ray_indices must be [S], got {tuple(ray_indices.shape)}")
    kernels = _kernels(ray_indices.device)
    return (kernels if hasattr(kernels, "sort_by_ray") else reference).sort_by_ray(ray_indices, n_rays)


def grid_cell_positions(cells: torch.Tensor, grid: OccupancyGridLike, offsets: torch.Tensor | None = None,
                        aabb: torch.Tensor | None = None) -> torch.Tensor:
    """World positions ``float32 [N, 3]`` inside the cells ``cells`` (``int64 [N]``, flat indices into
    ``grid.occupied.view(-1)``, as :func:`grid_cell_index` gives): at ``offsets`` (``[N, 3]`` in
    ``[0, 1)^3`` within each cell, e.g. random jitter; default: the cells' centres), clamped to ``aabb``
    (``[2, 3]`` min and max corners) when given. An occupancy-grid update evaluates the density there.

    Example::

        >>> cells = torch.randint(grid.occupied.numel(), (1024,))
        >>> sigmas = field.density(grid_cell_positions(cells, grid, torch.rand(1024, 3), grid.aabb))
    """
    if cells.ndim != 1:
        raise ValueError(f"cells must be [N], got {tuple(cells.shape)}")
    if offsets is not None and offsets.shape != (cells.shape[0], 3):
        raise ValueError(f"offsets must be [{cells.shape[0]}, 3] (one per cell), got {tuple(offsets.shape)}")
    device, res, n_cascades = cells.device, int(grid.resolution), grid.occupied.shape[0]
    sizes = torch.tensor([float(grid.base_size) * 2.0**k / res for k in range(n_cascades)], device=device)
    center = torch.tensor(tuple(float(v) for v in grid.center), dtype=torch.float32, device=device)
    corners = center - 0.5 * res * sizes[:, None]  # each cascade's lowest corner
    offsets = torch.full((1, 3), 0.5, device=device) if offsets is None else offsets.to(torch.float32)
    lo, hi = (torch.full((3,), -math.inf, device=device), torch.full((3,), math.inf, device=device)) if aabb is None \
        else (aabb[0].to(torch.float32), aabb[1].to(torch.float32))
    kernels = _kernels(device)
    compute = kernels.cell_positions if hasattr(kernels, "cell_positions") else reference.cell_positions
    return compute(cells, offsets, res, sizes, corners, lo, hi)


def _grid_kernel(name: str, density: torch.Tensor, *others: torch.Tensor):
    """The compiled kernel ``name`` for these grid tensors, or the reference's: the kernels take
    contiguous float32 densities and bool masks."""
    kernels = _kernels(density.device)
    plain = density.dtype == torch.float32 and density.is_contiguous() and \
        all(t.dtype == torch.bool and t.is_contiguous() for t in others)
    return getattr(kernels, name) if plain and hasattr(kernels, name) else getattr(reference, name)


def decay_density_(density: torch.Tensor, decay: float) -> torch.Tensor:
    """Multiply the positive densities of an occupancy grid by ``decay`` in place (the update's EMA
    decay; cells marked untrained (< 0) and empty ones keep their value); returns ``density``.

    Example::

        >>> decay_density_(grid.density, 0.95)
    """
    if not density.is_floating_point():
        raise ValueError(f"density must be a float tensor, got {density.dtype}")
    return _grid_kernel("decay_density_", density)(density, float(decay))


def occupancy_from_density(density: torch.Tensor, valid: torch.Tensor, threshold: float) -> torch.Tensor:
    """The occupancy (``bool [C, res^3]``) of the cascades ``density [C, res^3]``: cells above
    ``threshold`` and ``valid``, each cascade also ORed (2x2x2 cells into one) into the middle half of
    the next coarser one, which it covers (instant-ngp's density-grid bitfield and its mips).

    Example::

        >>> grid.occupied.copy_(occupancy_from_density(grid.density, grid.valid, 0.01))
    """
    if valid.shape != density.shape or valid.dtype != torch.bool or not density.is_floating_point():
        raise ValueError(f"need a float density and a bool valid mask of one shape, got {density.dtype} "
                         f"{tuple(density.shape)} and {valid.dtype} {tuple(valid.shape)}")
    n_cells = density.shape[-1] if density.ndim == 2 else -1
    res = round(max(n_cells, 0) ** (1 / 3))
    if density.ndim != 2 or res ** 3 != n_cells or (density.shape[0] > 1 and res % 4):
        raise ValueError(f"density must be [C, res^3] (res a multiple of 4 with several cascades), got "
                         f"{tuple(density.shape)}")
    return _grid_kernel("occupancy_from_density", density, valid)(density, valid, float(threshold))


# ----------------------------------------------------------------------------------------------------
# Compositing: a custom op with a closed-form backward for the compiled backends
# ----------------------------------------------------------------------------------------------------


@torch.library.custom_op("ngp::nerf_composite", mutates_args=())
def _composite_op(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor,
    ray_offsets: torch.Tensor,
    background: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    kernels = _kernels(sigmas.device)
    return kernels.composite_forward(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, threshold)


@_composite_op.register_fake
def _(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, threshold):
    n_rays = background.shape[0]
    return (rgbs.new_empty(n_rays, rgbs.shape[1]), sigmas.new_empty(n_rays), sigmas.new_empty(n_rays),
            sigmas.new_empty(sigmas.shape[0]))


@torch.library.custom_op("ngp::nerf_composite_backward", mutates_args=())
def _composite_backward_op(
    grad_color: torch.Tensor,
    grad_opacity: torch.Tensor,
    grad_depth: torch.Tensor,
    grad_weights: torch.Tensor,
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor,
    ray_offsets: torch.Tensor,
    background: torch.Tensor,
    color: torch.Tensor,
    opacity: torch.Tensor,
    depth: torch.Tensor,
    threshold: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    kernels = _kernels(sigmas.device)
    return kernels.composite_backward(grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, t_starts,
                                      t_ends, ray_indices, ray_offsets, background, color, opacity, depth, threshold)


@_composite_backward_op.register_fake
def _(grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, t_starts, t_ends, ray_indices,
      ray_offsets, background, color, opacity, depth, threshold):
    return torch.empty_like(sigmas), torch.empty_like(rgbs), torch.empty_like(background)


def _setup_context(ctx, inputs, output):
    sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, threshold = inputs
    color, opacity, depth, _ = output
    ctx.save_for_backward(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, color, opacity, depth)
    ctx.threshold = threshold


def _backward(ctx, grad_color, grad_opacity, grad_depth, grad_weights):
    sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background, color, opacity, depth = ctx.saved_tensors
    # Outputs nobody used arrive as None; the kernels take zeros (or an empty tensor for the weights).
    grad_color = torch.zeros_like(color) if grad_color is None else grad_color.contiguous()
    grad_opacity = torch.zeros_like(opacity) if grad_opacity is None else grad_opacity.contiguous()
    grad_depth = torch.zeros_like(depth) if grad_depth is None else grad_depth.contiguous()
    grad_weights = sigmas.new_empty(0) if grad_weights is None else grad_weights.contiguous()
    grad_sigmas, grad_rgbs, grad_background = _composite_backward_op(
        grad_color, grad_opacity, grad_depth, grad_weights, sigmas, rgbs, t_starts, t_ends, ray_indices,
        ray_offsets, background, color, opacity, depth, ctx.threshold)
    return grad_sigmas, grad_rgbs, None, None, None, None, grad_background, None


_composite_op.register_autograd(_backward, setup_context=_setup_context)


def composite(
    sigmas: torch.Tensor,
    rgbs: torch.Tensor,
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    ray_indices: torch.Tensor,
    ray_offsets: torch.Tensor,
    background: torch.Tensor | None = None,
    transmittance_threshold: float = 1e-4,
) -> CompositeResult:
    """Volume-render packed samples (front to back, with early ray termination).

    ``alpha_i = 1 - exp(-sigma_i (t_end_i - t_start_i))``, ``T_i = prod_{j<i} (1 - alpha_j)`` within the
    ray, ``w_i = T_i alpha_i``; samples with ``T_i < transmittance_threshold`` get ``w_i = 0`` (the ray
    has terminated, as instant-ngp's ``T < 1e-4`` break). Then ``opacity = sum w``,
    ``color = sum w c + (1 - opacity) background``, ``depth = sum w (t_start + t_end) / 2`` (not divided
    by the opacity: ``depth / opacity`` is the expected depth of the visible part).

    Differentiable with respect to ``sigmas``, ``rgbs`` and ``background`` (not the intervals).

    Args:
        sigmas: ``[S]`` densities (>= 0).
        rgbs: ``[S, C]`` colours (any number of channels).
        t_starts, t_ends: ``[S]`` sample intervals.
        ray_indices: ``int64 [S]``; ray_offsets: ``int64 [R + 1]`` (see :class:`RaySamples`).
        background: ``[R, C]``, ``[C]`` or ``None`` (black).
        transmittance_threshold: early-termination threshold on ``T``.

    Returns:
        :class:`CompositeResult` ``(color [R, C], opacity [R], depth [R], weights [S])``.

    Example::

        >>> out = composite(sigmas, rgbs, s.t_starts, s.t_ends, s.ray_indices, s.ray_offsets,
        ...                 background=torch.ones(3))
        >>> out.color.shape, bool((out.opacity <= 1).all())
        (torch.Size([R, 3]), True)
    """
    if sigmas.ndim != 1:
        raise ValueError(f"sigmas must be [S], got {tuple(sigmas.shape)}")
    if rgbs.ndim != 2:
        raise ValueError(f"rgbs must be [S, C], got {tuple(rgbs.shape)}")
    n_samples, n_channels = rgbs.shape
    _check_packed(sigmas.shape[0], ray_indices, ray_offsets, rgbs=rgbs, t_starts=t_starts, t_ends=t_ends)
    n_rays = ray_offsets.shape[0] - 1
    dtype = rgbs.dtype
    if background is None:
        background = rgbs.new_zeros(n_rays, n_channels)
    else:
        background = torch.as_tensor(background, device=rgbs.device).to(dtype)
        if background.shape not in ((n_channels,), (n_rays, n_channels)):
            raise ValueError(f"background must be [{n_channels}] or [{n_rays}, {n_channels}], got "
                             f"{tuple(background.shape)}")
        background = background.expand(n_rays, n_channels)
    t_starts, t_ends = t_starts.detach().to(dtype), t_ends.detach().to(dtype)
    sigmas = sigmas.to(dtype)
    if backend_for(sigmas.device) == "reference":
        out = reference.composite(sigmas, rgbs, t_starts, t_ends, ray_indices, ray_offsets, background,
                                  transmittance_threshold)
    else:
        out = _composite_op(sigmas.contiguous(), rgbs.contiguous(), t_starts.contiguous(), t_ends.contiguous(),
                            ray_indices.contiguous(), ray_offsets.contiguous(), background.contiguous(),
                            float(transmittance_threshold))
    return CompositeResult(*out)


def render_weight_from_density(
    t_starts: torch.Tensor,
    t_ends: torch.Tensor,
    sigmas: torch.Tensor,
    ray_indices: torch.Tensor,
    ray_offsets: torch.Tensor,
    transmittance_threshold: float = 1e-4,
    transmittance_start: torch.Tensor | None = None,
) -> torch.Tensor:
    """Volume-rendering weights ``w_i = T_i alpha_i`` ``[S]`` (0 once ``T_i`` falls below
    ``transmittance_threshold``), as nerfacc's.

    ``transmittance_start [R]``: each ray's transmittance in front of its first sample, when the
    samples continue a ray already partly rendered (a renderer marching a segment at a time); the
    weights are then those along the whole ray. Default: 1.

    Plain PyTorch (differentiable by autograd) where gradients are wanted; without them, the backend's
    compiled kernel where it has one (Numba: one pass over the samples, a running product where the
    plain definition takes one float64 sum over all rays; equal to ~1e-9 relative in float64).

    Example::

        >>> w = render_weight_from_density(s.t_starts, s.t_ends, sigmas, s.ray_indices, s.ray_offsets)
        >>> opacity = accumulate_along_rays(w, None, s.ray_indices, s.n_rays)
    """
    _check_packed(sigmas.shape[0], ray_indices, ray_offsets, t_starts=t_starts, t_ends=t_ends)
    n_rays = ray_offsets.shape[0] - 1
    if transmittance_start is not None and transmittance_start.shape != (n_rays,):
        raise ValueError(f"transmittance_start must be [{n_rays}] (one per ray), got "
                         f"{tuple(transmittance_start.shape)}")
    kernels = _kernels(sigmas.device)
    wants_grad = torch.is_grad_enabled() and sigmas.requires_grad
    if wants_grad or not hasattr(kernels, "render_weight_from_density") or sigmas.dtype != t_starts.dtype:
        return reference.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, ray_offsets,
                                                    transmittance_threshold, transmittance_start)
    start = None if transmittance_start is None else transmittance_start.to(sigmas.dtype)
    return kernels.render_weight_from_density(t_starts, t_ends, sigmas, ray_indices, ray_offsets,
                                              float(transmittance_threshold), start)


def accumulate_along_rays(
    weights: torch.Tensor, values: torch.Tensor | None, ray_indices: torch.Tensor, n_rays: int
) -> torch.Tensor:
    """``sum_i w_i v_i`` per ray: ``weights [S]``, ``values [S, D]`` or ``None`` (sum of weights) ->
    ``[R, D]`` or ``[R]``. Differentiable.

    Example::

        >>> depth = accumulate_along_rays(w, s.ts[:, None], s.ray_indices, s.n_rays)   # [R, 1]
    """
    src = weights if values is None else weights[:, None] * values
    return reference._segment_sum(src, ray_indices, n_rays)
