"""NeRF data sets: Blender / NeRF-synthetic and instant-ngp / nerfstudio ``transforms`` files.

Formats (read as users have them, auto-detected by :func:`load_dataset`)
-----------------------------------------------------------------------
* **Blender / NeRF-synthetic**: a folder with ``transforms_{train,val,test}.json``; the global
  ``camera_angle_x`` (optionally ``camera_angle_y``) gives the focal length; ``file_path`` usually
  has no extension (``./train/r_0`` -> ``./train/r_0.png``); images are RGBA.
* **instant-ngp / nerfstudio**: one ``transforms.json`` with ``fl_x, fl_y, cx, cy, w, h`` (or
  ``camera_angle_x/y``), optional OpenCV distortion ``k1, k2, p1, p2``, ``aabb_scale``, ``scale``,
  ``offset``; any of the intrinsics may also be given per frame, overriding the global ones.
  All frames form the ``train`` split, as in instant-ngp. ``split="val"`` or ``"test"`` selects a
  deterministic hold-out: every 8th frame (indices 0, 8, 16, ... of the frames whose images exist,
  in file order). These frames are *also* in ``train`` unless ``exclude_holdout=True`` is passed.

Both formats accept the instant-ngp keys ``aabb_scale``, ``scale`` and ``offset``; the only
difference is the file layout. Frames keep the order of the JSON file.

World frame (instant-ngp's)
---------------------------
Poses in the files are camera-to-world matrices in the NeRF/Blender world (z up). Like
instant-ngp's ``nerf_matrix_to_ngp``, a world point ``p`` is mapped to

    p_ngp = cycle(scale * p + offset),   cycle(x, y, z) = (y, z, x)

with ``scale = 0.33`` and ``offset = (0.5, 0.5, 0.5)`` unless the file says otherwise; the
rotation rows are cycled the same way (a proper rotation, so nothing is mirrored and the up axis
becomes ``+y``). This places a NeRF-synthetic scene (radius ~1.5) in the unit cube. Unlike
instant-ngp we keep the OpenGL *camera* axes (the camera looks down its -z axis), see
:mod:`ngp.nerf.cameras`.

The field lives in the axis-aligned box ``aabb = 0.5 +- aabb_scale / 2`` per axis (as instant-ngp's
``m_aabb``): ``[0, 1]^3`` for NeRF-synthetic (``aabb_scale`` 1, the default), ``[-1.5, 2.5]^3`` for
the fox (``aabb_scale`` 4). ``aabb_scale`` must be a power of two (instant-ngp's cascades).

Images
------
Images are decoded by :func:`ngp.io.images.read_image` (PNG, JPEG, TIFF, OpenEXR) and held once, in
the sample type it gives: ``uint8``; ``uint16`` for 16-bit TIFFs and greyscale PNGs (Pillow reads
16-bit RGB/RGBA PNGs at 8 bits, with a warning, as instant-ngp's stb_image does); ``float16`` or
``float32`` for EXR (linear light). Shape ``[n, H, W, C]`` with ``C`` = 3 (RGB) or 4 (RGBA,
straight alpha); grey images are expanded to RGB. Values are the stored (sRGB)
values; converting to linear light is the trainer's choice. When images have different sizes
(only allowed when each frame carries its own ``w``/``h`` or focal length), ``images`` is a list of
``[H_i, W_i, C]`` tensors instead. NeRF-synthetic scenes are evaluated on a white background
(``white_background`` is True for the Blender format).
"""

from __future__ import annotations

import json
import math
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ngp.io.images import READ_EXTENSIONS, read_image
from ngp.nerf.cameras import Cameras

__all__ = ["NerfDataset", "load_dataset", "nerf_to_ngp_matrix", "ngp_aabb", "HOLDOUT_EVERY",
           "DEFAULT_SCALE", "DEFAULT_OFFSET"]

HOLDOUT_EVERY = 8
DEFAULT_SCALE = 0.33  # instant-ngp's NERF_SCALE
DEFAULT_OFFSET = (0.5, 0.5, 0.5)
SPLITS = ("train", "val", "test")
_IMAGE_EXTENSIONS = tuple(READ_EXTENSIONS) + tuple(e.upper() for e in READ_EXTENSIONS)
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
                   "k1", "k2", "p1", "p2", "k3", "k4", "is_fisheye")
_PER_FRAME_SIZE_KEYS = ("w", "h", "fl_x", "fl_y", "camera_angle_x", "camera_angle_y")


# ----------------------------------------------------------------------------------- transforms
def nerf_to_ngp_matrix(c2w: np.ndarray, scale: float = DEFAULT_SCALE,
                       offset=DEFAULT_OFFSET) -> np.ndarray:
    """NeRF/Blender world camera-to-world ``[..., 3, 4]`` -> instant-ngp world (camera axes kept).

    Translation: ``cycle(scale * t + offset)``; rotation rows cycled ``(x, y, z) -> (y, z, x)``.

    Example::

        >>> nerf_to_ngp_matrix(np.eye(4)[:3])[:, 3]  # the origin lands at the cube's centre
        array([0.5, 0.5, 0.5])
    """
    out = np.array(c2w[..., :3, :4], dtype=np.float64)
    out[..., :, 3] = out[..., :, 3] * scale + np.asarray(offset, dtype=np.float64)
    return out[..., [1, 2, 0], :]


def ngp_aabb(aabb_scale: int) -> torch.Tensor:
    """``[2, 3]`` (min, max) box of side ``aabb_scale`` centred on (0.5, 0.5, 0.5)."""
    half = 0.5 * aabb_scale
    return torch.tensor([[0.5 - half] * 3, [0.5 + half] * 3], dtype=torch.float32)


# ------------------------------------------------------------------------------------ data set
@dataclass
class NerfDataset:
    """Images and cameras of one split, in instant-ngp's world frame (see the module doc).

    Attributes:
        images: ``uint8``/``uint16`` ``[n, H, W, C]`` (``C`` 3 or 4), or a list of ``[H_i, W_i, C]``
            when sizes differ.
        cameras: the ``n`` cameras (:class:`~ngp.nerf.cameras.Cameras`), poses in the ngp frame.
        aabb: ``[2, 3]`` float (min corner, max corner) of the box the field lives in.
        aabb_scale: side of ``aabb`` (a power of two).
        white_background: True where the format's convention composites alpha on white
            (NeRF-synthetic); the images themselves are never composited here.
        file_paths: the image file of each frame.
        scale, offset: the NeRF -> ngp world mapping used (see :func:`nerf_to_ngp_matrix`).
        linear: True when the images are linear light (EXR); False for sRGB-encoded PNG/JPEG.
    """

    images: torch.Tensor | list[torch.Tensor]
    cameras: Cameras
    aabb: torch.Tensor
    aabb_scale: int
    white_background: bool
    file_paths: list[Path]
    scale: float = DEFAULT_SCALE
    offset: tuple[float, float, float] = DEFAULT_OFFSET
    format: str = "blender"
    split: str = "train"
    linear: bool = False
    _max_value: float = field(default=255.0, repr=False)

    def __post_init__(self) -> None:
        first = self.images[0]
        self._max_value = 65535.0 if first.dtype == torch.uint16 else 255.0 if first.dtype == torch.uint8 else 1.0

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def n_channels(self) -> int:
        return int(self.images[0].shape[-1])

    @property
    def has_alpha(self) -> bool:
        return self.n_channels == 4

    def _to_rgba(self, pixels: torch.Tensor) -> torch.Tensor:
        """``[R, C]`` stored values -> ``[R, 4]`` float32 in [0, 1] (alpha 1 where there is none)."""
        rgba = pixels.float() / self._max_value
        if rgba.shape[-1] == 3:
            rgba = torch.cat([rgba, torch.ones_like(rgba[:, :1])], dim=-1)
        return rgba

    def sample_batch(self, n_rays: int, generator: torch.Generator | None = None,
                     jitter: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random training pixels: uniform image, then uniform pixel in that image.

        Args:
            n_rays: number of pixels.
            generator: a CPU ``torch.Generator`` for reproducibility.
            jitter: if True, a uniform position inside the pixel instead of its centre.

        Returns:
            ``camera_index [n_rays]`` int64, ``pixel_xy [n_rays, 2]`` float32 (centres at +0.5),
            ``rgba [n_rays, 4]`` float32 in [0, 1] (alpha 1 for RGB images).

        Example::

            >>> cam, xy, rgba = dataset.sample_batch(4096, torch.Generator().manual_seed(0))
            >>> origins, dirs = generate_rays(dataset.cameras, cam, xy)
        """
        cam = torch.randint(len(self), (n_rays,), generator=generator)
        u = torch.rand(n_rays, 2, generator=generator)
        w = self.cameras.width[cam]
        h = self.cameras.height[cam]
        # floor(u * size) is uniform over the pixels of each ray's own image
        px = torch.minimum((u[:, 0] * w).long(), w - 1)
        py = torch.minimum((u[:, 1] * h).long(), h - 1)
        offset = torch.rand(n_rays, 2, generator=generator) if jitter else torch.full((n_rays, 2), 0.5)
        pixel_xy = torch.stack([px, py], dim=-1).float() + offset
        if isinstance(self.images, torch.Tensor):
            pixels = self.images[cam, py, px]
        else:
            pixels = torch.empty(n_rays, self.n_channels, dtype=self.images[0].dtype)
            for i in cam.unique().tolist():
                sel = cam == i
                pixels[sel] = self.images[i][py[sel], px[sel]]
        return cam, pixel_xy, self._to_rgba(pixels)

    def pixels_for_image(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every pixel of image ``i``, row-major (reshape to ``[H, W, ...]``).

        Returns:
            ``camera_index [H*W]``, ``pixel_xy [H*W, 2]`` (pixel centres), ``rgba [H*W, 4]`` float32.
        """
        image = self.images[i]
        h, w = image.shape[:2]
        ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        pixel_xy = torch.stack([xs, ys], dim=-1).reshape(-1, 2).float() + 0.5
        cam = torch.full((h * w,), i, dtype=torch.long)
        return cam, pixel_xy, self._to_rgba(image.reshape(h * w, -1))


# -------------------------------------------------------------------------------------- loading
def load_dataset(path: str | Path, split: str = "train", downscale: int = 1,
                 exclude_holdout: bool = False, num_threads: int = 8) -> NerfDataset:
    """Load one split of a NeRF data set, detecting its format.

    Args:
        path: a folder holding ``transforms_{split}.json`` (Blender) or ``transforms.json``
            (instant-ngp / nerfstudio), or one of those JSON files.
        split: ``"train"``, ``"val"`` or ``"test"``. For a single ``transforms.json`` see the module
            doc (every 8th frame is the val/test hold-out).
        downscale: integer factor; images are area-averaged (alpha-weighted for RGBA) after
            cropping to a multiple of it, intrinsics are scaled to match.
        exclude_holdout: single ``transforms.json`` only: leave the hold-out frames out of ``train``.
        num_threads: threads decoding images.

    Raises:
        FileNotFoundError: no transforms file, or none of the listed images exists.
        ValueError: malformed JSON, missing keys, bad poses or intrinsics, mixed image sizes
            without per-frame intrinsics. Checked before any image is decoded.

    Example::

        >>> ds = load_dataset("data/nerf/lego", split="train", downscale=4)
        >>> ds.images.shape, ds.aabb
        (torch.Size([80, 200, 200, 4]), tensor([[0., 0., 0.], [1., 1., 1.]]))
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be a positive integer, got {downscale!r}")
    json_path, fmt = _find_transforms(Path(path), split)
    meta = _read_json(json_path)
    frames = _frames(meta, json_path)
    base = json_path.parent

    image_paths = [_resolve_image(base, f["file_path"]) for f in frames]
    present = [i for i, p in enumerate(image_paths) if p is not None]
    if not present:
        raise FileNotFoundError(f"none of the {len(frames)} images listed in {json_path} exists "
                                f"(first: {base / frames[0]['file_path']})")
    if len(present) < len(frames):
        first = next(f["file_path"] for f, p in zip(frames, image_paths) if p is None)
        warnings.warn(f"{json_path}: skipping {len(frames) - len(present)} of {len(frames)} frames "
                      f"whose image file is missing (first: {first})", stacklevel=2)
    if fmt == "single":
        present = _select_split(present, split, exclude_holdout)
    frames = [frames[i] for i in present]
    image_paths = [image_paths[i] for i in present]

    c2w = np.stack([_pose(f, i, json_path) for i, f in zip(present, frames)])
    scale, offset, aabb_scale = _world_params(meta, json_path)
    c2w = torch.as_tensor(nerf_to_ngp_matrix(c2w, scale, offset), dtype=torch.float32)
    cameras = _cameras(meta, frames, image_paths, c2w, json_path)

    images = _load_images(image_paths, downscale, num_threads)
    if downscale > 1:
        cameras = cameras.scaled(1.0 / downscale)
    if len({tuple(im.shape) for im in images}) == 1:
        images = torch.stack(images)
    return NerfDataset(images=images, cameras=cameras, aabb=ngp_aabb(aabb_scale),
                       aabb_scale=aabb_scale, white_background=fmt == "blender",
                       file_paths=image_paths, scale=scale, offset=offset,
                       format="blender" if fmt == "blender" else "instant-ngp", split=split,
                       linear=images[0].dtype.is_floating_point)


def _find_transforms(path: Path, split: str) -> tuple[Path, str]:
    """The JSON file to read and its layout: 'blender' (one file per split) or 'single'."""
    if path.is_file():
        m = re.fullmatch(r"transforms_(\w+)\.json", path.name)
        if m and m.group(1) in SPLITS:
            if m.group(1) != split:
                raise ValueError(f"{path} holds the {m.group(1)!r} split but split={split!r} was "
                                 "asked; pass the folder to choose a split")
            return path, "blender"
        return path, "single"
    if not path.is_dir():
        raise FileNotFoundError(f"no NeRF data set at {path}: not a file or folder")
    if (path / f"transforms_{split}.json").is_file():
        return path / f"transforms_{split}.json", "blender"
    if (path / "transforms.json").is_file():
        return path / "transforms.json", "single"
    found = sorted(p.name for p in path.glob("transforms*.json"))
    raise FileNotFoundError(f"no transforms_{split}.json or transforms.json in {path}"
                            + (f" (found {', '.join(found)})" if found else ""))


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level")
    return meta


def _frames(meta: dict, path: Path) -> list[dict]:
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path} has no 'frames' list (or it is empty)")
    for i, f in enumerate(frames):
        for key in ("file_path", "transform_matrix"):
            if not isinstance(f, dict) or key not in f:
                raise ValueError(f"{path}: frame {i} has no {key!r}")
        f["file_path"] = str(f["file_path"]).replace("\\", "/")  # Windows paths, as instant-ngp
    return frames


def _resolve_image(base: Path, file_path: str) -> Path | None:
    """The image file of a frame; an extension-less path tries the usual ones (Blender: .png)."""
    path = Path(file_path)
    path = path if path.is_absolute() else base / path
    if path.is_file():
        return path
    if path.suffix.lower() not in READ_EXTENSIONS:
        for ext in _IMAGE_EXTENSIONS:
            candidate = path.with_name(path.name + ext)
            if candidate.is_file():
                return candidate
    return None


def _select_split(indices: list[int], split: str, exclude_holdout: bool) -> list[int]:
    holdout = indices[::HOLDOUT_EVERY]
    if split != "train":
        return holdout
    if exclude_holdout:
        held = set(holdout)
        return [i for i in indices if i not in held]
    return indices


def _pose(frame: dict, index: int, path: Path) -> np.ndarray:
    name = f"frame {index} ({frame['file_path']})"
    try:
        m = np.asarray(frame["transform_matrix"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: {name}: transform_matrix is not a numeric matrix") from e
    if m.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"{path}: {name}: transform_matrix must be 4x4 or 3x4, got {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{path}: {name}: transform_matrix has non-finite values")
    rotation = m[:3, :3]
    # relative test: a rotation scaled by s has |det| = s^3
    if abs(np.linalg.det(rotation)) <= 1e-6 * max(np.abs(rotation).max(), 1e-30) ** 3:
        raise ValueError(f"{path}: {name}: transform_matrix is singular (not invertible)")
    return m[:3, :4]


def _world_params(meta: dict, path: Path) -> tuple[float, tuple[float, float, float], int]:
    try:
        scale = float(meta.get("scale", DEFAULT_SCALE))
        offset = meta.get("offset", DEFAULT_OFFSET)
        offset = tuple(float(v) for v in (offset if isinstance(offset, (list, tuple)) else [offset] * 3))
        aabb_scale = int(meta.get("aabb_scale", 1))
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: 'scale', 'offset' or 'aabb_scale' is malformed: {e}") from e
    if len(offset) != 3 or not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"{path}: need scale > 0 and 3 offsets, got scale={scale}, offset={offset}")
    if aabb_scale < 1 or aabb_scale & (aabb_scale - 1) or aabb_scale > 128:
        raise ValueError(f"{path}: aabb_scale must be a power of two in [1, 128], got {aabb_scale}")
    return scale, offset, aabb_scale


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # formats PIL cannot read (EXR): decode once, only for the size
        image = read_image(path, keep_alpha=True)
        return image.width, image.height


def _cameras(meta: dict, frames: list[dict], image_paths: list[Path], c2w: torch.Tensor,
             path: Path) -> Cameras:
    """Cameras with per-frame intrinsics (frame keys override global ones), checked against the
    image sizes read from the file headers."""
    per_frame_size = any(k in f for f in frames for k in _PER_FRAME_SIZE_KEYS)
    sizes = [_image_size(p) for p in image_paths]
    if len(set(sizes)) > 1 and not per_frame_size:
        wxh = [f"{w}x{h}" for w, h in sizes]
        odd = next(i for i, size in enumerate(sizes) if size != sizes[0])
        summary = ", ".join(f"{w}x{h}" for w, h in sorted(set(sizes)))
        raise ValueError(f"{path}: images have different sizes ({summary}; {image_paths[odd].name} "
                         f"is {wxh[odd]}, {image_paths[0].name} is {wxh[0]}) but the frames "
                         "carry no intrinsics of their own (w, h, fl_x, ...)")
    rows = []
    for frame, (w_img, h_img), image in zip(frames, sizes, image_paths):
        k = {key: meta[key] for key in _INTRINSIC_KEYS if key in meta}
        k.update({key: frame[key] for key in _INTRINSIC_KEYS if key in frame})
        rows.append(_camera_row(k, w_img, h_img, image, path))
    cols = list(zip(*rows))
    distortion = cols[6:] if any(any(v != 0 for v in c) for c in cols[6:]) else [None] * 4
    return Cameras.from_intrinsics(c2w, *cols[:6], *distortion)


def _camera_row(k: dict, w_img: int, h_img: int, image: Path, path: Path) -> tuple:
    if k.get("is_fisheye"):
        raise ValueError(f"{path}: fisheye cameras (is_fisheye) are not supported")
    if any(float(k.get(key, 0.0)) != 0.0 for key in ("k3", "k4")):
        raise ValueError(f"{path}: distortion coefficients k3/k4 are not supported (only k1, k2, p1, p2)")
    w, h = int(k.get("w", w_img)), int(k.get("h", h_img))
    if (w, h) != (w_img, h_img):
        raise ValueError(f"{path}: image {image} is {w_img}x{h_img} but the transforms say {w}x{h}")
    fx = float(k["fl_x"]) if "fl_x" in k else _focal(k.get("camera_angle_x"), w)
    fy = float(k["fl_y"]) if "fl_y" in k else _focal(k.get("camera_angle_y"), h)
    # as instant-ngp: one focal length given -> square pixels
    fx, fy = fx if fx is not None else fy, fy if fy is not None else fx
    if fx is None:
        raise ValueError(f"{path}: no focal length for {image}: need 'fl_x'/'fl_y' or "
                         "'camera_angle_x'/'camera_angle_y' (globally or in the frame)")
    if not (fx > 0 and fy > 0 and math.isfinite(fx) and math.isfinite(fy)):
        raise ValueError(f"{path}: focal length of {image} must be positive and finite, got {fx}, {fy}")
    cx, cy = float(k.get("cx", w / 2)), float(k.get("cy", h / 2))
    dist = tuple(float(k.get(key, 0.0)) for key in ("k1", "k2", "p1", "p2"))
    return (fx, fy, cx, cy, w, h) + dist


def _focal(angle, size: int) -> float | None:
    return None if angle is None else 0.5 * size / math.tan(0.5 * float(angle))


# ---------------------------------------------------------------------------------------- images
def _load_images(paths: list[Path], downscale: int, num_threads: int) -> list[torch.Tensor]:
    """Decode (in threads: the decoders release the GIL) and downscale; common channel count."""
    def load(p: Path) -> np.ndarray:
        return _downscale(_decode(p), downscale)

    with ThreadPoolExecutor(max(1, min(num_threads, len(paths)))) as pool:
        arrays = list(pool.map(load, paths))
    channels = max(a.shape[-1] for a in arrays)
    out = []
    for a in arrays:
        if a.shape[-1] < channels:  # mixed RGB / RGBA: opaque alpha for the RGB ones
            full = np.iinfo(a.dtype).max if a.dtype.kind == "u" else 1.0
            a = np.concatenate([a, np.full(a.shape[:2] + (1,), full, a.dtype)], axis=-1)
        out.append(torch.from_numpy(np.ascontiguousarray(a)))
    return out


def _decode(path: Path) -> np.ndarray:
    """``[H, W, 3 or 4]`` in the file's sample type (grey expanded to RGB), via :mod:`ngp.io.images`."""
    a = read_image(path, keep_alpha=True).array
    if a.shape[-1] in (1, 2):  # grey (+ alpha) -> RGB (+ alpha)
        a = np.concatenate([np.repeat(a[..., :1], 3, axis=-1), a[..., 1:]], axis=-1)
    return a


def _downscale(a: np.ndarray, n: int) -> np.ndarray:
    """Area-average ``n x n`` blocks (alpha-weighted colour for RGBA), cropping the remainder."""
    if n == 1:
        return a
    h, w = a.shape[0] // n * n, a.shape[1] // n * n
    x = a[:h, :w].astype(np.float32).reshape(h // n, n, w // n, n, a.shape[-1])
    if a.shape[-1] == 4:
        # average premultiplied colour: compositing the result on any background then equals
        # downscaling the composited image
        alpha = x[..., 3:].mean(axis=(1, 3))
        rgb = (x[..., :3] * x[..., 3:]).mean(axis=(1, 3)) / np.maximum(alpha, 1e-8)
        y = np.concatenate([rgb, alpha], axis=-1)
    else:
        y = x.mean(axis=(1, 3))
    if a.dtype.kind == "u":
        return np.clip(np.rint(y), 0, np.iinfo(a.dtype).max).astype(a.dtype)
    return y.astype(a.dtype)
