"""Reading a trained NeRF run: ``ngp nerf eval|render|mesh`` as functions (the CLI only parses).

Each takes the run folder written by ``ngp nerf train`` (:func:`ngp.nerf.trainer.train_nerf`) and
rebuilds the field with its averaged (EMA) weights and the occupancy grid from the checkpoint
(:func:`load_nerf_run`); the training data is needed only by ``eval``. What they write::

    RUN/eval_<split>/      metrics.json and render | ground truth per frame (``ngp nerf eval``)
    OUT.mp4, OUT_frames/   an orbit video and its colour and depth frames (``ngp nerf render``)
    OUT.ply                a mesh of the density's iso-surface (``ngp nerf mesh``)

Example::

    >>> eval_run("runs/builtin")                                   # the frames held out of training
    >>> eval_run("runs/fox", data="data/fox/transforms.json")      # every frame of that file
    >>> render_run("runs/builtin", "orbit.mp4", n_frames=60)
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ngp.io.checkpoints import CheckpointError, subset
from ngp.io.files import check_writable_file, prepare_output_dir, write_json
from ngp.io.runs import RunFolder
from ngp.nerf.datasets import SPLITS, load_dataset
from ngp.nerf.evaluation import evaluate
from ngp.nerf.field import NerfField, model_config, parse_nerf_config
from ngp.nerf.renderer import Renderer, RenderSettings
from ngp.nerf.trainer import PRIMITIVE, TrainSettings, blender_validation_split, build_grid, load_grid_state
from ngp.train.loop import load_trained_model, peak_memory_mb
from ngp.train.precision import resolve_device

__all__ = ["NerfRun", "eval_run", "load_nerf_run", "mesh_run", "render_run"]

#: Mesh file formats ``ngp nerf mesh`` writes (trimesh's exporters).
MESH_FORMATS = (".ply", ".obj", ".stl", ".glb", ".off")


@dataclass
class NerfRun:
    """A trained run, ready to render: ``field`` (averaged weights, eval mode) and ``grid`` on the
    device, ``renderer``, ``scene`` (the data's cameras and world mapping, JSON), ``c2w`` ``[n, 3, 4]``
    (the training cameras), ``config`` and ``step``."""

    path: Path
    field: NerfField
    grid: Any
    renderer: Renderer
    scene: dict[str, Any]
    c2w: torch.Tensor
    config: dict[str, Any]
    step: int

    @property
    def training(self) -> dict[str, Any]:
        return self.config["training"]


def load_nerf_run(run: str | Path, device: str | torch.device = "auto") -> NerfRun:
    """Rebuild the field (EMA-averaged weights) and occupancy grid of a run folder on ``device``.

    Raises FileNotFoundError (no run), CheckpointError (not a NeRF checkpoint, unreadable, mismatched)
    or ConfigError (a config with unknown keys), before building anything large.
    """
    folder = RunFolder.open(run)
    tensors, meta = folder.load_checkpoint(PRIMITIVE)
    where = folder.checkpoint_dir
    scene = meta.get("task", {}).get("scene")
    if not isinstance(scene, dict) or not {"aabb", "aabb_scale", "focal", "width", "height"} <= set(scene):
        raise CheckpointError(f"checkpoint {where} does not describe its scene (task.scene)")
    config = parse_nerf_config(meta["config"])  # unknown keys: ConfigError naming them
    settings = TrainSettings.from_training(config["training"])
    aabb = torch.tensor(scene["aabb"], dtype=torch.float32)
    field = load_trained_model(NerfField(aabb, int(scene["aabb_scale"]), model_config(config)), tensors, meta, where)
    grid = build_grid(aabb, int(scene["aabb_scale"]), settings)
    load_grid_state(grid, subset(tensors, "task."), where)
    device = resolve_device(device)
    field, grid = field.to(device), grid.to(device)
    if "task.scene.c2w" not in tensors:
        raise CheckpointError(f"checkpoint {where} stores no training cameras (task.scene.c2w)")
    return NerfRun(folder.path, field, grid, Renderer(field, grid, RenderSettings.for_scene(int(scene["aabb_scale"]))),
                   scene, tensors["task.scene.c2w"], config, int(meta.get("loop", {}).get("step", 0)))


# ------------------------------------------------------------------------------------------- eval
_SPLIT_FILE = re.compile(r"transforms_(train|val|test)\.json")


def default_split(data: Path, own_data: bool) -> str:
    """What ``ngp nerf eval`` measures without ``--split``: the run's own data, the frames held out of
    training (Blender: ``val``, else ``test``); a ``transforms_<split>.json`` given with ``--data``,
    its split; a single ``transforms.json`` given with ``--data``, every frame (``all``)."""
    match = _SPLIT_FILE.fullmatch(data.name) if data.is_file() else None
    if match:
        return (blender_validation_split(data) or "test") if own_data else match.group(1)
    single = data.is_file() or ((data / "transforms.json").is_file() and not (data / "transforms_train.json").is_file())
    if single:
        return "val" if own_data else "all"
    return blender_validation_split(data) or "test"


def _split_source(data: Path, split: str) -> Path:
    """A Blender ``transforms_<x>.json`` holds split ``x`` only: other splits are read from its folder."""
    match = _SPLIT_FILE.fullmatch(data.name) if data.is_file() else None
    return data.parent if match and match.group(1) != split else data


def eval_run(run: str | Path, data: str | Path | None = None, split: str | None = None,
             downscale: int | None = None, with_ssim: bool = True, progress: bool = True,
             device: str | torch.device = "auto", log: Callable[[str], None] = print) -> dict[str, Any]:
    """PSNR (and SSIM) of a run on every frame of ``split`` of ``data``, written with renders beside
    ground truth into ``RUN/eval_<split>/``; returns the summary (also ``metrics.json`` there).

    Args:
        data: the evaluation set [default: the data the run was trained on].
        split: [default: see :func:`default_split`: the held-out frames of the run's own data, every
            frame of a ``transforms.json`` given as ``data``]. On a single ``transforms.json``,
            ``val``/``test`` are the frames held out with the run's ``holdout_every``, ``train`` the others,
            ``all`` every frame.
        downscale: [default: the run's].
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    loaded = load_nerf_run(run, device)
    training = loaded.training
    own = data is None
    data_path = Path(training["data"] if own else data)
    if not data_path.exists():
        raise FileNotFoundError(f"data set not found: {data_path}" + (" (the run's training data)" if own else ""))
    split = split or default_split(data_path, own)
    downscale = int(training["downscale"]) if downscale is None else downscale
    holdout_every = int(training["holdout_every"])
    dataset = load_dataset(_split_source(data_path, split), split, downscale, holdout_every=holdout_every)
    if len(dataset) == 0:
        raise ValueError(f"{dataset.transforms_path}: the {split!r} split has no frames ({dataset.holdout_summary()}); "
                         "give --split all to measure every frame (including those trained on)")
    if not torch.allclose(dataset.aabb, loaded.field.aabb.cpu()):
        warnings.warn(f"the data set's aabb {dataset.aabb.tolist()} differs from the run's "
                      f"{loaded.field.aabb.tolist()}: is it the same scene?", stacklevel=2)
    trained_on = _frames_trained_on(loaded, dataset)
    out_dir = _fresh_eval_dir(Path(run) / f"eval_{split}")
    with torch.inference_mode():
        result = evaluate(loaded.renderer, dataset, out_dir=out_dir, with_ssim=with_ssim, progress=progress)
    summary = {"data": str(data_path.resolve()), "transforms": str(dataset.transforms_path), "split": split,
               "downscale": downscale, "step": loaded.step, "n_frames": len(dataset),
               "frames": list(dataset.frame_indices), "n_frames_trained_on": trained_on, **result.summary(),
               "peak_memory_mb": round(peak_memory_mb(), 1)}
    write_json(out_dir / "metrics.json", summary)  # written last: marks the folder complete
    for r in result.per_image:
        log(f"  {r['file']:>20s}  PSNR {r['psnr']:6.2f} dB" + (f"  SSIM {r['ssim']:.4f}" if "ssim" in r else ""))
    note = f", {trained_on} of them trained on" if trained_on else ""
    log(f"evaluated {len(dataset)} frames ({split} of {dataset.transforms_path}{note}): mean PSNR "
        f"{result.mean_psnr:.2f} dB" + (f", SSIM {result.mean_ssim:.4f}" if with_ssim else "")
        + f" ({summary['images_per_second']:.2f} images/s on {loaded.field.aabb.device}); wrote {out_dir}")
    return summary


def _frames_trained_on(loaded: NerfRun, dataset) -> int:
    """How many of ``dataset``'s frames the run trained on (0 unless it is the run's transforms file)."""
    transforms = loaded.scene.get("transforms")
    if not transforms or Path(transforms).resolve() != Path(dataset.transforms_path).resolve():
        return 0
    if dataset.format == "blender" or dataset.split == "train":
        return len(dataset)  # Blender: the run's own transforms_train.json
    if dataset.split in ("val", "test"):
        return 0  # held out with the run's holdout_every
    return len(dataset) - dataset.n_held_out  # "all"


def _fresh_eval_dir(path: Path) -> Path:
    """``path`` ready for a new evaluation: its earlier per-frame PNGs and metrics removed, so a
    shorter evaluation leaves no stale frames."""
    prepare_output_dir(path)
    for old in [*path.glob("[0-9][0-9][0-9].png"), path / "metrics.json"]:
        old.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------------- render, mesh
def render_run(run: str | Path, out: str | Path, n_frames: int = 60, width: int | None = None,
               height: int | None = None, fps: int = 30, progress: bool = True,
               device: str | torch.device = "auto", log: Callable[[str], None] = print) -> dict[str, Any]:
    """An orbit video (``out``, MP4) plus PNG colour and depth frames (``<out stem>_frames/``)."""
    from ngp.nerf.video import orbit_poses, write_video

    out = Path(out)
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"the video must be an .mp4 file, got {out}")
    for name, value in (("frames", n_frames), ("width", width), ("height", height), ("fps", fps)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be positive, got {value}")
    check_writable_file(out)
    loaded = load_nerf_run(run, device)
    scene = loaded.scene
    train_w, train_h = int(scene["width"]), int(scene["height"])
    width = width or train_w
    height = height or (train_h if width == train_w else max(1, round(train_h * width / train_w)))
    focal = float(scene["focal"]) * width / train_w
    poses = orbit_poses(loaded.c2w, n_frames, loaded.field.aabb.cpu())
    background = torch.ones(3) if scene.get("white_background") else torch.zeros(3)
    frames_dir = out.with_name(out.stem + "_frames")
    stats = write_video(loaded.renderer.for_display(), poses, focal, width, height, out, background, frames_dir,
                        fps, progress=progress)
    stats.update(frames_dir=str(frames_dir), peak_memory_mb=round(peak_memory_mb(), 1))
    log(f"rendered {n_frames} frames of {width}x{height} ({stats['render_samples_per_second'] / 1e3:.0f}k "
        f"samples/s) -> {out} and {frames_dir}/")
    return stats


def mesh_run(run: str | Path, out: str | Path, resolution: int = 256, threshold: float | None = None,
             progress: bool = True, device: str | torch.device = "auto",
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """Marching cubes on the run's density -> a mesh file (``.ply``, ``.obj``, ...) in the data set's
    coordinates. Raises ValueError when there is no surface at ``threshold`` (nothing is written)."""
    from ngp.nerf.mesh import DEFAULT_THRESHOLD, extract_mesh, write_mesh

    out = Path(out)
    if out.suffix.lower() not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh format {out.suffix!r}; use {', '.join(MESH_FORMATS)}")
    if not 2 <= resolution <= 2048:
        raise ValueError(f"resolution must be in [2, 2048], got {resolution}")
    check_writable_file(out)
    loaded = load_nerf_run(run, device)
    scene = loaded.scene
    threshold = DEFAULT_THRESHOLD if threshold is None else threshold
    mesh = extract_mesh(loaded.field, resolution, threshold, scale=float(scene["scale"]), offset=scene["offset"],
                        progress=progress)
    write_mesh(mesh, out)
    stats = {"vertices": len(mesh.vertices), "faces": len(mesh.faces), "threshold": threshold,
             "resolution": resolution, "mesh": str(out)}
    log(f"mesh with {stats['vertices']} vertices, {stats['faces']} faces at density {threshold} -> {out}")
    return stats
