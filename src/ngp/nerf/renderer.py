"""Volume rendering of a :class:`~ngp.nerf.field.NerfField`: rays -> march -> field -> composite.

Shared by training, evaluation and video. The ray marcher skips empty space with the occupancy
grid (instant-ngp's density grid) and the compositor stops a ray once its transmittance falls
below ``1e-4``. Step sizes follow instant-ngp: ``sqrt(3) / 1024`` of the unit cube, growing in
proportion to the distance (``dt = t * cone_angle``) for large scenes (``aabb_scale > 1``).

Example::

    >>> renderer = Renderer(field, grid, RenderSettings.for_scene(aabb_scale=1))
    >>> out = renderer.render_rays(origins, directions, background=torch.ones(3))
    >>> out.color.shape  # [R, 3]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ngp.geometry.cameras import Cameras, generate_rays
from ngp.nerf.field import NerfField
from ngp.nerf.occupancy import OccupancyGrid
from ngp.ops.nerf import RaySamples, composite, march_rays, ray_aabb_intersect

__all__ = ["RenderSettings", "RenderResult", "Renderer", "transmittance_before"]

#: instant-ngp's NERF_STEPS: the smallest step is sqrt(3) / 1024 of the unit cube.
N_STEPS = 1024


@dataclass
class RenderSettings:
    """How rays are sampled (lengths in world units, the unit cube being the NeRF-synthetic scene).

    Attributes:
        cone_angle: steps grow as ``dt = t * cone_angle`` (0 = constant steps); ``1/256`` for large
            scenes, as instant-ngp. Steps stay between the occupancy grid's ``min_step_size``
            (``sqrt(3) / 1024``) and ``max_step_size`` (a coarsest cell's diagonal).
        max_samples_per_ray: a bound on the samples of one ray.
        transmittance_threshold: a ray stops once its transmittance falls below this.
        near: samples start at least this far from the camera.
        step_size: the smallest step without an occupancy grid (tests).
    """

    cone_angle: float = 0.0
    max_samples_per_ray: int = N_STEPS
    transmittance_threshold: float = 1e-4
    near: float = 0.05
    step_size: float = math.sqrt(3) / N_STEPS

    @classmethod
    def for_scene(cls, aabb_scale: int) -> "RenderSettings":
        """instant-ngp's settings for a scene of side ``aabb_scale``."""
        return cls(cone_angle=1 / 256 if aabb_scale > 1 else 0.0)


@dataclass
class RenderResult:
    """Per ray: ``color [R, 3]``, ``opacity [R]``, ``depth [R]`` (expected distance, unnormalised);
    ``n_samples``: how many samples the field evaluated (with gradients, when training);
    ``n_marched``: how many the marcher produced (before compaction)."""

    color: torch.Tensor
    opacity: torch.Tensor
    depth: torch.Tensor
    n_samples: int
    n_marched: int = 0


def transmittance_before(sigmas: torch.Tensor, t_starts: torch.Tensor, t_ends: torch.Tensor,
                         ray_offsets: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
    """``[S]`` transmittance in front of each sample, ``exp(-sum of sigma*dt before it on its ray)``.

    Samples of a ray are contiguous (``ray_offsets [R+1]``), so one global cumulative sum minus its
    value at each ray's first sample gives the per-ray sums.
    """
    tau = (sigmas * (t_ends - t_starts)).double()  # double: the global sum runs over all rays
    inclusive = torch.cumsum(tau, 0)
    start = torch.cat([inclusive.new_zeros(1), inclusive])[ray_offsets[:-1]]
    return torch.exp(-(inclusive - tau - start[ray_indices])).float()


def _front_samples(samples: RaySamples, keep: torch.Tensor, n_rays: int) -> RaySamples:
    """The samples where ``keep [S]`` is True, order kept (rays stay contiguous). ``directions`` and
    ``ts`` are left out (empty): the renderer passes per-ray directions to the field."""
    ray_indices = samples.ray_indices[keep]
    offsets = torch.zeros(n_rays + 1, dtype=samples.ray_offsets.dtype)
    torch.cumsum(torch.bincount(ray_indices, minlength=n_rays), 0, out=offsets[1:])
    empty = samples.positions.new_empty(0)
    return RaySamples(samples.positions[keep], empty, empty, samples.t_starts[keep], samples.t_ends[keep],
                      ray_indices, offsets)


class Renderer:
    """Renders rays and images of ``field``, skipping space that ``grid`` marks empty.

    Args:
        field: the radiance field.
        grid: the occupancy grid (``None``: sample everywhere in the aabb, for tests).
        settings: sampling settings, see :class:`RenderSettings`.
    """

    def __init__(self, field: NerfField, grid: OccupancyGrid | None, settings: RenderSettings):
        self.field = field
        self.grid = grid
        self.settings = settings

    def march(self, origins: torch.Tensor, directions: torch.Tensor,
              generator: torch.Generator | None = None) -> RaySamples:
        """Samples along ``[R, 3]`` rays inside the aabb and in occupied cells; with ``generator``
        the first sample of each ray is jittered by up to one step (training)."""
        s = self.settings
        t_near, t_far, hit = ray_aabb_intersect(origins, directions, self.field.aabb)
        t_near = t_near.clamp(min=s.near)
        t_far = torch.where(hit, t_far, t_near)  # a ray that misses the box gets no samples
        with torch.no_grad():
            return march_rays(origins, directions, t_near, t_far, self.grid,
                              step_size=s.step_size if self.grid is None else None, cone_angle=s.cone_angle,
                              max_samples_per_ray=s.max_samples_per_ray,
                              jitter=generator if generator is not None else False)

    def render_rays(self, origins: torch.Tensor, directions: torch.Tensor, background: torch.Tensor,
                    generator: torch.Generator | None = None, compact: bool = False) -> RenderResult:
        """Render ``[R, 3]`` rays (unit ``directions``) over ``background`` (``[3]`` or ``[R, 3]``).

        ``compact=True`` (training) first evaluates only the density without gradients, then runs
        the full field with gradients only on samples in front of the point where the ray becomes
        opaque, as instant-ngp does: samples behind a surface cost no backward pass.
        """
        n_rays = origins.shape[0]
        samples = self.march(origins, directions, generator)
        n_marched = samples.n_samples
        if compact and n_marched:
            with torch.no_grad():  # in chunks: memory stays bounded however many samples were marched
                sigmas = torch.cat([self.field.density(p) for p in samples.positions.split(1 << 18)])
                trans = transmittance_before(sigmas, samples.t_starts, samples.t_ends,
                                             samples.ray_offsets, samples.ray_indices)
            samples = _front_samples(samples, trans > self.settings.transmittance_threshold, n_rays)
        sigmas, rgbs = self.field(samples.positions, directions, samples.ray_indices)
        out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices,
                        samples.ray_offsets, background, self.settings.transmittance_threshold)
        return RenderResult(out.color, out.opacity, out.depth, int(samples.positions.shape[0]), n_marched)

    @torch.inference_mode()
    def render_rays_inference(self, origins: torch.Tensor, directions: torch.Tensor, background: torch.Tensor,
                              segments: tuple[int, ...] = (16, 32, 64, 128)) -> RenderResult:
        """Render ``[R, 3]`` rays without gradients, marching a few samples at a time.

        Rays are marched ``segments[k]`` samples in round ``k`` (the last size repeats); after each
        round the rays that became opaque (transmittance below the threshold) or left the box are
        dropped, as instant-ngp renders. Samples behind a surface are never evaluated, and memory is
        bounded by ``R * max(segments)`` samples.
        """
        s = self.settings
        n_rays = origins.shape[0]
        color = origins.new_zeros(n_rays, 3)
        depth = origins.new_zeros(n_rays)
        trans = origins.new_ones(n_rays)
        t_near, t_far, hit = ray_aabb_intersect(origins, directions, self.field.aabb)
        t_near = t_near.clamp(min=s.near)
        marched = torch.zeros(n_rays, dtype=torch.long, device=origins.device)
        alive = (hit & (t_far > t_near)).nonzero().squeeze(1)
        n_samples, round_ = 0, 0
        while alive.numel():
            segment = segments[min(round_, len(segments) - 1)]
            samples = march_rays(origins[alive], directions[alive], t_near[alive], t_far[alive], self.grid,
                                 step_size=s.step_size if self.grid is None else None,
                                 cone_angle=s.cone_angle, max_samples_per_ray=segment)
            counts = samples.samples_per_ray
            if samples.n_samples:
                sigmas, rgbs = self.field(samples.positions, directions[alive], samples.ray_indices)
                out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices,
                                samples.ray_offsets, None, s.transmittance_threshold)
                color[alive] += trans[alive, None] * out.color
                depth[alive] += trans[alive] * out.depth
                trans[alive] *= 1.0 - out.opacity
                n_samples += samples.n_samples
            marched[alive] += counts
            more = (counts == segment) & (trans[alive] > s.transmittance_threshold) & \
                (marched[alive] < s.max_samples_per_ray)
            # continue after the last sample: the march restarts on the same lattice of steps
            t_near[alive[more]] = samples.t_ends[samples.ray_offsets[1:][more] - 1]
            alive = alive[more]
            round_ += 1
        background = torch.as_tensor(background, dtype=color.dtype, device=color.device).expand(n_rays, 3)
        return RenderResult(color + trans[:, None] * background, 1.0 - trans, depth, n_samples)

    @torch.inference_mode()
    def render_image(self, cameras: Cameras, index: int, background: torch.Tensor,
                     chunk: int | None = None) -> dict[str, torch.Tensor]:
        """Render every pixel of camera ``index`` in chunks of ``chunk`` rays (default 2^13 on a CPU,
        where larger chunks gain nothing, 2^18 on a GPU, which small launches would leave idle).

        Returns ``{"color": [H, W, 3], "opacity": [H, W], "depth": [H, W], "n_samples": int}`` on the
        CPU (depth: expected distance divided by opacity, 0 where nothing was hit), whatever device
        the field is on: rays are generated on the CPU, copied over per chunk, and the results back.
        """
        device = self.field.aabb.device
        chunk = chunk or (1 << 18 if device.type == "cuda" else 1 << 13)
        h, w = int(cameras.height[index]), int(cameras.width[index])
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pixel_xy = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5
        cam = torch.full((h * w,), index, dtype=torch.long)
        colors, opacities, depths, n_samples = [], [], [], 0
        for start in range(0, h * w, chunk):
            o, d = generate_rays(cameras, cam[start:start + chunk], pixel_xy[start:start + chunk])
            out = self.render_rays_inference(o.to(device), d.to(device), background)
            colors.append(out.color.cpu())
            opacities.append(out.opacity.cpu())
            depths.append(out.depth.cpu())
            n_samples += out.n_samples
        opacity = torch.cat(opacities).reshape(h, w)
        depth = torch.cat(depths).reshape(h, w) / opacity.clamp(min=1e-6)
        return {"color": torch.cat(colors).reshape(h, w, 3).clamp(0, 1), "opacity": opacity,
                "depth": torch.where(opacity > 1e-3, depth, torch.zeros_like(depth)),
                "n_samples": n_samples}
