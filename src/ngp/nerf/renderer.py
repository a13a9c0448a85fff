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
from ngp.nerf.field import NerfField, trunc_exp
from ngp.nerf.occupancy import OccupancyGrid
from ngp.ops.nerf import RaySamples, composite, march_rays, ray_aabb_intersect
from ngp.train.precision import native_bfloat16

__all__ = ["RenderSettings", "RenderResult", "Renderer", "inference_dtype", "transmittance_before"]

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
        inference_precision: the MLPs' precision when rendering without gradients (evaluation,
            videos, the viewer): ``auto`` is bfloat16 on a CPU with bfloat16 instructions (measured
            1.5x faster on an early lego model, renders 73 dB PSNR from float32 ones), float16 on CUDA, float32
            elsewhere; or ``float32`` / ``bfloat16`` / ``float16``. Training renders in the
            training's precision.
        color_weight_threshold: rendering without gradients evaluates the colour network only for
            samples whose weight in their pixel (transmittance x opacity) is at least this; the
            others count as black. Most samples in occupied cells are in empty space around a
            surface (weight ~0): skipping them saves most of the colour network. 0 evaluates all.
    """

    cone_angle: float = 0.0
    max_samples_per_ray: int = N_STEPS
    transmittance_threshold: float = 1e-4
    near: float = 0.05
    step_size: float = math.sqrt(3) / N_STEPS
    inference_precision: str = "auto"
    color_weight_threshold: float = 1e-4

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


def inference_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of :attr:`RenderSettings.inference_precision` on ``device`` (None: float32)."""
    if precision == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if native_bfloat16(device) else None
    dtypes = {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if precision not in dtypes:
        raise ValueError(f"inference_precision {precision!r} unknown; expected auto, {', '.join(dtypes)}")
    return dtypes[precision]


def _pack(parts: list[tuple[torch.Tensor, ...]], n_rays: int,
          like: torch.Tensor) -> tuple[RaySamples, torch.Tensor | None]:
    """Packed samples (rays contiguous, front to back) and their features from segments marched one
    after another: each part ``(positions, t_starts, t_ends, ray_indices, features)`` holds some
    rays' next samples. ``directions`` and ``ts`` are left empty."""
    empty = like.new_empty(0)
    if not parts:
        return RaySamples(like.new_empty(0, 3), empty, empty, empty, empty,
                          torch.zeros(0, dtype=torch.long, device=like.device),
                          torch.zeros(n_rays + 1, dtype=torch.long, device=like.device)), None
    positions, t_starts, t_ends, ray_indices, features = (torch.cat([p[k] for p in parts]) for k in range(5))
    if len(parts) > 1:  # a stable sort by ray keeps each ray's segments in marching order
        ray_indices, order = torch.sort(ray_indices, stable=True)
        positions, t_starts, t_ends, features = positions[order], t_starts[order], t_ends[order], features[order]
    offsets = torch.zeros(n_rays + 1, dtype=torch.long, device=like.device)
    torch.cumsum(torch.bincount(ray_indices, minlength=n_rays), 0, out=offsets[1:])
    return RaySamples(positions, empty, empty, t_starts, t_ends, ray_indices, offsets), features


class _SegmentMarch:
    """Marches ``[R, 3]`` rays a segment of samples at a time, for renderers that stop a ray once it is
    opaque: :meth:`next` marches the next ``segments[k]`` samples of the rays still going (the last
    size repeats), :meth:`advance` drops the rays that became opaque, ran out of samples or left the
    box. Later segments continue on the same lattice of steps as the first (so the samples are those
    of marching the whole ray); ``generator`` jitters the first segment's start (training).
    ``alive [A]`` are the indices of the rays the current segment's samples belong to."""

    def __init__(self, renderer: "Renderer", origins: torch.Tensor, directions: torch.Tensor,
                 segments: tuple[int, ...], generator: torch.Generator | None = None):
        s = renderer.settings
        self.renderer, self.origins, self.directions, self.segments = renderer, origins, directions, segments
        self.generator = generator
        t_near, self.t_far, hit = ray_aabb_intersect(origins, directions, renderer.field.aabb)
        self.t_near = t_near.clamp(min=s.near)
        self.marched = torch.zeros(origins.shape[0], dtype=torch.long, device=origins.device)
        self.alive = (hit & (self.t_far > self.t_near)).nonzero().squeeze(1)
        self.round = 0
        self.samples: RaySamples | None = None

    def next(self) -> RaySamples | None:
        """The next segment's samples of the rays in :attr:`alive` (None once no ray is left)."""
        if not self.alive.numel():
            return None
        s, alive = self.renderer.settings, self.alive
        self.segment = min(self.segments[min(self.round, len(self.segments) - 1)], s.max_samples_per_ray)
        jitter = self.generator if (self.generator is not None and self.round == 0) else False
        self.samples = march_rays(self.origins[alive], self.directions[alive], self.t_near[alive], self.t_far[alive],
                                  self.renderer.grid, step_size=s.step_size if self.renderer.grid is None else None,
                                  cone_angle=s.cone_angle, max_samples_per_ray=self.segment, jitter=jitter)
        return self.samples

    def advance(self, transparent: torch.Tensor) -> None:
        """Keep marching the rays of :attr:`alive` that are still ``transparent [A]`` (bool) and
        filled their segment (the others left the box or the occupied cells)."""
        samples, alive = self.samples, self.alive
        counts = samples.samples_per_ray
        self.marched[alive] += counts
        limit = self.renderer.settings.max_samples_per_ray
        more = (counts == self.segment) & transparent & (self.marched[alive] < limit)
        # continue after the last sample: the march restarts on the same lattice of steps
        self.t_near[alive[more]] = samples.t_ends[samples.ray_offsets[1:][more] - 1]
        self.alive = alive[more]
        self.round += 1


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

        ``compact=True`` (training) first finds, without gradients, the samples in front of the point
        where each ray becomes opaque (:meth:`march_in_front`), then runs the field with gradients on
        those only, as instant-ngp does: samples behind a surface cost no backward pass.
        """
        if compact:
            samples, features, n_marched = self.march_in_front(origins, directions, generator)
        else:
            samples, features = self.march(origins, directions, generator), None
            n_marched = samples.n_samples
        sigmas, rgbs = self.field(samples.positions, directions, samples.ray_indices, features=features)
        out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices,
                        samples.ray_offsets, background, self.settings.transmittance_threshold)
        return RenderResult(out.color, out.opacity, out.depth, int(samples.positions.shape[0]), n_marched)

    def march_in_front(self, origins: torch.Tensor, directions: torch.Tensor,
                       generator: torch.Generator | None = None,
                       segments: tuple[int, ...] = (16, 32, 64, 128, N_STEPS)
                       ) -> tuple[RaySamples, torch.Tensor | None, int]:
        """The samples of ``[R, 3]`` rays in front of the point where each becomes opaque, with their
        position features (the field's :meth:`~NerfField.encode`, computed without gradients with the
        current parameters) -> ``(samples, features [S, n], n_marched)``.

        Rays are marched ``segments[k]`` samples at a time (the last size repeats), as in
        :meth:`render_rays_inference`; each segment's densities are evaluated without gradients and a
        ray stops once its transmittance falls below the threshold. Marching whole rays first would
        evaluate every sample behind the surfaces too: late in a lego run 4.7x the samples kept, and
        this pre-pass took 119 ms per step instead of 58 ms (measured, 2 cores); early in training,
        when nothing is opaque yet, the three rounds cost as much as one (42 ms either way). Five
        rounds (16, 32, 64, 128, the rest) instead of three (16, 64, the rest) march 94k samples
        instead of 112k for the same 59k kept, late in a lego run: 54 ms instead of 59 ms (measured).
        ``generator`` jitters each ray's first sample (training); later segments continue on the same
        lattice of steps. ``n_marched`` counts the samples evaluated; ``features`` is None when no
        sample was marched.
        The returned samples leave ``directions`` and ``ts`` empty (the field takes per-ray directions).
        """
        s = self.settings
        n_rays = origins.shape[0]
        log_trans = torch.zeros(n_rays, dtype=torch.float64, device=origins.device)  # -sum(sigma dt) so far
        threshold = math.log(s.transmittance_threshold)
        march = _SegmentMarch(self, origins, directions, segments, generator)
        parts, n_marched = [], 0
        with torch.no_grad():
            while (samples := march.next()) is not None:
                alive = march.alive
                if samples.n_samples:
                    # in chunks: the MLP's temporaries stay bounded
                    features = torch.cat([self.field.encode(p) for p in samples.positions.split(1 << 18)])
                    sigmas = torch.cat([self.field.density_from_features(f) for f in features.split(1 << 18)])
                    tau = (sigmas * (samples.t_ends - samples.t_starts)).double()
                    inclusive = torch.cumsum(tau, 0)
                    before_segment = torch.cat([inclusive.new_zeros(1), inclusive])[samples.ray_offsets]
                    before = inclusive - tau - before_segment[samples.ray_indices]  # within the segment
                    keep = (log_trans[alive][samples.ray_indices] - before) > threshold
                    parts.append((samples.positions[keep], samples.t_starts[keep], samples.t_ends[keep],
                                  alive[samples.ray_indices[keep]], features[keep]))
                    log_trans[alive] -= before_segment[1:] - before_segment[:-1]
                    n_marched += samples.n_samples
                march.advance(log_trans[alive] > threshold)
        samples, features = _pack(parts, n_rays, origins)
        return samples, features, n_marched

    @torch.inference_mode()
    def render_rays_inference(self, origins: torch.Tensor, directions: torch.Tensor, background: torch.Tensor,
                              segments: tuple[int, ...] = (16, 32, 64, 128)) -> RenderResult:
        """Render ``[R, 3]`` rays without gradients, marching a few samples at a time.

        Rays are marched ``segments[k]`` samples in round ``k`` (the last size repeats); after each
        round the rays that became opaque (transmittance below the threshold) or left the box are
        dropped, as instant-ngp renders. Samples behind a surface are never evaluated, and memory is
        bounded by ``R * max(segments)`` samples. The MLPs run in ``settings.inference_precision``.
        """
        s = self.settings
        dtype = inference_dtype(s.inference_precision, origins.device)
        n_rays = origins.shape[0]
        color = origins.new_zeros(n_rays, 3)
        depth = origins.new_zeros(n_rays)
        trans = origins.new_ones(n_rays)
        march = _SegmentMarch(self, origins, directions, segments)
        n_samples = 0
        while (samples := march.next()) is not None:
            alive = march.alive
            if samples.n_samples:
                sigmas, rgbs = self._shade(samples, directions[alive], trans[alive], dtype)
                out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices,
                                samples.ray_offsets, None, s.transmittance_threshold)
                color[alive] += trans[alive, None] * out.color
                depth[alive] += trans[alive] * out.depth
                trans[alive] *= 1.0 - out.opacity
                n_samples += samples.n_samples
            march.advance(trans[alive] > s.transmittance_threshold)
        background = torch.as_tensor(background, dtype=color.dtype, device=color.device).expand(n_rays, 3)
        return RenderResult(color + trans[:, None] * background, 1.0 - trans, depth, n_samples)

    def _shade(self, samples: RaySamples, directions: torch.Tensor, trans: torch.Tensor,
               dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour of a segment's samples (no gradients), given each ray's transmittance
        ``trans [R]`` at the segment's start; colour only where the weight reaches the threshold."""
        field = self.field
        with torch.autocast(directions.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            h = field.geometry(samples.positions)
            sigmas = trunc_exp(h[:, 0].float())
            threshold = self.settings.color_weight_threshold
            if threshold <= 0:
                return sigmas, field.color(h, directions, samples.ray_indices).float()
            weights = trans[samples.ray_indices] * transmittance_before(
                sigmas, samples.t_starts, samples.t_ends, samples.ray_offsets, samples.ray_indices) * \
                -torch.expm1(-sigmas * (samples.t_ends - samples.t_starts))
            visible = (weights >= threshold).nonzero().squeeze(1)
            rgbs = sigmas.new_zeros(sigmas.shape[0], 3)
            if visible.numel():
                rgbs[visible] = field.color(h[visible], directions, samples.ray_indices[visible]).float()
        return sigmas, rgbs

    @torch.inference_mode()
    def render_image(self, cameras: Cameras, index: int, background: torch.Tensor,
                     chunk: int | None = None) -> dict[str, torch.Tensor]:
        """Render every pixel of camera ``index`` in chunks of ``chunk`` rays (default 2^15 on a CPU,
        2^18 on a GPU, which small launches would leave idle). On 2 CPU cores a lego frame took 15-20 %
        less time with 2^15 to 2^16 rays per chunk than with 2^13 (fewer, larger kernel calls: the
        encoding's table lookups hit the cache more often), for 100 MB more memory (measured).

        Returns ``{"color": [H, W, 3], "opacity": [H, W], "depth": [H, W], "n_samples": int}`` on the
        CPU (depth: expected distance divided by opacity, 0 where nothing was hit), whatever device
        the field is on: rays are generated on the CPU, copied over per chunk, and the results back.
        """
        device = self.field.aabb.device
        chunk = chunk or (1 << 18 if device.type == "cuda" else 1 << 15)
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
