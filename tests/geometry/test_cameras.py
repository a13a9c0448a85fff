"""Rays from cameras: pinhole geometry against an independent projection, lens distortion, and the orbit
camera of the SDF renderer against the SDF renderer's former camera."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ngp.geometry.cameras import Cameras, distort, generate_rays, orbit_camera, pixel_centers, undistort

FOX_DISTORTION = (0.0578421, -0.0805099, -0.000980296, 0.00015575)


def random_rotations(n: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, 3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))[:, None, :]
    return q * torch.det(q)[:, None, None]  # proper rotations (det +1)


def random_cameras(n: int, seed: int = 0, distortion=None) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    c2w = torch.cat([random_rotations(n, g), torch.randn(n, 3, 1, generator=g, dtype=torch.float64)], -1)
    fx = 50 + 100 * torch.rand(n, generator=g, dtype=torch.float64)
    fy = fx * (0.9 + 0.2 * torch.rand(n, generator=g, dtype=torch.float64))
    cams = Cameras(c2w, fx, fy, cx=torch.full((n,), 41.0, dtype=torch.float64),
                   cy=torch.full((n,), 29.5, dtype=torch.float64),
                   width=torch.full((n,), 80), height=torch.full((n,), 60))
    if distortion is not None:
        for name, value in zip(("k1", "k2", "p1", "p2"), distortion):
            setattr(cams, name, torch.full((n,), value, dtype=torch.float64))
    return cams


def project(cams: Cameras, index: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """OpenCV-style pinhole projection written out independently: world -> pixel."""
    c2w = cams.c2w[index]
    rot, t = c2w[:, :, :3], c2w[:, :, 3]
    p_gl = torch.einsum("rji,rj->ri", rot, points - t)  # R^T (X - t): OpenGL camera coords
    x_cv, y_cv, z_cv = p_gl[:, 0], -p_gl[:, 1], -p_gl[:, 2]  # OpenCV: y down, looks down +z
    assert (z_cv > 0).all(), "test points must be in front of the cameras"
    return torch.stack([cams.fx[index] * x_cv / z_cv + cams.cx[index],
                        cams.fy[index] * y_cv / z_cv + cams.cy[index]], -1)


def points_in_front(cams: Cameras, index: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    n = len(index)
    local = torch.stack([torch.rand(n, generator=g, dtype=torch.float64) - 0.5,
                         torch.rand(n, generator=g, dtype=torch.float64) - 0.5,
                         -(1 + 5 * torch.rand(n, generator=g, dtype=torch.float64))], -1)
    c2w = cams.c2w[index]
    return torch.einsum("rij,rj->ri", c2w[:, :, :3], local) + c2w[:, :, 3]


def distance_to_ray(points, origins, directions):
    v = points - origins
    return torch.linalg.cross(v, directions).norm(dim=-1), (v * directions).sum(-1)


def test_world_point_lies_on_ray_through_its_projection():
    cams = random_cameras(7)
    g = torch.Generator().manual_seed(1)
    index = torch.randint(7, (500,), generator=g)
    points = points_in_front(cams, index, g)
    o, d = generate_rays(cams, index, project(cams, index, points))
    dist, along = distance_to_ray(points, o, d)
    assert dist.max() < 1e-9
    assert (along > 0).all()  # in front of the camera, not behind
    torch.testing.assert_close(d.norm(dim=-1), torch.ones(500, dtype=torch.float64))
    torch.testing.assert_close(o, cams.c2w[index][:, :, 3])


def test_opengl_axes_and_pixel_centres():
    # identity pose: the camera looks down -z with +x right and +y up in the image
    cams = Cameras.from_intrinsics(torch.eye(4)[None, :3], 10.0, 10.0, 4.0, 3.0, 8, 6)
    xy = torch.tensor([[4.0, 3.0], [14.0, 3.0], [4.0, 13.0], [0.5, 0.5]])
    _, d = generate_rays(cams, torch.zeros(4, dtype=torch.long), xy)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(d[0], torch.tensor([0.0, 0.0, -1.0]))
    torch.testing.assert_close(d[1], torch.tensor([s, 0.0, -s]))  # right of centre: +x
    torch.testing.assert_close(d[2], torch.tensor([0.0, -s, -s]))  # below centre: -y
    # the top-left pixel centre is 3.5 px left and 2.5 px above the principal point
    expected = torch.tensor([-0.35, 0.25, -1.0])
    torch.testing.assert_close(d[3], expected / expected.norm())


@pytest.mark.parametrize("coeffs", [FOX_DISTORTION, (-0.25, 0.08, 0.002, -0.003), (0.1, 0.05, 0.01, 0.01)])
def test_undistort_inverts_distort(coeffs):
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 2000, generator=g, dtype=torch.float64) - 0.5) * 1.2
    xu, yu = undistort(*distort(x, y, *coeffs), *coeffs)
    torch.testing.assert_close(xu, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(yu, y, atol=1e-10, rtol=0)


def test_distort_is_the_opencv_model():
    # one hand-computed point: x=0.1, y=0.2, r2=0.05
    k1, k2, p1, p2 = 0.1, 0.01, 0.001, 0.002
    radial = 1 + k1 * 0.05 + k2 * 0.05**2
    xd, yd = distort(torch.tensor([0.1]), torch.tensor([0.2]), k1, k2, p1, p2)
    assert xd.item() == pytest.approx(0.1 * radial + 2 * p1 * 0.02 + p2 * (0.05 + 0.02))
    assert yd.item() == pytest.approx(0.2 * radial + p1 * (0.05 + 0.08) + 2 * p2 * 0.02)


def test_distorted_pixel_maps_back_to_the_undistorted_ray():
    cams = random_cameras(5, seed=3, distortion=(-0.2, 0.05, 0.003, -0.002))
    g = torch.Generator().manual_seed(4)
    index = torch.randint(5, (300,), generator=g)
    points = points_in_front(cams, index, g)
    ideal = project(cams, index, points)
    # forward OpenCV model: where the real lens puts that point on the sensor
    fx, fy, cx, cy = (t[index] for t in (cams.fx, cams.fy, cams.cx, cams.cy))
    xd, yd = distort((ideal[:, 0] - cx) / fx, (ideal[:, 1] - cy) / fy, -0.2, 0.05, 0.003, -0.002)
    stored = torch.stack([xd * fx + cx, yd * fy + cy], -1)
    assert (stored - ideal).abs().max() > 0.5  # the distortion is not negligible here
    o, d = generate_rays(cams, index, stored)
    dist, _ = distance_to_ray(points, o, d)
    assert dist.max() < 1e-8


def test_cameras_validate_shapes():
    with pytest.raises(ValueError, match=r"c2w must be \[n, 3, 4\]"):
        Cameras.from_intrinsics(torch.eye(4)[None, :2], 1.0, 1.0, 0.0, 0.0, 2, 2)
    with pytest.raises(ValueError, match="k1, k2, p1, p2"):
        Cameras.from_intrinsics(torch.eye(4)[None, :3], 1.0, 1.0, 0.0, 0.0, 2, 2, k1=0.1)
    with pytest.raises(ValueError, match="fx must have shape"):
        Cameras(torch.zeros(2, 3, 4), torch.ones(3), torch.ones(2), torch.ones(2), torch.ones(2),
                torch.ones(2, dtype=torch.long), torch.ones(2, dtype=torch.long))


def test_scaled_and_indexing():
    cams = Cameras.from_intrinsics(torch.eye(4)[None, :3].repeat(3, 1, 1), 100.0, 90.0, 40.0, 30.0, 81, 61)
    half = cams.scaled(0.5)
    assert half.fx[0].item() == 50.0 and half.fy[0].item() == 45.0
    assert half.cx[0].item() == 20.0 and half.cy[0].item() == 15.0
    assert half.width[0].item() == 40 and half.height[0].item() == 30
    assert len(cams[1]) == 1 and len(cams[torch.tensor([0, 2])]) == 2
    assert cams.centers.shape == (3, 3)


# ----------------------------------------------------------------------------------------------------
# Orbit cameras (the SDF renderer's)
# ----------------------------------------------------------------------------------------------------


def old_sdf_camera_rays(box, width, height, azimuth, elevation, fov_degrees=35.0, margin=1.05, points=None):
    """The SDF renderer's own camera before it used :class:`Cameras` (``ngp.sdf.render.Camera.orbit``
    and ``.rays``), kept as the oracle: its rays are ``x right + y up + forward`` with ``x``, ``y`` the
    pixel centre's offset from the image centre over the focal length (``y`` up)."""
    box = np.asarray(box, dtype=np.float64)
    az, el = math.radians(azimuth), math.radians(elevation)
    direction = np.array([math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)])
    forward = -direction
    world_up = np.array([0.0, 1.0, 0.0]) if abs(direction[1]) < 0.999 else np.array([0.0, 0.0, -1.0])
    right = np.cross(forward, world_up)
    right /= np.linalg.norm(right)
    up = np.cross(right, forward)
    focal = 0.5 * min(width, height) / math.tan(math.radians(fov_degrees) / 2)
    centre = box.mean(0)
    if points is None:
        points = np.array([[box[i, 0], box[j, 1], box[k, 2]] for i in (0, 1) for j in (0, 1) for k in (0, 1)])
    corners = np.asarray(points, dtype=np.float64) - centre
    need = np.maximum(np.abs(corners @ right) * focal / (0.5 * width), np.abs(corners @ up) * focal / (0.5 * height))
    position = centre + float(np.max(need * margin + corners @ direction)) * direction
    j, i = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    x, y = (j - width / 2) / focal, -(i - height / 2) / focal
    d = x[..., None] * right + y[..., None] * up + forward
    d /= np.linalg.norm(d, axis=-1, keepdims=True)
    origins = np.broadcast_to(position, d.shape)
    return (torch.tensor(origins.reshape(-1, 3), dtype=torch.float32),
            torch.tensor(d.reshape(-1, 3), dtype=torch.float32))


def orbit_rays(camera: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    pixels = pixel_centers(int(camera.width[0]), int(camera.height[0]), camera.c2w.dtype)
    o, d = generate_rays(camera, torch.zeros(len(pixels), dtype=torch.long), pixels)
    return o.float(), d.float()


@pytest.mark.parametrize("azimuth, elevation", [(30, 15), (0, 0), (-120, 40), (90, -89.99), (10, 90)])
def test_orbit_camera_rays_match_the_former_sdf_camera(azimuth, elevation):
    box = np.array([[0.1, 0.0, 0.2], [0.9, 1.3, 0.6]])
    points = np.random.default_rng(0).uniform(0.2, 0.6, (50, 3))
    for kwargs in ({}, {"margin": 1.1, "points": points}):
        camera = orbit_camera(box, 37, 23, azimuth, elevation, fov_degrees=40, **kwargs)
        old_o, old_d = old_sdf_camera_rays(box, 37, 23, azimuth, elevation, fov_degrees=40, **kwargs)
        new_o, new_d = orbit_rays(camera)
        assert new_o.shape == old_o.shape == (37 * 23, 3)
        torch.testing.assert_close(new_o, old_o, atol=0, rtol=0)  # the same float64 arithmetic
        torch.testing.assert_close(new_d, old_d, atol=2e-7, rtol=0)  # a float32 rounding at most


def test_orbit_camera_frames_the_box():
    box = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 1.0]])
    camera = orbit_camera(box, 100, 50, azimuth=40, elevation=20)
    assert len(camera) == 1 and not camera.has_distortion
    corners = torch.tensor([[x, y, z] for x in (0, 1) for y in (0, 2) for z in (0, 1)], dtype=torch.float64)
    uv = project(camera, torch.zeros(8, dtype=torch.long), corners)  # also checks they are in front
    u, v = uv[:, 0], uv[:, 1]
    assert (u >= 0).all() and (u <= 100).all() and (v >= 0).all() and (v <= 50).all()
    assert min(u.min(), 100 - u.max(), v.min(), 50 - v.max()) < 2  # and not much smaller than the image


def test_orbit_camera_axes():
    # azimuth 0, elevation 0: on +z looking at the box centre down -z, world y up in the image
    camera = orbit_camera([[0.0] * 3, [1.0] * 3], 8, 8)
    rotation, centre = camera.c2w[0, :, :3], camera.c2w[0, :, 3]
    torch.testing.assert_close(rotation, torch.eye(3, dtype=torch.float64))
    assert centre[2] > 1 and centre[0] == 0.5 and centre[1] == 0.5
    # azimuth 90 turns the camera about +y to +x; elevation 90 puts it straight above, -z up in the image
    assert orbit_camera([[0.0] * 3, [1.0] * 3], 8, 8, azimuth=90).c2w[0, 0, 3] > 1
    above = orbit_camera([[0.0] * 3, [1.0] * 3], 8, 8, elevation=90)
    assert above.c2w[0, 1, 3] > 1
    minus_z = torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)
    torch.testing.assert_close(above.c2w[0, :, 1], minus_z, atol=1e-12, rtol=0)


def test_orbit_camera_rejects_bad_input():
    with pytest.raises(ValueError, match="image size"):
        orbit_camera([[0.0] * 3, [1.0] * 3], 0, 8)
    with pytest.raises(ValueError, match=r"box must be \[2, 3\]"):
        orbit_camera([0.0, 1.0], 8, 8)


def test_pixel_centers_row_by_row():
    xy = pixel_centers(3, 2)
    expected = [[0.5, 0.5], [1.5, 0.5], [2.5, 0.5], [0.5, 1.5], [1.5, 1.5], [2.5, 1.5]]
    torch.testing.assert_close(xy, torch.tensor(expected))


@pytest.mark.parametrize("coeffs", [FOX_DISTORTION, (-0.25, 0.08, 0.002, -0.003), (0.4, 0.3, 0.05, -0.04)])
@pytest.mark.parametrize("per_ray", [False, True])
def test_undistort_kernel_is_the_reference_bit_for_bit(coeffs, per_ray):
    """float32 on the CPU takes the Numba kernel: every rounding is the reference's (and wild points
    far outside any lens, where the Jacobian may vanish, too)."""
    from ngp.kernels.cpu import cameras as kernels
    from ngp.kernels.reference import cameras as reference

    g = torch.Generator().manual_seed(5)
    xd, yd = (torch.rand(2, 5000, generator=g) - 0.5) * 1.5
    xd[:50], yd[:50] = xd[:50] * 40, yd[:50] * 40
    cs = [torch.full((5000,), c) * (1 + 0.1 * torch.rand(5000, generator=g)) if per_ray else c for c in coeffs]
    want = reference.undistort(xd, yd, *cs)
    got = undistort(xd, yd, *cs)
    direct = kernels.undistort(xd, yd, [c if per_ray else torch.tensor([float(c)]) for c in cs], 10)
    for w, a, b in zip(want, got, direct):
        assert torch.equal(a.view(torch.int32), w.view(torch.int32))
        assert torch.equal(b.view(torch.int32), w.view(torch.int32))


def test_undistort_takes_the_reference_where_the_kernel_does_not_apply():
    x = torch.tensor([0.1, -0.2], dtype=torch.float64)
    xu, yu = undistort(x, x, 0.1, 0.0, 0.0, 0.0)
    assert xu.dtype == yu.dtype == torch.float64  # the kernel is float32 only
    point = undistort(torch.tensor(0.1), torch.tensor(0.2), torch.tensor(0.1), 0.0, 0.0, 0.0)  # 0-dim: the reference
    assert point[0].shape == () and torch.equal(point[0], undistort(torch.tensor([0.1]), torch.tensor([0.2]),
                                                                   0.1, 0.0, 0.0, 0.0)[0][0])
    xg = torch.tensor([0.1, -0.2], requires_grad=True)
    xu, _ = undistort(xg, xg.detach(), 0.1, 0.0, 0.0, 0.0)
    xu.sum().backward()  # with gradients: the reference, through autograd
    assert xg.grad is not None and torch.all(xg.grad > 0)
