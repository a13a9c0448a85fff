"""Learning a signed distance function from a mesh: instant-ngp's SDF task, as a :class:`~ngp.train.loop.Task`.

The config is ``ngp/configs/sdf/base.json`` (instant-ngp's ``configs/sdf/base.json`` plus a
``training`` section) deep-merged with the user's; instant-ngp's own ``configs/sdf/*.json`` load as
they are and get the training defaults. ``training`` holds the loop's keys and the SDF's own:

``batch_size``          samples per step (4/8 on the surface, 3/8 near it, 1/8 uniform in the box)
``pool_size``           off-surface samples with precomputed ground truth (:class:`~ngp.sdf.sampling.SamplePool`)
``pool_refresh``        pool entries recomputed each step
``surface_offset_scale`` instant-ngp's scale of the near-surface noise
``coarse_to_fine``      levels faded in over the first steps (:mod:`ngp.sdf.regularization`)
``surface_regularization`` eikonal and curvature terms by central differences on surface samples

Each step draws a batch from the pool (filled in the run's first step, so a time budget includes
filling it, as instant-ngp's includes its training-set generation) and returns the configured loss
(MAPE by default); the shared loop (:mod:`ngp.train.loop`) does the rest. At the end the averaged
model is measured and the run folder receives, besides the loop's ``checkpoint/``, ``metrics.json``
and ``training.png``::

    mesh.ply     marching cubes of the learned SDF, in the input mesh's units
    render.png   the learned surface, sphere-traced

Resume is exact: the checkpoint keeps the sample pool (points and distances, 4 MB at the default
2^18), its cursors and the sampler's NumPy RNG state (``rng.bit_generator.state``, JSON), beside the
model, optimizer and torch RNG the loop keeps; a resumed run draws the same batches as an uninterrupted
one and, on the CPU, computes the same losses bit for bit. A changed mesh (path, vertex or face count,
content hash) is refused.

Example:
    >>> metrics = fit_sdf("armadillo.obj", "runs/armadillo", seconds=60)
    >>> metrics["iou_grid"], metrics["chamfer_mesh_units"], metrics["steps"]
"""

from __future__ import annotations

import functools
import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from ngp.config import require_float, require_int
from ngp.encodings import Grid
from ngp.io.checkpoints import subset
from ngp.io.meshes import Mesh, load_mesh, normalize_mesh, save_mesh
from ngp.io.runs import RunFolder
from ngp.losses import build_loss
from ngp.optim import build_optimizer
from ngp.sdf.extract import extract_mesh
from ngp.sdf.metrics import (cell_centres, chamfer_distance, field_normal_angle, grid_iou, iou, mesh_normal_angle,
                             model_inside, near_surface_agreement)
from ngp.sdf.model import NeuralSDF
from ngp.sdf.regularization import (active_levels, check_coarse_to_fine, check_surface_regularization,
                                    finite_difference_points, finite_difference_step, regularization_enabled,
                                    surface_terms)
from ngp.sdf.render import render_sdf, write_png
from ngp.sdf.sampling import MeshSDF, SampleCounts, SampleGenerator, SamplePool, mesh_aabb
from ngp.train.loop import Batch, LoopState
from ngp.train.precision import MixedPrecision
from ngp.train.session import TrainRequest, input_path, train_run

PRIMITIVE = "sdf"
#: The mid-training evaluation (``--eval-at``): IoU on a grid this coarse, sign accuracy on this many
#: near-surface samples; a second or so on two cores, where the final 128^3 IoU and Chamfer take ~10 s.
EVAL_IOU_RESOLUTION = 64
EVAL_NEAR_SAMPLES = 2**15


@dataclass(frozen=True)
class SDFOutputs:
    """What the end of a run writes and measures (options of the command, not of the training: they
    may differ when a run is resumed).

    Attributes:
        resolution: marching-cubes grid (longest side) for ``mesh.ply`` and the Chamfer distance.
        iou_resolution: grid (longest side) of the IoU in ``metrics.json``.
        render_size: ``(width, height)`` of ``render.png``.
        chamfer_samples: surface points sampled on each mesh for the Chamfer distance.
    """

    resolution: int = 256
    iou_resolution: int = 128
    render_size: tuple[int, int] = (512, 512)
    chamfer_samples: int = 100_000

    def __post_init__(self) -> None:
        for name, value, low in (("mesh resolution", self.resolution, 8),
                                 ("IoU grid resolution", self.iou_resolution, 2),
                                 ("render width", self.render_size[0], 1), ("render height", self.render_size[1], 1),
                                 ("Chamfer samples", self.chamfer_samples, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer of at least {low}, got {value!r}")


class SDFTask:
    """One mesh being learned (see the module doc). Built by :func:`build_sdf_task`.

    Ground truth and the sample pool stay on the CPU (libigl); each batch is copied to the model's device.
    """

    primitive = PRIMITIVE

    def __init__(self, mesh: Mesh, source: str, config: dict[str, Any], device: torch.device, precision: str,
                 outputs: SDFOutputs = SDFOutputs()):
        training = check_training(config["training"])
        self.config, self.outputs, self.mesh, self.source = config, outputs, mesh, source
        self.batch_size, self.seed = training["batch_size"], training["seed"]
        unit_mesh, normalization = normalize_mesh(mesh)
        self.aabb = mesh_aabb(unit_mesh.vertices)
        self.amp = MixedPrecision(device, precision)
        self.model = NeuralSDF(config["encoding"], config["network"], normalization, self.aabb, unit_mesh).to(device)
        self.loss_fn = build_loss(config["loss"])
        self.optimizer = build_optimizer(config["optimizer"], self.model)
        self.gt = MeshSDF(unit_mesh.vertices, unit_mesh.faces)
        self.rng = np.random.default_rng(self.seed)
        self.generator = SampleGenerator(self.gt, self.aabb, self.rng, training["surface_offset_scale"])
        self.pool: SamplePool | None = None
        self.seconds_pool = 0.0
        self._eval_set: dict[str, np.ndarray] | None = None
        self.coarse_to_fine, self.regularization = training["coarse_to_fine"], training["surface_regularization"]
        # Coarse-to-fine fades a grid's levels in; other encodings (Frequency, instant-ngp's Takikawa
        # octree) have no such levels and train whole from the start (documented in base.json).
        self.grid = self.model.field.encoding if isinstance(self.model.field.encoding, Grid) else None
        self._terms: dict[str, float] = {}

    # -- the step -----------------------------------------------------------------------------------
    def fill_pool(self) -> None:
        """Compute the pool of off-surface samples with ground truth (once per run; a resumed run
        brings its pool from the checkpoint)."""
        if self.pool is None:
            start = time.perf_counter()
            training = self.config["training"]
            self.pool = SamplePool(self.generator, training["pool_size"], training["pool_refresh"])
            self.seconds_pool = time.perf_counter() - start

    def training_batch(self, step: int) -> Batch:
        self.fill_pool()
        if self.grid is not None and self.coarse_to_fine["steps"] > 0:
            self.grid.set_active_levels(active_levels(self.coarse_to_fine, self.grid.layout.n_levels, step))
        points, distances = self.pool.batch(self.batch_size)
        device = self.amp.device
        points, distances = points.to(device, non_blocking=True), distances.to(device, non_blocking=True)
        if not regularization_enabled(self.regularization):
            predicted = self.model.unit_sdf(points)  # float32: unit_sdf casts the MLP's output
            return Batch(self.loss_fn(predicted, distances), self.batch_size)
        # The batch starts with its surface samples; their neighbours go through the same forward pass.
        n = min(self.regularization["points"], SampleCounts.of(self.batch_size).surface)
        h = finite_difference_step(self.regularization, step)
        values = self.model.unit_sdf(torch.cat([points, finite_difference_points(points[:n], h)]))
        predicted = values[:len(points)]
        eikonal, curvature = surface_terms(predicted[:n], values[len(points):], h)
        loss = self.loss_fn(predicted, distances)
        self._terms = {"eikonal": float(eikonal.detach()), "curvature": float(curvature.detach())}
        loss = loss + self.regularization["eikonal"] * eikonal + self.regularization["curvature"] * curvature
        return Batch(loss, self.batch_size)

    def after_step(self, batch: Batch, applied: bool) -> dict[str, float]:
        # The loss is the figure (IoU needs the ground truth of a grid, too slow per step), with the
        # regularisation terms when they are on.
        return self._terms

    def evaluate(self) -> dict[str, float]:
        """IoU on a coarse grid and sign accuracy near the surface, on points fixed for the run (so that
        evaluations compare), drawn from their own RNG (so that evaluating does not change training)."""
        points = self.eval_set()
        grid = iou(model_inside(self.model, points["grid"]), points["grid_inside"])
        near = model_inside(self.model, points["near"])
        return {f"iou_grid_{EVAL_IOU_RESOLUTION}": round(grid, 5),
                "sign_accuracy_near_surface": round(float((near == points["near_inside"]).mean()), 5)}

    def eval_set(self) -> dict[str, np.ndarray]:
        if self._eval_set is None:
            grid = cell_centres(self.aabb[0], self.aabb[1], EVAL_IOU_RESOLUTION)
            sampler = SampleGenerator(self.gt, self.aabb, np.random.default_rng(self.seed + 1))
            near = sampler.near_points(EVAL_NEAR_SAMPLES)
            self._eval_set = {"grid": grid, "grid_inside": self.gt.inside(grid), "near": near,
                              "near_inside": self.gt.inside(near)}
        return self._eval_set

    def write_outputs(self, run: RunFolder, state: LoopState, progress: bool) -> dict[str, Any]:
        metrics, vertices, faces = evaluate(self.model, self.gt, self.outputs, self.seed)
        save_mesh(run.file("mesh.ply"), vertices, faces)
        start = time.perf_counter()
        write_png(run.file("render.png"), render_sdf(self.model, *self.outputs.render_size))
        losses = [v for v in state.history["loss"][-10:] if v is not None]
        training = self.config["training"]
        return {**metrics, "seconds_render": round(time.perf_counter() - start, 3),
                "seconds_ground_truth_pool": round(self.seconds_pool, 3),
                "final_loss": float(np.mean(losses)) if losses else None, "batch_size": self.batch_size,
                "pool_size": training["pool_size"], "n_params": sum(p.numel() for p in self.model.parameters())}

    # -- state --------------------------------------------------------------------------------------
    def data_identity(self) -> dict[str, Any]:
        return {"source": self.source, "vertices": int(len(self.mesh.vertices)), "faces": int(len(self.mesh.faces)),
                "sha1": mesh_fingerprint(self.mesh)}

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        meta = {"rng": self.rng.bit_generator.state, "geometry": self.model.geometry(),
                "seconds_ground_truth_pool": self.seconds_pool}
        tensors: dict[str, torch.Tensor] = {}
        if self.pool is not None:  # None only if stopped before the first step
            pool_tensors, meta["pool"] = self.pool.state()
            tensors.update({f"pool.{k}": v for k, v in pool_tensors.items()})
        return tensors, meta

    def load_extra_state(self, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
        if "rng" in meta:  # in place: the sample generator holds this Generator
            self.rng.bit_generator.state = meta["rng"]
        active = meta.get("geometry", {}).get("active_levels")
        if self.grid is not None and active is not None:  # the model as saved, until the next step sets it
            self.grid.set_active_levels(float(active))
        self.seconds_pool = float(meta.get("seconds_ground_truth_pool", 0.0))
        if "pool" in meta:
            self.pool = SamplePool.from_state(self.generator, self.config["training"]["pool_refresh"],
                                              subset(tensors, "pool."), meta["pool"])


def check_training(training: Mapping[str, Any]) -> Mapping[str, Any]:
    """Check the SDF's own ``training`` keys (the loop checks its own); raises ConfigError naming the key."""
    what = "sdf config 'training'"
    require_int(training["batch_size"], "batch_size", what, 8)
    require_int(training["pool_size"], "pool_size", what, 8)
    require_int(training["pool_refresh"], "pool_refresh", what, 0)
    require_float(training["surface_offset_scale"], "surface_offset_scale", what, 1e-6)
    # A config without these sections is a checkpoint's from before they existed: that run trained
    # without them, and a resumed run keeps its config, so they stay off.
    coarse_to_fine = training.get("coarse_to_fine", {"steps": 0})
    regularization = training.get("surface_regularization", {"eikonal": 0.0, "curvature": 0.0})
    return {**training, "coarse_to_fine": check_coarse_to_fine(coarse_to_fine),
            "surface_regularization": check_surface_regularization(regularization)}


def build_sdf_task(config: dict[str, Any], device: torch.device, precision: str,
                   outputs: SDFOutputs = SDFOutputs()) -> SDFTask:
    """Check the config, read the mesh named by ``config["training"]["data"]`` and build the task."""
    training = check_training(config["training"])
    if not training.get("data"):
        raise ValueError("no mesh given to fit")
    return SDFTask(load_mesh(training["data"]), str(training["data"]), config, device, precision, outputs)


def fit_sdf(mesh: str | Path, out: str | Path, seconds: float | None = None, steps: int | None = None,
            config: str | Path | Mapping[str, Any] | None = None, seed: int | None = None, progress: bool = True,
            device: str = "auto", precision: str = "auto", resume: bool = False, force: bool = False,
            checkpoint_every: float | None = None, eval_at=None, batch_size: int | None = None,
            outputs: SDFOutputs = SDFOutputs()) -> dict[str, Any]:
    """Learn the SDF of ``mesh`` (OBJ, PLY, STL, OFF, glTF/GLB) into the run folder ``out``; returns the
    metrics. Every input is checked (run folder, outputs, config, mesh) before training starts.

    Example:
        >>> metrics = fit_sdf("armadillo.obj", "runs/armadillo", seconds=60, outputs=SDFOutputs(resolution=512))
    """
    overrides = {"data": input_path(mesh), "seconds": seconds, "steps": steps, "seed": seed, "batch_size": batch_size,
                 "checkpoint_every": checkpoint_every, "eval_at": eval_at}
    request = TrainRequest(out, config, overrides, resume, force, device, precision, progress)
    return train_run(PRIMITIVE, functools.partial(build_sdf_task, outputs=outputs), request)




def mesh_fingerprint(mesh: Mesh) -> str:
    """SHA-1 of the vertex (float64) and face (int64) arrays: tells a changed mesh from the one trained on."""
    digest = hashlib.sha1(np.ascontiguousarray(mesh.vertices, np.float64).tobytes())
    digest.update(np.ascontiguousarray(mesh.faces, np.int64).tobytes())
    return digest.hexdigest()


def evaluate(model: NeuralSDF, gt: MeshSDF, outputs: SDFOutputs = SDFOutputs(),
             seed: int = 0) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Measure ``model`` (as it is: average its weights first) against the ground truth ``gt`` (unit cube)
    -> ``(metrics, vertices [V, 3] in mesh units, faces [F, 3])`` of its marching-cubes mesh.

    Metrics: IoU on the ``outputs.iou_resolution`` grid and on near-surface samples, sign accuracy near
    the surface, Chamfer distance of the marching-cubes mesh (``None`` when it is empty) in the unit
    cube and in mesh units. See :mod:`ngp.sdf.metrics` for the definitions.
    """
    scale = model.normalization.scale
    start = time.perf_counter()
    vertices_unit, faces = extract_mesh(model, outputs.resolution, unit=True)
    seconds_mesh = time.perf_counter() - start
    near = near_surface_agreement(model, SampleGenerator(gt, model.aabb.cpu().numpy(), np.random.default_rng(seed + 1)))
    chamfer = chamfer_distance(vertices_unit, faces, gt.vertices, gt.faces, outputs.chamfer_samples,
                               np.random.default_rng(seed + 2))
    finite = bool(np.isfinite(chamfer))  # inf: marching cubes found no surface (JSON has no inf)
    mesh_angle = mesh_normal_angle(vertices_unit, faces, gt.vertices, gt.faces, outputs.chamfer_samples,
                                   np.random.default_rng(seed + 3))
    field_angle = field_normal_angle(model, gt.vertices, gt.faces, outputs.chamfer_samples,
                                     np.random.default_rng(seed + 4))
    metrics = {
        "iou_grid": grid_iou(model, gt, outputs.iou_resolution),
        "iou_grid_resolution": outputs.iou_resolution,
        "iou_near_surface": near["iou"],
        "sign_accuracy_near_surface": near["sign_accuracy"],
        "chamfer_unit_cube": chamfer if finite else None,
        "chamfer_mesh_units": chamfer * scale if finite else None,
        "chamfer_definition": "mean point-to-mesh distance extracted->GT plus GT->extracted, "
                              f"{outputs.chamfer_samples} surface samples each; unit cube = mesh scaled by "
                              f"1/{scale:.6g}; null: the extracted mesh is empty",
        "normal_angle_mesh_deg": round(mesh_angle, 4) if finite else None,
        "normal_angle_field_deg": round(field_angle, 4),
        "normal_angle_definition": "mean angle to the nearest ground-truth triangle's normal: mesh = the "
                                   "marching-cubes mesh's face normals at points uniform on it; field = the "
                                   "learned SDF's gradient at points uniform on the ground truth",
        "mesh_resolution": outputs.resolution,
        "mesh_vertices": int(len(vertices_unit)),
        "mesh_faces": int(len(faces)),
        "seconds_marching_cubes": round(seconds_mesh, 3),
        "threads": torch.get_num_threads(),
    }
    return metrics, model.normalization.to_mesh(vertices_unit), faces


def summary_line(metrics: Mapping[str, Any], out: str | Path) -> str:
    """What ``ngp sdf fit`` prints at the end (four lines)."""
    chamfer = metrics["chamfer_unit_cube"]
    chamfer_text = ("no surface extracted" if chamfer is None else
                    f"{chamfer:.3e} (unit cube) = {metrics['chamfer_mesh_units']:.3e} (mesh units)")
    rate = metrics["samples_per_second"] or 0.0
    return (f"fitted {Path(metrics['data']['source']).name}: {metrics['steps']} steps in {metrics['seconds']:.1f} s "
            f"(ground-truth pool {metrics['seconds_ground_truth_pool']:.1f} s, {rate / 1e6:.2f}M samples/s)\n"
            f"  IoU grid {metrics['iou_grid_resolution']}^3: {metrics['iou_grid']:.4f}   "
            f"IoU near surface: {metrics['iou_near_surface']:.4f}\n"
            f"  Chamfer: {chamfer_text}\n"
            f"  normal angle: mesh {_degrees(metrics.get('normal_angle_mesh_deg'))}, "
            f"field {_degrees(metrics.get('normal_angle_field_deg'))}; wrote {out}")


def _degrees(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} deg"


__all__ = ["EVAL_IOU_RESOLUTION", "PRIMITIVE", "SDFOutputs", "SDFTask", "build_sdf_task", "check_training",
           "evaluate", "fit_sdf", "mesh_fingerprint", "summary_line"]
