"""NeRF data sets: Blender / NeRF-synthetic and instant-ngp / nerfstudio ``transforms`` files.

Formats (read as users have them, auto-detected by :func:`load_dataset`)
-----------------------------------------------------------------------
* **Blender / NeRF-synthetic**: a folder with ``transforms_{train,val,test}.json``; the global
  ``camera_angle_x`` (optionally ``camera_angle_y``) gives the focal length; ``file_path`` usually
  has no extension (``./train/r_0`` -> ``./train/r_0.png``); images are RGBA.
* **instant-ngp / nerfstudio**: one ``transforms.json`` with ``fl_x, fl_y, cx, cy, w, h`` (or
  ``camera_angle_x/y``), optional OpenCV distortion ``k1, k2, p1, p2``, ``aabb_scale``, ``scale``,
  ``offset``; any of the intrinsics may also be given per frame, overriding the global ones.
  Such a file has no splits of its own, so validation frames are held out of training:
  every 8th frame (``holdout_every``; indices 0, 8, 16, ... of the frames whose images exist, in
  file order) forms ``split="val"`` (``"test"`` is an alias: the same frames) and is *not* in
  ``"train"``; ``split="all"`` is every frame (instant-ngp trains on all of them; use it to evaluate
  on a whole file). A file with fewer than 2 usable frames holds nothing out (its ``val`` is empty).
  Frames whose image file is missing are skipped with one warning saying how many.

Every value is checked before any image is decoded: a missing, non-numeric, non-finite, zero or
out-of-range intrinsic (including a lens distortion that cannot be undone within the image), a
pose that is not a rotation + translation, a bad ``aabb_scale``... is a ``ValueError`` whose
message names the file, the frame (``frame 3 (images/0003.jpg)``) and the key.

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
:mod:`ngp.geometry.cameras`.

The field lives in the axis-aligned box ``aabb = 0.5 +- aabb_scale / 2`` per axis (as instant-ngp's
``m_aabb``): ``[0, 1]^3`` for NeRF-synthetic (``aabb_scale`` 1, the default), ``[-1.5, 2.5]^3`` for
the fox (``aabb_scale`` 4). ``aabb_scale`` must be a power of two in 1..128 (instant-ngp's
cascades; instant-ngp would truncate ``2.7`` to 2 silently, here it is an error).

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

import functools
import json
import math
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ngp.geometry.cameras import Cameras, distort, undistort
from ngp.io.images import READ_EXTENSIONS, read_image

__all__ = ["NerfDataset", "load_dataset", "nerf_to_ngp_matrix", "ngp_aabb", "HOLDOUT_EVERY",
           "DEFAULT_SCALE", "DEFAULT_OFFSET"]

HOLDOUT_EVERY = 8
DEFAULT_SCALE = 0.33  # instant-ngp's NERF_SCALE
DEFAULT_OFFSET = (0.5, 0.5, 0.5)
SPLITS = ("train", "val", "test", "all")
_RIGID_TOLERANCE = 1e-2  # max |R^T R - I|: files store rotations rounded, never sheared by percent
_CAMERA_MODELS = ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE")  # nerfstudio's models this pinhole loader matches
_IMAGE_EXTENSIONS = tuple(READ_EXTENSIONS) + tuple(e.upper() for e in READ_EXTENSIONS)
_INTRINSIC_KEYS = ("fl_x", "fl_y", "cx", "cy", "w", "h", "camera_angle_x", "camera_angle_y",
                   "k1", "k2", "p1", "p2", "k3", "k4", "is_fisheye", "camera_model")
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
        cameras: the ``n`` cameras (:class:`~ngp.geometry.cameras.Cameras`), poses in the ngp frame.
        aabb: ``[2, 3]`` float (min corner, max corner) of the box the field lives in.
        aabb_scale: side of ``aabb`` (a power of two).
        white_background: True where the format's convention composites alpha on white
            (NeRF-synthetic); the images themselves are never composited here.
        file_paths: the image file of each frame.
        scale, offset: the NeRF -> ngp world mapping used (see :func:`nerf_to_ngp_matrix`).
        linear: True when the images are linear light (EXR); False for sRGB-encoded PNG/JPEG.
        split: the split asked for (``"test"`` on a single file holds the ``"val"`` frames).
        frame_indices: for each image, its index in the transforms file's ``frames`` list.
        n_held_out: frames of the file held out of ``train`` for validation (0 for Blender).
        n_available: frames of the file whose image exists; ``n_listed``: frames it lists.
        holdout_every: the hold-out period used (0: none, and always 0 for Blender).
        transforms_path: the JSON file read.

    A split may be empty (a single file's ``val`` when nothing is held out): then ``images`` is
    ``[0, 0, 0, C]`` and ``cameras`` has no camera.
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
    frame_indices: list[int] | None = None
    n_held_out: int = 0
    n_available: int | None = None
    n_listed: int | None = None
    holdout_every: int = 0
    transforms_path: Path | None = None
    _max_value: float = field(default=255.0, repr=False)

    def __post_init__(self) -> None:
        dtype = self.images.dtype if isinstance(self.images, torch.Tensor) else self.images[0].dtype
        self._max_value = 65535.0 if dtype == torch.uint16 else 255.0 if dtype == torch.uint8 else 1.0
        n = len(self.cameras)
        self.frame_indices = list(range(n)) if self.frame_indices is None else list(self.frame_indices)
        self.n_available = n if self.n_available is None else self.n_available
        self.n_listed = self.n_available if self.n_listed is None else self.n_listed

    def __len__(self) -> int:
        return len(self.cameras)

    @property
    def file_names(self) -> list[str]:
        """The image file name of each frame (``file_paths`` without folders)."""
        return [Path(p).name for p in self.file_paths]

    def holdout_summary(self) -> str:
        """One line on what was held out for validation, e.g.
        ``"held out 6 of 45 frames for validation (every 8th)"``."""
        if self.format == "blender":
            return f"nothing held out: the Blender format has its own {self.split!r} split"
        if self.n_held_out:
            return (f"held out {self.n_held_out} of {self.n_available} frames for validation "
                    f"(every {_ordinal(self.holdout_every)})")
        if self.holdout_every == 0:
            return "nothing held out for validation (holdout_every=0)"
        return f"nothing held out for validation (only {self.n_available} frame{'s' * (self.n_available != 1)})"

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
        if len(self) == 0:
            raise ValueError(f"the {self.split!r} split of {self.transforms_path} has no frames to sample")
        cam = torch.randint(len(self), (n_rays,), generator=generator)
        u = torch.rand(n_rays, 2, generator=generator)
        w = self.cameras.width[cam]
        h = self.cameras.height[cam]
        # floor(u * size) is uniform over the pixels of each ray's own image
        px = torch.minimum((u[:, 0] * w).long(), w - 1)
        py = torch.minimum((u[:, 1] * h).long(), h - 1)
        offset = torch.rand(n_rays, 2, generator=generator) if jitter else torch.full((n_rays, 2), 0.5)
        pixel_xy = torch.stack([px, py], dim=-1).float() + offset
        if isinstance(self.images, torch.Tensor) and self.images.is_contiguous():
            # rows of the flattened images: one index_select, where images[cam, py, px] took 4x as long
            # (13k pixels of lego's 80 images: 0.64 -> 0.16 ms, measured)
            n, height, width, channels = self.images.shape
            pixels = self.images.view(n * height * width, channels).index_select(0, (cam * height + py) * width + px)
        elif isinstance(self.images, torch.Tensor):
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
                 exclude_holdout: bool | None = None, num_threads: int = 8, *,
                 holdout_every: int = HOLDOUT_EVERY) -> NerfDataset:
    """Load one split of a NeRF data set, detecting its format.

    Args:
        path: a folder holding ``transforms_{split}.json`` (Blender) or ``transforms.json``
            (instant-ngp / nerfstudio), or one of those JSON files.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.

            * Blender folder: the split's own file; ``"all"`` is refused there (pass one
              ``transforms_*.json`` file to get all of its frames).
            * single ``transforms.json``: ``"train"`` = the frames *not* held out, ``"val"`` = the
              held-out frames (never trained on), ``"test"`` = an alias of ``"val"`` (the file has
              no test set of its own), ``"all"`` = every frame (e.g. to evaluate on a whole file).
        downscale: integer factor; images are area-averaged (alpha-weighted for RGBA) after
            cropping to a multiple of it, intrinsics are scaled to match.
        exclude_holdout: deprecated (``train`` now always leaves the held-out frames out);
            ``False`` still gives every frame for ``"train"``, as ``split="all"`` does.
        num_threads: threads decoding images.
        holdout_every: single ``transforms.json`` only: hold out every ``holdout_every``-th frame
            (0, 8, 16, ... of the frames whose image exists, in file order); ``0`` holds nothing
            out. A file with fewer than 2 usable frames holds nothing out. With nothing held
            out, ``"val"``/``"test"`` give an empty data set (``len() == 0``): the caller says so.

    Returns:
        The split; ``frame_indices``, ``file_paths``, ``n_held_out`` and :meth:`NerfDataset.holdout_summary`
        say which frames of the file it holds.

    Raises:
        FileNotFoundError: no transforms file, or none of the listed images exists.
        ValueError: malformed JSON, missing keys, bad poses, intrinsics, ``aabb_scale``, ``scale``
            or ``offset``, a folder where an image should be, mixed image sizes without per-frame
            intrinsics. The message names the file (and the frame and key). Checked before any
            image is decoded (mixed bit depths and corrupt pixel data: while decoding).

    Example::

        >>> ds = load_dataset("data/nerf/lego", split="train", downscale=4)
        >>> ds.images.shape, ds.aabb
        (torch.Size([80, 200, 200, 4]), tensor([[0., 0., 0.], [1., 1., 1.]]))
        >>> load_dataset("data/nerf/fox").holdout_summary()
        'held out 6 of 45 frames for validation (every 8th)'
    """
    _check_arguments(split, downscale, holdout_every)
    json_path, fmt = _find_transforms(Path(path), split)
    if exclude_holdout is not None:
        warnings.warn("load_dataset(exclude_holdout=...) is deprecated: split='train' leaves the held-out "
                      "frames out; use split='all' for every frame", DeprecationWarning, stacklevel=2)
        if not exclude_holdout and split == "train" and fmt == "single":
            split = "all"
    meta = _read_json(json_path)
    frames = _frames(meta, json_path)
    where = [f"{json_path}: frame {i} ({f['file_path']})" for i, f in enumerate(frames)]
    poses = [_pose(f, w) for f, w in zip(frames, where)]  # every frame checked, whatever the split
    _check_intrinsics(meta, str(json_path))
    for f, w in zip(frames, where):
        _check_intrinsics(f, w)
    scale, offset, aabb_scale = _world_params(meta, json_path)

    base = json_path.parent
    image_paths = [_resolve_image(base, f["file_path"], w) for f, w in zip(frames, where)]
    present = _present(frames, image_paths, json_path)
    every = holdout_every if fmt == "single" else 0
    held = present[::every] if every and len(present) >= 2 else []
    chosen = _choose(present, held, split, fmt)

    common = dict(aabb=ngp_aabb(aabb_scale), aabb_scale=aabb_scale, white_background=fmt == "blender",
                  scale=scale, offset=offset, format="blender" if fmt == "blender" else "instant-ngp",
                  split=split, frame_indices=chosen, n_held_out=len(held), n_available=len(present),
                  n_listed=len(frames), holdout_every=every, transforms_path=json_path)
    if not chosen:
        return NerfDataset(images=torch.empty(0, 0, 0, 4 if fmt == "blender" else 3, dtype=torch.uint8),
                           cameras=_no_cameras(), file_paths=[], **common)
    frames, where = [frames[i] for i in chosen], [where[i] for i in chosen]
    image_paths = [image_paths[i] for i in chosen]
    c2w = torch.as_tensor(nerf_to_ngp_matrix(np.stack([poses[i] for i in chosen]), scale, offset),
                          dtype=torch.float32)
    sizes = [_image_size(p) for p in image_paths]  # file headers only
    cameras = _cameras(meta, frames, sizes, image_paths, where, c2w, json_path)
    _check_downscale(downscale, sizes, image_paths)

    images = _load_images(image_paths, downscale, num_threads)
    if downscale > 1:
        cameras = cameras.scaled(1.0 / downscale)
    if len({tuple(im.shape) for im in images}) == 1:
        images = torch.stack(images)
    return NerfDataset(images=images, cameras=cameras, file_paths=image_paths,
                       linear=images[0].dtype.is_floating_point, **common)


def _check_arguments(split: str, downscale: int, holdout_every: int) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if not _is_number(downscale) or int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be a positive integer, got {downscale!r}")
    if isinstance(holdout_every, bool) or not isinstance(holdout_every, int) or holdout_every < 0 \
            or holdout_every == 1:  # 1 would hold out every frame and leave nothing to train on
        raise ValueError(f"holdout_every must be 0 (hold nothing out) or an integer >= 2, got {holdout_every!r}")


def _find_transforms(path: Path, split: str) -> tuple[Path, str]:
    """The JSON file to read and its layout: 'blender' (one file per split) or 'single'."""
    if path.is_file():
        m = re.fullmatch(r"transforms_(\w+)\.json", path.name)
        if m and m.group(1) in SPLITS[:3]:
            if m.group(1) != split and split != "all":
                raise ValueError(f"{path} holds the {m.group(1)!r} split but split={split!r} was "
                                 "asked; pass the folder to choose a split")
            return path, "blender"
        return path, "single"
    if not path.is_dir():
        raise FileNotFoundError(f"no NeRF data set at {path}: not a file or folder")
    for name in (f"transforms_{split}.json", "transforms.json"):
        if (path / name).is_dir():
            raise ValueError(f"{path / name} is a folder, not a transforms file")
    if split != "all" and (path / f"transforms_{split}.json").is_file():
        return path / f"transforms_{split}.json", "blender"
    if (path / "transforms.json").is_file():
        return path / "transforms.json", "single"
    found = sorted(p.name for p in path.glob("transforms*.json"))
    if split == "all" and found:
        raise ValueError(f"split='all' needs one transforms file, but {path} is a Blender folder with one "
                         f"file per split ({', '.join(found)}): pass one of them, e.g. {path / found[0]}")
    raise FileNotFoundError(f"no transforms_{split}.json or transforms.json in {path}"
                            + (f" (found {', '.join(found)})" if found else ""))


def _read_json(path: Path) -> dict:
    try:
        meta = json.loads(path.read_bytes())  # bytes: json detects UTF-8/16/32 itself
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object at the top level, got {type(meta).__name__}")
    return meta


def _frames(meta: dict, path: Path) -> list[dict]:
    """The frames, each checked to be an object with a ``file_path`` string (``/`` separators)."""
    frames = meta.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path} has no 'frames' list (or it is empty)")
    out = []
    for i, f in enumerate(frames):
        if not isinstance(f, dict):
            raise ValueError(f"{path}: frame {i} is not a JSON object, got {_short(f)}")
        for key in ("file_path", "transform_matrix"):
            if key not in f:
                raise ValueError(f"{path}: frame {i} has no {key!r}")
        if not isinstance(f["file_path"], str) or not f["file_path"].strip():
            raise ValueError(f"{path}: frame {i}: 'file_path' must be a non-empty string, got {_short(f['file_path'])}")
        out.append({**f, "file_path": f["file_path"].replace("\\", "/")})  # Windows paths, as instant-ngp
    return out


def _resolve_image(base: Path, file_path: str, where: str) -> Path | None:
    """The image file of a frame (None if missing); an extension-less path tries the usual ones
    (Blender: ``.png``). A folder in the image's place is an error, not a missing image."""
    path = Path(file_path)
    path = path if path.is_absolute() else base / path
    candidates = [path]
    if path.name and path.suffix.lower() not in READ_EXTENSIONS:
        candidates += [path.with_name(path.name + ext) for ext in _IMAGE_EXTENSIONS]
    try:
        found = next((c for c in candidates if c.is_file()), None)
        folder = next((c for c in candidates if c.is_dir()), None)
    except (OSError, ValueError) as e:  # a NUL byte, a name too long for the file system
        raise ValueError(f"{where}: 'file_path' is not a usable path ({e})") from None
    if found is None and folder is not None:
        raise ValueError(f"{where}: the image path {folder} is a folder, not an image file")
    return found


def _present(frames: list[dict], image_paths: list[Path | None], path: Path) -> list[int]:
    """Indices of the frames whose image exists; frames without one are skipped with one warning
    (instant-ngp's fox lists such frames)."""
    present = [i for i, p in enumerate(image_paths) if p is not None]
    if not present:
        raise FileNotFoundError(f"none of the {len(frames)} images listed in {path} exists "
                                f"(first: {path.parent / frames[0]['file_path']})")
    if len(present) < len(frames):
        first = next(f["file_path"] for f, p in zip(frames, image_paths) if p is None)
        warnings.warn(f"{path}: skipping {len(frames) - len(present)} of {len(frames)} frames "
                      f"whose image file is missing (first: {first})", stacklevel=3)
    return present


def _choose(present: list[int], held: list[int], split: str, fmt: str) -> list[int]:
    """Indices (into the file's frames) of ``split``: a Blender file is its split; a single file's
    ``train`` is what is not ``held`` out, its ``val``/``test`` what is."""
    if split == "all" or fmt == "blender":
        return present
    if split == "train":
        held_out = set(held)
        return [i for i in present if i not in held_out]
    return held


def _pose(frame: dict, where: str) -> np.ndarray:
    """``[3, 4]`` camera-to-world of a frame, checked to be finite and rigid (rotation + translation)."""
    value = frame["transform_matrix"]
    if not (isinstance(value, list) and all(isinstance(r, list) and all(map(_is_number, r)) for r in value)):
        raise ValueError(f"{where}: transform_matrix must be rows of numbers, got {_short(value)}")
    lengths = sorted({len(r) for r in value})
    if len(value) not in (3, 4) or lengths != [4]:
        raise ValueError(f"{where}: transform_matrix must be 4x4 or 3x4, got {len(value)} rows of "
                         f"{'/'.join(map(str, lengths)) or 0} numbers")
    m = np.array(value, dtype=np.float64)
    if not np.isfinite(m).all():
        raise ValueError(f"{where}: transform_matrix has non-finite values")
    rotation = m[:3, :3]
    # relative test: a rotation scaled by s has |det| = s^3
    if abs(np.linalg.det(rotation)) <= 1e-6 * max(np.abs(rotation).max(), 1e-30) ** 3:
        raise ValueError(f"{where}: transform_matrix is singular (not invertible)")
    deviation = np.abs(rotation.T @ rotation - np.eye(3)).max()
    if deviation > _RIGID_TOLERANCE:
        raise ValueError(f"{where}: transform_matrix is not a rotation and a translation (its 3x3 part is "
                         f"scaled or sheared: R^T R differs from I by {deviation:.3g})")
    if np.linalg.det(rotation) < 0:
        raise ValueError(f"{where}: transform_matrix mirrors the camera (rotation with determinant -1)")
    if len(m) == 4 and np.abs(m[3] - [0, 0, 0, 1]).max() > 1e-4:
        raise ValueError(f"{where}: transform_matrix's last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    return m[:3, :4]


def _check_intrinsics(d: dict, where: str) -> None:
    """Type and range of every intrinsic key present in ``d`` (the file's top level or one frame);
    ``cx``/``cy`` are checked against the image size in :func:`_camera_row`."""
    for key in _INTRINSIC_KEYS:
        if key not in d:
            continue
        v = d[key]
        if key == "is_fisheye":
            if not isinstance(v, bool):
                raise ValueError(f"{where}: 'is_fisheye' must be true or false, got {_short(v)}")
            if v:
                raise ValueError(f"{where}: fisheye cameras (is_fisheye) are not supported")
        elif key == "camera_model":
            if not isinstance(v, str):
                raise ValueError(f"{where}: 'camera_model' must be a string, got {_short(v)}")
            if v not in _CAMERA_MODELS:
                raise ValueError(f"{where}: 'camera_model' {v!r} is not supported (supported: "
                                 f"{', '.join(_CAMERA_MODELS)})")
        elif not _is_number(v) or not math.isfinite(v):
            raise ValueError(f"{where}: {key!r} must be a finite number, got {_short(v)}")
        elif key.startswith("camera_angle") and not 0 < v < math.pi:
            raise ValueError(f"{where}: {key!r} must be an angle in (0, pi) radians, got {v!r}")
        elif key in ("fl_x", "fl_y") and v <= 0:
            raise ValueError(f"{where}: {key!r} must be a positive focal length in pixels, got {v!r}")
        elif key in ("w", "h") and (v <= 0 or v != int(v)):
            raise ValueError(f"{where}: {key!r} must be a positive whole number of pixels, got {v!r}")
        elif key in ("k3", "k4") and v != 0:
            raise ValueError(f"{where}: {key!r} = {v!r}: distortion coefficients k3/k4 are not supported "
                             "(only k1, k2, p1, p2)")


def _world_params(meta: dict, path: Path) -> tuple[float, tuple[float, float, float], int]:
    scale = meta.get("scale", DEFAULT_SCALE)
    if not (_is_number(scale) and math.isfinite(scale) and scale > 0):
        raise ValueError(f"{path}: 'scale' must be a positive finite number, got {_short(scale)}")
    offset = meta.get("offset", DEFAULT_OFFSET)
    values = [offset] * 3 if _is_number(offset) else offset
    if not (isinstance(values, (list, tuple)) and len(values) == 3
            and all(_is_number(v) and math.isfinite(v) for v in values)):
        raise ValueError(f"{path}: 'offset' must be a finite number or 3 of them, got {_short(offset)}")
    aabb_scale = meta.get("aabb_scale", 1)
    # instant-ngp reads it into an int (truncating 2.7 to 2) and then requires a power of two up to
    # 1 << (NERF_CASCADES - 1); a fraction is refused here rather than silently truncated
    if not (_is_number(aabb_scale) and math.isfinite(aabb_scale) and aabb_scale == int(aabb_scale)
            and 1 <= aabb_scale <= 128 and not int(aabb_scale) & (int(aabb_scale) - 1)):
        raise ValueError(f"{path}: 'aabb_scale' must be a power of two in 1..128 (instant-ngp's cascades), "
                         f"got {_short(aabb_scale)}")
    return float(scale), tuple(float(v) for v in values), int(aabb_scale)


def _image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception:  # formats PIL cannot read (EXR): decode once, only for the size
        image = read_image(path, keep_alpha=True)
        return image.width, image.height


def _cameras(meta: dict, frames: list[dict], sizes: list[tuple[int, int]], image_paths: list[Path],
             where: list[str], c2w: torch.Tensor, path: Path) -> Cameras:
    """Cameras with per-frame intrinsics (frame keys override global ones), checked against the
    image sizes read from the file headers."""
    per_frame_size = any(k in f for f in frames for k in _PER_FRAME_SIZE_KEYS)
    if len(set(sizes)) > 1 and not per_frame_size:
        wxh = [f"{w}x{h}" for w, h in sizes]
        odd = next(i for i, size in enumerate(sizes) if size != sizes[0])
        summary = ", ".join(f"{w}x{h}" for w, h in sorted(set(sizes)))
        raise ValueError(f"{path}: images have different sizes ({summary}; {image_paths[odd].name} "
                         f"is {wxh[odd]}, {image_paths[0].name} is {wxh[0]}) but the frames "
                         "carry no intrinsics of their own (w, h, fl_x, ...)")
    rows = []
    for frame, (w_img, h_img), name in zip(frames, sizes, where):
        k = {key: meta[key] for key in _INTRINSIC_KEYS if key in meta}
        k.update({key: frame[key] for key in _INTRINSIC_KEYS if key in frame})
        rows.append(_camera_row(k, w_img, h_img, name))
    cols = list(zip(*rows))
    distortion = cols[6:] if any(any(v != 0 for v in c) for c in cols[6:]) else [None] * 4
    return Cameras.from_intrinsics(c2w, *cols[:6], *distortion)


def _camera_row(k: dict, w_img: int, h_img: int, where: str) -> tuple:
    """``(fx, fy, cx, cy, w, h, k1, k2, p1, p2)`` of one frame from keys checked by :func:`_check_intrinsics`."""
    w, h = int(k.get("w", w_img)), int(k.get("h", h_img))
    if (w, h) != (w_img, h_img):
        raise ValueError(f"{where}: the image is {w_img}x{h_img} but the transforms say {w}x{h}")
    fx = float(k["fl_x"]) if "fl_x" in k else _focal(k.get("camera_angle_x"), w)
    fy = float(k["fl_y"]) if "fl_y" in k else _focal(k.get("camera_angle_y"), h)
    # as instant-ngp: one focal length given -> square pixels
    fx, fy = fx if fx is not None else fy, fy if fy is not None else fx
    if fx is None:
        raise ValueError(f"{where}: no focal length: need 'fl_x'/'fl_y' or "
                         "'camera_angle_x'/'camera_angle_y' (globally or in the frame)")
    for key, size in (("cx", w), ("cy", h)):
        if key in k and not 0 <= k[key] <= size:
            raise ValueError(f"{where}: {key!r} = {k[key]!r} lies outside the image (0..{size} pixels)")
    cx, cy = float(k.get("cx", w / 2)), float(k.get("cy", h / 2))
    dist = tuple(float(k.get(key, 0.0)) for key in ("k1", "k2", "p1", "p2"))
    problem = _distortion_problem(*dist, fx, fy, cx, cy, w, h) if any(dist) else None
    if problem:
        raise ValueError(f"{where}: the lens distortion (k1, k2, p1, p2) = ({', '.join(f'{d:g}' for d in dist)}) "
                         f"{problem}; check the calibration")
    return (fx, fy, cx, cy, w, h) + dist


@functools.lru_cache(maxsize=64)  # frames usually share their intrinsics
def _distortion_problem(k1, k2, p1, p2, fx, fy, cx, cy, w, h) -> str | None:
    """Why rays cannot be made for every pixel with this lens, or None: coefficients are out of
    range when undistorting (as :func:`~ngp.geometry.cameras.generate_rays` does) fails to converge
    or folds the image over itself somewhere between its edges."""
    n = 17
    u, v = torch.meshgrid(torch.linspace(0, w, n, dtype=torch.float64),
                          torch.linspace(0, h, n, dtype=torch.float64), indexing="xy")
    xd, yd = ((u - cx) / fx).reshape(-1), ((v - cy) / fy).reshape(-1)
    x, y = undistort(xd, yd, k1, k2, p1, p2)
    xr, yr = distort(x, y, k1, k2, p1, p2)
    error = torch.maximum((xr - xd).abs() * fx, (yr - yd).abs() * fy).max().item()
    if not error < 0.01:  # also NaN
        return f"cannot be undone within the image (off by {error:.3g} pixels)"
    x, y = x.reshape(n, n), y.reshape(n, n)
    # orientation of each grid cell (+x edge cross +y edge): positive unless the lens folds it over
    cross = ((x[:-1, 1:] - x[:-1, :-1]) * (y[1:, :-1] - y[:-1, :-1])
             - (y[:-1, 1:] - y[:-1, :-1]) * (x[1:, :-1] - x[:-1, :-1]))
    return None if (cross > 0).all() else "folds the image over itself"


def _focal(angle, size: int) -> float | None:
    return None if angle is None else 0.5 * size / math.tan(0.5 * angle)


def _no_cameras() -> Cameras:
    return Cameras.from_intrinsics(torch.empty(0, 3, 4), [], [], [], [], [], [])


def _check_downscale(downscale: int, sizes: list[tuple[int, int]], paths: list[Path]) -> None:
    i = min(range(len(sizes)), key=lambda j: min(sizes[j]))
    if downscale > min(sizes[i]):
        raise ValueError(f"downscale {downscale} leaves nothing of {paths[i]} ({sizes[i][0]}x{sizes[i][1]})")


def _is_number(v) -> bool:
    """A JSON number: int or float, not bool (which Python counts as an int)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _short(value) -> str:
    """``repr`` cut to one short line for error messages."""
    text = repr(value).replace("\n", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def _ordinal(n: int) -> str:
    return f"{n}{'th' if 10 <= n % 100 <= 20 else {1: 'st', 2: 'nd', 3: 'rd'}.get(n % 10, 'th')}"


# ---------------------------------------------------------------------------------------- images
def _load_images(paths: list[Path], downscale: int, num_threads: int) -> list[torch.Tensor]:
    """Decode (in threads: the decoders release the GIL) and downscale; common channel count."""
    def load(p: Path) -> np.ndarray:
        return _downscale(_decode(p), downscale)

    with ThreadPoolExecutor(max(1, min(num_threads, len(paths)))) as pool:
        arrays = list(pool.map(load, paths))
    odd = next((i for i, a in enumerate(arrays) if a.dtype != arrays[0].dtype), None)
    if odd is not None:  # one tensor holds them all, and the scale to [0, 1] depends on the type
        raise ValueError(f"images have different sample types: {paths[odd]} is {arrays[odd].dtype}, "
                         f"{paths[0]} is {arrays[0].dtype}; convert them to one bit depth")
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
