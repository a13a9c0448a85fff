"""Volume rendering of a :class:`~ngp.nerf.field.NerfField`: rays -> march -> field -> composite.

Shared by training, evaluation and video. The ray marcher skips empty space with the occupancy
grid (instant-ngp's density grid) and the compositor stops a ray once its transmittance falls
below ``1e-4`` (``0.01`` in pictures made to be looked at, :meth:`Renderer.for_display`). Step
sizes follow instant-ngp: ``sqrt(3) / 1024`` of the unit cube, growing in proportion to the
distance (``dt = t * cone_angle``) for large scenes (``aabb_scale > 1``).

Example::

    >>> renderer = Renderer(field, grid, RenderSettings.for_scene(aabb_scale=1))
    >>> out = renderer.render_rays(origins, directions, background=torch.ones(3))
    >>> out.color.shape  # [R, 3]
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from ngp.geometry.cameras import Cameras, generate_rays
from ngp.nerf.field import NerfField, trunc_exp
from ngp.nerf.occupancy import OccupancyGrid
from ngp.networks import bfloat16_weights_kept, cpu_bfloat16_autocast
from ngp.ops.nerf import (RaySamples, composite, march_checked_rays, march_rays, ray_aabb_intersect,
                          render_weight_from_density, samples_in_front, sort_by_ray)
from ngp.train.precision import native_bfloat16

__all__ = ["RenderSettings", "RenderResult", "Renderer", "FixedSegments", "AdaptiveSegments", "DISPLAY_TRANSMITTANCE",
           "inference_dtype"]

#: instant-ngp's NERF_STEPS: the smallest step is sqrt(3) / 1024 of the unit cube.
N_STEPS = 1024
#: Where rays stop in pictures made to be looked at (:meth:`Renderer.for_display`): instant-ngp's
#: ``render_min_transmittance`` (its GUI and videos); its evaluation script sets 1e-4, as ngp's keeps.
DISPLAY_TRANSMITTANCE = 0.01


@dataclass
class RenderSettings:
    """How rays are sampled (lengths in world units, the unit cube being the NeRF-synthetic scene).

    Attributes:
        cone_angle: steps grow as ``dt = t * cone_angle`` (0 = constant steps); ``1/256`` for large
            scenes, as instant-ngp. Steps stay between the occupancy grid's ``min_step_size``
            (``sqrt(3) / 1024``) and ``max_step_size`` (a coarsest cell's diagonal).
        max_samples_per_ray: a bound on the samples of one ray.
        transmittance_threshold: a ray stops once its transmittance falls below this (1e-4, as
            instant-ngp's training and evaluation; :meth:`Renderer.for_display` raises it to 0.01).
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


def _cat(tensors: list[torch.Tensor]) -> torch.Tensor:
    """``torch.cat(tensors)``, without a copy of a single tensor."""
    return tensors[0] if len(tensors) == 1 else torch.cat(tensors)


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
    positions, t_starts, t_ends, ray_indices, features = (_cat([p[k] for p in parts]) for k in range(5))
    order, offsets = sort_by_ray(ray_indices, n_rays)  # stable: each ray's segments stay in marching order
    if len(parts) > 1:
        positions, t_starts, t_ends, ray_indices, features = (
            t.index_select(0, order) for t in (positions, t_starts, t_ends, ray_indices, features))
    return RaySamples(positions, empty, empty, t_starts, t_ends, ray_indices, offsets), features


@dataclass(frozen=True)
class FixedSegments:
    """Segment marching (:class:`_SegmentMarch`) with ``sizes[k]`` samples per ray in round ``k``, the
    last size repeating."""

    sizes: tuple[int, ...]

    def __post_init__(self):
        if not self.sizes or min(self.sizes) < 1:
            raise ValueError(f"FixedSegments needs sizes >= 1, got {self.sizes}")

    def size(self, round: int, n_rays: int, n_alive: int) -> int:
        """Samples per ray in round ``round`` (``n_alive`` of ``n_rays`` rays still going)."""
        return self.sizes[min(round, len(self.sizes) - 1)]


@dataclass(frozen=True)
class AdaptiveSegments:
    """Segment marching (:class:`_SegmentMarch`) with ``samples_per_ray * R / alive`` samples per ray
    in each round, clamped to ``[min_samples, max_samples]``, where ``R`` rays are rendered together and
    ``alive`` of them are still going. As instant-ngp's renderer (``clamp(R / alive, 1, 8)`` steps
    between compactions): while most rays are going each gets a few samples, so a ray that turns opaque
    leaves few evaluated samples behind its surface; as rays stop, the others get more per round, so a
    round's kernel calls stay large and the rounds few. ``first_samples``: the first round's length
    instead (``None``: the formula's). A round holds at most ``R * max(samples_per_ray, min_samples,
    first_samples)`` samples."""

    samples_per_ray: float = 4.0
    min_samples: int = 4
    max_samples: int = 64
    first_samples: int | None = None

    def __post_init__(self):
        if not (self.samples_per_ray > 0 and 1 <= self.min_samples <= self.max_samples):
            raise ValueError(f"AdaptiveSegments needs samples_per_ray > 0 and 1 <= min_samples <= max_samples, "
                             f"got {self}")
        if self.first_samples is not None and not 1 <= self.first_samples <= self.max_samples:
            raise ValueError(f"AdaptiveSegments needs 1 <= first_samples <= max_samples, got {self}")

    def size(self, round: int, n_rays: int, n_alive: int) -> int:
        """Samples per ray in the next round, with ``n_alive`` of ``n_rays`` rays still going."""
        if round == 0 and self.first_samples is not None:
            return self.first_samples
        wanted = int(self.samples_per_ray * n_rays / max(n_alive, 1))
        return min(max(wanted, self.min_samples), self.max_samples)


#: What :class:`_SegmentMarch` takes: anything with ``size(round, n_rays, n_alive) -> int``.
SegmentSchedule = FixedSegments | AdaptiveSegments

#: Rendering without gradients. Measured on 2 cores, a quarter of a fox frame (540x960) from a
#: 10-minute run: the fixed 16, 32, 64, 128 evaluated 55.9 samples per ray, of which 39.9 lie in front
#: of the point where the ray turns opaque, ``AdaptiveSegments(4.0, 4, 64)`` 44.3, and the frames took
#: 3.65 s against 2.89 s (medians of 4, alternating); lego the same time (8.1 against 7.8 samples per
#: ray). A first round of 2 samples and ``2 R / alive`` after it (Intel, 2^18-ray chunks, alternating in
#: one process): most of an opaque scene's rays end within the first two (at their surface, or leaving
#: the box), so fewer samples lie behind surfaces: lego 4.85 -> 4.19 M samples, frames 1.21 -> 1.14 s
#: and 1.35 -> 1.28 s (two models, medians of 4-5); fox 23.9 -> 23.1 M samples, frames 6.66 -> 6.49 s
#: and 6.24 -> 6.45 s (medians of 2 and 5: its long rays take more rounds; even within this machine's
#: noise). 2 samples in every round (``AdaptiveSegments(2.0, 2, 64)``) was lego 1.11 s but fox 6.75 s.
RENDER_SEGMENTS = AdaptiveSegments(2.0, 4, 64, first_samples=2)
#: Training's pre-pass: its rays are few (2^16 samples' worth), so rounds cost more per sample there
#: and the adaptive schedule was slower (lego, late: 112.5k samples marched against 110.8k, 97 against
#: 83 ms; fox: 221k against 280k marched but 239 against 219 ms).
TRAINING_SEGMENTS = FixedSegments((16, 32, 64, 128, N_STEPS))


class _SegmentMarch:
    """Marches ``[R, 3]`` rays a segment of samples at a time, for renderers that stop a ray once it is
    opaque: :meth:`next` marches the next segment (its length from ``schedule``) of the rays still
    going, :meth:`advance` drops the rays that became opaque, ran out of samples or left the box.
    Later segments continue on the same lattice of steps as the first (so the samples are those of
    marching the whole ray); ``generator`` jitters the first segment's start (training).
    ``alive [A]`` are the indices of the rays the current segment's samples belong to."""

    def __init__(self, renderer: "Renderer", origins: torch.Tensor, directions: torch.Tensor,
                 schedule: SegmentSchedule, generator: torch.Generator | None = None):
        s = renderer.settings
        self.renderer, self.origins, self.directions, self.schedule = renderer, origins, directions, schedule
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
        self.segment = min(self.schedule.size(self.round, self.origins.shape[0], alive.numel()), s.max_samples_per_ray)
        jitter = self.generator if (self.generator is not None and self.round == 0) else False
        # the rays were checked by ray_aabb_intersect in __init__
        # index_select: faster than t[alive] for an index tensor
        origins, directions, t_near, t_far = (t.index_select(0, alive) for t in
                                              (self.origins, self.directions, self.t_near, self.t_far))
        self.samples = march_checked_rays(origins, directions, t_near, t_far, self.renderer.grid,
                                          step_size=s.step_size if self.renderer.grid is None else None,
                                          cone_angle=s.cone_angle, max_samples_per_ray=self.segment, jitter=jitter,
                                          sample_directions=False)  # shading takes the rays' directions
        return self.samples

    def advance(self, transparent: torch.Tensor) -> None:
        """Keep marching the rays of :attr:`alive` that are still ``transparent [A]`` (bool) and
        filled their segment (the others left the box or the occupied cells)."""
        samples, alive = self.samples, self.alive
        counts = samples.samples_per_ray
        marched = self.marched.index_select(0, alive) + counts
        self.marched.index_copy_(0, alive, marched)
        limit = self.renderer.settings.max_samples_per_ray
        more = ((counts == self.segment) & transparent & (marched < limit)).nonzero().squeeze(1)
        # continue after the last sample: the march restarts on the same lattice of steps
        self.alive = alive.index_select(0, more)
        last = samples.t_ends.index_select(0, samples.ray_offsets[1:].index_select(0, more) - 1)
        self.t_near.index_copy_(0, self.alive, last.to(self.t_near.dtype))
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

    def for_display(self) -> "Renderer":
        """This renderer (same field and grid objects) for pictures shown rather than measured (the
        viewer, videos): rays stop once their transmittance falls below :data:`DISPLAY_TRANSMITTANCE`
        (0.01) instead of 1e-4. Measured on 10-minute runs (2 cores, validation frames): lego 2.4-2.6 s ->
        2.0-2.1 s per 800x800 frame, fox (540x960) 9.9-11.1 s -> 6.6-7.1 s; the pictures 53-59 dB PSNR
        from the 1e-4 ones, and 0.01 (lego) / 0.06-0.08 dB (fox) further from the photographs."""
        threshold = max(self.settings.transmittance_threshold, DISPLAY_TRANSMITTANCE)
        return Renderer(self.field, self.grid, dataclasses.replace(self.settings, transmittance_threshold=threshold))

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
                       schedule: SegmentSchedule | None = None
                       ) -> tuple[RaySamples, torch.Tensor | None, int]:
        """The samples of ``[R, 3]`` rays in front of the point where each becomes opaque, with their
        position features (the field's :meth:`~NerfField.encode`, computed without gradients with the
        current parameters; in bfloat16 under CPU bfloat16 autocast) -> ``(samples, features [S, n], n_marched)``.

        Rays are marched a segment of samples at a time (lengths from ``schedule``, default
        :data:`TRAINING_SEGMENTS`), as in :meth:`render_rays_inference`; each segment's densities are
        evaluated without gradients and a ray stops once its transmittance falls below the threshold.
        Marching whole rays first would evaluate every sample behind the surfaces too: late in a lego
        run 4.7x the samples kept, and this pre-pass took 119 ms per step instead of 58 ms (measured,
        2 cores); early in training, when nothing is opaque yet, the three rounds cost as much as one
        (42 ms either way). Five rounds (16, 32, 64, 128, the rest) instead of three (16, 64, the rest)
        march 94k samples instead of 112k for the same 59k kept, late in a lego run: 54 ms instead of
        59 ms (measured).
        ``generator`` jitters each ray's first sample (training); later segments continue on the same
        lattice of steps. ``n_marched`` counts the samples evaluated; ``features`` is None when no
        sample was marched.
        The returned samples leave ``directions`` and ``ts`` empty (the field takes per-ray directions).
        """
        s = self.settings
        n_rays = origins.shape[0]
        log_trans = torch.zeros(n_rays, dtype=torch.float64, device=origins.device)  # -sum(sigma dt) so far
        log_threshold = math.log(s.transmittance_threshold)
        march = _SegmentMarch(self, origins, directions, schedule or TRAINING_SEGMENTS, generator)
        # Under CPU bfloat16 autocast the features are kept in bfloat16, as the density network's first
        # product (and the training forward's, which takes them over) rounds them: half the bytes to
        # write, gather and sort, no conversions, the same training bit for bit.
        rounded = torch.bfloat16 if cpu_bfloat16_autocast(origins) else None
        parts, n_marched = [], 0
        with torch.no_grad():
            while (samples := march.next()) is not None:
                alive = march.alive
                log_alive = log_trans.index_select(0, alive)
                if samples.n_samples:
                    # in chunks: the MLP's temporaries stay bounded (one chunk is not copied by a cat)
                    features = _cat([self.field.encode(p, rounded) for p in samples.positions.split(1 << 18)])
                    sigmas = _cat([self.field.density_from_features(f) for f in features.split(1 << 18)])
                    # one list of the kept rows, gathered from each tensor (a boolean mask finds them again each time)
                    keep, log_alive = samples_in_front(sigmas, samples.t_starts, samples.t_ends, samples.ray_offsets,
                                                       log_alive, s.transmittance_threshold)
                    parts.append((samples.positions.index_select(0, keep), samples.t_starts.index_select(0, keep),
                                  samples.t_ends.index_select(0, keep),
                                  alive.index_select(0, samples.ray_indices.index_select(0, keep)),
                                  features.index_select(0, keep)))
                    log_trans.index_copy_(0, alive, log_alive)
                    n_marched += samples.n_samples
                march.advance(log_alive > log_threshold)
        samples, features = _pack(parts, n_rays, origins)
        return samples, features, n_marched

    @torch.inference_mode()
    def render_rays_inference(self, origins: torch.Tensor, directions: torch.Tensor, background: torch.Tensor,
                              schedule: SegmentSchedule | None = None) -> RenderResult:
        """Render ``[R, 3]`` rays without gradients, marching a few samples at a time.

        Rays are marched a segment of samples per round (lengths from ``schedule``, default
        :data:`RENDER_SEGMENTS`); after each round the rays that became opaque (transmittance below
        the threshold) or left the box are dropped, as instant-ngp renders. Few samples behind a
        surface are evaluated, and memory is bounded by the largest round. The MLPs run in
        ``settings.inference_precision``.
        """
        s = self.settings
        dtype = inference_dtype(s.inference_precision, origins.device)
        n_rays = origins.shape[0]
        color = origins.new_zeros(n_rays, 3)
        depth = origins.new_zeros(n_rays)
        trans = origins.new_ones(n_rays)
        march = _SegmentMarch(self, origins, directions, schedule or RENDER_SEGMENTS)
        # encoded once for all rounds (per round it cost a fox frame ~0.1 s of 6)
        dir_features = self.field.direction_features(directions).to(dtype or torch.float32)
        n_samples = 0
        with bfloat16_weights_kept():  # no weight changes while these rays are rendered
            while (samples := march.next()) is not None:
                alive = march.alive  # distinct rays: index_add_ adds once per ray, as color[alive] += would
                trans_alive = trans.index_select(0, alive)
                if samples.n_samples:
                    sigmas, rgbs = self._shade(samples, dir_features.index_select(0, alive), trans_alive, dtype)
                    out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices,
                                    samples.ray_offsets, None, s.transmittance_threshold)
                    color.index_add_(0, alive, trans_alive[:, None] * out.color)
                    depth.index_add_(0, alive, trans_alive * out.depth)
                    trans_alive = trans_alive * (1.0 - out.opacity)
                    trans.index_copy_(0, alive, trans_alive)
                    n_samples += samples.n_samples
                march.advance(trans_alive > s.transmittance_threshold)
        background = torch.as_tensor(background, dtype=color.dtype, device=color.device).expand(n_rays, 3)
        return RenderResult(color + trans[:, None] * background, 1.0 - trans, depth, n_samples)

    def _shade(self, samples: RaySamples, dir_features: torch.Tensor, trans: torch.Tensor,
               dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Density and colour of a segment's samples (no gradients), given each ray's direction features
        ``[R, n]`` (:meth:`NerfField.direction_features`) and transmittance ``trans [R]`` at the segment's
        start; colour only where the weight reaches the threshold."""
        field = self.field
        with torch.autocast(trans.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            h = field.geometry(samples.positions, dtype=dtype)  # colour() takes h in its dtype
            sigmas = trunc_exp(h[:, 0].float())
            threshold = self.settings.color_weight_threshold
            if threshold <= 0:
                return sigmas, field.color(h, None, samples.ray_indices, direction_features=dir_features).float()
            weights = render_weight_from_density(samples.t_starts, samples.t_ends, sigmas, samples.ray_indices,
                                                 samples.ray_offsets, self.settings.transmittance_threshold, trans)
            visible = (weights >= threshold).nonzero().squeeze(1)
            rgbs = sigmas.new_zeros(sigmas.shape[0], 3)
            if visible.numel():
                rgbs.index_copy_(0, visible, field.color(h, None, samples.ray_indices, rows=visible,
                                                         direction_features=dir_features).float())
        return sigmas, rgbs

    @torch.inference_mode()
    def render_image(self, cameras: Cameras, index: int, background: torch.Tensor,
                     chunk: int | None = None) -> dict[str, torch.Tensor]:
        """Render every pixel of camera ``index`` in chunks of ``chunk`` rays (default 2^18). On a GPU
        smaller launches leave it idle; on 2 CPU cores larger chunks make fewer, larger kernel calls and
        rounds: per frame (10-minute runs, alternating in one process, medians of 6 / 4) lego 1.39 s with
        2^16 rays, 1.34 s with 2^17, 1.32 s with 2^18; fox (540x960) 6.92 / 6.69 / 6.51 s; a fox frame's
        peak memory 86 / 210 / 330 MB above the loaded run's (2^13 had measured 15-20 % slower than
        2^15-2^16 on the Zen 5).

        Returns ``{"color": [H, W, 3], "opacity": [H, W], "depth": [H, W], "n_samples": int}`` on the
        CPU (depth: expected distance divided by opacity, 0 where nothing was hit), whatever device
        the field is on: rays are generated on the CPU, copied over per chunk, and the results back.
        """
        device = self.field.aabb.device
        chunk = chunk or (1 << 18)
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
