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

# Before torch loads OpenMP: idle OpenMP threads sleep instead of spinning. Torch's and Numba's thread
# pools alternate every step, and spinning threads of one steal the cores from the other (measured on
# 2 loaded cores: 0.05 M samples/s spinning vs 0.44 M samples/s passive). `--spin` keeps the default.
if "--spin" not in sys.argv:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from ngp.image import fit_image, image_config  # noqa: E402
from ngp.ops.backend import requested_backend  # noqa: E402


def shared_data() -> Path:
    return Path(os.environ.get("NGP_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))


def _load() -> str:
    try:
        return "/".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


def _innermost(optimizer: dict) -> dict:
    while "nested" in optimizer:
        optimizer = optimizer["nested"]
    return optimizer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=None, help="step limit instead of / as well as time")
    parser.add_argument("--batch-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--log2-hashmap-size", type=int, default=None)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--config", default=None, help="config file merged over the defaults (before the flags above)")
    parser.add_argument("--image", default=None, help="another image instead of albert.exr")
    parser.add_argument("--out", default=None, help="keep the run folder here (default: a temporary one)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--spin", action="store_true", help="leave OMP_WAIT_POLICY unset (OpenMP's spinning default)")
    args = parser.parse_args()

    image = Path(args.image) if args.image else shared_data() / "image" / "albert.exr"
    if not args.image and not image.exists():
        print(f"SKIPPED: {image} not found (set NGP_SHARED_DATA to the shared data folder)")
        return 0
    config = image_config(args.config) if args.config else {}
    if args.log2_hashmap_size is not None:
        encoding = {**config.get("encoding", {}), "log2_hashmap_size": args.log2_hashmap_size}
        config = image_config({**config, "encoding": encoding})
    if args.learning_rate is not None:
        config = image_config(config)
        _innermost(config["optimizer"])["learning_rate"] = args.learning_rate

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "run"
        metrics = fit_image(image, out, seconds=args.seconds, steps=args.steps, config=config or None,
                            batch_size=args.batch_size, progress=not args.quiet)
    print(
        f"bench_image: {image.name} {metrics['image']['width']}x{metrics['image']['height']} | "
        f"PSNR {metrics['psnr']:.2f} dB | {metrics['steps']} steps in {metrics['seconds']:.1f} s | "
        f"{metrics['samples_per_second'] / 1e6:.3f} M samples/s | batch {metrics['batch_size']} | "
        f"log2_hashmap_size {metrics['config']['encoding']['log2_hashmap_size']} | "
        f"backend {requested_backend()} | torch threads {torch.get_num_threads()} | cpus {os.cpu_count()} | "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')} | load avg {_load()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
