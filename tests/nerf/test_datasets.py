"""Loading NeRF data sets: both formats from hand-made fixtures, errors, and the real scenes."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import torch

from ngp.nerf import datasets
from ngp.geometry.cameras import generate_rays
from ngp.nerf.datasets import load_dataset, nerf_to_ngp_matrix

W, H = 8, 6
ANGLE_X = 0.69
SHARED = Path(os.environ.get("NGP_SHARED_DATA", Path(__file__).parents[2] / ".." / "shared" / "data"))


# ------------------------------------------------------------------------------------ fixtures
def look_at(centre, target=(0.0, 0.0, 0.0)) -> list[list[float]]:
    """Blender camera-to-world (camera looks down -z, z-up world)."""
    centre, target = np.asarray(centre, float), np.asarray(target, float)
    back = (centre - target) / np.linalg.norm(centre - target)
    right = np.cross([0.0, 0.0, 1.0], back)
    right /= np.linalg.norm(right)
    m = np.eye(4)
    m[:3, 0], m[:3, 1], m[:3, 2], m[:3, 3] = right, np.cross(back, right), back, centre
    return m.tolist()


CENTRES = [(4.0, 0.0, 1.0), (0.0, -4.0, 2.0), (-3.0, 2.0, 1.5), (1.0, 3.5, 0.5)]


def image(i: int, channels: int = 4, size=(W, H), dtype=np.uint8) -> np.ndarray:
    rng = np.random.default_rng(i)
    a = rng.integers(0, np.iinfo(dtype).max, (size[1], size[0], channels), dtype=dtype)
    if channels == 4:
        a[0, 0, 3] = 0  # some transparent pixels, as in NeRF-synthetic renders
    return a


def write_blender(root: Path, n: int = 3, splits=("train", "test"), **extra) -> Path:
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(n):
            iio.imwrite(root / split / f"r_{i}.png", image(i))
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": look_at(CENTRES[i % 4])})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": ANGLE_X, "frames": frames, **extra}))
    return root


def ngp_meta(n: int, **extra) -> dict:
    meta = {"fl_x": 9.0, "fl_y": 8.0, "cx": 4.2, "cy": 2.9, "w": W, "h": H,
            "k1": 0.01, "k2": -0.002, "p1": 0.0005, "p2": -0.0004, "aabb_scale": 4,
            "frames": [{"file_path": f"images/{i:04d}.jpg", "transform_matrix": look_at(CENTRES[i % 4])}
                       for i in range(n)]}
    meta.update(extra)
    return meta


def write_ngp(root: Path, meta: dict, missing=(), sizes=None) -> Path:
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(meta["frames"]):
        if i not in missing:
            size = sizes[i] if sizes else (W, H)
            iio.imwrite(root / f["file_path"].replace(".jpg", ".png"), image(i, 3, size))
            f["file_path"] = f["file_path"].replace(".jpg", ".png")
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def ray_box(origins, directions, aabb):
    """Entry and exit distances of rays through an axis-aligned box (slab test)."""
    with np.errstate(divide="ignore"):
        inv = 1.0 / directions
    t0, t1 = (aabb[0] - origins) * inv, (aabb[1] - origins) * inv
    return torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)


def central_rays(ds):
    cams = ds.cameras
    xy = torch.stack([cams.width / 2, cams.height / 2], -1).float()
    return generate_rays(cams, torch.arange(len(cams)), xy)


def assert_central_rays_hit_box(ds):
    o, d = central_rays(ds)
    t_near, t_far = ray_box(o, d, ds.aabb)
    assert (t_far > t_near.clamp(min=0)).all(), "some camera's central ray misses the aabb"


# ---------------------------------------------------------------------------- Blender format
def test_blender_format(tmp_path):
    ds = load_dataset(write_blender(tmp_path))
    assert ds.format == "blender" and ds.white_background and ds.has_alpha
    assert ds.images.dtype == torch.uint8 and ds.images.shape == (3, H, W, 4)
    for i in range(3):
        np.testing.assert_array_equal(ds.images[i].numpy(), image(i))
    focal = 0.5 * W / math.tan(0.5 * ANGLE_X)
    torch.testing.assert_close(ds.cameras.fx, torch.full((3,), focal))
    torch.testing.assert_close(ds.cameras.fy, torch.full((3,), focal))  # square pixels by default
    assert ds.cameras.cx[0].item() == W / 2 and ds.cameras.cy[0].item() == H / 2
    assert not ds.cameras.has_distortion
    assert ds.aabb.tolist() == [[0, 0, 0], [1, 1, 1]] and ds.aabb_scale == 1
    assert [p.name for p in ds.file_paths] == ["r_0.png", "r_1.png", "r_2.png"]
    assert len(load_dataset(tmp_path, "test")) == 3
    assert_central_rays_hit_box(ds)


def test_camera_angle_y_gives_fy(tmp_path):
    write_blender(tmp_path, camera_angle_y=0.5)
    ds = load_dataset(tmp_path)
    assert ds.cameras.fy[0].item() == pytest.approx(0.5 * H / math.tan(0.25))


def test_nerf_to_ngp_transform_matches_instant_ngp():
    # identity rotation at (1, 2, 3): position scaled, offset, then axes cycled (x, y, z) -> (y, z, x)
    m = np.eye(4)
    m[:3, 3] = [1.0, 2.0, 3.0]
    out = nerf_to_ngp_matrix(m, scale=0.33, offset=(0.5, 0.5, 0.5))
    np.testing.assert_allclose(out[:, 3], [0.33 * 2 + 0.5, 0.33 * 3 + 0.5, 0.33 * 1 + 0.5])
    np.testing.assert_allclose(out[:, :3], [[0, 1, 0], [0, 0, 1], [1, 0, 0]])
    # offset is added before cycling, as in instant-ngp's nerf_matrix_to_ngp
    out = nerf_to_ngp_matrix(np.eye(4), scale=1.0, offset=(0.1, 0.2, 0.3))
    np.testing.assert_allclose(out[:, 3], [0.2, 0.3, 0.1])


def test_world_points_project_consistently_after_the_transform(tmp_path):
    """A point seen by a NeRF-world camera is on the ray of the transformed (ngp) camera."""
    ds = load_dataset(write_blender(tmp_path, n=4))
    point_nerf = np.array([0.3, -0.2, 0.4])
    for i, centre in enumerate(CENTRES):
        c2w = np.asarray(look_at(centre))
        p_cam = c2w[:3, :3].T @ (point_nerf - c2w[:3, 3])  # OpenGL camera coordinates
        f, cx, cy = ds.cameras.fx[i].item(), ds.cameras.cx[i].item(), ds.cameras.cy[i].item()
        xy = torch.tensor([[f * p_cam[0] / -p_cam[2] + cx, -f * p_cam[1] / -p_cam[2] + cy]])
        o, d = generate_rays(ds.cameras, torch.tensor([i]), xy)
        p_ngp = torch.tensor(np.roll(point_nerf * 0.33 + 0.5, -1), dtype=torch.float32)
        assert torch.linalg.cross(p_ngp - o[0], d[0]).norm() < 1e-5


def test_json_file_path_and_split_mismatch(tmp_path):
    write_blender(tmp_path)
    assert len(load_dataset(tmp_path / "transforms_train.json")) == 3
    with pytest.raises(ValueError, match="holds the 'train' split but split='test'"):
        load_dataset(tmp_path / "transforms_train.json", split="test")
    with pytest.raises(FileNotFoundError, match="no transforms_val.json or transforms.json.*found transforms_test.json, transforms_train.json"):
        load_dataset(tmp_path, split="val")
    with pytest.raises(ValueError, match="split must be one of"):
        load_dataset(tmp_path, split="training")


# ----------------------------------------------------------------------- instant-ngp format
def test_instant_ngp_format(tmp_path):
    meta = ngp_meta(3, scale=0.5, offset=[0.1, 0.2, 0.3])
    meta["frames"][1].update({"fl_x": 11.0, "cx": 3.7})  # per-frame override
    write_ngp(tmp_path, meta)
    ds = load_dataset(tmp_path, "all")
    assert ds.format == "instant-ngp" and not ds.white_background and not ds.has_alpha
    assert ds.images.shape == (3, H, W, 3)
    assert ds.cameras.fx.tolist() == [9.0, 11.0, 9.0]
    assert ds.cameras.fy.tolist() == [8.0, 8.0, 8.0]
    torch.testing.assert_close(ds.cameras.cx, torch.tensor([4.2, 3.7, 4.2]))
    assert ds.cameras.has_distortion
    torch.testing.assert_close(ds.cameras.k1, torch.full((3,), 0.01))
    torch.testing.assert_close(ds.cameras.p2, torch.full((3,), -0.0004))
    assert ds.aabb_scale == 4 and ds.aabb.tolist() == [[-1.5] * 3, [2.5] * 3]
    expected = nerf_to_ngp_matrix(np.asarray(look_at(CENTRES[0])), 0.5, (0.1, 0.2, 0.3))
    torch.testing.assert_close(ds.cameras.c2w[0], torch.tensor(expected, dtype=torch.float32))
    assert load_dataset(tmp_path / "transforms.json", "all").images.shape == ds.images.shape
    rgba = ds.pixels_for_image(2)[2]
    assert (rgba[:, 3] == 1).all()  # RGB images read as opaque


def test_single_file_holdout_splits(tmp_path):
    # more in test_datasets_splits.py
    write_ngp(tmp_path, ngp_meta(10))
    names = lambda ds: [p.stem for p in ds.file_paths]  # noqa: E731
    assert len(load_dataset(tmp_path, "all")) == 10  # what instant-ngp trains on
    assert names(load_dataset(tmp_path, "test")) == ["0000", "0008"]
    assert names(load_dataset(tmp_path, "val")) == ["0000", "0008"]
    train = names(load_dataset(tmp_path, "train"))  # the validation frames are not trained on
    assert train == [f"{i:04d}" for i in range(10) if i % 8]


def test_focal_from_camera_angle_and_defaults(tmp_path):
    meta = ngp_meta(2)
    for key in ("fl_x", "fl_y", "cx", "cy", "w", "h"):
        del meta[key]
    meta["camera_angle_x"] = 1.0
    ds = load_dataset(write_ngp(tmp_path, meta), "all")
    focal = 0.5 * W / math.tan(0.5)
    torch.testing.assert_close(ds.cameras.fx, torch.full((2,), focal))
    torch.testing.assert_close(ds.cameras.fy, torch.full((2,), focal))
    assert ds.cameras.cx[0].item() == W / 2 and ds.cameras.width[0].item() == W


def test_mixed_sizes_with_per_frame_intrinsics(tmp_path):
    meta = ngp_meta(3)
    for key in ("w", "h", "cx", "cy"):
        del meta[key]
    meta["frames"][1].update({"w": 10, "h": 4})
    ds = load_dataset(write_ngp(tmp_path, meta, sizes=[(W, H), (10, 4), (W, H)]), "all")
    assert isinstance(ds.images, list) and ds.images[1].shape == (4, 10, 3)
    assert ds.cameras.width.tolist() == [W, 10, W] and ds.cameras.cx.tolist() == [4.0, 5.0, 4.0]
    cam, xy, rgba = ds.sample_batch(500, torch.Generator().manual_seed(0))
    assert (xy[:, 0] < ds.cameras.width[cam]).all() and (xy[:, 1] < ds.cameras.height[cam]).all()
    for k in range(0, 500, 37):
        px, py = xy[k].long().tolist()
        expected = ds.images[cam[k]][py, px].float() / 255
        torch.testing.assert_close(rgba[k, :3], expected)


# ------------------------------------------------------------------------------------ errors
def test_mixed_sizes_without_per_frame_intrinsics(tmp_path):
    meta = ngp_meta(3)
    del meta["w"], meta["h"]
    write_ngp(tmp_path, meta, sizes=[(W, H), (10, 4), (W, H)])
    with pytest.raises(ValueError, match=r"different sizes \(8x6, 10x4; 0001.png is 10x4, 0000.png is 8x6\)"):
        load_dataset(tmp_path, "all")


def test_image_size_disagrees_with_transforms(tmp_path):
    write_ngp(tmp_path, ngp_meta(2, w=16))
    with pytest.raises(ValueError, match="is 8x6 but the transforms say 16x6"):
        load_dataset(tmp_path)


def test_missing_frames_warn_once_with_count(tmp_path):
    write_ngp(tmp_path, ngp_meta(7), missing=(1, 4, 5))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(tmp_path, "all")
    assert len(caught) == 1
    assert "skipping 3 of 7 frames" in str(caught[0].message)
    assert [p.stem for p in ds.file_paths] == ["0000", "0002", "0003", "0006"]


def test_no_images_at_all(tmp_path):
    write_ngp(tmp_path, ngp_meta(3), missing=(0, 1, 2))
    with pytest.raises(FileNotFoundError, match="none of the 3 images"):
        load_dataset(tmp_path)


def test_malformed_json(tmp_path):
    (tmp_path / "transforms.json").write_text('{"frames": [ {"file_path": "a.png",, }]}')
    with pytest.raises(ValueError, match=r"transforms\.json is not valid JSON: .*line 1"):
        load_dataset(tmp_path)


def test_missing_keys(tmp_path):
    meta = ngp_meta(2)
    del meta["frames"][1]["transform_matrix"]
    write_ngp(tmp_path, meta)
    with pytest.raises(ValueError, match="frame 1 has no 'transform_matrix'"):
        load_dataset(tmp_path)
    meta = ngp_meta(2)
    for key in ("fl_x", "fl_y"):
        del meta[key]
    write_ngp(tmp_path, meta)
    with pytest.raises(ValueError, match="no focal length"):
        load_dataset(tmp_path)
    (tmp_path / "transforms.json").write_text(json.dumps({"fl_x": 1.0}))
    with pytest.raises(ValueError, match="no 'frames' list"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("bad, message", [
    ([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 1]], "singular"),
    ([[1, 0, 0, float("nan")], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]], "non-finite"),
    ([[1, 0, 0], [0, 1, 0]], "must be 4x4 or 3x4"),
])
def test_bad_pose_named_before_decoding(tmp_path, monkeypatch, bad, message):
    meta = ngp_meta(3)
    meta["frames"][2]["transform_matrix"] = bad
    write_ngp(tmp_path, meta)

    def no_decoding(path):
        raise AssertionError("images were decoded before the poses were checked")

    monkeypatch.setattr(datasets, "_decode", no_decoding)
    with pytest.raises(ValueError, match=rf"frame 2 \(images/0002.png\).*{message}"):
        load_dataset(tmp_path)


def test_bad_aabb_scale_and_lens(tmp_path):
    write_ngp(tmp_path, ngp_meta(2, aabb_scale=3))
    with pytest.raises(ValueError, match="'aabb_scale' must be a power of two in 1..128 .*got 3"):
        load_dataset(tmp_path)
    write_ngp(tmp_path, ngp_meta(2, is_fisheye=True))
    with pytest.raises(ValueError, match="fisheye"):
        load_dataset(tmp_path)


def test_no_transforms_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no transforms_train.json or transforms.json"):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a file or folder"):
        load_dataset(tmp_path / "nowhere")


# -------------------------------------------------------------------- downscale and sampling
def test_downscale_averages_pixels_and_scales_intrinsics(tmp_path):
    write_blender(tmp_path)
    full = load_dataset(tmp_path)
    half = load_dataset(tmp_path, downscale=2)
    assert half.images.shape == (3, H // 2, W // 2, 4)
    torch.testing.assert_close(half.cameras.fx, full.cameras.fx / 2)
    torch.testing.assert_close(half.cameras.cx, full.cameras.cx / 2)
    assert half.cameras.width.tolist() == [W // 2] * 3 and half.cameras.height.tolist() == [H // 2] * 3
    # area average, colour weighted by alpha (a transparent pixel's colour does not leak)
    block = image(0)[:2, :2].astype(np.float64)
    alpha = block[..., 3].mean()
    rgb = (block[..., :3] * block[..., 3:]).sum((0, 1)) / block[..., 3].sum()
    np.testing.assert_allclose(half.images[0, 0, 0].numpy(), np.r_[rgb, alpha], atol=0.51)
    # the same ray through the same scene point: the centre pixel of both images
    o1, d1 = central_rays(full)
    o2, d2 = central_rays(half)
    torch.testing.assert_close(d1, d2)


def test_downscale_crops_remainder(tmp_path):
    write_blender(tmp_path)
    ds = load_dataset(tmp_path, downscale=4)  # 8x6 -> 2x1, the bottom 2 rows dropped
    assert ds.images.shape == (3, 1, 2, 4)
    assert ds.cameras.height[0].item() == 1 and ds.cameras.cy[0].item() == 0.75


def test_sample_batch_and_pixels_for_image(tmp_path):
    ds = load_dataset(write_blender(tmp_path))
    cam, xy, rgba = ds.sample_batch(256, torch.Generator().manual_seed(0))
    assert cam.shape == (256,) and xy.shape == (256, 2) and rgba.shape == (256, 4)
    assert rgba.dtype == torch.float32 and set(cam.tolist()) == {0, 1, 2}
    torch.testing.assert_close(xy % 1, torch.full_like(xy, 0.5))  # pixel centres
    px, py = xy.long().unbind(-1)
    torch.testing.assert_close(rgba, ds.images[cam, py, px].float() / 255)
    again = ds.sample_batch(256, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip((cam, xy, rgba), again))
    _, jittered, _ = ds.sample_batch(256, torch.Generator().manual_seed(0), jitter=True)
    assert not torch.allclose(jittered % 1, torch.full_like(jittered, 0.5))

    cam, xy, rgba = ds.pixels_for_image(1)
    assert (cam == 1).all() and xy[0].tolist() == [0.5, 0.5] and xy[W].tolist() == [0.5, 1.5]
    torch.testing.assert_close(rgba.reshape(H, W, 4), ds.images[1].float() / 255)


def test_sixteen_bit_png_keeps_its_depth(tmp_path):
    # 16-bit greyscale (what Pillow decodes at full depth): held as uint16, expanded to RGB
    meta = ngp_meta(2)
    (tmp_path / "images").mkdir()
    grey = [image(i, 1, dtype=np.uint16)[..., 0] for i in range(2)]
    for i, f in enumerate(meta["frames"]):
        f["file_path"] = f"images/{i}.png"
        iio.imwrite(tmp_path / f["file_path"], grey[i])
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    ds = load_dataset(tmp_path, "all")
    assert ds.images.dtype == torch.uint16 and ds.images.shape == (2, H, W, 3)
    _, _, rgba = ds.pixels_for_image(1)
    np.testing.assert_allclose(rgba[:, 0].numpy(), grey[1].reshape(-1) / 65535, atol=1e-6)
    torch.testing.assert_close(rgba[:, 1], rgba[:, 0])
    half = load_dataset(tmp_path, "all", downscale=2)
    assert half.images.dtype == torch.uint16
    np.testing.assert_allclose(half.images[1, 0, 0, 0].item(), grey[1][:2, :2].mean(), atol=0.5)


@pytest.mark.parametrize("suffix, array", [
    (".tiff", image(0, 4, dtype=np.uint16)),
    (".exr", np.random.default_rng(0).random((H, W, 4)).astype(np.float16) * 4),
])
def test_tiff16_and_exr_frames(tmp_path, suffix, array):
    from ngp.io.images import write_image

    meta = ngp_meta(1)
    (tmp_path / "images").mkdir()
    meta["frames"][0]["file_path"] = "images/0"  # no extension: resolved like Blender's ".png"
    write_image(tmp_path / f"images/0{suffix}", array)
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    ds = load_dataset(tmp_path)
    assert ds.images.dtype == {".tiff": torch.uint16, ".exr": torch.float16}[suffix]
    assert ds.linear == (suffix == ".exr")
    scale = 65535 if suffix == ".tiff" else 1
    rgba = ds.pixels_for_image(0)[2].numpy()
    np.testing.assert_allclose(rgba, array.reshape(-1, 4).astype(np.float64) / scale, rtol=1e-3)


# ------------------------------------------------------------------------------- real scenes
def shared(name: str) -> Path:
    path = SHARED / "nerf" / name
    if not path.is_dir():
        pytest.skip(f"reference data {path} is absent (set NGP_SHARED_DATA to its folder)")
    return path


def test_lego():
    ds = load_dataset(shared("lego"), downscale=8)
    assert ds.images.shape == (80, 100, 100, 4) and ds.images.dtype == torch.uint8
    assert ds.aabb.tolist() == [[0, 0, 0], [1, 1, 1]]
    assert ds.cameras.fx[0].item() == pytest.approx(1111.111 / 8, rel=1e-4)
    alpha = ds.images[..., 3]
    assert (alpha == 0).any() and (alpha == 255).any()
    assert_central_rays_hit_box(ds)
    # NeRF-synthetic cameras look at the origin, which instant-ngp puts at the box centre
    o, d = central_rays(ds)
    v = torch.tensor([0.5, 0.5, 0.5]) - o
    assert torch.linalg.cross(v, d).norm(dim=-1).max() < 1e-3
    assert len(load_dataset(shared("lego"), "val", downscale=8)) == 10


def test_fox():
    with pytest.warns(UserWarning, match="skipping 17 of 62 frames"):
        ds = load_dataset(shared("fox"), "all", downscale=8)
    assert len(ds) == 45 and ds.images.shape == (45, 240, 135, 3)
    # validation: every 8th of the 45 frames with an image, none of them trained on
    with pytest.warns(UserWarning, match="skipping 17 of 62 frames"):
        val = load_dataset(shared("fox"), "val", downscale=8)
    assert val.holdout_summary() == "held out 6 of 45 frames for validation (every 8th)"
    assert val.frame_indices == ds.frame_indices[::8] and val.file_names == ds.file_names[::8]
    torch.testing.assert_close(val.images, ds.images[::8])
    assert ds.aabb_scale == 4 and ds.aabb.tolist() == [[-1.5] * 3, [2.5] * 3]
    assert ds.cameras.has_distortion
    assert ds.cameras.fx[0].item() == pytest.approx(1375.52 / 8)
    assert_central_rays_hit_box(ds)
    # colmap2nerf centres the scene on what the cameras look at: the box centre
    o, d = central_rays(ds)
    v = torch.tensor([0.5, 0.5, 0.5]) - o
    assert torch.linalg.cross(v, d).norm(dim=-1).median() < 0.5
    assert (ds.cameras.c2w[:, :, 1].mean(0)[1] > 0.8)  # the world's up is +y, as in instant-ngp
