"""Peak memory of fitting a very large 8-bit RGB PNG (the paper's gigapixel task), end to end.

    python benchmarks/bench_gigapixel.py                      # 1000 MP: ~1 min to make, ~15 min in all
    python benchmarks/bench_gigapixel.py --megapixels 100 --steps 30

Makes a PNG with structure at every scale (smooth colour fields, fine stripes) in a temporary folder,
runs ``ngp image fit`` on it in a child process for ``--steps`` steps (reading, training, evaluating every pixel, writing
``reconstruction.png``) and prints the process's peak resident memory. Most of the time goes to the
final full-resolution evaluation and the PNG writes.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def make_png(path: Path, megapixels: float) -> tuple[int, int]:
    width = 32768 if megapixels >= 100 else 8192
    height = max(2, round(megapixels * 1e6 / width))
    pixels = np.empty((height, width, 3), np.uint8)
    x = np.arange(width, dtype=np.float32)
    for top in range(0, height, 1024):
        y = np.arange(top, min(top + 1024, height), dtype=np.float32)[:, None]
        rows = slice(top, top + len(y))
        pixels[rows, :, 0] = (127.5 + 127.5 * np.sin(x / 900.0 + y / 1300.0)).astype(np.uint8)
        pixels[rows, :, 1] = (127.5 + 127.5 * np.cos(x / 37.0) * np.sin(y / 2100.0)).astype(np.uint8)
        pixels[rows, :, 2] = ((x[None, :] + y) % 256).astype(np.uint8)
    previous, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
    try:
        Image.fromarray(pixels).save(path, compress_level=1)
    finally:
        Image.MAX_IMAGE_PIXELS = previous
    return width, height


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megapixels", type=float, default=1000.0)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        png, run = Path(tmp) / "large.png", Path(tmp) / "run"
        start = time.perf_counter()
        width, height = make_png(png, args.megapixels)
        made = time.perf_counter() - start
        start = time.perf_counter()
        # a child process, so that its peak memory is the fit's alone (not this script's PNG maker's)
        subprocess.run([sys.executable, "-m", "ngp", "image", "fit", str(png), "--out", str(run), "--steps",
                        str(args.steps), "--quiet", "--checkpoint-every", "0"], check=True)
        seconds = time.perf_counter() - start
        psnr = json.loads((run / "metrics.json").read_text())["psnr"]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20  # KiB -> GiB
    print(f"bench_gigapixel: {width}x{height} = {width * height / 1e6:.0f} MP 8-bit RGB | made in {made:.0f} s | "
          f"ngp image fit: {args.steps} steps + outputs in {seconds:.0f} s | PSNR {psnr:.2f} dB | "
          f"peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()
