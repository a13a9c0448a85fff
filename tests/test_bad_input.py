"""A corpus of bad input through the real command line: each gives one clear line, exit code 1, no
traceback, and nothing written."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from ngp.cli import app
from ngp.io.images import read_image, write_image

SMALL = {"encoding": {"n_levels": 2, "log2_hashmap_size": 10, "base_resolution": 4}, "network": {"n_neurons": 16}}
runner = CliRunner()


def fails_cleanly(tmp_path, args, *needles):
    out = tmp_path / "run"
    result = runner.invoke(app, [str(a) for a in args])
    text = result.output  # stdout and stderr, as a terminal shows them
    assert result.exit_code == 1, text
    assert "Traceback" not in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, text
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    assert not out.exists() or not any(out.iterdir()), "something was written"
    return errors[0]


@pytest.fixture(scope="module")
def png_bytes():
    buffer = io.BytesIO()
    Image.fromarray(read_image("builtin:astronaut").array[:64, :64]).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("name, content, needle", [
    ("truncated.png", "truncate", "truncated.png"),
    ("garbage.png", b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 64, "garbage.png"),
    ("empty.png", b"", "empty"),
    ("photo.jpg", "png", "PNG"),  # PNG data behind a .jpg name
    ("missing.png", None, "missing.png"),
])
def test_bad_images(tmp_path, png_bytes, name, content, needle):
    path = tmp_path / name
    if content == "truncate":
        path.write_bytes(png_bytes[: len(png_bytes) // 2])
    elif content == "png":
        path.write_bytes(png_bytes)
    elif content is not None:
        path.write_bytes(content)
    fails_cleanly(tmp_path, ["image", "fit", path, "--out", tmp_path / "run", "--steps", 1], needle)


def test_a_cmyk_jpeg_is_read_in_its_true_colours(tmp_path):
    rgb = np.zeros((32, 32, 3), np.uint8)
    rgb[:, :16] = (200, 30, 40)
    rgb[:, 16:] = (20, 180, 60)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    image = read_image(tmp_path / "cmyk.jpg")
    assert image.channels == 3
    assert np.abs(image.array.astype(int) - rgb).max() <= 12  # JPEG's loss, not a wrong colour model


@pytest.mark.parametrize("content, needle", [
    ("this is not a mesh\n", "broken.obj"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\n", "broken.obj"),  # vertices but no faces
    ("v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "broken.obj"),
])
def test_broken_meshes(tmp_path, content, needle):
    (tmp_path / "broken.obj").write_text(content)
    fails_cleanly(tmp_path, ["sdf", "fit", tmp_path / "broken.obj", "--out", tmp_path / "run", "--steps", 1], needle)


TRANSFORMS = {"camera_angle_x": 0.69, "aabb_scale": 1, "frames": [
    {"file_path": "images/a.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 3], [0, 0, 0, 1]]},
    {"file_path": "images/b.png", "transform_matrix": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 4], [0, 0, 0, 1]]}]}


@pytest.mark.parametrize("change, needle", [
    ({"camera_angle_x": 0}, "camera_angle_x"),
    ({"aabb_scale": 2.7}, "aabb_scale"),
    ({"frames": []}, "frames"),
    ({"frames": "everything"}, "frames"),
    ("{not json", "transforms.json"),
])
def test_fuzzed_transforms(tmp_path, change, needle):
    data = tmp_path / "scene"
    (data / "images").mkdir(parents=True)
    for name in ("a.png", "b.png"):
        write_image(data / "images" / name, np.full((8, 8, 3), 128, np.uint8))
    text = change if isinstance(change, str) else json.dumps({**TRANSFORMS, **change})
    (data / "transforms.json").write_text(text)
    fails_cleanly(tmp_path, ["nerf", "train", data, "--out", tmp_path / "run", "--steps", 1], needle)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runs")
    write_image(folder / "small.png", read_image("builtin:astronaut").array[:32, :32])
    (folder / "small.json").write_text(json.dumps(SMALL))
    result = runner.invoke(app, ["image", "fit", str(folder / "small.png"), "--out", str(folder / "image_run"),
                                 "--steps", "2", "--config", str(folder / "small.json"), "--quiet"])
    assert result.exit_code == 0, result.output
    return folder / "image_run"


@pytest.mark.parametrize("command, needle", [
    (["sdf", "render", "{run}", "--out", "{tmp}/x.png"], "not of 'sdf'"),
    (["sdf", "mesh", "{run}", "--out", "{tmp}/x.ply"], "not of 'sdf'"),
    (["nerf", "render", "{run}", "--out", "{tmp}/x.mp4"], "not of 'nerf'"),
    (["nerf", "eval", "{run}"], "not of 'nerf'"),
])
def test_a_run_of_another_primitive_is_refused(tmp_path, image_run, command, needle):
    args = [a.format(run=image_run, tmp=tmp_path) for a in command]
    fails_cleanly(tmp_path, args, needle)
    assert not list(tmp_path.glob("x.*"))


@pytest.mark.parametrize("damage, needle", [
    (lambda c: (c / "checkpoint.json").write_text(
        json.dumps({**json.loads((c / "checkpoint.json").read_text()), "format_version": 999})),
     "format version 999 (newer"),
    (lambda c: (c / "model.safetensors").write_bytes((c / "model.safetensors").read_bytes()[:100]), "cannot be read"),
    (lambda c: (c / "checkpoint.json").write_text("{"), "not valid JSON"),
])
def test_damaged_checkpoints(tmp_path, image_run, damage, needle):
    run = tmp_path / "copy"
    shutil.copytree(image_run, run)
    damage(run / "checkpoint")
    fails_cleanly(tmp_path, ["image", "render", run, "-W", 4, "-H", 4, "--out", tmp_path / "x.png"], needle)
    assert not (tmp_path / "x.png").exists()
    fails_cleanly(tmp_path, ["image", "fit", "builtin:astronaut", "--out", run, "--resume", "--steps", 1], needle)


def test_unknown_config_keys_are_named_for_every_primitive(tmp_path):
    (tmp_path / "bad.json").write_text('{"training": {"batch_sise": 4}}')
    for args in (["image", "fit", "builtin:astronaut"], ["sdf", "fit", tmp_path / "bad.json"],
                 ["nerf", "train", "builtin"]):
        fails_cleanly(tmp_path, [*args, "--out", tmp_path / "run", "--steps", 1, "--config", tmp_path / "bad.json"],
                      "batch_sise")
