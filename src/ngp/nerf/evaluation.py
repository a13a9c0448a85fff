"""Evaluating a NeRF on held-out views: full-image renders, PSNR and SSIM per image.

As the NeRF papers: images in [0, 1], transparent ground truth composited on white for Blender
data (``dataset.white_background``) and the prediction rendered over the same colour; PSNR from
the mean squared error over all pixels and channels, SSIM from ``skimage.metrics.structural_similarity``
(``channel_axis=-1, data_range=1``).

Example::

    >>> result = evaluate(renderer, load_dataset("data/nerf/lego", "val", downscale=2))
    >>> result.mean_psnr, result.per_image[0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
from skimage.metrics import structural_similarity
from tqdm.auto import tqdm

from ngp.io.files import atomic_path, prepare_output_dir
from ngp.nerf.datasets import NerfDataset
from ngp.nerf.renderer import Renderer

__all__ = ["psnr", "ssim", "evaluate", "EvalResult", "background_for", "ground_truth",
           "to_uint8", "write_png", "side_by_side"]


def psnr(prediction: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Peak signal-to-noise ratio (dB) of images in [0, 1]: ``-10 log10(MSE)``."""
    mse = float(((torch.as_tensor(prediction, dtype=torch.float64)
                  - torch.as_tensor(target, dtype=torch.float64)) ** 2).mean())
    return -10.0 * math.log10(max(mse, 1e-12))


def ssim(prediction: np.ndarray | torch.Tensor, target: np.ndarray | torch.Tensor) -> float:
    """Structural similarity of two ``[H, W, 3]`` images in [0, 1] (scikit-image's, 7x7 window)."""
    a = np.asarray(torch.as_tensor(prediction, dtype=torch.float64))
    b = np.asarray(torch.as_tensor(target, dtype=torch.float64))
    return float(structural_similarity(a, b, channel_axis=-1, data_range=1.0))


def background_for(dataset: NerfDataset) -> torch.Tensor:
    """The evaluation background ``[3]``: white for Blender data, black otherwise (opaque images)."""
    return torch.ones(3) if dataset.white_background else torch.zeros(3)


def ground_truth(dataset: NerfDataset, index: int, background: torch.Tensor) -> torch.Tensor:
    """Image ``index`` as ``[H, W, 3]`` float in [0, 1], composited on ``background``."""
    _, _, rgba = dataset.pixels_for_image(index)
    image = dataset.images[index]
    rgb = rgba[:, :3] * rgba[:, 3:] + background * (1.0 - rgba[:, 3:])
    return rgb.reshape(image.shape[0], image.shape[1], 3)


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[H, W, C]`` float in [0, 1] -> uint8 (rounded)."""
    a = np.asarray(torch.as_tensor(image, dtype=torch.float32).clamp(0, 1))
    return np.round(a * 255.0).astype(np.uint8)


def write_png(path: str | Path, image: torch.Tensor | np.ndarray) -> Path:
    """Write a float ``[H, W, C]`` (or uint8) image as PNG, atomically."""
    import imageio.v3 as iio

    array = image if isinstance(image, np.ndarray) and image.dtype == np.uint8 else to_uint8(image)
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, array, extension=".png")
    return Path(path)


def side_by_side(*images: torch.Tensor, gap: int = 4) -> torch.Tensor:
    """Images ``[H, W, 3]`` of equal height, left to right with a white ``gap`` between them."""
    h = images[0].shape[0]
    parts = []
    for i, im in enumerate(images):
        if i:
            parts.append(torch.ones(h, gap, 3))
        parts.append(torch.as_tensor(im, dtype=torch.float32))
    return torch.cat(parts, dim=1)


@dataclass
class EvalResult:
    """``per_image``: one dict per image (``index``, ``file``, ``psnr``, ``ssim``, ``seconds``,
    ``samples``); means over them; ``renders``: the predicted ``[H, W, 3]`` images (when kept)."""

    per_image: list[dict] = field(default_factory=list)
    renders: list[torch.Tensor] = field(default_factory=list)

    @property
    def mean_psnr(self) -> float:
        return float(np.mean([r["psnr"] for r in self.per_image])) if self.per_image else float("nan")

    @property
    def mean_ssim(self) -> float:
        values = [r["ssim"] for r in self.per_image if "ssim" in r]
        return float(np.mean(values)) if values else float("nan")

    def summary(self) -> dict:
        seconds = sum(r["seconds"] for r in self.per_image)
        samples = sum(r["samples"] for r in self.per_image)
        return {"n_images": len(self.per_image), "mean_psnr": self.mean_psnr, "mean_ssim": self.mean_ssim,
                "render_seconds": seconds, "render_samples_per_second": samples / max(seconds, 1e-9),
                "images_per_second": len(self.per_image) / max(seconds, 1e-9),
                "per_image": self.per_image}


def evaluate(renderer: Renderer, dataset: NerfDataset, indices: Iterable[int] | None = None,
             out_dir: str | Path | None = None, with_ssim: bool = True, keep_renders: bool = False,
             progress: bool = True, chunk: int | None = None) -> EvalResult:
    """Render the views ``indices`` (default: all) of ``dataset`` and compare them with the images.

    With ``out_dir``, writes ``out_dir/XX.png`` per image: prediction | ground truth side by side.
    """
    import time

    indices = list(range(len(dataset))) if indices is None else list(indices)
    background = background_for(dataset)
    if out_dir is not None:
        out_dir = prepare_output_dir(out_dir)
    result = EvalResult()
    for i in tqdm(indices, desc="evaluating", unit="image", disable=not progress, dynamic_ncols=True):
        start = time.perf_counter()
        render = renderer.render_image(dataset.cameras, i, background, chunk=chunk)
        seconds = time.perf_counter() - start
        target = ground_truth(dataset, i, background)
        pred = render["color"]
        entry = {"index": i, "file": Path(dataset.file_paths[i]).name, "psnr": psnr(pred, target),
                 "seconds": seconds, "samples": render["n_samples"]}
        if with_ssim:
            entry["ssim"] = ssim(pred, target)
        result.per_image.append(entry)
        if keep_renders:
            result.renders.append(pred)
        if out_dir is not None:
            write_png(Path(out_dir) / f"{i:03d}.png", side_by_side(pred, target))
    return result
