"""Large images: no pixel limit on files the user names, and no second full copy while reading."""

from __future__ import annotations

import struct
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

import ngp.io.images as images
from ngp.io.images import read_image, write_image


def pattern(h: int, w: int, channels: int) -> np.ndarray:
    """A uint8 picture that PNG compresses fast (the decoded size is what matters here)."""
    y, x = np.ogrid[0:h, 0:w]
    planes = [(x + 7 * c * y) % 251 for c in range(channels)]
    return np.stack(np.broadcast_arrays(*planes), -1).astype(np.uint8)


def peak_rss_growth(work) -> int:
    """Bytes by which the peak resident memory rises above the current one while ``work()`` runs.

    Sees C allocations too (Pillow's decoded image, torch tensors), unlike tracemalloc. Linux only:
    writing 5 to /proc/self/clear_refs resets the peak (VmHWM)."""
    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError as error:
        pytest.skip(f"cannot reset the peak memory counter: {error}")
    before = _proc_status("VmRSS")
    work()
    return _proc_status("VmHWM") - before


def _proc_status(key: str) -> int:
    with open("/proc/self/status") as file:
        return next(int(line.split()[1]) * 1024 for line in file if line.startswith(key + ":"))


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def test_png_above_pillows_decompression_bomb_limit_is_read(tmp_path):
    width, height = 14000, 13000  # 182 MP: past Pillow's 2 x 89.5 MP error threshold
    assert width * height > 2 * Image.MAX_IMAGE_PIXELS
    picture = Image.new("L", (width, height))
    for x, y, value in [(0, 0, 11), (width - 1, 0, 22), (0, height - 1, 33), (width - 1, height - 1, 44)]:
        picture.putpixel((x, y), value)
    picture.save(tmp_path / "huge.png", compress_level=1)
    del picture
    limit = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = read_image(tmp_path / "huge.png")
    assert image.shape == (height, width, 1) and image.array.dtype == np.uint8
    corners = image.array[[0, 0, -1, -1], [0, -1, 0, -1], 0]
    np.testing.assert_array_equal(corners, [11, 22, 33, 44])
    assert Image.MAX_IMAGE_PIXELS == limit  # the guard is lifted only while reading


def test_truncated_huge_png_is_reported_as_truncated_not_as_too_large(tmp_path):
    header = struct.pack(">IIBBBBB", 14000, 13000, 8, 0, 0, 0, 0)  # 182 MP, 8-bit grey
    rows = zlib.compress((b"\x00" + bytes(14000)) * 100, 1)[:100]  # 100 rows' stream, cut short
    path = tmp_path / "cut.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", rows))
    with pytest.raises(ValueError, match=r"cut\.png: truncated or corrupt PNG file") as error:
        read_image(path)
    assert "limit" not in str(error.value) and "bomb" not in str(error.value)


def test_lifting_the_pixel_limit_nests_and_restores_it():
    limit = Image.MAX_IMAGE_PIXELS
    first, second = images._pixel_limit_lifted(), images._pixel_limit_lifted()
    first.__enter__()
    second.__enter__()
    assert Image.MAX_IMAGE_PIXELS is None
    first.__exit__(None, None, None)  # readers in two threads end in any order
    assert Image.MAX_IMAGE_PIXELS is None  # the other reader still needs it lifted
    second.__exit__(None, None, None)
    assert Image.MAX_IMAGE_PIXELS == limit


def test_pixel_limit_is_restored_after_a_failed_read(tmp_path):
    limit = Image.MAX_IMAGE_PIXELS
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    with pytest.raises(ValueError):
        read_image(tmp_path / "bad.png")
    assert Image.MAX_IMAGE_PIXELS == limit


@pytest.mark.parametrize(("channels", "ext"), [(3, ".png"), (4, ".png"), (3, ".jpg"), (1, ".png")])
def test_reading_makes_no_second_full_copy(tmp_path, channels, ext):
    """Python-visible allocations (NumPy arrays, bytes) while reading stay near the result's size.

    Pillow's own decoded image is C memory and not seen here; what is checked is that no full-size
    ``bytes``/array copies are made on the way to the result (alpha dropped included)."""
    write_image(tmp_path / f"big{ext}", pattern(1500, 2000, channels))
    tracemalloc.start()
    try:
        image = read_image(tmp_path / f"big{ext}")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.array.flags.c_contiguous and image.array.flags.writeable
    assert peak < 1.2 * image.array.nbytes, f"peak {peak / 1e6:.1f} MB for a {image.array.nbytes / 1e6:.1f} MB image"


def test_reading_an_rgb_png_peaks_at_pillows_image_plus_the_result(tmp_path):
    """Pillow holds 8-bit RGB as 4 bytes a pixel and the result takes 3: 7/3 of the result at the peak
    (a 1-gigapixel PNG: about 7 GB); a full-size bytes or float copy on the way would show here."""
    Image.fromarray(pattern(3000, 4000, 3)).save(tmp_path / "rgb.png", compress_level=1)
    result = {}
    grown = peak_rss_growth(lambda: result.update(image=read_image(tmp_path / "rgb.png")))
    size = result["image"].array.nbytes
    assert grown < 2.6 * size, f"peak grew by {grown / size:.2f} x the {size / 1e6:.0f} MB result"
