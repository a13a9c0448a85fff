"""Throughput of the hash-grid encoding on the CPU: the Numba op vs the plain-PyTorch reference.

Configurations (Müller et al. 2022): L=16 levels, F=2 features, T=2^19, N_min=16, N_max=2048
(per_level_scale = exp(ln(2048/16)/15)), float32; 3-D (the paper's) and 2-D (images).

For each: M points/s for the forward pass, the forward rounded to bfloat16 (rendering's
``hash_grid_encode_as``; the reference converts its float32 result), forward + backward to the table,
and forward + backward to the table and the inputs, as the median of ``--repeats`` timed runs after
one warm-up (the reference, much slower, gets ``--ref-repeats``). The load average is printed: other processes on the machine make
timings noisy, so compare numbers from one run.

    python benchmarks/bench_encoding.py [--batch 262144] [--repeats 7] [--dims 3 2]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import numba
import ngp  # noqa: F401  (first: its OpenMP settings are read when torch loads libgomp)
import torch

from ngp.kernels.reference import hashgrid as reference
from ngp.kernels.reference.hashgrid import GridLayout


def paper_layout(n_dims: int) -> GridLayout:
    scale = math.exp(math.log(2048 / 16) / 15)
    return GridLayout.create(n_dims, 16, 2, 19, 16, scale)


def timed(fn, repeats: int) -> tuple[float, float, float]:
    """(median, min, median CPU / threads) seconds of ``repeats`` runs after one warm-up run.

    The last is the process CPU time divided by the thread count: what a run would take on an
    otherwise idle machine if the threads were busy throughout, an estimate that other processes
    competing for the cores disturb much less than the wall time.
    """
    fn()
    times, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - start)
        cpu.append((time.process_time() - start_cpu) / max(torch.get_num_threads(), numba.get_num_threads()))
    return statistics.median(times), min(times), statistics.median(cpu)


def measure(encode, encode_as, layout: GridLayout, batch: int, repeats: int) -> dict[str, tuple[float, float, float]]:
    """Seconds (median, min, CPU-based) per call of forward, forward to bfloat16 (``encode_as``),
    forward+backward(table), forward+backward(table, x)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, layout.n_dims, generator=g)
    table = torch.nn.Parameter((torch.rand(layout.n_rows, layout.n_features, generator=g) * 2 - 1) * 1e-4)
    grad_out = torch.randn(batch, layout.n_output_dims, generator=g)
    x_grad = x.clone().requires_grad_()

    def forward():
        with torch.no_grad():
            encode(x, table, layout)

    def forward_bfloat16():
        encode_as(x, table, layout, torch.bfloat16)

    def forward_backward_table():
        table.grad = None
        encode(x, table, layout).backward(grad_out)

    def forward_backward_both():
        table.grad = x_grad.grad = None
        encode(x_grad, table, layout).backward(grad_out)

    return {
        "forward": timed(forward, repeats),
        "forward->bfloat16": timed(forward_bfloat16, repeats),
        "fwd+bwd(table)": timed(forward_backward_table, repeats),
        "fwd+bwd(table,x)": timed(forward_backward_both, repeats),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2**18, help="points per call (default 2^18)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs of the Numba op (default 7)")
    parser.add_argument("--ref-repeats", type=int, default=2, help="timed runs of the reference (default 2)")
    parser.add_argument("--dims", type=int, nargs="+", default=[3, 2], help="input dimensions (default 3 2)")
    parser.add_argument("--no-reference", action="store_true", help="skip the (slow) reference")
    args = parser.parse_args()

    os.environ["NGP_BACKEND"] = "numba"
    from ngp.ops.hashgrid import hash_grid_encode, hash_grid_encode_as

    def reference_as(x, table, layout, dtype):
        with torch.no_grad():
            return reference.hash_grid_encode(x, table, layout).to(dtype)

    print(
        f"torch {torch.__version__} (threads {torch.get_num_threads()}), numba {numba.__version__} "
        f"(threads {numba.get_num_threads()}, layer {numba.config.THREADING_LAYER}), "
        f"batch {args.batch}, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    )
    print("M points/s: median of runs (best run in brackets); 'numba CPU': from CPU time / threads (see timed())\n")
    header = f"| {'config':<30} | {'pass':<17} | {'numba':>15} | {'numba CPU':>9} | {'reference':>15} | {'ratio':>7} |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for n_dims in args.dims:
        layout = paper_layout(n_dims)
        name = f"{n_dims}D L=16 F=2 T=2^19 float32"
        numba_times = measure(hash_grid_encode, hash_grid_encode_as, layout, args.batch, args.repeats)
        ref_times = None
        if not args.no_reference:
            ref_times = measure(reference.hash_grid_encode, reference_as, layout, args.batch, args.ref_repeats)
        for pass_name, (median, best, cpu) in numba_times.items():
            fast = f"{args.batch / median / 1e6:6.2f} ({args.batch / best / 1e6:5.2f})"
            fast_cpu = f"{args.batch / cpu / 1e6:6.2f}"
            slow, ratio = "-", "-"
            if ref_times is not None:
                ref_median, ref_best, _ = ref_times[pass_name]
                slow = f"{args.batch / ref_median / 1e6:6.3f} ({args.batch / ref_best / 1e6:5.3f})"
                ratio = f"{ref_median / median:6.1f}x"
            row = f"| {name:<30} | {pass_name:<17} | {fast:>15} | {fast_cpu:>9} | {slow:>15} | {ratio:>7} |"
            print(row, flush=True)
    print(f"\nload average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
