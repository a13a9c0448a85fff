"""``ngp nerf train|eval|render|mesh``: parse, call :mod:`ngp.nerf.runs`, report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ngp.training import DEVICE_HELP, PRECISION_HELP

app = typer.Typer(
    help="Train a neural radiance field from posed photos; evaluate, render and mesh it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: Errors that mean "bad input": shown as one line, exit code 1, no traceback.
USER_ERRORS = (FileNotFoundError, ValueError, PermissionError, OSError)


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)


def _floats(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated seconds, got {text!r}") from None


@app.command(no_args_is_help=True)
def train(
    data: str = typer.Argument(..., help="Data set: a folder with transforms_{train,val,test}.json (Blender / "
                               "NeRF-synthetic) or transforms.json (instant-ngp / nerfstudio), or 'builtin' to "
                               "generate the built-in test scene into RUN/data/.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder: checkpoint/, metrics.json, val_XX.png, "
                             "training.png.", show_default=False),
    seconds: Optional[float] = typer.Option(None, "--seconds", "-s", help="Training time in seconds (120 if "
                                            "neither --seconds nor --steps is given)."),
    steps: Optional[int] = typer.Option(None, "--steps", "-n", help="Training steps."),
    downscale: int = typer.Option(1, "--downscale", "-d", help="Downscale images by this integer factor."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="NeRF config (instant-ngp's "
                                          "configs/nerf shape); missing sections come from the defaults."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights and rays)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in OUT/checkpoint for another "
                                "--seconds / --steps."),
    val_images: int = typer.Option(3, "--val-images", help="Validation images rendered at the end."),
    eval_at: Optional[str] = typer.Option(None, "--eval-at", help="Also measure validation PSNR at these "
                                          "training times, e.g. 300,600,900 (seconds)."),
    target_samples: Optional[int] = typer.Option(None, "--batch-samples", help="Samples per step the number "
                                                 "of rays adapts to [default: 2^16 on a CPU, 2^18 on a GPU]."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Train a NeRF on DATA.

    Example: ngp nerf train builtin --out runs/builtin --seconds 120
    """
    from ngp.nerf.runs import train_run

    if seconds is None and steps is None:
        seconds = 120.0
    settings = {"target_samples": target_samples} if target_samples else {}
    try:
        train_run(data, out, seconds=seconds, steps=steps, downscale=downscale, config=config, seed=seed,
                  resume=resume, n_val_images=val_images, eval_at=_floats(eval_at), settings=settings,
                  quiet=quiet, device=device, precision=precision)
    except USER_ERRORS as error:
        _fail(error)


@app.command(name="eval", no_args_is_help=True)
def eval_(
    run: Path = typer.Argument(..., help="Run folder written by `ngp nerf train`.", show_default=False),
    data: Optional[Path] = typer.Option(None, "--data", help="Data set folder [default: the one trained on]."),
    split: str = typer.Option("test", "--split", help="train, val or test (single transforms.json: every "
                              "8th frame for val/test)."),
    downscale: Optional[int] = typer.Option(None, "--downscale", "-d", help="[default: as in training]"),
    no_ssim: bool = typer.Option(False, "--no-ssim", help="Skip SSIM (faster)."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """PSNR and SSIM per image of a split, into RUN/eval_<split>/ (metrics.json, render | truth PNGs)."""
    from ngp.nerf.runs import eval_run

    try:
        eval_run(run, data, split, downscale, with_ssim=not no_ssim, quiet=quiet, device=device)
    except USER_ERRORS as error:
        _fail(error)


@app.command(no_args_is_help=True)
def render(
    run: Path = typer.Argument(..., help="Run folder written by `ngp nerf train`.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Video file (.mp4); PNG colour and depth frames go to "
                             "<name>_frames/ beside it.", show_default=False),
    frames: int = typer.Option(60, "--frames", help="Frames on one orbit."),
    width: Optional[int] = typer.Option(None, "--width", "-W", help="[default: the training images']"),
    height: Optional[int] = typer.Option(None, "--height", "-H", help="[default: keeps the aspect ratio]"),
    fps: int = typer.Option(30, "--fps"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Render an orbit around the scene centre as MP4 and PNG frames."""
    from ngp.nerf.runs import render_run

    try:
        render_run(run, out, frames, width, height, fps, quiet=quiet, device=device)
    except USER_ERRORS as error:
        _fail(error)


@app.command(no_args_is_help=True)
def mesh(
    run: Path = typer.Argument(..., help="Run folder written by `ngp nerf train`.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Mesh file: .ply (default choice), .obj, .stl, .glb, .off.",
                             show_default=False),
    resolution: int = typer.Option(256, "--resolution", "-r", help="Marching-cubes lattice points per axis."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Density iso-value [default: 2.5, "
                                              "instant-ngp's]."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Extract the density's iso-surface by marching cubes (vertices in the data set's coordinates)."""
    from ngp.nerf.runs import mesh_run

    try:
        mesh_run(run, out, resolution, threshold, quiet=quiet, device=device)
    except USER_ERRORS as error:
        _fail(error)
