"""Rendering a fitted image model at any resolution, in chunks so large renders fit in memory.

Render evaluates the model at pixel centres ``((j + 0.5)/W, (i + 0.5)/H)`` of the requested size, so
rendering at the training size reproduces ``reconstruction.png`` and other sizes resample the same
continuous image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ngp.image.data import pixel_centres
from ngp.image.model import build_image_model
from ngp.io.checkpoints import CheckpointError, load_checkpoint
from ngp.train.loop import load_trained_model
from ngp.io.files import check_writable_file
from ngp.io.images import READ_EXTENSIONS, linear_to_srgb, srgb_to_linear, supported_formats, write_image
from ngp.train.precision import resolve_device

#: Pixels evaluated per chunk.
RENDER_CHUNK = 1 << 18
#: Largest render side; beyond this a typo (an extra zero) is more likely than intent.
MAX_SIDE = 1 << 17


def load_image_model(run: str | Path, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the model of an ``ngp image fit`` run (its folder, or its checkpoint folder) on ``device``
    -> ``(model in eval mode with the averaged weights, image info)``; the info says e.g. ``linear``."""
    tensors, meta = load_checkpoint(run, primitive="image")
    image = meta.get("task", {}).get("image")
    if not isinstance(image, dict) or "channels" not in image:
        raise CheckpointError(f"{run}: the image checkpoint does not describe its image")
    model = build_image_model(meta["config"], int(image["channels"]))
    load_trained_model(model, tensors, meta, run)
    return model.to(resolve_device(device)).eval(), image


def render_image(
    checkpoint: str | Path | tuple[torch.nn.Module, dict[str, Any]],
    width: int,
    height: int,
    display: bool = False,
    chunk: int = RENDER_CHUNK,
    progress: bool = False,
) -> np.ndarray:
    """Evaluate a fitted image model at the pixel centres of a ``width x height`` grid.

    Returns float32 ``[height, width, C]`` raw model values (in the training data's scale: linear for
    EXR inputs, display-encoded otherwise), or with ``display=True`` uint8 sRGB values clipped to
    ``[0, 255]`` (what a PNG shows; 4x less memory for big renders).

    Example:
        >>> image = render_image("runs/astronaut/checkpoint", 1024, 1024, display=True)
        >>> image.shape, image.dtype
        ((1024, 1024, 3), dtype('uint8'))
    """
    _check_size(width, height)
    model, image = load_image_model(checkpoint) if not isinstance(checkpoint, tuple) else checkpoint
    linear = bool(image.get("linear", False))
    channels = model.n_output_dims
    device = next(model.parameters()).device
    out = np.empty((height, width, channels), dtype=np.uint8 if display else np.float32)
    rows_per_chunk = max(1, chunk // width)
    with torch.inference_mode():
        starts = range(0, height, rows_per_chunk)
        for start in tqdm(starts, desc="rendering", unit="chunk", disable=not progress or len(starts) < 16, leave=False):
            stop = min(start + rows_per_chunk, height)
            values = model(pixel_centres(width, height, start, stop).to(device)).float()
            if display:
                values = values.clamp(0.0, 1.0)
                values = (linear_to_srgb(values) if linear else values).mul(255.0).add(0.5).to(torch.uint8)
            out[start:stop] = values.view(stop - start, width, channels).cpu().numpy()
    return out


def _check_size(width: int, height: int) -> None:
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIDE:
            raise ValueError(f"render {name} must be an integer in [1, {MAX_SIDE}], got {value!r}")


def render_to_file(checkpoint: str | Path, width: int, height: int, out: str | Path, progress: bool = True,
                   device: str | torch.device = "auto") -> Path:
    """Render and write ``out``: PNG/JPEG as 8-bit sRGB; EXR as linear float (a model fitted to an
    sRGB image is linearised); TIFF as the raw float32 values. Checks ``out`` before rendering."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in READ_EXTENSIONS:
        raise ValueError(
            f"unsupported output format {suffix or '(no extension)'!r} for {out}; supported: {supported_formats()}"
        )
    _check_size(width, height)
    check_writable_file(out)
    loaded = load_image_model(checkpoint, device)
    if READ_EXTENSIONS[suffix] in ("PNG", "JPEG"):
        write_image(out, render_image(loaded, width, height, display=True, progress=progress))
    else:
        values = render_image(loaded, width, height, progress=progress)
        if suffix == ".exr" and not loaded[1].get("linear", False):
            values = srgb_to_linear(values).astype(np.float32)
        write_image(out, values)
    return out
