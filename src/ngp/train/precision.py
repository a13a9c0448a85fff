"""Where a training run computes and in which precision, and the guard against non-finite steps.

* :func:`resolve_device` turns ``"auto"`` / ``"cpu"`` / ``"cuda"`` / ``"cuda:1"`` into a
  :class:`torch.device`, with a clear error when CUDA is asked for and absent.
* :class:`MixedPrecision` runs the MLPs under ``torch.autocast`` and scales the loss so that float16
  activation gradients do not underflow (``torch.amp.GradScaler``). Parameters, the hash tables and
  the optimizer state stay float32: the project's Adam uses ``eps = 1e-15`` and squared gradients,
  neither of which survives float16. With ``precision="float32"`` (the CPU default, except NeRF on
  CPUs with bfloat16 instructions: :func:`resolve_precision`) every method is the plain float32 step.

Example::

    device = resolve_device("auto")                       # cuda when there is one
    amp = MixedPrecision(device, "auto")                  # float16 on cuda, float32 on cpu
    for step in range(n_steps):
        optimizer.zero_grad()
        with amp.autocast():
            prediction = model(x)                         # encoding float32, MLP float16
        loss = loss_fn(prediction.float(), target)        # the loss in float32
        applied = amp.backward_and_step(loss, optimizer)  # False: overflow, step skipped
"""

from __future__ import annotations

import contextlib
import functools

import torch

from ngp.ops.checks import gradient_noted_finite

#: ``precision`` values: ``auto`` is float16 mixed precision on CUDA and float32 on a CPU (bfloat16 on a
#: CPU with native bfloat16 arithmetic, for primitives that ask for it: see :func:`resolve_precision`).
PRECISIONS = ("auto", "float32", "float16", "bfloat16")
#: tiny-cuda-nn's fixed loss scale for its float16 networks; GradScaler's own default (2^16) makes
#: the first dozen steps overflow and be skipped.
INITIAL_LOSS_SCALE = 128.0


#: ``--device`` / ``--precision`` help shared by the command-line tools.
DEVICE_HELP = "Where to run: auto (a CUDA GPU when torch sees one, else the CPU), cpu, cuda or cuda:N."
PRECISION_HELP = ("Precision of the MLPs: auto (float16 mixed precision with loss scaling on a GPU; on a CPU "
                  "float32, or bfloat16 for NeRF where the CPU has bfloat16 instructions), float32, float16 or "
                  "bfloat16. Hash tables and weights stay float32.")


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"`` (or None) -> ``cuda`` if available else ``cpu``; other names are checked.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device is None or (isinstance(device, str) and device.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"device {device!r} is not a device name; expected auto, cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r} asked for, but torch sees no CUDA GPU "
                             f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'}); use cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA GPU(s)")
    elif device.type != "cpu":
        raise ValueError(f"device {str(device)!r} not supported; expected auto, cpu, cuda or cuda:N")
    return device


def native_bfloat16(device: torch.device | str = "cpu") -> bool:
    """Whether bfloat16 matrix products run in hardware on ``device``. On a CPU: whether it has
    AVX-512 BF16 or AMX instructions (AMD Zen 4 and later, Intel Cooper Lake / Sapphire Rapids and
    later), with which oneDNN runs the MLPs' 64-wide products 4-6x faster than float32 (measured on a
    Zen 5); elsewhere bfloat16 is emulated and slower. Read from ``/proc/cpuinfo`` (False where there
    is none). On CUDA: compute capability 8 and later."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_bfloat16()


@functools.lru_cache(maxsize=1)
def _cpu_has_bfloat16() -> bool:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device, cpu_bfloat16: bool = False) -> str:
    """``auto`` -> ``float16`` on CUDA; on a CPU ``bfloat16`` when ``cpu_bfloat16`` (the primitive has
    checked its quality in bfloat16) and the CPU has bfloat16 instructions (:func:`native_bfloat16`),
    else ``float32``. Other values are checked and kept."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} unknown; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "float16"
        return "bfloat16" if cpu_bfloat16 and native_bfloat16(device) else "float32"
    return precision


class MixedPrecision:
    """Autocast + loss scaling for one training loop on ``device``.

    Args:
        device: where the model runs.
        precision: ``auto``, ``float32`` (no autocast, no scaling), ``float16`` (autocast + loss
            scaling) or ``bfloat16`` (autocast; bfloat16 has float32's range, so no scaling).
            float16 on a CPU works (the tests use it) but is slower than float32 there.
        init_scale: the first loss scale (float16 only).
        cpu_bfloat16: ``auto`` means bfloat16 on a CPU with bfloat16 instructions (see
            :func:`resolve_precision`).
    """

    def __init__(self, device: torch.device | str, precision: str = "auto", init_scale: float = INITIAL_LOSS_SCALE,
                 cpu_bfloat16: bool = False):
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device, cpu_bfloat16)
        self.dtype = {"float32": None, "float16": torch.float16, "bfloat16": torch.bfloat16}[self.precision]
        self.scaler = torch.amp.GradScaler(self.device.type, init_scale=init_scale,
                                           enabled=self.precision == "float16")
        self.skipped_steps = 0

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    @property
    def loss_scale(self) -> float:
        """The current loss scale (1.0 when not scaling)."""
        return float(self.scaler.get_scale()) if self.scaler.is_enabled() else 1.0

    def autocast(self):
        """Context for the forward pass: the MLPs' matrix products in ``self.dtype``."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward_and_step(self, loss: torch.Tensor, optimizer) -> bool:
        """Backward pass and optimizer step (``ngp.optim.Optimizer``: Adam, schedule, EMA), guarded.

        The step is skipped (and counted in ``skipped_steps``) when the loss or any gradient is inf or
        NaN, in every precision: a single NaN applied by Adam would poison the weights for good. With
        loss scaling the gradients are unscaled before Adam (and the EMA, and anyone reading them), and
        a skipped step halves the scale. Returns whether the step was taken.
        """
        optimizer.zero_grad()
        if not bool(torch.isfinite(loss.detach()).all()):
            self._skip()
            return False
        if not self.scaler.is_enabled():
            loss.backward()
            if not gradients_finite(optimizer.adam):
                self._skip()
                return False
            optimizer.step()
            return True
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(optimizer.adam)  # also records the inf check that update() needs
        finite = gradients_finite(optimizer.adam)
        if finite:
            optimizer.step()
        else:
            self.skipped_steps += 1
        self.scaler.update()
        return finite

    def _skip(self) -> None:
        self.skipped_steps += 1
        if self.scaler.is_enabled():  # a non-finite loss under float16 also means: lower the scale
            self.scaler.update(self.scaler.get_scale() * self.scaler.get_backoff_factor())

    def state_dict(self) -> dict:
        return {"scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


def gradients_finite(optimizer: torch.optim.Optimizer) -> bool:
    """Whether every gradient is finite, with one host synchronisation.

    Sums each gradient instead of testing every element: one read of the tables and no temporary as
    large as they are (a NaN or inf anywhere makes the sum non-finite; a sum that overflows to inf
    means gradients beyond 1e38, which are as unusable). A gradient its kernel proved finite
    (:func:`ngp.ops.checks.note_finite_gradient`: the hash grid's table gradient, from its inputs) is not
    read again: a late training step's table gradient is ~50 MB, ~2 ms of reading.
    """
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None and not gradient_noted_finite(p)]
    if not grads:
        return True
    return bool(torch.isfinite(torch.stack([g.sum(dtype=torch.float32) for g in grads])).all())
