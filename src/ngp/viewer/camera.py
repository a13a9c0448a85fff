"""The viewer's camera: a browser's pose and field of view, as a :class:`~ngp.geometry.cameras.Cameras`.

viser reports a camera as ``T_world_camera`` with OpenCV axes (x right, y down, looking down +z) and a
vertical field of view; ``ngp``'s cameras use OpenGL axes (x right, y up, looking down -z), as
instant-ngp and NeRF-synthetic do. The two differ by a flip of the camera's y and z axes, which is
its own inverse, so one function converts both ways.

Example::

    >>> cam = ViewCamera.look_at(eye=[0, 0, 3], target=[0, 0, 0], up=[0, 1, 0], fov_y=0.8)
    >>> cams = cam.cameras(64, 48)          # Cameras of one 64x48 view
    >>> wxyz, position = cam.viser_pose()  # for a viser camera or frustum
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ngp.geometry.cameras import Cameras

__all__ = ["ViewCamera", "flip_yz", "matrix_to_wxyz", "wxyz_to_matrix"]

#: OpenGL <-> OpenCV camera axes (y and z flipped).
FLIP_YZ = np.diag([1.0, -1.0, -1.0])


def flip_yz(rotation: np.ndarray) -> np.ndarray:
    """``[3, 3]`` camera-to-world rotation with OpenGL camera axes <-> with OpenCV camera axes."""
    return np.asarray(rotation, dtype=np.float64) @ FLIP_YZ


def wxyz_to_matrix(wxyz) -> np.ndarray:
    """Unit quaternion ``(w, x, y, z)`` -> ``[3, 3]`` rotation matrix."""
    w, x, y, z = np.asarray(wxyz, dtype=np.float64) / np.linalg.norm(wxyz)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def matrix_to_wxyz(rotation: np.ndarray) -> np.ndarray:
    """``[3, 3]`` rotation matrix -> unit quaternion ``(w, x, y, z)`` with ``w >= 0``."""
    from scipy.spatial.transform import Rotation

    x, y, z, w = Rotation.from_matrix(np.asarray(rotation, dtype=np.float64)).as_quat()
    q = np.array([w, x, y, z])
    return q if w >= 0 else -q


@dataclass(frozen=True)
class ViewCamera:
    """A pinhole view: ``c2w [3, 4]`` float64 with OpenGL camera axes, ``fov_y`` (radians, vertical).

    The image size is chosen per render (the viewer renders coarse while the camera moves), so it is
    not part of the camera: :meth:`cameras` takes it.
    """

    c2w: np.ndarray
    fov_y: float

    @classmethod
    def from_viser(cls, wxyz, position, fov_y: float) -> "ViewCamera":
        """From viser's ``T_world_camera`` (OpenCV axes) and vertical field of view."""
        c2w = np.concatenate([flip_yz(wxyz_to_matrix(wxyz)), np.asarray(position, np.float64)[:, None]], axis=1)
        return cls(c2w, float(fov_y))

    @classmethod
    def from_cameras(cls, cameras: Cameras, index: int = 0) -> "ViewCamera":
        """The pose and vertical field of view of camera ``index`` (distortion is dropped)."""
        fov_y = 2 * math.atan(0.5 * float(cameras.height[index]) / float(cameras.fy[index]))
        return cls(cameras.c2w[index].double().cpu().numpy(), fov_y)

    @classmethod
    def look_at(cls, eye, target, up, fov_y: float) -> "ViewCamera":
        """A camera at ``eye`` looking at ``target`` with ``up`` roughly up in the image."""
        eye, target, up = (np.asarray(v, dtype=np.float64) for v in (eye, target, up))
        back = eye - target
        back /= np.linalg.norm(back)
        right = np.cross(up, back)
        if np.linalg.norm(right) < 1e-9:  # looking along ``up``: any right angle will do
            right = np.cross(np.array([1.0, 0.0, 0.0]) if abs(back[0]) < 0.9 else np.array([0.0, 1.0, 0.0]), back)
        right /= np.linalg.norm(right)
        return cls(np.stack([right, np.cross(back, right), back, eye], axis=1), float(fov_y))

    @property
    def position(self) -> np.ndarray:
        return self.c2w[:, 3]

    @property
    def forward(self) -> np.ndarray:
        return -self.c2w[:, 2]

    def viser_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """``(wxyz [4], position [3])`` of ``T_world_camera`` with OpenCV axes, as viser takes it."""
        return matrix_to_wxyz(flip_yz(self.c2w[:, :3])), self.position.copy()

    def cameras(self, width: int, height: int) -> Cameras:
        """A :class:`Cameras` of this one view at ``width x height`` pixels (square pixels, centred)."""
        focal = 0.5 * height / math.tan(0.5 * self.fov_y)
        return Cameras.from_intrinsics(torch.from_numpy(self.c2w)[None].float(), focal, focal, width / 2,
                                       height / 2, width, height)
