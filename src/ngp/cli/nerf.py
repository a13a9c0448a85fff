"""``ngp nerf train|eval|render|mesh``: parse, call the NeRF primitive, report."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from ngp.cli.common import (CheckpointEvery, Config, Device, EvalAt, Force, Host, Out, Port, Precision, Quiet, Resume,
                            Run, Seconds, Seed, Steps, ViewerFlag, log, new_app, reporting, train_request)

app = new_app("Train a neural radiance field from posed photos; evaluate, render and mesh it.")

Downscale = Annotated[Optional[int], typer.Option("--downscale", "-d", help="Downscale the images by this integer "
                                                  "factor (default: 1).")]


@app.command(no_args_is_help=True)
def train(
    data: Annotated[str, typer.Argument(help="Data set: a folder with transforms_{train,val,test}.json (Blender / "
                                        "NeRF-synthetic), a transforms.json (instant-ngp / nerfstudio; every 8th "
                                        "frame is held out for validation), or 'builtin': the built-in test scene, "
                                        "generated once into $XDG_CACHE_HOME/ngp (~/.cache/ngp) and reused.",
                                        show_default=False)],
    out: Out,
    seconds: Seconds = None, steps: Steps = None, config: Config = None, seed: Seed = None,
    resume: Resume = False, force: Force = False, device: Device = "auto", precision: Precision = "auto",
    checkpoint_every: CheckpointEvery = None, eval_at: EvalAt = None, quiet: Quiet = False,
    viewer: ViewerFlag = False, host: Host = "127.0.0.1", port: Port = 8080,
    downscale: Downscale = None,
    val_images: Annotated[Optional[int], typer.Option("--val-images", help="Validation frames rendered (val_XX.png) "
                                                      "and measured at --eval-at times and at the end (default: 3).")
                          ] = None,
    batch_samples: Annotated[Optional[int], typer.Option("--batch-samples", help="Samples per step the number of "
                                                         "rays adapts to (default: 2^16 on a CPU, 2^18 on a GPU).")
                             ] = None,
    holdout_every: Annotated[Optional[int], typer.Option("--holdout-every", help="Single transforms.json: hold out "
                                                         "every n-th frame for validation, 0 for none (default: 8).")
                             ] = None,
) -> None:
    """Train a NeRF on DATA and write the run folder: val_XX.png, metrics.json, training.png, checkpoint/.

    Example: ngp nerf train builtin --out runs/builtin --seconds 120
    """
    from ngp.nerf.field import IGNORED_KEYS
    from ngp.nerf.trainer import PRIMITIVE, build_nerf_task, resolve_data, summary_line
    from ngp.train.session import train_run

    with reporting():
        request = train_request(out, seconds, steps, config, seed, resume, force, device, precision, checkpoint_every,
                                eval_at, quiet, viewer=viewer, host=host, port=port, data=resolve_data(data),
                                downscale=downscale, val_images=val_images, target_samples=batch_samples,
                                holdout_every=holdout_every)
        metrics = train_run(PRIMITIVE, functools.partial(build_nerf_task, log=log), request, log=log,
                            ignored_sections=IGNORED_KEYS)
        log(summary_line(metrics, out))


@app.command(name="eval", no_args_is_help=True)
def eval_(
    run: Run,
    data: Annotated[Optional[Path], typer.Option("--data", help="Evaluation set: a data set folder or transforms "
                                                 "file (default: the data trained on). A transforms.json given here "
                                                 "is evaluated whole (every frame).")] = None,
    split: Annotated[Optional[str], typer.Option("--split", help="train, val, test or all (default: the frames held "
                                                 "out of training (val, or test for Blender data without val); all "
                                                 "for a transforms.json given with --data).")] = None,
    downscale: Annotated[Optional[int], typer.Option("--downscale", "-d", help="(default: as in training)")] = None,
    no_ssim: Annotated[bool, typer.Option("--no-ssim", help="Skip SSIM (faster).")] = False,
    device: Device = "auto", quiet: Quiet = False,
) -> None:
    """PSNR and SSIM of every frame of a split, into RUN/eval_<split>/ (metrics.json, render | truth PNGs)."""
    from ngp.nerf.runs import eval_run

    with reporting():
        eval_run(run, data, split, downscale, with_ssim=not no_ssim, progress=not quiet, device=device, log=log)


@app.command(no_args_is_help=True)
def render(
    run: Run,
    out: Annotated[Path, typer.Option("--out", "-o", help="Video file (.mp4); PNG colour and depth frames go to "
                                      "<name>_frames/ beside it.", show_default=False)],
    frames: Annotated[int, typer.Option("--frames", help="Frames on one orbit.")] = 60,
    width: Annotated[Optional[int], typer.Option("--width", "-W", help="(default: the training images')")] = None,
    height: Annotated[Optional[int], typer.Option("--height", "-H", help="(default: keeps the aspect ratio)")] = None,
    fps: Annotated[int, typer.Option("--fps")] = 30,
    device: Device = "auto", quiet: Quiet = False,
) -> None:
    """Render an orbit around the scene centre as MP4 and PNG frames."""
    from ngp.nerf.runs import render_run

    with reporting():
        render_run(run, out, frames, width, height, fps, progress=not quiet, device=device, log=log)


@app.command(no_args_is_help=True)
def mesh(
    run: Run,
    out: Annotated[Path, typer.Option("--out", "-o", help="Mesh file: .ply, .obj, .stl, .glb or .off.",
                                      show_default=False)],
    resolution: Annotated[int, typer.Option("--resolution", "-r", help="Marching-cubes lattice points per axis.")
                          ] = 256,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Density iso-value (default: 2.5, "
                                                       "instant-ngp's).")] = None,
    device: Device = "auto", quiet: Quiet = False,
) -> None:
    """Extract the density's iso-surface by marching cubes (vertices in the data set's coordinates)."""
    from ngp.nerf.runs import mesh_run

    with reporting():
        mesh_run(run, out, resolution, threshold, progress=not quiet, device=device, log=log)


@app.command(no_args_is_help=True)
def prepare(
    input: Annotated[Path, typer.Argument(help="A folder of photos (JPEG/PNG, all of one size) or a video file.",
                                          show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Data set folder to write: transforms.json, images/, "
                                      "points.ply, colmap/.", show_default=False)],
    frames: Annotated[int, typer.Option("--frames", help="Video: frames to take, the sharpest of each stretch "
                                        "(default: 100).", show_default=False)] = 100,
    matcher: Annotated[str, typer.Option("--matcher", help="auto, exhaustive or sequential (default: auto: "
                                         "exhaustive up to 150 photos, sequential for more and for video frames).",
                                         show_default=False)] = "auto",
    camera_model: Annotated[str, typer.Option("--camera-model", help="COLMAP camera model shared by all images: "
                                              "OPENCV, PINHOLE, SIMPLE_PINHOLE, RADIAL or SIMPLE_RADIAL "
                                              "(default: OPENCV).", show_default=False)] = "OPENCV",
    max_image_size: Annotated[int, typer.Option("--max-image-size", help="Detect features on images scaled down "
                                                "to this longest side, in pixels (default: 1600).",
                                                show_default=False)] = 1600,
    aabb_scale: Annotated[Optional[int], typer.Option("--aabb-scale", help="instant-ngp's aabb_scale, a power of "
                                                      "two (default: the smallest holding 98% of the sparse "
                                                      "points).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing non-empty --out.")] = False,
    quiet: Quiet = False,
) -> None:
    """Pose photos or video frames by structure from motion (COLMAP) and write instant-ngp's transforms.json.

    Example: ngp nerf prepare photos/ --out data/mug && ngp nerf train data/mug --out runs/mug
    """
    from ngp.nerf.prepare import prepare_scene

    with reporting():
        prepare_scene(input, out, frames=frames, matcher=matcher, camera_model=camera_model,
                      max_image_size=max_image_size, aabb_scale=aabb_scale, force=force, progress=not quiet, log=log)
