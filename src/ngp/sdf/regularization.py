"""Against the hash grid's microstructure on SDF surfaces: schedules and terms the SDF trainer adds.

The paper leaves hash collisions to the MLP; on an SDF they show as a fine ripple on the surface,
which barely moves the Chamfer distance but tilts the normals (see :mod:`ngp.sdf.metrics`). The
options here are the paper's "add smoothness before the loss", as config keys of ``training``:

* ``coarse_to_fine`` ``{"start_levels": S, "steps": K}``: the grid's levels fade in one after another
  (:meth:`ngp.encodings.Grid.set_active_levels`), from ``S`` at step 0 to all at step ``K`` (Neuralangelo).
* ``surface_regularization`` ``{"eikonal": we, "curvature": wc, "points": n, "step_start": h0,
  "step_end": h1, "step_steps": K}``: on ``n`` of the batch's surface samples, the SDF's gradient by
  central differences with step ``h`` (shrinking geometrically from ``h0`` to ``h1`` over ``K`` steps:
  wide differences first smooth the coarse shape, narrow ones the detail), and the terms
  ``we * mean((|grad| - 1)^2)`` (eikonal) and ``wc * mean(|Laplacian|)`` (curvature). Numerical, not
  autograd, gradients: they need no second derivative through the hash grid, and the step sets the
  scale that is smoothed.

The grid's own ``filter_radius`` (a jittered lookup) is the third option; it is an encoding key.

Example:
    >>> h = finite_difference_step(settings, step=100)
    >>> shifted = finite_difference_points(points, h)           # [6n, 3]
    >>> eikonal, curvature = surface_terms(f(points), f(shifted), h)
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import torch

from ngp.config import ConfigError, require_float, require_int, with_defaults

def _defaults(name: str) -> dict[str, Any]:
    """The section's defaults: ``ngp/configs/sdf/base.json``, the one place they are written."""
    from ngp.train.settings import default_config

    return default_config("sdf")["training"][name]


def check_coarse_to_fine(section: Any) -> dict[str, Any]:
    """``training.coarse_to_fine`` checked (unknown key, bad value -> ConfigError naming it); missing keys
    take the defaults."""
    what = "sdf config 'training.coarse_to_fine'"
    section = with_defaults(_mapping(section, what), _defaults("coarse_to_fine"), what)
    require_float(section["start_levels"], "start_levels", what, 1e-3)
    require_int(section["steps"], "steps", what, 0)
    return section


def check_surface_regularization(section: Any) -> dict[str, Any]:
    """``training.surface_regularization`` checked (unknown key, bad value -> ConfigError naming it); missing
    keys take the defaults."""
    what = "sdf config 'training.surface_regularization'"
    section = with_defaults(_mapping(section, what), _defaults("surface_regularization"), what)
    require_float(section["eikonal"], "eikonal", what, 0.0)
    require_float(section["curvature"], "curvature", what, 0.0)
    require_int(section["points"], "points", what, 1)
    require_float(section["step_start"], "step_start", what, 1e-7, 0.25)
    require_float(section["step_end"], "step_end", what, 1e-7, 0.25)
    require_int(section["step_steps"], "step_steps", what, 0)
    return section


def _mapping(section: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(section, Mapping):
        raise ConfigError(f"{what} must be a JSON object, got {section!r}")
    return section


def active_levels(section: Mapping[str, Any], n_levels: int, step: int) -> float | None:
    """How many levels count at ``step`` (fractional: the last one fading in); ``None``: all of them.

    Example:
        >>> active_levels({"start_levels": 4, "steps": 120}, 16, 60)
        10.0
    """
    steps, start = section["steps"], float(section["start_levels"])
    if steps <= 0 or step >= steps or start >= n_levels:
        return None
    return start + (n_levels - start) * step / steps


def finite_difference_step(section: Mapping[str, Any], step: int) -> float:
    """The central-difference step at ``step``: ``step_start`` to ``step_end``, geometrically over ``step_steps``.

    Example:
        >>> finite_difference_step({"step_start": 2e-3, "step_end": 5e-4, "step_steps": 100}, 50)
        0.001
    """
    start, end, steps = section["step_start"], section["step_end"], section["step_steps"]
    t = 1.0 if steps <= 0 else min(step / steps, 1.0)
    return math.exp((1 - t) * math.log(start) + t * math.log(end))


def regularization_enabled(section: Mapping[str, Any]) -> bool:
    return section["eikonal"] > 0 or section["curvature"] > 0


def finite_difference_points(points: torch.Tensor, h: float) -> torch.Tensor:
    """``[n, 3]`` -> ``[6n, 3]``: the points moved by ``+h`` and ``-h`` along x, y, z, as six blocks of
    ``n`` in the order ``+x, -x, +y, -y, +z, -z``."""
    offsets = torch.zeros(6, 1, 3, dtype=points.dtype, device=points.device)
    for axis in range(3):
        offsets[2 * axis, 0, axis], offsets[2 * axis + 1, 0, axis] = h, -h
    return (points[None] + offsets).reshape(-1, 3)


def surface_terms(center: torch.Tensor, shifted: torch.Tensor, h: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The SDF ``[n]`` at points and ``[6n]`` at :func:`finite_difference_points` -> ``(eikonal, curvature)``:
    ``mean((|grad| - 1)^2)`` and ``mean(|Laplacian|)``, both by central differences with step ``h``.

    Example (a plane's distance: unit gradient, no curvature):
        >>> p = torch.rand(5, 3); f = lambda q: q[:, 0] - 0.5
        >>> surface_terms(f(p), f(finite_difference_points(p, 1e-3)), 1e-3)   # ~(0, 0)
    """
    plus_minus = shifted.reshape(3, 2, -1)  # [axis, +/-, n]
    gradient = (plus_minus[:, 0] - plus_minus[:, 1]) / (2 * h)
    laplacian = (plus_minus.sum(dim=1) - 2 * center[None]).sum(dim=0) / (h * h)
    eikonal = (gradient.norm(dim=0) - 1).square().mean()
    return eikonal, laplacian.abs().mean()


__all__ = [
    "active_levels", "check_coarse_to_fine",
    "check_surface_regularization", "finite_difference_points", "finite_difference_step",
    "regularization_enabled", "surface_terms",
]
