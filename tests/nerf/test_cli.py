"""``ngp nerf``: train -> eval -> render -> mesh on a tiny built-in scene, Ctrl-C, resume, and clear
errors on bad input."""

import json
import os
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

import ngp.nerf.trainer as trainer
from ngp.cli import app
from ngp.nerf.builtin_scene import builtin_scene_is_complete, make_builtin_scene
from ngp.nerf.datasets import load_dataset
from ngp.nerf.evaluation import evaluate
from ngp.nerf.field import NerfField
from ngp.nerf.renderer import Renderer, RenderSettings
from ngp.nerf.runs import load_nerf_run

from .scenes import single_transforms

runner = CliRunner()

TINY_CONFIG = {
    "encoding": {"otype": "HashGrid", "n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 14,
                 "base_resolution": 8, "per_level_scale": 1.5},
    "network": {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 1},
    "rgb_network": {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 2},
}
#: the built-in scene shrunk for the tests (``ngp nerf train builtin`` makes 100 frames of 200x200)
TINY_SCENE = dict(n_train=12, n_val=2, n_test=2, resolution=32)
STEPS = 60


def ngp(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """The built-in scene's cache folder: a fresh ``$XDG_CACHE_HOME``, and the scene shrunk."""
    home = tmp_path_factory.mktemp("xdg_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(home))
        patch.setattr(trainer, "BUILTIN_SCENE", dict(TINY_SCENE))
        yield home / "ngp" / trainer.BUILTIN_CACHE_NAME


@pytest.fixture(scope="module")
def config_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cfg") / "tiny.json"
    path.write_text(json.dumps(TINY_CONFIG))
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache, config_file):
    """A tiny run trained on 'builtin'."""
    folder = tmp_path_factory.mktemp("runs") / "run"
    result = ngp("nerf", "train", "builtin", "--out", folder, "--steps", STEPS, "--config", config_file,
                 "--batch-samples", 4096, "--val-images", 2, "--quiet")
    assert result.exit_code == 0, result.output
    assert "generating the built-in scene" in result.output and "validation PSNR" in result.output
    return folder


def test_train_writes_every_promised_file(run, cache):
    names = {p.name for p in run.iterdir()}
    assert names == {"checkpoint", "metrics.json", "training.png", "val_00.png", "val_01.png"}
    assert sorted(p.name for p in (run / "checkpoint").iterdir()) == ["checkpoint.json", "model.safetensors"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == STEPS and metrics["stopped"] == "budget"
    assert metrics["samples_per_second"] > 0 and metrics["peak_memory_mb"] > 0
    assert metrics["validation"]["held_out"] and metrics["validation"]["split"] == "val"
    assert [r["frame"] for r in metrics["val_per_image"]] == [0, 1]
    val = iio.imread(run / "val_00.png")
    assert val.shape == (32, 32 * 2 + 4, 3)  # render | gap | ground truth
    assert iio.imread(run / "training.png").ndim == 3
    assert not list(run.rglob(".*.tmp*"))  # no temporary files left behind
    # the built-in scene lives in the cache (complete), and the run records where
    assert metrics["data"]["data"] == str(cache) and builtin_scene_is_complete(cache, **TINY_SCENE)


def test_validation_psnr_is_measured_on_held_out_frames_and_beats_an_untrained_model(run, cache):
    metrics = json.loads((run / "metrics.json").read_text())
    val = load_dataset(cache, "val")
    loaded = load_nerf_run(run, "cpu")
    trained = evaluate(loaded.renderer, val, with_ssim=False, progress=False).mean_psnr
    assert metrics["val_psnr"] == pytest.approx(trained, abs=1e-3)
    torch.manual_seed(0)  # the run's initial weights
    field = NerfField(loaded.field.aabb, 1, TINY_CONFIG)
    grid = trainer.build_grid(loaded.field.aabb, 1, trainer.TrainSettings.from_training(loaded.training))
    untrained = evaluate(Renderer(field, grid, RenderSettings()), val, with_ssim=False, progress=False).mean_psnr
    # measured: 10.0 dB untrained, 12.2 dB after 60 steps
    assert trained > untrained + 1.0, (trained, untrained)


def test_eval_measures_the_held_out_frames_by_default_and_a_given_file_whole(run, cache, tmp_path):
    result = ngp("nerf", "eval", run, "--quiet")
    assert result.exit_code == 0, result.output
    assert "evaluated 2 frames (val of" in result.output
    metrics = json.loads((run / "eval_val" / "metrics.json").read_text())
    assert metrics["n_frames"] == 2 and metrics["n_frames_trained_on"] == 0 and len(metrics["per_image"]) == 2
    assert {"psnr", "ssim"} <= set(metrics["per_image"][0]) and -1.0 <= metrics["mean_ssim"] <= 1.0
    assert sorted(p.name for p in (run / "eval_val").glob("*.png")) == ["000.png", "001.png"]

    # a transforms.json given as the evaluation set: every one of its frames (not every 8th: 1 of 5)
    fox = single_transforms(cache, tmp_path / "fox", 5)
    result = ngp("nerf", "eval", run, "--data", fox, "--no-ssim", "--quiet")
    assert result.exit_code == 0, result.output
    assert "evaluated 5 frames (all of" in result.output
    assert json.loads((run / "eval_all" / "metrics.json").read_text())["frames"] == list(range(5))

    result = ngp("nerf", "eval", run, "--split", "bogus")
    assert result.exit_code == 1 and "split" in result.output


def test_render_and_mesh(run, tmp_path):
    video = tmp_path / "orbit.mp4"
    result = ngp("nerf", "render", run, "--out", video, "--frames", 4, "--width", 24, "--height", 18, "--quiet")
    assert result.exit_code == 0, result.output
    frames = tmp_path / "orbit_frames"
    assert sorted(p.name for p in frames.glob("frame_*.png")) == [f"frame_{i:04d}.png" for i in range(4)]
    assert iio.imread(frames / "frame_0000.png").shape == (18, 24, 3)
    import imageio.v2 as imageio

    with imageio.get_reader(video) as reader:
        assert reader.count_frames() == 4

    # a threshold inside the trained density's range must give a surface
    from ngp.nerf.mesh import density_grid

    sigma = density_grid(load_nerf_run(run, "cpu").field, 24, progress=False)
    threshold = float(np.quantile(sigma, 0.9))
    mesh = tmp_path / "scene.ply"
    result = ngp("nerf", "mesh", run, "--out", mesh, "--resolution", 24, "--threshold", threshold, "--quiet")
    assert result.exit_code == 0, result.output
    import trimesh

    loaded = trimesh.load(mesh)
    assert len(loaded.faces) > 0
    # vertices are in the data set's (Blender) frame: the box [0, 1]^3 maps to about [-1.5, 1.5]^3
    assert abs(loaded.vertices).max() < 1.6 / 0.33

    result = ngp("nerf", "mesh", run, "--out", tmp_path / "none.ply", "--resolution", 8, "--threshold", 1e9)
    assert result.exit_code == 1 and "no surface" in result.output and not (tmp_path / "none.ply").exists()


def test_resume_continues_and_refuses_other_data_or_resolution(run, cache, tmp_path):
    before = json.loads((run / "metrics.json").read_text())
    result = ngp("nerf", "train", "builtin", "--out", run, "--steps", 5, "--resume", "--downscale", 2)
    assert result.exit_code == 1 and "downscale" in result.output
    other = make_builtin_scene(tmp_path / "other", n_train=2, n_val=1, n_test=1, resolution=8)
    result = ngp("nerf", "train", other, "--out", run, "--steps", 5, "--resume")
    assert result.exit_code == 1 and "cannot resume with data" in result.output
    assert json.loads((run / "metrics.json").read_text()) == before  # refused: nothing changed

    result = ngp("nerf", "train", "builtin", "--out", run, "--steps", 5, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == STEPS + 5 and metrics["session"]["steps"] == 5
    assert "generating" not in result.output  # the cached scene was reused


def test_resume_refuses_changed_transforms(config_file, tmp_path):
    data = make_builtin_scene(tmp_path / "scene", **TINY_SCENE)
    out = tmp_path / "run"
    result = ngp("nerf", "train", data, "--out", out, "--steps", 1, "--config", config_file, "--val-images", 0,
                 "--quiet")
    assert result.exit_code == 0, result.output
    meta = json.loads((data / "transforms_train.json").read_text())
    (data / "transforms_train.json").write_text(json.dumps({**meta, "frames": meta["frames"][:-1]}))
    result = ngp("nerf", "train", data, "--out", out, "--steps", 1, "--resume", "--quiet")
    assert result.exit_code == 1 and "data differs" in result.output and "n_train_images" in result.output


def test_builtin_scene_is_cached_outside_the_run_and_survives_force(run, cache, config_file, tmp_path):
    marker = next(cache.glob(".builtin_scene*"))
    made = marker.stat().st_mtime_ns
    out = tmp_path / "run"
    for extra in ([], ["--force"]):
        result = ngp("nerf", "train", "builtin", "--out", out, "--steps", 1, "--config", config_file,
                     "--val-images", 0, "--quiet", *extra)
        assert result.exit_code == 0, result.output
        assert f"using the built-in scene in {cache}" in result.output
    assert marker.stat().st_mtime_ns == made and not (out / "data").exists()


def test_sigint_saves_a_loadable_checkpoint_and_metrics_and_exits_130(cache, config_file, tmp_path):
    out, log = tmp_path / "run", tmp_path / "log.txt"
    code = (f"import ngp.nerf.trainer as t; t.BUILTIN_SCENE.update({TINY_SCENE!r}); "
            "from ngp.cli import main; main()")
    command = [sys.executable, "-c", code, "nerf", "train", "builtin", "--out", str(out), "--seconds", "600",
               "--config", str(config_file), "--batch-samples", "4096", "--val-images", "1", "--checkpoint-every",
               "1", "--quiet"]
    with open(log, "w") as stdout:
        process = subprocess.Popen(command, stdout=stdout, stderr=subprocess.STDOUT,
                                   env={**os.environ, "XDG_CACHE_HOME": str(cache.parent.parent)})
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoint" / "checkpoint.json").exists():  # a periodic checkpoint: steps were taken
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
    output = log.read_text()
    assert process.returncode == 130, output
    assert "SIGINT" in output and "--resume" in output and "Traceback" not in output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] == "SIGINT" and metrics["steps"] > 0 and (out / "val_00.png").is_file()
    assert load_nerf_run(out, "cpu").step == metrics["steps"]  # the checkpoint of the last step

    result = ngp("nerf", "train", "builtin", "--out", out, "--steps", 3, "--resume", "--quiet")
    assert result.exit_code == 0, result.output
    assert json.loads((out / "metrics.json").read_text())["steps"] == metrics["steps"] + 3


def test_a_run_on_a_single_transforms_file_reports_its_held_out_frames(config_file, tmp_path):
    fox = single_transforms(make_builtin_scene(tmp_path / "scene", **TINY_SCENE), tmp_path / "fox")
    out = tmp_path / "run"
    result = ngp("nerf", "train", fox, "--out", out, "--steps", 2, "--config", config_file, "--val-images", 1,
                 "--quiet")
    assert result.exit_code == 0, result.output
    assert "held out 2 of 12 frames for validation" in result.output
    result = ngp("nerf", "eval", out, "--no-ssim", "--quiet")
    assert result.exit_code == 0 and "evaluated 2 frames (val of" in result.output, result.output


def test_training_into_an_existing_run_needs_resume(run, config_file):
    result = ngp("nerf", "train", "builtin", "--out", run, "--steps", 1, "--config", config_file)
    assert result.exit_code == 1 and "--resume" in result.output


def test_bad_inputs_fail_before_writing_anything(tmp_path, config_file, monkeypatch):
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
    assert result.exit_code == 1 and "n_levelz" in result.output and not (tmp_path / "r2").exists()

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))  # a bad config fails before the scene is made
    result = ngp("nerf", "train", "builtin", "--out", tmp_path / "r2", "--steps", 1, "--config", bad)
    assert result.exit_code == 1 and "n_levelz" in result.output and not (tmp_path / "xdg").exists()

    bad.write_text('{"encodings": {}}')
    result = ngp("nerf", "train", scene, "--out", tmp_path / "r3", "--steps", 1, "--config", bad)
    assert result.exit_code == 1 and "unknown key" in result.output and not (tmp_path / "r3").exists()

    result = ngp("nerf", "train", scene, "--out", tmp_path / "r4", "--steps", 0)
    assert result.exit_code == 1 and "positive" in result.output and not (tmp_path / "r4").exists()

    result = ngp("nerf", "eval", tmp_path / "no_run")
    assert result.exit_code == 1 and "not found" in result.output
    result = ngp("nerf", "render", tmp_path / "no_run", "--out", tmp_path / "v.gif")
    assert result.exit_code == 1 and ".mp4" in result.output
    result = ngp("nerf", "mesh", tmp_path / "no_run", "--out", tmp_path / "m.ply")
    assert result.exit_code == 1 and "not found" in result.output and not (tmp_path / "m.ply").exists()


def test_collisions_of_a_nerf_run(run, tmp_path):
    out = tmp_path / "collisions.json"
    result = ngp("collisions", run, "--points", 20000, "--json", out)
    assert result.exit_code == 0, result.output
    assert "nerf run, 20000 data points" in result.output and "share a row" in result.output
    levels = json.loads(out.read_text())["levels"]
    layout = load_nerf_run(run, "cpu").field.encoding.layout
    assert [s["hashed"] for s in levels] == list(layout.hashed) and len(levels) == 8
    for s, res in zip(levels, layout.resolutions):
        assert 0 < s["occupied_vertices"] <= min(20000 * 8, (res + 1) ** 3)
        assert s["colliding_vertices"] == 0 if not s["hashed"] else 0 <= s["colliding_vertices"] <= s["occupied_vertices"]
    assert ngp("collisions", run, "--points", 0).exit_code != 0
