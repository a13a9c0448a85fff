"""Run folders: what ``ngp nerf train|eval|render|mesh`` do, as functions (the CLI only parses).

A run folder ``RUN`` holds::

    RUN/checkpoint/        model.safetensors + config.json (model, occupancy grid, optimizer, scene)
    RUN/metrics.json       steps, seconds, samples/s, validation PSNR, peak memory
    RUN/val_XX.png         validation renders | ground truth
    RUN/training.png       training curve
    RUN/data/              the built-in scene, when trained on ``builtin``
    RUN/eval_<split>/      ``ngp nerf eval``: metrics.json and render | ground truth per image

Example::

    >>> summary = train_run("builtin", "runs/builtin", seconds=120)
    >>> eval_run("runs/builtin", split="test")
"""

from __future__ import annotations

import json
import math
import resource
import time
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from ngp.io.files import atomic_path, check_writable_file, prepare_output_dir
from ngp.nerf.datasets import NerfDataset, load_dataset
from ngp.nerf.evaluation import evaluate, write_png
from ngp.nerf.field import parse_nerf_config
from ngp.nerf.trainer import NerfTrainer, TrainSettings
from ngp.training import resolve_device, resolve_precision

__all__ = ["train_run", "eval_run", "render_run", "mesh_run", "load_run", "BUILTIN", "peak_memory_mb"]

BUILTIN = "builtin"
CHECKPOINT_DIR = "checkpoint"
#: The built-in scene as `ngp nerf train builtin` generates it.
BUILTIN_SCENE = dict(n_train=100, n_val=10, n_test=20, resolution=200)


def peak_memory_mb() -> float:
    """Peak resident memory of this process so far, in MiB (``getrusage`` reports KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def peak_gpu_memory_mb(device: torch.device) -> float | None:
    """Peak memory torch allocated on a CUDA ``device`` so far, in MiB (None for the CPU)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))


def _log(message: str, quiet: bool = False) -> None:
    """Progress and summary lines (always printed; ``quiet`` only hides progress bars)."""
    print(message, flush=True)


def _scene_info(dataset: NerfDataset, data: Path, downscale: int) -> dict[str, Any]:
    cams = dataset.cameras
    return {"data": str(Path(data).resolve()), "downscale": downscale, "format": dataset.format,
            "white_background": bool(dataset.white_background), "scale": dataset.scale,
            "offset": list(dataset.offset), "focal": float(cams.fx[0]), "width": int(cams.width[0]),
            "height": int(cams.height[0]), "n_train_images": len(dataset)}


def _validation_split(data: Path) -> str:
    """Blender folders have ``transforms_val.json`` (else test); single files hold out every 8th frame."""
    if data.is_dir() and not (data / "transforms_val.json").is_file() and (data / "transforms_test.json").is_file():
        return "test"
    return "val"


def _plot_training(history, out: Path, val_curve: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax0, ax1) = plt.subplots(1, 2, figsize=(11, 4))
    seconds, psnr = torch.tensor(history.seconds), torch.tensor(history.psnr)
    window = max(1, len(psnr) // 50)
    smooth = torch.nn.functional.avg_pool1d(psnr[None, None], window, 1, 0)[0, 0] if len(psnr) >= window else psnr
    ax0.plot(seconds, psnr, color="0.8", lw=0.5, label="batch")
    ax0.plot(seconds[window - 1:][:len(smooth)], smooth, color="C0", label=f"batch, mean of {window}")
    if val_curve:
        ax0.plot([v["seconds"] for v in val_curve], [v["psnr"] for v in val_curve], "o-", color="C3",
                 label="validation")
    ax0.set(xlabel="training time [s]", ylabel="PSNR [dB]", title="PSNR")
    ax0.legend()
    ax1.semilogy(history.steps, history.loss, color="C1", lw=0.7)
    ax1.set(xlabel="step", ylabel="loss", title="training loss")
    for ax in (ax0, ax1):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)


def _validate(trainer: NerfTrainer, val: NerfDataset, indices: Sequence[int], out_dir: Path | None,
              quiet: bool) -> dict:
    with trainer.optimizer.averaged_weights():
        result = evaluate(trainer.renderer, val, indices, with_ssim=False, keep_renders=out_dir is not None,
                          progress=not quiet)
    if out_dir is not None:
        from ngp.nerf.evaluation import background_for, ground_truth, side_by_side

        for k, (i, render) in enumerate(zip(indices, result.renders)):
            write_png(out_dir / f"val_{k:02d}.png", side_by_side(render, ground_truth(val, i, background_for(val))))
    return {"seconds": trainer.seconds, "step": trainer.step, "psnr": result.mean_psnr,
            "per_image": [{"index": r["index"], "psnr": r["psnr"]} for r in result.per_image]}


def train_run(data: str | Path, out: str | Path, seconds: float | None = None, steps: int | None = None,
              downscale: int = 1, config: str | Path | dict | None = None, seed: int = 0, resume: bool = False,
              n_val_images: int = 3, eval_at: Sequence[float] = (), settings: dict | None = None,
              quiet: bool = False, device: str | torch.device = "auto", precision: str = "auto") -> dict:
    """Train a NeRF on ``data`` (a data set folder / transforms file, or ``"builtin"``) into run folder
    ``out``; see the module doc for what it writes. Returns the metrics written to ``metrics.json``.

    Args:
        seconds, steps: training budget (whichever ends first; at least one).
        downscale: integer image downscale factor.
        config: NeRF config file or dict (see :func:`~ngp.nerf.field.parse_nerf_config`).
        resume: continue the run in ``out/checkpoint`` (budget counts from where it stopped).
        n_val_images: validation images rendered at the end (spread over the split).
        eval_at: training times (s, cumulative) at which to also measure validation PSNR.
        settings: overrides of :class:`~ngp.nerf.trainer.TrainSettings` fields.
        device, precision: where and in which precision to train (see :class:`~ngp.nerf.trainer.NerfTrainer`).

    Raises (before any training): FileNotFoundError (no data / checkpoint), PermissionError (``out``
    not writable), ConfigError (bad config), ValueError (bad arguments or data).
    """
    if seconds is None and steps is None:
        raise ValueError("give a training budget: seconds and/or steps")
    if (seconds is not None and not seconds > 0) or (steps is not None and steps < 1):
        raise ValueError(f"the training budget must be positive, got seconds={seconds}, steps={steps}")
    if int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be a positive integer, got {downscale}")
    if resume and config is not None:
        raise ValueError("--config cannot be combined with --resume: a resumed run keeps its config")
    builtin = str(data) == BUILTIN
    if not builtin and not Path(data).exists():
        raise FileNotFoundError(f"data set not found: {data}")
    out = Path(out)
    checkpoint = out / CHECKPOINT_DIR
    if resume and not (checkpoint / "config.json").is_file():
        raise FileNotFoundError(f"nothing to resume: {checkpoint} holds no checkpoint")
    if not resume and (checkpoint / "config.json").is_file():
        raise FileExistsError(f"{out} already holds a trained run; pass --resume to continue it or choose "
                              "another --out")
    nerf_config = None if resume else parse_nerf_config(config)  # ConfigError before any work
    device = resolve_device(device)
    resolve_precision(precision, device)  # ValueError before any work
    train_settings = TrainSettings.from_dict({**(settings or {}), "seed": seed}, device)
    prepare_output_dir(out)

    if builtin:
        from ngp.nerf.builtin_scene import make_builtin_scene

        data = out / "data"
        if not (data / "transforms_train.json").is_file():
            _log(f"generating the built-in scene into {data} ...", quiet)
            make_builtin_scene(data, **BUILTIN_SCENE)
    data = Path(data)
    dataset = load_dataset(data, "train", downscale)
    val = load_dataset(data, _validation_split(data), downscale)
    if resume:
        trainer, meta = NerfTrainer.from_checkpoint(checkpoint, dataset, device, precision)
        _log(f"resuming {out} at step {trainer.step} ({trainer.seconds:.0f} s trained)", quiet)
    else:
        trainer = NerfTrainer(dataset, nerf_config, train_settings, device=device, precision=precision)
    _log(f"training on {len(dataset)} images of {int(dataset.cameras.width[0])}x{int(dataset.cameras.height[0])}"
         f" ({data}), aabb_scale {dataset.aabb_scale}", quiet)

    val_indices = sorted({round(i * (len(val) - 1) / max(n_val_images - 1, 1)) for i in range(n_val_images)}) \
        if n_val_images > 0 else []
    val_curve, wall_start = [], time.perf_counter()
    session_start_step, session_start_seconds = trainer.step, trainer.seconds
    for stop in sorted(t for t in eval_at if t > trainer.seconds) + [math.inf]:
        budget_s = None if seconds is None else session_start_seconds + seconds - trainer.seconds
        budget_n = None if steps is None else session_start_step + steps - trainer.step
        if stop != math.inf:
            budget_s = stop - trainer.seconds if budget_s is None else min(budget_s, stop - trainer.seconds)
        if (budget_s is not None and budget_s <= 0) or (budget_n is not None and budget_n <= 0):
            break
        trainer.train(steps=budget_n, seconds=budget_s, progress=not quiet)
        if stop != math.inf and val_indices:
            val_curve.append(_validate(trainer, val, val_indices, None, quiet=True))
            _log(f"  validation PSNR after {trainer.seconds:.0f} s ({trainer.step} steps): "
                 f"{val_curve[-1]['psnr']:.2f} dB", quiet)

    trainer.save(checkpoint, scene=_scene_info(dataset, data, downscale))
    final = _validate(trainer, val, val_indices, out, quiet) if val_indices else None
    if final is not None:
        val_curve.append(final)
    history = trainer.history
    session = slice(len(history.steps) - (trainer.step - session_start_step), None)
    session_seconds = trainer.seconds - session_start_seconds
    metrics = {
        "data": str(data), "downscale": downscale, "steps": trainer.step, "seconds": trainer.seconds,
        "session": {"steps": trainer.step - session_start_step, "seconds": session_seconds,
                    "samples": int(sum(history.samples[session])),
                    "samples_per_second": sum(history.samples[session]) / max(session_seconds, 1e-9),
                    "wall_seconds": time.perf_counter() - wall_start},
        "samples_per_second": sum(history.samples) / max(trainer.seconds, 1e-9),
        "final_rays_per_batch": trainer.n_rays,
        "final_batch_psnr": history.psnr[-1] if history.psnr else None,
        "val_split": val.split, "val_psnr": final["psnr"] if final else None,
        "val_per_image": final["per_image"] if final else [], "val_curve": val_curve,
        "occupancy_fraction": trainer.grid.occupancy_fraction,
        "peak_memory_mb": peak_memory_mb(),
        "peak_gpu_memory_mb": peak_gpu_memory_mb(trainer.device),
        "device": str(trainer.device), "precision": trainer.amp.precision,
        "skipped_steps": trainer.amp.skipped_steps,
        "settings": trainer.settings.__dict__,
    }
    _write_json(out / "metrics.json", metrics)
    _plot_training(history, out / "training.png", val_curve)
    _log(f"trained {metrics['session']['steps']} steps in {session_seconds:.0f} s "
         f"({metrics['session']['samples_per_second'] / 1e3:.0f}k samples/s); validation PSNR "
         f"{metrics['val_psnr'] if metrics['val_psnr'] is None else round(metrics['val_psnr'], 2)} dB on "
         f"{len(val_indices)} {val.split} images; peak memory {metrics['peak_memory_mb']:.0f} MiB; wrote {out}",
         quiet)
    return metrics


def load_run(run: str | Path, device: str | torch.device = "auto") -> tuple[NerfTrainer, dict]:
    """The trainer (model, grid, optimizer with its EMA) on ``device`` and checkpoint JSON of a run
    folder (or of a checkpoint folder itself)."""
    run = Path(run)
    if not run.exists():
        raise FileNotFoundError(f"run folder not found: {run}")
    folder = run / CHECKPOINT_DIR if (run / CHECKPOINT_DIR).is_dir() else run
    trainer, meta = NerfTrainer.from_checkpoint(folder, device=device)
    return trainer, meta


def eval_run(run: str | Path, data: str | Path | None = None, split: str = "test", downscale: int | None = None,
             with_ssim: bool = True, quiet: bool = False, device: str | torch.device = "auto") -> dict:
    """Evaluate a run on ``split`` of ``data`` (default: the data it was trained on): PSNR/SSIM per
    image, written with renders beside ground truth into ``RUN/eval_<split>/``."""
    trainer, meta = load_run(run, device)
    scene = meta.get("scene", {})
    data = Path(data) if data is not None else Path(scene.get("data", ""))
    if not data.exists():
        raise FileNotFoundError(f"data set not found: {data}")
    downscale = int(scene.get("downscale", 1)) if downscale is None else downscale
    out_dir = prepare_output_dir(Path(run) / f"eval_{split}")
    dataset = load_dataset(data, split, downscale)
    if not torch.allclose(dataset.aabb, trainer.field.aabb.cpu()):
        warnings.warn(f"the data set's aabb {dataset.aabb.tolist()} differs from the run's "
                      f"{trainer.field.aabb.tolist()}: is it the same scene?", stacklevel=2)
    with trainer.optimizer.averaged_weights():
        result = evaluate(trainer.renderer, dataset, out_dir=out_dir, with_ssim=with_ssim, progress=not quiet)
    summary = {"data": str(data), "split": split, "downscale": downscale, "step": trainer.step,
               **result.summary(), "peak_memory_mb": peak_memory_mb()}
    _write_json(out_dir / "metrics.json", summary)
    for r in result.per_image:
        print(f"  {r['file']:>20s}  PSNR {r['psnr']:6.2f} dB" + (f"  SSIM {r['ssim']:.4f}" if "ssim" in r else ""))
    print(f"{split}: mean PSNR {result.mean_psnr:.2f} dB" + (f", SSIM {result.mean_ssim:.4f}" if with_ssim else "")
          + f" over {len(result.per_image)} images ({summary['images_per_second']:.2f} images/s, "
          f"{summary['render_samples_per_second'] / 1e3:.0f}k samples/s on {trainer.device}); wrote {out_dir}")
    return summary


def render_run(run: str | Path, out: str | Path, n_frames: int = 60, width: int | None = None,
               height: int | None = None, fps: int = 30, quiet: bool = False,
               device: str | torch.device = "auto") -> dict:
    """An orbit video (``out``, MP4) plus PNG colour and depth frames (``<out stem>_frames/``)."""
    from ngp.nerf.video import orbit_poses, write_video

    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"the video must be an .mp4 file, got {out}")
    if n_frames < 1 or (width is not None and width < 1) or (height is not None and height < 1) or fps < 1:
        raise ValueError(f"frames, width, height and fps must be positive, got {n_frames}, {width}, {height}, {fps}")
    check_writable_file(out)
    trainer, meta = load_run(run, device)
    scene = meta.get("scene", {})
    tensors_c2w = trainer.scene_c2w
    if tensors_c2w is None or "focal" not in scene:
        raise ValueError(f"run {run} stores no training cameras: cannot place an orbit")
    train_w, train_h = int(scene["width"]), int(scene["height"])
    width = width or train_w
    height = height or (train_h if width == train_w else round(train_h * width / train_w))
    focal = float(scene["focal"]) * width / train_w
    poses = orbit_poses(tensors_c2w, n_frames, trainer.field.aabb.cpu())
    background = torch.ones(3) if scene.get("white_background") else torch.zeros(3)
    frames_dir = out.with_name(out.stem + "_frames")
    with trainer.optimizer.averaged_weights():
        stats = write_video(trainer.renderer, poses, focal, width, height, out, background, frames_dir, fps,
                            progress=not quiet)
    stats.update(frames_dir=str(frames_dir), peak_memory_mb=peak_memory_mb())
    _log(f"rendered {n_frames} frames of {width}x{height} ({stats['render_samples_per_second'] / 1e3:.0f}k "
         f"samples/s) -> {out} and {frames_dir}/", quiet)
    return stats


def mesh_run(run: str | Path, out: str | Path, resolution: int = 256, threshold: float | None = None,
             quiet: bool = False, device: str | torch.device = "auto") -> dict:
    """Marching cubes on the run's density -> a mesh file (``.ply``, ``.obj``, ...) in the data set's
    coordinates."""
    from ngp.nerf.mesh import DEFAULT_THRESHOLD, extract_mesh, write_mesh

    out = Path(out)
    if out.suffix.lower() not in (".ply", ".obj", ".stl", ".glb", ".off"):
        raise ValueError(f"unsupported mesh format {out.suffix!r}; use .ply, .obj, .stl, .glb or .off")
    if resolution < 2 or resolution > 2048:
        raise ValueError(f"resolution must be in [2, 2048], got {resolution}")
    check_writable_file(out)
    trainer, meta = load_run(run, device)
    scene = meta.get("scene", {})
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    with trainer.optimizer.averaged_weights():
        mesh = extract_mesh(trainer.field, resolution, threshold, scale=float(scene.get("scale", 1.0)),
                            offset=scene.get("offset", (0.0, 0.0, 0.0)), ngp_frame="scale" not in scene,
                            progress=not quiet)
    write_mesh(mesh, out)
    stats = {"vertices": len(mesh.vertices), "faces": len(mesh.faces), "threshold": threshold,
             "resolution": resolution, "mesh": str(out)}
    _log(f"mesh with {stats['vertices']} vertices, {stats['faces']} faces at density {threshold} -> {out}", quiet)
    return stats
