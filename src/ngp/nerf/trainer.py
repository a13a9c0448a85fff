"""Training a NeRF as instant-ngp does, as a :class:`~ngp.train.loop.Task` of the shared loop.

Each step (:meth:`NerfTask.training_batch`) updates the occupancy grid when due (every
``grid_update_interval`` steps; the grid owns nothing else of the schedule), draws ``n_rays`` random
pixels, composites transparent ones on a random background colour per ray, renders them and returns
the Huber loss; :meth:`NerfTask.after_step` adapts ``n_rays`` so the next batch has about
``target_samples`` samples. The loop (:mod:`ngp.train.loop`) does everything else: budget, progress,
divergence guard, ``--eval-at``, checkpoints, Ctrl-C, ``training.png`` and ``metrics.json``.

Validation measures frames that were never trained on:

* Blender / NeRF-synthetic folders: their ``val`` split (``test`` when there is no ``val``);
* a single ``transforms.json`` (instant-ngp / nerfstudio): every ``training.holdout_every``-th frame
  (8 by default) is held out of training and used for validation;
* nothing to hold out (``holdout_every`` 0, or a file of one frame): the figures are measured on
  training views and labelled so (``train_view_psnr``, ``train_view_XX.png``); ``val_psnr`` is None.

Besides the loop's files the run folder receives ``val_XX.png`` (render | ground truth) for
``training.val_images`` validation frames. ``ngp nerf train builtin`` trains on the built-in scene,
generated once into ``$XDG_CACHE_HOME/ngp/builtin-scene-v1`` (``~/.cache/...``) and reused (see
:func:`resolve_data`): outside the run folder, so ``--force`` never deletes it.

Example::

    >>> metrics = train_nerf("builtin", "runs/builtin", seconds=120)
    >>> metrics["val_psnr"], metrics["steps"]
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import torch

from ngp.config import ConfigError
from ngp.geometry.cameras import generate_rays
from ngp.io.checkpoints import CheckpointError, subset
from ngp.io.runs import RunFolder
from ngp.losses import build_loss
from ngp.nerf.datasets import NerfDataset, load_dataset
from ngp.nerf.evaluation import background_for, evaluate, ground_truth, side_by_side, write_png
from ngp.nerf.field import IGNORED_KEYS, NerfField, drop_ignored_sections, model_config
from ngp.nerf.occupancy import OccupancyGrid
from ngp.nerf.renderer import Renderer, RenderSettings
from ngp.optim import build_optimizer
from ngp.train.loop import Batch, LoopState
from ngp.train.precision import MixedPrecision
from ngp.train.session import TrainRequest, input_path, silent, train_run

__all__ = ["BUILTIN", "BUILTIN_SCENE", "NerfTask", "TrainSettings", "Validation", "build_grid", "build_nerf_task",
           "builtin_scene_dir", "load_training_data", "resolve_data", "summary_line", "train_nerf", "PRIMITIVE"]

PRIMITIVE = "nerf"
#: The data argument that names the built-in scene.
BUILTIN = "builtin"
#: The built-in scene as ``ngp nerf train builtin`` generates it (see :mod:`ngp.nerf.builtin_scene`).
BUILTIN_SCENE = dict(n_train=100, n_val=10, n_test=20, resolution=200)
#: Its cache folder's name; the ``v1`` changes with ``BUILTIN_SCENE`` (the scene itself checks its
#: renderer's version and the parameters, see :func:`~ngp.nerf.builtin_scene.builtin_scene_is_complete`).
BUILTIN_CACHE_NAME = "builtin-scene-v1"


# ------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class TrainSettings:
    """The NeRF knobs of a config's ``training`` section (a view: the values, and their defaults, live
    in ``ngp/configs/nerf/base.json``; ``training.cuda`` holds the GPU overrides).

    Attributes:
        downscale: integer image downscale factor.
        holdout_every: single ``transforms.json``: every n-th frame is held out for validation (0: none).
        val_images: validation frames rendered and measured at evaluations and at the end.
        target_samples: samples per step the ray count adapts to (2^16 on a CPU, 2^18 on a GPU).
        initial_rays, min_rays, max_rays: the adaptive ray count's start and bounds.
        grid_resolution, grid_threshold, grid_ema_decay, grid_update_interval: the occupancy grid
            (128^3 per cascade, density threshold 0.01, EMA 0.95, updated every 16 steps).
        grid_warmup_steps, grid_sample_fraction: updates at steps 16, 32, 64, ... below
            ``grid_warmup_steps`` evaluate every cell, the others ``grid_sample_fraction`` of the
            cells at random plus as many occupied ones (instant-ngp: every update before step 256 is
            full; on a CPU a full update of 2M cells costs as much as several training steps).
        compact: run the backward pass only on samples in front of where a ray turns opaque.
        random_background: composite transparent training pixels on a random colour per ray.
        seed: seeds the model's initialisation and the pixel sampling.
    """

    downscale: int
    holdout_every: int
    val_images: int
    target_samples: int
    initial_rays: int
    min_rays: int
    max_rays: int
    grid_resolution: int
    grid_threshold: float
    grid_ema_decay: float
    grid_update_interval: int
    grid_warmup_steps: int
    grid_sample_fraction: float
    compact: bool
    random_background: bool
    seed: int

    @classmethod
    def from_training(cls, training: Mapping[str, Any]) -> "TrainSettings":
        """The settings of a full ``training`` section (:func:`ngp.train.settings.build_config`'s)."""
        missing = [f.name for f in fields(cls) if f.name not in training]
        if missing:
            raise ConfigError(f"nerf training settings lack {', '.join(missing)}")
        settings = cls(**{f.name: training[f.name] for f in fields(cls)})
        settings.check()
        return settings

    def check(self) -> None:
        minimum = {"downscale": 1, "holdout_every": 0, "val_images": 0, "target_samples": 1, "initial_rays": 1,
                   "min_rays": 1, "max_rays": 1, "grid_resolution": 1, "grid_update_interval": 1,
                   "grid_warmup_steps": 0, "seed": None}
        for name, low in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or (low is not None and value < low):
                raise ConfigError(f"nerf training {name} must be an integer{f' >= {low}' if low is not None else ''}, "
                                  f"got {value!r}")
        if self.min_rays > self.max_rays:
            raise ConfigError(f"nerf training min_rays ({self.min_rays}) exceeds max_rays ({self.max_rays})")
        for name, low, high, open_low in (("grid_threshold", 0.0, math.inf, False), ("grid_ema_decay", 0.0, 1.0, False),
                                          ("grid_sample_fraction", 0.0, 1.0, True)):
            value = getattr(self, name)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
                and (value > low if open_low else value >= low) and value <= high
            if not ok:
                raise ConfigError(f"nerf training {name} must be a number in {'(' if open_low else '['}{low}, "
                                  f"{high}], got {value!r}")
        for name in ("compact", "random_background"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"nerf training {name} must be true or false, got {getattr(self, name)!r}")


def n_cascades_for(aabb_scale: int) -> int:
    """instant-ngp's cascades: ``log2(aabb_scale) + 1``, each twice the size of the previous."""
    return int(round(math.log2(aabb_scale))) + 1


def build_grid(aabb: torch.Tensor, aabb_scale: int, settings: TrainSettings) -> OccupancyGrid:
    """The occupancy grid of a scene. The update schedule is the task's (see :meth:`NerfTask._update_grid`):
    the grid is built with a one-step warm-up, so that "step 0" asks it for a full pass."""
    s = settings
    return OccupancyGrid(aabb, resolution=s.grid_resolution, n_cascades=n_cascades_for(aabb_scale),
                         threshold=s.grid_threshold, ema_decay=s.grid_ema_decay,
                         update_interval=s.grid_update_interval, warmup_steps=1,
                         sample_fraction=s.grid_sample_fraction)


# ------------------------------------------------------------------------------------------- data
def builtin_scene_dir() -> Path:
    """Where ``builtin`` is generated: ``$XDG_CACHE_HOME/ngp/builtin-scene-v1`` (``~/.cache`` when the
    variable is unset or not absolute, as the XDG spec says)."""
    cache = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(cache) if cache and os.path.isabs(cache) else Path.home() / ".cache"
    return base / "ngp" / BUILTIN_CACHE_NAME


def resolve_data(data: str | Path) -> str:
    """A data argument as the run records it: ``builtin`` -> the built-in scene's cache folder, an
    existing path -> its absolute path (a resume may start elsewhere), anything else unchanged (the
    task reports it missing)."""
    return str(builtin_scene_dir()) if str(data) == BUILTIN else input_path(data)


def prepare_data(data: str, log: Callable[[str], None] = print) -> Path:
    """The data set folder or file to read: the built-in scene is generated on first use (atomically:
    an interrupted generation leaves nothing that looks complete) and reused afterwards."""
    from ngp.nerf.builtin_scene import builtin_scene_is_complete, make_builtin_scene

    path = Path(data)
    if path == builtin_scene_dir():
        if builtin_scene_is_complete(path, **BUILTIN_SCENE):
            log(f"using the built-in scene in {path}")
        else:
            log(f"generating the built-in scene into {path} (once; later runs reuse it) ...")
            make_builtin_scene(path, **BUILTIN_SCENE)
    elif not path.exists():
        raise FileNotFoundError(f"data set not found: {data}")
    return path


@dataclass
class Validation:
    """What the validation figures are measured on.

    Attributes:
        dataset: the frames: held out of training, or (``held_out`` False) the training frames.
        indices: the ``val_images`` frames of ``dataset`` rendered at evaluations and at the end.
        held_out: whether ``dataset`` was never trained on.
        description: one line saying which frames these are.
    """

    dataset: NerfDataset
    indices: list[int]
    held_out: bool
    description: str

    @property
    def prefix(self) -> str:
        """``val`` for held-out frames, ``train_view`` for training views (figure and file names)."""
        return "val" if self.held_out else "train_view"


def spread_indices(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (first and last included), fewer if ``n < k``."""
    if n <= 0 or k <= 0:
        return []
    return sorted({round(i * (n - 1) / max(k - 1, 1)) for i in range(k)})


def blender_validation_split(path: Path) -> str | None:
    """A Blender folder's validation split: ``val``, else ``test``, else None."""
    folder = path if path.is_dir() else path.parent
    return next((s for s in ("val", "test") if (folder / f"transforms_{s}.json").is_file()), None)


def load_training_data(path: Path, settings: TrainSettings,
                       log: Callable[[str], None] = print) -> tuple[NerfDataset, Validation]:
    """The training frames and the validation frames (see the module doc) -> ``(train, validation)``."""
    s = settings
    train = load_dataset(path, "train", s.downscale, holdout_every=s.holdout_every)
    if len(train) == 0:
        raise ValueError(f"{path}: no frames left to train on")
    held, description = held_out_frames(path, train, s)
    if held is None:
        description += "; figures on training views are labelled train_view_psnr"
        validation = Validation(train, spread_indices(len(train), s.val_images), False, description)
    else:
        validation = Validation(held, spread_indices(len(held), s.val_images), True, description)
    log(f"training on {len(train)} images of {int(train.cameras.width[0])}x{int(train.cameras.height[0])} "
        f"({path}), aabb_scale {train.aabb_scale}; {description}")
    return train, validation


def held_out_frames(path: Path, train: NerfDataset, settings: TrainSettings) -> tuple[NerfDataset | None, str]:
    """The frames never trained on (None if there are none) and a line saying which they are."""
    if train.format == "blender":
        split = blender_validation_split(path)
        if split is None:
            return None, "no validation split (no transforms_val.json or transforms_test.json)"
        val = load_dataset(path if path.is_dir() else path.parent, split, settings.downscale)
        return val, f"validation on the {_frames(len(val))} of transforms_{split}.json (never trained on)"
    if not train.n_held_out:
        return None, train.holdout_summary()
    val = load_dataset(path, "val", settings.downscale, holdout_every=settings.holdout_every)
    return val, train.holdout_summary()


def _frames(n: int) -> str:
    return f"{n} frame{'s' * (n != 1)}"


def transforms_digest(*datasets: NerfDataset) -> str:
    """SHA-1 of the transforms files the data sets were read from (a resume must find them unchanged)."""
    digest = hashlib.sha1()
    for path in sorted({str(d.transforms_path) for d in datasets if d.transforms_path is not None}):
        digest.update(Path(path).name.encode() + b"\0" + Path(path).read_bytes())
    return digest.hexdigest()[:16]


def scene_info(train: NerfDataset, data: str, settings: TrainSettings) -> dict[str, Any]:
    """What reading commands need of the data, as JSON (they run without it)."""
    cams = train.cameras
    return {"data": data, "transforms": str(train.transforms_path), "format": train.format,
            "downscale": settings.downscale, "holdout_every": settings.holdout_every,
            "white_background": bool(train.white_background), "linear": bool(train.linear),
            "scale": train.scale, "offset": list(train.offset), "aabb": train.aabb.tolist(),
            "aabb_scale": train.aabb_scale, "focal": float(cams.fx[0]), "width": int(cams.width[0]),
            "height": int(cams.height[0]), "n_train_images": len(train)}


# ------------------------------------------------------------------------------------------- task
class NerfTask:
    """A NeRF being trained: field, occupancy grid, optimizer, adaptive ray count (see the module doc).

    Built by :func:`build_nerf_task`. ``model`` is the :class:`~ngp.nerf.field.NerfField`; the grid,
    the ray count, the sampling generator and the training cameras travel in :meth:`extra_state`.
    """

    primitive = PRIMITIVE

    def __init__(self, train: NerfDataset, validation: Validation, config: dict[str, Any], device: torch.device,
                 precision: str):
        self.config = config
        self.settings = s = TrainSettings.from_training(config["training"])
        self.dataset, self.validation = train, validation
        # bfloat16 MLPs where the CPU has bfloat16 instructions: 4-6x faster matrix products, and the
        # same validation PSNR as float32 (docs/performance.md)
        self.amp = MixedPrecision(device, precision, cpu_bfloat16=True)
        torch.manual_seed(s.seed)  # the same initial weights however the task is built
        self.model = NerfField(train.aabb, train.aabb_scale, model_config(config)).to(device)
        self.grid = build_grid(train.aabb, train.aabb_scale, s).to(device)
        if train.aabb_scale > 1:
            # cells no camera sees stay empty (instant-ngp's mark_untrained); NeRF-synthetic cameras
            # surround the unit cube, where this would cost seconds and change nothing
            self.grid.mark_untrained(train.cameras)
            # mark_untrained also thresholds the (still zero) densities, which empties the grid;
            # until the first update every cell some camera sees stays occupied
            with torch.no_grad():
                self.grid.occupied.copy_(self.grid.valid & (self.grid.density >= 0))
        self.renderer = Renderer(self.model, self.grid, RenderSettings.for_scene(train.aabb_scale))
        self.optimizer = build_optimizer(config["optimizer"], self.model)
        self.loss_fn = build_loss(config["loss"])
        self.generator = torch.Generator().manual_seed(s.seed)
        self.n_rays: int | None = None  # set by a probe march at the first step
        self.scene = scene_info(train, str(config["training"]["data"]), s)
        self._identity = self._data_identity()
        self._grid_updated_at = -1

    # -- the step -----------------------------------------------------------------------------------
    def training_batch(self, step: int) -> Batch:
        s = self.settings
        # the loop runs this under autocast; only the field's MLPs may run in float16: rays, marching
        # and grid updates stay float32 (float16 rays are off by pixels, and the CPU kernels refuse them)
        with self._float32():
            self._update_grid(step)
            if self.n_rays is None:
                self.n_rays = self._initial_rays()
            origins, directions, background, target = self._sample_rays(self.n_rays)
        out = self.renderer.render_rays(origins, directions, background, self.generator, compact=s.compact)
        loss = self.loss_fn(out.color, target)  # float32: compositing takes and returns float32
        return Batch(loss, out.n_samples, (out, target, self.n_rays))

    def _sample_rays(self, n: int) -> tuple[torch.Tensor, ...]:
        """``n`` random training pixels -> ``origins, directions [n, 3]``, ``background [n, 3]`` and the
        ``target [n, 3]`` colours composited on it, on the task's device."""
        cam, pixel_xy, rgba = self.dataset.sample_batch(n, self.generator)
        origins, directions = generate_rays(self.dataset.cameras, cam, pixel_xy)
        if self.settings.random_background:
            background = torch.rand(n, 3, generator=self.generator)
        else:
            background = torch.ones(n, 3) if self.dataset.white_background else torch.zeros(n, 3)
        target = rgba[:, :3] * rgba[:, 3:] + background * (1.0 - rgba[:, 3:])
        return tuple(t.to(self.amp.device, non_blocking=True) for t in (origins, directions, background, target))

    def _float32(self):
        return torch.autocast(self.amp.device.type, enabled=False)

    def after_step(self, batch: Batch, applied: bool) -> dict[str, float]:
        out, target, n_rays = batch.extra
        mse = (out.color.detach() - target).square().mean().item()
        self._adapt_batch(out.n_samples, out.n_marched)
        return {"psnr": -10.0 * math.log10(max(mse, 1e-10)), "rays": n_rays, "samples": out.n_samples}

    def _update_grid(self, step: int) -> None:
        """Occupancy-grid update every ``grid_update_interval`` steps (none at step 0, where the
        densities are noise and every cell stays occupied). Updates at steps below
        ``grid_warmup_steps`` that are powers of two evaluate every cell; the others a fraction
        (see :class:`TrainSettings`). A step retried after a skipped (non-finite) one is not updated twice."""
        s = self.settings
        if step == 0 or step % s.grid_update_interval or step == self._grid_updated_at:
            return
        self._grid_updated_at = step
        full = step < s.grid_warmup_steps and (step & (step - 1)) == 0
        # in the training's precision (bfloat16 on most CPUs, as the pre-pass and rendering): lego's
        # 262k-point update 79-80 -> 67-73 ms, fox's 786k 250-261 -> 224-229 ms (measured)
        with torch.no_grad(), self.amp.autocast():
            self.grid.update(0 if full else step, self.model.density, force=True, generator=self.generator)

    def _initial_rays(self) -> int:
        """Rays for the first step: march a probe batch to see how many samples a ray gets."""
        cam, pixel_xy, _ = self.dataset.sample_batch(256, self.generator)
        origins, directions = generate_rays(self.dataset.cameras, cam, pixel_xy)
        samples = self.renderer.march(origins.to(self.amp.device), directions.to(self.amp.device))
        per_ray = max(samples.n_samples / 256, 1.0)
        s = self.settings
        return int(min(max(s.target_samples / per_ray // 64 * 64, s.min_rays), s.max_rays))

    def _adapt_batch(self, measured_samples: int, marched_samples: int | None = None) -> None:
        """instant-ngp's rule: scale the ray count so the next batch has about ``target_samples``
        (after compaction). The samples marched before compaction are held to 16x that, which bounds
        memory when most samples lie behind surfaces or nothing is occupied yet."""
        s = self.settings
        if measured_samples == 0 and not marched_samples:
            return  # nothing to learn from (e.g. rays all missed): keep the ray count
        wanted = self.n_rays * s.target_samples / max(measured_samples, 1)
        if marched_samples:
            wanted = min(wanted, self.n_rays * 16 * s.target_samples / marched_samples)
        self.n_rays = int(min(max(round(wanted / 128) * 128, s.min_rays), s.max_rays))

    # -- evaluation and outputs -----------------------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """PSNR of the (averaged) model on the ``val_images`` validation frames: ``{"val_psnr": ...}``
        (``train_view_psnr`` when nothing was held out)."""
        v = self.validation
        if not v.indices:
            return {}
        result = evaluate(self.renderer, v.dataset, v.indices, with_ssim=False, progress=False)
        return {f"{v.prefix}_psnr": round(result.mean_psnr, 4)}

    def write_outputs(self, run: RunFolder, state: LoopState, progress: bool) -> dict[str, Any]:
        """``val_XX.png`` (render | ground truth) and the final figures."""
        v = self.validation
        metrics: dict[str, Any] = {"val_psnr": None}
        if v.indices:
            result = evaluate(self.renderer, v.dataset, v.indices, with_ssim=False, keep_renders=True, progress=False)
            background = background_for(v.dataset)
            for k, (i, render) in enumerate(zip(v.indices, result.renders)):
                truth = ground_truth(v.dataset, i, background)
                write_png(run.file(f"{v.prefix}_{k:02d}.png"), side_by_side(render, truth))
            metrics[f"{v.prefix}_psnr"] = round(result.mean_psnr, 4)
            metrics[f"{v.prefix}_per_image"] = [
                {"frame": v.dataset.frame_indices[r["index"]], "file": r["file"], "psnr": round(r["psnr"], 4)}
                for r in result.per_image]
        metrics["validation"] = {"held_out": v.held_out, "split": v.dataset.split, "n_frames": len(v.dataset),
                                 "n_rendered": len(v.indices), "description": v.description}
        metrics.update({"occupancy_fraction": round(self.grid.occupancy_fraction, 5),
                        "final_rays_per_batch": self.n_rays,
                        "n_params": sum(p.numel() for p in self.model.parameters()), "scene": self.scene})
        return metrics

    # -- state --------------------------------------------------------------------------------------
    def data_identity(self) -> dict[str, Any]:
        return dict(self._identity)

    def _data_identity(self) -> dict[str, Any]:
        """What the data was when loaded (a file edited during training does not change it)."""
        val = self.validation.dataset if self.validation.held_out else None
        return {"data": self.scene["data"], "format": self.dataset.format,
                "transforms_sha1": transforms_digest(*[d for d in (self.dataset, val) if d is not None]),
                "n_train_images": len(self.dataset), "n_val_images": len(val) if val is not None else 0,
                "downscale": self.settings.downscale, "resolution": [self.scene["width"], self.scene["height"]]}

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors = {f"grid.{k}": v for k, v in self.grid.state_dict().items()}
        tensors["generator"] = self.generator.get_state()
        tensors["scene.c2w"] = self.dataset.cameras.c2w  # for orbit videos, which run without the data
        return tensors, {"n_rays": self.n_rays, "scene": self.scene}

    def load_extra_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        load_grid_state(self.grid, tensors, "the checkpoint")
        if "generator" in tensors:
            self.generator.set_state(tensors["generator"])
        self.n_rays = meta.get("n_rays")


def load_grid_state(grid: OccupancyGrid, tensors: Mapping[str, torch.Tensor], where: Any) -> None:
    """The occupancy grid from a checkpoint's ``grid.*`` task tensors."""
    try:
        grid.load_state_dict(subset(tensors, "grid."))
    except (RuntimeError, KeyError, ValueError) as error:
        raise CheckpointError(f"{where}: the occupancy grid does not match the config: {error}") from None


def check_model_config(config: Mapping[str, Any]) -> None:
    """Build the model, optimizer and loss once in a unit box (about 0.1 s), so that a bad model
    config fails before the data is loaded or the built-in scene generated."""
    field = NerfField(torch.tensor([[0.0] * 3, [1.0] * 3]), 1, model_config(config))
    build_optimizer(config["optimizer"], field)
    build_loss(config["loss"])


def build_nerf_task(config: dict[str, Any], device: torch.device, precision: str,
                    log: Callable[[str], None] = print) -> NerfTask:
    """Load the data named by ``config["training"]["data"]`` (generating the built-in scene if that is
    it) with its validation frames, and build the task. Raises FileNotFoundError / ValueError on bad
    data, ConfigError on bad settings, before any training."""
    training = config["training"]
    if not training.get("data"):
        raise ValueError("no data set given to train on")
    drop_ignored_sections(config)
    settings = TrainSettings.from_training(training)
    check_model_config(config)
    path = prepare_data(str(training["data"]), log)
    train, validation = load_training_data(path, settings, log)
    return NerfTask(train, validation, config, device, precision)


def train_nerf(data: str | Path, out: str | Path, seconds: float | None = None, steps: int | None = None,
               config: str | Path | Mapping[str, Any] | None = None, seed: int | None = None,
               downscale: int | None = None, val_images: int | None = None, target_samples: int | None = None,
               holdout_every: int | None = None, progress: bool = True, device: str = "auto",
               precision: str = "auto", resume: bool = False, force: bool = False,
               checkpoint_every: float | None = None, eval_at=None) -> dict[str, Any]:
    """Train a NeRF on ``data`` (a data set folder, a transforms file, or ``"builtin"``) into the run
    folder ``out``; returns the metrics (also in ``out/metrics.json``).

    Options left None take the config's ``training`` values (``ngp/configs/nerf/base.json``). A
    resumed run (``resume=True``) keeps its settings and refuses other data or another ``downscale``.

    Example:
        >>> metrics = train_nerf("builtin", "runs/builtin", seconds=120, eval_at=[60])
        >>> metrics["val_psnr"], metrics["evals"]
    """
    overrides = {"data": resolve_data(data), "seconds": seconds, "steps": steps, "seed": seed,
                 "downscale": downscale, "val_images": val_images, "target_samples": target_samples,
                 "holdout_every": holdout_every, "checkpoint_every": checkpoint_every, "eval_at": eval_at}
    request = TrainRequest(out, config, overrides, resume, force, device, precision, progress)
    log = print if progress else silent
    return train_run(PRIMITIVE, functools.partial(build_nerf_task, log=log), request, log=log,
                     ignored_sections=IGNORED_KEYS)


def summary_line(metrics: Mapping[str, Any], out: Path | str) -> str:
    """The line ``ngp nerf train`` ends with."""
    session = metrics["session"]
    rate = session.get("samples_per_second") or 0.0
    v = metrics["validation"]
    if metrics.get("val_psnr") is not None:
        quality = f"validation PSNR {metrics['val_psnr']:.2f} dB on {v['n_rendered']} held-out frames ({v['split']})"
    elif metrics.get("train_view_psnr") is not None:
        quality = (f"no held-out frames: PSNR on {v['n_rendered']} training views {metrics['train_view_psnr']:.2f} dB "
                   "(train_view_psnr, not a validation figure)")
    else:
        quality = "no validation figure (val_images 0)"
    return (f"trained {session['steps']} steps in {session['seconds']:.0f} s ({rate / 1e3:.0f}k samples/s; "
            f"{metrics['steps']} steps in all); {quality}; peak memory {metrics['peak_memory_mb']:.0f} MiB; "
            f"wrote {out}")
