"""Shared fixtures for the SDF tests: analytic meshes, a small fast config, the shared data folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import trimesh

SHARED = Path(os.environ.get("NGP_SHARED_DATA", Path(__file__).parents[2] / ".." / "shared" / "data"))

#: A small model that trains in seconds on a CPU (the real config is in configs/sdf/base.json).
SMALL_CONFIG = {
    "encoding": {"otype": "HashGrid", "n_levels": 6, "n_features_per_level": 2, "log2_hashmap_size": 14,
                 "base_resolution": 8, "per_level_scale": 1.5},
    "network": {"otype": "FullyFusedMLP", "activation": "ReLU", "output_activation": "None",
                "n_neurons": 32, "n_hidden_layers": 1},
    "optimizer": {"otype": "Ema", "decay": 0.9, "nested": {"otype": "Adam", "learning_rate": 1e-2}},
    "training": {"batch_size": 4096, "pool_size": 2**14, "pool_refresh": 256},
}


def small_outputs():
    """Cheap end-of-run outputs: coarse grids, a thumbnail, few Chamfer samples."""
    from ngp.sdf.trainer import SDFOutputs

    return SDFOutputs(resolution=32, iou_resolution=32, render_size=(16, 12), chamfer_samples=2000)


#: The same as command-line options of ``ngp sdf fit``.
SMALL_OUTPUT_OPTIONS = ["--resolution", "32", "--iou-resolution", "32", "--render-width", "16", "--render-height", "12"]


@pytest.fixture
def small_config_file(tmp_path) -> Path:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(SMALL_CONFIG))
    return path


@pytest.fixture
def sphere_file(tmp_path, sphere_mesh) -> Path:
    """The sphere mesh as an OBJ file (icosphere, 2562 vertices)."""
    return write_mesh(tmp_path / "sphere.obj", sphere_mesh)


def shared_file(relative: str) -> Path:
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"shared data {relative} not found under {SHARED} (set NGP_SHARED_DATA)")
    return path


@pytest.fixture
def sphere_mesh() -> trimesh.Trimesh:
    """Radius 1 icosphere centred at (1, 2, 3): mesh units differ from the unit cube."""
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=1.0)
    mesh.apply_translation([1.0, 2.0, 3.0])
    return mesh


@pytest.fixture
def box_mesh() -> trimesh.Trimesh:
    """An axis-aligned box of extents (2, 1, 1) centred at the origin."""
    return trimesh.creation.box(extents=(2.0, 1.0, 1.0))


def box_sdf(points: np.ndarray, half: np.ndarray) -> np.ndarray:
    """Closed-form SDF of an origin-centred box with half extents ``half``."""
    q = np.abs(points) - half
    return np.linalg.norm(np.maximum(q, 0.0), axis=-1) + np.minimum(q.max(-1), 0.0)


def write_mesh(path: Path, mesh: trimesh.Trimesh) -> Path:
    mesh.export(str(path))
    return path
