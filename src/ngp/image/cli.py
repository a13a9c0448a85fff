"""``ngp image fit`` and ``ngp image render``: parse, call the image primitive, report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ngp.io.images import BUILTIN_IMAGES
from ngp.training import DEVICE_HELP, PRECISION_HELP

app = typer.Typer(
    help="Fit an image with a multiresolution hash encoding, and render the fitted model at any size.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: Errors that mean "bad input": shown as one line, exit code 1, no traceback.
USER_ERRORS = (FileNotFoundError, ValueError, PermissionError, OSError, FloatingPointError)


def _fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)


@app.command(no_args_is_help=True)
def fit(
    image: str = typer.Argument(
        ...,
        help="PNG, JPEG, TIFF or OpenEXR file, or a photo shipped with scikit-image: "
        f"builtin:NAME with NAME one of {', '.join(BUILTIN_IMAGES)} (e.g. builtin:astronaut).",
        show_default=False,
    ),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder for reconstruction.png, metrics.json, "
                             "training.png and checkpoint/.", show_default=False),
    seconds: Optional[float] = typer.Option(None, "--seconds", "-s", help="Training time limit in seconds "
                                            "(60 if neither --seconds nor --steps is given)."),
    steps: Optional[int] = typer.Option(None, "--steps", "-n", help="Number of training steps."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="JSON config (instant-ngp's "
                                          "configs/image shape: loss, optimizer, encoding, network), merged "
                                          "over the defaults."),
    seed: int = typer.Option(0, "--seed", help="Random seed (weights and samples)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Samples per step "
                                             "(default 2^15 = 32768 on a CPU, 2^18 on a GPU)."),
    keep_alpha: bool = typer.Option(False, "--keep-alpha", help="Learn the alpha channel too."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Fit IMAGE and write the run folder.

    Example: ngp image fit builtin:astronaut --out runs/astronaut --seconds 60
    """
    from ngp.image.trainer import fit_image

    if seconds is None and steps is None:
        seconds = 60.0
    try:
        fit_image(image, out, seconds=seconds, steps=steps, config=config, seed=seed,
                  batch_size=batch_size, keep_alpha=keep_alpha, device=device, precision=precision)
    except USER_ERRORS as error:
        _fail(error)


@app.command(no_args_is_help=True)
def render(
    checkpoint: Path = typer.Argument(..., help="checkpoint/ folder written by `ngp image fit`.", show_default=False),
    width: int = typer.Option(..., "--width", "-W", help="Output width in pixels.", show_default=False),
    height: int = typer.Option(..., "--height", "-H", help="Output height in pixels.", show_default=False),
    out: Path = typer.Option(..., "--out", "-o", help="Output file: .png/.jpg (8-bit sRGB), .exr (linear "
                             "float) or .tif (raw float).", show_default=False),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Render a fitted image model at WIDTH x HEIGHT (any size: the model is continuous)."""
    from ngp.image.render import render_to_file

    try:
        path = render_to_file(checkpoint, width, height, out, device=device)
    except USER_ERRORS as error:
        _fail(error)
    typer.echo(f"rendered {width}x{height} -> {path}")
