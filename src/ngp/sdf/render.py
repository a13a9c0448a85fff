"""Sphere tracing a learned SDF and shading it (normals by central differences or autograd).

Rays start where they enter the model's bounding box and advance by ``step_scale`` times the
predicted distance (a learned SDF can overestimate a little, so we step 90% of it), until the distance
falls below ``epsilon`` (a hit) or the ray leaves the box. Only live rays are evaluated each step, in
chunks of :data:`~ngp.geometry.grids.CHUNK`. Shading is a clay-coloured Lambertian with a key, a fill
and a rim light, or the normals themselves as colours (``mode="normals"``).

Normals: by default central differences with instant-ngp's ``fd_normals_epsilon = 5e-4`` (unit cube),
as instant-ngp renders SDFs; ``normals="gradient"`` uses ``d sdf / d x`` by autograd through the hash
grid (:meth:`NeuralSDF.gradient`) instead. After a minute of CPU training the finest hash levels are
still noisy and the exact gradient shows that noise as speckle over the whole surface, while a
difference over 5e-4 (one finest cell) averages it away and keeps the scan's detail.

The camera is :func:`ngp.geometry.cameras.orbit_camera`'s (a :class:`~ngp.geometry.cameras.Cameras` of
one view; rays from :func:`~ngp.geometry.cameras.generate_rays`): it looks at the box's centre with ``y``
up, ``azimuth`` turns about ``y`` (0 looks from ``+z`` towards ``-z``), ``elevation`` lifts the camera.
Rays are clipped to the box by :func:`ngp.geometry.rays.ray_aabb_intersect`.

Example:
    >>> image = render_sdf(sdf, width=512, height=512, azimuth=30, elevation=15)   # [H, W, 3] uint8
    >>> write_png("render.png", image)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ngp.geometry.cameras import Cameras, generate_rays, orbit_camera, pixel_centers
from ngp.geometry.grids import CHUNK, evaluate_chunked
from ngp.geometry.rays import ray_aabb_intersect
from ngp.io.files import atomic_path, check_writable_file

RENDER_MODES = ("shaded", "normals")
BACKGROUND = np.array([1.0, 1.0, 1.0])
CLAY = np.array([0.82, 0.74, 0.64])


def camera_axes(camera: Cameras) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(right, up, forward)`` [3] float64 each of a one-view camera (OpenGL axes: forward is ``-z``)."""
    rotation = camera.c2w[0, :, :3].double().cpu().numpy()
    return rotation[:, 0], rotation[:, 1], -rotation[:, 2]


def camera_rays(camera: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """``(origins [H*W, 3], unit directions [H*W, 3])`` float32 through every pixel of a one-view camera,
    row by row from the top-left pixel."""
    pixels = pixel_centers(int(camera.width[0]), int(camera.height[0]), camera.c2w.dtype)
    origins, directions = generate_rays(camera, torch.zeros(len(pixels), dtype=torch.long), pixels)
    return origins.float(), directions.float()


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
    t, t_far, inside = ray_aabb_intersect(origins, directions, sdf.aabb.cpu())
    alive = torch.nonzero(inside).squeeze(1)
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


def shade(normals: np.ndarray, directions: np.ndarray, camera: Cameras, mode: str = "shaded") -> np.ndarray:
    """``[N, 3]`` unit normals and view directions, one-view ``camera`` -> ``[N, 3]`` colours in ``[0, 1]``."""
    if mode == "normals":
        return 0.5 * normals + 0.5
    right, up, forward = camera_axes(camera)
    normals = np.where((normals * directions).sum(-1, keepdims=True) > 0, -normals, normals)  # face the eye
    view = -directions
    colour = 0.12 * CLAY * (0.6 + 0.4 * (normals @ up)[:, None])  # ambient, lighter from above
    for (x, y, z), intensity in LIGHTS:
        light = x * right + y * up - z * forward
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
                   preview: int = 64) -> Cameras:
    """A one-view camera (:func:`~ngp.geometry.cameras.orbit_camera`) that frames the *visible surface*,
    found by a ``preview``-pixel pass: the model's box is often much larger on screen than the shape in
    it. Falls back to framing the box."""
    box = sdf.aabb.cpu().numpy().astype(np.float64)
    camera = orbit_camera(box, preview, preview, azimuth, elevation, fov_degrees)
    origins, directions = camera_rays(camera)
    hit, positions = sphere_trace(sdf, origins, directions, pixel_radius=PIXEL_FRACTION / float(camera.fx[0]))
    if hit.sum() < 4:
        return orbit_camera(box, width, height, azimuth, elevation, fov_degrees)
    seen = positions[hit].numpy().astype(np.float64)
    pad = 1.5 * (box[1] - box[0]).max() / preview  # a preview pixel may miss a thin edge
    seen_box = np.stack([seen.min(0) - pad, seen.max(0) + pad])
    return orbit_camera(seen_box, width, height, azimuth, elevation, fov_degrees, margin=1.1, points=seen)


def render_sdf(sdf, width: int = 512, height: int = 512, azimuth: float = 30.0, elevation: float = 15.0,
               mode: str = "shaded", fov_degrees: float = 35.0, normals: str = "finite_difference") -> np.ndarray:
    """Render a :class:`~ngp.sdf.model.NeuralSDF` from an orbit camera -> ``[height, width, 3]`` uint8."""
    if mode not in RENDER_MODES:
        raise ValueError(f"render mode {mode!r} is not supported; expected one of {RENDER_MODES}")
    if normals not in NORMALS:
        raise ValueError(f"normals {normals!r} is not supported; expected one of {NORMALS}")
    camera = framing_camera(sdf, width, height, azimuth, elevation, fov_degrees)
    return render_view(sdf, camera, mode, normals)


def render_view(sdf, camera: Cameras, mode: str = "shaded", normals: str = "finite_difference") -> np.ndarray:
    """Render a :class:`~ngp.sdf.model.NeuralSDF` through a one-view ``camera`` (unit-cube coordinates)
    -> ``[height, width, 3]`` uint8 (the live viewer renders any camera with this)."""
    width, height = int(camera.width[0]), int(camera.height[0])
    origins, directions = camera_rays(camera)
    hit, positions = sphere_trace(sdf, origins, directions, pixel_radius=PIXEL_FRACTION / float(camera.fx[0]))
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
    "FD_NORMALS_EPSILON", "LIGHTS", "NORMALS", "RENDER_MODES", "camera_axes", "camera_rays", "framing_camera",
    "render_sdf", "render_view", "shade", "sphere_trace", "surface_normals", "write_png",
]
