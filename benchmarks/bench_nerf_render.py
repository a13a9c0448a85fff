"""NeRF rendering speed of a trained run: seconds per frame, float32 against the default precision.

Usage::

    python benchmarks/bench_nerf_render.py runs/lego                  # its validation frames (needs the data)
    python benchmarks/bench_nerf_render.py runs/lego --frames 3 --repeats 2 --precisions float32,auto
    python benchmarks/bench_nerf_render.py runs/fox --precisions auto --display   # as the viewer and videos

Loads the run (``ngp.nerf.runs.load_nerf_run``: averaged weights, occupancy grid), renders one frame
per variant untimed (loading compiled kernels and creating oneDNN's), then renders
``--frames`` frames of its data set's validation split (as ``ngp nerf eval`` does, PSNR included)
with each ``--precisions`` value of ``RenderSettings.inference_precision``, alternating the variants
``--repeats`` times in this one process, and prints the median seconds per frame, samples/s, the PSNR,
and each variant's speed-up over the first. ``--display`` renders as the viewer and ``ngp nerf render``
do (``Renderer.for_display``: rays stop at transmittance 0.01 instead of evaluation's 1e-4).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import ngp  # noqa: F401  (first: its OpenMP settings are read when torch loads libgomp)
import torch

from ngp.nerf.datasets import load_dataset
from ngp.nerf.evaluation import background_for, ground_truth, psnr
from ngp.nerf.renderer import Renderer, inference_dtype
from ngp.nerf.runs import default_split, load_nerf_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", help="a run folder written by ngp nerf train")
    parser.add_argument("--frames", type=int, default=2, help="validation frames rendered per variant")
    parser.add_argument("--repeats", type=int, default=2, help="times each variant renders them (alternating)")
    parser.add_argument("--precisions", default="float32,auto", help="inference precisions, the first is the baseline")
    parser.add_argument("--display", action="store_true",
                        help="render as the viewer and videos do (Renderer.for_display), not as evaluation")
    args = parser.parse_args()

    loaded = load_nerf_run(args.run, "cpu")
    data = Path(loaded.training["data"])
    split = default_split(data, own_data=True)
    dataset = load_dataset(data if data.is_dir() else data, split, int(loaded.training.get("downscale", 1)),
                           holdout_every=int(loaded.training.get("holdout_every", 8)))
    background = background_for(dataset)
    frames = list(range(min(args.frames, len(dataset))))
    w, h = int(dataset.cameras.width[0]), int(dataset.cameras.height[0])
    print(f"run {args.run} (step {loaded.step}); {len(frames)} {split} frames of {w}x{h}; "
          f"torch threads {torch.get_num_threads()}; {'display' if args.display else 'evaluation'} renderer")

    precisions = args.precisions.split(",")
    for precision in precisions:  # untimed: the first frame of a process loads the compiled kernels
        settings = dataclasses.replace(loaded.renderer.settings, inference_precision=precision)
        Renderer(loaded.field, loaded.grid, settings).render_image(dataset.cameras, frames[0], background)
    seconds: dict[str, list[float]] = {p: [] for p in precisions}
    samples: dict[str, int] = {}
    quality: dict[str, float] = {}
    for _ in range(args.repeats):
        for precision in precisions:
            settings = dataclasses.replace(loaded.renderer.settings, inference_precision=precision)
            renderer = Renderer(loaded.field, loaded.grid, settings)
            if args.display:
                renderer = renderer.for_display()
            n, psnrs = 0, []
            for i in frames:
                start = time.perf_counter()
                out = renderer.render_image(dataset.cameras, i, background)
                seconds[precision].append(time.perf_counter() - start)
                n += out["n_samples"]
                psnrs.append(psnr(out["color"], ground_truth(dataset, i, background)))
            samples[precision], quality[precision] = n // len(frames), statistics.mean(psnrs)

    base = statistics.median(seconds[precisions[0]])
    for precision in precisions:
        m = statistics.median(seconds[precision])
        dtype = inference_dtype(precision, torch.device("cpu"))
        print(f"  {precision:9s} ({str(dtype or torch.float32).removeprefix('torch.'):8s}) {m:6.2f} s/frame  "
              f"{samples[precision] / m / 1e6:5.2f} M samples/s  PSNR {quality[precision]:.2f} dB  "
              f"x{base / m:.2f} vs {precisions[0]}")


if __name__ == "__main__":
    main()
