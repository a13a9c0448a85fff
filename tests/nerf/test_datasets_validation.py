"""Bad ``transforms.json`` files: every malformed value is a ValueError/FileNotFoundError that names the
file (and the frame and key), never a KeyError/TypeError/ZeroDivisionError traceback."""

from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from ngp.io.images import write_image
from ngp.nerf.datasets import load_dataset

W, H = 8, 6
NAN, INF = float("nan"), float("inf")
GOOD_ERRORS = (ValueError, FileNotFoundError)


def pose(x: float) -> list[list[float]]:
    """A camera at (x, -4, 1) with the identity rotation (rigid, invertible)."""
    m = np.eye(4)
    m[:3, 3] = [x, -4.0, 1.0]
    return m.tolist()


def base_meta() -> dict:
    """A small valid instant-ngp file: every intrinsic present, 2 frames."""
    return {"camera_angle_x": 0.69, "camera_angle_y": 0.55, "fl_x": 9.0, "fl_y": 8.0, "cx": 4.2,
            "cy": 2.9, "w": W, "h": H, "k1": 0.01, "k2": -0.002, "p1": 0.0005, "p2": -0.0004,
            "aabb_scale": 4, "scale": 0.33, "offset": [0.5, 0.5, 0.5],
            "frames": [{"file_path": f"images/{i}.png", "transform_matrix": pose(float(i))} for i in range(2)]}


def write_scene(root: Path, meta=None) -> Path:
    """Images ``images/{0,1}.png`` (RGB, W x H) and ``transforms.json``; returns the JSON file's path."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        iio.imwrite(root / f"images/{i}.png", np.full((H, W, 3), 40 * i, np.uint8))
    return write_json(root, base_meta() if meta is None else meta)


def write_json(root: Path, meta) -> Path:
    """``transforms.json``: a str or bytes is written as it is, anything else dumped as JSON."""
    path = root / "transforms.json"
    if isinstance(meta, bytes):
        path.write_bytes(meta)
    else:
        path.write_text(meta if isinstance(meta, str) else json.dumps(meta))
    return path


def test_the_base_file_is_valid(tmp_path):
    ds = load_dataset(write_scene(tmp_path), split="all")
    assert len(ds) == 2 and ds.cameras.fx.tolist() == [9.0, 9.0]


# ------------------------------------------------------------------------------------ intrinsics
BAD_INTRINSICS = [
    ("camera_angle_x", 0), ("camera_angle_x", -0.7), ("camera_angle_x", math.pi), ("camera_angle_x", 4.0),
    ("camera_angle_x", NAN), ("camera_angle_x", "0.7"), ("camera_angle_y", INF), ("camera_angle_y", None),
    ("fl_x", 0), ("fl_x", -9.0), ("fl_x", True), ("fl_y", INF), ("fl_y", "8"),
    ("cx", NAN), ("cx", -1.0), ("cx", 100.0), ("cy", "2.9"), ("cy", 7.0),
    ("w", 0), ("w", -8), ("w", 8.5), ("w", [8]), ("h", "6"), ("h", INF),
    ("k1", NAN), ("k2", "0"), ("p1", None), ("p2", -INF), ("k3", 0.1), ("k4", "x"),
]


@pytest.mark.parametrize("per_frame", [False, True], ids=["global", "per-frame"])
@pytest.mark.parametrize("key, value", BAD_INTRINSICS, ids=[f"{k}={v!r}" for k, v in BAD_INTRINSICS])
def test_bad_intrinsic_names_file_frame_and_key(tmp_path, key, value, per_frame):
    meta = base_meta()
    (meta["frames"][1] if per_frame else meta)[key] = value
    path = write_scene(tmp_path, meta)
    frame = r": frame 1 \(images/1\.png\)" if per_frame else r"(: frame \d \([^)]*\))?"
    with pytest.raises(ValueError, match=re.escape(str(path)) + frame + f": '{key}'") as caught:
        load_dataset(path, split="all")
    assert repr(value) in str(caught.value)


def test_zero_camera_angle_is_a_value_error_not_zero_division(tmp_path):
    meta = {"camera_angle_x": 0, "frames": base_meta()["frames"]}
    with pytest.raises(ValueError, match=r"transforms\.json: 'camera_angle_x' must be .*got 0"):
        load_dataset(write_scene(tmp_path, meta))


@pytest.mark.parametrize("key, value", [("k1", -1.0), ("k1", -0.5), ("k2", 1e30), ("p1", 5.0)])
def test_distortion_that_cannot_be_undone_within_the_image(tmp_path, key, value):
    # finite but out of range: some pixels have no undistorted position (or several), so no ray
    meta = base_meta()
    meta["frames"][1][key] = value
    with pytest.raises(ValueError, match=r"frame 1 \(images/1\.png\): the lens distortion \(k1, k2, p1, p2\) = "
                                         r"\(.*\) (cannot be undone within the image|folds the image over itself)"):
        load_dataset(write_scene(tmp_path, meta), split="all")


def test_valid_intrinsics_still_load(tmp_path):
    meta = base_meta()
    meta.update(w=float(W), h=float(H), k3=0, cx=0.0, cy=float(H))  # as colmap2nerf writes them
    meta["frames"][1].update(camera_angle_x=1.0)
    ds = load_dataset(write_scene(tmp_path, meta), split="all")
    assert ds.cameras.width.tolist() == [W, W] and ds.cameras.fx.tolist() == [9.0, 9.0]


# ------------------------------------------------------------------------------------ aabb_scale
@pytest.mark.parametrize("value", [2.7, 0, -4, 3, 6, 256, 1.5, "4", True, NAN, INF, None, [4]])
def test_aabb_scale_must_be_a_power_of_two_up_to_128(tmp_path, value):
    # instant-ngp stores aabb_scale in an int (2.7 would silently become 2) and refuses a non-power
    # of two or anything above 1 << (NERF_CASCADES - 1) = 128
    meta = base_meta()
    meta["aabb_scale"] = value
    with pytest.raises(ValueError, match=r"transforms\.json: 'aabb_scale' must be a power of two in 1\.\.128") as e:
        load_dataset(write_scene(tmp_path, meta))
    assert repr(value) in str(e.value)


@pytest.mark.parametrize("value", [1, 2, 4.0, 128])
def test_valid_aabb_scale(tmp_path, value):
    meta = base_meta()
    meta["aabb_scale"] = value
    ds = load_dataset(write_scene(tmp_path, meta), split="all")
    assert ds.aabb_scale == int(value) and isinstance(ds.aabb_scale, int)


# ------------------------------------------------------------------------------ fuzz: named cases
def _set(meta: dict, *keys_and_value):
    *keys, value = keys_and_value
    target = meta
    for k in keys[:-1]:
        target = target[k]
    target[keys[-1]] = value
    return meta


def _delete(meta: dict, *keys):
    target = meta
    for k in keys[:-1]:
        target = target[k]
    del target[keys[-1]]
    return meta


def _matrix(rotation, bottom=(0, 0, 0, 1)):
    m = np.eye(4)
    m[:3, :3] = rotation
    m[3] = bottom
    return m.tolist()


def _replace_image(root: Path, i: int, array=None, name=None, folder=False, data=None):
    path = root / "images" / (name or f"{i}.png")
    (root / "images" / f"{i}.png").unlink()
    if folder:
        path.mkdir()
    elif data is not None:
        path.write_bytes(data)
    else:
        write_image(path, array)


M1 = ("frames", 1, "transform_matrix")  # frame 1's pose
CASES = {
    # not a JSON object / not JSON at all
    "top level is a list": (lambda r, m: [m], ValueError, "expected a JSON object"),
    "top level is a number": (lambda r, m: 3, ValueError, "expected a JSON object"),
    "top level is null": (lambda r, m: None, ValueError, "expected a JSON object"),
    "invalid JSON": (lambda r, m: '{"frames": [', ValueError, "not valid JSON"),
    "empty file": (lambda r, m: "", ValueError, "not valid JSON"),
    "not UTF-8": (lambda r, m: b'{"frames": "\xff\xfe"}', ValueError, "not valid JSON"),
    # frames
    "no frames key": (lambda r, m: _delete(m, "frames"), ValueError, "no 'frames' list"),
    "frames is an object": (lambda r, m: _set(m, "frames", {}), ValueError, "no 'frames' list"),
    "frames is a string": (lambda r, m: _set(m, "frames", "abc"), ValueError, "no 'frames' list"),
    "empty frames": (lambda r, m: _set(m, "frames", []), ValueError, "empty"),
    "frame is a number": (lambda r, m: _set(m, "frames", 1, 7), ValueError, "frame 1 is not a JSON object"),
    "frame is null": (lambda r, m: _set(m, "frames", 1, None), ValueError, "frame 1 is not a JSON object"),
    "no file_path": (lambda r, m: _delete(m, "frames", 1, "file_path"), ValueError, "frame 1 has no 'file_path'"),
    "file_path is a number": (lambda r, m: _set(m, "frames", 1, "file_path", 5), ValueError,
                              "frame 1: 'file_path' must be a non-empty string, got 5"),
    "file_path is null": (lambda r, m: _set(m, "frames", 1, "file_path", None), ValueError, "'file_path' must be"),
    "file_path is empty": (lambda r, m: _set(m, "frames", 1, "file_path", ""), ValueError, "'file_path' must be"),
    # transform_matrix
    "no transform_matrix": (lambda r, m: _delete(m, *M1), ValueError,
                            r"frame 1 has no 'transform_matrix'"),
    "matrix is a string": (lambda r, m: _set(m, *M1, "eye"), ValueError,
                           r"frame 1 \(images/1.png\): transform_matrix must be rows of numbers"),
    "matrix is null": (lambda r, m: _set(m, *M1, None), ValueError, "rows of numbers"),
    "matrix is an object": (lambda r, m: _set(m, *M1, {}), ValueError, "rows of numbers"),
    "matrix of strings": (lambda r, m: _set(m, *M1, [[str(v) for v in row] for row in pose(1)]),
                          ValueError, "rows of numbers"),
    "matrix of booleans": (lambda r, m: _set(m, *M1, 2, 2, True), ValueError, "rows of numbers"),
    "ragged matrix": (lambda r, m: _set(m, *M1, 1, [0, 1]), ValueError, "4x4 or 3x4"),
    "empty matrix": (lambda r, m: _set(m, *M1, []), ValueError, "4x4 or 3x4"),
    "2x4 matrix": (lambda r, m: _set(m, *M1, pose(1)[:2]), ValueError, "4x4 or 3x4"),
    "NaN in matrix": (lambda r, m: _set(m, *M1, 0, 3, NAN), ValueError, "non-finite"),
    "inf in matrix": (lambda r, m: _set(m, *M1, 1, 1, INF), ValueError, "non-finite"),
    "singular": (lambda r, m: _set(m, *M1, _matrix(np.diag([1, 1, 0]))), ValueError, "singular"),
    "sheared": (lambda r, m: _set(m, *M1, _matrix([[1, 0.5, 0], [0, 1, 0], [0, 0, 1]])),
                ValueError, "not a rotation"),
    "stretched": (lambda r, m: _set(m, *M1, _matrix(np.diag([1, 2, 1]))), ValueError, "not a rotation"),
    "scaled": (lambda r, m: _set(m, *M1, _matrix(2 * np.eye(3))), ValueError, "not a rotation"),
    "mirrored": (lambda r, m: _set(m, *M1, _matrix(np.diag([1, 1, -1]))), ValueError, "mirror"),
    "projective last row": (lambda r, m: _set(m, *M1, _matrix(np.eye(3), (0, 0, 1, 1))),
                            ValueError, "last row"),
    # world mapping
    "scale is a string": (lambda r, m: _set(m, "scale", "big"), ValueError, r"'scale' must be .*'big'"),
    "scale is zero": (lambda r, m: _set(m, "scale", 0), ValueError, "'scale' must be"),
    "scale is NaN": (lambda r, m: _set(m, "scale", NAN), ValueError, "'scale' must be"),
    "offset of 2": (lambda r, m: _set(m, "offset", [0.5, 0.5]), ValueError, "'offset' must be"),
    "offset is a string": (lambda r, m: _set(m, "offset", "centre"), ValueError, "'offset' must be"),
    "offset has NaN": (lambda r, m: _set(m, "offset", [NAN, 0, 0]), ValueError, "'offset' must be"),
    "offset is an object": (lambda r, m: _set(m, "offset", {}), ValueError, "'offset' must be"),
    # lens models this loader cannot represent
    "fisheye flag": (lambda r, m: _set(m, "is_fisheye", True), ValueError, "fisheye"),
    "fisheye flag a string": (lambda r, m: _set(m, "is_fisheye", "no"), ValueError, "'is_fisheye' must be"),
    "fisheye camera_model": (lambda r, m: _set(m, "camera_model", "OPENCV_FISHEYE"), ValueError,
                             "'camera_model' 'OPENCV_FISHEYE' is not supported"),
    "camera_model a number": (lambda r, m: _set(m, "camera_model", 3), ValueError, "'camera_model'"),
    # image files
    "all images missing": (lambda r, m: [_set(m, "frames", i, "file_path", f"gone/{i}.png") for i in range(2)] and m,
                           FileNotFoundError, r"none of the 2 images listed in .*transforms\.json exists"),
    "image is a folder": (lambda r, m: _replace_image(r, 1, folder=True) or m, ValueError,
                          r"frame 1 \(images/1.png\): .*images/1\.png is a folder"),
    "image without extension is a folder": (
        lambda r, m: _replace_image(r, 1, name="1", folder=True) or _set(m, "frames", 1, "file_path", "images/1"),
        ValueError, "is a folder"),
    "image of another size": (lambda r, m: _replace_image(r, 1, np.zeros((4, 10, 3), np.uint8)) or _delete(m, "w"),
                              ValueError, "different sizes"),
    "image size disagrees with w": (lambda r, m: _set(m, "w", 16), ValueError, "is 8x6 but the transforms say 16x6"),
    "image of another bit depth": (lambda r, m: _replace_image(r, 1, np.zeros((H, W, 3), np.uint16), name="1.tiff")
                                   or _set(m, "frames", 1, "file_path", "images/1.tiff"), ValueError, "sample types"),
    "corrupt image": (lambda r, m: _replace_image(r, 1, data=b"\x89PNG not really") or m, ValueError,
                      "cannot read image"),
    "unsupported image format": (lambda r, m: _replace_image(r, 1, name="1.gif", data=b"GIF89a")
                                 or _set(m, "frames", 1, "file_path", "images/1.gif"), ValueError,
                                 "unsupported image format"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_fuzz_named_cases(tmp_path, name):
    mutate, error, message = CASES[name]
    write_scene(tmp_path)  # the images, then the mutated JSON over the valid one
    path = write_json(tmp_path, mutate(tmp_path, base_meta()))
    with pytest.raises(error, match=message) as caught:
        load_dataset(path, split="all")
    assert str(tmp_path) in str(caught.value), "the message must name the file"


def test_transforms_json_is_a_folder(tmp_path):
    (tmp_path / "transforms.json").mkdir()
    with pytest.raises((ValueError, FileNotFoundError), match=r"transforms\.json is a folder"):
        load_dataset(tmp_path)


def test_some_images_missing_are_skipped_with_a_count(tmp_path):
    # instant-ngp's fox lists frames without images: skipped, with one warning saying how many
    meta = base_meta()
    meta["frames"].append({"file_path": "images/gone.png", "transform_matrix": pose(2.0)})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = load_dataset(write_scene(tmp_path, meta), split="all")
    assert [str(w.message) for w in caught if "skipping" in str(w.message)] == [
        f"{tmp_path / 'transforms.json'}: skipping 1 of 3 frames whose image file is missing (first: images/gone.png)"]
    assert len(ds) == 2


def test_downscale_larger_than_the_images(tmp_path):
    with pytest.raises(ValueError, match=r"downscale 16 leaves nothing of .*0\.png \(8x6\)"):
        load_dataset(write_scene(tmp_path), split="all", downscale=16)


# ---------------------------------------------------------------------- fuzz: every slot x values
BAD_VALUES = [None, True, False, "x", "1", [], {}, [1], [[1]], 0, -1, 0.5, 2.7, 3, 1e30, NAN, INF, -INF]


def _slots(meta: dict) -> list[tuple]:
    """Key paths of every value in the file: top-level keys, frame 1 and its keys, matrix rows and entries."""
    slots = [(k,) for k in meta]
    slots += [("frames", 1)] + [("frames", 1, k) for k in meta["frames"][1]]
    slots += [("frames", 1, "transform_matrix", r) for r in range(4)]
    slots += [("frames", 1, "transform_matrix", r, c) for r in range(4) for c in range(4)]
    return slots


def test_fuzz_every_slot_with_bad_values(tmp_path):
    """Each value of the file replaced by each bad value (and deleted): it loads, or fails with a
    ValueError/FileNotFoundError naming the file; never another exception type."""
    write_scene(tmp_path)
    path = tmp_path / "transforms.json"
    outcomes = {"loaded": 0, "rejected": 0}
    for slot in _slots(base_meta()):
        for value in BAD_VALUES + ["<deleted>"]:
            meta = base_meta()
            (_delete(meta, *slot) if value == "<deleted>" else _set(meta, *slot, value))
            path.write_text(json.dumps(meta))
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    load_dataset(path, split="all")
                outcomes["loaded"] += 1
            except GOOD_ERRORS as e:
                assert str(tmp_path) in str(e), f"{slot} = {value!r}: message does not name the file: {e}"
                assert "\n" not in str(e), f"{slot} = {value!r}: message is not one line: {e}"
                outcomes["rejected"] += 1
            except Exception as e:  # noqa: BLE001 -- the point of the test
                pytest.fail(f"{slot} = {value!r}: {type(e).__name__}: {e}")
    assert outcomes["rejected"] > outcomes["loaded"] > 0, outcomes
