"""``ngp sdf``: fit a signed distance function to a mesh, render it, extract its surface.

The commands only parse, call :mod:`ngp.sdf`, and report; errors are printed as one line naming the
problem, with exit code 1.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from ngp.training import DEVICE_HELP, PRECISION_HELP

app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Learn a signed distance function from a mesh; extract and render its surface.")

#: Errors that are the user's input, reported as a one-line message instead of a traceback.
USER_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError, ValueError)


def _fail(error: Exception) -> None:
    typer.secho(f"error: {error}", err=True, fg=typer.colors.RED)
    raise typer.Exit(1)


@app.command()
def fit(
    mesh: Path = typer.Argument(..., help="Mesh file: OBJ, PLY, STL, OFF, glTF/GLB."),
    out: Path = typer.Option(..., "--out", "-o", help="Run folder to write (created if needed)."),
    seconds: Optional[float] = typer.Option(None, "--seconds", help="Training time budget, ground truth included (default 60 s when --steps is not given)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps (with --seconds: whichever ends first)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="Config JSON (instant-ngp's configs/sdf/*.json work as they are)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    resolution: int = typer.Option(256, "--resolution", "-r", help="Marching-cubes grid resolution (longest side) for mesh.ply."),
    iou_resolution: int = typer.Option(128, "--iou-resolution", help="Grid resolution of the IoU in metrics.json."),
    render_width: int = typer.Option(512, "--render-width", help="Width of render.png in pixels."),
    render_height: int = typer.Option(512, "--render-height", help="Height of render.png in pixels."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
    precision: str = typer.Option("auto", "--precision", help=PRECISION_HELP),
) -> None:
    """Train an SDF on MESH; write mesh.ply, render.png, loss.png, metrics.json, config.json, checkpoint/."""
    from ngp.sdf.trainer import fit_sdf

    start = time.perf_counter()
    try:
        result = fit_sdf(mesh, out, seconds=seconds, steps=steps, config=config, seed=seed, resolution=resolution,
                         render_size=(render_width, render_height), iou_resolution=iou_resolution,
                         progress=progress, device=device, precision=precision)
    except USER_ERRORS as error:
        _fail(error)
    m = result.metrics
    typer.echo(
        f"fit {mesh.name}: {m['steps']} steps in {m['seconds_training']:.1f} s "
        f"(ground-truth pool {m['seconds_ground_truth_pool']:.1f} s, {m['samples_per_second']:,} samples/s)\n"
        f"  IoU grid {m['iou_grid_resolution']}^3: {m['iou_grid']:.4f}   IoU near surface: {m['iou_near_surface']:.4f}\n"
        f"  Chamfer: {m['chamfer_unit_cube']:.3e} (unit cube) = {m['chamfer_mesh_units']:.3e} (mesh units)\n"
        f"  wrote {', '.join(p.name + ('/' if p.is_dir() else '') for p in result.files)} to {result.out} "
        f"({time.perf_counter() - start:.1f} s in all)"
    )


@app.command()
def render(
    run: Path = typer.Argument(..., help="Run folder from `ngp sdf fit` (or its checkpoint/ folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="PNG file to write."),
    width: int = typer.Option(512, "--width", help="Image width in pixels."),
    height: int = typer.Option(512, "--height", help="Image height in pixels."),
    azimuth: float = typer.Option(30.0, "--azimuth", help="Camera angle about the up (y) axis, degrees; 0 looks along -z."),
    elevation: float = typer.Option(15.0, "--elevation", help="Camera angle above the horizon, degrees."),
    mode: str = typer.Option("shaded", "--mode", help="shaded | normals"),
    normals: str = typer.Option("finite_difference", "--normals",
                                help="finite_difference (instant-ngp's, eps 5e-4) | gradient (autograd through the encoding)"),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Sphere-trace the learned SDF into a PNG."""
    from ngp.sdf.model import NeuralSDF
    from ngp.sdf.render import NORMALS, RENDER_MODES, render_sdf, write_png
    from ngp.io.files import check_writable_file

    start = time.perf_counter()
    try:
        if mode not in RENDER_MODES:
            raise ValueError(f"--mode {mode!r} is not supported; expected one of {RENDER_MODES}")
        if normals not in NORMALS:
            raise ValueError(f"--normals {normals!r} is not supported; expected one of {NORMALS}")
        if width < 1 or height < 1:
            raise ValueError(f"--width and --height must be positive, got {width}x{height}")
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out must be a .png file, got {out}")
        sdf = NeuralSDF.from_checkpoint(run, device)
        check_writable_file(out)
        write_png(out, render_sdf(sdf, width, height, azimuth, elevation, mode, normals=normals))
    except USER_ERRORS as error:
        _fail(error)
    typer.echo(f"wrote {out} ({width}x{height}, {time.perf_counter() - start:.1f} s)")


@app.command()
def mesh(
    run: Path = typer.Argument(..., help="Run folder from `ngp sdf fit` (or its checkpoint/ folder)."),
    out: Path = typer.Option(..., "--out", "-o", help="Mesh file to write (.ply, .obj, .stl, .off, .glb)."),
    resolution: int = typer.Option(256, "--resolution", "-r", help="Marching-cubes grid resolution (longest side)."),
    device: str = typer.Option("auto", "--device", help=DEVICE_HELP),
) -> None:
    """Extract the zero level set by marching cubes, in the input mesh's coordinates."""
    from ngp.io.files import check_writable_file
    from ngp.io.meshes import SAVE_FORMATS, save_mesh
    from ngp.sdf.extract import extract_mesh
    from ngp.sdf.model import NeuralSDF

    start = time.perf_counter()
    try:
        if out.suffix.lower() not in SAVE_FORMATS:
            raise ValueError(f"--out must end in one of {SAVE_FORMATS}, got {out}")
        if resolution < 8:
            raise ValueError(f"--resolution must be at least 8, got {resolution}")
        sdf = NeuralSDF.from_checkpoint(run, device)
        check_writable_file(out)
        vertices, faces = extract_mesh(sdf, resolution)
        save_mesh(out, vertices, faces)
    except USER_ERRORS as error:
        _fail(error)
    typer.echo(f"wrote {out}: {len(vertices):,} vertices, {len(faces):,} faces "
               f"(grid {resolution}, {time.perf_counter() - start:.1f} s)")
