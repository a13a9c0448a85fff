"""NeRF throughput: where a training step's time goes, training and rendering samples per second.

Usage::

    python benchmarks/bench_nerf.py                      # built-in scene (the cached one, made on first use)
    python benchmarks/bench_nerf.py --data ../shared/data/nerf/lego --downscale 2 --warmup 200
    python benchmarks/bench_nerf.py --from-run runs/lego --warmup 20   # steps as late in training as that run

Warms a model up for ``--warmup`` steps (so the occupancy grid is sparse, as in a real run), then
times ``--steps`` training steps phase by phase (marching with the density pre-pass that finds
the samples in front of surfaces, field forward, compositing + loss, backward, the loop's check that
every gradient is finite, optimizer), and renders one image. Prints medians.
Timings on a shared machine are noisy: compare variants in one process, back to back.
"""

from __future__ import annotations

import argparse
import statistics
import time

import ngp  # noqa: F401  (first: its OpenMP settings are read when torch loads libgomp)
import torch

from ngp.nerf.evaluation import background_for
from ngp.nerf.trainer import NerfTask, build_nerf_task, resolve_data
from ngp.ops.nerf import composite
from ngp.io.checkpoints import load_checkpoint
from ngp.train.loop import load_task_state
from ngp.train.precision import gradients_finite
from ngp.train.settings import build_config


def warm_up(task: NerfTask, steps: int) -> None:
    """``steps`` training steps as the shared loop takes them (float32, no checkpoints or outputs)."""
    first = task.optimizer.n_steps
    for step in range(first, first + steps):
        with task.amp.autocast():
            batch = task.training_batch(step)
        applied = task.amp.backward_and_step(batch.loss, task.optimizer)
        task.after_step(batch, applied)


def timed_step(task: NerfTask, timings: dict[str, list[float]]) -> int:
    """One training step (as :meth:`NerfTask.training_batch` + the optimizer step, without the grid
    update), timed by phase."""
    marks = [time.perf_counter()]

    def mark(name):
        marks.append(time.perf_counter())
        timings.setdefault(name, []).append(marks[-1] - marks[-2])

    r = task.renderer
    o, d, bg, target = task._sample_rays(task.n_rays)
    mark("sample rays")
    with task.amp.autocast():
        samples, features, marched = r.march_in_front(o, d, task.generator)
    mark("march + density pre-pass")
    with task.amp.autocast():
        sigmas, rgbs = task.model(samples.positions, d, samples.ray_indices, features=features)
    mark("field forward")
    out = composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices, samples.ray_offsets, bg)
    loss = task.loss_fn(out.color, target)
    mark("composite + loss")
    task.optimizer.zero_grad()
    loss.backward()
    mark("backward")
    gradients_finite(task.optimizer.adam)  # the training loop's guard (MixedPrecision.backward_and_step)
    mark("finite-gradient check")
    task.optimizer.step()
    mark("optimizer (Adam + EMA)")
    task._adapt_batch(samples.n_samples, marched)
    return samples.n_samples, marched


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="builtin", help="data set folder or transforms file (default: builtin)")
    parser.add_argument("--downscale", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=100, help="training steps before timing")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--target-samples", type=int, default=1 << 16)
    parser.add_argument("--from-run", default=None, help="start from this run's checkpoint (its data and settings): "
                        "late-training steps, where rays are many and mostly stop at surfaces")
    parser.add_argument("--precision", default="auto", help="precision of the MLPs (as ngp nerf train --precision)")
    args = parser.parse_args()

    device = torch.device("cpu")
    if args.from_run:
        tensors, meta = load_checkpoint(args.from_run, "nerf")
        config, data = meta["config"], meta["config"]["training"]["data"]
        task = build_nerf_task(config, device, args.precision)
        load_task_state(task, tensors, meta, args.from_run)
    else:
        data = resolve_data(args.data)
        config = build_config("nerf", None, {"data": data, "downscale": args.downscale,
                                             "target_samples": args.target_samples}, device)
        task = build_nerf_task(config, device, args.precision)
    dataset = task.dataset
    print(f"precision: {task.amp.precision}; torch threads: {torch.get_num_threads()}; data: {data} "
          f"({len(dataset)} images, {int(dataset.cameras.width[0])}x{int(dataset.cameras.height[0])})")
    start = time.perf_counter()
    warm_up(task, args.warmup)
    print(f"warm-up: {args.warmup} steps in {time.perf_counter() - start:.1f} s, "
          f"occupancy {task.grid.occupancy_fraction:.3f}, rays/batch {task.n_rays}")

    timings: dict[str, list[float]] = {}
    counts = [timed_step(task, timings) for _ in range(args.steps)]
    samples = [kept for kept, _ in counts]
    total = sum(statistics.median(v) for v in timings.values())
    print(f"\nper step (median of {args.steps}; {statistics.median(samples):.0f} samples trained on of "
          f"{statistics.median(m for _, m in counts):.0f} marched, {task.n_rays} rays):")
    for name, values in timings.items():
        m = statistics.median(values)
        print(f"  {name:32s} {m * 1e3:8.1f} ms  {100 * m / total:5.1f} %")
    print(f"  {'total':32s} {total * 1e3:8.1f} ms  -> {statistics.median(samples) / total / 1e3:.0f}k "
          "training samples/s")

    with task.optimizer.averaged_weights():
        start = time.perf_counter()
        render = task.renderer.render_image(dataset.cameras, 0, background_for(dataset))
        seconds = time.perf_counter() - start
    h, w = render["color"].shape[:2]
    print(f"render {w}x{h}: {seconds:.2f} s, {render['n_samples'] / seconds / 1e3:.0f}k samples/s, "
          f"{h * w / seconds / 1e3:.0f}k rays/s")


if __name__ == "__main__":
    main()
