"""What the viewer shows of each primitive: a *view* renders any camera at any size, and says where to start.

A view is the viewer's whole knowledge of a primitive (the server knows nothing of NeRFs or SDFs):

* ``modes``: what the "show" menu offers (the first is the default);
* ``home``: the camera a new browser starts from, and ``up``: the world's up vector;
* ``render(camera, width, height, mode)`` -> ``[height, width, 3]`` uint8: one picture;
* ``frames()``: training cameras to draw as frustums (with thumbnails), ``points()``: a point cloud
  (NeRF: the occupied cells of the occupancy grid; ``points`` is None for views without one),
  ``mesh``: a surface to draw (SDF: ``mesh.ply``).

Views render the model they are given as it is *now*, so during training they show the weights being
trained (not the averaged ones, which would mean copying every weight per frame).

Example::

    >>> view = NerfView.from_run("runs/builtin")
    >>> image = view.render(view.home, 320, 240, "rgb")   # [240, 320, 3] uint8
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ngp.geometry.cameras import Cameras, generate_rays, orbit_camera, pixel_centers
from ngp.viewer.camera import ViewCamera

__all__ = ["Frame", "ImageView", "NerfView", "SdfView", "View", "view_from_run"]


@dataclass
class Frame:
    """A training camera: ``camera``, ``aspect`` (width / height), ``thumbnail`` (``[h, w, 3]`` uint8 or None)."""

    camera: ViewCamera
    aspect: float
    thumbnail: np.ndarray | None = None


class View(Protocol):
    modes: tuple[str, ...]
    home: ViewCamera
    up: np.ndarray
    size: float  # the scene's extent: frustum sizes and clipping planes follow it

    def render(self, camera: ViewCamera, width: int, height: int, mode: str) -> np.ndarray: ...

    def frames(self) -> list[Frame]: ...

    points: Any  # () -> [N, 3] float array, or None: nothing to show as points

    @property
    def mesh(self) -> Any: ...


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """``[H, W, 3]`` float in [0, 1] -> uint8."""
    image = image.float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float32)
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def colorize_depth(depth: np.ndarray, valid: np.ndarray, near: float, far: float) -> np.ndarray:
    """``[H, W]`` distances -> ``[H, W, 3]`` uint8 (turbo, near = blue ... far = red; black where ``valid`` is False)."""
    from matplotlib import colormaps

    t = np.clip((depth - near) / max(far - near, 1e-9), 0.0, 1.0)
    rgb = colormaps["turbo"](t)[..., :3]
    return to_uint8(np.where(valid[..., None], rgb, 0.0))


def _thumbnail(image: np.ndarray, width: int = 96) -> np.ndarray:
    """A small RGB copy of ``[H, W, C]`` uint8/uint16 (alpha on white): frustum pictures are tiny."""
    from PIL import Image

    a = np.asarray(image)
    if a.dtype == np.uint16:
        a = (a >> 8).astype(np.uint8)
    if a.shape[-1] == 4:
        alpha = a[..., 3:].astype(np.float32) / 255
        a = (a[..., :3] * alpha + 255 * (1 - alpha)).astype(np.uint8)
    h = max(1, round(a.shape[0] * width / a.shape[1]))
    return np.asarray(Image.fromarray(np.ascontiguousarray(a[..., :3])).resize((width, h), Image.BILINEAR))


# -------------------------------------------------------------------------------------------- NeRF
class NerfView:
    """A radiance field: ``rgb`` or ``depth`` through any camera, the training cameras as frustums, and the
    occupancy grid's occupied cells as points (world frame: ngp's, where the field lives)."""

    modes = ("rgb", "depth")

    def __init__(self, renderer, cameras: Cameras, images=None, white_background: bool = True):
        self.renderer = renderer.for_display()  # the live field and grid; rays stop at transmittance 0.01
        self.cameras = cameras
        self.images = images
        self.background = torch.ones(3) if white_background else torch.zeros(3)
        aabb = renderer.field.aabb.detach().cpu().double().numpy()
        self.center = aabb.mean(0)
        self.size = float(np.linalg.norm(aabb[1] - aabb[0]))
        ups = cameras.c2w[:, :, 1].double().mean(0).numpy() if len(cameras) else np.array([0.0, 1.0, 0.0])
        self.up = ups / max(np.linalg.norm(ups), 1e-9)
        self.home = _behind(ViewCamera.from_cameras(cameras, 0), self.center) if len(cameras) else \
            ViewCamera.look_at(self.center + [0, 0, self.size], self.center, self.up, 0.8)

    @classmethod
    def from_task(cls, task) -> "NerfView":
        """The field being trained by a :class:`~ngp.nerf.trainer.NerfTask`."""
        return cls(task.renderer, task.dataset.cameras, task.dataset.images, task.dataset.white_background)

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto", log=print) -> "NerfView":
        """A trained run (averaged weights); the training images become thumbnails where the data is found."""
        from ngp.nerf.runs import load_nerf_run

        loaded = load_nerf_run(run, device)
        scene = loaded.scene
        w, h, focal = int(scene["width"]), int(scene["height"]), float(scene["focal"])
        cameras = Cameras.from_intrinsics(loaded.c2w, focal, focal, w / 2, h / 2, w, h)
        return cls(loaded.renderer, cameras, _training_images(loaded, log), bool(scene.get("white_background")))

    def render(self, camera: ViewCamera, width: int, height: int, mode: str) -> np.ndarray:
        out = self.renderer.render_image(camera.cameras(width, height), 0, self.background)
        if mode == "depth":
            valid = out["opacity"].numpy() > 0.5
            depth = out["depth"].numpy()
            near = max(0.0, float(np.linalg.norm(camera.position - self.center)) - 0.5 * self.size)
            return colorize_depth(depth, valid, near, near + self.size)
        return to_uint8(out["color"])

    def frames(self) -> list[Frame]:
        cams = self.cameras
        frames = []
        for i in range(len(cams)):
            thumb = None
            if self.images is not None and i < len(self.images):
                thumb = _thumbnail(np.asarray(self.images[i]))
            frames.append(Frame(ViewCamera.from_cameras(cams, i), float(cams.width[i]) / float(cams.height[i]), thumb))
        return frames

    def points(self, limit: int = 200_000) -> np.ndarray:
        """``[N, 3]`` centres of occupied cells (finest cascade first; at most ``limit``, evenly thinned)."""
        grid = self.renderer.grid
        if grid is None:
            return np.zeros((0, 3), np.float32)
        flat = torch.nonzero(grid.occupied.reshape(-1)).squeeze(1)  # on the grid's device, which stays
        if len(flat) > limit:
            flat = flat[torch.linspace(0, len(flat) - 1, limit, device=flat.device).long()]
        return grid.cell_positions(flat).cpu().numpy()

    mesh = None


def _behind(camera: ViewCamera, center: np.ndarray, fraction: float = 0.2) -> ViewCamera:
    """``camera`` moved back along its view by ``fraction`` of its distance to ``center``: the view of a
    training camera, without standing inside its own frustum."""
    c2w = camera.c2w.copy()
    c2w[:, 3] -= fraction * float(np.linalg.norm(camera.position - center)) * camera.forward
    return ViewCamera(c2w, camera.fov_y)


def _training_images(loaded, log) -> list | None:
    """The run's training images (for frustum thumbnails), or None with a note when the data is gone."""
    from ngp.nerf.datasets import load_dataset

    data = loaded.training.get("data")
    try:
        dataset = load_dataset(data, "train", int(loaded.training.get("downscale", 1)),
                               holdout_every=int(loaded.training.get("holdout_every", 8)))
    except (OSError, ValueError) as error:
        log(f"training images not shown ({error})")
        return None
    return list(dataset.images)


# --------------------------------------------------------------------------------------------- SDF
class SdfView:
    """A learned SDF, sphere traced (``shaded`` or ``normals``), in the model's unit cube; with the run's
    ``mesh.ply`` (mapped into the unit cube) when there is one."""

    modes = ("shaded", "normals")

    def __init__(self, sdf, mesh=None):
        self.sdf = sdf
        self._mesh = mesh
        box = sdf.aabb.detach().cpu().double().numpy()
        self.size = float(np.linalg.norm(box[1] - box[0]))
        self.up = np.array([0.0, 1.0, 0.0])
        self.home = ViewCamera.from_cameras(orbit_camera(box, 512, 512, 30.0, 15.0, 35.0))

    @classmethod
    def from_task(cls, task) -> "SdfView":
        return cls(task.model)

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto", log=print) -> "SdfView":
        from ngp.sdf.model import NeuralSDF

        sdf = NeuralSDF.from_checkpoint(run, device)
        mesh = None
        path = Path(run) / "mesh.ply"
        if path.is_file():
            import trimesh

            mesh = trimesh.load(path, process=False)
            mesh.vertices = sdf.normalization.to_unit(torch.as_tensor(mesh.vertices)).numpy()
        return cls(sdf, mesh)

    def render(self, camera: ViewCamera, width: int, height: int, mode: str) -> np.ndarray:
        from ngp.sdf.render import render_view

        with torch.inference_mode():
            return render_view(self.sdf, camera.cameras(width, height), mode)

    def frames(self) -> list[Frame]:
        return []

    points = None

    @property
    def mesh(self):
        return self._mesh


# ------------------------------------------------------------------------------------------- image
#: Gap between the fitted image and the target beside it, as a fraction of the image width.
GAP = 0.05


class ImageView:
    """A fitted image on the plane ``z = 0`` (``x`` right, ``y`` up; width ``aspect``, height 1), with the
    target to its right. Every pixel of the view looks up the model at the point it sees, so zooming in
    shows the model at any resolution (and the target, bilinearly interpolated, beside it)."""

    modes = ("fitted | target", "fitted", "target")

    def __init__(self, model, aspect: float, linear: bool = False, target=None):
        self.model, self.aspect, self.linear, self.target = model, float(aspect), linear, target
        self.up = np.array([0.0, 1.0, 0.0])
        self.size = 2 * self.aspect + GAP * self.aspect
        self.home = ViewCamera.look_at([self.size / 2, 0.5, 1.6 * self.size / 2], [self.size / 2, 0.5, 0.0],
                                       self.up, 2 * math.atan(0.5))

    @classmethod
    def from_task(cls, task) -> "ImageView":
        image = task.image
        return cls(task.model, image.width / image.height, bool(getattr(image, "linear", False)), task.target)

    @classmethod
    def from_run(cls, run: str | Path, device: str = "auto", log=print) -> "ImageView":
        from ngp.image.data import ImageTarget
        from ngp.image.render import load_image_model
        from ngp.io.checkpoints import load_checkpoint
        from ngp.io.images import read_image

        model, info = load_image_model(run, device)
        _, meta = load_checkpoint(run, primitive="image")
        target = None
        source = meta["config"]["training"].get("data")
        try:
            target = ImageTarget(read_image(source)) if source else None
        except (OSError, ValueError) as error:
            log(f"target image not shown ({error})")
        return cls(model, int(info["width"]) / int(info["height"]), bool(info.get("linear", False)), target)

    def render(self, camera: ViewCamera, width: int, height: int, mode: str) -> np.ndarray:
        from ngp.io.images import linear_to_srgb

        origins, directions = generate_rays(camera.cameras(width, height), torch.zeros(width * height, dtype=torch.long),
                                            pixel_centers(width, height))
        t = -origins[:, 2] / directions[:, 2]
        hit = torch.isfinite(t) & (t > 0)
        points = origins[:, :2] + t.clamp(min=0)[:, None] * directions[:, :2]
        u, v = points[:, 0] / self.aspect, 1.0 - points[:, 1]  # image coordinates: v grows downwards
        image = torch.full((width * height, 3), 0.18)
        target_u = u - (1.0 + GAP) if mode == "fitted | target" else u
        inside = hit & (v >= 0) & (v <= 1)
        fitted = inside & (u >= 0) & (u <= 1) & (mode != "target")
        shown = inside & (target_u >= 0) & (target_u <= 1) & (mode != "fitted") & (self.target is not None)
        with torch.inference_mode():
            device = next(self.model.parameters()).device
            if fitted.any():
                xy = torch.stack([u[fitted], v[fitted]], -1)
                image[fitted] = _rgb(self.model(xy.to(device)).float().cpu())
            if shown.any():
                xy = torch.stack([target_u[shown], v[shown]], -1)
                image[shown] = _rgb(self.target.interpolate(xy).float().cpu())
        if self.linear:
            image = linear_to_srgb(image)
        return to_uint8(image.reshape(height, width, 3))

    def frames(self) -> list[Frame]:
        return []

    points = None

    mesh = None


def _rgb(values: torch.Tensor) -> torch.Tensor:
    """``[N, C]`` image values -> ``[N, 3]`` in [0, 1]: grey (and grey + alpha) repeated, alpha dropped."""
    return (values[:, :3] if values.shape[1] >= 3 else values[:, :1].expand(-1, 3)).clamp(0, 1)


VIEWS = {"nerf": NerfView, "sdf": SdfView, "image": ImageView}


def view_from_run(run: str | Path, device: str = "auto", log=print) -> View:
    """The view of a finished or interrupted run folder, whatever its primitive."""
    from ngp.io.runs import RunFolder

    folder = RunFolder.open(run)
    primitive = folder.primitive()
    return VIEWS[primitive].from_run(folder.path, device, log)


def view_from_task(task) -> View:
    """The view of a task being trained."""
    return VIEWS[task.primitive].from_task(task)
