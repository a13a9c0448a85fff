"""Reading and writing images: PNG, JPEG, TIFF and OpenEXR, kept in their own bit depth.

An image is read ONCE and stored as ``[H, W, C]`` in the file's own sample type: ``uint8`` stays
``uint8``, ``uint16`` stays ``uint16``, EXR ``float16``/``float32`` stay as they are. A 100-megapixel
8-bit RGB photo is 300 MB this way and 1.2 GB as float32, so nothing here makes a full float copy;
consumers convert only the samples they gather (see :class:`ngp.image.data.ImageTarget`).

Size: files are read at any size (Pillow's decompression-bomb limit is lifted while reading a file the
user named). Pillow's decoded image is copied out and converted strip by strip, so reading an 8-bit
RGB PNG/JPEG peaks at 7 bytes a pixel (Pillow's 4 + the result's 3: about 7 GB for a gigapixel);
TIFF and EXR decode straight into the result.

Colour: PNG/JPEG/TIFF samples are taken as display-encoded (sRGB) values and learned as they are;
OpenEXR samples are linear light (the format's convention). :func:`linear_to_srgb` /
:func:`srgb_to_linear` convert between them, e.g. to show an EXR as a PNG. Other colour models are
converted to RGB: palette (its transparency becomes alpha), CMYK (JPEG: Adobe-inverted and YCCK too,
through the file's ICC profile when usable; TIFF: ``R = (1 - C)(1 - K)``), YCbCr and CIELAB TIFF,
min-is-white grey. Anything else is refused with a message, never read as wrong colours.

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

import contextlib
import io
import struct
import threading
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

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
#: Leading bytes of the formats read here, and of a few others so that messages can name them.
SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff", "JPEG"), (b"v/1\x01", "OpenEXR"),
    (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF"), (b"II+\x00", "TIFF"), (b"MM\x00+", "TIFF"),  # "+": BigTIFF
    (b"GIF87a", "GIF"), (b"GIF89a", "GIF"),
)
FORMAT_EXTENSIONS = {"PNG": ".png", "JPEG": ".jpg", "TIFF": ".tif", "OpenEXR": ".exr"}
#: Pixels per strip when copying out of Pillow or converting: bounds the temporaries to a few MB.
STRIP_PIXELS = 1 << 16


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

    Files are read at any size (Pillow's decompression-bomb limit is lifted for the read: the user
    named the file). The content must be the format the extension names.

    Raises:
        FileNotFoundError: the file does not exist (the message names it).
        ValueError: unsupported extension (lists the supported ones); an empty file; content of
            another format than the extension says; a truncated or corrupt file; an unsupported
            colour model, sample type or channel layout; non-finite (NaN/inf) float samples.
        MemoryError: the decoded image does not fit in memory (the message names the file).
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
    fmt = READ_EXTENSIONS[suffix]
    _check_signature(path, fmt)
    reader = {"OpenEXR": _read_exr, "TIFF": _read_tiff}.get(fmt, _read_pillow)
    try:
        array, names = reader(path, fmt, keep_alpha)
    except _UnsupportedImage as error:
        raise ValueError(f"cannot read image {path}: {error}") from None
    except MemoryError as error:
        raise MemoryError(f"cannot read image {path}: not enough memory to decode it ({error})") from None
    except _DECODE_ERRORS as error:
        raise ValueError(f"cannot read image {path}: truncated or corrupt {fmt} file ({_one_line(error)})") from None
    array, names = _normalise(array, names, str(path), keep_alpha)
    return ImageData(array, str(path), fmt == "OpenEXR", names)


class _UnsupportedImage(ValueError):
    """A well-formed file whose colour model or sample layout is not supported (no path in the message:
    :func:`read_image` adds it)."""


#: What decoders raise on damaged data (struct/zlib errors come from Pillow's and tifffile's parsers).
_DECODE_ERRORS = (
    OSError, EOFError, RuntimeError, ValueError, SyntaxError, KeyError, IndexError, TypeError, struct.error, zlib.error,
)


def _one_line(error: BaseException, limit: int = 200) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_signature(path: Path, expected: str) -> None:
    """Refuse an empty file, or one whose first bytes are not ``expected``'s signature, before decoding."""
    with open(path, "rb") as file:
        head = file.read(8)
    if not head:
        raise ValueError(f"cannot read image {path}: the file is empty (0 bytes)")
    found = next((name for magic, name in SIGNATURES if head.startswith(magic)), None)
    if found == expected:
        return
    if found in FORMAT_EXTENSIONS:
        raise ValueError(f"cannot read image {path}: the file holds {found} data, not {expected} as its extension "
                         f"says; rename it to {FORMAT_EXTENSIONS[found]}")
    if found is not None:
        raise ValueError(f"cannot read image {path}: the file holds {found} data, which is not supported; "
                         f"supported: {supported_formats()}")
    raise ValueError(f"cannot read image {path}: not a {expected} file (it does not start with a {expected} signature)")


_pixel_limit_lock = threading.Lock()
_pixel_limit_readers = 0
_pixel_limit_saved: int | None = None


@contextlib.contextmanager
def _pixel_limit_lifted() -> Iterator[None]:
    """Lift Pillow's decompression-bomb guard (``Image.MAX_IMAGE_PIXELS``: errors past ~179 MP) for a read.

    The guard protects programs that open images from strangers; here the user names the file and a
    gigapixel image is the point. The limit is one module-wide setting, so concurrent readers (NeRF
    loads images in threads) share one lift: the first lifts it, the last restores it.
    """
    global _pixel_limit_readers, _pixel_limit_saved
    from PIL import Image

    with _pixel_limit_lock:
        if _pixel_limit_readers == 0:
            _pixel_limit_saved = Image.MAX_IMAGE_PIXELS
            Image.MAX_IMAGE_PIXELS = None
        _pixel_limit_readers += 1
    try:
        yield
    finally:
        with _pixel_limit_lock:
            _pixel_limit_readers -= 1
            if _pixel_limit_readers == 0:
                Image.MAX_IMAGE_PIXELS = _pixel_limit_saved


def _read_builtin(name: str, keep_alpha: bool) -> ImageData:
    if name not in BUILTIN_IMAGES:
        raise ValueError(f"unknown built-in image {name!r}; available: {', '.join(BUILTIN_IMAGES)}")
    import skimage.data

    array = np.asarray(getattr(skimage.data, name)())
    array, names = _normalise(array, None, BUILTIN_PREFIX + name, keep_alpha)
    return ImageData(array, BUILTIN_PREFIX + name, False, names)


# ------------------------------------------------------------------------------------ Pillow
_Y, _YA, _RGB, _RGBA = ("Y",), ("Y", "A"), ("R", "G", "B"), ("R", "G", "B", "A")
#: Pillow mode -> (mode each strip is converted to, None: as it is; channel names; sample type).
#: Palette, CMYK and CIELAB need the image's own data and are handled in :func:`_pillow_conversion`.
_PILLOW_MODES = {
    "1": ("L", _Y, np.uint8), "L": (None, _Y, np.uint8), "LA": (None, _YA, np.uint8), "La": ("LA", _YA, np.uint8),
    "RGB": (None, _RGB, np.uint8), "RGBA": (None, _RGBA, np.uint8), "RGBa": ("RGBA", _RGBA, np.uint8),
    "RGBX": ("RGB", _RGB, np.uint8), "YCbCr": ("RGB", _RGB, np.uint8), "HSV": ("RGB", _RGB, np.uint8),
    "PA": ("RGBA", _RGBA, np.uint8), "I;16": (None, _Y, np.uint16), "I;16L": (None, _Y, np.uint16),
    "I;16B": (None, _Y, np.uint16), "I;16N": (None, _Y, np.uint16), "F": (None, _Y, np.float32),
}


def _read_pillow(path: Path, fmt: str, keep_alpha: bool) -> tuple[np.ndarray, tuple[str, ...]]:
    """PNG, JPEG (and TIFFs that tifffile cannot decode) through Pillow -> ``[H, W, C]``, alpha dropped
    unless ``keep_alpha``.

    Pillow's decoded image is copied out one strip of rows at a time, each strip converted on its own
    (palette -> RGB(A), CMYK -> RGB, ...): the pixels exist twice at most (Pillow's and the result),
    never as a full-size ``bytes`` or converted copy. For 8-bit RGB that peaks at 7 bytes per pixel
    (Pillow keeps RGB as 4 bytes).
    """
    from PIL import Image

    if fmt == "PNG":
        _warn_if_16bit_colour_png(path)
    with _pixel_limit_lifted(), Image.open(path, formats=[fmt]) as picture:
        picture.load()
        convert, names, dtype = _pillow_conversion(picture, path)
        if not keep_alpha and names[-1] == "A":
            names = names[:-1]
        out = np.empty((picture.height, picture.width, len(names)), dtype)
        rows = max(1, STRIP_PIXELS // picture.width)
        for top in range(0, picture.height, rows):
            bottom = min(top + rows, picture.height)
            strip = np.asarray(convert(picture.crop((0, top, picture.width, bottom))))
            out[top:bottom] = strip.reshape(bottom - top, picture.width, -1)[:, :, : len(names)]
    return out, names


def _pillow_conversion(picture, path: Path):
    """-> ``(convert(strip) -> strip, channel names, sample type)`` for ``picture``'s mode."""
    mode = picture.mode
    if mode == "P":
        # Pillow turns palette transparency (one index or a table of alphas) into alpha.
        has_alpha = "transparency" in picture.info or picture.palette.mode == "RGBA"
        target, names = ("RGBA", _RGBA) if has_alpha else ("RGB", _RGB)
        return (lambda strip: strip.convert(target)), names, np.uint8
    if mode == "CMYK":
        return _cmyk_converter(picture, path), _RGB, np.uint8
    if mode == "LAB":
        return _icc_converter(None, "LAB", path, required=True), _RGB, np.uint8
    if mode == "I" and picture.format == "PNG":  # older Pillows open 16-bit grey PNG as 32-bit "I"
        return (lambda strip: strip), _Y, np.uint16
    if mode not in _PILLOW_MODES:
        raise _UnsupportedImage(
            f"{picture.format} image mode {mode!r} is not supported (supported: grey, grey+alpha, RGB(A), palette, "
            "CMYK, YCbCr, CIELAB; 8-bit, 16-bit grey or float); convert it to 8- or 16-bit RGB or grey")
    target, names, dtype = _PILLOW_MODES[mode]
    return (lambda strip: strip) if target is None else (lambda strip: strip.convert(target)), names, dtype


def _cmyk_converter(picture, path: Path):
    """CMYK -> RGB: through the file's ICC profile when it has a usable one, else Pillow's formula
    ``R = (1 - C)(1 - K)`` (what viewers do without a profile). Adobe's inverted CMYK and YCCK JPEGs
    arrive here as plain CMYK: Pillow and libjpeg undo the inversion and the YCC transform."""
    profile = picture.info.get("icc_profile")
    if profile:
        convert = _icc_converter(profile, "CMYK", path, required=False)
        if convert is not None:
            return convert
    return lambda strip: strip.convert("RGB")


def _icc_converter(profile: bytes | None, mode: str, path: Path, required: bool):
    """``mode`` strips -> sRGB through LittleCMS (Pillow's ImageCms) from the ICC ``profile`` (None:
    CIELAB relative to D50, the ICC connection space); None, with a warning, when that fails and the
    conversion is not ``required``."""
    try:
        from PIL import ImageCms

        source = ImageCms.createProfile("LAB") if profile is None else ImageCms.ImageCmsProfile(io.BytesIO(profile))
        transform = ImageCms.buildTransform(source, ImageCms.createProfile("sRGB"), mode, "RGB")
    except Exception as error:  # ImportError (Pillow built without LittleCMS) or ImageCms.PyCMSError
        if required:
            raise _UnsupportedImage(f"cannot convert its {mode} colours to RGB ({_one_line(error)})") from None
        warnings.warn(f"{path}: its {mode} ICC profile cannot be used ({_one_line(error)}); colours are converted "
                      "without it, approximately")
        return None
    return lambda strip: ImageCms.applyTransform(strip, transform)


def _warn_if_16bit_colour_png(path: Path) -> None:
    """Pillow reads 16-bit RGB(A) PNGs at 8 bits; say so rather than lose precision silently."""
    with open(path, "rb") as f:
        head = f.read(26)
    if len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[24] == 16 and head[25] in (2, 6):
        warnings.warn(f"{path}: 16-bit colour PNG is read at 8 bits (a Pillow limitation); use TIFF to keep 16 bits")


# -------------------------------------------------------------------------------------- TIFF
#: TIFF photometric interpretations: tifffile decodes these and the colours are fixed up here ...
_TIFFFILE_PHOTOMETRICS = {0: "MINISWHITE", 1: "MINISBLACK", 2: "RGB", 3: "PALETTE", 5: "SEPARATED"}
#: ... and Pillow (libtiff) converts these to RGB or CIELAB.
_PILLOW_PHOTOMETRICS = {6: "YCBCR", 8: "CIELAB"}
_TIFF_ICC_PROFILE_TAG = 34675


def _read_tiff(path: Path, fmt: str, keep_alpha: bool) -> tuple[np.ndarray, tuple[str, ...] | None]:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        photometric = int(page.photometric)
        if photometric in _PILLOW_PHOTOMETRICS:
            return _read_pillow(path, fmt, keep_alpha)
        if photometric not in _TIFFFILE_PHOTOMETRICS:
            name = getattr(page.photometric, "name", photometric)
            raise _UnsupportedImage(f"TIFF colour model {name} is not supported; convert the image to RGB or grey")
        try:
            array = tif.asarray()
        except ValueError as error:
            if "imagecodecs" not in str(error):  # tifffile: "<COMPRESSION.LZW: 5> requires the 'imagecodecs' package"
                raise
            return _read_tiff_with_pillow(path, page, error, keep_alpha)
        if array.ndim == 3 and array.shape[0] in (1, 2, 3, 4) and array.shape[-1] not in (1, 2, 3, 4):
            array = np.moveaxis(array, 0, -1)  # planar (C, H, W) storage
        return _tiff_colours(array, page, path)


def _read_tiff_with_pillow(path: Path, page, reason: Exception, keep_alpha: bool):
    """A compression tifffile decodes only with the optional imagecodecs (LZW, JPEG, CCITT): Pillow can."""
    if page.bitspersample > 8 and page.samplesperpixel > 1:
        warnings.warn(f"{path}: {page.bitspersample}-bit colour TIFF is read at 8 bits (Pillow decodes its "
                      f"{page.compression.name} compression); install imagecodecs to keep all bits")
    try:
        return _read_pillow(path, "TIFF", keep_alpha)
    except _UnsupportedImage:
        raise
    except _DECODE_ERRORS as error:
        raise _UnsupportedImage(f"{_one_line(reason)}, and Pillow cannot read it either ({_one_line(error)})") from None


def _tiff_colours(array: np.ndarray, page, path: Path) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """tifffile's samples -> grey or RGB(A) as stored; names None: the default for the channel count."""
    photometric = _TIFFFILE_PHOTOMETRICS[int(page.photometric)]
    if photometric == "MINISWHITE":
        return _invert_grey(array), None
    if photometric == "PALETTE":
        if array.ndim != 2:
            raise _UnsupportedImage(f"palette TIFF with extra samples (shape {list(array.shape)}) is not supported")
        return _colour_map_lookup(array, page.colormap), _RGB
    if photometric == "SEPARATED":
        inks = array.shape[-1] if array.ndim == 3 else 1
        if page.tags.valueof(332, 1) != 1 or inks not in (4, 5):  # InkSet 1: CMYK (the default)
            raise _UnsupportedImage(f"separated (ink) TIFF with {inks} samples is not supported; only CMYK(+alpha)")
        if page.tags.get(_TIFF_ICC_PROFILE_TAG) is not None:
            warnings.warn(f"{path}: the CMYK TIFF's ICC profile is not used; its colours are converted approximately")
        return _cmyk_to_rgb(array), _RGBA[: inks - 1]
    return array, None


def _invert_grey(array: np.ndarray) -> np.ndarray:
    """MINISWHITE stores 0 as white (bilevel scans, faxes): flip the grey channel, not alpha, in place."""
    if not array.flags.writeable:
        array = array.copy()
    grey = array if array.ndim == 2 else array[..., 0]
    if array.dtype == np.bool_:
        np.logical_not(grey, out=grey)
    elif array.dtype.kind == "u":
        np.subtract(np.iinfo(array.dtype).max, grey, out=grey)
    else:
        raise _UnsupportedImage(f"min-is-white TIFF with {array.dtype} samples is not supported")
    return array


def _colour_map_lookup(indices: np.ndarray, colour_map: np.ndarray) -> np.ndarray:
    """``[H, W]`` palette indices -> ``[H, W, 3]`` through the TIFF colour map ``[3, 2^bits]`` (16-bit;
    a map of 8-bit colours, stored as ``v * 257``, gives ``uint8``)."""
    table = np.ascontiguousarray(colour_map.T)
    if not (table % 257).any():
        table = (table // 257).astype(np.uint8)
    return table[indices]


def _cmyk_to_rgb(cmyk: np.ndarray) -> np.ndarray:
    """``[H, W, 4 (+ alpha)]`` CMYK -> ``[H, W, 3 (+ alpha)]`` RGB in the same sample type, by row chunks:
    ``R = (1 - C)(1 - K)``, Pillow's formula without a colour profile."""
    full = float(np.iinfo(cmyk.dtype).max) if cmyk.dtype.kind == "u" else 1.0
    rounding = 0.5 if cmyk.dtype.kind == "u" else 0.0
    out = np.empty(cmyk.shape[:2] + (cmyk.shape[2] - 1,), cmyk.dtype)
    rows = max(1, STRIP_PIXELS // cmyk.shape[1])
    for top in range(0, cmyk.shape[0], rows):
        block = cmyk[top : top + rows].astype(np.float32)
        out[top : top + rows, :, :3] = (full - block[..., :3]) * (full - block[..., 3:4]) / full + rounding
        out[top : top + rows, :, 3:] = cmyk[top : top + rows, :, 4:]
    return out


# --------------------------------------------------------------------------------------- EXR
def _read_exr(path: Path, fmt: str, keep_alpha: bool) -> tuple[np.ndarray, tuple[str, ...]]:
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
