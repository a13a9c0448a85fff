"""Which implementation of a custom op runs: chosen per call from the tensor's device.

``NGP_BACKEND`` overrides the choice for every op:

* ``auto`` (default): Numba kernels for CPU tensors, Triton kernels for CUDA tensors;
* ``reference``: the plain-PyTorch specification (slow, differentiable to any order);
* ``numba`` / ``triton``: force one compiled family (``triton`` on CPU tensors needs
  ``TRITON_INTERPRET=1``, which runs the GPU kernels in Triton's interpreter, for testing).
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "reference", "numba", "triton")


def requested_backend() -> str:
    name = os.environ.get("NGP_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"NGP_BACKEND={name!r} is not a backend; expected one of {BACKENDS}")
    return name


def backend_for(device: torch.device) -> str:
    """The kernel family to use for tensors on ``device``: 'reference', 'numba' or 'triton'."""
    name = requested_backend()
    if name != "auto":
        return name
    return "triton" if device.type == "cuda" else "numba" if device.type == "cpu" else "reference"
