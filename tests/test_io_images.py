"""Image I/O: round trips keep the sample type, errors name the problem, writes are atomic."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from ngp.io.images import (
    BUILTIN_IMAGES, linear_to_srgb, read_image, srgb_to_linear, to_uint8, value_scale, write_image,
)

SHARED = Path(os.environ.get("NGP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def smooth_rgb(h=24, w=32) -> np.ndarray:
    """A smooth uint8 picture, so JPEG's error stays small and comparable."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) * 255 // (h + w - 2)], -1).astype(np.uint8)


@pytest.mark.parametrize("ext", [".png", ".tif", ".tiff"])
@pytest.mark.parametrize("channels", [1, 3])
def test_lossless_uint8_round_trip(tmp_path, ext, channels):
    array = np.random.default_rng(0).integers(0, 256, (17, 23, channels), dtype=np.uint8)
    write_image(tmp_path / f"a{ext}", array)
    image = read_image(tmp_path / f"a{ext}")
    assert image.array.dtype == np.uint8
    assert image.shape == (17, 23, channels)
    np.testing.assert_array_equal(image.array, array)
    assert not image.linear


def test_jpeg_round_trip_stays_uint8_and_close(tmp_path):
    array = smooth_rgb()
    write_image(tmp_path / "a.jpg", array)
    image = read_image(tmp_path / "a.jpg")
    assert image.array.dtype == np.uint8 and image.shape == array.shape
    assert np.abs(image.array.astype(int) - array).mean() < 3.0


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_tiff_keeps_16_bit_and_float(tmp_path, dtype):
    rng = np.random.default_rng(1)
    if dtype == np.uint16:
        array = rng.integers(0, 65536, (9, 11, 3)).astype(dtype)
    else:
        array = rng.random((9, 11, 3), dtype=dtype)
    write_image(tmp_path / "a.tif", array)
    image = read_image(tmp_path / "a.tif")
    assert image.array.dtype == dtype
    np.testing.assert_array_equal(image.array, array)


def test_grey_16_bit_png_round_trip(tmp_path):
    array = (np.arange(12 * 10) * 541 % 65536).astype(np.uint16).reshape(12, 10)
    write_image(tmp_path / "g.png", array)
    image = read_image(tmp_path / "g.png")
    assert image.array.dtype == np.uint16 and image.shape == (12, 10, 1)
    np.testing.assert_array_equal(image.array[:, :, 0], array)
    assert image.scale == pytest.approx(1 / 65535)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_exr_round_trip_keeps_float_type_and_is_linear(tmp_path, dtype):
    array = (np.random.default_rng(2).random((13, 7, 3)) * 4).astype(dtype)  # HDR values above 1 survive
    write_image(tmp_path / "a.exr", array)
    image = read_image(tmp_path / "a.exr")
    assert image.linear and image.array.dtype == dtype and image.channel_names == ("R", "G", "B")
    np.testing.assert_array_equal(image.array, array)


def test_alpha_is_dropped_unless_kept(tmp_path):
    array = np.random.default_rng(3).random((5, 6, 4)).astype(np.float32)
    write_image(tmp_path / "a.exr", array)
    np.testing.assert_array_equal(read_image(tmp_path / "a.exr").array, array[:, :, :3])
    kept = read_image(tmp_path / "a.exr", keep_alpha=True)
    assert kept.channel_names == ("R", "G", "B", "A")
    np.testing.assert_array_equal(kept.array, array)
    rgba8 = (array * 255).astype(np.uint8)
    write_image(tmp_path / "a.png", rgba8)
    assert read_image(tmp_path / "a.png").shape == (5, 6, 3)


def test_float_to_png_is_clipped_and_srgb_encoded_when_linear(tmp_path):
    values = np.array([[[-0.5, 0.5, 2.0]]], dtype=np.float32)
    write_image(tmp_path / "raw.png", values)
    write_image(tmp_path / "lin.png", values, linear=True)
    np.testing.assert_array_equal(read_image(tmp_path / "raw.png").array[0, 0], [0, 128, 255])
    np.testing.assert_array_equal(read_image(tmp_path / "lin.png").array[0, 0], [0, 188, 255])  # sRGB(0.5)=0.7354


def test_srgb_conversions_invert_each_other_and_match_known_values():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    np.testing.assert_allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-6)
    assert float(linear_to_srgb(np.float32(0.5))) == pytest.approx(0.735357, abs=1e-5)
    assert float(srgb_to_linear(np.float32(0.5))) == pytest.approx(0.214041, abs=1e-5)
    t = torch.from_numpy(x)
    np.testing.assert_allclose(linear_to_srgb(t).numpy(), linear_to_srgb(x), atol=1e-6)
    np.testing.assert_array_equal(to_uint8(np.array([0.0, 1.0, 0.5], np.float32)), [0, 255, 128])
    assert value_scale(np.uint8) == 1 / 255 and value_scale(np.float16) == 1.0


def test_builtin_photo_loads_without_network():
    image = read_image("builtin:astronaut")
    assert image.shape == (512, 512, 3) and image.array.dtype == np.uint8
    assert "astronaut" in BUILTIN_IMAGES
    assert read_image("builtin:camera").shape == (512, 512, 1)
    with pytest.raises(ValueError, match="unknown built-in image 'nope'.*astronaut"):
        read_image("builtin:nope")


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.png"):
        read_image(tmp_path / "missing.png")


def test_unsupported_extension_lists_supported(tmp_path):
    (tmp_path / "a.xyz").write_bytes(b"123")
    with pytest.raises(ValueError, match=r"unsupported image format '\.xyz'.*\.exr.*\.png"):
        read_image(tmp_path / "a.xyz")
    with pytest.raises(ValueError, match="unsupported output image format"):
        write_image(tmp_path / "b.xyz", np.zeros((2, 2, 3), np.uint8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.xyz"]


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".exr"])
def test_corrupt_file_is_a_value_error_naming_it(tmp_path, ext):
    path = tmp_path / f"garbage{ext}"
    path.write_bytes(b"this is not an image" * 10)
    with pytest.raises(ValueError, match=f"garbage\\{ext}"):
        read_image(path)


def _valid_image(path):
    write_image(path, smooth_rgb() / 255.0 if path.suffix == ".exr" else smooth_rgb())
    return path


def _one_line_error_naming(path, error) -> str:
    message = str(error.value)
    assert path.name in message and "\n" not in message
    return message


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".exr"])
def test_empty_file_is_named_as_empty(tmp_path, ext):
    path = tmp_path / f"blank{ext}"
    path.write_bytes(b"")
    with pytest.raises(ValueError) as error:
        read_image(path)
    assert "the file is empty" in _one_line_error_naming(path, error)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".exr"])
@pytest.mark.parametrize("kept", [0.3, 0.95])
def test_truncated_file_is_named_as_truncated(tmp_path, ext, kept):
    noise = np.random.default_rng(6).integers(0, 256, (40, 50, 3), dtype=np.uint8)  # every byte is pixel data
    write_image(tmp_path / f"full{ext}", noise / 255.0 if ext == ".exr" else noise)
    data = (tmp_path / f"full{ext}").read_bytes()
    path = tmp_path / f"cut{ext}"
    path.write_bytes(data[: int(len(data) * kept)])
    with pytest.raises(ValueError) as error:
        read_image(path)
    message = _one_line_error_naming(path, error)
    assert "truncated or corrupt" in message and "limit" not in message


@pytest.mark.parametrize(("real", "named", "hint"), [
    (".png", ".jpg", "holds PNG data.*rename it to .png"),
    (".jpg", ".png", "holds JPEG data.*rename it to .jpg"),
    (".tif", ".png", "holds TIFF data.*rename it to .tif"),
    (".exr", ".tiff", "holds OpenEXR data.*rename it to .exr"),
    (".png", ".exr", "holds PNG data.*rename it to .png"),
])
def test_wrong_extension_names_the_real_format(tmp_path, real, named, hint):
    path = tmp_path / f"photo{named}"
    path.write_bytes(_valid_image(tmp_path / f"real{real}").read_bytes())
    with pytest.raises(ValueError, match=hint) as error:
        read_image(path)
    _one_line_error_naming(path, error)


def test_other_image_formats_are_named(tmp_path):
    path = tmp_path / "anim.png"
    path.write_bytes(b"GIF89a" + bytes(40))
    with pytest.raises(ValueError, match="anim.png.*holds GIF data.*supported"):
        read_image(path)


def test_running_out_of_memory_names_the_file(tmp_path, monkeypatch):
    import ngp.io.images as images

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 2.79 GiB")

    monkeypatch.setattr(images, "_read_pillow", no_memory)
    path = _valid_image(tmp_path / "big.png")
    with pytest.raises(MemoryError, match="big.png.*not enough memory.*2.79 GiB"):
        read_image(path)


def test_nan_in_float_image_is_rejected(tmp_path):
    array = np.zeros((300, 4, 3), np.float32)
    array[290, 2, 1] = np.nan
    write_image(tmp_path / "nan.exr", array)
    with pytest.raises(ValueError, match="non-finite.*row 290, column 2"):
        read_image(tmp_path / "nan.exr")


def test_bad_write_is_refused_before_any_file_is_created(tmp_path):
    with pytest.raises(ValueError, match="expected"):
        write_image(tmp_path / "bad.png", np.zeros((2, 2, 7), np.uint8))
    with pytest.raises(FileNotFoundError, match="does not exist"):
        write_image(tmp_path / "no" / "such.png", np.zeros((2, 2, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def _fail_half_way(path, *args, **kwargs):
    """Stands in for a library writer: writes the start of a file, then fails (a full disk, say)."""
    Path(path).write_bytes(b"half an image")
    raise OSError("No space left on device")


class _FailingExrFile:
    """Stands in for OpenEXR.File: its write() fails half-way like :func:`_fail_half_way`."""

    def __init__(self, *args, **kwargs):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def write(self, path):
        _fail_half_way(path)


def _break_writer(monkeypatch, ext):
    """Make the library writer behind ``ext`` fail half-way through writing its file."""
    if ext in (".png", ".jpg"):
        import imageio.v3

        monkeypatch.setattr(imageio.v3, "imwrite", _fail_half_way)
    elif ext == ".tif":
        import tifffile

        monkeypatch.setattr(tifffile, "imwrite", _fail_half_way)
    else:
        import OpenEXR

        monkeypatch.setattr(OpenEXR, "File", _FailingExrFile)


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".exr"])
def test_write_failing_half_way_leaves_no_file(tmp_path, monkeypatch, ext):
    _break_writer(monkeypatch, ext)
    with pytest.raises(OSError, match="No space left"):
        write_image(tmp_path / f"new{ext}", smooth_rgb())
    assert list(tmp_path.iterdir()) == []  # neither the target nor a temporary file


@pytest.mark.parametrize("ext", [".png", ".jpg", ".tif", ".exr"])
def test_write_failing_half_way_keeps_the_existing_file(tmp_path, monkeypatch, ext):
    target = tmp_path / f"old{ext}"
    write_image(target, smooth_rgb())
    before = target.read_bytes()
    _break_writer(monkeypatch, ext)
    with pytest.raises(OSError, match="No space left"):
        write_image(target, np.zeros((24, 32, 3), np.uint8))
    assert target.read_bytes() == before
    assert list(tmp_path.iterdir()) == [target]


def test_reads_the_shared_albert_exr_in_its_own_type():
    path = SHARED / "image" / "albert.exr"
    if not path.exists():
        pytest.skip(f"shared data not found at {path} (set NGP_SHARED_DATA)")
    image = read_image(path)
    assert image.shape == (1024, 1024, 3) and image.array.dtype == np.float32 and image.linear
    assert 0.0 < image.array.min() < image.array.max() < 1.0
