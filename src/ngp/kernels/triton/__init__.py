"""Triton kernels (GPU), runnable on CPU tensors through Triton's interpreter for testing.

Modules: :mod:`ngp.kernels.triton.hashgrid` (multiresolution hash encoding) and
:mod:`ngp.kernels.triton.nerf` (ray marching and compositing). Each mirrors the function names and
signatures of its Numba twin in :mod:`ngp.kernels.cpu`, but takes and returns torch tensors (on a CUDA
device, or on the CPU under the interpreter) instead of NumPy arrays.

Both modules import without Triton installed (``pip install 'ngp[gpu]'`` brings it); calling a kernel
then raises a clear error. Kernels run compiled on CUDA tensors; on CPU tensors they need Triton's
interpreter, switched on by the environment variable ``TRITON_INTERPRET=1``.

Triton decides between compiling and interpreting when a kernel is *decorated* with
``@triton.jit``, i.e. when the module defining it is imported, not when it is called. So that setting
``TRITON_INTERPRET`` late (e.g. in a test module, after another module already imported ``ngp``) still
works, :func:`kernels_for_mode` re-executes a kernel module's file once for the other mode and returns
that copy; the public functions of each module always launch the copy matching the current setting.

Example::

    TRITON_INTERPRET=1 NGP_BACKEND=triton python -c "import ngp, torch; ..."
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType

import torch

_TRUE = ("1", "true", "on", "yes")
_copies: dict[tuple[str, bool], ModuleType] = {}


def available() -> bool:
    """Whether the ``triton`` package can be imported."""
    return importlib.util.find_spec("triton") is not None


def interpreting() -> bool:
    """Whether Triton kernels decorated now would run in the interpreter (``TRITON_INTERPRET``)."""
    if "triton" in sys.modules:
        knobs = getattr(sys.modules["triton"], "knobs", None)
        if knobs is not None:  # Triton >= 3.3: the authoritative reading of the variable
            return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "").strip().lower() in _TRUE


def check_device(*tensors: torch.Tensor) -> None:
    """Raise a clear error unless Triton can run on these tensors (all on one CUDA device, or CPU + interpreter)."""
    if not available():
        raise RuntimeError("the Triton kernels need the 'triton' package: pip install 'ngp[gpu]'")
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"Triton kernels need all tensors on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    if device.type == "cpu" and not interpreting():
        raise RuntimeError(
            "Triton kernels got CPU tensors: they run on CUDA tensors, or on CPU tensors only in Triton's "
            "interpreter (set the environment variable TRITON_INTERPRET=1)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"Triton kernels run on 'cuda' tensors (or 'cpu' with TRITON_INTERPRET=1), got {device}")


def kernels_for_mode(module_name: str) -> ModuleType:
    """The module ``module_name`` with its ``@triton.jit`` kernels decorated for the current mode.

    That is the module itself when it was imported under the current ``TRITON_INTERPRET`` setting,
    otherwise a private copy of it executed now (cached per mode).
    """
    module = sys.modules[module_name]
    mode = interpreting()
    if getattr(module, "INTERPRETED", None) == mode:
        return module
    key = (module_name, mode)
    if key not in _copies:
        name = f"{module_name}__{'interpreted' if mode else 'compiled'}"
        spec = importlib.util.spec_from_file_location(name, module.__file__)
        copy = importlib.util.module_from_spec(spec)
        sys.modules[name] = copy  # Triton looks kernels' globals up through their module
        spec.loader.exec_module(copy)
        _copies[key] = copy
    return _copies[key]
