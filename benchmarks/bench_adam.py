"""The Numba Adam step over a hash table: sparse (tiny-cuda-nn's: rows without a gradient keep their
moments) against dense (every row decays), by the fraction of rows that have a gradient.

    python benchmarks/bench_adam.py [--log2-rows 19] [--levels 16] [--repeats 10]

Prints the median milliseconds per step and the ratio sparse / dense. The sparse step also reads the
state of the rows it skips (see ``ngp.kernels.cpu.adam.adam_step_``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import ngp  # noqa: F401  (first: its OpenMP settings are read when torch loads libgomp)
import torch

from ngp.kernels.cpu import adam


def median_ms(grad: torch.Tensor, sparse: bool, repeats: int) -> float:
    n = grad.numel()
    param, m, v = torch.randn(n), torch.zeros(n), torch.zeros(n)
    steps = torch.zeros(n, dtype=torch.int32) if sparse else None
    adam.adam_step_(param, grad, m, v, 1, 1e-2, 0.9, 0.99, 1e-15, 0.0, steps)  # compile, first touch
    times = []
    for step in range(2, repeats + 2):
        start = time.perf_counter()
        adam.adam_step_(param, grad, m, v, step, 1e-2, 0.9, 0.99, 1e-15, 0.0, steps)
        times.append(time.perf_counter() - start)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--log2-rows", type=int, default=19)
    parser.add_argument("--levels", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    n = 2**args.log2_rows * args.levels * 2  # F = 2 features per row
    rng = np.random.default_rng(0)
    print(f"{n / 1e6:.1f} M table entries, {torch.get_num_threads()} threads, median of {args.repeats} steps")
    print(f"{'rows with a gradient':>20} {'sparse ms':>10} {'dense ms':>9} {'sparse/dense':>13}")
    for fraction in (0.05, 0.3, 1.0):
        grad = torch.from_numpy((rng.random(n) < fraction) * rng.standard_normal(n)).float()
        sparse, dense = median_ms(grad, True, args.repeats), median_ms(grad, False, args.repeats)
        print(f"{fraction:>20.0%} {sparse:>10.1f} {dense:>9.1f} {sparse / dense:>13.2f}")


if __name__ == "__main__":
    main()
