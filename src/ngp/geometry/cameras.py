"""Pinhole cameras (with optional OpenCV lens distortion) and the rays through their pixels: the one
camera model of the NeRF (posed photos) and the SDF renderer (:func:`orbit_camera`).

Conventions
-----------
* ``c2w`` is camera-to-world, ``[n, 3, 4]`` = ``[R | t]``, in the **OpenGL / Blender camera
  convention**: the camera looks down its ``-z`` axis, ``+x`` points right and ``+y`` up in the
  image. The columns of ``R`` are the camera's x, y, z axes in world coordinates, ``t`` is the
  camera centre. (instant-ngp itself flips the camera's y and z axes to look down ``+z``; we keep
  the OpenGL camera axes and only change the *world* frame, see :mod:`ngp.nerf.datasets`.)
* Orbit cameras (:func:`orbit_camera`) live in a y-up world: ``azimuth`` turns about ``+y`` (0 looks
  from ``+z`` towards ``-z``), ``elevation`` lifts the camera towards ``+y``.
* Pixels: ``x`` runs right (columns), ``y`` runs down (rows). A pixel with integer index
  ``(i, j)`` covers ``[i, i+1) x [j, j+1)``, so its centre is at ``(i + 0.5, j + 0.5)``; the
  principal point ``(cx, cy)`` is in the same continuous coordinates (``W/2, H/2`` is the image
  centre).
* Distortion follows OpenCV's radial-tangential model (the one COLMAP's ``OPENCV`` camera,
  instant-ngp and nerfstudio store as ``k1, k2, p1, p2``). It acts on normalised image coordinates
  ``x = (u - cx) / fx``, ``y = (v - cy) / fy`` (y down, OpenCV style)::

      r2 = x^2 + y^2,  radial = 1 + k1 r2 + k2 r2^2
      x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
      y_d = y radial + p1 (r2 + 2 y^2) + 2 p2 x y

  A stored (distorted) pixel is undistorted by inverting this with Newton's method, as
  instant-ngp and nerfstudio do, before the ray is made.

Example::

    >>> cams = Cameras.from_intrinsics(c2w=torch.eye(4)[None, :3], fx=100.0, fy=100.0,
    ...                                cx=40.0, cy=30.0, width=80, height=60)
    >>> o, d = generate_rays(cams, torch.tensor([0]), torch.tensor([[40.0, 30.0]]))
    >>> d  # the centre pixel looks down -z
    tensor([[ 0.,  0., -1.]])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

__all__ = ["Cameras", "generate_rays", "distort", "undistort", "orbit_camera", "pixel_centers"]


@dataclass
class Cameras:
    """A batch of ``n`` pinhole cameras.

    Attributes:
        c2w: ``[n, 3, 4]`` float camera-to-world matrices (OpenGL camera axes, see module doc).
        fx, fy: ``[n]`` focal lengths in pixels.
        cx, cy: ``[n]`` principal point in pixels (continuous coordinates; ``W/2`` = centre).
        width, height: ``[n]`` int64 image sizes in pixels.
        k1, k2, p1, p2: ``[n]`` OpenCV distortion coefficients, or ``None`` for an ideal pinhole.

    Example::

        >>> cams = Cameras.from_intrinsics(torch.eye(4)[None, :3], 50.0, 50.0, 16.0, 12.0, 32, 24)
        >>> len(cams), cams.has_distortion
        (1, False)
    """

    c2w: torch.Tensor
    fx: torch.Tensor
    fy: torch.Tensor
    cx: torch.Tensor
    cy: torch.Tensor
    width: torch.Tensor
    height: torch.Tensor
    k1: torch.Tensor | None = None
    k2: torch.Tensor | None = None
    p1: torch.Tensor | None = None
    p2: torch.Tensor | None = None

    def __post_init__(self) -> None:
        n = self.c2w.shape[0]
        if self.c2w.shape != (n, 3, 4):
            raise ValueError(f"c2w must be [n, 3, 4], got {tuple(self.c2w.shape)}")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name != "c2w" and value is not None and value.shape != (n,):
                raise ValueError(f"Cameras.{f.name} must have shape [{n}], got {tuple(value.shape)}")
        dist = [self.k1, self.k2, self.p1, self.p2]
        if any(d is None for d in dist) and not all(d is None for d in dist):
            raise ValueError("give all of k1, k2, p1, p2 or none of them")

    @classmethod
    def from_intrinsics(cls, c2w, fx, fy, cx, cy, width, height, k1=None, k2=None, p1=None, p2=None):
        """Build from scalars or sequences; scalars are broadcast to every camera.

        ``c2w`` is ``[n, 3, 4]`` (or ``[n, 4, 4]``, whose last row is dropped).
        """
        c2w = torch.as_tensor(c2w, dtype=torch.float32)[:, :3, :4]
        n = c2w.shape[0]

        def vec(v, dtype=torch.float32):
            return None if v is None else torch.as_tensor(v, dtype=dtype).expand(n).clone()

        return cls(c2w, vec(fx), vec(fy), vec(cx), vec(cy), vec(width, torch.int64),
                   vec(height, torch.int64), vec(k1), vec(k2), vec(p1), vec(p2))

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def has_distortion(self) -> bool:
        return self.k1 is not None

    @property
    def centers(self) -> torch.Tensor:
        """``[n, 3]`` camera centres in world coordinates."""
        return self.c2w[:, :, 3]

    def _map(self, fn) -> Cameras:
        return Cameras(**{f.name: None if getattr(self, f.name) is None else fn(getattr(self, f.name))
                          for f in fields(self)})

    def to(self, device) -> Cameras:
        return self._map(lambda t: t.to(device))

    def __getitem__(self, index) -> Cameras:
        """Select cameras by an index tensor, list or slice (keeps the batch dimension)."""
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index])

    def scaled(self, factor: float) -> Cameras:
        """Cameras for images resized by ``factor`` (0.5 = half the pixels per side).

        Focal lengths and principal point scale with the image; distortion coefficients act on
        normalised coordinates and stay. Sizes are floored, as when cropping a remainder.
        """
        return replace(self, fx=self.fx * factor, fy=self.fy * factor, cx=self.cx * factor,
                       cy=self.cy * factor, width=(self.width * factor).floor().long(),
                       height=(self.height * factor).floor().long())


def distort(x: torch.Tensor, y: torch.Tensor, k1, k2, p1, p2) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV radial-tangential model on normalised coordinates (``[R]`` each) -> distorted ones.

    Example::

        >>> distort(torch.tensor([0.1]), torch.tensor([0.2]), 0.1, 0.0, 0.0, 0.0)
        (tensor([0.1005]), tensor([0.2010]))
    """
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * k2)
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    return xd, yd


def undistort(xd: torch.Tensor, yd: torch.Tensor, k1, k2, p1, p2,
              iterations: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Inverse of :func:`distort` by Newton's method (as nerfstudio's ``radial_and_tangential_undistort``).

    Starts at the distorted point; the model is close to the identity, so a few iterations
    converge to float precision for real lenses. Shapes ``[R]``; coefficients scalars or ``[R]``.
    The definition is :func:`ngp.kernels.reference.cameras.undistort`; float32 on the CPU takes a
    Numba kernel with the same numbers (``generate_rays`` for a fox training step's rays 1.6-1.9 ->
    0.3 ms, see :mod:`ngp.kernels.cpu.cameras`).

    Example::

        >>> x, y = undistort(*distort(torch.tensor([0.1]), torch.tensor([0.2]), 0.1, 0.0, 0.0, 0.0),
        ...                  0.1, 0.0, 0.0, 0.0)
    """
    from ngp.kernels.reference import cameras as reference
    from ngp.ops.backend import backend_for

    points_fit = (xd.ndim == 1 and yd.shape == xd.shape and xd.dtype == yd.dtype == torch.float32
                  and xd.device.type == yd.device.type == "cpu" and backend_for(xd.device) == "numba"
                  and not (torch.is_grad_enabled() and (xd.requires_grad or yd.requires_grad)))
    coefficients = _kernel_coefficients(xd, (k1, k2, p1, p2)) if points_fit else None
    if coefficients is None:
        return reference.undistort(xd, yd, k1, k2, p1, p2, iterations)
    from ngp.kernels.cpu import cameras as kernels

    return kernels.undistort(xd.contiguous(), yd.contiguous(), coefficients, iterations)


def _kernel_coefficients(xd: torch.Tensor, coefficients) -> list[torch.Tensor] | None:
    """The coefficients as float32 CPU tensors ``[R]`` or ``[1]`` for the kernel (``xd`` is ``[R]``), or
    None where the kernel does not apply (other dtypes, devices or shapes, gradients)."""
    out = []
    for c in coefficients:
        if isinstance(c, torch.Tensor):
            if c.dtype != torch.float32 or c.device.type != "cpu" or c.requires_grad or c.ndim > 1 \
                    or c.numel() not in (1, xd.shape[0]):
                return None
            out.append(c.reshape(-1).contiguous())
        elif isinstance(c, (int, float)):
            out.append(torch.tensor([float(c)], dtype=torch.float32))
        else:
            return None
    if len({c.numel() for c in out}) > 1:  # per ray and shared mixed: the reference broadcasts them
        out = [c.expand(xd.shape[0]).contiguous() for c in out]
    return out


def generate_rays(cameras: Cameras, camera_index: torch.Tensor,
                  pixel_xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays through pixel positions.

    Args:
        cameras: ``n`` cameras.
        camera_index: ``[R]`` int, which camera each ray belongs to.
        pixel_xy: ``[R, 2]`` float pixel positions (x right, y down; pixel centres at ``+0.5``).

    Returns:
        ``origins [R, 3]`` (the camera centres) and unit ``directions [R, 3]``, in world space.

    Example::

        >>> cams = Cameras.from_intrinsics(torch.eye(4)[None, :3], 10.0, 10.0, 4.0, 3.0, 8, 6)
        >>> o, d = generate_rays(cams, torch.zeros(2, dtype=torch.long),
        ...                      torch.tensor([[4.0, 3.0], [14.0, 3.0]]))
        >>> d[1]  # 10 px right of the centre with f = 10 px: 45 degrees to the right
        tensor([ 0.7071,  0.0000, -0.7071])
    """
    camera_index = camera_index.long()
    pixel_xy = pixel_xy.to(cameras.c2w.dtype)

    def per_ray(t: torch.Tensor) -> torch.Tensor:
        # the rows of t[camera_index]; index_select is faster (13k rays: 79 -> 16 us for c2w), but slow on a
        # strided tensor (c2w may be a transposed view), so its few cameras are made contiguous first
        return t.contiguous().index_select(0, camera_index)

    x = (pixel_xy[:, 0] - per_ray(cameras.cx)) / per_ray(cameras.fx)
    y = (pixel_xy[:, 1] - per_ray(cameras.cy)) / per_ray(cameras.fy)
    if cameras.has_distortion:
        coeffs = [per_ray(c) for c in (cameras.k1, cameras.k2, cameras.p1, cameras.p2)]
        x, y = undistort(x, y, *coeffs)
    # OpenCV normalised coordinates have y down and look down +z; OpenGL camera axes: y up, -z
    dirs_cam = torch.stack([x, -y, -torch.ones_like(x)], dim=-1)
    c2w = per_ray(cameras.c2w)
    directions = torch.einsum("rij,rj->ri", c2w[:, :, :3], dirs_cam)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return c2w[:, :, 3].clone(), directions


def pixel_centers(width: int, height: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``[H*W, 2]`` pixel centres ``(x + 0.5, y + 0.5)``, row by row from the top-left pixel.

    Example::

        >>> pixel_centers(2, 1)
        tensor([[0.5000, 0.5000],
                [1.5000, 0.5000]])
    """
    ys, xs = torch.meshgrid(torch.arange(height, dtype=dtype), torch.arange(width, dtype=dtype), indexing="ij")
    return torch.stack([xs, ys], dim=-1).reshape(-1, 2) + 0.5


def orbit_camera(box, width: int, height: int, azimuth: float = 0.0, elevation: float = 0.0,
                 fov_degrees: float = 35.0, margin: float = 1.05, points=None) -> Cameras:
    """One pinhole camera looking at the centre of ``box`` from ``azimuth``/``elevation`` (degrees).

    It stands just far enough away that the box's eight corners (or ``points [K, 3]``, if given) fit
    in the image with ``margin`` of slack; ``fov_degrees`` spans the smaller image side, the principal
    point is the image centre and there is no distortion. World ``y`` is up (see the module doc); a
    camera straight above or below uses ``-z`` as its up instead.

    Args:
        box: ``[2, 3]`` (min corner, max corner).
        width, height: image size in pixels (positive).

    Returns:
        :class:`Cameras` of one view, float64 (the placement is computed in float64; rays come out
        in float64 and can be cast).

    Example::

        >>> cam = orbit_camera([[0.0] * 3, [1.0] * 3], 64, 48, azimuth=0.0, elevation=0.0)
        >>> cam.c2w[0, :, 2]  # the camera's +z axis points back at the viewer: it sits on +z
        tensor([0., 0., 1.], dtype=torch.float64)
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    box = np.asarray(box, dtype=np.float64)
    if box.shape != (2, 3):
        raise ValueError(f"box must be [2, 3] (min, max), got {list(box.shape)}")
    direction, right, up = _orbit_axes(azimuth, elevation)
    focal = 0.5 * min(width, height) / math.tan(math.radians(fov_degrees) / 2)
    centre = box.mean(0)
    if points is None:
        points = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    corners = np.asarray(points, dtype=np.float64) - centre
    # distance so that every corner projects inside the image: |c.right| f / (D - c.dir) <= W / 2, etc.
    depth = corners @ direction
    need = np.maximum(np.abs(corners @ right) * focal / (0.5 * width),
                      np.abs(corners @ up) * focal / (0.5 * height))
    distance = float(np.max(need * margin + depth))
    # OpenGL camera axes: x right, y up, looking down -z, so the camera's z axis is ``direction``
    c2w = torch.from_numpy(np.stack([right, up, direction, centre + distance * direction], axis=1))[None]

    def one(value, dtype=torch.float64):
        return torch.tensor([value], dtype=dtype)

    return Cameras(c2w, one(focal), one(focal), one(width / 2), one(height / 2),
                   one(width, torch.int64), one(height, torch.int64))


def _orbit_axes(azimuth: float, elevation: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(direction, right, up)`` [3] float64 each: from the target towards the eye, and the image's axes."""
    az, el = math.radians(azimuth), math.radians(elevation)
    direction = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    forward = -direction
    # world y is up, except looking straight down or up, where it is parallel to the view
    world_up = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.999 else np.array([0.0, 0.0, -1.0])
    right = np.cross(forward, world_up)
    right /= np.linalg.norm(right)
    return direction, right, np.cross(right, forward)
