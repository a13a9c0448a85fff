"""Reading and writing images: PNG, JPEG, TIFF and OpenEXR, kept in their own bit depth.

An image is read ONCE and stored as ``[H, W, C]`` in the file's own sample type: ``uint8`` stays
``uint8``, ``uint16`` stays ``uint16``, EXR ``float16``/``float32`` stay as they are. A 100-megapixel
8-bit RGB photo is 300 MB this way and 1.2 GB as float32, so nothing here makes a full float copy;
consumers convert only the samples they gather (see :class:`ngp.image.data.ImageTarget`).

Colour: PNG/JPEG/TIFF samples are taken as display-encoded (sRGB) values and learned as they are;
OpenEXR samples are linear light (the format's convention). :func:`linear_to_srgb` /
:func:`srgb_to_linear` convert between them, e.g. to show an EXR as a PNG.

Alpha: by default an alpha channel is dropped (RGBA -> RGB, grey+alpha -> grey), as instant-ngp's
image task learns colour only; ``keep_alpha=True`` keeps it as the last channel.

Built-in photos: ``read_image("builtin:astronaut")`` loads ``skimage.data.astronaut()`` (shipped inside
scikit-image, so it works offline); see :data:`BUILTIN_IMAGES`.

Example:
    >>> image = read_image("photo.png")          # ImageData, array uint8 [H, W, 3]
    >>> image.array.dtype, image.shape
    (dtype('uint8'), (512, 512, 3))
    >>> write_image("copy.exr", srgb_to_linear(image.array / 255.0))
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ngp.io.files import atomic_path

READ_EXTENSIONS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF", ".exr": "OpenEXR"}
WRITE_EXTENSIONS = READ_EXTENSIONS
BUILTIN_PREFIX = "builtin:"
#: Photos that ship inside scikit-image (``skimage.data``) and load without a network.
BUILTIN_IMAGES = (
    "astronaut", "camera", "cat", "chelsea", "coffee", "rocket", "moon", "brick", "grass", "gravel",
    "colorwheel", "logo", "retina", "hubble_deep_field", "immunohistochemistry", "text", "checkerboard",
    "coins", "page", "clock", "cell", "microaneurysms",
)
#: Sample types stored as they are; others are converted once (bool -> uint8, float64 -> float32).
STORED_DTYPES = (np.uint8, np.uint16, np.float16, np.float32)
JPEG_QUALITY = 95


@dataclass
class ImageData:
    """An image as read: ``array`` ``[H, W, C]`` in the file's sample type, plus what it means.

    Attributes:
        array: ``uint8``/``uint16``/``float16``/``float32`` ``[H, W, C]``, C = 1 (grey), 2, 3 or 4.
        source: the path (or ``builtin:NAME``) it came from, for messages and metrics.
        linear: True for OpenEXR (linear light); False for display-encoded (sRGB) formats.
        channel_names: e.g. ``("R", "G", "B")``.
    """

    array: np.ndarray
    source: str
    linear: bool
    channel_names: tuple[str, ...]

    @property
    def height(self) -> int:
        return int(self.array.shape[0])

    @property
    def width(self) -> int:
        return int(self.array.shape[1])

    @property
    def channels(self) -> int:
        return int(self.array.shape[2])

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def is_float(self) -> bool:
        return self.array.dtype.kind == "f"

    @property
    def scale(self) -> float:
        """Multiply stored samples by this to get values in [0, 1] (1/255 for uint8, 1 for float)."""
        return value_scale(self.array.dtype)


def value_scale(dtype: np.dtype) -> float:
    """1/255 for uint8, 1/65535 for uint16, 1 for floats: stored sample -> [0, 1] value."""
    dtype = np.dtype(dtype)
    return 1.0 / np.iinfo(dtype).max if dtype.kind == "u" else 1.0


def supported_formats() -> str:
    return ", ".join(sorted(READ_EXTENSIONS))


def read_image(path: str | Path, keep_alpha: bool = False) -> ImageData:
    """Read a PNG, JPEG, TIFF or OpenEXR file (or ``builtin:NAME``) into an :class:`ImageData`.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: unsupported extension (lists the supported ones), unreadable or corrupt file,
            unsupported sample type or channel layout, or non-finite (NaN/inf) float samples.
    """
    text = str(path)
    if text.startswith(BUILTIN_PREFIX):
        return _read_builtin(text[len(BUILTIN_PREFIX):], keep_alpha)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READ_EXTENSIONS:
        raise ValueError(
            f"unsupported image format {suffix or '(no extension)'!r} for {path}; supported: {supported_formats()}"
            f" (or {BUILTIN_PREFIX}NAME for a built-in photo)"
        )
    if not path.exists():
        raise FileNotFoundError(f"image not found: {path}")
    if not path.is_file():
        raise ValueError(f"image path is not a file: {path}")
    reader = _read_exr if suffix == ".exr" else _read_tiff if READ_EXTENSIONS[suffix] == "TIFF" else _read_pillow
    try:
        array, names = reader(path)
    except (OSError, RuntimeError, ValueError, SyntaxError, KeyError, IndexError, TypeError) as error:
        raise ValueError(f"cannot read image {path}: not a valid {READ_EXTENSIONS[suffix]} file ({error})") from None
    array, names = _normalise(array, names, str(path), keep_alpha)
    return ImageData(array, str(path), suffix == ".exr", names)


def _read_builtin(name: str, keep_alpha: bool) -> ImageData:
    if name not in BUILTIN_IMAGES:
        raise ValueError(f"unknown built-in image {name!r}; available: {', '.join(BUILTIN_IMAGES)}")
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    array, names = _normalise(array, None, BUILTIN_PREFIX + name, keep_alpha)
    return ImageData(array, BUILTIN_PREFIX + name, False, names)


def _read_pillow(path: Path) -> tuple[np.ndarray, None]:
    import imageio.v3 as iio

    _warn_if_16bit_colour_png(path)
    return np.asarray(iio.imread(path, plugin="pillow")), None


def _warn_if_16bit_colour_png(path: Path) -> None:
    """Pillow reads 16-bit RGB(A) PNGs at 8 bits; say so rather than lose precision silently."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6):
        warnings.warn(f"{path}: 16-bit colour PNG is read at 8 bits (a Pillow limitation); use TIFF to keep 16 bits")


def _read_tiff(path: Path) -> tuple[np.ndarray, None]:
    import tifffile

    array = tifffile.imread(path)
    if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
        array = np.moveaxis(array, 0, -1)  # planar (C, H, W) storage
    return array, None


def _read_exr(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
    """OpenEXR 3.x: channels come either grouped (``"RGBA"`` -> [H, W, 4]) or one per name."""
    import OpenEXR

    # Copy the pixels out before the file closes: OpenEXR's channel objects are views into it.
    with OpenEXR.File(str(path)) as file:
        channels = {name: np.array(channel.pixels) for name, channel in file.channels().items()}
    for group in ("RGBA", "RGB"):
        if group in channels:
            return channels[group], tuple(group)
    for names in (("R", "G", "B", "A"), ("R", "G", "B"), ("Y", "A"), ("Y",)):
        if all(n in channels for n in names):
            return np.stack([channels[n] for n in names], axis=-1), names
    if len(channels) == 1:
        (name, pixels), = channels.items()
        return pixels, (tuple(name) if pixels.ndim == 3 and len(name) == pixels.shape[-1] else (name,))
    raise ValueError(f"no R,G,B / Y channels in EXR (channels: {', '.join(sorted(channels))})")


def _normalise(array: np.ndarray, names, source: str, keep_alpha: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    """-> contiguous ``[H, W, C]`` in a stored dtype; alpha dropped unless ``keep_alpha``."""
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape:
        raise ValueError(f"{source}: expected an [H, W] or [H, W, C<=4] image, got shape {list(array.shape)}")
    channels = array.shape[2]
    names = tuple(names) if names else {1: ("Y",), 2: ("Y", "A"), 3: ("R", "G", "B"), 4: ("R", "G", "B", "A")}[channels]
    if not keep_alpha and names[-1] == "A":
        array, names = array[:, :, :-1], names[:-1]
    if array.dtype == np.bool_:
        array = array.astype(np.uint8) * np.uint8(255)
    elif array.dtype == np.float64:
        array = array.astype(np.float32)
    elif array.dtype.type not in STORED_DTYPES:
        raise ValueError(f"{source}: unsupported sample type {array.dtype}; expected uint8, uint16, float16 or float32")
    if array.dtype.kind == "f":
        _check_finite(array, source)
    return np.ascontiguousarray(array), names


def _check_finite(array: np.ndarray, source: str, rows: int = 256) -> None:
    """Row chunks, so a huge float image needs no full-size boolean mask."""
    for start in range(0, array.shape[0], rows):
        block = array[start : start + rows]
        if not np.isfinite(block).all():
            bad = np.argwhere(~np.isfinite(block))[0]
            raise ValueError(f"{source}: non-finite sample (NaN or inf) at row {start + bad[0]}, column {bad[1]}")


def write_image(path: str | Path, array: Any, linear: bool = False) -> Path:
    """Write ``[H, W]`` or ``[H, W, C]`` samples to PNG, JPEG, TIFF or EXR (by extension), atomically.

    * PNG/JPEG: 8-bit sRGB. Floats are clipped to [0, 1] and quantised; with ``linear=True`` they are
      sRGB-encoded first. ``uint8`` is written as is; ``uint16`` is written 16-bit to PNG (grey only,
      a Pillow limit) and reduced to 8 bits otherwise. JPEG drops alpha.
    * TIFF: the array's own sample type, unchanged.
    * EXR: float32 (float16 kept), ZIP-compressed; integer samples are scaled to [0, 1]. EXR values
      are linear by convention: pass linear values (``linear`` is ignored).

    ``array`` may be a NumPy array or a torch tensor. Returns ``path``.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in WRITE_EXTENSIONS:
        raise ValueError(f"unsupported output image format {suffix or '(no extension)'!r} for {path}; "
                         f"supported: {supported_formats()}")
    array = _as_numpy(array)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3 or array.shape[2] not in (1, 2, 3, 4) or 0 in array.shape:
        raise ValueError(f"cannot write {path}: expected [H, W] or [H, W, C<=4] samples, got {list(array.shape)}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot write {path}: folder {path.parent} does not exist")
    with atomic_path(path) as tmp:
        if suffix == ".exr":
            _write_exr(tmp, array)
        elif READ_EXTENSIONS[suffix] == "TIFF":
            import tifffile

            tifffile.imwrite(tmp, array[:, :, 0] if array.shape[2] == 1 else array, photometric=_photometric(array))
        else:
            _write_pillow(tmp, array, linear, jpeg=READ_EXTENSIONS[suffix] == "JPEG")
    return path


def _as_numpy(array: Any) -> np.ndarray:
    if hasattr(array, "detach"):  # torch tensor, without importing torch here
        array = array.detach().cpu().numpy()
    return np.asarray(array)


def _photometric(array: np.ndarray) -> str:
    return "rgb" if array.shape[2] >= 3 else "minisblack"


def to_uint8(array: np.ndarray, linear: bool = False) -> np.ndarray:
    """Display samples: floats clipped to [0, 1] (sRGB-encoded first if ``linear``) -> uint8."""
    if array.dtype == np.uint8:
        return array
    if array.dtype.kind == "u":
        return (array.astype(np.float32) * (255.0 / np.iinfo(array.dtype).max) + 0.5).astype(np.uint8)
    values = np.clip(np.asarray(array, dtype=np.float32), 0.0, 1.0)
    if linear:
        values = linear_to_srgb(values)
    return (values * 255.0 + 0.5).astype(np.uint8)


def _write_pillow(tmp: Path, array: np.ndarray, linear: bool, jpeg: bool) -> None:
    import imageio.v3 as iio

    if not jpeg and array.dtype == np.uint16 and array.shape[2] == 1:
        iio.imwrite(tmp, array[:, :, 0], plugin="pillow", extension=".png")
        return
    data = to_uint8(array, linear)
    if jpeg and data.shape[2] in (2, 4):
        data = data[:, :, :-1]
    data = data[:, :, 0] if data.shape[2] == 1 else data
    options = {"quality": JPEG_QUALITY} if jpeg else {}
    iio.imwrite(tmp, data, plugin="pillow", extension=".jpg" if jpeg else ".png", **options)


def _write_exr(tmp: Path, array: np.ndarray) -> None:
    import OpenEXR

    if array.dtype.kind != "f":
        array = array.astype(np.float32) * np.float32(value_scale(array.dtype))
    elif array.dtype not in (np.float16, np.float32):
        array = array.astype(np.float32)
    names = {1: "Y", 2: "YA", 3: "RGB", 4: "RGBA"}[array.shape[2]]
    channels = {name: np.ascontiguousarray(array[:, :, i]) for i, name in enumerate(names)}
    header = {"compression": OpenEXR.ZIP_COMPRESSION, "type": OpenEXR.scanlineimage}
    with OpenEXR.File(header, channels) as file:
        file.write(str(tmp))


def srgb_to_linear(values):
    """sRGB-encoded values in [0, 1] -> linear light (IEC 61966-2-1). NumPy arrays or torch tensors."""
    if hasattr(values, "detach"):
        import torch

        return torch.where(values <= 0.04045, values / 12.92, ((values.clamp(min=0) + 0.055) / 1.055) ** 2.4)
    values = np.asarray(values, dtype=np.float32) if np.asarray(values).dtype.kind != "f" else np.asarray(values)
    return np.where(values <= 0.04045, values / 12.92, ((np.maximum(values, 0) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(values):
    """Linear light in [0, 1] -> sRGB-encoded values (IEC 61966-2-1). NumPy arrays or torch tensors."""
    if hasattr(values, "detach"):
        import torch

        return torch.where(values <= 0.0031308, values * 12.92, 1.055 * values.clamp(min=0) ** (1 / 2.4) - 0.055)
    values = np.asarray(values, dtype=np.float32) if np.asarray(values).dtype.kind != "f" else np.asarray(values)
    return np.where(values <= 0.0031308, values * 12.92, 1.055 * np.maximum(values, 0) ** (1 / 2.4) - 0.055)


__all__ = [
    "BUILTIN_IMAGES", "ImageData", "READ_EXTENSIONS", "linear_to_srgb", "read_image", "srgb_to_linear",
    "to_uint8", "value_scale", "write_image",
]
