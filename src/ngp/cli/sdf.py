"""``ngp sdf fit|render|mesh``: parse, call the SDF primitive, report.

The output options of ``fit`` (mesh resolution, IoU grid, render size) are options of the command, not
config keys: they say what to write at the end, not how to train, so a resumed run may change them
(a changed training setting is refused on resume).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated, Optional

import typer

from ngp.cli.common import (CheckpointEvery, Config, Device, EvalAt, Force, Host, Out, Port, Precision, Quiet, Resume,
                            Run, Seconds, Seed, Steps, ViewerFlag, log, new_app, reporting, train_request)

app = new_app("Learn a signed distance function from a mesh; extract and render its surface.")

Resolution = Annotated[int, typer.Option("--resolution", "-r", help="Marching-cubes grid resolution (longest side).")]


@app.command(no_args_is_help=True)
def fit(
    mesh: Annotated[Path, typer.Argument(help="Mesh file: OBJ, PLY, STL, OFF, glTF/GLB (with --resume: the same "
                                         "mesh).", show_default=False)],
    out: Out,
    seconds: Seconds = None, steps: Steps = None, config: Config = None, seed: Seed = None,
    resume: Resume = False, force: Force = False, device: Device = "auto", precision: Precision = "auto",
    checkpoint_every: CheckpointEvery = None, eval_at: EvalAt = None, quiet: Quiet = False,
    viewer: ViewerFlag = False, host: Host = "127.0.0.1", port: Port = 8080,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", "-b", help="Samples per step (default: "
                                                      "the config's, 2^16).")] = None,
    resolution: Resolution = 256,
    iou_resolution: Annotated[int, typer.Option("--iou-resolution", help="Grid resolution of the IoU in "
                                                "metrics.json.")] = 128,
    render_width: Annotated[int, typer.Option("--render-width", help="Width of render.png in pixels.")] = 512,
    render_height: Annotated[int, typer.Option("--render-height", help="Height of render.png in pixels.")] = 512,
) -> None:
    """Learn the SDF of MESH and write the run folder: mesh.ply, render.png, metrics.json (IoU, Chamfer),
    training.png, checkpoint/.

    Example: ngp sdf fit armadillo.obj --out runs/armadillo --seconds 60
    """
    from ngp.sdf.trainer import PRIMITIVE, SDFOutputs, build_sdf_task, summary_line
    from ngp.train.session import input_path, train_run

    with reporting():
        outputs = SDFOutputs(resolution, iou_resolution, (render_width, render_height))
        request = train_request(out, seconds, steps, config, seed, resume, force, device, precision, checkpoint_every,
                                eval_at, quiet, viewer=viewer, host=host, port=port, data=input_path(mesh),
                                batch_size=batch_size)
        metrics = train_run(PRIMITIVE, functools.partial(build_sdf_task, outputs=outputs), request, log=log)
        log(summary_line(metrics, out))


@app.command(no_args_is_help=True)
def render(
    run: Run,
    out: Annotated[Path, typer.Option("--out", "-o", help="PNG file to write.", show_default=False)],
    width: Annotated[int, typer.Option("--width", "-W", help="Image width in pixels.")] = 512,
    height: Annotated[int, typer.Option("--height", "-H", help="Image height in pixels.")] = 512,
    azimuth: Annotated[float, typer.Option("--azimuth", help="Camera angle about the up (y) axis, degrees; 0 looks "
                                           "along -z.")] = 30.0,
    elevation: Annotated[float, typer.Option("--elevation", help="Camera angle above the horizon, degrees.")] = 15.0,
    mode: Annotated[str, typer.Option("--mode", help="shaded | normals")] = "shaded",
    normals: Annotated[str, typer.Option("--normals", help="finite_difference (instant-ngp's, eps 5e-4) | gradient "
                                         "(autograd through the encoding)")] = "finite_difference",
    device: Device = "auto",
) -> None:
    """Sphere-trace the learned SDF of RUN into a PNG."""
    from ngp.io.files import check_writable_file
    from ngp.sdf.model import NeuralSDF
    from ngp.sdf.render import NORMALS, RENDER_MODES, render_sdf, write_png

    with reporting():
        if mode not in RENDER_MODES:
            raise ValueError(f"--mode {mode!r} is not supported; expected one of {', '.join(RENDER_MODES)}")
        if normals not in NORMALS:
            raise ValueError(f"--normals {normals!r} is not supported; expected one of {', '.join(NORMALS)}")
        if width < 1 or height < 1:
            raise ValueError(f"--width and --height must be positive, got {width}x{height}")
        if out.suffix.lower() != ".png":
            raise ValueError(f"--out must be a .png file, got {out}")
        sdf = NeuralSDF.from_checkpoint(run, device)
        check_writable_file(out)
        write_png(out, render_sdf(sdf, width, height, azimuth, elevation, mode, normals=normals))
        log(f"rendered {width}x{height} -> {out}")


@app.command(no_args_is_help=True)
def mesh(
    run: Run,
    out: Annotated[Path, typer.Option("--out", "-o", help="Mesh file to write (.ply, .obj, .stl, .off, .glb).",
                                      show_default=False)],
    resolution: Resolution = 256,
    device: Device = "auto",
) -> None:
    """Extract the zero level set of RUN's SDF by marching cubes, in the input mesh's coordinates."""
    from ngp.io.files import check_writable_file
    from ngp.io.meshes import SAVE_FORMATS, save_mesh
    from ngp.sdf.extract import extract_mesh
    from ngp.sdf.model import NeuralSDF

    with reporting():
        if out.suffix.lower() not in SAVE_FORMATS:
            raise ValueError(f"--out must end in one of {', '.join(SAVE_FORMATS)}, got {out}")
        if resolution < 8:
            raise ValueError(f"--resolution must be at least 8, got {resolution}")
        sdf = NeuralSDF.from_checkpoint(run, device)
        check_writable_file(out)
        vertices, faces = extract_mesh(sdf, resolution)
        save_mesh(out, vertices, faces)
        log(f"wrote {out}: {len(vertices):,} vertices, {len(faces):,} faces (grid {resolution})")
