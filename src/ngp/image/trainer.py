"""Fitting an image: the paper's "gigapixel image" task, as a :class:`~ngp.train.loop.Task`.

Each step draws ``training.batch_size`` random continuous positions, bilinearly interpolates the
target there (:class:`ngp.image.data.ImageTarget`) and returns the configured loss; the shared loop
(:mod:`ngp.train.loop`) does the rest. At the end the model is evaluated at every pixel centre and the
run folder receives, besides the loop's ``checkpoint/``, ``metrics.json`` and ``training.png``::

    reconstruction.png   the model at the image's resolution (sRGB; EXR inputs are sRGB-encoded)
    reconstruction.exr   only for float inputs: the model's linear values

PSNR is ``10 log10(1 / MSE)`` over all pixels and channels, on values in ``[0, 1]`` (uint8 / 255,
uint16 / 65535, floats as loaded), with prediction and target clipped to ``[0, 1]``. For OpenEXR inputs
that is the linear values as loaded, as instant-ngp reports it (not the sRGB-encoded picture). It is
measured on the pixels trained on: the image task fits one image, it has no held-out view.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ngp.image.data import ImageTarget
from ngp.image.model import build_image_model, count_parameters, resolve_for_image
from ngp.io.images import ImageData, linear_to_srgb, read_image, srgb_to_linear, write_image
from ngp.io.runs import RunFolder
from ngp.losses import build_loss, l2
from ngp.optim import build_optimizer
from ngp.train.loop import Batch, LoopState
from ngp.train.precision import MixedPrecision
from ngp.train.session import TrainRequest, input_path, train_run

PRIMITIVE = "image"
#: Pixels evaluated per chunk in the final evaluation and in rendering.
EVAL_CHUNK = 1 << 18


class ImageTask:
    """One image being fitted (see the module doc). Built by :func:`build_image_task`."""

    primitive = PRIMITIVE

    def __init__(self, image: ImageData, config: dict[str, Any], device: torch.device, precision: str):
        training = config["training"]
        self.image = image
        self.config = resolve_for_image(config, image.width, image.height)
        self.batch_size = _positive_int(training["batch_size"], "batch_size")
        self.amp = MixedPrecision(device, precision)
        self.loss_fn = build_loss(self.config["loss"])
        self.model = build_image_model(self.config, image.channels).to(device)
        self.optimizer = build_optimizer(self.config["optimizer"], self.model)
        self.target = ImageTarget(image, device)
        self.generator = torch.Generator(device).manual_seed(int(training["seed"]))

    # -- the step -----------------------------------------------------------------------------------
    def training_batch(self, step: int) -> Batch:
        xy, values = self.target.sample(self.batch_size, self.generator)
        prediction = self.model(xy)  # float32: ngp.Network leaves autocast in float32
        return Batch(self.loss_fn(prediction, values), self.batch_size, (prediction, values))

    def after_step(self, batch: Batch, applied: bool) -> dict[str, float]:
        prediction, values = batch.extra
        mse = float(batch.loss.detach()) if self.loss_fn is l2 else l2(prediction.detach(), values).item()
        # batch targets are bilinear blends of pixels (smoother than the pixels): this runs above the
        # PSNR at pixel centres
        return {"psnr": psnr_from_mse(mse)}

    def evaluate(self) -> dict[str, float]:
        psnr, _, _ = evaluate(self.model, self.target, self.image.linear, keep_display=False)
        return {"psnr_all_pixels": round(psnr, 4)}

    def write_outputs(self, run: RunFolder, state: LoopState, progress: bool) -> dict[str, Any]:
        psnr, display, values = evaluate(self.model, self.target, self.image.linear, keep_values=self.image.is_float,
                                         progress=progress)
        write_image(run.file("reconstruction.png"), display)
        if values is not None:
            linear = values if self.image.linear else srgb_to_linear(values).astype(np.float32)
            write_image(run.file("reconstruction.exr"), linear)
        return {"psnr": round(psnr, 4),
                "psnr_note": "10*log10(1/MSE) over all pixels (the image trained on) at their centres, values in "
                             "[0,1] clipped" + (" (linear, as loaded)" if self.image.linear else ""),
                "batch_size": self.batch_size, "n_params": count_parameters(self.model), "image": image_info(self.image)}

    # -- state --------------------------------------------------------------------------------------
    def data_identity(self) -> dict[str, Any]:
        info = image_info(self.image)
        return {**{k: info[k] for k in ("source", "width", "height", "channels", "dtype")},
                "fingerprint": fingerprint(self.image.array)}

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"generator": self.generator.get_state()}, {"image": image_info(self.image)}

    def load_extra_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        if "generator" in tensors:
            self.generator.set_state(tensors["generator"])


def build_image_task(config: dict[str, Any], device: torch.device, precision: str) -> ImageTask:
    """Read the image named by ``config["training"]["data"]`` and build the task."""
    training = config["training"]
    if not training.get("data"):
        raise ValueError("no image given to fit")
    image = read_image(training["data"], keep_alpha=bool(training["keep_alpha"]))
    return ImageTask(image, config, device, precision)


def fit_image(image: str | Path, out: str | Path, seconds: float | None = None, steps: int | None = None,
              config: str | Path | Mapping[str, Any] | None = None, seed: int | None = None,
              batch_size: int | None = None, keep_alpha: bool | None = None, progress: bool = True,
              device: str = "auto", precision: str = "auto", resume: bool = False, force: bool = False,
              checkpoint_every: float | None = None, eval_at=None) -> dict[str, Any]:
    """Fit ``image`` (a file or ``builtin:NAME``) into the run folder ``out``; returns the metrics.

    Example:
        >>> metrics = fit_image("builtin:astronaut", "runs/astronaut", seconds=60)
        >>> metrics["psnr"], metrics["steps"]
    """
    overrides = {"data": input_path(image), "seconds": seconds, "steps": steps, "seed": seed, "batch_size": batch_size,
                 "keep_alpha": keep_alpha, "checkpoint_every": checkpoint_every, "eval_at": eval_at}
    request = TrainRequest(out, config, overrides, resume, force, device, precision, progress)
    return train_run(PRIMITIVE, build_image_task, request)


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def psnr_from_mse(mse: float) -> float:
    """``10 log10(1 / mse)`` for values in [0, 1]; infinite for a perfect match."""
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


@torch.inference_mode()
def evaluate(model, target: ImageTarget, linear: bool, keep_values: bool = False, progress: bool = False,
             keep_display: bool = True):
    """The model at every pixel centre, in row chunks -> ``(psnr, display uint8 [H, W, C], values)``.

    ``display`` is what ``reconstruction.png`` shows (sRGB-encoded if the data is ``linear``; None
    unless ``keep_display``: a gigapixel picture is 3 GB); ``values`` is the float32 ``[H, W, C]``
    prediction when ``keep_values`` (else None).
    """
    h, w, c = target.height, target.width, target.channels
    display = np.empty((h, w, c), dtype=np.uint8) if keep_display else None
    values = np.empty((h, w, c), dtype=np.float32) if keep_values else None
    squared_error = 0.0
    chunks = list(target.row_chunks(EVAL_CHUNK))
    # A bar only where evaluation takes a while (about 4M pixels and up).
    for rows in tqdm(chunks, desc="evaluating", unit="chunk", disable=not progress or len(chunks) < 16, leave=False):
        prediction = model(target.pixel_centres(rows)).float()
        clipped = prediction.clamp(0.0, 1.0)
        squared_error += (clipped - target.pixels(rows).clamp_(0.0, 1.0)).square().sum(dtype=torch.float64).item()
        if display is not None:
            shown = linear_to_srgb(clipped) if linear else clipped
            display[rows] = (shown * 255.0 + 0.5).to(torch.uint8).view(-1, w, c).cpu().numpy()
        if values is not None:
            values[rows] = prediction.view(-1, w, c).cpu().numpy()
    return psnr_from_mse(squared_error / (h * w * c)), display, values


def fingerprint(array: np.ndarray) -> str:
    """A cheap content hash (a sparse lattice of pixels): tells a changed image from the one trained on."""
    import hashlib

    step_y, step_x = max(1, array.shape[0] // 257), max(1, array.shape[1] // 263)
    return hashlib.sha1(np.ascontiguousarray(array[::step_y, ::step_x]).tobytes()).hexdigest()[:16]


def image_info(image: ImageData) -> dict[str, Any]:
    return {
        "source": image.source, "width": image.width, "height": image.height, "channels": image.channels,
        "channel_names": list(image.channel_names), "dtype": str(image.array.dtype), "linear": image.linear,
    }


def summary_line(metrics: Mapping[str, Any], out: Path | str) -> str:
    image = metrics["image"]
    rate = metrics["samples_per_second"] or 0.0
    return (
        f"fitted {image['source']} ({image['width']}x{image['height']}x{image['channels']}): "
        f"PSNR {metrics['psnr']:.2f} dB after {metrics['steps']} steps in {metrics['seconds']:.1f} s "
        f"({rate / 1e6:.2f}M samples/s, {metrics['n_params'] / 1e6:.2f}M params); wrote {out}"
    )


__all__ = ["ImageTask", "build_image_task", "evaluate", "fit_image", "psnr_from_mse", "summary_line"]
