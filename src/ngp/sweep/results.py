"""A sweep's results: one row per run (read from its ``metrics.json`` and checkpoint), ``results.csv``, plots.

Columns of ``results.csv``, in this order::

    run                  the run's folder name under DIR/runs/
    <swept keys>         one column per --set key (dotted), the value this run used
    repeat               0 .. --repeats-1
    <quality>            image: psnr; sdf: iou_grid, chamfer_unit_cube, chamfer_mesh_units (+ any normal-
                         angle figure the metrics hold); nerf: val_psnr (train_view_psnr when nothing is
                         held out)
    n_params             trainable parameters
    param_bytes          bytes of the model's tensors as stored (checkpoint/model.safetensors, model.*)
    steps, seconds       training steps and training seconds (all sessions of the run)
    samples_per_second   training samples per training second
    stopped              budget | diverged
    folder               the run folder, relative to DIR
"""

from __future__ import annotations

import csv
import json
import math
import re
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

from ngp.io.checkpoints import TENSORS_FILE, find_checkpoint
from ngp.io.files import atomic_path
from ngp.io.runs import METRICS_FILE

RESULTS_FILE = "results.csv"
SIZE_PLOT = "quality_vs_size.png"
TIME_PLOT = "quality_vs_time.png"
#: The quality figures of each primitive's metrics.json, in column order (higher is better first).
QUALITY = {"image": ("psnr",), "sdf": ("iou_grid", "chamfer_unit_cube", "chamfer_mesh_units"),
           "nerf": ("val_psnr",)}
#: Figures that appear when present (NeRF without held-out views; SDF normal errors, in degrees).
_OPTIONAL_QUALITY = re.compile(r"^(train_view_psnr|.*normal.*(angle|error|deg).*)$")
_RUN_FIGURES = ("n_params", "param_bytes", "steps", "seconds", "samples_per_second", "stopped", "folder")


def quality_of(primitive: str, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The quality figures of one run (None where the run has none, e.g. a diverged run).

    Example:
        >>> quality_of("image", {"psnr": 31.2, "steps": 5})
        {'psnr': 31.2}
    """
    figures = {key: metrics.get(key) for key in QUALITY[primitive]}
    figures.update({key: value for key, value in metrics.items() if _OPTIONAL_QUALITY.match(key)
                    and isinstance(value, (int, float)) and not isinstance(value, bool)})
    return figures


def param_bytes(run_dir: str | Path) -> int:
    """Bytes of the ``model.*`` tensors in the run's ``model.safetensors``, read from the file's header
    (8-byte little-endian length, then JSON giving each tensor's byte range) without loading them."""
    path = find_checkpoint(run_dir) / TENSORS_FILE
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return sum(entry["data_offsets"][1] - entry["data_offsets"][0] for name, entry in header.items()
               if name.startswith("model."))


def run_row(primitive: str, settings: Mapping[str, Any], repeat: int, name: str, run_dir: str | Path,
            sweep_dir: str | Path) -> dict[str, Any]:
    """One results row from a finished run's folder (its ``metrics.json`` and checkpoint)."""
    run_dir = Path(run_dir)
    metrics = json.loads((run_dir / METRICS_FILE).read_text())
    return {"run": name, **settings, "repeat": repeat, **quality_of(primitive, metrics),
            "n_params": metrics.get("n_params"), "param_bytes": param_bytes(run_dir), "steps": metrics.get("steps"),
            "seconds": metrics.get("seconds"), "samples_per_second": metrics.get("samples_per_second"),
            "stopped": metrics.get("stopped"), "folder": _relative(run_dir, sweep_dir)}


def _relative(path: Path, root: str | Path) -> str:
    try:
        return str(path.resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every row's keys in first-seen order, the run figures last (rows may differ in optional figures)."""
    seen: dict[str, None] = {}
    for row in rows:
        seen.update({key: None for key in row if key not in _RUN_FIGURES})
    return list(seen) + [key for key in _RUN_FIGURES if any(key in row for row in rows)]


def write_csv(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """``rows`` as CSV (header from :func:`columns`; None and missing values are empty cells)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns(rows), restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return path


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    return json.dumps(value) if isinstance(value, (list, dict, bool)) else value


def write_plots(out: str | Path, rows: Sequence[Mapping[str, Any]], swept: Sequence[str], primitive: str) -> list[Path]:
    """``quality_vs_size.png`` (quality against parameter bytes, log scale) and ``quality_vs_time.png``
    (quality against training seconds), one panel per quality figure, as the paper's figures: one line
    per setting of the other swept keys, along the first swept key; repeats averaged (error bar: min..max).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = [key for key in columns(rows) if key in QUALITY[primitive] or _OPTIONAL_QUALITY.match(key)]
    figures = [key for key in figures if any(_number(row.get(key)) is not None for row in rows)] or \
        list(QUALITY[primitive][:1])
    written = []
    for filename, x_key, x_label in ((SIZE_PLOT, "param_bytes", "parameter bytes"),
                                     (TIME_PLOT, "seconds", "training seconds")):
        fig, axes = plt.subplots(1, len(figures), figsize=(5 * len(figures), 4), squeeze=False)
        for ax, y_key in zip(axes[0], figures):
            for label, points in _series(rows, swept, x_key, y_key).items():
                xs, ys, lows, highs = zip(*points)
                ax.errorbar(xs, ys, yerr=[[y - lo for y, lo in zip(ys, lows)], [hi - y for y, hi in zip(ys, highs)]],
                            marker="o", capsize=3, label=label or None)
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_key)
            if x_key == "param_bytes":
                ax.set_xscale("log", base=2)
            ax.grid(True, alpha=0.3)
            if any(line.get_label() and not line.get_label().startswith("_") for line in ax.get_lines()):
                ax.legend(fontsize="small")
        fig.suptitle(f"{primitive} sweep: quality vs {x_label}")
        fig.tight_layout()
        path = Path(out) / filename
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


def _series(rows, swept, x_key, y_key) -> dict[str, list[tuple[float, float, float, float]]]:
    """``{label of the other swept values: [(x, mean y, min y, max y)] sorted by x}``; repeats of one
    combination are one point (their mean x and y)."""
    groups: dict[tuple, list[tuple[float, float]]] = {}
    for row in rows:
        x, y = _number(row.get(x_key)), _number(row.get(y_key))
        if x is None or y is None:
            continue
        groups.setdefault(tuple(json.dumps(row.get(k)) for k in swept), []).append((x, y))
    series: dict[str, list] = {}
    for values, points in groups.items():
        label = ", ".join(f"{k}={v}" for k, v in zip(swept[1:], values[1:]))
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        series.setdefault(label, []).append((sum(xs) / len(xs), sum(ys) / len(ys), min(ys), max(ys)))
    return {label: sorted(points) for label, points in series.items()}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)
