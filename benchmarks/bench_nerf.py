"""NeRF throughput: where a training step's time goes, training and rendering samples per second.

Usage::

    python benchmarks/bench_nerf.py                      # built-in scene (generated into a temp folder)
    python benchmarks/bench_nerf.py --data ../shared/data/nerf/lego --downscale 2 --warmup 200

Warms a model up for ``--warmup`` steps (so the occupancy grid is sparse, as in a real run), then
times ``--steps`` training steps phase by phase (marching, the density pre-pass of the compaction,
field forward, compositing + loss, backward, optimizer), and renders one image. Prints medians.
Timings on a shared machine are noisy: compare variants in one process, back to back.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ngp.nerf.builtin_scene import make_builtin_scene
from ngp.nerf.cameras import generate_rays
from ngp.nerf.datasets import load_dataset
from ngp.nerf.evaluation import background_for
from ngp.nerf.renderer import _front_samples, transmittance_before
from ngp.nerf.trainer import NerfTrainer, TrainSettings
from ngp.ops.nerf import composite


def timed_step(trainer: NerfTrainer, timings: dict[str, list[float]]) -> int:
    """One training step (as :meth:`NerfTrainer.train_step`, without the grid update), timed by phase."""
    marks = [time.perf_counter()]

    def mark(name):
        marks.append(time.perf_counter())
        timings.setdefault(name, []).append(marks[-1] - marks[-2])

    ds, r = trainer.dataset, trainer.renderer
    cam, xy, rgba = ds.sample_batch(trainer.n_rays, trainer.generator)
    o, d = generate_rays(ds.cameras, cam, xy)
    bg = torch.rand(trainer.n_rays, 3, generator=trainer.generator)
    target = rgba[:, :3] * rgba[:, 3:] + bg * (1 - rgba[:, 3:])
    mark("sample rays")
    samples = r.march(o, d, trainer.generator)
    mark("march")
    with torch.no_grad():
        sigma = trainer.field.density(samples.positions)
        keep = transmittance_before(sigma, samples.t_starts, samples.t_ends, samples.ray_offsets,
                                    samples.ray_indices) > r.settings.transmittance_threshold
        samples = _front_samples(samples, keep, o.shape[0])
    mark("compaction (density pre-pass)")
    sigmas, rgbs = trainer.field(samples.positions, d, samples.ray_indices)
    mark("field forward")
    out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices, samples.ray_offsets, bg)
    loss = trainer.loss_fn(out.color, target)
    mark("composite + loss")
    trainer.optimizer.zero_grad()
    loss.backward()
    mark("backward")
    trainer.optimizer.step()
    mark("optimizer (Adam + EMA)")
    trainer._adapt_batch(samples.n_samples)
    trainer.step += 1
    return samples.n_samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="data set folder (default: built-in scene)")
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=100, help="training steps before timing")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--target-samples", type=int, default=1 << 16)
    args = parser.parse_args()

    data = args.data
    if data is None:
        data = make_builtin_scene(Path(tempfile.mkdtemp()) / "scene")
    dataset = load_dataset(data, "train", args.downscale)
    trainer = NerfTrainer(dataset, None, TrainSettings(target_samples=args.target_samples))
    print(f"torch threads: {torch.get_num_threads()}; data: {data} ({len(dataset)} images, "
          f"{int(dataset.cameras.width[0])}x{int(dataset.cameras.height[0])})")
    start = time.perf_counter()
    trainer.train(steps=args.warmup, progress=False)
    print(f"warm-up: {args.warmup} steps in {time.perf_counter() - start:.1f} s, "
          f"occupancy {trainer.grid.occupancy_fraction:.3f}, rays/batch {trainer.n_rays}")

    timings: dict[str, list[float]] = {}
    samples = [timed_step(trainer, timings) for _ in range(args.steps)]
    total = sum(statistics.median(v) for v in timings.values())
    print(f"\nper step (median of {args.steps}; {statistics.median(samples):.0f} samples, "
          f"{trainer.n_rays} rays):")
    for name, values in timings.items():
        m = statistics.median(values)
        print(f"  {name:32s} {m * 1e3:8.1f} ms  {100 * m / total:5.1f} %")
    print(f"  {'total':32s} {total * 1e3:8.1f} ms  -> {statistics.median(samples) / total / 1e3:.0f}k "
          "training samples/s")

    with trainer.optimizer.averaged_weights():
        start = time.perf_counter()
        render = trainer.renderer.render_image(dataset.cameras, 0, background_for(dataset))
        seconds = time.perf_counter() - start
    h, w = render["color"].shape[:2]
    print(f"render {w}x{h}: {seconds:.2f} s, {render['n_samples'] / seconds / 1e3:.0f}k samples/s, "
          f"{h * w / seconds / 1e3:.0f}k rays/s")


if __name__ == "__main__":
    main()
