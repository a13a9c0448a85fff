"""Plain-PyTorch definition of :func:`ngp.geometry.cameras.undistort` (the specification its kernel matches)."""

from __future__ import annotations

import torch


def undistort(xd: torch.Tensor, yd: torch.Tensor, k1, k2, p1, p2,
              iterations: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Newton's method on the radial-tangential model from the distorted point, ``iterations`` steps
    (as nerfstudio's ``radial_and_tangential_undistort``). Shapes ``[R]``; coefficients scalars or ``[R]``."""
    x, y = xd.clone(), yd.clone()
    for _ in range(iterations):
        r2 = x * x + y * y
        radial = 1 + r2 * (k1 + r2 * k2)
        d_radial = k1 + 2 * k2 * r2  # d(radial)/d(r2)
        # residuals of the forward model and their Jacobian
        fx_ = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x) - xd
        fy_ = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y - yd
        fx_x = radial + 2 * x * x * d_radial + 2 * p1 * y + 6 * p2 * x
        fx_y = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_x = 2 * x * y * d_radial + 2 * p1 * x + 2 * p2 * y
        fy_y = radial + 2 * y * y * d_radial + 6 * p1 * y + 2 * p2 * x
        det = fx_x * fy_y - fx_y * fy_x
        # a vanishing Jacobian only happens far outside any real lens' field of view: stop there
        det = torch.where(det.abs() < 1e-12, torch.ones_like(det), det)
        x = x - (fx_ * fy_y - fy_ * fx_y) / det
        y = y - (fy_ * fx_x - fx_ * fy_x) / det
    return x, y
