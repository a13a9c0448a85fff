"""Every config file of instant-ngp's ``configs/`` and tiny-cuda-nn's ``data/`` loads as it is and trains.

The files are vendored byte for byte under ``tests/compat/configs/`` (see the README there). Each is
loaded through the primitive's own config path (instant-ngp's ``"parent"`` resolved next to the file,
``//`` comments allowed), built into the primitive's task, and trained for a few steps on small data:
image configs (instant-ngp's and tiny-cuda-nn's, which are the configs of its image sample) on a
32 x 32 crop of a built-in photo, SDF configs on a sphere mesh, NeRF configs on a tiny built-in scene.
A config trains when its steps have finite losses and change every parameter tensor the loss reaches.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from ngp.config import load_config
from ngp.encodings import Encoding
from ngp.image.trainer import ImageTask
from ngp.io.images import ImageData, read_image
from ngp.io.meshes import Mesh
from ngp.nerf.builtin_scene import make_builtin_scene
from ngp.nerf.field import INACTIVE_SECTIONS
from ngp.nerf.trainer import build_nerf_task
from ngp.sdf.trainer import SDFOutputs, SDFTask
from ngp.train.settings import build_config

CONFIGS = Path(__file__).parent / "configs"
INSTANT_NGP = CONFIGS / "instant-ngp" / "configs"
TCNN_DATA = CONFIGS / "tiny-cuda-nn" / "data"

#: Every vendored file, by primitive: a file added to the folders without a line here fails a test.
IMAGE = [INSTANT_NGP / "image" / f"{n}.json" for n in ("base", "frequency", "oneblob")] + [
    TCNN_DATA / f"config_{n}.json" for n in ("hash", "oneblob", "lion")]
SDF = [INSTANT_NGP / "sdf" / f"{n}.json" for n in ("base", "frequency", "oneblob", "takikawa")]
NERF = [INSTANT_NGP / "nerf" / f"{n}.json" for n in (
    "base", "base_0layer", "base_1layer", "base_2layer", "base_3layer", "base_14", "big", "densegrid",
    "densegrid_1res", "frequency", "hashgrid", "linear", "none", "small", "tensor")]
#: Configs that take more than a few seconds here: instant-ngp's image/base.json has 2^24-entry tables
#: (its GPU size: 1.2e8 hashed entries, about 20 s for a few steps on 2 cores).
LARGE = {"image/base.json"}
STEPS = 3


def name(path: Path) -> str:
    return f"{path.parent.name}/{path.name}"


def marks(path: Path):
    return [pytest.mark.slow] if name(path) in LARGE else []


def params(paths):
    return [pytest.param(p, id=name(p), marks=marks(p)) for p in paths]


def test_every_vendored_config_is_covered():
    vendored = set(INSTANT_NGP.rglob("*.json")) | set(TCNN_DATA.rglob("*.json"))
    assert vendored == set(IMAGE + SDF + NERF)


def train_steps(task, n: int = STEPS) -> list[float]:
    """``n`` steps as the shared loop takes them (forward, mixed-precision backward and step, bookkeeping)."""
    losses = []
    for step in range(n):
        with task.amp.autocast():
            batch = task.training_batch(step)
        applied = task.amp.backward_and_step(batch.loss, task.optimizer)
        assert applied, f"step {step} was skipped (non-finite loss or gradient)"
        task.after_step(batch, applied)
        losses.append(float(batch.loss.detach()))
    return losses


def assert_trains(task, expected_encoding: str) -> None:
    """The task's model has the config's encoding and every parameter the loss reaches moves."""
    encodings = [m for m in task.model.modules() if isinstance(m, Encoding)]
    assert type(encodings[0]).__name__.lower() == expected_encoding.lower()
    before = {n: p.detach().clone() for n, p in task.model.named_parameters()}
    losses = train_steps(task)
    assert all(math.isfinite(v) for v in losses), losses
    reached = [n for n, p in task.model.named_parameters() if p.grad is not None]
    assert reached, "no parameter received a gradient"
    unchanged = [n for n in reached if torch.equal(before[n], dict(task.model.named_parameters())[n])]
    assert not unchanged, f"parameters the loss reaches did not change: {unchanged}"


def top_encoding(path: Path, section: str = "encoding") -> str:
    """The encoding ``otype`` the file asks for, read independently of ngp (``parent`` followed by hand)."""
    import json5

    data = json5.loads(path.read_text())
    if section in data and "otype" in data[section]:
        return data[section]["otype"]
    return top_encoding(path.parent / data["parent"], section)


# ------------------------------------------------------------------------------------------ image
@pytest.fixture(scope="module")
def small_image() -> ImageData:
    photo = read_image("builtin:astronaut")
    return ImageData(np.ascontiguousarray(photo.array[100:132, 200:232]), "crop", photo.linear, photo.channel_names)


@pytest.mark.parametrize("path", params(IMAGE))
def test_image_config_loads_and_trains(path, small_image):
    config = build_config("image", path, {"data": "crop", "steps": STEPS, "batch_size": 1024})
    task = ImageTask(small_image, config, torch.device("cpu"), "float32")
    assert_trains(task, top_encoding(path))
    if "lion" in path.name:  # tiny-cuda-nn's Lion config runs Lion
        assert type(task.optimizer.adam).__name__ == "Lion"


# -------------------------------------------------------------------------------------------- sdf
@pytest.fixture(scope="module")
def sphere() -> Mesh:
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    return Mesh(np.asarray(mesh.vertices, dtype=np.float64), np.asarray(mesh.faces, dtype=np.int64))


@pytest.mark.parametrize("path", params(SDF))
def test_sdf_config_loads_and_trains(path, sphere):
    training = {"data": "sphere.obj", "steps": STEPS, "batch_size": 1024, "pool_size": 2048, "pool_refresh": 64}
    config = build_config("sdf", path, training)
    task = SDFTask(sphere, "sphere.obj", config, torch.device("cpu"), "float32", SDFOutputs(resolution=16))
    assert_trains(task, top_encoding(path))


def test_takikawa_octree_follows_the_surface(sphere):
    """instant-ngp's Takikawa config: levels 4..9 of an octree kept only around the sphere, with
    features that vanish where the octree has no cell (far from the surface)."""
    config = build_config("sdf", INSTANT_NGP / "sdf" / "takikawa.json",
                          {"steps": 1, "batch_size": 256, "pool_size": 256, "pool_refresh": 16})
    task = SDFTask(sphere, "sphere.obj", config, torch.device("cpu"), "float32")
    encoding = task.model.field.encoding
    assert encoding.levels == [4, 5, 6, 7, 8, 9] and encoding.n_output_dims == 6 * 8
    finest = encoding.cells_9
    assert 0 < len(finest) < 0.05 * 512**3  # sparse: a shell, not the cube
    centre = torch.full((1, 3), 0.5)  # inside the sphere, far from its surface at the finest levels
    assert encoding(centre)[0, -8:].abs().max() == 0


# ------------------------------------------------------------------------------------------- nerf
@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_builtin_scene(tmp_path_factory.mktemp("scene") / "scene", n_train=4, n_val=1, n_test=1,
                              resolution=16)


@pytest.mark.parametrize("path", params(NERF))
def test_nerf_config_loads_and_trains(path, scene):
    training = {"data": str(scene), "steps": STEPS, "target_samples": 1 << 11, "initial_rays": 256,
                "min_rays": 64, "grid_resolution": 16, "val_images": 1}
    config = build_config("nerf", path, training, ignored_sections=INACTIVE_SECTIONS)
    task = build_nerf_task(config, torch.device("cpu"), "float32", log=lambda message: None)
    assert_trains(task, top_encoding(path))
    raw = load_config(path)
    for section in INACTIVE_SECTIONS:  # instant-ngp's off-by-default features: kept, validated
        assert task.config.get(section) == raw.get(section)
