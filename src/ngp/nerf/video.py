"""Camera paths and videos of a trained NeRF: an orbit around the scene, as MP4 plus PNG frames.

The orbit is derived from the training cameras, so it works for object captures in any frame:
``up`` is their mean up vector, the centre the point closest to all their optical axes (least
squares; the aabb centre if that is ill-posed), and the orbit keeps their mean distance and height.

Example::

    >>> poses = orbit_poses(trainer.dataset.cameras.c2w, n_frames=60, aabb=trainer.field.aabb)
    >>> write_video(renderer, poses, focal=555.6, width=400, height=400, out="orbit.mp4",
    ...             background=torch.ones(3), frames_dir="orbit_frames")

Videos are streamed: each frame is encoded and written as soon as it is rendered, and the depth
pictures' grey scale is chosen before, from a low-resolution preview (:func:`depth_range`).
"""

from __future__ import annotations

import contextlib
import math
import re
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ngp.geometry.cameras import Cameras
from ngp.io.files import atomic_folder, atomic_path, prepare_output_dir
from ngp.nerf.evaluation import to_uint8, write_png
from ngp.nerf.renderer import Renderer

__all__ = ["orbit_poses", "scene_center", "write_video", "depth_to_image", "depth_range", "preview_depths"]


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp(min=1e-12)


def scene_center(c2w: torch.Tensor, aabb: torch.Tensor) -> torch.Tensor:
    """``[3]`` the point closest (least squares) to the optical axes of cameras ``c2w [n, 3, 4]``.

    Falls back to the aabb's centre when the axes are (nearly) parallel or the point lies outside
    the aabb (forward-facing captures).
    """
    origins, forward = c2w[:, :, 3].double(), _normalize(-c2w[:, :, 2].double())
    projector = torch.eye(3, dtype=torch.float64) - forward[:, :, None] * forward[:, None, :]  # [n, 3, 3]
    a, b = projector.sum(0), (projector @ origins[:, :, None]).sum(0)[:, 0]
    fallback = aabb.double().mean(0)
    if len(c2w) < 2 or torch.linalg.cond(a) > 1e6:
        return fallback.float()
    center = torch.linalg.solve(a, b)
    inside = bool(((center >= aabb[0]) & (center <= aabb[1])).all())
    return (center if inside else fallback).float()


def orbit_poses(c2w: torch.Tensor, n_frames: int, aabb: torch.Tensor) -> torch.Tensor:
    """``[n_frames, 3, 4]`` camera-to-world poses on a circle around the scene, looking at its centre.

    Args:
        c2w: ``[n, 3, 4]`` training cameras (OpenGL axes, see :mod:`ngp.nerf.cameras`).
        n_frames: poses on one full turn (or one sweep over the cameras' arc, see
            :func:`_orbit_angles`), starting at the first training camera's azimuth.
        aabb: ``[2, 3]`` scene box (fallback centre).
    """
    if n_frames < 1:
        raise ValueError(f"n_frames must be >= 1, got {n_frames}")
    c2w = c2w.float()
    up = _normalize(c2w[:, :, 1].mean(0))
    center = scene_center(c2w, aabb)
    rel = c2w[:, :, 3] - center
    height = float((rel @ up).mean())
    planar = rel - (rel @ up)[:, None] * up
    radius = float(planar.norm(dim=-1).mean())
    e1 = _normalize(planar[0] if planar[0].norm() > 1e-6 else torch.linalg.svd(up[None])[2][1])
    e2 = torch.linalg.cross(up, e1)
    angles = _orbit_angles(torch.atan2(planar @ e2, planar @ e1), n_frames)
    poses = []
    for angle in angles.tolist():
        position = center + height * up + radius * (math.cos(angle) * e1 + math.sin(angle) * e2)
        forward = _normalize(center - position)
        right = _normalize(torch.linalg.cross(forward, up))
        cam_up = torch.linalg.cross(right, forward)
        poses.append(torch.stack([right, cam_up, -forward, position], dim=1))
    return torch.stack(poses)


def _orbit_angles(camera_angles: torch.Tensor, n_frames: int) -> torch.Tensor:
    """Azimuths of the video's frames: a full turn when the training cameras surround the scene;
    otherwise (a gap of more than 90 degrees between neighbouring cameras, e.g. a frontal capture)
    a smooth sweep back and forth over the arc they cover, so the video never looks at unseen sides.
    The first frame is at the first training camera's azimuth."""
    first = float(camera_angles[0])
    a = torch.sort(torch.remainder(camera_angles - first, 2 * math.pi)).values
    gaps = torch.diff(torch.cat([a, a[:1] + 2 * math.pi]))
    k = int(gaps.argmax())
    if float(gaps[k]) <= math.pi / 2:
        return first + 2 * math.pi * torch.arange(n_frames, dtype=torch.float64) / n_frames
    start = float(a[(k + 1) % len(a)])  # the covered arc runs from after the gap to before it
    length = float(2 * math.pi - gaps[k])
    mid, half = start + length / 2, length / 2
    first_in_arc = start + (-start) % (2 * math.pi)  # the first camera (relative azimuth 0) on the arc
    phase0 = math.asin(max(-1.0, min(1.0, (first_in_arc - mid) / max(half, 1e-9))))
    phase = phase0 + 2 * math.pi * torch.arange(n_frames, dtype=torch.float64) / n_frames
    return first + mid + half * torch.sin(phase)


def depth_to_image(depth: torch.Tensor, near: float, far: float) -> np.ndarray:
    """``[H, W]`` depth -> uint8 grey image, near bright, far dark, nothing hit black."""
    scaled = 1.0 - (depth - near) / max(far - near, 1e-9)
    scaled = torch.where(depth > 0, scaled.clamp(0.05, 1.0), torch.zeros_like(depth))
    return to_uint8(scaled[..., None].expand(*depth.shape, 3))


#: torch.quantile refuses inputs of more than 2^24 values; quantiles of a random subsample of 2^20
#: are within ~1e-4 (in probability) of the exact ones, plenty for a picture's grey scale.
DEPTH_SAMPLES = 1 << 20


def depth_range(depths: torch.Tensor, low: float = 0.01, high: float = 0.99, max_samples: int = DEPTH_SAMPLES,
                seed: int = 0) -> tuple[float, float]:
    """``(near, far)``: the ``low`` and ``high`` quantiles of the hit depths (``> 0``) in ``depths``
    (any shape, any number), from a random subsample of at most ``max_samples`` of them (drawn with a
    fixed ``seed``: the same depths give the same range). ``(0, 1)`` when nothing was hit."""
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"depth quantiles must satisfy 0 <= low <= high <= 1, got {low}, {high}")
    if not 1 <= max_samples <= 1 << 24:
        raise ValueError(f"max_samples must be in [1, 2^24] (torch.quantile's limit), got {max_samples}")
    hits = depths.reshape(-1)
    hits = hits[hits > 0]
    if hits.numel() == 0:
        return 0.0, 1.0
    if hits.numel() > max_samples:
        generator = torch.Generator().manual_seed(seed)
        hits = hits[torch.randint(hits.numel(), (max_samples,), generator=generator).to(hits.device)]
    near, far = torch.quantile(hits.float(), torch.tensor([low, high], device=hits.device)).tolist()
    return near, far


def preview_depths(renderer: Renderer, poses: torch.Tensor, focal: float, width: int, height: int,
                   background: torch.Tensor, max_pixels: int = 4096) -> torch.Tensor:
    """Depths ``[n, h, w]`` of ``poses [n, 3, 4]`` rendered at a reduced size of at most ``max_pixels``
    per frame (the same field of view): enough to choose a depth range before the real frames, at
    ``max_pixels / (width * height)`` of their cost."""
    stride = max(1, math.ceil(math.sqrt(width * height / max_pixels)))
    w, h = max(1, width // stride), max(1, height // stride)
    cameras = Cameras.from_intrinsics(poses, focal * w / width, focal * h / height, w / 2, h / 2, w, h)
    return torch.stack([renderer.render_image(cameras, i, background)["depth"] for i in range(len(poses))])


def _even(frame: np.ndarray) -> np.ndarray:
    """H.264 (yuv420p) needs even sizes: pad the last row/column by repetition if needed."""
    h, w = frame.shape[:2]
    return frame if not (h % 2 or w % 2) else np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


#: What a frames folder may hold: this module's pictures, which a new render replaces.
_FRAME_FILE = re.compile(r"(frame|depth)_\d{4,}\.png")


def _check_frames_dir(path: Path) -> None:
    """Refuse (before rendering) a frames folder that holds anything but frames (it gets replaced), or
    one whose parent is not writable (its replacement is made there)."""
    prepare_output_dir(path.parent)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"frames folder exists and is not a folder: {path}")
    foreign = sorted(p.name for p in path.iterdir() if not _FRAME_FILE.fullmatch(p.name)) if path.exists() else []
    if foreign:
        raise ValueError(f"frames folder {path} holds files that are not frames ({', '.join(foreign[:3])}); "
                         "it would be replaced: choose another folder or remove them")


def write_video(renderer: Renderer, poses: torch.Tensor, focal: float, width: int, height: int,
                out: str | Path, background: torch.Tensor, frames_dir: str | Path | None = None,
                fps: int = 30, progress: bool = True) -> dict:
    """Render ``poses [n, 3, 4]`` with a pinhole of ``focal`` pixels, write ``out`` (MP4, H.264) and,
    with ``frames_dir``, ``frame_XXXX.png`` and ``depth_XXXX.png`` per frame.

    Frames are encoded as they are rendered (memory holds one frame, whatever the length). The depth
    pictures share one grey scale, the 1%-99% depth quantiles of a low-resolution preview of every
    pose (:func:`preview_depths`, :func:`depth_range`). Nothing is replaced unless every frame
    rendered: ``out`` is written atomically and ``frames_dir`` is replaced as a whole, so it holds
    exactly this render's frames.

    Returns statistics: frames, size, seconds spent rendering, samples per second.
    """
    import imageio.v2 as imageio

    n = poses.shape[0]
    cameras = Cameras.from_intrinsics(poses, focal, focal, width / 2, height / 2, width, height)
    frames_dir = None if frames_dir is None else Path(frames_dir)
    if frames_dir is not None:
        _check_frames_dir(frames_dir)
    near, far = depth_range(preview_depths(renderer, poses, focal, width, height, background))
    n_samples, seconds = 0, 0.0
    with atomic_path(out) as tmp, \
            (atomic_folder(frames_dir) if frames_dir is not None else contextlib.nullcontext()) as folder:
        writer = imageio.get_writer(tmp, format="FFMPEG", fps=fps, codec="libx264", quality=8, macro_block_size=1)
        try:
            for i in tqdm(range(n), desc="rendering", unit="frame", disable=not progress, dynamic_ncols=True):
                start = time.perf_counter()
                render = renderer.render_image(cameras, i, background)
                seconds += time.perf_counter() - start
                n_samples += render["n_samples"]
                color = to_uint8(render["color"])
                writer.append_data(_even(color))
                if folder is not None:
                    write_png(folder / f"frame_{i:04d}.png", color)
                    write_png(folder / f"depth_{i:04d}.png", depth_to_image(render["depth"], near, far))
        finally:
            writer.close()
    return {"frames": n, "width": width, "height": height, "render_seconds": seconds,
            "render_samples_per_second": n_samples / max(seconds, 1e-9), "video": str(out),
            "depth_range": [near, far]}
