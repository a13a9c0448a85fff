"""``ngp sweep``: parse, call :func:`ngp.sweep.run_sweep`, report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from ngp.cli.common import Device, Precision, Quiet, Seconds, Steps, log, reporting


def sweep(
    primitive: Annotated[str, typer.Argument(help="image | sdf | nerf", show_default=False)],
    data: Annotated[str, typer.Argument(help="What the primitive's training command takes: an image (or "
                                        "builtin:NAME), a mesh, a NeRF data set (or builtin).", show_default=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="Sweep folder: runs/, results.csv, plots. Run the same "
                                      "command again to resume an interrupted sweep.", show_default=False)],
    set_: Annotated[Optional[List[str]], typer.Option("--set", help="KEY=V1,V2,... : a dotted config key and its "
                                                      "values (JSON where they parse), e.g. "
                                                      "encoding.log2_hashmap_size=14,16,18; repeat for a cross "
                                                      "product.", show_default=False)] = None,
    seconds: Seconds = None, steps: Steps = None,
    repeats: Annotated[int, typer.Option("--repeats", help="Runs per combination (seeds training.seed + 0, 1, "
                                         "...).")] = 1,
    ray: Annotated[Optional[str], typer.Option("--ray", help="Run on this Ray cluster (ray.init(address=...); "
                                               "'auto', 'ray://host:10001', 'local'), one run per worker; "
                                               "needs Ray (the 'sweep' extra of ngp).")] = None,
    device: Device = "auto", precision: Precision = "auto", quiet: Quiet = False,
) -> None:
    """Train one run per combination of --set values into OUT/runs/, and write OUT/results.csv and the plots
    (quality vs parameter bytes, quality vs training time).

    Example: ngp sweep image albert.exr --out sweeps/T --set encoding.log2_hashmap_size=14,16,18 --seconds 60
    """
    from ngp.sweep import run_sweep

    with reporting():
        rows = run_sweep(primitive, data, out, set_ or [], seconds=seconds, steps=steps, repeats=repeats,
                         ray_address=ray, log=log, progress=not quiet, device=device, precision=precision)
        log(f"{len(rows)} runs -> {out / 'results.csv'}, {out / 'quality_vs_size.png'}, "
            f"{out / 'quality_vs_time.png'}")
