"""Fitting an image: the paper's "gigapixel image" task, on whatever image you give it.

Each step draws ``batch_size`` random continuous positions, bilinearly interpolates the target there
(:class:`ngp.image.data.ImageTarget`), and takes one optimizer step on the configured loss. At the end
the model is evaluated at every pixel centre and the run folder receives::

    reconstruction.png   the model at the image's resolution (sRGB; EXR inputs are sRGB-encoded)
    reconstruction.exr   only for float inputs: the model's linear values
    training.png         loss and PSNR curves
    checkpoint/          model.safetensors + config.json, enough for ``ngp image render``
    metrics.json         psnr, steps, seconds, samples_per_second, n_params, image, config (written last)

PSNR is ``10 log10(1 / MSE)`` over all pixels and channels, on values in ``[0, 1]`` (uint8 / 255,
uint16 / 65535, floats as loaded), with prediction and target clipped to ``[0, 1]``. For OpenEXR inputs
that is the linear values as loaded, as instant-ngp reports it (not the sRGB-encoded picture).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from ngp.image.data import ImageTarget
from ngp.image.model import build_image_model, count_parameters, image_config, resolve_for_image
from ngp.io.checkpoints import save_checkpoint
from ngp.io.files import atomic_path, prepare_output_dir
from ngp.io.images import ImageData, linear_to_srgb, read_image, write_image
from ngp.losses import build_loss, l2
from ngp.optim import build_optimizer
from ngp.training import MixedPrecision, resolve_device

#: Chosen by measurement on albert.exr, 2 CPU cores: 2^15 reached a higher PSNR than 2^16 for the same
#: samples at about the same cost per sample; 2^14 was noisier and costlier per sample; instant-ngp's
#: 2^18 (a GPU batch) gives too few steps in a minute on a CPU.
DEFAULT_BATCH_SIZE = 1 << 15
#: instant-ngp's batch on a GPU, where a step of 2^18 samples costs little more than one of 2^15.
DEFAULT_GPU_BATCH_SIZE = 1 << 18
#: Pixels evaluated per chunk in the final evaluation and in rendering.
EVAL_CHUNK = 1 << 18


def fit_image(
    image_path: str | Path,
    out_dir: str | Path,
    seconds: float | None = None,
    steps: int | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = True,
    keep_alpha: bool = False,
    device: str | torch.device = "auto",
    precision: str = "auto",
) -> dict[str, Any]:
    """Fit ``image_path`` (a file or ``builtin:NAME``) for ``seconds`` and/or ``steps`` (whichever ends
    first) and write the run folder ``out_dir``. Returns the metrics written to ``metrics.json``.

    ``device`` (``auto``: CUDA when available) is where the image, model and optimizer live;
    ``precision`` (``auto``: float16 mixed precision on CUDA, float32 on a CPU) is the MLP's, see
    :class:`ngp.training.MixedPrecision`. ``batch_size`` defaults to 2^15 on a CPU, 2^18 on a GPU.

    Everything that can be wrong (config, image, output folder) is checked before training starts.

    Example:
        >>> metrics = fit_image("builtin:astronaut", "runs/astronaut", seconds=60)
        >>> metrics["psnr"], metrics["steps"]  # on 2 busy CPU cores
        (41.96, 1959)
    """
    device = resolve_device(device)
    amp = MixedPrecision(device, precision)
    if batch_size is None:
        batch_size = DEFAULT_GPU_BATCH_SIZE if device.type == "cuda" else DEFAULT_BATCH_SIZE
    _check_budget(seconds, steps, batch_size)
    cfg = image_config(config)
    loss_fn = build_loss(cfg["loss"])
    image = read_image(image_path, keep_alpha=keep_alpha)
    cfg = resolve_for_image(cfg, image.width, image.height)
    torch.manual_seed(seed)
    model = build_image_model(cfg, image.channels).to(device)
    optimizer = build_optimizer(cfg["optimizer"], model)
    out = prepare_output_dir(out_dir)

    target = ImageTarget(image, device)
    history = _train(model, optimizer, loss_fn, target, seconds, steps, batch_size, seed, progress, amp)
    with optimizer.averaged_weights():
        psnr, display, values = evaluate(model, target, image.linear, keep_values=image.is_float, progress=progress)
        save_checkpoint(out / "checkpoint", model.state_dict(), _checkpoint_config(cfg, image, history["steps"]))

    write_image(out / "reconstruction.png", display)
    if values is not None:
        write_image(out / "reconstruction.exr", values if image.linear else linear_values(values))
    metrics = _metrics(psnr, history, batch_size, model, image, cfg, seed)
    metrics.update(device=str(device), precision=amp.precision, skipped_steps=amp.skipped_steps)
    write_training_plot(out / "training.png", history, psnr)
    with atomic_path(out / "metrics.json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))
    if progress:
        tqdm.write(summary_line(metrics, out))
    return metrics


def _check_budget(seconds, steps, batch_size) -> None:
    if seconds is None and steps is None:
        raise ValueError("give a time limit (seconds) or a step count (steps)")
    if seconds is not None and not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int) or steps < 1):
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch size must be a positive integer, got {batch_size!r}")


def _train(model, optimizer, loss_fn, target, seconds, steps, batch_size, seed, progress,
           amp: MixedPrecision | None = None) -> dict[str, Any]:
    """The training loop: one sampled batch per step; only floats are recorded per step."""
    amp = amp or MixedPrecision(target.device, "float32")
    generator = torch.Generator(target.device).manual_seed(seed)
    losses, mses, times = [], [], []
    is_l2 = loss_fn is l2
    bar = tqdm(
        total=steps if steps is not None else float(seconds), unit="step" if steps is not None else "s",
        disable=not progress, dynamic_ncols=True, leave=True,
        bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} {unit} [{elapsed}<{remaining}{postfix}]",
    )
    running_mse, last_shown, step = None, 0.0, 0
    start = time.perf_counter()
    while True:
        xy, values = target.sample(batch_size, generator)
        with amp.autocast():
            prediction = model(xy)  # float32: ngp.Network leaves autocast in float32
        loss = loss_fn(prediction, values)
        optimizer.zero_grad()
        amp.backward_and_step(loss, optimizer)
        step += 1
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            bar.close()
            raise FloatingPointError(f"training diverged at step {step}: loss is {loss_value}; lower the learning rate")
        mse = loss_value if is_l2 else l2(prediction.detach(), values).item()
        elapsed = time.perf_counter() - start
        losses.append(loss_value)
        mses.append(mse)
        times.append(elapsed)
        running_mse = mse if running_mse is None else 0.9 * running_mse + 0.1 * mse
        done = (steps is not None and step >= steps) or (seconds is not None and elapsed >= seconds)
        if progress and (elapsed - last_shown >= 0.25 or done):
            bar.update((step if steps is not None else min(elapsed, seconds)) - bar.n)
            bar.set_postfix_str(
                f"loss={loss_value:.3g} psnr~{psnr_from_mse(running_mse):.2f}dB "
                f"{_rate(step * batch_size / max(elapsed, 1e-9))} samples/s",
                refresh=False,
            )
            last_shown = elapsed
        if done:
            break
    bar.close()
    return {"steps": step, "seconds": times[-1], "loss": losses, "mse": mses, "time": times}


def _rate(per_second: float) -> str:
    return f"{per_second / 1e6:.2f}M" if per_second >= 1e6 else f"{per_second / 1e3:.1f}k"


def psnr_from_mse(mse: float) -> float:
    """``10 log10(1 / mse)`` for values in [0, 1]; infinite for a perfect match."""
    return float("inf") if mse <= 0 else -10.0 * math.log10(mse)


@torch.inference_mode()
def evaluate(model, target: ImageTarget, linear: bool, keep_values: bool = False, progress: bool = False):
    """The model at every pixel centre, in row chunks -> ``(psnr, display uint8 [H, W, C], values)``.

    ``display`` is what ``reconstruction.png`` shows (sRGB-encoded if the data is ``linear``);
    ``values`` is the float32 ``[H, W, C]`` prediction when ``keep_values`` (else None).
    """
    h, w, c = target.height, target.width, target.channels
    display = np.empty((h, w, c), dtype=np.uint8)
    values = np.empty((h, w, c), dtype=np.float32) if keep_values else None
    squared_error = 0.0
    chunks = list(target.row_chunks(EVAL_CHUNK))
    # A bar only where evaluation takes a while (about 4M pixels and up).
    for rows in tqdm(chunks, desc="evaluating", unit="chunk", disable=not progress or len(chunks) < 16, leave=False):
        prediction = model(target.pixel_centres(rows)).float()
        clipped = prediction.clamp(0.0, 1.0)
        squared_error += (clipped - target.pixels(rows).clamp_(0.0, 1.0)).square().sum(dtype=torch.float64).item()
        display[rows] = _display_uint8(clipped, linear).view(-1, w, c).cpu().numpy()
        if values is not None:
            values[rows] = prediction.view(-1, w, c).cpu().numpy()
    return psnr_from_mse(squared_error / (h * w * c)), display, values


def _display_uint8(clipped: torch.Tensor, linear: bool) -> torch.Tensor:
    shown = linear_to_srgb(clipped) if linear else clipped
    return (shown * 255.0 + 0.5).to(torch.uint8)


def linear_values(values: np.ndarray) -> np.ndarray:
    """Display-encoded (sRGB) float values -> linear light, for writing to EXR."""
    from ngp.io.images import srgb_to_linear

    return srgb_to_linear(values).astype(np.float32)


def _checkpoint_config(cfg: Mapping[str, Any], image: ImageData, steps: int) -> dict[str, Any]:
    return {
        "primitive": "image",
        "model": {
            "n_input_dims": 2, "n_output_dims": image.channels, "encoding": cfg["encoding"], "network": cfg["network"],
        },
        "config": cfg,
        "image": _image_info(image),
        "steps": steps,
    }


def _image_info(image: ImageData) -> dict[str, Any]:
    return {
        "source": image.source, "width": image.width, "height": image.height, "channels": image.channels,
        "channel_names": list(image.channel_names), "dtype": str(image.array.dtype), "linear": image.linear,
    }


def _metrics(psnr, history, batch_size, model, image, cfg, seed) -> dict[str, Any]:
    seconds = history["seconds"]
    return {
        "psnr": round(psnr, 4),
        "psnr_note": "10*log10(1/MSE) over all pixels at their centres, values in [0,1] clipped"
        + (" (linear, as loaded)" if image.linear else ""),
        "steps": history["steps"],
        "seconds": round(seconds, 3),
        "samples_per_second": round(history["steps"] * batch_size / seconds, 1),
        "batch_size": batch_size,
        "n_params": count_parameters(model),
        "seed": seed,
        "final_batch_loss": history["loss"][-1],
        "image": _image_info(image),
        "config": cfg,
    }


def write_training_plot(path: Path, history: Mapping[str, Any], final_psnr: float) -> None:
    """Loss and batch-PSNR curves against steps -> PNG (matplotlib's Agg canvas, no display)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    steps = np.arange(1, len(history["loss"]) + 1)
    figure = Figure(figsize=(10, 4), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    ax_loss, ax_psnr = figure.subplots(1, 2)
    ax_loss.semilogy(steps, history["loss"], linewidth=0.8)
    ax_loss.set(xlabel="step", ylabel="training loss (batch)", title="loss")
    psnr = -10.0 * np.log10(np.maximum(np.asarray(history["mse"]), 1e-12))
    # Batch targets are bilinear blends of pixels (smoother than the pixels), so the batch PSNR runs
    # above the full-image PSNR at pixel centres.
    ax_psnr.plot(steps, psnr, linewidth=0.5, alpha=0.4, label="batch")
    ax_psnr.plot(steps, _smooth(psnr), linewidth=1.2, label="batch, smoothed")
    if math.isfinite(final_psnr):
        ax_psnr.axhline(final_psnr, color="k", linestyle="--", linewidth=0.8, label=f"full image {final_psnr:.2f} dB")
    ax_psnr.set(xlabel="step", ylabel="PSNR (dB)", title="PSNR")
    ax_psnr.legend(loc="lower right")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def _smooth(values: np.ndarray, window: int = 25) -> np.ndarray:
    window = max(1, min(window, len(values)))
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def summary_line(metrics: Mapping[str, Any], out: Path | str) -> str:
    image = metrics["image"]
    return (
        f"fitted {image['source']} ({image['width']}x{image['height']}x{image['channels']}): "
        f"PSNR {metrics['psnr']:.2f} dB after {metrics['steps']} steps in {metrics['seconds']:.1f} s "
        f"({_rate(metrics['samples_per_second'])} samples/s, {metrics['n_params'] / 1e6:.2f}M params); "
        f"wrote {out}"
    )


__all__ = ["DEFAULT_BATCH_SIZE", "evaluate", "fit_image", "psnr_from_mse", "summary_line"]
