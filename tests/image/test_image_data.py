"""ImageTarget: bilinear sampling between pixel centres on the stored (integer) samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import map_coordinates

from ngp.image.data import ImageTarget, pixel_centres
from ngp.io.images import ImageData


def target_of(array):
    return ImageTarget(ImageData(array, "test", False, ("R", "G", "B")[: array.shape[2]]))


@pytest.fixture
def image8():
    return np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)


def test_pixel_centres_return_the_exact_pixels(image8):
    target = target_of(image8)
    values = target.interpolate(pixel_centres(9, 7))
    np.testing.assert_allclose(values.numpy(), image8.reshape(-1, 3) / 255.0, atol=1e-6)
    np.testing.assert_allclose(target.pixels(slice(2, 4)).numpy(), image8[2:4].reshape(-1, 3) / 255.0, atol=1e-7)


def test_midway_between_two_pixels_is_their_mean(image8):
    target = target_of(image8)
    h, w = image8.shape[:2]
    i, j = 3, 4
    between_columns = torch.tensor([[(j + 1) / w, (i + 0.5) / h]])  # between centres (i, j) and (i, j+1)
    between_rows = torch.tensor([[(j + 0.5) / w, (i + 1) / h]])
    pixels = image8.astype(np.float64) / 255
    np.testing.assert_allclose(target.interpolate(between_columns)[0], (pixels[i, j] + pixels[i, j + 1]) / 2, atol=1e-6)
    np.testing.assert_allclose(target.interpolate(between_rows)[0], (pixels[i, j] + pixels[i + 1, j]) / 2, atol=1e-6)


def test_borders_are_clamped(image8):
    target = target_of(image8)
    corners = torch.tensor([[0.0, 0.0], [0.999999, 0.999999], [0.0, 0.999999]])
    expected = np.stack([image8[0, 0], image8[-1, -1], image8[-1, 0]]) / 255.0
    np.testing.assert_allclose(target.interpolate(corners).numpy(), expected, atol=1e-5)


def test_random_samples_match_scipy_bilinear_interpolation(image8):
    target = target_of(image8)
    xy, values = target.sample(1000, torch.Generator().manual_seed(1))
    assert xy.shape == (1000, 2) and values.shape == (1000, 3) and values.dtype == torch.float32
    assert 0.0 <= xy.min() and xy.max() < 1.0
    h, w = image8.shape[:2]
    rows = xy[:, 1].double().numpy() * h - 0.5
    cols = xy[:, 0].double().numpy() * w - 0.5
    channels = [image8[:, :, c].astype(np.float64) / 255 for c in range(3)]
    expected = np.stack([map_coordinates(c, [rows, cols], order=1, mode="nearest") for c in channels], 1)
    np.testing.assert_allclose(values.numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.uint16, np.float16, np.float32])
def test_storage_types_give_the_same_values(image8, dtype):
    xy = torch.rand(500, 2, generator=torch.Generator().manual_seed(2))
    reference = target_of(image8).interpolate(xy)
    if dtype == np.uint16:
        stored = image8.astype(np.uint16) * 257  # 255 -> 65535
    else:
        stored = (image8 / 255.0).astype(dtype)
    atol = 1e-3 if dtype == np.float16 else 1e-6
    np.testing.assert_allclose(target_of(stored).interpolate(xy).numpy(), reference.numpy(), atol=atol)


def test_no_copy_of_the_stored_image(image8):
    target = target_of(image8)
    assert target.stored.dtype == torch.uint8
    assert target.stored.data_ptr() == image8.ctypes.data


@pytest.mark.parametrize("shape", [(1, 5), (6, 1), (1, 1), (2, 2)])
def test_degenerate_images_interpolate_like_scipy(shape):
    image = np.arange(np.prod(shape) * 2, dtype=np.float32).reshape(*shape, 2)
    target = ImageTarget(image)
    xy = torch.rand(300, 2, generator=torch.Generator().manual_seed(3))
    rows = xy[:, 1].double().numpy() * shape[0] - 0.5
    cols = xy[:, 0].double().numpy() * shape[1] - 0.5
    expected = np.stack([map_coordinates(image[:, :, c], [rows, cols], order=1, mode="nearest") for c in range(2)], 1)
    np.testing.assert_allclose(target.interpolate(xy).numpy(), expected, atol=1e-5)
    np.testing.assert_array_equal(target.pixels(slice(0, shape[0])).numpy(), image.reshape(-1, 2))


def test_row_chunks_cover_the_image_once(image8):
    target = target_of(image8)
    chunks = list(target.row_chunks(max_pixels=20))  # 2 rows of 9 pixels each
    assert [c.start for c in chunks] == [0, 2, 4, 6] and chunks[-1].stop == 7
    wide = ImageTarget(np.zeros((3, 50, 1), np.uint8))
    assert list(wide.row_chunks(max_pixels=10)) == [slice(0, 1), slice(1, 2), slice(2, 3)]


def test_bad_inputs():
    with pytest.raises(ValueError, match="positive"):
        ImageTarget(np.zeros((2, 2, 3), np.uint8)).sample(0)
    with pytest.raises(ValueError, match=r"\[n, 2\]"):
        ImageTarget(np.zeros((2, 2, 3), np.uint8)).interpolate(torch.zeros(4, 3))
    with pytest.raises(ValueError, match="shape"):
        ImageTarget(np.zeros((0, 2, 3), np.uint8))


def test_target_of_a_read_png_shares_its_memory(tmp_path):
    from ngp.io.images import read_image, write_image

    write_image(tmp_path / "a.png", np.random.default_rng(5).integers(0, 256, (20, 30, 3), dtype=np.uint8))
    image = read_image(tmp_path / "a.png")
    target = ImageTarget(image)
    assert target.stored.dtype == torch.uint8 and target.stored.data_ptr() == image.array.ctypes.data


def _peak_rss_growth(work) -> int:
    """Bytes by which peak resident memory rises while ``work()`` runs (C and torch memory included).
    Linux only: writing 5 to /proc/self/clear_refs resets the peak (VmHWM)."""
    def status(key):
        with open("/proc/self/status") as file:
            return next(int(line.split()[1]) * 1024 for line in file if line.startswith(key + ":"))

    try:
        with open("/proc/self/clear_refs", "w") as file:
            file.write("5")
    except OSError as error:
        pytest.skip(f"cannot reset the peak memory counter: {error}")
    before = status("VmRSS")
    work()
    return status("VmHWM") - before


def test_sampling_and_row_chunks_make_no_full_size_float_copy():
    """A gigapixel photo is 3 GB as uint8 and 12 GB as float32: only batches and row chunks become float."""
    image = np.full((4000, 6000, 3), 90, np.uint8)  # filled: resident before measuring

    def train_and_evaluate():
        target = ImageTarget(image)
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            target.sample(1 << 16, generator)
        for rows in list(target.row_chunks(1 << 18))[:8]:
            target.pixels(rows)
            target.pixel_centres(rows)

    grown = _peak_rss_growth(train_and_evaluate)
    assert grown < image.nbytes / 2, f"peak grew by {grown / 1e6:.0f} MB for a {image.nbytes / 1e6:.0f} MB image"
