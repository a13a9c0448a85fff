"""The built-in ray-traced scene: files in the Blender format, content, and camera consistency."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ngp.nerf.builtin_scene import main, make_builtin_scene, render_rays
from ngp.geometry.cameras import generate_rays
from ngp.nerf.datasets import load_dataset

RES = 40


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    # supersample=1: every pixel is exactly one ray through its centre, so the loader's rays
    # must reproduce the images
    return make_builtin_scene(tmp_path_factory.mktemp("scene"), n_train=6, n_val=2, n_test=3,
                              resolution=RES, seed=0, supersample=1)


def test_files_in_blender_format(scene):
    for split, n in (("train", 6), ("val", 2), ("test", 3)):
        meta = json.loads((scene / f"transforms_{split}.json").read_text())
        assert meta["camera_angle_x"] == pytest.approx(0.6911, abs=1e-4)
        assert len(meta["frames"]) == n
        assert all((scene / f"{f['file_path']}.png").is_file() for f in meta["frames"])
        ds = load_dataset(scene, split)
        assert ds.images.shape == (n, RES, RES, 4) and ds.white_background


def test_images_have_content_and_alpha(scene):
    images = load_dataset(scene).images.numpy()
    alpha = images[..., 3]
    coverage = (alpha == 255).mean()
    assert 0.2 < coverage < 0.9, "the object should fill part of the frame, not all of it"
    assert (alpha == 0).any()
    opaque = images[alpha == 255][:, :3]
    assert len(np.unique(opaque, axis=0)) > 200  # textured and shaded, not flat colours
    assert opaque.std(axis=0).min() > 30
    assert (images[alpha == 0][:, :3] == 0).all()  # transparent background carries no colour


def test_central_rays_hit_the_aabb(scene):
    ds = load_dataset(scene, "test")
    cams = ds.cameras
    o, d = generate_rays(cams, torch.arange(len(cams)),
                         torch.stack([cams.width / 2, cams.height / 2], -1).float())
    t0, t1 = (ds.aabb[0] - o) / d, (ds.aabb[1] - o) / d
    t_near, t_far = torch.minimum(t0, t1).amax(-1), torch.maximum(t0, t1).amin(-1)
    assert (t_far > t_near.clamp(min=0)).all()
    # and they pass through the box centre: the cameras look at the scene's origin
    v = torch.tensor([0.5, 0.5, 0.5]) - o
    assert torch.linalg.cross(v, d).norm(dim=-1).max() < 1e-4


def test_loader_rays_reproduce_the_images(scene):
    """Rays made by the loader + generate_rays, mapped back to the scene's frame, trace the same pixels."""
    ds = load_dataset(scene, "val")
    for i in range(len(ds)):
        cam, xy, rgba = ds.pixels_for_image(i)
        o, d = generate_rays(ds.cameras, cam, xy)
        # ngp world -> Blender world: undo the axis cycle, the offset and the scale
        o_nerf = (o.double()[:, [2, 0, 1]] - 0.5) / 0.33
        d_nerf = d.double()[:, [2, 0, 1]]
        traced = render_rays(o_nerf.numpy(), d_nerf.numpy())
        err = np.abs(traced - rgba.numpy().astype(np.float64))
        # float32 rays may flip a pixel exactly on an edge; everything else matches to rounding
        assert (err.max(-1) < 1.5 / 255).mean() > 0.99


def test_deterministic_and_seeded(tmp_path):
    a = make_builtin_scene(tmp_path / "a", n_train=2, n_val=0, n_test=0, resolution=16, seed=3)
    b = make_builtin_scene(tmp_path / "b", n_train=2, n_val=0, n_test=0, resolution=16, seed=3)
    c = make_builtin_scene(tmp_path / "c", n_train=2, n_val=0, n_test=0, resolution=16, seed=4)
    read = lambda p: (p / "transforms_train.json").read_text()  # noqa: E731
    assert read(a) == read(b) != read(c)
    assert (a / "train" / "r_1.png").read_bytes() == (b / "train" / "r_1.png").read_bytes()


def test_supersampling_antialiases_edges(tmp_path):
    path = make_builtin_scene(tmp_path, n_train=1, n_val=0, n_test=0, resolution=32, supersample=3)
    alpha = load_dataset(path).images[..., 3]
    assert ((alpha > 0) & (alpha < 255)).any()  # partial coverage along silhouettes


def test_command_line(tmp_path, capsys):
    main([str(tmp_path / "out"), "--n-train", "2", "--n-val", "1", "--n-test", "1", "--resolution", "8"])
    assert "wrote 2/1/1" in capsys.readouterr().out
    assert len(load_dataset(tmp_path / "out", "test")) == 1


# ------------------------------------------------------------------- crash-safe generation
def _crash_after(n_images: int, monkeypatch):
    """Make the PNG writer raise after ``n_images`` images, as a crash (Ctrl-C, full disk) would."""
    import imageio.v3 as iio

    real, calls = iio.imwrite, []

    def imwrite(*args, **kwargs):
        calls.append(args[0])
        if len(calls) > n_images:
            raise OSError("simulated crash while writing an image")
        return real(*args, **kwargs)

    monkeypatch.setattr(iio, "imwrite", imwrite)
    return calls


def test_a_crash_leaves_no_scene_that_looks_complete(tmp_path, monkeypatch):
    out = tmp_path / "scene"
    calls = _crash_after(3, monkeypatch)  # the 2 train images and 1 of the val ones
    with pytest.raises(OSError, match="simulated crash"):
        make_builtin_scene(out, n_train=2, n_val=2, n_test=2, resolution=8)
    assert len(calls) == 4
    # what consumers check today (runs.py looks for transforms_train.json) must not be there
    assert not (out / "transforms_train.json").exists()
    from ngp.nerf.builtin_scene import builtin_scene_is_complete

    assert not builtin_scene_is_complete(out)
    assert list(tmp_path.iterdir()) in ([], [out]), "the temporary folder is left behind"
    monkeypatch.undo()
    make_builtin_scene(out, n_train=2, n_val=2, n_test=2, resolution=8)  # the next call regenerates
    assert builtin_scene_is_complete(out)
    assert builtin_scene_is_complete(out, n_train=2, resolution=8)
    assert not builtin_scene_is_complete(out, n_train=3)  # other parameters: not this scene
    assert [len(load_dataset(out, s)) for s in ("train", "val", "test")] == [2, 2, 2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scene"]


def test_a_half_written_scene_of_the_old_generator_is_replaced(tmp_path):
    from ngp.nerf.builtin_scene import builtin_scene_is_complete

    out = make_builtin_scene(tmp_path / "scene", n_train=2, n_val=1, n_test=1, resolution=8)
    (out / "transforms_test.json").unlink()
    (out / ".builtin_scene.json").unlink()  # as the generator before the marker left a crash
    assert not builtin_scene_is_complete(out)
    make_builtin_scene(out, n_train=2, n_val=1, n_test=1, resolution=8)
    assert builtin_scene_is_complete(out) and len(load_dataset(out, "test")) == 1


def test_a_folder_that_is_not_a_scene_is_left_alone(tmp_path):
    from ngp.nerf.builtin_scene import builtin_scene_is_complete

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"notes\.txt"):
        make_builtin_scene(tmp_path, n_train=1, n_val=0, n_test=0, resolution=8)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert not builtin_scene_is_complete(tmp_path) and not builtin_scene_is_complete(tmp_path / "nowhere")
