"""NeRF training end to end on a tiny built-in scene: PSNR rises, resume continues, validation frames
are held out, checkpoints are safe."""

import dataclasses
import json
import math
import shutil

import pytest
import torch

from ngp.config import ConfigError
from ngp.geometry.cameras import generate_rays
from ngp.io.checkpoints import CheckpointError, find_checkpoint, load_checkpoint
from ngp.io.runs import RunFolder
from ngp.kernels.reference.nerf import transmittance
from ngp.nerf.builtin_scene import make_builtin_scene
from ngp.nerf.datasets import load_dataset
from ngp.nerf.evaluation import evaluate
from ngp.nerf.renderer import DISPLAY_TRANSMITTANCE, AdaptiveSegments, FixedSegments, Renderer, inference_dtype
from ngp.nerf.runs import load_nerf_run
from ngp.nerf.trainer import TrainSettings, build_nerf_task, train_nerf
from ngp.train.loop import LoopState, load_task_state, train
from ngp.train.settings import LoopSettings, build_config
from .scenes import single_transforms
from safety_checks import assert_safetensors_holding, no_unpickling

#: small enough for a few seconds of CPU, large enough to learn the scene's coarse structure
TINY_CONFIG = {
    "encoding": {"otype": "HashGrid", "n_levels": 8, "n_features_per_level": 2, "log2_hashmap_size": 14,
                 "base_resolution": 8, "per_level_scale": 1.5},
    "network": {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 1},
    "rgb_network": {"otype": "FullyFusedMLP", "n_neurons": 32, "n_hidden_layers": 2},
}
TINY_SETTINGS = dict(target_samples=1 << 12, min_rays=64, grid_resolution=32, seed=0)
#: TINY_CONFIG with the settings, as a run config (for train_nerf)
TINY_RUN_CONFIG = {**TINY_CONFIG, "training": TINY_SETTINGS}


def silent(message):
    pass


def make_task(data, log=silent, **training):
    """A task on ``data`` with the tiny model (``training`` overrides the settings)."""
    config = build_config("nerf", TINY_CONFIG, {"data": str(data), "steps": 1, **TINY_SETTINGS, **training})
    return build_nerf_task(config, torch.device("cpu"), "float32", log=log)


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    return make_builtin_scene(tmp_path_factory.mktemp("scene") / "scene", n_train=24, n_val=2, n_test=3,
                              resolution=40)


@pytest.fixture(scope="module")
def trained(scene, tmp_path_factory):
    """(task, loop state, test PSNR before, test PSNR after, run folder) for 150 steps of the shared loop."""
    task = make_task(scene)
    test = load_dataset(scene, "test")
    before = evaluate(task.renderer, test, with_ssim=False, progress=False).mean_psnr
    run = RunFolder.create(tmp_path_factory.mktemp("runs") / "run").start()
    state = LoopState()
    train(task, run, LoopSettings(steps=150, checkpoint_every=0), state, progress=False, log=silent)
    with task.optimizer.averaged_weights():
        after = evaluate(task.renderer, test, with_ssim=False, progress=False).mean_psnr
    return task, state, before, after, run


def test_test_psnr_rises(trained):
    task, state, before, after, _ = trained
    # measured (seed 0): 9.6 dB before, 15.2 dB after 150 steps; the margin absorbs floating-point
    # differences between machines (parallel reductions), not a broken renderer or trainer
    assert before < 11.0
    assert after > 13.0, f"test PSNR after 150 steps: {after:.2f} dB"
    assert state.step == 150 and state.history["step"] == list(range(1, 151))
    losses = state.history["loss"]
    assert sum(losses[-20:]) < 0.6 * sum(losses[:20])
    assert task.grid.occupancy_fraction < 0.5  # the occupancy grid culled empty space


def test_rays_per_batch_adapt_to_the_sample_target(trained):
    task, state, _, _, _ = trained
    recent = state.history["samples"][-30:]
    mean = sum(recent) / len(recent)
    assert 0.5 * task.settings.target_samples < mean < 2.0 * task.settings.target_samples


def test_incremental_inference_equals_single_pass_rendering(trained, scene):
    task, _, _, _, _ = trained
    test = load_dataset(scene, "test")
    cam, xy, _ = test.pixels_for_image(0)
    o, d = generate_rays(test.cameras, cam, xy)
    renderer = Renderer(task.model, task.grid, dataclasses.replace(
        task.renderer.settings, inference_precision="float32", color_weight_threshold=0.0))
    with torch.no_grad():
        one = renderer.render_rays(o, d, torch.ones(3))
        inc = renderer.render_rays_inference(o, d, torch.ones(3))
    torch.testing.assert_close(inc.color, one.color, atol=2e-3, rtol=0)
    torch.testing.assert_close(inc.opacity, one.opacity, atol=2e-3, rtol=0)
    assert inc.n_samples <= one.n_samples  # terminated rays stop being marched


@pytest.mark.parametrize("bad", ["origin", "direction"])
def test_renderers_refuse_rays_with_nan_before_marching(trained, scene, bad):
    """The segment marchers check the rays once (later rounds march them unchecked)."""
    task, _, _, _, _ = trained
    test = load_dataset(scene, "test")
    o, d = generate_rays(test.cameras, *test.pixels_for_image(0)[:2])
    o, d = o[:64].clone(), d[:64].clone()
    (o if bad == "origin" else d)[37, 1] = math.nan
    with torch.no_grad():
        for render in (lambda: task.renderer.render_rays_inference(o, d, torch.ones(3)),
                       lambda: task.renderer.march_in_front(o, d)):
            with pytest.raises(ValueError, match="NaN"):
                render()


def test_segment_schedules_render_the_same_picture(trained, scene):
    """Whatever the segment lengths, a ray's samples lie on one lattice of steps and it stops where it
    turns opaque: the adaptive schedule renders the fixed one's picture and evaluates fewer samples
    behind surfaces (short segments while most rays are going)."""
    task, _, _, _, _ = trained
    test = load_dataset(scene, "test")
    cam, xy, _ = test.pixels_for_image(0)
    o, d = generate_rays(test.cameras, cam, xy)
    settings = dataclasses.replace(task.renderer.settings, inference_precision="float32")
    renderer = Renderer(task.model, task.grid, settings)
    fixed = renderer.render_rays_inference(o, d, torch.ones(3), schedule=FixedSegments((16, 32, 64, 128)))
    adaptive = renderer.render_rays_inference(o, d, torch.ones(3), schedule=AdaptiveSegments(4.0, 4, 64))
    one_by_one = renderer.render_rays_inference(o, d, torch.ones(3), schedule=FixedSegments((1,)))
    for out in (adaptive, one_by_one):
        # a march restarted at a segment's end lands on the lattice up to rounding: a step apart on a
        # few rays (3 of 1600 here)
        assert ((out.color - fixed.color).abs() > 1e-4).any(1).float().mean() < 0.01
        torch.testing.assert_close(out.color, fixed.color, atol=5e-3, rtol=0)
        torch.testing.assert_close(out.opacity, fixed.opacity, atol=5e-3, rtol=0)
    assert one_by_one.n_samples <= adaptive.n_samples < fixed.n_samples, \
        (one_by_one.n_samples, adaptive.n_samples, fixed.n_samples)


def test_display_rendering_stops_rays_sooner_and_looks_the_same(trained, scene):
    """for_display (viewer, videos) stops rays at transmittance 0.01, as instant-ngp's renderer: fewer
    samples, the same field and grid, and a picture no one can tell from the evaluation one."""
    task, _, _, _, _ = trained
    test = load_dataset(scene, "test")
    settings = dataclasses.replace(task.renderer.settings, inference_precision="float32")
    renderer = Renderer(task.model, task.grid, settings)
    display = renderer.for_display()
    assert display.field is renderer.field and display.grid is renderer.grid
    assert display.settings.transmittance_threshold == DISPLAY_TRANSMITTANCE > renderer.settings.transmittance_threshold
    exact, shown = (r.render_image(test.cameras, 0, torch.ones(3)) for r in (renderer, display))
    assert shown["n_samples"] < 0.9 * exact["n_samples"], (shown["n_samples"], exact["n_samples"])  # 0.82 measured
    mse = (shown["color"] - exact["color"]).square().mean().item()
    assert mse < 10 ** (-40 / 10), f"{-10 * math.log10(mse):.1f} dB from the evaluation render"


def test_segment_schedules_give_the_lengths_they_promise():
    adaptive = AdaptiveSegments(4.0, 4, 64)
    assert adaptive.size(0, 1000, 1000) == 4  # every ray going: the minimum
    assert adaptive.size(3, 1000, 100) == 40  # a tenth left: ten times as many each
    assert adaptive.size(5, 1000, 1) == 64  # capped
    assert [FixedSegments((16, 32)).size(k, 10, 10) for k in range(4)] == [16, 32, 32, 32]
    with pytest.raises(ValueError, match="min_samples"):
        AdaptiveSegments(4.0, 8, 4)
    first = AdaptiveSegments(2.0, 4, 64, first_samples=2)  # the renderer's: a short first round, then the formula
    assert [first.size(0, 1000, 1000), first.size(1, 1000, 1000), first.size(1, 1000, 100)] == [2, 4, 20]
    with pytest.raises(ValueError, match="first_samples"):
        AdaptiveSegments(2.0, 4, 64, first_samples=65)
    with pytest.raises(ValueError, match="sizes"):
        FixedSegments(())


def test_segment_marching_keeps_the_samples_in_front_of_surfaces(trained, scene):
    """march_in_front (segments, densities without gradients, rays stopped once opaque) keeps the
    samples that marching whole rays and cutting them at the same transmittance keeps, and marches
    fewer behind the surfaces; with their features (the field's encoding of them)."""
    task, _, _, _, _ = trained
    test = load_dataset(scene, "test")
    cam, xy, _ = test.pixels_for_image(0)
    o, d = generate_rays(test.cameras, cam, xy)
    r = task.renderer
    with torch.no_grad():
        whole = r.march(o, d)
        sigmas = task.model.density(whole.positions)
        t_before, _ = transmittance(sigmas, whole.t_starts, whole.t_ends, whole.ray_indices, whole.ray_offsets)
        keep = t_before > r.settings.transmittance_threshold
        samples, features, n_marched = r.march_in_front(o, d, schedule=FixedSegments((8,)))
        default = r.march_in_front(o, d)[0]
    assert n_marched < 0.9 * whole.n_samples, (n_marched, whole.n_samples)  # measured 0.82 here
    assert abs(default.n_samples - samples.n_samples) <= 0.002 * samples.n_samples
    assert abs(samples.n_samples - int(keep.sum())) <= 0.002 * samples.n_samples
    kept_per_ray = torch.bincount(whole.ray_indices[keep], minlength=o.shape[0])
    same = kept_per_ray == samples.samples_per_ray
    assert same.float().mean() > 0.99
    rays = same.nonzero().squeeze(1)[:200]
    mine = torch.cat([samples.positions[samples.ray_offsets[i]:samples.ray_offsets[i + 1]] for i in rays])
    theirs = torch.cat([whole.positions[keep][(whole.ray_indices[keep] == i)] for i in rays])
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(features, task.model.encode(samples.positions))
    # under CPU bfloat16 autocast (training's precision there) the features come rounded to bfloat16
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        rounded, rounded_features, _ = r.march_in_front(o, d, schedule=FixedSegments((8,)))
    assert rounded_features.dtype == torch.bfloat16 and rounded.n_samples > 0.99 * samples.n_samples
    torch.testing.assert_close(rounded_features, task.model.encode(rounded.positions).to(torch.bfloat16),
                               rtol=0, atol=0)


def test_bfloat16_rendering_matches_float32(trained, scene):
    """Rendering with bfloat16 MLPs (the default on CPUs with bfloat16 instructions) gives the float32
    picture to within what no one can see; float16 (CUDA's default) too."""
    task, _, _, _, _ = trained
    test = load_dataset(scene, "test")
    renders = {}
    for precision in ("float32", "bfloat16", "float16"):
        settings = dataclasses.replace(task.renderer.settings, inference_precision=precision)
        renders[precision] = Renderer(task.model, task.grid, settings).render_image(test.cameras, 0, torch.ones(3))
    for precision in ("bfloat16", "float16"):
        mse = (renders[precision]["color"] - renders["float32"]["color"]).square().mean().item()
        assert 0 < mse < 10 ** (-45 / 10), f"{precision}: {-10 * math.log10(mse):.1f} dB from float32"
    assert inference_dtype("auto", torch.device("cpu")) in (None, torch.bfloat16)
    with pytest.raises(ValueError, match="inference_precision"):
        inference_dtype("half", torch.device("cpu"))


def test_low_precision_features_change_no_pixel(trained, scene, monkeypatch):
    """Rendering in bfloat16 takes the encoding's features and the density network's outputs in
    bfloat16 (rounded in the kernel, no float32 copies): the picture is the one the float32 features
    give, bit for bit (the matrix products round them to bfloat16 either way)."""
    task, _, _, _, _ = trained
    test = load_dataset(scene, "test")
    settings = dataclasses.replace(task.renderer.settings, inference_precision="bfloat16")
    renderer = Renderer(task.model, task.grid, settings)
    rounded = renderer.render_image(test.cameras, 1, torch.ones(3))
    geometry = type(task.model).geometry
    monkeypatch.setattr(type(task.model), "geometry", lambda self, p, features=None, dtype=None: geometry(self, p))
    usual = renderer.render_image(test.cameras, 1, torch.ones(3))
    assert rounded["n_samples"] == usual["n_samples"] > 0
    assert torch.equal(rounded["color"], usual["color"]) and torch.equal(rounded["depth"], usual["depth"])


def test_skipping_the_colour_of_invisible_samples_changes_nothing_visible(trained, scene, monkeypatch):
    """The colour network runs only for samples that weigh at least ``color_weight_threshold`` in
    their pixel: far fewer than all, and the picture stays what evaluating every sample gives."""
    task, _, _, _, _ = trained
    test = load_dataset(scene, "test")
    colored = []
    original = type(task.model).color

    def counting(self, h, *args, rows=None, **kwargs):
        colored.append(h.shape[0] if rows is None else rows.shape[0])
        return original(self, h, *args, rows=rows, **kwargs)

    monkeypatch.setattr(type(task.model), "color", counting)
    renders = {}
    for threshold in (0.0, 1e-4):
        settings = dataclasses.replace(task.renderer.settings, inference_precision="float32",
                                       color_weight_threshold=threshold)
        colored.clear()
        renders[threshold] = Renderer(task.model, task.grid, settings).render_image(test.cameras, 0, torch.ones(3))
        renders[threshold]["colored"] = sum(colored)
    full, skipped = renders[0.0], renders[1e-4]
    assert full["colored"] == full["n_samples"] and skipped["n_samples"] == full["n_samples"]
    assert skipped["colored"] < 0.85 * full["colored"], (skipped["colored"], full["colored"])  # 0.72 measured
    mse = (skipped["color"] - full["color"]).square().mean().item()
    assert mse < 10 ** (-50 / 10), f"{-10 * math.log10(mse):.1f} dB from the full render"
    torch.testing.assert_close(skipped["opacity"], full["opacity"])  # densities are all evaluated


def test_the_checkpoint_rebuilds_the_trained_model(trained, scene):
    task, state, _, _, run = trained
    loaded = load_nerf_run(run.path, "cpu")
    assert loaded.step == 150
    with task.optimizer.averaged_weights():  # evaluation and rendering use the EMA weights
        torch.testing.assert_close(loaded.field.encoding.table, task.model.encoding.table)
    torch.testing.assert_close(loaded.grid.occupied, task.grid.occupied)
    torch.testing.assert_close(loaded.c2w, task.dataset.cameras.c2w)
    metrics = run.read_json("metrics.json")
    val = load_dataset(scene, "val")
    assert metrics["val_psnr"] == pytest.approx(evaluate(loaded.renderer, val, with_ssim=False,
                                                         progress=False).mean_psnr, abs=1e-3)


def test_resume_continues_like_an_uninterrupted_run(scene, tmp_path):
    options = dict(config=TINY_RUN_CONFIG, progress=False, checkpoint_every=0)
    # 18 + 8 steps: the checkpoint holds an occupancy grid updated once (at step 16)
    train_nerf(scene, tmp_path / "straight", steps=26, **options)
    train_nerf(scene, tmp_path / "split", steps=18, **options)
    metrics = train_nerf(scene, tmp_path / "split", steps=8, resume=True, progress=False)
    assert metrics["steps"] == 26 and metrics["session"]["steps"] == 8
    straight = RunFolder.open(tmp_path / "straight").load_checkpoint()[1]["loop"]["history"]
    resumed = RunFolder.open(tmp_path / "split").load_checkpoint()[1]["loop"]["history"]
    assert resumed["step"] == list(range(1, 27))
    # same rays, grid, ray count and optimizer state: the losses follow the uninterrupted run
    torch.testing.assert_close(torch.tensor(resumed["loss"][18:]), torch.tensor(straight["loss"][18:]),
                               rtol=0.05, atol=1e-4)
    assert resumed["rays"][18:] == straight["rays"][18:]


def test_checkpoint_is_safetensors_and_json_only(trained):
    task, _, _, _, run = trained
    folder = find_checkpoint(run.path)
    files = sorted(folder.iterdir())  # the names belong to ngp.io.checkpoints: find the files by kind
    assert sorted(p.suffix for p in files) == [".json", ".safetensors"], files
    meta_file, tensors_file = files if files[0].suffix == ".json" else files[::-1]
    assert json.loads(meta_file.read_text())["primitive"] == "nerf"
    with no_unpickling():
        tensors, _ = load_checkpoint(folder)
        loaded = load_nerf_run(run.path, "cpu")
    assert_safetensors_holding(tensors_file, tensors)
    torch.testing.assert_close(loaded.grid.occupied, task.grid.occupied)


def test_tampered_checkpoints_fail_cleanly(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained[4].path, run)
    meta_file = run / "checkpoint" / "checkpoint.json"
    meta = json.loads(meta_file.read_text())
    meta["config"]["encoding"]["evil"] = "__import__('os').system('echo pwned')"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="evil"):
        load_nerf_run(run, "cpu")
    meta["config"]["encoding"].pop("evil")
    meta["config"]["training"]["unknown_setting"] = 1
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="unknown_setting"):
        load_nerf_run(run, "cpu")
    meta["config"]["training"].pop("unknown_setting")
    meta["primitive"] = "image"
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="not of 'nerf'"):
        load_nerf_run(run, "cpu")
    meta["primitive"] = "nerf"
    meta_file.write_text(json.dumps(meta))
    (run / "checkpoint" / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_nerf_run(run, "cpu")


def test_bad_data_and_settings_are_refused_before_training(scene, tmp_path):
    with pytest.raises(FileNotFoundError, match="data set not found"):
        make_task(tmp_path / "missing")
    for bad, match in (({"target_samples": 0}, "target_samples"), ({"grid_sample_fraction": 0.0}, "fraction"),
                       ({"compact": "yes"}, "compact"), ({"min_rays": 512, "max_rays": 256}, "min_rays"),
                       ({"holdout_every": -1}, "holdout_every")):
        with pytest.raises(ConfigError, match=match):
            TrainSettings.from_training({**build_config("nerf")["training"], **bad})
    with pytest.raises(ConfigError, match="positive"):
        train_nerf(scene, tmp_path / "run", steps=0, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_single_transforms_file_holds_validation_frames_out_of_training(scene, tmp_path):
    data = single_transforms(scene, tmp_path / "fox", 20)
    lines = []
    task = make_task(data, log=lines.append, val_images=2)
    train_frames, val_frames = set(task.dataset.frame_indices), set(task.validation.dataset.frame_indices)
    assert val_frames == {0, 8, 16} and train_frames == set(range(20)) - val_frames  # never trained on
    assert task.validation.held_out and any("held out 3 of 20 frames for validation" in line for line in lines)
    assert set(task.evaluate()) == {"val_psnr"}


def test_nothing_held_out_gives_no_validation_figure_but_labelled_training_views(scene, tmp_path):
    data = single_transforms(scene, tmp_path / "fox", 6)
    task = make_task(data, holdout_every=0, val_images=1)
    assert len(task.dataset) == 6 and not task.validation.held_out
    assert set(task.evaluate()) == {"train_view_psnr"}
    run = RunFolder.create(tmp_path / "run").start()
    metrics = train(task, run, LoopSettings(steps=2, checkpoint_every=0), progress=False, log=silent)
    assert metrics["val_psnr"] is None and metrics["train_view_psnr"] > 0
    assert metrics["validation"]["held_out"] is False and "train_view_psnr" in metrics["validation"]["description"]
    assert (tmp_path / "run" / "train_view_00.png").is_file() and not list(run.path.glob("val_*.png"))


def test_mesh_of_a_ball_faces_outwards_in_dataset_coordinates():
    from ngp.nerf.field import NerfField
    from ngp.nerf.mesh import extract_mesh

    field = NerfField(torch.tensor([[0.0] * 3, [1.0] * 3]), config=TINY_CONFIG)
    field.density = lambda p: 10.0 * torch.exp(-40.0 * ((p - 0.5) ** 2).sum(-1))  # a ball at the centre
    mesh = extract_mesh(field, resolution=40, threshold=2.5, scale=0.33, offset=(0.5, 0.5, 0.5), progress=False)
    radius = (torch.log(torch.tensor(4.0)) / 40.0).sqrt().item() / 0.33  # where the density is 2.5
    distances = torch.as_tensor(mesh.vertices).norm(dim=-1)
    assert abs(distances.mean().item() - radius) < 0.02 * radius / 0.33
    assert mesh.is_watertight and mesh.volume > 0  # outward-facing triangles
    assert mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)


def test_large_scenes_start_with_every_seen_cell_occupied(scene, tmp_path):
    """aabb_scale > 1: cascades, cone-angle steps and instant-ngp's mark_untrained; the first steps
    must still get samples (an empty grid before the first update would give none)."""
    big = tmp_path / "big"
    shutil.copytree(scene, big)
    meta = json.loads((big / "transforms_train.json").read_text())
    (big / "transforms_train.json").write_text(json.dumps({**meta, "aabb_scale": 2}))
    task = make_task(big)
    assert task.grid.n_cascades == 2 and task.renderer.settings.cone_angle > 0
    assert task.grid.occupancy_fraction > 0.2
    for step in range(3):
        batch = task.training_batch(step)
        task.after_step(batch, applied=True)
        assert batch.n_samples > 0 and batch.n_samples < 64 * 4096
    assert task.n_rays <= task.settings.max_rays


def test_orbit_circles_surrounding_cameras_and_sweeps_a_frontal_arc():
    import math

    from ngp.nerf.video import orbit_poses

    aabb = torch.tensor([[0.0] * 3, [1.0] * 3])

    def cameras(azimuths):
        poses = []
        for a in azimuths:  # cameras on a circle of radius 2 around (0.5, 0.5, 0.5), y up, looking in
            pos = torch.tensor([0.5 + 2 * math.cos(a), 0.8, 0.5 + 2 * math.sin(a)])
            fwd = torch.nn.functional.normalize(torch.tensor([0.5, 0.5, 0.5]) - pos, dim=0)
            right = torch.nn.functional.normalize(torch.linalg.cross(fwd, torch.tensor([0.0, 1.0, 0.0])), dim=0)
            poses.append(torch.stack([right, torch.linalg.cross(right, fwd), -fwd, pos], dim=1))
        return torch.stack(poses)

    def azimuths(poses):
        rel = poses[:, :, 3] - 0.5
        return torch.atan2(rel[:, 2], rel[:, 0])

    surround = orbit_poses(cameras(torch.linspace(0, 2 * math.pi, 13)[:-1].tolist()), 8, aabb)
    look = torch.nn.functional.normalize(torch.tensor([0.5, 0.5, 0.5]) - surround[:, :, 3], dim=-1)
    torch.testing.assert_close(-surround[:, :, 2], look, atol=1e-4, rtol=0)  # every frame looks at the centre
    spread = azimuths(surround)
    assert spread.max() - spread.min() > 1.5 * math.pi  # a full turn

    frontal = orbit_poses(cameras([-0.4, 0.0, 0.3, 0.5]), 12, aabb)
    a = azimuths(frontal)
    assert a.min() > -0.45 and a.max() < 0.55  # never behind the captured side
    assert abs(a[0].item() - (-0.4)) < 1e-3  # starts at the first training camera


def test_float16_mixed_precision_trains_and_resumes(scene, tmp_path):
    # the GPU default (autocast + loss scaling) run on the CPU: the loss falls as in float32, the
    # parameters stay float32, and the loss scale survives a checkpoint
    run = tmp_path / "run"
    metrics = train_nerf(scene, run, steps=60, config=TINY_RUN_CONFIG, device="cpu", precision="float16",
                         progress=False, checkpoint_every=0)
    assert metrics["precision"] == "float16" and metrics["skipped_steps"] < 5
    tensors, meta = RunFolder.open(run).load_checkpoint("nerf")
    losses = meta["loop"]["history"]["loss"]
    assert all(v == v for v in losses)  # no NaN
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10])
    assert all(t.dtype == torch.float32 for name, t in tensors.items() if name.startswith("model."))

    meta["mixed_precision"]["scaler"]["scale"] = 32.0
    (run / "checkpoint" / "checkpoint.json").write_text(json.dumps(meta))
    tensors, meta = RunFolder.open(run).load_checkpoint("nerf")
    task = build_nerf_task(meta["config"], torch.device("cpu"), "float16", log=silent)
    state = load_task_state(task, tensors, meta, run)
    assert task.amp.loss_scale == 32.0 and state.step == 60 and task.n_rays == meta["task"]["n_rays"]
    assert train_nerf(scene, run, steps=2, resume=True, precision="float16", progress=False)["steps"] == 62
