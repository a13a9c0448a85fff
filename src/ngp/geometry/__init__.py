"""Geometry shared by the primitives: cameras, rays against boxes, grids and marching cubes.

One place for each, used by the NeRF (posed photos, density meshes) and the SDF (sphere-traced
renders, zero-level-set meshes):

* :mod:`ngp.geometry.cameras` — :class:`Cameras` (a batch of pinhole cameras, ``c2w [n, 3, 4]`` in the
  OpenGL convention: looking down ``-z``, ``y`` up; optional OpenCV distortion with
  :func:`distort`/:func:`undistort`), :func:`generate_rays` (rays through pixel positions),
  :func:`pixel_centers` (every pixel of an image, row by row) and :func:`orbit_camera` (one view of a
  box from an azimuth and an elevation, as the SDF renderer frames its model);
* :mod:`ngp.geometry.rays` — :func:`ray_aabb_intersect`, the ray/box slab test (where rays enter and
  leave a box; the NeRF marcher and the sphere tracer clip with it);
* :mod:`ngp.geometry.grids` — :func:`evaluate_chunked` (a function over many points in bounded chunks),
  :func:`grid_shape`/:func:`grid_points`/:func:`evaluate_grid` (a function sampled on a regular grid
  over a box, slab by slab) and :func:`marching_cubes` (scikit-image's, returning vertices in the box's
  coordinates, faces and normals pointing out of the object whichever side of the level it is).

Example::

    >>> from ngp.geometry import orbit_camera, generate_rays, pixel_centers, ray_aabb_intersect
    >>> cam = orbit_camera([[0.0] * 3, [1.0] * 3], 64, 48, azimuth=30, elevation=15)
    >>> pixels = pixel_centers(64, 48, torch.float64)
    >>> origins, directions = generate_rays(cam, torch.zeros(len(pixels), dtype=torch.long), pixels)
    >>> t_near, t_far, hit = ray_aabb_intersect(origins, directions, torch.tensor([[0.0] * 3, [1.0] * 3]))
"""

from ngp.geometry.cameras import Cameras, distort, generate_rays, orbit_camera, pixel_centers, undistort
from ngp.geometry.grids import (CHUNK, IsoSurface, evaluate_chunked, evaluate_grid, grid_points, grid_shape,
                                marching_cubes)
from ngp.geometry.rays import ray_aabb_intersect

__all__ = [
    "CHUNK", "Cameras", "IsoSurface", "distort", "evaluate_chunked", "evaluate_grid", "generate_rays", "grid_points",
    "grid_shape", "marching_cubes", "orbit_camera", "pixel_centers", "ray_aabb_intersect", "undistort",
]
