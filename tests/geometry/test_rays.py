"""The one ray/box test: the NeRF op, and the SDF sphere tracer clipping its rays with it."""

from __future__ import annotations

import torch

import ngp.ops.nerf
from ngp.geometry.rays import ray_aabb_intersect
from ngp.sdf.render import sphere_trace

UNIT = torch.tensor([[0.0] * 3, [1.0] * 3])


def test_one_ray_box_function():
    assert ray_aabb_intersect is ngp.ops.nerf.ray_aabb_intersect  # not a second copy


def test_enter_leave_and_miss():
    o = torch.tensor([[0.5, 0.5, -1.0], [5.0, 5.0, -1.0], [0.5, 0.5, 0.5]])
    d = torch.tensor([[0.0, 0.0, 1.0]] * 3)
    t_near, t_far, hit = ray_aabb_intersect(o, d, UNIT)
    torch.testing.assert_close(t_near, torch.tensor([1.0, 0.0, 0.0]))  # inside: enters at 0
    torch.testing.assert_close(t_far, torch.tensor([2.0, 0.0, 0.5]))
    assert hit.tolist() == [True, False, True]


class Ball(torch.nn.Module):
    """A ball of radius 0.2 at (0.5, 0.5, 0.5) in the box ``box``; records the points it is asked about."""

    def __init__(self, box):
        super().__init__()
        self.register_buffer("aabb", torch.tensor(box))
        self.seen = []

    def unit_sdf(self, x):
        self.seen.append(x.clone())
        return (x - 0.5).norm(dim=-1) - 0.2


def test_sphere_trace_starts_at_the_box():
    # rays along +z and -z through the ball's centre, and one that passes beside the box
    o = torch.tensor([[0.5, 0.5, -2.0], [0.5, 0.5, 3.0], [2.0, 0.5, -2.0]])
    d = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.0, 1.0]])
    ball = Ball([[0.0, 0.0, 0.25], [1.0, 1.0, 1.0]])
    hit, positions = sphere_trace(ball, o, d)
    assert hit.tolist() == [True, True, False]
    torch.testing.assert_close(positions[:2, 2], torch.tensor([0.3, 0.7]), atol=1e-4, rtol=0)
    seen = torch.cat(ball.seen)
    # every evaluated point lies in the box: the first at the entry (z = 0.25 and 1), the miss never
    assert seen[:, 2].min() >= 0.25 - 1e-6 and seen[:, 2].max() <= 1.0 + 1e-6
    assert (seen[:, 0] == 0.5).all()
    torch.testing.assert_close(ball.seen[0][:, 2], torch.tensor([0.25, 1.0]))
