"""The multiresolution hash encoding as a differentiable op.

``hash_grid_encode(x, table, layout, interpolation, storage_dtype)`` is differentiable w.r.t. ``table``
and ``x``. Where it runs is chosen per call by :func:`ngp.ops.backend.backend_for`:

* ``reference``: the plain-PyTorch definition (:mod:`ngp.kernels.reference.hashgrid`), called directly,
  so autograd differentiates it to any order;
* ``numba`` / ``triton``: compiled kernels behind the custom ops ``ngp::hash_grid_encode`` and
  ``ngp::hash_grid_encode_backward`` (``torch.library.custom_op``, with fake implementations so that
  ``torch.compile`` can trace them). These are differentiable once; asking for a second derivative
  raises ``NotImplementedError`` (use ``NGP_BACKEND=reference`` for that).

Storage precision: ``table`` is the float32 (or float64) *master* parameter; ``storage_dtype`` is the
precision its values are read in (float16 halves the bytes per gather on a GPU). The definition is the
encoding of ``table.to(storage_dtype).to(table.dtype)``, features in ``table.dtype``; the table gradient
is straight-through: the gradient of the rounded copy, handed to the master unchanged (accumulated in
float32, never rounded to float16). The op casts the table once per call (and once more in backward,
only for the x-gradient) and hands the kernels that copy.

A kernel family is a module in :data:`KERNELS` that exposes two functions::

    forward(x, table, layout, interpolation) -> Tensor
        x [N, d] (float32 or float64), table [n_rows, F] in its storage dtype (x.dtype or narrower,
        e.g. float16), same device; layout: GridLayout, interpolation: int (INTERPOLATIONS[name])
        -> features [N, L*F] in x.dtype.
    backward(grad_out, x, table, layout, interpolation, needs_table_grad, needs_x_grad)
        grad_out [N, L*F] in x.dtype -> (grad_table [n_rows, F] in x.dtype (the accumulator: float32,
        float64 for float64 x) or None, grad_x [N, d] or None), each None unless asked for.
        ``table`` holds the storage values when needs_x_grad; otherwise only its shape is used.

Both receive contiguous tensors with N > 0, already validated here. A family that cannot read a
narrower dtype widens the table first (the Numba family does: same numbers, no bandwidth saved). A
family may also write rounded features (``forward(..., out_dtype=torch.bfloat16)``, the dtypes listed
in its ``ROUNDED_OUTPUTS``), which :func:`hash_grid_encode_as` uses; for the others it rounds the
float32 result. Adding a family is one entry.
"""

from __future__ import annotations

import importlib
import math
from types import ModuleType

import torch

from ngp.kernels.reference import hashgrid as reference
from ngp.kernels.reference.hashgrid import HASH_FUNCTIONS, INTERPOLATIONS, GridLayout
from ngp.ops.backend import backend_for
from ngp.ops.checks import all_finite, note_finite_gradient

#: Kernel families by backend name: module path, imported on first use.
KERNELS = {
    "numba": "ngp.kernels.cpu.hashgrid",
    "triton": "ngp.kernels.triton.hashgrid",
}

_DOUBLE_BACKWARD = (
    "second derivatives of the hash-grid encoding are not implemented by the compiled kernels; "
    "set NGP_BACKEND=reference to differentiate it twice (slow, plain PyTorch)"
)


def _kernels(name: str) -> ModuleType:
    if name not in KERNELS:
        raise ValueError(f"no hash-grid kernels for backend {name!r}; known: {sorted(KERNELS)}")
    return importlib.import_module(KERNELS[name])


def _kernels_for(x: torch.Tensor) -> ModuleType:
    name = backend_for(x.device)
    if name == "numba" and x.device.type != "cpu":
        raise ValueError(f"the Numba kernels need CPU tensors, got {x.device}; use NGP_BACKEND=auto or triton")
    return _kernels(name)


_HASH_NAMES = {code: name for name, code in HASH_FUNCTIONS.items()}


def _layout(x: torch.Tensor, table: torch.Tensor, resolutions, offsets, hashed, hash_code: int,
            hash_primes) -> GridLayout:
    """Rebuild the (hashable, cached-by-kernels) layout from the op's plain-list arguments."""
    return GridLayout(x.shape[1], table.shape[1], tuple(resolutions), tuple(offsets), tuple(bool(h) for h in hashed),
                      _HASH_NAMES[hash_code], tuple(hash_primes))


# ----------------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------------


@torch.library.custom_op("ngp::hash_grid_encode", mutates_args=())
def _encode_op(
    x: torch.Tensor,
    table: torch.Tensor,
    resolutions: list[int],
    offsets: list[int],
    hashed: list[bool],
    hash_code: int,
    hash_primes: list[int],
    interpolation: int,
    storage: torch.dtype,
) -> torch.Tensor:
    layout = _layout(x, table, resolutions, offsets, hashed, hash_code, hash_primes)
    stored = table.contiguous().to(storage)  # the one cast per call (a no-op without narrower storage)
    return _kernels_for(x).forward(x.contiguous(), stored, layout, interpolation)


@_encode_op.register_fake
def _(x, table, resolutions, offsets, hashed, hash_code, hash_primes, interpolation, storage):
    return x.new_empty(x.shape[0], len(resolutions) * table.shape[1])


@torch.library.custom_op("ngp::hash_grid_encode_backward", mutates_args=())
def _encode_backward_op(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    table: torch.Tensor,
    resolutions: list[int],
    offsets: list[int],
    hashed: list[bool],
    hash_code: int,
    hash_primes: list[int],
    interpolation: int,
    storage: torch.dtype,
    needs_table_grad: bool,
    needs_x_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    layout = _layout(x, table, resolutions, offsets, hashed, hash_code, hash_primes)
    # The table gradient does not read table values: cast again only for the x-gradient.
    stored = table.contiguous().to(storage) if needs_x_grad else table.contiguous()
    grad_table, grad_x = _kernels_for(x).backward(
        grad_out.contiguous(), x.contiguous(), stored, layout, interpolation, needs_table_grad, needs_x_grad
    )
    # A custom op cannot return None: an empty tensor stands for "not asked for". The table gradient
    # is the master's (straight-through), in the master's dtype, whatever the storage.
    grad_table = grad_table.to(table.dtype) if grad_table is not None else table.new_empty(0)
    return grad_table, grad_x if grad_x is not None else x.new_empty(0)


@_encode_backward_op.register_fake
def _(grad_out, x, table, resolutions, offsets, hashed, hash_code, hash_primes, interpolation, storage,
      needs_table_grad, needs_x_grad):
    grad_table = table.new_empty(table.shape if needs_table_grad else (0,))
    grad_x = x.new_empty(x.shape if needs_x_grad else (0,))
    return grad_table, grad_x


def _setup_context(ctx, inputs, output):
    x, table, resolutions, offsets, hashed, hash_code, hash_primes, interpolation, storage = inputs
    ctx.save_for_backward(x, table)  # the master, not the cast copy: no extra memory between passes
    ctx.layout_args = (resolutions, offsets, hashed, hash_code, hash_primes, interpolation, storage)


def _backward(ctx, grad_out):
    x, table = ctx.saved_tensors
    needs_x_grad, needs_table_grad = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_table, grad_x = _encode_backward_op(grad_out, x, table, *ctx.layout_args, needs_table_grad, needs_x_grad)
    if needs_table_grad:
        note_finite_gradient(table, grad_table if _table_gradient_bounded(grad_out, x, grad_table) else None)
    return (
        grad_x if needs_x_grad else None,
        grad_table if needs_table_grad else None,
        None,
        None,
        None,
        None,
        None,
        None,
        None,
    )


def _table_gradient_bounded(grad_out: torch.Tensor, x: torch.Tensor, grad_table: torch.Tensor) -> bool:
    """Whether the table gradient is finite by its inputs alone: each entry sums, over the ``N`` points,
    interpolation weights in [0, 1] (one point's corners add to 1 per level) times the features' gradient,
    so with finite points and every ``|grad_out| <= M`` no entry exceeds ``N * M``. On a CPU only, where the
    check costs a pass over ``grad_out`` [N, L*F] (0.2 ms for 65k x 32 bfloat16) instead of one over the
    table's gradient (~2 ms for ~50 MB in a late training step, measured), so that the training's guard
    against non-finite steps (:func:`ngp.train.precision.gradients_finite`) need not read it."""
    if grad_table.device.type != "cpu" or grad_out.numel() == 0 or _tracing(grad_out) or not all_finite(x):
        return False
    lo, hi = torch.aminmax(grad_out)  # NaN in, NaN out
    bound = max(-float(lo), float(hi))
    return math.isfinite(bound) and bound * x.shape[0] * 1.01 < torch.finfo(grad_table.dtype).max


def _tracing(t: torch.Tensor) -> bool:
    """Whether ``t`` has no values to read: torch.compile's tracing (fake or functional tensors)."""
    from torch._subclasses.fake_tensor import is_fake

    return torch.compiler.is_compiling() or is_fake(t)


_encode_op.register_autograd(_backward, setup_context=_setup_context)


def _no_double_backward(ctx, grad_table, grad_x):
    raise NotImplementedError(_DOUBLE_BACKWARD)


def _setup_backward_context(ctx, inputs, output):
    pass


_encode_backward_op.register_autograd(_no_double_backward, setup_context=_setup_backward_context)


# ----------------------------------------------------------------------------------------------------
# Public function
# ----------------------------------------------------------------------------------------------------


def _validate(x: torch.Tensor, table: torch.Tensor, layout: GridLayout, interpolation: str) -> None:
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; expected one of {sorted(INTERPOLATIONS)}")
    if x.dim() != 2 or x.shape[1] != layout.n_dims:
        raise ValueError(f"x must have shape [N, {layout.n_dims}] (the layout's n_dims), got {list(x.shape)}")
    if table.dim() != 2 or tuple(table.shape) != (layout.n_rows, layout.n_features):
        raise ValueError(
            f"table must have shape [{layout.n_rows}, {layout.n_features}] (layout.n_rows, layout.n_features), "
            f"got {list(table.shape)}"
        )
    if not x.is_floating_point() or x.dtype != table.dtype:
        raise TypeError(f"x and table must have the same floating dtype, got x: {x.dtype}, table: {table.dtype}")
    if x.device != table.device:
        raise ValueError(f"x and table must be on the same device, got x: {x.device}, table: {table.device}")


def storage_dtype_for(table: torch.Tensor, storage_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype the table's values are read in: ``storage_dtype``, or ``table.dtype`` for ``None``.

    Allowed: ``torch.float16``, ``torch.float32`` or ``table.dtype``, not wider than ``table.dtype``;
    anything else raises ``TypeError``.
    """
    if storage_dtype is None:
        return table.dtype
    if storage_dtype not in (torch.float16, torch.float32, table.dtype) or storage_dtype.itemsize > table.itemsize:
        raise TypeError(
            f"storage_dtype={storage_dtype!r} is not supported for a {table.dtype} table; "
            f"expected torch.float16, torch.float32 or the table's dtype"
        )
    return storage_dtype


def _straight_through(table: torch.Tensor, storage: torch.dtype) -> torch.Tensor:
    """``table`` rounded to ``storage`` (value), with the identity as its derivative (any order)."""
    if storage == table.dtype:
        return table
    return table + (table.to(storage).to(table.dtype) - table).detach()


class _GivenFeatures(torch.autograd.Function):
    """Features already computed by the forward kernel, attached to autograd like the forward op:
    the backward runs the same backward op (see :func:`hash_grid_encode_given`)."""

    @staticmethod
    def forward(ctx, x, table, features, resolutions, offsets, hashed, hash_code, hash_primes, interpolation, storage):
        ctx.save_for_backward(x, table)
        ctx.layout_args = (resolutions, offsets, hashed, hash_code, hash_primes, interpolation, storage)
        return features.detach().clone() if features.requires_grad else features.view_as(features)

    @staticmethod
    def backward(ctx, grad_out):
        x, _ = ctx.saved_tensors
        # rounded features (bfloat16): their gradient is the float one's (rounding passes it straight through).
        # The Numba kernels widen a bfloat16 gradient as they reorder it (one pass: a late lego step's
        # conversion and reordering 1.4 -> ~0.5 ms); the other backends take it converted.
        if not (grad_out.dtype == torch.bfloat16 and x.dtype == torch.float32 and backend_for(x.device) == "numba"):
            grad_out = grad_out.to(x.dtype)
        grad_x, grad_table, *_ = _backward(ctx, grad_out)
        return grad_x, grad_table, None, None, None, None, None, None, None, None


def hash_grid_encode_given(
    x: torch.Tensor,
    table: torch.Tensor,
    layout: GridLayout,
    features: torch.Tensor,
    interpolation: str = "Linear",
    storage_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """:func:`hash_grid_encode` of ``x`` when its value ``features [N, L*F]`` was already computed
    (by this function's forward, with this ``table``, e.g. without gradients in a pre-pass): returns
    ``features`` with the op's gradients w.r.t. ``table`` and ``x``, and runs only the backward kernel.

    NeRF training evaluates the density of every marched sample without gradients, then the whole
    field, with gradients, on the samples in front of the surfaces; handing the pre-pass's features
    over saves the second encoding of those samples. ``features`` is trusted to be the encoding of
    ``x``; if the table changed in between, the gradients belong to the new table and the values to the
    old. ``features`` may also be rounded to a narrower float (:func:`hash_grid_encode_as`'s bfloat16):
    the result is then those rounded values, and their gradient reaches the table as a float one would
    (the rounding's derivative taken as one, as autocast's casts do). On the reference backend the
    encoding is recomputed (the definition, differentiable twice) and rounded likewise.

    Example::

        >>> with torch.no_grad():
        ...     features = hash_grid_encode(x, table, layout)
        >>> y = hash_grid_encode_given(x[keep], table, layout, features[keep])   # no encoding work
        >>> y.sum().backward()                                                  # table.grad as usual
    """
    _validate(x, table, layout, interpolation)
    rounded = features.dtype.is_floating_point and features.dtype.itemsize < x.dtype.itemsize
    if features.shape != (x.shape[0], layout.n_output_dims) or not (features.dtype == x.dtype or rounded):
        raise ValueError(f"features must be [{x.shape[0]}, {layout.n_output_dims}] {x.dtype} (the encoding of x, "
                         f"or a narrower float: it rounded), got {list(features.shape)} {features.dtype}")
    storage = storage_dtype_for(table, storage_dtype)
    if backend_for(x.device) == "reference" or x.shape[0] == 0:
        return hash_grid_encode(x, table, layout, interpolation, storage_dtype).to(features.dtype)
    return _GivenFeatures.apply(x, table, features, *_op_args(layout, interpolation, storage))


def _op_args(layout: GridLayout, interpolation: str, storage: torch.dtype) -> tuple:
    """The layout, interpolation and storage as the custom ops take them (plain lists and ints)."""
    return (list(layout.resolutions), list(layout.offsets), list(layout.hashed), HASH_FUNCTIONS[layout.hash_function],
            list(layout.hash_primes), INTERPOLATIONS[interpolation], storage)


def hash_grid_encode(
    x: torch.Tensor,
    table: torch.Tensor,
    layout: GridLayout,
    interpolation: str = "Linear",
    storage_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Encode points with a multiresolution hash grid; differentiable w.r.t. ``table`` and ``x``.

    Args:
        x: ``[N, d]`` coordinates, ``d == layout.n_dims``; clamped to ``[0, 1]`` (zero gradient outside).
        table: ``[layout.n_rows, layout.n_features]`` parameters (the master copy: float32 or
            float64), same dtype and device as ``x``.
        layout: the grid's geometry (:class:`ngp.kernels.reference.hashgrid.GridLayout`), its hash
            function included (``layout.hash_function``; every backend implements all of them).
        interpolation: ``"Linear"``, ``"Smoothstep"`` or ``"Nearest"``.
        storage_dtype: the precision the table's values are read in: ``None`` (``table.dtype``),
            ``torch.float16`` or ``torch.float32``. Values are rounded to it; features and both
            gradients stay in ``table.dtype``, and the table gradient is straight-through (that of
            the rounded copy). float16 saves memory traffic on GPUs (Triton gathers from a half-size
            copy); the Numba kernels emulate it on a rounded float32 copy (same numbers, slower).

    Returns:
        ``[N, L * F]`` features in ``table.dtype``, level by level; the definition is
        :func:`ngp.kernels.reference.hashgrid.hash_grid_encode` of ``table.to(storage_dtype)``.
    """
    _validate(x, table, layout, interpolation)
    storage = storage_dtype_for(table, storage_dtype)
    if backend_for(x.device) == "reference":
        return reference.hash_grid_encode(x, _straight_through(table, storage), layout, interpolation)
    if x.shape[0] == 0:
        # Nothing to encode: an empty result still connected to x and table (their gradients are zero).
        return x.new_zeros(0, layout.n_output_dims) + 0 * (x.sum() + table.sum())
    return _encode_op(x, table, *_op_args(layout, interpolation, storage))


def hash_grid_encode_as(
    x: torch.Tensor,
    table: torch.Tensor,
    layout: GridLayout,
    dtype: torch.dtype,
    interpolation: str = "Linear",
    storage_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``hash_grid_encode(x, table, ...).to(dtype)`` without gradients (rendering): the same numbers,
    detached. The Numba kernels round to bfloat16 as they write the features, which saves writing the
    float32 features and the pass that converts them (the next matrix product would round them
    anyway): 2^18 points, 16 levels, 1.2-2.4 ms less than ``.to()`` after the float32 kernel (of
    ~32 ms; measured, 2 cores).

    Example::

        >>> with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        ...     features = hash_grid_encode_as(x, table, layout, torch.bfloat16)   # [N, L*F] bfloat16
    """
    _validate(x, table, layout, interpolation)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"hash_grid_encode_as: dtype must be a floating-point torch.dtype, got {dtype!r}")
    storage = storage_dtype_for(table, storage_dtype)
    name = backend_for(x.device)
    if name == "reference" or x.shape[0] == 0:
        with torch.no_grad():
            return hash_grid_encode(x, table, layout, interpolation, storage_dtype).to(dtype)
    kernels = _kernels_for(x)
    interp = INTERPOLATIONS[interpolation]
    with torch.no_grad():
        stored = table.contiguous().to(storage)
        if dtype in getattr(kernels, "ROUNDED_OUTPUTS", ()) and dtype != x.dtype:
            return kernels.forward(x.contiguous(), stored, layout, interp, out_dtype=dtype)
        return kernels.forward(x.contiguous(), stored, layout, interp).to(dtype)
