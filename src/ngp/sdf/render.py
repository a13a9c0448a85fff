"""Sphere tracing a learned SDF and shading it with normals from the encoding's input gradient.

Rays start where they enter the model's bounding box and advance by ``step_scale`` times the
predicted distance (a learned SDF can overestimate a little, so we step 90% of it), until the distance
falls below ``epsilon`` (a hit) or the ray leaves the box. Only live rays are evaluated each step, in
chunks of :data:`~ngp.sdf.extract.CHUNK`. Normals are ``normalize(d sdf / d x)`` by autograd through the
hash grid; shading is a clay-coloured Lambertian with a key, a fill and a rim light (or the normals
themselves as colours, ``mode="normals"``).

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
    def orbit(target: np.ndarray, radius: float, width: int, height: int, azimuth: float = 0.0,
              elevation: float = 0.0, fov_degrees: float = 35.0) -> "Camera":
        """Look at ``target`` from far enough that a sphere of ``radius`` fills the smaller image side."""
        if width < 1 or height < 1:
            raise ValueError(f"image size must be positive, got {width}x{height}")
        az, el = math.radians(azimuth), math.radians(elevation)
        direction = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
        half = math.radians(fov_degrees) / 2
        distance = radius / math.sin(half) * 1.02
        position = np.asarray(target, dtype=np.float64) + distance * direction
        forward = -direction
        world_up = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.999 else np.array([0.0, 0.0, -1.0])
        right = np.cross(forward, world_up)
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        focal = 0.5 * min(width, height) / math.tan(half)
        return Camera(position, right, up, forward, focal, width, height)

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
def sphere_trace(sdf, origins: torch.Tensor, directions: torch.Tensor, max_steps: int = 160,
                 epsilon: float = 2e-4, step_scale: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Trace unit-cube rays against ``sdf.unit_sdf`` -> ``(hit [N] bool, positions [N, 3])``."""
    lo, hi = sdf.aabb[0].cpu(), sdf.aabb[1].cpu()
    t, t_far = ray_box(origins, directions, lo, hi)
    alive = torch.nonzero(t <= t_far).squeeze(1)
    hit = torch.zeros(len(origins), dtype=torch.bool)
    for _ in range(max_steps):
        if not len(alive):
            break
        positions = origins[alive] + t[alive, None] * directions[alive]
        distance = evaluate_chunked(sdf.unit_sdf, positions, CHUNK)
        converged = distance.abs() < epsilon
        hit[alive[converged]] = True
        t[alive] += step_scale * distance
        keep = ~converged & (t[alive] <= t_far[alive]) & (t[alive] >= 0)
        alive = alive[keep]
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


def render_sdf(sdf, width: int = 512, height: int = 512, azimuth: float = 30.0, elevation: float = 15.0,
               mode: str = "shaded", fov_degrees: float = 35.0) -> np.ndarray:
    """Render a :class:`~ngp.sdf.model.NeuralSDF` from an orbit camera -> ``[height, width, 3]`` uint8."""
    if mode not in RENDER_MODES:
        raise ValueError(f"render mode {mode!r} is not supported; expected one of {RENDER_MODES}")
    box = sdf.aabb.cpu().numpy().astype(np.float64)
    centre, radius = box.mean(0), 0.5 * float(np.linalg.norm(box[1] - box[0]))
    camera = Camera.orbit(centre, radius, width, height, azimuth, elevation, fov_degrees)
    origins, directions = camera.rays()
    hit, positions = sphere_trace(sdf, origins, directions)
    image = np.tile(BACKGROUND, (width * height, 1))
    index = torch.nonzero(hit).squeeze(1)
    if len(index):
        grads = torch.cat([sdf.gradient(positions[index[s : s + CHUNK]], unit=True) for s in range(0, len(index), CHUNK)])
        normals = torch.nn.functional.normalize(grads, dim=-1).numpy().astype(np.float64)
        image[index.numpy()] = shade(normals, directions[index].numpy().astype(np.float64), camera, mode)
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


__all__ = ["Camera", "LIGHTS", "RENDER_MODES", "ray_box", "render_sdf", "shade", "sphere_trace", "write_png"]
