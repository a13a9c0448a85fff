"""M points/s of the hash-grid encoding on a GPU: Triton kernels vs the plain-PyTorch reference.

    python benchmarks/bench_encoding_gpu.py                          # paper config, 2^18 and 2^20 points
    python benchmarks/bench_encoding_gpu.py --table-dtype float16    # half-precision table storage
    python benchmarks/bench_encoding_gpu.py --smoke                  # no GPU: tiny run in Triton's interpreter

Configuration (Müller et al. 2022, the paper's): 3-D inputs, L=16 levels, F=2 features, T=2^19,
N_min=16, N_max=2048, linear interpolation, uniform random points. For each batch size it prints the
median over ``--repeats`` runs (after ``--warmup`` runs, which include Triton's compilation) of

* ``forward``: encode the batch;
* ``forward+backward``: encode, then the gradient of the table (zeroed float32 buffer, atomic adds),
  as in training where the inputs need no gradient,

for: the Triton kernels called directly, the differentiable op ``ngp.ops.hash_grid_encode`` with
``NGP_BACKEND=triton`` (autograd included: what a model gets), and the reference
(``ngp.kernels.reference.hashgrid``, autograd). Every run is bracketed by ``torch.cuda.synchronize()``.
The reference is skipped above ``--reference-max`` points (its temporaries grow as N * 2^d * L).

Without a CUDA device the script stops with a message, unless ``--smoke`` (which checks that it
runs, on a few hundred points on the CPU; its figures mean nothing).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def _fmt(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.3g}"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1 << 18, 1 << 20], help="points per batch")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--table-dtype", choices=("float32", "float16"), default="float32")
    parser.add_argument("--reference-max", type=int, default=1 << 20, help="largest batch for the reference")
    parser.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny batch (no GPU needed)")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before the kernels are decorated (see ngp.kernels.triton)
        args.batch, args.repeats, args.warmup, args.reference_max = [256], 1, 1, 256
    import torch

    from ngp.kernels import triton as triton_kernels

    if not triton_kernels.available():
        print("triton is not installed: pip install 'ngp[gpu]'", file=sys.stderr)
        return 1
    if not args.smoke and not torch.cuda.is_available():
        print("no CUDA GPU here: this benchmark measures the GPU path (use --smoke to check that it runs)",
              file=sys.stderr)
        return 1

    from ngp.kernels.reference import hashgrid as reference
    from ngp.kernels.reference.hashgrid import INTERPOLATIONS, GridLayout
    from ngp.kernels.triton import hashgrid as tk
    from ngp.ops import hash_grid_encode

    device = torch.device("cpu" if args.smoke else "cuda")
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    dtype = getattr(torch, args.table_dtype)
    layout = GridLayout.create(3, 16, 2, 19, 16, (2048 / 16) ** (1 / 15))
    g = torch.Generator(device=device).manual_seed(0)
    master = (torch.rand(layout.n_rows, 2, generator=g, device=device) * 2 - 1) * 1e-4  # float32 parameter
    table = master.to(dtype)  # what the kernels gather from (the op casts the master once per call)
    meta, scales = tk.constants(layout, device, torch.float32)
    linear = INTERPOLATIONS["Linear"]

    def timed(fn) -> float:
        for _ in range(args.warmup):
            fn()
        times = []
        for _ in range(args.repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"device: {name}; table {args.table_dtype}, {layout.n_rows} rows x 2; L=16, T=2^19, N 16..2048")
    print(f"{'implementation':<44} {'batch':>9} {'forward':>12} {'fwd+bwd':>12}   (M points/s, median of "
          f"{args.repeats})")
    rows = []
    for n in args.batch:
        x = torch.rand(n, 3, generator=g, device=device)
        grad_out = torch.randn(n, layout.n_output_dims, generator=g, device=device)  # features are float32
        out = torch.empty(n, layout.n_output_dims, dtype=torch.float32, device=device)
        grad_table = torch.empty(table.shape, dtype=torch.float32, device=device)

        def kernel_fwd():
            tk.encode(x, table, meta, scales, linear, out)

        def kernel_fwd_bwd():
            tk.encode(x, table, meta, scales, linear, out)
            tk.table_grad(x, grad_out, meta, scales, linear, grad_table)  # zeroes the buffer first

        param = master.clone().requires_grad_()  # float32 master; --table-dtype is the storage dtype

        def op_fwd():
            with torch.no_grad():
                hash_grid_encode(x, param, layout, "Linear", storage_dtype=dtype)

        def op_fwd_bwd():
            param.grad = None
            hash_grid_encode(x, param, layout, "Linear", storage_dtype=dtype).backward(grad_out)

        def ref_fwd():  # the baseline: the plain-PyTorch definition on the float32 table
            with torch.no_grad():
                reference.hash_grid_encode(x, master, layout, "Linear")

        def ref_fwd_bwd():
            param.grad = None
            reference.hash_grid_encode(x, param, layout, "Linear").backward(grad_out)

        os.environ["NGP_BACKEND"] = "triton"
        candidates = [("Triton kernels (direct)", kernel_fwd, kernel_fwd_bwd),
                      ("ngp.ops.hash_grid_encode, NGP_BACKEND=triton", op_fwd, op_fwd_bwd)]
        if n <= args.reference_max:
            candidates.append(("plain-PyTorch reference", ref_fwd, ref_fwd_bwd))
        for label, fwd, fwd_bwd in candidates:
            try:
                t_fwd, t_both = timed(fwd), timed(fwd_bwd)
            except torch.cuda.OutOfMemoryError:
                print(f"{label:<44} {n:>9} {'out of memory':>25}")
                continue
            rows.append((label, n, n / t_fwd / 1e6, n / t_both / 1e6))
            print(f"{label:<44} {n:>9} {_fmt(rows[-1][2]):>12} {_fmt(rows[-1][3]):>12}", flush=True)
        del x, grad_out, out, grad_table, param
    by_key = {(label, n): (f, b) for label, n, f, b in rows}
    for n in args.batch:
        ref = by_key.get(("plain-PyTorch reference", n))
        for label in ("Triton kernels (direct)", "ngp.ops.hash_grid_encode, NGP_BACKEND=triton"):
            fast = by_key.get((label, n))
            if fast and ref:
                print(f"batch {n}: {label} / reference = {fast[0] / ref[0]:.1f}x forward, "
                      f"{fast[1] / ref[1]:.1f}x forward+backward")
    return 0


if __name__ == "__main__":
    sys.exit(main())
