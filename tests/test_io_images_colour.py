"""Colour models other than grey/RGB(A) are converted to RGB or refused, never read as wrong colours.

Ground truth: an RGB picture is turned into CMYK / palette / YCbCr / CIELAB with Pillow (or exact
arithmetic), written, read back through :func:`ngp.io.images.read_image` and compared with the RGB.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageCms

from ngp.io.images import read_image


def muted_rgb(h=48, w=64) -> np.ndarray:
    """A smooth uint8 picture with values in [40, 215]: away from the gamut's edges, where 8-bit
    CIELAB and JPEG errors grow."""
    y, x = np.mgrid[0:h, 0:w]
    ramps = [x * 175 // (w - 1), y * 175 // (h - 1), (x + y) * 175 // (h + w - 2)]
    return (40 + np.stack(ramps, -1)).astype(np.uint8)


def cmyk_of(rgb: np.ndarray) -> np.ndarray:
    """Full grey-component replacement, K = 1 - max(R, G, B): the naive CMYK -> RGB formula
    ``R = (1 - C)(1 - K)`` (what Pillow and most viewers use without a profile) inverts it exactly."""
    rgb = rgb.astype(np.float64) / 255
    k = 1 - rgb.max(-1, keepdims=True)
    cmy = (1 - rgb - k) / np.maximum(1 - k, 1e-9)
    return np.round(np.concatenate([cmy, k], -1) * 255).astype(np.uint8)


def pillow_cmyk(cmyk: np.ndarray) -> Image.Image:
    return Image.frombytes("CMYK", (cmyk.shape[1], cmyk.shape[0]), cmyk.tobytes())


def srgb_profile_bytes() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def error(image, rgb: np.ndarray) -> np.ndarray:
    return np.abs(image.array.astype(np.int64) - rgb)


def test_cmyk_jpeg_is_read_as_its_rgb_colours(tmp_path):
    rgb = muted_rgb()
    pillow_cmyk(cmyk_of(rgb)).save(tmp_path / "cmyk.jpg", quality=95)
    assert Image.open(tmp_path / "cmyk.jpg").info.get("adobe")  # Pillow writes Adobe's inverted CMYK
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.shape == rgb.shape and image.array.dtype == np.uint8
    assert image.channel_names == ("R", "G", "B")
    assert error(image, rgb).mean() < 2.0 and error(image, rgb).max() <= 12


def test_cmyk_jpeg_with_an_unusable_icc_profile_warns_and_still_converts(tmp_path):
    rgb = muted_rgb()
    # An RGB profile on CMYK data: ImageCms refuses it, so the naive formula has to do.
    pillow_cmyk(cmyk_of(rgb)).save(tmp_path / "cmyk.jpg", quality=95, icc_profile=srgb_profile_bytes())
    with pytest.warns(UserWarning, match="cmyk.jpg.*ICC profile"):
        image = read_image(tmp_path / "cmyk.jpg")
    assert error(image, rgb).mean() < 2.0


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_cmyk_tiff_is_read_as_its_rgb_colours(tmp_path, dtype):
    rgb = muted_rgb()
    cmyk = cmyk_of(rgb).astype(dtype) * (257 if dtype == np.uint16 else 1)
    tifffile.imwrite(tmp_path / "cmyk.tif", cmyk, photometric="separated")
    image = read_image(tmp_path / "cmyk.tif")
    assert image.shape == rgb.shape and image.array.dtype == dtype
    scale = np.iinfo(dtype).max
    np.testing.assert_allclose(image.array / scale, rgb / 255, atol=1.01 / 255)


def test_cmyk_tiff_with_alpha_keeps_the_alpha(tmp_path):
    rgb = muted_rgb()
    alpha = np.arange(rgb.shape[0] * rgb.shape[1], dtype=np.uint8).reshape(rgb.shape[:2])
    cmyka = np.concatenate([cmyk_of(rgb), alpha[:, :, None]], -1)
    tifffile.imwrite(tmp_path / "cmyka.tif", cmyka, photometric="separated", extrasamples=[2])
    image = read_image(tmp_path / "cmyka.tif", keep_alpha=True)
    assert image.channel_names == ("R", "G", "B", "A")
    np.testing.assert_array_equal(image.array[:, :, 3], alpha)
    assert error(read_image(tmp_path / "cmyka.tif"), rgb).max() <= 1


@pytest.mark.parametrize("transparency", ["bytes", "index"])
def test_palette_png_transparency_becomes_alpha(tmp_path, transparency):
    palette = np.array([[200, 10, 10], [10, 200, 10], [10, 10, 200], [90, 90, 90]], np.uint8)
    indices = (np.arange(6 * 8).reshape(6, 8) % 4).astype(np.uint8)
    image = Image.fromarray(indices, mode="L").convert("P")
    image.putpalette(palette.tobytes())
    table = [255, 128, 0, 255]
    image.save(tmp_path / "p.png", transparency=bytes(table) if transparency == "bytes" else 2)
    alpha = np.array(table if transparency == "bytes" else [255, 255, 0, 255], np.uint8)[indices]
    kept = read_image(tmp_path / "p.png", keep_alpha=True)
    assert kept.channel_names == ("R", "G", "B", "A")
    np.testing.assert_array_equal(kept.array[:, :, :3], palette[indices])
    np.testing.assert_array_equal(kept.array[:, :, 3], alpha)
    np.testing.assert_array_equal(read_image(tmp_path / "p.png").array, palette[indices])


def test_min_is_white_tiff_is_inverted(tmp_path):
    grey = muted_rgb()[:, :, 0]
    tifffile.imwrite(tmp_path / "w.tif", grey, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "w.tif").array[:, :, 0], 255 - grey)
    bits = grey > 120  # bilevel, as fax and scanned documents store it: 1 is black
    tifffile.imwrite(tmp_path / "b.tif", bits, photometric="miniswhite")
    np.testing.assert_array_equal(read_image(tmp_path / "b.tif").array[:, :, 0], np.where(bits, 0, 255))


@pytest.mark.parametrize("eight_bit", [True, False])
def test_palette_tiff_applies_its_colour_map(tmp_path, eight_bit):
    indices = (np.arange(6 * 8).reshape(6, 8) % 256).astype(np.uint8)
    colours = np.random.default_rng(4).integers(0, 256, (256, 3)).astype(np.uint16)
    colourmap = (colours * 257 if eight_bit else colours * 256 + 7).T  # TIFF colour maps are 16-bit
    tifffile.imwrite(tmp_path / "p.tif", indices, photometric="palette", colormap=colourmap)
    image = read_image(tmp_path / "p.tif")
    assert image.channel_names == ("R", "G", "B")
    if eight_bit:  # an 8-bit palette stored as v * 257 comes back as the 8-bit colours
        assert image.array.dtype == np.uint8
        np.testing.assert_array_equal(image.array, colours[indices])
    else:
        assert image.array.dtype == np.uint16
        np.testing.assert_array_equal(image.array, colourmap.T[indices])


def test_ycbcr_tiff_is_converted_to_rgb(tmp_path):
    rgb = muted_rgb()
    ycbcr = np.asarray(Image.fromarray(rgb).convert("YCbCr"))
    tifffile.imwrite(tmp_path / "ycc.tif", ycbcr, photometric="ycbcr", subsampling=(1, 1))
    image = read_image(tmp_path / "ycc.tif")
    assert image.channel_names == ("R", "G", "B")
    assert error(image, rgb).max() <= 3  # 8-bit YCbCr rounding


def test_cielab_tiff_is_converted_to_rgb(tmp_path):
    rgb = muted_rgb()
    srgb, lab = ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB")
    lab_image = ImageCms.profileToProfile(Image.fromarray(rgb), srgb, lab, outputMode="LAB")
    lab_image.save(tmp_path / "lab.tif")
    image = read_image(tmp_path / "lab.tif")
    assert image.shape == rgb.shape and image.array.dtype == np.uint8
    expected = np.asarray(ImageCms.profileToProfile(lab_image, lab, srgb, outputMode="RGB"))
    np.testing.assert_array_equal(image.array, expected)  # LittleCMS's own CIELAB -> sRGB
    assert error(image, rgb).mean() < 1.0  # and near the original, up to 8-bit CIELAB rounding


def test_lzw_tiff_is_read_without_imagecodecs(tmp_path):
    # LZW is the most common TIFF compression; tifffile needs the optional imagecodecs for it.
    rgb = muted_rgb()
    Image.fromarray(rgb).save(tmp_path / "lzw.tif", compression="tiff_lzw")
    np.testing.assert_array_equal(read_image(tmp_path / "lzw.tif").array, rgb)


def test_16_bit_colour_tiff_that_only_pillow_decodes_warns_about_8_bits(tmp_path, monkeypatch):
    rgb16 = muted_rgb().astype(np.uint16) * 257
    tifffile.imwrite(tmp_path / "deep.tif", rgb16, compression="zlib")

    def codec_missing(self, *args, **kwargs):  # as tifffile fails for LZW/JPEG without imagecodecs
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", codec_missing)
    with pytest.warns(UserWarning, match="deep.tif.*8 bits.*imagecodecs"):
        image = read_image(tmp_path / "deep.tif")
    np.testing.assert_array_equal(image.array, muted_rgb())


def test_unsupported_mode_is_refused_naming_file_and_mode(tmp_path):
    Image.fromarray(np.arange(20, dtype=np.int32).reshape(4, 5) * 1000).save(tmp_path / "i.tif", compression="tiff_lzw")
    with pytest.raises(ValueError, match=r"i\.tif.*mode 'I'.*not supported"):
        read_image(tmp_path / "i.tif")


def test_rgb_jpeg_with_an_icc_profile_is_read_as_it_is(tmp_path):
    # An RGB JPEG that carries an ICC profile is read as it is (its samples are already RGB).
    rgb = muted_rgb()
    Image.fromarray(rgb).save(tmp_path / "icc.jpg", quality=95, icc_profile=srgb_profile_bytes())
    assert error(read_image(tmp_path / "icc.jpg"), rgb).mean() < 2.0


def test_cmyk_tiff_with_an_icc_profile_warns_that_it_is_not_used(tmp_path):
    rgb = muted_rgb()
    profile = srgb_profile_bytes()  # any profile: the warning is about not applying it
    tifffile.imwrite(tmp_path / "icc.tif", cmyk_of(rgb), photometric="separated",
                     extratags=[(34675, 7, len(profile), profile, True)])  # InterColorProfile, UNDEFINED bytes
    with pytest.warns(UserWarning, match="icc.tif.*ICC profile is not used"):
        image = read_image(tmp_path / "icc.tif")
    assert error(image, rgb).max() <= 1


@pytest.mark.parametrize("photometric", ["cfa", "icclab"])
def test_other_tiff_colour_models_are_refused_by_name(tmp_path, photometric):
    data = np.zeros((4, 5, 3) if photometric == "icclab" else (4, 5), np.uint8)
    tifffile.imwrite(tmp_path / "odd.tif", data, photometric=photometric)
    with pytest.raises(ValueError, match=rf"odd\.tif: TIFF colour model {photometric.upper()} is not supported"):
        read_image(tmp_path / "odd.tif")
