"""``training.png``: the curves of a run, the same picture for every primitive."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ngp.io.files import atomic_path


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Running mean over ``window`` values (shorter at the start), same length as ``values``."""
    window = max(1, min(window, len(values)))
    cumulative = np.cumsum(np.insert(values, 0, 0.0))
    counts = np.minimum(np.arange(1, len(values) + 1), window)
    return (cumulative[1:] - cumulative[np.maximum(np.arange(1, len(values) + 1) - window, 0)]) / counts


def write_training_plot(path: str | Path, state, primitive: str, final: dict | None = None) -> Path:
    """Loss against step (log scale) and PSNR against training time (batch PSNR where the primitive
    reports one, plus every evaluation figure whose name holds "psnr"); loss against time otherwise.
    ``final``: the end-of-run figures (e.g. ``{"val_psnr": 27.1}``), drawn as the curves' last points."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    history = state.history
    steps = np.asarray(history["step"], dtype=np.float64)
    seconds = np.asarray(history["seconds"], dtype=np.float64)
    loss = np.asarray(history["loss"], dtype=np.float64)
    window = max(1, len(loss) // 50)
    figure = Figure(figsize=(11, 4), dpi=100, layout="tight")
    FigureCanvasAgg(figure)
    ax_loss, ax_right = figure.subplots(1, 2)
    if len(loss):
        ax_loss.semilogy(steps, loss, color="0.75", lw=0.5, label="per step")
        ax_loss.semilogy(steps, smooth(loss, window), color="C1", lw=1.2, label=f"mean of {window} steps")
        ax_loss.legend(loc="upper right")
    ax_loss.set(xlabel="step", ylabel="training loss", title=f"{primitive}: training loss")
    psnr = history.get("psnr")
    if psnr is not None and any(v is not None for v in psnr):
        values = np.asarray([np.nan if v is None else v for v in psnr], dtype=np.float64)
        ax_right.plot(seconds, values, color="0.8", lw=0.5, label="training batch")
        ax_right.plot(seconds, smooth(np.nan_to_num(values), window), color="C0", lw=1.2,
                      label=f"training batch, mean of {window}")
        ax_right.set(ylabel="PSNR [dB]", title="PSNR")
    elif len(loss):
        ax_right.semilogy(seconds, smooth(loss, window), color="C1", lw=1.2, label="training loss")
        ax_right.set(ylabel="training loss", title="loss over time")
    end = state.seconds if state.seconds else (seconds[-1] if len(seconds) else 0.0)
    for i, key in enumerate(sorted({k for e in state.evals for k in e if "psnr" in k} | set(final or {}))):
        points = [(e["seconds"], e[key]) for e in state.evals if isinstance(e.get(key), (int, float))]
        if final and isinstance(final.get(key), (int, float)) and math.isfinite(final[key]):
            points.append((end, final[key]))
        if points:
            ax_right.plot(*zip(*points), "o-", color=f"C{3 + i}", label=f"{key.replace('_', ' ')} ({points[-1][1]:.2f})")
    ax_right.set(xlabel="training time [s]")
    if ax_right.get_legend_handles_labels()[0]:
        ax_right.legend(loc="lower right")
    for ax in (ax_loss, ax_right):
        ax.grid(alpha=0.3)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path
