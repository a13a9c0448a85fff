"""``ngp nerf``: train -> eval -> render -> mesh on a tiny scene, resume, and clear errors on bad input."""

import json

import imageio.v3 as iio
import pytest
from typer.testing import CliRunner

import ngp.nerf.runs as runs
from ngp.cli import app
from ngp.nerf.builtin_scene import make_builtin_scene

runner = CliRunner()

TINY_CONFIG = {
    "encoding": {"otype": "HashGrid", "n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 14,
                 "base_resolution": 8, "per_level_scale": 1.5},
    "network": {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 1},
    "rgb_network": {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 2},
}


def ngp(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, config_file):
    """A tiny run trained on 'builtin' (the scene shrunk for the test)."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    saved = dict(runs.BUILTIN_SCENE)
    runs.BUILTIN_SCENE.update(n_train=12, n_val=2, n_test=2, resolution=32)
    try:
        result = ngp("nerf", "train", "builtin", "--out", folder, "--steps", 30, "--config", config_file,
                     "--batch-samples", 4096, "--val-images", 2, "--quiet")
    finally:
        runs.BUILTIN_SCENE.clear()
        runs.BUILTIN_SCENE.update(saved)
    assert result.exit_code == 0, result.output
    return folder


def test_train_writes_every_promised_file(run):
    names = {p.name for p in run.iterdir()}
    assert {"checkpoint", "metrics.json", "training.png", "val_00.png", "val_01.png", "data"} <= names
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["config.json", "model.safetensors"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 30 and metrics["samples_per_second"] > 0 and metrics["peak_memory_mb"] > 0
    assert 5.0 < metrics["val_psnr"] < 60.0
    val = iio.imread(run / "val_00.png")
    assert val.shape == (32, 32 * 2 + 4, 3)  # render | gap | ground truth
    assert not list(run.rglob(".*.tmp*"))  # no temporary files left behind


def test_eval_render_mesh_round_trip(run, tmp_path):
    result = ngp("nerf", "eval", run, "--split", "test", "--quiet")
    assert result.exit_code == 0, result.output
    assert "mean PSNR" in result.output
    metrics = json.loads((run / "eval_test" / "metrics.json").read_text())
    assert metrics["n_images"] == 2 and len(metrics["per_image"]) == 2
    assert {"psnr", "ssim"} <= set(metrics["per_image"][0]) and -1.0 <= metrics["mean_ssim"] <= 1.0
    assert len(list((run / "eval_test").glob("*.png"))) == 2

    video = tmp_path / "orbit.mp4"
    result = ngp("nerf", "render", run, "--out", video, "--frames", 4, "--width", 24, "--height", 18, "--quiet")
    assert result.exit_code == 0, result.output
    assert video.stat().st_size > 0
    frames = tmp_path / "orbit_frames"
    assert sorted(p.name for p in frames.iterdir()) == [f"{kind}_{i:04d}.png" for kind in ("depth", "frame")
                                                        for i in range(4)]
    assert iio.imread(frames / "frame_0000.png").shape == (18, 24, 3)
    import imageio.v2 as imageio

    with imageio.get_reader(video) as reader:
        assert reader.count_frames() == 4

    mesh = tmp_path / "scene.ply"
    result = ngp("nerf", "mesh", run, "--out", mesh, "--resolution", 24, "--threshold", 1.0, "--quiet")
    if result.exit_code != 0:  # a 30-step model may have no iso-surface: the error must say so
        assert "no surface" in result.output
        assert not mesh.exists()
    else:
        import trimesh

        loaded = trimesh.load(mesh)
        assert len(loaded.faces) > 0
        # vertices are in the data set's (Blender) frame: the scene lies within about [-1.5, 1.5]^3
        assert abs(loaded.vertices).max() < 1.6 / 0.33


def test_resume_continues_the_step_count(run):
    result = ngp("nerf", "train", "unused-on-resume-but-checked", "--out", run, "--steps", 5, "--resume")
    assert result.exit_code == 1 and "not found" in result.output
    result = ngp("nerf", "train", run / "data", "--out", run, "--steps", 5, "--resume", "--quiet",
                 "--val-images", 1)
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 35 and metrics["session"]["steps"] == 5


def test_training_into_an_existing_run_needs_resume(run, config_file):
    result = ngp("nerf", "train", run / "data", "--out", run, "--steps", 1, "--config", config_file)
    assert result.exit_code == 1 and "--resume" in result.output


def test_bad_inputs_fail_before_writing_anything(tmp_path, config_file):
    scene = make_builtin_scene(tmp_path / "scene", n_train=2, n_val=1, n_test=1, resolution=8)

    result = ngp("nerf", "train", tmp_path / "missing", "--out", tmp_path / "r1", "--steps", 1)
    assert result.exit_code == 1 and "not found" in result.output and not (tmp_path / "r1").exists()

    blocker = tmp_path / "file.txt"
    blocker.write_text("x")
    result = ngp("nerf", "train", scene, "--out", blocker / "run", "--steps", 1)
    assert result.exit_code == 1 and "error:" in result.output

    bad = tmp_path / "bad.json"
    bad.write_text('{"encoding": {"otype": "HashGrid", "n_levelz": 4}}')
    result = ngp("nerf", "train", scene, "--out", tmp_path / "r2", "--steps", 1, "--config", bad)
    assert result.exit_code == 1 and "n_levelz" in result.output
    assert not (tmp_path / "r2" / "checkpoint").exists() and not (tmp_path / "r2" / "metrics.json").exists()

    bad.write_text('{"encodings": {}}')
    result = ngp("nerf", "train", scene, "--out", tmp_path / "r3", "--steps", 1, "--config", bad)
    assert result.exit_code == 1 and "unknown key" in result.output and not (tmp_path / "r3").exists()

    result = ngp("nerf", "train", scene, "--out", tmp_path / "r4", "--steps", 0)
    assert result.exit_code == 1 and "positive" in result.output

    result = ngp("nerf", "eval", tmp_path / "no_run")
    assert result.exit_code == 1 and "not found" in result.output
    result = ngp("nerf", "render", tmp_path / "no_run", "--out", tmp_path / "v.gif")
    assert result.exit_code == 1 and ".mp4" in result.output
    result = ngp("nerf", "mesh", tmp_path / "no_run", "--out", tmp_path / "m.ply")
    assert result.exit_code == 1 and "not found" in result.output and not (tmp_path / "m.ply").exists()
