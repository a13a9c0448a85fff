"""Which frames a split holds: a single ``transforms.json`` holds every 8th frame out of training for
validation (never trained on), ``split="all"`` is every frame; Blender folders keep their own splits."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from ngp.nerf.datasets import load_dataset

W, H = 8, 6


def pose(i: int) -> list[list[float]]:
    m = np.eye(4)
    m[:3, 3] = [float(i), -4.0, 1.0]
    return m.tolist()


def write_single(root: Path, n: int, missing=()) -> Path:
    """``transforms.json`` listing ``n`` frames ``images/{i:03d}.png``; the ``missing`` ones have no image."""
    (root / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        if i not in missing:
            iio.imwrite(root / f"images/{i:03d}.png", np.full((H, W, 3), i, np.uint8))
        frames.append({"file_path": f"images/{i:03d}.png", "transform_matrix": pose(i)})
    path = root / "transforms.json"
    path.write_text(json.dumps({"fl_x": 9.0, "frames": frames}))
    return path


def write_blender(root: Path, sizes: dict[str, int]) -> Path:
    for split, n in sizes.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(n):
            iio.imwrite(root / split / f"r_{i}.png", np.zeros((H, W, 4), np.uint8))
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": pose(i)})
        (root / f"transforms_{split}.json").write_text(json.dumps({"camera_angle_x": 0.7, "frames": frames}))
    return root


def stems(ds) -> list[int]:
    return [int(p.stem) for p in ds.file_paths]


def test_train_excludes_the_validation_frames(tmp_path):
    path = write_single(tmp_path, 20)
    train, val, every = (load_dataset(path, s) for s in ("train", "val", "all"))
    assert stems(val) == [0, 8, 16] and val.frame_indices == [0, 8, 16]
    assert stems(train) == [i for i in range(20) if i % 8] == train.frame_indices
    assert not set(train.frame_indices) & set(val.frame_indices), "validation frames are trained on"
    assert stems(every) == list(range(20)) and len(every) == 20
    for ds in (train, val, every):
        assert ds.n_held_out == 3 and ds.n_available == 20 and ds.holdout_every == 8
    assert train.holdout_summary() == "held out 3 of 20 frames for validation (every 8th)"
    # the images and cameras follow the selection, not the file order of all frames
    assert val.images[1, 0, 0, 0].item() == 8
    assert val.cameras.c2w[2, 2, 3].item() == pytest.approx(16 * 0.33 + 0.5)  # ngp z = nerf x


def test_test_is_an_alias_of_val_for_a_single_file(tmp_path):
    path = write_single(tmp_path, 5)
    # 5 frames: before, split="test" returned frame 0 but training saw all five
    assert load_dataset(path, "test").frame_indices == load_dataset(path, "val").frame_indices == [0]
    assert load_dataset(path, "train").frame_indices == [1, 2, 3, 4]
    assert load_dataset(path, "test").split == "test"


def test_holdout_every_parameter(tmp_path):
    path = write_single(tmp_path, 10)
    assert load_dataset(path, "val", holdout_every=3).frame_indices == [0, 3, 6, 9]
    assert load_dataset(path, "train", holdout_every=3).frame_indices == [1, 2, 4, 5, 7, 8]
    train = load_dataset(path, "train", holdout_every=0)  # 0: hold nothing out
    assert train.frame_indices == list(range(10)) and train.n_held_out == 0
    assert train.holdout_summary() == "nothing held out for validation (holdout_every=0)"
    assert len(load_dataset(path, "val", holdout_every=0)) == 0
    for bad in (1, -8, 2.5, True, "8"):
        with pytest.raises(ValueError, match=f"holdout_every must be 0 .* got {bad!r}"):
            load_dataset(path, "train", holdout_every=bad)


def test_tiny_files_hold_nothing_out(tmp_path):
    path = write_single(tmp_path / "one", 1)
    train, val = load_dataset(path, "train"), load_dataset(path, "val")
    assert train.frame_indices == [0] and train.n_held_out == 0
    assert len(val) == 0 and val.frame_indices == [] and val.file_paths == []
    assert val.images.shape[0] == 0 and len(val.cameras) == 0
    assert "nothing held out" in val.holdout_summary()
    with pytest.raises(ValueError, match="no frames"):
        val.sample_batch(4)
    # two frames: one for training, one for validation
    path = write_single(tmp_path / "two", 2)
    assert load_dataset(path, "train").frame_indices == [1] and load_dataset(path, "val").frame_indices == [0]


def test_holdout_counts_frames_with_images_and_indexes_the_file(tmp_path):
    # as the fox: frames listed without an image are skipped first, then every 2nd kept one held out
    path = write_single(tmp_path, 7, missing=(1, 4, 5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        val = load_dataset(path, "val", holdout_every=2)
        train = load_dataset(path, "train", holdout_every=2)
    assert val.frame_indices == [0, 3] and train.frame_indices == [2, 6]
    assert val.n_available == 4 and val.n_listed == 7 and val.n_held_out == 2
    assert val.file_names == ["000.png", "003.png"]


def test_blender_folders_keep_their_splits(tmp_path):
    root = write_blender(tmp_path, {"train": 10, "val": 2, "test": 3})
    train = load_dataset(root, "train")
    assert len(train) == 10 and train.frame_indices == list(range(10)) and train.n_held_out == 0
    assert len(load_dataset(root, "val")) == 2 and len(load_dataset(root, "test")) == 3
    assert load_dataset(root / "transforms_test.json", "all").frame_indices == [0, 1, 2]
    with pytest.raises(ValueError, match="split='all' needs one transforms file"):
        load_dataset(root, "all")


def test_exclude_holdout_is_deprecated_but_honoured(tmp_path):
    path = write_single(tmp_path, 10)
    with pytest.warns(DeprecationWarning, match="split='all'"):
        ds = load_dataset(path, "train", exclude_holdout=False)
    assert ds.frame_indices == list(range(10))
    with pytest.warns(DeprecationWarning):
        assert load_dataset(path, "train", exclude_holdout=True).frame_indices == [i for i in range(10) if i % 8]
