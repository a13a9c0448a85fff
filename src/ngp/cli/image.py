"""``ngp image fit`` and ``ngp image render``: parse, call the image primitive, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ngp.cli.common import (CheckpointEvery, Config, Device, EvalAt, Force, Host, Out, Port, Precision, Quiet, Resume,
                            Run, Seconds, Seed, Steps, ViewerFlag, log, new_app, reporting, train_request)
from ngp.io.images import BUILTIN_IMAGES

app = new_app("Fit an image with a multiresolution hash encoding, and render the fitted model at any size.")


@app.command(no_args_is_help=True)
def fit(
    image: Annotated[str, typer.Argument(help="PNG, JPEG, TIFF or OpenEXR file (any size), or a photo shipped with "
                                         f"scikit-image: builtin:NAME with NAME one of {', '.join(BUILTIN_IMAGES)}.",
                                         show_default=False)],
    out: Out,
    seconds: Seconds = None, steps: Steps = None, config: Config = None, seed: Seed = None,
    resume: Resume = False, force: Force = False, device: Device = "auto", precision: Precision = "auto",
    checkpoint_every: CheckpointEvery = None, eval_at: EvalAt = None, quiet: Quiet = False,
    viewer: ViewerFlag = False, host: Host = "127.0.0.1", port: Port = 8080,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Samples per step (default: "
                                                      "2^15 on a CPU, 2^18 on a GPU).")] = None,
    keep_alpha: Annotated[Optional[bool], typer.Option("--keep-alpha/--drop-alpha", help="Learn the alpha "
                                                       "channel too (default: drop).", show_default=False)] = None,
) -> None:
    """Fit IMAGE and write the run folder: reconstruction.png, metrics.json, training.png, checkpoint/.

    Example: ngp image fit builtin:astronaut --out runs/astronaut --seconds 60
    """
    from ngp.image.trainer import PRIMITIVE, build_image_task, summary_line
    from ngp.train.session import input_path, train_run

    with reporting():
        request = train_request(out, seconds, steps, config, seed, resume, force, device, precision, checkpoint_every,
                                eval_at, quiet, viewer=viewer, host=host, port=port, data=input_path(image),
                                batch_size=batch_size, keep_alpha=keep_alpha)
        metrics = train_run(PRIMITIVE, build_image_task, request, log=log)
        log(summary_line(metrics, out))


@app.command(no_args_is_help=True)
def render(
    run: Run,
    width: Annotated[int, typer.Option("--width", "-W", help="Output width in pixels.", show_default=False)],
    height: Annotated[int, typer.Option("--height", "-H", help="Output height in pixels.", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output file: .png/.jpg (8-bit sRGB), .exr (linear "
                                      "float) or .tif (raw float).", show_default=False)],
    device: Device = "auto", quiet: Quiet = False,
) -> None:
    """Render a fitted image at WIDTH x HEIGHT (any size: the model is continuous)."""
    from ngp.image.render import render_to_file

    with reporting():
        path = render_to_file(run, width, height, out, progress=not quiet, device=device)
        log(f"rendered {width}x{height} -> {path}")
