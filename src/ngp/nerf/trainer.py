"""Training a NeRF as instant-ngp does: random pixels, an adaptive number of rays per batch, random
background colours for transparent data, occupancy-grid updates every 16 steps, Adam + EMA.

Example::

    >>> dataset = load_dataset("data/nerf/lego", downscale=2)
    >>> trainer = NerfTrainer(dataset, config=None, settings=TrainSettings(seed=0))
    >>> trainer.train(seconds=60)
    >>> trainer.save("runs/lego/checkpoint")
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field as dataclass_field
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from tqdm.auto import tqdm

from ngp.config import ConfigError
from ngp.io.checkpoints import flatten_optimizer_state, load_checkpoint, restore_optimizer, save_checkpoint
from ngp.losses import build_loss
from ngp.nerf.cameras import generate_rays
from ngp.nerf.datasets import NerfDataset
from ngp.nerf.field import NerfField, parse_nerf_config
from ngp.nerf.occupancy import OccupancyGrid
from ngp.nerf.renderer import Renderer, RenderSettings
from ngp.optim import build_optimizer
from ngp.training import MixedPrecision, resolve_device

__all__ = ["TrainSettings", "NerfTrainer", "StepStats", "CHECKPOINT_PRIMITIVE"]

CHECKPOINT_PRIMITIVE = "nerf"


@dataclass
class TrainSettings:
    """Training knobs that are not part of the model config.

    Attributes:
        target_samples: samples per step the ray count adapts to (instant-ngp: 2^18 on a GPU;
            2^16 is the CPU default, large enough for efficient matrix products).
        initial_rays, min_rays, max_rays: the adaptive ray count's start and bounds.
        grid_resolution, grid_threshold, grid_ema_decay, grid_update_interval: the occupancy grid
            (128^3 per cascade, density threshold 0.01, EMA 0.95, updated every 16 steps).
        grid_warmup_steps, grid_sample_fraction: updates at steps 16, 32, 64, ... below
            ``grid_warmup_steps`` evaluate every cell, the others ``grid_sample_fraction`` of the
            cells at random plus as many occupied ones. (instant-ngp: every update before step 256
            is full, early ones come every step, later ones use 1/4. On a CPU a full update of 2M
            cells costs as much as several training steps, hence the leaner defaults.)
        compact: run the backward pass only on samples in front of where a ray turns opaque.
        random_background: composite transparent training pixels on a random colour per ray.
        seed: seeds the model's initialisation and the pixel sampling.
    """

    target_samples: int = 1 << 16
    initial_rays: int = 1 << 12
    min_rays: int = 1 << 7
    max_rays: int = 1 << 16
    grid_resolution: int = 128
    grid_threshold: float = 0.01
    grid_ema_decay: float = 0.95
    grid_update_interval: int = 16
    grid_warmup_steps: int = 256
    grid_sample_fraction: float = 1 / 16
    compact: bool = True
    random_background: bool = True
    seed: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], device: torch.device | None = None) -> "TrainSettings":
        """Settings from ``values`` over the defaults for ``device`` (see :meth:`defaults_for`)."""
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"training settings: unknown key(s) {', '.join(map(repr, unknown))}")
        return cls(**{**cls.defaults_for(device), **values})

    @staticmethod
    def defaults_for(device: torch.device | None) -> dict[str, Any]:
        """Overrides of the CPU defaults on a GPU: instant-ngp's 2^18 samples per step (a GPU step of
        2^18 samples costs little more than one of 2^16), and room for the rays that takes."""
        if device is not None and torch.device(device).type == "cuda":
            return {"target_samples": 1 << 18, "max_rays": 1 << 18}
        return {}


@dataclass
class StepStats:
    """One training step: ``loss``, ``psnr`` of the batch (dB), rays and samples used, seconds taken."""

    step: int
    loss: float
    psnr: float
    n_rays: int
    n_samples: int
    seconds: float


@dataclass
class History:
    """Per-step statistics of a run (kept for the metrics and the training curve)."""

    steps: list[int] = dataclass_field(default_factory=list)
    seconds: list[float] = dataclass_field(default_factory=list)
    loss: list[float] = dataclass_field(default_factory=list)
    psnr: list[float] = dataclass_field(default_factory=list)
    samples: list[int] = dataclass_field(default_factory=list)

    def append(self, s: StepStats, elapsed: float) -> None:
        self.steps.append(s.step)
        self.seconds.append(elapsed)
        self.loss.append(s.loss)
        self.psnr.append(s.psnr)
        self.samples.append(s.n_samples)


def n_cascades_for(aabb_scale: int) -> int:
    """instant-ngp's cascades: ``log2(aabb_scale) + 1``, each twice the size of the previous."""
    return int(round(math.log2(aabb_scale))) + 1


class NerfTrainer:
    """A NeRF's model, occupancy grid, optimizer and training state.

    Args:
        dataset: the training images and cameras (:class:`~ngp.nerf.datasets.NerfDataset`);
            ``None`` is allowed when only rendering from a checkpoint (:meth:`from_checkpoint`).
        config: NeRF config (file, dict or ``None`` for the defaults), see
            :func:`~ngp.nerf.field.parse_nerf_config`.
        settings: :class:`TrainSettings`.
        aabb, aabb_scale: the scene box; taken from ``dataset`` when it is given.
        device: where the field, the occupancy grid and the optimizer live (``auto``: CUDA when
            available). The data set stays on the CPU; each batch of rays is copied over.
        precision: the MLPs' precision, see :class:`ngp.training.MixedPrecision` (``auto``: float16
            with loss scaling on CUDA, float32 on a CPU).
    """

    def __init__(self, dataset: NerfDataset | None, config=None, settings: TrainSettings | None = None,
                 aabb: torch.Tensor | None = None, aabb_scale: int | None = None,
                 device: str | torch.device = "auto", precision: str = "auto"):
        self.device = resolve_device(device)
        self.amp = MixedPrecision(self.device, precision)
        self.settings = settings or TrainSettings.from_dict({}, self.device)
        self.config = parse_nerf_config(config)
        self.dataset = dataset
        #: ``[n, 3, 4]`` training camera poses (kept in checkpoints, for orbit videos)
        self.scene_c2w = dataset.cameras.c2w.clone() if dataset is not None else None
        aabb = dataset.aabb if dataset is not None else aabb
        aabb_scale = dataset.aabb_scale if dataset is not None else aabb_scale
        torch.manual_seed(self.settings.seed)
        self.field = NerfField(aabb, aabb_scale, self.config)
        s = self.settings
        self.grid = OccupancyGrid(self.field.aabb, resolution=s.grid_resolution,
                                  n_cascades=n_cascades_for(aabb_scale), threshold=s.grid_threshold,
                                  ema_decay=s.grid_ema_decay, update_interval=s.grid_update_interval,
                                  warmup_steps=1, sample_fraction=s.grid_sample_fraction)
        self.field.to(self.device)
        self.grid.to(self.device)
        if dataset is not None and aabb_scale > 1:
            # cells no camera sees stay empty (instant-ngp's mark_untrained); NeRF-synthetic
            # cameras surround the unit cube, where this would cost seconds and change nothing
            self.grid.mark_untrained(dataset.cameras)
            # mark_untrained also thresholds the (still zero) densities, which empties the grid;
            # until the first update, every cell some camera sees stays occupied
            with torch.no_grad():
                self.grid.occupied.copy_(self.grid.valid & (self.grid.density >= 0))
        self.renderer = Renderer(self.field, self.grid, RenderSettings.for_scene(aabb_scale))
        self.optimizer = build_optimizer(self.config["optimizer"], self.field)
        self.loss_fn = build_loss(self.config["loss"])
        self.generator = torch.Generator().manual_seed(self.settings.seed)
        self.step = 0
        self.n_rays = s.initial_rays
        self.seconds = 0.0  # training time so far, over all sessions of a resumed run
        self.history = History()

    # ---------------------------------------------------------------------------------- training
    def _density_for_grid(self, positions: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.field.density(positions)

    def _update_grid(self) -> None:
        """Occupancy-grid update every ``grid_update_interval`` steps (none at step 0, where the
        densities are noise and every cell stays occupied). Updates at steps below
        ``grid_warmup_steps`` that are powers of two evaluate every cell; the others a fraction
        (see :class:`TrainSettings`)."""
        s = self.settings
        if self.step == 0 or self.step % s.grid_update_interval:
            return
        full = self.step < s.grid_warmup_steps and (self.step & (self.step - 1)) == 0
        # the grid is built with a one-step warm-up: "step 0" asks it for a full pass
        self.grid.update(0 if full else self.step, self._density_for_grid, force=True, generator=self.generator)

    def _initial_rays(self) -> int:
        """Rays for the first step: march a probe batch to see how many samples a ray gets."""
        cam, pixel_xy, _ = self.dataset.sample_batch(256, self.generator)
        origins, directions = generate_rays(self.dataset.cameras, cam, pixel_xy)
        samples = self.renderer.march(origins.to(self.device), directions.to(self.device))
        per_ray = max(samples.n_samples / 256, 1.0)
        s = self.settings
        return int(min(max(s.target_samples / per_ray // 64 * 64, s.min_rays), s.max_rays))

    def train_step(self) -> StepStats:
        """One optimisation step on a batch of ``self.n_rays`` random pixels."""
        start = time.perf_counter()
        s = self.settings
        self._update_grid()
        if self.step == 0:
            self.n_rays = self._initial_rays()
        cam, pixel_xy, rgba = self.dataset.sample_batch(self.n_rays, self.generator)
        origins, directions = generate_rays(self.dataset.cameras, cam, pixel_xy)
        if s.random_background:
            background = torch.rand(self.n_rays, 3, generator=self.generator)
        else:
            background = torch.ones(self.n_rays, 3) if self.dataset.white_background else torch.zeros(self.n_rays, 3)
        target = rgba[:, :3] * rgba[:, 3:] + background * (1.0 - rgba[:, 3:])
        origins, directions, background, target = (t.to(self.device, non_blocking=True)
                                                   for t in (origins, directions, background, target))

        with self.amp.autocast():  # the MLPs in float16 on a GPU; marching and compositing stay float32/64
            out = self.renderer.render_rays(origins, directions, background, self.generator, compact=s.compact)
        loss = self.loss_fn(out.color, target)  # float32: compositing takes and returns float32
        self.optimizer.zero_grad()
        self.amp.backward_and_step(loss, self.optimizer)

        mse = (out.color.detach() - target).square().mean().item()
        stats = StepStats(self.step, loss.item(), -10.0 * math.log10(max(mse, 1e-10)), self.n_rays,
                          out.n_samples, time.perf_counter() - start)
        self._adapt_batch(out.n_samples, out.n_marched)
        self.step += 1
        return stats

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

    def train(self, steps: int | None = None, seconds: float | None = None, progress: bool = True,
              callback: Callable[[StepStats], None] | None = None) -> History:
        """Train for ``steps`` more steps and/or ``seconds`` more seconds (whichever ends first).

        Shows a tqdm progress bar (loss, PSNR of the batch, samples/s, ETA) unless ``progress`` is
        False. Returns the history of all steps so far.
        """
        if steps is None and seconds is None:
            raise ValueError("give steps or seconds (or both)")
        if self.dataset is None:
            raise ValueError("this trainer has no dataset to train on")
        first_step, start = self.step, time.perf_counter()
        by_time = steps is None
        bar = tqdm(total=round(seconds) if by_time else steps, disable=not progress, unit="s" if by_time else "step",
                   desc="training", dynamic_ncols=True, bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} "
                   "[{elapsed}<{remaining}{postfix}]")
        samples_window: list[tuple[int, float]] = []
        self.field.train()
        try:
            while True:
                elapsed = time.perf_counter() - start
                if (steps is not None and self.step - first_step >= steps) or \
                        (seconds is not None and elapsed >= seconds):
                    break
                stats = self.train_step()
                elapsed = time.perf_counter() - start
                self.history.append(stats, self.seconds + elapsed)
                samples_window = (samples_window + [(stats.n_samples, stats.seconds)])[-20:]
                if callback is not None:
                    callback(stats)
                rate = sum(n for n, _ in samples_window) / max(sum(t for _, t in samples_window), 1e-9)
                bar.set_postfix_str(f"step={self.step} loss={stats.loss:.4f} psnr={stats.psnr:.2f} "
                                    f"rays={stats.n_rays} samples/s={rate / 1e3:.0f}k", refresh=False)
                bar.update(min(round(elapsed), bar.total) - bar.n if by_time else 1)
        finally:
            self.seconds += time.perf_counter() - start
            bar.close()
        return self.history

    # ------------------------------------------------------------------------------ checkpoints
    def state_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {f"field.{k}": v for k, v in self.field.state_dict().items()}
        tensors.update({f"grid.{k}": v for k, v in self.grid.state_dict().items()})
        opt_tensors, _ = flatten_optimizer_state(self.optimizer.state_dict())
        tensors.update(opt_tensors)
        tensors["generator_state"] = self.generator.get_state()
        if self.scene_c2w is not None:
            tensors["scene.c2w"] = self.scene_c2w
        return tensors

    def save(self, folder: str | Path, scene: Mapping[str, Any] | None = None) -> Path:
        """Write a resumable checkpoint (safetensors + JSON, no pickle) into ``folder``.

        ``scene`` (JSON) is stored alongside: e.g. the data path and downscale, the camera
        intrinsics a video render needs.
        """
        _, opt_meta = flatten_optimizer_state(self.optimizer.state_dict())
        config = {
            "primitive": CHECKPOINT_PRIMITIVE,
            "config": self.config,
            "settings": asdict(self.settings),
            "aabb": self.field.aabb.tolist(),
            "aabb_scale": self.field.aabb_scale,
            "step": self.step,
            "n_rays": self.n_rays,
            "seconds": self.seconds,
            "optimizer": opt_meta,
            "mixed_precision": self.amp.state_dict(),
            "scene": dict(scene or {}),
            "history": asdict(self.history),
        }
        return save_checkpoint(folder, self.state_tensors(), config)

    @classmethod
    def from_checkpoint(cls, folder: str | Path, dataset: NerfDataset | None = None, device: str | torch.device = "auto",
                        precision: str = "auto") -> tuple["NerfTrainer", dict]:
        """Rebuild a trainer on ``device`` from :meth:`save`'s folder -> ``(trainer, checkpoint json)``.

        Only numbers (safetensors) and JSON are read; a config with unknown keys raises
        :class:`~ngp.config.ConfigError` before anything is built.
        """
        tensors, meta = load_checkpoint(folder)
        if meta.get("primitive") != CHECKPOINT_PRIMITIVE:
            raise ValueError(f"{folder} is not a NeRF checkpoint (primitive={meta.get('primitive')!r})")
        for key in ("config", "settings", "aabb", "aabb_scale", "step", "optimizer"):
            if key not in meta:
                raise ValueError(f"NeRF checkpoint {folder} lacks {key!r} in its config.json")
        settings = TrainSettings.from_dict(meta["settings"])
        trainer = cls(dataset, meta["config"], settings, torch.tensor(meta["aabb"]), int(meta["aabb_scale"]),
                      device=device, precision=precision)
        if dataset is not None and not torch.allclose(dataset.aabb, trainer.field.aabb.cpu()):
            raise ValueError(f"the data set's aabb {dataset.aabb.tolist()} differs from the checkpoint's "
                             f"{meta['aabb']}: is it the same scene?")
        trainer._load_tensors(tensors, folder)
        restore_optimizer(trainer.optimizer, tensors, meta["optimizer"])
        if trainer.amp.scaler.is_enabled():  # a float32 run resumed in float16 starts a fresh scale
            trainer.amp.load_state_dict(meta.get("mixed_precision", {}))
        trainer.step = int(meta["step"])
        trainer.n_rays = int(meta.get("n_rays", settings.initial_rays))
        trainer.seconds = float(meta.get("seconds", 0.0))
        trainer.history = History(**meta.get("history", {}))
        return trainer, meta

    def _load_tensors(self, tensors: Mapping[str, torch.Tensor], folder) -> None:
        def part(prefix):
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        try:
            self.field.load_state_dict(part("field."))
            self.grid.load_state_dict(part("grid."))
        except (RuntimeError, KeyError, ValueError) as error:
            raise ValueError(f"checkpoint {folder} does not match its config: {error}") from None
        if "generator_state" in tensors:
            self.generator.set_state(tensors["generator_state"])
        if self.scene_c2w is None and "scene.c2w" in tensors:
            self.scene_c2w = tensors["scene.c2w"]
