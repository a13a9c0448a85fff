"""Rays against axis-aligned boxes: the one ray/box test of the project.

NeRF marching (:mod:`ngp.nerf.renderer`) and SDF sphere tracing (:mod:`ngp.sdf.render`) both clip their
rays with :func:`ray_aabb_intersect`. It is the validated op of :mod:`ngp.ops.nerf` (a plain-PyTorch
slab test, defined in :mod:`ngp.kernels.reference.nerf`; no compiled kernel is worth it for a few
divisions per ray), re-exported here so that code outside NeRF need not reach into the NeRF ops.

Semantics: ``t_near`` is clamped at 0 (rays starting inside enter at 0); a ray hits when the clipped
segment has positive length (a graze of an edge or corner is a miss); misses get ``t_near = t_far = 0``;
a ray parallel to a slab is inside it when its origin is.

Example::

    >>> o = torch.tensor([[-1.0, 0.5, 0.5]]); d = torch.tensor([[1.0, 0.0, 0.0]])
    >>> ray_aabb_intersect(o, d, torch.tensor([[0.0, 0, 0], [1.0, 1, 1]]))
    (tensor([1.]), tensor([2.]), tensor([True]))
"""

from __future__ import annotations

from ngp.ops.nerf import ray_aabb_intersect

__all__ = ["ray_aabb_intersect"]
