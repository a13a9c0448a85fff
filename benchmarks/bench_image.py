"""Fit the shared albert.exr (1024 x 1024) for N seconds with the default settings; print PSNR,
steps and samples/s.

    python benchmarks/bench_image.py                 # 60 s, defaults
    python benchmarks/bench_image.py --seconds 20 --batch-size 32768 --log2-hashmap-size 18

The data is found via $NGP_SHARED_DATA, else ``<repo root>/../shared/data``; absent -> skipped.
Timings depend on the machine's load: run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from ngp.image import DEFAULT_BATCH_SIZE, fit_image
from ngp.ops.backend import requested_backend


def shared_data() -> Path:
    return Path(os.environ.get("NGP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=None, help="step limit instead of / as well as time")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE)
    parser.add_argument("--log2-hashmap-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--image", default=None, help="another image instead of albert.exr")
    parser.add_argument("--out", default=None, help="keep the run folder here (default: a temporary one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()

    image = Path(args.image) if args.image else shared_data() / "image" / "albert.exr"
    if not args.image and not image.exists():
        print(f"SKIPPED: {image} not found (set NGP_SHARED_DATA to the shared data folder)")
        return 0
    config: dict = {}
    if args.log2_hashmap_size is not None:
        config["encoding"] = {"log2_hashmap_size": args.log2_hashmap_size}
    if args.learning_rate is not None:
        config["optimizer"] = {"nested": {"learning_rate": args.learning_rate}}

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        metrics = fit_image(image, out, seconds=args.seconds, steps=args.steps, config=config,
                            batch_size=args.batch_size, progress=not args.quiet)
    print(
        f"bench_image: {image.name} {metrics['image']['width']}x{metrics['image']['height']} | "
        f"PSNR {metrics['psnr']:.2f} dB | {metrics['steps']} steps in {metrics['seconds']:.1f} s | "
        f"{metrics['samples_per_second'] / 1e6:.3f} M samples/s | batch {metrics['batch_size']} | "
        f"log2_hashmap_size {metrics['config']['encoding']['log2_hashmap_size']} | "
        f"backend {requested_backend()} | torch threads {torch.get_num_threads()} | cpus {os.cpu_count()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
