"""Rays/s and samples/s of the NeRF ray ops (marching, composite forward+backward, the pre-pass's
samples in front of opacity and its packing by ray, grid updates' cell positions, decay and occupancy,
the view directions' spherical harmonics), Numba vs the PyTorch reference, in one process.

    python benchmarks/bench_nerf_ops.py                     # 2^14 rays, 128^3 grid, 5 repeats
    python benchmarks/bench_nerf_ops.py --rays 65536 --repeats 9 --cone-angle 0.00390625

Scene: an occupancy grid updated from an analytic density (a hollow sphere shell of radius 0.3 and a
small box, in the unit cube, like a NeRF-synthetic object), rays from cameras on a sphere of radius 1.3
looking at the centre (training-like: jittered first sample). The reference marcher is timed on
``--reference-rays`` rays only (it is a vectorised loop over steps, slow by design). ``sort_by_ray``
packs the samples as a segment marcher leaves them (rounds of 8 samples per ray, one after another);
``grid_cell_positions`` places 16 jittered points per ray's worth in random cells (its "samples" are
points); ``decay_density_`` and ``occupancy_from_density`` pass over three cascades of random densities
(their "samples" are cells); ``spherical_harmonics`` encodes the rays' directions (degree 4, NeRF's
colour input; its "samples" are rays). Medians of
``--repeats`` runs after a warm-up run (which includes Numba's compilation, cached on disk).
Wall-clock figures depend on the machine's load (other processes on the cores make them noisy); the
CPU-time column (all threads of this process, per ``--rays`` rays) is much less sensitive to it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import ngp  # (first: its OpenMP settings are read when torch loads libgomp)
import torch

from ngp.nerf.occupancy import OccupancyGrid
from ngp.ops import nerf as ops


def scene_density(x: torch.Tensor) -> torch.Tensor:
    r = (x - 0.5).norm(dim=-1)
    shell = (r > 0.27) & (r < 0.3)
    box = ((x - torch.tensor([0.5, 0.3, 0.5])).abs() < torch.tensor([0.1, 0.05, 0.1])).all(-1)
    return torch.where(shell | box, 500.0, 0.0)


def camera_rays(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    eye = torch.nn.functional.normalize(torch.randn(n, 3, generator=generator), dim=-1) * 1.3 + 0.5
    target = 0.5 + (torch.rand(n, 3, generator=generator) - 0.5) * 0.8
    return eye, torch.nn.functional.normalize(target - eye, dim=-1)


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall-clock and CPU (all threads of the process) seconds of ``fn()``."""
    fn()  # warm-up (compilation, caches)
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return statistics.median(wall), statistics.median(cpu)


def with_backend(name: str, fn):
    def run():
        old = os.environ.get("NGP_BACKEND")
        os.environ["NGP_BACKEND"] = name
        try:
            return fn()
        finally:
            if old is None:
                del os.environ["NGP_BACKEND"]
            else:
                os.environ["NGP_BACKEND"] = old
    return run


def numba_threads() -> int:
    import numba

    return numba.get_num_threads()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rays", type=int, default=1 << 14)
    parser.add_argument("--reference-rays", type=int, default=1 << 11)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--cone-angle", type=float, default=0.0)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="Numba and torch threads (default: all cores)")
    args = parser.parse_args()
    if args.threads:
        import numba

        numba.set_num_threads(args.threads)
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    grid = OccupancyGrid(aabb=torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]), resolution=args.resolution)
    grid.update(0, scene_density, generator=g)
    origins, directions = camera_rays(args.rays, g)
    t_near, t_far, hit = ops.ray_aabb_intersect(origins, directions, grid.aabb)

    def march(n):
        return lambda: ops.march_rays(origins[:n], directions[:n], t_near[:n], t_far[:n], grid,
                                      cone_angle=args.cone_angle, jitter=g)

    samples = with_backend("numba", march(args.rays))()
    n_samples = samples.n_samples
    print(f"scene: {args.rays} rays ({int(hit.sum())} hit the box), grid {args.resolution}^3 "
          f"({100 * grid.occupancy_fraction:.1f}% occupied), {n_samples} samples "
          f"({n_samples / args.rays:.1f}/ray), cone_angle {args.cone_angle}, "
          f"threads: numba {numba_threads()}, torch {torch.get_num_threads()}")

    rows = []
    for backend, n in (("numba", args.rays), ("reference", min(args.reference_rays, args.rays))):
        seconds, cpu = timed(with_backend(backend, march(n)), args.repeats)
        s_n = int(samples.ray_offsets[n])
        rows.append(("march_rays", backend, n / seconds, s_n / seconds, seconds, cpu * args.rays / n))

    sigmas = torch.rand(n_samples, generator=g) * 200
    rgbs = torch.rand(n_samples, 3, generator=g)
    background = torch.ones(3)

    def composite_fwd_bwd():
        s = sigmas.clone().requires_grad_()
        c = rgbs.clone().requires_grad_()
        out = ops.composite(s, c, samples.t_starts, samples.t_ends, samples.ray_indices, samples.ray_offsets,
                            background)
        out.color.sum().backward()

    def composite_fwd():
        with torch.no_grad():
            ops.composite(sigmas, rgbs, samples.t_starts, samples.t_ends, samples.ray_indices, samples.ray_offsets,
                          background)

    for backend in ("numba", "reference"):
        for name, fn in (("composite fwd", composite_fwd), ("composite fwd+bwd", composite_fwd_bwd)):
            seconds, cpu = timed(with_backend(backend, fn), args.repeats)
            rows.append((name, backend, args.rays / seconds, n_samples / seconds, seconds, cpu))

    log_transmittance = -torch.rand(args.rays, dtype=torch.float64, generator=g)
    rank = torch.arange(n_samples) - samples.ray_offsets[samples.ray_indices]  # each sample's place in its ray
    in_rounds = samples.ray_indices[torch.argsort((rank // 8) * args.rays + samples.ray_indices)]
    cells = torch.randint(grid.occupied.numel(), (16 * args.rays,), generator=g)
    jitter = torch.rand(cells.numel(), 3, generator=g)
    # a grid update's passes over every cell, on three cascades (as a real scene's: fox has 3 x 128^3)
    cascades = torch.rand(3, args.resolution ** 3, generator=g) * 0.02
    cascades_valid = torch.rand(3, args.resolution ** 3, generator=g) > 0.1
    harmonics = ngp.Encoding(3, {"otype": "SphericalHarmonics", "degree": 4})
    encoded_directions = ((directions + 1.0) * 0.5).clamp(0.0, 1.0)  # as NerfField.direction_features
    others = (("samples_in_front", n_samples, lambda: ops.samples_in_front(
                  sigmas, samples.t_starts, samples.t_ends, samples.ray_offsets, log_transmittance)),
              ("sort_by_ray", n_samples, lambda: ops.sort_by_ray(in_rounds, args.rays)),
              ("grid_cell_positions", cells.numel(), lambda: ops.grid_cell_positions(cells, grid, jitter, grid.aabb)),
              ("decay_density_", cascades.numel(), lambda: ops.decay_density_(cascades, 0.9999)),
              ("occupancy_from_density", cascades.numel(),
               lambda: ops.occupancy_from_density(cascades, cascades_valid, 0.01)),
              ("spherical_harmonics", args.rays, lambda: harmonics(encoded_directions)))
    for name, count, fn in others:
        for backend in ("numba", "reference"):
            seconds, cpu = timed(with_backend(backend, fn), args.repeats)
            rows.append((name, backend, args.rays / seconds, count / seconds, seconds, cpu))

    print(f"{'op':<23}{'backend':<11}{'M rays/s':>10}{'M samples/s':>13}{'wall ms':>10}"
          f"{'CPU ms per ' + str(args.rays) + ' rays':>26}")
    for name, backend, rays_s, samples_s, seconds, cpu in rows:
        print(f"{name:<23}{backend:<11}{rays_s / 1e6:>10.3f}{samples_s / 1e6:>13.2f}{seconds * 1e3:>10.1f}"
              f"{cpu * 1e3:>26.1f}")
    by = {(r[0], r[1]): r[3] for r in rows}
    for op in ("march_rays", "composite fwd", "composite fwd+bwd") + tuple(name for name, _, _ in others):
        print(f"speed-up numba / reference, {op}: {by[(op, 'numba')] / by[(op, 'reference')]:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
