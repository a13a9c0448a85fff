"""How often a fresh process's first NeRF density pass differs from its second: MKL's first-call race.

Usage::

    python benchmarks/check_first_exp.py --from-run runs/fox --processes 40

torch hands a large float32 ``exp`` to MKL's vector maths, one call per OpenMP thread; MKL 2024.2 (in
torch 2.x's wheels) chooses each function's kernel at its first call, and threads making that call
together can get a low-accuracy kernel for one of them (pytorch/pytorch#188792). ``import ngp`` calls
every such function once on one thread first (``NGP_SETTLE_VECTOR_MATH=0`` skips that). Each child
process loads the run, then computes the densities of the same 2^18 random points twice; the two must
be equal bit for bit. Prints, per setting, how many processes saw them differ and the largest
relative difference. The race is rare (5 of 60 processes without the warm-up on a trained fox
model here) and needs the run's earlier work in the process: a fresh model did not show it in 30.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = """
import sys, torch, ngp
from ngp.io.checkpoints import load_checkpoint
from ngp.nerf.trainer import build_nerf_task
from ngp.train.loop import load_task_state
tensors, meta = load_checkpoint(sys.argv[1], "nerf")
task = build_nerf_task(meta["config"], torch.device("cpu"), "auto")
load_task_state(task, tensors, meta, sys.argv[1])
lo, hi = task.grid.aabb
points = lo + torch.rand(1 << 18, 3, generator=torch.Generator().manual_seed(1)) * (hi - lo)
with torch.no_grad(), task.amp.autocast():
    first, second = (task.model.density_from_features(task.model.encode(points)) for _ in range(2))
print((first - second).abs().div(second.abs().clamp_min(1e-30)).max().item())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--from-run", required=True, help="a NeRF run folder (its checkpoint is loaded)")
    parser.add_argument("--processes", type=int, default=20, help="fresh processes per setting")
    args = parser.parse_args()
    if args.processes < 1:
        parser.error("--processes must be at least 1")
    if not os.path.exists(args.from_run):
        parser.error(f"--from-run: no such run folder: {args.from_run}")
    results: dict[str, list[float]] = {"warm-up (default)": [], "NGP_SETTLE_VECTOR_MATH=0": []}
    for _ in range(args.processes):
        for setting, values in results.items():  # alternating: the machine's state hits both alike
            env = dict(os.environ, NGP_SETTLE_VECTOR_MATH="0" if "=0" in setting else "1")
            out = subprocess.run([sys.executable, "-c", CHILD, args.from_run], env=env, capture_output=True,
                                 text=True, check=True)
            values.append(float(out.stdout.strip().splitlines()[-1]))
    for setting, values in results.items():
        differ = sum(v > 0 for v in values)
        print(f"{setting:28s} {differ} of {len(values)} processes differ (largest relative "
              f"difference {max(values):.1e})")


if __name__ == "__main__":
    main()
