"""ngp.io.meshes: loading every supported format, normalisation, clear errors, atomic saving."""

from __future__ import annotations

import numpy as np
import pytest
import trimesh

from ngp.io.meshes import MeshError, MeshNormalization, load_mesh, normalize_mesh, save_mesh

from .conftest import shared_file, write_mesh


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".stl", ".off", ".glb"])
def test_load_formats_round_trip(tmp_path, box_mesh, suffix):
    path = write_mesh(tmp_path / f"box{suffix}", box_mesh)
    mesh = load_mesh(path)
    assert mesh.faces.shape == (12, 3)
    assert len(mesh.vertices) == 8  # STL's per-face vertices are merged
    np.testing.assert_allclose(mesh.bounds, box_mesh.bounds, atol=1e-6)
    assert mesh.to_trimesh().is_watertight


def test_gltf_scene_applies_node_transforms(tmp_path, box_mesh):
    scene = trimesh.Scene()
    scene.add_geometry(box_mesh, transform=trimesh.transformations.translation_matrix([10.0, 0.0, 0.0]))
    path = tmp_path / "scene.glb"
    scene.export(str(path))
    mesh = load_mesh(path)
    np.testing.assert_allclose(mesh.bounds, box_mesh.bounds + [10.0, 0.0, 0.0], atol=1e-6)


def test_normalisation_matches_instant_ngp_and_inverts(sphere_mesh):
    mesh, norm = normalize_mesh(load_mesh_from(sphere_mesh))
    # bounding box inflated by 0.5% of its diagonal, longest side scaled to 1, centred at 0.5
    diag = np.linalg.norm([2.0, 2.0, 2.0])
    assert norm.scale == pytest.approx(2.0 + 2 * 0.005 * diag, rel=1e-6)
    np.testing.assert_allclose((mesh.vertices.min(0) + mesh.vertices.max(0)) / 2, 0.5, atol=1e-6)
    assert mesh.vertices.min() > 0.0 and mesh.vertices.max() < 1.0
    np.testing.assert_allclose(norm.to_mesh(mesh.vertices), sphere_mesh.vertices, atol=1e-12)
    again = MeshNormalization.from_dict(norm.to_dict())
    assert again == norm


def load_mesh_from(mesh: trimesh.Trimesh):
    from ngp.io.meshes import Mesh

    return Mesh(np.asarray(mesh.vertices, np.float64), np.asarray(mesh.faces, np.int64))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.obj", "", "empty"),
        ("points.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\n", "no faces"),
        ("nan.obj", "v 0 0 0\nv nan 0 0\nv 0 1 0\nf 1 2 3\n", "NaN"),
        ("garbage.ply", "this is not a ply file", "cannot read"),
        ("mesh.fbx", "anything", "unsupported mesh format"),
        ("mesh", "v 0 0 0", "unsupported mesh format"),
    ],
)
def test_bad_meshes_raise_clear_errors(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(MeshError, match=message):
        load_mesh(path)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_mesh(tmp_path / "nope.obj")


def test_save_mesh_checks_format(tmp_path, box_mesh):
    path = save_mesh(tmp_path / "sub" / "out.ply", box_mesh.vertices, box_mesh.faces)
    assert load_mesh(path).faces.shape == (12, 3)
    with pytest.raises(MeshError, match="cannot write mesh format"):
        save_mesh(tmp_path / "out.xyz", box_mesh.vertices, box_mesh.faces)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]  # refused before anything was written


@pytest.mark.parametrize("existing", [False, True])
def test_save_mesh_failing_mid_write_leaves_nothing_half_written(tmp_path, box_mesh, monkeypatch, existing):
    """The writer dies after writing part of the file (disk full, Ctrl-C): no partial mesh, no
    temporary file, and a mesh already at the target is left as it was."""
    target = tmp_path / "out.ply"
    if existing:
        save_mesh(target, box_mesh.vertices, box_mesh.faces)
    before = target.read_bytes() if existing else None
    written = []

    def export_half_then_fail(mesh, file_obj=None, file_type=None, **kwargs):
        data = trimesh.exchange.export.export_mesh(mesh, None, file_type=file_type)  # the whole file, as bytes
        with open(file_obj, "wb") as f:
            f.write(data[: len(data) // 2])
        written.append(file_obj)
        raise OSError("No space left on device")

    monkeypatch.setattr(trimesh.Trimesh, "export", export_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        save_mesh(target, box_mesh.vertices * 2, box_mesh.faces)
    assert len(written) == 1  # the failure happened inside the write
    assert [p.name for p in tmp_path.iterdir()] == (["out.ply"] if existing else [])
    if existing:
        assert target.read_bytes() == before


def test_armadillo_and_bunny_load():
    armadillo = load_mesh(shared_file("sdf/armadillo.obj"))
    assert armadillo.vertices.shape == (49990, 3) and armadillo.faces.shape == (99976, 3)
    bunny = load_mesh(shared_file("sdf/bunny.obj"))
    assert bunny.faces.shape == (4968, 3)
