"""Small NeRF data sets made from the built-in scene, for tests."""

import json
import shutil


def single_transforms(blender_scene, out, n_frames=None):
    """A fox-like data set: one ``transforms.json`` (instant-ngp layout) with the first ``n_frames``
    (default: all) training frames of a Blender scene."""
    meta = json.loads((blender_scene / "transforms_train.json").read_text())
    (out / "images").mkdir(parents=True)
    frames = []
    for i, frame in enumerate(meta["frames"][:n_frames]):
        shutil.copy(blender_scene / (frame["file_path"] + ".png"), out / "images" / f"{i:04d}.png")
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": frame["transform_matrix"]})
    (out / "transforms.json").write_text(json.dumps({"camera_angle_x": meta["camera_angle_x"], "frames": frames}))
    return out / "transforms.json"
