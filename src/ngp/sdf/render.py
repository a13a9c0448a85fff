"""Sphere tracing a learned SDF and shading it (normals by central differences or autograd).

Rays start where they enter the model's bounding box and advance by ``step_scale`` times the
predicted distance (a learned SDF can overestimate a little, so we step 90% of it), until the distance
falls below ``epsilon`` (a hit) or the ray leaves the box. Only live rays are evaluated each step, in
chunks of :data:`~ngp.sdf.extract.CHUNK`. Shading is a clay-coloured Lambertian with a key, a fill
and a rim light, or the normals themselves as colours (``mode="normals"``).

Normals: by default central differences with instant-ngp's ``fd_normals_epsilon = 5e-4`` (unit cube),
as instant-ngp renders SDFs; ``normals="gradient"`` uses ``d sdf / d x`` by autograd through the hash
grid (:meth:`NeuralSDF.gradient`) instead. After a minute of CPU training the finest hash levels are
still noisy and the exact gradient shows that noise as speckle over the whole surface, while a
difference over 5e-4 (one finest cell) averages it away and keeps the scan's detail.

The orbit camera looks at the box's centre with ``y`` up: ``azimuth`` turns about ``y`` (0 looks from
``+z`` towards ``-z``), ``elevation`` lifts the camera.

Example:
    >>> image = render_sdf(sdf, width=512, height=512, azimuth=30, elevation=15)   # [H, W, 3] uint8
    >>> write_png("render.png", image)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ngp.io.files import atomic_path, check_writable_file
from ngp.sdf.extract import CHUNK, evaluate_chunked

RENDER_MODES = ("shaded", "normals")
BACKGROUND = np.array([1.0, 1.0, 1.0])
CLAY = np.array([0.82, 0.74, 0.64])


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: ``position`` [3], orthonormal ``right``/``up``/``forward`` [3], ``focal`` in pixels."""

    position: np.ndarray
    right: np.ndarray
    up: np.ndarray
    forward: np.ndarray
    focal: float
    width: int
    height: int

    @staticmethod
    def orbit(box: np.ndarray, width: int, height: int, azimuth: float = 0.0, elevation: float = 0.0,
              fov_degrees: float = 35.0, margin: float = 1.05, points: np.ndarray | None = None) -> "Camera":
        """Look at the centre of ``box`` ``[2, 3]`` from the given angles (degrees), just far enough
        that its eight corners (or ``points`` ``[K, 3]``, if given) fit in the image with ``margin`` of
        slack; ``fov_degrees`` spans the smaller image side."""
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        box = np.asarray(box, dtype=np.float64)
        az, el = math.radians(azimuth), math.radians(elevation)
        direction = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        forward = -direction
        world_up = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.999 else np.array([0.0, 0.0, -1.0])
        right = np.cross(forward, world_up)
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        focal = 0.5 * min(width, height) / math.tan(math.radians(fov_degrees) / 2)
        centre = box.mean(0)
        if points is None:
            points = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
        corners = np.asarray(points, dtype=np.float64) - centre
        # distance so that every corner projects inside the image: |c.right| f / (D - c.dir) <= W / 2, etc.
        depth = corners @ direction
        need = np.maximum(np.abs(corners @ right) * focal / (0.5 * width), np.abs(corners @ up) * focal / (0.5 * height))
        distance = float(np.max(need * margin + depth))
        return Camera(centre + distance * direction, right, up, forward, focal, width, height)

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(origins [H*W, 3], unit directions [H*W, 3])``, row by row from the top-left pixel."""
        j, i = np.meshgrid(np.arange(self.width) + 0.5, np.arange(self.height) + 0.5)
        x = (j - self.width / 2) / self.focal
        y = -(i - self.height / 2) / self.focal
        d = x[..., None] * self.right + y[..., None] * self.up + self.forward
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        origins = np.broadcast_to(self.position, d.shape)
        return torch.tensor(origins.reshape(-1, 3), dtype=torch.float32), torch.tensor(d.reshape(-1, 3), dtype=torch.float32)


def ray_box(origins: torch.Tensor, directions: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor):
    """Slab test: ``(t_near [N], t_far [N])``; a ray misses where ``t_near > t_far``."""
    inv = 1.0 / torch.where(directions.abs() < 1e-12, torch.full_like(directions, 1e-12), directions)
    t0, t1 = (lo - origins) * inv, (hi - origins) * inv
    t_near = torch.minimum(t0, t1).amax(-1).clamp(min=0.0)
    t_far = torch.maximum(t0, t1).amin(-1)
    return t_near, t_far


@torch.no_grad()
def sphere_trace(sdf, origins: torch.Tensor, directions: torch.Tensor, max_steps: int = 128,
                 epsilon: float = 5e-5, step_scale: float = 0.9, pixel_radius: float = 0.0, refine: int = 2,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace unit-cube rays against ``sdf.unit_sdf`` -> ``(hit [N] bool, positions [N, 3])``.

    A ray hits when the distance falls below ``max(epsilon, pixel_radius * t)``: ``epsilon`` is
    instant-ngp's ``maximum_distance``; ``pixel_radius`` (an angle, a fraction of a pixel's) stops rays
    once the surface is much closer than the pixel is wide, which ends grazing rays that would creep
    for hundreds of tiny steps. Rays still alive after ``max_steps`` hit if within 4 times that tolerance. Hits then
    take ``refine`` full steps more, onto the surface, where the normals are evaluated.
    """
    lo, hi = sdf.aabb[0].cpu(), sdf.aabb[1].cpu()
    t, t_far = ray_box(origins, directions, lo, hi)
    alive = torch.nonzero(t <= t_far).squeeze(1)
    hit = torch.zeros(len(origins), dtype=torch.bool)
    for step in range(max_steps):
        if not len(alive):
            break
        positions = origins[alive] + t[alive, None] * directions[alive]
        distance = evaluate_chunked(sdf.unit_sdf, positions, CHUNK)
        tolerance = torch.clamp(pixel_radius * t[alive], min=epsilon)
        if step == max_steps - 1:
            tolerance = 4 * tolerance
        converged = distance.abs() < tolerance
        hit[alive[converged]] = True
        t[alive] += torch.where(converged, torch.zeros_like(distance), step_scale * distance)
        keep = ~converged & (t[alive] <= t_far[alive]) & (t[alive] >= 0)
        alive = alive[keep]
    index = torch.nonzero(hit).squeeze(1)
    for _ in range(refine if len(index) else 0):
        t[index] += evaluate_chunked(sdf.unit_sdf, origins[index] + t[index, None] * directions[index], CHUNK)
    return hit, origins + t[:, None] * directions


#: Lights in the camera's frame (x right, y up, z towards the viewer) and their intensities:
#: a key light from the upper left, a fill from the right, a rim light from behind.
LIGHTS = (((-0.4, 0.6, 0.7), 0.85), ((0.7, 0.1, 0.6), 0.30), ((0.0, 0.5, -0.8), 0.35))


def shade(normals: np.ndarray, directions: np.ndarray, camera: Camera, mode: str = "shaded") -> np.ndarray:
    """``[N, 3]`` unit normals and view directions -> ``[N, 3]`` colours in ``[0, 1]``."""
    if mode == "normals":
        return 0.5 * normals + 0.5
    normals = np.where((normals * directions).sum(-1, keepdims=True) > 0, -normals, normals)  # face the eye
    view = -directions
    colour = 0.12 * CLAY * (0.6 + 0.4 * (normals @ camera.up)[:, None])  # ambient, lighter from above
    for (x, y, z), intensity in LIGHTS:
        light = x * camera.right + y * camera.up - z * camera.forward
        light = light / np.linalg.norm(light)
        lambert = np.clip(normals @ light, 0.0, None)[:, None]
        half = view + light
        half /= np.linalg.norm(half, axis=-1, keepdims=True)
        specular = np.clip((normals * half).sum(-1, keepdims=True), 0.0, None) ** 48
        colour = colour + intensity * (CLAY * lambert + 0.15 * specular)
    return np.clip(colour, 0.0, 1.0) ** (1 / 2.2)  # roughly sRGB


#: Rays stop within this fraction of a pixel's footprint of the surface. Larger fractions end grazing
#: rays sooner but misfire on a briefly trained model, whose distances far from the surface are still
#: small (about 3e-3 in the unit cube after 80 steps on the bunny, when half a pixel is 2.7e-3).
PIXEL_FRACTION = 0.1

#: instant-ngp's ``fd_normals_epsilon``: the half-step of central-difference normals, in the unit cube.
FD_NORMALS_EPSILON = 5e-4
NORMALS = ("finite_difference", "gradient")


def surface_normals(sdf, points: torch.Tensor, normals: str = "finite_difference",
                    epsilon: float = FD_NORMALS_EPSILON) -> torch.Tensor:
    """``[N, 3]`` unit-cube points -> ``[N, 3]`` unit normals, by central differences or autograd."""
    if normals not in NORMALS:
        raise ValueError(f"normals {normals!r} is not supported; expected one of {NORMALS}")
    if normals == "gradient":
        grads = [sdf.gradient(points[s : s + CHUNK], unit=True) for s in range(0, len(points), CHUNK)]
    else:
        offsets = epsilon * torch.eye(3, dtype=points.dtype)
        grads = [
            torch.stack([evaluate_chunked(sdf.unit_sdf, points[s : s + CHUNK] + e)
                         - evaluate_chunked(sdf.unit_sdf, points[s : s + CHUNK] - e) for e in offsets], dim=-1)
            for s in range(0, len(points), CHUNK)
        ]
    return torch.nn.functional.normalize(torch.cat(grads) if grads else points.new_zeros(0, 3), dim=-1)


def framing_camera(sdf, width: int, height: int, azimuth: float, elevation: float, fov_degrees: float,
                   preview: int = 64) -> Camera:
    """A camera that frames the *visible surface*, found by a ``preview``-pixel pass: the model's box
    is often much larger on screen than the shape in it. Falls back to framing the box."""
    box = sdf.aabb.cpu().numpy().astype(np.float64)
    camera = Camera.orbit(box, preview, preview, azimuth, elevation, fov_degrees)
    origins, directions = camera.rays()
    hit, positions = sphere_trace(sdf, origins, directions, pixel_radius=PIXEL_FRACTION / camera.focal)
    if hit.sum() < 4:
        return Camera.orbit(box, width, height, azimuth, elevation, fov_degrees)
    seen = positions[hit].numpy().astype(np.float64)
    pad = 1.5 * (box[1] - box[0]).max() / preview  # a preview pixel may miss a thin edge
    seen_box = np.stack([seen.min(0) - pad, seen.max(0) + pad])
    return Camera.orbit(seen_box, width, height, azimuth, elevation, fov_degrees, margin=1.1, points=seen)


def render_sdf(sdf, width: int = 512, height: int = 512, azimuth: float = 30.0, elevation: float = 15.0,
               mode: str = "shaded", fov_degrees: float = 35.0, normals: str = "finite_difference") -> np.ndarray:
    """Render a :class:`~ngp.sdf.model.NeuralSDF` from an orbit camera -> ``[height, width, 3]`` uint8."""
    if mode not in RENDER_MODES:
        raise ValueError(f"render mode {mode!r} is not supported; expected one of {RENDER_MODES}")
    if normals not in NORMALS:
        raise ValueError(f"normals {normals!r} is not supported; expected one of {NORMALS}")
    camera = framing_camera(sdf, width, height, azimuth, elevation, fov_degrees)
    origins, directions = camera.rays()
    hit, positions = sphere_trace(sdf, origins, directions, pixel_radius=PIXEL_FRACTION / camera.focal)
    image = np.tile(BACKGROUND, (width * height, 1))
    index = torch.nonzero(hit).squeeze(1)
    if len(index):
        unit_normals = surface_normals(sdf, positions[index], normals).numpy().astype(np.float64)
        image[index.numpy()] = shade(unit_normals, directions[index].numpy().astype(np.float64), camera, mode)
    return (image.reshape(height, width, 3) * 255 + 0.5).astype(np.uint8)


def write_png(path: str | Path, image: np.ndarray) -> Path:
    """Write an ``[H, W, 3]`` uint8 image as PNG, atomically."""
    import imageio.v3 as iio

    path = check_writable_file(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"render output must be a .png file, got {path}")
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image, extension=".png")
    return path


__all__ = [
    "Camera", "FD_NORMALS_EPSILON", "LIGHTS", "NORMALS", "RENDER_MODES", "ray_box", "render_sdf", "shade", "sphere_trace",
    "surface_normals", "framing_camera", "write_png",
]
